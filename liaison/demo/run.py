"""`liaison demo`: a whole federation on this machine, queried as an investigator.

Three fictional agencies (their own schemas, policies and synthetic data), a
gateway, and an investigator of a fourth agency who asks representative
questions. Everything runs on loopback as real processes.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import sqlalchemy as sa

from liaison import client
from liaison.answer_check import (
    AnswerCheck,
    SearchWindow,
    Verdict,
    check_answers,
    load_node_keys,
    now_ms,
)
from liaison.cli import render
from liaison.cli.exits import ExitCode
from liaison.demo.consoles import GATEWAY_CONSOLE, NODE_CONSOLE, console_urls, start_consoles
from liaison.demo.data import INVESTIGATOR_AGENCY, Probes, demo_agencies, populate, probes
from liaison.demo.federation import (
    AUDIENCE,
    PKI_DIR,
    NodeLayout,
    write_dev_idp,
    write_gateway_config,
    write_gateway_keys,
    write_node,
    write_pki,
    write_private_text,
)
from liaison.demo.followup import (
    HOLDER,
    OFFICER,
    FollowUpRun,
    follow_up_to_dict,
    officer_token,
    render_follow_up,
    run_follow_up,
)
from liaison.demo.processes import Service, running_in, start_service, stop_service
from liaison.keys import SigningKey
from liaison.ledger.reconcile import (
    ReconcileReport,
    describe_followups,
    federation_ledgers,
    reconcile_files,
)
from liaison.messages import SearchInput, SearchResult
from liaison.query import DEFAULT_NEAR_DISTANCE, Comparator, Operation, Predicate, Query
from liaison.tokens import dev_issuer, issue_dev_token

POLICY_DIR = Path(__file__).resolve().parents[2] / "policies" / "demo"
CASE_REF = "GEN-2026-0142"


@dataclass(frozen=True, slots=True)
class DemoQuery:
    title: str
    search: SearchInput


def demo_queries(p: Probes) -> list[DemoQuery]:
    def q(**kw: Any) -> Query:
        return Query(**kw)

    def eq(field: str, value: str) -> Predicate:
        return Predicate(field, Comparator.EQ, (value,))

    return [
        DemoQuery(
            "1. Does any agency hold this file? (exact SHA-256, hit/no-hit)",
            SearchInput(
                q(
                    dataset="media",
                    operation=Operation.MATCH,
                    predicates=(eq("sha256", p.shared_sha256),),
                ),
                "csam-investigation",
                CASE_REF,
            ),
        ),
        DemoQuery(
            "2. What may each agency tell us about that file?",
            SearchInput(
                q(
                    dataset="media",
                    operation=Operation.RECORDS,
                    predicates=(eq("sha256", p.shared_sha256),),
                    fields=("category", "first_seen", "case_ref"),
                ),
                "victim-identification",
                CASE_REF,
            ),
        ),
        DemoQuery(
            "3. Who knows this e-mail address? (account lookup, citing a legal basis)",
            SearchInput(
                q(
                    dataset="accounts",
                    operation=Operation.RECORDS,
                    predicates=(eq("email", p.shared_email),),
                    fields=("platform", "handle", "last_seen", "ip"),
                ),
                "offender-identification",
                CASE_REF,
                legal_basis="eu-2016-680-art-8",
            ),
        ),
        DemoQuery(
            "4. How many known files per category? (statistics: generalised, small groups hidden)",
            SearchInput(
                q(dataset="media", operation=Operation.COUNT_BY, group_by="category"),
                "statistics",
                "GEN-STATS-2026",
            ),
        ),
        DemoQuery(
            "5. How many accounts per platform? (denied: account statistics)",
            SearchInput(
                q(dataset="accounts", operation=Operation.COUNT_BY, group_by="platform"),
                "statistics",
                "GEN-STATS-2026",
            ),
        ),
        DemoQuery(
            "6. Has anyone seen an image like this one? (PDQ within 31 bits of a re-encoded copy)",
            SearchInput(
                q(
                    dataset="media",
                    operation=Operation.MATCH,
                    predicates=(
                        Predicate("pdq", Comparator.NEAR, (p.near_pdq,), DEFAULT_NEAR_DISTANCE),
                    ),
                ),
                "victim-identification",
                CASE_REF,
            ),
        ),
        DemoQuery(
            f"7. Triage a seized device: {len(p.device_sha256s)} file hashes in one request",
            SearchInput(
                q(
                    dataset="media",
                    operation=Operation.RECORDS,
                    predicates=(Predicate("sha256", Comparator.IN, p.device_sha256s),),
                    fields=("sha256", "category"),
                ),
                "csam-investigation",
                CASE_REF,
            ),
        ),
    ]


def build_federation(
    root: Path,
    *,
    media: int = 4000,
    accounts: int = 1500,
    tls: bool = False,
    progress: TextIO = sys.stderr,
) -> None:
    """Write keys, configs, policies and synthetic databases for the demo agencies.

    With ``tls``, a development CA in ``pki/`` makes gateway and nodes talk
    mutual TLS, as a real deployment would.
    """
    gateway_pub = write_gateway_keys(root)
    if tls:
        write_pki(root, [a.agency_id for a in demo_agencies()])
    write_dev_idp(root, INVESTIGATOR_AGENCY)
    for agency in demo_agencies():
        folder = root / "nodes" / agency.agency_id
        folder.mkdir(parents=True, exist_ok=True)
        print(
            f"  {agency.name}: generating {media} media, {accounts} accounts records", file=progress
        )
        db = folder / f"{agency.agency_id}.sqlite3"
        engine = sa.create_engine(f"sqlite:///{db}")
        populate(agency, engine, media=media, accounts=accounts)
        engine.dispose()
        write_node(
            NodeLayout(
                node_id=agency.agency_id,
                folder=folder,
                database_url=f"sqlite:///{db.name}",
                mapping=agency.mapping,
                policy_text=(POLICY_DIR / f"{agency.agency_id}.toml").read_text(),
            ),
            gateway_pub,
            tls=tls,
        )


@contextmanager
def running_federation(
    root: Path, *, detach: bool = False, progress: TextIO = sys.stderr
) -> Iterator[str]:
    """Start every node, then the gateway; yield the gateway address; stop all on exit."""
    run = root / "run"
    services: list[Service] = []
    try:
        addresses = {}
        for agency in demo_agencies():
            svc = start_service(
                agency.agency_id,
                "node",
                root / "nodes" / agency.agency_id / "node.toml",
                run,
                detach=detach,
            )
            services.append(svc)
            addresses[agency.agency_id] = svc.address
            print(f"  node {agency.agency_id} listening on {svc.address}", file=progress)
        tls = (root / PKI_DIR / "ca.pem").exists()
        write_gateway_config(root, [INVESTIGATOR_AGENCY], addresses, tls=tls)
        gw = start_service(
            "gateway", "gateway", root / "gateway" / "gateway.toml", run, detach=detach
        )
        services.append(gw)
        print(f"  gateway listening on {gw.address}", file=progress)
        yield gw.address
    finally:
        if not detach:
            for svc in reversed(services):
                stop_service(svc)


@contextmanager
def running_consoles(
    root: Path, gateway: str, *, detach: bool = False, progress: TextIO = sys.stderr
) -> Iterator[dict[str, str]]:
    """The development sign-in provider and both web consoles; yield their addresses."""
    services = start_consoles(root, gateway, root / "run", detach=detach)
    try:
        urls = console_urls(services)
        print(
            f"  console for investigators and auditors: {urls[GATEWAY_CONSOLE]} "
            "(sign in as inv.alice or aud.ann)\n"
            f"  console for {HOLDER}'s duty officers: {urls[NODE_CONSOLE]} "
            f"(sign in as {OFFICER})\n"
            f"  (the browser will not know the demo's development CA, {root / PKI_DIR}/ca.pem: "
            "trust it, or accept the warning)",
            file=progress,
        )
        yield urls
    finally:
        if not detach:
            for svc in reversed(services):
                stop_service(svc)


DEMO_ATTRIBUTES = {"clearance": "secret", "unit": "victim-identification"}


def audit_federation(root: Path, *, live: bool = False) -> ReconcileReport:
    """Verify the gateway's ledger and every node's receipts, and reconcile them."""
    gateway, nodes = federation_ledgers(root)
    return reconcile_files(gateway, nodes, allow_unsigned_tail=live)


def render_audit(report: ReconcileReport) -> str:
    lines = ["Audit (from the ledgers and public keys alone):"]
    ledgers = [("gateway", report.gateway), *sorted(report.nodes.items())]
    for name, r in ledgers:
        state = "verified" if r.ok else f"FAILED at {r.problems[0]}"
        receipts = f", {report.receipts[name]} receipts" if name in report.receipts else ""
        lines.append(
            f"  {name:<10} {r.size:>4} entries{receipts}, {r.checkpoints} checkpoints: {state}"
        )
    problems = [d for d in report.differences if d.problem]
    lines.append(
        "  reconciled: every answered request is in the gateway's ledger and the node's receipts"
        if not problems
        else f"  NOT reconciled: {len(problems)} difference(s)"
    )
    followups = describe_followups(report)
    if followups:
        lines.append(f"  {followups}")
    return "\n".join(lines)


def render_verification(checks: list[AnswerCheck]) -> str:
    """One line on the signed answers of every query, as `liaison query --verify` checks them."""
    signed = [n for c in checks for n in c.nodes if n.verdict is not Verdict.NOT_ANSWERED]
    failed = [n for c in checks for n in c.failed]
    line = f"Answers: {len(signed)} signed answers checked here against each agency's own key: "
    if failed:
        return line + f"{len(failed)} NOT VERIFIED (" + "; ".join(map(str, failed)) + ")"
    verified = sum(1 for n in signed if n.verdict is Verdict.VERIFIED)
    if verified == len(signed):
        return line + "all verified, each exactly what its agency signed"
    return line + f"{verified} verified, {len(signed) - verified} unverifiable"


def audit_to_dict(report: ReconcileReport) -> dict[str, Any]:
    return {
        "ok": report.ok,
        "ledgers": {
            name: {
                "entries": r.size,
                "checkpoints": r.checkpoints,
                "ok": r.ok,
                "root": r.root.hex(),
            }
            for name, r in [("gateway", report.gateway), *report.nodes.items()]
        },
        "receipts": dict(report.receipts),
        "followups": report.followups.as_json() if report.followups.any else None,
        "differences": [
            {
                "node_id": d.node_id,
                "query_id": d.query_id,
                "message": d.message,
                "problem": d.problem,
            }
            for d in report.differences
        ],
    }


def investigator_token(
    root: Path, subject: str = "inv.alice", roles: tuple[str, ...] = ("investigator",)
) -> str:
    key = SigningKey.from_pem_file(root / "idp" / f"{INVESTIGATOR_AGENCY}.key")
    return issue_dev_token(
        key,
        issuer=dev_issuer(INVESTIGATOR_AGENCY),
        audience=AUDIENCE,
        agency=INVESTIGATOR_AGENCY,
        subject=subject,
        roles=roles,
        ttl_s=8 * 3600,
        attributes=DEMO_ATTRIBUTES,
    )


def run_demo(
    workdir: Path | None,
    *,
    keep_running: bool = False,
    as_json: bool = False,
    consoles: bool = True,
    pause: bool = False,
    out: TextIO = sys.stdout,
    progress: TextIO = sys.stderr,
) -> int:
    """The demo; with ``pause``, wait for Enter before stopping, so the consoles can be tried."""
    root = workdir or Path(tempfile.mkdtemp(prefix="liaison-demo-"))
    if root.exists() and any(root.iterdir()):
        if not (root / "gateway" / "gateway.toml").exists():
            print(
                f"error: {root} is not empty and not a demo folder; choose another --workdir",
                file=progress,
            )
            return 2
        alive = running_in(root / "run")
        if alive:
            print(
                f"error: a federation is already running in {root} ({', '.join(alive)}); "
                f"stop it with `liaison demo --stop --workdir {root}`",
                file=progress,
            )
            return 1
        print(f"reusing the federation in {root}", file=progress)
    else:
        print(
            f"[1/5] building a federation of three agencies in {root} (mutual TLS between "
            "gateway and nodes)",
            file=progress,
        )
        build_federation(root, tls=True, progress=progress)
    print("[2/5] starting nodes and gateway on loopback", file=progress)
    token = investigator_token(root)
    # A bearer token: whoever reads it can ask as the investigator.
    write_private_text(root / "investigator.jwt", token + "\n")
    # And one for Freedonia's duty officer, who decides follow-up requests.
    write_private_text(root / "officer-freedonia.jwt", officer_token(root) + "\n")
    tls_ca = root / PKI_DIR / "ca.pem"
    follow_up: FollowUpRun | None = None
    results = []
    # The investigator checks every answer against the agencies' own public
    # keys (nodes/<id>/node.pub here), never trusting the gateway's word.
    node_keys = load_node_keys(root)
    checks: list[AnswerCheck] = []
    try:
        with (
            running_federation(root, detach=keep_running, progress=progress) as address,
            ExitStack() as web,
        ):
            if consoles:
                web.enter_context(
                    running_consoles(root, address, detach=keep_running, progress=progress)
                )
            print(f"[3/5] querying as an investigator of {INVESTIGATOR_AGENCY}", file=progress)
            first_hit: tuple[SearchResult, float] | None = None
            for dq in demo_queries(probes()):
                sent = now_ms()
                result = client.search(address, token, dq.search)
                if first_hit is None:
                    # The hit the follow-up comes back to, and when it was known.
                    first_hit = (result, time.perf_counter())
                # The window the search was asked in: a result from before it is stale.
                window = SearchWindow(sent, now_ms())
                check = check_answers(result, dq.search, node_keys, window=window)
                checks.append(check)
                if as_json:
                    results.append({"title": dq.title, **render.result_to_dict(result, check)})
                else:
                    print(f"\n{dq.title}", file=out)
                    print(
                        render.render_result(result, dq.search.purpose, dq.search.case_ref, check),
                        file=out,
                    )
            if not as_json:
                print(f"\n{render_verification(checks)}", file=out)
            assert first_hit is not None
            print(
                "[4/5] following up the first hit: Freedonia's duty officer decides",
                file=progress,
            )
            follow_up = run_follow_up(
                root,
                address,
                token,
                first_hit[0],
                first_hit[1],
                purpose="victim-identification",
                case_ref=CASE_REF,
                inbox_ca=tls_ca if tls_ca.exists() else None,
                progress=progress,
            )
            if not as_json:
                print(f"\n{render_follow_up(follow_up)}", file=out)
            if pause:
                input(
                    "\nExplore the consoles above; press Enter to stop the federation and "
                    "audit it. "
                )
        # After a clean stop every ledger ends on a signed checkpoint; a live
        # federation signs its next one within the interval.
        print("[5/5] auditing: verifying every ledger and reconciling them", file=progress)
        audit = audit_federation(root, live=keep_running)
        if not as_json:
            print(f"\n{render_audit(audit)}", file=out)
    finally:
        if workdir is None and not keep_running:
            shutil.rmtree(root, ignore_errors=True)
    if as_json:
        print(
            render.to_json(
                {
                    "workdir": str(root) if workdir or keep_running else None,
                    "queries": results,
                    "follow_up": follow_up_to_dict(follow_up) if follow_up else None,
                    "audit": audit_to_dict(audit),
                }
            ),
            file=out,
        )
    if workdir is not None or keep_running:
        print(
            f"\nAudit it yourself (public keys only):\n"
            f"  liaison audit verify {root}/gateway/ledger.sqlite3 \\\n"
            f"      --key {root}/gateway/gateway.pub \\\n"
            f"      --witness {root}/nodes/ruritania/state/receipts.sqlite3\n"
            f"  liaison audit reconcile --federation {root}",
            file=progress,
        )
    if not audit.ok:
        return 1
    if any(c.failed for c in checks):
        return ExitCode.NOT_VERIFIED
    if keep_running:
        print(
            f"\nThe federation is still running (folder {root}). Try:\n"
            f"  liaison query --federation {root} media --match --where sha256=<hex> "
            "--purpose csam-investigation --case-ref GEN-1\n"
            f"Stop it with:\n  liaison demo --stop --workdir {root}",
            file=progress,
        )
    return 0
