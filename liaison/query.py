"""The structured query and its validation against the catalog.

A query is data, never SQL. Gateways validate it to fail fast with a clear
message; nodes validate it again because they trust no one with their schema.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from enum import StrEnum

from liaison.catalog import Catalog, Dataset
from liaison.errors import InvalidQuery

MAX_IN_VALUES = 1000
MAX_PREDICATES = 32
# Values in all of a query's predicates together. Every value is logged as a
# 64-hex-digit keyed hash, and a node's receipt quotes the gateway's entry
# whole, so this keeps both entries under the ledger's MAX_ENTRY_BYTES (1 MiB)
# with room to spare: 10,000 values make a request entry of about 0.7 MB and
# a receipt of about 0.75 MB. Larger sets go out as several queries, as
# liaison.cli.batch sends them (1,000 values at a time).
MAX_QUERY_VALUES = 10_000
MAX_LIMIT = 10_000
DEFAULT_LIMIT = 100
MAX_CASE_REF_LENGTH = 128
# PDQ: 256 bits; 31 is Meta's recommended threshold for near-duplicates.
DEFAULT_NEAR_DISTANCE = 31
MAX_NEAR_DISTANCE = 64
# Meta's rule: PDQ hashes of quality 49 or below are discarded, not matched.
MIN_PDQ_QUALITY = 50


class Operation(StrEnum):
    MATCH = "match"
    COUNT = "count"
    COUNT_BY = "count_by"
    RECORDS = "records"


class Comparator(StrEnum):
    EQ = "eq"
    IN = "in"
    GTE = "gte"
    LTE = "lte"
    # Perceptual near-duplicates: any of ``values`` within ``max_distance``
    # bits (Hamming distance) of a stored hash.
    NEAR = "near"


@dataclass(frozen=True, slots=True)
class Predicate:
    field: str
    comparator: Comparator
    values: tuple[str, ...]
    # NEAR only: the largest Hamming distance that counts as a match
    # (None until validated, then the catalog's default).
    max_distance: int | None = None


@dataclass(frozen=True, slots=True)
class Query:
    dataset: str
    operation: Operation
    predicates: tuple[Predicate, ...] = ()
    fields: tuple[str, ...] = ()
    group_by: str | None = None
    limit: int = 0

    @property
    def predicate_fields(self) -> frozenset[str]:
        return frozenset(p.field for p in self.predicates)

    @property
    def near_distance(self) -> int:
        """The largest near-duplicate distance the query asks for (0 when it asks none)."""
        return max(
            (p.max_distance or 0 for p in self.predicates if p.comparator is Comparator.NEAR),
            default=0,
        )


def validate_query(query: Query, catalog: Catalog) -> Query:
    """Check ``query`` against ``catalog``; return it with canonical values.

    Raises CatalogError for unknown names, InvalidValue for values that do not
    parse, and InvalidQuery for shapes that do not fit the operation.
    """
    dataset = catalog.dataset(query.dataset)
    if len(query.predicates) > MAX_PREDICATES:
        raise InvalidQuery(f"a query takes at most {MAX_PREDICATES} predicates")
    total = sum(len(p.values) for p in query.predicates)
    if total > MAX_QUERY_VALUES:
        raise InvalidQuery(
            f"a query takes at most {MAX_QUERY_VALUES} values in all its predicates together, "
            f"got {total}; split the values over several queries"
        )
    predicates = tuple(_validate_predicate(p, dataset) for p in query.predicates)
    op = query.operation
    if op is Operation.RECORDS:
        if not query.fields:
            raise InvalidQuery("a records query must select at least one field (--fields)")
        if len(set(query.fields)) != len(query.fields):
            raise InvalidQuery("a records query selects each field once")
        for name in query.fields:
            dataset.field(name)
    elif query.fields:
        raise InvalidQuery(f"a {op.value} query selects no fields; use a records query")
    if op is Operation.COUNT_BY:
        if not query.group_by:
            raise InvalidQuery("a count_by query needs a field to group by")
        if dataset.field(query.group_by).computed_from:
            raise InvalidQuery(f"{query.group_by!r} is computed for each answer; it cannot group")
    elif query.group_by:
        raise InvalidQuery(f"only count_by groups; a {op.value} query has no group_by")
    if op is Operation.MATCH and not predicates:
        raise InvalidQuery("a match query needs at least one predicate to match on")
    if not 0 <= query.limit <= MAX_LIMIT:
        raise InvalidQuery(f"limit must be between 1 and {MAX_LIMIT} (0 for the default)")
    return replace(query, predicates=predicates)


def _validate_predicate(predicate: Predicate, dataset: Dataset) -> Predicate:
    field = dataset.field(predicate.field)
    if field.computed_from:
        raise InvalidQuery(
            f"{field.name!r} is computed for each answer; it can be asked for, not matched on"
        )
    n = len(predicate.values)
    cmp = predicate.comparator
    distance = predicate.max_distance
    if cmp is Comparator.NEAR:
        if not field.near:
            raise InvalidQuery(
                f"'near' works on perceptual hashes only; {field.name!r} is not one "
                "(use eq or in for exact hashes)"
            )
        distance = DEFAULT_NEAR_DISTANCE if distance is None else distance
        if not 0 <= distance <= MAX_NEAR_DISTANCE:
            raise InvalidQuery(
                f"near-duplicate distance must be between 0 and {MAX_NEAR_DISTANCE} bits, "
                f"got {distance}"
            )
    elif distance is not None:
        raise InvalidQuery(
            f"only 'near' takes a distance; {cmp.value!r} on {field.name!r} does not"
        )
    if cmp in (Comparator.IN, Comparator.NEAR):
        if not 1 <= n <= MAX_IN_VALUES:
            raise InvalidQuery(
                f"{cmp.value!r} on {field.name!r} takes 1 to {MAX_IN_VALUES} values, got {n}"
            )
    elif n != 1:
        raise InvalidQuery(f"{cmp.value!r} on {field.name!r} takes exactly one value, got {n}")
    if cmp in (Comparator.GTE, Comparator.LTE) and not field.type.orderable:
        raise InvalidQuery(
            f"{field.name!r} is {field.type.value}; ranges work only on dates and numbers"
        )
    canonical = tuple(field.canonical(v) for v in predicate.values)
    return Predicate(field.name, cmp, canonical, distance)


def validate_case_ref(case_ref: str) -> str:
    stripped = case_ref.strip()
    if not stripped:
        raise InvalidQuery("a case reference is required (--case-ref)")
    if len(stripped) > MAX_CASE_REF_LENGTH or not stripped.isprintable():
        raise InvalidQuery(
            f"case reference must be printable and at most {MAX_CASE_REF_LENGTH} characters"
        )
    return stripped


MAX_LEGAL_BASIS_LENGTH = 64


def validate_legal_basis(legal_basis: str) -> str:
    """A legal basis is optional; when given it is a short printable identifier."""
    if len(legal_basis) > MAX_LEGAL_BASIS_LENGTH or not legal_basis.isprintable():
        raise InvalidQuery(
            f"legal basis must be printable and at most {MAX_LEGAL_BASIS_LENGTH} characters"
        )
    return legal_basis.strip()
