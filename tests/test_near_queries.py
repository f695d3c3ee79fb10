"""Near-duplicate (PDQ) queries: validation, exact answers from real nodes, caps, the ledger.

A test node keeps a register of a few thousand structured PDQ hashes (series
of near-duplicates and random ones, ``liaison.demo.pdq_data``) in a local schema of
its own, on SQLite, PostgreSQL and MariaDB. Every count, hit and record it
answers to a near-duplicate query is compared with a brute-force scan of the
stored rows: every row within the distance, none beyond it, each with its
nearest distance. Queries sit exactly at the threshold and one bit past it.

Then the demo federation, through its real gateway: each node's distance cap,
what the gateway's ledger keeps of a near-duplicate query (keyed hashes and
the distance, never the hash), and device triage in chunks.
"""

from __future__ import annotations

import hashlib
import os
import re
import sqlite3
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
import sqlalchemy as sa

from liaison import client
from liaison.catalog import CATALOG_V1
from liaison.cli.batch import CHUNK, MAX_BATCH_VALUES, batch_search
from liaison.demo.data import demo_agencies, probes
from liaison.demo.pdq_data import near, random_hashes, synthetic_hashes
from liaison.errors import CatalogError, InvalidQuery, InvalidValue
from liaison.hashing.pdq import hex_from_words, words_from_hex
from liaison.ledger.entries import AuditKey, EntryKind, parse_entry
from liaison.messages import Count, NodeStatus, QueryAnswer, SearchInput
from liaison.query import (
    DEFAULT_NEAR_DISTANCE,
    MAX_IN_VALUES,
    Comparator,
    Operation,
    Predicate,
    Query,
    validate_query,
)
from liaison.wire import query_from_proto, query_to_proto
from tests.conftest import Federation
from tests.support import (
    INVESTIGATOR,
    LocalNode,
    investigator_token,
    start_local_node,
    write_local_node,
)

Words = npt.NDArray[np.uint64]

# --- validation against the catalog ---------------------------------------------------

PDQ = "0123456789abcdef" * 4
SHA256 = "ab" * 32


def near_pdq(*values: str, distance: int | None = None) -> Predicate:
    return Predicate("pdq", Comparator.NEAR, values, distance)


def match(*predicates: Predicate) -> Query:
    return Query("media", Operation.MATCH, predicates)


REFUSED = [
    pytest.param(
        match(Predicate("sha256", Comparator.NEAR, (SHA256,), 8)),
        InvalidQuery,
        "'near' works on perceptual hashes only; 'sha256' is not one "
        "(use eq or in for exact hashes)",
        id="near-on-sha256",
    ),
    pytest.param(
        match(Predicate("category", Comparator.NEAR, ("A",))),
        InvalidQuery,
        "'near' works on perceptual hashes only; 'category' is not one "
        "(use eq or in for exact hashes)",
        id="near-on-text",
    ),
    pytest.param(
        match(near_pdq(PDQ, distance=65)),
        InvalidQuery,
        "near-duplicate distance must be between 0 and 64 bits, got 65",
        id="distance-65",
    ),
    pytest.param(
        match(near_pdq(PDQ, distance=-1)),
        InvalidQuery,
        "near-duplicate distance must be between 0 and 64 bits, got -1",
        id="distance-minus-1",
    ),
    pytest.param(
        match(Predicate("pdq", Comparator.EQ, (PDQ,), 8)),
        InvalidQuery,
        "only 'near' takes a distance; 'eq' on 'pdq' does not",
        id="distance-on-eq",
    ),
    pytest.param(
        match(Predicate("sha256", Comparator.IN, (SHA256,), 0)),
        InvalidQuery,
        "only 'near' takes a distance; 'in' on 'sha256' does not",
        id="distance-0-on-in",
    ),
    pytest.param(
        match(near_pdq(PDQ, PDQ[:-1])),
        InvalidValue,
        f"field 'pdq': {PDQ[:-1]!r} is not 64 hexadecimal digits",
        id="pdq-too-short",
    ),
    pytest.param(
        match(near_pdq(PDQ + "0")),
        InvalidValue,
        f"field 'pdq': {PDQ + '0'!r} is not 64 hexadecimal digits",
        id="pdq-too-long",
    ),
    pytest.param(
        match(near_pdq("zz" * 32)),
        InvalidValue,
        f"field 'pdq': {'zz' * 32!r} is not 64 hexadecimal digits",
        id="pdq-not-hex",
    ),
    pytest.param(
        match(near_pdq()),
        InvalidQuery,
        f"'near' on 'pdq' takes 1 to {MAX_IN_VALUES} values, got 0",
        id="no-values",
    ),
    pytest.param(
        match(near_pdq(*[PDQ] * (MAX_IN_VALUES + 1))),
        InvalidQuery,
        f"'near' on 'pdq' takes 1 to {MAX_IN_VALUES} values, got {MAX_IN_VALUES + 1}",
        id="too-many-values",
    ),
    pytest.param(
        match(Predicate("pdq_distance", Comparator.EQ, ("3",))),
        InvalidQuery,
        "'pdq_distance' is computed for each answer; it can be asked for, not matched on",
        id="pdq-distance-as-predicate",
    ),
    pytest.param(
        match(Predicate("pdq_distance", Comparator.NEAR, (PDQ,))),
        InvalidQuery,
        "'pdq_distance' is computed for each answer; it can be asked for, not matched on",
        id="pdq-distance-near",
    ),
    pytest.param(
        Query("media", Operation.COUNT_BY, (near_pdq(PDQ),), group_by="pdq_distance"),
        InvalidQuery,
        "'pdq_distance' is computed for each answer; it cannot group",
        id="pdq-distance-group-by",
    ),
    pytest.param(
        Query("accounts", Operation.MATCH, (Predicate("pdq", Comparator.NEAR, (PDQ,)),)),
        CatalogError,
        "dataset 'accounts' has no field 'pdq'; its fields are: platform, handle, email, ip, "
        "first_seen, last_seen, case_ref, shareable",
        id="pdq-outside-media",
    ),
]


@pytest.mark.parametrize(("query", "error", "message"), REFUSED)
def test_validation_refuses(query: Query, error: type[Exception], message: str) -> None:
    with pytest.raises(error) as caught:
        validate_query(query, CATALOG_V1)

    assert str(caught.value) == message


def test_validation_fills_the_default_distance_and_canonicalises_hex() -> None:
    # prepare
    upper = PDQ.upper()
    query = Query(
        "media",
        Operation.RECORDS,
        (near_pdq(f"  {upper} ", PDQ), near_pdq(PDQ, distance=0), near_pdq(PDQ, distance=64)),
        fields=("pdq", "pdq_distance"),
    )

    # execute
    checked = validate_query(query, CATALOG_V1)

    # assert
    assert checked.predicates == (
        Predicate("pdq", Comparator.NEAR, (PDQ, PDQ), DEFAULT_NEAR_DISTANCE),
        Predicate("pdq", Comparator.NEAR, (PDQ,), 0),
        Predicate("pdq", Comparator.NEAR, (PDQ,), 64),
    )
    assert DEFAULT_NEAR_DISTANCE == 31
    assert checked.near_distance == 64
    assert checked.fields == ("pdq", "pdq_distance")


@pytest.mark.parametrize("distance", [None, 0, 1, 31, 64])
def test_distance_survives_the_wire(distance: int | None) -> None:
    # A distance of 0 must stay 0 (exact PDQ), not turn into "unset" and so 31.
    query = match(near_pdq(PDQ, distance=distance))

    back = query_from_proto(query_to_proto(query))

    assert back == query
    assert back.predicates[0].max_distance == distance


# --- a node over a register of its own --------------------------------------------------

LOCAL = sa.MetaData()
REGISTER = sa.Table(
    "pdq_register",
    LOCAL,
    sa.Column("rid", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("phash", sa.String(64)),
    sa.Column("digest", sa.String(64)),
    sa.Column("klass", sa.String(16)),
    sa.Column("ok_share", sa.Integer),  # a boolean kept as 0/1
)
MAPPING = {
    "media": (
        "pdq_register",
        {"pdq": "phash", "sha256": "digest", "category": "klass", "shareable": "ok_share"},
    ),
}
STORED = 3000  # distinct hashes
DUPLICATED = 12  # rows that repeat another row's hash, under another category
NULL_ROWS = 5  # rows without a PDQ
SEED = 20260517

TEST_POLICY = """\
version = 1
agency = "{node_id}"

[[rule]]
id = "near-everything"
effect = "permit"
agencies = ["genovia"]
roles = ["investigator"]
purposes = ["csam-investigation"]
datasets = ["media"]
operations = ["match", "count", "records"]
match_fields = ["pdq", "category"]
release = ["pdq", "pdq_distance", "category"]
max_rows = 10000
max_distance = 64
# A test register: listed by category to check answers without a near predicate.
releases_lists = true
near_budget = "10000/hour"

[[rule]]
id = "near-shareable"
effect = "permit"
agencies = ["genovia"]
roles = ["investigator"]
purposes = ["victim-identification"]
datasets = ["media"]
operations = ["count", "records"]
match_fields = ["pdq", "category"]
release = ["pdq", "pdq_distance", "category"]
row_filters = [{{ field = "shareable", eq = true }}]
max_rows = 10000
max_distance = 64
"""


@dataclass(frozen=True, slots=True)
class Row:
    rid: int
    pdq: str | None
    category: str
    shareable: bool


def register_rows() -> list[Row]:
    """The register: structured hashes, some repeated under another category, some absent."""
    hexes = hex_from_words(synthetic_hashes(STORED, seed=SEED))
    categories = ("A", "B", "C")
    rows = [Row(i, h, categories[i % 3], i % 4 != 3) for i, h in enumerate(hexes)]
    rows += [
        Row(STORED + k, hexes[k * 97], categories[(k * 97 + 1) % 3], k % 2 == 0)
        for k in range(DUPLICATED)
    ]
    rows += [Row(STORED + DUPLICATED + k, None, "A", True) for k in range(NULL_ROWS)]
    return rows


ROWS = register_rows()


def insert_rows(engine: sa.Engine, rows: Sequence[Row]) -> None:
    with engine.begin() as conn:
        conn.execute(
            REGISTER.insert(),
            [
                {
                    "rid": r.rid,
                    "phash": r.pdq,
                    "digest": hashlib.sha256(f"row {r.rid}".encode()).hexdigest(),
                    "klass": r.category,
                    "ok_share": int(r.shareable),
                }
                for r in rows
            ],
        )


@dataclass
class NearNode:
    engine: sa.Engine  # read-write, as the agency's own tools write
    node: LocalNode
    rows: list[Row]

    def ask(self, query: Query, purpose: str = "csam-investigation") -> QueryAnswer:
        """Send a signed request to the node; return its verified answer (which must answer)."""
        # Each query from its own investigator: these tests ask around the same
        # hashes on purpose, which the node's near guard would refuse as probing.
        requester = replace(INVESTIGATOR, subject=f"inv.{uuid.uuid4()}")
        return self.node.ask(query, purpose=purpose, requester=requester)


def write_near_node(root: Path, url: str, *, refresh_s: int | None = None) -> Path:
    config = write_local_node(
        root,
        "nearland",
        database_url=url,
        mapping=MAPPING,
        policy_text=TEST_POLICY.format(node_id="nearland"),
    )
    if refresh_s is not None:
        text = config.read_text()
        config.write_text(text.replace("[node]\n", f"[node]\npdq_refresh_s = {refresh_s}\n"))
    return config


def start_near_node(
    stack: ExitStack, root: Path, url: str, *, refresh_s: int | None = None
) -> NearNode:
    """Create and fill the register at ``url``, then serve it from a real node."""
    engine = sa.create_engine(url)
    stack.callback(engine.dispose)
    LOCAL.create_all(engine)
    insert_rows(engine, ROWS)
    config = write_near_node(root, url, refresh_s=refresh_s)
    return NearNode(engine, start_local_node(stack, config), list(ROWS))


@pytest.fixture
def near_node(database_url: str, tmp_path: Path) -> Iterator[NearNode]:
    """The register on each backend, served by a node with the default refresh interval."""
    with ExitStack() as stack:
        yield start_near_node(stack, tmp_path / "federation", database_url)


# --- what a brute-force scan of the stored rows says -----------------------------------


def stored_words(rows: Sequence[Row]) -> tuple[list[Row], Words]:
    with_pdq = [r for r in rows if r.pdq is not None]
    return with_pdq, words_from_hex([r.pdq for r in with_pdq if r.pdq is not None])


def brute_force(rows: Sequence[Row], asked: Sequence[str], t: int) -> list[tuple[Row, int]]:
    """Every stored row within ``t`` bits of any asked hash, with its nearest distance."""
    with_pdq, words = stored_words(rows)
    queries = words_from_hex(list(asked))
    nearest = np.bitwise_count(words[:, None, :] ^ queries[None, :, :]).sum(axis=2).min(axis=1)
    return [(r, int(d)) for r, d in zip(with_pdq, nearest.tolist(), strict=True) if d <= t]


def as_records(found: Sequence[tuple[Row, int]]) -> list[tuple[str | None, ...]]:
    return sorted((r.pdq, str(d), r.category) for r, d in found)


@dataclass(frozen=True, slots=True)
class Probes:
    """Hashes to ask, each with the stored row it was made from (if any)."""

    at_t: list[tuple[str, Row]]  # exactly t bits from the row's hash
    past_t: list[tuple[str, Row]]  # exactly t + 1 bits from the row's hash
    unrelated: list[str]  # uniformly random
    stored: list[str]  # stored hashes themselves

    @property
    def all(self) -> list[str]:
        return [h for h, _ in self.at_t + self.past_t] + self.unrelated + self.stored


def probes_for(t: int, n: int, rng: np.random.Generator) -> Probes:
    with_pdq, words = stored_words(ROWS)
    picks = rng.choice(len(with_pdq), size=3 * n, replace=False).tolist()

    def flipped(rows: list[int], flips: int) -> list[tuple[str, Row]]:
        made = hex_from_words(np.stack([near(words[i], flips, rng) for i in rows]))
        return [(h, with_pdq[i]) for h, i in zip(made, rows, strict=True)]

    return Probes(
        at_t=flipped(picks[:n], t),
        past_t=flipped(picks[n : 2 * n], t + 1),
        unrelated=hex_from_words(random_hashes(n, rng)),
        stored=[p for i in picks[2 * n :] if (p := with_pdq[i].pdq) is not None],
    )


RECORD_FIELDS = ("pdq", "pdq_distance", "category")
ANSWERING = (Operation.MATCH, Operation.COUNT, Operation.RECORDS)


def near_query(op: Operation, values: Sequence[str], t: int | None, *more: Predicate) -> Query:
    predicates = (*more, near_pdq(*values, distance=t))
    if op is Operation.RECORDS:
        return Query("media", op, predicates, fields=RECORD_FIELDS, limit=10_000)
    return Query("media", op, predicates)


def assert_answers(
    answers: Sequence[QueryAnswer], found: Sequence[tuple[Row, int]], label: str
) -> None:
    """A match, a count and a records answer say exactly what brute force found."""
    hit, count, records = answers
    assert hit.hit == bool(found), label
    assert count.count == Count(len(found)), label
    assert records.fields == RECORD_FIELDS, label
    assert records.truncated is False, label
    assert sorted(records.rows) == as_records(found), label


def eq(field: str, value: str) -> Predicate:
    return Predicate(field, Comparator.EQ, (value,))


THRESHOLDS = (0, 8, 24, 31)


class TestNearAnswersAreExact:
    """Every backend: answers equal a brute-force scan, at and just past the threshold."""

    def test_counts_hits_and_records_equal_brute_force(self, near_node: NearNode) -> None:
        rng = np.random.default_rng(SEED + 1)
        for t in THRESHOLDS:
            # prepare: one hash per query (t and t + 1 bits from stored rows,
            # unrelated, stored), then all kinds together in one query
            single = probes_for(t, 5, rng)
            many = probes_for(t, 60, rng)
            asked = [[h] for h in single.all] + [many.all]
            expected = [brute_force(near_node.rows, values, t) for values in asked]

            # execute
            answers = [
                [near_node.ask(near_query(op, values, t)) for op in ANSWERING] for values in asked
            ]

            # assert
            for values, found, answer in zip(asked, expected, answers, strict=True):
                assert_answers(answer, found, f"t={t}, {len(values)} value(s): {values[0]}")
            by_value = dict(zip((v[0] for v in asked[:-1]), expected[:-1], strict=True))
            for value, source in single.at_t:
                assert (source, t) in by_value[value], f"t={t}: {value} misses its source"
            for value, source in single.past_t:
                assert source not in [r for r, _ in by_value[value]], f"t={t}: {value}"
            for value in single.stored:
                assert any(r.pdq == value and d == 0 for r, d in by_value[value])
            assert len(expected[-1]) > len(many.stored) + len(many.at_t), f"t={t}"

    def test_duplicate_hashes_count_as_rows(self, near_node: NearNode) -> None:
        # prepare: hashes stored twice, under two categories
        repeated = [r.pdq for r in ROWS[STORED:] if r.pdq is not None]
        found = brute_force(near_node.rows, repeated, 0)

        # execute
        answers = [near_node.ask(near_query(op, repeated, 0)) for op in ANSWERING]

        # assert
        assert len(found) == 2 * DUPLICATED
        assert_answers(answers, found, "hashes stored twice")

    def test_1000_hashes_at_the_largest_distance(self, near_node: NearNode) -> None:
        # prepare: hashes 40 and 41 bits from stored ones, random and stored ones
        values = probes_for(40, 300, np.random.default_rng(SEED + 9)).all[:MAX_IN_VALUES]
        found = brute_force(near_node.rows, values, 64)

        # execute
        answers = [near_node.ask(near_query(op, values, 64)) for op in ANSWERING]

        # assert
        assert len(values) == MAX_IN_VALUES
        assert 900 < len(found) < 10_000
        assert_answers(answers, found, "1000 hashes within 64 bits")

    def test_default_distance_is_31(self, near_node: NearNode) -> None:
        # prepare
        rng = np.random.default_rng(SEED + 2)
        values = probes_for(31, 20, rng).all + probes_for(32, 20, rng).all
        found = brute_force(near_node.rows, values, DEFAULT_NEAR_DISTANCE)

        # execute
        answers = [near_node.ask(near_query(op, values, None)) for op in ANSWERING]

        # assert
        assert_answers(answers, found, "default distance")
        assert max(d for _, d in found) == 31


class TestNearWithOtherConditions:
    """SQL applies every other predicate and the grant's row filters to the matched hashes."""

    def test_near_and_category(self, near_node: NearNode) -> None:
        # prepare
        values = probes_for(31, 150, np.random.default_rng(SEED + 3)).all
        found = brute_force(near_node.rows, values, 31)
        expected = {c: [(r, d) for r, d in found if r.category == c] for c in ("A", "B", "C")}
        b_or_c = [(r, d) for r, d in found if r.category in ("B", "C")]

        # execute
        answers = {
            c: [near_node.ask(near_query(op, values, 31, eq("category", c))) for op in ANSWERING]
            for c in expected
        }
        either = [
            near_node.ask(
                near_query(op, values, 31, Predicate("category", Comparator.IN, ("C", "B")))
            )
            for op in ANSWERING
        ]

        # assert
        for c, answer in answers.items():
            assert_answers(answer, expected[c], f"category {c}")
            assert expected[c], c
        assert_answers(either, b_or_c, "category in (B, C)")

    def test_row_filter_keeps_only_shareable_rows(self, near_node: NearNode) -> None:
        # prepare
        values = probes_for(24, 150, np.random.default_rng(SEED + 4)).all
        found = brute_force(near_node.rows, values, 24)
        shareable = [(r, d) for r, d in found if r.shareable]
        shareable_a = [(r, d) for r, d in shareable if r.category == "A"]

        # execute
        count = near_node.ask(near_query(Operation.COUNT, values, 24), "victim-identification")
        records = near_node.ask(near_query(Operation.RECORDS, values, 24), "victim-identification")
        count_a = near_node.ask(
            near_query(Operation.COUNT, values, 24, eq("category", "A")), "victim-identification"
        )

        # assert
        assert len(shareable) < len(found)
        assert count.count == Count(len(shareable))
        assert sorted(records.rows) == as_records(shareable)
        assert count_a.count == Count(len(shareable_a))
        assert {records.decision.rules, count.decision.rules} == {("near-shareable",)}

    def test_distance_is_absent_without_a_near_predicate(self, near_node: NearNode) -> None:
        # prepare
        expected = sorted((r.pdq, None, "C") for r in ROWS if r.category == "C")

        # execute
        records = near_node.ask(
            Query("media", Operation.RECORDS, (eq("category", "C"),), RECORD_FIELDS, limit=10_000)
        )

        # assert
        assert sorted(records.rows, key=repr) == sorted(expected, key=repr)


# --- the index follows the agency's table -------------------------------------------------


def index_holds(node: NearNode, value: str) -> bool:
    near = node.node.core.near
    assert near is not None
    return bool(near.lookup("media", "pdq", [value], 0))


def index_size(node: NearNode) -> int:
    near = node.node.core.near
    assert near is not None
    index = near.index("media", "pdq")
    assert index is not None
    return int(index.size)


class TestRefresh:
    def test_deleted_hash_stops_matching(self, near_node: NearNode) -> None:
        # prepare: a stored hash and one 5 bits away, which only it is near
        rng = np.random.default_rng(SEED + 5)
        gone = ROWS[17]
        assert gone.pdq is not None
        asked = hex_from_words(near(words_from_hex([gone.pdq])[0], 5, rng)[None, :])
        assert brute_force(ROWS, asked, 5) == [(gone, 5)]
        before = near_node.ask(near_query(Operation.COUNT, asked, 5))
        size = index_size(near_node)

        # execute
        with near_node.engine.begin() as conn:
            conn.execute(REGISTER.delete().where(REGISTER.c.rid == gone.rid))
        at_once = near_node.ask(near_query(Operation.MATCH, asked, 5))
        assert near_node.node.core.near is not None
        near_node.node.core.near.refresh()
        after = [near_node.ask(near_query(op, asked, 5)) for op in ANSWERING]

        # assert
        assert before.count == Count(1)
        assert at_once.hit is False  # SQL reads the table as it is now
        assert_answers(after, [], "after refresh")
        assert not index_holds(near_node, gone.pdq)
        assert index_size(near_node) == size - 1

    def test_inserted_hash_matches_after_refresh(self, near_node: NearNode) -> None:
        # prepare
        rng = np.random.default_rng(SEED + 6)
        new = Row(10_000, hex_from_words(random_hashes(1, rng))[0], "B", True)
        assert new.pdq is not None
        asked = hex_from_words(near(words_from_hex([new.pdq])[0], 9, rng)[None, :])
        assert brute_force(ROWS, asked, 24) == []

        # execute
        insert_rows(near_node.engine, [new])
        assert near_node.node.core.near is not None
        near_node.node.core.near.refresh()
        answers = [near_node.ask(near_query(op, asked, 24)) for op in ANSWERING]

        # assert
        assert_answers(answers, [(new, 9)], "after refresh")


def test_background_refresh_within_the_interval(tmp_path: Path) -> None:
    # prepare: a node rebuilding its index every second
    rng = np.random.default_rng(SEED + 7)
    gone = ROWS[23]
    new = Row(10_001, hex_from_words(random_hashes(1, rng))[0], "A", True)
    assert gone.pdq is not None and new.pdq is not None
    with ExitStack() as stack:
        node = start_near_node(
            stack, tmp_path / "federation", f"sqlite:///{tmp_path / 'agency.sqlite3'}", refresh_s=1
        )
        assert node.node.core.near is not None
        assert node.node.core.near.refresh_s == 1
        assert index_holds(node, gone.pdq) and not index_holds(node, new.pdq)

        # execute: change the table, then only wait
        with node.engine.begin() as conn:
            conn.execute(REGISTER.delete().where(REGISTER.c.rid == gone.rid))
        insert_rows(node.engine, [new])
        changed = time.monotonic()
        while time.monotonic() - changed < 5 and (
            index_holds(node, gone.pdq) or not index_holds(node, new.pdq)
        ):
            time.sleep(0.05)
        waited = time.monotonic() - changed
        answers = [node.ask(near_query(op, [new.pdq, gone.pdq], 0)) for op in ANSWERING]

    # assert
    assert waited < 5, "the index did not follow the table within 5 s"
    assert_answers(answers, [(new, 0)], "after the background refresh")


# --- the demo federation, through its real gateway ------------------------------------

NODES = ("freedonia", "ruritania", "sylvania")
NEAR_PDQ = probes().near_pdq  # 9 bits from the PDQ ruritania and freedonia hold
CASE_REF = "GEN-NEAR-1"


def near_search(*values: str, distance: int | None, case_ref: str = CASE_REF) -> SearchInput:
    return SearchInput(match(near_pdq(*values, distance=distance)), "csam-investigation", case_ref)


def outcomes(federation: Federation, search: SearchInput) -> dict[str, tuple[NodeStatus, bool]]:
    """Each node's status and hit for ``search``, asked through the gateway."""
    # A fresh investigator each time: asking one hash at several distances is
    # probing, which the nodes' near guard refuses (tests/test_attack_pdq_oracle.py).
    token = investigator_token(federation.root, subject=f"inv.{uuid.uuid4()}")
    result = client.search(federation.gateway.address, token, search)
    return {r.node_id: (r.status, r.answer is not None and r.answer.hit) for r in result.results}


ANSWERED, DENIED = NodeStatus.ANSWERED, NodeStatus.DENIED
SYLVANIA_CAP = (
    "near-duplicate distance 31 is above this node's cap of 24 bits; "
    "ask again with --distance 24 or less"
)


class TestDistanceCaps:
    @pytest.fixture
    def federation(self, module_federation: Federation) -> Federation:
        """One federation for the class: its tests only ask, each as an investigator of
        its own where asking twice would look like probing (see ``outcomes``)."""
        return module_federation

    def test_distance_31_is_above_sylvanias_cap(self, federation: Federation) -> None:
        # prepare
        token = investigator_token(federation.root)

        # execute
        result = client.search(
            federation.gateway.address, token, near_search(NEAR_PDQ, distance=31)
        )
        dry = client.dry_run(federation.gateway.address, token, near_search(NEAR_PDQ, distance=31))

        # assert
        by_node = {r.node_id: r for r in result.results}
        assert {
            n: (r.status, r.answer is not None and r.answer.hit) for n, r in by_node.items()
        } == {
            "freedonia": (ANSWERED, True),
            "ruritania": (ANSWERED, True),
            "sylvania": (DENIED, False),
        }
        assert by_node["sylvania"].detail == SYLVANIA_CAP
        sylvania = by_node["sylvania"].answer
        assert sylvania is not None and sylvania.decision.rules == ("hash-match",)
        rules = {n: r.answer.decision.rules for n, r in by_node.items() if r.answer is not None}
        assert rules == {
            "freedonia": ("hash-hit-no-hit",),
            "ruritania": ("partner-hash-match",),
            "sylvania": ("hash-match",),
        }
        # The dry run decides the same against the published policy.
        dry_by_node = {r.node_id: r.decision for r in dry.results}
        assert dry_by_node["sylvania"] is not None
        assert dry_by_node["sylvania"].reason == SYLVANIA_CAP
        assert all(d is not None and d.permitted for n, d in dry_by_node.items() if n != "sylvania")

    def test_the_default_distance_is_31_everywhere(self, federation: Federation) -> None:
        assert outcomes(federation, near_search(NEAR_PDQ, distance=None)) == {
            "freedonia": (ANSWERED, True),
            "ruritania": (ANSWERED, True),
            "sylvania": (DENIED, False),
        }

    def test_distance_8_misses_a_copy_9_bits_away(self, federation: Federation) -> None:
        found = {d: outcomes(federation, near_search(NEAR_PDQ, distance=d)) for d in (8, 9)}

        assert {d: (o["freedonia"], o["ruritania"]) for d, o in found.items()} == {
            8: ((ANSWERED, False), (ANSWERED, False)),
            9: ((ANSWERED, True), (ANSWERED, True)),
        }

    def test_within_24_bits_every_node_hits(self, federation: Federation) -> None:
        # Sylvania holds an edited copy 21 bits from the asked hash.
        found = {d: outcomes(federation, near_search(NEAR_PDQ, distance=d)) for d in (24, 21, 20)}

        assert found == {
            24: dict.fromkeys(NODES, (ANSWERED, True)),
            21: dict.fromkeys(NODES, (ANSWERED, True)),
            20: {
                "freedonia": (ANSWERED, True),
                "ruritania": (ANSWERED, True),
                "sylvania": (ANSWERED, False),
            },
        }

    def test_a_distance_out_of_range_is_refused_by_the_gateway(
        self, federation: Federation
    ) -> None:
        token = investigator_token(federation.root)
        before = federation.gateway.core.ledger.size

        with pytest.raises(InvalidQuery) as caught:
            client.search(federation.gateway.address, token, near_search(NEAR_PDQ, distance=65))

        assert str(caught.value) == "near-duplicate distance must be between 0 and 64 bits, got 65"
        assert federation.gateway.core.ledger.size == before

    def test_a_negative_distance_is_a_liaison_error(self, federation: Federation) -> None:
        token = investigator_token(federation.root)

        with pytest.raises(InvalidQuery) as caught:
            client.search(federation.gateway.address, token, near_search(NEAR_PDQ, distance=-1))

        assert str(caught.value) == "near-duplicate distance must be between 0 and 64 bits, got -1"


# --- what the gateway's ledger keeps -------------------------------------------------------


def ledger_bytes(folder: Path, name: str) -> bytes:
    """A SQLite ledger file and its write-ahead log, as stored on disk."""
    return b"".join(p.read_bytes() for p in (folder / name, folder / f"{name}-wal") if p.exists())


def request_entries(federation: Federation) -> dict[str, dict[str, Any]]:
    entries = {}
    for _, _, raw in federation.gateway.core.ledger.store.rows():
        entry = parse_entry(raw)
        if entry.kind is EntryKind.REQUEST:
            entries[entry.query_id] = dict(entry.fields)
    return entries


def test_ledger_keeps_the_distance_and_keyed_hashes_never_the_hash(
    federation: Federation,
) -> None:
    # prepare: the asked hash in upper case, which the catalog canonicalises
    token = investigator_token(federation.root)
    other = "5a" * 32
    key = AuditKey.from_file(federation.root / "audit" / "audit.key")

    # execute
    result = client.search(
        federation.gateway.address, token, near_search(NEAR_PDQ.upper(), other, distance=24)
    )
    default = client.search(federation.gateway.address, token, near_search(NEAR_PDQ, distance=None))

    # assert
    entries = request_entries(federation)
    assert entries[result.query_id]["predicates"] == [
        {
            "field": "pdq",
            "comparator": "near",
            "values_hmac": [key.hash(NEAR_PDQ), key.hash(other)],
            "max_distance": 24,
        }
    ]
    assert entries[default.query_id]["predicates"][0]["max_distance"] == 31
    clear = [
        spelled.encode()
        for value in (NEAR_PDQ, other)
        for spelled in (value, value.upper(), bytes.fromhex(value).hex(" "))
    ] + [bytes.fromhex(v) for v in (NEAR_PDQ, other)]
    stored = {
        "gateway ledger": ledger_bytes(federation.root / "gateway", "ledger.sqlite3"),
        **{
            f"{n} receipts": ledger_bytes(
                federation.root / "nodes" / n / "state", "receipts.sqlite3"
            )
            for n in NODES
        },
    }
    assert all(len(data) > 4096 for data in stored.values())
    assert key.hash(NEAR_PDQ).encode() in stored["gateway ledger"]
    leaks = [(where, c) for where, data in stored.items() for c in clear if c in data]
    assert leaks == []


# --- seized-device triage, in chunks -------------------------------------------------------

BATCH_CASE = "GEN-TRIAGE-1"
RATE_LIMITED = re.compile(
    r"rate limit of rule partner-media-records reached: 500 per 3600 s per investigator "
    r"\(\d+ used, this query costs 1000\); this query alone exceeds it; ask for at most 500"
)


def held_and_shareable(root: Path, agency_id: str, values: Sequence[str]) -> set[str]:
    """Which of ``values`` the agency's own table holds in a row marked shareable (direct SQL)."""
    (agency,) = [a for a in demo_agencies() if a.agency_id == agency_id]
    table, columns = agency.mapping["media"]
    sha, share = columns["sha256"], columns["shareable"]
    db = root / "nodes" / agency_id / f"{agency_id}.sqlite3"
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        held = {row[0] for row in conn.execute(f"SELECT {sha} FROM {table} WHERE {share} = 1")}
    finally:
        conn.close()
    return held & set(values)


def test_device_triage_in_chunks_of_1000(federation: Federation) -> None:
    # prepare: the device's 40 hashes among 2,460 unknown ones, shuffled
    rng = np.random.default_rng(SEED + 8)
    device = list(probes().device_sha256s)
    values = device + [os.urandom(32).hex() for _ in range(2460)]
    values = [values[i] for i in rng.permutation(len(values))]
    template = SearchInput(
        Query("media", Operation.RECORDS, (), fields=("sha256",)), "csam-investigation", BATCH_CASE
    )
    token = investigator_token(federation.root)
    key = AuditKey.from_file(federation.root / "audit" / "audit.key")
    chunks = [values[i : i + CHUNK] for i in range(0, len(values), CHUNK)]
    expected = {n: held_and_shareable(federation.root, n, values) for n in NODES}

    # execute
    result = batch_search(
        federation.gateway.address,
        token,
        template,
        Predicate("sha256", Comparator.IN, tuple(values + values[:100])),  # repeats count once
    )

    # assert: one signed, logged request per chunk
    assert (result.values, result.chunks, CHUNK) == (2500, 3, 1000)
    assert len(set(result.query_ids)) == 3
    entries = request_entries(federation)
    logged = sorted(entries[q]["predicates"][0]["values_hmac"] for q in result.query_ids)
    assert logged == sorted([key.hash(v) for v in chunk] for chunk in chunks)
    # Freedonia releases the hashes of shareable records: exactly those it holds.
    assert 0 < len(expected["freedonia"]) <= 3
    assert expected["freedonia"] <= set(device)
    freedonia = result.nodes["freedonia"]
    assert (freedonia.chunks_answered, freedonia.chunks_denied) == (3, 0)
    assert freedonia.matched("sha256") == expected["freedonia"]
    # Ruritania releases them too, but 500 values an hour: a chunk of 1000 is refused.
    ruritania = result.nodes["ruritania"]
    assert (ruritania.chunks_answered, ruritania.chunks_denied) == (1, 2)
    assert all(RATE_LIMITED.fullmatch(r) for r in ruritania.reasons), ruritania.reasons
    assert ruritania.matched("sha256") == expected["ruritania"] & set(chunks[-1])
    # Sylvania releases no media records at all.
    sylvania = result.nodes["sylvania"]
    assert (sylvania.chunks_answered, sylvania.chunks_denied) == (0, 3)
    assert sylvania.reasons == [
        "no rule permits genovia (investigator) to records media for csam-investigation"
    ]


def test_a_batch_of_more_than_100000_values_is_refused(federation: Federation) -> None:
    token = investigator_token(federation.root)
    values = tuple(f"{i:064x}" for i in range(MAX_BATCH_VALUES + 1))
    template = SearchInput(Query("media", Operation.MATCH), "csam-investigation", BATCH_CASE)
    before = federation.gateway.core.ledger.size

    with pytest.raises(InvalidQuery) as caught:
        batch_search(
            federation.gateway.address,
            token,
            template,
            Predicate("sha256", Comparator.IN, values),
        )

    assert str(caught.value) == (
        "a batch takes at most 100,000 values, got 100,001; split the device's hashes"
    )
    assert federation.gateway.core.ledger.size == before


def test_a_hash_stored_in_upper_case_matches(database_url: str, tmp_path: Path) -> None:
    # prepare: rows as other tools might write them, after the node started (so the
    # column's case was detected as lower): the index rebuild learns their spellings.
    # Padding fits only where the column's length is not enforced (SQLite).
    upper, mixed, padded = ROWS[5], ROWS[6], ROWS[7]
    assert upper.pdq is not None and mixed.pdq is not None and padded.pdq is not None
    respelled = [(upper, upper.pdq.upper()), (mixed, mixed.pdq[:32].upper() + mixed.pdq[32:])]
    if database_url.startswith("sqlite"):
        respelled.append((padded, f" {padded.pdq} "))
    with ExitStack() as stack:
        node = start_near_node(stack, tmp_path / "federation", database_url)
        with node.engine.begin() as conn:
            for row, stored in respelled:
                conn.execute(
                    REGISTER.update().where(REGISTER.c.rid == row.rid).values(phash=stored)
                )
        assert node.node.core.near is not None
        node.node.core.near.refresh()
        asked = [row.pdq for row, _ in respelled if row.pdq is not None]

        # execute
        indexed = all(index_holds(node, h) for h in asked)
        count = node.ask(near_query(Operation.COUNT, asked, 0))
        records = node.ask(near_query(Operation.RECORDS, asked, 0))

    # assert
    assert indexed
    assert count.count == Count(len(respelled))
    # Released in lower case, without padding, with the distance found.
    assert sorted((r[0] or "", r[1]) for r in records.rows) == sorted((h, "0") for h in asked)
