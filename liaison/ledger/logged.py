"""Requests that prove they were logged: the proof a gateway attaches, and the node's check.

A gateway appends its request entry before it asks, and sends the entry with
its inclusion path under a checkpoint it signed. A node answers only when
that proof verifies and the entry describes the very request it holds, so a
gateway that skips or falsifies its ledger gets no answers.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

from liaison.envelope import Envelope
from liaison.errors import CheckpointError, EntryError, ProofError, UnloggedRequest
from liaison.followups import FollowUpRequest
from liaison.keys import VerifyingKey
from liaison.ledger.checkpoint import Checkpoint, open_checkpoint
from liaison.ledger.entries import Entry, EntryKind, parse_entry
from liaison.ledger.merkle import leaf_hash, verify_inclusion
from liaison.messages import QueryRequest

MAX_PROOF_ELEMENTS = 64


def gateway_origin(gateway_id: str) -> str:
    """The log origin of a gateway's ledger, which its checkpoints name."""
    return f"liaison.gateway/{gateway_id}"


def node_origin(node_id: str) -> str:
    return f"liaison.node/{node_id}"


@dataclass(frozen=True, slots=True)
class LedgerProof:
    """A gateway's request entry, where it sits, and a signed checkpoint covering it."""

    entry: bytes
    leaf_index: int
    inclusion_path: tuple[bytes, ...]
    checkpoint: str


@dataclass(frozen=True, slots=True)
class SignedRequest:
    """What a gateway sends a node: the signed request and the proof it was logged."""

    envelope: Envelope
    proof: LedgerProof | None


@dataclass(frozen=True, slots=True)
class LoggedRequest:
    """A request whose ledger proof verified, with what the node keeps of it."""

    entry: Entry
    checkpoint: Checkpoint
    proof: LedgerProof


def check_logged(
    proof: LedgerProof | None,
    *,
    request: QueryRequest,
    request_digest: bytes,
    request_key_id: str,
    gateway_key: VerifyingKey,
) -> LoggedRequest:
    """Raise UnloggedRequest unless ``proof`` shows ``request`` in its gateway's ledger."""
    if proof is None:
        raise UnloggedRequest(
            "request carries no ledger proof; a gateway must log each request before asking "
            "(upgrade the gateway, or check that its ledger is configured)"
        )
    entry, checkpoint = _proven_entry(proof, request.gateway_id, gateway_key)
    _check_describes(entry, request, request_digest, request_key_id)
    return LoggedRequest(entry, checkpoint, proof)


def check_followup_logged(
    proof: LedgerProof | None,
    *,
    request: FollowUpRequest,
    request_digest: bytes,
    request_key_id: str,
    gateway_key: VerifyingKey,
) -> LoggedRequest:
    """As :func:`check_logged`, for a follow-up request and the gateway's entry for it."""
    if proof is None:
        raise UnloggedRequest(
            "follow-up request carries no ledger proof; a gateway must log it before delivery"
        )
    entry, checkpoint = _proven_entry(proof, request.gateway_id, gateway_key)
    if entry.kind is not EntryKind.FOLLOWUP:
        raise UnloggedRequest(f"the logged entry is of kind {entry.kind}, not a follow-up request")
    f = entry.fields
    requester = f["requester"]
    expected = {
        "request_digest": (f["request_digest"], request_digest.hex()),
        "followup_id": (f["followup_id"], request.followup_id),
        "gateway_id": (f["gateway_id"], request.gateway_id),
        "request_key_id": (f.get("request_key_id"), request_key_id),
        "time_ms": (f["time_ms"], request.issued_at_ms),
        "expires_at_ms": (f.get("expires_at_ms"), request.expires_at_ms),
        "agency": (requester.get("agency"), request.requester.agency),
        "subject": (requester.get("subject"), request.requester.subject),
        "roles": (requester.get("roles"), list(request.requester.roles)),
        "node_id": (f["node_id"], request.node_id),
        "about_query_id": (f["about_query_id"], request.query_id),
        "record_refs": (f["record_refs"], list(request.record_refs)),
        "fields": (f["fields"], list(request.fields)),
        "purpose": (f["purpose"], request.purpose),
        "case_ref": (f["case_ref"], request.case_ref),
        "legal_basis": (f.get("legal_basis"), request.legal_basis),
        "urgency": (f["urgency"], request.urgency.value),
        "answer_by_ms": (f["answer_by_ms"], request.answer_by_ms),
    }
    wrong = [name for name, (logged, actual) in expected.items() if logged != actual]
    if wrong:
        raise UnloggedRequest(
            f"the logged entry does not describe this follow-up request (differs in "
            f"{', '.join(wrong)}); the gateway logged something other than what it delivers"
        )
    return LoggedRequest(entry, checkpoint, proof)


def _proven_entry(
    proof: LedgerProof, gateway_id: str, gateway_key: VerifyingKey
) -> tuple[Entry, Checkpoint]:
    """The entry ``proof`` shows in ``gateway_id``'s ledger, under a checkpoint it signed."""
    if len(proof.inclusion_path) > MAX_PROOF_ELEMENTS:
        raise UnloggedRequest(f"ledger proof has more than {MAX_PROOF_ELEMENTS} elements")
    try:
        checkpoint = _opened_checkpoint(proof.checkpoint, gateway_key, gateway_origin(gateway_id))
        verify_inclusion(
            leaf_hash(proof.entry),
            proof.leaf_index,
            checkpoint.size,
            proof.inclusion_path,
            checkpoint.root,
        )
        entry = parse_entry(proof.entry)
    except (CheckpointError, ProofError, EntryError) as exc:
        raise UnloggedRequest(f"the request's ledger proof does not verify: {exc}") from exc
    return entry, checkpoint


# Checkpoints whose signature already verified, by (key id, origin, note). A
# gateway signs one checkpoint per commit of its ledger, and every request of
# that commit (each asking several nodes) carries the same one: verifying it
# once is enough. The note is the exact signed text, so a hit is the same
# bytes under the same key; bounded, oldest out first.
_MAX_OPENED = 512
_opened: dict[tuple[str, str, str], Checkpoint] = {}
_opened_lock = threading.Lock()


def _opened_checkpoint(note: str, key: VerifyingKey, origin: str) -> Checkpoint:
    """:func:`open_checkpoint`, remembering what verified."""
    cache_key = (key.key_id, origin, note)
    found = _opened.get(cache_key)
    if found is not None:
        return found
    checkpoint = open_checkpoint(note, key, origin=origin)
    with _opened_lock:
        while len(_opened) >= _MAX_OPENED:
            del _opened[next(iter(_opened))]
        _opened[cache_key] = checkpoint
    return checkpoint


def _check_describes(entry: Entry, request: QueryRequest, digest: bytes, key_id: str) -> None:
    # Every field an auditor will read must be what was signed: the payload
    # itself is never stored, so the entry is all they have.
    if entry.kind is not EntryKind.REQUEST:
        raise UnloggedRequest(f"the logged entry is of kind {entry.kind}, not a request")
    f = entry.fields
    requester = f["requester"]
    expected = {
        "request_digest": (f["request_digest"], digest.hex()),
        "query_id": (f["query_id"], request.query_id),
        "gateway_id": (f["gateway_id"], request.gateway_id),
        "request_key_id": (f.get("request_key_id"), key_id),
        "time_ms": (f["time_ms"], request.issued_at_ms),
        "expires_at_ms": (f.get("expires_at_ms"), request.expires_at_ms),
        "catalog_version": (f.get("catalog_version"), request.catalog_version),
        "agency": (requester.get("agency"), request.requester.agency),
        "subject": (requester.get("subject"), request.requester.subject),
        "roles": (requester.get("roles"), list(request.requester.roles)),
        "issuer": (requester.get("issuer"), request.requester.issuer),
        "attributes": (requester.get("attributes"), dict(request.requester.attributes)),
        "purpose": (f["purpose"], request.purpose),
        "case_ref": (f["case_ref"], request.case_ref),
        "legal_basis": (f.get("legal_basis"), request.legal_basis),
        "dataset": (f["dataset"], request.query.dataset),
        "operation": (f["operation"], request.query.operation.value),
        "targets": (f["targets"], list(request.audience)),
        "predicates": (_shape(f["predicates"]), _shape_of(request)),
        "fields": (f.get("fields"), list(request.query.fields)),
        "group_by": (f.get("group_by"), request.query.group_by or ""),
        "limit": (f.get("limit"), request.query.limit),
    }
    wrong = [name for name, (logged, actual) in expected.items() if logged != actual]
    if wrong:
        raise UnloggedRequest(
            f"the logged entry does not describe this request (differs in {', '.join(wrong)}); "
            "the gateway logged something other than what it asks"
        )


def _shape(predicates: list[object]) -> list[tuple[object, object, int, object]] | None:
    # Values are keyed hashes the node cannot recompute, but their fields,
    # comparators, number and distance must match what it is asked.
    shape = []
    for p in predicates:
        if not isinstance(p, dict) or not isinstance(p.get("values_hmac"), list):
            return None
        shape.append(
            (p.get("field"), p.get("comparator"), len(p["values_hmac"]), p.get("max_distance"))
        )
    return shape


def _shape_of(request: QueryRequest) -> list[tuple[object, object, int, object]]:
    return [
        (p.field, p.comparator.value, len(p.values), p.max_distance)
        for p in request.query.predicates
    ]
