"""The ledger writer and its store, run for real: a SQLite file and PostgreSQL.

"Storage through SQLAlchemy: a SQLite file by default, PostgreSQL when
configured": every test where storage matters runs on both. Failures are made
real through a second connection (a trigger that aborts inserts, a table lock,
a renamed table), never by patching the store, and every ledger is checked at
the end the way an auditor would, with ``verify_ledger`` and the public key.

The last group of tests reproduces bugs once found in ``liaison/ledger/log.py``
and ``store.py`` (a cancelled append, an append racing close, an unreadable
store, a checkpoint mistaken for recovery, a refused store leaking
connections), so they stay fixed.
"""

from __future__ import annotations

import gc
import re
import sqlite3
import subprocess
import sys
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from contextlib import contextmanager
from itertools import pairwise
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.pool import NullPool

from liaison.errors import ConfigError, LedgerError, LedgerUnavailable
from liaison.keys import SigningKey
from liaison.ledger.checkpoint import Checkpoint, open_checkpoint
from liaison.ledger.entries import EntryKind, parse_entry
from liaison.ledger.log import Appended, Ledger
from liaison.ledger.merkle import leaf_hash, root_from_leaf_hashes, verify_inclusion
from liaison.ledger.store import LedgerStore, SideRows, ledger_url
from liaison.ledger.verify import verify_ledger
from tests.support import receipt

ORIGIN = "liaison.test/ledger-log"
ENTRIES = "liaison_ledger_entries"
# Long enough for any commit on a loaded machine; short enough that a hung
# writer fails the test instead of the 120 s pytest timeout.
WAIT_S = 10
# How long a regression test waits for a future that the old bugs left
# hanging; a working writer answers in milliseconds, so keep it generous
# enough for a loaded runner.
HANG_S = 5


# --- helpers ------------------------------------------------------------------------------


def is_sqlite(location: str) -> bool:
    return "://" not in location


def open_cp(note: str, key: SigningKey) -> Checkpoint:
    return open_checkpoint(note, key.verifying_key, origin=ORIGIN)


def assert_verifies(location: str, key: SigningKey) -> dict[str, int]:
    """Verify the stored ledger as an auditor would; return its entry counts by kind."""
    store = LedgerStore(location, create=False)
    try:
        report, _tree = verify_ledger(store, key.verifying_key)
    finally:
        store.close()
    assert report.ok, [str(p) for p in report.problems]
    assert report.warnings == []
    return report.kinds


class Backdoor:
    """A second connection to the ledger's database, for what an operator or a fault does."""

    def __init__(self, location: str) -> None:
        self.location = location
        self.engine = sa.create_engine(ledger_url(location), poolclass=NullPool)

    def execute(self, sql: str, **params: Any) -> None:
        with self.engine.begin() as conn:
            conn.execute(sa.text(sql), params)

    def indices(self) -> list[int]:
        with self.engine.connect() as conn:
            return [
                int(i) for i in conn.scalars(sa.text(f"SELECT idx FROM {ENTRIES} ORDER BY idx"))
            ]

    def break_inserts(self) -> None:
        """Make every insert of an entry fail, as a full disk or a broken server would."""
        if self.engine.dialect.name == "sqlite":
            self.execute(
                f"CREATE TRIGGER fail BEFORE INSERT ON {ENTRIES} "
                "BEGIN SELECT RAISE(ABORT, 'disk full'); END"
            )
        else:
            self.execute(
                "CREATE FUNCTION liaison_fail() RETURNS trigger LANGUAGE plpgsql AS "
                "$$ BEGIN RAISE EXCEPTION 'disk full'; END $$"
            )
            self.execute(
                f"CREATE TRIGGER fail BEFORE INSERT ON {ENTRIES} "
                "FOR EACH ROW EXECUTE FUNCTION liaison_fail()"
            )

    def mend_inserts(self) -> None:
        if self.engine.dialect.name == "sqlite":
            self.execute("DROP TRIGGER fail")
        else:
            self.execute(f"DROP TRIGGER fail ON {ENTRIES}")
            self.execute("DROP FUNCTION liaison_fail()")

    @contextmanager
    def writes_blocked(self) -> Iterator[None]:
        """Hold the database's write lock, so the ledger's next commit waits for us."""
        if self.engine.dialect.name == "sqlite":
            conn = sqlite3.connect(Path(self.location).resolve(), isolation_level=None)
            try:
                conn.execute("BEGIN IMMEDIATE")
                yield
                conn.execute("ROLLBACK")
            finally:
                conn.close()
        else:
            with self.engine.connect() as sa_conn:
                sa_conn.execute(sa.text(f"LOCK TABLE {ENTRIES} IN EXCLUSIVE MODE"))
                yield
                sa_conn.rollback()

    def dispose(self) -> None:
        self.engine.dispose()


class Ledgers:
    """Opens ledgers for one test and closes whatever is left open after it."""

    def __init__(self) -> None:
        self.opened: list[Ledger] = []

    def open(self, location: str, key: SigningKey, origin: str = ORIGIN, **kw: Any) -> Ledger:
        ledger = Ledger.open(location, key, origin, **kw)
        self.opened.append(ledger)
        return ledger


@pytest.fixture
def ledgers() -> Iterator[Ledgers]:
    opened = Ledgers()
    yield opened
    for ledger in opened.opened:
        ledger.close()


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgresql)])
def location(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Where a ledger lives: a SQLite file path, or a fresh PostgreSQL database's URL."""
    if request.param == "sqlite":
        return str(tmp_path / "ledger.sqlite3")
    url: str = request.getfixturevalue("postgres_url")
    return url


# For bugs whose cause lies above the store: one backend shows them, and keeps the file fast.
sqlite_only = pytest.mark.parametrize("location", ["sqlite"], indirect=True)


@pytest.fixture
def backdoor(location: str) -> Iterator[Backdoor]:
    door = Backdoor(location)
    yield door
    door.dispose()


@pytest.fixture
def key() -> SigningKey:
    return SigningKey.generate()


@pytest.fixture
def writer_crashes(monkeypatch: pytest.MonkeyPatch) -> list[BaseException | None]:
    """Exceptions that ended a thread during the test (the ledger's writer, in bugs)."""
    crashes: list[BaseException | None] = []
    monkeypatch.setattr(threading, "excepthook", lambda args: crashes.append(args.exc_value))
    return crashes


def wait_until(condition: Callable[[], bool], timeout_s: float = WAIT_S) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.02)


# --- reopening ------------------------------------------------------------------------------


def test_reopened_ledger_continues_from_its_last_checkpoint(
    location: str, key: SigningKey, ledgers: Ledgers
) -> None:
    # prepare
    size = 0
    final: Checkpoint | None = None
    for round_ in range(3):
        # execute
        ledger = ledgers.open(location, key)

        # assert: the rebuilt tree matches what the last run signed on closing,
        # the reopening is logged, and the checkpoint stored on opening covers it
        if final is not None:
            assert final.size == size
            assert ledger.tree.root(final.size) == final.root
        assert ledger.size == size + 1
        opened = ledger.store.entry(size)
        assert opened is not None
        assert parse_entry(opened).kind is EntryKind.OPENED
        on_open = open_cp(ledger.store.checkpoints()[-1].note, key)
        assert (on_open.size, on_open.root) == (ledger.size, ledger.tree.root())

        indices = [ledger.append(receipt(10 * round_ + i)).index for i in range(2)]
        assert indices == [size + 1, size + 2]
        size += 3
        ledger.close()
        store = LedgerStore(location, create=False)
        final = open_cp(store.checkpoints()[-1].note, key)
        store.close()

    kinds = assert_verifies(location, key)
    assert kinds == {"opened": 3, "receipt": 6}


# --- proofs ---------------------------------------------------------------------------------


def test_each_proved_append_verifies_against_its_signed_checkpoint(
    location: str, key: SigningKey, ledgers: Ledgers
) -> None:
    # prepare
    ledger = ledgers.open(location, key)

    for n in range(60):
        # execute
        entry = receipt(n)
        appended = ledger.append(entry, prove=True)

        # assert: one entry per batch, so the checkpoint ends at this entry
        assert appended.index == n + 1
        assert appended.leaf_hash == leaf_hash(entry)
        assert appended.checkpoint is not None
        cp = open_cp(appended.checkpoint.note, key)
        assert cp == appended.checkpoint.checkpoint
        assert cp.size == appended.index + 1
        verify_inclusion(
            leaf_hash(entry), appended.index, cp.size, appended.inclusion_path, cp.root
        )

    unproved = ledger.append(receipt(1000))
    assert (unproved.checkpoint, unproved.inclusion_path) == (None, ())
    ledger.close()
    assert_verifies(location, key)


# --- group commit ---------------------------------------------------------------------------


def test_concurrent_appends_are_committed_in_groups(
    location: str, key: SigningKey, ledgers: Ledgers
) -> None:
    # prepare
    ledger = ledgers.open(location, key)
    threads_n, total = 16, 200
    start = threading.Barrier(threads_n)
    futures: list[list[tuple[bytes, Future[Appended]]]] = [[] for _ in range(threads_n)]

    def submit_share(t: int) -> None:
        start.wait(WAIT_S)
        for n in range(t, total, threads_n):
            entry = receipt(n)
            futures[t].append((entry, ledger.submit(entry, prove=True)))

    # execute
    threads = [threading.Thread(target=submit_share, args=(t,)) for t in range(threads_n)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(WAIT_S)
    results = [(entry, f.result(WAIT_S)) for share in futures for entry, f in share]

    # assert: every entry landed once, right after the `opened` entry
    assert len(results) == total
    assert sorted(a.index for _, a in results) == list(range(1, total + 1))
    batches: dict[int, list[int]] = {}
    for entry, appended in results:
        assert appended.checkpoint is not None
        cp = open_cp(appended.checkpoint.note, key)
        verify_inclusion(
            leaf_hash(entry), appended.index, cp.size, appended.inclusion_path, cp.root
        )
        batches.setdefault(cp.size, []).append(appended.index)
    # A batch is signed once, after its last entry: its checkpoint ends there.
    for size, indices in batches.items():
        assert max(indices) == size - 1
    assert len(batches) < total, "every entry was committed alone: no group commit"
    assert max(len(indices) for indices in batches.values()) > 1
    ledger.close()
    assert assert_verifies(location, key) == {"opened": 1, "receipt": total}


def test_threads_appending_at_once_commit_each_others_entries(
    location: str, key: SigningKey, ledgers: Ledgers
) -> None:
    # prepare: node workers call append() and wait; whoever commits takes the others along
    ledger = ledgers.open(location, key)
    threads_n, total = 16, 320
    start = threading.Barrier(threads_n)
    results: list[list[tuple[bytes, Appended]]] = [[] for _ in range(threads_n)]

    def append_share(t: int) -> None:
        start.wait(WAIT_S)
        for n in range(t, total, threads_n):
            entry = receipt(n)
            results[t].append((entry, ledger.append(entry, prove=True, timeout_s=WAIT_S)))

    # execute
    threads = [threading.Thread(target=append_share, args=(t,)) for t in range(threads_n)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(WAIT_S * 3)

    # assert: every entry landed once, with a proof, and some commits held several
    appended = [pair for share in results for pair in share]
    assert len(appended) == total
    assert sorted(a.index for _, a in appended) == list(range(1, total + 1))
    sizes: set[int] = set()
    for entry, a in appended:
        assert a.checkpoint is not None
        cp = open_cp(a.checkpoint.note, key)
        verify_inclusion(leaf_hash(entry), a.index, cp.size, a.inclusion_path, cp.root)
        sizes.add(cp.size)
    assert len(sizes) < total, "every entry was committed alone: no group commit"
    ledger.close()
    assert assert_verifies(location, key) == {"opened": 1, "receipt": total}


# --- rows of other tables, committed with entries -------------------------------------------

side_tables = sa.MetaData()
side_table = sa.Table(
    "liaison_test_side",
    side_tables,
    sa.Column("name", sa.Text, primary_key=True),
    sa.Column("value", sa.LargeBinary, nullable=False),
)


def side_rows(ledger: Ledger, *rows: tuple[str, bytes]) -> list[SideRows]:
    return [SideRows(ledger.store.insert_statement(side_table), tuple(rows))]


def side_names(backdoor: Backdoor) -> list[str]:
    with backdoor.engine.connect() as conn:
        return [str(n) for n in conn.scalars(sa.text("SELECT name FROM liaison_test_side"))]


def test_side_rows_are_committed_with_their_entry(
    location: str, key: SigningKey, ledgers: Ledgers, backdoor: Backdoor
) -> None:
    # prepare
    ledger = ledgers.open(location, key)
    ledger.store.create_tables(side_tables)

    # execute: one append carrying rows, one submit carrying rows, and an upkeep write
    ledger.append(receipt(0), side=side_rows(ledger, ("a", b"\x00\x01")))
    ledger.submit(receipt(1), side=side_rows(ledger, ("b", b""), ("c", b"x"))).result(WAIT_S)
    ledger.apply(side_rows(ledger, ("d", b"y")))

    # assert: read back with the store's own short path, and from outside
    select = ledger.store.prepare(
        sa.select(side_table.c.value).where(side_table.c.name == sa.bindparam("name")), ("name",)
    )
    assert [bytes(v) for (v,) in ledger.store.fetch(select, ("a",))] == [b"\x00\x01"]
    assert ledger.store.fetch(select, ("zzz",)) == []
    assert sorted(side_names(backdoor)) == ["a", "b", "c", "d"]
    assert ledger.size == 3
    ledger.close()
    assert assert_verifies(location, key) == {"opened": 1, "receipt": 2}


def test_an_entry_whose_side_rows_fail_is_not_written_either(
    location: str, key: SigningKey, ledgers: Ledgers, backdoor: Backdoor
) -> None:
    # prepare: a row whose key is already taken fails the whole transaction
    ledger = ledgers.open(location, key)
    ledger.store.create_tables(side_tables)
    ledger.append(receipt(0), side=side_rows(ledger, ("a", b"1")))
    size = ledger.size

    # execute
    with pytest.raises(LedgerUnavailable, match="cannot write the ledger"):
        ledger.append(receipt(1), side=side_rows(ledger, ("b", b"2"), ("a", b"3")))

    # assert: neither the entry nor any of its rows; the next append works
    assert (ledger.size, backdoor.indices()) == (size, list(range(size)))
    assert side_names(backdoor) == ["a"]
    assert ledger.append(receipt(2), side=side_rows(ledger, ("b", b"4"))).index == size
    assert ledger.healthy is True
    ledger.close()
    assert assert_verifies(location, key) == {"opened": 1, "receipt": 2}


# --- periodic checkpoints -------------------------------------------------------------------


def test_checkpoints_are_signed_while_idle(
    location: str, key: SigningKey, ledgers: Ledgers
) -> None:
    # prepare
    ledger = ledgers.open(location, key, checkpoint_interval_s=0.2)
    ledger.append(receipt(0))
    before = len(ledger.store.checkpoints())

    # execute: nothing is appended for a while
    wait_until(lambda: len(ledger.store.checkpoints()) >= before + 4)

    # assert
    stored = ledger.store.checkpoints()[before:]
    opened = [open_cp(s.note, key) for s in stored]
    assert {cp.size for cp in opened} == {2}
    assert {cp.root for cp in opened} == {ledger.tree.root()}
    times = [cp.time_ms for cp in opened]
    # about one interval apart: neither a burst nor a stalled timer
    assert all(150 <= later - earlier <= 2_000 for earlier, later in pairwise(times))
    ledger.close()
    assert_verifies(location, key)


# --- refusals -------------------------------------------------------------------------------


def test_ledger_of_another_key_is_refused(
    location: str, key: SigningKey, ledgers: Ledgers, backdoor: Backdoor
) -> None:
    # prepare
    ledgers.open(location, key).close()
    other = SigningKey.generate()

    # execute / assert
    expected = (
        f"belongs to key_id '{key.key_id}', not '{other.key_id}'; "
        "give this process its own ledger, or its original key and origin"
    )
    with pytest.raises(LedgerError, match=re.escape(expected)):
        Ledger.open(location, other, ORIGIN)
    assert backdoor.indices() == [0], "a refused open must not write"


def test_ledger_of_another_origin_is_refused(
    location: str, key: SigningKey, ledgers: Ledgers, backdoor: Backdoor
) -> None:
    # prepare
    ledgers.open(location, key).close()

    # execute / assert
    expected = f"belongs to origin '{ORIGIN}', not 'liaison.test/another-log'"
    with pytest.raises(LedgerError, match=re.escape(expected)):
        Ledger.open(location, key, "liaison.test/another-log")
    assert backdoor.indices() == [0]


def test_ledger_with_a_deleted_entry_is_refused(
    location: str, key: SigningKey, ledgers: Ledgers, backdoor: Backdoor
) -> None:
    # prepare
    ledger = ledgers.open(location, key)
    for n in range(5):
        ledger.append(receipt(n))
    ledger.close()
    backdoor.execute(f"DELETE FROM {ENTRIES} WHERE idx = 3")

    # execute / assert
    with pytest.raises(LedgerError, match=r"has no entry 3; it was deleted\. Run `liaison audit"):
        Ledger.open(location, key, ORIGIN)
    assert backdoor.indices() == [0, 1, 2, 4, 5]


@pytest.mark.parametrize("url", ["sqlite:///:memory:", "sqlite://"])
def test_in_memory_sqlite_is_refused(url: str) -> None:
    with pytest.raises(
        ConfigError, match=r"^a ledger needs a file or a server, not an in-memory database$"
    ):
        LedgerStore(url)


def test_missing_ledger_file_is_refused_without_creating_it(tmp_path: Path) -> None:
    # prepare
    path = tmp_path / "nowhere" / "ledger.sqlite3"

    # execute / assert
    with pytest.raises(
        ConfigError, match=rf"^no ledger at {re.escape(str(path))}; check the path$"
    ):
        LedgerStore(path, create=False)
    assert not path.parent.exists()


def test_database_without_ledger_tables_is_refused(location: str) -> None:
    # prepare: an empty SQLite file, or the fresh PostgreSQL database as it is
    if is_sqlite(location):
        Path(location).touch()

    # execute / assert
    with pytest.raises(
        LedgerError,
        match=r"holds no Liaison ledger \(missing liaison_ledger_checkpoints, "
        r"liaison_ledger_entries, liaison_ledger_meta\)$",
    ):
        LedgerStore(location, create=False)
    gc.collect()  # a connection left open would warn here, and warnings are errors


def test_unreachable_server_is_unavailable_and_the_password_is_hidden() -> None:
    url = "postgresql+psycopg://liaison:s3cret@127.0.0.1:1/ledger"
    hidden = "postgresql+psycopg://liaison:***@127.0.0.1:1/ledger"
    with pytest.raises(
        LedgerUnavailable, match=rf"^cannot open the ledger at {re.escape(hidden)} \("
    ) as caught:
        LedgerStore(url)
    assert "s3cret" not in str(caught.value)


# --- failure and recovery -------------------------------------------------------------------


def test_failed_writes_make_the_ledger_unhealthy_until_they_work_again(
    location: str, key: SigningKey, ledgers: Ledgers, backdoor: Backdoor
) -> None:
    # prepare
    ledger = ledgers.open(location, key)
    ledger.append(receipt(0))
    health: list[bool] = []
    ledger.on_health_change = health.append
    backdoor.break_inserts()
    refused = (
        rf"^cannot write the ledger at {re.escape(ledger.store.url)} \(\w+\); "
        r"no query is sent until it can be written$"
    )

    # execute / assert: writes fail, and the health callback hears it once
    for n in (1, 2):
        with pytest.raises(LedgerUnavailable, match=refused):
            ledger.append(receipt(n), timeout_s=WAIT_S)
    assert (ledger.healthy, health, ledger.size) == (False, [False], 2)

    # execute / assert: writes work again
    backdoor.mend_inserts()
    appended = ledger.append(receipt(3), timeout_s=WAIT_S)
    assert appended.index == 2
    assert (ledger.healthy, health) == (True, [False, True])
    ledger.close()
    assert assert_verifies(location, key) == {"opened": 1, "receipt": 2}


def test_rows_committed_by_a_failed_write_are_taken_in(
    location: str, key: SigningKey, ledgers: Ledgers, backdoor: Backdoor
) -> None:
    # prepare: a write fails, but (as when a connection drops mid-commit) its row landed
    ledger = ledgers.open(location, key)
    ledger.append(receipt(0))
    backdoor.break_inserts()
    landed = receipt(1)
    with pytest.raises(LedgerUnavailable):
        ledger.append(landed, timeout_s=WAIT_S)
    backdoor.mend_inserts()
    backdoor.execute(
        f"INSERT INTO {ENTRIES} (idx, leaf_hash, entry) VALUES (2, :leaf, :entry)",
        leaf=leaf_hash(landed),
        entry=landed,
    )

    # execute
    appended = ledger.append(receipt(2), prove=True, timeout_s=WAIT_S)

    # assert: the landed row is in the tree, and the next entry follows it
    assert appended.index == 3
    assert ledger.size == 4
    assert ledger.tree.root() == root_from_leaf_hashes(list(ledger.store.leaf_hashes()))
    assert appended.checkpoint is not None
    cp = open_cp(appended.checkpoint.note, key)
    verify_inclusion(leaf_hash(receipt(2)), 3, cp.size, appended.inclusion_path, cp.root)
    ledger.close()
    assert assert_verifies(location, key) == {"opened": 1, "receipt": 3}


def test_closed_ledger_refuses_appends(tmp_path: Path, key: SigningKey) -> None:
    # prepare
    location = str(tmp_path / "ledger.sqlite3")
    ledger = Ledger.open(location, key, ORIGIN)
    ledger.close()

    # execute
    future = ledger.submit(receipt(0))

    # assert
    closed = r"^the ledger is closed; restart the service$"
    with pytest.raises(LedgerUnavailable, match=closed):
        future.result(timeout=0)
    with pytest.raises(LedgerUnavailable, match=closed):
        ledger.append(receipt(1))
    assert ledger.healthy is False
    ledger.close()  # a second close is harmless
    assert assert_verifies(location, key) == {"opened": 1}


# --- durability -----------------------------------------------------------------------------

READ_ENTRY = """
import sys
import sqlalchemy as sa
engine = sa.create_engine(sys.argv[1])
with engine.connect() as conn:
    entry = conn.execute(
        sa.text("SELECT entry FROM liaison_ledger_entries WHERE idx = :i"), {"i": int(sys.argv[2])}
    ).scalar()
sys.stdout.buffer.write(b"<none>" if entry is None else bytes(entry))
"""


def test_an_appended_entry_is_visible_to_another_process_at_once(
    location: str, key: SigningKey, ledgers: Ledgers
) -> None:
    # prepare
    ledger = ledgers.open(location, key)
    entry = receipt(7)

    # execute
    appended = ledger.append(entry)

    # assert: read while the ledger is still open, from a process of its own
    seen = subprocess.run(
        [sys.executable, "-c", READ_ENTRY, ledger_url(location), str(appended.index)],
        capture_output=True,
        check=True,
        timeout=60,
    )
    assert seen.stdout == entry


def test_sqlite_store_connections_use_wal_and_synchronous_full(
    tmp_path: Path, key: SigningKey, ledgers: Ledgers
) -> None:
    # prepare
    path = tmp_path / "ledger.sqlite3"
    ledger = ledgers.open(str(path), key)
    ledger.append(receipt(0))

    # execute: two connections of the store's pool at once, and one of our own
    engine = ledger.store.engine
    with engine.connect() as first, engine.connect() as second:
        settings = [
            (
                conn.exec_driver_sql("PRAGMA journal_mode").scalar(),
                conn.exec_driver_sql("PRAGMA synchronous").scalar(),
            )
            for conn in (first, second)
        ]
    outside = sqlite3.connect(path)
    try:
        file_mode = outside.execute("PRAGMA journal_mode").fetchone()[0]
    finally:
        outside.close()

    # assert: 2 is FULL
    assert settings == [("wal", 2), ("wal", 2)]
    assert file_mode == "wal"


# --- reproductions of reported bugs ---------------------------------------------------------


def test_a_cancelled_append_does_not_stop_the_writer(
    location: str,
    key: SigningKey,
    ledgers: Ledgers,
    backdoor: Backdoor,
    writer_crashes: list[BaseException | None],
) -> None:
    # prepare: the writer waits on a lock with one entry; a second caller,
    # still queued behind it, gives up (a timeout, a cancelled RPC)
    ledger = ledgers.open(location, key)
    with backdoor.writes_blocked():
        busy = ledger.submit(receipt(0))
        time.sleep(0.1)
        abandoned = ledger.submit(receipt(1))
        assert abandoned.cancel()
        # an entry the writer already works on can no longer be withdrawn
        assert not busy.cancel()

    # execute
    appended = ledger.append(receipt(2), timeout_s=HANG_S)

    # assert: the abandoned entry was dropped, not logged
    assert busy.result(HANG_S).index == 1
    assert appended.index == 2
    assert ledger.healthy is True
    assert writer_crashes == []


@sqlite_only
def test_an_append_racing_close_is_answered(
    location: str, key: SigningKey, ledgers: Ledgers, backdoor: Backdoor
) -> None:
    # prepare: the writer is busy with one entry when close() is called
    ledger = ledgers.open(location, key)
    with backdoor.writes_blocked():
        first = ledger.submit(receipt(0))
        closing = threading.Thread(target=ledger.close)
        closing.start()
        time.sleep(0.2)

        # execute: another caller appends before close() has returned
        late = ledger.submit(receipt(1))
    closing.join(WAIT_S)

    # assert: both callers hear back; the late one that the ledger is closed
    assert first.result(WAIT_S).index == 1
    assert isinstance(late.exception(HANG_S), LedgerUnavailable)


@sqlite_only
def test_the_writer_survives_a_store_that_cannot_be_read(
    location: str,
    key: SigningKey,
    ledgers: Ledgers,
    backdoor: Backdoor,
    writer_crashes: list[BaseException | None],
) -> None:
    # prepare: the entries table is gone (a server that is down fails reads and writes alike)
    ledger = ledgers.open(location, key)
    backdoor.execute(f"ALTER TABLE {ENTRIES} RENAME TO moved_away")
    with pytest.raises(LedgerUnavailable):
        ledger.append(receipt(0), timeout_s=WAIT_S)

    # execute / assert: a second write, now that the writer resyncs before writing
    with pytest.raises(LedgerUnavailable):
        ledger.append(receipt(1), timeout_s=HANG_S)
    backdoor.execute(f"ALTER TABLE moved_away RENAME TO {ENTRIES}")
    assert ledger.append(receipt(2), timeout_s=WAIT_S).index == 1
    assert ledger.healthy is True
    assert writer_crashes == []


@sqlite_only
def test_the_ledger_stays_unhealthy_while_entries_cannot_be_written(
    location: str, key: SigningKey, ledgers: Ledgers, backdoor: Backdoor
) -> None:
    # prepare
    ledger = ledgers.open(location, key, checkpoint_interval_s=0.1)
    health: list[bool] = []
    ledger.on_health_change = health.append
    backdoor.break_inserts()
    with pytest.raises(LedgerUnavailable):
        ledger.append(receipt(0), timeout_s=WAIT_S)
    stored = len(ledger.store.checkpoints())

    # execute: idle checkpoints are stored meanwhile (only entry inserts fail)
    wait_until(lambda: len(ledger.store.checkpoints()) >= stored + 2)

    # assert
    assert health == [False]
    assert ledger.healthy is False


@pytest.mark.postgresql
def test_a_refused_database_leaves_no_connection_open(postgres_url: str) -> None:
    # execute
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ResourceWarning)
        with pytest.raises(LedgerError, match="holds no Liaison ledger"):
            LedgerStore(postgres_url, create=False)
        gc.collect()

    # assert
    leaks = [str(w.message) for w in caught if issubclass(w.category, ResourceWarning)]
    assert leaks == []
