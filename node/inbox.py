"""The node's durable inbox and the record references it issues.

Both live beside the receipts, in the receipts ledger's database, and are
written in the same commit as the receipt that accounts for them: a record
reference exists only if the answer naming it was receipted, an inbox item
only with the receipt of its delivery, a decision only with the receipt of
the decision. Nothing here is lost on a crash that the ledger keeps.

A record reference stands for "the records that matched query Q at this
node". It is random, so it says nothing to anyone else; what it stands for
(the query's predicates, which are another agency's selectors) is sealed
with the node's state key, as stored answers are.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from liaison.envelope import Envelope
from liaison.errors import LedgerUnavailable, StateUnavailable
from liaison.ledger.log import Ledger
from liaison.ledger.store import SideRows
from liaison.query import Comparator, Predicate
from liaison.wire import envelope_from_bytes, envelope_to_bytes
from node.replay import stored_text
from policies.model import RowFilter

inbox_tables = sa.MetaData()

record_ref = sa.Table(
    "liaison_node_record_ref",
    inbox_tables,
    sa.Column("ref", sa.Text, primary_key=True),
    sa.Column("query_id", sa.LargeBinary, nullable=False),
    sa.Column("agency", sa.Text, nullable=False),
    sa.Column("dataset", sa.Text, nullable=False),
    # The query's predicates (JSON), sealed under the node's state key.
    sa.Column("predicates", sa.LargeBinary, nullable=False),
    sa.Column("created_ms", sa.BigInteger, nullable=False),
)

inbox_item = sa.Table(
    "liaison_node_inbox",
    inbox_tables,
    sa.Column("id", sa.Text, primary_key=True),
    # "follow-up" or "hit"
    sa.Column("kind", sa.Text, nullable=False),
    sa.Column("received_ms", sa.BigInteger, nullable=False, index=True),
    sa.Column("answer_by_ms", sa.BigInteger, nullable=False),
    sa.Column("status", sa.Text, nullable=False),
    # The gateway identity that delivered it: only it may collect the decision.
    sa.Column("gateway_id", sa.Text, nullable=False),
    sa.Column("request_digest", sa.LargeBinary, nullable=False),
    # Everything else an officer reads (JSON, ASCII).
    sa.Column("body", sa.LargeBinary, nullable=False),
    # Signed envelopes (serialised protobuf), empty until there is one.
    sa.Column("ack", sa.LargeBinary, nullable=False),
    sa.Column("decision", sa.LargeBinary, nullable=False),
    sa.Column("decided_ms", sa.BigInteger, nullable=False),
)

FOLLOW_UP = "follow-up"
HIT = "hit"
PENDING = "pending"
NOTICE = "notice"
_SEAL_NONCE_BYTES = 12
_LOCK_STRIPES = 64
# Besides every pending request, an officer's full list shows this many items
# at most (newest first) of the last RECENT_DAYS days.
MAX_LISTED = 500
RECENT_DAYS = 30


def new_ref() -> str:
    """An opaque record reference: 128 random bits, lower-case base32."""
    return "r-" + base64.b32encode(os.urandom(16)).decode("ascii").rstrip("=").lower()


@dataclass(frozen=True, slots=True)
class ResolvedRef:
    ref: str
    query_id: str
    agency: str
    dataset: str
    predicates: tuple[Predicate, ...]
    # The answering permit's row filters: a follow-up is about the rows the
    # answer was about, never rows that permit kept out of it.
    row_filters: tuple[RowFilter, ...] = ()


@dataclass(frozen=True, slots=True)
class StoredItem:
    id: str
    kind: str
    received_ms: int
    answer_by_ms: int
    status: str
    gateway_id: str
    request_digest: bytes
    body: dict[str, Any]
    ack: Envelope | None
    decision: Envelope | None
    decided_ms: int


def envelope_bytes(envelope: Envelope | None) -> bytes:
    return b"" if envelope is None else envelope_to_bytes(envelope)


def _envelope(raw: object) -> Envelope | None:
    data = bytes(raw) if isinstance(raw, bytes | bytearray | memoryview) else b""
    return envelope_from_bytes(data) if data else None


class Inbox:
    """Record references and inbox items, as side rows of the receipts ledger."""

    def __init__(self, receipts: Ledger, seal_key: bytes) -> None:
        store = receipts.store
        store.create_tables(inbox_tables)
        self._store = store
        self._sealer = AESGCM(seal_key[:32])
        self._insert_ref = store.insert_statement(record_ref)
        self._insert_item = store.insert_statement(inbox_item)
        r, i = record_ref.c, inbox_item.c
        self._select_ref = store.prepare(
            sa.select(r.query_id, r.agency, r.dataset, r.predicates).where(
                r.ref == sa.bindparam("ref")
            ),
            ("ref",),
        )
        columns = (
            i.id,
            i.kind,
            i.received_ms,
            i.answer_by_ms,
            i.status,
            i.gateway_id,
            i.request_digest,
            i.body,
            i.ack,
            i.decision,
            i.decided_ms,
        )
        self._select_item = store.prepare(
            sa.select(*columns).where(i.id == sa.bindparam("id")), ("id",)
        )
        # Pending requests however old, and everything of the recent past.
        # Pending requests, however many and however old: they must never
        # drop out of sight behind a flood of hit notices.
        self._pending = store.prepare(
            sa.select(*columns)
            .where(i.kind == sa.bindparam("kind"))
            .where(i.status == sa.bindparam("pending"))
            .order_by(i.answer_by_ms),
            ("kind", "pending"),
        )
        # Everything recent, newest first, at most MAX_LISTED. Text, because a
        # LIMIT built by SQLAlchemy is a bound parameter of its own naming.
        names = ", ".join(c.name for c in columns)
        self._recent = store.prepare(
            sa.text(
                # Our own table's and columns' names and a constant: nothing a caller gives.
                f"SELECT {names} FROM {inbox_item.name} WHERE received_ms >= :since "  # noqa: S608
                f"ORDER BY received_ms DESC LIMIT {MAX_LISTED}"
            ),
            ("since",),
        )
        self._decide = store.prepare(
            inbox_item.update()
            .where(i.id == sa.bindparam("item_id"))
            .where(i.status == sa.bindparam("old_status"))
            .values(
                status=sa.bindparam("new_status"),
                decision=sa.bindparam("new_decision"),
                decided_ms=sa.bindparam("when"),
            ),
            ("new_status", "new_decision", "when", "item_id", "old_status"),
        )
        # One decision or delivery of an item at a time: the status read and
        # the write that changes it must not interleave with another's. Striped
        # by id, so a slow decision holds up only the items sharing its stripe.
        self._locks = tuple(threading.Lock() for _ in range(_LOCK_STRIPES))

    def lock(self, item_id: str) -> threading.Lock:
        """The lock under which ``item_id`` is read and changed."""
        digest = hashlib.sha256(item_id.encode("utf-8")).digest()
        return self._locks[digest[0] % _LOCK_STRIPES]

    # --- references -----------------------------------------------------------

    def ref_rows(
        self,
        ref: str,
        *,
        query_id: str,
        agency: str,
        dataset: str,
        predicates: Sequence[Predicate],
        row_filters: Sequence[RowFilter],
        now_ms: int,
    ) -> SideRows:
        document = json.dumps(
            {
                "predicates": [
                    {
                        "field": p.field,
                        "comparator": p.comparator.value,
                        "values": list(p.values),
                        "max_distance": p.max_distance,
                    }
                    for p in predicates
                ],
                "row_filters": [
                    {"field": f.field, "comparator": f.comparator.value, "values": list(f.values)}
                    for f in row_filters
                ],
            }
        ).encode("utf-8")
        sealed = self._seal(document, ref.encode("ascii"))
        return SideRows(
            self._insert_ref,
            ((ref, stored_text(query_id), agency, dataset, sealed, now_ms),),
        )

    def resolve(self, ref: str) -> ResolvedRef | None:
        """What ``ref`` stands for; None if this node never issued it."""
        rows = self._fetch(self._select_ref, (ref,))
        if not rows:
            return None
        query_id, agency, dataset, sealed = rows[0]
        document = json.loads(self._open(bytes(sealed), ref.encode("ascii")))
        predicates = tuple(
            Predicate(
                p["field"], Comparator(p["comparator"]), tuple(p["values"]), p.get("max_distance")
            )
            for p in document["predicates"]
        )
        row_filters = tuple(
            RowFilter(f["field"], Comparator(f["comparator"]), tuple(f["values"]))
            for f in document["row_filters"]
        )
        return ResolvedRef(
            ref,
            bytes(query_id).decode("utf-8"),
            str(agency),
            str(dataset),
            predicates,
            row_filters,
        )

    # --- items ----------------------------------------------------------------

    def item_rows(
        self,
        *,
        item_id: str,
        kind: str,
        received_ms: int,
        answer_by_ms: int,
        status: str,
        gateway_id: str,
        request_digest: bytes,
        body: dict[str, Any],
        ack: Envelope | None = None,
    ) -> SideRows:
        return SideRows(
            self._insert_item,
            (
                (
                    item_id,
                    kind,
                    received_ms,
                    answer_by_ms,
                    status,
                    gateway_id,
                    request_digest,
                    json.dumps(body, sort_keys=True).encode("ascii"),
                    envelope_bytes(ack),
                    b"",
                    0,
                ),
            ),
        )

    def decided_rows(self, item_id: str, status: str, decision: Envelope, when_ms: int) -> SideRows:
        return SideRows(
            self._decide, ((status, envelope_bytes(decision), when_ms, item_id, PENDING),)
        )

    def get(self, item_id: str) -> StoredItem | None:
        rows = self._fetch(self._select_item, (item_id,))
        return _item(rows[0]) if rows else None

    def pending(self) -> list[StoredItem]:
        """Every follow-up request waiting for a decision, the soonest due first."""
        return [_item(row) for row in self._fetch(self._pending, (FOLLOW_UP, PENDING))]

    def recent(self, now_ms: int) -> list[StoredItem]:
        """Items of the last :data:`RECENT_DAYS` days, newest first, at most :data:`MAX_LISTED`."""
        since = now_ms - RECENT_DAYS * 86_400_000
        return [_item(row) for row in self._fetch(self._recent, (since,))]

    # --- plumbing ---------------------------------------------------------------

    def _fetch(self, statement: Any, values: Sequence[Any]) -> list[tuple[Any, ...]]:
        try:
            return self._store.fetch(statement, values)
        except LedgerUnavailable as exc:
            raise StateUnavailable(
                "this node cannot read its inbox now (its receipts database is not answering); "
                "try again shortly"
            ) from exc

    def _seal(self, data: bytes, aad: bytes) -> bytes:
        iv = os.urandom(_SEAL_NONCE_BYTES)
        return iv + self._sealer.encrypt(iv, data, aad)

    def _open(self, sealed: bytes, aad: bytes) -> bytes:
        iv, body = sealed[:_SEAL_NONCE_BYTES], sealed[_SEAL_NONCE_BYTES:]
        try:
            return self._sealer.decrypt(iv, body, aad)
        except InvalidTag:
            raise StateUnavailable(
                "this node issued that record reference but cannot read it back (its state "
                "key changed); the investigator must ask the query again"
            ) from None


def _item(row: Sequence[Any]) -> StoredItem:
    (
        item_id,
        kind,
        received,
        answer_by,
        status,
        gateway_id,
        digest,
        body,
        ack,
        decision,
        decided,
    ) = row
    return StoredItem(
        id=str(item_id),
        kind=str(kind),
        received_ms=int(received),
        answer_by_ms=int(answer_by),
        status=str(status),
        gateway_id=str(gateway_id),
        request_digest=bytes(digest),
        body=json.loads(bytes(body)),
        ack=_envelope(ack),
        decision=_envelope(decision),
        decided_ms=int(decided),
    )
