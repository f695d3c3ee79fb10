"""Replay guard: each nonce and each query id is answered once, and the answer is kept.

A retry of the identical envelope (same nonce, same bytes) from the same peer
gets the stored answer back, so retries after a lost response are safe. The
same nonce with other bytes is a replay and is refused; so is a query id that
was already answered for other bytes (receipts and reconciliation key on the
query id, so one id must name one request). The stored answer goes back only
to the gateway identity it was first given to: an envelope is no bearer token.

State lives in a SQLite file with synchronous FULL, so a node restart does not
reopen the replay window. It holds released answers, so the file (and its
-wal and -shm) is owner-only, in an owner-only folder.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import stat
import threading
from dataclasses import dataclass
from pathlib import Path

from liaison.envelope import Envelope
from liaison.errors import ReplayDetected, RequestInProgress, StateUnavailable, UntrustedPeer
from liaison.keys import KeyId

log = logging.getLogger("liaison.node")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS seen_nonce (
    nonce BLOB PRIMARY KEY,
    digest BLOB NOT NULL,
    expires_at_ms INTEGER NOT NULL,
    answer_payload BLOB,
    answer_type TEXT,
    answer_key_id TEXT,
    answer_signature BLOB
);
-- Every query id this node answered, kept after its nonce is purged: a query
-- id is refused for other bytes for as long as the receipts ledger lasts.
CREATE TABLE IF NOT EXISTS answered_query (
    query_id TEXT PRIMARY KEY,
    digest BLOB NOT NULL
);
"""
# Added after the first release; older files gain them when opened.
_ADDED_COLUMNS = {"peer": "TEXT", "query_id": "TEXT"}


_REPLAY_MESSAGE = (
    "nonce was already used by a different request; the gateway must send a fresh nonce "
    "for every request"
)


def _query_id_message(query_id: str) -> str:
    return (
        f"query id {query_id!r} was already answered for a different request; the gateway "
        "must give every request a new query id"
    )


def private_dir(path: Path) -> None:
    """Create ``path`` owner-only (0700), or tighten it if it is open to others."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        os.chmod(path, mode & 0o700)


def private_file(path: Path) -> None:
    """Create ``path`` (and tighten a SQLite file's -wal and -shm) owner-only (0600).

    SQLite gives a new -wal and -shm the mode of the database file, so a
    database created through this stays private as it grows.
    """
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        os.fchmod(fd, 0o600)
    finally:
        os.close(fd)
    for suffix in ("-wal", "-shm", "-journal"):
        side = path.with_name(path.name + suffix)
        if side.exists():
            os.chmod(side, 0o600)


@dataclass(frozen=True, slots=True)
class _Claim:
    digest: bytes
    expires_at_ms: int
    query_id: str
    peer: str


class ReplayGuard:
    def __init__(self, path: Path) -> None:
        private_dir(path.parent)
        private_file(path)
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode = WAL")
        self._db.execute("PRAGMA synchronous = FULL")
        self._db.executescript(_SCHEMA)
        have = {row[1] for row in self._db.execute("PRAGMA table_info(seen_nonce)")}
        for column, kind in _ADDED_COLUMNS.items():
            if column not in have:
                self._db.execute(f"ALTER TABLE seen_nonce ADD COLUMN {column} {kind}")
        # Rows from before answers were stored with their claim; nothing left
        # the node for them, so they may be retried.
        self._db.execute("DELETE FROM seen_nonce WHERE answer_payload IS NULL")
        private_file(path)  # the -wal and -shm now exist
        self._lock = threading.Lock()
        # Claims in progress live in memory only: a claim that dies with the
        # process had no answer out yet, so persisting it would buy nothing
        # and cost an fsync per request. The answer is written (and synced)
        # before it is returned, in one write.
        self._pending: dict[bytes, _Claim] = {}
        self._pending_queries: dict[str, bytes] = {}

    def claim(
        self, nonce: bytes, digest: bytes, expires_at_ms: int, *, query_id: str, peer: str
    ) -> Envelope | None:
        """Claim ``nonce`` and ``query_id`` for ``digest``; return an identical retry's answer.

        ``peer`` names the gateway identity on the line; a stored answer goes
        back only to the identity that was given it.
        """
        with self._lock:
            pending = self._pending.get(nonce)
            if pending is not None:
                if pending.digest != digest:
                    raise ReplayDetected(_REPLAY_MESSAGE)
                raise RequestInProgress("this request is being answered right now; retry shortly")
            try:
                row = self._db.execute(
                    "SELECT digest, answer_payload, answer_type, answer_key_id, "
                    "answer_signature, peer FROM seen_nonce WHERE nonce = ?",
                    (nonce,),
                ).fetchone()
                answered = self._db.execute(
                    "SELECT digest FROM answered_query WHERE query_id = ?", (query_id,)
                ).fetchone()
            except sqlite3.Error as exc:
                raise _unavailable(exc) from exc
            if row is not None:
                if bytes(row[0]) != digest:
                    raise ReplayDetected(_REPLAY_MESSAGE)
                if (row[5] or "") != peer:
                    raise UntrustedPeer(
                        "this request was answered for another gateway identity; its answer "
                        "goes back only to the gateway that asked"
                    )
                return Envelope(bytes(row[1]), str(row[2]), KeyId(str(row[3])), bytes(row[4]))
            in_flight = self._pending_queries.get(query_id)
            if (answered is not None and bytes(answered[0]) != digest) or (
                in_flight is not None and in_flight != digest
            ):
                raise ReplayDetected(_query_id_message(query_id))
            self._pending[nonce] = _Claim(digest, expires_at_ms, query_id, peer)
            self._pending_queries[query_id] = digest
            return None

    def complete(self, nonce: bytes, answer: Envelope) -> None:
        """Store the answer durably; only then may it leave the node.

        Raises ``StateUnavailable`` if it cannot be stored: the answer must
        then not leave, for a retry could not be told from a replay.
        """
        with self._lock:
            claim = self._pending.pop(nonce)
            self._pending_queries.pop(claim.query_id, None)
            try:
                self._db.execute("BEGIN IMMEDIATE")
                try:
                    self._db.execute(
                        "INSERT INTO seen_nonce (nonce, digest, expires_at_ms, answer_payload, "
                        "answer_type, answer_key_id, answer_signature, peer, query_id) "
                        "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                        (
                            nonce,
                            claim.digest,
                            claim.expires_at_ms,
                            answer.payload,
                            answer.payload_type,
                            answer.key_id,
                            answer.signature,
                            claim.peer,
                            claim.query_id,
                        ),
                    )
                    self._db.execute(
                        "INSERT OR IGNORE INTO answered_query (query_id, digest) VALUES (?, ?)",
                        (claim.query_id, claim.digest),
                    )
                    self._db.execute("COMMIT")
                except BaseException:
                    if self._db.in_transaction:
                        self._db.execute("ROLLBACK")
                    raise
            except sqlite3.Error as exc:
                raise _unavailable(exc) from exc

    def release(self, nonce: bytes) -> None:
        """Forget an unanswered claim (the request failed before an answer was stored)."""
        with self._lock:
            claim = self._pending.pop(nonce, None)
            if claim is not None:
                self._pending_queries.pop(claim.query_id, None)

    def purge(self, now_ms: int, keep_ms: int) -> int:
        """Drop nonces whose requests expired long enough ago that they are refused anyway.

        Answered query ids stay: they are refused for other bytes for good.
        """
        with self._lock:
            cur = self._db.execute(
                "DELETE FROM seen_nonce WHERE expires_at_ms < ?", (now_ms - keep_ms,)
            )
            return cur.rowcount

    def close(self) -> None:
        with self._lock:
            self._db.close()


def _unavailable(exc: sqlite3.Error) -> StateUnavailable:
    # Where the file is and what SQLite said are for the operator's log.
    log.error("replay guard cannot be used", extra={"error": f"{type(exc).__name__}: {exc}"})
    return StateUnavailable(
        "this node cannot record requests against replay right now, so it answers nothing; "
        "nothing was released or charged; try again later (the node's operator sees why in "
        "its log)"
    )
