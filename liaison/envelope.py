"""Signed envelopes: sign bytes, not messages.

The signature covers the DSSE v1 pre-authentication encoding
``"DSSEv1" SP LEN(type) SP type SP LEN(body) SP body``, so the payload type is
bound to the bytes and a request can never be presented as an answer.
Receivers get the payload back only from :func:`open_envelope`, after the
signature checks out under a key they already trust.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from liaison.errors import BadSignature
from liaison.keys import KeyId, SigningKey, VerifyingKey

REQUEST_TYPE = "application/vnd.liaison.query-request.v1+protobuf"
ANSWER_TYPE = "application/vnd.liaison.query-answer.v1+protobuf"
POLICY_TYPE = "application/vnd.liaison.published-policy.v1+protobuf"

# Far above any honest message, small enough that a hostile peer cannot make
# a verifier hash gigabytes.
MAX_PAYLOAD_BYTES = 4 * 1024 * 1024


def pae(payload_type: str, payload: bytes) -> bytes:
    """DSSE v1 pre-authentication encoding."""
    type_bytes = payload_type.encode("utf-8")
    return b"DSSEv1 %d %b %d %b" % (len(type_bytes), type_bytes, len(payload), payload)


@dataclass(frozen=True, slots=True)
class Envelope:
    payload: bytes
    payload_type: str
    key_id: KeyId
    signature: bytes


def seal(key: SigningKey, payload_type: str, payload: bytes) -> Envelope:
    return Envelope(
        payload=payload,
        payload_type=payload_type,
        key_id=key.key_id,
        signature=key.sign(pae(payload_type, payload)),
    )


def open_envelope(
    envelope: Envelope, expected_type: str, trusted: Mapping[KeyId, VerifyingKey]
) -> bytes:
    """Return the payload if ``envelope`` is of ``expected_type`` and signed by a trusted key."""
    if envelope.payload_type != expected_type:
        raise BadSignature(
            f"envelope carries {envelope.payload_type!r}, expected {expected_type!r}"
        )
    if len(envelope.payload) > MAX_PAYLOAD_BYTES:
        raise BadSignature(
            f"envelope payload is {len(envelope.payload)} bytes, above the "
            f"{MAX_PAYLOAD_BYTES}-byte limit"
        )
    key = trusted.get(envelope.key_id)
    if key is None:
        raise BadSignature(
            f"envelope is signed by key {envelope.key_id[:16]!r}…, which is not trusted here; "
            "add its public key to the trusted keys if it should be"
        )
    key.verify(envelope.signature, pae(envelope.payload_type, envelope.payload))
    return envelope.payload
