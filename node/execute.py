"""Running a permitted query read-only and applying the grant's obligations.

Everything that shapes what leaves the node happens here, after SQL and
before signing: field transforms, count suppression, sticky noise on counts
under a minimum count, count-by cells below the minimum, row caps, the
differencing guard, and saying when held records are not releasable.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, replace
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.sql.elements import ColumnElement

from liaison.catalog import format_value
from liaison.errors import BackendError, CatalogError, InvalidQuery
from liaison.messages import Bucket, Count, QueryRequest, Requester
from liaison.query import Comparator, Operation, Predicate, Query
from node import compile as sql
from node.database import MappedDataset, describe_database_error
from node.differencing import GUARD_RULE, RecentAggregates, RecentQuery, TooManyRecent
from node.near import NearIndexes
from node.noise import RecordSet, StickyNoise
from node.transforms import apply_transform
from policies import Grant, Policy, decide

log = logging.getLogger("liaison.node")

MAX_BUCKETS = 1000
# Beyond this many matched hashes a near-duplicate query is refused: it would
# be a list of the agency's collection, not a question about one image.
MAX_NEAR_MATCHES = 10_000
NEAR_CAP_RULE = "near-match-cap"
# Matched rows are fetched by key up to this many keys (integers, written into
# the statement); beyond it, by hash as stored.
MAX_NEAR_KEYS = 50_000


@dataclass(frozen=True, slots=True)
class Refusal:
    """An obligation the node cannot meet for this query: the answer is a denial."""

    rule: str
    reason: str


@dataclass(frozen=True, slots=True)
class NearResolved:
    """A query whose near predicates were replaced by the stored hashes they match.

    ``only``: a condition on the row key that every statement of the answer
    adds (the rows the index found), or None to select by hash alone.
    """

    query: Query
    nearest: dict[str, int]
    only: ColumnElement[bool] | None = None

    def statements(self, mapped: MappedDataset, grant: Grant) -> Statements:
        """The statements answering the resolved query under ``grant``, narrowed by ``only``."""
        return Statements(mapped, self.query, grant, self.only)


@dataclass(frozen=True, slots=True)
class Statements:
    """A permitted query's statements, narrowed to the rows a near lookup found by key.

    The one place the row-key condition (``only``) is added, so no statement
    of an answer can leave it out. Each is built when asked for, so it is
    compiled (and may raise) where the answer needs it.
    """

    mapped: MappedDataset
    query: Query
    grant: Grant
    only: ColumnElement[bool] | None

    def records(self, limit: int) -> sa.Select[Any]:
        return self._narrowed(sql.compile_records(self.mapped, self.query, self.grant, limit))

    def count(self) -> sa.Select[Any]:
        return self._narrowed(sql.compile_count(self.mapped, self.query, self.grant))

    def count_by(self) -> sa.Select[Any]:
        return self._narrowed(sql.compile_count_by(self.mapped, self.query, self.grant))

    def match(self) -> sa.Select[Any]:
        return self._narrowed(sql.compile_match(self.mapped, self.query, self.grant))

    def listing(self, *first: sa.Column[Any]) -> sa.Select[Any]:
        """The identities of the rows a count counts (after ``first`` columns)."""
        return self._narrowed(_listing(self.mapped, self.query, self.grant, *first))

    def _narrowed(self, statement: sa.Select[Any]) -> sa.Select[Any]:
        return statement if self.only is None else statement.where(self.only)


class Executor:
    def __init__(
        self,
        *,
        engine: Engine,
        transform_secret: bytes,
        maps: Mapping[str, Mapping[str, str]],
        recent: RecentAggregates,
        default_limit: int,
        near: NearIndexes | None = None,
    ) -> None:
        self.near = near
        self.engine = engine
        self.transform_secret = transform_secret
        self.maps = maps
        self.recent = recent
        self.noise = StickyNoise(recent.noise_key)
        self.default_limit = default_limit

    def _formatter(self, mapped: MappedDataset, field: str, grant: Grant) -> Callable[[Any], str]:
        ftype = mapped.dataset.field(field).type
        transform = grant.transforms.get(field)
        if transform is None:
            return lambda v: format_value(ftype, v)
        scope = f"{mapped.dataset.name}.{field}"

        def formatted(value: Any) -> str:
            return apply_transform(
                transform,
                format_value(ftype, value),
                secret=self.transform_secret,
                scope=scope,
                maps=self.maps,
            )

        return formatted

    def require_near_index(self, dataset: str, query: Query) -> None:
        """Raise unless this node keeps a PDQ index for every near predicate of ``query``."""
        for p in query.predicates:
            if p.comparator is Comparator.NEAR and (
                self.near is None or self.near.index(dataset, p.field) is None
            ):
                raise InvalidQuery(f"this node does not hold field {p.field!r}")

    def resolve_near(
        self, mapped: MappedDataset, query: Query
    ) -> tuple[Query, dict[str, int]] | Refusal:
        """``query`` with each near-duplicate predicate replaced by the stored hashes it matches.

        The index finds them; the database then applies every other predicate
        and the grant's row filters to exactly those hashes. Returns the
        nearest distance per matched hash too, or a refusal when too many match
        (a signed denial that keeps its rate charge: it says something about
        what the node holds, so it is not free). See :meth:`resolve_near_rows`
        for the rows' keys as well.
        """
        resolved = self.resolve_near_rows(mapped, query)
        if isinstance(resolved, Refusal):
            return resolved
        return resolved.query, resolved.nearest

    def resolve_near_rows(self, mapped: MappedDataset, query: Query) -> NearResolved | Refusal:
        """As :meth:`resolve_near`, with the keys of the rows the index found.

        Where the index keeps row keys, every statement answering the query
        selects those rows by key (always indexed), and still requires the
        column to hold one of the matched hashes, as stored: a row deleted or
        changed since the index last looked no longer matches, and the PDQ
        column needs no index of its own.
        """
        self.require_near_index(mapped.dataset.name, query)
        nearest: dict[str, int] = {}
        predicates = []
        keys: set[int] | None = None
        for p in query.predicates:
            if p.comparator is not Comparator.NEAR:
                predicates.append(p)
                continue
            assert self.near is not None  # require_near_index checked
            found = self.near.match(mapped.dataset.name, p.field, p.values, p.max_distance or 0)
            if len(found.nearest) > MAX_NEAR_MATCHES:
                return Refusal(
                    NEAR_CAP_RULE,
                    f"more than {MAX_NEAR_MATCHES} stored hashes are within "
                    f"{p.max_distance} bits; ask for a smaller distance",
                )
            for value, distance in found.nearest.items():
                nearest[value] = min(distance, nearest.get(value, distance))
            predicates.append(Predicate(p.field, Comparator.IN, tuple(sorted(found.nearest))))
            if found.keys is not None:
                # Rows must match every near predicate: the keys found by each.
                keys = set(found.keys) if keys is None else keys & set(found.keys)
        only: ColumnElement[bool] | None = None
        if keys is not None and mapped.row_key is not None and len(keys) <= MAX_NEAR_KEYS:
            # Literal integers: a long list stays within every driver's parameter limit.
            listed: sa.BindParameter[list[int]] = sa.bindparam(
                "near_row_keys", sorted(keys), expanding=True, literal_execute=True
            )
            only = mapped.row_key.in_(listed)
        return NearResolved(replace(query, predicates=tuple(predicates)), nearest, only)

    def run(
        self,
        mapped: MappedDataset,
        query: Query,
        grant: Grant,
        request: QueryRequest,
        now_ms: int,
        policy: Policy | None = None,
    ) -> dict[str, Any] | Refusal:
        """Run ``query`` (as validated from ``request``) under ``grant``.

        ``policy`` is the node's whole policy: a records answer that finds
        only rows its row filters exclude asks it what a match would have told
        the same requester (see :meth:`_held_not_released`).
        """
        op = query.operation
        if op is Operation.COUNT_BY and query.group_by not in mapped.columns:
            raise InvalidQuery(f"this node does not hold field {query.group_by!r}")
        asked = query
        resolved = self.resolve_near_rows(mapped, query)
        if isinstance(resolved, Refusal):
            return resolved
        query, nearest = resolved.query, resolved.nearest
        statements = resolved.statements(mapped, grant)
        try:
            with self.engine.connect() as conn:
                if op is Operation.MATCH:
                    hit = conn.execute(statements.match())
                    return {"hit": hit.first() is not None}
                if op in (Operation.COUNT, Operation.COUNT_BY) and grant.min_count > 0:
                    refusal = self._differencing(
                        conn, mapped, query, grant, request.requester, now_ms
                    )
                    if refusal is not None:
                        return refusal
                if op is Operation.COUNT:
                    return {"count": self._count(conn, statements)}
                if op is Operation.COUNT_BY:
                    return self._count_by(conn, statements)
                answer = self._records(conn, statements, nearest)
                if not answer["rows"] and grant.row_filters and policy is not None:
                    refusal = self._held_not_released(
                        conn, mapped, asked, resolved, grant, request, policy
                    )
                    if refusal is not None:
                        return refusal
                return answer
        except SQLAlchemyError as exc:
            # Never str(exc): a driver's message can quote the selectors asked for.
            # The query id ties this line to the request in the ledgers; the
            # dataset and operation say what failed, the values asked never.
            log.error(
                "database error",
                extra={
                    "query_id": request.query_id,
                    "dataset": mapped.dataset.name,
                    "operation": op.value,
                    **describe_database_error(exc),
                },
            )
            raise BackendError(
                "the agency database could not answer; the node operator's log has details"
            ) from exc

    def _records(
        self, conn: sa.Connection, statements: Statements, nearest: Mapping[str, int]
    ) -> dict[str, Any]:
        mapped, query, grant = statements.mapped, statements.query, statements.grant
        limit = min(query.limit or self.default_limit, grant.max_rows)
        rows = conn.execute(statements.records(limit)).all()
        formats = [
            _distance_of(nearest)
            if mapped.dataset.field(f).computed_from
            else self._formatter(mapped, f, grant)
            for f in grant.fields
        ]
        transformed = [
            tuple(None if v is None else fmt(v) for fmt, v in zip(formats, row, strict=True))
            for row in rows[:limit]
        ]
        if grant.transforms:
            # Rows leave sorted by what is shown, so their order says nothing more.
            transformed.sort(key=lambda r: tuple((v is not None, v or "") for v in r))
        released = tuple(transformed)
        return {
            "fields": grant.fields,
            "rows": released,
            "withheld_fields": grant.withheld,
            "truncated": len(rows) > limit,
        }

    def _cells(
        self, rows: Any, mapped: MappedDataset, group_by: str | None, grant: Grant
    ) -> dict[str | None, int]:
        """Counts per (transformed) group key: a transform can merge groups."""
        fmt = self._formatter(mapped, group_by, grant) if group_by else None
        cells: dict[str | None, int] = defaultdict(int)
        for row in rows:
            if fmt is None:
                cells[None] += int(row[0])
            else:
                key, n = row
                cells[None if key is None else fmt(key)] += int(n)
        return cells

    def _count(self, conn: sa.Connection, statements: Statements) -> Count:
        grant = statements.grant
        if grant.min_count <= 0:
            return Count(int(conn.execute(statements.count()).scalar_one()))
        counted = self.noise.records()
        for row in _stream(conn, statements.listing()):
            counted.add(row)
        return self.noise.release(statements.mapped.dataset.name, counted, grant.min_count)

    def _noisy_cells(
        self, conn: sa.Connection, statements: Statements
    ) -> dict[str | None, tuple[int, int]]:
        """Per (transformed) group key: the noisy count and its bound, cells at k or more."""
        mapped, query, grant = statements.mapped, statements.query, statements.grant
        assert query.group_by is not None  # checked by compile_count_by's callers
        fmt = self._formatter(mapped, query.group_by, grant)
        group = mapped.columns[query.group_by]
        sets: dict[str | None, RecordSet] = {}
        for key, *identity in _stream(conn, statements.listing(group)):
            cell = None if key is None else fmt(key)
            counted = sets.get(cell)
            if counted is None:
                counted = sets[cell] = self.noise.records()
            counted.add(identity)
        out: dict[str | None, tuple[int, int]] = {}
        for cell, counted in sets.items():
            released = self.noise.release(mapped.dataset.name, counted, grant.min_count)
            out[cell] = (
                (-1, 0) if released.below_minimum else (released.value, released.noise_bound)
            )
        return out

    def _count_by(self, conn: sa.Connection, statements: Statements) -> dict[str, Any]:
        mapped, query, grant = statements.mapped, statements.query, statements.grant
        sql.compile_count_by(mapped, query, grant)  # checks the grouping, as before
        if grant.min_count > 0:
            # Cells below the minimum are marked -1; the others are noisy, and
            # ordered by their noisy counts, so the order says nothing more.
            cells = self._noisy_cells(conn, statements)
        else:
            raw = conn.execute(statements.count_by())
            cells = {k: (n, 0) for k, n in self._cells(raw, mapped, query.group_by, grant).items()}
        # Same order on every database: biggest first, then the absent key, then by key.
        ordered = sorted(cells.items(), key=lambda kv: (-kv[1][0], kv[0] is not None, kv[0] or ""))
        buckets = [
            Bucket(k, n, bound) for k, (n, bound) in ordered if n >= grant.min_count and n >= 0
        ]
        cap = min(grant.max_rows, MAX_BUCKETS)
        return {
            "buckets": tuple(buckets[:cap]),
            "buckets_suppressed": len(buckets) < len(ordered),
            "bucket_minimum": grant.min_count,
            "truncated": len(buckets) > cap,
        }

    def _differencing(
        self,
        conn: sa.Connection,
        mapped: MappedDataset,
        query: Query,
        grant: Grant,
        who: Requester,
        now_ms: int,
    ) -> Refusal | None:
        k = grant.min_count
        new = RecentQuery(
            sql.conditions_of(query, grant),
            query.group_by if query.operation is Operation.COUNT_BY else None,
        )
        try:
            history = self.recent.recent(who, mapped.dataset.name, now_ms)
        except TooManyRecent as exc:
            return Refusal(GUARD_RULE, str(exc))
        for old in history:
            if old.encode() == new.encode():
                continue
            try:
                statement = sql.compile_difference(
                    mapped, new.conditions, new.group_by, old.conditions, old.group_by
                )
            except (InvalidQuery, CatalogError):
                continue  # remembered under an older mapping or catalog; cannot be compared
            old_fmt = self._formatter(mapped, old.group_by, grant) if old.group_by else None
            new_fmt = self._formatter(mapped, new.group_by, grant) if new.group_by else None
            n_old: dict[str | None, int] = defaultdict(int)
            n_new: dict[str | None, int] = defaultdict(int)
            n_both: dict[tuple[str | None, str | None], int] = defaultdict(int)
            for row in conn.execute(statement):
                values = list(row)
                a = _key(old_fmt, values.pop(0)) if old_fmt else None
                b = _key(new_fmt, values.pop(0)) if new_fmt else None
                n_old[a] += int(values[0] or 0)
                n_new[b] += int(values[1] or 0)
                n_both[(a, b)] += int(values[2] or 0)
            for a, old_count in n_old.items():
                for b, new_count in n_new.items():
                    # Only two exact counts can be subtracted: a suppressed one cannot.
                    if old_count < k or new_count < k:
                        continue
                    differ = old_count + new_count - 2 * n_both.get((a, b), 0)
                    if 0 < differ < k:
                        return Refusal(
                            GUARD_RULE,
                            "this count differs from one you asked recently by fewer "
                            f"than {k} records, which could single out individuals; ask a "
                            "broader question",
                        )
        self.recent.remember(who, mapped.dataset.name, new, now_ms)
        return None

    def _held_not_released(
        self,
        conn: sa.Connection,
        mapped: MappedDataset,
        asked: Query,
        resolved: NearResolved,
        grant: Grant,
        request: QueryRequest,
        policy: Policy,
    ) -> Refusal | None:
        """Say so when held records match but the records rule's row filters exclude them all.

        Only when the same requester, for the same purpose, would be told a
        HIT by a match on the same selectors: the policy then already tells
        them that a record is held, and an empty answer would read as "not
        held". Otherwise the empty answer stands, and says no more than the
        policy names (its obligations list the row filters).
        """
        probe = replace(asked, operation=Operation.MATCH, fields=(), group_by=None, limit=0)
        decision = decide(
            policy,
            request.requester,
            request.purpose,
            probe,
            case_ref=request.case_ref,
            legal_basis=request.legal_basis,
        )
        if not decision.permitted or decision.grant is None:
            return None
        matching = replace(
            resolved, query=replace(resolved.query, operation=Operation.MATCH, fields=(), limit=0)
        )
        try:
            statement = matching.statements(mapped, decision.grant).match()
        except (InvalidQuery, CatalogError):
            return None  # a row filter this node cannot apply: the match would be denied
        if conn.execute(statement).first() is None:
            return None
        filters = "; ".join(str(f) for f in grant.row_filters)
        return Refusal(
            grant.rule_id,
            "records matching your selectors are held here, but none is releasable to you "
            f"under rule {grant.rule_id} (it releases only rows where {filters}); "
            f"a match under rule {decision.grant.rule_id} says HIT for them",
        )


def _distance_of(nearest: Mapping[str, int]) -> Callable[[Any], str | None]:
    """The computed ``pdq_distance`` of a row, from the hash selected in its place."""

    def distance(value: Any) -> str | None:
        found = nearest.get(str(value).strip().lower())
        return None if found is None else str(found)

    return distance


def _key(fmt: Callable[[Any], str], value: Any) -> str | None:
    return None if value is None else fmt(value)


def _identity(mapped: MappedDataset) -> list[sa.Column[Any]]:
    """What tells one counted row from another: the primary key, or every column."""
    key = list(mapped.table.primary_key.columns)
    return key or list(mapped.table.columns)


def _listing(
    mapped: MappedDataset, query: Query, grant: Grant, *first: sa.Column[Any]
) -> sa.Select[Any]:
    """The identities of the rows a count of ``query`` counts (after ``first`` columns)."""
    count = sql.compile_count(mapped, query, grant)
    return count.with_only_columns(*first, *_identity(mapped), maintain_column_froms=True)


def _stream(conn: sa.Connection, statement: sa.Select[Any]) -> Iterator[tuple[Any, ...]]:
    """Rows in batches, through a server-side cursor where the database has one."""
    result = conn.execution_options(stream_results=True, yield_per=10_000).execute(statement)
    for row in result:
        yield tuple(row)
