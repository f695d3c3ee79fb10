"""Durable ledger storage through SQLAlchemy: a SQLite file by default, PostgreSQL when configured.

The store is dumb on purpose: it keeps entries by index, their leaf hashes
(so a restart need not rehash every entry) and signed checkpoints. Every
claim it makes is checked against the Merkle tree by the verifier, so a
store edited behind the ledger's back is found out, not believed.

Appends take the short way: statements compiled once for the database
(:class:`Prepared`), run through the driver on one connection the writer
keeps, so a commit costs the database's work and not SQLAlchemy's. The same
transaction may carry rows of other tables in the ledger's database
(:class:`SideRows`): a node commits the replay record of an answer and its
rate charge with the answer's receipt, all or nothing. Small point reads of
those tables (:meth:`LedgerStore.fetch`) use a few reader connections kept
for the purpose. Everything else (checkpoints, probes, reading entries back)
goes through SQLAlchemy Core, where a few hundred microseconds do not matter.

A PostgreSQL ledger may be *shared* by several gateway replicas
(:meth:`LedgerStore.write_shared`): every commit then takes the log's turn
with a transaction-scoped advisory lock, reads what the other replicas
appended since this process last looked, and numbers its own entries from
there. Indices come from the database, never from one process's memory, and
because each turn commits before the lock is released, the committed entries
are always a contiguous prefix of the log.
"""

from __future__ import annotations

import fcntl
import os
import socket
import sqlite3
import threading
import time
import weakref
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import Engine
from sqlalchemy.exc import ArgumentError, SQLAlchemyError
from sqlalchemy.sql.compiler import SQLCompiler

from liaison.errors import ConfigError, LedgerError, LedgerUnavailable

metadata = sa.MetaData()

entries_table = sa.Table(
    "liaison_ledger_entries",
    metadata,
    sa.Column("idx", sa.BigInteger, primary_key=True, autoincrement=False),
    sa.Column("leaf_hash", sa.LargeBinary(32), nullable=False),
    sa.Column("entry", sa.LargeBinary, nullable=False),
)

checkpoints_table = sa.Table(
    "liaison_ledger_checkpoints",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("size", sa.BigInteger, nullable=False),
    sa.Column("time_ms", sa.BigInteger, nullable=False),
    sa.Column("note", sa.Text, nullable=False),
    sa.Index("ix_liaison_ledger_checkpoints_size", "size"),
)

meta_table = sa.Table(
    "liaison_ledger_meta",
    metadata,
    sa.Column("name", sa.String(64), primary_key=True),
    sa.Column("value", sa.Text, nullable=False),
)

READ_BATCH = 20_000
# Reader connections kept for fetch(); more callers at once wait for one.
# Kept well under the engine pool's limit (5 + 10 overflow), which the
# writer's connection, PostgreSQL's lock connection and Core calls share.
MAX_READERS: Final = 6
# The probe's row: never a real index, and deleted in the same transaction.
PROBE_INDEX = -1
# libpq drivers, which take connect_timeout, keepalives and server options.
_LIBPQ_DRIVERS = ("psycopg", "psycopg2")
# PostgreSQL advisory locks (scoped to the database). The writer's session
# lock: taken exclusive by a lone writer, shared by replicas, so a lone writer
# and replicas exclude each other. The append lock: held by one replica's
# transaction at a time, for as long as it numbers, writes and commits.
_WRITER_LOCK_KEY = "hashtext('liaison_ledger_writer')"
APPEND_LOCK = "SELECT pg_advisory_xact_lock(hashtext('liaison_ledger_append'))"
_CREATE_LOCK = "SELECT pg_advisory_xact_lock(hashtext('liaison_ledger_create'))"


@dataclass(frozen=True, slots=True)
class LedgerTimeouts:
    """How long the ledger waits on its database before it calls the database down.

    ``write_s`` bounds every write (a commit, a checkpoint, a probe): one that
    has not returned by then marks the ledger unavailable, and its connection
    is cut so the writer can try again. The others are handed to the database:
    ``connect_s`` as libpq's connect_timeout, ``statement_s`` as PostgreSQL's
    statement_timeout; lock waits (PostgreSQL lock_timeout, SQLite
    busy_timeout) end with ``write_s``.
    """

    connect_s: int = 5
    write_s: float = 5.0
    statement_s: int = 30

    def __post_init__(self) -> None:
        if self.connect_s < 1 or self.write_s <= 0 or self.statement_s < 1:
            raise ConfigError(
                "ledger timeouts must be positive (connect_timeout_s and statement_timeout_s "
                f"at least 1), got {self.connect_s}, {self.write_s}, {self.statement_s}"
            )


def _libpq_arguments(url: sa.URL, timeouts: LedgerTimeouts, *, shared: bool) -> dict[str, Any]:
    """Connection parameters that keep a hung or vanished PostgreSQL from hanging us.

    Anything the URL sets itself wins, except that our server options are
    appended to its ``options``. Shared, the server also ends a session left
    idle inside a transaction past ``write_s``: a replica frozen (not killed)
    while it holds the log's append lock would otherwise stop every replica.
    """
    wanted: dict[str, Any] = {
        "connect_timeout": timeouts.connect_s,
        # A server that vanished (host down, network cut) is noticed by TCP
        # even while no statement runs, and unacknowledged data is dropped.
        "keepalives": 1,
        "keepalives_idle": 10,
        "keepalives_interval": 5,
        "keepalives_count": 3,
        "tcp_user_timeout": max(1000, int(timeouts.write_s * 1000)),
    }
    arguments = {k: v for k, v in wanted.items() if k not in url.query}
    lock_ms = max(1, int(timeouts.write_s * 1000))
    server = f"-c statement_timeout={timeouts.statement_s * 1000} -c lock_timeout={lock_ms}"
    if shared:
        server += f" -c idle_in_transaction_session_timeout={lock_ms}"
    given = url.query.get("options")
    arguments["options"] = f"{given} {server}" if isinstance(given, str) and given else server
    return arguments


def _as_bytes(value: object) -> bytes:
    # A hand edit through the sqlite3 shell stores TEXT; the verifier must
    # report it as an edit, not trip over it.
    if isinstance(value, str):
        return value.encode("utf-8")
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value)
    return str(value).encode("utf-8")


def _first_line(exc: SQLAlchemyError) -> str:
    # SQLAlchemy appends a "Background on this error" link on a second line.
    original = getattr(exc, "orig", None)
    return (str(original or exc).strip().splitlines() or [type(exc).__name__])[0]


@dataclass(frozen=True, slots=True)
class StoredCheckpoint:
    id: int
    size: int
    time_ms: int
    note: str


@dataclass(frozen=True, slots=True)
class Prepared:
    """A statement compiled once for one database: its SQL text, and where each value goes.

    Callers give values in ``names`` order; :meth:`params` lays them out in
    the driver's parameter style (a tuple for ``?`` and ``%s``, a dict for
    ``%(name)s``). Values reach the driver as they are (bytes, int, str, None):
    no SQLAlchemy type processing happens on this path, so give plain values.
    """

    sql: str
    names: tuple[str, ...]
    # For positional styles, the index into the values of each placeholder;
    # None for named styles.
    order: tuple[int, ...] | None

    def params(self, values: Sequence[Any]) -> Sequence[Any] | dict[str, Any]:
        if self.order is None:
            return dict(zip(self.names, values, strict=True))
        if len(values) != len(self.names):
            raise ValueError(f"expected {len(self.names)} values, got {len(values)}")
        return tuple(values[i] for i in self.order)


@dataclass(frozen=True, slots=True)
class SideRows:
    """Rows for another table of the ledger's database, committed with entries or not at all."""

    statement: Prepared
    rows: tuple[tuple[Any, ...], ...]


def ledger_url(location: str | Path) -> str:
    """A SQLAlchemy URL for ``location``: a URL as given, or a path to a SQLite file."""
    text = str(location)
    if "://" in text:
        return text
    return f"sqlite:///{Path(text).resolve()}"


def _durable_sqlite(busy_ms: int) -> Any:
    def on_connect(dbapi_connection: Any, _record: Any) -> None:
        # WAL with synchronous=FULL: a commit that returned survives power loss,
        # and readers (auditors, `liaison audit` on a live file) never block the writer.
        if isinstance(dbapi_connection, sqlite3.Connection):
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=FULL")
            cursor.execute(f"PRAGMA busy_timeout={busy_ms}")
            cursor.close()

    return on_connect


def _release(connection: Any, *, discard: bool = False) -> None:
    """Return a pooled connection, or with ``discard`` close it for good (after a failure)."""
    # A connection that broke meanwhile has nothing more to release.
    with suppress(Exception):
        if discard:
            connection.invalidate()
        else:
            connection.close()


def _cut(dbapi_connection: Any) -> None:
    """Shut down a libpq connection's socket, so a call blocked on it returns an error.

    Only the socket is shut down (never its descriptor closed), from any
    thread: libpq sees the connection end and the driver raises, as it would
    had the server gone away.
    """
    try:
        fd = int(dbapi_connection.fileno())
    except Exception:  # a connection already closed has no socket left to cut
        return
    try:
        cut = socket.socket(fileno=os.dup(fd))
    except OSError:
        return
    try:
        cut.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    finally:
        cut.close()


class LedgerStore:
    """Entries, leaf hashes and checkpoints in three tables."""

    def __init__(
        self,
        location: str | Path,
        *,
        create: bool = True,
        timeouts: LedgerTimeouts | None = None,
        shared: bool = False,
    ) -> None:
        self._writer_lock: Any = None
        # Written by several processes (gateway replicas): see write_shared().
        self.shared = shared
        # The connection appends are written on, kept between appends; only the
        # ledger's committer uses it. Reader connections for fetch(), idle ones
        # in ``_idle_readers``.
        self._writer: Any = None
        self._reader_slots = threading.BoundedSemaphore(MAX_READERS)
        self._idle_readers: list[Any] = []
        self._readers_lock = threading.Lock()
        self._closed = False
        # How many times cut_connections() cut something: a write whose
        # connection was cut was given up on, and is not tried again.
        self._cuts = 0
        # When each fetch() under way began, by a token of its own: a server
        # that stops answering would hold a read forever (see oldest_read).
        self._reads: dict[object, float] = {}
        self.timeouts = timeouts or LedgerTimeouts()
        # Every driver connection the engine opened, so a hung one can be cut.
        self._opened: weakref.WeakSet[Any] = weakref.WeakSet()
        self._opened_lock = threading.Lock()
        url = ledger_url(location)
        try:
            parsed = sa.make_url(url)
        except ArgumentError as exc:
            raise ConfigError(f"ledger location {url!r} is not a database URL or path") from exc
        self.url = parsed.render_as_string(hide_password=True)
        if parsed.get_backend_name() == "sqlite":
            path = Path(parsed.database or "")
            if not parsed.database or str(path) == ":memory:":
                raise ConfigError("a ledger needs a file or a server, not an in-memory database")
            if create:
                path.parent.mkdir(parents=True, exist_ok=True)
            elif not path.is_file():
                raise ConfigError(f"no ledger at {path}; check the path")
        if shared and parsed.get_backend_name() != "postgresql":
            raise ConfigError(
                f"the ledger at {self.url} cannot be shared: several writers need PostgreSQL "
                "(a SQLite file has one writer); point `location` under [ledger] at a "
                "postgresql:// URL, or remove `shared = true`"
            )
        connect_args: dict[str, Any] = {}
        if parsed.get_backend_name() == "postgresql" and parsed.get_driver_name() in _LIBPQ_DRIVERS:
            connect_args = _libpq_arguments(parsed, self.timeouts, shared=shared)
        # A shared ledger's turn reads what others committed after it took the
        # lock, which only READ COMMITTED (each statement its own snapshot) sees,
        # whatever the server's default_transaction_isolation says.
        isolation: dict[str, Any] = {"isolation_level": "READ COMMITTED"} if shared else {}
        try:
            self.engine: Engine = sa.create_engine(
                parsed,
                pool_pre_ping=True,
                # Entries and selectors never appear in exception text or logs.
                hide_parameters=True,
                connect_args=connect_args,
                **isolation,
            )
        except (ArgumentError, ImportError) as exc:
            raise ConfigError(f"cannot use ledger database {self.url} ({exc})") from exc
        if parsed.get_backend_name() == "sqlite":
            busy_ms = max(1, int(self.timeouts.write_s * 1000))
            sa.event.listen(self.engine, "connect", _durable_sqlite(busy_ms))
        if parsed.get_backend_name() == "postgresql":
            sa.event.listen(self.engine, "connect", self._remember)
        dbapi = self.engine.dialect.loaded_dbapi
        # What the driver raises, which the short paths map as SQLAlchemy's errors are.
        self._driver_errors: tuple[type[BaseException], ...] = (SQLAlchemyError, dbapi.Error)
        # sqlite3 reads outside a transaction; other drivers open one per read.
        self._reads_open_transactions = self.engine.dialect.name != "sqlite"
        names = ("idx", "leaf_hash", "entry")
        self._insert_entries = self.prepare(
            entries_table.insert().values({n: sa.bindparam(n) for n in names}), names
        )
        c = entries_table.c
        # From the entry before ``start`` on: it proves the log still reaches
        # as far as the caller has seen (was not cut back behind its back).
        self._since = self.prepare(
            sa.select(c.idx, c.leaf_hash).where(c.idx >= sa.bindparam("start")).order_by(c.idx),
            ("start",),
        )
        # The newest checkpoint by its key (an index scan, however many are stored).
        self._last_checkpoint_time = self.prepare(
            sa.text("SELECT time_ms FROM liaison_ledger_checkpoints ORDER BY id DESC LIMIT 1"), ()
        )
        checkpoint_names = ("size", "time_ms", "note")
        self._insert_checkpoint = self.prepare(
            checkpoints_table.insert().values({n: sa.bindparam(n) for n in checkpoint_names}),
            checkpoint_names,
        )
        try:
            self._prepare(create)
        except BaseException:
            self.engine.dispose()
            raise

    def prepare(self, statement: sa.ClauseElement, names: Sequence[str]) -> Prepared:
        """Compile ``statement`` (bound parameters named ``names``) once for this database."""
        compiled = statement.compile(dialect=self.engine.dialect)
        if not isinstance(compiled, SQLCompiler):
            raise TypeError(f"{type(statement).__name__} does not compile to a SQL statement")
        names = tuple(names)
        if not compiled.positional:
            return Prepared(compiled.string, names, None)
        position = {name: i for i, name in enumerate(names)}
        try:
            order = tuple(position[name] for name in compiled.positiontup or ())
        except KeyError as exc:
            raise ValueError(f"statement binds {exc.args[0]!r}, not one of {names}") from None
        return Prepared(compiled.string, names, order)

    def insert_statement(self, table: sa.Table, *, ignore_existing: bool = False) -> Prepared:
        """An INSERT of every column of ``table``, values in column order.

        With ``ignore_existing``, a row whose key is already stored is skipped
        instead of failing the transaction.
        """
        names = tuple(c.name for c in table.columns)
        values: dict[str, Any] = {n: sa.bindparam(n) for n in names}
        dialect = self.engine.dialect.name
        statement: sa.ClauseElement
        if not ignore_existing:
            statement = table.insert().values(values)
        elif dialect == "sqlite":
            statement = sqlite_insert(table).values(values).on_conflict_do_nothing()
        elif dialect == "postgresql":
            statement = postgresql_insert(table).values(values).on_conflict_do_nothing()
        elif dialect in ("mysql", "mariadb"):
            statement = table.insert().values(values).prefix_with("IGNORE")
        else:
            raise ConfigError(
                f"a ledger on {dialect} cannot hold a node's replay records; "
                "use SQLite or PostgreSQL"
            )
        return self.prepare(statement, names)

    def create_tables(self, tables: sa.MetaData) -> None:
        """Create ``tables`` (a caller's own, such as a node's replay records) beside the ledger."""
        try:
            tables.create_all(self.engine)
        except SQLAlchemyError as exc:
            raise LedgerUnavailable(
                f"cannot prepare the ledger at {self.url} ({_first_line(exc)})"
            ) from exc

    def _prepare(self, create: bool) -> None:
        try:
            if create and self.shared:
                # Replicas starting at once would race to CREATE the same tables
                # (PostgreSQL then refuses one of them): one at a time, and DDL
                # is transactional, so the next one finds them made.
                with self.engine.begin() as conn:
                    conn.execute(sa.text(_CREATE_LOCK))
                    metadata.create_all(conn)
            elif create:
                metadata.create_all(self.engine)
            else:
                missing = [
                    t.name
                    for t in metadata.sorted_tables
                    if not sa.inspect(self.engine).has_table(t.name)
                ]
                if missing:
                    raise LedgerError(
                        f"{self.url} holds no Liaison ledger (missing {', '.join(missing)})"
                    )
        except SQLAlchemyError as exc:
            raise LedgerUnavailable(
                f"cannot open the ledger at {self.url} ({_first_line(exc)})"
            ) from exc

    def lock_writer(self) -> None:
        """Become this ledger's only writer (or, shared, one of its replicas), or raise LedgerError.

        A lone writer keeps the tree in memory and numbers entries itself, so a
        second writer would collide on every append: refuse it at start. Shared
        replicas number entries inside each commit's transaction
        (:meth:`write_shared`) and coexist; a lone writer and replicas exclude
        each other.
        """
        if self._writer_lock is not None:
            return
        backend = self.engine.dialect.name
        if backend == "sqlite":
            path = Path(self.engine.url.database or "").with_suffix(".writer.lock")
            handle = open(path, "a+")  # noqa: SIM115  # held open for the writer's life
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                handle.close()
                raise LedgerError(
                    f"the ledger at {self.url} is already written by another process; "
                    "give each gateway or node its own ledger"
                ) from None
            self._writer_lock = handle
        elif backend == "postgresql":
            take = "pg_try_advisory_lock_shared" if self.shared else "pg_try_advisory_lock"
            try:
                conn = self.engine.connect()
                got = conn.execute(sa.text(f"SELECT {take}({_WRITER_LOCK_KEY})")).scalar()
                conn.commit()
            except SQLAlchemyError as exc:
                raise LedgerUnavailable(
                    f"cannot open the ledger at {self.url} ({_first_line(exc)})"
                ) from exc
            if not got:
                conn.close()
                if self.shared:
                    raise LedgerError(
                        f"the ledger at {self.url} is written by a process that does not share "
                        "it; set `shared = true` under [ledger] in every replica's config and "
                        "restart that one, or give this gateway its own ledger (database)"
                    )
                raise LedgerError(
                    f"the ledger at {self.url} is already written by another process; "
                    "give each gateway or node its own ledger (database), or, for replicas of "
                    "one gateway, set `shared = true` under [ledger] in every replica's config"
                )
            self._writer_lock = conn

    def close(self) -> None:
        self._closed = True
        self._drop_writer(keep=True)
        with self._readers_lock:
            idle, self._idle_readers = self._idle_readers, []
        for reader in idle:
            _release(reader)
        if self._writer_lock is not None:
            self._writer_lock.close()
            self._writer_lock = None
        self.engine.dispose()

    def _writer_connection(self) -> Any:
        if self._writer is None:
            self._writer = self.engine.raw_connection()
        return self._writer.driver_connection

    def _drop_writer(self, *, keep: bool = False) -> None:
        """Let go of the writer's connection: back to the pool (``keep``), or discarded.

        After a failed write the connection is discarded: it may be cut, or hold
        an aborted transaction, and a fresh one costs little next to a failure.
        """
        writer, self._writer = self._writer, None
        if writer is not None:
            _release(writer, discard=not keep)

    def _take_reader(self) -> Any:
        self._reader_slots.acquire()
        with self._readers_lock:
            reader = self._idle_readers.pop() if self._idle_readers else None
        if reader is not None:
            return reader
        try:
            return self.engine.raw_connection()
        except BaseException:
            self._reader_slots.release()
            raise

    def _give_back(self, reader: Any, *, broken: bool) -> None:
        try:
            if broken or self._closed:
                _release(reader, discard=broken)
            else:
                with self._readers_lock:
                    self._idle_readers.append(reader)
        finally:
            self._reader_slots.release()

    def oldest_read(self) -> float | None:
        """When the longest-running fetch() began (``time.monotonic()``), or None.

        No driver timeout ends a read from a server that stopped answering with
        its connection open; the ledger's watchdog cuts the connections of a
        read that overran the write timeout, as it does for a write.
        """
        # list() copies the values in one step under the GIL: no lock needed.
        return min(list(self._reads.values()), default=None)

    def fetch(self, statement: Prepared, values: Sequence[Any]) -> list[tuple[Any, ...]]:
        """The rows ``statement`` selects for ``values``, read at once from committed data."""
        token = object()
        # One dict operation each, atomic under the GIL.
        self._reads[token] = time.monotonic()
        try:
            return self._fetch(statement, values)
        finally:
            del self._reads[token]

    def _fetch(self, statement: Prepared, values: Sequence[Any]) -> list[tuple[Any, ...]]:
        try:
            reader = self._take_reader()
        except self._driver_errors as exc:
            raise LedgerUnavailable(
                f"cannot read the ledger at {self.url} ({type(exc).__name__})"
            ) from exc
        broken = True
        try:
            conn = reader.driver_connection
            cursor = conn.cursor()
            try:
                cursor.execute(statement.sql, statement.params(values))
                found = [tuple(row) for row in cursor.fetchall()]
            finally:
                cursor.close()
            if self._reads_open_transactions:
                conn.rollback()
            broken = False
        except self._driver_errors as exc:
            raise LedgerUnavailable(
                f"cannot read the ledger at {self.url} ({type(exc).__name__})"
            ) from exc
        finally:
            self._give_back(reader, broken=broken)
        return found

    def _remember(self, dbapi_connection: Any, _record: Any) -> None:
        with self._opened_lock:
            self._opened.add(dbapi_connection)

    def cut_connections(self) -> int:
        """Cut every open PostgreSQL connection but the writer's lock; return how many.

        For a database that stopped answering with the connection still open:
        no timeout of libpq's ends a statement that waits for a reply that
        never comes (the peer's kernel still acknowledges every byte), so a
        write stuck past ``timeouts.write_s`` is ended from outside. Other
        backends are left alone (SQLite's waits end with its busy_timeout).
        """
        if self.engine.dialect.name != "postgresql":
            return 0
        keep = None
        if self._writer_lock is not None:
            try:
                keep = self._writer_lock.connection.dbapi_connection
            except SQLAlchemyError:  # the lock's connection is already gone
                keep = None
        with self._opened_lock:
            opened = [c for c in self._opened if c is not keep]
        if opened:
            self._cuts += 1
        for dbapi_connection in opened:
            _cut(dbapi_connection)
        return len(opened)

    @contextmanager
    def _reading(self) -> Iterator[sa.Connection]:
        """A connection whose database errors become LedgerUnavailable."""
        try:
            with self.engine.connect() as conn:
                yield conn
        except SQLAlchemyError as exc:
            raise LedgerUnavailable(
                f"cannot read the ledger at {self.url} ({_first_line(exc)})"
            ) from exc

    def size(self) -> int:
        with self._reading() as conn:
            top = conn.execute(sa.select(sa.func.max(entries_table.c.idx))).scalar()
        return 0 if top is None else int(top) + 1

    def probe(self) -> None:
        """Raise LedgerUnavailable unless an entry can be written now (nothing is kept).

        The probe commits: it inserts a row into the entries table and deletes
        it in one transaction, so the commit must reach the disk (the WAL and
        its fsync) as an append's does. A rolled-back insert proves nothing:
        it never leaves the page cache, so it succeeds on a full or read-only
        disk, and health would flap between "writable" and "failed".
        """
        try:
            with self.engine.begin() as conn:
                conn.execute(
                    entries_table.insert().values(idx=PROBE_INDEX, leaf_hash=b"\0" * 32, entry=b"")
                )
                conn.execute(entries_table.delete().where(entries_table.c.idx == PROBE_INDEX))
        except SQLAlchemyError as exc:
            raise LedgerUnavailable(
                f"cannot write the ledger at {self.url} ({_first_line(exc)})"
            ) from exc

    def append(self, start: int, rows: Sequence[tuple[bytes, bytes]]) -> None:
        """Store ``rows`` of (leaf hash, entry) at ``start``...; durable when this returns."""
        self.write(start, rows, ())

    def write(
        self, start: int, rows: Sequence[tuple[bytes, bytes]], side: Sequence[SideRows]
    ) -> None:
        """Store ``rows`` at ``start``... and ``side`` in one transaction, durable on return.

        Only one thread may write at a time (the ledger's committer).
        """
        if not rows and not any(s.rows for s in side):
            return
        entries = [
            self._insert_entries.params((start + i, leaf, entry))
            for i, (leaf, entry) in enumerate(rows)
        ]
        # A kept connection to a server may have gone stale since the last
        # write (a server restarted, an earlier write's connection cut): as a
        # pool's pre-ping would, try once more on a fresh one, which is safe
        # before COMMIT is sent. Not when this very write was cut (given up
        # on: the ledger probes), nor on SQLite, which has no connection to lose.
        cuts = self._cuts
        for retry in (self.engine.dialect.name != "sqlite", False):
            kept = self._writer is not None
            try:
                conn = self._writer_connection()
                cursor = conn.cursor()
                try:
                    if entries:
                        cursor.executemany(self._insert_entries.sql, entries)
                    for extra in side:
                        if extra.rows:
                            params = extra.statement.params
                            cursor.executemany(extra.statement.sql, [params(r) for r in extra.rows])
                finally:
                    cursor.close()
            except self._driver_errors as exc:
                self._drop_writer()
                if retry and kept and self._cuts == cuts:
                    continue
                raise self._write_failed(exc) from exc
            try:
                conn.commit()
            except self._driver_errors as exc:
                self._drop_writer()
                raise self._write_failed(exc) from exc
            return

    def _write_failed(self, exc: BaseException) -> LedgerUnavailable:
        return LedgerUnavailable(
            f"cannot write the ledger at {self.url} ({type(exc).__name__}); "
            "no query is sent until it can be written"
        )

    def write_shared(
        self, known: int, rows: Sequence[tuple[bytes, bytes]], side: Sequence[SideRows]
    ) -> list[bytes]:
        """Store ``rows`` (and ``side``) right after every entry stored so far, in one turn.

        For a shared ledger: in one transaction, take the log's append lock,
        read the leaf hashes other writers stored from index ``known`` on
        (what this process's tree lacks), store ``rows`` from the index after
        them, and commit. Returns those leaf hashes: the caller's entries start
        at ``known + len(returned)``. Durable on return. Only one thread of a
        process may write at a time (the ledger's committer).
        """

        def body(cursor: Any, missed: list[bytes]) -> None:
            start = known + len(missed)
            if rows:
                cursor.executemany(
                    self._insert_entries.sql,
                    [
                        self._insert_entries.params((start + i, leaf, entry))
                        for i, (leaf, entry) in enumerate(rows)
                    ],
                )
            for extra in side:
                if extra.rows:
                    params = extra.statement.params
                    cursor.executemany(extra.statement.sql, [params(r) for r in extra.rows])

        return self._turn(known, body, "write the ledger")

    def add_checkpoint_shared(
        self, known: int, sign: Callable[[list[bytes], int | None], tuple[int, int, str]]
    ) -> list[bytes]:
        """Store a checkpoint of a shared ledger in a turn of its own; return the leaves read.

        ``sign`` is called under the log's append lock with the leaf hashes
        stored from ``known`` on and the time of the newest stored checkpoint
        (None if there is none); it returns the (size, time in ms, note) to
        store. Sizes and times of stored checkpoints so never go backwards,
        whichever replica signs.
        """

        def body(cursor: Any, missed: list[bytes]) -> None:
            cursor.execute(self._last_checkpoint_time.sql, self._last_checkpoint_time.params(()))
            last = cursor.fetchone()
            size, time_ms, note = sign(missed, None if last is None else int(last[0]))
            cursor.execute(
                self._insert_checkpoint.sql, self._insert_checkpoint.params((size, time_ms, note))
            )

        return self._turn(known, body, "write a checkpoint to the ledger")

    def _turn(self, known: int, body: Callable[[Any, list[bytes]], None], what: str) -> list[bytes]:
        """Run ``body`` in one transaction holding the log's append lock; commit; return the leaves.

        As :meth:`write` does, a stale kept connection is retried once on a fresh
        one (safe before COMMIT is sent: nothing of the turn is kept).
        """
        if not self.shared:
            raise LedgerError(f"the ledger at {self.url} is not opened as shared")
        cuts = self._cuts
        for retry in (True, False):
            kept = self._writer is not None
            try:
                conn = self._writer_connection()
                cursor = conn.cursor()
                try:
                    cursor.execute(APPEND_LOCK)
                    # A statement of its own, after the lock is granted: its
                    # snapshot (READ COMMITTED) holds every turn committed before.
                    cursor.execute(self._since.sql, self._since.params((max(known - 1, 0),)))
                    missed = self._missed(known, cursor.fetchall())
                    body(cursor, missed)
                finally:
                    cursor.close()
            except self._driver_errors as exc:
                self._drop_writer()
                if retry and kept and self._cuts == cuts:
                    continue
                raise LedgerUnavailable(
                    f"cannot {what} at {self.url} ({type(exc).__name__}); "
                    "no query is sent until it can be written"
                ) from exc
            except BaseException:
                # A log cut back, or a signer that failed: nothing of the turn is kept.
                self._drop_writer()
                raise
            try:
                conn.commit()
            except self._driver_errors as exc:
                self._drop_writer()
                raise LedgerUnavailable(
                    f"cannot {what} at {self.url} ({type(exc).__name__}); "
                    "no query is sent until it can be written"
                ) from exc
            return missed
        raise AssertionError("unreachable: the last attempt returns or raises")

    def _missed(self, known: int, found: Sequence[Sequence[Any]]) -> list[bytes]:
        """Leaf hashes of entries ``known``..., from (index, leaf) rows from ``known - 1`` on."""
        rows = iter(found)
        if known > 0:
            first = next(rows, None)
            if first is None or int(first[0]) != known - 1:
                raise LedgerError(
                    f"the ledger at {self.url} no longer holds entry {known - 1}, which this "
                    "process wrote or read: it was cut back. Stop every replica and run "
                    "`liaison audit verify`"
                )
        leaves = []
        for expected, (idx, leaf) in enumerate(rows, start=known):
            if int(idx) != expected:
                raise LedgerError(
                    f"the ledger at {self.url} has no entry {expected}; it was deleted. "
                    "Stop every replica and run `liaison audit verify`"
                )
            leaves.append(_as_bytes(leaf))
        return leaves

    def add_checkpoint(self, size: int, time_ms: int, note: str) -> None:
        try:
            with self.engine.begin() as conn:
                conn.execute(
                    checkpoints_table.insert().values(size=size, time_ms=time_ms, note=note)
                )
        except SQLAlchemyError as exc:
            raise LedgerUnavailable(
                f"cannot write a checkpoint to the ledger at {self.url} ({type(exc).__name__})"
            ) from exc

    def rows(self, start: int = 0, end: int | None = None) -> Iterator[tuple[int, bytes, bytes]]:
        """(index, stored leaf hash, entry) in index order, read in batches."""
        c = entries_table.c
        position = start
        with self._reading() as conn:
            while True:
                query = (
                    sa.select(c.idx, c.leaf_hash, c.entry)
                    .where(c.idx >= position)
                    .order_by(c.idx)
                    .limit(READ_BATCH)
                )
                if end is not None:
                    query = query.where(c.idx < end)
                batch = conn.execute(query).all()
                for idx, leaf, entry in batch:
                    yield int(idx), _as_bytes(leaf), _as_bytes(entry)
                if len(batch) < READ_BATCH:
                    return
                position = int(batch[-1][0]) + 1

    def leaf_hashes(self) -> Iterator[bytes]:
        """Stored leaf hashes in order; raises if an index is missing."""
        c = entries_table.c
        expected = 0
        with self._reading() as conn:
            while True:
                batch = conn.execute(
                    sa.select(c.idx, c.leaf_hash)
                    .where(c.idx >= expected)
                    .order_by(c.idx)
                    .limit(READ_BATCH)
                ).all()
                for idx, leaf in batch:
                    leaf = _as_bytes(leaf)
                    if idx != expected:
                        raise LedgerError(
                            f"ledger {self.url} has no entry {expected}; it was deleted. "
                            "Run `liaison audit verify` and do not append until it is explained"
                        )
                    expected += 1
                    yield leaf
                if len(batch) < READ_BATCH:
                    return

    def entry(self, index: int) -> bytes | None:
        with self._reading() as conn:
            value = conn.execute(
                sa.select(entries_table.c.entry).where(entries_table.c.idx == index)
            ).scalar()
        return None if value is None else _as_bytes(value)

    def checkpoints(self) -> list[StoredCheckpoint]:
        c = checkpoints_table.c
        with self._reading() as conn:
            rows = conn.execute(sa.select(c.id, c.size, c.time_ms, c.note).order_by(c.id)).all()
        return [StoredCheckpoint(int(i), int(s), int(t), str(n)) for i, s, t, n in rows]

    def checkpoint_for(self, *, size: int | None, at_least: int) -> StoredCheckpoint | None:
        """The newest checkpoint of exactly ``size``, or else the largest covering ``at_least``."""
        c = checkpoints_table.c
        wanted = c.size == size if size is not None else c.size >= at_least
        query = (
            sa.select(c.id, c.size, c.time_ms, c.note)
            .where(wanted)
            .order_by(c.size.desc(), c.time_ms.desc(), c.id.desc())
            .limit(1)
        )
        with self._reading() as conn:
            row = conn.execute(query).first()
        if row is None:
            return None
        return StoredCheckpoint(int(row[0]), int(row[1]), int(row[2]), str(row[3]))

    def get_meta(self, name: str) -> str | None:
        with self._reading() as conn:
            value = conn.execute(
                sa.select(meta_table.c.value).where(meta_table.c.name == name)
            ).scalar()
        return None if value is None else str(value)

    def set_meta(self, name: str, value: str) -> None:
        try:
            with self.engine.begin() as conn:
                if self.engine.dialect.name == "postgresql":
                    # One statement: replicas starting at once do not collide.
                    upsert = postgresql_insert(meta_table).values(name=name, value=value)
                    conn.execute(
                        upsert.on_conflict_do_update(
                            index_elements=[meta_table.c.name], set_={"value": value}
                        )
                    )
                    return
                conn.execute(meta_table.delete().where(meta_table.c.name == name))
                conn.execute(meta_table.insert().values(name=name, value=value))
        except SQLAlchemyError as exc:
            raise LedgerUnavailable(
                f"cannot write the ledger at {self.url} ({_first_line(exc)})"
            ) from exc

    def claim_meta(self, name: str, value: str) -> str:
        """Store ``value`` under ``name`` unless one is stored; return the stored one.

        Atomic on PostgreSQL, for replicas starting at once: the first wins and
        everyone compares with what it stored.
        """
        if self.engine.dialect.name != "postgresql":
            stored = self.get_meta(name)
            if stored is None:
                self.set_meta(name, value)
                return value
            return stored
        try:
            with self.engine.begin() as conn:
                conn.execute(
                    postgresql_insert(meta_table)
                    .values(name=name, value=value)
                    .on_conflict_do_nothing()
                )
                stored = conn.execute(
                    sa.select(meta_table.c.value).where(meta_table.c.name == name)
                ).scalar()
        except SQLAlchemyError as exc:
            raise LedgerUnavailable(
                f"cannot write the ledger at {self.url} ({_first_line(exc)})"
            ) from exc
        return value if stored is None else str(stored)
