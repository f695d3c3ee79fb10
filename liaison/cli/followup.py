"""`liaison followup request|show` and `liaison followups`: follow-up requests after a hit.

An investigator whose query was answered with a hit asks the holding agency
for more about the records its answer named (by the references it issued):
``followup request`` files it through the gateway, which signs it, logs it and
delivers it to the agency's inbox; ``followup show ID`` reads it back with the
agency's signed decision once a duty officer made one (``--wait`` polls until
then); ``followups`` lists yours, marking those past their answer-by time.

Every value released is shown with the handling code the holding agency
chose for it, and what that code means (``liaison.handling``); ``--json``
keeps the code with every value. Where the nodes' public keys are held here
(``--node-keys``, ``$LIAISON_NODE_KEYS`` or the ``--federation`` folder), the
agency's signatures on its acknowledgement and decision are checked here,
not taken on the gateway's word.
"""

from __future__ import annotations

import argparse
import hashlib
import sys
import textwrap
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

from liaison.answer_check import NodeCheck, Verdict
from liaison.cli.exits import ExitCode
from liaison.cli.query_args import bounded
from liaison.cli.verify_answers import (
    Verification,
    add_verify_args,
    verification_from_args,
    verification_to_dict,
)
from liaison.envelope import Envelope, open_envelope
from liaison.errors import CatalogError, EnvelopeError, InvalidQuery, UsageError
from liaison.followup_wire import ack_from_bytes, decision_from_bytes, followup_request_from_bytes
from liaison.followups import (
    ANSWER_WITHIN_S,
    FOLLOWUP_ACK_TYPE,
    FOLLOWUP_DECISION_TYPE,
    FollowUpAck,
    FollowUpDecision,
    FollowUpFiling,
    FollowUpRequest,
    FollowUpStatus,
    FollowUpView,
    Urgency,
    validate_filing,
)
from liaison.handling import describe
from liaison.keys import VerifyingKey

NOT_VERIFIED = "NOT VERIFIED"
UNVERIFIED = "UNVERIFIED"
OVERDUE = "OVERDUE"
# How often `followup show --wait` asks the gateway again.
POLL_INTERVAL_S = 1.0
# Off a terminal, a progress line at most this often.
PROGRESS_EVERY_S = 5.0
MAX_WAIT_S = 24 * 3600

EXITS = {
    "request": (
        (ExitCode.OK, "the agency took the request in (or refused it at once: an outcome)"),
        (ExitCode.ERROR, "nothing was filed: gateway unreachable, token refused, ..."),
        (ExitCode.USAGE, "usage error: a bad option or value; nothing was sent"),
        (ExitCode.SOME_NOT_ANSWERED, "filed and logged, but its delivery is not confirmed yet"),
        (
            ExitCode.NONE_ANSWERED,
            "filed and logged, but not delivered: the agency did not take "
            "it in (the reason is shown)",
        ),
        (ExitCode.NOT_VERIFIED, "what the gateway shows is not what the agency signed"),
    ),
    "show": (
        (ExitCode.OK, "decided: approved, approved in part, or refused"),
        (ExitCode.ERROR, "nothing shown: no such request of yours, gateway unreachable, ..."),
        (ExitCode.USAGE, "usage error"),
        (ExitCode.SOME_NOT_ANSWERED, "still pending (also when --wait ran out)"),
        (ExitCode.NONE_ANSWERED, "not delivered: the agency never took it in"),
        (ExitCode.NOT_VERIFIED, "what the gateway shows is not what the agency signed"),
    ),
    "followups": (
        (ExitCode.OK, "listed"),
        (ExitCode.ERROR, "nothing listed: gateway unreachable, token refused, ..."),
        (ExitCode.USAGE, "usage error"),
        (
            ExitCode.NOT_VERIFIED,
            "for at least one, what the gateway shows is not what the agency signed",
        ),
    ),
}


def _epilog(command: str) -> str:
    lines = ["exit status:"]
    for code, text in EXITS[command]:
        lines += textwrap.wrap(text, 79, initial_indent=f"  {code:d}  ", subsequent_indent="     ")
    return "\n".join(lines)


# --- the command line ----------------------------------------------------------------


def _connection_args(p: argparse.ArgumentParser) -> None:
    """How to reach the gateway and as whom, as `liaison query` takes them."""
    p.add_argument(
        "--gateway",
        help="gateway address HOST:PORT; for replicas of one gateway, several, comma-separated",
    )
    p.add_argument("--token", help="bearer JWT (or --token-file)")
    p.add_argument("--token-file", type=Path, help="a file holding the bearer JWT")
    p.add_argument(
        "--tls-ca", type=Path, help="connect with TLS, verifying the gateway against this CA (PEM)"
    )
    p.add_argument(
        "--federation",
        type=Path,
        help="a demo folder: take gateway address, token and node keys from it",
    )
    add_verify_args(p)
    p.add_argument("--json", action="store_true", help="print JSON")


def add_followup(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register `liaison followup request|show` and `liaison followups`."""
    p = sub.add_parser(
        "followup",
        help="ask the agency whose answer named records for more, and read its decision",
    )
    inner = p.add_subparsers(dest="action", required=True)
    within = ", ".join(f"{u.value} ({_span(ANSWER_WITHIN_S[u])})" for u in Urgency)
    r = inner.add_parser(
        "request",
        help="file a follow-up request with the agency whose answer named the records",
        description="The gateway signs the request, logs it, and delivers it to the agency's "
        "inbox before this returns; a duty officer there decides, field by field.",
        epilog=_epilog("request"),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    r.add_argument("--query-id", required=True, help="the query whose answer named the records")
    r.add_argument("--node", required=True, help="the agency's node that answered")
    r.add_argument(
        "--ref",
        action="append",
        required=True,
        metavar="REF",
        help="a record reference from that answer (repeat for several)",
    )
    r.add_argument("--fields", required=True, help="comma-separated fields you ask for")
    r.add_argument("--purpose", required=True, help="e.g. csam-investigation")
    r.add_argument("--case-ref", required=True, help="your case reference")
    r.add_argument("--legal-basis", default="", help="the legal basis you cite, if any")
    r.add_argument(
        "--urgency",
        required=True,
        choices=[u.value for u in Urgency],
        help=f"sets the answer-by time: {within}",
    )
    r.add_argument(
        "--text", default="", help="your words to the agency's duty officer (at most 4000 chars)"
    )
    _connection_args(r)

    s = inner.add_parser(
        "show",
        help="one follow-up request, with the agency's signed decision once there is one",
        epilog=_epilog("show"),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    s.add_argument("id", help="the follow-up request's id")
    s.add_argument(
        "--wait",
        type=bounded(0, MAX_WAIT_S),
        default=0,
        metavar="SECONDS",
        help="while it is pending, ask again every second for up to SECONDS (progress on "
        "standard error)",
    )
    _connection_args(s)

    ls = sub.add_parser(
        "followups",
        help="list your follow-up requests, newest first",
        epilog=_epilog("followups"),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ls.add_argument(
        "--overdue",
        action="store_true",
        help="only those past their answer-by time and still pending",
    )
    _connection_args(ls)


def _span(seconds: int) -> str:
    if seconds % 86400 == 0 and seconds >= 2 * 86400:
        return f"{seconds // 86400} days"
    return f"{seconds // 3600} h"


def _split(text: str) -> tuple[str, ...]:
    return tuple(dict.fromkeys(f.strip() for f in text.split(",") if f.strip()))


def filing_from_args(args: argparse.Namespace) -> FollowUpFiling:
    """The filing the command line describes, checked as the gateway will check it.

    UsageError, before anything is sent, for what the gateway would refuse.
    """
    from liaison.catalog import CATALOG_V1

    filing = FollowUpFiling(
        query_id=args.query_id.strip(),
        node_id=args.node.strip(),
        record_refs=tuple(r.strip() for r in args.ref),
        fields=_split(args.fields),
        purpose=args.purpose.strip(),
        case_ref=args.case_ref,
        urgency=Urgency(args.urgency),
        legal_basis=args.legal_basis,
        text=args.text,
    )
    try:
        return validate_filing(filing, CATALOG_V1)
    except (InvalidQuery, CatalogError) as exc:
        raise UsageError(str(exc)) from exc


def cmd_followup(args: argparse.Namespace) -> int:
    if args.action == "request":
        return _request(args)
    return _show(args)


def _connect(args: argparse.Namespace) -> tuple[str, str, Verification]:
    from liaison.cli.query_cmd import gateway_and_token

    # The keys are loaded before anything is sent: a bad folder is said first.
    verification = verification_from_args(args)
    gateway, token = gateway_and_token(args)
    return gateway, token, verification


def _request(args: argparse.Namespace) -> int:
    from liaison import client

    filing = filing_from_args(args)
    gateway, token, verification = _connect(args)
    view = client.file_followup(gateway, token, filing, tls_ca=args.tls_ca)
    shown = examine(view, verification)
    _print_one(shown, verification, as_json=args.json, filed=True)
    if shown.failed:
        return ExitCode.NOT_VERIFIED
    if view.status is FollowUpStatus.NOT_DELIVERED:
        return ExitCode.NONE_ANSWERED
    if view.ack is None:
        return ExitCode.SOME_NOT_ANSWERED
    return ExitCode.OK


def _show(args: argparse.Namespace) -> int:
    from liaison import client

    followup_id = args.id.strip()
    if not followup_id:
        raise UsageError("name the follow-up request's id (`liaison followups` lists yours)")
    gateway, token, verification = _connect(args)
    view = client.get_followup(gateway, token, followup_id, tls_ca=args.tls_ca)
    if args.wait and view.status is FollowUpStatus.PENDING:
        view = _wait(
            lambda: client.get_followup(gateway, token, followup_id, tls_ca=args.tls_ca),
            view,
            args.wait,
        )
    shown = examine(view, verification)
    _print_one(shown, verification, as_json=args.json)
    if shown.failed:
        return ExitCode.NOT_VERIFIED
    if view.status is FollowUpStatus.NOT_DELIVERED:
        return ExitCode.NONE_ANSWERED
    if view.status is FollowUpStatus.PENDING:
        return ExitCode.SOME_NOT_ANSWERED
    return ExitCode.OK


def cmd_followups(args: argparse.Namespace) -> int:
    from liaison import client

    gateway, token, verification = _connect(args)
    views = client.list_followups(gateway, token, overdue_only=args.overdue, tls_ca=args.tls_ca)
    shown = [examine(v, verification) for v in views]
    now = _now_ms()
    if args.json:
        print(
            _to_json(
                {
                    "overdue_only": bool(args.overdue),
                    "followups": [to_dict(s, verification, now) for s in shown],
                }
            )
        )
    else:
        print(render_list(shown, now, overdue_only=args.overdue))
    failed = [s for s in shown if s.failed]
    for s in failed:
        print(f"verify: {s.view.followup_id}: {s.check}", file=sys.stderr)
    return ExitCode.NOT_VERIFIED if failed else ExitCode.OK


def _wait(
    ask: Callable[[], FollowUpView], view: FollowUpView, wait_s: int, stream: TextIO | None = None
) -> FollowUpView:
    """Ask again every ``POLL_INTERVAL_S`` while ``view`` is pending, for up to ``wait_s``."""
    out = stream or sys.stderr
    tty = out.isatty()
    started = time.monotonic()
    deadline = started + wait_s
    shown_at = float("-inf")
    drawn = False
    while view.status is FollowUpStatus.PENDING:
        now = time.monotonic()
        left = deadline - now
        if tty or now - shown_at >= PROGRESS_EVERY_S:
            line = (
                f"waiting for {view.node_id}'s decision on {view.followup_id}: "
                f"{round(now - started)}s of {wait_s}s"
            )
            if tty:
                print(f"\r{line}\x1b[K", end="", file=out, flush=True)
                drawn = True
            else:
                print(line, file=out, flush=True)
            shown_at = now
        if left <= 0:
            break
        time.sleep(min(POLL_INTERVAL_S, left))
        view = ask()
    if drawn:
        print(file=out, flush=True)
    if view.status is FollowUpStatus.PENDING:
        print(f"still pending after {wait_s}s", file=out, flush=True)
    else:
        print(f"{view.node_id} decided: {view.status.value}", file=out, flush=True)
    return view


# --- checking what the agency signed, here ---------------------------------------------


@dataclass(frozen=True, slots=True)
class Shown:
    """A follow-up as the gateway gave it, with what this client could check of it."""

    view: FollowUpView
    request: FollowUpRequest | None
    ack: FollowUpAck | None
    decision: FollowUpDecision | None
    # None: verification is off.
    check: NodeCheck | None

    @property
    def failed(self) -> bool:
        return self.check is not None and self.check.verdict is Verdict.FAILED


def examine(view: FollowUpView, verification: Verification) -> Shown:
    """Parse ``view``'s signed parts; where the node's key is held, check its signatures.

    The acknowledgement and the decision must verify under the node's key,
    name this follow-up and this node, and bind to the very request the
    gateway signed (its SHA-256); the status the gateway shows must be what
    they say. A problem makes the verdict FAILED (and its values are not shown).
    """
    keys = verification.keys
    node_id = view.node_id
    key = keys.get(node_id) if keys is not None else None
    problems: list[str] = []
    request = ack = decision = None
    try:
        request = followup_request_from_bytes(view.signed_request.payload)
    except InvalidQuery as exc:
        problems.append(f"the gateway's signed request does not parse ({exc})")
    if request is not None and (
        request.followup_id != view.followup_id or request.node_id != node_id
    ):
        problems.append("the gateway's signed request is for another follow-up or agency")
    digest = hashlib.sha256(view.signed_request.payload).digest()
    if view.ack is not None:
        try:
            ack = ack_from_bytes(_payload(view.ack, FOLLOWUP_ACK_TYPE, key))
        except (EnvelopeError, InvalidQuery) as exc:
            problems.append(f"acknowledgement: {exc}")
        if ack is not None and (ack.followup_id, ack.node_id, ack.request_digest) != (
            view.followup_id,
            node_id,
            digest,
        ):
            problems.append("the acknowledgement is for another request")
            ack = None
    if view.decision is not None:
        try:
            decision = decision_from_bytes(_payload(view.decision, FOLLOWUP_DECISION_TYPE, key))
        except (EnvelopeError, InvalidQuery) as exc:
            problems.append(f"decision: {exc}")
        if decision is not None and (
            decision.followup_id,
            decision.node_id,
            decision.request_digest,
        ) != (view.followup_id, node_id, digest):
            problems.append("the decision is for another request")
            decision = None
    problems += _status_problems(view, ack, decision)
    check: NodeCheck | None
    if problems:
        check = NodeCheck(node_id, Verdict.FAILED, "; ".join(problems))
    elif keys is None:
        check = None
    elif key is None:
        check = NodeCheck(node_id, Verdict.UNVERIFIABLE, f"no key for {node_id} is held here")
    elif view.ack is None and view.decision is None:
        check = NodeCheck(node_id, Verdict.NOT_ANSWERED, "the agency has signed nothing yet")
    else:
        check = NodeCheck(node_id, Verdict.VERIFIED)
    return Shown(view, request, ack, decision, check)


def _payload(envelope: Envelope, payload_type: str, key: VerifyingKey | None) -> bytes:
    if key is None:
        # No key held: read, unchecked, what the gateway passed on.
        return envelope.payload
    return open_envelope(envelope, payload_type, {key.key_id: key})


def _status_problems(
    view: FollowUpView, ack: FollowUpAck | None, decision: FollowUpDecision | None
) -> list[str]:
    status = view.status
    if decision is not None and status.value != decision.outcome.value:
        return [f"shown as {status.value}, but the agency decided {decision.outcome.value}"]
    if status in (FollowUpStatus.APPROVED, FollowUpStatus.PARTIAL) and view.decision is None:
        return [f"shown as {status.value} without the agency's signed decision"]
    if status is FollowUpStatus.REFUSED and view.decision is None and view.ack is None:
        return ["shown as refused without the agency's signed decision or acknowledgement"]
    if status is FollowUpStatus.REFUSED and view.decision is None and ack and ack.accepted:
        return ["shown as refused, but the agency's acknowledgement took the request in"]
    if status is FollowUpStatus.PENDING and ack is not None and not ack.accepted:
        return ["shown as pending, but the agency's acknowledgement refused it"]
    return []


# --- showing it -------------------------------------------------------------------------


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


def _when(ms: int) -> str:
    if ms <= 0:
        return "-"
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _took(ms: int) -> str:
    seconds = ms / 1000
    if seconds < 120:
        return f"{seconds:.1f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def _status_text(view: FollowUpView, now: int) -> str:
    text = view.status.value
    return f"{text}, {OVERDUE}" if view.overdue(now) else text


def _signatures(shown: Shown, verification: Verification) -> str:
    check = shown.check
    if check is None:
        return f"not checked ({verification.source})"
    if check.verdict is Verdict.VERIFIED:
        return f"verified against {check.node_id}'s key ({verification.source})"
    if check.verdict is Verdict.FAILED:
        return f"{NOT_VERIFIED}: {check.reason}"
    if check.verdict is Verdict.UNVERIFIABLE:
        return f"{UNVERIFIED}: {check.reason}; what is shown rests on the gateway's word"
    return check.reason


def render_one(shown: Shown, verification: Verification, now: int, *, filed: bool = False) -> str:
    """One follow-up for people: what was asked, what the agency said, every value's code."""
    view, request, ack, decision = shown.view, shown.request, shown.ack, shown.decision
    head = "filed: " if filed else ""
    lines = [f"{head}follow-up {view.followup_id} to {view.node_id}: {_status_text(view, now)}"]
    facts: list[tuple[str, str]] = []
    if request is not None:
        facts += [
            ("about query", f"{request.query_id}, record(s) {', '.join(request.record_refs)}"),
            ("asked for", ", ".join(request.fields)),
            (
                "purpose",
                f"{request.purpose}, case {request.case_ref}"
                + (f", legal basis {request.legal_basis}" if request.legal_basis else ""),
            ),
            ("urgency", request.urgency.value),
        ]
        if request.text:
            facts.append(("your words", request.text))
    overdue = f" ({OVERDUE})" if view.overdue(now) else ""
    facts.append(("filed", f"{_when(view.filed_at_ms)}; answer by {_when(view.answer_by_ms)}"))
    facts[-1] = (facts[-1][0], facts[-1][1] + overdue)
    if ack is not None:
        taken = "took it in" if ack.accepted else f"refused it at once: {ack.reason or '-'}"
        facts.append(("delivered", f"{_when(ack.received_at_ms)}: the agency {taken}"))
        if ack.accepted and ack.decidable_fields:
            facts.append(("decidable", ", ".join(ack.decidable_fields)))
    if decision is not None:
        by = decision.officer + (f" ({decision.officer_issuer})" if decision.officer_issuer else "")
        took = ""
        if view.filed_at_ms and decision.decided_at_ms >= view.filed_at_ms:
            took = f", {_took(decision.decided_at_ms - view.filed_at_ms)} after filing"
        facts.append(("decided", f"{_when(decision.decided_at_ms)} by {by}{took}"))
        if decision.rules:
            facts.append(("under rule(s)", ", ".join(decision.rules)))
        if decision.reason:
            facts.append(("reason", decision.reason))
    if view.detail:
        facts.append(("note", view.detail))
    facts.append(("signatures", _signatures(shown, verification)))
    width = max(len(k) for k, _ in facts)
    lines += [f"  {k.ljust(width)}  {v}" for k, v in facts]
    if view.decision is not None and shown.failed:
        lines += ["", f"released values not shown: {NOT_VERIFIED}; do not rely on this decision"]
    elif decision is not None:
        lines += _decision_lines(shown)
    return "\n".join(lines)


def _decision_lines(shown: Shown) -> list[str]:
    decision = shown.decision
    assert decision is not None
    lines: list[str] = []
    released = [d for d in decision.field_decisions if d.released]
    refused = [d for d in decision.field_decisions if not d.released]
    if released:
        lines += ["", "released (each value with the holding agency's handling code):"]
        if not decision.rows:
            lines.append(
                "  no values: the records hold none for " + ", ".join(d.field for d in released)
            )
        width = max((len(f) for f in decision.fields), default=0)
        for i, row in enumerate(decision.rows, start=1):
            if len(decision.rows) > 1:
                lines.append(f"  record {i} of {len(decision.rows)}")
            for name, value in zip(decision.fields, row, strict=True):
                shown_value = "(none)" if value is None else value
                code = decision.handling_of(name)
                lines.append(f"    {name.ljust(width)}  {shown_value}   [{describe(code)}]")
    if refused:
        lines += ["", "refused:"]
        width = max(len(d.field) for d in refused)
        lines += [f"  {d.field.ljust(width)}  {d.reason or '-'}" for d in refused]
    return lines


def render_list(shown: Sequence[Shown], now: int, *, overdue_only: bool = False) -> str:
    if not shown:
        return (
            "no follow-up requests of yours are overdue"
            if overdue_only
            else "you have filed no follow-up requests at this gateway"
        )
    rows = []
    for s in shown:
        v = s.view
        check = "not checked" if s.check is None else s.check.verdict.value
        rows.append(
            [
                v.followup_id,
                v.node_id,
                _status_text(v, now),
                s.request.urgency.value if s.request else "-",
                _when(v.filed_at_ms),
                _when(v.answer_by_ms),
                ", ".join(s.request.fields) if s.request else "-",
                check,
            ]
        )
    headers = ["id", "agency", "status", "urgency", "filed", "answer by", "fields", "check"]
    from liaison.cli.render import table

    overdue = sum(1 for s in shown if s.view.overdue(now))
    out = table(headers, rows)
    if overdue:
        out += (
            f"\n\n{overdue} {OVERDUE}: past the answer-by time their urgency set, and not "
            "decided yet"
        )
    return out + "\n\n`liaison followup show ID` shows one, with the released values"


def to_dict(shown: Shown, verification: Verification, now: int) -> dict[str, Any]:
    """One follow-up as `--json` prints it: every released value keeps its handling code."""
    view, request, ack, decision = shown.view, shown.request, shown.ack, shown.decision
    out: dict[str, Any] = {
        "followup_id": view.followup_id,
        "node_id": view.node_id,
        "status": view.status.value,
        "overdue": view.overdue(now),
        "filed_at_ms": view.filed_at_ms,
        "answer_by_ms": view.answer_by_ms,
        "decided_at_ms": view.decided_at_ms or None,
        "detail": view.detail or None,
        "request": None,
        "acknowledgement": None,
        "decision": None,
    }
    if request is not None:
        out["request"] = {
            "query_id": request.query_id,
            "record_refs": list(request.record_refs),
            "fields": list(request.fields),
            "purpose": request.purpose,
            "case_ref": request.case_ref,
            "legal_basis": request.legal_basis,
            "urgency": request.urgency.value,
            "text": request.text,
        }
    if ack is not None:
        out["acknowledgement"] = {
            "accepted": ack.accepted,
            "reason": ack.reason,
            "received_at_ms": ack.received_at_ms,
            "rules": list(ack.rules),
            "decidable_fields": list(ack.decidable_fields),
        }
    if decision is not None and not shown.failed:
        out["decision"] = _decision_to_dict(decision)
    out["verification"] = verification_to_dict(shown.check, verification.source)
    return out


def _decision_to_dict(decision: FollowUpDecision) -> dict[str, Any]:
    codes = {d.handling for d in decision.field_decisions if d.released and d.handling}
    return {
        "outcome": decision.outcome.value,
        "decided_at_ms": decision.decided_at_ms,
        "officer": decision.officer,
        "officer_issuer": decision.officer_issuer,
        "reason": decision.reason,
        "rules": list(decision.rules),
        "fields": [
            {
                "field": d.field,
                "released": d.released,
                "handling": d.handling if d.released else None,
                "reason": d.reason,
            }
            for d in decision.field_decisions
        ],
        "records": [
            {
                name: {"value": value, "handling": decision.handling_of(name)}
                for name, value in zip(decision.fields, row, strict=True)
            }
            for row in decision.rows
        ],
        "handling_codes": {code: describe(code) for code in sorted(codes)},
    }


def _to_json(value: Any) -> str:
    import json

    return json.dumps(value, indent=2, sort_keys=False)


def _print_one(
    shown: Shown, verification: Verification, *, as_json: bool, filed: bool = False
) -> None:
    now = _now_ms()
    if as_json:
        print(_to_json(to_dict(shown, verification, now)))
        return
    print(render_one(shown, verification, now, filed=filed))
    view = shown.view
    if filed and view.status is FollowUpStatus.PENDING:
        print(f"\nsee the decision with: liaison followup show {view.followup_id} --wait 60")
