"""Follow-up messages to and from protobuf: the one place they are converted."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypeVar

from google.protobuf.message import DecodeError, Message

from liaison.envelope import Envelope
from liaison.errors import MalformedMessage
from liaison.followups import (
    DecisionOutcome,
    FieldChoice,
    FieldDecision,
    FollowUpAck,
    FollowUpDecision,
    FollowUpFiling,
    FollowUpRequest,
    FollowUpStatus,
    FollowUpView,
    InboxItem,
    Urgency,
)
from liaison.messages import Requester
from liaison.wire import envelope_from_proto, envelope_to_proto, rows_from_proto, rows_to_proto
from proto.liaison.v1 import followup_pb2 as pb_followup
from proto.liaison.v1 import gateway_pb2 as pb_gateway
from proto.liaison.v1 import node_pb2 as pb_node
from proto.liaison.v1 import query_pb2 as pb_query

_URGENCY = {
    Urgency.ROUTINE: pb_followup.URGENCY_ROUTINE,
    Urgency.URGENT: pb_followup.URGENCY_URGENT,
    Urgency.IMMEDIATE_RISK: pb_followup.URGENCY_IMMEDIATE_RISK,
}
_URGENCY_BACK: dict[int, Urgency] = {v: k for k, v in _URGENCY.items()}
_OUTCOME = {
    DecisionOutcome.APPROVED: pb_followup.DECISION_OUTCOME_APPROVED,
    DecisionOutcome.PARTIAL: pb_followup.DECISION_OUTCOME_PARTIAL,
    DecisionOutcome.REFUSED: pb_followup.DECISION_OUTCOME_REFUSED,
}
_OUTCOME_BACK: dict[int, DecisionOutcome] = {v: k for k, v in _OUTCOME.items()}


def urgency_from_proto(value: int) -> Urgency:
    found = _URGENCY_BACK.get(value)
    if found is None:
        raise MalformedMessage(
            "a follow-up request needs an urgency: routine, urgent or immediate-risk"
        )
    return found


def _requester_to_proto(r: Requester) -> pb_query.Requester:
    return pb_query.Requester(
        agency=r.agency,
        subject=r.subject,
        roles=list(r.roles),
        issuer=r.issuer,
        attributes=dict(r.attributes),
    )


def _requester_from_proto(r: pb_query.Requester) -> Requester:
    return Requester(r.agency, r.subject, tuple(r.roles), r.issuer, dict(r.attributes))


_M = TypeVar("_M", bound=Message)


def _parse(cls: type[_M], payload: bytes, what: str) -> _M:
    try:
        return cls.FromString(payload)
    except DecodeError as exc:
        raise MalformedMessage(f"the bytes are not a {what}: {exc}") from None


# --- the signed payloads -------------------------------------------------------


def followup_request_to_bytes(r: FollowUpRequest) -> bytes:
    return pb_followup.FollowUpRequest(
        followup_id=r.followup_id,
        gateway_id=r.gateway_id,
        issued_at_ms=r.issued_at_ms,
        expires_at_ms=r.expires_at_ms,
        nonce=r.nonce,
        node_id=r.node_id,
        requester=_requester_to_proto(r.requester),
        query_id=r.query_id,
        record_refs=list(r.record_refs),
        fields=list(r.fields),
        purpose=r.purpose,
        case_ref=r.case_ref,
        legal_basis=r.legal_basis,
        urgency=_URGENCY[r.urgency],
        answer_by_ms=r.answer_by_ms,
        text=r.text,
        catalog_version=r.catalog_version,
    ).SerializeToString(deterministic=True)


def followup_request_from_bytes(payload: bytes) -> FollowUpRequest:
    m = _parse(pb_followup.FollowUpRequest, payload, "FollowUpRequest")
    return FollowUpRequest(
        followup_id=m.followup_id,
        gateway_id=m.gateway_id,
        issued_at_ms=m.issued_at_ms,
        expires_at_ms=m.expires_at_ms,
        nonce=m.nonce,
        node_id=m.node_id,
        requester=_requester_from_proto(m.requester),
        query_id=m.query_id,
        record_refs=tuple(m.record_refs),
        fields=tuple(m.fields),
        purpose=m.purpose,
        case_ref=m.case_ref,
        legal_basis=m.legal_basis,
        urgency=urgency_from_proto(m.urgency),
        answer_by_ms=m.answer_by_ms,
        text=m.text,
        catalog_version=m.catalog_version,
    )


def ack_to_bytes(a: FollowUpAck) -> bytes:
    return pb_followup.FollowUpAck(
        followup_id=a.followup_id,
        node_id=a.node_id,
        request_digest=a.request_digest,
        received_at_ms=a.received_at_ms,
        accepted=a.accepted,
        reason=a.reason,
        rules=list(a.rules),
        answer_by_ms=a.answer_by_ms,
        decidable_fields=list(a.decidable_fields),
    ).SerializeToString(deterministic=True)


def ack_from_bytes(payload: bytes) -> FollowUpAck:
    m = _parse(pb_followup.FollowUpAck, payload, "FollowUpAck")
    return FollowUpAck(
        followup_id=m.followup_id,
        node_id=m.node_id,
        request_digest=m.request_digest,
        received_at_ms=m.received_at_ms,
        accepted=m.accepted,
        reason=m.reason,
        rules=tuple(m.rules),
        answer_by_ms=m.answer_by_ms,
        decidable_fields=tuple(m.decidable_fields),
    )


def decision_to_bytes(d: FollowUpDecision) -> bytes:
    return pb_followup.FollowUpDecision(
        followup_id=d.followup_id,
        node_id=d.node_id,
        request_digest=d.request_digest,
        decided_at_ms=d.decided_at_ms,
        outcome=_OUTCOME[d.outcome],
        field_decisions=[
            pb_followup.FieldDecision(
                field=f.field, released=f.released, handling=f.handling, reason=f.reason
            )
            for f in d.field_decisions
        ],
        reason=d.reason,
        officer=d.officer,
        officer_issuer=d.officer_issuer,
        rules=list(d.rules),
        fields=list(d.fields),
        rows=rows_to_proto(d.rows),
    ).SerializeToString(deterministic=True)


def decision_from_bytes(payload: bytes) -> FollowUpDecision:
    m = _parse(pb_followup.FollowUpDecision, payload, "FollowUpDecision")
    outcome = _OUTCOME_BACK.get(m.outcome)
    if outcome is None:
        raise MalformedMessage("a follow-up decision carries no outcome")
    return FollowUpDecision(
        followup_id=m.followup_id,
        node_id=m.node_id,
        request_digest=m.request_digest,
        decided_at_ms=m.decided_at_ms,
        outcome=outcome,
        field_decisions=tuple(
            FieldDecision(f.field, f.released, f.handling, f.reason) for f in m.field_decisions
        ),
        reason=m.reason,
        officer=m.officer,
        officer_issuer=m.officer_issuer,
        rules=tuple(m.rules),
        fields=tuple(m.fields),
        rows=rows_from_proto(m.rows),
    )


# --- the node's inbox ----------------------------------------------------------


def inbox_item_to_proto(i: InboxItem) -> pb_followup.InboxItem:
    message = pb_followup.InboxItem(
        id=i.id,
        kind=i.kind,
        received_at_ms=i.received_at_ms,
        answer_by_ms=i.answer_by_ms,
        status=i.status,
        requester=_requester_to_proto(i.requester),
        purpose=i.purpose,
        case_ref=i.case_ref,
        legal_basis=i.legal_basis,
        urgency=(_URGENCY[i.urgency] if i.urgency is not None else pb_followup.URGENCY_UNSPECIFIED),
        text=i.text,
        query_id=i.query_id,
        fields=list(i.fields),
        decidable_fields=list(i.decidable_fields),
        default_handling=i.default_handling,
        rules=list(i.rules),
        dataset=i.dataset,
        record_refs=list(i.record_refs),
        record_keys=list(i.record_keys),
        preview_fields=list(i.preview_fields),
        preview_rows=rows_to_proto(i.preview_rows),
        officer_roles=list(i.officer_roles),
    )
    if i.decision is not None:
        message.decision.CopyFrom(envelope_to_proto(i.decision))
    return message


def inbox_item_from_proto(m: pb_followup.InboxItem) -> InboxItem:
    return InboxItem(
        id=m.id,
        kind=m.kind,
        received_at_ms=m.received_at_ms,
        answer_by_ms=m.answer_by_ms,
        status=m.status,
        requester=_requester_from_proto(m.requester),
        purpose=m.purpose,
        case_ref=m.case_ref,
        legal_basis=m.legal_basis,
        urgency=_URGENCY_BACK.get(m.urgency),
        text=m.text,
        query_id=m.query_id,
        fields=tuple(m.fields),
        decidable_fields=tuple(m.decidable_fields),
        default_handling=m.default_handling,
        rules=tuple(m.rules),
        dataset=m.dataset,
        record_refs=tuple(m.record_refs),
        record_keys=tuple(m.record_keys),
        preview_fields=tuple(m.preview_fields),
        preview_rows=rows_from_proto(m.preview_rows),
        decision=envelope_from_proto(m.decision) if m.HasField("decision") else None,
        officer_roles=tuple(m.officer_roles),
    )


def choices_to_proto(
    item_id: str, choices: Sequence[FieldChoice], reason: str
) -> pb_followup.DecideRequest:
    return pb_followup.DecideRequest(
        id=item_id,
        choices=[
            pb_followup.FieldChoice(
                field=c.field, release=c.release, handling=c.handling, reason=c.reason
            )
            for c in choices
        ],
        reason=reason,
    )


def choices_from_proto(m: pb_followup.DecideRequest) -> tuple[str, tuple[FieldChoice, ...], str]:
    return (
        m.id,
        tuple(FieldChoice(c.field, c.release, c.handling, c.reason) for c in m.choices),
        m.reason,
    )


# --- the gateway's side ----------------------------------------------------------


def filing_to_proto(f: FollowUpFiling) -> pb_gateway.FileFollowUpRequest:
    return pb_gateway.FileFollowUpRequest(
        query_id=f.query_id,
        node_id=f.node_id,
        record_refs=list(f.record_refs),
        fields=list(f.fields),
        purpose=f.purpose,
        case_ref=f.case_ref,
        legal_basis=f.legal_basis,
        urgency=_URGENCY[f.urgency],
        text=f.text,
    )


def filing_from_proto(m: pb_gateway.FileFollowUpRequest) -> FollowUpFiling:
    return FollowUpFiling(
        query_id=m.query_id,
        node_id=m.node_id,
        record_refs=tuple(m.record_refs),
        fields=tuple(m.fields),
        purpose=m.purpose,
        case_ref=m.case_ref,
        urgency=urgency_from_proto(m.urgency),
        legal_basis=m.legal_basis,
        text=m.text,
    )


def view_to_proto(v: FollowUpView) -> pb_gateway.FollowUp:
    message = pb_gateway.FollowUp(
        followup_id=v.followup_id,
        node_id=v.node_id,
        status=v.status.value,
        filed_at_ms=v.filed_at_ms,
        answer_by_ms=v.answer_by_ms,
        signed_request=envelope_to_proto(v.signed_request),
        detail=v.detail,
        decided_at_ms=v.decided_at_ms,
    )
    if v.ack is not None:
        message.ack.CopyFrom(envelope_to_proto(v.ack))
    if v.decision is not None:
        message.decision.CopyFrom(envelope_to_proto(v.decision))
    return message


def view_from_proto(m: pb_gateway.FollowUp) -> FollowUpView:
    try:
        status = FollowUpStatus(m.status)
    except ValueError:
        raise MalformedMessage(f"unknown follow-up status {m.status!r}") from None
    return FollowUpView(
        followup_id=m.followup_id,
        node_id=m.node_id,
        status=status,
        filed_at_ms=m.filed_at_ms,
        answer_by_ms=m.answer_by_ms,
        signed_request=envelope_from_proto(m.signed_request),
        ack=envelope_from_proto(m.ack) if m.HasField("ack") else None,
        decision=envelope_from_proto(m.decision) if m.HasField("decision") else None,
        detail=m.detail,
        decided_at_ms=m.decided_at_ms,
    )


def collect_to_proto(followup_ids: Sequence[str]) -> pb_node.CollectRequest:
    return pb_node.CollectRequest(followup_ids=list(followup_ids))


def collected_from_proto(
    message: pb_node.CollectResponse,
) -> tuple[tuple[Envelope, ...], tuple[Envelope, ...]]:
    """A node's signed acknowledgements and decisions, as it sent them (not yet verified)."""
    return (
        tuple(envelope_from_proto(m) for m in message.acks),
        tuple(envelope_from_proto(m) for m in message.decisions),
    )
