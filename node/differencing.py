"""The differencing guard: two overlapping counts must not isolate a few records.

With a minimum count of k, "how many in A?" and "how many in A but not x?"
can each be k or more while their difference is one record. For permits
with a minimum count, the node remembers each investigator's recent
aggregate queries and, before answering a new one, counts the records in
which the two differ, per answer cell. If any cell differs by fewer than k
records (but more than none), the new query is refused. This stops the cheap
pairwise differencing; sums of three or more counts (trackers), and
investigators pooling their answers, are answered by the sticky noise on
every count released under a minimum count (``node/noise.py``).

The memory is per investigator (token issuer and subject), so filling it
refuses only the one who filled it: nobody can lock colleagues out. It is
deliberately not shared within an agency: a shared memory lets one
investigator refuse another's questions on purpose (by asking near them),
and what sharing would add, catching colleagues who pool answers, the noise
already covers. An agency minting many subjects gains nothing against the
noise; the storage it costs is bounded by the window and by the rule's rate
limits (an `agency` rate limit on statistics rules bounds it per agency).
"""

from __future__ import annotations

import json
import sqlite3
import threading
from dataclasses import dataclass
from pathlib import Path

from liaison.messages import Requester
from liaison.query import Comparator, Predicate
from node.noise import NOISE_KEY_FILE, load_or_create_key

GUARD_RULE = "differencing-guard"
WINDOW_S = 24 * 3600
# Beyond this many distinct aggregate queries in the window the guard refuses
# the investigator's new ones rather than forget old ones, so it cannot be
# flushed.
MAX_REMEMBERED = 500

# v2 kept one memory per agency, which one investigator could fill for all:
# its rows cannot be told apart by investigator, so they are dropped (they
# were at most a day old, and every count now carries noise).
_SCHEMA = """
DROP TABLE IF EXISTS recent_aggregate_v2;
CREATE TABLE IF NOT EXISTS recent_aggregate_v3 (
    issuer TEXT NOT NULL,
    subject TEXT NOT NULL,
    agency TEXT NOT NULL,
    dataset TEXT NOT NULL,
    query TEXT NOT NULL,
    at_ms INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS recent_v3_by_investigator
    ON recent_aggregate_v3 (issuer, subject, dataset, at_ms);
CREATE INDEX IF NOT EXISTS recent_v3_by_time ON recent_aggregate_v3 (at_ms);
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
        # The sticky-noise secret lives beside the memory, in the state folder.
        self.noise_key = load_or_create_key(path.parent / NOISE_KEY_FILE)

    def recent(self, who: Requester, dataset: str, now_ms: int) -> list[RecentQuery]:
        """Every distinct aggregate ``who`` asked on ``dataset`` in the window."""
        with self._lock:
            rows = self._db.execute(
                "SELECT query FROM recent_aggregate_v3 "
                "WHERE issuer = ? AND subject = ? AND dataset = ? AND at_ms > ? "
                "ORDER BY at_ms DESC LIMIT ?",
                (who.issuer, who.subject, dataset, now_ms - WINDOW_S * 1000, MAX_REMEMBERED + 1),
            ).fetchall()
        if len(rows) > MAX_REMEMBERED:
            raise TooManyRecent(
                f"you asked more than {MAX_REMEMBERED} different aggregate questions of this "
                "dataset in 24 hours; the node cannot check a new one against them all. "
                "Ask again tomorrow, or repeat a question you asked today"
            )
        return [RecentQuery.decode(r[0]) for r in rows]

    def remember(self, who: Requester, dataset: str, query: RecentQuery, now_ms: int) -> None:
        encoded = query.encode()
        with self._lock:
            self._db.execute("BEGIN")
            self._db.execute(
                "DELETE FROM recent_aggregate_v3 "
                "WHERE issuer = ? AND subject = ? AND dataset = ? AND query = ?",
                (who.issuer, who.subject, dataset, encoded),
            )
            self._db.execute(
                "INSERT INTO recent_aggregate_v3 "
                "(issuer, subject, agency, dataset, query, at_ms) VALUES (?, ?, ?, ?, ?, ?)",
                (who.issuer, who.subject, who.agency, dataset, encoded, now_ms),
            )
            self._db.execute(
                "DELETE FROM recent_aggregate_v3 WHERE at_ms < ?", (now_ms - WINDOW_S * 1000,)
            )
            self._db.execute("COMMIT")

    def forget(self) -> None:
        """Drop every remembered query (after a policy change, for instance).

        The noise secret stays: new noise on the same sets would give a second,
        independent look at every count.
        """
        with self._lock:
            self._db.execute("DELETE FROM recent_aggregate_v3")

    def close(self) -> None:
        with self._lock:
            self._db.close()
