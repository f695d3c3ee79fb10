"""Ledger entries: versioned, self-describing records in canonical JSON.

An entry's bytes are what the Merkle leaf hashes, so they are written once
and never re-encoded: readers parse them for display and checks, but verify
the stored bytes. JSON (sorted keys, no spaces, UTF-8) keeps an entry
readable by an auditor with nothing but a text editor, years from now, and
the ``format``/``v`` pair tells any reader what it holds.

Selectors never appear in clear: every predicate value is stored as an
HMAC-SHA-256 under the federation's audit key, so an auditor holding that key
can ask "was this value ever queried?" while the ledger is no second copy of
the data.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import json
import operator
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import msgspec

from liaison.errors import ConfigError, EntryError

if TYPE_CHECKING:
    # For annotations only: the verifier's second process imports this module
    # and should not pay for the message types it never builds.
    from liaison.followups import FollowUpDecision, FollowUpRequest
    from liaison.messages import NodeResult, QueryRequest
    from liaison.query import Predicate

FORMAT = "liaison.ledger.entry"
VERSION = 1
MAX_ENTRY_BYTES = 1024 * 1024
AUDIT_KEY_BYTES = 32


class EntryKind(StrEnum):
    # The gateway's record of a request, written before any node is asked.
    REQUEST = "request"
    # The gateway's record of what each node did with a request.
    OUTCOME = "outcome"
    # A node's record of a request it answered, with the gateway's proof.
    RECEIPT = "receipt"
    # A process (re)opened the ledger: requests without an outcome before it
    # were cut short by a stop or crash, not hidden.
    OPENED = "opened"
    # The gateway's record of a follow-up request, written before delivery.
    FOLLOWUP = "followup"
    # The gateway's record of what the holding node said on delivery.
    FOLLOWUP_DELIVERY = "followup-delivery"
    # The gateway's record of the holding node's signed decision, when collected.
    FOLLOWUP_OUTCOME = "followup-outcome"
    # A node's record of a follow-up request it took in, with the gateway's proof.
    FOLLOWUP_RECEIPT = "followup-receipt"
    # A node's record of a duty officer's decision and what it released.
    FOLLOWUP_DECISION = "followup-decision"


class AuditKey:
    """The secret under which selectors are hashed; auditors hold a copy."""

    def __init__(self, secret: bytes) -> None:
        if len(secret) < AUDIT_KEY_BYTES:
            raise ConfigError(
                f"the audit key must hold at least {AUDIT_KEY_BYTES} bytes; "
                "create one with `liaison init`"
            )
        self._secret = secret
        # Names the key in every entry, so a key rotation is visible and an
        # auditor knows which key answers for which entries.
        self.key_id = hashlib.sha256(b"liaison audit key id\x00" + secret).hexdigest()[:16]

    @classmethod
    def from_file(cls, path: Path) -> AuditKey:
        try:
            text = path.read_text().strip()
        except FileNotFoundError as exc:
            raise ConfigError(
                f"audit key file {path} does not exist; create one with `liaison init`"
            ) from exc
        except OSError as exc:
            raise ConfigError(f"cannot read audit key file {path} ({exc.strerror})") from exc
        try:
            return cls(bytes.fromhex(text))
        except ValueError as exc:
            raise ConfigError(f"audit key file {path} must hold hex digits") from exc

    def hash(self, value: str) -> str:
        return hmac.new(self._secret, value.encode("utf-8"), hashlib.sha256).hexdigest()


def canonical_json(document: Mapping[str, Any]) -> bytes:
    return json.dumps(
        document, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    ).encode("utf-8")


@dataclass(frozen=True, slots=True)
class Entry:
    """A parsed entry: its kind, its fields, and the exact bytes that were logged."""

    kind: EntryKind
    fields: Mapping[str, Any]
    raw: bytes

    @property
    def time_ms(self) -> int:
        return int(self.fields.get("time_ms", 0))

    @property
    def query_id(self) -> str:
        return str(self.fields.get("query_id", ""))

    def text(self, key: str) -> str:
        value = self.fields.get(key, "")
        return value if isinstance(value, str) else ""


def _entry(kind: EntryKind, body: Mapping[str, Any]) -> bytes:
    raw = canonical_json({"format": FORMAT, "v": VERSION, "kind": kind.value, **body})
    if len(raw) > MAX_ENTRY_BYTES:
        raise EntryError(f"a {kind} entry of {len(raw)} bytes exceeds {MAX_ENTRY_BYTES}")
    return raw


def request_entry(
    request: QueryRequest, *, request_digest: bytes, key_id: str, audit_key: AuditKey
) -> bytes:
    """The gateway's entry for ``request``, whose signed payload hashes to ``request_digest``."""
    query = request.query
    requester = request.requester
    return _entry(
        EntryKind.REQUEST,
        {
            "query_id": request.query_id,
            "time_ms": request.issued_at_ms,
            "expires_at_ms": request.expires_at_ms,
            "gateway_id": request.gateway_id,
            "request_digest": request_digest.hex(),
            "request_key_id": key_id,
            "requester": requester.as_json(),
            "purpose": request.purpose,
            "case_ref": request.case_ref,
            "legal_basis": request.legal_basis,
            "catalog_version": request.catalog_version,
            "dataset": query.dataset,
            "operation": query.operation.value,
            "targets": list(request.audience),
            "predicates": [_predicate(p, audit_key) for p in query.predicates],
            "fields": list(query.fields),
            "group_by": query.group_by or "",
            "limit": query.limit,
            "audit_key_id": audit_key.key_id,
        },
    )


def _predicate(p: Predicate, audit_key: AuditKey) -> dict[str, Any]:
    logged: dict[str, Any] = {
        "field": p.field,
        "comparator": p.comparator.value,
        "values_hmac": [audit_key.hash(v) for v in p.values],
    }
    if p.max_distance is not None:
        logged["max_distance"] = p.max_distance
    return logged


def outcome_entry(
    *, query_id: str, request_digest: bytes, time_ms: int, results: Sequence[NodeResult]
) -> bytes:
    """The gateway's entry for what became of a request at each node."""
    return _entry(
        EntryKind.OUTCOME,
        {
            "query_id": query_id,
            "time_ms": time_ms,
            "request_digest": request_digest.hex(),
            "results": [
                {
                    "node_id": r.node_id,
                    "status": r.status.value,
                    "answer_digest": r.answer_digest,
                    "rules": list(r.answer.decision.rules) if r.answer else [],
                    "latency_ms": r.latency_ms,
                }
                for r in results
            ],
        },
    )


@dataclass(frozen=True, slots=True)
class ReceiptFacts:
    """What a node knows of one answered request, for its receipt."""

    node_id: str
    time_ms: int
    query_id: str
    request_digest: bytes
    gateway_id: str
    gateway_key_id: str
    gateway_signature: bytes
    gateway_entry: bytes
    gateway_leaf_index: int
    gateway_checkpoint: str
    status: str
    rules: tuple[str, ...]
    obligations: tuple[str, ...]
    answer_digest: str
    answer_key_id: str
    # The node's policy asked to be told of this hit: its inbox holds a notice.
    holder_notified: bool = False


def receipt_entry(facts: ReceiptFacts) -> bytes:
    """A node's receipt: the gateway's logged entry and proof of it, and what was answered."""
    return _entry(
        EntryKind.RECEIPT,
        {
            "node_id": facts.node_id,
            "time_ms": facts.time_ms,
            "query_id": facts.query_id,
            "request_digest": facts.request_digest.hex(),
            "gateway_id": facts.gateway_id,
            "gateway_key_id": facts.gateway_key_id,
            "gateway_signature": facts.gateway_signature.hex(),
            # The gateway's entry verbatim (it holds only keyed hashes), so
            # the receipt shows who asked what without the gateway's ledger,
            # and reconciling can compare leaf hashes.
            "gateway_entry": facts.gateway_entry.decode("utf-8"),
            "gateway_leaf_index": facts.gateway_leaf_index,
            "gateway_checkpoint": facts.gateway_checkpoint,
            "status": facts.status,
            "rules": list(facts.rules),
            "obligations": list(facts.obligations),
            "answer_digest": facts.answer_digest,
            "answer_key_id": facts.answer_key_id,
            # Only when set: receipts of earlier releases stay byte for byte as they were.
            **({"holder_notified": True} if facts.holder_notified else {}),
        },
    )


def followup_entry(
    request: FollowUpRequest, *, request_digest: bytes, key_id: str, audit_key: AuditKey
) -> bytes:
    """The gateway's entry for a follow-up request; the free text only as a keyed hash."""
    return _entry(
        EntryKind.FOLLOWUP,
        {
            "followup_id": request.followup_id,
            "time_ms": request.issued_at_ms,
            "expires_at_ms": request.expires_at_ms,
            "gateway_id": request.gateway_id,
            "request_digest": request_digest.hex(),
            "request_key_id": key_id,
            "requester": request.requester.as_json(),
            "node_id": request.node_id,
            "about_query_id": request.query_id,
            "record_refs": list(request.record_refs),
            "fields": list(request.fields),
            "purpose": request.purpose,
            "case_ref": request.case_ref,
            "legal_basis": request.legal_basis,
            "urgency": request.urgency.value,
            "answer_by_ms": request.answer_by_ms,
            "catalog_version": request.catalog_version,
            "text_hmac": audit_key.hash(request.text),
            "audit_key_id": audit_key.key_id,
        },
    )


def followup_delivery_entry(
    *,
    followup_id: str,
    request_digest: bytes,
    time_ms: int,
    node_id: str,
    status: str,
    ack_digest: str = "",
    detail: str = "",
) -> bytes:
    """What the holding node said when the gateway delivered a follow-up request."""
    return _entry(
        EntryKind.FOLLOWUP_DELIVERY,
        {
            "followup_id": followup_id,
            "time_ms": time_ms,
            "request_digest": request_digest.hex(),
            "node_id": node_id,
            "status": status,
            "ack_digest": ack_digest,
            "detail": detail,
        },
    )


def followup_outcome_entry(
    decision: FollowUpDecision, *, time_ms: int, decision_digest: str
) -> bytes:
    """The gateway's record of a node's signed decision, written before anyone sees it."""
    return _entry(
        EntryKind.FOLLOWUP_OUTCOME,
        {
            "followup_id": decision.followup_id,
            "time_ms": time_ms,
            "request_digest": decision.request_digest.hex(),
            "node_id": decision.node_id,
            "outcome": decision.outcome.value,
            "decision_digest": decision_digest,
            "fields": [
                {"field": f.field, "released": f.released, "handling": f.handling}
                for f in decision.field_decisions
            ],
        },
    )


@dataclass(frozen=True, slots=True)
class FollowUpReceiptFacts:
    """What a node knows of a follow-up request it took in, for its receipt."""

    node_id: str
    time_ms: int
    followup_id: str
    request_digest: bytes
    gateway_id: str
    gateway_key_id: str
    gateway_signature: bytes
    gateway_entry: bytes
    gateway_leaf_index: int
    gateway_checkpoint: str
    accepted: bool
    rules: tuple[str, ...]
    answer_by_ms: int
    ack_digest: str
    ack_key_id: str


def followup_receipt_entry(facts: FollowUpReceiptFacts) -> bytes:
    return _entry(
        EntryKind.FOLLOWUP_RECEIPT,
        {
            "node_id": facts.node_id,
            "time_ms": facts.time_ms,
            "followup_id": facts.followup_id,
            "request_digest": facts.request_digest.hex(),
            "gateway_id": facts.gateway_id,
            "gateway_key_id": facts.gateway_key_id,
            "gateway_signature": facts.gateway_signature.hex(),
            "gateway_entry": facts.gateway_entry.decode("utf-8"),
            "gateway_leaf_index": facts.gateway_leaf_index,
            "gateway_checkpoint": facts.gateway_checkpoint,
            "accepted": facts.accepted,
            "rules": list(facts.rules),
            "answer_by_ms": facts.answer_by_ms,
            "ack_digest": facts.ack_digest,
            "ack_key_id": facts.ack_key_id,
        },
    )


def followup_decision_entry(
    decision: FollowUpDecision,
    *,
    officer_roles: Sequence[str],
    decision_digest: str,
    decision_key_id: str,
) -> bytes:
    """A node's record of a duty officer's decision: who, what, under which codes."""
    return _entry(
        EntryKind.FOLLOWUP_DECISION,
        {
            "node_id": decision.node_id,
            "time_ms": decision.decided_at_ms,
            "followup_id": decision.followup_id,
            "request_digest": decision.request_digest.hex(),
            "officer": decision.officer,
            "officer_issuer": decision.officer_issuer,
            "officer_roles": list(officer_roles),
            "outcome": decision.outcome.value,
            "reason": decision.reason,
            "fields": [
                {
                    "field": f.field,
                    "released": f.released,
                    "handling": f.handling,
                    "reason": f.reason,
                }
                for f in decision.field_decisions
            ],
            "rows": len(decision.rows),
            "rules": list(decision.rules),
            "decision_digest": decision_digest,
            "decision_key_id": decision_key_id,
        },
    )


def opened_entry(*, time_ms: int, origin: str, key_id: str, software: str) -> bytes:
    return _entry(
        EntryKind.OPENED,
        {"time_ms": time_ms, "origin": origin, "key_id": key_id, "software": software},
    )


# Fields each kind must carry, with their JSON types; a reader of a later
# release keeps accepting every version it ever wrote.
_REQUIRED: Mapping[EntryKind, Mapping[str, type]] = {
    EntryKind.REQUEST: {
        "query_id": str,
        "time_ms": int,
        "gateway_id": str,
        "request_digest": str,
        "requester": dict,
        "purpose": str,
        "case_ref": str,
        "dataset": str,
        "operation": str,
        "targets": list,
        "predicates": list,
        "audit_key_id": str,
    },
    EntryKind.OUTCOME: {
        "query_id": str,
        "time_ms": int,
        "request_digest": str,
        "results": list,
    },
    EntryKind.RECEIPT: {
        "node_id": str,
        "time_ms": int,
        "query_id": str,
        "request_digest": str,
        "gateway_id": str,
        "gateway_entry": str,
        "gateway_leaf_index": int,
        "gateway_checkpoint": str,
        "status": str,
        "rules": list,
        "answer_digest": str,
    },
    EntryKind.OPENED: {"time_ms": int, "origin": str, "key_id": str},
    EntryKind.FOLLOWUP: {
        "followup_id": str,
        "time_ms": int,
        "gateway_id": str,
        "request_digest": str,
        "requester": dict,
        "node_id": str,
        "about_query_id": str,
        "record_refs": list,
        "fields": list,
        "purpose": str,
        "case_ref": str,
        "urgency": str,
        "answer_by_ms": int,
        "audit_key_id": str,
    },
    EntryKind.FOLLOWUP_DELIVERY: {
        "followup_id": str,
        "time_ms": int,
        "request_digest": str,
        "node_id": str,
        "status": str,
    },
    EntryKind.FOLLOWUP_OUTCOME: {
        "followup_id": str,
        "time_ms": int,
        "request_digest": str,
        "node_id": str,
        "outcome": str,
        "decision_digest": str,
        "fields": list,
    },
    EntryKind.FOLLOWUP_RECEIPT: {
        "node_id": str,
        "time_ms": int,
        "followup_id": str,
        "request_digest": str,
        "gateway_id": str,
        "gateway_entry": str,
        "gateway_leaf_index": int,
        "gateway_checkpoint": str,
        "accepted": bool,
        "ack_digest": str,
    },
    EntryKind.FOLLOWUP_DECISION: {
        "node_id": str,
        "time_ms": int,
        "followup_id": str,
        "request_digest": str,
        "officer": str,
        "outcome": str,
        "fields": list,
        "decision_digest": str,
    },
}
_REQUIRED_ITEMS = {kind: tuple(fields.items()) for kind, fields in _REQUIRED.items()}
_KINDS: dict[object, EntryKind] = {kind.value: kind for kind in EntryKind}


def parse_entry(raw: bytes) -> Entry:
    """Parse logged bytes; raise EntryError naming what is wrong."""
    if len(raw) > MAX_ENTRY_BYTES:
        raise EntryError(f"entry of {len(raw)} bytes exceeds {MAX_ENTRY_BYTES}")
    try:
        document = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise EntryError(f"entry is not UTF-8 JSON ({exc})") from exc
    except RecursionError as exc:
        # Brackets nested thousands deep: a report, not a crash of the verifier.
        raise EntryError("entry is JSON nested too deeply to read") from exc
    if type(document) is not dict or document.get("format") != FORMAT:
        raise EntryError(f"entry is not a {FORMAT} record")
    version = document.get("v")
    if version != VERSION or type(version) is not int:
        raise EntryError(
            f"entry format version {version!r} is not one this release reads (reads {VERSION}); "
            "use a newer liaison"
        )
    named = document.get("kind")
    # Only a string can name a kind; a list or an object would not even hash.
    kind = _KINDS.get(named) if type(named) is str else None
    if kind is None:
        raise EntryError(f"entry kind {named!r} is unknown")
    for name, expected in _REQUIRED_ITEMS[kind]:
        # Exact types: a JSON true is no number to an auditor, though bool is an int to Python.
        if type(document.get(name)) is not expected:
            raise EntryError(f"{kind} entry lacks a valid {name!r}")
    return Entry(kind, document, raw)


# --- many entries at once, for the verifier -------------------------------------
#
# parse_entry builds every value of an entry. Verifying a ledger needs only each
# entry's kind, its query id and a receipt's request digest, but must refuse
# exactly what parse_entry refuses. The structs below restate _REQUIRED for
# msgspec, which checks the same in C: well-formed JSON, the format and version,
# a known kind, every required field of its exact JSON type; and skips what no
# check reads without building it. Whatever they refuse goes to parse_entry,
# which says why, so the two need only agree on what is accepted (a property
# test holds them to it).


class _AnyObject(msgspec.Struct, gc=False):
    """Any JSON object: checked to be one, its members skipped."""


class _AnyArray(msgspec.Struct, array_like=True, gc=False):
    """Any JSON array: checked to be one, its items skipped."""


_SCANNED_TYPES: Mapping[type, Any] = {
    str: str,
    int: int,
    bool: bool,
    dict: _AnyObject,
    list: _AnyArray,
}


class ScannedEntry(msgspec.Struct, tag_field="kind", gc=False):
    """What :func:`scan_entries` reads of one entry: its kind and the fields checks use.

    Kinds without one of these fields read it as "".
    """

    entry_kind: ClassVar[EntryKind]
    query_id: ClassVar[str] = ""
    request_digest: ClassVar[str] = ""
    # A receipt's: the gateway checkpoint that proved the request was logged.
    gateway_checkpoint: ClassVar[str] = ""


def _scanned_struct(kind: EntryKind, required: Mapping[str, type]) -> type[ScannedEntry]:
    fields = [
        ("format", Literal[FORMAT]),
        ("v", Literal[VERSION]),
        *((name, _SCANNED_TYPES[expected]) for name, expected in required.items()),
    ]
    made = msgspec.defstruct(
        f"Scanned{kind.value.title()}",
        # In the order canonical_json writes them, which msgspec matches fastest.
        sorted(fields),
        bases=(ScannedEntry,),
        tag=kind.value,
        namespace={"entry_kind": kind},
        gc=False,
    )
    assert issubclass(made, ScannedEntry)
    return made


SCANNED: Mapping[EntryKind, type[ScannedEntry]] = {
    kind: _scanned_struct(kind, fields) for kind, fields in _REQUIRED.items()
}
# Tagged by "kind": msgspec picks the struct by the kind, wherever the key stands.
_scan_one = msgspec.json.Decoder(functools.reduce(operator.or_, SCANNED.values())).decode
_SCAN_REFUSED = (msgspec.DecodeError, UnicodeDecodeError, RecursionError, TypeError)


def scan_entries(raws: Sequence[bytes]) -> list[ScannedEntry] | None:
    """Read what verifying checks of each of ``raws``; None if parse_entry might refuse any.

    Accepts exactly the entries :func:`parse_entry` accepts, and reads the same
    kind, query id and request digest from them, several times faster. On
    None, parse each entry with :func:`parse_entry` to learn which fails and why.
    """
    try:
        if max(map(len, raws), default=0) > MAX_ENTRY_BYTES:
            return None
        # msgspec does not check the UTF-8 of strings it skips; ASCII is UTF-8.
        if not all(map(bytes.isascii, raws)):
            for raw in raws:
                raw.decode("utf-8")
        return list(map(_scan_one, raws))
    except _SCAN_REFUSED:
        return None
