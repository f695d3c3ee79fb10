"""A real node server refusing everything it must refuse, and answering what it may.

Each test starts the demo federation's Ruritania node on a free loopback port and
talks to it over gRPC with envelopes signed by real keys, as the gateway would.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import re
import sqlite3
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
import pytest

from liaison.catalog import CATALOG_VERSION
from liaison.demo.data import probes
from liaison.demo.federation import GATEWAY_ID
from liaison.envelope import ANSWER_TYPE, MAX_PAYLOAD_BYTES, REQUEST_TYPE, Envelope, open_envelope
from liaison.envelope import seal as seal_envelope
from liaison.errors import BadSignature
from liaison.keys import SigningKey, VerifyingKey
from liaison.ledger.logged import SignedRequest
from liaison.messages import AnswerStatus, QueryAnswer, QueryRequest, Requester
from liaison.query import Comparator, Operation, Predicate, Query
from liaison.serving import MAX_MESSAGE_BYTES
from liaison.wire import (
    answer_from_bytes,
    envelope_from_proto,
    request_to_bytes,
    signed_request_to_proto,
)
from proto.liaison.v1 import node_pb2_grpc as pb_node_grpc
from tests.support import (
    INVESTIGATOR,
    RunningNode,
    call_node,
    make_request,
    now_ms,
    running_node,
    sign_request,
)

NODE_ID = "ruritania"
# Local schema names of Ruritania's database: they must never reach a caller.
LOCAL_NAMES = ("hash_register", "online_ids", "dossiers", "sha256_hex", "seen_first")
UNKNOWN_SHA256 = "ab" * 32


# --- fixtures and helpers ----------------------------------------------------------


@pytest.fixture
def gateway_key(federation_dir: Path) -> SigningKey:
    return SigningKey.from_pem_file(federation_dir / "gateway" / "gateway.key")


@pytest.fixture
def node_config(federation_dir: Path) -> Path:
    return federation_dir / "nodes" / NODE_ID / "node.toml"


@pytest.fixture
def node_key(federation_dir: Path) -> VerifyingKey:
    return VerifyingKey.from_pem_file(federation_dir / "nodes" / NODE_ID / "node.pub")


@pytest.fixture
def node(node_config: Path) -> Iterator[RunningNode]:
    with running_node(node_config) as running:
        yield running


def sha256_match(value: str) -> Query:
    return Query(
        dataset="media",
        operation=Operation.MATCH,
        predicates=(Predicate("sha256", Comparator.EQ, (value,)),),
    )


def request_for(query: Query | None = None, **overrides: Any) -> QueryRequest:
    overrides.setdefault("legal_basis", "eu-2016-680-art-8")
    return make_request(
        query or sha256_match(probes().shared_sha256), audience=(NODE_ID,), **overrides
    )


def assert_clean(message: str, *, echoed: str = "") -> None:
    """No SQL text, stack trace or local schema name in a message a caller sees.

    ``echoed`` is a value the caller sent, which a message may quote back.
    """
    shown = message.replace(echoed, "") if echoed else message
    assert "SELECT" not in shown, message
    assert "FROM " not in shown, message
    assert "Traceback" not in shown, message
    assert 'File "' not in shown, message
    for name in LOCAL_NAMES:
        assert name not in shown, message


def refusal(
    address: str, envelope: SignedRequest | Envelope, *, echoed: str = ""
) -> tuple[grpc.StatusCode, str]:
    """Send ``envelope`` (a bare one without a ledger proof); return the checked refusal."""
    if isinstance(envelope, Envelope):
        envelope = SignedRequest(envelope, None)
    with pytest.raises(grpc.RpcError) as info:
        call_node(address, envelope)
    details = info.value.details() or ""
    assert_clean(details, echoed=echoed)
    return info.value.code(), details


def answer_envelope(address: str, envelope: SignedRequest) -> Envelope:
    return envelope_from_proto(call_node(address, envelope).answer)


def opened(answer: Envelope, node_key: VerifyingKey) -> QueryAnswer:
    return answer_from_bytes(open_envelope(answer, ANSWER_TYPE, {node_key.key_id: node_key}))


# --- answered --------------------------------------------------------------------------


def test_signed_request_gets_an_answer_signed_by_the_node(
    node: RunningNode, gateway_key: SigningKey, node_key: VerifyingKey
) -> None:
    # prepare
    request = request_for()
    envelope = sign_request(gateway_key, request)

    # execute
    sealed = answer_envelope(node.address, envelope)

    # assert
    assert sealed.payload_type == ANSWER_TYPE
    assert sealed.key_id == node_key.key_id
    answer = opened(sealed, node_key)
    assert answer.query_id == request.query_id
    assert answer.node_id == NODE_ID
    assert answer.request_digest == hashlib.sha256(envelope.envelope.payload).digest()
    assert answer.status is AnswerStatus.ANSWERED
    assert answer.decision.rules == ("partner-hash-match",)
    assert answer.hit is True


def test_answer_does_not_verify_under_the_gateway_key(
    node: RunningNode, gateway_key: SigningKey
) -> None:
    # prepare: an answer must come from the node, so the gateway's own key cannot vouch for it
    sealed = answer_envelope(node.address, sign_request(gateway_key, request_for()))
    pinned = {sealed.key_id: gateway_key.verifying_key}

    # execute / assert
    with pytest.raises(BadSignature, match=r"^signature does not verify under key "):
        open_envelope(sealed, ANSWER_TYPE, pinned)


def test_unknown_hash_is_a_miss(
    node: RunningNode, gateway_key: SigningKey, node_key: VerifyingKey
) -> None:
    # prepare
    envelope = sign_request(gateway_key, request_for(sha256_match(UNKNOWN_SHA256)))

    # execute
    answer = opened(answer_envelope(node.address, envelope), node_key)

    # assert
    assert answer.status is AnswerStatus.ANSWERED
    assert answer.hit is False


# --- forged and tampered ---------------------------------------------------------------


def test_tampered_payload_is_unauthenticated(node: RunningNode, gateway_key: SigningKey) -> None:
    # prepare: one bit of the signed bytes flipped in transit
    signed = sign_request(gateway_key, request_for())
    payload = bytearray(signed.envelope.payload)
    payload[len(payload) // 2] ^= 0x01
    tampered = dataclasses.replace(signed.envelope, payload=bytes(payload))

    # execute
    code, details = refusal(node.address, tampered)

    # assert
    assert code is grpc.StatusCode.UNAUTHENTICATED
    assert re.fullmatch(r"signature does not verify under key [0-9a-f]{16}…", details)


def test_swapped_request_under_an_old_signature_is_unauthenticated(
    node: RunningNode, gateway_key: SigningKey
) -> None:
    # prepare: a valid signature, attached to the bytes of another valid request
    signed = sign_request(gateway_key, request_for())
    other = request_to_bytes(request_for(sha256_match(UNKNOWN_SHA256)))
    swapped = SignedRequest(dataclasses.replace(signed.envelope, payload=other), signed.proof)

    # execute
    code, details = refusal(node.address, swapped)

    # assert
    assert code is grpc.StatusCode.UNAUTHENTICATED
    assert details.startswith("signature does not verify under key ")


def test_request_signed_by_a_foreign_key_is_unauthenticated(node: RunningNode) -> None:
    # prepare
    forger = SigningKey.generate()
    envelope = sign_request(forger, request_for())

    # execute
    code, details = refusal(node.address, envelope)

    # assert
    assert code is grpc.StatusCode.UNAUTHENTICATED
    assert details == (
        f"envelope is signed by key {forger.key_id[:16]!r}…, which is not trusted here; "
        "add its public key to the trusted keys if it should be"
    )


def test_foreign_signature_claiming_the_gateway_key_id_is_unauthenticated(
    node: RunningNode, gateway_key: SigningKey
) -> None:
    # prepare
    signed = sign_request(SigningKey.generate(), request_for())
    forged = SignedRequest(
        dataclasses.replace(signed.envelope, key_id=gateway_key.key_id), signed.proof
    )

    # execute
    code, details = refusal(node.address, forged)

    # assert
    assert code is grpc.StatusCode.UNAUTHENTICATED
    assert details == f"signature does not verify under key {gateway_key.key_id[:16]}…"


def test_empty_envelope_is_unauthenticated(node: RunningNode) -> None:
    # prepare
    empty = Envelope(
        payload=b"", payload_type="", key_id=SigningKey.generate().key_id, signature=b""
    )

    # execute
    code, details = refusal(node.address, empty)

    # assert
    assert code is grpc.StatusCode.UNAUTHENTICATED
    assert details == f"envelope carries '', expected {REQUEST_TYPE!r}"


def test_answer_type_envelope_is_not_a_request(node: RunningNode, gateway_key: SigningKey) -> None:
    # prepare: valid request bytes, validly signed by the gateway, but typed as an answer
    envelope = seal_envelope(gateway_key, ANSWER_TYPE, request_to_bytes(request_for()))

    # execute
    code, details = refusal(node.address, envelope)

    # assert
    assert code is grpc.StatusCode.UNAUTHENTICATED
    assert details == f"envelope carries {ANSWER_TYPE!r}, expected {REQUEST_TYPE!r}"


def test_node_answer_reflected_back_as_a_request_is_refused(
    node: RunningNode, gateway_key: SigningKey
) -> None:
    # prepare
    answer = answer_envelope(node.address, sign_request(gateway_key, request_for()))

    # execute
    code, details = refusal(node.address, answer)

    # assert
    assert code is grpc.StatusCode.UNAUTHENTICATED
    assert details == f"envelope carries {ANSWER_TYPE!r}, expected {REQUEST_TYPE!r}"


@pytest.mark.parametrize(
    "payload",
    [b"\xff\xff\xff", b"garbage", b"\x0a\x05ab", b"\x0a\x02\xff\xfe"],
    ids=["bad-tag", "text", "truncated-field", "invalid-utf8"],
)
def test_malformed_payload_under_a_valid_signature_is_invalid_argument(
    node: RunningNode, gateway_key: SigningKey, payload: bytes
) -> None:
    # prepare
    envelope = seal_envelope(gateway_key, REQUEST_TYPE, payload)

    # execute
    code, details = refusal(node.address, envelope)

    # assert
    assert code is grpc.StatusCode.INVALID_ARGUMENT
    assert details.startswith("signed payload is not a valid QueryRequest (")


def test_payload_without_an_operation_is_invalid_argument(
    node: RunningNode, gateway_key: SigningKey
) -> None:
    # prepare: parses as protobuf (one unknown field), but names no operation
    envelope = seal_envelope(gateway_key, REQUEST_TYPE, b"\x08\x01")

    # execute
    code, details = refusal(node.address, envelope)

    # assert
    assert code is grpc.StatusCode.INVALID_ARGUMENT
    assert details == (
        "signed payload is not a valid QueryRequest (the query names no operation "
        "(match, count, count_by or records))"
    )


def test_payload_above_the_envelope_limit_is_unauthenticated(
    node: RunningNode, gateway_key: SigningKey
) -> None:
    # prepare: fits in a gRPC message, but not in an envelope
    envelope = seal_envelope(gateway_key, REQUEST_TYPE, b"\x00" * (MAX_PAYLOAD_BYTES + 1))

    # execute
    code, details = refusal(node.address, envelope)

    # assert
    assert code is grpc.StatusCode.UNAUTHENTICATED
    assert details == (
        f"envelope payload is {MAX_PAYLOAD_BYTES + 1} bytes, above the "
        f"{MAX_PAYLOAD_BYTES}-byte limit"
    )


def test_oversized_grpc_message_is_refused_and_the_node_keeps_serving(
    node: RunningNode, gateway_key: SigningKey, node_key: VerifyingKey
) -> None:
    # prepare
    huge = Envelope(
        payload=b"\x00" * (MAX_MESSAGE_BYTES + 1024),
        payload_type=REQUEST_TYPE,
        key_id=gateway_key.key_id,
        signature=b"\x00" * 64,
    )

    # execute
    code, details = refusal(node.address, huge)
    after = opened(
        answer_envelope(node.address, sign_request(gateway_key, request_for())), node_key
    )

    # assert
    assert code is grpc.StatusCode.RESOURCE_EXHAUSTED
    assert str(MAX_MESSAGE_BYTES) in details
    assert after.status is AnswerStatus.ANSWERED
    assert after.hit is True


# --- replay and retry ------------------------------------------------------------------


def test_identical_retry_gets_the_same_answer_bytes(
    node: RunningNode, gateway_key: SigningKey
) -> None:
    # prepare
    envelope = sign_request(gateway_key, request_for())
    first = call_node(node.address, envelope)

    # execute
    second = call_node(node.address, envelope)

    # assert
    assert second.SerializeToString(deterministic=True) == first.SerializeToString(
        deterministic=True
    )


def test_same_nonce_with_other_bytes_is_already_exists(
    node: RunningNode, gateway_key: SigningKey
) -> None:
    # prepare
    request = request_for()
    call_node(node.address, sign_request(gateway_key, request))
    replay = dataclasses.replace(request, query=sha256_match(UNKNOWN_SHA256))

    # execute
    code, details = refusal(node.address, sign_request(gateway_key, replay))

    # assert
    assert code is grpc.StatusCode.ALREADY_EXISTS
    assert details == (
        "nonce was already used by a different request; the gateway must send a "
        "fresh nonce for every request"
    )


def test_concurrent_requests_sharing_a_nonce_get_one_answer(
    node: RunningNode, gateway_key: SigningKey
) -> None:
    # prepare: eight different requests, one nonce
    nonce = os.urandom(16)
    envelopes = [sign_request(gateway_key, request_for(nonce=nonce)) for _ in range(8)]

    def send(envelope: SignedRequest) -> grpc.StatusCode:
        try:
            call_node(node.address, envelope)
        except grpc.RpcError as exc:
            assert_clean(exc.details() or "")
            return exc.code()
        return grpc.StatusCode.OK

    # execute
    with ThreadPoolExecutor(max_workers=8) as pool:
        codes = list(pool.map(send, envelopes))

    # assert
    assert sorted(c.name for c in codes) == ["ALREADY_EXISTS"] * 7 + ["OK"]


def test_replay_is_refused_after_the_node_restarts(
    node_config: Path, gateway_key: SigningKey
) -> None:
    # prepare
    request = request_for()
    envelope = sign_request(gateway_key, request)
    with running_node(node_config) as first_life:
        before = call_node(first_life.address, envelope)

    # execute
    with running_node(node_config) as second_life:
        code, details = refusal(
            second_life.address,
            sign_request(gateway_key, dataclasses.replace(request, case_ref="GEN-OTHER")),
        )
        retried = call_node(second_life.address, envelope)

    # assert
    assert code is grpc.StatusCode.ALREADY_EXISTS
    assert details.startswith("nonce was already used by a different request")
    assert retried.SerializeToString(deterministic=True) == before.SerializeToString(
        deterministic=True
    )


def attempt(address: str, envelope: SignedRequest) -> bytes | tuple[grpc.StatusCode, str]:
    """The response's bytes, or the refusal's status and message."""
    try:
        return call_node(address, envelope).SerializeToString(deterministic=True)
    except grpc.RpcError as exc:
        return exc.code(), exc.details() or ""


def test_retry_while_the_first_attempt_is_still_running_is_retryable(
    federation_dir: Path, node: RunningNode, gateway_key: SigningKey
) -> None:
    # prepare: hold the agency database locked so that the first attempt waits inside
    # the node, as a slow query would, while the gateway retries the identical envelope
    # (after, say, a dropped connection)
    envelope = sign_request(gateway_key, request_for())
    lock = sqlite3.connect(federation_dir / "nodes" / NODE_ID / f"{NODE_ID}.sqlite3")
    lock.isolation_level = None
    lock.execute("BEGIN EXCLUSIVE")
    pool = ThreadPoolExecutor(max_workers=2)

    # execute
    try:
        first = pool.submit(attempt, node.address, envelope)
        time.sleep(0.3)
        retry = pool.submit(attempt, node.address, envelope)
        time.sleep(0.3)
    finally:
        lock.execute("ROLLBACK")
        lock.close()
        outcomes = [first.result(timeout=10), retry.result(timeout=10)]
        pool.shutdown()

    # assert: one answer, given to every attempt, or a refusal the gateway retries
    answers = {o for o in outcomes if isinstance(o, bytes)}
    refusals = [o for o in outcomes if not isinstance(o, bytes)]
    assert len(answers) == 1, outcomes
    assert all(code is grpc.StatusCode.UNAVAILABLE for code, _ in refusals), refusals


def test_replay_guard_keeps_nonces_while_their_requests_are_acceptable(
    node_config: Path, gateway_key: SigningKey
) -> None:
    # prepare: a node accepting 1 s lifetimes but 30 s of clock skew. An old request,
    # expired 4 s ago and so still acceptable, is answered; then enough traffic
    # that the node purges its replay state (every 256 answers).
    text = node_config.read_text()
    node_config.write_text(
        text.replace('state_dir = "state"\n', 'state_dir = "state"\nmax_request_age_s = 1\n')
    )
    issued = now_ms() - 5_000
    old = request_for(issued_at_ms=issued, expires_at_ms=issued + 1_000)
    with running_node(node_config) as node:
        first = call_node(node.address, sign_request(gateway_key, old))
        with grpc.insecure_channel(node.address) as channel:
            stub = pb_node_grpc.NodeServiceStub(channel)
            for _ in range(255):
                fresh = sign_request(gateway_key, request_for(ttl_ms=1_000))
                stub.Answer(signed_request_to_proto(fresh), timeout=10)

        # execute: the old nonce again, once with other bytes and once identically
        code, details = refusal(
            node.address, sign_request(gateway_key, dataclasses.replace(old, case_ref="GEN-X"))
        )
        retried = call_node(node.address, sign_request(gateway_key, old))

    # assert
    assert (code, details) == (
        grpc.StatusCode.ALREADY_EXISTS,
        "nonce was already used by a different request; the gateway must send a "
        "fresh nonce for every request",
    )
    assert retried.SerializeToString(deterministic=True) == first.SerializeToString(
        deterministic=True
    )


def test_refused_request_does_not_burn_its_nonce(
    node: RunningNode, gateway_key: SigningKey, node_key: VerifyingKey
) -> None:
    # prepare: a request refused after verification (unknown purpose) ...
    nonce = os.urandom(16)
    bad = sign_request(gateway_key, request_for(nonce=nonce, purpose="curiosity"))
    code, _ = refusal(node.address, bad)

    # execute: ... may be corrected and resent under the same nonce
    fixed = sign_request(gateway_key, request_for(nonce=nonce))
    answer = opened(answer_envelope(node.address, fixed), node_key)

    # assert
    assert code is grpc.StatusCode.INVALID_ARGUMENT
    assert answer.status is AnswerStatus.ANSWERED


# --- freshness, audience and request fields -------------------------------------------


def test_expired_request_is_permission_denied(node: RunningNode, gateway_key: SigningKey) -> None:
    # prepare: expired a minute ago, well beyond the 30 s clock skew
    issued = now_ms() - 120_000
    request = request_for(issued_at_ms=issued, expires_at_ms=issued + 60_000)

    # execute
    code, details = refusal(node.address, sign_request(gateway_key, request))

    # assert
    assert code is grpc.StatusCode.PERMISSION_DENIED
    assert details == "request has expired; send a new one"


def test_request_from_the_future_is_permission_denied(
    node: RunningNode, gateway_key: SigningKey
) -> None:
    # prepare: issued a minute ahead, beyond the 30 s clock skew
    issued = now_ms() + 60_000
    request = request_for(issued_at_ms=issued, expires_at_ms=issued + 30_000)

    # execute
    code, details = refusal(node.address, sign_request(gateway_key, request))

    # assert
    assert code is grpc.StatusCode.PERMISSION_DENIED
    assert details == (
        "request is issued in the future; check the gateway's and this node's clocks"
    )


def test_small_clock_skew_is_tolerated(
    node: RunningNode, gateway_key: SigningKey, node_key: VerifyingKey
) -> None:
    # prepare: one request a little ahead, one expired a little ago, both within 30 s
    issued_ahead = now_ms() + 10_000
    ahead = request_for(issued_at_ms=issued_ahead, expires_at_ms=issued_ahead + 30_000)
    expired_behind = now_ms() - 10_000
    behind = request_for(issued_at_ms=expired_behind - 30_000, expires_at_ms=expired_behind)

    # execute
    answers = [
        opened(answer_envelope(node.address, sign_request(gateway_key, r)), node_key)
        for r in (ahead, behind)
    ]

    # assert
    assert [a.status for a in answers] == [AnswerStatus.ANSWERED, AnswerStatus.ANSWERED]


def test_lifetime_beyond_the_node_maximum_is_permission_denied(
    node: RunningNode, gateway_key: SigningKey
) -> None:
    # prepare: the demo nodes accept at most 300 s
    request = request_for(ttl_ms=300_001)

    # execute
    code, details = refusal(node.address, sign_request(gateway_key, request))

    # assert
    assert code is grpc.StatusCode.PERMISSION_DENIED
    assert details == "request is valid for longer than this node accepts (300 s)"


def test_lifetime_at_the_node_maximum_is_answered(
    node: RunningNode, gateway_key: SigningKey, node_key: VerifyingKey
) -> None:
    # prepare
    request = request_for(ttl_ms=300_000)

    # execute
    answer = opened(answer_envelope(node.address, sign_request(gateway_key, request)), node_key)

    # assert
    assert answer.status is AnswerStatus.ANSWERED


@pytest.mark.parametrize(
    ("audience", "named"),
    [
        (("freedonia", "sylvania"), "freedonia, sylvania"),
        ((), "no node"),
        (("ruritani",), "ruritani"),
    ],
    ids=["other-nodes", "nobody", "near-miss"],
)
def test_misaddressed_request_is_permission_denied(
    node: RunningNode, gateway_key: SigningKey, audience: tuple[str, ...], named: str
) -> None:
    # prepare
    request = make_request(sha256_match(probes().shared_sha256), audience=audience)

    # execute
    code, details = refusal(node.address, sign_request(gateway_key, request))

    # assert
    assert code is grpc.StatusCode.PERMISSION_DENIED
    assert details == f"request is addressed to {named}, not to this node ({NODE_ID})"


@pytest.mark.parametrize("length", [0, 8, 15])
def test_short_nonce_is_permission_denied(
    node: RunningNode, gateway_key: SigningKey, length: int
) -> None:
    # prepare
    request = request_for(nonce=os.urandom(length))

    # execute
    code, details = refusal(node.address, sign_request(gateway_key, request))

    # assert
    assert code is grpc.StatusCode.PERMISSION_DENIED
    assert details == "request nonce must be at least 16 random bytes"


def test_other_catalog_version_is_permission_denied(
    node: RunningNode, gateway_key: SigningKey
) -> None:
    # prepare
    request = request_for(catalog_version="liaison-catalog/2")

    # execute
    code, details = refusal(node.address, sign_request(gateway_key, request))

    # assert
    assert code is grpc.StatusCode.PERMISSION_DENIED
    assert details == (
        f"request speaks catalog 'liaison-catalog/2'; this node speaks {CATALOG_VERSION!r}"
    )


def test_gateway_id_not_matching_the_signing_key_is_permission_denied(
    node: RunningNode, gateway_key: SigningKey
) -> None:
    # prepare
    request = request_for(gateway_id="rogue-gateway")

    # execute
    code, details = refusal(node.address, sign_request(gateway_key, request))

    # assert
    assert code is grpc.StatusCode.PERMISSION_DENIED
    assert details == f"request names gateway 'rogue-gateway' but is signed by {GATEWAY_ID!r}"


def test_request_without_requester_is_permission_denied(
    node: RunningNode, gateway_key: SigningKey
) -> None:
    # prepare
    request = request_for(requester=Requester("", "", ("investigator",), INVESTIGATOR.issuer))

    # execute
    code, details = refusal(node.address, sign_request(gateway_key, request))

    # assert
    assert code is grpc.StatusCode.PERMISSION_DENIED
    assert details == "request names no requesting agency or subject"


# --- hostile values --------------------------------------------------------------------

INJECTIONS = [
    "' OR 1=1 --",
    '"; DROP TABLE hash_register; --',
    "1' UNION SELECT sha256_hex FROM hash_register --",
    "x'); DELETE FROM online_ids; --",
    "%' OR username LIKE '%",
    "'OR'1'='1'--@evil.example",
    "\\'; UPDATE dossiers SET state='closed'; --",
    "Ω≈ç√ 𝕊𝔼𝕃𝔼ℂ𝕋 🔥 中文 ‮dlrow",
    "\x00",
    "abc\x00' OR '1'='1",
    "A" * 300,
]
INJECTION_IDS = [
    "or-1-1",
    "drop-table",
    "union-select",
    "delete",
    "like-wildcards",
    "email-shaped",
    "backslash-update",
    "unicode",
    "nul",
    "embedded-nul",
    "long",
]


def eq(field: str, value: str) -> Predicate:
    return Predicate(field, Comparator.EQ, (value,))


def probes_with(value: str) -> list[tuple[Query, str]]:
    """Queries (with their purpose) placing ``value`` in every predicate Ruritania may run."""
    media_match = [
        (Query("media", Operation.MATCH, (eq(f, value),)), "csam-investigation")
        for f in ("sha256", "md5", "pdq")
    ]
    account_match = [
        (Query("accounts", Operation.MATCH, (eq(f, value),)), "csam-investigation")
        for f in ("email", "handle", "platform")
    ]
    return [
        *media_match,
        *account_match,
        (
            Query(
                "media",
                Operation.RECORDS,
                (eq("sha256", value),),
                fields=("category", "first_seen", "case_ref"),
            ),
            "victim-identification",
        ),
        (Query("media", Operation.COUNT, (eq("category", value),)), "statistics"),
        (
            Query("media", Operation.COUNT_BY, (eq("category", value),), group_by="category"),
            "statistics",
        ),
        (
            Query("media", Operation.COUNT, (Predicate("first_seen", Comparator.GTE, (value,)),)),
            "statistics",
        ),
        (
            Query(
                "accounts",
                Operation.RECORDS,
                (Predicate("handle", Comparator.IN, (value, value + "x", "user00000000")),),
                fields=("platform", "handle", "case_ref"),
            ),
            "csam-investigation",
        ),
        (
            Query(
                "accounts",
                Operation.RECORDS,
                (eq("platform", value),),
                fields=("platform", "handle"),
            ),
            "offender-identification",
        ),
        (Query("cases", Operation.MATCH, (eq("case_ref", value),)), "csam-investigation"),
    ]


def database_snapshot(path: Path) -> dict[str, list[tuple[object, ...]]]:
    """Every table and every row of a SQLite file, read without writing."""
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        tables = [
            r[0]
            for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'").fetchall()
        ]
        return {
            t: sorted(conn.execute(f'SELECT * FROM "{t}"').fetchall(), key=repr) for t in tables
        }
    finally:
        conn.close()


def assert_reveals_nothing(answer: QueryAnswer, *, echoed: str = "") -> None:
    assert answer.hit is False
    assert answer.rows == ()
    assert answer.buckets == ()
    assert answer.count is None or answer.count.value == 0
    assert_clean(answer.decision.reason, echoed=echoed)


@pytest.mark.parametrize("value", INJECTIONS, ids=INJECTION_IDS)
def test_hostile_predicate_values_are_refused_or_find_nothing(
    federation_dir: Path,
    node: RunningNode,
    gateway_key: SigningKey,
    node_key: VerifyingKey,
    value: str,
) -> None:
    # prepare
    database = federation_dir / "nodes" / NODE_ID / f"{NODE_ID}.sqlite3"
    before = database_snapshot(database)

    # execute
    answers: list[tuple[Query, QueryAnswer]] = []
    refusals: list[tuple[Query, grpc.StatusCode, str]] = []
    for query, purpose in probes_with(value):
        envelope = sign_request(gateway_key, request_for(query, purpose=purpose))
        try:
            answers.append((query, opened(answer_envelope(node.address, envelope), node_key)))
        except grpc.RpcError as exc:
            refusals.append((query, exc.code(), exc.details() or ""))

    # assert: each probe was refused cleanly or answered without data
    for query, code, details in refusals:
        assert code is grpc.StatusCode.INVALID_ARGUMENT, (query, details)
        assert_clean(details, echoed=value)
    for _, answer in answers:
        assert_reveals_nothing(answer, echoed=value)
    assert database_snapshot(database) == before
    reached_sql = sum(a.status is AnswerStatus.ANSWERED for _, a in answers)
    if not any(ord(c) < 32 for c in value) and len(value) <= 256:
        # handle and category: the values did reach SQL (a records query on
        # platform alone is a list, denied before SQL)
        assert reached_sql >= 3


@pytest.mark.parametrize("value", INJECTIONS, ids=INJECTION_IDS)
def test_hostile_case_ref_is_refused_or_answered_normally(
    federation_dir: Path,
    node: RunningNode,
    gateway_key: SigningKey,
    node_key: VerifyingKey,
    value: str,
) -> None:
    # prepare
    database = federation_dir / "nodes" / NODE_ID / f"{NODE_ID}.sqlite3"
    before = database_snapshot(database)
    request = request_for(sha256_match(UNKNOWN_SHA256), case_ref=value)
    # Plain ASCII text must be accepted and control characters refused; for other
    # characters (format controls such as U+202E) either outcome is sound.
    must_answer = len(value) <= 128 and all(32 <= ord(c) < 127 for c in value)
    must_refuse = len(value) > 128 or any(ord(c) < 32 for c in value)

    # execute
    try:
        sealed = answer_envelope(node.address, sign_request(gateway_key, request))
        refused = None
    except grpc.RpcError as exc:
        refused = (exc.code(), exc.details() or "")

    # assert
    if refused is None:
        assert not must_refuse
        answer = opened(sealed, node_key)
        assert answer.status is AnswerStatus.ANSWERED
        assert_reveals_nothing(answer)
    else:
        assert not must_answer, refused
        assert refused == (
            grpc.StatusCode.INVALID_ARGUMENT,
            "case reference must be printable and at most 128 characters",
        )
    assert database_snapshot(database) == before


@pytest.mark.parametrize("value", INJECTIONS, ids=INJECTION_IDS)
def test_hostile_requester_is_answered_without_data(
    federation_dir: Path,
    node: RunningNode,
    gateway_key: SigningKey,
    node_key: VerifyingKey,
    value: str,
) -> None:
    # prepare: the subject is only logged; a hostile agency or role matches no rule
    database = federation_dir / "nodes" / NODE_ID / f"{NODE_ID}.sqlite3"
    before = database_snapshot(database)
    as_subject = request_for(
        sha256_match(UNKNOWN_SHA256), requester=dataclasses.replace(INVESTIGATOR, subject=value)
    )
    as_agency = request_for(requester=dataclasses.replace(INVESTIGATOR, agency=value))
    as_role = request_for(requester=dataclasses.replace(INVESTIGATOR, roles=(value,)))

    # execute
    answers = [
        opened(answer_envelope(node.address, sign_request(gateway_key, r)), node_key)
        for r in (as_subject, as_agency, as_role)
    ]

    # assert
    assert answers[0].status is AnswerStatus.ANSWERED
    assert_reveals_nothing(answers[0])
    for denied in answers[1:]:
        assert denied.status is AnswerStatus.DENIED
        assert denied.decision.rules == ("default-deny",)
        assert_reveals_nothing(denied, echoed=value)
    assert database_snapshot(database) == before


@pytest.mark.parametrize(
    ("overrides", "echoed", "message"),
    [
        (
            {"purpose": "'; DROP TABLE hash_register; --"},
            "'; DROP TABLE hash_register; --",
            'unknown purpose "\'; DROP TABLE hash_register; --"; use one of: ',
        ),
        (
            {"query": Query("media; DROP TABLE hash_register", Operation.COUNT)},
            "media; DROP TABLE hash_register",
            "unknown dataset 'media; DROP TABLE hash_register'; the catalog has: ",
        ),
        (
            {"query": Query("media", Operation.MATCH, (eq("sha256_hex", "ab" * 32),))},
            "sha256_hex",
            "dataset 'media' has no field 'sha256_hex'; its fields are: ",
        ),
        (
            {"query": Query("media", Operation.RECORDS, fields=("* FROM hash_register --",))},
            "* FROM hash_register --",
            "dataset 'media' has no field '* FROM hash_register --'; its fields are: ",
        ),
    ],
    ids=["purpose", "dataset", "local-column-name", "field"],
)
def test_hostile_names_are_invalid_argument(
    federation_dir: Path,
    node: RunningNode,
    gateway_key: SigningKey,
    overrides: dict[str, Any],
    echoed: str,
    message: str,
) -> None:
    # prepare
    database = federation_dir / "nodes" / NODE_ID / f"{NODE_ID}.sqlite3"
    before = database_snapshot(database)
    request = request_for(**overrides)

    # execute
    code, details = refusal(node.address, sign_request(gateway_key, request), echoed=echoed)

    # assert
    assert code is grpc.StatusCode.INVALID_ARGUMENT
    assert details.startswith(message)
    assert database_snapshot(database) == before
