"""Conversion between protobuf wire types and domain types, in one place.

Generated classes are imported with a ``pb`` prefix so that they are never
mistaken for the domain types of the same name.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from google.protobuf.message import DecodeError

from liaison.envelope import Envelope
from liaison.errors import InvalidQuery, MalformedMessage
from liaison.keys import KeyId
from liaison.ledger.logged import LedgerProof, SignedRequest
from liaison.messages import (
    AnswerStatus,
    BatchChunkResult,
    BatchHeader,
    Bucket,
    Count,
    Decision,
    DryRunNodeResult,
    DryRunResult,
    NodeResult,
    NodeStatus,
    PublishedPolicy,
    QueryAnswer,
    QueryRequest,
    Requester,
    SearchEvent,
    SearchInput,
    SearchResult,
    SearchStarted,
    SearchSummary,
)
from liaison.query import MAX_NEAR_DISTANCE, Comparator, Operation, Predicate, Query
from proto.liaison.v1 import envelope_pb2 as pb_envelope
from proto.liaison.v1 import gateway_pb2 as pb_gateway
from proto.liaison.v1 import node_pb2 as pb_node
from proto.liaison.v1 import query_pb2 as pb_query

_OPERATIONS = {
    Operation.MATCH: pb_query.OPERATION_MATCH,
    Operation.COUNT: pb_query.OPERATION_COUNT,
    Operation.COUNT_BY: pb_query.OPERATION_COUNT_BY,
    Operation.RECORDS: pb_query.OPERATION_RECORDS,
}
_OPERATIONS_BACK = {v: k for k, v in _OPERATIONS.items()}
_COMPARATORS = {
    Comparator.EQ: pb_query.COMPARATOR_EQ,
    Comparator.IN: pb_query.COMPARATOR_IN,
    Comparator.GTE: pb_query.COMPARATOR_GTE,
    Comparator.LTE: pb_query.COMPARATOR_LTE,
    Comparator.NEAR: pb_query.COMPARATOR_NEAR,
}
_COMPARATORS_BACK = {v: k for k, v in _COMPARATORS.items()}
_STATUS = {
    AnswerStatus.ANSWERED: pb_query.ANSWER_STATUS_ANSWERED,
    AnswerStatus.DENIED: pb_query.ANSWER_STATUS_DENIED,
}
_STATUS_BACK = {v: k for k, v in _STATUS.items()}


def envelope_to_proto(envelope: Envelope) -> pb_envelope.Envelope:
    return pb_envelope.Envelope(
        payload=envelope.payload,
        payload_type=envelope.payload_type,
        key_id=envelope.key_id,
        signature=envelope.signature,
    )


def envelope_to_bytes(envelope: Envelope) -> bytes:
    """An envelope as stored bytes (a serialised protobuf Envelope)."""
    return envelope_to_proto(envelope).SerializeToString()


def envelope_from_bytes(data: bytes) -> Envelope:
    try:
        return envelope_from_proto(pb_envelope.Envelope.FromString(data))
    except DecodeError as exc:
        raise MalformedMessage(f"the bytes are not an Envelope: {exc}") from None


def envelope_from_proto(message: pb_envelope.Envelope) -> Envelope:
    return Envelope(
        payload=message.payload,
        payload_type=message.payload_type,
        key_id=KeyId(message.key_id),
        signature=message.signature,
    )


def ledger_proof_to_proto(proof: LedgerProof) -> pb_node.LedgerProof:
    return pb_node.LedgerProof(
        entry=proof.entry,
        leaf_index=proof.leaf_index,
        inclusion_path=list(proof.inclusion_path),
        checkpoint=proof.checkpoint,
    )


def ledger_proof_from_proto(p: pb_node.LedgerProof) -> LedgerProof:
    return LedgerProof(
        entry=p.entry,
        leaf_index=p.leaf_index,
        inclusion_path=tuple(p.inclusion_path),
        checkpoint=p.checkpoint,
    )


def signed_request_to_proto(signed: SignedRequest) -> pb_node.AnswerRequest:
    message = pb_node.AnswerRequest(request=envelope_to_proto(signed.envelope))
    if signed.proof is not None:
        message.ledger_proof.CopyFrom(ledger_proof_to_proto(signed.proof))
    return message


def signed_request_from_proto(message: pb_node.AnswerRequest) -> SignedRequest:
    proof = None
    if message.HasField("ledger_proof"):
        proof = ledger_proof_from_proto(message.ledger_proof)
    return SignedRequest(envelope_from_proto(message.request), proof)


def delivery_to_proto(signed: SignedRequest) -> pb_node.DeliverRequest:
    """A signed follow-up request and its proof of logging, for NodeService.Deliver."""
    message = pb_node.DeliverRequest(request=envelope_to_proto(signed.envelope))
    if signed.proof is not None:
        message.ledger_proof.CopyFrom(ledger_proof_to_proto(signed.proof))
    return message


def delivery_from_proto(message: pb_node.DeliverRequest) -> SignedRequest:
    proof = None
    if message.HasField("ledger_proof"):
        proof = ledger_proof_from_proto(message.ledger_proof)
    return SignedRequest(envelope_from_proto(message.request), proof)


def query_to_proto(query: Query) -> pb_query.Query:
    for p in query.predicates:
        # The wire holds an unsigned distance: say what is wrong before protobuf does.
        if p.max_distance is not None and not 0 <= p.max_distance <= MAX_NEAR_DISTANCE:
            raise InvalidQuery(
                f"near-duplicate distance must be between 0 and {MAX_NEAR_DISTANCE} bits, "
                f"got {p.max_distance}"
            )
    return pb_query.Query(
        dataset=query.dataset,
        operation=_OPERATIONS[query.operation],
        predicates=[predicate_to_proto(p) for p in query.predicates],
        fields=list(query.fields),
        group_by=query.group_by or "",
        limit=query.limit,
    )


def predicate_to_proto(p: Predicate) -> pb_query.Predicate:
    return pb_query.Predicate(
        field=p.field,
        comparator=_COMPARATORS[p.comparator],
        values=list(p.values),
        max_distance=p.max_distance,
    )


def predicate_from_proto(p: pb_query.Predicate) -> Predicate:
    comparator = _COMPARATORS_BACK.get(p.comparator)
    if comparator is None:
        raise InvalidQuery(f"predicate on {p.field!r} names no comparator (eq, in, gte, lte, near)")
    distance = p.max_distance if p.HasField("max_distance") else None
    return Predicate(p.field, comparator, tuple(p.values), distance)


def query_from_proto(message: pb_query.Query) -> Query:
    """Shape-level conversion; catalog checks happen in ``validate_query``."""
    operation = _OPERATIONS_BACK.get(message.operation)
    if operation is None:
        raise InvalidQuery("the query names no operation (match, count, count_by or records)")
    return Query(
        dataset=message.dataset,
        operation=operation,
        predicates=tuple(predicate_from_proto(p) for p in message.predicates),
        fields=tuple(message.fields),
        group_by=message.group_by or None,
        limit=message.limit,
    )


def request_to_bytes(request: QueryRequest) -> bytes:
    message = pb_query.QueryRequest(
        query_id=request.query_id,
        gateway_id=request.gateway_id,
        issued_at_ms=request.issued_at_ms,
        expires_at_ms=request.expires_at_ms,
        nonce=request.nonce,
        audience=list(request.audience),
        requester=pb_query.Requester(
            agency=request.requester.agency,
            subject=request.requester.subject,
            roles=list(request.requester.roles),
            issuer=request.requester.issuer,
            attributes=dict(request.requester.attributes),
        ),
        purpose=request.purpose,
        case_ref=request.case_ref,
        catalog_version=request.catalog_version,
        query=query_to_proto(request.query),
        legal_basis=request.legal_basis,
    )
    return message.SerializeToString(deterministic=True)


def request_from_bytes(payload: bytes) -> QueryRequest:
    """Parse a QueryRequest; MalformedMessage (an InvalidQuery) on bytes that are not one."""
    try:
        message = pb_query.QueryRequest.FromString(payload)
    except DecodeError as exc:
        raise MalformedMessage(f"the bytes are not a QueryRequest: {exc}") from None
    r = message.requester
    return QueryRequest(
        query_id=message.query_id,
        gateway_id=message.gateway_id,
        issued_at_ms=message.issued_at_ms,
        expires_at_ms=message.expires_at_ms,
        nonce=message.nonce,
        audience=tuple(message.audience),
        requester=Requester(r.agency, r.subject, tuple(r.roles), r.issuer, dict(r.attributes)),
        purpose=message.purpose,
        case_ref=message.case_ref,
        catalog_version=message.catalog_version,
        query=query_from_proto(message.query),
        legal_basis=message.legal_basis,
    )


def answer_to_proto(answer: QueryAnswer) -> pb_query.QueryAnswer:
    # Only what is set is passed: most answers are a hit or a count, and an
    # empty repeated field serializes to nothing either way.
    fields: dict[str, Any] = {}
    if answer.count is not None:
        fields["count"] = pb_query.Count(
            value=answer.count.value,
            below_minimum=answer.count.below_minimum,
            minimum=answer.count.minimum,
            noise_bound=answer.count.noise_bound,
        )
    if answer.buckets:
        fields["buckets"] = [
            pb_query.Bucket(
                key=b.key or "",
                key_present=b.key is not None,
                count=b.count,
                noise_bound=b.noise_bound,
            )
            for b in answer.buckets
        ]
    if answer.fields:
        fields["fields"] = answer.fields
    if answer.rows:
        fields["rows"] = rows_to_proto(answer.rows)
    if answer.withheld_fields:
        fields["withheld_fields"] = answer.withheld_fields
    if answer.record_refs:
        fields["record_refs"] = answer.record_refs
    if answer.holder_notified:
        fields["holder_notified"] = True
    return pb_query.QueryAnswer(
        query_id=answer.query_id,
        node_id=answer.node_id,
        request_digest=answer.request_digest,
        answered_at_ms=answer.answered_at_ms,
        status=_STATUS[answer.status],
        decision=decision_to_proto(answer.decision),
        hit=answer.hit,
        buckets_suppressed=answer.buckets_suppressed,
        bucket_minimum=answer.bucket_minimum,
        truncated=answer.truncated,
        **fields,
    )


def rows_to_proto(rows: Sequence[Sequence[str | None]]) -> list[pb_query.Row]:
    """Released rows; a cell that is SQL NULL is not present."""
    return [
        pb_query.Row(cells=[pb_query.Cell(present=c is not None, value=c or "") for c in row])
        for row in rows
    ]


def rows_from_proto(rows: Sequence[pb_query.Row]) -> tuple[tuple[str | None, ...], ...]:
    return tuple(tuple(c.value if c.present else None for c in row.cells) for row in rows)


def decision_to_proto(decision: Decision) -> pb_query.Decision:
    return pb_query.Decision(
        permitted=decision.permitted,
        rules=decision.rules,
        reason=decision.reason,
        obligations=decision.obligations,
        explanation=decision.explanation,
    )


def decision_from_proto(d: pb_query.Decision) -> Decision:
    return Decision(
        d.permitted, tuple(d.rules), d.reason, tuple(d.obligations), tuple(d.explanation)
    )


def answer_to_bytes(answer: QueryAnswer) -> bytes:
    return answer_to_proto(answer).SerializeToString(deterministic=True)


def answer_from_proto(message: pb_query.QueryAnswer) -> QueryAnswer:
    status = _STATUS_BACK.get(message.status)
    if status is None:
        raise InvalidQuery("answer carries no status")
    # Empty repeated fields (most of them, in most answers) are not walked.
    return QueryAnswer(
        query_id=message.query_id,
        node_id=message.node_id,
        request_digest=message.request_digest,
        answered_at_ms=message.answered_at_ms,
        status=status,
        decision=decision_from_proto(message.decision),
        hit=message.hit,
        count=(
            Count(
                message.count.value,
                message.count.below_minimum,
                message.count.minimum,
                message.count.noise_bound,
            )
            if message.HasField("count")
            else None
        ),
        buckets=(
            tuple(
                Bucket(b.key if b.key_present else None, b.count, b.noise_bound)
                for b in message.buckets
            )
            if message.buckets
            else ()
        ),
        buckets_suppressed=message.buckets_suppressed,
        bucket_minimum=message.bucket_minimum,
        fields=tuple(message.fields),
        rows=rows_from_proto(message.rows) if message.rows else (),
        withheld_fields=tuple(message.withheld_fields),
        truncated=message.truncated,
        record_refs=tuple(message.record_refs),
        holder_notified=message.holder_notified,
    )


def answer_from_bytes(payload: bytes) -> QueryAnswer:
    """Parse a QueryAnswer; MalformedMessage (an InvalidQuery) on bytes that are not one."""
    try:
        message = pb_query.QueryAnswer.FromString(payload)
    except DecodeError as exc:
        raise MalformedMessage(f"the bytes are not a QueryAnswer: {exc}") from None
    return answer_from_proto(message)


_NODE_STATUS = {
    NodeStatus.ANSWERED: pb_gateway.NODE_STATUS_ANSWERED,
    NodeStatus.DENIED: pb_gateway.NODE_STATUS_DENIED,
    NodeStatus.TIMED_OUT: pb_gateway.NODE_STATUS_TIMED_OUT,
    NodeStatus.UNREACHABLE: pb_gateway.NODE_STATUS_UNREACHABLE,
    NodeStatus.ERROR: pb_gateway.NODE_STATUS_ERROR,
    NodeStatus.NOT_ASKED: pb_gateway.NODE_STATUS_NOT_ASKED,
}
_NODE_STATUS_BACK = {v: k for k, v in _NODE_STATUS.items()}


def search_to_proto(search: SearchInput) -> pb_gateway.SearchRequest:
    return pb_gateway.SearchRequest(
        query=query_to_proto(search.query),
        purpose=search.purpose,
        case_ref=search.case_ref,
        nodes=list(search.nodes),
        deadline_ms=search.deadline_ms,
        legal_basis=search.legal_basis,
    )


def search_from_proto(message: pb_gateway.SearchRequest) -> SearchInput:
    return SearchInput(
        query=query_from_proto(message.query),
        purpose=message.purpose,
        case_ref=message.case_ref,
        nodes=tuple(message.nodes),
        deadline_ms=message.deadline_ms,
        legal_basis=message.legal_basis,
    )


def _node_result_parts(r: NodeResult) -> dict[str, Any]:
    # Only the parts present, each passed once (no empty part made, then filled).
    parts: dict[str, Any] = {
        "node_id": r.node_id,
        "status": _NODE_STATUS[r.status],
        "detail": r.detail,
        "latency_ms": r.latency_ms,
        "answer_digest": r.answer_digest,
    }
    if r.answer is not None:
        parts["answer"] = answer_to_proto(r.answer)
    if r.signed_answer is not None:
        parts["signed_answer"] = envelope_to_proto(r.signed_answer)
    return parts


def _node_result_from_proto(r: pb_gateway.NodeResult) -> NodeResult:
    return NodeResult(
        node_id=r.node_id,
        status=_NODE_STATUS_BACK.get(r.status, NodeStatus.ERROR),
        detail=r.detail,
        latency_ms=r.latency_ms,
        answer=answer_from_proto(r.answer) if r.HasField("answer") else None,
        answer_digest=r.answer_digest,
        signed_answer=(
            envelope_from_proto(r.signed_answer) if r.HasField("signed_answer") else None
        ),
    )


def search_result_to_proto(result: SearchResult) -> pb_gateway.SearchResponse:
    out = pb_gateway.SearchResponse(query_id=result.query_id)
    add = out.results.add
    for r in result.results:
        add(**_node_result_parts(r))
    if result.signed_request is not None:
        out.signed_request.CopyFrom(envelope_to_proto(result.signed_request))
    return out


def search_result_from_proto(message: pb_gateway.SearchResponse, query: Query) -> SearchResult:
    return SearchResult(
        query_id=message.query_id,
        query=query,
        results=tuple(_node_result_from_proto(r) for r in message.results),
        signed_request=(
            envelope_from_proto(message.signed_request)
            if message.HasField("signed_request")
            else None
        ),
    )


def search_event_to_proto(event: SearchEvent) -> pb_gateway.SearchStreamResponse:
    if isinstance(event, NodeResult):
        return pb_gateway.SearchStreamResponse(
            result=pb_gateway.NodeResult(**_node_result_parts(event))
        )
    out = pb_gateway.SearchStreamResponse()
    if isinstance(event, SearchStarted):
        out.started.query_id = event.query_id
        out.started.asked.extend(event.asked)
        if event.signed_request is not None:
            out.started.signed_request.CopyFrom(envelope_to_proto(event.signed_request))
    else:
        out.summary.query_id = event.query_id
        out.summary.not_answered.extend(event.not_answered)
        for status, n in event.counts.items():
            out.summary.counts[status.value] = n
    return out


def search_event_from_proto(message: pb_gateway.SearchStreamResponse) -> SearchEvent:
    """One event of a streamed search; WireError for an event of no known kind."""
    kind = message.WhichOneof("event")
    if kind == "result":
        return _node_result_from_proto(message.result)
    if kind == "started":
        started = message.started
        return SearchStarted(
            query_id=started.query_id,
            signed_request=(
                envelope_from_proto(started.signed_request)
                if started.HasField("signed_request")
                else None
            ),
            asked=tuple(started.asked),
        )
    if kind == "summary":
        summary = message.summary
        counts: dict[NodeStatus, int] = {}
        for name, n in summary.counts.items():
            try:
                counts[NodeStatus(name)] = n
            except ValueError:
                raise MalformedMessage(f"the gateway counted an unknown status {name!r}") from None
        return SearchSummary(summary.query_id, tuple(summary.not_answered), counts)
    raise MalformedMessage("the gateway sent an event of no known kind; upgrade liaison")


def batch_header_to_proto(header: BatchHeader) -> pb_gateway.SearchBatchRequest:
    return pb_gateway.SearchBatchRequest(
        header=pb_gateway.BatchHeader(
            search=search_to_proto(header.search),
            predicate=predicate_to_proto(header.predicate),
            chunk_size=header.chunk_size,
            value_count=header.value_count,
        )
    )


def batch_values_to_proto(values: Sequence[str]) -> pb_gateway.SearchBatchRequest:
    return pb_gateway.SearchBatchRequest(values=pb_gateway.BatchValues(values=values))


def batch_part_from_proto(message: pb_gateway.SearchBatchRequest) -> BatchHeader | tuple[str, ...]:
    """A batch's header, or the values of one of its later messages."""
    kind = message.WhichOneof("part")
    if kind == "values":
        return tuple(message.values.values)
    if kind == "header":
        header = message.header
        return BatchHeader(
            search_from_proto(header.search),
            predicate_from_proto(header.predicate),
            header.chunk_size,
            header.value_count,
        )
    raise InvalidQuery("a batch message holds neither a header nor values")


def batch_chunk_to_proto(chunk: BatchChunkResult) -> pb_gateway.SearchBatchResponse:
    return pb_gateway.SearchBatchResponse(
        chunk=chunk.chunk,
        first_value=chunk.first_value,
        value_count=chunk.value_count,
        result=search_result_to_proto(chunk.result),
    )


def batch_chunk_from_proto(
    message: pb_gateway.SearchBatchResponse,
    search: SearchInput,
    predicate: Predicate,
    values: Sequence[str],
) -> BatchChunkResult:
    """One chunk's result, with the query it answers: ``search`` plus ``predicate`` on the
    chunk's values, which the message names by their place among ``values`` (as sent).
    """
    first, count = message.first_value, message.value_count
    chunk_values = tuple(values[first : first + count])
    if len(chunk_values) != count or not count:
        raise MalformedMessage(
            f"the gateway answered chunk {message.chunk} for values {first}..{first + count} "
            f"of a batch of {len(values)}; ask again, or ask the gateway's operator"
        )
    query = replace(
        search.query,
        predicates=(*search.query.predicates, replace(predicate, values=chunk_values)),
    )
    return BatchChunkResult(
        message.chunk, first, count, search_result_from_proto(message.result, query)
    )


def dry_run_request_to_proto(search: SearchInput) -> pb_gateway.DryRunRequest:
    return pb_gateway.DryRunRequest(search=search_to_proto(search))


def dry_run_request_from_proto(message: pb_gateway.DryRunRequest) -> SearchInput:
    return search_from_proto(message.search)


def dry_run_result_to_proto(result: DryRunResult) -> pb_gateway.DryRunResponse:
    out = pb_gateway.DryRunResponse()
    for r in result.results:
        item = out.results.add(node_id=r.node_id, policy_sha256=r.policy_sha256, detail=r.detail)
        if r.decision is not None:
            item.decision.CopyFrom(decision_to_proto(r.decision))
    return out


def dry_run_result_from_proto(message: pb_gateway.DryRunResponse, query: Query) -> DryRunResult:
    return DryRunResult(
        query=query,
        results=tuple(
            DryRunNodeResult(
                node_id=r.node_id,
                decision=decision_from_proto(r.decision) if r.HasField("decision") else None,
                policy_sha256=r.policy_sha256,
                detail=r.detail,
            )
            for r in message.results
        ),
    )


def published_policy_to_bytes(published: PublishedPolicy) -> bytes:
    return pb_node.PublishedPolicy(
        node_id=published.node_id,
        catalog_version=published.catalog_version,
        document=published.document,
        document_sha256=published.document_sha256,
        published_at_ms=published.published_at_ms,
    ).SerializeToString(deterministic=True)


def published_policy_from_bytes(payload: bytes) -> PublishedPolicy:
    """Parse a PublishedPolicy; MalformedMessage (an InvalidQuery) on bytes that are not one."""
    try:
        message = pb_node.PublishedPolicy.FromString(payload)
    except DecodeError as exc:
        raise MalformedMessage(f"the bytes are not a PublishedPolicy: {exc}") from None
    return PublishedPolicy(
        node_id=message.node_id,
        catalog_version=message.catalog_version,
        document=message.document,
        document_sha256=message.document_sha256,
        published_at_ms=message.published_at_ms,
    )
