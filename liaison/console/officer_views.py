"""What the duty officers' pages read and show: decision forms, field rows, explain
requests, and policies and signed decisions in readable form.
"""

from __future__ import annotations

import hashlib
import re
import time
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Any

from starlette.datastructures import FormData

from liaison.catalog import CATALOG_V1
from liaison.cli.inbox import when
from liaison.cli.query_args import parse_predicates
from liaison.cli.render import describe_query, headline, requester_text
from liaison.console.web import (
    form_text,
)
from liaison.envelope import Envelope
from liaison.errors import (
    CatalogError,
    InvalidQuery,
    NotFound,
)
from liaison.followup_wire import decision_from_bytes
from liaison.followups import FieldChoice, FollowUpDecision, InboxItem
from liaison.handling import describe, handling_code
from liaison.messages import Requester
from liaison.query import (
    Comparator,
    Operation,
    Query,
    validate_case_ref,
    validate_legal_basis,
    validate_query,
)
from policies import decide_followup, may_release
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

OPERATIONS = {
    "match": Operation.MATCH,
    "count": Operation.COUNT,
    "count_by": Operation.COUNT_BY,
    "records": Operation.RECORDS,
}
# Ids the node issues: a follow-up id, or "hit-<query id>". Anything else is not one.
ITEM_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,127}")


# -- forms -------------------------------------------------------------------------


def choices_from_form(
    item: InboxItem, form: FormData, releasable: Collection[str]
) -> tuple[list[FieldChoice], str]:
    """The officer's choice for every asked field (``choice-N``, ``code-N``, ``why-N``).

    A field neither released nor refused on the form is refused, as the CLI
    does; the node refuses it anyway. "Release everything" releases the
    ``releasable`` fields (those this officer may release) and refuses the rest.
    """
    everything = form_text(form, "all")
    reason = form_text(form, "reason")
    if everything == "release" and not set(releasable) & set(item.fields):
        # A decision is final: never sign a refusal for a click that said release.
        raise InvalidQuery(
            "none of the asked fields is yours to release on this request; refuse it, or "
            "ask a colleague who holds a role that may release them"
        )
    choices = []
    for n, name in enumerate(item.fields):
        choice = form_text(form, f"choice-{n}", "refuse")
        # "Release all you may" / "Refuse everything": one click for either.
        if everything == "release":
            choice = "release" if name in releasable else "refuse"
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


def releasable_fields(
    item: InboxItem, policy: Policy | None, roles: Sequence[str]
) -> frozenset[str]:
    """The asked fields an officer holding ``roles`` may release (``may_release``)."""
    return frozenset(r.name for r in field_rows(item, policy, roles) if r.may_release)


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


def now_ms() -> int:
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


def checked_id(item_id: str) -> str:
    if not ITEM_ID.fullmatch(item_id):
        raise NotFound("no such item in this inbox; pick one from the inbox")
    return item_id
