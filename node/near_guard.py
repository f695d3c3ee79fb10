"""The near-duplicate guard: a PDQ query must not become a distance oracle.

A near query answers "do you hold a hash within t bits of this one?". Asked
again and again about one hash, that answer measures the distance to a stored
hash (binary search on t), then its bits (flip one bit, ask at one bit less):
about 261 queries recover a stored PDQ exactly. The guard stops that in two
ways, per investigator (issuer and subject), before any rate limit is charged:

* **a budget**: at most ``near_budget`` near queries per window (the permit's
  own, or ``DEFAULT_NEAR_BUDGET``). A query costs one however many hashes it
  asks, so device triage in one request stays cheap, while an oracle, which
  needs one query per answer bit, runs out.
* **probe memory**: the node remembers each investigator's near probes for
  ``PROBE_MEMORY_S``. A hash that one stored hash could match together with
  ``SPOT_ALLOWANCE`` earlier questions (the same hash at other distances,
  hashes a few bits off) is probing, and the whole query is refused: the
  binary search and bit flipping of an oracle need hundreds of questions
  around one spot, a device's near-duplicate images split over a few
  queries need a handful. Asking the very same question again (the same
  hashes at the same distance: a retry, or a count after a match) is not
  counted. Hashes within one query are never compared with each other.

Only permitted queries reach the guard, and only admitted ones are recorded,
so a refusal never depends on what the node holds. State is a SQLite file in
the node's state folder, readable by the node's user only (0600); it holds
the asked hashes, which the node saw anyway, and nothing it answered.
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import closing, contextmanager
from pathlib import Path

import numpy as np

from liaison.hashing.pdq import words_from_hex
from liaison.messages import Requester
from liaison.query import DEFAULT_NEAR_DISTANCE, Comparator, Predicate, Query
from policies.engine import Grant
from policies.model import DEFAULT_NEAR_BUDGET, RateLimit

# Distances between an asked hash and earlier probes computed in one pass.
_PAIRS_PER_PASS = 1 << 20
# Questions answered around one spot per investigator in PROBE_MEMORY_S: an
# oracle needs hundreds; a device's near-duplicates split over queries, a few.
SPOT_ALLOWANCE = 8
# How long a probe is remembered.
PROBE_MEMORY_S = 86_400
# Budget usage older than this is dropped (the longest window is a day).
_USAGE_KEPT_MS = 2 * 86_400 * 1000

_SCHEMA = """
CREATE TABLE IF NOT EXISTS near_usage (
    scope_key TEXT NOT NULL,
    at_ms INTEGER NOT NULL,
    -- SHA-256 of the near question (dataset, field, distance, hashes): a retry
    -- of the very same question is no probe.
    question TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS near_usage_by_key ON near_usage (scope_key, at_ms);
CREATE INDEX IF NOT EXISTS near_usage_by_question ON near_usage (scope_key, question);
CREATE TABLE IF NOT EXISTS near_probe (
    scope_key TEXT NOT NULL,
    dataset TEXT NOT NULL,
    field TEXT NOT NULL,
    probe TEXT NOT NULL,
    distance INTEGER NOT NULL,
    at_ms INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS near_probe_by_key ON near_probe (scope_key, dataset, field, at_ms);
"""


def investigator_key(requester: Requester) -> str:
    return f"investigator:{requester.issuer}\x00{requester.subject}"


def _ago(ms: int) -> str:
    seconds = max(1, ms // 1000)
    if seconds < 120:
        return f"{seconds} s"
    if seconds < 7200:
        return f"{seconds // 60} min"
    return f"{seconds // 3600} h"


class NearGuard:
    """Near-query budgets and probe memory, durable in one SQLite file."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        # Created 0600 before SQLite opens it; SQLite gives its -wal and -shm
        # files the same mode.
        os.close(os.open(path, os.O_CREAT | os.O_RDWR, 0o600))
        os.chmod(path, 0o600)
        self.path = path
        self._lock = threading.Lock()
        with self._connect() as db:
            db.execute("PRAGMA journal_mode = WAL")
            db.executescript(_SCHEMA)

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        # One connection per use: nothing is left open for the node to close.
        with closing(sqlite3.connect(self.path, isolation_level=None)) as db:
            # As the rate ledger: a power cut may lose the last moments, never more.
            db.execute("PRAGMA synchronous = NORMAL")
            yield db

    def admit(self, grant: Grant, query: Query, requester: Requester, now_ms: int) -> str:
        """Charge a near query and remember its probes; return "" or why it is refused.

        Nothing is charged or remembered for a refused query, nor for a query
        without a near predicate (which the guard lets through untouched).
        """
        near = [p for p in query.predicates if p.comparator is Comparator.NEAR]
        if not near:
            return ""
        budget = grant.near_budget or DEFAULT_NEAR_BUDGET
        key = investigator_key(requester)
        with self._lock, self._connect() as db:
            db.execute("BEGIN IMMEDIATE")
            try:
                question = _question(query.dataset, near)
                reason = self._budget(db, key, budget, now_ms)
                if not reason and not self._asked_before(db, key, question, now_ms):
                    reason = self._probing(db, key, query.dataset, near, now_ms)
                if reason:
                    db.execute("ROLLBACK")
                    return reason
                db.execute(
                    "INSERT INTO near_usage (scope_key, at_ms, question) VALUES (?, ?, ?)",
                    (key, now_ms, question),
                )
                db.executemany(
                    "INSERT INTO near_probe (scope_key, dataset, field, probe, distance, at_ms) "
                    "VALUES (?, ?, ?, ?, ?, ?)",
                    sorted(
                        {
                            (key, query.dataset, p.field, value, _distance(p), now_ms)
                            for p in near
                            for value in p.values
                        }
                    ),
                )
                db.execute(
                    "DELETE FROM near_probe WHERE at_ms <= ?", (now_ms - PROBE_MEMORY_S * 1000,)
                )
                db.execute("DELETE FROM near_usage WHERE at_ms <= ?", (now_ms - _USAGE_KEPT_MS,))
                db.execute("COMMIT")
            except BaseException:
                if db.in_transaction:
                    db.execute("ROLLBACK")
                raise
        return ""

    def _budget(self, db: sqlite3.Connection, key: str, budget: RateLimit, now_ms: int) -> str:
        since = now_ms - budget.window_s * 1000
        used, first = db.execute(
            "SELECT COUNT(*), MIN(at_ms) FROM near_usage WHERE scope_key = ? AND at_ms > ?",
            (key, since),
        ).fetchone()
        if used < budget.amount:
            return ""
        wait_s = max(1, -(-(int(first) - since) // 1000))
        return (
            f"near-duplicate budget reached: {budget.amount} near queries per "
            f"{budget.window_s} s per investigator ({used} used); repeated near queries would "
            f"measure the distance to a stored hash, so they are limited. Try again in "
            f"{wait_s} s, and put the hashes of one device in one query (it costs one)"
        )

    def _asked_before(self, db: sqlite3.Connection, key: str, question: str, now_ms: int) -> bool:
        """Whether the investigator recently asked this very question (same hashes, distance)."""
        found = db.execute(
            "SELECT 1 FROM near_usage WHERE scope_key = ? AND question = ? AND at_ms > ? LIMIT 1",
            (key, question, now_ms - PROBE_MEMORY_S * 1000),
        ).fetchone()
        return found is not None

    def _probing(
        self,
        db: sqlite3.Connection,
        key: str,
        dataset: str,
        near: list[Predicate],
        now_ms: int,
    ) -> str:
        """Why a new question asks too often around one spot, or "".

        An earlier question is around the same spot as an asked hash when one
        stored hash could answer both: the two hashes are at most the sum of
        their distances apart. The same hash at another distance is a binary
        search, hashes a few bits off are bit flipping, and random masks of 17
        bits at distance 31 are a threshold search: all of them stay around
        one spot, while unrelated images are about 128 bits apart. An oracle
        needs hundreds of questions there; an investigator's near-duplicate
        images split over queries, a few. So an asked hash is refused once
        ``SPOT_ALLOWANCE`` earlier questions were asked around it.
        """
        since = now_ms - PROBE_MEMORY_S * 1000
        for predicate in near:
            rows = db.execute(
                "SELECT probe, distance, MAX(at_ms) FROM near_probe "
                "WHERE scope_key = ? AND dataset = ? AND field = ? AND at_ms > ? "
                "GROUP BY probe, distance",
                (key, dataset, predicate.field, since),
            ).fetchall()
            if len(rows) < SPOT_ALLOWANCE:
                continue
            earlier = words_from_hex([str(r[0]) for r in rows])
            reach = np.array([int(r[1]) for r in rows], dtype=np.int64) + _distance(predicate)
            when = np.array([int(r[2]) for r in rows], dtype=np.int64)
            asked = list(dict.fromkeys(predicate.values))
            words = words_from_hex(asked)
            # Bounded temporaries however long the investigator's history.
            step = max(1, _PAIRS_PER_PASS // len(rows))
            for lo in range(0, len(asked), step):
                part = words[lo : lo + step]
                bits = np.bitwise_count(part[:, None, :] ^ earlier[None, :, :]).sum(axis=2)
                around = bits <= reach[None, :]
                questions = around.sum(axis=1)
                over = np.flatnonzero(questions >= SPOT_ALLOWANCE)
                if not len(over):
                    continue
                q = int(over[0])
                last = int(when[around[q]].max())
                value = asked[lo + q]
                return (
                    f"near-duplicate probing refused: value {predicate.values.index(value) + 1} "
                    f"of this query asks a {predicate.field} hash that one stored hash could "
                    f"match together with {int(questions[q])} questions you asked in the last "
                    f"24 h (the last {_ago(now_ms - last)} ago), and at most {SPOT_ALLOWANCE} "
                    "are answered around one spot. Asking around one hash again and again "
                    "(other bits or other distances) measures the distance to what this node "
                    "holds; the earlier answers stand. For more about that image, ask the "
                    "agency for a follow-up"
                )
        return ""


def _question(dataset: str, near: list[Predicate]) -> str:
    """A digest of what a near query asks: a retry has the same one."""
    parts = sorted(
        json.dumps([dataset, p.field, _distance(p), sorted(set(p.values))]) for p in near
    )
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()


def _distance(predicate: Predicate) -> int:
    # Validated queries always carry one; the catalog's default otherwise.
    if predicate.max_distance is None:
        return DEFAULT_NEAR_DISTANCE
    return predicate.max_distance
