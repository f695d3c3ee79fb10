"""Checking a node's signed answer and keeping only what was asked for.

The answer must verify under *that* node's pinned key, name that node and
this query, and bind to the exact request bytes. Then everything the query
did not ask for is dropped (``reduce_to_query``, shared with the
investigator's client, which recomputes it to check the gateway): a node's
mistake or malice cannot push extra fields or rows through the gateway.
"""

from __future__ import annotations

import hashlib

from liaison.envelope import ANSWER_TYPE, Envelope, open_envelope
from liaison.errors import BadSignature, EnvelopeError, InvalidQuery
from liaison.keys import VerifyingKey
from liaison.messages import QueryAnswer
from liaison.reduce import reduce_to_query
from liaison.wire import answer_from_bytes

__all__ = ["reduce_to_query", "verify_answer"]


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
    except InvalidQuery as exc:  # MalformedMessage among them: bytes that do not parse
        raise EnvelopeError(f"node {node_id} signed a payload that is not an answer") from exc
    if answer.node_id != node_id:
        raise BadSignature(f"answer from {node_id} claims to come from {answer.node_id!r}")
    if answer.query_id != query_id or answer.request_digest != request_digest:
        raise BadSignature(f"answer from {node_id} is for another request")
    return answer, hashlib.sha256(payload).hexdigest()
