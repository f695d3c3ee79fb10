"""Why a node cannot use its database, said plainly, and never with the password.

Each failure is real: a throwaway MariaDB account given the wrong password,
a PostgreSQL role that does not exist (PostgreSQL here trusts 127.0.0.1, so
it cannot refuse a wrong password: the wrong-password case runs on MariaDB),
a database that does not exist, a closed port, a host name that cannot
resolve, TLS required by the client but not offered by the server. Also
here: the URL spellings agencies write (``postgres://``, ``mysql://``), and
database errors in the node's log carrying the query id.
"""

from __future__ import annotations

import hashlib
import json
import socket
import uuid
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
import sqlalchemy as sa

from liaison.errors import BackendError, ConfigError
from liaison.keys import SigningKey
from liaison.query import Comparator, Operation, Predicate, Query
from liaison.tls import write_dev_pki
from tests.conftest import MARIADB_ADMIN_URL
from tests.support import (
    call_node,
    liaison,
    make_request,
    running_node,
    server_database_url,
    sign_request,
    spawn,
    start_local_node,
    terminate,
    write_local_node,
)

NODE_ID = "errorland"
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
operations = ["match", "count"]
match_fields = ["sha256", "category"]
release = ["sha256", "category"]
"""
MAPPING = {"media": ("seized_files", {"sha256": "sha", "category": "cat"})}
# A password no message, log line or output may ever show.
SECRET = "Wr0ng-pa55-never-SHOWN"
ASKED = hashlib.sha256(b"a selector the log must not show").hexdigest()


def fill(url: str) -> None:
    """The mapped table, with a few rows, in the database at ``url``."""
    engine = sa.create_engine(url)
    try:
        metadata = sa.MetaData()
        table = sa.Table(
            "seized_files",
            metadata,
            sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
            sa.Column("sha", sa.String(64), nullable=False),
            sa.Column("cat", sa.String(8), nullable=False),
        )
        metadata.create_all(engine)
        with engine.begin() as conn:
            conn.execute(
                table.insert(),
                [
                    {"id": i, "sha": hashlib.sha256(f"f{i}".encode()).hexdigest(), "cat": "A"}
                    for i in range(5)
                ],
            )
    finally:
        engine.dispose()


def node_config(root: Path, url: str) -> Path:
    return write_local_node(root, NODE_ID, database_url=url, mapping=MAPPING, policy_text=POLICY)


def start_failure(root: Path, url: str) -> str:
    """The error a node over ``url`` stops with at start."""
    with pytest.raises(BackendError) as info, running_node(node_config(root, url)):
        pass
    message = str(info.value)
    assert SECRET not in message
    assert "\n" not in message
    return message


def closed_port() -> socket.socket:
    """A loopback socket bound to a free port and never listening: connections are refused."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    return sock


@dataclass(frozen=True)
class Account:
    """A MariaDB account of its own, allowed to read one database."""

    user: str
    password: str
    database_url: str  # the database it may read, as the admin reaches it

    def url(self, password: str | None = None) -> str:
        url = sa.make_url(self.database_url).set(
            username=self.user, password=self.password if password is None else password
        )
        return url.render_as_string(hide_password=False)


@pytest.fixture
def mariadb_account(mariadb_url: str) -> Iterator[Account]:
    """A throwaway MariaDB user with a password (characters URLs must escape), dropped after."""
    user = f"liaison_t_{uuid.uuid4().hex[:10]}"
    password = f"r1ght:p@ss/{uuid.uuid4().hex[:8]}%"
    database = sa.make_url(mariadb_url).database
    admin = sa.create_engine(MARIADB_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(
            sa.text(f"CREATE USER '{user}'@'127.0.0.1' IDENTIFIED BY :pw"), {"pw": password}
        )
        conn.execute(sa.text(f"GRANT SELECT ON `{database}`.* TO '{user}'@'127.0.0.1'"))
    try:
        yield Account(user, password, mariadb_url)
    finally:
        with admin.connect() as conn:
            conn.execute(sa.text(f"DROP USER IF EXISTS '{user}'@'127.0.0.1'"))
        admin.dispose()


# --- authentication ----------------------------------------------------------------


def test_a_wrong_password_is_named_as_authentication(
    mariadb_account: Account, tmp_path: Path
) -> None:
    # prepare: the right password works (so only the password is wrong below)
    fill(mariadb_account.database_url)
    with running_node(node_config(tmp_path / "right", mariadb_account.url())):
        pass

    # execute
    message = start_failure(tmp_path / "wrong", mariadb_account.url(SECRET))

    # assert
    shown = sa.make_url(mariadb_account.url(SECRET)).render_as_string(hide_password=True)
    assert message.startswith(
        f"the agency database refused the login of user {mariadb_account.user!r} at {shown} "
        "[authentication failed, code 1045: Access denied for user "
    ), message
    assert message.endswith(
        "; check the user name and password (database_password_env / database_password_file) "
        "and that the account may log in from this host"
    )
    assert ":***@" in message
    assert mariadb_account.password not in message


def test_an_unknown_postgresql_role_is_named_as_authentication(
    postgres_url: str, tmp_path: Path
) -> None:
    # prepare: trust authentication accepts any password, but not a role that does not exist
    role = f"nobody_{uuid.uuid4().hex[:8]}"
    url = sa.make_url(postgres_url).set(username=role, password=SECRET)

    # execute
    message = start_failure(tmp_path, url.render_as_string(hide_password=False))

    # assert
    assert message.startswith(
        f"the agency database refused the login of user {role!r} at "
        f"{url.render_as_string(hide_password=True)} [authentication failed: "
        f'role "{role}" does not exist]; check the user name and password'
    ), message


# --- which database, which host ----------------------------------------------------


@pytest.mark.parametrize("server", ["postgresql", "mariadb"])
def test_an_unknown_database_is_named(
    server: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    # prepare
    base = server_database_url(request, server)
    missing = f"no_such_{uuid.uuid4().hex[:8]}"
    url = sa.make_url(base).set(database=missing)
    if server == "postgresql":
        url = url.set(password=SECRET)  # trust: any password is accepted, and never shown

    # execute
    message = start_failure(tmp_path, url.render_as_string(hide_password=False))

    # assert
    code = "" if server == "postgresql" else ", code 1049"
    assert message.startswith(
        f"the agency database {missing!r} does not exist on the server at "
        f"{url.render_as_string(hide_password=True)} [unknown database{code}: "
    ), message
    assert message.endswith("; check the database name at the end of the URL")


@pytest.mark.parametrize("driver", ["postgresql+psycopg", "mysql+pymysql"])
def test_a_closed_port_is_named(driver: str, tmp_path: Path) -> None:
    # prepare / execute
    with closed_port() as sock:
        port = sock.getsockname()[1]
        url = f"{driver}://liaison:{SECRET}@127.0.0.1:{port}/agency"
        message = start_failure(tmp_path, url)

    # assert
    assert message.startswith(
        f"cannot reach the agency database at 127.0.0.1:{port}: connection refused "
        f"({driver}://liaison:***@127.0.0.1:{port}/agency) [connection refused"
    ), message
    assert message.endswith(
        "; check host and port in the URL and that the server is up and listening"
    )
    assert not (tmp_path / "nodes" / NODE_ID / "state").exists()


@pytest.mark.parametrize("driver", ["postgresql+psycopg", "mysql+pymysql"])
def test_a_host_that_does_not_resolve_is_named(driver: str, tmp_path: Path) -> None:
    # .invalid never resolves (RFC 2606)
    url = f"{driver}://liaison:{SECRET}@db.liaison.invalid:5432/agency"

    message = start_failure(tmp_path, url)

    assert message.startswith(
        "cannot reach the agency database: host 'db.liaison.invalid' not resolved "
        f"({driver}://liaison:***@db.liaison.invalid:5432/agency) [host name not resolved"
    ), message
    assert message.endswith("; check the host name in the URL (DNS)")


@pytest.mark.parametrize("server", ["postgresql", "mariadb"])
def test_tls_required_but_not_offered_is_named(
    server: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    # prepare: these servers offer no TLS; the URL insists on it
    base = sa.make_url(server_database_url(request, server))
    write_dev_pki(tmp_path / "pki", {})
    ca = str(tmp_path / "pki" / "ca.pem")
    query = {"sslmode": "require"} if server == "postgresql" else {"ssl_ca": ca}
    url = base.update_query_dict(query)
    if server == "postgresql":
        url = url.set(password=SECRET)

    # execute
    message = start_failure(tmp_path, url.render_as_string(hide_password=False))

    # assert
    assert message.startswith(
        f"cannot open TLS to the agency database at {url.render_as_string(hide_password=True)} "
        "[TLS required or failed"
    ), message
    assert "SSL" in message
    assert message.endswith("and requires")


# --- through the command line, with its logs ---------------------------------------


def test_the_node_command_says_why_and_never_shows_the_password(
    mariadb_account: Account, tmp_path: Path
) -> None:
    # prepare
    fill(mariadb_account.database_url)
    config = node_config(tmp_path, mariadb_account.url(SECRET))

    # execute
    run = liaison("node", "serve", "--config", config, "--log-level", "debug", cwd=tmp_path)

    # assert
    assert run.returncode != 0
    assert "Traceback" not in run.stderr
    assert "error: the agency database refused the login of user" in run.stderr
    assert "authentication failed, code 1045" in run.stderr
    for secret in (SECRET, mariadb_account.password):
        assert secret not in run.stdout + run.stderr


# --- URL spellings -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("spelling", "server", "driver"),
    [
        ("postgres", "postgresql", "postgresql+psycopg"),
        ("postgresql", "postgresql", "postgresql+psycopg"),
        ("mysql", "mariadb", "mysql+pymysql"),
        ("mariadb", "mariadb", "mysql+pymysql"),
    ],
)
def test_common_url_spellings_reach_the_installed_driver(
    spelling: str, server: str, driver: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    # prepare
    base = server_database_url(request, server)
    fill(base)
    url = sa.make_url(base).set(drivername=spelling).render_as_string(hide_password=False)
    assert url.startswith(f"{spelling}://")

    # execute
    with ExitStack() as stack:
        node = start_local_node(stack, node_config(tmp_path, url))
        drivername = node.core.engine.url.drivername
        known = hashlib.sha256(b"f3").hexdigest()
        answer = node.ask(
            Query("media", Operation.MATCH, (Predicate("sha256", Comparator.EQ, (known,)),))
        )

    # assert
    assert drivername == driver
    assert answer.hit is True


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        (
            "postgresql+psycopg2://u:SECRET@127.0.0.1/agency",
            "cannot use database_url (the driver 'psycopg2' for "
            "postgresql+psycopg2://u:***@127.0.0.1/agency is not installed; install it, or "
            "write postgresql+psycopg:// to use the driver Liaison installs "
            "(pip install -e '.[postgresql]' (in the Liaison checkout)))",
        ),
        (
            "mysql+mysqldb://u:SECRET@127.0.0.1/agency",
            "cannot use database_url (the driver 'mysqldb' for "
            "mysql+mysqldb://u:***@127.0.0.1/agency is not installed; install it, or "
            "write mysql+pymysql:// to use the driver Liaison installs "
            "(pip install -e '.[mysql]' (in the Liaison checkout)))",
        ),
        (
            "sqlserver://u:SECRET@db/agency",
            "cannot use database_url ('sqlserver' in sqlserver://u:***@db/agency is not a "
            "database Liaison reads (SQLite, PostgreSQL, MariaDB/MySQL); write one of "
            "sqlite:///agency.sqlite3, "
            "postgresql+psycopg://USER@HOST:5432/DB, mysql+pymysql://USER@HOST:3306/DB)",
        ),
    ],
)
def test_a_driver_that_is_not_installed_is_explained_in_one_line(
    url: str, expected: str, tmp_path: Path
) -> None:
    with pytest.raises(ConfigError) as info, running_node(node_config(tmp_path, url)):
        pass

    assert str(info.value) == expected
    assert "SECRET" not in str(info.value)


# --- database errors in the log carry the query id -----------------------------------


def test_a_database_error_is_logged_with_its_query_id(tmp_path: Path) -> None:
    # prepare: a node whose table disappears under it
    url = f"sqlite:///{tmp_path / 'agency.sqlite3'}"
    fill(url)
    root = tmp_path / "federation"
    config = node_config(root, url)
    gateway_key = SigningKey.from_pem_file(root / "gateway" / "gateway.key")
    query = Query("media", Operation.MATCH, (Predicate("sha256", Comparator.EQ, (ASKED,)),))
    requests = [make_request(query, audience=(NODE_ID,)) for _ in range(2)]

    # execute
    process = spawn("node", "node", config, tmp_path, "--log-level", "debug")
    try:
        engine = sa.create_engine(url)
        with engine.begin() as conn:
            conn.execute(sa.text("DROP TABLE seized_files"))
        engine.dispose()
        codes = []
        for request in requests:
            with pytest.raises(grpc.RpcError) as info:
                call_node(process.address, sign_request(gateway_key, request))
            codes.append(info.value.code())
    finally:
        terminate(process)
    lines = process.log.read_text().splitlines()

    # assert
    assert codes == [grpc.StatusCode.UNAVAILABLE] * 2
    failures = [json.loads(line) for line in lines if '"database error"' in line]
    assert [f["query_id"] for f in failures] == [r.query_id for r in requests]
    for failure in failures:
        assert (failure["dataset"], failure["operation"]) == ("media", "match")
        assert failure["code"]
    assert not [line for line in lines if ASKED in line.lower()]
