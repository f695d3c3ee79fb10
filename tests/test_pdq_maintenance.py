"""A node's PDQ index follows the agency's table, persists, and fetches matches by key.

Real databases (SQLite files; PostgreSQL and MariaDB where the SQL differs),
written to as the agency's tools would, and the node's own NearIndexes and
Executor over them. Checked: rows added, deleted and changed are followed
within one round; a restart serves from the persisted segment without reading
the table; a damaged or stale segment is rebuilt with a log line saying why;
a compaction keeps answers exact; a near query fetches its rows by primary key;
a view without a key falls back to a hash-only index with a warning.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import sqlalchemy as sa

from liaison.catalog import CATALOG_V1
from liaison.config import DatasetMapping
from liaison.demo.pdq_data import near, synthetic_hashes
from liaison.hashing.pdq import hex_from_words, words_from_hex
from liaison.messages import QueryRequest
from liaison.query import Comparator, Operation, Predicate, Query
from node import near as near_module
from node import pdq_index
from node.database import MappedDataset, bind_schema, open_read_only
from node.differencing import RecentAggregates
from node.execute import Executor
from node.near import NearIndexes
from policies import Grant
from policies.model import RowFilter
from tests.support import INVESTIGATOR

ROWS = 1500
SEED = 20260601
LOCAL = sa.MetaData()
REGISTER = sa.Table(
    "pdq_rows",
    LOCAL,
    sa.Column("rid", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("phash", sa.String(64)),  # no index: as the demo schema ships it
    sa.Column("klass", sa.String(16)),
    sa.Column("ok_share", sa.Integer),
)
MAPPING = DatasetMapping(
    "media", "pdq_rows", {"pdq": "phash", "category": "klass", "shareable": "ok_share"}
)
HASHES = hex_from_words(synthetic_hashes(ROWS + 200, seed=SEED))


@dataclass
class Register:
    url: str
    writer: sa.Engine  # read-write, as the agency's own tools write
    reader: sa.Engine  # the node's read-only engine
    state: Path
    rows: dict[int, str | None]  # rid -> stored PDQ

    def schema(self, mapping: DatasetMapping = MAPPING) -> dict[str, MappedDataset]:
        return bind_schema(self.reader, (mapping,), CATALOG_V1)

    def open(self, **options: Any) -> NearIndexes:
        return NearIndexes(self.reader, self.schema(), state_dir=self.state, **options)

    def insert(self, rows: dict[int, str | None]) -> None:
        with self.writer.begin() as conn:
            conn.execute(
                REGISTER.insert(),
                [
                    {"rid": k, "phash": v, "klass": "ABC"[k % 3], "ok_share": int(k % 4 != 3)}
                    for k, v in rows.items()
                ],
            )
        self.rows.update(rows)

    def delete(self, *rids: int) -> None:
        with self.writer.begin() as conn:
            conn.execute(REGISTER.delete().where(REGISTER.c.rid.in_(rids)))
        for rid in rids:
            del self.rows[rid]

    def change(self, rid: int, value: str | None) -> None:
        with self.writer.begin() as conn:
            conn.execute(REGISTER.update().where(REGISTER.c.rid == rid).values(phash=value))
        self.rows[rid] = value


def make_register(url: str, state: Path) -> Iterator[Register]:
    writer = sa.create_engine(url)
    LOCAL.create_all(writer)
    reader = open_read_only(url)
    register = Register(url, writer, reader, state, {})
    register.insert({i: HASHES[i] for i in range(1, ROWS)} | {ROWS: None})
    try:
        yield register
    finally:
        reader.dispose()
        writer.dispose()


@pytest.fixture
def register(tmp_path: Path) -> Iterator[Register]:
    yield from make_register(f"sqlite:///{tmp_path / 'agency.sqlite3'}", tmp_path / "state")


def brute(rows: dict[int, str | None], asked: list[str], t: int) -> dict[int, str]:
    """Rows within ``t`` bits of any asked hash: rid -> stored hash."""
    held = {k: v for k, v in rows.items() if v is not None}
    if not held:
        return {}
    words = words_from_hex([v.strip().lower() for v in held.values()])
    queries = words_from_hex(asked)
    dist = np.bitwise_count(words[:, None, :] ^ queries[None, :, :]).sum(axis=2).min(axis=1)
    return {k: v for (k, v), d in zip(held.items(), dist.tolist(), strict=True) if d <= t}


def matched(indexes: NearIndexes, asked: list[str], t: int) -> set[int]:
    found = indexes.match("media", "pdq", asked, t)
    assert found.keys is not None
    return set(found.keys)


def probes(rows: dict[int, str | None], rids: list[int], seed: int) -> list[str]:
    rng = np.random.default_rng(seed)
    out = []
    for rid in rids:
        value = rows[rid]
        assert value is not None
        out.append(hex_from_words(near(words_from_hex([value])[0], 6, rng)[None, :])[0])
    return out


@contextmanager
def statements(engine: sa.Engine) -> Iterator[list[str]]:
    """Every SQL statement ``engine`` runs meanwhile."""
    seen: list[str] = []

    def record(conn: Any, cursor: Any, statement: str, *rest: Any) -> None:
        seen.append(" ".join(statement.split()))

    sa.event.listen(engine, "before_cursor_execute", record)
    try:
        yield seen
    finally:
        sa.event.remove(engine, "before_cursor_execute", record)


def test_rows_added_deleted_and_changed_are_followed_within_a_round(
    database_url: str, tmp_path: Path
) -> None:
    for register in make_register(database_url, tmp_path / "state"):
        # prepare
        indexes = register.open()
        index = indexes.index("media", "pdq")
        assert index is not None and index.size == ROWS - 1
        register.insert({5000: HASHES[ROWS + 1], 5001: HASHES[10]})  # new; a second row of 10's
        register.delete(20, 21)
        register.change(30, HASHES[ROWS + 2])  # changed in place
        register.change(31, None)  # cleared
        register.change(40, HASHES[40].upper())  # respelled: same hash
        asked = [HASHES[ROWS + 1], HASHES[10], HASHES[20], HASHES[30], HASHES[31], HASHES[40]]
        asked += [HASHES[ROWS + 2], *probes(register.rows, [50, 60], SEED)]

        # execute: one background round (the table is small: the sweep covers it)
        index.refresh(full=False)

        # assert
        assert matched(indexes, asked, 8) == set(brute(register.rows, asked, 8))
        assert {5000, 5001, 10, 30, 40, 50, 60} <= matched(indexes, asked, 8)
        assert index.size == sum(v is not None for v in register.rows.values())
        indexes.close()


def test_a_row_committed_late_below_the_mark_is_found(register: Register) -> None:
    # prepare: the mark is at ROWS - 1; rows commit out of key order
    indexes = register.open()
    index = indexes.index("media", "pdq")
    assert index is not None
    register.insert({3000: HASHES[ROWS + 3]})
    index.refresh(full=False)
    register.insert({2999: HASHES[ROWS + 4]})  # its key was taken before 3000's

    # execute: the new-rows read starts from the mark before 3000
    with statements(register.reader) as seen, pytest.MonkeyPatch.context() as mp:
        mp.setattr(near_module, "SWEEP_MIN_ROWS", 10)  # no sweep over the whole table
        index.refresh(full=False)

    # assert
    assert matched(indexes, [HASHES[ROWS + 4]], 0) == {2999}
    assert any(re.search(r"WHERE .*rid > ", s) for s in seen), seen
    indexes.close()


def test_a_restart_serves_from_the_persisted_index_without_reading_the_table(
    register: Register, caplog: pytest.LogCaptureFixture
) -> None:
    # prepare: an index built, changed, closed; rows added while the node is down
    indexes = register.open()
    index = indexes.index("media", "pdq")
    assert index is not None
    register.delete(3)
    register.insert({4000: HASHES[ROWS + 5]})
    index.refresh(full=False)
    indexes.close()
    register.insert({4001: HASHES[ROWS + 6]})
    asked = [HASHES[3], HASHES[ROWS + 5], HASHES[ROWS + 6], *probes(register.rows, [9], SEED)]

    schema = register.schema()  # the start's hex-case sample: a thousand rows

    # execute
    with statements(register.reader) as seen, caplog.at_level(logging.INFO, "liaison.node"):
        again = NearIndexes(register.reader, schema, state_dir=register.state)
        found = matched(again, asked, 8)

    # assert: only the largest key and the rows past the mark were read
    pdq_reads = [s for s in seen if "phash" in s and "pdq_rows" in s]
    assert len(pdq_reads) == 1 and "pdq_rows.rid >" in pdq_reads[0], pdq_reads
    assert found == set(brute(register.rows, asked, 8))
    assert {4000, 4001, 9} <= found and 3 not in found
    opened = [r for r in caplog.records if r.getMessage() == "pdq index opened"]
    assert len(opened) == 1 and opened[0].__dict__["added"] == 1
    assert not [r for r in caplog.records if r.getMessage() == "pdq index built"]
    again.close()


def segment(state: Path) -> Path:
    folder = state / "pdq" / "media-pdq"
    name = json.loads((folder / "current.json").read_text())["segment"]
    return Path(folder / name)


@pytest.mark.parametrize(
    ("damage", "reason"),
    [
        ("flip", r"words\.npy is corrupt \(CRC-32"),
        ("manifest", r"manifest\.json is unreadable"),
        ("format", "segment format 0, this node reads format 1"),
        ("current", r"current\.json is unreadable"),
        ("other-column", "the segment covers .*'column': 'klass'.*, this node maps"),
        ("replaced", r"the table's largest key \(10\) is below the index's high-water mark"),
    ],
)
def test_a_damaged_or_stale_index_is_rebuilt_and_the_log_says_why(
    register: Register, caplog: pytest.LogCaptureFixture, damage: str, reason: str
) -> None:
    # prepare
    register.open().close()
    seg = segment(register.state)
    if damage == "flip":
        with open(seg / "words.npy", "r+b") as fh:
            fh.seek(500)
            fh.write(b"\xff\x00\xff")
    elif damage == "manifest":
        (seg / "manifest.json").write_text("{not json")
    elif damage == "format":
        doc = json.loads((seg / "manifest.json").read_text())
        (seg / "manifest.json").write_text(json.dumps({**doc, "format": 0}))
    elif damage == "current":
        (seg.parent / "current.json").write_text("")
    elif damage == "other-column":
        doc = json.loads((seg / "manifest.json").read_text())
        doc["source"]["column"] = "klass"
        (seg / "manifest.json").write_text(json.dumps(doc))
    else:
        register.delete(*[k for k in register.rows if k > 10])

    # execute
    with caplog.at_level(logging.INFO, "liaison.node"):
        indexes = register.open()

    # assert
    rebuilt = [r for r in caplog.records if r.getMessage() == "pdq index rebuilt"]
    assert len(rebuilt) == 1 and re.search(reason, rebuilt[0].__dict__["reason"]), [
        r.__dict__.get("reason") for r in rebuilt
    ]
    index = indexes.index("media", "pdq")
    assert index is not None and index.size == sum(v is not None for v in register.rows.values())
    asked = probes(register.rows, [2, 7], SEED)
    assert matched(indexes, asked, 8) == set(brute(register.rows, asked, 8))
    indexes.close()


def test_compaction_in_the_background_keeps_answers_exact(
    register: Register, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # prepare: compact from 50 changes, in a child process, every 0.2 s
    monkeypatch.setattr(near_module, "COMPACT_MIN", 50)
    monkeypatch.setattr(near_module, "COMPACT_SHARE", 0.0)
    monkeypatch.setattr(pdq_index, "CHILD_FROM", 0)
    indexes = register.open(refresh_s=0.2)
    first = segment(register.state)
    register.delete(*range(100, 140))
    register.insert({6000 + i: HASHES[ROWS + 10 + i] for i in range(30)})

    # execute
    with caplog.at_level(logging.INFO, "liaison.node"):
        indexes.start()
        for _ in range(200):
            if segment(register.state) != first:
                break
            indexes._stop.wait(0.05)
        indexes.close()

    # assert
    assert segment(register.state) != first and not first.exists()
    assert [r for r in caplog.records if r.getMessage() == "pdq index compacted"]
    again = register.open()
    index = again.index("media", "pdq")
    assert index is not None and index.size == sum(v is not None for v in register.rows.values())
    asked = [HASHES[ROWS + 12], HASHES[110], *probes(register.rows, [5, 8, 6005], SEED)]
    assert matched(again, asked, 10) == set(brute(register.rows, asked, 10))
    again.close()


def request_for(query: Query) -> QueryRequest:
    return QueryRequest(
        "q-1", "gw", 0, 1, b"n" * 16, ("nearland",), INVESTIGATOR, "csam-investigation", "C-1",
        CATALOG_V1.version, query,
    )  # fmt: skip


def test_a_near_query_fetches_its_rows_by_key_and_rechecks_them(
    register: Register, tmp_path: Path
) -> None:
    # prepare: a row changed after the index read it; a row filter on shareable
    indexes = register.open()
    schema = indexes.schema
    executor = Executor(
        engine=register.reader,
        transform_secret=b"k" * 32,
        maps={},
        recent=RecentAggregates(tmp_path / "aggregates.sqlite3"),
        default_limit=100,
        near=indexes,
    )
    grant = Grant(
        "near", ("pdq", "pdq_distance", "category"), (), 0, 1000,
        row_filters=(RowFilter("shareable", Comparator.EQ, ("true",)),),
    )  # fmt: skip
    register.change(10, HASHES[ROWS + 20])  # no longer near what is asked
    asked = probes(register.rows, [8, 10, 12, 15], SEED)
    # 3 bits from what row 10 held when the index read it
    asked[1] = hex_from_words(
        near(words_from_hex([HASHES[10]])[0], 3, np.random.default_rng(1))[None, :]
    )[0]
    query = Query(
        "media", Operation.RECORDS, (Predicate("pdq", Comparator.NEAR, tuple(asked), 8),),
        fields=("pdq", "pdq_distance", "category"), limit=100,
    )  # fmt: skip
    expected = {k for k in brute(register.rows, asked, 8) if k % 4 != 3}

    # execute
    with statements(register.reader) as seen:
        answer = executor.run(schema["media"], query, grant, request_for(query), 0)

    # assert: 15 is filtered (not shareable), 10 changed; fetched by rid
    assert isinstance(answer, dict)
    got = {HASHES.index(row[0]) for row in answer["rows"]}
    assert got == expected and {8, 12} <= got and not {10, 15} & got
    (select,) = [s for s in seen if s.startswith("SELECT")]
    assert re.search(r"pdq_rows\.rid IN \(\d+(, \d+)*\)", select), select
    with register.reader.connect() as conn:
        plan = conn.exec_driver_sql("EXPLAIN QUERY PLAN " + _inlined(select, asked)).all()
    assert any("INTEGER PRIMARY KEY" in str(row[-1]) for row in plan), plan
    indexes.close()


def _inlined(select: str, asked: list[str]) -> str:
    """The statement with its placeholders filled (SQLite's ?), to EXPLAIN it."""
    out = select
    while "?" in out:
        out = out.replace("?", "'x'", 1)
    return out


def test_a_view_without_a_key_falls_back_to_a_hash_only_index(
    register: Register, caplog: pytest.LogCaptureFixture
) -> None:
    # prepare
    with register.writer.begin() as conn:
        conn.exec_driver_sql("CREATE VIEW shared_rows AS SELECT * FROM pdq_rows WHERE ok_share = 1")
    view = DatasetMapping("media", "shared_rows", MAPPING.columns)

    # execute
    with caplog.at_level(logging.INFO, "liaison.node"):
        indexes = NearIndexes(register.reader, register.schema(view), state_dir=register.state)

    # assert
    warned = [r for r in caplog.records if r.getMessage() == "pdq index without row keys"]
    assert len(warned) == 1 and "integer primary key" in warned[0].__dict__["fix"]
    found = indexes.match("media", "pdq", [HASHES[1], HASHES[3]], 0)
    assert found.keys is None and set(found.nearest) == {HASHES[1]}  # row 3 is not shared
    indexes.close()


def test_a_corrupt_journal_is_ignored_and_the_table_read_again(
    register: Register, caplog: pytest.LogCaptureFixture
) -> None:
    # prepare: changes recorded in the journal only, then the journal damaged
    indexes = register.open()
    index = indexes.index("media", "pdq")
    assert index is not None
    register.delete(4, 5)
    register.insert({8000: HASHES[ROWS + 30]})
    index.refresh(full=False)
    indexes.close()
    (register.state / "pdq" / "media-pdq" / "journal.npz").write_bytes(b"PK\x03\x04 torn")

    # execute
    with caplog.at_level(logging.INFO, "liaison.node"):
        again = register.open()
        reopened = again.index("media", "pdq")
        assert reopened is not None
        reopened.refresh(full=False)

    # assert: the segment served; rows past its mark read again; the sweep removed 4 and 5
    ignored = [r for r in caplog.records if r.getMessage() == "pdq index journal ignored"]
    assert len(ignored) == 1 and "unreadable" in ignored[0].__dict__["reason"]
    assert not [r for r in caplog.records if r.getMessage() == "pdq index built"]
    asked = [HASHES[4], HASHES[5], HASHES[ROWS + 30]]
    assert matched(again, asked, 0) == set(brute(register.rows, asked, 0)) == {8000}
    again.close()
