"""`liaison audit`: verify, read, prove and reconcile ledgers with public keys alone.

Every command works on a copy of the ledger files (or a database URL) and
needs no running service and no private key.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from liaison.cli.inputs import read_text
from liaison.errors import InvalidQuery, LedgerError
from liaison.keys import VerifyingKey

if TYPE_CHECKING:
    # The ledger modules are imported only when an audit command runs, so that
    # `liaison --help` stays quick; their types are still checked.
    from liaison.ledger.checkpoint import Checkpoint
    from liaison.ledger.reconcile import ReconcileReport
    from liaison.ledger.store import LedgerStore
    from liaison.ledger.verify import Finding, VerifyReport, Witness
    from liaison.ledger.views import Filters, Row, Summary

EXIT_OK = 0
EXIT_FAILED = 1
# Entry kinds, as liaison.ledger.entries.EntryKind spells them (not imported: see above).
KINDS = (
    "request",
    "outcome",
    "receipt",
    "opened",
    "followup",
    "followup-delivery",
    "followup-outcome",
    "followup-receipt",
    "followup-decision",
)


def _add_ledger(p: argparse.ArgumentParser, *, key: bool = True) -> None:
    p.add_argument("ledger", help="the ledger: a SQLite file or a database URL")
    if key:
        p.add_argument(
            "--key",
            type=Path,
            required=True,
            metavar="PUB",
            help="the log's public key (PEM): gateway.pub for the gateway, node.pub for a node",
        )


def _add_filters(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("filters (all must hold)")
    g.add_argument("--agency", default="", help="requesting agency")
    g.add_argument("--subject", default="", help="investigator (token subject)")
    g.add_argument("--purpose", default="", help="declared purpose")
    g.add_argument("--case-ref", default="", help="case reference; * and ? match any text")
    g.add_argument("--node", default="", help="node asked, or node that answered")
    g.add_argument("--dataset", default="", help="dataset asked")
    g.add_argument("--since", default="", help="from this ISO date or time (UTC)")
    g.add_argument("--until", default="", help="before this ISO date or time (UTC)")


def add_audit(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "audit",
        help="verify, read, prove and reconcile ledgers (public keys only)",
        description="Auditor tools. They read a copy of a ledger and need only public keys "
        "(and, to search selectors, the audit key).",
    )
    inner = p.add_subparsers(dest="action", required=True)

    v = inner.add_parser(
        "verify",
        help="recompute every leaf and the tree; check every checkpoint",
        description="Exit status: 0 when the ledger verifies; 1 when anything is wrong, "
        "with the first bad entry or checkpoint named. A copy on its own cannot show that it "
        "is whole (a copy rolled back to an earlier checkpoint verifies too): give witnesses "
        "(--witness, --checkpoint) and, for a live ledger, --max-age.",
    )
    _add_ledger(v)
    v.add_argument(
        "--checkpoint",
        action="append",
        default=[],
        type=Path,
        metavar="FILE",
        help="a checkpoint you kept from an earlier audit (--save-checkpoint); the ledger must "
        "still extend it",
    )
    v.add_argument(
        "--witness",
        action="append",
        default=[],
        metavar="LEDGER",
        help="a ledger holding checkpoints of this log: a node's receipts ledger (for the "
        "gateway's ledger) or an earlier copy of this ledger; the ledger must extend every "
        "one of them (repeatable)",
    )
    v.add_argument(
        "--max-age",
        type=_seconds,
        metavar="SECONDS",
        help="fail when the newest checkpoint is older than this: for a copy of a live "
        "ledger, whose writer signs one every checkpoint interval (30 s by default)",
    )
    v.add_argument(
        "--save-checkpoint",
        type=Path,
        metavar="FILE",
        help="write the newest verified checkpoint here, to check against next time",
    )
    v.add_argument(
        "--allow-unsigned-tail",
        action="store_true",
        help="report entries newer than the last checkpoint as a warning, not a failure",
    )
    v.add_argument(
        "--processes",
        type=int,
        choices=[1, 2],
        default=None,
        help="1: read every entry in this process; 2: share a large SQLite ledger with a "
        "second process (default: 2 where two CPUs are free); the report is the same",
    )
    v.add_argument("--json", action="store_true", help="print JSON")

    s = inner.add_parser("show", help="entries as a table or JSON, filtered")
    _add_ledger(s, key=False)
    _add_filters(s)
    s.add_argument("--kind", default="", choices=["", *KINDS])
    s.add_argument("--query-id", default="", help="one query (and the follow-ups about it)")
    s.add_argument("--followup-id", default="", help="one follow-up: every step of it")
    s.add_argument("--selector", default="", help="a selector value asked for (needs --audit-key)")
    s.add_argument("--field", default="", help="the catalog field of --selector, to canonicalise")
    s.add_argument("--audit-key", type=Path, metavar="FILE", help="the federation's audit key")
    s.add_argument("--limit", type=int, default=0, help="show at most this many (newest)")
    s.add_argument("--json", action="store_true", help="print JSON (full entries)")

    pr = inner.add_parser(
        "prove", help="write an inclusion or consistency proof file that verify-proof checks"
    )
    _add_ledger(pr)
    what = pr.add_mutually_exclusive_group(required=True)
    what.add_argument("--index", type=int, help="prove that entry INDEX is in the log")
    what.add_argument(
        "--consistency",
        type=int,
        nargs="+",
        metavar="SIZE",
        help="OLD [NEW]: prove the log of NEW entries (default: newest) extends the one of OLD",
    )
    pr.add_argument("--out", type=Path, required=True, help="the proof file to write")

    vp = inner.add_parser(
        "verify-proof",
        help="check a proof file offline",
        description="Exit status: 0 when the proof holds; 1 when it does not.",
    )
    vp.add_argument("file", type=Path)
    vp.add_argument("--key", type=Path, required=True, metavar="PUB", help="the log's public key")
    vp.add_argument("--json", action="store_true", help="print JSON")

    r = inner.add_parser(
        "reconcile",
        help="the gateway's ledger against every node's receipts",
        description="Exit status: 0 when every answered request, and every step of every "
        "follow-up (filed, taken in, acknowledged, decided, collected), is on both sides with "
        "the same digests; 1 when a difference shows that a ledger lies or lost entries. "
        "Follow-ups still waiting for a decision, and decisions the gateway has not collected "
        "yet, are notes.",
    )
    r.add_argument(
        "--federation",
        type=Path,
        metavar="DIR",
        help="a federation folder (from `liaison init` or `liaison demo --workdir`)",
    )
    r.add_argument("--gateway", help="the gateway's ledger (file or URL)")
    r.add_argument("--gateway-key", type=Path, metavar="PUB", help="the gateway's public key")
    r.add_argument(
        "--node",
        nargs=3,
        action="append",
        default=[],
        metavar=("ID", "LEDGER", "PUB"),
        help="a node's id, receipts ledger and public key (repeatable)",
    )
    r.add_argument("--allow-unsigned-tail", action="store_true")
    r.add_argument("--json", action="store_true", help="print JSON")

    h = inner.add_parser("hash", help="the keyed hash of a selector value, to search for it")
    h.add_argument("value")
    h.add_argument("--audit-key", type=Path, required=True, metavar="FILE")
    h.add_argument("--field", default="", help="catalog field, to canonicalise the value first")

    rp = inner.add_parser(
        "report", help="a summary for an oversight body: queries per agency, purpose, outcome"
    )
    _add_ledger(rp)
    _add_filters(rp)
    rp.add_argument("--json", action="store_true", help="print JSON")


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a number of seconds above 0; e.g. 120 for two minutes"
        )
    return value


def cmd_audit(args: argparse.Namespace) -> int:
    return ACTIONS[args.action](args)


def _print_json(value: object) -> None:
    from liaison.cli.render import to_json

    print(to_json(value))


def _store(location: str) -> LedgerStore:
    from liaison.ledger.store import LedgerStore

    return LedgerStore(location, create=False)


def _key(path: Path) -> VerifyingKey:
    return VerifyingKey.from_pem_file(path)


def _progress(label: str) -> Callable[[int], None] | None:
    if not sys.stderr.isatty():
        return None

    def show(done: int) -> None:
        print(f"\r{label}: {done:,} entries", end="", file=sys.stderr, flush=True)

    return show


def _read_notes(paths: list[Path]) -> list[str]:
    return [read_text(path, "--checkpoint") for path in paths]


def _cmd_verify(args: argparse.Namespace) -> int:
    from liaison.ledger.verify import verify_ledger

    store = _store(args.ledger)
    try:
        report, _tree = verify_ledger(
            store,
            _key(args.key),
            kept=_read_notes(args.checkpoint),
            witnesses=_witnesses(args.witness),
            warn_unwitnessed=True,
            max_age_s=args.max_age,
            allow_unsigned_tail=args.allow_unsigned_tail,
            progress=_progress("verifying"),
            processes=args.processes,
        )
        if sys.stderr.isatty():
            print(file=sys.stderr)
        if args.save_checkpoint and report.ok:
            _save_latest(store, report.latest, args.save_checkpoint)
    finally:
        store.close()
    if args.json:
        _print_json(_report_json(report))
    else:
        print(_render_report(report))
    return EXIT_OK if report.ok else EXIT_FAILED


def _witnesses(locations: list[str]) -> list[Witness]:
    """Each witness ledger's checkpoints, read and the ledger closed again."""
    from liaison.ledger.verify import receipts_witness

    found = []
    for location in locations:
        store = _store(location)
        try:
            found.append(receipts_witness(store, f"witness {location}"))
        finally:
            store.close()
    return found


def _save_latest(store: LedgerStore, latest: Checkpoint | None, path: Path) -> None:
    if latest is None:
        raise LedgerError("the ledger has no verified checkpoint to save")
    for row in reversed(store.checkpoints()):
        if row.size == latest.size and row.time_ms == latest.time_ms:
            path.write_text(row.note)
            return


def _checkpoint_json(cp: Checkpoint | None, checked_at_ms: int) -> dict[str, Any] | None:
    from liaison.ledger.views import format_time

    if cp is None:
        return None
    return {
        "size": cp.size,
        "root": cp.root.hex(),
        "time_ms": cp.time_ms,
        "time": format_time(cp.time_ms),
        "age_s": (checked_at_ms - cp.time_ms) / 1000,
    }


def _report_json(report: VerifyReport) -> dict[str, Any]:
    from liaison.ledger.views import format_time

    at = report.checked_at_ms
    return {
        "ledger": report.ledger,
        "origin": report.origin,
        "ok": report.ok,
        "entries": report.size,
        "root": report.root.hex(),
        "checkpoints": report.checkpoints,
        "latest_checkpoint": _checkpoint_json(report.latest, at),
        "checked_at": format_time(at),
        "checked_at_ms": at,
        "max_age_s": report.max_age_s,
        # The largest checkpoint any witness holds that this copy extends: null
        # when none does, and then nothing shows the copy was not rolled back.
        "witnessed_checkpoint": _checkpoint_json(report.witnessed, at),
        "witnesses": [
            {
                "name": w.name,
                "checkpoints_of_this_log": w.seen,
                "checkpoints_verified": w.checkpoints,
                "largest": _checkpoint_json(w.largest, at),
            }
            for w in report.witnesses
        ],
        "kinds": report.kinds,
        "unfinished_requests": report.unfinished,
        "problems": [_finding_json(f) for f in report.problems],
        "warnings": [_finding_json(f) for f in report.warnings],
    }


def _finding_json(finding: Finding) -> dict[str, Any]:
    return {"where": finding.where, "index": finding.index, "message": finding.message}


def _render_report(report: VerifyReport) -> str:
    from liaison.ledger.verify import describe_age
    from liaison.ledger.views import format_time

    latest = report.latest
    lines = [
        f"ledger      {report.ledger}",
        f"origin      {report.origin}",
        f"entries     {report.size:,}  "
        + "  ".join(f"{k} {n:,}" for k, n in sorted(report.kinds.items())),
        f"root        {report.root.hex()}",
        f"checkpoints {report.checkpoints:,}"
        + (
            ""
            if latest is None
            else f"  (newest: {latest.size:,} entries, signed {format_time(latest.time_ms)})"
        ),
    ]
    for w in report.witnesses:
        lines.append(
            f"witness     {w.name.removeprefix('witness ')}: "
            + (
                f"{w.checkpoints:,} of {w.seen:,} checkpoint(s) of this log check out, the "
                f"largest {w.largest.size:,} entries"
                if w.largest is not None
                else f"{w.seen:,} checkpoint(s) of this log, none checks out"
            )
        )
    if report.unfinished:
        lines.append(
            f"unfinished  {report.unfinished} request(s) without an outcome (cut short by a stop)"
        )
    lines += [f"WARNING  {f}" for f in report.warnings]
    lines += [f"PROBLEM  {f}" for f in report.problems]
    if not report.ok:
        lines.append(
            f"FAILED: {len(report.problems)} problem(s); the first is at {report.problems[0].where}"
        )
        return "\n".join(lines)
    verdict = "VERIFIED: every entry, the tree and every checkpoint check out"
    if latest is None:
        lines.append(f"{verdict}; no checkpoint vouches for the entries yet")
        return "\n".join(lines)
    verdict += (
        f", up to the newest checkpoint: {latest.size:,} entries signed "
        f"{format_time(latest.time_ms)} ({describe_age(report.checked_at_ms - latest.time_ms)} ago)"
    )
    witnessed = report.witnessed
    if witnessed is None:
        verdict += "; no witness, so a longer log may exist"
    elif witnessed.size >= latest.size:
        verdict += "; no witness saw more"
    else:
        verdict += f"; witnesses saw {witnessed.size:,} of them, none saw more"
    lines.append(verdict)
    return "\n".join(lines)


def _filters(args: argparse.Namespace, selector_hash: str = "") -> Filters:
    from liaison.ledger.views import Filters, parse_time

    return Filters(
        agency=args.agency,
        subject=args.subject,
        purpose=args.purpose,
        case_ref=args.case_ref,
        node=args.node,
        dataset=args.dataset,
        kind=getattr(args, "kind", ""),
        query_id=getattr(args, "query_id", ""),
        followup_id=getattr(args, "followup_id", ""),
        selector_hash=selector_hash,
        since_ms=parse_time(args.since) if args.since else None,
        until_ms=parse_time(args.until) if args.until else None,
    )


def _selector_hash(value: str, field: str, audit_key: Path | None) -> str:
    from liaison.ledger.entries import AuditKey
    from liaison.ledger.views import selector_hash

    if audit_key is None:
        raise InvalidQuery("searching for a selector needs the audit key (--audit-key FILE)")
    read_text(audit_key, "--audit-key")  # missing, a folder, binary: said in one line
    return selector_hash(value, field, AuditKey.from_file(audit_key))


def _cmd_show(args: argparse.Namespace) -> int:
    from liaison.cli.render import table
    from liaison.ledger.views import format_time, select

    selector = _selector_hash(args.selector, args.field, args.audit_key) if args.selector else ""
    store = _store(args.ledger)
    try:
        found = select(store, _filters(args, selector))
    finally:
        store.close()
    if args.limit > 0:
        found = found[-args.limit :]
    if args.json:
        _print_json([r.as_json() for r in found])
        return EXIT_OK
    rows = [
        [
            str(r.index),
            format_time(r.time_ms),
            r.kind,
            r.query_id[:8],
            f"{r.agency}/{r.subject}" if r.agency else "",
            r.purpose,
            r.case_ref,
            _followup_asked(r) if r.followup_id else f"{r.dataset} {r.operation}".strip(),
            f"{','.join(r.nodes)} {r.outcome}".strip()
            if r.followup_id
            else r.outcome or ",".join(r.nodes),
        ]
        for r in found
    ]
    headers = ["#", "time (UTC)", "kind", "query", "who", "purpose", "case", "asked", "nodes"]
    print(table(headers, rows))
    print(f"{len(found)} entr{'y' if len(found) == 1 else 'ies'}")
    return EXIT_OK


def _followup_asked(row: Row) -> str:
    """A follow-up row's "asked" cell: its id, fields (as decided, with codes), and a word more."""
    text = f"follow-up {row.followup_id[:8]}"
    if row.fields:
        text += ": " + ", ".join(row.fields)
    return f"{text} ({row.detail})" if row.detail else text


def _cmd_prove(args: argparse.Namespace) -> int:
    from liaison.ledger.proofs import consistency_proof, inclusion_proof, write_proof
    from liaison.ledger.verify import verify_ledger

    store = _store(args.ledger)
    try:
        report, tree = verify_ledger(store, _key(args.key), allow_unsigned_tail=True)
        if not report.ok:
            raise LedgerError(
                f"the ledger does not verify ({report.problems[0]}); a proof from it would "
                "prove nothing. Run `liaison audit verify` for details"
            )
        if args.index is not None:
            document = inclusion_proof(store, tree, args.index)
        else:
            sizes = args.consistency
            if len(sizes) > 2:
                raise InvalidQuery("--consistency takes OLD and at most one NEW size")
            document = consistency_proof(
                store, tree, sizes[0], sizes[1] if len(sizes) > 1 else None
            )
    finally:
        store.close()
    write_proof(document, args.out)
    print(f"wrote {document['type']} to {args.out}")
    return EXIT_OK


def _cmd_verify_proof(args: argparse.Namespace) -> int:
    from liaison.errors import CheckpointError, ProofError
    from liaison.ledger.proofs import check_proof_file

    try:
        result = check_proof_file(args.file, _key(args.key))
    except (ProofError, CheckpointError) as exc:
        if args.json:
            _print_json({"ok": False, "error": str(exc)})
        else:
            print(f"FAILED: {exc}")
        return EXIT_FAILED
    if args.json:
        _print_json({"ok": True, "kind": result.kind, "summary": result.summary})
    else:
        print(f"VERIFIED: {result.summary}")
    return EXIT_OK


def _cmd_reconcile(args: argparse.Namespace) -> int:
    from liaison.ledger.reconcile import LedgerFiles, federation_ledgers, reconcile_files

    nodes: list[LedgerFiles]
    if args.federation:
        gateway, nodes = federation_ledgers(args.federation)
    elif args.gateway and args.gateway_key:
        gateway, nodes = LedgerFiles("gateway", args.gateway, args.gateway_key), []
    else:
        raise InvalidQuery("name the ledgers: --federation DIR, or --gateway and --gateway-key")
    nodes += [LedgerFiles(i, ledger, Path(key)) for i, ledger, key in args.node]
    if not nodes:
        raise InvalidQuery("name at least one node: --node ID LEDGER PUB")
    report = reconcile_files(gateway, nodes, allow_unsigned_tail=args.allow_unsigned_tail)
    if args.json:
        _print_json(reconcile_json(report))
    else:
        print(_render_reconcile(report))
    return EXIT_OK if report.ok else EXIT_FAILED


def reconcile_json(report: ReconcileReport) -> dict[str, Any]:
    """`audit reconcile --json`; follow-up keys only where there are follow-ups.

    A federation without follow-ups prints what it always has.
    """
    doc: dict[str, Any] = {
        "ok": report.ok,
        "gateway": _report_json(report.gateway),
        "nodes": {n: _report_json(r) for n, r in report.nodes.items()},
        "receipts": report.receipts,
        "differences": [
            {
                "node_id": d.node_id,
                "query_id": d.query_id,
                "message": d.message,
                "problem": d.problem,
                **({"followup_id": d.followup_id} if d.followup_id else {}),
            }
            for d in report.differences
        ],
    }
    if report.followups.any:
        doc["followups"] = report.followups.as_json()
    return doc


def _render_reconcile(report: ReconcileReport) -> str:
    from liaison.cli.render import table
    from liaison.ledger.reconcile import describe_followups

    def state(r: VerifyReport) -> str:
        return "verified" if r.ok else f"FAILED at {r.problems[0].where}: {r.problems[0].message}"

    rows = [["gateway", f"{report.gateway.size:,}", "", state(report.gateway)]]
    rows += [
        [node, f"{r.size:,}", f"{report.receipts.get(node, 0):,}", state(r)]
        for node, r in sorted(report.nodes.items())
    ]
    out = [table(["ledger", "entries", "receipts", "state"], rows), ""]
    problems = [d for d in report.differences if d.problem]
    notes = [d for d in report.differences if not d.problem]
    if report.differences:
        out.append(
            table(
                ["", "node", "query", "difference"],
                [
                    [
                        "PROBLEM" if d.problem else "note",
                        d.node_id,
                        d.query_id[:8],
                        f"follow-up {d.followup_id[:8]}: {d.message}"
                        if d.followup_id
                        else d.message,
                    ]
                    for d in [*problems, *notes]
                ],
            )
        )
        out.append("")
    followups = describe_followups(report)
    if followups:
        out += [followups, ""]
    out.append(
        "RECONCILED: every answered request is on both sides with the same digests"
        if report.ok
        else f"NOT RECONCILED: {len(problems)} difference(s) show a ledger that lies or lost "
        "entries"
        + (
            ""
            if report.gateway.ok and all(r.ok for r in report.nodes.values())
            else "; a ledger fails verification"
        )
    )
    return "\n".join(out)


def _cmd_hash(args: argparse.Namespace) -> int:
    print(_selector_hash(args.value, args.field, args.audit_key))
    return EXIT_OK


def _cmd_report(args: argparse.Namespace) -> int:
    from liaison.cli.render import table
    from liaison.ledger.verify import verify_ledger
    from liaison.ledger.views import format_time, rows, summarise

    filters = _filters(args)
    store = _store(args.ledger)
    try:
        report, _tree = verify_ledger(store, _key(args.key), allow_unsigned_tail=True)
        summary = summarise(rows(store), filters)
    finally:
        store.close()
    if args.json:
        _print_json({"verified": report.ok, **summary.as_json()})
        return EXIT_OK if report.ok else EXIT_FAILED
    since = "the beginning" if summary.since_ms is None else format_time(summary.since_ms)
    until = "now" if summary.until_ms is None else format_time(summary.until_ms)
    out = [
        f"Queries from {since} to {until}: {summary.queries:,}"
        + (f" ({summary.unfinished} without an outcome)" if summary.unfinished else ""),
        "",
        table(["agency", "queries"], [[a, f"{n:,}"] for a, n in sorted(summary.by_agency.items())]),
        "",
        table(
            ["purpose", "queries"], [[p, f"{n:,}"] for p, n in sorted(summary.by_purpose.items())]
        ),
        "",
        table(
            ["dataset", "queries"], [[d, f"{n:,}"] for d, n in sorted(summary.by_dataset.items())]
        ),
        "",
    ]
    statuses = sorted({s for _, s in summary.by_node_outcome})
    nodes = sorted({n for n, _ in summary.by_node_outcome})
    out.append(
        table(
            ["node", *statuses],
            [[n, *(f"{summary.by_node_outcome[(n, s)]:,}" for s in statuses)] for n in nodes],
        )
    )
    if summary.followups:
        out += ["", *_followup_report(summary)]
    out += [
        "",
        "ledger verified"
        if report.ok
        else f"LEDGER FAILS VERIFICATION ({report.problems[0]}): these numbers cannot be trusted",
    ]
    print("\n".join(out))
    return EXIT_OK if report.ok else EXIT_FAILED


def _followup_report(summary: Summary) -> list[str]:
    """The report's follow-up part: how many, from whom, what became of them, under which codes."""
    from liaison.cli.render import table
    from liaison.handling import describe

    statuses = sorted({s for _, s in summary.followups_by_node_status})
    nodes = sorted({n for n, _ in summary.followups_by_node_status})
    released = sum(summary.released_by_handling.values())
    out = [
        f"Follow-ups: {summary.followups:,}; fields released {released:,}, "
        f"withheld {summary.withheld:,}",
        "",
        table(
            ["agency", "follow-ups"],
            [[a, f"{n:,}"] for a, n in sorted(summary.followups_by_agency.items())],
        ),
        "",
        table(
            ["node", *statuses],
            [
                [n, *(f"{summary.followups_by_node_status[(n, s)]:,}" for s in statuses)]
                for n in nodes
            ],
        ),
    ]
    if summary.released_by_handling:
        out += [
            "",
            table(
                ["handling", "fields released"],
                [
                    [describe(code) if code else "(no code)", f"{n:,}"]
                    for code, n in sorted(summary.released_by_handling.items())
                ],
            ),
        ]
    return out


ACTIONS: dict[str, Callable[[argparse.Namespace], int]] = {
    "verify": _cmd_verify,
    "show": _cmd_show,
    "prove": _cmd_prove,
    "verify-proof": _cmd_verify_proof,
    "reconcile": _cmd_reconcile,
    "hash": _cmd_hash,
    "report": _cmd_report,
}
