"""A near query's row keys narrow every statement that answers it.

Where the PDQ index keeps row keys, the executor selects the rows the index
found by key as well as by hash, in every statement of the answer. A hash that
moved, since the index last read the table, from an indexed row to a row the
index has not read yet is then not held, whatever the operation: match,
count and count_by (exact, and noisy under a minimum count), records, and the
match that says held records are not releasable to a records rule.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import sqlalchemy as sa

from liaison.catalog import CATALOG_V1
from liaison.config import DatasetMapping
from liaison.demo.pdq_data import random_hashes
from liaison.hashing.pdq import hex_from_words
from liaison.messages import Count, QueryRequest
from liaison.query import Comparator, Operation, Predicate, Query
from node.database import MappedDataset, bind_schema, open_read_only
from node.differencing import RecentAggregates
from node.execute import Executor, Refusal
from node.near import NearIndexes
from policies import Grant
from policies.model import ANY, Effect, Policy, RowFilter, Rule
from tests.support import INVESTIGATOR

ROWS = 200
MOVED = 15  # its hash moves to an unindexed row
UNINDEXED = 1015
LOCAL = sa.MetaData()
TABLE = sa.Table(
    "pdq_rows",
    LOCAL,
    sa.Column("rid", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("phash", sa.String(64)),
    sa.Column("klass", sa.String(16)),
    sa.Column("ok_share", sa.Integer),
)
MAPPING = DatasetMapping(
    "media", "pdq_rows", {"pdq": "phash", "category": "klass", "shareable": "ok_share"}
)
HASHES = hex_from_words(random_hashes(ROWS + 10, np.random.default_rng(20260602)))
FIELDS = ("pdq", "pdq_distance", "category")
NOT_SHARED = (RowFilter("shareable", Comparator.EQ, ("true",)),)
MATCHES = Policy(
    "genovia",
    (
        Rule(
            "pdq-match", Effect.PERMIT, frozenset({ANY}), frozenset({ANY}), frozenset({ANY}),
            frozenset({"media"}), frozenset({Operation.MATCH}),
            match_fields=frozenset({"pdq", "shareable"}),
        ),
    ),
)  # fmt: skip


@pytest.fixture
def moved(tmp_path: Path) -> Iterator[tuple[MappedDataset, NearIndexes, sa.Engine]]:
    """An index over the table; then row MOVED's hash moves to the unindexed row UNINDEXED."""
    url = f"sqlite:///{tmp_path / 'agency.sqlite3'}"
    writer = sa.create_engine(url)
    LOCAL.create_all(writer)
    rows = [
        {"rid": k, "phash": HASHES[k], "klass": "ABC"[k % 3], "ok_share": int(k != MOVED)}
        for k in range(1, ROWS)
    ]
    with writer.begin() as conn:
        conn.execute(TABLE.insert(), rows)
    reader = open_read_only(url)
    schema = bind_schema(reader, (MAPPING,), CATALOG_V1)
    indexes = NearIndexes(reader, schema, state_dir=tmp_path / "state")
    with writer.begin() as conn:
        conn.execute(TABLE.update().where(TABLE.c.rid == MOVED).values(phash=HASHES[ROWS + 1]))
        conn.execute(
            TABLE.insert(),
            [{"rid": UNINDEXED, "phash": HASHES[MOVED], "klass": "A", "ok_share": 0}],
        )
    try:
        yield schema["media"], indexes, reader
    finally:
        indexes.close()
        reader.dispose()
        writer.dispose()


@contextmanager
def selects(engine: sa.Engine) -> Iterator[list[str]]:
    """Every SELECT ``engine`` runs meanwhile."""
    seen: list[str] = []

    def record(conn: Any, cursor: Any, statement: str, *rest: Any) -> None:
        if statement.lstrip().upper().startswith("SELECT"):
            seen.append(" ".join(statement.split()))

    sa.event.listen(engine, "before_cursor_execute", record)
    try:
        yield seen
    finally:
        sa.event.remove(engine, "before_cursor_execute", record)


def ask(
    moved: tuple[MappedDataset, NearIndexes, sa.Engine], query: Query, grant: Grant, tmp: Path
) -> tuple[dict[str, Any] | Refusal, list[str]]:
    mapped, indexes, reader = moved
    executor = Executor(
        engine=reader,
        transform_secret=b"k" * 32,
        maps={},
        recent=RecentAggregates(tmp / "aggregates.sqlite3"),  # fresh: no differencing
        default_limit=100,
        near=indexes,
    )
    request = QueryRequest(
        "q-1", "gw", 0, 1, b"n" * 16, ("genovia",), INVESTIGATOR, "csam-investigation", "C-1",
        CATALOG_V1.version, query,
    )  # fmt: skip
    with selects(reader) as seen:
        answer = executor.run(mapped, query, grant, request, 0, MATCHES)
    return answer, seen


def near_moved(operation: Operation) -> Query:
    near = (Predicate("pdq", Comparator.NEAR, (HASHES[MOVED],), 0),)
    if operation is Operation.COUNT_BY:
        return Query("media", operation, near, group_by="category")
    if operation is Operation.RECORDS:
        return Query("media", operation, near, fields=FIELDS, limit=100)
    return Query("media", operation, near)


EXACT = [
    pytest.param(Operation.MATCH, {"hit": False}, id="match"),
    pytest.param(Operation.COUNT, {"count": Count(0)}, id="count"),
    pytest.param(Operation.COUNT_BY, {"buckets": ()}, id="count_by"),
    pytest.param(Operation.RECORDS, {"rows": (), "truncated": False}, id="records"),
]


@pytest.mark.parametrize(("operation", "expected"), EXACT)
def test_a_hash_moved_to_an_unindexed_row_is_not_held(
    moved: tuple[MappedDataset, NearIndexes, sa.Engine],
    tmp_path: Path,
    operation: Operation,
    expected: dict[str, Any],
) -> None:
    # execute
    answer, seen = ask(moved, near_moved(operation), Grant("near", FIELDS, (), 0, 1000), tmp_path)

    # assert: by hash alone, row UNINDEXED would answer
    assert isinstance(answer, dict)
    assert {k: answer[k] for k in expected} == expected
    assert seen and all(f"pdq_rows.rid IN ({MOVED})" in s for s in seen), seen


@pytest.mark.parametrize("operation", [Operation.COUNT, Operation.COUNT_BY])
def test_noisy_counts_list_only_the_rows_found_by_key(
    moved: tuple[MappedDataset, NearIndexes, sa.Engine], tmp_path: Path, operation: Operation
) -> None:
    # execute
    answer, seen = ask(moved, near_moved(operation), Grant("near", FIELDS, (), 3, 1000), tmp_path)

    # assert
    assert isinstance(answer, dict)
    assert seen and all(f"pdq_rows.rid IN ({MOVED})" in s for s in seen), seen


def test_the_held_but_not_released_match_is_narrowed_too(
    moved: tuple[MappedDataset, NearIndexes, sa.Engine], tmp_path: Path
) -> None:
    # prepare: a records rule releasing shareable rows only; row UNINDEXED is not shareable
    grant = Grant("near", FIELDS, (), 0, 1000, row_filters=NOT_SHARED)

    # execute
    answer, seen = ask(moved, near_moved(Operation.RECORDS), grant, tmp_path)

    # assert: the records and the match that would say "held" both select by key
    assert isinstance(answer, dict) and answer["rows"] == ()
    assert len(seen) == 2 and all(f"pdq_rows.rid IN ({MOVED})" in s for s in seen), seen
    assert re.match(r"SELECT \? AS anon_1 FROM pdq_rows WHERE", seen[1]), seen
