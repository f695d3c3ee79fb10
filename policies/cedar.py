"""Our policies and decision requests written in Cedar: the oracle's input.

A pure translator (text and dicts out, no Cedar library here): the oracle test
and the policy benchmark hand its output to ``cedarpy``. Only what decides
allow or deny is translated; obligations (transforms, row filters, minimum
counts, row caps, rate limits, notify) and the choice between several allowing
permits are ours alone and have no Cedar counterpart; so are approve rules,
which bound follow-up releases and decide no query.

The Cedar model (``CEDAR_SCHEMA`` below says the same in Cedar's schema
language)::

    principal  Liaison::Investigator::"<issuer>#<subject>"
                 in Liaison::Agency::"<agency>"      (its one parent)
                 roles: Set<String>
                 tags:  the token's attributes, name -> value
    action     Liaison::Action::"match" | "count" | "count_by" | "records"
    resource   Liaison::Dataset::"<dataset>"
    context    purpose, case_ref, legal_basis: String
               predicate_fields, fields: Set<String>
               group_by?: String                      (absent when the query has none)
               lookups: Set<String>                   (identifying fields looked up by value)

One rule becomes one Cedar policy, annotated ``@id("<rule id>")``:

* scope: ``"*"`` constrains nothing; agencies (groups already expanded)
  become ``principal in [Agency::...]``; roles ``principal.roles.containsAny``;
  purposes and datasets a set membership; operations ``action in [...]``.
* conditions: each named attribute ``principal.hasTag(n) &&
  [values].contains(principal.getTag(n))`` (tags, not a record attribute:
  record keys such as ``__entity`` are escapes in Cedar's JSON); the case
  reference ``context.case_ref like "<pattern>"``; legal bases a set
  membership.
* a forbid with ``fields`` applies only when the query touches one of them:
  in a predicate, in the selection, or as the grouping field.
* a permit carries the checks that make *it* allow the query, because our
  engine answers under one permit that passes all of them: predicate fields
  within ``match_fields``; for ``count_by`` the grouping field released; for
  ``records`` at least one requested field released and, unless the permit
  says ``releases_lists``, a lookup: an eq, in or near predicate on a field
  that identifies a record (``context.lookups``, which the request
  translation takes from the catalog as ``policies.engine.lookup_fields``).

Strings are written with Cedar escapes: printable ASCII stays as it is except
``"`` and ``\\``, everything else becomes ``\\u{hex}``. In a ``like`` pattern
``*`` is the wildcard, exactly as in our patterns; ours have no literal ``*``,
so no ``\\*`` is ever written (and ``\\u{2a}`` would be a wildcard too).
No empty set literal is ever written (Cedar's validator cannot type one): an
empty list in a rule becomes ``false`` or ``isEmpty()`` as its meaning needs.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from liaison.messages import Requester
from liaison.query import Operation, Query
from policies.engine import lookup_fields
from policies.model import ANY, Effect, Policy, Rule

NAMESPACE = "Liaison"
INVESTIGATOR = f"{NAMESPACE}::Investigator"
AGENCY = f"{NAMESPACE}::Agency"
DATASET = f"{NAMESPACE}::Dataset"
ACTION = f"{NAMESPACE}::Action"

# Cedar's schema for the model above; policies from ``policy_to_cedar``
# validate against it in strict mode.
CEDAR_SCHEMA = f"""\
namespace {NAMESPACE} {{
  entity Agency;
  entity Dataset;
  entity Investigator in [Agency] {{ roles: Set<String> }} tags String;
  type QueryContext = {{
    purpose: String,
    case_ref: String,
    legal_basis: String,
    predicate_fields: Set<String>,
    fields: Set<String>,
    group_by?: String,
    near_distance: Long,
    lookups: Set<String>,
  }};
  action {", ".join(f'"{op.value}"' for op in Operation)} appliesTo {{
    principal: [Investigator],
    resource: [Dataset],
    context: QueryContext,
  }};
}}
"""

JsonObject = dict[str, Any]


class CedarTranslationError(ValueError):
    """A name or value cannot be written as a Cedar string (a lone surrogate)."""


def cedar_string(text: str) -> str:
    """``text`` as a Cedar string literal, quotes included."""
    return '"' + _escaped(text, pattern=False) + '"'


def cedar_pattern(pattern: str) -> str:
    """A ``like`` pattern: our ``*`` stays Cedar's wildcard, everything else is literal."""
    return '"' + _escaped(pattern, pattern=True) + '"'


def _escaped(text: str, *, pattern: bool) -> str:
    out = []
    for ch in text:
        code = ord(ch)
        if ch == '"':
            out.append('\\"')
        elif ch == "\\":
            out.append("\\\\")
        elif ch == "*":
            # A wildcard in a pattern, a plain star in a string: written as is either way.
            out.append(ch)
        elif 0x20 <= code < 0x7F:
            out.append(ch)
        elif 0xD800 <= code <= 0xDFFF:
            what = "pattern" if pattern else "string"
            raise CedarTranslationError(
                f"{text!r} holds a lone surrogate (U+{code:04X}), which no Cedar {what} can hold"
            )
        else:
            out.append(f"\\u{{{code:x}}}")
    return "".join(out)


def _entity(entity_type: str, entity_id: str) -> str:
    return f"{entity_type}::{cedar_string(entity_id)}"


def _strings(values: Iterable[str]) -> str:
    """A non-empty set literal of strings, sorted so the text is deterministic."""
    items = sorted(values)
    if not items:
        raise ValueError("an empty set literal is never written; the caller handles empty lists")
    return "[" + ", ".join(cedar_string(v) for v in items) + "]"


def _entities(entity_type: str, ids: Iterable[str]) -> str:
    return "[" + ", ".join(_entity(entity_type, i) for i in sorted(ids)) + "]"


def _action(op: Operation) -> str:
    return _entity(ACTION, op.value)


def _scope(rule: Rule) -> tuple[str, list[str]]:
    """The policy head and the scope conditions that do not fit in it."""
    conditions: list[str] = []
    principal = "principal"
    if ANY not in rule.agencies:
        if len(rule.agencies) == 1:
            (agency,) = rule.agencies
            principal = f"principal in {_entity(AGENCY, agency)}"
        elif rule.agencies:
            conditions.append(f"principal in {_entities(AGENCY, rule.agencies)}")
        else:
            conditions.append("false")
    ops = sorted(rule.operations, key=lambda o: o.value)
    if ops:
        action = "action in [" + ", ".join(_action(op) for op in ops) + "]"
    else:
        action = "action"
        conditions.append("false")
    resource = "resource"
    if ANY not in rule.datasets:
        if len(rule.datasets) == 1:
            (dataset,) = rule.datasets
            resource = f"resource == {_entity(DATASET, dataset)}"
        elif rule.datasets:
            conditions.append(f"resource in {_entities(DATASET, rule.datasets)}")
        else:
            conditions.append("false")
    if ANY not in rule.roles:
        roles = f"principal.roles.containsAny({_strings(rule.roles)})" if rule.roles else "false"
        conditions.append(roles)
    if ANY not in rule.purposes:
        purposes = (
            f"{_strings(rule.purposes)}.contains(context.purpose)" if rule.purposes else "false"
        )
        conditions.append(purposes)
    return f"{principal},\n  {action},\n  {resource}", conditions


def _conditions(rule: Rule) -> list[str]:
    out = []
    for name, allowed in sorted(rule.attributes.items()):
        tag = cedar_string(name)
        if allowed:
            out.append(
                f"principal.hasTag({tag}) && {_strings(allowed)}.contains(principal.getTag({tag}))"
            )
        else:
            out.append("false")
    if rule.case_ref_pattern:
        out.append(f"context.case_ref like {cedar_pattern(rule.case_ref_pattern)}")
    if rule.legal_bases:
        out.append(f"{_strings(rule.legal_bases)}.contains(context.legal_basis)")
    return out


def _touches(fields: frozenset[str]) -> str:
    names = _strings(fields)
    return (
        f"(context.predicate_fields.containsAny({names}) || "
        f"context.fields.containsAny({names}) || "
        f"(context has group_by && {names}.contains(context.group_by)))"
    )


def _permit_checks(rule: Rule) -> list[str]:
    out = [f"context.near_distance <= {rule.max_distance}"]
    if rule.match_fields:
        out.append(f"{_strings(rule.match_fields)}.containsAll(context.predicate_fields)")
    else:
        out.append("context.predicate_fields.isEmpty()")
    only = len(rule.operations) == 1
    if Operation.COUNT_BY in rule.operations:
        # A count_by query groups by a released field.
        grouped = (
            f"context has group_by && {_strings(rule.release)}.contains(context.group_by)"
            if rule.release
            else ""
        )
        out.append(_only_for(Operation.COUNT_BY, grouped, only=only))
    if Operation.RECORDS in rule.operations:
        # A records query asks for at least one released field, and looks up
        # an identifying field unless the permit releases lists (records about
        # what was asked, never a list).
        released = f"context.fields.containsAny({_strings(rule.release)})" if rule.release else ""
        if released and not rule.releases_lists:
            released += " && !context.lookups.isEmpty()"
        out.append(_only_for(Operation.RECORDS, released, only=only))
    return out


def _only_for(op: Operation, condition: str, *, only: bool) -> str:
    """``condition`` (``""`` for one that never holds) required of ``op`` queries only."""
    if only:
        return condition or "false"
    if not condition:
        return f"action != {_action(op)}"
    return f"(action != {_action(op)} || ({condition}))"


def rule_to_cedar(rule: Rule) -> str:
    """One rule as one Cedar policy (its allow/deny part only).

    ValueError for an approve rule: it decides no query, so it has no Cedar
    counterpart (``policy_to_cedar`` leaves approve rules out).
    """
    if rule.effect is Effect.APPROVE:
        raise ValueError(
            f"rule {rule.id!r} is an approve rule: it bounds follow-up releases and decides "
            "no query, so it has no Cedar counterpart"
        )
    head, conditions = _scope(rule)
    conditions += _conditions(rule)
    if rule.effect is Effect.FORBID:
        if rule.fields:
            conditions.append(_touches(rule.fields))
    else:
        conditions += _permit_checks(rule)
    text = f"@id({cedar_string(rule.id)})\n{rule.effect.value} (\n  {head}\n)"
    if conditions:
        text += "\nwhen {\n  " + " &&\n  ".join(conditions) + "\n}"
    return text + ";"


def policy_to_cedar(policy: Policy) -> str:
    """Every permit and forbid of ``policy``, one Cedar policy each, in rule-id order.

    Approve rules are left out: the engine ignores them when deciding a query.
    """
    rules = sorted((r for r in policy.rules if r.effect is not Effect.APPROVE), key=lambda r: r.id)
    return "\n\n".join(rule_to_cedar(r) for r in rules) + "\n"


@dataclass(frozen=True, slots=True)
class CedarRequest:
    """One decision request in Cedar's terms (JSON-ready dicts)."""

    principal: JsonObject
    action: JsonObject
    resource: JsonObject
    context: JsonObject
    entities: tuple[JsonObject, ...]

    def request(self) -> JsonObject:
        """The request dict ``cedarpy.is_authorized`` takes (entities go separately)."""
        return {
            "principal": self.principal,
            "action": self.action,
            "resource": self.resource,
            "context": self.context,
        }


def principal_id(requester: Requester) -> str:
    """Subjects are unique per issuer, so the issuer is part of the id."""
    return f"{requester.issuer}#{requester.subject}"


def principal_entities(requester: Requester) -> tuple[JsonObject, ...]:
    """The investigator (roles, attributes as tags) and their agency, as Cedar JSON entities."""
    agency = {"type": AGENCY, "id": requester.agency}
    investigator: JsonObject = {
        "uid": {"type": INVESTIGATOR, "id": principal_id(requester)},
        "parents": [agency],
        "attrs": {"roles": sorted(set(requester.roles))},
        "tags": dict(requester.attributes),
    }
    return (investigator, {"uid": agency, "parents": [], "attrs": {}})


def request_context(
    purpose: str, query: Query, *, case_ref: str = "", legal_basis: str = ""
) -> JsonObject:
    context: JsonObject = {
        "purpose": purpose,
        "case_ref": case_ref,
        "legal_basis": legal_basis,
        "predicate_fields": sorted(query.predicate_fields),
        "fields": sorted(set(query.fields)),
        "near_distance": query.near_distance,
        "lookups": sorted(lookup_fields(query)),
    }
    if query.group_by is not None:
        context["group_by"] = query.group_by
    return context


def request_to_cedar(
    requester: Requester,
    purpose: str,
    query: Query,
    *,
    case_ref: str = "",
    legal_basis: str = "",
) -> CedarRequest:
    """What ``policies.decide`` would be asked, as Cedar principal, action, resource, context."""
    return CedarRequest(
        principal={"type": INVESTIGATOR, "id": principal_id(requester)},
        action={"type": ACTION, "id": query.operation.value},
        resource={"type": DATASET, "id": query.dataset},
        context=request_context(purpose, query, case_ref=case_ref, legal_basis=legal_basis),
        entities=principal_entities(requester),
    )


__all__ = [
    "CEDAR_SCHEMA",
    "CedarRequest",
    "CedarTranslationError",
    "cedar_pattern",
    "cedar_string",
    "policy_to_cedar",
    "principal_entities",
    "request_context",
    "request_to_cedar",
    "rule_to_cedar",
]
