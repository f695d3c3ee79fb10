"""Database passwords from the environment or a file, never only inline, never shown.

A node's ``database_password_env`` / ``database_password_file`` and the
ledgers' ``[ledger] password_env`` / ``password_file`` (gateway and node) put
the password into the URL when the config loads. The end-to-end tests log in
to a real MariaDB account that has a password (PostgreSQL here trusts
127.0.0.1 and accepts any password, so there the ledger tests show that the
URL is built and used, not that the server checked it). A password file
others may read is refused, as ssh refuses such a private key.
"""

from __future__ import annotations

import hashlib
import os
import uuid
from contextlib import ExitStack
from pathlib import Path

import pytest
import sqlalchemy as sa

from liaison.catalog import CATALOG_V1
from liaison.config import load_gateway_config, load_node_config
from liaison.demo.data import INVESTIGATOR_AGENCY
from liaison.demo.federation import write_dev_idp, write_gateway_config, write_gateway_keys
from liaison.errors import ConfigError
from liaison.query import Comparator, Operation, Predicate, Query
from tests.support import running_gateway, spawn, start_local_node, terminate
from tests.test_db_errors import SECRET, Account, fill, node_config
from tests.test_db_errors import mariadb_account as mariadb_account

ENV = f"LIAISON_TEST_DB_PASSWORD_{uuid.uuid4().hex[:8].upper()}"
KNOWN = hashlib.sha256(b"f3").hexdigest()  # a hash `fill` stores


def with_node_lines(config: Path, url: str, *lines: str) -> Path:
    """Set ``database_url`` of the node at ``config`` to ``url`` and add ``lines`` under [node]."""
    text = config.read_text()
    start = text.index("database_url = ")
    end = text.index("\n", start)
    added = "".join(f"\n{line}" for line in lines)
    config.write_text(f'{text[:start]}database_url = "{url}"{added}{text[end:]}')
    return config


def without_password(url: str) -> sa.URL:
    u = sa.make_url(url)
    return sa.URL.create(u.drivername, u.username, None, u.host, u.port, u.database)


def secret_file(folder: Path, content: str, mode: int = 0o600) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "db.pass"
    path.write_text(content)
    os.chmod(path, mode)
    return path


def match_known(config: Path) -> bool:
    with ExitStack() as stack:
        node = start_local_node(stack, config)
        answer = node.ask(
            Query("media", Operation.MATCH, (Predicate("sha256", Comparator.EQ, (KNOWN,)),))
        )
    return answer.hit


# --- a node logs in with the password from elsewhere ---------------------------------


def test_a_node_logs_in_with_the_password_from_the_environment(
    mariadb_account: Account,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # prepare: the URL names the user only
    fill(mariadb_account.database_url)
    bare = without_password(mariadb_account.url())
    config = with_node_lines(
        node_config(tmp_path, "sqlite://"),
        bare.render_as_string(hide_password=False),
        f'database_password_env = "{ENV}"',
    )
    monkeypatch.setenv(ENV, mariadb_account.password)

    # execute
    loaded = load_node_config(config, CATALOG_V1)
    hit = match_known(config)

    # assert
    assert hit is True
    assert sa.make_url(loaded.database_url).password == mariadb_account.password
    assert mariadb_account.password not in repr(loaded)
    assert mariadb_account.password not in config.read_text()


def test_a_node_logs_in_with_the_password_from_a_file(
    mariadb_account: Account,
    tmp_path: Path,
) -> None:
    # prepare: a file as `echo PASSWORD > db.pass` writes it, owner-only
    fill(mariadb_account.database_url)
    secret_file(tmp_path / "nodes" / "errorland" / "secrets", mariadb_account.password + "\n")
    bare = without_password(mariadb_account.url())
    config = with_node_lines(
        node_config(tmp_path, "sqlite://"),
        bare.render_as_string(hide_password=False),
        'database_password_file = "secrets/db.pass"',
    )

    # execute / assert
    assert match_known(config) is True


def test_the_node_process_never_logs_the_password(
    mariadb_account: Account,
    tmp_path: Path,
) -> None:
    # prepare: a serving node at debug level, and one refused for a wrong password
    fill(mariadb_account.database_url)
    bare = without_password(mariadb_account.url())
    good = secret_file(tmp_path / "good", mariadb_account.password)
    bad = secret_file(tmp_path / "bad", SECRET)
    serving = with_node_lines(
        node_config(tmp_path / "a", "sqlite://"),
        bare.render_as_string(hide_password=False),
        f'database_password_file = "{good}"',
    )
    refused = with_node_lines(
        node_config(tmp_path / "b", "sqlite://"),
        bare.render_as_string(hide_password=False),
        f'database_password_file = "{bad}"',
    )

    # execute
    process = spawn("node", "serving", serving, tmp_path, "--log-level", "debug")
    terminate(process)
    with pytest.raises(AssertionError, match="exited while starting") as failed:
        spawn("node", "refused", refused, tmp_path, "--log-level", "debug")

    # assert
    logs = process.log.read_text() + (tmp_path / "refused.log").read_text()
    assert '"msg": "node serving"' in logs
    assert "refused the login of user" in str(failed.value)
    for secret in (mariadb_account.password, SECRET):
        assert secret not in logs
        assert secret not in str(failed.value)


# --- what a password file must be ---------------------------------------------------


@pytest.mark.parametrize("mode", [0o600, 0o400, 0o640, 0o440])
def test_owner_only_and_group_readable_files_are_accepted(mode: int, tmp_path: Path) -> None:
    path = secret_file(tmp_path / "s", "p4ss", mode)
    config = with_node_lines(
        node_config(tmp_path, "sqlite://"),
        "postgresql+psycopg://liaison@db.internal/evidence",
        f'database_password_file = "{path}"',
    )

    assert sa.make_url(load_node_config(config, CATALOG_V1).database_url).password == "p4ss"


@pytest.mark.parametrize("mode", [0o644, 0o604, 0o660, 0o666, 0o601])
def test_files_others_may_read_or_change_are_refused(mode: int, tmp_path: Path) -> None:
    path = secret_file(tmp_path / "s", "p4ss", mode)
    config = with_node_lines(
        node_config(tmp_path, "sqlite://"),
        "postgresql+psycopg://liaison@db.internal/evidence",
        f'database_password_file = "{path}"',
    )

    with pytest.raises(ConfigError) as info:
        load_node_config(config, CATALOG_V1)

    assert str(info.value) == (
        f"{config} [node] `database_password_file`: permissions {mode:04o} for {path} are too "
        "open: other users could read or change the password; run "
        f"`chmod 600 {path}` (0640 with a group is accepted)"
    )
    assert "p4ss" not in str(info.value)


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ("", "is empty; write the password on its first line"),
        ("\n", "is empty; write the password on its first line"),
        ("one\ntwo\n", "holds more than one line; write the password alone"),
    ],
)
def test_a_file_that_does_not_hold_one_password_is_refused(
    content: str, expected: str, tmp_path: Path
) -> None:
    path = secret_file(tmp_path / "s", content)
    config = with_node_lines(
        node_config(tmp_path, "sqlite://"),
        "postgresql+psycopg://liaison@db.internal/evidence",
        f'database_password_file = "{path}"',
    )

    with pytest.raises(ConfigError, match=expected):
        load_node_config(config, CATALOG_V1)


@pytest.mark.parametrize(
    ("url", "lines", "expected"),
    [
        (
            "postgresql+psycopg://liaison@db/evidence",
            (f'database_password_env = "{ENV}_UNSET"',),
            f"`database_password_env` names the environment variable {ENV}_UNSET, which is "
            "not set or empty; set it to the password before starting",
        ),
        (
            "postgresql+psycopg://liaison@db/evidence",
            (f'database_password_env = "{ENV}"', 'database_password_file = "x"'),
            "give `database_password_env` or `database_password_file`, not both",
        ),
        (
            f"postgresql+psycopg://liaison:{SECRET}@db/evidence",
            (f'database_password_env = "{ENV}"',),
            "the URL has a password inline and one is configured from the environment or a "
            "file; remove it from the URL",
        ),
        (
            "postgresql+psycopg://db/evidence",
            (f'database_password_env = "{ENV}"',),
            "the URL names no user for the password; write USER@ before the host",
        ),
        (
            "sqlite:///agency.sqlite3",
            (f'database_password_env = "{ENV}"',),
            "SQLite has no password; remove the password setting",
        ),
        (
            "postgresql+psycopg://liaison@db/evidence",
            ('database_password_file = "no/such/file"',),
            "`database_password_file`: the file ",
        ),
    ],
)
def test_misconfigured_password_sources_are_named(
    url: str,
    lines: tuple[str, ...],
    expected: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(ENV, "p4ss")
    monkeypatch.delenv(f"{ENV}_UNSET", raising=False)
    config = with_node_lines(node_config(tmp_path, "sqlite://"), url, *lines)

    with pytest.raises(ConfigError) as info:
        load_node_config(config, CATALOG_V1)

    assert expected in str(info.value)
    assert SECRET not in str(info.value)
    assert "p4ss" not in str(info.value)


# --- the ledgers ---------------------------------------------------------------------


def gateway_over_ledger(root: Path, location: str, *lines: str) -> Path:
    write_gateway_keys(root)
    write_dev_idp(root, INVESTIGATOR_AGENCY)
    path = write_gateway_config(root, [INVESTIGATOR_AGENCY], {}, ledger=location)
    text = path.read_text()
    marker = f"location = {location!r}".replace("'", '"')
    assert marker in text
    path.write_text(text.replace(marker, "\n".join((marker, *lines))))
    return path


def test_the_gateway_ledger_url_takes_its_password_from_the_environment(
    postgres_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # prepare: spelled as people write it, without driver or password
    monkeypatch.setenv(ENV, SECRET)
    bare = sa.make_url(postgres_url).set(drivername="postgres")
    config = gateway_over_ledger(
        tmp_path, bare.render_as_string(hide_password=False), f'password_env = "{ENV}"'
    )

    # execute
    loaded = load_gateway_config(config)
    with running_gateway(config) as gateway:
        healthy = gateway.core.ledger.healthy

    # assert
    url = sa.make_url(loaded.ledger)
    assert (url.drivername, url.password) == ("postgresql+psycopg", SECRET)
    assert SECRET not in repr(loaded)
    assert healthy is True
    admin = sa.create_engine(postgres_url)
    try:
        assert sa.inspect(admin).has_table("liaison_ledger_entries")
    finally:
        admin.dispose()


def test_a_node_receipts_ledger_takes_its_password_from_a_file(
    postgres_url: str, tmp_path: Path
) -> None:
    path = secret_file(tmp_path / "s", SECRET)
    config = node_config(tmp_path, "sqlite:///agency.sqlite3")
    text = config.read_text().replace(
        'location = "state/receipts.sqlite3"',
        f'location = "{postgres_url}"\npassword_file = "{path}"',
    )
    config.write_text(text)

    loaded = load_node_config(config, CATALOG_V1)

    assert sa.make_url(loaded.receipts).password == SECRET
    assert SECRET not in repr(loaded)


def test_a_sqlite_ledger_with_a_password_is_refused(tmp_path: Path) -> None:
    config = gateway_over_ledger(tmp_path, "ledger.sqlite3", f'password_env = "{ENV}"')

    with pytest.raises(ConfigError, match="a SQLite ledger has no password"):
        load_gateway_config(config)
