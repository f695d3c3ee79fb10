"""Static checks of a policy, for the agency staff who write it: pure, no I/O.

Three kinds of finding, from the most to the least serious:

* **error**: the node would refuse to load the policy (an unknown dataset,
  field, purpose, operation, transform, map, group or key; a duplicate or
  reserved rule id). ``policy_errors`` collects every one of them, not only
  the first, so a whole file can be fixed in one pass.
* **warning**: the policy loads, but some of it cannot work as written: a
  rule that can never apply, a permit that a forbid overrides everywhere, a
  granted field that a forbid makes unusable, or (given the node's dataset
  mappings) a field or dataset the node does not map.
* **note**: worth a lawyer's second look, but possibly intended: a forbid
  that overrides part of a permit, a policy without permits, and each
  approve rule: who may have which fields released on a follow-up, and
  which officers decide.

Approve rules are judged as follow-ups are decided (``policies.followup``):
a forbid on the records operation refuses the fields it covers, so one that
covers a rule's whole scope is a warning too.

Two warnings guard against what a policy releases by accident: a permit with
``releases_lists`` (records without a lookup: a list), and a permit that lets
a perceptual hash be matched without its own ``near_budget`` (repeated near
queries are a distance oracle; the node's default budget applies).

Every finding is judged against the engine's semantics (``policies.engine``):
a rule *can never apply* only when no request that passes the gateway's
validation could satisfy it, so conditions on attributes are never second-
guessed; a permit is *shadowed* only when unconditional forbids cover every
agency, role, purpose, dataset and operation it names.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from enum import StrEnum
from itertools import product
from typing import TYPE_CHECKING, Any

from liaison.catalog import CATALOG_V1, Catalog
from liaison.errors import PolicyError
from liaison.handling import describe as describe_handling
from liaison.messages import Requester
from liaison.query import (
    MAX_CASE_REF_LENGTH,
    MAX_LEGAL_BASIS_LENGTH,
    Operation,
    Query,
)
from policies.engine import EVALUATION_ERROR, IDENTIFYING, PolicyDecision, decide
from policies.load import parse_policy
from policies.model import ANY, DEFAULT_NEAR_BUDGET, Effect, Policy, Rule, TransformKind
from policies.model import scope_miss as _scope_miss

if TYPE_CHECKING:
    from liaison.config import NodeConfig


class Severity(StrEnum):
    ERROR = "error"
    WARNING = "warning"
    NOTE = "note"


class Kind(StrEnum):
    """What a finding is about; stable, so scripts can filter on it."""

    INVALID = "invalid"  # the policy does not load
    NEVER_APPLIES = "never-applies"
    SHADOWED = "shadowed"
    PARTLY_SHADOWED = "partly-shadowed"
    FORBIDDEN_FIELD = "forbidden-field"
    UNMAPPED_DATASET = "unmapped-dataset"
    UNMAPPED_FIELD = "unmapped-field"
    UNENFORCEABLE_ROW_FILTER = "unenforceable-row-filter"
    MISSING_TRANSFORM_KEY = "missing-transform-key"
    LISTING = "records-without-predicate"  # a permit that releases lists
    NEAR_WITHOUT_BUDGET = "near-without-budget"
    MATCHABLE_TRANSFORM = "matchable-transformed-field"
    NO_PERMITS = "no-permits"
    OTHER_POLICY = "other-policy"
    APPROVE = "approve-rule"  # what duty officers may release on follow-ups, and who


@dataclass(frozen=True, slots=True)
class Finding:
    severity: Severity
    kind: Kind
    rule: str  # the rule's id, or "" for the policy as a whole
    message: str

    def __str__(self) -> str:
        where = f"rule {self.rule!r}: " if self.rule else ""
        return f"{self.severity.value}: {where}{self.message}"


@dataclass(frozen=True, slots=True)
class NodeMapping:
    """What a node maps of the catalog: enough to tell what its policy can deliver."""

    node_id: str
    # catalog dataset -> catalog fields the node maps to a column
    datasets: Mapping[str, frozenset[str]]
    has_transform_key: bool
    policy_file: str = ""

    @classmethod
    def from_config(cls, config: NodeConfig) -> NodeMapping:
        return cls(
            node_id=config.node_id,
            datasets={m.dataset: frozenset(m.columns) for m in config.datasets},
            has_transform_key=config.transform_key is not None,
            policy_file=str(config.policy),
        )


# ---------------------------------------------------------------- errors


def policy_errors(document: Mapping[str, Any], catalog: Catalog) -> tuple[Finding, ...]:
    """Every reason the node would refuse ``document``; empty when it loads.

    The loader stops at the first problem; here each rule is checked on its
    own (with the document's groups and maps), so all of them are reported.
    """
    try:
        parse_policy(document, catalog)
    except PolicyError as exc:
        first = Finding(Severity.ERROR, Kind.INVALID, "", str(exc))
    else:
        return ()
    head = {k: v for k, v in document.items() if k != "rule"}
    try:
        parse_policy(head, catalog)
    except PolicyError as exc:
        # Without valid groups and maps the rules cannot be judged one by one.
        return (Finding(Severity.ERROR, Kind.INVALID, "", str(exc)),)
    raw_rules = document.get("rule", [])
    if not isinstance(raw_rules, list):
        return (first,)
    errors: list[Finding] = []
    seen: set[str] = set()
    for index, raw in enumerate(raw_rules, start=1):
        if not isinstance(raw, dict):
            errors.append(_invalid("", f"rule #{index} is not a table"))
            continue
        rule_id = raw.get("id")
        if not isinstance(rule_id, str) or not rule_id.strip():
            errors.append(_invalid("", f"rule #{index} needs an `id`"))
            continue
        try:
            parse_policy({**head, "rule": [raw]}, catalog)
        except PolicyError as exc:
            message = str(exc).removeprefix(f"rule {rule_id!r}: ")
            errors.append(_invalid(rule_id, message))
        if rule_id in seen:
            errors.append(_invalid(rule_id, "this rule id is used twice; rule ids must be unique"))
        seen.add(rule_id)
    return tuple(errors) or (first,)


def _invalid(rule: str, message: str) -> Finding:
    return Finding(Severity.ERROR, Kind.INVALID, rule, message)


# ---------------------------------------------------------------- warnings


def analyse(policy: Policy, node: NodeMapping | None = None) -> tuple[Finding, ...]:
    """Warnings and notes for a loaded policy, rule by rule, in the file's order."""
    findings: list[Finding] = []
    if not policy.permits:
        findings.append(
            Finding(
                Severity.NOTE,
                Kind.NO_PERMITS,
                "",
                "the policy has no permits: this node denies every query",
            )
        )
    unconditional = [f for f in policy.forbids if not _has_conditions(f)]
    field_only = [
        f
        for f in policy.forbids
        if f.fields and not (f.attributes or f.case_ref_pattern or f.legal_bases)
    ]
    for rule in policy.rules:
        findings += _unsatisfiable_conditions(rule)
        if rule.effect is Effect.PERMIT:
            findings += _never_permits(rule)
            findings += _shadowing(rule, unconditional)
            findings += _forbidden_fields(rule, field_only)
            findings += _listing(rule)
            findings += _near_budget(rule)
            findings += _matchable_transforms(rule)
            if node is not None:
                findings += _mapping(rule, node)
        elif rule.effect is Effect.APPROVE:
            findings += _approve(rule, unconditional, field_only)
            if node is not None:
                findings += _approve_mapping(rule, node)
    if node is not None and node.node_id != policy.agency:
        findings.append(
            Finding(
                Severity.NOTE,
                Kind.OTHER_POLICY,
                "",
                f"the policy is for agency {policy.agency!r} but the node config is for "
                f"node {node.node_id!r}; check that they belong together",
            )
        )
    return tuple(findings)


def _has_conditions(rule: Rule) -> bool:
    return bool(rule.attributes or rule.case_ref_pattern or rule.legal_bases or rule.fields)


def _unsatisfiable_conditions(rule: Rule) -> list[Finding]:
    """Case-reference patterns and legal bases no validated request can meet."""
    out = []
    what = {
        Effect.PERMIT: "permits nothing",
        Effect.FORBID: "forbids nothing",
        Effect.APPROVE: "lets no officer release anything",
    }[rule.effect]
    pattern = rule.case_ref_pattern
    if pattern:
        parts = pattern.split("*")
        problem = ""
        if parts[0] != parts[0].lstrip() or parts[-1] != parts[-1].rstrip():
            problem = "starts or ends with a space, but case references never do"
        elif len("".join(parts)) > MAX_CASE_REF_LENGTH:
            problem = f"is longer than any case reference ({MAX_CASE_REF_LENGTH} characters)"
        if problem:
            out.append(
                Finding(
                    Severity.WARNING,
                    Kind.NEVER_APPLIES,
                    rule.id,
                    f"can never apply, so it {what}: its case_ref pattern {pattern!r} {problem}",
                )
            )
    bad = sorted(
        b
        for b in rule.legal_bases
        if b != b.strip() or len(b) > MAX_LEGAL_BASIS_LENGTH or not b.isprintable()
    )
    if bad and len(bad) == len(rule.legal_bases):
        out.append(
            Finding(
                Severity.WARNING,
                Kind.NEVER_APPLIES,
                rule.id,
                f"can never apply, so it {what}: no request can cite its legal bases "
                f"({', '.join(map(repr, bad))}); a cited legal basis is printable, has no "
                f"surrounding spaces and at most {MAX_LEGAL_BASIS_LENGTH} characters",
            )
        )
    elif bad:
        out.append(
            Finding(
                Severity.WARNING,
                Kind.NEVER_APPLIES,
                rule.id,
                f"legal bases {', '.join(map(repr, bad))} can never be cited (printable, no "
                f"surrounding spaces, at most {MAX_LEGAL_BASIS_LENGTH} characters)",
            )
        )
    return out


_OPS_ORDER = tuple(Operation)


def _ops(ops: Iterable[Operation]) -> list[Operation]:
    chosen = set(ops)
    return [o for o in _OPS_ORDER if o in chosen]


def _never_permits(rule: Rule) -> list[Finding]:
    """Operations a permit names but can never answer, under the engine's rules."""
    dead: dict[Operation, tuple[str, str]] = {}  # op -> (why, the fix)
    for op in _ops(rule.operations):
        if op is Operation.MATCH and not rule.match_fields:
            dead[op] = (
                "a match query needs a predicate, and the rule lets no field be matched on",
                "`match_fields`",
            )
        elif op is Operation.RECORDS and not rule.release:
            dead[op] = ("records answers need a released field, and it releases none", "`release`")
        elif op is Operation.RECORDS and not rule.releases_lists and not _lookup_keys(rule):
            keys = sorted(
                frozenset().union(*(IDENTIFYING.get(d, frozenset()) for d in rule.datasets))
            )
            dead[op] = (
                "a records query must look up a field that identifies a record "
                f"({', '.join(keys)}), and the rule lets none be matched on",
                "an identifying field to `match_fields`, or `releases_lists = true` if the "
                "rule is meant to release lists",
            )
        elif op is Operation.COUNT_BY and not rule.release:
            dead[op] = (
                "count_by groups only by a released field, and it releases none",
                "`release`",
            )
    if not dead:
        return []
    reasons = "; ".join(why for why, _ in dead.values())
    fixes = " and ".join(dict.fromkeys(fix for _, fix in dead.values()))
    if len(dead) == len(rule.operations):
        message = f"can never permit anything: {reasons} (add {fixes})"
    else:
        names = " or ".join(op.value for op in dead)
        message = f"never permits {names}: {reasons} (add {fixes})"
    return [Finding(Severity.WARNING, Kind.NEVER_APPLIES, rule.id, message)]


def _values(names: frozenset[str], named_elsewhere: Iterable[str]) -> list[str]:
    """The cells of one scope dimension: each name, or, for ANY, the names the
    forbids single out plus ANY itself, which stands for every name not listed."""
    if ANY not in names:
        return sorted(names)
    return [*sorted(set(named_elsewhere) - {ANY}), ANY]


def _covers(forbid_names: frozenset[str], value: str) -> bool:
    return ANY in forbid_names or (value != ANY and value in forbid_names)


Cell = tuple[str, str, str, str, Operation]


def _cells(rule: Rule, forbids: Sequence[Rule]) -> list[Cell]:
    """The permit's scope as (agency, role, purpose, dataset, operation) cells.

    A requester with several roles is caught by a forbid as soon as one role
    is, so single roles are enough.
    """
    return list(
        product(
            _values(rule.agencies, (a for f in forbids for a in f.agencies)),
            _values(rule.roles, (r for f in forbids for r in f.roles)),
            _values(rule.purposes, (p for f in forbids for p in f.purposes)),
            _values(rule.datasets, (d for f in forbids for d in f.datasets)),
            _ops(rule.operations),
        )
    )


def _forbid_covers(forbid: Rule, cell: Cell) -> bool:
    agency, role, purpose, dataset, op = cell
    return (
        _covers(forbid.agencies, agency)
        and _covers(forbid.roles, role)
        and _covers(forbid.purposes, purpose)
        and _covers(forbid.datasets, dataset)
        and op in forbid.operations
    )


def _shadowing(permit: Rule, forbids: Sequence[Rule]) -> list[Finding]:
    cells = _cells(permit, forbids)
    covering: dict[str, list[Cell]] = {}
    for forbid in sorted(forbids, key=lambda r: r.id):
        part = [c for c in cells if _forbid_covers(forbid, c)]
        if part:
            covering[forbid.id] = part
    if not covering:
        return []
    covered = {c for cs in covering.values() for c in cs}
    if len(covered) == len(cells):
        names = ", ".join(covering)
        who = f"forbids {names} override" if len(covering) > 1 else f"forbid {names} overrides"
        return [
            Finding(
                Severity.WARNING,
                Kind.SHADOWED,
                permit.id,
                f"can never apply: {who} it for every agency, role, purpose, dataset and "
                "operation it names",
            )
        ]
    return [
        Finding(
            Severity.NOTE,
            Kind.PARTLY_SHADOWED,
            permit.id,
            f"forbid {forbid_id} overrides it {_describe_part(cells, part)}",
        )
        for forbid_id, part in covering.items()
    ]


def _describe_part(cells: Sequence[Cell], part: Sequence[Cell]) -> str:
    """Where a forbid overlaps a permit, in the permit's own terms."""
    labels = ("agency", "role", "purpose", "dataset", "operation")
    dims: list[str] = []
    for i, label in enumerate(labels):
        full = {str(c[i]) for c in cells}
        here = {str(c[i]) for c in part}
        if len(here) < len(full):
            names = ", ".join(sorted(here))
            dims.append(f"{label}{'s' if len(here) > 1 else ''} {names}")
    return "for " + " and ".join(dims) if dims else "in part"


def _touchable(permit: Rule, op: Operation) -> frozenset[str]:
    """Fields a query the permit answers may touch (predicates, selection, grouping)."""
    if op in (Operation.RECORDS, Operation.COUNT_BY):
        return permit.match_fields | permit.release
    return permit.match_fields


def _forbidden_fields(permit: Rule, forbids: Sequence[Rule]) -> list[Finding]:
    """Fields a permit grants that a field-conditioned forbid denies everywhere."""
    out = []
    for forbid in sorted(forbids, key=lambda r: r.id):
        cells = _cells(permit, [forbid])
        if not all(_forbid_covers(forbid, c) for c in cells):
            continue
        granted = frozenset().union(*(_touchable(permit, op) for op in permit.operations))
        dead = sorted(granted & forbid.fields)
        if dead:
            out.append(
                Finding(
                    Severity.WARNING,
                    Kind.FORBIDDEN_FIELD,
                    permit.id,
                    f"grants {', '.join(dead)}, but forbid {forbid.id} denies every query "
                    "that touches "
                    + ("it" if len(dead) == 1 else "them")
                    + " within this rule's scope",
                )
            )
    return out


# Perceptual-hash fields per dataset: matching on them asks near-duplicates.
_NEAR_FIELDS = {d.name: frozenset(f.name for f in d.fields if f.near) for d in CATALOG_V1.datasets}


def _lookup_keys(rule: Rule) -> frozenset[str]:
    """Match fields that identify a record in one of the rule's datasets."""
    return frozenset().union(
        *(rule.match_fields & IDENTIFYING.get(d, frozenset()) for d in rule.datasets)
    )


def _listing(permit: Rule) -> list[Finding]:
    # Records answers without a lookup by an identifying field are lists; only
    # a permit that says releases_lists gives them.
    if Operation.RECORDS not in permit.operations or not permit.release:
        return []
    if not permit.releases_lists:
        return []
    return [
        Finding(
            Severity.WARNING,
            Kind.LISTING,
            permit.id,
            "releases lists (`releases_lists = true`): a requester in scope can have up to "
            f"{permit.max_rows} records a query with no identifying field asked, "
            f"{_list(sorted(permit.release))} each; remove `releases_lists` unless "
            "the agency means to hand out lists",
        )
    ]


def _near_budget(permit: Rule) -> list[Finding]:
    """A near-duplicate match with no budget of the policy's own."""
    near = sorted(
        frozenset().union(
            *(permit.match_fields & _NEAR_FIELDS.get(d, frozenset()) for d in permit.datasets)
        )
    )
    if permit.near_budget is not None or not near:
        return []
    return [
        Finding(
            Severity.WARNING,
            Kind.NEAR_WITHOUT_BUDGET,
            permit.id,
            f"lets {_list(near)} be matched as near-duplicates but sets no `near_budget`: "
            "repeated near "
            "queries measure the distance to a stored hash, so the node applies its default "
            f'of {DEFAULT_NEAR_BUDGET}; set `near_budget` (e.g. "100/hour") to make the '
            "limit the policy's own",
        )
    ]


def _matchable_transforms(permit: Rule) -> list[Finding]:
    """A transformed field that is also matchable gives back what the transform hides."""
    out = []
    for name in sorted(permit.match_fields & set(permit.transforms)):
        out.append(
            Finding(
                Severity.WARNING,
                Kind.MATCHABLE_TRANSFORM,
                permit.id,
                f"{name!r} is released as {permit.transforms[name]} but may also be matched "
                "on: predicates on it (one value, or ranges for dates) reveal what the "
                "transform hides; drop it from match_fields unless that is intended",
            )
        )
    return out


def _mapping(permit: Rule, node: NodeMapping) -> list[Finding]:
    out = []
    for dataset in sorted(permit.datasets - {ANY}):
        mapped = node.datasets.get(dataset)
        if mapped is None:
            out.append(
                Finding(
                    Severity.WARNING,
                    Kind.UNMAPPED_DATASET,
                    permit.id,
                    f"names dataset {dataset!r}, which node {node.node_id!r} does not map: "
                    "its queries are denied as dataset-not-offered",
                )
            )
            continue
        filters = sorted({f.field for f in permit.row_filters} - mapped)
        if filters:
            out.append(
                Finding(
                    Severity.WARNING,
                    Kind.UNENFORCEABLE_ROW_FILTER,
                    permit.id,
                    f"row filter on {', '.join(filters)}, which node {node.node_id!r} does not "
                    f"map in {dataset!r}: the node cannot apply the filter, so it denies every "
                    "query this rule would permit; map the field",
                )
            )
        match = sorted(permit.match_fields - mapped)
        if match:
            out.append(
                Finding(
                    Severity.WARNING,
                    Kind.UNMAPPED_FIELD,
                    permit.id,
                    f"match field(s) {', '.join(match)} not mapped by node {node.node_id!r} in "
                    f"{dataset!r}: queries matching on them fail at the node",
                )
            )
        release = sorted(permit.release - mapped)
        if release:
            out.append(
                Finding(
                    Severity.WARNING,
                    Kind.UNMAPPED_FIELD,
                    permit.id,
                    f"released field(s) {', '.join(release)} not mapped by node "
                    f"{node.node_id!r} in {dataset!r}: they are withheld as not held here"
                    + (
                        ", and grouping by them fails"
                        if Operation.COUNT_BY in permit.operations
                        else ""
                    ),
                )
            )
    keyed = sorted(
        name for name, t in permit.transforms.items() if t.kind is TransformKind.KEYED_HASH
    )
    if keyed and not node.has_transform_key:
        out.append(
            Finding(
                Severity.WARNING,
                Kind.MISSING_TRANSFORM_KEY,
                permit.id,
                f"keyed-hash transform of {', '.join(keyed)}, but node {node.node_id!r} has no "
                "`transform_key`: the node refuses to start; add `transform_key` to [node]",
            )
        )
    return out


def _approve(
    rule: Rule, unconditional: Sequence[Rule], field_only: Sequence[Rule]
) -> list[Finding]:
    """What an approve rule lets officers release (a note), and what forbids take away."""
    who = f"{_list(rule.agencies)} ({_list(rule.roles)}) for {_list(rule.purposes)}"
    conditions = []
    if rule.case_ref_pattern:
        conditions.append(f"case {rule.case_ref_pattern}")
    if rule.legal_bases:
        conditions.append(f"legal basis {' or '.join(sorted(rule.legal_bases))}")
    for name, allowed in sorted(rule.attributes.items()):
        conditions.append(f"{name} {' or '.join(sorted(allowed))}")
    if conditions:
        who += ", " + ", ".join(conditions)
    out = [
        Finding(
            Severity.NOTE,
            Kind.APPROVE,
            rule.id,
            f"on a follow-up from {who}, an officer with role {' or '.join(sorted(rule.officers))} "
            f"may release {_list(rule.release)} of {_list(rule.datasets)}; default handling "
            f"{describe_handling(rule.handling)}",
        )
    ]
    # A follow-up reads records: forbids in scope for the records operation refuse it.
    cells = _approve_cells(rule, [*unconditional, *field_only])
    shadowing = sorted(f.id for f in unconditional if all(_forbid_covers(f, c) for c in cells))
    if shadowing:
        who = "forbids " if len(shadowing) > 1 else "forbid "
        out.append(
            Finding(
                Severity.WARNING,
                Kind.SHADOWED,
                rule.id,
                f"can never apply: {who}{', '.join(shadowing)} refuse"
                + ("" if len(shadowing) > 1 else "s")
                + " every follow-up in its scope (forbids on records cover follow-ups)",
            )
        )
        return out
    for forbid in sorted(field_only, key=lambda r: r.id):
        if not all(_forbid_covers(forbid, c) for c in cells):
            continue
        dead = sorted(rule.release & forbid.fields)
        if dead:
            out.append(
                Finding(
                    Severity.WARNING,
                    Kind.FORBIDDEN_FIELD,
                    rule.id,
                    f"lets officers release {', '.join(dead)}, but forbid {forbid.id} refuses "
                    + ("it" if len(dead) == 1 else "them")
                    + " on every follow-up within this rule's scope",
                )
            )
    return out


def _approve_cells(rule: Rule, forbids: Sequence[Rule]) -> list[Cell]:
    """An approve rule's scope as cells; a follow-up counts as a records operation."""
    return _cells(replace(rule, operations=frozenset({Operation.RECORDS})), forbids)


def _approve_mapping(rule: Rule, node: NodeMapping) -> list[Finding]:
    out = []
    for dataset in sorted(rule.datasets - {ANY}):
        mapped = node.datasets.get(dataset)
        if mapped is None:
            out.append(
                Finding(
                    Severity.WARNING,
                    Kind.UNMAPPED_DATASET,
                    rule.id,
                    f"names dataset {dataset!r}, which node {node.node_id!r} does not map: "
                    "no record of it can be released on a follow-up",
                )
            )
            continue
        missing = sorted(rule.release - mapped)
        if missing:
            out.append(
                Finding(
                    Severity.WARNING,
                    Kind.UNMAPPED_FIELD,
                    rule.id,
                    f"lets officers release {', '.join(missing)}, which node {node.node_id!r} "
                    f"does not map in {dataset!r}: it cannot be released on a follow-up",
                )
            )
    return out


# ---------------------------------------------------------------- explaining


def scope_miss(
    rule: Rule,
    *,
    agency: str,
    roles: frozenset[str],
    purpose: str,
    dataset: str,
    operation: Operation,
) -> str:
    """Why ``rule``'s scope does not cover a request, or "" when it does.

    The engine's explanation covers the rules in scope; this covers the rest,
    so a reader sees every rule of the policy accounted for. An approve rule
    never covers a query: it bounds follow-up releases.
    """
    if rule.effect is Effect.APPROVE:
        return "an approve rule: it bounds follow-up releases and decides no query"
    return _scope_miss(
        rule, agency=agency, roles=roles, purpose=purpose, dataset=dataset, operation=operation
    )


@dataclass(frozen=True, slots=True)
class RuleLine:
    """One rule's part in a decision: ``rule`` is a rule id or ``default-deny``."""

    rule: str
    effect: str  # "permit", "forbid", or "" for default-deny
    outcome: str


@dataclass(frozen=True, slots=True)
class Explanation:
    """A decision, with every rule of the policy accounted for."""

    decision: PolicyDecision
    # Rules in scope, in the engine's order, then the default-deny line if any.
    considered: tuple[RuleLine, ...]
    # Rules whose agencies, roles, purposes, datasets or operations do not fit.
    out_of_scope: tuple[RuleLine, ...]


def explain(
    policy: Policy,
    requester: Requester,
    purpose: str,
    query: Query,
    *,
    case_ref: str = "",
    legal_basis: str = "",
) -> Explanation:
    """Decide as the node would, and say for each rule what part it played."""
    decision = decide(policy, requester, purpose, query, case_ref=case_ref, legal_basis=legal_basis)
    by_prefix = {f"{r.effect.value} {r.id}: ": r for r in policy.rules}
    considered: list[RuleLine] = []
    seen: set[str] = set()
    tail: list[RuleLine] = []
    for line in decision.explanation:
        for prefix, rule in by_prefix.items():
            if line.startswith(prefix):
                considered.append(RuleLine(rule.id, rule.effect.value, line.removeprefix(prefix)))
                seen.add(rule.id)
                break
        else:
            name, _, outcome = line.partition(": ")
            tail.append(RuleLine(name, "", outcome))
    roles = frozenset(requester.roles)
    out_of_scope: list[RuleLine] = []
    for rule in sorted(policy.rules, key=lambda r: r.id):
        if rule.id in seen:
            continue
        miss = scope_miss(
            rule,
            agency=requester.agency,
            roles=roles,
            purpose=purpose,
            dataset=query.dataset,
            operation=query.operation,
        )
        if miss:
            out_of_scope.append(RuleLine(rule.id, rule.effect.value, miss))
        elif decision.rules != (EVALUATION_ERROR,):
            considered.append(
                RuleLine(rule.id, rule.effect.value, "in scope, not reached: a forbid applies")
            )
    return Explanation(decision, tuple(considered + tail), tuple(out_of_scope))


def _list(names: Iterable[str]) -> str:
    return ", ".join(sorted(names))


def counts(findings: Iterable[Finding]) -> dict[Severity, int]:
    out = dict.fromkeys(Severity, 0)
    for f in findings:
        out[f.severity] += 1
    return out


__all__ = [
    "Explanation",
    "Finding",
    "Kind",
    "NodeMapping",
    "RuleLine",
    "Severity",
    "analyse",
    "counts",
    "explain",
    "policy_errors",
    "scope_miss",
]
