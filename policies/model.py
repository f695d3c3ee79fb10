"""A node's policy: rules that permit or forbid, each with a stable id."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from liaison.query import Operation

ANY = "*"


class Effect(StrEnum):
    PERMIT = "permit"
    FORBID = "forbid"


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
    description: str = ""

    def applies_to(
        self, agency: str, roles: frozenset[str], purpose: str, dataset: str, operation: Operation
    ) -> bool:
        return (
            (ANY in self.agencies or agency in self.agencies)
            and (ANY in self.roles or bool(self.roles & roles))
            and (ANY in self.purposes or purpose in self.purposes)
            and (ANY in self.datasets or dataset in self.datasets)
            and operation in self.operations
        )


@dataclass(frozen=True, slots=True)
class Policy:
    agency: str
    rules: tuple[Rule, ...]

    @property
    def permits(self) -> tuple[Rule, ...]:
        return tuple(r for r in self.rules if r.effect is Effect.PERMIT)

    @property
    def forbids(self) -> tuple[Rule, ...]:
        return tuple(r for r in self.rules if r.effect is Effect.FORBID)
