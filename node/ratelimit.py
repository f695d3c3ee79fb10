"""Rate limits of permits, per investigator and per agency, kept durably.

A query's cost is the number of selector values it carries (an ``in`` with
50 hashes costs 50), so splitting one large query into many small ones, or
folding many into one, costs the same.

Usage is counted in memory, one running total per rule, requester scope and
window, and made durable with the answer it paid for: :meth:`RateLedger.record`
gives the rows to commit with the answer's receipt. A charge is counted from
the moment it is made (so concurrent queries cannot all pass the same last
free slot), and taken back if no answer leaves (:meth:`RateLedger.refund`),
in which case nothing of it was ever written. After a restart the totals are
read back from the committed rows as each scope is first charged; the node is
the ledger's only writer, so nothing else adds to them meanwhile.

The rows live in the receipts ledger's database (they say who asked how
much, and when: owner-only, like the rest of the node's state). Rows from an
earlier release's ``state/rates.sqlite3`` are imported once and the file
removed.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

import sqlalchemy as sa

from liaison.errors import ConfigError, LedgerUnavailable, StateUnavailable
from liaison.ledger.log import Ledger
from liaison.ledger.store import SideRows
from liaison.messages import Requester
from node.replay import as_text, remove_sqlite_file, stored_text
from policies.model import RateLimit, RateScope

log = logging.getLogger("liaison.node")

LEGACY_FILE = "rates.sqlite3"
# Usage older than this is purged (the longest window a policy may set is a day).
KEEP_MS = 8 * 86_400 * 1000

rate_tables = sa.MetaData()

usage = sa.Table(
    "liaison_node_rate_usage",
    rate_tables,
    # UTF-8 bytes (node.replay.stored_text): a scope key holds a NUL between
    # issuer and subject, which PostgreSQL text refuses.
    sa.Column("rule_id", sa.LargeBinary, nullable=False),
    sa.Column("scope_key", sa.LargeBinary, nullable=False),
    sa.Column("at_ms", sa.BigInteger, nullable=False),
    sa.Column("cost", sa.BigInteger, nullable=False),
    sa.Index("ix_liaison_node_rate_usage_key", "rule_id", "scope_key", "at_ms"),
    sa.Index("ix_liaison_node_rate_usage_at", "at_ms"),
)


def scope_key(limit: RateLimit, requester: Requester) -> str:
    if limit.scope is RateScope.INVESTIGATOR:
        return f"investigator:{requester.issuer}\x00{requester.subject}"
    return f"agency:{requester.agency}"


@dataclass(slots=True)
class _Window:
    """One rule's usage by one scope within one window: (at_ms, cost) oldest first, and sum."""

    window_ms: int
    spent: deque[tuple[int, int]] = field(default_factory=deque)
    total: int = 0

    def used(self, now_ms: int) -> int:
        since = now_ms - self.window_ms
        spent = self.spent
        while spent and spent[0][0] <= since:
            self.total -= spent.popleft()[1]
        return self.total

    def add(self, at_ms: int, cost: int) -> None:
        self.spent.append((at_ms, cost))
        self.total += cost

    def remove(self, at_ms: int, cost: int) -> None:
        # The newest matching charge: refunds come soon after their charge.
        for i in range(len(self.spent) - 1, -1, -1):
            if self.spent[i] == (at_ms, cost):
                del self.spent[i]
                self.total -= cost
                return

    def wait_s(self, now_ms: int, excess: int) -> int:
        """Seconds until enough usage leaves the window to make room for ``excess``."""
        freed = 0
        for at_ms, cost in self.spent:
            freed += cost
            if freed >= excess:
                return max(1, -(-(at_ms + self.window_ms - now_ms) // 1000))
        return self.window_ms // 1000


@dataclass(frozen=True, slots=True)
class Charge:
    """One charge against every limit of a rule, to be recorded with its answer or refunded."""

    rule_id: str
    scope_keys: tuple[str, ...]
    windows: tuple[_Window, ...]
    cost: int
    at_ms: int


class RateLedger:
    def __init__(self, receipts: Ledger, *, legacy: Path | None = None) -> None:
        store = receipts.store
        store.create_tables(rate_tables)
        self._receipts = receipts
        self._store = store
        self._insert = store.insert_statement(usage)
        c = usage.c
        self._load = store.prepare(
            sa.select(c.at_ms, c.cost)
            .where(
                c.rule_id == sa.bindparam("rule_id"),
                c.scope_key == sa.bindparam("scope_key"),
                c.at_ms > sa.bindparam("since"),
            )
            .order_by(c.at_ms),
            ("rule_id", "scope_key", "since"),
        )
        self._purge = store.prepare(
            usage.delete().where(c.at_ms < sa.bindparam("before")), ("before",)
        )
        self._windows: dict[tuple[str, str, int], _Window] = {}
        self._lock = threading.Lock()
        if legacy is not None and legacy.exists():
            self._import_legacy(legacy)

    def charge(
        self,
        rule_id: str,
        limits: tuple[RateLimit, ...],
        requester: Requester,
        cost: int,
        now_ms: int,
    ) -> Charge | str:
        """Count ``cost`` against every limit; return the charge, or why a limit would be exceeded.

        Nothing is counted when any limit would be exceeded. A charge counts
        at once; record it with the answer, or refund it.
        """
        if not limits:
            return Charge(rule_id, (), (), cost, now_ms)
        with self._lock:
            keys = tuple(scope_key(limit, requester) for limit in limits)
            try:
                windows = tuple(
                    self._window(rule_id, key, limit, now_ms)
                    for key, limit in zip(keys, limits, strict=True)
                )
            except LedgerUnavailable as exc:
                # Where the database is and what it said are for the operator's log.
                log.error("rate usage cannot be read", extra={"error": str(exc)})
                raise StateUnavailable(
                    "this node cannot read its rate-limit usage right now, so it answers "
                    "nothing; nothing was released or charged; try again later (the node's "
                    "operator sees why in its log)"
                ) from exc
            for window, limit in zip(windows, limits, strict=True):
                used = window.used(now_ms)
                if used + cost > limit.amount:
                    wait_s = window.wait_s(now_ms, used + cost - limit.amount)
                    return (
                        f"rate limit of rule {rule_id} reached: {limit} "
                        f"({used} used, this query costs {cost}); "
                        + (
                            f"try again in {wait_s} s"
                            if cost <= limit.amount
                            else f"this query alone exceeds it; ask for at most {limit.amount}"
                        )
                    )
            for window in windows:
                window.add(now_ms, cost)
            return Charge(rule_id, keys, windows, cost, now_ms)

    def _window(self, rule_id: str, key: str, limit: RateLimit, now_ms: int) -> _Window:
        """The running total of ``limit``, read back from committed usage when first asked for.

        Called under the lock. Committed usage is all there is to read: charges
        not yet committed are made in this process, after its first read of
        the scope (a policy's limits are fixed while the node runs).
        """
        window_ms = limit.window_s * 1000
        found = self._windows.get((rule_id, key, window_ms))
        if found is None:
            found = _Window(window_ms)
            stored = (stored_text(rule_id), stored_text(key), now_ms - window_ms)
            for at_ms, cost in self._store.fetch(self._load, stored):
                found.add(int(at_ms), int(cost))
            self._windows[(rule_id, key, window_ms)] = found
        return found

    def record(self, charges: list[Charge]) -> list[SideRows]:
        """The usage rows of ``charges``, to commit with the answer they paid for."""
        rows = tuple(
            (stored_text(c.rule_id), stored_text(key), c.at_ms, c.cost)
            for c in charges
            for key in dict.fromkeys(c.scope_keys)
        )
        return [SideRows(self._insert, rows)] if rows else []

    def refund(self, charge: Charge) -> None:
        """Take back a charge whose answer was never given (nothing of it was committed)."""
        with self._lock:
            for window in charge.windows:
                window.remove(charge.at_ms, charge.cost)

    def purge(self, now_ms: int) -> None:
        """Delete usage past every window; forget idle scopes."""
        self._receipts.apply([SideRows(self._purge, ((now_ms - KEEP_MS,),))])
        with self._lock:
            idle = [k for k, w in self._windows.items() if w.used(now_ms) == 0]
            for k in idle:
                del self._windows[k]

    def close(self) -> None:
        """Nothing of its own to release: usage lives in the receipts ledger."""

    def _import_legacy(self, path: Path) -> None:
        """Take in the usage of a ``rates.sqlite3`` from an earlier release, then remove it."""
        try:
            db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
            try:
                rows = db.execute("SELECT rule_id, scope_key, at_ms, cost FROM usage").fetchall()
            finally:
                db.close()
        except sqlite3.Error as exc:
            raise ConfigError(
                f"cannot read the rate usage of an earlier release at {path} ({exc}); "
                "repair or remove the file (removing it forgets recent usage)"
            ) from exc
        self._receipts.apply(
            [
                SideRows(
                    self._insert,
                    tuple(
                        (stored_text(as_text(rule)), stored_text(as_text(key)), at_ms, cost)
                        for rule, key, at_ms, cost in rows
                    ),
                )
            ]
        )
        remove_sqlite_file(path)
