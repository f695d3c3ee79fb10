"""Follow-up requests, as plain domain types; protobuf lives in ``followup_wire``.

After a hit, an investigator asks the holding agency for more about the
records its answer named. The request names them by the opaque references
the node issued, never by selectors; a duty officer at the holding agency
decides field by field, within the bounds of the node's policy, and every
released value carries a handling code (``liaison.handling``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import StrEnum

from liaison.catalog import Catalog
from liaison.envelope import Envelope
from liaison.errors import CatalogError, InvalidQuery
from liaison.messages import Requester
from liaison.query import validate_case_ref, validate_legal_basis

FOLLOWUP_REQUEST_TYPE = "application/vnd.liaison.followup-request.v1+protobuf"
FOLLOWUP_ACK_TYPE = "application/vnd.liaison.followup-ack.v1+protobuf"
FOLLOWUP_DECISION_TYPE = "application/vnd.liaison.followup-decision.v1+protobuf"

MAX_TEXT_CHARS = 4000
MAX_REFS = 16
MAX_REF_CHARS = 64
MAX_FIELDS = 32
MAX_REASON_CHARS = 1000
# How long a follow-up request may take to reach the node (its signature's
# validity); the decision itself may take until its answer-by time.
DELIVERY_WINDOW_MS = 60_000


class Urgency(StrEnum):
    ROUTINE = "routine"
    URGENT = "urgent"
    IMMEDIATE_RISK = "immediate-risk"


# The answer-by time each urgency sets, from the moment the request is filed.
ANSWER_WITHIN_S = {
    Urgency.ROUTINE: 30 * 24 * 3600,
    Urgency.URGENT: 24 * 3600,
    Urgency.IMMEDIATE_RISK: 3600,
}


def answer_by(filed_at_ms: int, urgency: Urgency) -> int:
    return filed_at_ms + ANSWER_WITHIN_S[urgency] * 1000


def urgency_of(text: str) -> Urgency:
    try:
        return Urgency(text.strip().lower())
    except ValueError:
        choices = ", ".join(u.value for u in Urgency)
        raise InvalidQuery(f"urgency {text!r} is not one of: {choices}") from None


class FollowUpStatus(StrEnum):
    PENDING = "pending"
    APPROVED = "approved"
    PARTIAL = "partial"
    REFUSED = "refused"
    # The gateway logged the request but the node did not take it.
    NOT_DELIVERED = "not delivered"


class DecisionOutcome(StrEnum):
    APPROVED = "approved"
    PARTIAL = "partial"
    REFUSED = "refused"


@dataclass(frozen=True, slots=True)
class FollowUpFiling:
    """What an investigator files: the gateway checks it and turns it into a request."""

    query_id: str
    node_id: str
    record_refs: tuple[str, ...]
    fields: tuple[str, ...]
    purpose: str
    case_ref: str
    urgency: Urgency
    legal_basis: str = ""
    text: str = ""


@dataclass(frozen=True, slots=True)
class FollowUpRequest:
    """The payload the gateway signs and the holding node verifies."""

    followup_id: str
    gateway_id: str
    issued_at_ms: int
    expires_at_ms: int
    nonce: bytes
    node_id: str
    requester: Requester
    query_id: str
    record_refs: tuple[str, ...]
    fields: tuple[str, ...]
    purpose: str
    case_ref: str
    legal_basis: str
    urgency: Urgency
    answer_by_ms: int
    text: str
    catalog_version: str


@dataclass(frozen=True, slots=True)
class FollowUpAck:
    followup_id: str
    node_id: str
    request_digest: bytes
    received_at_ms: int
    accepted: bool
    reason: str
    rules: tuple[str, ...]
    answer_by_ms: int
    decidable_fields: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class FieldDecision:
    field: str
    released: bool
    handling: str = ""
    reason: str = ""


@dataclass(frozen=True, slots=True)
class FollowUpDecision:
    followup_id: str
    node_id: str
    request_digest: bytes
    decided_at_ms: int
    outcome: DecisionOutcome
    field_decisions: tuple[FieldDecision, ...]
    reason: str
    officer: str
    officer_issuer: str
    rules: tuple[str, ...]
    fields: tuple[str, ...] = ()
    rows: tuple[tuple[str | None, ...], ...] = ()

    def handling_of(self, name: str) -> str:
        for d in self.field_decisions:
            if d.field == name:
                return d.handling
        return ""


@dataclass(frozen=True, slots=True)
class FieldChoice:
    """A duty officer's choice for one asked field."""

    field: str
    release: bool
    handling: str = ""
    reason: str = ""


@dataclass(frozen=True, slots=True)
class InboxItem:
    """One entry of a node's inbox: a follow-up request or a hit notice."""

    id: str
    kind: str  # "follow-up" or "hit"
    received_at_ms: int
    answer_by_ms: int
    status: str
    requester: Requester
    purpose: str
    case_ref: str
    legal_basis: str = ""
    urgency: Urgency | None = None
    text: str = ""
    query_id: str = ""
    fields: tuple[str, ...] = ()
    decidable_fields: tuple[str, ...] = ()
    default_handling: str = ""
    rules: tuple[str, ...] = ()
    dataset: str = ""
    record_refs: tuple[str, ...] = ()
    record_keys: tuple[str, ...] = ()
    preview_fields: tuple[str, ...] = ()
    preview_rows: tuple[tuple[str | None, ...], ...] = ()
    decision: Envelope | None = None
    officer_roles: tuple[str, ...] = ()

    def overdue(self, now_ms: int) -> bool:
        return self.status == FollowUpStatus.PENDING and 0 < self.answer_by_ms < now_ms


@dataclass(frozen=True, slots=True)
class FollowUpView:
    """A follow-up request as the gateway keeps it, with the node's signed replies."""

    followup_id: str
    node_id: str
    status: FollowUpStatus
    filed_at_ms: int
    answer_by_ms: int
    signed_request: Envelope
    ack: Envelope | None = None
    decision: Envelope | None = None
    detail: str = ""
    decided_at_ms: int = 0
    # Filled by readers that parsed the envelopes (not on the wire).
    parsed: FollowUpDecision | None = field(default=None, compare=False)

    def overdue(self, now_ms: int) -> bool:
        return self.status is FollowUpStatus.PENDING and self.answer_by_ms < now_ms


def _printable(text: str, what: str, limit: int, *, lines: bool = False) -> str:
    if len(text) > limit:
        raise InvalidQuery(f"{what} takes at most {limit} characters, got {len(text)}")
    allowed = text.replace("\n", "").replace("\t", "") if lines else text
    if not allowed.isprintable():
        raise InvalidQuery(f"{what} must be printable text")
    return text


def validate_reason(reason: str) -> str:
    return _printable(reason.strip(), "a reason", MAX_REASON_CHARS, lines=True)


def validate_filing(filing: FollowUpFiling, catalog: Catalog) -> FollowUpFiling:
    """Check ``filing`` before anything is signed; InvalidQuery saying what to fix."""
    if not filing.query_id or len(filing.query_id) > 64:
        raise InvalidQuery("name the query whose answer named the records (--query-id)")
    _printable(filing.query_id, "the query id", 64)
    if not filing.node_id:
        raise InvalidQuery("name the agency's node that answered (--node)")
    refs = tuple(dict.fromkeys(filing.record_refs))
    if not 1 <= len(refs) <= MAX_REFS:
        raise InvalidQuery(
            f"name 1 to {MAX_REFS} record references from the answer (--ref), got {len(refs)}"
        )
    for ref in refs:
        if not ref or len(ref) > MAX_REF_CHARS or not ref.isascii() or not ref.isprintable():
            raise InvalidQuery(
                f"record reference {ref[:80]!r} is not one a node issues; copy it from the answer"
            )
    fields = tuple(dict.fromkeys(filing.fields))
    if not 1 <= len(fields) <= MAX_FIELDS:
        raise InvalidQuery(f"ask for 1 to {MAX_FIELDS} fields (--fields), got {len(fields)}")
    known = {f.name for d in catalog.datasets for f in d.fields}
    unknown = [f for f in fields if f not in known]
    if unknown:
        raise InvalidQuery(f"unknown field(s) {', '.join(map(repr, unknown))}: not in the catalog")
    if not filing.purpose:
        raise InvalidQuery("a purpose is required (--purpose)")
    try:
        catalog.check_purpose(filing.purpose)
    except CatalogError as exc:
        raise InvalidQuery(str(exc)) from exc
    case_ref = validate_case_ref(filing.case_ref)
    legal_basis = validate_legal_basis(filing.legal_basis)
    text = _printable(filing.text.strip(), "the request's text", MAX_TEXT_CHARS, lines=True)
    return FollowUpFiling(
        query_id=filing.query_id,
        node_id=filing.node_id,
        record_refs=refs,
        fields=fields,
        purpose=filing.purpose,
        case_ref=case_ref,
        urgency=filing.urgency,
        legal_basis=legal_basis,
        text=text,
    )


def outcome_of(decisions: Sequence[FieldDecision]) -> DecisionOutcome:
    released = sum(1 for d in decisions if d.released)
    if released == 0:
        return DecisionOutcome.REFUSED
    return DecisionOutcome.APPROVED if released == len(decisions) else DecisionOutcome.PARTIAL
