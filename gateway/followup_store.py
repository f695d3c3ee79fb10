"""The gateway's follow-up rows: a side table of its ledger's database.

Each row is written in the same commit as the ledger entry that tells of it
(the follow-up entry inserts it; the delivery and outcome entries update it),
so the table never says more than the ledger does, and replicas sharing one
PostgreSQL ledger share the rows: nothing a replica needs lives in memory.

The rows hold what the ledger holds only as hashes: the investigator's words
to the holding agency and the values a duty officer released. So each signed
payload is sealed (AES-256-GCM, bound to its follow-up id and part) under a
key derived from the gateway's signing key, which every replica holds and an
auditor given a copy of the ledger's database does not: the copy carries no
released data, as the ledger promises. The signature stays in the clear.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from liaison.envelope import MAX_PAYLOAD_BYTES, Envelope
from liaison.errors import LedgerError, LedgerUnavailable
from liaison.followups import (
    FOLLOWUP_ACK_TYPE,
    FOLLOWUP_DECISION_TYPE,
    FOLLOWUP_REQUEST_TYPE,
    FollowUpStatus,
    FollowUpView,
)
from liaison.keys import KeyId, SigningKey
from liaison.ledger.store import LedgerStore, SideRows

followup_tables = sa.MetaData()
# A sealed envelope payload: up to the largest payload an envelope carries
# (MySQL and MariaDB size a BLOB column by it; others ignore the length).
_SEALED = sa.LargeBinary(MAX_PAYLOAD_BYTES + 64)

followup_rows = sa.Table(
    "liaison_gateway_followup",
    followup_tables,
    sa.Column("followup_id", sa.String(64), primary_key=True),
    # Whose it is, as a digest of agency and subject: a key any database indexes.
    sa.Column("requester_key", sa.String(64), nullable=False),
    # UTF-8 bytes: a token's claims may hold what PostgreSQL text refuses (a NUL).
    sa.Column("agency", sa.LargeBinary, nullable=False),
    sa.Column("subject", sa.LargeBinary, nullable=False),
    sa.Column("node_id", sa.Text, nullable=False),
    sa.Column("status", sa.Text, nullable=False),
    sa.Column("filed_at_ms", sa.BigInteger, nullable=False),
    sa.Column("expires_at_ms", sa.BigInteger, nullable=False),
    sa.Column("answer_by_ms", sa.BigInteger, nullable=False),
    sa.Column("request_digest", sa.LargeBinary, nullable=False),
    sa.Column("request_key_id", sa.Text, nullable=False),
    sa.Column("request_signature", sa.LargeBinary, nullable=False),
    sa.Column("request_sealed", _SEALED, nullable=False),
    sa.Column("ack_key_id", sa.Text, nullable=True),
    sa.Column("ack_signature", sa.LargeBinary, nullable=True),
    sa.Column("ack_sealed", _SEALED, nullable=True),
    sa.Column("decision_key_id", sa.Text, nullable=True),
    sa.Column("decision_signature", sa.LargeBinary, nullable=True),
    sa.Column("decision_sealed", _SEALED, nullable=True),
    sa.Column("decided_at_ms", sa.BigInteger, nullable=False),
    sa.Column("detail", sa.Text, nullable=False),
    sa.Index("ix_liaison_gateway_followup_requester", "requester_key", "filed_at_ms"),
)

_COLUMNS = tuple(c.name for c in followup_rows.columns)
# The newest this many of an investigator's follow-ups are listed.
MAX_LISTED = 200
_SEAL_NONCE_BYTES = 12
_SEAL_INFO = b"liaison gateway follow-up rows v1"
# How many times creating the table is tried: replicas starting at once may
# race to create it, and the loser finds it made on the next try.
_CREATE_ATTEMPTS = 3


def stored_text(text: str) -> bytes:
    return text.encode("utf-8", "surrogatepass")


def requester_key(agency: str, subject: str) -> str:
    """The index key of an investigator's rows (the rows hold agency and subject too)."""
    a, s = stored_text(agency), stored_text(subject)
    joined = b"%d:%b%b" % (len(a), a, s)  # length-prefixed: no two pairs join alike
    return hashlib.sha256(b"liaison follow-up requester\x00" + joined).hexdigest()


def _text(value: Any) -> str:
    return bytes(value).decode("utf-8", "surrogateescape")


@dataclass(frozen=True, slots=True)
class FollowUpRow:
    """One stored follow-up request, its envelopes unsealed."""

    followup_id: str
    agency: str
    subject: str
    node_id: str
    status: FollowUpStatus
    filed_at_ms: int
    expires_at_ms: int
    answer_by_ms: int
    request_digest: bytes
    request: Envelope
    ack: Envelope | None
    decision: Envelope | None
    decided_at_ms: int
    detail: str

    def view(self, detail: str | None = None) -> FollowUpView:
        return FollowUpView(
            followup_id=self.followup_id,
            node_id=self.node_id,
            status=self.status,
            filed_at_ms=self.filed_at_ms,
            answer_by_ms=self.answer_by_ms,
            signed_request=self.request,
            ack=self.ack,
            decision=self.decision,
            detail=self.detail if detail is None else detail,
            decided_at_ms=self.decided_at_ms,
        )


class FollowUpStore:
    """Statements over the follow-up table, compiled once; rows sealed and unsealed here.

    Writes are :class:`SideRows` for the caller to commit with a ledger entry;
    reads are point reads of committed rows (blocking: run them off the loop).
    """

    def __init__(self, store: LedgerStore, signing_key: SigningKey) -> None:
        self._store = store
        self._key_id = signing_key.key_id
        secret = HKDF(hashes.SHA256(), 32, salt=None, info=_SEAL_INFO).derive(
            signing_key.private_key.private_bytes_raw()
        )
        self._sealer = AESGCM(secret)
        self._created = False
        t = followup_rows
        c = t.c
        self._insert = store.insert_statement(t)
        self._by_id = store.prepare(
            sa.select(t).where(c.followup_id == sa.bindparam("fid")), ("fid",)
        )
        self._by_requester = store.prepare(
            sa.select(t)
            .where(c.requester_key == sa.bindparam("requester_key"))
            .order_by(c.filed_at_ms.desc(), c.followup_id)
            # As text: prepare() takes no bound LIMIT (SQLAlchemy names it itself).
            .suffix_with(f"LIMIT {int(MAX_LISTED)}"),
            ("requester_key",),
        )
        # Only a pending row moves on: of two replicas that collected the same
        # reply, the second changes nothing.
        # A literal, not a value: prepare() takes only the parameters it is told of.
        pending = sa.and_(
            c.followup_id == sa.bindparam("fid"),
            c.status == sa.literal_column(f"'{FollowUpStatus.PENDING.value}'"),
        )
        self._delivered = store.prepare(
            t.update()
            .where(pending, c.ack_sealed.is_(None))
            .values(
                status=sa.bindparam("new_status"),
                ack_key_id=sa.bindparam("new_key_id"),
                ack_signature=sa.bindparam("new_signature"),
                ack_sealed=sa.bindparam("new_sealed"),
                detail=sa.bindparam("new_detail"),
            ),
            ("new_status", "new_key_id", "new_signature", "new_sealed", "new_detail", "fid"),
        )
        self._undelivered = store.prepare(
            t.update()
            .where(pending, c.ack_sealed.is_(None))
            .values(status=sa.bindparam("new_status"), detail=sa.bindparam("new_detail")),
            ("new_status", "new_detail", "fid"),
        )
        self._decided = store.prepare(
            t.update()
            .where(pending)
            .values(
                status=sa.bindparam("new_status"),
                decision_key_id=sa.bindparam("new_key_id"),
                decision_signature=sa.bindparam("new_signature"),
                decision_sealed=sa.bindparam("new_sealed"),
                decided_at_ms=sa.bindparam("new_decided_at_ms"),
                detail=sa.bindparam("new_detail"),
            ),
            (
                "new_status",
                "new_key_id",
                "new_signature",
                "new_sealed",
                "new_decided_at_ms",
                "new_detail",
                "fid",
            ),
        )

    def ensure_table(self) -> None:
        """Create the table beside the ledger's, once (blocking)."""
        if self._created:
            return
        for attempt in range(1, _CREATE_ATTEMPTS + 1):
            try:
                self._store.create_tables(followup_tables)
                break
            except LedgerUnavailable:
                if attempt == _CREATE_ATTEMPTS:
                    raise
        self._created = True

    # --- writes, as side rows of a ledger entry -------------------------------------

    def insert(
        self,
        *,
        followup_id: str,
        agency: str,
        subject: str,
        node_id: str,
        filed_at_ms: int,
        expires_at_ms: int,
        answer_by_ms: int,
        request_digest: bytes,
        request: Envelope,
        detail: str,
    ) -> SideRows:
        row = (
            followup_id,
            requester_key(agency, subject),
            stored_text(agency),
            stored_text(subject),
            node_id,
            FollowUpStatus.PENDING.value,
            filed_at_ms,
            expires_at_ms,
            answer_by_ms,
            request_digest,
            request.key_id,
            request.signature,
            self._seal(request.payload, followup_id, "request"),
            None,
            None,
            None,
            None,
            None,
            None,
            0,
            detail,
        )
        return SideRows(self._insert, (row,))

    def delivered(
        self, followup_id: str, status: FollowUpStatus, ack: Envelope, detail: str
    ) -> SideRows:
        sealed = self._seal(ack.payload, followup_id, "ack")
        return SideRows(
            self._delivered,
            ((status.value, ack.key_id, ack.signature, sealed, detail, followup_id),),
        )

    def undelivered(self, followup_id: str, detail: str) -> SideRows:
        return SideRows(
            self._undelivered, ((FollowUpStatus.NOT_DELIVERED.value, detail, followup_id),)
        )

    def decided(
        self,
        followup_id: str,
        status: FollowUpStatus,
        decision: Envelope,
        decided_at_ms: int,
        detail: str = "",
    ) -> SideRows:
        sealed = self._seal(decision.payload, followup_id, "decision")
        return SideRows(
            self._decided,
            (
                (
                    status.value,
                    decision.key_id,
                    decision.signature,
                    sealed,
                    decided_at_ms,
                    detail,
                    followup_id,
                ),
            ),
        )

    # --- reads (blocking) -----------------------------------------------------------

    def get(self, followup_id: str) -> FollowUpRow | None:
        self.ensure_table()
        found = self._store.fetch(self._by_id, (followup_id,))
        return self._row(found[0]) if found else None

    def of_requester(self, agency: str, subject: str) -> list[FollowUpRow]:
        """The investigator's follow-ups, newest first (at most ``MAX_LISTED``)."""
        self.ensure_table()
        found = self._store.fetch(self._by_requester, (requester_key(agency, subject),))
        return [self._row(r) for r in found]

    def _row(self, cells: Sequence[Any]) -> FollowUpRow:
        r = dict(zip(_COLUMNS, cells, strict=True))
        followup_id = str(r["followup_id"])
        sealed_by = str(r["request_key_id"])
        return FollowUpRow(
            followup_id=followup_id,
            agency=_text(r["agency"]),
            subject=_text(r["subject"]),
            node_id=str(r["node_id"]),
            status=FollowUpStatus(str(r["status"])),
            filed_at_ms=int(r["filed_at_ms"]),
            expires_at_ms=int(r["expires_at_ms"]),
            answer_by_ms=int(r["answer_by_ms"]),
            request_digest=bytes(r["request_digest"]),
            request=Envelope(
                self._open(bytes(r["request_sealed"]), followup_id, "request", sealed_by),
                FOLLOWUP_REQUEST_TYPE,
                KeyId(sealed_by),
                bytes(r["request_signature"]),
            ),
            ack=self._envelope(r, "ack", FOLLOWUP_ACK_TYPE, sealed_by),
            decision=self._envelope(r, "decision", FOLLOWUP_DECISION_TYPE, sealed_by),
            decided_at_ms=int(r["decided_at_ms"]),
            detail=str(r["detail"]),
        )

    def _envelope(
        self, r: dict[str, Any], part: str, payload_type: str, sealed_by: str
    ) -> Envelope | None:
        sealed = r[f"{part}_sealed"]
        if sealed is None:
            return None
        return Envelope(
            self._open(bytes(sealed), str(r["followup_id"]), part, sealed_by),
            payload_type,
            KeyId(str(r[f"{part}_key_id"])),
            bytes(r[f"{part}_signature"]),
        )

    # --- sealing --------------------------------------------------------------------

    def _seal(self, payload: bytes, followup_id: str, part: str) -> bytes:
        iv = os.urandom(_SEAL_NONCE_BYTES)
        return iv + self._sealer.encrypt(iv, payload, _bound(followup_id, part))

    def _open(self, sealed: bytes, followup_id: str, part: str, sealed_by: str) -> bytes:
        iv, body = sealed[:_SEAL_NONCE_BYTES], sealed[_SEAL_NONCE_BYTES:]
        try:
            return self._sealer.decrypt(iv, body, _bound(followup_id, part))
        except InvalidTag:
            if sealed_by != self._key_id:
                raise LedgerError(
                    f"follow-up {followup_id} was stored by a gateway signing with key "
                    f"{sealed_by[:16]}…, not this one's ({self._key_id[:16]}…); serve it with "
                    "the key it was filed under"
                ) from None
            raise LedgerError(
                f"the stored {part} of follow-up {followup_id} does not open: the row was "
                "altered outside the gateway"
            ) from None


def _bound(followup_id: str, part: str) -> bytes:
    return followup_id.encode("utf-8") + b"\x00" + part.encode("ascii")
