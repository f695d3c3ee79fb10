"""Agency databases as they are: nodes over views and over tables in other schemas.

Each test builds an agency's register on a real database (SQLite, PostgreSQL,
MariaDB), maps a node onto a view of it or onto a schema-qualified name, and
asks the running node signed questions; answers are compared with plain SQL
over the same view or table. The view hides the register's rows of category
``X``, so a node that read the table instead of the view would be caught.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
import sqlalchemy as sa

from liaison.errors import ConfigError
from liaison.messages import AnswerStatus
from liaison.query import Comparator, Operation, Predicate, Query
from node.database import split_table
from tests.support import (
    LocalNode,
    running_node,
    server_database_url,
    start_local_node,
    write_local_node,
)

NODE_ID = "schemaland"
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
match_fields = ["sha256", "category"]
release = ["sha256", "category"]
max_rows = 1000
releases_lists = true
"""
ROWS = 30
HIDDEN = "X"  # the view leaves these rows out


def sha(i: int) -> str:
    return hashlib.sha256(f"seized file {i}".encode()).hexdigest()


def category(i: int) -> str:
    return HIDDEN if i % 3 == 0 else ("A" if i % 2 else "B")


VISIBLE = [i for i in range(ROWS) if category(i) != HIDDEN]
INVISIBLE = [i for i in range(ROWS) if category(i) == HIDDEN]


@dataclass
class Register:
    """The register table and a view of it, in ``schema`` (None: the default one)."""

    engine: sa.Engine  # read-write, for setting up and for the SQL answers are checked against
    schema: str | None
    table: sa.Table
    view: str

    def qualified(self, name: str) -> str:
        """``name`` as a node's mapping writes it: SCHEMA.NAME, quoting a dotted schema."""
        if self.schema is None:
            return name
        schema = f'"{self.schema}"' if "." in self.schema else self.schema
        return f"{schema}.{name}"

    def sql_name(self, name: str) -> str:
        prep = self.engine.dialect.identifier_preparer
        return (
            prep.quote(name)
            if self.schema is None
            else prep.quote_schema(self.schema) + "." + prep.quote(name)
        )

    def rows(self, sql: str) -> list[tuple[object, ...]]:
        with self.engine.connect() as conn:
            return [tuple(r) for r in conn.execute(sa.text(sql))]


def build_register(engine: sa.Engine, schema: str | None) -> Register:
    metadata = sa.MetaData()
    table = sa.Table(
        "seized_files",
        metadata,
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("sha", sa.String(64), nullable=False),
        sa.Column("cat", sa.String(8), nullable=False),
        schema=schema,
    )
    metadata.create_all(engine)
    register = Register(engine, schema, table, "seized_view")
    with engine.begin() as conn:
        conn.execute(
            table.insert(), [{"id": i, "sha": sha(i), "cat": category(i)} for i in range(ROWS)]
        )
        conn.execute(
            sa.text(
                f"CREATE VIEW {register.sql_name(register.view)} AS "
                f"SELECT id, sha AS sha256_hex, cat FROM {register.sql_name('seized_files')} "
                f"WHERE cat <> '{HIDDEN}'"
            )
        )
    return register


MAPPED_VIEW = {"sha256": "sha256_hex", "category": "cat"}
MAPPED_TABLE = {"sha256": "sha", "category": "cat"}


def node_over(root: Path, url: str, table: str, columns: dict[str, str]) -> Path:
    return write_local_node(
        root,
        NODE_ID,
        database_url=url,
        mapping={"media": (table, columns)},
        policy_text=POLICY,
    )


def sha_query(operation: Operation, *values: str, fields: tuple[str, ...] = ()) -> Query:
    comparator = Comparator.EQ if len(values) == 1 else Comparator.IN
    return Query("media", operation, (Predicate("sha256", comparator, values),), fields=fields)


# --- databases and schemas -----------------------------------------------------------


@contextmanager
def other_schema(engine: sa.Engine) -> Iterator[str]:
    """A schema of its own (PostgreSQL: a schema whose name holds a dot; MariaDB: a database).

    Dropped after the test; on PostgreSQL the test database is dropped anyway.
    """
    tag = uuid.uuid4().hex[:10]
    prep = engine.dialect.identifier_preparer
    if engine.dialect.name == "postgresql":
        name = f"evidencia.{tag}"
        with engine.begin() as conn:
            conn.execute(sa.text(f"CREATE SCHEMA {prep.quote_schema(name)}"))
        try:
            yield name
        finally:
            with engine.begin() as conn:
                conn.execute(sa.text(f"DROP SCHEMA IF EXISTS {prep.quote_schema(name)} CASCADE"))
    else:
        name = f"liaison_other_{tag}"
        with engine.begin() as conn:
            conn.execute(sa.text(f"CREATE DATABASE {prep.quote_schema(name)}"))
        try:
            yield name
        finally:
            with engine.begin() as conn:
                conn.execute(sa.text(f"DROP DATABASE IF EXISTS {prep.quote_schema(name)}"))


@pytest.fixture(params=["postgresql", "mariadb"])
def server_url(request: pytest.FixtureRequest) -> str:
    """A fresh database on each server that has schemas."""
    return server_database_url(request, request.param)


@pytest.fixture
def engine_of() -> Iterator[list[sa.Engine]]:
    engines: list[sa.Engine] = []
    yield engines
    for engine in engines:
        engine.dispose()


def open_engine(url: str, engines: list[sa.Engine]) -> sa.Engine:
    engine = sa.create_engine(url)
    engines.append(engine)
    return engine


def assert_answers_as_sql(node: LocalNode, register: Register, name: str) -> None:
    """Match, count and records through the node equal SQL over ``name`` (table or view)."""
    column = "sha" if name == "seized_files" else "sha256_hex"
    relation = register.sql_name(name)
    held = {str(r[0]) for r in register.rows(f"SELECT {column} FROM {relation}")}
    asked = [sha(i) for i in (*VISIBLE[:4], *INVISIBLE[:3])]
    hidden = sha(INVISIBLE[0])

    hit = node.ask(sha_query(Operation.MATCH, sha(VISIBLE[0])))
    other = node.ask(sha_query(Operation.MATCH, hidden))
    count = node.ask(sha_query(Operation.COUNT, *asked))
    records = node.ask(sha_query(Operation.RECORDS, *asked, fields=("sha256", "category")))

    expected = sorted(s for s in asked if s in held)
    # The view hides category X; the table holds every row.
    assert len(expected) == (4 if name == register.view else 7)
    assert hit.hit is True
    assert other.hit is (name != register.view)
    assert count.count is not None
    assert count.count.value == len(expected)
    assert sorted(str(r[0]) for r in records.rows) == expected


# --- views -------------------------------------------------------------------------


def test_a_node_over_a_view_answers_from_the_view(
    database_url: str, tmp_path: Path, engine_of: list[sa.Engine]
) -> None:
    # prepare
    register = build_register(open_engine(database_url, engine_of), None)
    config = node_over(tmp_path / "federation", database_url, register.view, MAPPED_VIEW)

    # execute / assert: rows the view hides are not found, the others are, as SQL says
    with ExitStack() as stack:
        node = start_local_node(stack, config)
        assert node.core.schema["media"].relation == "view"
        assert_answers_as_sql(node, register, register.view)


def test_writes_through_a_view_are_refused(
    database_url: str, tmp_path: Path, engine_of: list[sa.Engine]
) -> None:
    # prepare: an updatable view (on SQLite through an INSTEAD OF trigger), shown
    # to accept writes from an ordinary session first
    admin = open_engine(database_url, engine_of)
    register = build_register(admin, None)
    view = register.sql_name(register.view)
    if admin.dialect.name == "sqlite":
        with admin.begin() as conn:
            conn.execute(
                sa.text(
                    f"CREATE TRIGGER view_insert INSTEAD OF INSERT ON {view} BEGIN "
                    "INSERT INTO seized_files (id, sha, cat) "
                    "VALUES (NEW.id, NEW.sha256_hex, NEW.cat); END"
                )
            )
    insert = f"INSERT INTO {view} (id, sha256_hex, cat) VALUES (:id, :sha, 'A')"
    with admin.begin() as conn:
        conn.execute(sa.text(insert), {"id": 1000, "sha": sha(1000)})
    before = register.rows("SELECT count(*) FROM seized_files")
    config = node_over(tmp_path / "federation", database_url, register.view, MAPPED_VIEW)
    statements: tuple[tuple[str, dict[str, object]], ...] = (
        (insert, {"id": 1001, "sha": sha(1001)}),
        (f"UPDATE {view} SET cat = 'Z'", {}),
        (f"DELETE FROM {view}", {}),
        (f"DROP VIEW {view}", {}),
    )

    # execute
    refused = []
    with running_node(config) as node:
        for statement, params in statements:
            with node.core.engine.connect() as conn:
                try:
                    conn.execute(sa.text(statement), params)
                    conn.commit()
                except sa.exc.DBAPIError:
                    refused.append(statement)

    # assert
    assert before == [(ROWS + 1,)]
    assert refused == [s for s, _ in statements]
    assert register.rows("SELECT count(*) FROM seized_files") == before
    assert register.rows(f"SELECT count(*) FROM {view} WHERE cat = 'Z'") == [(0,)]


# --- schema-qualified names --------------------------------------------------------


@pytest.mark.parametrize("relation", ["table", "view"])
def test_a_node_over_a_schema_qualified_name_answers(
    server_url: str, relation: str, tmp_path: Path, engine_of: list[sa.Engine]
) -> None:
    # prepare: the register in another schema (PostgreSQL) or database (MariaDB);
    # the node's URL names the default one, where nothing is mapped
    admin = open_engine(server_url, engine_of)
    with other_schema(admin) as schema:
        register = build_register(admin, schema)
        name = "seized_files" if relation == "table" else register.view
        columns = MAPPED_TABLE if relation == "table" else MAPPED_VIEW
        config = node_over(tmp_path / "federation", server_url, register.qualified(name), columns)

        # execute / assert
        with ExitStack() as stack:
            node = start_local_node(stack, config)
            mapped = node.core.schema["media"]
            assert (mapped.table.schema, mapped.table.name, mapped.relation) == (
                schema,
                name,
                relation,
            )
            assert_answers_as_sql(node, register, name)


def test_an_unknown_schema_is_named_with_those_there(
    server_url: str, tmp_path: Path, engine_of: list[sa.Engine]
) -> None:
    # prepare
    admin = open_engine(server_url, engine_of)
    with other_schema(admin) as schema:
        build_register(admin, schema)
        config = node_over(
            tmp_path / "federation", server_url, "no_such_schema.seized_files", MAPPED_TABLE
        )

        # execute
        with pytest.raises(ConfigError) as info, running_node(config):
            pass

    # assert
    message = str(info.value)
    assert message.startswith(
        "dataset 'media' maps to 'no_such_schema.seized_files', but schema 'no_such_schema' "
        "does not exist or this account cannot see it; schemas there: "
    )
    assert schema in message


def test_a_missing_name_in_a_schema_lists_its_tables_and_views(
    server_url: str, tmp_path: Path, engine_of: list[sa.Engine]
) -> None:
    # prepare
    admin = open_engine(server_url, engine_of)
    with other_schema(admin) as schema:
        register = build_register(admin, schema)
        config = node_over(
            tmp_path / "federation", server_url, register.qualified("seized"), MAPPED_TABLE
        )

        # execute
        with pytest.raises(ConfigError) as info, running_node(config):
            pass

    # assert
    assert str(info.value) == (
        f"dataset 'media' maps to table {register.qualified('seized')!r}, which does not exist "
        f"in schema {schema!r}; tables there: seized_files; views there: seized_view"
    )


# --- how a mapping names a table -----------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("seized_files", (None, "seized_files")),
        ("evidencia.seized_files", ("evidencia", "seized_files")),
        ('"evidencia.v2".seized_files', ("evidencia.v2", "seized_files")),
        ('"evidencia"."seized.files"', ("evidencia", "seized.files")),
        ('"say ""hi""".t', ('say "hi"', "t")),
    ],
)
def test_table_names_split_into_schema_and_name(
    text: str, expected: tuple[str | None, str]
) -> None:
    assert split_table(text) == expected


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("a.b.c", "write TABLE or SCHEMA.TABLE"),
        ("evidencia.", "write TABLE or SCHEMA.TABLE"),
        ('"evidencia.seized', "a double quote is not closed"),
        ('"evidencia"x.t', "after a quoted name comes a dot or the end"),
        ('""', "write TABLE or SCHEMA.TABLE"),
    ],
)
def test_malformed_table_names_are_refused(text: str, fragment: str) -> None:
    with pytest.raises(ConfigError, match=fragment):
        split_table(text)


def test_a_denied_question_over_a_view_stays_denied(
    database_url: str, tmp_path: Path, engine_of: list[sa.Engine]
) -> None:
    """A view changes where rows come from, not what the policy allows."""
    register = build_register(open_engine(database_url, engine_of), None)
    config = node_over(tmp_path / "federation", database_url, register.view, MAPPED_VIEW)
    with ExitStack() as stack:
        node = start_local_node(stack, config)
        answer = node.answer(sha_query(Operation.MATCH, sha(VISIBLE[0])), purpose="statistics")
    assert answer.status is AnswerStatus.DENIED
    assert answer.hit is False
