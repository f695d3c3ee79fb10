"""Verifying a signed request: who is on the line, signature, type, freshness, audience.

``VerifiedRequest`` can only come out of :func:`verify_request`, so code that
needs a verified request cannot be handed an unverified one by mistake.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass

from liaison.catalog import CATALOG_VERSION
from liaison.envelope import REQUEST_TYPE, Envelope, open_envelope
from liaison.errors import EnvelopeError, InvalidQuery, RequestRejected, UntrustedPeer
from liaison.keys import KeyId, VerifyingKey
from liaison.messages import QueryRequest
from liaison.tls import CertificateIdentity
from liaison.wire import request_from_bytes

MIN_NONCE_BYTES = 16


@dataclass(frozen=True, slots=True)
class GatewayIdentity:
    """The TLS certificate a trusted gateway connects with; every part given must match."""

    spki_sha256: frozenset[str] = frozenset()
    names: frozenset[str] = frozenset()

    def __post_init__(self) -> None:
        if not self.spki_sha256 and not self.names:
            # An empty identity would match every certificate: deny by default.
            raise ValueError("a gateway identity needs a key pin or a name")

    def matches(self, peer: CertificateIdentity) -> bool:
        if self.spki_sha256 and peer.spki_sha256 not in self.spki_sha256:
            return False
        return not self.names or bool(self.names & peer.names)


@dataclass(frozen=True, slots=True)
class TrustedGateway:
    gateway_id: str
    key: VerifyingKey
    # None only on a node serving without TLS, which cannot tell who is on the line.
    identity: GatewayIdentity | None = None


@dataclass(frozen=True, slots=True)
class Peer:
    """Who is on the line: the address, and the certificate it proved it holds (None: plaintext)."""

    address: str
    certificate: CertificateIdentity | None

    def describe(self) -> dict[str, object]:
        """The peer's facts for a structured log record."""
        facts: dict[str, object] = {"peer": self.address}
        if self.certificate is not None:
            facts["peer_subject"] = self.certificate.subject
            facts["peer_names"] = sorted(self.certificate.names)
            facts["peer_spki_sha256"] = self.certificate.spki_sha256
        return facts


def peer_gateways(peer: Peer, trusted: Mapping[KeyId, TrustedGateway]) -> frozenset[str]:
    """The ids of the trusted gateways ``peer`` proved to be; raise if it is none of them.

    A node serving plaintext (no identity configured) cannot check and trusts
    every trusted gateway id; config refuses identities without TLS, so the two
    never mix.
    """
    gateways = list(trusted.values())
    if all(g.identity is None for g in gateways):
        return frozenset(g.gateway_id for g in gateways)
    cert = peer.certificate
    found = frozenset(
        g.gateway_id
        for g in gateways
        if cert is not None and g.identity is not None and g.identity.matches(cert)
    )
    if not found:
        raise UntrustedPeer(
            "this node answers only the gateways named in its config; the certificate you "
            "connected with is not one of them"
        )
    return found


@dataclass(frozen=True, slots=True)
class Freshness:
    """What every signed request (a query, a follow-up) says of its own validity."""

    issued_at_ms: int
    expires_at_ms: int
    nonce: bytes
    catalog_version: str


def check_fresh(
    fresh: Freshness,
    *,
    now_ms: int,
    max_age_s: int,
    clock_skew_s: int,
    what: str = "request",
    again: str = "send a new one",
) -> None:
    """Raise RequestRejected unless a ``what`` is valid now, for no longer than this node allows."""
    skew_ms = clock_skew_s * 1000
    if fresh.issued_at_ms > now_ms + skew_ms:
        raise RequestRejected(
            f"{what} is issued in the future; check the gateway's and this node's clocks"
        )
    if fresh.expires_at_ms <= fresh.issued_at_ms:
        raise RequestRejected(f"{what} expires before it is issued; it is malformed")
    if now_ms > fresh.expires_at_ms + skew_ms:
        raise RequestRejected(f"{what} has expired; {again}")
    if fresh.expires_at_ms - fresh.issued_at_ms > max_age_s * 1000:
        raise RequestRejected(f"{what} is valid for longer than this node accepts ({max_age_s} s)")
    if len(fresh.nonce) < MIN_NONCE_BYTES:
        raise RequestRejected(f"request nonce must be at least {MIN_NONCE_BYTES} random bytes")
    if fresh.catalog_version != CATALOG_VERSION:
        raise RequestRejected(
            f"{what} speaks catalog {fresh.catalog_version!r}; this node speaks {CATALOG_VERSION!r}"
        )


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
    except InvalidQuery as exc:
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
    check_fresh(
        Freshness(
            request.issued_at_ms, request.expires_at_ms, request.nonce, request.catalog_version
        ),
        now_ms=now_ms,
        max_age_s=max_age_s,
        clock_skew_s=clock_skew_s,
    )
    if not request.query_id:
        raise RequestRejected("request has no query id; the gateway must give each request one")
    if not request.requester.agency or not request.requester.subject:
        raise RequestRejected("request names no requesting agency or subject")
    return VerifiedRequest(request, hashlib.sha256(payload).digest(), envelope)
