"""Verifying a signed request: signature, type, freshness, audience.

``VerifiedRequest`` can only come out of :func:`verify_request`, so code that
needs a verified request cannot be handed an unverified one by mistake.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass

from google.protobuf.message import DecodeError

from liaison.catalog import CATALOG_VERSION
from liaison.envelope import REQUEST_TYPE, Envelope, open_envelope
from liaison.errors import EnvelopeError, InvalidQuery, RequestRejected
from liaison.keys import KeyId, VerifyingKey
from liaison.messages import QueryRequest
from liaison.wire import request_from_bytes

MIN_NONCE_BYTES = 16


@dataclass(frozen=True, slots=True)
class TrustedGateway:
    gateway_id: str
    key: VerifyingKey


@dataclass(frozen=True, slots=True)
class VerifiedRequest:
    request: QueryRequest
    digest: bytes  # SHA-256 of the signed payload
    envelope: Envelope


def verify_request(
    envelope: Envelope,
    *,
    trusted: Mapping[KeyId, TrustedGateway],
    node_id: str,
    now_ms: int,
    max_age_s: int,
    clock_skew_s: int,
) -> VerifiedRequest:
    keys = {k: t.key for k, t in trusted.items()}
    payload = open_envelope(envelope, REQUEST_TYPE, keys)
    try:
        request = request_from_bytes(payload)
    except (DecodeError, InvalidQuery) as exc:
        raise EnvelopeError(f"signed payload is not a valid QueryRequest ({exc})") from exc
    signer = trusted[envelope.key_id].gateway_id
    if request.gateway_id != signer:
        raise RequestRejected(
            f"request names gateway {request.gateway_id!r} but is signed by {signer!r}"
        )
    if node_id not in request.audience:
        raise RequestRejected(
            f"request is addressed to {', '.join(request.audience) or 'no node'}, "
            f"not to this node ({node_id})"
        )
    skew_ms = clock_skew_s * 1000
    if request.issued_at_ms > now_ms + skew_ms:
        raise RequestRejected(
            "request is issued in the future; check the gateway's and this node's clocks"
        )
    if request.expires_at_ms <= request.issued_at_ms:
        raise RequestRejected("request expires before it is issued; it is malformed")
    if now_ms > request.expires_at_ms + skew_ms:
        raise RequestRejected("request has expired; send a new one")
    if request.expires_at_ms - request.issued_at_ms > max_age_s * 1000:
        raise RequestRejected(f"request is valid for longer than this node accepts ({max_age_s} s)")
    if len(request.nonce) < MIN_NONCE_BYTES:
        raise RequestRejected(f"request nonce must be at least {MIN_NONCE_BYTES} random bytes")
    if request.catalog_version != CATALOG_VERSION:
        raise RequestRejected(
            f"request speaks catalog {request.catalog_version!r}; this node speaks "
            f"{CATALOG_VERSION!r}"
        )
    if not request.requester.agency or not request.requester.subject:
        raise RequestRejected("request names no requesting agency or subject")
    return VerifiedRequest(request, hashlib.sha256(payload).digest(), envelope)
