"""Whether the agency database still answers the node: a probe on a fresh connection.

Pooled connections hide a database going away: a SQLite file removed or made
unreadable stays readable through the descriptor a pooled connection holds,
and a server that stopped answering is only found by the query that hangs on
it. So every ``interval_s`` (and at once after a query failed) the probe opens
a new connection, reads one row of every mapped table, and closes it; it
fails when that errors or does not finish within ``timeout_s``. While it
fails, it looks again every ``retry_s``, so recovery shows within a second.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable
from typing import Any
from urllib.parse import quote

import sqlalchemy as sa
from sqlalchemy.engine import URL, Engine, make_url
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.pool import NullPool

from liaison.databases import scrub

log = logging.getLogger("liaison.node")

DEFAULT_INTERVAL_S = 5.0
DEFAULT_TIMEOUT_S = 3.0
# While the database is down, how often to look again: recovery shows at once.
DEFAULT_RETRY_S = 1.0


def probe_engine(url: URL, timeout_s: float) -> Engine:
    """An engine whose every connection is new, bounded in time, and never creates a file."""
    connect_args: dict[str, Any] = {}
    backend = url.get_backend_name()
    # The probe's own deadline (the thread join) decides "no answer within
    # timeout_s"; the driver's limits are only a backstop that ends a hung
    # probe thread later, so they must not race the deadline.
    backstop_s = 2 * timeout_s
    seconds = max(1, round(backstop_s))
    if backend == "sqlite":
        if url.database and url.database != ":memory:":
            # Read-only URI mode: a missing file is an error, not a new empty database.
            path = quote(url.database, safe="/")
            url = url.set(database=f"file:{path}", query={"mode": "ro", "uri": "true"})
        connect_args["timeout"] = timeout_s
    elif backend == "postgresql":
        connect_args["connect_timeout"] = seconds
        # Added to the URL's own options (connect_args would replace them): an
        # agency's ``?options=-csearch_path%3Devidencia`` must still hold, or
        # unqualified table names fail every probe.
        limit = f"-c statement_timeout={int(backstop_s * 1000)}"
        connect_args["options"] = " ".join([*_query_values(url, "options"), limit])
    elif backend in ("mysql", "mariadb"):
        connect_args.update(connect_timeout=seconds, read_timeout=seconds)
    return sa.create_engine(
        url, poolclass=NullPool, hide_parameters=True, connect_args=connect_args
    )


def _query_values(url: URL, key: str) -> list[str]:
    """The values of ``key`` in ``url``'s query (a key may repeat), in order."""
    value = url.query.get(key)
    if value is None:
        return []
    return [value] if isinstance(value, str) else list(value)


class DatabaseProbe:
    """Tells ``on_change`` True/False whenever the database starts or stops answering."""

    def __init__(
        self,
        url: str | URL,
        tables: Iterable[sa.FromClause],
        on_change: Callable[[bool], None],
        *,
        interval_s: float = DEFAULT_INTERVAL_S,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        retry_s: float = DEFAULT_RETRY_S,
    ) -> None:
        self.engine = probe_engine(make_url(url), timeout_s)
        self.statements = [sa.select(sa.literal(1)).select_from(t).limit(1) for t in tables]
        self.on_change = on_change
        self.interval_s = interval_s
        self.timeout_s = timeout_s
        self.retry_s = retry_s
        self.healthy = True
        self._kick = threading.Event()
        self._stop = threading.Event()
        # A probe that hung past its timeout; no second one starts beside it.
        self._stuck: threading.Thread | None = None
        self._thread = threading.Thread(target=self._run, name="db-probe", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def kick(self) -> None:
        """Probe now (a query just failed), not at the next interval."""
        self._kick.set()

    def close(self) -> None:
        self._stop.set()
        self._kick.set()
        if self._thread.is_alive():
            self._thread.join(self.timeout_s + 1)
        self.engine.dispose()

    def _run(self) -> None:
        while not self._stop.is_set():
            self._kick.wait(self.interval_s if self.healthy else self.retry_s)
            self._kick.clear()
            if self._stop.is_set():
                return
            self._report(self.check())

    def check(self) -> str:
        """ "" if the database answered within the timeout, else why not."""
        if self._stuck is not None:
            if self._stuck.is_alive():
                return f"the previous probe has not returned after {self.timeout_s:g} s"
            self._stuck = None
        outcome: list[str] = []
        worker = threading.Thread(target=self._query, args=(outcome,), daemon=True)
        worker.start()
        worker.join(self.timeout_s)
        if worker.is_alive():
            self._stuck = worker
            return f"no answer within {self.timeout_s:g} s"
        return outcome[0] if outcome else "the probe stopped unexpectedly"

    def _query(self, outcome: list[str]) -> None:
        try:
            with self.engine.connect() as conn:
                for statement in self.statements:
                    conn.execute(statement).fetchall()
        except Exception as exc:  # drivers may raise outside SQLAlchemy's tree
            outcome.append(_reason(exc, self.engine.url))
            return
        outcome.append("")

    def _report(self, failure: str) -> None:
        healthy = not failure
        if healthy == self.healthy:
            return
        self.healthy = healthy
        if healthy:
            log.warning("agency database answers again")
        else:
            log.error("agency database does not answer", extra={"reason": failure})
        self.on_change(healthy)


def _reason(exc: BaseException, url: URL) -> str:
    """Why a probe failed, in the driver's words (its first line), without ``url``'s secrets.

    The probe asks for no value that could leak, but a driver may quote the
    connection's password (libpq echoes a bad ``options`` or ``password`` query).
    """
    orig = getattr(exc, "orig", None) if isinstance(exc, SQLAlchemyError) else None
    cause = orig if isinstance(orig, BaseException) else exc
    lines = scrub(str(cause), url).strip().splitlines()
    return f"{type(cause).__name__}: {lines[0]}" if lines else type(cause).__name__
