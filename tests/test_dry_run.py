"""Dry runs: each node publishes its signed policy, and the gateway decides a search against it.

Everything runs for real on loopback: the three demo nodes, the gateway, and, where a
node must misbehave, a real gRPC server implementing NodeService that publishes a
policy it should not (foreign key, tampered bytes, another node's name, ...).
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
import shutil
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

from gateway.dryrun import DryRunner, PublishedPolicies
from gateway.search import GatewayCore
from gateway.server import build_gateway, start_gateway_server
from liaison import client
from liaison.catalog import CATALOG_VERSION
from liaison.config import load_gateway_config
from liaison.demo.data import probes
from liaison.demo.run import POLICY_DIR, demo_queries
from liaison.envelope import ANSWER_TYPE, POLICY_TYPE, Envelope, open_envelope, seal
from liaison.errors import AuthenticationError, BadSignature, InvalidQuery
from liaison.keys import SigningKey, VerifyingKey
from liaison.messages import (
    Decision,
    DryRunNodeResult,
    DryRunResult,
    NodeStatus,
    PublishedPolicy,
    SearchInput,
)
from liaison.query import Comparator, Operation, Predicate, Query
from liaison.wire import (
    dry_run_request_to_proto,
    dry_run_result_from_proto,
    dry_run_result_to_proto,
    envelope_from_proto,
    envelope_to_proto,
    published_policy_from_bytes,
    published_policy_to_bytes,
)
from proto.liaison.v1 import gateway_pb2_grpc as pb_gateway_grpc
from proto.liaison.v1 import node_pb2 as pb_node
from proto.liaison.v1 import node_pb2_grpc as pb_node_grpc
from tests.conftest import Federation, start_federation
from tests.operations_support import set_keys
from tests.support import EventLoopThread, gateway_over, investigator_token, now_ms

NODES = ("freedonia", "ruritania", "sylvania")
CASE_REF = "GEN-TEST-9"
SHARED_SHA256 = probes().shared_sha256


def hash_match(*, nodes: tuple[str, ...] = (), deadline_ms: int = 0) -> SearchInput:
    """A search every demo policy permits."""
    query = Query("media", Operation.MATCH, (Predicate("sha256", Comparator.EQ, (SHARED_SHA256,)),))
    return SearchInput(query, "csam-investigation", CASE_REF, nodes, deadline_ms)


def by_node(result: DryRunResult) -> dict[str, DryRunNodeResult]:
    return {r.node_id: r for r in result.results}


def decided(result: DryRunResult) -> dict[str, bool | None]:
    return {r.node_id: None if r.decision is None else r.decision.permitted for r in result.results}


def policy_text(node_id: str) -> str:
    return (POLICY_DIR / f"{node_id}.toml").read_text(encoding="utf-8")


def sha256_hex(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def node_key(root: Path, node_id: str) -> SigningKey:
    return SigningKey.from_pem_file(root / "nodes" / node_id / "node.key")


def get_policy(address: str) -> Envelope:
    with grpc.insecure_channel(address) as channel:
        stub = pb_node_grpc.NodeServiceStub(channel)
        response: pb_node.GetPolicyResponse = stub.GetPolicy(pb_node.GetPolicyRequest(), timeout=10)
    return envelope_from_proto(response.policy)


def publish(
    key: SigningKey,
    node_id: str,
    document: str,
    *,
    catalog_version: str = CATALOG_VERSION,
    digest: str | None = None,
) -> Envelope:
    published = PublishedPolicy.of(
        node_id=node_id,
        catalog_version=catalog_version,
        document=document,
        published_at_ms=now_ms(),
    )
    if digest is not None:
        published = replace(published, document_sha256=digest)
    return seal(key, POLICY_TYPE, published_policy_to_bytes(published))


def state_rows(root: Path) -> dict[str, int]:
    """Rows in every table of every node's state store (replay, rate and aggregate ledgers)."""
    counts = {}
    for node_id in NODES:
        for db in sorted((root / "nodes" / node_id / "state").glob("*.sqlite3")):
            with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
                tables = [
                    row[0]
                    for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
                ]
                for table in tables:
                    (n,) = conn.execute(f'SELECT count(*) FROM "{table}"').fetchone()
                    counts[f"{node_id}/{db.name}/{table}"] = int(n)
            conn.close()
    return counts


def closed_port() -> int:
    """A loopback port nothing listens on (bound on port 0, then released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


def real_addresses(federation: Federation) -> dict[str, str]:
    return {n: node.address for n, node in federation.nodes.items()}


@pytest.fixture(scope="module")
def federation(
    federation_template: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Federation]:
    """The demo federation, started once for the tests of this module that change nothing.

    It overrides conftest's fixture of one federation per test. The tests here
    ask dry runs, which must leave no trace (one test checks just that), and
    each demo query is searched for real once only; any other gateway a test
    needs is its own, with its own ledger. The two tests that change a
    running node's published policy take ``private_federation`` instead.
    """
    root = tmp_path_factory.mktemp("dry-run") / "federation"
    shutil.copytree(federation_template, root)
    for node_id in NODES:
        # A receipts checkpoint signed by the clock (every 30 s in the demo) between
        # a test's two counts of the state rows would look like a dry run's trace;
        # a federation started per test never lived that long. Nothing here is
        # about periodic checkpoints.
        set_keys(root / "nodes" / node_id / "node.toml", "ledger", checkpoint_interval_s=3600)
    with ExitStack() as stack:
        yield start_federation(root, stack)


@pytest.fixture
def private_federation(federation_dir: Path) -> Iterator[Federation]:
    """conftest's one federation for one test, for the tests that change a node."""
    with ExitStack() as stack:
        yield start_federation(federation_dir, stack)


class PublishingNode(pb_node_grpc.NodeServiceServicer):  # type: ignore[misc]  # generated base is untyped
    """A NodeService that publishes whatever ``policy`` returns, and answers nothing."""

    def __init__(self, policy: Callable[[], Envelope]) -> None:
        self.policy = policy
        self.calls = 0

    def GetPolicy(
        self, request: pb_node.GetPolicyRequest, context: grpc.ServicerContext
    ) -> pb_node.GetPolicyResponse:
        self.calls += 1
        return pb_node.GetPolicyResponse(policy=envelope_to_proto(self.policy()))


@contextmanager
def publishing_node(policy: Callable[[], Envelope]) -> Iterator[tuple[str, PublishingNode]]:
    servicer = PublishingNode(policy)
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    pb_node_grpc.add_NodeServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield f"127.0.0.1:{port}", servicer
    finally:
        server.stop(grace=None).wait()


# --- the node publishes its policy, signed ----------------------------------------------


@pytest.mark.parametrize("node_id", NODES)
def test_node_publishes_its_policy_document_signed_by_its_key(
    federation: Federation, node_id: str
) -> None:
    # prepare
    pub = VerifyingKey.from_pem_file(federation.root / "nodes" / node_id / "node.pub")
    started = now_ms()

    # execute
    envelope = get_policy(federation.nodes[node_id].address)

    # assert
    assert envelope.payload_type == POLICY_TYPE
    published = published_policy_from_bytes(open_envelope(envelope, POLICY_TYPE, {pub.key_id: pub}))
    assert published.node_id == node_id
    assert published.catalog_version == CATALOG_VERSION
    assert published.document == policy_text(node_id)
    assert published.document_sha256 == sha256_hex(policy_text(node_id))
    policy_file = federation.root / "nodes" / node_id / "policy.toml"
    assert published.document_sha256 == hashlib.sha256(policy_file.read_bytes()).hexdigest()
    assert 0 < published.published_at_ms <= started
    # Signed once at startup: every call gets the very same bytes.
    assert get_policy(federation.nodes[node_id].address) == envelope


def test_policy_is_signed_as_a_policy_not_as_an_answer(federation: Federation) -> None:
    # prepare
    pub = VerifyingKey.from_pem_file(federation.root / "nodes" / "ruritania" / "node.pub")
    envelope = get_policy(federation.nodes["ruritania"].address)

    # execute / assert: the same bytes cannot pass as an answer of that node
    with pytest.raises(BadSignature, match=re.escape(f"expected {ANSWER_TYPE!r}")):
        open_envelope(envelope, ANSWER_TYPE, {pub.key_id: pub})
    with pytest.raises(BadSignature, match="signature"):
        open_envelope(replace(envelope, payload_type=ANSWER_TYPE), ANSWER_TYPE, {pub.key_id: pub})


def test_node_without_its_policy_document_says_so(private_federation: Federation) -> None:
    # prepare: a node core that was not given its document (NodeCore's default)
    node = private_federation.nodes["sylvania"]
    node.core.published_policy = None

    # execute
    with pytest.raises(grpc.RpcError) as caught:
        get_policy(node.address)
    dry = client.dry_run(
        private_federation.gateway.address,
        investigator_token(private_federation.root),
        hash_match(),
    )

    # assert
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "started without its policy document" in (caught.value.details() or "")
    result = by_node(dry)["sylvania"]
    assert result.decision is None
    assert result.policy_sha256 == ""
    assert result.detail.startswith("node sylvania did not publish its policy (FAILED_PRECONDITION")
    assert decided(dry) == {"freedonia": True, "ruritania": True, "sylvania": None}


# --- the dry run agrees with the real search ---------------------------------------------


@pytest.mark.parametrize(
    "index", range(len(demo_queries(probes()))), ids=lambda i: f"demo-query-{i + 1}"
)
def test_dry_run_agrees_with_the_search_on_each_demo_query(
    federation: Federation, index: int
) -> None:
    # prepare
    demo = demo_queries(probes())[index]
    token = investigator_token(federation.root)

    # execute
    dry = by_node(client.dry_run(federation.gateway.address, token, demo.search))
    real = client.search(federation.gateway.address, token, demo.search)

    # assert: the same permit or denial, by the same rules, for the same reasons.
    # The node can deny more than its policy (rate limit, differencing guard, a
    # dataset it does not map): the demo queries, asked once each, meet none of that.
    assert set(dry) == set(NODES)
    for result in real.results:
        assert result.answer is not None, result
        assert result.status in (NodeStatus.ANSWERED, NodeStatus.DENIED)
        predicted = dry[result.node_id]
        assert predicted.decision is not None, predicted
        assert predicted.policy_sha256 == sha256_hex(policy_text(result.node_id))
        actual = result.answer.decision
        assert predicted.decision.permitted == (result.status is NodeStatus.ANSWERED)
        assert predicted.decision.rules == actual.rules
        assert predicted.decision.obligations == actual.obligations
        assert predicted.decision.explanation == actual.explanation
        # A node adds "not held here: ..." to a permit's reason for fields it does
        # not map; the demo nodes map every field these queries ask for.
        assert predicted.decision.reason == actual.reason


def test_demo_queries_meet_both_permits_and_denials(federation: Federation) -> None:
    # The agreement above would prove little if every node permitted everything.
    token = investigator_token(federation.root)
    outcomes = set()
    for demo in demo_queries(probes()):
        dry = client.dry_run(federation.gateway.address, token, demo.search)
        outcomes |= set(decided(dry).values())
    assert outcomes == {True, False}


def test_dry_run_explains_a_denial(federation: Federation) -> None:
    # prepare: account statistics, which the demo policies refuse
    search = demo_queries(probes())[4].search

    # execute
    dry = client.dry_run(federation.gateway.address, investigator_token(federation.root), search)

    # assert
    ruritania = by_node(dry)["ruritania"].decision
    assert ruritania is not None
    assert not ruritania.permitted
    assert ruritania.rules == ("no-account-statistics",)
    assert ruritania.reason
    assert any(line.startswith("forbid no-account-statistics") for line in ruritania.explanation)


def test_dry_run_touches_no_node_data(federation: Federation) -> None:
    # prepare
    token = investigator_token(federation.root)
    before = state_rows(federation.root)
    answered_before = {n: node.core._answered for n, node in federation.nodes.items()}

    # execute
    for demo in demo_queries(probes()):
        client.dry_run(federation.gateway.address, token, demo.search)

    # assert: no nonce claimed, no rate charged, no aggregate remembered, no answer made
    assert state_rows(federation.root) == before
    assert {n: node.core._answered for n, node in federation.nodes.items()} == answered_before
    assert any(name.endswith("seen_nonce") for name in before)
    # ... while one real search does leave its trace
    client.search(federation.gateway.address, token, hash_match())
    assert state_rows(federation.root) != before


# --- authentication and input validation, as for a search -------------------------------


def test_dry_run_needs_a_valid_token(federation: Federation) -> None:
    # prepare
    expired = investigator_token(federation.root, ttl_s=-120)
    address = federation.gateway.address

    # execute / assert
    for token in ("", "not-a-jwt", expired):
        with pytest.raises(AuthenticationError):
            client.dry_run(address, token, hash_match())
    with grpc.insecure_channel(address) as channel:
        stub = pb_gateway_grpc.GatewayServiceStub(channel)
        with pytest.raises(grpc.RpcError) as caught:
            stub.DryRun(dry_run_request_to_proto(hash_match()), timeout=10)
    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED


BAD_INPUT = [
    pytest.param(
        SearchInput(Query("images", Operation.COUNT), "statistics", CASE_REF), id="unknown-dataset"
    ),
    pytest.param(
        SearchInput(
            Query("media", Operation.MATCH, (Predicate("sha256", Comparator.EQ, ("XYZ",)),)),
            "csam-investigation",
            CASE_REF,
        ),
        id="bad-hex-hash",
    ),
    pytest.param(replace(hash_match(), purpose=""), id="no-purpose"),
    pytest.param(replace(hash_match(), purpose="curiosity"), id="unknown-purpose"),
    pytest.param(replace(hash_match(), case_ref=""), id="no-case-ref"),
    pytest.param(hash_match(nodes=("atlantis",)), id="unknown-node"),
    pytest.param(hash_match(deadline_ms=10**9), id="deadline-too-long"),
    pytest.param(
        SearchInput(Query("media", Operation.RECORDS), "csam-investigation", CASE_REF),
        id="records-without-fields",
    ),
]


@pytest.mark.parametrize("search", BAD_INPUT)
def test_dry_run_refuses_what_a_search_refuses_with_the_same_message(
    federation: Federation, search: SearchInput
) -> None:
    # prepare
    token = investigator_token(federation.root)
    address = federation.gateway.address
    before = state_rows(federation.root)

    # execute
    with pytest.raises(InvalidQuery) as by_search:
        client.search(address, token, search)
    with pytest.raises(InvalidQuery) as by_dry_run:
        client.dry_run(address, token, search)

    # assert
    assert str(by_dry_run.value) == str(by_search.value)
    assert str(by_dry_run.value)
    assert state_rows(federation.root) == before


def test_dry_run_asks_only_the_named_nodes(federation: Federation) -> None:
    dry = client.dry_run(
        federation.gateway.address,
        investigator_token(federation.root),
        hash_match(nodes=("sylvania", "ruritania")),
    )
    assert [r.node_id for r in dry.results] == ["sylvania", "ruritania"]


# --- policies the gateway must not believe ----------------------------------------------

POLICY_DOCUMENT = policy_text("ruritania")


def foreign_key(root: Path) -> Envelope:
    return publish(SigningKey.generate(), "ruritania", POLICY_DOCUMENT)


def foreign_key_naming_the_pinned_id(root: Path) -> Envelope:
    envelope = publish(SigningKey.generate(), "ruritania", POLICY_DOCUMENT)
    return replace(envelope, key_id=node_key(root, "ruritania").key_id)


def tampered_document(root: Path) -> Envelope:
    envelope = publish(node_key(root, "ruritania"), "ruritania", POLICY_DOCUMENT)
    opened = published_policy_from_bytes(envelope.payload)
    widened = POLICY_DOCUMENT.replace('agencies = ["group:eu-partners"]', 'agencies = ["*"]')
    assert widened != POLICY_DOCUMENT
    forged = replace(opened, document=widened, document_sha256=sha256_hex(widened))
    return replace(envelope, payload=published_policy_to_bytes(forged))


def another_nodes_policy(root: Path) -> Envelope:
    # Freedonia's real, validly signed policy, served in Ruritania's place.
    return publish(node_key(root, "freedonia"), "freedonia", policy_text("freedonia"))


def another_nodes_name(root: Path) -> Envelope:
    return publish(node_key(root, "ruritania"), "freedonia", POLICY_DOCUMENT)


def wrong_digest(root: Path) -> Envelope:
    return publish(node_key(root, "ruritania"), "ruritania", POLICY_DOCUMENT, digest="00" * 32)


def signed_as_an_answer(root: Path) -> Envelope:
    envelope = publish(node_key(root, "ruritania"), "ruritania", POLICY_DOCUMENT)
    return seal(node_key(root, "ruritania"), ANSWER_TYPE, envelope.payload)


def not_a_policy(root: Path) -> Envelope:
    return seal(node_key(root, "ruritania"), POLICY_TYPE, b"\xff\xff not protobuf")


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        (foreign_key, "which is not trusted here"),
        (foreign_key_naming_the_pinned_id, "signature"),
        (tampered_document, "signature"),
        (another_nodes_policy, "not trusted here"),
        (another_nodes_name, "policy from ruritania claims to come from 'freedonia'"),
        (wrong_digest, "policy from ruritania names digest '0000000000000000'…"),
        (signed_as_an_answer, "expected 'application/vnd.liaison.published-policy"),
        (not_a_policy, "node ruritania signed a payload that is not a policy"),
    ],
    ids=lambda x: getattr(x, "__name__", ""),
)
def test_gateway_discards_a_policy_that_is_not_the_nodes_own(
    federation: Federation, make: Callable[[Path], Envelope], reason: str
) -> None:
    # prepare: Ruritania's address serves a policy it did not sign as its own
    envelope = make(federation.root)
    token = investigator_token(federation.root)
    with publishing_node(lambda: envelope) as (rogue, servicer):
        nodes = real_addresses(federation) | {"ruritania": rogue}
        with gateway_over(federation.root, nodes) as address:
            # execute
            first = client.dry_run(address, token, hash_match())
            second = client.dry_run(address, token, hash_match())

    # assert
    result = by_node(first)["ruritania"]
    assert result.decision is None
    assert result.policy_sha256 == ""
    assert result.detail.startswith("policy discarded: ")
    assert reason in result.detail
    assert decided(first) == {"freedonia": True, "ruritania": None, "sylvania": True}
    # A discarded policy is not kept: the next dry run asks again.
    assert by_node(second)["ruritania"] == result
    assert servicer.calls == 2


@pytest.mark.parametrize(
    ("document", "catalog_version", "detail"),
    [
        pytest.param(
            "version = 2\n",
            CATALOG_VERSION,
            "node ruritania's published policy does not load here: policy needs `version = 1`",
            id="not-a-policy-we-know",
        ),
        pytest.param(
            "version = [\n",
            CATALOG_VERSION,
            "node ruritania's published policy does not load here: ",
            id="not-toml",
        ),
        pytest.param(
            POLICY_DOCUMENT.replace('datasets = ["media"]', 'datasets = ["images"]', 1),
            CATALOG_VERSION,
            "unknown dataset 'images'",
            id="unknown-dataset",
        ),
        pytest.param(
            POLICY_DOCUMENT,
            "liaison-catalog-v0",
            "node ruritania publishes a policy for catalog 'liaison-catalog-v0'; "
            f"this gateway speaks {CATALOG_VERSION!r}",
            id="other-catalog",
        ),
    ],
)
def test_a_signed_policy_that_does_not_load_gives_a_detail_not_an_error(
    federation: Federation, document: str, catalog_version: str, detail: str
) -> None:
    # prepare
    envelope = publish(
        node_key(federation.root, "ruritania"),
        "ruritania",
        document,
        catalog_version=catalog_version,
    )
    token = investigator_token(federation.root)
    with publishing_node(lambda: envelope) as (rogue, _):
        nodes = real_addresses(federation) | {"ruritania": rogue}
        with gateway_over(federation.root, nodes) as address:
            # execute
            dry = client.dry_run(address, token, hash_match())

    # assert
    result = by_node(dry)["ruritania"]
    assert result.decision is None
    assert result.policy_sha256 == sha256_hex(document)
    assert detail in result.detail
    assert decided(dry) == {"freedonia": True, "ruritania": None, "sylvania": True}


# --- nodes that cannot be asked -------------------------------------------------------


def test_unreachable_node_gives_no_decision_and_says_why(federation: Federation) -> None:
    # prepare
    nodes = real_addresses(federation) | {"sylvania": f"127.0.0.1:{closed_port()}"}
    token = investigator_token(federation.root)

    # execute
    with gateway_over(federation.root, nodes) as address:
        dry = client.dry_run(address, token, hash_match())

    # assert
    result = by_node(dry)["sylvania"]
    assert result.decision is None
    assert result.policy_sha256 == ""
    assert result.detail.startswith("node sylvania is unreachable")
    assert decided(dry) == {"freedonia": True, "ruritania": True, "sylvania": None}


def test_slow_node_gives_no_decision_within_the_deadline(federation: Federation) -> None:
    # prepare
    envelope = get_policy(federation.nodes["ruritania"].address)
    release = threading.Event()

    def slow() -> Envelope:
        # Held far longer than any bound below, so that waiting for it cannot pass
        # for slowness of a busy machine; released as soon as the dry run is back.
        release.wait(timeout=15)
        return envelope

    token = investigator_token(federation.root)
    with publishing_node(slow) as (rogue, _):
        try:
            nodes = real_addresses(federation) | {"ruritania": rogue}
            with gateway_over(federation.root, nodes) as address:
                # execute
                started = time.monotonic()
                dry = client.dry_run(address, token, hash_match(deadline_ms=300))
                elapsed = time.monotonic() - started
        finally:
            release.set()  # before the server stops: let its worker thread go

    # assert
    result = by_node(dry)["ruritania"]
    assert result.decision is None
    assert result.detail == "no policy within the 300 ms deadline"
    assert decided(dry) == {"freedonia": True, "ruritania": None, "sylvania": True}
    assert elapsed < 5  # the slow node holds its policy for 15 s


# --- the policy cache ---------------------------------------------------------------------


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_policies_are_cached_and_fetched_again_after_the_ttl(
    private_federation: Federation,
) -> None:
    # prepare: a gateway whose policy cache runs on a clock the test moves
    clock = FakeClock()
    loop = EventLoopThread()
    config = load_gateway_config(private_federation.root / "gateway" / "gateway.toml")
    # A ledger has one writer, and the federation's gateway is running.
    config = dataclasses.replace(
        config, ledger=str(private_federation.root / "gateway" / "ledger-2.sqlite3")
    )

    async def start() -> tuple[GatewayCore, grpc.aio.Server, int]:
        core, verifier = build_gateway(config)
        runner = DryRunner(core, policies=PublishedPolicies(core, ttl_s=60, clock=clock))
        server, port = await start_gateway_server(core, verifier, "127.0.0.1:0", dry_runner=runner)
        return core, server, port

    core, server, port = loop.run(start())
    address = f"127.0.0.1:{port}"
    token = investigator_token(private_federation.root)
    node = private_federation.nodes["ruritania"]
    original = sha256_hex(POLICY_DOCUMENT)
    # Ruritania stops letting anyone match hashes (its operator edited the policy).
    revised = POLICY_DOCUMENT.replace('id = "partner-hash-match"', 'id = "partner-hash-match-x"')
    revised = revised.replace('operations = ["match"]', 'operations = ["count"]', 1)
    assert revised != POLICY_DOCUMENT
    try:
        # execute
        first = by_node(client.dry_run(address, token, hash_match()))["ruritania"]
        node.core.published_policy = publish(
            node_key(private_federation.root, "ruritania"), "ruritania", revised
        )
        clock.now += 59
        cached = by_node(client.dry_run(address, token, hash_match()))["ruritania"]
        clock.now += 2
        refetched = by_node(client.dry_run(address, token, hash_match()))["ruritania"]
    finally:

        async def stop() -> None:
            await server.stop(grace=None)
            await core.close()

        loop.run(stop())
        loop.close()

    # assert
    assert first.policy_sha256 == original
    assert first.decision is not None
    assert first.decision.permitted
    assert first.decision.rules == ("partner-hash-match",)
    assert cached == first
    assert refetched.policy_sha256 == sha256_hex(revised)
    assert refetched.decision is not None
    assert not refetched.decision.permitted
    assert refetched.decision.rules == ("default-deny",)


# --- wire conversions -----------------------------------------------------------------------


def test_dry_run_result_round_trips_through_the_wire() -> None:
    query = hash_match().query
    result = DryRunResult(
        query,
        (
            DryRunNodeResult(
                "ruritania",
                Decision(True, ("r1",), "withheld: x", ("at most 5 rows",), ("permit r1: chosen",)),
                "ab" * 32,
            ),
            DryRunNodeResult("sylvania", Decision(False, ("default-deny",)), "cd" * 32),
            DryRunNodeResult("freedonia", None, detail="node freedonia is unreachable"),
        ),
    )
    message = dry_run_result_to_proto(result)
    assert not message.results[2].HasField("decision")
    assert message.results[1].HasField("decision")
    assert dry_run_result_from_proto(message, query) == result
