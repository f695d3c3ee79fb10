"""A hash a node holds never reads as "no hit", however its column spells hex.

Queries carry canonical lower-case hex. Agencies' tools store hashes in
upper case, in lower case, or both. Each test runs on SQLite, PostgreSQL and
MariaDB (the ``database_url`` fixture) with a real node on loopback:

* the node asks SQL for hashes as the column stores them (detected at start,
  or set per field with ``[datasets.<name>.hex_case]``),
* the column is compared bare, so its index is still used (EXPLAIN),
* a MariaDB selector column with a case-insensitive collation is reported.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from liaison.catalog import CATALOG_V1
from liaison.config import HexCase, load_node_config
from liaison.errors import ConfigError
from liaison.messages import Count, QueryAnswer
from liaison.query import Comparator, Operation, Predicate, Query
from node import compile as sql
from node.database import HEX_SAMPLE, HexSpelling
from policies import Grant
from tests.support import LocalNode, running_node, start_local_node, write_local_node

NODE_ID = "hexland"
ROWS = 240
POLICY = f"""\
version = 1
agency = "{NODE_ID}"

[[rule]]
id = "investigate-media"
effect = "permit"
agencies = ["genovia"]
roles = ["investigator"]
purposes = ["csam-investigation"]
datasets = ["media"]
operations = ["match", "count", "records"]
match_fields = ["sha256", "md5", "category"]
release = ["sha256", "md5", "category"]
max_rows = 10000
"""

LOCAL = sa.MetaData()
# sha256 is written in upper case by the agency's tool, md5 by two tools (both cases).
REGISTER = sa.Table(
    "hex_register",
    LOCAL,
    sa.Column("rid", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("sha_hex", sa.String(64), nullable=False),
    sa.Column("md5_hex", sa.String(32), nullable=False),
    sa.Column("cat", sa.String(16), nullable=False),
    sa.Index("ix_hex_register_sha", "sha_hex"),
    sa.Index("ix_hex_register_md5", "md5_hex"),
)
MAPPING = {"media": ("hex_register", {"sha256": "sha_hex", "md5": "md5_hex", "category": "cat"})}


def sha_of(i: int) -> str:
    return hashlib.sha256(f"file {i}".encode()).hexdigest()


def md5_of(i: int) -> str:
    return hashlib.md5(f"file {i}".encode(), usedforsecurity=False).hexdigest()


def stored_md5(i: int) -> str:
    return md5_of(i).upper() if i % 2 else md5_of(i)


@dataclass
class HexNode:
    engine: sa.Engine  # read-write, as the agency's own tools write
    node: LocalNode

    def ask(self, query: Query) -> QueryAnswer:
        return self.node.ask(query)


def write_hex_node(root: Path, url: str, hex_case: dict[str, str] | None = None) -> Path:
    config = write_local_node(root, NODE_ID, database_url=url, mapping=MAPPING, policy_text=POLICY)
    if hex_case is not None:
        lines = ["", "[datasets.media.hex_case]"] + [f'{f} = "{c}"' for f, c in hex_case.items()]
        with config.open("a") as fh:
            fh.write("\n".join(lines) + "\n")
    return config


def fill_register(url: str) -> sa.Engine:
    engine = sa.create_engine(url)
    LOCAL.create_all(engine)
    with engine.begin() as conn:
        conn.execute(
            REGISTER.insert(),
            [
                {
                    "rid": i,
                    "sha_hex": sha_of(i).upper(),
                    "md5_hex": stored_md5(i),
                    "cat": "AB"[i % 2],
                }
                for i in range(ROWS)
            ],
        )
    return engine


def start_hex_node(
    stack: ExitStack, root: Path, url: str, hex_case: dict[str, str] | None = None
) -> HexNode:
    engine = fill_register(url)
    stack.callback(engine.dispose)
    return HexNode(engine, start_local_node(stack, write_hex_node(root, url, hex_case)))


@pytest.fixture
def hex_node(database_url: str, tmp_path: Path) -> Iterator[HexNode]:
    with ExitStack() as stack:
        yield start_hex_node(stack, tmp_path / "federation", database_url)


def match(field: str, value: str) -> Query:
    return Query("media", Operation.MATCH, (Predicate(field, Comparator.EQ, (value,)),))


def records(field: str, values: tuple[str, ...]) -> Query:
    return Query(
        "media",
        Operation.RECORDS,
        (Predicate(field, Comparator.IN, values),),
        fields=("sha256", "md5", "category"),
    )


def by_event(caplog: pytest.LogCaptureFixture, message: str) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.getMessage() == message]


# --- held hashes hit, in whichever case they are stored --------------------------------


def test_upper_case_hashes_hit(hex_node: HexNode) -> None:
    # prepare: every hash is stored in upper case; queries carry lower case
    held = [sha_of(i) for i in (0, 1, 77)]
    absent = hashlib.sha256(b"not held").hexdigest()

    # execute
    hits = [hex_node.ask(match("sha256", h)).hit for h in held]
    asked_upper = hex_node.ask(match("sha256", held[0].upper())).hit
    miss = hex_node.ask(match("sha256", absent)).hit
    count = hex_node.ask(
        Query("media", Operation.COUNT, (Predicate("sha256", Comparator.IN, (*held, absent)),))
    ).count
    found = hex_node.ask(records("sha256", (held[2],)))

    # assert
    assert hits == [True, True, True]
    assert asked_upper is True
    assert miss is False
    assert count == Count(3)
    # Answers carry canonical lower-case hex, whatever the column holds.
    assert found.rows == ((sha_of(77), md5_of(77), "B"),)
    assert hex_node.node.core.schema["media"].spelling("sha256") == HexSpelling(HexCase.UPPER)


def test_a_column_of_both_cases_hits_either(hex_node: HexNode) -> None:
    # prepare: md5 is upper case in odd rows, lower case in even ones
    lower_row, upper_row = 10, 11
    assert stored_md5(upper_row) == md5_of(upper_row).upper()

    # execute
    hits = [hex_node.ask(match("md5", md5_of(i))).hit for i in (lower_row, upper_row)]
    both = hex_node.ask(records("md5", (md5_of(lower_row), md5_of(upper_row))))

    # assert
    assert hits == [True, True]
    assert sorted(r[1] or "" for r in both.rows) == sorted([md5_of(lower_row), md5_of(upper_row)])
    assert hex_node.node.core.schema["media"].spelling("md5") == HexSpelling(HexCase.MIXED)


def test_start_up_logs_the_detected_case_and_warns_when_mixed(
    database_url: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # execute
    with ExitStack() as stack, caplog.at_level(logging.INFO, logger="liaison.node"):
        start_hex_node(stack, tmp_path / "federation", database_url)

    # assert
    detected = {
        r.__dict__["field"]: r.__dict__["case"] for r in by_event(caplog, "hex case detected")
    }
    assert detected == {"sha256": "upper", "md5": "mixed"}
    [warning] = by_event(caplog, "hex column spelled inconsistently")
    assert warning.levelno == logging.WARNING
    assert warning.__dict__["field"] == "md5"
    assert warning.__dict__["column"] == "hex_register.md5_hex"
    assert warning.__dict__["lower_case"] > 0 and warning.__dict__["upper_case"] > 0
    assert "hex_case" in warning.__dict__["fix"]


def test_configured_case_is_used_without_sampling(database_url: str, tmp_path: Path) -> None:
    # prepare: the operator says how both columns are written
    with ExitStack() as stack:
        node = start_hex_node(
            stack, tmp_path / "federation", database_url, {"sha256": "upper", "md5": "mixed"}
        )

        # execute
        sha_hit = node.ask(match("sha256", sha_of(5))).hit
        md5_hits = [node.ask(match("md5", md5_of(i))).hit for i in (4, 5)]
        spellings = dict(node.node.core.schema["media"].spellings)

    # assert
    assert sha_hit is True
    assert md5_hits == [True, True]
    assert spellings == {"sha256": HexSpelling(HexCase.UPPER), "md5": HexSpelling(HexCase.MIXED)}


def test_an_empty_column_is_asked_in_both_cases(database_url: str, tmp_path: Path) -> None:
    # prepare: the node starts before any hash is loaded
    root = tmp_path / "federation"
    with ExitStack() as stack:
        engine = sa.create_engine(database_url)
        stack.callback(engine.dispose)
        LOCAL.create_all(engine)
        hex_node = HexNode(engine, start_local_node(stack, write_hex_node(root, database_url)))
        with engine.begin() as conn:
            conn.execute(
                REGISTER.insert(),
                [{"rid": 1, "sha_hex": sha_of(1).upper(), "md5_hex": md5_of(1), "cat": "A"}],
            )

        # execute
        hits = (
            hex_node.ask(match("sha256", sha_of(1))).hit,
            hex_node.ask(match("md5", md5_of(1))).hit,
        )

    # assert
    assert hits == (True, True)


# --- the index stays in use --------------------------------------------------------------


def plan(engine: sa.Engine, statement: sa.Select[Any]) -> str:
    """The database's plan for ``statement``, as one string."""
    text = str(statement.compile(engine, compile_kwargs={"literal_binds": True}))
    with engine.connect() as conn:
        if engine.dialect.name == "sqlite":
            rows = conn.execute(sa.text(f"EXPLAIN QUERY PLAN {text}")).all()
            return " | ".join(str(r[-1]) for r in rows)
        if engine.dialect.name == "postgresql":
            # Rule out a sequential scan wherever an index can serve the predicate.
            conn.execute(sa.text("SET enable_seqscan = off"))
            rows = conn.execute(sa.text(f"EXPLAIN {text}")).all()
            return " | ".join(str(r[0]) for r in rows)
        result = conn.execute(sa.text(f"EXPLAIN {text}"))
        return " | ".join(f"key={row['key']} type={row['type']}" for row in result.mappings())


def seeks(engine: sa.Engine, statement: sa.Select[Any], index: str) -> tuple[bool, str]:
    """Whether the database looks values up in ``index`` (not scanning it whole)."""
    shown = plan(engine, statement)
    if engine.dialect.name == "sqlite":
        return f"SEARCH hex_register USING COVERING INDEX {index} (" in shown or (
            f"SEARCH hex_register USING INDEX {index} (" in shown
        ), shown
    if engine.dialect.name == "postgresql":
        return index in shown and "Index Cond" in shown, shown
    return any(f"key={index} type={t}" in shown for t in ("const", "ref", "range")), shown


def test_the_hash_index_is_used(hex_node: HexNode) -> None:
    # prepare
    engine, mapped = hex_node.engine, hex_node.node.core.schema["media"]
    grant = Grant("investigate-media", ("sha256", "md5", "category"), (), 0, 10_000)

    def asked(field: str, value: str) -> sa.Select[Any]:
        query = Query("media", Operation.MATCH, (Predicate(field, Comparator.EQ, (value,)),))
        return sql.compile_match(mapped, query, grant)

    naive = sa.select(sa.literal(1)).select_from(REGISTER)
    naive = naive.where(sa.func.lower(REGISTER.c.sha_hex) == sha_of(3))

    # execute
    sha = seeks(engine, asked("sha256", sha_of(3)), "ix_hex_register_sha")
    md5 = seeks(engine, asked("md5", md5_of(3)), "ix_hex_register_md5")
    lowered = seeks(engine, naive, "ix_hex_register_sha")

    # assert
    assert sha[0], sha[1]
    assert md5[0], md5[1]  # both spellings, as IN (...)
    # The check can tell: LOWER(column) cannot seek in the index.
    assert not lowered[0], lowered[1]


# --- MariaDB collations -------------------------------------------------------------------


def test_a_case_insensitive_selector_collation_is_reported(
    mariadb_url: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # prepare: the hashes in a binary collation, the category (not a selector) in the default
    engine = fill_register(mariadb_url)
    with engine.begin() as conn:
        conn.execute(
            sa.text("ALTER TABLE hex_register MODIFY md5_hex VARCHAR(32) COLLATE utf8mb4_bin")
        )
        default = conn.execute(
            sa.text(
                "SELECT COLLATION_NAME FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = "
                "DATABASE() AND TABLE_NAME = 'hex_register' AND COLUMN_NAME = 'sha_hex'"
            )
        ).scalar_one()
    engine.dispose()

    # execute
    with ExitStack() as stack, caplog.at_level(logging.INFO, logger="liaison.node"):
        stack.enter_context(running_node(write_hex_node(tmp_path / "federation", mariadb_url)))

    # assert
    assert default.endswith("_ci")
    reported = by_event(caplog, "selector column collation ignores case")
    assert [(r.__dict__["field"], r.__dict__["collation"]) for r in reported] == [
        ("sha256", default)
    ]
    assert reported[0].levelno == logging.WARNING
    assert "COLLATE utf8mb4_bin" in reported[0].__dict__["fix"]


def test_no_collation_warning_where_selectors_compare_exactly(
    database_url: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # prepare: SQLite and PostgreSQL compare text exactly; on MariaDB the
    # selector columns get a binary collation, as the warning's fix says
    engine = fill_register(database_url)
    if engine.dialect.name in ("mysql", "mariadb"):
        with engine.begin() as conn:
            for column, width in (("sha_hex", 64), ("md5_hex", 32)):
                conn.execute(
                    sa.text(
                        f"ALTER TABLE hex_register MODIFY {column} VARCHAR({width}) NOT NULL "
                        "COLLATE utf8mb4_bin"
                    )
                )
    engine.dispose()

    # execute
    with ExitStack() as stack, caplog.at_level(logging.INFO, logger="liaison.node"):
        stack.enter_context(running_node(write_hex_node(tmp_path / "federation", database_url)))

    # assert
    assert by_event(caplog, "selector column collation ignores case") == []


# --- config ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("hex_case", "message"),
    [
        ({"sha256": "Upper"}, r"hex_case for 'sha256' must be one of lower, upper, mixed, detect"),
        ({"category": "upper"}, r"hex_case applies to hex fields only; 'category' is text"),
        ({"pdq": "upper"}, r"hex_case names field 'pdq', which is not mapped under `fields`"),
    ],
)
def test_bad_hex_case_config_is_refused(
    tmp_path: Path, hex_case: dict[str, str], message: str
) -> None:
    config = write_hex_node(tmp_path, f"sqlite:///{tmp_path / 'agency.sqlite3'}", hex_case)
    with pytest.raises(ConfigError, match=message):
        load_node_config(config, CATALOG_V1)


def test_a_rare_upper_case_hash_the_sample_misses_still_hits(
    database_url: str, tmp_path: Path
) -> None:
    # prepare: a lower-case register with one upper-case hash (a small legacy
    # import) in the middle of storage and of sort order, where no sample looks
    rows = 3 * HEX_SAMPLE + 500
    middle = rows // 2
    odd = next(i for i in range(middle, rows) if sha_of(i)[0] in "789")
    engine = sa.create_engine(database_url)
    LOCAL.create_all(engine)
    with engine.begin() as conn:
        conn.execute(
            REGISTER.insert(),
            [
                {
                    "rid": i,
                    "sha_hex": sha_of(i).upper() if i == odd else sha_of(i),
                    "md5_hex": md5_of(i),
                    "cat": "A",
                }
                for i in range(rows)
            ],
        )
    engine.dispose()

    # execute
    with ExitStack() as stack:
        node = start_local_node(stack, write_hex_node(tmp_path / "federation", database_url))
        rare = node.ask(match("sha256", sha_of(odd)))
        common = node.ask(match("sha256", sha_of(0)))

    # assert
    assert rare.hit is True
    assert common.hit is True
