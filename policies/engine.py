"""Deciding one request under one policy: pure, no I/O.

Semantics (each pinned by a test; README "How decisions are made" says the same):

* A rule *applies* when its scope (agencies, roles, purposes, datasets,
  operations) covers the request and its conditions hold: every attribute it
  names has one of the listed values, the case reference matches its pattern,
  the request cites one of its legal bases, and (forbids) the query touches
  one of its fields, if it names any.
* Default deny: with no applicable permit, the answer is a denial by
  ``default-deny``.
* Forbid overrides permit: any applicable forbid denies, naming every
  applicable forbid.
* A permit answers a records query only when the query looks up something
  that identifies a record: an eq, in or near predicate on a field the
  catalog marks as identifying (a hash, an e-mail, a handle, an IP, a case
  reference). It releases records about what was asked, never a list; a
  category (platform, offence) narrows a lookup but is not one. Only a
  permit with ``releases_lists`` answers records queries without a lookup
  (up to its row cap).
* A permit is a self-contained grant: its obligations are never mixed with
  another permit's. Among the applicable permits that allow the query's
  predicates (and grouping), the node answers under exactly one. For records:
  the one releasing the most requested fields, then the most rows, then the
  fewest restrictions, then the smallest rule id. For match, count and
  count_by: the one with the lowest minimum count, then the most rows, then
  the fewest restrictions, then the smallest rule id. Restrictions compare as
  (information the shown fields' transforms remove, row filters, rate
  limits). The choice depends only on the rules' content, never on their
  order or on duplicates, so adding a permit never narrows an answer and
  adding a forbid never widens one.
* An error while deciding is a denial by ``evaluation-error``.
* A permit with ``notify`` asks to be told of hits: the grant says notify
  when any permit that would answer the query says so, whichever is chosen.
* Approve rules (``effect = "approve"``) take no part: they bound what a
  duty officer may release on a follow-up (``policies.followup``), and
  never permit or forbid a query.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace

from liaison.catalog import CATALOG_V1
from liaison.messages import Requester
from liaison.query import Comparator, Operation, Query
from policies.model import (
    ANY,
    Effect,
    Policy,
    RateLimit,
    RowFilter,
    Rule,
    Transform,
    TransformKind,
)
from policies.model import case_ref_matches as _case_ref_matches

DEFAULT_DENY = "default-deny"
EVALUATION_ERROR = "evaluation-error"

# Per dataset, the fields whose value names a record; a lookup is by value.
IDENTIFYING = {d.name: d.identifying_fields for d in CATALOG_V1.datasets}
_LOOKUPS = frozenset({Comparator.EQ, Comparator.IN, Comparator.NEAR})


def lookup_fields(query: Query) -> frozenset[str]:
    """The identifying fields ``query`` looks up by value (eq, in, near).

    Empty for a query that only narrows by categories, dates or ranges: as a
    records query, that one would list records.
    """
    identifying = IDENTIFYING.get(query.dataset, frozenset())
    return frozenset(
        p.field for p in query.predicates if p.comparator in _LOOKUPS and p.field in identifying
    )


@dataclass(frozen=True, slots=True)
class Grant:
    """What a permit lets the node release for this query."""

    rule_id: str
    fields: tuple[str, ...]
    withheld: tuple[str, ...]
    min_count: int
    max_rows: int
    transforms: Mapping[str, Transform] = field(default_factory=dict)
    row_filters: tuple[RowFilter, ...] = ()
    rate_limits: tuple[RateLimit, ...] = ()
    # The grouped field of a count_by: its transform applies to the group keys.
    group_by: str | None = None
    # Near-duplicate queries per investigator (None: the node's default budget).
    near_budget: RateLimit | None = None
    # The permit asks to be told of hits: the node puts a notice in its inbox.
    notify: bool = False


@dataclass(frozen=True, slots=True)
class PolicyDecision:
    permitted: bool
    rules: tuple[str, ...]
    reason: str
    grant: Grant | None = None
    explanation: tuple[str, ...] = ()

    @property
    def obligations(self) -> tuple[str, ...]:
        g = self.grant
        if g is None:
            return ()
        out = []
        if g.fields:
            out.append(f"release only: {', '.join(g.fields)}")
        if g.withheld:
            out.append(f"withhold: {', '.join(g.withheld)}")
        for name, transform in sorted(g.transforms.items()):
            if name in g.fields or name == g.group_by:
                out.append(f"transform {name}: {transform}")
        for row_filter in g.row_filters:
            out.append(f"only rows where {row_filter}")
        out.append(f"at most {g.max_rows} rows")
        if g.min_count > 0:
            out.append(f"counts below {g.min_count} shown as 'fewer than {g.min_count}'")
        for limit in g.rate_limits:
            out.append(f"rate limit: {limit}")
        if g.notify:
            out.append("a hit is reported to the holding agency (notify)")
        return tuple(out)


def _deny(rules: tuple[str, ...], reason: str, explanation: list[str]) -> PolicyDecision:
    return PolicyDecision(False, rules, reason, None, tuple(explanation))


def decide(
    policy: Policy,
    requester: Requester,
    purpose: str,
    query: Query,
    *,
    case_ref: str = "",
    legal_basis: str = "",
) -> PolicyDecision:
    """Decide ``query``; never raises: an error while deciding is a denial."""
    try:
        return _decide(policy, requester, purpose, query, case_ref, legal_basis)
    except Exception as exc:  # fail closed on any evaluation bug
        name = type(exc).__name__
        return PolicyDecision(
            False,
            (EVALUATION_ERROR,),
            f"policy evaluation failed ({name})",
            explanation=(f"{EVALUATION_ERROR}: {name} while deciding; denied",),
        )


def condition_miss(rule: Rule, requester: Requester, case_ref: str, legal_basis: str) -> str:
    """Why the rule's conditions fail for this request, or "" when they hold.

    The finer conditions beyond scope: attributes, case reference pattern,
    legal basis. Follow-ups (``policies.followup``) check approve rules with it too.
    """
    for name, allowed in rule.attributes.items():
        value = requester.attributes.get(name)
        if value is None:
            return f"requester has no {name!r} attribute"
        if value not in allowed:
            return f"{name} {value!r} is not one of {', '.join(sorted(allowed))}"
    if rule.case_ref_pattern and not _case_ref_matches(rule.case_ref_pattern, case_ref):
        return f"case reference does not match {rule.case_ref_pattern!r}"
    if rule.legal_bases and legal_basis not in rule.legal_bases:
        cited = repr(legal_basis) if legal_basis else "none"
        return f"legal basis {cited} is not one of {', '.join(sorted(rule.legal_bases))}"
    return ""


_TRANSFORM_LOSS = {
    TransformKind.KEYED_HASH: 1,
    TransformKind.MONTH: 1,
    TransformKind.MAP: 1,
    TransformKind.YEAR: 2,
    TransformKind.REDACT: 3,
}


def _restriction(grant: Grant) -> tuple[int, int, int]:
    """How much a grant takes away from what it shows: transforms, filters, limits."""
    shown = set(grant.fields) | ({grant.group_by} if grant.group_by else set())
    loss = sum(_TRANSFORM_LOSS[t.kind] for name, t in grant.transforms.items() if name in shown)
    return (loss, len(grant.row_filters), len(grant.rate_limits))


def touched_fields(query: Query) -> frozenset[str]:
    """Every field a query names: in predicates, selection or grouping."""
    names = set(query.predicate_fields) | set(query.fields)
    if query.group_by:
        names.add(query.group_by)
    return frozenset(names)


def _decide(
    policy: Policy,
    requester: Requester,
    purpose: str,
    query: Query,
    case_ref: str,
    legal_basis: str,
) -> PolicyDecision:
    roles = frozenset(requester.roles)
    op = query.operation
    forbid_rules, permit_rules = policy.candidates(query.dataset, op)
    explanation: list[str] = []

    forbids: list[Rule] = []
    touched = touched_fields(query)
    for rule in forbid_rules:
        if not rule.in_scope(requester.agency, roles, purpose, query.dataset, op):
            continue
        miss = condition_miss(rule, requester, case_ref, legal_basis)
        if not miss and rule.fields and not (rule.fields & touched):
            miss = f"query does not touch {', '.join(sorted(rule.fields))}"
        if miss:
            explanation.append(f"forbid {rule.id}: does not apply ({miss})")
        else:
            explanation.append(f"forbid {rule.id}: applies")
            forbids.append(rule)
    if forbids:
        reasons = "; ".join(dict.fromkeys(r.description or f"forbidden by {r.id}" for r in forbids))
        return _deny(tuple(dict.fromkeys(r.id for r in forbids)), reasons, explanation)

    permits: list[Rule] = []
    near_misses: list[str] = []
    for rule in permit_rules:
        if not rule.in_scope(requester.agency, roles, purpose, query.dataset, op):
            continue
        miss = condition_miss(rule, requester, case_ref, legal_basis)
        if miss:
            explanation.append(f"permit {rule.id}: does not apply ({miss})")
            near_misses.append(f"{rule.id}: {miss}")
        else:
            permits.append(rule)
    if not permits:
        reason = (
            f"no rule permits {requester.agency} ({', '.join(sorted(roles)) or 'no role'}) "
            f"to {op.value} {query.dataset} for {purpose}"
        )
        if near_misses:
            reason += " (" + "; ".join(near_misses) + ")"
        explanation.append(f"{DEFAULT_DENY}: no applicable permit")
        return _deny((DEFAULT_DENY,), reason, explanation)

    needed_match = query.predicate_fields
    lookups = lookup_fields(query)
    identifying = IDENTIFYING.get(query.dataset, frozenset())
    candidates = []
    for rule in permits:
        hidden = needed_match - rule.match_fields
        if hidden:
            explanation.append(
                f"permit {rule.id}: applies, but not to matching on {', '.join(sorted(hidden))}"
            )
        elif op is Operation.RECORDS and not rule.releases_lists and not lookups:
            keys = sorted(rule.match_fields & identifying)
            explanation.append(
                f"permit {rule.id}: applies, but only to records queries that look up "
                + (" or ".join(keys) if keys else "an identifying field it does not let match")
            )
        elif op is Operation.COUNT_BY and query.group_by not in rule.release:
            explanation.append(
                f"permit {rule.id}: applies, but not to grouping by {query.group_by}"
            )
        elif query.near_distance > rule.max_distance:
            explanation.append(
                f"permit {rule.id}: applies, but only to near-duplicates within "
                f"{rule.max_distance} bits (asked {query.near_distance})"
            )
        else:
            candidates.append(rule)
    if not candidates:
        hidden_all = sorted(needed_match - frozenset().union(*(r.match_fields for r in permits)))
        if hidden_all:
            detail = f"matching on {', '.join(hidden_all)} is not permitted"
        elif op is Operation.RECORDS and not lookups:
            detail = _list_refusal(query, permits, identifying)
        elif op is Operation.COUNT_BY and not any(query.group_by in r.release for r in permits):
            detail = f"grouping by {query.group_by!r} is not permitted"
        elif all(query.near_distance > r.max_distance for r in permits):
            cap = max(r.max_distance for r in permits)
            detail = (
                f"near-duplicate distance {query.near_distance} is above this node's cap of "
                f"{cap} bits; ask again with --distance {cap} or less"
            )
        else:
            detail = "no single rule permits matching on all of " + ", ".join(sorted(needed_match))
        return _deny(tuple(r.id for r in permits), detail, explanation)

    def grant_for(rule: Rule) -> Grant:
        released = tuple(f for f in query.fields if f in rule.release)
        withheld = tuple(f for f in query.fields if f not in rule.release)
        return Grant(
            rule.id,
            released,
            withheld,
            rule.min_count,
            rule.max_rows,
            rule.transforms,
            rule.row_filters,
            rule.rate_limits,
            query.group_by if op is Operation.COUNT_BY else None,
            rule.near_budget,
            rule.notify,
        )

    def generosity(g: Grant) -> tuple[int, int, int, int, int, int, str]:
        # For aggregates the exactness of the count is what matters; for
        # records, how much is released; then how little is taken away.
        # Either way the order is total.
        restriction = _restriction(g)
        if op is Operation.RECORDS:
            return (-len(g.fields), -g.max_rows, *restriction, g.min_count, g.rule_id)
        return (g.min_count, -g.max_rows, *restriction, 0, g.rule_id)

    best = min((grant_for(r) for r in candidates), key=generosity)
    if not best.notify and any(r.notify for r in candidates):
        # The holder asked to hear of hits under a rule that would answer this
        # query too; a more generous permit being chosen must not silence that.
        best = replace(best, notify=True)
    for rule in candidates:
        chosen = "chosen" if rule.id == best.rule_id else "applies, less generous"
        explanation.append(f"permit {rule.id}: {chosen}")
    if op is Operation.RECORDS and not best.fields:
        return _deny(
            tuple(r.id for r in candidates),
            f"none of the requested fields ({', '.join(query.fields)}) is released",
            explanation,
        )
    reason = f"withheld: {', '.join(best.withheld)}" if best.withheld else ""
    return PolicyDecision(True, (best.rule_id,), reason, best, tuple(explanation))


def _list_refusal(query: Query, permits: list[Rule], identifying: frozenset[str]) -> str:
    """Why a records query without a lookup is refused, and what to ask instead."""
    keys = sorted(frozenset().union(*(r.match_fields for r in permits)) & identifying)
    narrowing = sorted(query.predicate_fields)
    if narrowing:
        found = (
            f"it matches only on {', '.join(narrowing)}, which "
            + ("does" if len(narrowing) == 1 else "do")
            + " not identify a record, so the answer would be a list"
        )
    else:
        found = "it matches on nothing, so the answer would be a list"
    fix = (
        f"look up what you ask about by {' or '.join(keys)} (eq or in)"
        if keys
        else "no permit here looks records up by an identifying field; ask for a match or count"
    )
    return f"records are released about what was asked, never as a list: {found}; {fix}"


__all__ = [
    "ANY",
    "DEFAULT_DENY",
    "EVALUATION_ERROR",
    "IDENTIFYING",
    "Effect",
    "Grant",
    "PolicyDecision",
    "condition_miss",
    "decide",
    "lookup_fields",
]
