"""A node's policy: rules that permit or forbid, each with a stable id.

Types only; loading is in ``load`` and deciding in ``engine``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from types import MappingProxyType

from liaison.handling import DEFAULT_HANDLING, HandlingCode
from liaison.query import Comparator, Operation

ANY = "*"


class Effect(StrEnum):
    PERMIT = "permit"
    FORBID = "forbid"
    # Fields a duty officer may release on a follow-up request, after a human
    # decision. Never permits (or forbids) a query: the engine ignores these.
    APPROVE = "approve"


class TransformKind(StrEnum):
    REDACT = "redact"  # the value is replaced by "[redacted]": presence only
    KEYED_HASH = "keyed-hash"  # HMAC under the node's secret: linkable, not readable
    MONTH = "month"  # a date truncated to YYYY-MM
    YEAR = "year"  # a date truncated to YYYY
    MAP = "map"  # a value generalised through one of the policy's [maps]


@dataclass(frozen=True, slots=True)
class Transform:
    kind: TransformKind
    map_name: str = ""

    def __str__(self) -> str:
        return f"map:{self.map_name}" if self.kind is TransformKind.MAP else self.kind.value


@dataclass(frozen=True, slots=True)
class RowFilter:
    """A condition every released or counted row must meet (on catalog fields)."""

    field: str
    comparator: Comparator
    values: tuple[str, ...]

    def __str__(self) -> str:
        return f"{self.field} {self.comparator.value} {','.join(self.values)}"


class RateScope(StrEnum):
    INVESTIGATOR = "investigator"
    AGENCY = "agency"


@dataclass(frozen=True, slots=True)
class RateLimit:
    """At most ``amount`` selector values per ``window_s`` seconds per scope."""

    scope: RateScope
    amount: int
    window_s: int

    def __str__(self) -> str:
        return f"{self.amount} per {self.window_s} s per {self.scope.value}"


# Near-duplicate (PDQ) queries a node answers per investigator when the
# permit sets no ``near_budget``: a distance oracle must not be free.
DEFAULT_NEAR_BUDGET = RateLimit(RateScope.INVESTIGATOR, 100, 3600)


@dataclass(frozen=True, slots=True)
class Rule:
    """One rule. Scope sets hold names or ``ANY``; groups are already expanded."""

    id: str
    effect: Effect
    agencies: frozenset[str]
    roles: frozenset[str]
    purposes: frozenset[str]
    datasets: frozenset[str]
    operations: frozenset[Operation]
    # Permits only: fields usable in predicates, and fields released
    # (returned by records, groupable by count_by).
    match_fields: frozenset[str] = frozenset()
    release: frozenset[str] = frozenset()
    # Counts (and count-by cells) below this are never shown exactly.
    min_count: int = 0
    max_rows: int = 100
    # Permits only: the largest near-duplicate (PDQ) distance a query may ask.
    max_distance: int = 31
    description: str = ""
    # Conditions on the requester and the request (permits and forbids):
    # each attribute named must have one of the listed values.
    attributes: Mapping[str, frozenset[str]] = field(default_factory=dict)
    # A glob with "*" for any run of characters (as Cedar's `like`).
    case_ref_pattern: str = ""
    # The request must cite one of these legal bases (empty: none required).
    legal_bases: frozenset[str] = frozenset()
    # Forbids only: the rule applies when the query touches any of these fields.
    fields: frozenset[str] = frozenset()
    # Permits only: obligations beyond fields, counts and rows.
    transforms: Mapping[str, Transform] = field(default_factory=dict)
    row_filters: tuple[RowFilter, ...] = ()
    rate_limits: tuple[RateLimit, ...] = ()
    # Permits only: records answers without a lookup by an identifying field
    # (lists). Off unless the policy says so: a permit answers about what was asked.
    releases_lists: bool = False
    # Permits only: near-duplicate queries per investigator (None: the node's
    # DEFAULT_NEAR_BUDGET).
    near_budget: RateLimit | None = None
    # Permits only: a hit under this rule puts a notice in this agency's inbox.
    notify: bool = False
    # Approve rules only: roles at this node that may decide a follow-up, and
    # the handling code a released field gets unless the officer picks another.
    # (An approve rule's ``release`` is what a duty officer may release.)
    officers: frozenset[str] = frozenset()
    handling: HandlingCode = DEFAULT_HANDLING

    def covers(self, agency: str, roles: frozenset[str], purpose: str, dataset: str) -> bool:
        """Who and why, and about which dataset: the scope without operations."""
        return (
            (ANY in self.agencies or agency in self.agencies)
            and (ANY in self.roles or bool(self.roles & roles))
            and (ANY in self.purposes or purpose in self.purposes)
            and (ANY in self.datasets or dataset in self.datasets)
        )

    def in_scope(
        self, agency: str, roles: frozenset[str], purpose: str, dataset: str, operation: Operation
    ) -> bool:
        """Who, why and what, without the finer conditions."""
        return operation in self.operations and self.covers(agency, roles, purpose, dataset)

    def applies_to(
        self, agency: str, roles: frozenset[str], purpose: str, dataset: str, operation: Operation
    ) -> bool:
        """Scope only; kept for callers that have no conditions to check."""
        return self.in_scope(agency, roles, purpose, dataset, operation)


def _names(names: frozenset[str]) -> str:
    return ", ".join(sorted(names))


def scope_miss(
    rule: Rule,
    *,
    agency: str,
    roles: frozenset[str],
    purpose: str,
    dataset: str,
    operation: Operation | None = None,
) -> str:
    """Why ``rule``'s scope does not cover a request, or "" when it does.

    ``operation`` None checks who, why and which dataset only (an approve
    rule has no operations: a follow-up is no query).
    """
    if not (ANY in rule.datasets or dataset in rule.datasets):
        return f"about {_names(rule.datasets)}, not {dataset}"
    if operation is not None and operation not in rule.operations:
        names = [o.value for o in Operation if o in rule.operations]
        if not names:
            return f"covers no operation, not {operation.value}"
        shown = ", ".join(names[:-1]) + " and " + names[-1] if len(names) > 1 else names[0]
        return f"covers {shown}, not {operation.value}"
    if not (ANY in rule.agencies or agency in rule.agencies):
        return f"agency {agency} is not one of {_names(rule.agencies)}"
    if not (ANY in rule.roles or rule.roles & roles):
        held = ", ".join(sorted(roles)) or "no role"
        return f"roles {_names(rule.roles)}; the requester has {held}"
    if not (ANY in rule.purposes or purpose in rule.purposes):
        return f"purpose {purpose} is not one of {_names(rule.purposes)}"
    return ""


def case_ref_matches(pattern: str, case_ref: str) -> bool:
    """Cedar ``like`` semantics: ``*`` matches any run of characters, nothing else is special."""
    if not pattern:
        return True
    parts = pattern.split("*")
    if len(parts) == 1:
        return case_ref == pattern
    first, *middle, last = parts
    if not case_ref.startswith(first) or len(case_ref) < len(first) + len(last):
        return False
    if not case_ref.endswith(last):
        return False
    position = len(first)
    end = len(case_ref) - len(last)
    for part in middle:
        found = case_ref.find(part, position, end)
        if found < 0:
            return False
        position = found + len(part)
    return True


@dataclass(frozen=True)
class Policy:
    agency: str
    rules: tuple[Rule, ...]
    maps: Mapping[str, Mapping[str, str]] = field(default_factory=dict)
    # Rules by (dataset, operation), forbids first: built once, so a decision
    # looks at the handful of rules that could apply, not at all of them.
    _index: Mapping[tuple[str, Operation], tuple[tuple[Rule, ...], tuple[Rule, ...]]] = field(
        init=False, repr=False, compare=False
    )

    def __post_init__(self) -> None:
        unique: dict[str, Rule] = {}
        for rule in self.rules:
            seen = unique.setdefault(rule.id, rule)
            if seen != rule:
                raise ValueError(f"two different rules share the id {rule.id!r}")
        # The same rule listed twice is the same rule once.
        object.__setattr__(self, "rules", tuple(unique.values()))
        index: dict[tuple[str, Operation], tuple[tuple[Rule, ...], tuple[Rule, ...]]] = {}
        datasets = {d for r in self.rules for d in r.datasets if d != ANY}
        for dataset in datasets | {ANY}:
            for op in Operation:
                # Sorted by id, so that decisions and their explanations do
                # not depend on the order rules are written in.
                # Approve rules bound follow-ups, never queries: left out here.
                matching = sorted(
                    (
                        r
                        for r in self.rules
                        if r.effect is not Effect.APPROVE
                        and (ANY in r.datasets or dataset in r.datasets)
                        and op in r.operations
                    ),
                    key=lambda r: r.id,
                )
                index[(dataset, op)] = (
                    tuple(r for r in matching if r.effect is Effect.FORBID),
                    tuple(r for r in matching if r.effect is Effect.PERMIT),
                )
        object.__setattr__(self, "_index", MappingProxyType(index))

    def candidates(
        self, dataset: str, operation: Operation
    ) -> tuple[tuple[Rule, ...], tuple[Rule, ...]]:
        """Forbids and permits whose dataset and operation fit, each sorted by id."""
        found = self._index.get((dataset, operation))
        if found is None:
            return self._index.get((ANY, operation), ((), ()))
        return found

    @property
    def permits(self) -> tuple[Rule, ...]:
        return tuple(r for r in self.rules if r.effect is Effect.PERMIT)

    @property
    def forbids(self) -> tuple[Rule, ...]:
        return tuple(r for r in self.rules if r.effect is Effect.FORBID)

    @property
    def approves(self) -> tuple[Rule, ...]:
        """Approve rules, sorted by id (as decisions consider them)."""
        return tuple(
            sorted((r for r in self.rules if r.effect is Effect.APPROVE), key=lambda r: r.id)
        )
