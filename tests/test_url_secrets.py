"""A password in a database URL's query (``?password=...``) is shown as ``***``, everywhere.

libpq and PyMySQL take the password from the URL's query as well as from its
user-info part. ``node check`` prints the URL it checked, a node that cannot
start prints why, and the health probe logs the driver's words: none of them
may show it. PostgreSQL here trusts local logins, so the password is never
needed, only carried.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import sqlalchemy as sa

from liaison.databases import masked
from node.health import DatabaseProbe
from tests.operations_support import make_node
from tests.support import liaison

SECRET = "secret123"
NODE = "secretland"

pytestmark = pytest.mark.postgresql


def with_query(url: str, query: str) -> str:
    return f"{url}?{query}"


@pytest.mark.parametrize("key", ["password", "passwd", "sslpassword"])
def test_masked_hides_password_like_query_values(key: str) -> None:
    shown = masked(
        f"postgresql+psycopg://agency:{SECRET}x@db:5432/x?{key}={SECRET}&sslmode=require"
    )
    assert SECRET not in shown
    assert f"{key}=***" in shown and "sslmode=require" in shown


def test_node_check_shows_the_url_without_the_query_password(
    tmp_path: Path, postgres_url: str
) -> None:
    # prepare
    config = make_node(
        tmp_path / "federation", NODE, database_url=with_query(postgres_url, f"password={SECRET}")
    )

    # execute
    run = liaison("node", "check", "--config", config, "--json", cwd=tmp_path)

    # assert: it passes, and says where it looked without the secret
    assert run.returncode == 0, run.stdout + run.stderr
    (database,) = [c for c in run.json()["checks"] if c["name"] == "database"]
    assert "password=***" in database["detail"]
    assert SECRET not in run.stdout + run.stderr


def test_a_node_that_cannot_start_does_not_show_the_query_password(
    tmp_path: Path, postgres_url: str
) -> None:
    # prepare: the server refuses the session and quotes the value it refused,
    # which here is the password (the driver's words must be scrubbed, not only the URL)
    refused = with_query(postgres_url, f"password={SECRET}&options=-cwork_mem%3D{SECRET}")
    config = make_node(tmp_path / "federation", NODE, database_url=postgres_url, serve_from=refused)

    # execute
    check = liaison("node", "check", "--config", config, cwd=tmp_path)
    serve = liaison("node", "serve", "--config", config, cwd=tmp_path)

    # assert
    assert check.returncode != 0 and serve.returncode == 1
    assert "work_mem" in serve.stderr, serve.stderr
    for run in (check, serve):
        assert SECRET not in run.stdout + run.stderr
        assert "***" in run.stdout + run.stderr


def test_the_health_probe_reason_does_not_show_the_query_password(postgres_url: str) -> None:
    refused = with_query(postgres_url, f"password={SECRET}&options=-cwork_mem%3D{SECRET}")
    probe = DatabaseProbe(refused, [sa.table("pg_class")], lambda _ok: None)
    try:
        reason = probe.check()
    finally:
        probe.close()
    assert "work_mem" in reason, reason
    assert SECRET not in reason
    assert "***" in reason
