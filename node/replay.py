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
from liaison.errors import ReplayDetected, RequestRejected
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


class ReplayGuard:
    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode = WAL")
        self._db.execute("PRAGMA synchronous = FULL")
        self._db.execute(_SCHEMA)
        # A claim without an answer belongs to a request that was never
        # answered before a crash; nothing left the node, so it may be retried.
        self._db.execute("DELETE FROM seen_nonce WHERE answer_payload IS NULL")
        self._lock = threading.Lock()
        self._writes = 0

    def claim(self, nonce: bytes, digest: bytes, expires_at_ms: int) -> Envelope | None:
        """Claim ``nonce`` for ``digest``; return the stored answer of an identical retry."""
        with self._lock:
            row = self._db.execute(
                "SELECT digest, answer_payload, answer_type, answer_key_id, answer_signature "
                "FROM seen_nonce WHERE nonce = ?",
                (nonce,),
            ).fetchone()
            if row is None:
                self._db.execute(
                    "INSERT INTO seen_nonce (nonce, digest, expires_at_ms) VALUES (?, ?, ?)",
                    (nonce, digest, expires_at_ms),
                )
                return None
            if row[0] != digest:
                raise ReplayDetected(
                    "nonce was already used by a different request; the gateway must send a "
                    "fresh nonce for every request"
                )
            if row[1] is None:
                raise RequestRejected("this request is being answered right now; retry shortly")
            return Envelope(bytes(row[1]), str(row[2]), KeyId(str(row[3])), bytes(row[4]))

    def complete(self, nonce: bytes, answer: Envelope) -> None:
        with self._lock:
            self._db.execute(
                "UPDATE seen_nonce SET answer_payload = ?, answer_type = ?, answer_key_id = ?, "
                "answer_signature = ? WHERE nonce = ?",
                (answer.payload, answer.payload_type, answer.key_id, answer.signature, nonce),
            )

    def release(self, nonce: bytes) -> None:
        """Forget an unanswered claim (the request failed before an answer was signed)."""
        with self._lock:
            self._db.execute(
                "DELETE FROM seen_nonce WHERE nonce = ? AND answer_payload IS NULL", (nonce,)
            )

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
