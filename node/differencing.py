"""The differencing guard: two overlapping counts must not isolate a few records.

With a minimum count of k, "how many in A?" and "how many in A but not x?"
can each be k or more while their difference is one record. For permits
with a minimum count, the node remembers each agency's recent aggregate
queries and, before answering a new one, counts the records in which the two
differ, per answer cell. If any cell differs by fewer than k records (but
more than none), the new query is refused. This stops pairwise differencing;
rate limits bound how many pairs an agency can try.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from pathlib import Path

from liaison.query import Comparator, Predicate

GUARD_RULE = "differencing-guard"
KEEP_PER_AGENCY = 20
WINDOW_S = 24 * 3600

_SCHEMA = """
CREATE TABLE IF NOT EXISTS recent_aggregate (
    agency TEXT NOT NULL,
    dataset TEXT NOT NULL,
    conditions TEXT NOT NULL,
    at_ms INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS recent_by_agency ON recent_aggregate (agency, dataset, at_ms);
"""

Conditions = tuple[Predicate, ...]


def _encode(conditions: Conditions) -> str:
    return json.dumps(
        sorted([p.field, p.comparator.value, sorted(p.values)] for p in conditions),
        separators=(",", ":"),
    )


def _decode(text: str) -> Conditions:
    return tuple(Predicate(f, Comparator(c), tuple(v)) for f, c, v in json.loads(text))


class RecentAggregates:
    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode = WAL")
        # NORMAL in WAL mode survives a process crash; a power cut may lose the
        # last moments of usage, which errs towards the requester, never
        # towards releasing data. The replay guard, which must not err, keeps FULL.
        self._db.execute("PRAGMA synchronous = NORMAL")
        self._db.executescript(_SCHEMA)
        self._lock = threading.Lock()

    def recent(self, agency: str, dataset: str, now_ms: int) -> list[Conditions]:
        """The agency's distinct recent aggregate queries on ``dataset``, newest first."""
        with self._lock:
            rows = self._db.execute(
                "SELECT DISTINCT conditions FROM recent_aggregate "
                "WHERE agency = ? AND dataset = ? AND at_ms > ? ORDER BY at_ms DESC LIMIT ?",
                (agency, dataset, now_ms - WINDOW_S * 1000, KEEP_PER_AGENCY),
            ).fetchall()
        return [_decode(r[0]) for r in rows]

    def remember(self, agency: str, dataset: str, conditions: Conditions, now_ms: int) -> None:
        encoded = _encode(conditions)
        with self._lock:
            self._db.execute("BEGIN")
            self._db.execute(
                "DELETE FROM recent_aggregate WHERE agency = ? AND dataset = ? AND conditions = ?",
                (agency, dataset, encoded),
            )
            self._db.execute(
                "INSERT INTO recent_aggregate (agency, dataset, conditions, at_ms) "
                "VALUES (?, ?, ?, ?)",
                (agency, dataset, encoded, now_ms),
            )
            self._db.execute(
                "DELETE FROM recent_aggregate WHERE at_ms < ?", (now_ms - WINDOW_S * 1000,)
            )
            self._db.execute("COMMIT")

    def forget(self) -> None:
        """Drop every remembered query (after a policy change, for instance)."""
        with self._lock:
            self._db.execute("DELETE FROM recent_aggregate")

    def same(self, a: Conditions, b: Conditions) -> bool:
        return _encode(a) == _encode(b)

    def close(self) -> None:
        with self._lock:
            self._db.close()
