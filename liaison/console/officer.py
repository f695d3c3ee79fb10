"""A duty officer's side of the console, beside a node: inbox, policy, health.

Nothing here decides anything. The inbox pages go through the node's
InboxService with the signed-in officer's own token (``liaison.inbox_client``,
as `liaison node inbox` / `liaison node decide` do), so the node checks the
officer, bounds the decision by its policy, signs it and receipts it. The
policy page reads the node's policy file with the policy package's own
loader and explains hypothetical requests with ``policies.analysis.explain``
(as `liaison policy explain`); the health page runs `liaison node check`'s
checks and asks the inbox's gRPC health service.

Config (``[console.node]`` of the console's config file)::

    node_config = "../nodes/freedonia/node.toml"   # the node's own config
    inbox = "127.0.0.1:50071"    # optional: default, the address the node publishes
    ca = "../pki/ca.pem"         # optional: default, the node's [tls] client_ca
    role = "duty-officer"        # optional: the role that opens these pages
"""

from __future__ import annotations

import hashlib
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import FormData
from starlette.requests import Request
from starlette.responses import Response

from liaison.catalog import CATALOG_V1
from liaison.checks import CheckResult
from liaison.cli.inbox import due, when
from liaison.cli.query_args import parse_predicates
from liaison.cli.render import describe_query, headline, requester_text
from liaison.client import channel
from liaison.config import INBOX_ADDRESS_FILE, NodeConfig, _Reader, load_node_config
from liaison.console.oidc import SignedIn
from liaison.console.web import (
    Console,
    Side,
    action,
    form_text,
    kept_or_404,
    see_other,
    session_of,
    view,
)
from liaison.envelope import Envelope
from liaison.errors import (
    CatalogError,
    ConfigError,
    InvalidQuery,
    LiaisonError,
    NotFound,
    StateUnavailable,
)
from liaison.followup_wire import decision_from_bytes
from liaison.followups import FieldChoice, FollowUpDecision, InboxItem
from liaison.handling import MEANINGS, describe, handling_code
from liaison.inbox_client import Inbox
from liaison.messages import Requester
from liaison.query import (
    Comparator,
    Operation,
    Query,
    validate_case_ref,
    validate_legal_basis,
    validate_query,
)
from node.check import check_node
from policies import decide_followup, load_policy, may_release
from policies.analysis import Explanation, explain
from policies.model import (
    ANY,
    DEFAULT_NEAR_BUDGET,
    Effect,
    Policy,
    RateLimit,
    RowFilter,
    Rule,
)

DEFAULT_ROLE = "duty-officer"
# The inbox's gRPC service, as the node registers it with its health service.
INBOX_SERVICE = "liaison.v1.InboxService"
HEALTH_TIMEOUT_S = 3.0
# Decided requests and hit notices shown on the inbox page (the newest).
RECENT = 20
# Ids the node issues: a follow-up id, or "hit-<query id>". Anything else is not one.
ITEM_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,127}")
OPERATIONS = {
    "match": Operation.MATCH,
    "count": Operation.COUNT,
    "count_by": Operation.COUNT_BY,
    "records": Operation.RECORDS,
}


@dataclass(frozen=True, slots=True)
class NodeSettings:
    """Where the node's config and inbox are, as ``[console.node]`` says."""

    node_config: Path
    inbox: str | None
    ca: Path | None


def settings(table: _Reader) -> tuple[NodeSettings, str]:
    """``[console.node]``, checked: the settings and the role that opens the pages."""
    table.check_keys({"node_config", "inbox", "ca", "role"})
    inbox = table.text("inbox") if "inbox" in table.table else None
    if inbox is not None and (":" not in inbox or not inbox.rpartition(":")[2].isdigit()):
        raise ConfigError(f"{table.where}: `inbox` must be HOST:PORT")
    ca = table.path("ca") if "ca" in table.table else None
    return (
        NodeSettings(node_config=table.path("node_config"), inbox=inbox, ca=ca),
        table.text("role", DEFAULT_ROLE),
    )


class NodeSide:
    """The node as the console sees it: its config (loaded once) and its inbox."""

    def __init__(self, s: NodeSettings) -> None:
        self.settings = s
        self.config: NodeConfig = load_node_config(s.node_config, CATALOG_V1)
        if self.config.inbox is None and s.inbox is None:
            raise ConfigError(
                f"{s.node_config} serves no inbox: add an [inbox] table to the node's config "
                "(or set `inbox` in [console.node])"
            )

    @property
    def node_id(self) -> str:
        return self.config.node_id

    @property
    def ca(self) -> Path | None:
        if self.settings.ca is not None:
            return self.settings.ca
        return self.config.tls.ca if self.config.tls is not None else None

    def inbox_address(self) -> str:
        # Read every time: a restarted node publishes a new port.
        if self.settings.inbox is not None:
            return self.settings.inbox
        published = self.config.state_dir / INBOX_ADDRESS_FILE
        try:
            address = published.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise StateUnavailable(
                f"node {self.node_id} has not published its inbox address ({published}): is it "
                "running? Or set `inbox` in [console.node]"
            ) from exc
        if not address:
            raise StateUnavailable(f"{published} is empty: is node {self.node_id} starting?")
        return address

    def inbox(self, user: SignedIn) -> Inbox:
        return Inbox(self.inbox_address(), user.access_token, self.ca)

    def policy(self) -> Policy:
        return load_policy(self.config.policy, CATALOG_V1)


# -- blocking work (run in the thread pool) -------------------------------------------


def _items(node: NodeSide, user: SignedIn) -> list[InboxItem]:
    with node.inbox(user) as inbox:
        return inbox.items(include_all=True)


def _item(node: NodeSide, user: SignedIn, item_id: str) -> InboxItem:
    with node.inbox(user) as inbox:
        return inbox.item(item_id)


def _decide(
    node: NodeSide, user: SignedIn, item_id: str, form: FormData
) -> tuple[InboxItem, Envelope]:
    with node.inbox(user) as inbox:
        # The asked fields come from the node, never from the form.
        item = inbox.item(item_id)
        choices, reason = choices_from_form(item, form)
        return item, inbox.decide(item_id, choices, reason)


def _health(node: NodeSide, user: SignedIn) -> dict[str, Any]:
    checks = check_node(node.settings.node_config, CATALOG_V1)
    inbox: dict[str, Any] = {"address": "", "serving": False, "detail": ""}
    counts: dict[str, int] | None = None
    try:
        address = node.inbox_address()
        inbox["address"] = address
        inbox["serving"], inbox["detail"] = _inbox_health(address, node.ca)
        if inbox["serving"]:
            items = _items(node, user)
            now = _now_ms()
            pending = [i for i in items if i.kind == "follow-up" and i.status == "pending"]
            counts = {
                "pending": len(pending),
                "overdue": sum(1 for i in pending if i.overdue(now)),
                "hits": sum(1 for i in items if i.kind == "hit"),
            }
    except StateUnavailable as exc:
        inbox["detail"] = str(exc)
    return {"checks": checks, "inbox": inbox, "counts": counts}


def _inbox_health(address: str, ca: Path | None) -> tuple[bool, str]:
    ch = channel(address, ca)
    try:
        stub = health_pb2_grpc.HealthStub(ch)
        reply = stub.Check(
            health_pb2.HealthCheckRequest(service=INBOX_SERVICE), timeout=HEALTH_TIMEOUT_S
        )
    except grpc.RpcError as exc:
        return False, f"not answering ({exc.code().name}): is the node running?"
    finally:
        ch.close()
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
    return reply.status == health_pb2.HealthCheckResponse.SERVING, status


# -- forms -------------------------------------------------------------------------


def choices_from_form(item: InboxItem, form: FormData) -> tuple[list[FieldChoice], str]:
    """The officer's choice for every asked field (``choice-N``, ``code-N``, ``why-N``).

    A field neither released nor refused on the form is refused, as the CLI
    does; the node refuses it anyway.
    """
    everything = form_text(form, "all")
    reason = form_text(form, "reason")
    choices = []
    for n, name in enumerate(item.fields):
        choice = form_text(form, f"choice-{n}", "refuse")
        # "Release all the policy allows" / "Refuse everything": one click for either.
        if everything == "release":
            choice = "release" if name in item.decidable_fields else "refuse"
        elif everything == "refuse":
            choice = "refuse"
        if choice == "release":
            code = handling_code(form_text(form, f"code-{n}", "H1"), where=f"{name}'s code")
            choices.append(FieldChoice(name, True, code.value))
        elif choice == "refuse":
            # Without a reason of its own, a refused field carries the decision's.
            why = form_text(form, f"why-{n}") or reason
            choices.append(FieldChoice(name, False, "", why))
        else:
            raise InvalidQuery(f"{name}: choose release or refuse")
    return choices, reason


@dataclass(frozen=True, slots=True)
class FieldRow:
    """One asked field on the item page: what the policy allows and this officer may do."""

    index: int
    name: str
    decidable: bool
    refused_because: str
    releasers: tuple[str, ...]
    may_release: bool
    default_code: str


def field_rows(item: InboxItem, policy: Policy | None, roles: Sequence[str]) -> list[FieldRow]:
    defaults = dict(
        part.strip().split("=", 1) for part in item.default_handling.split(",") if "=" in part
    )
    bounds = None
    if policy is not None:
        bounds = decide_followup(
            policy,
            item.requester,
            item.purpose,
            item.dataset,
            item.fields,
            case_ref=item.case_ref,
            legal_basis=item.legal_basis,
        )
    rows = []
    for n, name in enumerate(item.fields):
        decidable = name in item.decidable_fields
        refused = ""
        releasers: tuple[str, ...] = ()
        allowed = decidable
        if bounds is not None:
            refused = bounds.refused.get(name, "")
            releasers = tuple(sorted(bounds.field_officers.get(name, frozenset())))
            allowed = decidable and may_release(bounds, roles, name)
            # The node keeps the stricter of the policy then and now.
            decidable = decidable and name in bounds.decidable
        if not decidable and not refused:
            refused = "the node's policy does not let it be released on this request"
        rows.append(
            FieldRow(n, name, decidable, refused, releasers, allowed, defaults.get(name, "H1"))
        )
    return rows


def _lines(text: str) -> list[str]:
    return [line.strip() for line in text.splitlines() if line.strip()]


def explain_from_form(policy: Policy, form: FormData) -> dict[str, Any]:
    """`liaison policy explain` with the form's fields; the decision and every rule's part."""
    agency = form_text(form, "agency")
    if not agency:
        raise InvalidQuery("name the requesting agency")
    roles = tuple(
        dict.fromkeys(r.strip() for r in form_text(form, "roles").split(",") if r.strip())
    )
    if not roles:
        raise InvalidQuery("give at least one role of the investigator (e.g. investigator)")
    attributes: dict[str, str] = {}
    for line in _lines(form_text(form, "attributes")):
        name, sep, value = line.partition("=")
        if not sep or not name.strip():
            raise InvalidQuery(f"attribute {line!r}: write NAME=VALUE, e.g. clearance=secret")
        attributes[name.strip()] = value.strip()
    purpose = form_text(form, "purpose")
    try:
        CATALOG_V1.check_purpose(purpose)
    except CatalogError as exc:
        raise InvalidQuery(str(exc)) from exc
    operation = OPERATIONS.get(form_text(form, "operation"))
    if operation is None:
        raise InvalidQuery(f"choose an operation: {', '.join(OPERATIONS)}")
    fields: tuple[str, ...] = ()
    group = None
    if operation is Operation.RECORDS:
        fields = tuple(f.strip() for f in form_text(form, "fields").split(",") if f.strip())
    elif operation is Operation.COUNT_BY:
        group = form_text(form, "group_by") or None
    distance_text = form_text(form, "distance")
    if distance_text and not distance_text.isdigit():
        raise InvalidQuery("the distance is a whole number of bits, 0 to 64")
    predicates = parse_predicates(
        _lines(form_text(form, "where")),
        _lines(form_text(form, "any")),
        _lines(form_text(form, "near")),
        int(distance_text) if distance_text else None,
    )
    query = validate_query(
        Query(form_text(form, "dataset"), operation, predicates, fields, group, 0), CATALOG_V1
    )
    case_ref = validate_case_ref(form_text(form, "case_ref"))
    legal_basis = validate_legal_basis(form_text(form, "legal_basis"))
    requester = Requester(agency, "policy-explain", roles, "", attributes)
    explanation: Explanation = explain(
        policy, requester, purpose, query, case_ref=case_ref, legal_basis=legal_basis
    )
    d = explanation.decision
    return {
        "headline": headline(d),
        "permitted": d.permitted,
        "rules": d.rules,
        "reason": d.reason,
        "considered": explanation.considered,
        "out_of_scope": explanation.out_of_scope,
        "obligations": d.obligations,
        "released": d.grant.fields if d.grant is not None else (),
        "withheld": d.grant.withheld if d.grant is not None else (),
        "records": operation is Operation.RECORDS,
        "request": [
            ("requester", requester_text(agency, roles, attributes)),
            ("purpose", purpose),
            ("case", case_ref),
            ("legal basis", legal_basis or "none cited"),
            ("query", describe_query(query)),
        ],
    }


# -- readable forms ----------------------------------------------------------------


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


def _names(names: frozenset[str] | Sequence[str]) -> str:
    if ANY in names:
        return "any"
    return ", ".join(sorted(str(n) for n in names)) or "-"


SYMBOLS = {
    Comparator.EQ: "=",
    Comparator.GTE: "≥",
    Comparator.LTE: "≤",
    Comparator.IN: "is one of",
    Comparator.NEAR: "near",
}
WINDOWS = {60: "minute", 3600: "hour", 86_400: "day", 7 * 86_400: "week"}


def filter_text(f: RowFilter) -> str:
    return f"{f.field} {SYMBOLS.get(f.comparator, f.comparator.value)} {', '.join(f.values)}"


def limit_text(limit: RateLimit) -> str:
    window = WINDOWS.get(limit.window_s, f"{limit.window_s} s")
    return f"{limit.amount} per {window} per {limit.scope.value}"


def rule_lines(rule: Rule) -> list[tuple[str, str]]:
    """A rule as label/value pairs, only those that say something."""
    ops = (
        "any"
        if set(rule.operations) == set(Operation)
        else _names(frozenset(o.value for o in rule.operations))
    )
    pairs: list[tuple[str, str]] = [
        ("agencies", _names(rule.agencies)),
        ("roles", _names(rule.roles)),
        ("purposes", _names(rule.purposes)),
        ("datasets", _names(rule.datasets)),
    ]
    if rule.effect is not Effect.APPROVE:
        pairs.append(("operations", ops))
    if rule.case_ref_pattern:
        pairs.append(("case reference", f"like {rule.case_ref_pattern}"))
    if rule.legal_bases:
        pairs.append(("legal basis", f"one of {_names(rule.legal_bases)}"))
    for name, values in sorted(rule.attributes.items()):
        pairs.append((f"attribute {name}", f"one of {_names(values)}"))
    if rule.effect is Effect.PERMIT:
        pairs.append(("match on", _names(rule.match_fields)))
        pairs.append(("releases", _names(rule.release)))
        if rule.row_filters:
            pairs.append(("only rows where", "; ".join(filter_text(f) for f in rule.row_filters)))
        for name, transform in sorted(rule.transforms.items()):
            pairs.append((f"transform {name}", str(transform)))
        if rule.min_count:
            pairs.append(("smallest count shown", str(rule.min_count)))
        pairs.append(("at most rows", str(rule.max_rows)))
        if "pdq" in rule.match_fields or ANY in rule.match_fields:
            pairs.append(("near-duplicates", f"up to {rule.max_distance} bits"))
            budget = rule.near_budget or DEFAULT_NEAR_BUDGET
            pairs.append(("near-duplicate budget", limit_text(budget)))
        for limit in rule.rate_limits:
            pairs.append(("rate limit", limit_text(limit)))
        if rule.notify:
            pairs.append(("notify", "a hit puts a notice in this inbox"))
    elif rule.effect is Effect.FORBID:
        if rule.fields:
            pairs.append(("when the query touches", _names(rule.fields)))
    else:
        pairs.append(("an officer may release", _names(rule.release)))
        pairs.append(("decided by roles", _names(rule.officers)))
        pairs.append(("default handling", describe(rule.handling.value)))
    return pairs


def decision_view(envelope: Envelope) -> dict[str, Any]:
    d: FollowUpDecision = decision_from_bytes(envelope.payload)
    released = []
    for f in d.field_decisions:
        values: list[str] = []
        if f.released and f.field in d.fields:
            col = d.fields.index(f.field)
            values = sorted({row[col] or "" for row in d.rows})
        released.append(
            {
                "field": f.field,
                "released": f.released,
                "handling": describe(f.handling) if f.released else "",
                "reason": f.reason,
                "values": values,
            }
        )
    return {
        "followup_id": d.followup_id,
        "node_id": d.node_id,
        "outcome": d.outcome.value,
        "officer": d.officer,
        "decided_at": when(d.decided_at_ms),
        "reason": d.reason,
        "rules": ", ".join(d.rules),
        "fields": released,
        "rows": len(d.rows),
        "key_id": envelope.key_id,
        "signature": envelope.signature.hex(),
        "payload_sha256": _sha256(envelope.payload),
    }


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _checked_id(item_id: str) -> str:
    if not ITEM_ID.fullmatch(item_id):
        raise NotFound("no such item in this inbox; pick one from the inbox")
    return item_id


def _check_rows(results: list[CheckResult]) -> list[dict[str, str]]:
    return [
        {
            "name": r.name,
            "status": r.status.value,
            "word": "ok" if r.status.value == "ok" else "problem" if not r.ok else r.status.value,
            "detail": r.detail,
            "ok": "yes" if r.ok else "no",
        }
        for r in results
    ]


# -- the side ----------------------------------------------------------------------


def side(console: Console, table: _Reader) -> Side:
    """The duty officers' pages of the node that ``[console.node]`` names."""
    s, role = settings(table)
    node = NodeSide(s)
    officer = Side(
        name="node",
        title=f"Duty officer · {node.node_id}",
        role=role,
        home="/inbox",
        routes=[],
        nav=[("/inbox", "Inbox"), ("/policy", "Policy"), ("/health", "Health")],
        # Only the node's own agency's officers: another agency's token opens nothing here.
        agencies=frozenset({node.node_id}),
    )

    async def inbox_page(request: Request, user: SignedIn) -> Response:
        items = await run_in_threadpool(_items, node, user)
        now = _now_ms()
        pending = [i for i in items if i.kind == "follow-up" and i.status == "pending"]
        # Overdue first, then the soonest due.
        pending.sort(key=lambda i: (not i.overdue(now), i.answer_by_ms or 2**62))
        decided = [i for i in items if i.kind == "follow-up" and i.status != "pending"]
        decided.sort(key=lambda i: -i.received_at_ms)
        hits = sorted((i for i in items if i.kind == "hit"), key=lambda i: -i.received_at_ms)
        return console.render(
            request,
            "officer_inbox.html",
            title=f"Inbox of {node.node_id}",
            pending=pending,
            decided=decided[:RECENT],
            hits=hits[:RECENT],
            overdue=sum(1 for i in pending if i.overdue(now)),
            now=now,
            due=due,
            when=when,
        )

    async def item_page(request: Request, user: SignedIn) -> Response:
        item_id = _checked_id(request.path_params["item_id"])
        item = await run_in_threadpool(_item, node, user, item_id)
        try:
            policy: Policy | None = await run_in_threadpool(node.policy)
        except LiaisonError:  # unreadable now: the node's own bounds still show
            policy = None
        rows = field_rows(item, policy, user.roles) if item.kind == "follow-up" else []
        may_decide = bool(set(item.officer_roles) & set(user.roles))
        return console.render(
            request,
            "officer_item.html",
            title=("Follow-up request" if item.kind == "follow-up" else "Hit notice"),
            item=item,
            rows=rows,
            may_decide=may_decide,
            overdue=item.overdue(_now_ms()),
            due=due(item, _now_ms()),
            when=when,
            decision=decision_view(item.decision) if item.decision is not None else None,
            codes=[(c.value, m) for c, m in MEANINGS.items()],
            describe=describe,
        )

    async def decide(request: Request, user: SignedIn, form: FormData) -> Response:
        item_id = _checked_id(request.path_params["item_id"])
        item, envelope = await run_in_threadpool(_decide, node, user, item_id, form)
        session = session_of(request)
        assert session is not None  # checked_form saw it
        key = session.keep({"item_id": item.id, "decision": decision_view(envelope)})
        return see_other(f"/inbox/decided/{key}")

    async def decided(request: Request, user: SignedIn) -> Response:
        kept = kept_or_404(request, request.path_params["key"])
        return console.render(
            request,
            "officer_decided.html",
            title="Decision signed",
            item_id=kept["item_id"],
            decision=kept["decision"],
        )

    async def policy_page(request: Request, user: SignedIn) -> Response:
        return await _policy(request, None)

    async def _policy(request: Request, result: dict[str, Any] | None) -> Response:
        policy = await run_in_threadpool(node.policy)
        kinds = (
            ("Permits", Effect.PERMIT),
            ("Forbids", Effect.FORBID),
            ("Approve rules (follow-up requests)", Effect.APPROVE),
        )
        groups = [
            (title, [r for r in sorted(policy.rules, key=lambda r: r.id) if r.effect is e])
            for title, e in kinds
        ]
        return console.render(
            request,
            "officer_policy.html",
            title=f"Policy of {node.node_id}",
            policy=policy,
            policy_file=str(node.config.policy),
            groups=groups,
            rule_lines=rule_lines,
            result=result,
            purposes=CATALOG_V1.purposes,
            datasets=[d.name for d in CATALOG_V1.datasets],
            operations=list(OPERATIONS),
            values=result["form"] if result else {},
        )

    async def explain_action(request: Request, user: SignedIn, form: FormData) -> Response:
        policy = await run_in_threadpool(node.policy)
        result = explain_from_form(policy, form)
        result["form"] = {k: v for k, v in form.items() if k != "csrf" and isinstance(v, str)}
        session = session_of(request)
        assert session is not None
        return see_other(f"/policy/explained/{session.keep(result)}")

    async def explained(request: Request, user: SignedIn) -> Response:
        return await _policy(request, kept_or_404(request, request.path_params["key"]))

    async def health_page(request: Request, user: SignedIn) -> Response:
        health = await run_in_threadpool(_health, node, user)
        checks = _check_rows(health["checks"])
        return console.render(
            request,
            "officer_health.html",
            title=f"Health of {node.node_id}",
            checks=checks,
            all_ok=all(c["ok"] == "yes" for c in checks) and health["inbox"]["serving"],
            inbox=health["inbox"],
            counts=health["counts"],
        )

    officer.routes.extend(
        [
            view("/inbox", officer, inbox_page),
            view("/inbox/item/{item_id}", officer, item_page),
            action("/inbox/item/{item_id}/decide", officer, decide),
            view("/inbox/decided/{key}", officer, decided),
            view("/policy", officer, policy_page),
            action("/policy/explain", officer, explain_action),
            view("/policy/explained/{key}", officer, explained),
            view("/health", officer, health_page),
        ]
    )
    return officer


__all__ = ["DEFAULT_ROLE", "NodeSettings", "side"]
