"""Compiling a permitted query into a SQLAlchemy Core select over local tables.

Only bound parameters and reflected column objects appear in the statement:
no string is ever pasted into SQL, and no ``*`` is ever selected.

Building a select and having SQLAlchemy key it for its compiled-statement
cache costs more than running an indexed lookup, so statements are built once
per shape (dataset, operation, fields, and per predicate its field and form:
equality, set, range) with named bound parameters, and each query gets that
statement with its own values bound (``Select.params``). The SQL is the same
as building it afresh would give, value for value.
"""

from __future__ import annotations

import datetime as dt
import threading
from collections.abc import Callable, Hashable, Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.sql.elements import ColumnElement

from liaison.catalog import FieldType, SqlValue
from liaison.errors import InvalidQuery
from liaison.query import Comparator, Operation, Predicate, Query
from node.database import MappedDataset
from policies import Grant


def _bind(column: sa.Column[Any], ftype: FieldType, value: SqlValue) -> Any:
    # A date compared with a text column must be bound as ISO text, or the
    # driver would compare it in its own (locale or adapter) format.
    if isinstance(value, dt.date) and not isinstance(column.type, sa.Date | sa.DateTime):
        return value.isoformat()
    if isinstance(value, bool) and not isinstance(column.type, sa.Boolean):
        return int(value)
    return value


def _condition(mapped: MappedDataset, predicate: Predicate) -> ColumnElement[bool]:
    field = mapped.dataset.field(predicate.field)
    column = mapped.columns.get(predicate.field)
    if column is None:
        raise InvalidQuery(f"this node does not hold field {predicate.field!r}")
    values = [_bind(column, field.type, field.parse(v)) for v in predicate.values]
    spelling = mapped.spelling(predicate.field)
    if spelling is not None and predicate.comparator in (Comparator.EQ, Comparator.IN):
        # Hex as the column stores it, compared with the bare column so its
        # index stays usable (never LOWER(column)).
        forms = list(dict.fromkeys(f for v in values for f in spelling.forms(str(v))))
        if len(forms) == 1:
            return column == forms[0]
        return column.in_(forms)
    if predicate.comparator is Comparator.EQ:
        return column == values[0]  # type: ignore[no-any-return]  # Column[Any] comparisons are Any
    if predicate.comparator is Comparator.IN:
        return column.in_(values)
    if predicate.comparator is Comparator.GTE:
        return column >= values[0]  # type: ignore[no-any-return]  # as above
    return column <= values[0]  # type: ignore[no-any-return]  # as above


def _where(mapped: MappedDataset, conditions: Sequence[Predicate]) -> list[ColumnElement[bool]]:
    return [_condition(mapped, p) for p in conditions]


# How a predicate compares, once its values are bound: one value, or a list.
_EQ, _IN, _GTE, _LTE = "eq", "in", "gte", "lte"


def _bound(
    mapped: MappedDataset, conditions: Sequence[Predicate]
) -> tuple[tuple[tuple[str, str], ...], dict[str, Any]]:
    """The shape of ``conditions`` (field and form of each) and their values by parameter name.

    The same checks and values as :func:`_condition`, without building SQL.
    """
    shape: list[tuple[str, str]] = []
    values: dict[str, Any] = {}
    for i, predicate in enumerate(conditions):
        field = mapped.dataset.field(predicate.field)
        column = mapped.columns.get(predicate.field)
        if column is None:
            raise InvalidQuery(f"this node does not hold field {predicate.field!r}")
        bound = [_bind(column, field.type, field.parse(v)) for v in predicate.values]
        spelling = mapped.spelling(predicate.field)
        comparator = predicate.comparator
        form: str
        value: Any
        if spelling is not None and comparator in (Comparator.EQ, Comparator.IN):
            forms = list(dict.fromkeys(f for v in bound for f in spelling.forms(str(v))))
            form, value = (_EQ, forms[0]) if len(forms) == 1 else (_IN, forms)
        elif comparator is Comparator.EQ:
            form, value = _EQ, bound[0]
        elif comparator is Comparator.IN:
            form, value = _IN, bound
        elif comparator is Comparator.GTE:
            form, value = _GTE, bound[0]
        else:
            form, value = _LTE, bound[0]
        shape.append((predicate.field, form))
        values[f"p{i}"] = value
    return tuple(shape), values


def _template_where(
    mapped: MappedDataset, shape: tuple[tuple[str, str], ...]
) -> list[ColumnElement[bool]]:
    """The conditions of ``shape``, each with its bound parameter p0, p1, ... unset."""
    where: list[ColumnElement[bool]] = []
    for i, (field, form) in enumerate(shape):
        column = mapped.columns[field]
        name = f"p{i}"
        if form == _IN:
            where.append(column.in_(sa.bindparam(name, expanding=True)))
        elif form == _EQ:
            where.append(column == sa.bindparam(name))
        elif form == _GTE:
            where.append(column >= sa.bindparam(name))
        else:
            where.append(column <= sa.bindparam(name))
    return where


# Built statements by shape; a node meets a handful of shapes, so this stays
# small, and it is emptied should odd queries ever fill it.
_MAX_TEMPLATES = 1024
_templates: dict[Hashable, tuple[MappedDataset, sa.Select[Any]]] = {}
_templates_lock = threading.Lock()


def _statement(
    mapped: MappedDataset,
    key: Hashable,
    conditions: Sequence[Predicate],
    build: Callable[[list[ColumnElement[bool]]], sa.Select[Any]],
) -> sa.Select[Any]:
    """The statement ``build`` makes from ``conditions``' template, with their values bound."""
    template, values = _template(mapped, key, conditions, build)
    return template.params(values) if values else template


def _template(
    mapped: MappedDataset,
    key: Hashable,
    conditions: Sequence[Predicate],
    build: Callable[[list[ColumnElement[bool]]], sa.Select[Any]],
) -> tuple[sa.Select[Any], dict[str, Any]]:
    """The cached statement for ``conditions``' shape, and the values of its parameters."""
    shape, values = _bound(mapped, conditions)
    full_key = (id(mapped), key, shape)
    found = _templates.get(full_key)
    # The dataset itself is kept with its statement: an id can be reused.
    if found is None or found[0] is not mapped:
        template = build(_template_where(mapped, shape))
        with _templates_lock:
            if len(_templates) >= _MAX_TEMPLATES:
                _templates.clear()
            _templates[full_key] = (mapped, template)
    else:
        template = found[1]
    return template, values


def row_filter_conditions(grant: Grant) -> tuple[Predicate, ...]:
    """A grant's row filters, as predicates every answer's rows must also meet."""
    return tuple(Predicate(f.field, f.comparator, f.values) for f in grant.row_filters)


def conditions_of(query: Query, grant: Grant) -> tuple[Predicate, ...]:
    return query.predicates + row_filter_conditions(grant)


def compile_records(
    mapped: MappedDataset, query: Query, grant: Grant, limit: int
) -> sa.Select[Any]:
    """Select the granted fields; one row past ``limit`` shows truncation."""
    missing = [f for f in grant.fields if not mapped.holds(f)]
    if missing:
        raise InvalidQuery(f"this node does not hold field(s) {', '.join(missing)}")

    def build(where: list[ColumnElement[bool]]) -> sa.Select[Any]:
        # A computed field is selected as its source; the executor computes it.
        sources = {f: mapped.dataset.field(f).computed_from or f for f in grant.fields}
        columns = [mapped.columns[sources[f]].label(f) for f in grant.fields]
        # Ordering by a transformed column would let row order (and which rows
        # the cap keeps) reveal what the transform hides.
        order = [
            mapped.columns[sources[f]]
            for f in grant.fields
            if f not in grant.transforms and sources[f] == f
        ]
        return sa.select(*columns).where(*where).order_by(*order).limit(limit + 1)

    key = ("records", grant.fields, tuple(sorted(grant.transforms)), limit)
    return _statement(mapped, key, conditions_of(query, grant), build)


def compile_count(mapped: MappedDataset, query: Query, grant: Grant) -> sa.Select[Any]:
    return _statement(
        mapped,
        "count",
        conditions_of(query, grant),
        lambda where: sa.select(sa.func.count()).select_from(mapped.table).where(*where),
    )


def compile_match(mapped: MappedDataset, query: Query, grant: Grant) -> sa.Select[Any]:
    template, values = prepare_match(mapped, query, grant)
    return template.params(values) if values else template


def prepare_match(
    mapped: MappedDataset, query: Query, grant: Grant
) -> tuple[sa.Select[Any], dict[str, Any]]:
    """:func:`compile_match` as a statement shared by every query of its shape, and its values.

    Run it as ``conn.execute(statement, values)``: the statement object is the
    same each time, so SQLAlchemy finds its compiled form without keying a new
    statement (about a third of what :func:`compile_match` and its execution cost).
    """
    return _template(
        mapped,
        "match",
        conditions_of(query, grant),
        lambda where: sa.select(sa.literal(1)).select_from(mapped.table).where(*where).limit(1),
    )


def _all(conditions: list[ColumnElement[bool]]) -> ColumnElement[bool]:
    # COALESCE: a NULL comparison means "not in the set", also under NOT.
    if not conditions:
        return sa.true()
    return sa.func.coalesce(sa.and_(*conditions), sa.false())


def compile_difference(
    mapped: MappedDataset,
    new: Sequence[Predicate],
    new_group: str | None,
    old: Sequence[Predicate],
    old_group: str | None,
) -> sa.Select[Any]:
    """Tallies to compare every cell of an old aggregate with every cell of a new one.

    Rows are ``[old_key,] [new_key,] n_old, n_new, n_both``: per pair of group
    values, the records in the old set, in the new set, and in both (keys
    appear only for the queries that group).
    """
    a, b = _all(_where(mapped, new)), _all(_where(mapped, old))

    def tally(condition: ColumnElement[bool]) -> Any:
        return sa.func.sum(sa.case((condition, 1), else_=0))

    keys = []
    for name in (old_group, new_group):
        if name is None:
            continue
        column = mapped.columns.get(name)
        if column is None:
            raise InvalidQuery(f"this node does not hold field {name!r}")
        keys.append(column)
    counts = [tally(b), tally(a), tally(sa.and_(a, b))]
    select = sa.select(*keys, *counts).select_from(mapped.table).where(sa.or_(a, b))
    return select.group_by(*keys) if keys else select


def compile_count_by(mapped: MappedDataset, query: Query, grant: Grant) -> sa.Select[Any]:
    if query.operation is not Operation.COUNT_BY or not query.group_by:
        raise InvalidQuery("a count_by query needs a field to group by")
    column = mapped.columns.get(query.group_by)
    if column is None:
        raise InvalidQuery(f"this node does not hold field {query.group_by!r}")
    n = sa.func.count().label("n")
    return _statement(
        mapped,
        ("count_by", query.group_by),
        conditions_of(query, grant),
        lambda where: (
            sa.select(column.label("key"), n)
            .where(*where)
            .group_by(column)
            .order_by(n.desc(), column)
        ),
    )
