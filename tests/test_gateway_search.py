"""Federated search through the real gateway: bad input, per-node status, hostile nodes.

Everything runs for real on loopback: the three demo nodes, the gateway, and, where a
node must misbehave, a real gRPC server implementing NodeService that is slow, signs
with a key the gateway does not pin, or signs more than it was asked for.
"""

from __future__ import annotations

import hashlib
import re
import socket
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from concurrent import futures
from contextlib import ExitStack, contextmanager
from dataclasses import replace
from pathlib import Path

import grpc
import pytest
from google.protobuf.descriptor_pool import DescriptorPool
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)

from gateway.answers import reduce_to_query, verify_answer
from liaison import client
from liaison.demo.data import probes
from liaison.envelope import ANSWER_TYPE, REQUEST_TYPE, Envelope, pae, seal
from liaison.errors import BadSignature, EnvelopeError, InvalidQuery
from liaison.keys import SigningKey
from liaison.messages import (
    AnswerStatus,
    Bucket,
    Count,
    Decision,
    NodeResult,
    NodeStatus,
    QueryAnswer,
    SearchInput,
    SearchResult,
)
from liaison.query import MAX_CASE_REF_LENGTH, Comparator, Operation, Predicate, Query
from liaison.wire import (
    answer_to_bytes,
    envelope_from_proto,
    envelope_to_proto,
    request_from_bytes,
    search_to_proto,
)
from proto.liaison.v1 import gateway_pb2_grpc as pb_gateway_grpc
from proto.liaison.v1 import node_pb2 as pb_node
from proto.liaison.v1 import node_pb2_grpc as pb_node_grpc
from tests.conftest import Federation, start_federation
from tests.support import gateway_over, investigator_token, now_ms, own_gateway

NODES = ("freedonia", "ruritania", "sylvania")
PURPOSES = "csam-investigation, victim-identification, offender-identification, statistics"
MEDIA_FIELDS = (
    "sha256, md5, pdq, pdq_distance, category, first_seen, case_ref, victim_identified, shareable"
)
CASE_REF = "GEN-TEST-7"
SHARED_SHA256 = probes().shared_sha256  # held by ruritania and freedonia, not sylvania


def eq(field: str, value: str) -> Predicate:
    return Predicate(field, Comparator.EQ, (value,))


def match(dataset: str, *predicates: Predicate) -> Query:
    return Query(dataset=dataset, operation=Operation.MATCH, predicates=predicates)


def shared_hash_search(
    *,
    purpose: str = "csam-investigation",
    case_ref: str = CASE_REF,
    nodes: tuple[str, ...] = (),
    deadline_ms: int = 0,
) -> SearchInput:
    """A search every demo node answers: hit at ruritania and freedonia, none at sylvania."""
    query = match("media", eq("sha256", SHARED_SHA256))
    return SearchInput(query, purpose, case_ref, nodes, deadline_ms)


def by_node(result: SearchResult) -> dict[str, NodeResult]:
    return {r.node_id: r for r in result.results}


def statuses(result: SearchResult) -> dict[str, NodeStatus]:
    return {r.node_id: r.status for r in result.results}


def hits(result: SearchResult) -> dict[str, bool]:
    return {r.node_id: r.answer.hit for r in result.results if r.answer is not None}


def nonces_seen(root: Path) -> dict[str, int]:
    """How many requests each demo node has recorded in its replay store."""
    counts = {}
    for node_id in NODES:
        # The replay records live in the node's receipts ledger database.
        db = root / "nodes" / node_id / "state" / "receipts.sqlite3"
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
            (seen,) = conn.execute("SELECT count(*) FROM liaison_node_seen_nonce").fetchone()
            counts[node_id] = int(seen)
        conn.close()
    return counts


def assert_federation_answers(federation: Federation, token: str) -> None:
    """The check that follows every refusal: the federation still answers normally."""
    result = client.search(federation.gateway.address, token, shared_hash_search())
    assert statuses(result) == dict.fromkeys(NODES, NodeStatus.ANSWERED)
    assert hits(result) == {"freedonia": True, "ruritania": True, "sylvania": False}


def closed_port() -> int:
    """A loopback port nothing listens on (bound on port 0, then released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


def real_addresses(federation: Federation) -> dict[str, str]:
    return {n: node.address for n, node in federation.nodes.items()}


@pytest.fixture
def federation(module_federation: Federation) -> Federation:
    """One running federation for the module's tests, which ask it and check the answers,
    or run gateways of their own beside it; what they count, they count from before.
    The test that stops a node runs a federation of its own."""
    return module_federation


# --- a NodeService that misbehaves on purpose ------------------------------------------

Handler = Callable[[Envelope, grpc.ServicerContext], pb_node.AnswerResponse]


class ScriptedNode(pb_node_grpc.NodeServiceServicer):  # type: ignore[misc]  # generated base is untyped
    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.calls = 0

    def Answer(
        self, request: pb_node.AnswerRequest, context: grpc.ServicerContext
    ) -> pb_node.AnswerResponse:
        self.calls += 1
        return self.handler(envelope_from_proto(request.request), context)


@contextmanager
def scripted_node(handler: Handler) -> Iterator[tuple[str, ScriptedNode]]:
    """A real NodeService on a free loopback port whose answers come from ``handler``."""
    servicer = ScriptedNode(handler)
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    pb_node_grpc.add_NodeServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield f"127.0.0.1:{port}", servicer
    finally:
        server.stop(grace=None).wait()


def rogue_handler(
    node_id: str,
    key: SigningKey,
    *,
    change: Callable[[QueryAnswer], QueryAnswer] = lambda a: a,
    payload: Callable[[QueryAnswer], bytes] = answer_to_bytes,
    payload_type: str = ANSWER_TYPE,
    key_id_of_pinned: SigningKey | None = None,
) -> Handler:
    """Answer every request with ``hit=True`` (and whatever ``change`` adds), signed by ``key``.

    The rogue reads the request without verifying it: it only needs the ids to echo.
    With ``key_id_of_pinned``, the envelope names that key's id while ``key`` signs.
    """

    def handle(envelope: Envelope, context: grpc.ServicerContext) -> pb_node.AnswerResponse:
        request = request_from_bytes(envelope.payload)
        answer = QueryAnswer(
            query_id=request.query_id,
            node_id=node_id,
            request_digest=hashlib.sha256(envelope.payload).digest(),
            answered_at_ms=now_ms(),
            status=AnswerStatus.ANSWERED,
            decision=Decision(True, ("rogue-rule",), "rogue"),
            hit=True,
        )
        sealed = seal(key, payload_type, payload(change(answer)))
        if key_id_of_pinned is not None:
            sealed = replace(sealed, key_id=key_id_of_pinned.key_id)
        return pb_node.AnswerResponse(answer=envelope_to_proto(sealed))

    return handle


def node_key(root: Path, node_id: str) -> SigningKey:
    return SigningKey.from_pem_file(root / "nodes" / node_id / "node.key")


# --- bad input: INVALID_ARGUMENT, and nothing else affected ----------------------------

BAD_INPUT = [
    pytest.param(
        SearchInput(Query("images", Operation.COUNT), "statistics", CASE_REF),
        "unknown dataset 'images'; the catalog has: media, accounts, cases",
        id="unknown-dataset",
    ),
    pytest.param(
        SearchInput(match("media", eq("colour", "red")), "csam-investigation", CASE_REF),
        f"dataset 'media' has no field 'colour'; its fields are: {MEDIA_FIELDS}",
        id="unknown-field",
    ),
    pytest.param(
        SearchInput(
            Query("media", Operation.RECORDS, (eq("sha256", SHARED_SHA256),), ("imagery",)),
            "csam-investigation",
            CASE_REF,
        ),
        f"dataset 'media' has no field 'imagery'; its fields are: {MEDIA_FIELDS}",
        id="unknown-selected-field",
    ),
    pytest.param(
        SearchInput(match("media", eq("sha256", "XYZ" * 21 + "Q")), "csam-investigation", CASE_REF),
        f"field 'sha256': {'XYZ' * 21 + 'Q'!r} is not 64 hexadecimal digits",
        id="bad-hex-hash",
    ),
    pytest.param(
        SearchInput(match("media", eq("md5", SHARED_SHA256)), "csam-investigation", CASE_REF),
        f"field 'md5': {SHARED_SHA256!r} is not 32 hexadecimal digits",
        id="hash-of-the-wrong-length",
    ),
    pytest.param(
        SearchInput(
            Query(
                "media",
                Operation.COUNT,
                (Predicate("first_seen", Comparator.GTE, ("2024-13-40",)),),
            ),
            "statistics",
            CASE_REF,
        ),
        "field 'first_seen': '2024-13-40' is not a valid calendar date (YYYY-MM-DD)",
        id="bad-date",
    ),
    pytest.param(
        SearchInput(match("accounts", eq("ip", "300.1.2.3")), "csam-investigation", CASE_REF),
        "field 'ip': '300.1.2.3' is not an IPv4 or IPv6 address",
        id="bad-ip",
    ),
    pytest.param(
        SearchInput(
            match("accounts", eq("email", "alice.example.org")), "csam-investigation", CASE_REF
        ),
        "field 'email': 'alice.example.org' is not an e-mail address",
        id="bad-email",
    ),
    pytest.param(
        shared_hash_search(purpose=""),
        f"a purpose is required (--purpose); one of: {PURPOSES}",
        id="missing-purpose",
    ),
    pytest.param(
        shared_hash_search(purpose="curiosity"),
        f"unknown purpose 'curiosity'; use one of: {PURPOSES}",
        id="unknown-purpose",
    ),
    pytest.param(
        shared_hash_search(case_ref=""),
        "a case reference is required (--case-ref)",
        id="missing-case-ref",
    ),
    pytest.param(
        shared_hash_search(case_ref="   "),
        "a case reference is required (--case-ref)",
        id="blank-case-ref",
    ),
    pytest.param(
        shared_hash_search(case_ref="C" * (MAX_CASE_REF_LENGTH + 1)),
        f"case reference must be printable and at most {MAX_CASE_REF_LENGTH} characters",
        id="overlong-case-ref",
    ),
    pytest.param(
        shared_hash_search(nodes=("ruritania", "atlantis")),
        f"unknown node(s) atlantis; this federation has: {', '.join(NODES)}",
        id="unknown-node",
    ),
    pytest.param(
        SearchInput(
            Query("media", Operation.COUNT, (Predicate("category", Comparator.GTE, ("A",)),)),
            "statistics",
            CASE_REF,
        ),
        "'category' is text; ranges work only on dates and numbers",
        id="range-on-text",
    ),
    pytest.param(
        SearchInput(
            Query("media", Operation.RECORDS, (eq("sha256", SHARED_SHA256),)),
            "victim-identification",
            CASE_REF,
        ),
        "a records query must select at least one field (--fields)",
        id="records-without-fields",
    ),
    pytest.param(
        SearchInput(Query("media", Operation.MATCH), "csam-investigation", CASE_REF),
        "a match query needs at least one predicate to match on",
        id="match-without-predicates",
    ),
    pytest.param(
        shared_hash_search(deadline_ms=60_000),
        "deadline must be between 1 and 30000 ms",
        id="deadline-too-long",
    ),
]


@pytest.mark.parametrize(("search", "message"), BAD_INPUT)
def test_bad_input_is_invalid_argument_and_affects_nothing(
    search: SearchInput, message: str, federation: Federation
) -> None:
    token = investigator_token(federation.root)
    before = nonces_seen(federation.root)

    with pytest.raises(InvalidQuery, match=f"^{re.escape(message)}$"):
        client.search(federation.gateway.address, token, search)

    assert nonces_seen(federation.root) == before
    assert_federation_answers(federation, token)
    assert nonces_seen(federation.root) == {n: before[n] + 1 for n in NODES}


def test_bad_input_is_the_grpc_status_invalid_argument(federation: Federation) -> None:
    token = investigator_token(federation.root)
    search = shared_hash_search(purpose="curiosity")

    with grpc.insecure_channel(federation.gateway.address) as channel:
        stub = pb_gateway_grpc.GatewayServiceStub(channel)
        with pytest.raises(grpc.RpcError) as caught:
            stub.Search(
                search_to_proto(search),
                metadata=(("authorization", f"Bearer {token}"),),
                timeout=10,
            )

    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert caught.value.details() == f"unknown purpose 'curiosity'; use one of: {PURPOSES}"


def test_a_query_without_an_operation_is_invalid_argument(federation: Federation) -> None:
    token = investigator_token(federation.root)
    request = search_to_proto(shared_hash_search())
    request.query.ClearField("operation")

    with grpc.insecure_channel(federation.gateway.address) as channel:
        stub = pb_gateway_grpc.GatewayServiceStub(channel)
        with pytest.raises(grpc.RpcError) as caught:
            stub.Search(request, metadata=(("authorization", f"Bearer {token}"),), timeout=10)

    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert caught.value.details() == (
        "the query names no operation (match, count, count_by or records)"
    )
    assert_federation_answers(federation, token)


# --- per-node status ------------------------------------------------------------------


def test_a_node_at_a_closed_port_is_unreachable_while_the_others_answer(
    federation: Federation,
) -> None:
    nodes = {**real_addresses(federation), "sylvania": f"127.0.0.1:{closed_port()}"}
    token = investigator_token(federation.root)

    with gateway_over(federation.root, nodes) as address:
        result = client.search(address, token, shared_hash_search())

    results = by_node(result)
    assert statuses(result) == {
        "freedonia": NodeStatus.ANSWERED,
        "ruritania": NodeStatus.ANSWERED,
        "sylvania": NodeStatus.UNREACHABLE,
    }
    assert hits(result) == {"freedonia": True, "ruritania": True}
    assert results["sylvania"].answer is None
    assert results["sylvania"].detail != ""
    assert results["sylvania"].answer_digest == ""


def test_a_node_that_goes_down_becomes_unreachable(federation_dir: Path) -> None:
    with ExitStack() as stack:
        federation = start_federation(federation_dir, stack)  # of its own: a node stops
        token = investigator_token(federation.root)
        assert_federation_answers(federation, token)  # the gateway has live channels to all

        federation.nodes["sylvania"].server.stop(grace=None).wait()
        result = client.search(federation.gateway.address, token, shared_hash_search())

    assert statuses(result) == {
        "freedonia": NodeStatus.ANSWERED,
        "ruritania": NodeStatus.ANSWERED,
        "sylvania": NodeStatus.UNREACHABLE,
    }
    assert by_node(result)["sylvania"].answer is None


def test_a_slow_node_times_out_and_is_never_a_no_hit(federation: Federation) -> None:
    release = threading.Event()

    def slow(envelope: Envelope, context: grpc.ServicerContext) -> pb_node.AnswerResponse:
        release.wait(timeout=15)
        return pb_node.AnswerResponse()

    token = investigator_token(federation.root)
    with scripted_node(slow) as (slow_address, servicer):
        try:
            nodes = {**real_addresses(federation), "sylvania": slow_address}
            with gateway_over(federation.root, nodes) as address:
                started = time.monotonic()
                result = client.search(address, token, shared_hash_search(deadline_ms=1000))
                elapsed_s = time.monotonic() - started
        finally:
            release.set()  # before the server stops: let its worker thread go

    slow_result = by_node(result)["sylvania"]
    assert statuses(result) == {
        "freedonia": NodeStatus.ANSWERED,
        "ruritania": NodeStatus.ANSWERED,
        "sylvania": NodeStatus.TIMED_OUT,
    }
    assert slow_result.answer is None
    assert re.fullmatch(
        r"no answer within the \d+ ms deadline \(not a 'no hit'\)", slow_result.detail
    )
    assert slow_result.latency_ms >= 900
    assert elapsed_s < 5  # the slow node holds its answer for 15 s
    # Asked, and asked again (hedged) once over its second connection: no more.
    assert servicer.calls == 2


def test_a_node_failing_with_a_grpc_error_shows_error_with_its_detail(
    federation: Federation,
) -> None:
    def failing(envelope: Envelope, context: grpc.ServicerContext) -> pb_node.AnswerResponse:
        context.abort(grpc.StatusCode.FAILED_PRECONDITION, "policy file is being reloaded")
        raise AssertionError("abort returned")

    token = investigator_token(federation.root)
    with scripted_node(failing) as (failing_address, _):
        nodes = {**real_addresses(federation), "sylvania": failing_address}
        with gateway_over(federation.root, nodes) as address:
            result = client.search(address, token, shared_hash_search())

    failed = by_node(result)["sylvania"]
    assert failed.status is NodeStatus.ERROR
    assert failed.detail == "policy file is being reloaded"
    assert failed.answer is None
    assert hits(result) == {"freedonia": True, "ruritania": True}


# --- nodes whose answers must be discarded ---------------------------------------------

ROGUES: list[tuple[str, Callable[[Path], Handler], str]] = [
    (
        "unpinned-key",
        lambda root: rogue_handler("sylvania", SigningKey.generate()),
        r"answer discarded: envelope is signed by key '[0-9a-f]{16}'…, which is not trusted "
        r"here; add its public key to the trusted keys if it should be",
    ),
    (
        "pinned-key-id-forged-signature",
        lambda root: rogue_handler(
            "sylvania", SigningKey.generate(), key_id_of_pinned=node_key(root, "sylvania")
        ),
        r"answer discarded: signature does not verify under key [0-9a-f]{16}…",
    ),
    (
        "another-nodes-key",
        lambda root: rogue_handler("sylvania", node_key(root, "ruritania")),
        r"answer discarded: envelope is signed by key '[0-9a-f]{16}'…, which is not trusted "
        r"here; add its public key to the trusted keys if it should be",
    ),
    (
        "claims-another-node",
        lambda root: rogue_handler("ruritania", node_key(root, "sylvania")),
        r"answer discarded: answer from sylvania claims to come from 'ruritania'",
    ),
    (
        "answers-another-request",
        lambda root: rogue_handler(
            "sylvania",
            node_key(root, "sylvania"),
            change=lambda a: replace(a, request_digest=hashlib.sha256(b"other").digest()),
        ),
        r"answer discarded: answer from sylvania is for another request",
    ),
    (
        "request-type-envelope",
        lambda root: rogue_handler(
            "sylvania", node_key(root, "sylvania"), payload_type=REQUEST_TYPE
        ),
        re.escape(f"answer discarded: envelope carries {REQUEST_TYPE!r}, expected {ANSWER_TYPE!r}"),
    ),
    (
        "signed-garbage",
        lambda root: rogue_handler(
            "sylvania", node_key(root, "sylvania"), payload=lambda a: b"\xff\xff\xff"
        ),
        r"answer discarded: node sylvania signed a payload that is not an answer",
    ),
    (
        "empty-response",
        lambda root: lambda envelope, context: pb_node.AnswerResponse(),
        re.escape(f"answer discarded: envelope carries '', expected {ANSWER_TYPE!r}"),
    ),
]


@pytest.mark.parametrize(("handler", "detail"), [r[1:] for r in ROGUES], ids=[r[0] for r in ROGUES])
def test_an_answer_that_does_not_verify_is_discarded_as_error(
    handler: Callable[[Path], Handler], detail: str, federation: Federation
) -> None:
    token = investigator_token(federation.root)

    with scripted_node(handler(federation.root)) as (rogue_address, servicer):
        nodes = {**real_addresses(federation), "sylvania": rogue_address}
        with own_gateway(federation.root, nodes) as gateway:
            result = client.search(gateway.address, token, shared_hash_search())
            hedged = gateway.core.fanout.hedges_sent

    rogue = by_node(result)["sylvania"]
    # Asked once (and once more only if a busy machine made it slow enough to hedge):
    # a discarded answer is not asked for again.
    assert 1 <= servicer.calls <= 1 + hedged
    assert rogue.status is NodeStatus.ERROR
    assert re.fullmatch(detail, rogue.detail), rogue.detail
    assert rogue.answer is None  # the rogue's hit=True is gone
    assert rogue.answer_digest == ""
    assert hits(result) == {"freedonia": True, "ruritania": True}


def _overreach(answer: QueryAnswer) -> QueryAnswer:
    """What a correctly signed but overreaching node adds to its answer."""
    return replace(
        answer,
        count=Count(4242),
        buckets=(Bucket("A", 7),),
        fields=("case_ref", "category", "pdq", "first_seen", "category"),
        rows=(
            ("RUR-1", "A", "ff" * 32, "2021-01-01", "A"),
            ("RUR-2", "B", "ee" * 32, "2021-01-02", "B"),
            ("RUR-3", "C", "dd" * 32, "2021-01-03", "C"),
            ("RUR-4", "A", "cc" * 32, "2021-01-04", "A"),
        ),
        withheld_fields=("victim_identified", "first_seen"),
    )


def test_an_overreaching_node_has_its_extra_fields_and_rows_dropped(
    federation: Federation,
) -> None:
    token = investigator_token(federation.root)
    search = SearchInput(
        Query(
            "media",
            Operation.RECORDS,
            (eq("sha256", SHARED_SHA256),),
            fields=("category", "first_seen"),
            limit=2,
        ),
        "victim-identification",
        CASE_REF,
    )
    handler = rogue_handler("sylvania", node_key(federation.root, "sylvania"), change=_overreach)

    with scripted_node(handler) as (rogue_address, _):
        nodes = {**real_addresses(federation), "sylvania": rogue_address}
        with gateway_over(federation.root, nodes) as address:
            result = client.search(address, token, search)

    rogue = by_node(result)["sylvania"]
    assert rogue.status is NodeStatus.ANSWERED
    assert rogue.answer is not None
    assert rogue.answer.fields == ("category", "first_seen")
    assert rogue.answer.rows == (("A", "2021-01-01"), ("B", "2021-01-02"))
    assert rogue.answer.truncated is True
    assert rogue.answer.withheld_fields == ("first_seen",)
    assert (rogue.answer.hit, rogue.answer.count, rogue.answer.buckets) == (False, None, ())
    assert len(rogue.answer_digest) == 64
    assert statuses(result)["ruritania"] is NodeStatus.ANSWERED


def test_an_overreaching_node_gets_only_hit_or_no_hit_through_for_a_match(
    federation: Federation,
) -> None:
    token = investigator_token(federation.root)
    handler = rogue_handler("sylvania", node_key(federation.root, "sylvania"), change=_overreach)

    with scripted_node(handler) as (rogue_address, _):
        nodes = {**real_addresses(federation), "sylvania": rogue_address}
        with gateway_over(federation.root, nodes) as address:
            result = client.search(address, token, shared_hash_search(nodes=("sylvania",)))

    (rogue,) = result.results
    assert rogue.status is NodeStatus.ANSWERED
    assert rogue.answer is not None
    assert rogue.answer.hit is True
    assert (rogue.answer.fields, rogue.answer.rows, rogue.answer.withheld_fields) == ((), (), ())
    assert (rogue.answer.count, rogue.answer.buckets) == (None, ())


# --- reduce_to_query and verify_answer, directly --------------------------------------


def full_answer(status: AnswerStatus = AnswerStatus.ANSWERED) -> QueryAnswer:
    """An answer carrying every part at once, as only a faulty node would send."""
    return _overreach(
        QueryAnswer(
            query_id="q-1",
            node_id="ruritania",
            request_digest=b"\x01" * 32,
            answered_at_ms=1_700_000_000_000,
            status=status,
            decision=Decision(True, ("partner-media-records",), "released", ("max 50 rows",)),
            hit=True,
            buckets_suppressed=True,
            bucket_minimum=10,
            truncated=False,
        )
    )


def test_reduce_keeps_only_the_records_fields_asked_for() -> None:
    query = Query("media", Operation.RECORDS, fields=("first_seen", "category", "md5"))

    reduced = reduce_to_query(full_answer(), query)

    assert reduced.fields == ("category", "first_seen")
    assert reduced.rows == (
        ("A", "2021-01-01"),
        ("B", "2021-01-02"),
        ("C", "2021-01-03"),
        ("A", "2021-01-04"),
    )
    assert reduced.withheld_fields == ("first_seen",)
    assert reduced.truncated is False
    assert (reduced.hit, reduced.count, reduced.buckets) == (False, None, ())
    assert (reduced.buckets_suppressed, reduced.bucket_minimum) == (False, 0)
    assert reduced.decision == full_answer().decision


def test_reduce_caps_rows_at_the_query_limit_and_says_so() -> None:
    query = Query("media", Operation.RECORDS, fields=("category",), limit=3)

    reduced = reduce_to_query(full_answer(), query)

    assert reduced.rows == (("A",), ("B",), ("C",))
    assert reduced.truncated is True


def test_reduce_drops_rows_whose_cells_do_not_match_the_fields() -> None:
    answer = replace(
        full_answer(),
        fields=("category", "first_seen"),
        rows=(("A", "2021-01-01"), ("B",), ("C", "2021-01-03", "extra"), (None, None)),
    )
    query = Query("media", Operation.RECORDS, fields=("category", "first_seen"))

    reduced = reduce_to_query(answer, query)

    assert reduced.rows == (("A", "2021-01-01"), (None, None))


@pytest.mark.parametrize(
    ("query", "kept"),
    [
        (
            Query("media", Operation.MATCH, (eq("sha256", SHARED_SHA256),)),
            {"hit": True},
        ),
        (Query("media", Operation.COUNT), {"count": Count(4242)}),
        (
            Query("media", Operation.COUNT_BY, group_by="category"),
            {
                "buckets": (Bucket("A", 7),),
                "buckets_suppressed": True,
                "bucket_minimum": 10,
            },
        ),
    ],
    ids=["match", "count", "count_by"],
)
def test_reduce_keeps_only_the_part_an_aggregate_asked_for(
    query: Query, kept: dict[str, object]
) -> None:
    answer = full_answer()
    bare = QueryAnswer(
        query_id=answer.query_id,
        node_id=answer.node_id,
        request_digest=answer.request_digest,
        answered_at_ms=answer.answered_at_ms,
        status=answer.status,
        decision=answer.decision,
    )

    reduced = reduce_to_query(answer, query)

    assert reduced == replace(bare, **kept)  # type: ignore[arg-type]  # replace() takes the fields by keyword


def test_reduce_keeps_nothing_but_the_decision_of_a_denial() -> None:
    answer = full_answer(AnswerStatus.DENIED)
    query = Query("media", Operation.RECORDS, fields=("category", "case_ref"))

    reduced = reduce_to_query(answer, query)

    assert reduced == QueryAnswer(
        query_id="q-1",
        node_id="ruritania",
        request_digest=b"\x01" * 32,
        answered_at_ms=1_700_000_000_000,
        status=AnswerStatus.DENIED,
        decision=answer.decision,
    )


def _sealed_answer(key: SigningKey, answer: QueryAnswer) -> Envelope:
    return seal(key, ANSWER_TYPE, answer_to_bytes(answer))


def test_verify_answer_returns_the_answer_and_its_digest() -> None:
    key = SigningKey.generate()
    answer = replace(full_answer(), rows=(), fields=())
    envelope = _sealed_answer(key, answer)

    verified, digest = verify_answer(
        envelope,
        node_id="ruritania",
        node_key=key.verifying_key,
        query_id="q-1",
        request_digest=b"\x01" * 32,
    )

    assert verified == answer
    assert digest == hashlib.sha256(envelope.payload).hexdigest()


@pytest.mark.parametrize(
    ("tamper", "error", "message"),
    [
        pytest.param(
            lambda key, env: env,
            BadSignature,
            "answer from freedonia claims to come from 'ruritania'",
            id="other-node-id",
        ),
        pytest.param(
            lambda key, env: replace(env, payload=env.payload + b"\x00"),
            BadSignature,
            "signature does not verify under key",
            id="tampered-payload",
        ),
        pytest.param(
            lambda key, env: replace(
                env, signature=SigningKey.generate().sign(pae(env.payload_type, env.payload))
            ),
            BadSignature,
            "signature does not verify under key",
            id="forged-signature",
        ),
        pytest.param(
            lambda key, env: seal(key, ANSWER_TYPE, b"\x0a\x05hello\xff"),
            EnvelopeError,
            "node freedonia signed a payload that is not an answer",
            id="not-an-answer",
        ),
    ],
)
def test_verify_answer_refuses(
    tamper: Callable[[SigningKey, Envelope], Envelope],
    error: type[Exception],
    message: str,
) -> None:
    key = SigningKey.generate()
    envelope = tamper(key, _sealed_answer(key, full_answer()))

    with pytest.raises(error, match=re.escape(message)):
        verify_answer(
            envelope,
            node_id="freedonia",
            node_key=key.verifying_key,
            query_id="q-1",
            request_digest=b"\x01" * 32,
        )


@pytest.mark.parametrize(
    ("query_id", "digest"), [("q-2", b"\x01" * 32), ("q-1", b"\x02" * 32)], ids=["id", "digest"]
)
def test_verify_answer_refuses_an_answer_to_another_request(query_id: str, digest: bytes) -> None:
    key = SigningKey.generate()
    envelope = _sealed_answer(key, full_answer())

    with pytest.raises(
        BadSignature, match=re.escape("answer from ruritania is for another request")
    ):
        verify_answer(
            envelope,
            node_id="ruritania",
            node_key=key.verifying_key,
            query_id=query_id,
            request_digest=digest,
        )


# --- asking some nodes only -----------------------------------------------------------


@pytest.mark.parametrize(
    "nodes",
    [("ruritania",), ("ruritania", "ruritania"), ("sylvania", "freedonia")],
    ids=["one", "one-named-twice", "two"],
)
def test_only_the_named_nodes_are_asked(nodes: tuple[str, ...], federation: Federation) -> None:
    token = investigator_token(federation.root)
    before = nonces_seen(federation.root)

    result = client.search(federation.gateway.address, token, shared_hash_search(nodes=nodes))

    assert [r.node_id for r in result.results] == list(dict.fromkeys(nodes))
    assert {r.status for r in result.results} == {NodeStatus.ANSWERED}
    assert nonces_seen(federation.root) == {n: before[n] + int(n in nodes) for n in NODES}


# --- operability: health and reflection -----------------------------------------------


def test_the_gateway_reports_serving_on_the_grpc_health_check(federation: Federation) -> None:
    with grpc.insecure_channel(federation.gateway.address) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        service = health.Check(
            health_pb2.HealthCheckRequest(service="liaison.v1.GatewayService"), timeout=5
        )
        overall = health.Check(health_pb2.HealthCheckRequest(service=""), timeout=5)
        with pytest.raises(grpc.RpcError) as unknown:
            health.Check(health_pb2.HealthCheckRequest(service="no.such.Service"), timeout=5)

    assert service.status == health_pb2.HealthCheckResponse.SERVING
    assert overall.status == health_pb2.HealthCheckResponse.SERVING
    assert unknown.value.code() == grpc.StatusCode.NOT_FOUND


def test_reflection_lists_and_describes_the_gateway_service(federation: Federation) -> None:
    with grpc.insecure_channel(federation.gateway.address) as channel:
        database = ProtoReflectionDescriptorDatabase(channel)
        services = set(database.get_services())
        described = DescriptorPool(database).FindServiceByName("liaison.v1.GatewayService")
        methods = sorted(m.name for m in described.methods)

    assert "liaison.v1.GatewayService" in services
    assert "grpc.health.v1.Health" in services
    assert methods == [
        "DryRun",
        "FileFollowUp",
        "GetFollowUp",
        "ListFollowUps",
        "ListNodes",
        "Search",
        "SearchBatch",
        "SearchStream",
    ]


# --- injection strings in every value ---------------------------------------------------

INJECTIONS = [
    "' OR 1=1 --",
    '"; DROP TABLE x; --',
    "x\x00' OR '1'='1",
    "'OR'1'='1'--@x.example",  # shaped like an e-mail address, so it reaches the nodes
    "fe80::1%' OR 1=1 --",  # shaped like a scoped IPv6 address
    "%s%n{0}{__class__}$(id)`id`",
    "ß漢字🙂\u202e" * 400,
]

# Signs of a backend error or a stack trace leaking to the caller.
LEAKS = ("Traceback", 'File "', "SELECT", "sqlalchemy", "sqlite", "OperationalError", "internal")


def _searches(value: str) -> dict[str, SearchInput]:
    """Every place an investigator can put ``value`` in a search."""
    unheld = SearchInput(match("media", eq("sha256", "ab" * 32)), "csam-investigation", CASE_REF)
    return {
        "text-predicate": SearchInput(
            match("accounts", eq("handle", value)), "csam-investigation", CASE_REF
        ),
        "in-predicate": SearchInput(
            match("accounts", Predicate("handle", Comparator.IN, ("user1", value))),
            "csam-investigation",
            CASE_REF,
        ),
        "records-predicate": SearchInput(
            Query("accounts", Operation.RECORDS, (eq("handle", value),), ("platform", "handle")),
            "offender-identification",
            CASE_REF,
        ),
        "hash-predicate": SearchInput(
            match("media", eq("sha256", value)), "csam-investigation", CASE_REF
        ),
        "email-predicate": SearchInput(
            match("accounts", eq("email", value)), "csam-investigation", CASE_REF
        ),
        "ip-predicate": SearchInput(
            match("accounts", eq("ip", value)), "csam-investigation", CASE_REF
        ),
        "date-predicate": SearchInput(
            Query("media", Operation.COUNT, (Predicate("first_seen", Comparator.LTE, (value,)),)),
            "statistics",
            CASE_REF,
        ),
        "purpose": replace(unheld, purpose=value),
        "case-ref": replace(unheld, case_ref=value),
        "node-name": replace(unheld, nodes=(value,)),
        "dataset": SearchInput(Query(value, Operation.COUNT), "statistics", CASE_REF),
        "predicate-field": SearchInput(
            match("accounts", eq(value, "x")), "csam-investigation", CASE_REF
        ),
        "selected-field": SearchInput(
            Query("accounts", Operation.RECORDS, (eq("handle", "x"),), (value,)),
            "offender-identification",
            CASE_REF,
        ),
        "group-by": SearchInput(
            Query("media", Operation.COUNT_BY, group_by=value), "statistics", CASE_REF
        ),
    }


def _outcome_problems(search: SearchInput, outcome: SearchResult | InvalidQuery) -> list[str]:
    """Empty for a clean refusal or a normal answer without hits or rows; else what is wrong."""
    if isinstance(outcome, InvalidQuery):
        message = str(outcome)
        leaked = [s for s in LEAKS if s in message]
        return [f"refusal leaks {leaked}: {message[:120]!r}"] if leaked else []
    problems = []
    for r in outcome.results:
        if r.status not in (NodeStatus.ANSWERED, NodeStatus.DENIED):
            problems.append(f"{r.node_id} {r.status.value}: {r.detail[:120]!r}")
        elif r.answer is not None and (r.answer.hit or r.answer.rows):
            problems.append(f"{r.node_id} found something: {r.answer}")
        if any(s in r.detail for s in LEAKS):
            problems.append(f"{r.node_id} detail leaks: {r.detail[:120]!r}")
    return problems


@pytest.mark.parametrize("place", list(_searches("x")))
def test_injection_strings_get_a_clean_refusal_or_a_normal_no_hit(
    place: str, federation: Federation
) -> None:
    token = investigator_token(federation.root)
    problems = []

    for value in INJECTIONS:
        search = _searches(value)[place]
        outcome: SearchResult | InvalidQuery
        try:
            outcome = client.search(federation.gateway.address, token, search)
        except InvalidQuery as exc:
            outcome = exc
        problems += [f"{value[:30]!r}: {p}" for p in _outcome_problems(search, outcome)]

    assert problems == []
    assert_federation_answers(federation, token)


def test_an_injection_string_as_the_investigators_subject_is_only_data(
    federation: Federation,
) -> None:
    token = investigator_token(federation.root, subject="' OR 1=1 --\"; DROP TABLE x; --")

    result = client.search(federation.gateway.address, token, shared_hash_search())

    assert statuses(result) == dict.fromkeys(NODES, NodeStatus.ANSWERED)
    assert hits(result) == {"freedonia": True, "ruritania": True, "sylvania": False}
