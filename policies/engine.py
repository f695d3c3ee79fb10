"""Deciding one request under one policy.

Semantics (each pinned by a test):

* Default deny: with no applicable permit, the answer is a denial by
  ``default-deny``.
* Forbid overrides permit: any applicable forbid denies, naming every
  applicable forbid.
* A permit is a self-contained grant. Among the applicable permits that allow
  the query's predicates (and grouping), the node answers under exactly one.
  For records: the one releasing the most requested fields, then the most
  rows, then the smallest rule id. For match, count and count_by: the one
  with the lowest minimum count, then the most rows (count_by groups), then
  the smallest rule id. The choice depends only on
  the rules' content, never on their order, so adding a permit never narrows
  an answer and adding a forbid never widens one.
* An error while deciding is a denial.
"""

from __future__ import annotations

from dataclasses import dataclass

from liaison.messages import Requester
from liaison.query import Operation, Query
from policies.model import Policy, Rule

DEFAULT_DENY = "default-deny"
EVALUATION_ERROR = "evaluation-error"


@dataclass(frozen=True, slots=True)
class Grant:
    """What a permit lets the node release for this query."""

    rule_id: str
    fields: tuple[str, ...]
    withheld: tuple[str, ...]
    min_count: int
    max_rows: int


@dataclass(frozen=True, slots=True)
class PolicyDecision:
    permitted: bool
    rules: tuple[str, ...]
    reason: str
    grant: Grant | None = None

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
        out.append(f"at most {g.max_rows} rows")
        if g.min_count > 0:
            out.append(f"counts below {g.min_count} shown as 'fewer than {g.min_count}'")
        return tuple(out)


def _deny(rules: tuple[str, ...], reason: str) -> PolicyDecision:
    return PolicyDecision(False, rules, reason)


def decide(policy: Policy, requester: Requester, purpose: str, query: Query) -> PolicyDecision:
    """Decide ``query``; never raises: an error while deciding is a denial."""
    try:
        return _decide(policy, requester, purpose, query)
    except Exception as exc:
        return _deny((EVALUATION_ERROR,), f"policy evaluation failed ({type(exc).__name__})")


def _decide(policy: Policy, requester: Requester, purpose: str, query: Query) -> PolicyDecision:
    roles = frozenset(requester.roles)
    op = query.operation

    def applicable(rule: Rule) -> bool:
        return rule.applies_to(requester.agency, roles, purpose, query.dataset, op)

    forbids = sorted((r for r in policy.forbids if applicable(r)), key=lambda r: r.id)
    if forbids:
        reasons = "; ".join(dict.fromkeys(r.description or f"forbidden by {r.id}" for r in forbids))
        return _deny(tuple(dict.fromkeys(r.id for r in forbids)), reasons)
    permits = sorted((r for r in policy.permits if applicable(r)), key=lambda r: r.id)
    if not permits:
        return _deny(
            (DEFAULT_DENY,),
            f"no rule permits {requester.agency} ({', '.join(sorted(roles)) or 'no role'}) "
            f"to {op.value} {query.dataset} for {purpose}",
        )
    needed_match = query.predicate_fields
    candidates = [r for r in permits if needed_match <= r.match_fields]
    if not candidates:
        hidden = sorted(needed_match - frozenset().union(*(r.match_fields for r in permits)))
        detail = (
            f"matching on {', '.join(hidden)} is not permitted"
            if hidden
            else "no single rule permits matching on all of " + ", ".join(sorted(needed_match))
        )
        return _deny(tuple(r.id for r in permits), detail)
    if op is Operation.COUNT_BY:
        candidates = [r for r in candidates if query.group_by in r.release]
        if not candidates:
            return _deny(
                tuple(r.id for r in permits),
                f"grouping by {query.group_by!r} is not permitted",
            )

    def grant_for(rule: Rule) -> Grant:
        released = tuple(f for f in query.fields if f in rule.release)
        withheld = tuple(f for f in query.fields if f not in rule.release)
        return Grant(rule.id, released, withheld, rule.min_count, rule.max_rows)

    def generosity(g: Grant) -> tuple[int, int, int, str]:
        # For aggregates the exactness of the count is what matters; for
        # records, how much is released. Either way the order is total.
        if op is Operation.RECORDS:
            return (-len(g.fields), -g.max_rows, g.min_count, g.rule_id)
        return (g.min_count, -g.max_rows, 0, g.rule_id)

    grants = sorted((grant_for(r) for r in candidates), key=generosity)
    best = grants[0]
    if op is Operation.RECORDS and not best.fields:
        return _deny(
            tuple(r.id for r in candidates),
            f"none of the requested fields ({', '.join(query.fields)}) is released",
        )
    reason = f"withheld: {', '.join(best.withheld)}" if best.withheld else ""
    return PolicyDecision(True, (best.rule_id,), reason, best)
