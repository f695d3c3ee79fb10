"""A gateway that bypasses its ledger gets no answer from any node.

Every demo node runs for real on loopback. Each test plays a gateway that signs
its request with the real gateway key but attaches no proof, a proof of something
else, or a proof that was tampered with. Every node must refuse it with
PERMISSION_DENIED, write no receipt, and leave the nonce unspent, so that the
same nonce, correctly logged, is still answered.

Wrong descriptions are built the honest way: the wrong entry is logged in a real
ledger under the real gateway key, so its signature and inclusion proof verify
and only what the entry says is wrong.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import uuid
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import grpc
import pytest

from liaison.demo.data import probes
from liaison.demo.federation import GATEWAY_ID
from liaison.envelope import ANSWER_TYPE, REQUEST_TYPE, Envelope, open_envelope, seal
from liaison.keys import SigningKey, VerifyingKey
from liaison.ledger.checkpoint import open_checkpoint, parse_unverified, sign_checkpoint
from liaison.ledger.entries import Entry, EntryKind, outcome_entry, parse_entry, request_entry
from liaison.ledger.log import Ledger
from liaison.ledger.logged import MAX_PROOF_ELEMENTS, LedgerProof, SignedRequest, gateway_origin
from liaison.messages import AnswerStatus, QueryAnswer, QueryRequest
from liaison.query import Comparator, Operation, Predicate, Query
from liaison.wire import answer_from_bytes, envelope_from_proto, request_to_bytes
from tests.support import (
    INVESTIGATOR,
    TEST_AUDIT_KEY,
    RunningNode,
    call_node,
    make_request,
    running_node,
    sign_request,
)

NODES = ("freedonia", "ruritania", "sylvania")
SHARED_SHA256 = probes().shared_sha256  # held by ruritania and freedonia, not sylvania
PROOF_REFUSED = "the request's ledger proof does not verify: "
# Filler entries put the request at leaf 7 of a tree of 8, whose path has 3 hashes.
FILLERS = 6
REQUEST_INDEX = FILLERS + 1


# --- fixtures and helpers ----------------------------------------------------------


@dataclass
class DemoNodes:
    root: Path
    nodes: dict[str, RunningNode]
    gateway_key: SigningKey

    def node_key(self, node_id: str) -> VerifyingKey:
        return VerifyingKey.from_pem_file(self.root / "nodes" / node_id / "node.pub")


@pytest.fixture(scope="module")
def demo(
    federation_template: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[DemoNodes]:
    """The three demo nodes, shared by this module's tests (nonces keep them apart)."""
    root = tmp_path_factory.mktemp("admission") / "federation"
    shutil.copytree(federation_template, root)
    gateway_key = SigningKey.from_pem_file(root / "gateway" / "gateway.key")
    with ExitStack() as stack:
        nodes = {
            n: stack.enter_context(running_node(root / "nodes" / n / "node.toml")) for n in NODES
        }
        yield DemoNodes(root, nodes, gateway_key)


def open_gateway_ledger(folder: Path, key: SigningKey, origin: str) -> Ledger:
    """A real ledger as the gateway keeps one, holding FILLERS entries after `opened`."""
    ledger = Ledger.open(str(folder / "ledger.sqlite3"), key, origin)
    for i in range(FILLERS):
        ledger.append(
            outcome_entry(query_id=f"filler-{i}", request_digest=bytes(32), time_ms=i, results=())
        )
    return ledger


@pytest.fixture
def ledger(tmp_path: Path, demo: DemoNodes) -> Iterator[Ledger]:
    """The gateway's own ledger: its key, its origin."""
    opened = open_gateway_ledger(tmp_path, demo.gateway_key, gateway_origin(GATEWAY_ID))
    yield opened
    opened.close()


def shared_hash_request(query: Query | None = None, **overrides: Any) -> QueryRequest:
    """A request every demo node answers: a hit at two of them, none at sylvania."""
    overrides.setdefault("legal_basis", "eu-2016-680-art-8")
    shared = Query(
        "media", Operation.MATCH, (Predicate("sha256", Comparator.EQ, (SHARED_SHA256,)),)
    )
    return make_request(query or shared, audience=NODES, **overrides)


def sealed(key: SigningKey, request: QueryRequest) -> Envelope:
    return seal(key, REQUEST_TYPE, request_to_bytes(request))


def digest_of(envelope: Envelope) -> bytes:
    return hashlib.sha256(envelope.payload).digest()


def entry_for(
    request: QueryRequest, digest: bytes, key: SigningKey, *, key_id: str | None = None
) -> bytes:
    return request_entry(
        request, request_digest=digest, key_id=key_id or key.key_id, audit_key=TEST_AUDIT_KEY
    )


def logged(ledger: Ledger, entry: bytes) -> LedgerProof:
    """Append ``entry`` to ``ledger`` and return the proof a gateway would attach."""
    appended = ledger.append(entry, prove=True)
    assert appended.checkpoint is not None
    return LedgerProof(entry, appended.index, appended.inclusion_path, appended.checkpoint.note)


def honest_proof(ledger: Ledger, key: SigningKey, request: QueryRequest) -> SignedRequest:
    """``request`` signed and logged exactly as the gateway does it."""
    envelope = sealed(key, request)
    return SignedRequest(envelope, logged(ledger, entry_for(request, digest_of(envelope), key)))


def refusals(demo: DemoNodes, signed: SignedRequest) -> dict[str, tuple[str, str]]:
    """Send ``signed`` to every node; the status name and message of each refusal."""
    found = {}
    for node_id, node in demo.nodes.items():
        with pytest.raises(grpc.RpcError) as info:
            call_node(node.address, signed)
        found[node_id] = (info.value.code().name, info.value.details() or "")
    return found


def receipt_counts(demo: DemoNodes) -> dict[str, int]:
    return {n: node.core.receipts.size for n, node in demo.nodes.items()}


def opened_answer(demo: DemoNodes, node_id: str, answer: Envelope) -> QueryAnswer:
    key = demo.node_key(node_id)
    return answer_from_bytes(open_envelope(answer, ANSWER_TYPE, {key.key_id: key}))


def answers(demo: DemoNodes, signed: SignedRequest) -> dict[str, tuple[Envelope, QueryAnswer]]:
    """Send ``signed`` to every node; each node's answer envelope and its content."""
    found = {}
    for node_id, node in demo.nodes.items():
        envelope = envelope_from_proto(call_node(node.address, signed).answer)
        found[node_id] = (envelope, opened_answer(demo, node_id, envelope))
    return found


def receipts_for(node: RunningNode, query_id: str) -> list[Entry]:
    entries = [parse_entry(raw) for _, _, raw in node.core.receipts.store.rows()]
    return [e for e in entries if e.kind is EntryKind.RECEIPT and e.query_id == query_id]


def assert_refused_without_trace(
    demo: DemoNodes, request: QueryRequest, signed: SignedRequest, message: str
) -> None:
    """Every node refuses ``signed`` with ``message`` (a regex), writes no receipt and
    keeps the nonce: a correctly logged request under the same nonce is answered."""
    before = receipt_counts(demo)

    refused = refusals(demo, signed)

    for node_id, (code, details) in refused.items():
        assert code == "PERMISSION_DENIED", (node_id, details)
        assert re.fullmatch(message, details), (node_id, details)
    assert receipt_counts(demo) == before
    # Another request (so a spent nonce would show as ALREADY_EXISTS, not as a
    # cached answer), under the same nonce, logged as it should be.
    honest = replace(request, query_id=str(uuid.uuid4()))
    answered = answers(demo, sign_request(demo.gateway_key, honest))
    assert {n: a.status for n, (_, a) in answered.items()} == dict.fromkeys(
        NODES, AnswerStatus.ANSWERED
    )
    assert receipt_counts(demo) == {n: c + 1 for n, c in before.items()}


class UnloggedGateway:
    """A gateway that signs with the real key but skips its ledger."""

    def __init__(self, key: SigningKey) -> None:
        self.key = key

    def sign(self, request: QueryRequest) -> SignedRequest:
        return SignedRequest(sealed(self.key, request), None)


# --- no proof, or a proof of something else ---------------------------------------------


def test_request_without_a_ledger_proof_is_refused_everywhere(demo: DemoNodes) -> None:
    # prepare
    request = shared_hash_request()
    signed = UnloggedGateway(demo.gateway_key).sign(request)

    # execute / assert
    assert_refused_without_trace(
        demo,
        request,
        signed,
        re.escape(
            "request carries no ledger proof; a gateway must log each request before asking "
            "(upgrade the gateway, or check that its ledger is configured)"
        ),
    )


def test_proof_of_another_request_is_refused_everywhere(demo: DemoNodes, ledger: Ledger) -> None:
    # prepare: request A is logged; request B (same in all but id and nonce) borrows A's proof
    key = demo.gateway_key
    request_a = shared_hash_request()
    request_b = replace(request_a, query_id=str(uuid.uuid4()), nonce=os.urandom(16))
    proof_of_a = honest_proof(ledger, key, request_a).proof
    signed_b = SignedRequest(sealed(key, request_b), proof_of_a)

    # execute / assert
    assert_refused_without_trace(
        demo,
        request_b,
        signed_b,
        re.escape(
            "the logged entry does not describe this request (differs in request_digest, "
            "query_id); the gateway logged something other than what it asks"
        ),
    )


def media_match(*predicates: Predicate, dataset: str = "media") -> Query:
    return Query(dataset, Operation.MATCH, predicates)


SHA = Predicate("sha256", Comparator.EQ, (SHARED_SHA256,))

# What the logged entry claims, against the request actually signed; the digest
# logged is always the true one, so the description is the only thing wrong.
MISDESCRIBED: list[Any] = [
    pytest.param(
        {"requester": replace(INVESTIGATOR, subject="inv.mallory")}, "subject", id="subject"
    ),
    pytest.param({"requester": replace(INVESTIGATOR, agency="ruritania")}, "agency", id="agency"),
    pytest.param(
        {"requester": replace(INVESTIGATOR, roles=("investigator", "supervisor"))},
        "roles",
        id="roles",
    ),
    pytest.param({"purpose": "statistics"}, "purpose", id="purpose"),
    pytest.param({"case_ref": "GEN-OTHER-2"}, "case_ref", id="case-ref"),
    pytest.param({"legal_basis": ""}, "legal_basis", id="legal-basis"),
    pytest.param({"query": media_match(SHA, dataset="accounts")}, "dataset", id="dataset"),
    pytest.param({"query": Query("media", Operation.COUNT, (SHA,))}, "operation", id="operation"),
    pytest.param({"audience": ("ruritania", "sylvania")}, "targets", id="fewer-targets"),
    pytest.param({"audience": (*NODES, "atlantis")}, "targets", id="more-targets"),
    pytest.param(
        {"query": media_match(SHA, Predicate("md5", Comparator.EQ, ("00" * 16,)))},
        "predicates",
        id="predicate-count",
    ),
    pytest.param(
        {"query": media_match(Predicate("pdq", Comparator.EQ, (SHARED_SHA256,)))},
        "predicates",
        id="predicate-field",
    ),
    pytest.param(
        {"query": media_match(Predicate("sha256", Comparator.IN, (SHARED_SHA256,)))},
        "predicates",
        id="predicate-comparator",
    ),
    pytest.param(
        {"query": media_match(Predicate("sha256", Comparator.IN, (SHARED_SHA256, "ab" * 32)))},
        "predicates",
        id="predicate-value-count",
    ),
    pytest.param({"query": replace(media_match(SHA), fields=("category",))}, "fields", id="fields"),
    pytest.param(
        {"query": replace(media_match(SHA), group_by="category")}, "group_by", id="group-by"
    ),
    pytest.param({"query": replace(media_match(SHA), limit=5)}, "limit", id="limit"),
    pytest.param({"query_id": "another-query"}, "query_id", id="query-id"),
    pytest.param({"gateway_id": "rogue-gateway"}, "gateway_id", id="gateway-id"),
    pytest.param({"issued_at_ms": 1}, "time_ms", id="issued-at"),
    pytest.param(
        {"requester": replace(INVESTIGATOR, agency="ruritania", subject="x")},
        "agency, subject",
        id="several-fields",
    ),
    # An auditor reads these as what was asked (attributes such as clearance
    # decide policy), so a gateway may not log other values than it signs.
    *(
        pytest.param(claimed, differs, id=differs)
        for claimed, differs in (
            ({"expires_at_ms": 1}, "expires_at_ms"),
            ({"requester": replace(INVESTIGATOR, issuer="https://idp.rogue.example")}, "issuer"),
            ({"requester": replace(INVESTIGATOR, attributes={})}, "attributes"),
            ({"catalog_version": "liaison-catalog/0"}, "catalog_version"),
        )
    ),
]


@pytest.mark.parametrize(("claimed", "differs"), MISDESCRIBED)
def test_entry_describing_another_request_is_refused_everywhere(
    demo: DemoNodes, ledger: Ledger, claimed: dict[str, Any], differs: str
) -> None:
    # prepare
    key = demo.gateway_key
    request = shared_hash_request()
    envelope = sealed(key, request)
    lie = entry_for(replace(request, **claimed), digest_of(envelope), key)
    signed = SignedRequest(envelope, logged(ledger, lie))

    # execute / assert
    assert_refused_without_trace(
        demo,
        request,
        signed,
        re.escape(
            f"the logged entry does not describe this request (differs in {differs}); "
            "the gateway logged something other than what it asks"
        ),
    )


def test_entry_with_another_digest_is_refused_everywhere(demo: DemoNodes, ledger: Ledger) -> None:
    # prepare: every field right, but the digest of other bytes
    key = demo.gateway_key
    request = shared_hash_request()
    envelope = sealed(key, request)
    other_digest = hashlib.sha256(envelope.payload + b"\x00").digest()
    signed = SignedRequest(envelope, logged(ledger, entry_for(request, other_digest, key)))

    # execute / assert
    assert_refused_without_trace(
        demo,
        request,
        signed,
        re.escape(
            "the logged entry does not describe this request (differs in request_digest); "
            "the gateway logged something other than what it asks"
        ),
    )


def test_entry_naming_another_signing_key_is_refused_everywhere(
    demo: DemoNodes, ledger: Ledger
) -> None:
    # prepare: the entry says another key signed the request an auditor will look for
    key = demo.gateway_key
    request = shared_hash_request()
    envelope = sealed(key, request)
    other_key_id = SigningKey.generate().key_id
    lie = entry_for(request, digest_of(envelope), key, key_id=other_key_id)
    signed = SignedRequest(envelope, logged(ledger, lie))

    # execute / assert
    assert_refused_without_trace(
        demo,
        request,
        signed,
        re.escape(
            "the logged entry does not describe this request (differs in request_key_id); "
            "the gateway logged something other than what it asks"
        ),
    )


def test_outcome_entry_in_place_of_the_request_is_refused_everywhere(
    demo: DemoNodes, ledger: Ledger
) -> None:
    # prepare: the gateway logged only an outcome for this query id and digest
    key = demo.gateway_key
    request = shared_hash_request()
    envelope = sealed(key, request)
    outcome = outcome_entry(
        query_id=request.query_id,
        request_digest=digest_of(envelope),
        time_ms=request.issued_at_ms,
        results=(),
    )
    signed = SignedRequest(envelope, logged(ledger, outcome))

    # execute / assert
    assert_refused_without_trace(
        demo, request, signed, r"the logged entry is of kind outcome, not a request"
    )


def test_logged_bytes_that_are_no_entry_are_refused_everywhere(
    demo: DemoNodes, ledger: Ledger
) -> None:
    # prepare: a well-proven leaf that holds no entry at all
    key = demo.gateway_key
    request = shared_hash_request()
    signed = SignedRequest(sealed(key, request), logged(ledger, b"not json"))

    # execute / assert
    assert_refused_without_trace(
        demo,
        request,
        signed,
        re.escape(PROOF_REFUSED + "entry is not UTF-8 JSON (")
        + r"Expecting value: line 1 column 1 \(char 0\)\)",
    )


# --- proofs that do not verify ----------------------------------------------------------


def flip_bit(data: bytes, position: int) -> bytes:
    flipped = bytearray(data)
    flipped[position] ^= 0x01
    return bytes(flipped)


def resigned(note: str, key: SigningKey) -> str:
    """The checkpoint in ``note`` (read without checking it) signed again by ``key``."""
    return sign_checkpoint(key, parse_unverified(note)).note


ROOT = "[0-9a-f]{64}"
INCLUSION = f"inclusion proof for leaf {REQUEST_INDEX} in a tree of size {REQUEST_INDEX + 1}"
ANY_KEY = r"liaison\.gateway/gateway\+[0-9a-f]{8}"

Tamper = Callable[[LedgerProof], LedgerProof]

TAMPERED: list[Any] = [
    pytest.param(
        lambda p: replace(
            p, inclusion_path=(flip_bit(p.inclusion_path[0], 5), *p.inclusion_path[1:])
        ),
        re.escape(PROOF_REFUSED + INCLUSION) + f" leads to root {ROOT}, expected {ROOT}",
        id="path-bit-flipped",
    ),
    pytest.param(
        lambda p: replace(p, leaf_index=p.leaf_index - 1),
        re.escape(
            PROOF_REFUSED + f"inclusion proof for leaf {REQUEST_INDEX - 1} in a tree of size "
        )
        + f"{REQUEST_INDEX + 1} leads to root {ROOT}, expected {ROOT}",
        id="other-leaf-index",
    ),
    pytest.param(
        lambda p: replace(p, leaf_index=p.leaf_index + 1),
        re.escape(
            PROOF_REFUSED
            + f"leaf index {REQUEST_INDEX + 1} is outside a tree of size {REQUEST_INDEX + 1}"
        ),
        id="leaf-index-past-the-tree",
    ),
    pytest.param(
        lambda p: replace(p, leaf_index=2**64 - 1),
        re.escape(
            PROOF_REFUSED + f"leaf index {2**64 - 1} is outside a tree of size {REQUEST_INDEX + 1}"
        ),
        id="largest-leaf-index",
    ),
    pytest.param(
        lambda p: replace(p, inclusion_path=p.inclusion_path[:-1]),
        re.escape(PROOF_REFUSED + INCLUSION + " has 2 hashes, expected 3"),
        id="path-element-removed",
    ),
    pytest.param(
        lambda p: replace(p, inclusion_path=(*p.inclusion_path, bytes(32))),
        re.escape(PROOF_REFUSED + INCLUSION + " has 4 hashes, expected 3"),
        id="path-element-added",
    ),
    pytest.param(
        lambda p: replace(p, inclusion_path=(p.inclusion_path[0][:31], *p.inclusion_path[1:])),
        re.escape(PROOF_REFUSED + "inclusion proof hash 0 is 31 bytes, expected 32 (SHA-256)"),
        id="path-element-short",
    ),
    pytest.param(
        lambda p: replace(p, inclusion_path=()),
        re.escape(PROOF_REFUSED + INCLUSION + " has 0 hashes, expected 3"),
        id="path-empty",
    ),
    pytest.param(
        lambda p: replace(p, inclusion_path=(bytes(32),) * (MAX_PROOF_ELEMENTS + 1)),
        re.escape(f"ledger proof has more than {MAX_PROOF_ELEMENTS} elements"),
        id="oversized-path",
    ),
    pytest.param(
        lambda p: replace(p, entry=flip_bit(p.entry, len(p.entry) // 2)),
        re.escape(PROOF_REFUSED + INCLUSION) + f" leads to root {ROOT}, expected {ROOT}",
        id="entry-edited-after-logging",
    ),
    pytest.param(
        lambda p: replace(p, checkpoint=p.checkpoint[: p.checkpoint.index("\n\n") + 1]),
        re.escape(
            PROOF_REFUSED + "note has no empty line between its text and its signatures; "
            "expected the checkpoint text, an empty line, then lines '— <key name> <signature>'"
        ),
        id="checkpoint-signature-cut-off",
    ),
    pytest.param(
        lambda p: replace(p, checkpoint=p.checkpoint[:-10]),
        re.escape(PROOF_REFUSED + "note ends in ")
        + ".* without a final newline; expected every signature line to end in a newline "
        r"\(trailing garbage\?\)",
        id="checkpoint-truncated",
    ),
    pytest.param(
        lambda p: replace(p, checkpoint=p.checkpoint.replace(f"\n{REQUEST_INDEX + 1}\n", "\n9\n")),
        re.escape(PROOF_REFUSED)
        + f"the signature by key {ANY_KEY} does not verify: the note was altered after "
        "signing, or forged; do not rely on it",
        id="checkpoint-size-edited",
    ),
    pytest.param(
        lambda p: replace(p, checkpoint=""),
        re.escape(
            PROOF_REFUSED + "note has no empty line between its text and its signatures; "
            "expected the checkpoint text, an empty line, then lines '— <key name> <signature>'"
        ),
        id="checkpoint-empty",
    ),
]


@pytest.mark.parametrize(("tamper", "message"), TAMPERED)
def test_tampered_proof_is_refused_everywhere(
    demo: DemoNodes, ledger: Ledger, tamper: Tamper, message: str
) -> None:
    # prepare
    request = shared_hash_request()
    honest = honest_proof(ledger, demo.gateway_key, request)
    assert honest.proof is not None
    assert (honest.proof.leaf_index, len(honest.proof.inclusion_path)) == (REQUEST_INDEX, 3)
    signed = replace(honest, proof=tamper(honest.proof))

    # execute / assert
    assert_refused_without_trace(demo, request, signed, message)


def test_checkpoint_signed_by_another_key_is_refused_everywhere(
    demo: DemoNodes, ledger: Ledger
) -> None:
    # prepare: the true tree head, signed by a key the nodes do not pin
    request = shared_hash_request()
    honest = honest_proof(ledger, demo.gateway_key, request)
    assert honest.proof is not None
    forger = SigningKey.generate()
    forged_note = resigned(honest.proof.checkpoint, forger)
    signed = replace(honest, proof=replace(honest.proof, checkpoint=forged_note))

    # execute / assert
    assert_refused_without_trace(
        demo,
        request,
        signed,
        re.escape(PROOF_REFUSED)
        + f"note has no signature by key {ANY_KEY}; it is signed by {ANY_KEY}. Check that it "
        "comes from the expected log and that you pinned that log's current public key",
    )


def test_checkpoint_older_than_the_entry_is_refused_everywhere(
    demo: DemoNodes, ledger: Ledger
) -> None:
    # prepare: a genuine checkpoint of the same ledger, signed before the entry was added
    request = shared_hash_request()
    honest = honest_proof(ledger, demo.gateway_key, request)
    assert honest.proof is not None
    old = ledger.latest_checkpoint  # stored when the ledger was opened
    assert old is not None and old.checkpoint.size == 1
    signed = replace(honest, proof=replace(honest.proof, checkpoint=old.note))

    # execute / assert
    assert_refused_without_trace(
        demo,
        request,
        signed,
        re.escape(PROOF_REFUSED + f"leaf index {REQUEST_INDEX} is outside a tree of size 1"),
    )


def test_proof_from_a_ledger_of_another_origin_is_refused_everywhere(
    demo: DemoNodes, tmp_path: Path
) -> None:
    # prepare: the gateway's key, but a log it keeps for something else
    other = open_gateway_ledger(tmp_path, demo.gateway_key, "liaison.gateway/other")
    request = shared_hash_request()
    try:
        signed = honest_proof(other, demo.gateway_key, request)
    finally:
        other.close()

    # execute / assert
    assert_refused_without_trace(
        demo,
        request,
        signed,
        re.escape(
            PROOF_REFUSED + "checkpoint is from log 'liaison.gateway/other', expected "
            "'liaison.gateway/gateway'; check that you fetched it from the right log"
        ),
    )


def test_valid_proof_from_an_untrusted_gateways_ledger_is_refused_everywhere(
    demo: DemoNodes, tmp_path: Path
) -> None:
    # prepare: another gateway, under the same name, logs the request faithfully in
    # its own ledger; its proof is valid, but under a key the nodes do not trust
    stranger = SigningKey.generate()
    request = shared_hash_request()
    envelope = sealed(demo.gateway_key, request)
    strangers_ledger = open_gateway_ledger(tmp_path, stranger, gateway_origin(GATEWAY_ID))
    try:
        proof = logged(strangers_ledger, entry_for(request, digest_of(envelope), stranger))
    finally:
        strangers_ledger.close()
    checkpoint = open_checkpoint(proof.checkpoint, stranger.verifying_key)
    assert checkpoint.origin == gateway_origin(GATEWAY_ID)  # valid, for whoever trusts it

    # execute / assert
    assert_refused_without_trace(
        demo,
        request,
        SignedRequest(envelope, proof),
        re.escape(PROOF_REFUSED)
        + f"note has no signature by key {ANY_KEY}; it is signed by {ANY_KEY}. Check that it "
        "comes from the expected log and that you pinned that log's current public key",
    )


# --- answered ---------------------------------------------------------------------------


def test_logged_request_is_answered_with_a_receipt_naming_it(
    demo: DemoNodes, ledger: Ledger
) -> None:
    # prepare
    key = demo.gateway_key
    request = shared_hash_request()
    signed = honest_proof(ledger, key, request)
    assert signed.proof is not None
    before = receipt_counts(demo)

    # execute
    answered = answers(demo, signed)

    # assert
    assert receipt_counts(demo) == {n: c + 1 for n, c in before.items()}
    assert {n: a.hit for n, (_, a) in answered.items()} == {
        "freedonia": True,
        "ruritania": True,
        "sylvania": False,
    }
    for node_id, (envelope, answer) in answered.items():
        node = demo.nodes[node_id]
        (receipt,) = receipts_for(node, request.query_id)
        f = receipt.fields
        assert f["node_id"] == node_id
        assert f["query_id"] == request.query_id
        assert f["request_digest"] == digest_of(signed.envelope).hex()
        assert f["gateway_id"] == GATEWAY_ID
        assert f["gateway_key_id"] == key.key_id
        assert f["gateway_signature"] == signed.envelope.signature.hex()
        assert f["gateway_entry"].encode("utf-8") == signed.proof.entry
        assert f["gateway_leaf_index"] == REQUEST_INDEX
        assert f["gateway_checkpoint"] == signed.proof.checkpoint
        assert f["status"] == "answered"
        assert f["rules"] == list(answer.decision.rules)
        assert f["rules"] != []
        assert f["obligations"] == list(answer.decision.obligations)
        assert f["answer_digest"] == hashlib.sha256(envelope.payload).hexdigest()
        assert f["answer_key_id"] == demo.node_key(node_id).key_id
        assert f["time_ms"] == answer.answered_at_ms
        # The selector is in the receipt only as the gateway's keyed hash.
        (predicate,) = parse_entry(f["gateway_entry"].encode("utf-8")).fields["predicates"]
        assert predicate["values_hmac"] == [TEST_AUDIT_KEY.hash(SHARED_SHA256)]
        assert SHARED_SHA256.encode() not in receipt.raw
        assert SHARED_SHA256.upper().encode() not in receipt.raw
    assert receipts_for(demo.nodes["ruritania"], request.query_id)[0].fields["rules"] == [
        "partner-hash-match"
    ]


def test_receipts_ledger_files_hold_no_selector_in_clear(demo: DemoNodes, ledger: Ledger) -> None:
    # prepare: a value that occurs nowhere but in this request
    value = os.urandom(32).hex()
    query = media_match(Predicate("sha256", Comparator.EQ, (value,)))
    request = shared_hash_request(query=query)

    # execute: each receipt is durable before its answer leaves
    answered = answers(demo, honest_proof(ledger, demo.gateway_key, request))

    # assert: the files hold the receipt (with the keyed hash), never the value
    assert {n: a.status for n, (_, a) in answered.items()} == dict.fromkeys(
        NODES, AnswerStatus.ANSWERED
    )
    for node_id in NODES:
        files = sorted((demo.root / "nodes" / node_id / "state").glob("receipts.sqlite3*"))
        contents = b"".join(path.read_bytes() for path in files)
        assert request.query_id.encode() in contents, files
        assert TEST_AUDIT_KEY.hash(value).encode() in contents, files
        assert value.encode() not in contents, files
        assert value.upper().encode() not in contents, files
