"""What a duty officer may release on a follow-up request: pure, no I/O.

A follow-up asks the holding agency for fields of records an earlier answer
named. Nothing is released by policy alone: a person decides, within the
bounds computed here from the node's approve rules (``effect = "approve"``).

Semantics (each pinned by a test in ``tests/test_policy_followup.py``):

* An approve rule *applies* when its scope (agencies, roles, purposes,
  datasets) covers the request and its conditions hold (attributes, case
  reference pattern, legal basis), checked exactly as the engine checks a
  permit's (``Rule.covers``, ``policies.engine.condition_miss``).
* Default deny: a field is *decidable* only when an applying approve rule
  releases it. With no applying rule nothing is decidable, and nobody may
  decide (``officer_roles`` is empty).
* Forbid overrides approve: a forbid in scope for the dataset and the records
  operation, whose conditions hold, refuses every field it covers (all of
  them when it names no ``fields``), whatever the approve rules say.
* Every asked field is either decidable or refused, with a reason.
* ``officer_roles``: the roles of every applying rule's ``officers``; the
  roles that may release one field are in ``field_officers``, so an officer
  named only by a rule that does not release a field cannot release it
  (``may_release``).
* ``handling``: each decidable field's default code, from the first applying
  rule (by id) that releases it.
* An error while deciding refuses every field (``evaluation-error``).
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType

from liaison.messages import Requester
from liaison.query import Operation
from policies.engine import EVALUATION_ERROR, condition_miss
from policies.model import Policy, Rule, scope_miss

# A follow-up reads records: forbids on this operation cover it.
FOLLOWUP_OPERATION = Operation.RECORDS


def _frozen(mapping: Mapping[str, str]) -> Mapping[str, str]:
    return MappingProxyType(dict(mapping))


@dataclass(frozen=True, slots=True)
class FollowUpBounds:
    """What the node's policy lets a duty officer do with one follow-up request."""

    # Ids of the approve rules that applied, sorted.
    rules: tuple[str, ...]
    # Asked fields an officer may release, in the order asked.
    decidable: tuple[str, ...]
    # Every other asked field, with the reason the policy refuses it.
    refused: Mapping[str, str]
    # Roles that may decide (approve or refuse) this request.
    officer_roles: frozenset[str]
    # Decidable field -> default handling code ("H0".."H3").
    handling: Mapping[str, str]
    explanation: tuple[str, ...] = ()
    # Decidable field -> roles whose approve rules release it.
    field_officers: Mapping[str, frozenset[str]] = field(
        default_factory=lambda: MappingProxyType({})
    )
    # Ids of the forbids that refused an asked field, sorted.
    forbidden_by: tuple[str, ...] = ()

    @property
    def reason(self) -> str:
        """The refusals in one line, for a request nothing of which is decidable."""
        return "; ".join(f"{name}: {why}" for name, why in self.refused.items())


def may_decide(bounds: FollowUpBounds, officer_roles: Collection[str]) -> bool:
    """Whether an officer holding ``officer_roles`` may decide the request at all."""
    return bool(bounds.officer_roles & frozenset(officer_roles))


def may_release(bounds: FollowUpBounds, officer_roles: Collection[str], name: str) -> bool:
    """Whether an officer holding ``officer_roles`` may release field ``name``."""
    return name in bounds.decidable and bool(
        bounds.field_officers.get(name, frozenset()) & frozenset(officer_roles)
    )


def decide_followup(
    policy: Policy,
    requester: Requester,
    purpose: str,
    dataset: str,
    fields: Sequence[str],
    *,
    case_ref: str,
    legal_basis: str,
) -> FollowUpBounds:
    """The bounds of a decision on ``fields``; never raises: an error refuses everything."""
    asked = tuple(dict.fromkeys(fields))
    try:
        return _decide(policy, requester, purpose, dataset, asked, case_ref, legal_basis)
    except Exception as exc:  # fail closed on any evaluation bug
        name = type(exc).__name__
        why = f"policy evaluation failed ({name})"
        return FollowUpBounds(
            rules=(),
            decidable=(),
            refused=_frozen(dict.fromkeys(asked, why)),
            officer_roles=frozenset(),
            handling=_frozen({}),
            explanation=(f"{EVALUATION_ERROR}: {name} while deciding; everything refused",),
        )


def _decide(
    policy: Policy,
    requester: Requester,
    purpose: str,
    dataset: str,
    asked: tuple[str, ...],
    case_ref: str,
    legal_basis: str,
) -> FollowUpBounds:
    roles = frozenset(requester.roles)
    explanation: list[str] = []

    def miss(rule: Rule, operation: Operation | None) -> str:
        return scope_miss(
            rule,
            agency=requester.agency,
            roles=roles,
            purpose=purpose,
            dataset=dataset,
            operation=operation,
        ) or condition_miss(rule, requester, case_ref, legal_basis)

    # Forbids first: they override whatever an approve rule would let through.
    forbidden: dict[str, list[Rule]] = {}
    forbids, _ = policy.candidates(dataset, FOLLOWUP_OPERATION)
    for rule in forbids:
        if not rule.in_scope(requester.agency, roles, purpose, dataset, FOLLOWUP_OPERATION):
            continue
        why = condition_miss(rule, requester, case_ref, legal_basis)
        if why:
            explanation.append(f"forbid {rule.id}: does not apply ({why})")
            continue
        covered = [f for f in asked if not rule.fields or f in rule.fields]
        if covered:
            explanation.append(f"forbid {rule.id}: refuses {', '.join(covered)}")
        else:
            names = ", ".join(sorted(rule.fields))
            explanation.append(f"forbid {rule.id}: does not apply (none of {names} asked)")
        for name in covered:
            forbidden.setdefault(name, []).append(rule)

    applying: list[Rule] = []
    near_misses: list[str] = []
    for rule in policy.approves:
        why = miss(rule, None)
        if why:
            explanation.append(f"approve {rule.id}: does not apply ({why})")
            if rule.covers(requester.agency, roles, purpose, dataset):
                near_misses.append(f"{rule.id}: {why}")
            continue
        applying.append(rule)
        releases = [f for f in asked if f in rule.release]
        shown = ", ".join(releases) if releases else "none of the asked fields"
        explanation.append(
            f"approve {rule.id}: applies; officers {', '.join(sorted(rule.officers))} "
            f"may release {shown}"
        )

    decidable: list[str] = []
    refused: dict[str, str] = {}
    handling: dict[str, str] = {}
    field_officers: dict[str, frozenset[str]] = {}
    offered = frozenset().union(*(r.release for r in applying))
    for name in asked:
        if name in forbidden:
            rules = forbidden[name]
            refused[name] = "; ".join(
                dict.fromkeys(r.description or f"forbidden by {r.id}" for r in rules)
            )
            continue
        releasing = [r for r in applying if name in r.release]
        if releasing:
            decidable.append(name)
            handling[name] = releasing[0].handling.value
            field_officers[name] = frozenset().union(*(r.officers for r in releasing))
        elif applying:
            refused[name] = (
                f"no approve rule lets an officer release {name} on this request "
                f"(they release {', '.join(sorted(offered))})"
            )
        else:
            refused[name] = _no_rule(requester, roles, purpose, dataset, near_misses)
    if not applying:
        explanation.append("default-deny: no applicable approve rule; nothing is decidable")
    return FollowUpBounds(
        rules=tuple(r.id for r in applying),
        decidable=tuple(decidable),
        refused=_frozen(refused),
        officer_roles=frozenset().union(*(r.officers for r in applying)),
        handling=_frozen(handling),
        explanation=tuple(explanation),
        field_officers=MappingProxyType(field_officers),
        forbidden_by=tuple(sorted({r.id for rules in forbidden.values() for r in rules})),
    )


def _no_rule(
    requester: Requester, roles: frozenset[str], purpose: str, dataset: str, near: list[str]
) -> str:
    reason = (
        f"no approve rule lets an officer release {dataset} fields to {requester.agency} "
        f"({', '.join(sorted(roles)) or 'no role'}) for {purpose}"
    )
    if near:
        reason += " (" + "; ".join(near) + ")"
    return reason


__all__ = [
    "FOLLOWUP_OPERATION",
    "FollowUpBounds",
    "decide_followup",
    "may_decide",
    "may_release",
]
