"""Helpers shared by the tests: real servers on loopback, real keys, real files."""

from __future__ import annotations

import asyncio
import atexit
import hashlib
import os
import shutil
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import Future
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import grpc

from gateway.search import GatewayCore
from gateway.server import build_gateway, start_gateway_server
from liaison.catalog import CATALOG_V1, CATALOG_VERSION
from liaison.config import load_gateway_config, load_node_config
from liaison.demo.data import INVESTIGATOR_AGENCY
from liaison.demo.federation import AUDIENCE, GATEWAY_ID, write_gateway_config
from liaison.demo.run import DEMO_ATTRIBUTES
from liaison.envelope import REQUEST_TYPE, Envelope, seal
from liaison.keys import SigningKey
from liaison.ledger.entries import AuditKey, request_entry
from liaison.ledger.log import Ledger
from liaison.ledger.logged import LedgerProof, SignedRequest, gateway_origin
from liaison.messages import QueryRequest, Requester
from liaison.query import Query
from liaison.tokens import dev_issuer, issue_dev_token
from liaison.wire import request_to_bytes, signed_request_to_proto
from node.answering import NodeCore, close_core
from node.server import build_node, start_node_server
from proto.liaison.v1 import node_pb2 as pb_node
from proto.liaison.v1 import node_pb2_grpc as pb_node_grpc

INVESTIGATOR = Requester(
    "genovia", "inv.alice", ("investigator",), dev_issuer("genovia"), DEMO_ATTRIBUTES
)


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def make_request(
    query: Query,
    *,
    audience: tuple[str, ...],
    requester: Requester = INVESTIGATOR,
    purpose: str = "csam-investigation",
    case_ref: str = "GEN-TEST-1",
    ttl_ms: int = 30_000,
    **overrides: Any,
) -> QueryRequest:
    issued = now_ms()
    request = QueryRequest(
        query_id=str(uuid.uuid4()),
        gateway_id=GATEWAY_ID,
        issued_at_ms=issued,
        expires_at_ms=issued + ttl_ms,
        nonce=os.urandom(16),
        audience=audience,
        requester=requester,
        purpose=purpose,
        case_ref=case_ref,
        catalog_version=CATALOG_VERSION,
        query=query,
    )
    return replace(request, **overrides)


TEST_AUDIT_KEY = AuditKey(b"test audit key, never used in production!")
_ledgers: dict[tuple[str, str], Ledger] = {}
_ledger_folders: list[str] = []
_ledger_lock = threading.Lock()


def test_ledger(key: SigningKey, gateway_id: str) -> Ledger:
    """A real ledger in a temporary folder for requests that tests sign as ``key``."""
    with _ledger_lock:
        ledger = _ledgers.get((key.key_id, gateway_id))
        if ledger is None:
            folder = tempfile.mkdtemp(prefix="liaison-test-ledger-")
            _ledger_folders.append(folder)
            ledger = Ledger.open(
                os.path.join(folder, "ledger.sqlite3"), key, gateway_origin(gateway_id)
            )
            _ledgers[(key.key_id, gateway_id)] = ledger
        return ledger


@atexit.register
def _close_test_ledgers() -> None:
    for ledger in _ledgers.values():
        ledger.close()
    for folder in _ledger_folders:
        shutil.rmtree(folder, ignore_errors=True)


def sign_request(key: SigningKey, request: QueryRequest) -> SignedRequest:
    """Sign ``request`` as a gateway would: logged first, with the proof attached."""
    envelope = seal(key, REQUEST_TYPE, request_to_bytes(request))
    return SignedRequest(envelope, log_request(key, request, envelope))


def log_request(key: SigningKey, request: QueryRequest, envelope: Envelope) -> LedgerProof:
    entry = request_entry(
        request,
        request_digest=hashlib.sha256(envelope.payload).digest(),
        key_id=key.key_id,
        audit_key=TEST_AUDIT_KEY,
    )
    appended = test_ledger(key, request.gateway_id).append(entry, prove=True)
    assert appended.checkpoint is not None
    return LedgerProof(entry, appended.index, appended.inclusion_path, appended.checkpoint.note)


@dataclass
class RunningNode:
    core: NodeCore
    server: grpc.Server
    address: str


@contextmanager
def running_node(config_path: Path) -> Iterator[RunningNode]:
    """A real node gRPC server on a free loopback port, built from its config file."""
    core = build_node(load_node_config(config_path, CATALOG_V1))
    server, port = start_node_server(core, "127.0.0.1:0", workers=8)
    try:
        yield RunningNode(core, server, f"127.0.0.1:{port}")
    finally:
        server.stop(grace=None).wait()
        close_core(core)


def call_node(address: str, signed: SignedRequest, timeout_s: float = 10) -> pb_node.AnswerResponse:
    """Send ``signed`` to the node at ``address``; raises grpc.RpcError on refusal."""
    with grpc.insecure_channel(address) as channel:
        stub = pb_node_grpc.NodeServiceStub(channel)
        response: pb_node.AnswerResponse = stub.Answer(
            signed_request_to_proto(signed), timeout=timeout_s
        )
        return response


class EventLoopThread:
    """An asyncio loop in a background thread, for grpc.aio servers in sync tests."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def run(self, coro: Any, timeout_s: float = 30) -> Any:
        future: Future[Any] = asyncio.run_coroutine_threadsafe(coro, self.loop)
        return future.result(timeout_s)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.loop.close()


@dataclass
class RunningGateway:
    core: GatewayCore
    address: str


@contextmanager
def running_gateway(config_path: Path) -> Iterator[RunningGateway]:
    """A real grpc.aio gateway on a free loopback port, in a background loop."""
    loop = EventLoopThread()
    config = load_gateway_config(config_path)

    async def start() -> tuple[GatewayCore, grpc.aio.Server, int]:
        core, verifier = build_gateway(config)
        server, port = await start_gateway_server(core, verifier, "127.0.0.1:0")
        return core, server, port

    core, server, port = loop.run(start())
    try:
        yield RunningGateway(core, f"127.0.0.1:{port}")
    finally:

        async def stop() -> None:
            await server.stop(grace=None)
            await core.close()

        loop.run(stop())
        loop.close()


@contextmanager
def gateway_over(root: Path, nodes: dict[str, str]) -> Iterator[str]:
    """A gateway of its own (same keys as the demo one) knowing ``nodes`` (id -> address)."""
    # A ledger has one writer: this gateway gets its own, and its own config.
    tag = uuid.uuid4().hex[:8]
    path = write_gateway_config(
        root,
        [INVESTIGATOR_AGENCY],
        nodes,
        ledger=f"ledger-{tag}.sqlite3",
        name=f"gateway-{tag}.toml",
    )
    with running_gateway(path) as gateway:
        yield gateway.address


def investigator_token(
    federation: Path,
    *,
    agency: str = "genovia",
    subject: str = "inv.alice",
    roles: tuple[str, ...] = ("investigator",),
    ttl_s: int = 600,
    **kwargs: Any,
) -> str:
    key = SigningKey.from_pem_file(federation / "idp" / f"{agency}.key")
    return issue_dev_token(
        key,
        issuer=kwargs.pop("issuer", dev_issuer(agency)),
        audience=kwargs.pop("audience", AUDIENCE),
        agency=agency,
        subject=subject,
        roles=roles,
        ttl_s=ttl_s,
        attributes=kwargs.pop("attributes", DEMO_ATTRIBUTES),
        **kwargs,
    )
