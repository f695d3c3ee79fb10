"""Rate limits of permits, per investigator and per agency, kept durably.

A query's cost is the number of selector values it carries (an ``in`` with
50 hashes costs 50), so splitting one large query into many small ones, or
folding many into one, costs the same.
"""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

from liaison.messages import Requester
from node.replay import private_dir, private_file
from policies.model import RateLimit, RateScope

_SCHEMA = """
CREATE TABLE IF NOT EXISTS usage (
    rule_id TEXT NOT NULL,
    scope_key TEXT NOT NULL,
    at_ms INTEGER NOT NULL,
    cost INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS usage_by_key ON usage (rule_id, scope_key, at_ms);
"""


def scope_key(limit: RateLimit, requester: Requester) -> str:
    if limit.scope is RateScope.INVESTIGATOR:
        return f"investigator:{requester.issuer}\x00{requester.subject}"
    return f"agency:{requester.agency}"


class RateLedger:
    def __init__(self, path: Path) -> None:
        # Who asked how much, and when: owner-only, like the rest of the node's state.
        private_dir(path.parent)
        private_file(path)
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode = WAL")
        # NORMAL in WAL mode survives a process crash; a power cut may lose the
        # last moments of usage, which errs towards the requester, never
        # towards releasing data. The replay guard, which must not err, keeps FULL.
        self._db.execute("PRAGMA synchronous = NORMAL")
        self._db.executescript(_SCHEMA)
        private_file(path)  # the -wal and -shm now exist
        self._lock = threading.Lock()

    def charge(
        self,
        rule_id: str,
        limits: tuple[RateLimit, ...],
        requester: Requester,
        cost: int,
        now_ms: int,
    ) -> str:
        """Record ``cost`` against every limit; return "" or why a limit would be exceeded.

        Nothing is recorded when any limit would be exceeded.
        """
        if not limits:
            return ""
        with self._lock:
            for limit in limits:
                key = scope_key(limit, requester)
                since = now_ms - limit.window_s * 1000
                (used,) = self._db.execute(
                    "SELECT COALESCE(SUM(cost), 0) FROM usage "
                    "WHERE rule_id = ? AND scope_key = ? AND at_ms > ?",
                    (rule_id, key, since),
                ).fetchone()
                if used + cost > limit.amount:
                    wait_s = self._wait_s(rule_id, key, since, used + cost - limit.amount, limit)
                    return (
                        f"rate limit of rule {rule_id} reached: {limit} "
                        f"({used} used, this query costs {cost}); "
                        + (
                            f"try again in {wait_s} s"
                            if cost <= limit.amount
                            else f"this query alone exceeds it; ask for at most {limit.amount}"
                        )
                    )
            self._db.execute("BEGIN")
            for limit in limits:
                self._db.execute(
                    "INSERT INTO usage (rule_id, scope_key, at_ms, cost) VALUES (?, ?, ?, ?)",
                    (rule_id, scope_key(limit, requester), now_ms, cost),
                )
            self._db.execute("COMMIT")
            return ""

    def refund(
        self,
        rule_id: str,
        limits: tuple[RateLimit, ...],
        requester: Requester,
        cost: int,
        charged_at_ms: int,
    ) -> None:
        """Take back one charge made by :meth:`charge` for an answer that was never given."""
        if not limits:
            return
        with self._lock:
            self._db.execute("BEGIN")
            for limit in limits:
                self._db.execute(
                    "DELETE FROM usage WHERE rowid = (SELECT rowid FROM usage WHERE rule_id = ? "
                    "AND scope_key = ? AND at_ms = ? AND cost = ? LIMIT 1)",
                    (rule_id, scope_key(limit, requester), charged_at_ms, cost),
                )
            self._db.execute("COMMIT")

    def _wait_s(self, rule_id: str, key: str, since: int, excess: int, limit: RateLimit) -> int:
        """Seconds until enough of the window's usage expires to make room for ``excess``."""
        freed = 0
        for at_ms, cost in self._db.execute(
            "SELECT at_ms, cost FROM usage WHERE rule_id = ? AND scope_key = ? AND at_ms > ? "
            "ORDER BY at_ms",
            (rule_id, key, since),
        ):
            freed += cost
            if freed >= excess:
                return max(1, -(-int(at_ms - since) // 1000))
        return limit.window_s

    def purge(self, before_ms: int) -> None:
        with self._lock:
            self._db.execute("DELETE FROM usage WHERE at_ms < ?", (before_ms,))

    def close(self) -> None:
        with self._lock:
            self._db.close()
