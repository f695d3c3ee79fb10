"""One node, three databases: SQLite, PostgreSQL and MariaDB, each checked against direct SQL.

Every test runs once per backend (the class-wide ``backend`` fixture). Two agencies'
own schemas live side by side in the database: Ruritania keeps typed columns
(``Date``, ``Boolean``), Freedonia keeps dates as ISO text and booleans as
integers. A real node server for each answers signed requests, and every
answer is compared with what plain SQL over the same tables says.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import re
import socket
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from liaison.demo.data import DemoAgency, demo_agencies, populate
from liaison.errors import BackendError
from liaison.messages import Bucket, Count, QueryAnswer
from liaison.query import Comparator, Operation, Predicate, Query
from node.database import open_read_only
from node.noise import bound
from tests.conftest import MARIADB_ADMIN_URL, POSTGRES_ADMIN_URL, _service_database
from tests.support import LocalNode, running_node, start_local_node, write_local_node

AGENCIES = ("ruritania", "freedonia")
TYPED = "ruritania"  # Date and Boolean columns
UNTYPED = "freedonia"  # dates as ISO text, booleans as integers
MIN_COUNT = 40
VICTIM_ID_MAX_ROWS = 5
UNKNOWN_SHA256 = "cd" * 32

POLICY = """\
version = 1
agency = "{agency}"

[[rule]]
id = "investigate-media"
effect = "permit"
agencies = ["genovia"]
roles = ["investigator"]
purposes = ["csam-investigation"]
datasets = ["media"]
operations = ["match", "records", "count", "count_by"]
match_fields = ["sha256", "md5", "category", "first_seen", "victim_identified", "case_ref"]
release = ["sha256", "category", "first_seen", "victim_identified", "case_ref"]
max_rows = 10000
# These tests compare the node's rows with SQL's for date and boolean
# predicates, so the rules hand out lists on purpose.
releases_lists = true

[[rule]]
id = "identify-victims"
effect = "permit"
agencies = ["genovia"]
roles = ["investigator"]
purposes = ["victim-identification"]
datasets = ["media"]
operations = ["records"]
match_fields = ["category", "first_seen"]
release = ["category", "first_seen"]
max_rows = {max_rows}
releases_lists = true

[[rule]]
id = "media-statistics"
effect = "permit"
agencies = ["genovia"]
roles = ["investigator"]
purposes = ["statistics"]
datasets = ["media"]
operations = ["count", "count_by"]
match_fields = ["category", "first_seen", "victim_identified"]
release = ["category", "first_seen", "victim_identified"]
min_count = {min_count}

[[rule]]
id = "account-lookup"
effect = "permit"
agencies = ["genovia"]
roles = ["investigator"]
purposes = ["offender-identification"]
datasets = ["accounts"]
operations = ["match", "records"]
match_fields = ["email", "handle", "platform", "first_seen", "last_seen"]
release = ["platform", "handle", "email", "first_seen", "last_seen"]
max_rows = 10000
"""


# --- the agencies on one backend ----------------------------------------------------


@dataclass
class Agency:
    local: DemoAgency
    node: LocalNode

    def table(self, dataset: str) -> str:
        return self.local.mapping[dataset][0]

    def col(self, dataset: str, field: str) -> str:
        return self.local.mapping[dataset][1][field]

    def date(self, value: dt.date) -> dt.date | str:
        """A date as this agency's own column stores it, for direct SQL."""
        return value if self.local.agency_id == TYPED else value.isoformat()

    def flag(self, value: bool) -> bool | int:
        """A boolean as this agency's own column stores it, for direct SQL."""
        return value if self.local.agency_id == TYPED else int(value)


@dataclass
class Backend:
    engine: sa.Engine  # read-write, for the direct SQL the answers are checked against
    agencies: dict[str, Agency]

    def ask(self, agency_id: str, query: Query, purpose: str = "csam-investigation") -> QueryAnswer:
        """Send a signed request to the agency's node; return its verified answer."""
        return self.agencies[agency_id].node.ask(query, purpose=purpose)

    def rows(self, sql: str, **params: Any) -> list[tuple[Any, ...]]:
        with self.engine.connect() as conn:
            return [tuple(r) for r in conn.execute(sa.text(sql), params)]

    def scalar(self, sql: str, **params: Any) -> Any:
        with self.engine.connect() as conn:
            return conn.execute(sa.text(sql), params).scalar_one()


def eq(field: str, value: str) -> Predicate:
    return Predicate(field, Comparator.EQ, (value,))


def media_count(*predicates: Predicate) -> Query:
    return Query("media", Operation.COUNT, predicates)


def media_records(fields: tuple[str, ...], *predicates: Predicate, limit: int = 0) -> Query:
    return Query("media", Operation.RECORDS, predicates, fields=fields, limit=limit)


def text(value: object) -> str:
    """Canonical text of a value read by direct SQL (a date, ISO text, or hex)."""
    return value.isoformat() if isinstance(value, dt.date) else str(value)


def flag_text(value: object) -> str:
    return "true" if value else "false"


def write_agency_node(root: Path, agency: DemoAgency, url: str) -> Path:
    return write_local_node(
        root,
        agency.agency_id,
        database_url=url,
        mapping=agency.mapping,
        policy_text=POLICY.format(
            agency=agency.agency_id, min_count=MIN_COUNT, max_rows=VICTIM_ID_MAX_ROWS
        ),
    )


@contextmanager
def class_database(kind: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """conftest's ``database_url``, made once for a whole class instead of once per test."""
    if kind == "sqlite":
        yield f"sqlite:///{tmp_path_factory.mktemp('backend') / 'agency.sqlite3'}"
    elif kind == "postgresql":
        yield from _service_database(POSTGRES_ADMIN_URL, "PostgreSQL")
    else:
        yield from _service_database(MARIADB_ADMIN_URL, "MariaDB")


# One database, two nodes, for every test of the class on a backend (not one per
# test): the tests only read (each request has its own query id; the write test
# checks that nothing was written), and no rule here has a rate limit. Only the
# statistics test asks counts under a minimum count, so the differencing guard's
# memory of the investigator holds that test's own questions only.
@pytest.fixture(scope="class", params=["sqlite", "postgresql", "mariadb"])
def backend(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Backend]:
    root = tmp_path_factory.mktemp("backends") / "federation"
    with ExitStack() as stack:
        database_url = stack.enter_context(class_database(request.param, tmp_path_factory))
        engine = sa.create_engine(database_url)
        stack.callback(engine.dispose)
        agencies = {}
        for local in demo_agencies():
            if local.agency_id not in AGENCIES:
                continue
            # Media and accounts only: the cases tables would only cost DDL time.
            local = dataclasses.replace(
                local, tables=tuple(t for t in local.tables if t.dataset != "cases")
            )
            populate(local, engine, media=300, accounts=100)
            config = write_agency_node(root, local, database_url)
            agencies[local.agency_id] = Agency(local, start_local_node(stack, config))
        yield Backend(engine, agencies)


class TestNodeBackends:
    # --- match ---------------------------------------------------------------------

    def test_match_hits_exactly_the_stored_hashes(self, backend: Backend) -> None:
        # prepare
        stored = {}
        for agency_id, a in backend.agencies.items():
            sha, md5 = a.col("media", "sha256"), a.col("media", "md5")
            stored[agency_id] = backend.rows(
                f"SELECT {sha}, {md5} FROM {a.table('media')} ORDER BY {sha}"
            )[0]
            absent = backend.scalar(
                f"SELECT count(*) FROM {a.table('media')} WHERE {sha} = :v", v=UNKNOWN_SHA256
            )
            assert absent == 0

        # execute
        answers = {
            agency_id: (
                backend.ask(agency_id, Query("media", Operation.MATCH, (eq("sha256", sha),))),
                backend.ask(agency_id, Query("media", Operation.MATCH, (eq("md5", md5.upper()),))),
                backend.ask(
                    agency_id, Query("media", Operation.MATCH, (eq("sha256", UNKNOWN_SHA256),))
                ),
            )
            for agency_id, (sha, md5) in stored.items()
        }

        # assert
        assert {n: tuple(x.hit for x in a) for n, a in answers.items()} == {
            n: (True, True, False) for n in AGENCIES
        }
        assert {a[0].decision.rules for a in answers.values()} == {("investigate-media",)}

    # --- equality and set membership -------------------------------------------------

    def test_equality_and_in_counts_match_sql(self, backend: Backend) -> None:
        # prepare
        categories = ("A", "B", "C", "baseline", "Z")
        expected: dict[tuple[str, str], int] = {}
        for agency_id, a in backend.agencies.items():
            cat = a.col("media", "category")
            for c in categories:
                expected[agency_id, c] = backend.scalar(
                    f"SELECT count(*) FROM {a.table('media')} WHERE {cat} = :c", c=c
                )
            expected[agency_id, "B|baseline"] = backend.scalar(
                f"SELECT count(*) FROM {a.table('media')} WHERE {cat} IN (:x, :y)",
                x="B",
                y="baseline",
            )

        # execute
        actual: dict[tuple[str, str], Count | None] = {}
        for agency_id in backend.agencies:
            for c in categories:
                actual[agency_id, c] = backend.ask(agency_id, media_count(eq("category", c))).count
            actual[agency_id, "B|baseline"] = backend.ask(
                agency_id, media_count(Predicate("category", Comparator.IN, ("B", "baseline")))
            ).count

        # assert
        assert actual == {k: Count(n) for k, n in expected.items()}
        assert all(n > 0 for (_, c), n in expected.items() if c != "Z")

    def test_in_records_match_sql(self, backend: Backend) -> None:
        # prepare
        probes: dict[str, tuple[str, ...]] = {}
        expected: dict[str, list[tuple[str, str]]] = {}
        for agency_id, a in backend.agencies.items():
            sha, cat = a.col("media", "sha256"), a.col("media", "category")
            stored = [r[0] for r in backend.rows(f"SELECT {sha} FROM {a.table('media')}")[:3]]
            probes[agency_id] = (*stored, UNKNOWN_SHA256)
            rows = backend.rows(
                f"SELECT {sha}, {cat} FROM {a.table('media')} WHERE {sha} IN (:a, :b, :c, :d)",
                **dict(zip("abcd", probes[agency_id], strict=True)),
            )
            expected[agency_id] = sorted((text(s), text(c)) for s, c in rows)

        # execute
        answers = {
            agency_id: backend.ask(
                agency_id,
                media_records(("sha256", "category"), Predicate("sha256", Comparator.IN, probe)),
            )
            for agency_id, probe in probes.items()
        }

        # assert
        assert {n: sorted(a.rows) for n, a in answers.items()} == expected
        assert all(len(rows) == 3 for rows in expected.values())
        assert not any(a.truncated for a in answers.values())

    # --- dates: Date columns and ISO text columns ------------------------------------

    @pytest.mark.parametrize("agency_id", AGENCIES, ids=["date-column", "text-column"])
    def test_date_predicates_match_sql(self, backend: Backend, agency_id: str) -> None:
        # prepare
        a = backend.agencies[agency_id]
        table, sha, seen = a.table("media"), a.col("media", "sha256"), a.col("media", "first_seen")
        lo, hi = dt.date(2020, 3, 1), dt.date(2021, 12, 31)
        within = f"{seen} >= :lo AND {seen} <= :hi"
        expected_count = backend.scalar(
            f"SELECT count(*) FROM {table} WHERE {within}", lo=a.date(lo), hi=a.date(hi)
        )
        expected_after = backend.scalar(
            f"SELECT count(*) FROM {table} WHERE {seen} >= :lo", lo=a.date(hi)
        )
        expected_before = backend.scalar(
            f"SELECT count(*) FROM {table} WHERE {seen} <= :hi", hi=a.date(lo)
        )
        expected_rows = backend.rows(
            f"SELECT {sha}, {seen} FROM {table} WHERE {within}", lo=a.date(lo), hi=a.date(hi)
        )
        expected_days = backend.rows(
            f"SELECT {seen}, count(*) FROM {table} WHERE {within} GROUP BY {seen}",
            lo=a.date(lo),
            hi=a.date(hi),
        )
        first_day = text(backend.rows(f"SELECT {seen} FROM {table} ORDER BY {seen}")[0][0])
        on_first_day = backend.scalar(
            f"SELECT count(*) FROM {table} WHERE {seen} = :d",
            d=a.date(dt.date.fromisoformat(first_day)),
        )

        def gte(day: str) -> Predicate:
            return Predicate("first_seen", Comparator.GTE, (day,))

        def lte(day: str) -> Predicate:
            return Predicate("first_seen", Comparator.LTE, (day,))

        window = (gte(lo.isoformat()), lte(hi.isoformat()))

        # execute
        count = backend.ask(agency_id, media_count(*window))
        after = backend.ask(agency_id, media_count(gte(hi.isoformat())))
        before = backend.ask(agency_id, media_count(lte(lo.isoformat())))
        records = backend.ask(
            agency_id, media_records(("sha256", "first_seen"), *window, limit=10_000)
        )
        by_day = backend.ask(
            agency_id, Query("media", Operation.COUNT_BY, window, group_by="first_seen")
        )
        one_day = backend.ask(agency_id, media_count(gte(first_day), lte(first_day)))
        exact_day = backend.ask(agency_id, media_count(eq("first_seen", first_day)))

        # assert
        assert 0 < expected_count < 300
        assert expected_before > 0 and expected_after > 0
        assert count.count == Count(expected_count)
        assert after.count == Count(expected_after)
        assert before.count == Count(expected_before)
        assert sorted(records.rows) == sorted((text(s), text(d)) for s, d in expected_rows)
        assert all(lo.isoformat() <= (r[1] or "") <= hi.isoformat() for r in records.rows)
        assert {b.key: b.count for b in by_day.buckets} == {text(d): n for d, n in expected_days}
        assert all(re.fullmatch(r"\d{4}-\d{2}-\d{2}", b.key or "") for b in by_day.buckets)
        assert on_first_day >= 1
        assert one_day.count == exact_day.count == Count(on_first_day)

    # --- booleans: Boolean columns and integer columns --------------------------------

    @pytest.mark.parametrize("agency_id", AGENCIES, ids=["boolean-column", "integer-column"])
    def test_boolean_predicates_match_sql(self, backend: Backend, agency_id: str) -> None:
        # prepare
        a = backend.agencies[agency_id]
        vid = a.col("media", "victim_identified")
        expected = {
            flag: backend.scalar(
                f"SELECT count(*) FROM {a.table('media')} WHERE {vid} = :v", v=a.flag(flag)
            )
            for flag in (True, False)
        }

        # execute
        counts = {
            flag: backend.ask(agency_id, media_count(eq("victim_identified", flag_text(flag))))
            for flag in (True, False)
        }
        spelled = backend.ask(agency_id, media_count(eq("victim_identified", " TRUE ")))
        grouped = backend.ask(
            agency_id, Query("media", Operation.COUNT_BY, group_by="victim_identified")
        )
        records = backend.ask(
            agency_id,
            media_records(("sha256", "victim_identified"), eq("victim_identified", "true")),
        )

        # assert
        assert expected[True] > 0 and expected[False] > 0
        assert expected[True] + expected[False] == 300
        assert {f: c.count for f, c in counts.items()} == {f: Count(n) for f, n in expected.items()}
        assert spelled.count == Count(expected[True])
        assert {b.key: b.count for b in grouped.buckets} == {
            "true": expected[True],
            "false": expected[False],
        }
        assert {r[1] for r in records.rows} == {"true"}

    def test_records_match_sql_row_for_row(self, backend: Backend) -> None:
        # prepare: every media field, typed or not, read back as canonical text
        fields = ("sha256", "category", "first_seen", "victim_identified", "case_ref")
        expected = {}
        for agency_id, a in backend.agencies.items():
            columns = ", ".join(a.col("media", f) for f in fields)
            expected[agency_id] = sorted(
                (text(s), text(c), text(d), flag_text(v), text(r))
                for s, c, d, v, r in backend.rows(
                    f"SELECT {columns} FROM {a.table('media')} "
                    f"WHERE {a.col('media', 'category')} = :c",
                    c="C",
                )
            )

        # execute
        answers = {
            agency_id: backend.ask(
                agency_id, media_records(fields, eq("category", "C"), limit=10_000)
            )
            for agency_id in backend.agencies
        }

        # assert
        assert {n: sorted(a.rows) for n, a in answers.items()} == expected
        assert all(len(rows) > 10 for rows in expected.values())
        for answer in answers.values():
            assert answer.fields == fields
            assert answer.withheld_fields == ()
            assert answer.truncated is False

    # --- grouping and small counts ---------------------------------------------------

    def test_count_by_matches_sql_group_by(self, backend: Backend) -> None:
        # prepare
        expected = {}
        for agency_id, a in backend.agencies.items():
            cat = a.col("media", "category")
            expected[agency_id] = dict(
                backend.rows(f"SELECT {cat}, count(*) FROM {a.table('media')} GROUP BY {cat}")
            )

        # execute
        answers = {
            agency_id: backend.ask(
                agency_id, Query("media", Operation.COUNT_BY, group_by="category")
            )
            for agency_id in backend.agencies
        }

        # assert
        assert {n: {b.key: b.count for b in a.buckets} for n, a in answers.items()} == expected
        for agency_id, answer in answers.items():
            counts = [b.count for b in answer.buckets]
            assert counts == sorted(expected[agency_id].values(), reverse=True)
            assert answer.buckets_suppressed is False

    def test_small_counts_are_suppressed(self, backend: Backend) -> None:
        for agency_id, a in backend.agencies.items():
            # prepare
            cat = a.col("media", "category")
            per_category: dict[str, int] = dict(
                backend.rows(f"SELECT {cat}, count(*) FROM {a.table('media')} GROUP BY {cat}")
            )
            small = min(per_category, key=per_category.__getitem__)
            large = max(per_category, key=per_category.__getitem__)

            # execute
            grouped = backend.ask(
                agency_id, Query("media", Operation.COUNT_BY, group_by="category"), "statistics"
            )
            small_count = backend.ask(agency_id, media_count(eq("category", small)), "statistics")
            large_count = backend.ask(agency_id, media_count(eq("category", large)), "statistics")
            none_count = backend.ask(agency_id, media_count(eq("category", "Z")), "statistics")

            # assert
            assert per_category[small] < MIN_COUNT <= per_category[large], agency_id
            # Released under a minimum count: within the stated noise bound of the truth.
            shown = {k: n for k, n in per_category.items() if n >= MIN_COUNT}
            assert {b.key for b in grouped.buckets} == set(shown)
            for b in grouped.buckets:
                assert b.noise_bound == bound(MIN_COUNT) and b.count >= MIN_COUNT
                assert abs(b.count - shown[b.key or ""]) <= b.noise_bound
            assert grouped.buckets_suppressed is True
            assert grouped.bucket_minimum == MIN_COUNT
            assert small_count.count == Count(0, below_minimum=True, minimum=MIN_COUNT)
            assert str(small_count.count) == f"fewer than {MIN_COUNT}"
            assert large_count.count is not None
            assert large_count.count.noise_bound == bound(MIN_COUNT)
            assert abs(large_count.count.value - per_category[large]) <= bound(MIN_COUNT)
            # Sticky: the same records, asked as a count or as a cell, get the same noise.
            assert Bucket(large, large_count.count.value, bound(MIN_COUNT)) in grouped.buckets
            assert none_count.count == Count(0, below_minimum=True, minimum=MIN_COUNT)

    # --- row caps and withheld fields -----------------------------------------------

    def test_rows_are_capped_and_marked_truncated(self, backend: Backend) -> None:
        # prepare: (query limit, rows shown) under a rule allowing 5 rows; and one day
        # of category A, which holds fewer rows than that
        limits = ((0, VICTIM_ID_MAX_ROWS), (3, 3), (50, VICTIM_ID_MAX_ROWS))
        ordered, days, on_day = {}, {}, {}
        for agency_id, a in backend.agencies.items():
            table, cat = a.table("media"), a.col("media", "category")
            seen = a.col("media", "first_seen")
            ordered[agency_id] = [
                (text(c), text(d))
                for c, d in backend.rows(
                    f"SELECT {cat}, {seen} FROM {table} WHERE {cat} = :c ORDER BY {cat}, {seen}",
                    c="A",
                )
            ]
            days[agency_id] = day = ordered[agency_id][0][1]
            on_day[agency_id] = backend.scalar(
                f"SELECT count(*) FROM {table} WHERE {cat} = :c AND {seen} = :d",
                c="A",
                d=a.date(dt.date.fromisoformat(day)),
            )

        # execute
        capped = {
            (agency_id, limit): backend.ask(
                agency_id,
                media_records(("category", "first_seen"), eq("category", "A"), limit=limit),
                "victim-identification",
            )
            for agency_id in backend.agencies
            for limit, _ in limits
        }
        few = {
            agency_id: backend.ask(
                agency_id,
                media_records(
                    ("category", "first_seen"), eq("category", "A"), eq("first_seen", day)
                ),
                "victim-identification",
            )
            for agency_id, day in days.items()
        }

        # assert
        assert all(len(rows) > VICTIM_ID_MAX_ROWS for rows in ordered.values())
        assert {k: (a.rows, a.truncated) for k, a in capped.items()} == {
            (agency_id, limit): (tuple(ordered[agency_id][:shown]), True)
            for agency_id in backend.agencies
            for limit, shown in limits
        }
        assert {a.decision.rules for a in capped.values()} == {("identify-victims",)}
        assert all(1 <= n <= VICTIM_ID_MAX_ROWS for n in on_day.values())
        assert {n: (a.rows, a.truncated) for n, a in few.items()} == {
            n: ((("A", days[n]),) * on_day[n], False) for n in backend.agencies
        }

    def test_unreleased_fields_are_withheld(self, backend: Backend) -> None:
        # prepare
        fields = ("case_ref", "category", "sha256", "first_seen")
        secrets = set()
        for a in backend.agencies.values():
            secrets |= {
                text(v)
                for row in backend.rows(
                    f"SELECT {a.col('media', 'case_ref')}, {a.col('media', 'sha256')} "
                    f"FROM {a.table('media')}"
                )
                for v in row
            }

        # execute
        answers = {
            agency_id: backend.ask(
                agency_id, media_records(fields, eq("category", "B")), "victim-identification"
            )
            for agency_id in backend.agencies
        }

        # assert
        for answer in answers.values():
            assert answer.fields == ("category", "first_seen")
            assert answer.withheld_fields == ("case_ref", "sha256")
            assert answer.decision.reason == "withheld: case_ref, sha256"
            assert answer.rows
            assert all(len(r) == 2 and r[0] == "B" for r in answer.rows)
            assert not secrets & {cell for row in answer.rows for cell in row}

    # --- accounts --------------------------------------------------------------------

    def test_account_records_match_sql(self, backend: Backend) -> None:
        # prepare
        fields = ("platform", "handle", "email", "first_seen", "last_seen")
        emails, expected = {}, {}
        for agency_id, a in backend.agencies.items():
            columns = [a.col("accounts", f) for f in fields]
            table = a.table("accounts")
            emails[agency_id] = backend.rows(
                f"SELECT {columns[2]} FROM {table} ORDER BY {columns[2]}"
            )[0][0]
            expected[agency_id] = sorted(
                tuple(text(v) for v in row)
                for row in backend.rows(
                    f"SELECT {', '.join(columns)} FROM {table} WHERE {columns[2]} = :e",
                    e=emails[agency_id],
                )
            )

        # execute: the e-mail in upper case, which the catalog canonicalises
        answers = {
            agency_id: backend.ask(
                agency_id,
                Query("accounts", Operation.RECORDS, (eq("email", email.upper()),), fields=fields),
                "offender-identification",
            )
            for agency_id, email in emails.items()
        }

        # assert
        assert all(expected.values())
        assert {n: sorted(a.rows) for n, a in answers.items()} == expected

    # --- the database is read-only for the node --------------------------------------

    def test_node_engine_refuses_writes(self, backend: Backend) -> None:
        # prepare
        statements = (
            "INSERT INTO hash_register (sha256_hex) VALUES ('00')",
            "UPDATE hash_register SET cat = 'Z'",
            "DELETE FROM hash_register",
            "DROP TABLE online_ids",
            "CREATE TABLE intruder (x INTEGER)",
        )
        before = backend.rows("SELECT cat, count(*) FROM hash_register GROUP BY cat")
        node_engine = backend.agencies[TYPED].node.core.engine
        fresh_engine = open_read_only(backend.engine.url.render_as_string(hide_password=False))

        # execute
        refused = []
        try:
            for engine in (node_engine, fresh_engine):
                for statement in statements:
                    with engine.connect() as conn:
                        try:
                            conn.execute(sa.text(statement))
                            conn.commit()
                        except sa.exc.DBAPIError:
                            refused.append(statement)
        finally:
            fresh_engine.dispose()

        # assert
        assert refused == [*statements, *statements]
        assert backend.rows("SELECT cat, count(*) FROM hash_register GROUP BY cat") == before
        tables = set(sa.inspect(backend.engine).get_table_names())
        assert "online_ids" in tables
        assert "intruder" not in tables


def closed_port() -> socket.socket:
    """A loopback socket bound to a free port and never listening: connections are refused."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    return sock


@pytest.mark.parametrize("driver", ["postgresql+psycopg", "mysql+pymysql"])
def test_unreachable_database_stops_the_node(tmp_path: Path, driver: str) -> None:
    # prepare
    secret = "s3cr3t-Pa55word"
    root = tmp_path / "federation"
    with closed_port() as sock:
        port = sock.getsockname()[1]
        url = f"{driver}://liaison:{secret}@127.0.0.1:{port}/agency"
        config = write_agency_node(root, demo_agencies()[0], url)

        # execute
        with pytest.raises(BackendError) as info, running_node(config):
            pass

    # assert
    message = str(info.value)
    # Which failure it was, where, with the password masked.
    assert message.startswith(
        f"cannot reach the agency database at 127.0.0.1:{port}: connection refused"
    ), message
    assert secret not in message
    assert "SELECT" not in message
    assert not (root / "nodes" / "ruritania" / "state").exists()
