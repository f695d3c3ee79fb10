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
from dataclasses import dataclass
from pathlib import Path

from liaison.query import Comparator, Predicate

GUARD_RULE = "differencing-guard"
WINDOW_S = 24 * 3600
# Beyond this many distinct aggregate queries in the window the guard refuses
# new ones rather than forget old ones, so it cannot be flushed.
MAX_REMEMBERED = 500

_SCHEMA = """
CREATE TABLE IF NOT EXISTS recent_aggregate_v2 (
    agency TEXT NOT NULL,
    dataset TEXT NOT NULL,
    query TEXT NOT NULL,
    at_ms INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS recent_v2_by_agency ON recent_aggregate_v2 (agency, dataset, at_ms);
"""

Conditions = tuple[Predicate, ...]


@dataclass(frozen=True, slots=True)
class RecentQuery:
    """An answered aggregate: the set it counted, and the field it grouped by."""

    conditions: Conditions
    group_by: str | None

    def encode(self) -> str:
        return json.dumps(
            {
                "c": sorted(
                    [p.field, p.comparator.value, sorted(p.values)] for p in self.conditions
                ),
                "g": self.group_by,
            },
            separators=(",", ":"),
        )

    @classmethod
    def decode(cls, text: str) -> RecentQuery:
        data = json.loads(text)
        return cls(tuple(Predicate(f, Comparator(c), tuple(v)) for f, c, v in data["c"]), data["g"])


class TooManyRecent(Exception):
    """More distinct recent aggregates than the guard compares; refuse, never forget."""


class RecentAggregates:
    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode = WAL")
        # NORMAL in WAL mode survives a process crash; a power cut may lose the
        # last moments of history, a risk bounded by the rate limits. The
        # replay guard, which must not err, keeps FULL.
        self._db.execute("PRAGMA synchronous = NORMAL")
        self._db.executescript(_SCHEMA)
        self._lock = threading.Lock()

    def recent(self, agency: str, dataset: str, now_ms: int) -> list[RecentQuery]:
        """Every distinct aggregate the agency asked on ``dataset`` in the window."""
        with self._lock:
            rows = self._db.execute(
                "SELECT query FROM recent_aggregate_v2 "
                "WHERE agency = ? AND dataset = ? AND at_ms > ? ORDER BY at_ms DESC LIMIT ?",
                (agency, dataset, now_ms - WINDOW_S * 1000, MAX_REMEMBERED + 1),
            ).fetchall()
        if len(rows) > MAX_REMEMBERED:
            raise TooManyRecent(
                f"your agency asked more than {MAX_REMEMBERED} different aggregate questions "
                "of this dataset in 24 hours; the node cannot check a new one against them all"
            )
        return [RecentQuery.decode(r[0]) for r in rows]

    def remember(self, agency: str, dataset: str, query: RecentQuery, now_ms: int) -> None:
        encoded = query.encode()
        with self._lock:
            self._db.execute("BEGIN")
            self._db.execute(
                "DELETE FROM recent_aggregate_v2 WHERE agency = ? AND dataset = ? AND query = ?",
                (agency, dataset, encoded),
            )
            self._db.execute(
                "INSERT INTO recent_aggregate_v2 (agency, dataset, query, at_ms) "
                "VALUES (?, ?, ?, ?)",
                (agency, dataset, encoded, now_ms),
            )
            self._db.execute(
                "DELETE FROM recent_aggregate_v2 WHERE at_ms < ?", (now_ms - WINDOW_S * 1000,)
            )
            self._db.execute("COMMIT")

    def forget(self) -> None:
        """Drop every remembered query (after a policy change, for instance)."""
        with self._lock:
            self._db.execute("DELETE FROM recent_aggregate_v2")

    def close(self) -> None:
        with self._lock:
            self._db.close()
