"""Replay guard: each nonce is answered once, and the answer is kept.

A retry of the identical envelope (same nonce, same bytes) gets the stored
answer back, so retries after a lost response are safe. The same nonce with
other bytes is a replay and is refused. State lives in a SQLite file with
synchronous FULL, so a node restart does not reopen the replay window.
"""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

from liaison.envelope import Envelope
from liaison.errors import ReplayDetected, RequestInProgress
from liaison.keys import KeyId

_SCHEMA = """
CREATE TABLE IF NOT EXISTS seen_nonce (
    nonce BLOB PRIMARY KEY,
    digest BLOB NOT NULL,
    expires_at_ms INTEGER NOT NULL,
    answer_payload BLOB,
    answer_type TEXT,
    answer_key_id TEXT,
    answer_signature BLOB
)
"""


_REPLAY_MESSAGE = (
    "nonce was already used by a different request; the gateway must send a fresh nonce "
    "for every request"
)


class ReplayGuard:
    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode = WAL")
        self._db.execute("PRAGMA synchronous = FULL")
        self._db.execute(_SCHEMA)
        # Rows from before answers were stored with their claim; nothing left
        # the node for them, so they may be retried.
        self._db.execute("DELETE FROM seen_nonce WHERE answer_payload IS NULL")
        self._lock = threading.Lock()
        # Claims in progress live in memory only: a claim that dies with the
        # process had no answer out yet, so persisting it would buy nothing
        # and cost an fsync per request. The answer is written (and synced)
        # before it is returned, in one write.
        self._pending: dict[bytes, tuple[bytes, int]] = {}

    def claim(self, nonce: bytes, digest: bytes, expires_at_ms: int) -> Envelope | None:
        """Claim ``nonce`` for ``digest``; return the stored answer of an identical retry."""
        with self._lock:
            pending = self._pending.get(nonce)
            if pending is not None:
                if pending[0] != digest:
                    raise ReplayDetected(_REPLAY_MESSAGE)
                raise RequestInProgress("this request is being answered right now; retry shortly")
            row = self._db.execute(
                "SELECT digest, answer_payload, answer_type, answer_key_id, answer_signature "
                "FROM seen_nonce WHERE nonce = ?",
                (nonce,),
            ).fetchone()
            if row is None:
                self._pending[nonce] = (digest, expires_at_ms)
                return None
            if bytes(row[0]) != digest:
                raise ReplayDetected(_REPLAY_MESSAGE)
            return Envelope(bytes(row[1]), str(row[2]), KeyId(str(row[3])), bytes(row[4]))

    def complete(self, nonce: bytes, answer: Envelope) -> None:
        """Store the answer durably; only then may it leave the node."""
        with self._lock:
            digest, expires_at_ms = self._pending.pop(nonce)
            self._db.execute(
                "INSERT INTO seen_nonce (nonce, digest, expires_at_ms, answer_payload, "
                "answer_type, answer_key_id, answer_signature) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (
                    nonce,
                    digest,
                    expires_at_ms,
                    answer.payload,
                    answer.payload_type,
                    answer.key_id,
                    answer.signature,
                ),
            )

    def release(self, nonce: bytes) -> None:
        """Forget an unanswered claim (the request failed before an answer was signed)."""
        with self._lock:
            self._pending.pop(nonce, None)

    def purge(self, now_ms: int, keep_ms: int) -> int:
        """Drop nonces whose requests expired long enough ago that they are refused anyway."""
        with self._lock:
            cur = self._db.execute(
                "DELETE FROM seen_nonce WHERE expires_at_ms < ?", (now_ms - keep_ms,)
            )
            return cur.rowcount

    def close(self) -> None:
        with self._lock:
            self._db.close()
