"""Replay guard: each nonce and each query id is answered once, and the answer is kept.

A retry of the identical envelope (same nonce, same bytes) from the same peer
gets the stored answer back, so retries after a lost response are safe. The
same nonce with other bytes is a replay and is refused; so is a query id that
was already answered for other bytes (receipts and reconciliation key on the
query id, so one id must name one request). The stored answer goes back only
to the gateway identity it was first given to: an envelope is no bearer token.

The records live in the node's receipts ledger database, and an answer's
record is committed in the same transaction as its receipt
(:meth:`ReplayGuard.record` gives the rows to append with it): the receipt
and the stored answer are durable together or not at all, in one commit.
A crash before that commit leaves nothing, and nothing left the node, so a
retry is answered afresh; after it, a retry gets the stored answer. While an
answer is being made, its claim is held in memory, so a concurrent duplicate
is refused (same nonce: "in progress"; same query id, other bytes: replay).

The records hold released answers, so each stored answer is sealed
(AES-256-GCM, bound to its nonce and request digest) under a key kept in the
node's state folder (``replay.key``, 0600) and never in the ledger: a copy of
the receipts ledger handed to an auditor carries no released data, as the
ledger promises. A SQLite receipts ledger is owner-only all the same (0600,
with its -wal and -shm), in an owner-only folder (see node.server).
Records from before this layout (``state/replay.sqlite3``) are imported once
and the old file removed.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import stat
import threading
from dataclasses import dataclass
from pathlib import Path

import sqlalchemy as sa
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from liaison.envelope import Envelope
from liaison.errors import (
    ConfigError,
    LedgerUnavailable,
    ReplayDetected,
    RequestInProgress,
    StateUnavailable,
    UntrustedPeer,
)
from liaison.keys import KeyId
from liaison.ledger.log import Ledger
from liaison.ledger.store import SideRows

log = logging.getLogger("liaison.node")

SEAL_KEY_FILE = "replay.key"
_SEAL_NONCE_BYTES = 12

replay_tables = sa.MetaData()

seen_nonce = sa.Table(
    "liaison_node_seen_nonce",
    replay_tables,
    sa.Column("nonce", sa.LargeBinary, primary_key=True),
    sa.Column("digest", sa.LargeBinary, nullable=False),
    sa.Column("expires_at_ms", sa.BigInteger, nullable=False, index=True),
    # UTF-8: a query id is the gateway's to choose, and PostgreSQL text holds no NUL.
    sa.Column("query_id", sa.LargeBinary, nullable=False),
    # The gateway identity the answer was given to ("" for a node without TLS).
    sa.Column("peer", sa.Text, nullable=False),
    sa.Column("answer_payload", sa.LargeBinary, nullable=False),
    sa.Column("answer_type", sa.Text, nullable=False),
    sa.Column("answer_key_id", sa.Text, nullable=False),
    sa.Column("answer_signature", sa.LargeBinary, nullable=False),
)

# Every query id this node answered, kept after its nonce is purged: a query
# id is refused for other bytes for as long as the receipts ledger lasts.
answered_query = sa.Table(
    "liaison_node_answered_query",
    replay_tables,
    sa.Column("query_id", sa.LargeBinary, primary_key=True),
    sa.Column("digest", sa.LargeBinary, nullable=False),
)

LEGACY_FILE = "replay.sqlite3"

_REPLAY_MESSAGE = (
    "nonce was already used by a different request; the gateway must send a fresh nonce "
    "for every request"
)
_IN_PROGRESS = "this request is being answered right now; retry shortly"


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


def stored_text(text: str) -> bytes:
    """``text`` as the node's state tables keep what requests carry: UTF-8 bytes.

    Bytes, not text, so that whatever a gateway sends (a NUL included, which
    PostgreSQL text refuses) is stored as it was sent and never fails a commit.
    """
    return text.encode("utf-8", "surrogatepass")


def as_text(value: object) -> str:
    # SQLite keeps whatever was stored: text, as written, or bytes (a hand edit).
    return value.decode("utf-8", "surrogateescape") if isinstance(value, bytes) else str(value)


def remove_sqlite_file(path: Path) -> None:
    """Delete a SQLite file with its -wal, -shm and -journal."""
    for suffix in ("-wal", "-shm", "-journal", ""):
        path.with_name(path.name + suffix).unlink(missing_ok=True)


@dataclass(slots=True)
class _Claim:
    digest: bytes
    expires_at_ms: int
    query_id: str
    peer: str
    # The claim's commit overran the ledger's write timeout and may yet land:
    # decided by the database once a later write succeeded.
    doubtful: bool = False


class ReplayGuard:
    """Claims in memory, records in the receipts ledger's database, committed with receipts."""

    def __init__(self, receipts: Ledger, seal_key: bytes, *, legacy: Path | None = None) -> None:
        store = receipts.store
        self._sealer = AESGCM(seal_key[:32])
        if store.engine.dialect.name not in ("sqlite", "postgresql"):
            raise ConfigError(
                f"a node's receipts ledger must be SQLite or PostgreSQL, not "
                f"{store.engine.dialect.name} (it also keeps the node's replay records)"
            )
        store.create_tables(replay_tables)
        self._receipts = receipts
        self._store = store
        self._insert_seen = store.insert_statement(seen_nonce)
        self._insert_answered = store.insert_statement(answered_query, ignore_existing=True)
        c, a = seen_nonce.c, answered_query.c
        # Both records a claim needs, in one statement: the nonce's (kind 0)
        # and the query id's (kind 1).
        self._select = store.prepare(
            sa.union_all(
                sa.select(
                    sa.literal_column("0").label("kind"),
                    c.digest,
                    c.answer_payload,
                    c.answer_type,
                    c.answer_key_id,
                    c.answer_signature,
                    c.peer,
                ).where(c.nonce == sa.bindparam("nonce")),
                sa.select(
                    sa.literal_column("1").label("kind"),
                    a.digest,
                    sa.null(),
                    sa.null(),
                    sa.null(),
                    sa.null(),
                    sa.null(),
                ).where(a.query_id == sa.bindparam("query_id")),
            ),
            ("nonce", "query_id"),
        )
        self._purge = store.prepare(
            seen_nonce.delete().where(c.expires_at_ms < sa.bindparam("before")), ("before",)
        )
        self._lock = threading.Lock()
        # Claims being answered: by nonce, and their query ids. A claim that
        # dies with the process had no answer out yet, so only the answer's
        # record (committed with its receipt) is ever durable.
        self._pending: dict[bytes, _Claim] = {}
        self._pending_queries: dict[str, bytes] = {}  # query id -> nonce
        if legacy is not None and legacy.exists():
            self._import_legacy(legacy)

    def claim(
        self, nonce: bytes, digest: bytes, expires_at_ms: int, *, query_id: str, peer: str
    ) -> Envelope | None:
        """Claim ``nonce`` and ``query_id`` for ``digest``; return an identical retry's answer.

        ``peer`` names the gateway identity on the line; a stored answer goes
        back only to the identity that was given it.
        """
        if self._receipts.stalled:
            # A write to the receipts database overran its timeout: nothing can
            # be committed now, and a read might hang as well.
            raise _unavailable(LedgerUnavailable("the receipts ledger's database is not answering"))
        with self._lock:
            self._settle_doubt(nonce, query_id)
            pending = self._pending.get(nonce)
            if pending is not None:
                if pending.digest != digest:
                    raise ReplayDetected(_REPLAY_MESSAGE)
                raise RequestInProgress(_IN_PROGRESS)
            # Read under the lock: a record committed while we read it cannot
            # slip between this read and the claim below.
            try:
                found = self._store.fetch(self._select, (nonce, stored_text(query_id)))
            except LedgerUnavailable as exc:
                raise _unavailable(exc) from exc
            seen = [row[1:] for row in found if row[0] == 0]
            answered = [row[1:] for row in found if row[0] == 1]
            if seen:
                stored_digest, payload, payload_type, key_id, signature, stored_peer = seen[0]
                if bytes(stored_digest) != digest:
                    raise ReplayDetected(_REPLAY_MESSAGE)
                if (stored_peer or "") != peer:
                    raise UntrustedPeer(
                        "this request was answered for another gateway identity; its answer "
                        "goes back only to the gateway that asked"
                    )
                return Envelope(
                    self._open(bytes(payload), nonce, digest),
                    str(payload_type),
                    KeyId(str(key_id)),
                    bytes(signature),
                )
            in_flight = self._pending_queries.get(query_id)
            if (answered and bytes(answered[0][0]) != digest) or (
                in_flight is not None and self._pending[in_flight].digest != digest
            ):
                raise ReplayDetected(_query_id_message(query_id))
            self._pending[nonce] = _Claim(digest, expires_at_ms, query_id, peer)
            self._pending_queries[query_id] = nonce
            return None

    def _settle_doubt(self, nonce: bytes, query_id: str) -> None:
        """Drop doubtful claims in the way once the ledger works again; until then, wait."""
        for key in (nonce, self._pending_queries.get(query_id, b"")):
            claim = self._pending.get(key)
            if claim is None or not claim.doubtful:
                continue
            if self._receipts.stalled:
                # Its commit may still land: answering afresh could store a second answer.
                raise RequestInProgress(_IN_PROGRESS)
            # A write succeeded since, so that one is over: the database (read
            # next) says whether it landed.
            self._forget(key)

    def _forget(self, nonce: bytes) -> None:
        claim = self._pending.pop(nonce, None)
        if claim is not None and self._pending_queries.get(claim.query_id) == nonce:
            del self._pending_queries[claim.query_id]

    def record(self, nonce: bytes, answer: Envelope) -> list[SideRows]:
        """The rows that make the claim of ``nonce`` answered with ``answer``.

        Append them with the answer's receipt: the answer may leave only once
        that commit returned, and :meth:`complete` is called.
        """
        with self._lock:
            claim = self._pending[nonce]
        return [
            SideRows(
                self._insert_seen,
                (
                    (
                        nonce,
                        claim.digest,
                        claim.expires_at_ms,
                        stored_text(claim.query_id),
                        claim.peer,
                        self._seal(answer.payload, nonce, claim.digest),
                        answer.payload_type,
                        answer.key_id,
                        answer.signature,
                    ),
                ),
            ),
            SideRows(self._insert_answered, ((stored_text(claim.query_id), claim.digest),)),
        ]

    def _seal(self, payload: bytes, nonce: bytes, digest: bytes) -> bytes:
        iv = os.urandom(_SEAL_NONCE_BYTES)
        return iv + self._sealer.encrypt(iv, payload, nonce + digest)

    def _open(self, sealed: bytes, nonce: bytes, digest: bytes) -> bytes:
        iv, body = sealed[:_SEAL_NONCE_BYTES], sealed[_SEAL_NONCE_BYTES:]
        try:
            return self._sealer.decrypt(iv, body, nonce + digest)
        except InvalidTag:
            # Answered before, but its copy cannot be read back (the state
            # folder's key was replaced): answering afresh would release twice.
            raise ReplayDetected(
                "this request was answered before, but the node cannot read its stored answer "
                f"(its {SEAL_KEY_FILE} changed); the gateway must send a new request"
            ) from None

    def complete(self, nonce: bytes) -> None:
        """The record of ``nonce`` was committed: retries now read it from the database."""
        with self._lock:
            self._forget(nonce)

    def release(self, nonce: bytes, *, doubtful: bool = False) -> None:
        """Forget an unanswered claim (the request failed before its record was committed).

        ``doubtful``: the commit overran the ledger's write timeout and may
        still land; the claim is held until a later write succeeded, and then
        the database decides.
        """
        with self._lock:
            claim = self._pending.get(nonce)
            if claim is not None and doubtful:
                claim.doubtful = True
            else:
                self._forget(nonce)

    def purge(self, now_ms: int, keep_ms: int) -> None:
        """Drop nonces whose requests expired long enough ago that they are refused anyway.

        Answered query ids stay: they are refused for other bytes for good.
        Doubtful claims nobody retried are dropped once they are settled.
        """
        self._receipts.apply([SideRows(self._purge, ((now_ms - keep_ms,),))])
        with self._lock:
            if not self._receipts.stalled:
                for nonce in [n for n, c in self._pending.items() if c.doubtful]:
                    self._forget(nonce)

    def close(self) -> None:
        """Nothing of its own to release: the records live in the receipts ledger."""

    def _import_legacy(self, path: Path) -> None:
        """Take in the records of a ``replay.sqlite3`` from an earlier release, then remove it."""
        try:
            db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
            try:
                have = {row[1] for row in db.execute("PRAGMA table_info(seen_nonce)")}
                peer = "COALESCE(peer, '')" if "peer" in have else "''"
                query_id = "COALESCE(query_id, '')" if "query_id" in have else "''"
                # Rows without an answer never left the node: nothing to keep.
                seen = db.execute(
                    f"SELECT nonce, digest, expires_at_ms, {query_id}, {peer}, answer_payload, "  # noqa: S608  # column names, not input
                    "answer_type, answer_key_id, answer_signature FROM seen_nonce "
                    "WHERE answer_payload IS NOT NULL"
                ).fetchall()
                answered = db.execute("SELECT query_id, digest FROM answered_query").fetchall()
            finally:
                db.close()
        except sqlite3.Error as exc:
            raise ConfigError(
                f"cannot read the replay records of an earlier release at {path} ({exc}); "
                "repair or remove the file (removing it reopens replays of requests still "
                "valid)"
            ) from exc
        # Another insert statement that skips what an interrupted import already took in.
        insert_seen = self._store.insert_statement(seen_nonce, ignore_existing=True)
        self._receipts.apply(
            [
                SideRows(
                    insert_seen,
                    tuple(
                        (
                            *r[:3],
                            stored_text(as_text(r[3])),
                            r[4],
                            self._seal(bytes(r[5]), bytes(r[0]), bytes(r[1])),
                            *r[6:],
                        )
                        for r in seen
                    ),
                ),
                SideRows(
                    self._insert_answered,
                    tuple((stored_text(as_text(q)), digest) for q, digest in answered),
                ),
            ]
        )
        remove_sqlite_file(path)
        log.warning(
            "replay records imported into the receipts ledger",
            extra={"from": str(path), "nonces": len(seen), "query_ids": len(answered)},
        )


def _unavailable(exc: Exception) -> StateUnavailable:
    # Where the database is and what it said are for the operator's log.
    log.error("replay guard cannot be used", extra={"error": str(exc)})
    return StateUnavailable(
        "this node cannot record requests against replay right now, so it answers nothing; "
        "nothing was released or charged; try again later (the node's operator sees why in "
        "its log)"
    )
