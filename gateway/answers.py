"""Checking a node's signed answer and keeping only what was asked for.

The answer must verify under *that* node's pinned key, name that node and
this query, and bind to the exact request bytes. Then everything the query
did not ask for is dropped: a node's mistake or malice cannot push extra
fields or rows through the gateway.
"""

from __future__ import annotations

import hashlib
from dataclasses import replace

from google.protobuf.message import DecodeError

from liaison.envelope import ANSWER_TYPE, Envelope, open_envelope
from liaison.errors import BadSignature, EnvelopeError, InvalidQuery
from liaison.keys import VerifyingKey
from liaison.messages import AnswerStatus, QueryAnswer
from liaison.query import Operation, Query
from liaison.wire import answer_from_bytes


def verify_answer(
    envelope: Envelope,
    *,
    node_id: str,
    node_key: VerifyingKey,
    query_id: str,
    request_digest: bytes,
) -> tuple[QueryAnswer, str]:
    """Return the verified answer and the hex digest of its signed payload."""
    payload = open_envelope(envelope, ANSWER_TYPE, {node_key.key_id: node_key})
    try:
        answer = answer_from_bytes(payload)
    except (DecodeError, InvalidQuery) as exc:
        raise EnvelopeError(f"node {node_id} signed a payload that is not an answer") from exc
    if answer.node_id != node_id:
        raise BadSignature(f"answer from {node_id} claims to come from {answer.node_id!r}")
    if answer.query_id != query_id or answer.request_digest != request_digest:
        raise BadSignature(f"answer from {node_id} is for another request")
    return answer, hashlib.sha256(payload).hexdigest()


def reduce_to_query(answer: QueryAnswer, query: Query) -> QueryAnswer:
    """Keep only the parts of ``answer`` that ``query`` asked for."""
    bare = QueryAnswer(
        query_id=answer.query_id,
        node_id=answer.node_id,
        request_digest=answer.request_digest,
        answered_at_ms=answer.answered_at_ms,
        status=answer.status,
        decision=answer.decision,
    )
    if answer.status is not AnswerStatus.ANSWERED:
        return bare
    op = query.operation
    if op is Operation.MATCH:
        return replace(bare, hit=answer.hit)
    if op is Operation.COUNT:
        return replace(bare, count=answer.count)
    if op is Operation.COUNT_BY:
        return replace(
            bare,
            buckets=answer.buckets,
            buckets_suppressed=answer.buckets_suppressed,
            bucket_minimum=answer.bucket_minimum,
            truncated=answer.truncated,
        )
    asked = set(query.fields)
    keep = [i for i, f in enumerate(answer.fields) if f in asked and f not in answer.fields[:i]]
    limit = query.limit or len(answer.rows)
    rows = tuple(
        tuple(row[i] for i in keep) for row in answer.rows[:limit] if len(row) == len(answer.fields)
    )
    return replace(
        bare,
        fields=tuple(answer.fields[i] for i in keep),
        rows=rows,
        withheld_fields=tuple(f for f in answer.withheld_fields if f in asked),
        truncated=answer.truncated or len(answer.rows) > limit,
    )
