"""`liaison node inbox` and `liaison node decide`: a duty officer's command line.

Both talk to the node's inbox port with the officer's own token; the node
bounds every decision by its policy, signs it and receipts it.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from liaison.catalog import CATALOG_V1
from liaison.cli.inputs import read_token
from liaison.cli.render import table, to_json
from liaison.config import INBOX_ADDRESS_FILE, load_node_config
from liaison.errors import LiaisonError, UsageError
from liaison.followup_wire import decision_from_bytes
from liaison.followups import FieldChoice, InboxItem
from liaison.handling import MEANINGS, describe
from liaison.inbox_client import Inbox


def add_inbox_actions(inner: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """`node inbox` and `node decide`, beside `node serve` and `node check`."""
    i = inner.add_parser(
        "inbox",
        help="list follow-up requests and hit notices in this node's inbox (duty officers)",
        description="Follow-up requests waiting for a decision, newest first. With --show, one "
        "request with what a release would hold.",
    )
    _connection(i)
    i.add_argument("--show", metavar="ID", help="show one item in full")
    i.add_argument("--overdue", action="store_true", help="only requests past their answer-by time")
    i.add_argument("--all", action="store_true", help="also decided requests and hit notices")
    i.add_argument("--json", action="store_true", help="print JSON")
    codes = "; ".join(f"{c.value}: {m}" for c, m in MEANINGS.items())
    d = inner.add_parser(
        "decide",
        help="approve, approve in part, or refuse a follow-up request (duty officers)",
        description="Decide a follow-up request field by field. A field neither released nor "
        f"refused is refused. Handling codes: {codes}.",
    )
    d.add_argument("id", help="the request's id, as `liaison node inbox` lists it")
    _connection(d)
    d.add_argument(
        "--release",
        action="append",
        default=[],
        metavar="FIELD[=CODE]",
        help="release FIELD, under handling CODE (H0-H3; default: the policy's); repeatable",
    )
    d.add_argument(
        "--refuse",
        action="append",
        default=[],
        metavar="FIELD[=REASON]",
        help="refuse FIELD, saying why; repeatable",
    )
    d.add_argument("--reason", default="", help="the reason for the decision as a whole")
    d.add_argument("--json", action="store_true", help="print JSON")


def _connection(p: argparse.ArgumentParser) -> None:
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument(
        "--config", type=Path, help="the node's config: its inbox address and CA are read from it"
    )
    where.add_argument("--inbox", metavar="HOST:PORT", help="the node's inbox address")
    p.add_argument("--ca", type=Path, help="CA certificate (PEM) of a TLS inbox")
    p.add_argument("--token", help="the duty officer's bearer JWT (or --token-file)")
    p.add_argument("--token-file", type=Path, help="a file holding the bearer JWT")


def _open(args: argparse.Namespace) -> Inbox:
    token = args.token
    if args.token_file is not None:
        token = read_token(args.token_file, "--token-file")
    if not token:
        raise UsageError("give the duty officer's token with --token or --token-file")
    address, ca = args.inbox, args.ca
    if args.config is not None:
        config = load_node_config(args.config, CATALOG_V1)
        published = config.state_dir / INBOX_ADDRESS_FILE
        if config.inbox is None:
            raise LiaisonError(f"{args.config} serves no inbox; add an [inbox] table")
        if not published.exists():
            raise LiaisonError(
                f"the node of {args.config} has not published its inbox address ({published}); "
                "is it running?"
            )
        address = published.read_text().strip()
        if ca is None and config.tls is not None:
            ca = config.tls.ca
    return Inbox(address, token, ca)


def cmd_inbox(args: argparse.Namespace) -> int:
    with _open(args) as inbox:
        if args.action == "decide":
            return _decide(args, inbox)
        if args.show:
            item = inbox.item(args.show)
            print(to_json(item_to_dict(item)) if args.json else render_item(item))
            return 0
        items = inbox.items(overdue_only=args.overdue, include_all=args.all)
    if args.json:
        print(to_json({"items": [item_to_dict(i) for i in items]}))
    else:
        print(render_items(items))
    return 0


def _decide(args: argparse.Namespace, inbox: Inbox) -> int:
    choices = []
    for text in args.release:
        field, _, code = text.partition("=")
        choices.append(FieldChoice(field.strip(), True, code.strip()))
    for text in args.refuse:
        field, _, reason = text.partition("=")
        choices.append(FieldChoice(field.strip(), False, "", reason.strip()))
    if not choices:
        raise UsageError("decide at least one field with --release or --refuse")
    envelope = inbox.decide(args.id, choices, args.reason)
    decision = decision_from_bytes(envelope.payload)
    if args.json:
        print(to_json(decision_to_dict(decision)))
        return 0
    released = [d for d in decision.field_decisions if d.released]
    print(
        f"follow-up {decision.followup_id}: {decision.outcome.value}; the node signed the "
        "decision and holds its receipt, and the gateway hands it to the investigator"
    )
    for d in decision.field_decisions:
        if d.released:
            print(f"  released {d.field} [{describe(d.handling)}]")
        else:
            print(f"  refused  {d.field}: {d.reason}")
    if released:
        print(f"  {len(decision.rows)} record(s) released")
    return 0


def when(ms: int) -> str:
    """A time in UTC, to the second ("-" for none)."""
    if ms <= 0:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(ms / 1000)) + "Z"


def due(item: InboxItem, now_ms: int) -> str:
    """When a request must be answered ("in 3.0 h", "OVERDUE by 20 min"), or its time."""
    if item.kind != "follow-up" or item.answer_by_ms <= 0:
        return "-"
    left = (item.answer_by_ms - now_ms) / 1000
    if item.status != "pending":
        return when(item.answer_by_ms)
    if left < 0:
        return f"OVERDUE by {span(-left)}"
    return f"in {span(left)}"


def span(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    if seconds < 172_800:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86_400:.0f} days"


def render_items(items: list[InboxItem]) -> str:
    if not items:
        return "the inbox is empty (pending requests; --all shows decided ones and hit notices)"
    now = int(time.time() * 1000)
    rows = [
        [
            i.id,
            i.kind,
            i.status,
            f"{i.requester.agency}/{i.requester.subject}",
            i.urgency.value if i.urgency else "-",
            due(i, now),
            i.purpose,
            i.case_ref,
            ", ".join(i.fields) or ", ".join(i.record_refs),
        ]
        for i in items
    ]
    headers = ["id", "kind", "status", "from", "urgency", "answer by", "purpose", "case", "asks"]
    return table(headers, rows)


def render_item(item: InboxItem) -> str:
    now = int(time.time() * 1000)
    r = item.requester
    lines = [
        f"{item.kind} {item.id} ({item.status})",
        f"  from        {r.agency} / {r.subject} (roles {', '.join(r.roles) or '-'})",
        f"  purpose     {item.purpose}, case {item.case_ref}"
        + (f", legal basis {item.legal_basis}" if item.legal_basis else ""),
        f"  received    {when(item.received_at_ms)}",
    ]
    if item.kind == "hit":
        lines.append(
            f"  {r.agency} matched this agency's record(s) {', '.join(item.record_refs)} in "
            f"query {item.query_id} ({item.dataset})"
        )
        return "\n".join(lines)
    lines += [
        f"  urgency     {item.urgency.value if item.urgency else '-'}; answer by "
        f"{when(item.answer_by_ms)} ({due(item, now)})",
        f"  asks for    {', '.join(item.fields)} of {', '.join(item.record_refs)} "
        f"(query {item.query_id}, {item.dataset})",
        f"  may release {', '.join(item.decidable_fields) or 'nothing (the policy refuses all)'}"
        + (f"; default codes {item.default_handling}" if item.default_handling else ""),
        f"  deciders    roles {', '.join(item.officer_roles) or '-'} "
        f"(rules {', '.join(item.rules)})",
    ]
    if item.text:
        lines += ["  their words:", *(f"    {line}" for line in item.text.splitlines())]
    if item.preview_fields:
        lines += [
            "  what a release would hold:",
            table(
                list(item.preview_fields),
                [[c if c is not None else "" for c in row] for row in item.preview_rows],
                indent="    ",
            ),
        ]
    if item.decision is not None:
        decision = decision_from_bytes(item.decision.payload)
        lines.append(
            f"  decided     {decision.outcome.value} by {decision.officer} at "
            f"{when(decision.decided_at_ms)}"
        )
        for d in decision.field_decisions:
            state = f"released [{d.handling}]" if d.released else f"refused: {d.reason}"
            lines.append(f"    {d.field}: {state}")
    elif item.status == "pending":
        lines.append(
            f"  decide with: liaison node decide {item.id} --release FIELD[=H1] "
            "--refuse FIELD=REASON --reason TEXT"
        )
    return "\n".join(lines)


def item_to_dict(item: InboxItem) -> dict[str, Any]:
    r = item.requester
    return {
        "id": item.id,
        "kind": item.kind,
        "status": item.status,
        "received_at_ms": item.received_at_ms,
        "answer_by_ms": item.answer_by_ms,
        "overdue": item.overdue(int(time.time() * 1000)),
        "requester": {"agency": r.agency, "subject": r.subject, "roles": list(r.roles)},
        "purpose": item.purpose,
        "case_ref": item.case_ref,
        "legal_basis": item.legal_basis,
        "urgency": item.urgency.value if item.urgency else None,
        "text": item.text,
        "query_id": item.query_id,
        "dataset": item.dataset,
        "record_refs": list(item.record_refs),
        "fields": list(item.fields),
        "decidable_fields": list(item.decidable_fields),
        "officer_roles": list(item.officer_roles),
        "preview": {
            "fields": list(item.preview_fields),
            "rows": [list(row) for row in item.preview_rows],
        },
        "decision": decision_to_dict(decision_from_bytes(item.decision.payload))
        if item.decision is not None
        else None,
    }


def decision_to_dict(decision: Any) -> dict[str, Any]:
    return {
        "followup_id": decision.followup_id,
        "node_id": decision.node_id,
        "outcome": decision.outcome.value,
        "decided_at_ms": decision.decided_at_ms,
        "officer": decision.officer,
        "reason": decision.reason,
        "fields": [
            {
                "field": d.field,
                "released": d.released,
                "handling": d.handling or None,
                "reason": d.reason,
            }
            for d in decision.field_decisions
        ],
        "released": {
            "fields": list(decision.fields),
            "rows": [list(row) for row in decision.rows],
        },
    }
