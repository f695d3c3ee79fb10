"""Helpers shared by the tests: real servers on loopback, real keys, real files.

The one home for what more than one test module needs: signed requests, a
node or gateway in this process, a node over an agency's own schema, the
``liaison`` command run as a user runs it, and the Hypothesis building blocks
of random policies. Plain functions and dataclasses; fixtures live in
``conftest.py``.
"""

from __future__ import annotations

import asyncio
import atexit
import hashlib
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import Future
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, replace
from functools import cache
from pathlib import Path
from typing import Any

import grpc
import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from hypothesis import strategies as st

from gateway.search import GatewayCore
from gateway.server import build_gateway, start_gateway_server
from liaison.catalog import CATALOG_V1, CATALOG_VERSION
from liaison.config import load_gateway_config, load_node_config
from liaison.demo.data import INVESTIGATOR_AGENCY
from liaison.demo.federation import (
    AUDIENCE,
    GATEWAY_ID,
    NodeLayout,
    write_gateway_config,
    write_gateway_keys,
    write_node,
)
from liaison.demo.run import DEMO_ATTRIBUTES
from liaison.envelope import ANSWER_TYPE, REQUEST_TYPE, Envelope, open_envelope, seal
from liaison.keys import SigningKey, VerifyingKey
from liaison.ledger.entries import (
    AuditKey,
    EntryKind,
    ReceiptFacts,
    parse_entry,
    receipt_entry,
    request_entry,
)
from liaison.ledger.log import Ledger
from liaison.ledger.logged import LedgerProof, SignedRequest, gateway_origin
from liaison.ledger.store import LedgerStore
from liaison.messages import (
    AnswerStatus,
    QueryAnswer,
    QueryRequest,
    Requester,
    SearchInput,
    SearchResult,
)
from liaison.query import Comparator, Operation, Predicate, Query
from liaison.tokens import dev_issuer, issue_dev_token
from liaison.wire import (
    answer_from_bytes,
    envelope_from_proto,
    request_to_bytes,
    signed_request_to_proto,
)
from node.answering import NodeCore, close_core
from node.noise import load_or_create_key
from node.replay import _SEAL_NONCE_BYTES, SEAL_KEY_FILE
from node.server import build_node, start_node_server
from policies import Effect
from policies.model import ANY
from proto.liaison.v1 import node_pb2 as pb_node
from proto.liaison.v1 import node_pb2_grpc as pb_node_grpc

INVESTIGATOR = Requester(
    "genovia", "inv.alice", ("investigator",), dev_issuer("genovia"), DEMO_ATTRIBUTES
)


def server_database_url(request: pytest.FixtureRequest, server: str) -> str:
    """A fresh database on ``server`` ("postgresql" or "mariadb") for this test.

    It comes from conftest's ``postgres_url`` / ``mariadb_url`` fixture, so the
    test skips when the service is not reachable, and fails under CI=true.
    """
    fixture = {"postgresql": "postgres_url", "mariadb": "mariadb_url"}[server]
    url: str = request.getfixturevalue(fixture)
    return url


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
def running_gateway(
    config_path: Path, wrap: Callable[[GatewayCore], GatewayCore] | None = None
) -> Iterator[RunningGateway]:
    """A real grpc.aio gateway on a free loopback port, in a background loop.

    ``wrap`` replaces the core built from the config, e.g. by a
    :class:`TamperingCore`: the gateway an attacker would run.
    """
    loop = EventLoopThread()
    config = load_gateway_config(config_path)

    async def start() -> tuple[GatewayCore, grpc.aio.Server, int]:
        core, verifier = build_gateway(config)
        if wrap is not None:
            core = wrap(core)
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
    with own_gateway(root, nodes) as gateway:
        yield gateway.address


@contextmanager
def own_gateway(
    root: Path,
    nodes: Mapping[str, str],
    wrap: Callable[[GatewayCore], GatewayCore] | None = None,
) -> Iterator[RunningGateway]:
    """:func:`gateway_over`, with the running core, and ``wrap`` as in :func:`running_gateway`."""
    # A ledger has one writer: this gateway gets its own, and its own config.
    tag = uuid.uuid4().hex[:8]
    path = write_gateway_config(
        root,
        [INVESTIGATOR_AGENCY],
        dict(nodes),
        ledger=f"ledger-{tag}.sqlite3",
        name=f"gateway-{tag}.toml",
    )
    with running_gateway(path, wrap) as gateway:
        yield gateway


Tamper = Callable[[SearchResult], SearchResult]


class TamperingCore(GatewayCore):
    """A real gateway core whose outgoing result passes through ``tamper`` first."""

    def __init__(self, tamper: Tamper, core: GatewayCore) -> None:
        super().__init__(
            gateway_id=core.gateway_id,
            signing_key=core.signing_key,
            catalog=core.catalog,
            fanout=core.fanout,
            ledger=core.ledger,
            audit_key=core.audit_key,
            default_deadline_ms=core.default_deadline_ms,
            max_deadline_ms=core.max_deadline_ms,
        )
        self.tamper = tamper

    async def search(self, requester: Requester, search: SearchInput) -> SearchResult:
        return self.tamper(await super().search(requester, search))


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


# --- a node over an agency's own schema ---------------------------------------------

# dataset -> (local table, {catalog field: local column}), as a node config maps them
LocalMapping = Mapping[str, tuple[str, Mapping[str, str]]]


def write_local_node(
    root: Path, node_id: str, *, database_url: str, mapping: LocalMapping, policy_text: str
) -> Path:
    """Write a node as ``liaison init`` does, in ``root/nodes/<node_id>``; return its config.

    The gateway's key pair is written to ``root/gateway`` first, unless it is there.
    """
    gateway_pub = root / "gateway" / "gateway.pub"
    if not gateway_pub.exists():
        write_gateway_keys(root)
    layout = NodeLayout(
        node_id=node_id,
        folder=root / "nodes" / node_id,
        database_url=database_url,
        mapping=mapping,
        policy_text=policy_text,
    )
    write_node(layout, gateway_pub)
    return layout.config


@dataclass
class LocalNode:
    """A node running in this process, asked as its trusted gateway asks it."""

    node_id: str
    folder: Path
    running: RunningNode
    gateway_key: SigningKey
    public_key: VerifyingKey

    @property
    def core(self) -> NodeCore:
        return self.running.core

    @property
    def address(self) -> str:
        return self.running.address

    def answer(self, query: Query, **fields: Any) -> QueryAnswer:
        """Sign ``query`` as the gateway (``fields``: make_request's keywords) and send it.

        Returns the node's answer once its signature is checked and it is seen
        to answer this very request; raises grpc.RpcError on a refusal.
        """
        request = make_request(query, audience=(self.node_id,), **fields)
        signed = sign_request(self.gateway_key, request)
        sealed = envelope_from_proto(call_node(self.running.address, signed).answer)
        key = self.public_key
        answer = answer_from_bytes(open_envelope(sealed, ANSWER_TYPE, {key.key_id: key}))
        assert answer.query_id == request.query_id
        assert answer.node_id == self.node_id
        assert answer.request_digest == hashlib.sha256(signed.envelope.payload).digest()
        return answer

    def ask(self, query: Query, **fields: Any) -> QueryAnswer:
        """As ``answer``, for a query the node must answer (not deny)."""
        answer = self.answer(query, **fields)
        assert answer.status is AnswerStatus.ANSWERED, answer.decision
        return answer


def start_local_node(stack: ExitStack, config: Path) -> LocalNode:
    """Serve the node written at ``config`` (by write_local_node) until ``stack`` closes."""
    folder = config.parent
    root = folder.parent.parent
    return LocalNode(
        node_id=folder.name,
        folder=folder,
        running=stack.enter_context(running_node(config)),
        gateway_key=gateway_signing_key(root),
        public_key=VerifyingKey.from_pem_file(folder / "node.pub"),
    )


# --- a node of a federation folder, laid out as `liaison init` and the demo write it -----

RECEIPTS_FILE = "receipts.sqlite3"


def gateway_signing_key(root: Path) -> SigningKey:
    """The key the gateway of the federation at ``root`` signs requests with."""
    return SigningKey.from_pem_file(root / "gateway" / "gateway.key")


def node_config_file(root: Path, node_id: str) -> Path:
    return root / "nodes" / node_id / "node.toml"


def node_state_dir(root: Path, node_id: str) -> Path:
    """The node's state folder: its receipts ledger and the replay key beside it."""
    return root / "nodes" / node_id / "state"


def node_receipts_file(root: Path, node_id: str) -> Path:
    """The node's SQLite receipts ledger, which also holds its replay records and rate usage."""
    return node_state_dir(root, node_id) / RECEIPTS_FILE


def sha256_match(sha256: str) -> Query:
    """A match on the media dataset by SHA-256."""
    return Query("media", Operation.MATCH, (Predicate("sha256", Comparator.EQ, (sha256,)),))


def node_refusal(address: str, signed: SignedRequest, timeout_s: float = 10) -> grpc.RpcError:
    """The refusal the node at ``address`` gives ``signed``; the test fails if it answers."""
    with pytest.raises(grpc.RpcError) as caught:
        call_node(address, signed, timeout_s)
    return caught.value


def answer_digest(response: pb_node.AnswerResponse) -> str:
    """SHA-256 (hex) of the answer's payload, as the node's receipt of it names it."""
    return hashlib.sha256(response.answer.payload).hexdigest()


# --- a node's receipts ledger, read as an operator reads it ----------------------------


def node_receipts(location: str | Path) -> list[tuple[str, str, str]]:
    """(query id, status, answer digest) of each receipt in the node ledger at ``location``."""
    store = LedgerStore(str(location), create=False)
    try:
        entries = [parse_entry(raw) for _, _, raw in store.rows()]
    finally:
        store.close()
    return [
        (e.query_id, e.text("status"), e.text("answer_digest"))
        for e in entries
        if e.kind is EntryKind.RECEIPT
    ]


def receipts_for(location: str | Path, query_id: str) -> list[tuple[str, str]]:
    """(status, answer digest) of each receipt for ``query_id`` in the ledger at ``location``."""
    return [(s, d) for q, s, d in node_receipts(location) if q == query_id]


def read_receipts_db(receipts: Path, sql: str, *params: object) -> list[tuple[Any, ...]]:
    """Rows of ``sql`` over a node's SQLite receipts ledger, opened read-only."""
    conn = sqlite3.connect(f"file:{receipts}?mode=ro", uri=True)
    try:
        return [tuple(row) for row in conn.execute(sql, params).fetchall()]
    finally:
        conn.close()


def _replay_sealer(state_dir: Path) -> AESGCM:
    """The node's replay key, as ``ReplayGuard`` holds it (node.answering loads it)."""
    key_file = state_dir / SEAL_KEY_FILE
    # load_or_create_key makes a new key where there is none: a reader must not.
    assert key_file.exists(), f"no replay key at {key_file}: the node never ran"
    return AESGCM(load_or_create_key(key_file)[:32])


def _open_sealed(sealer: AESGCM, sealed: bytes, nonce: bytes, digest: bytes) -> bytes:
    # As ReplayGuard._open: the IV first, the body bound to the request's nonce and digest.
    iv, body = sealed[:_SEAL_NONCE_BYTES], sealed[_SEAL_NONCE_BYTES:]
    return sealer.decrypt(iv, body, nonce + digest)


def unseal_answer(state_dir: Path, sealed: bytes, nonce: bytes, digest: bytes) -> bytes:
    """A stored answer opened with the node's replay key, as the node opens it for a retry."""
    return _open_sealed(_replay_sealer(state_dir), sealed, nonce, digest)


def stored_answers(state_dir: Path, query_id: str | None = None) -> list[tuple[str, bytes]]:
    """(query id, answer payload) of each answer the node keeps for retries, opened.

    Read from the receipts ledger in the node's ``state_dir`` (table
    ``liaison_node_seen_nonce``) and opened with the replay key beside it, in
    the order they were stored; only the answers of ``query_id`` when given.
    """
    sql = "SELECT query_id, answer_payload, nonce, digest FROM liaison_node_seen_nonce"
    params: tuple[object, ...] = ()
    if query_id is not None:
        sql += " WHERE query_id = ?"
        params = (query_id.encode(),)
    rows = read_receipts_db(state_dir / RECEIPTS_FILE, sql + " ORDER BY rowid", *params)
    sealer = _replay_sealer(state_dir)
    return [
        (bytes(q).decode(), _open_sealed(sealer, bytes(p), bytes(n), bytes(d)))
        for q, p, n, d in rows
    ]


def rate_used(receipts: Path, rule_id: str) -> int:
    """The rate usage of ``rule_id`` committed in a node's SQLite receipts ledger."""
    ((used,),) = read_receipts_db(
        receipts,
        "SELECT COALESCE(SUM(cost), 0) FROM liaison_node_rate_usage WHERE rule_id = ?",
        rule_id.encode(),
    )
    return int(used)


# --- the command line, as a user runs it ----------------------------------------------

REPO = Path(__file__).resolve().parent.parent
COMMAND_TIMEOUT_S = 60
START_TIMEOUT_S = 20
STOP_TIMEOUT_S = 15


@dataclass(frozen=True, slots=True)
class Run:
    returncode: int
    stdout: str
    stderr: str

    def json(self) -> Any:
        return json.loads(self.stdout)


def liaison(*args: str | Path, cwd: Path = REPO, timeout_s: float = COMMAND_TIMEOUT_S) -> Run:
    """Run ``python -m liaison ARGS`` to completion and capture what it printed."""
    done = subprocess.run(
        [sys.executable, "-m", "liaison", *map(str, args)],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout_s,
        stdin=subprocess.DEVNULL,
        check=False,
    )
    return Run(done.returncode, done.stdout, done.stderr)


CAPTURE_TIMEOUT_S = 60


def captured(script: str) -> subprocess.CompletedProcess[bytes]:
    """Run ``script`` in a fresh interpreter, with ``json, logging, os, sys, threading``
    and ``liaison.logs`` as ``logs`` imported; its exit status and raw output.

    A fresh interpreter because ``logs.capture_native_stderr()`` takes over fd 2.
    """
    prelude = "import json, logging, os, sys, threading\nfrom liaison import logs\n"
    return subprocess.run(
        [sys.executable, "-c", prelude + textwrap.dedent(script)],
        cwd=REPO,
        capture_output=True,
        timeout=CAPTURE_TIMEOUT_S,
        stdin=subprocess.DEVNULL,
        check=False,
    )


def assert_one_line_error(run: Run, *fragments: str) -> str:
    """A failed command: non-zero exit, a single `error: ...` line, no traceback."""
    assert run.returncode != 0, run
    assert "Traceback" not in run.stderr, run.stderr
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1, run.stderr
    (line,) = lines
    assert line.startswith("error: "), line
    for fragment in fragments:
        assert fragment in line, f"{fragment!r} not in {line!r}"
    return line


@dataclass
class Process:
    name: str
    popen: subprocess.Popen[bytes]
    address: str
    log: Path


def tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except FileNotFoundError:
        return "(no log)"


def spawn(role: str, name: str, config: Path, run_dir: Path, *options: str) -> Process:
    """``python -m liaison ROLE serve [OPTIONS]`` on port 0; wait until it writes its address.

    Its output goes to ``run_dir/NAME.log``.
    """
    port_file = run_dir / f"{name}.addr"
    port_file.unlink(missing_ok=True)
    log = run_dir / f"{name}.log"
    with log.open("ab") as log_fh:
        popen = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "liaison",
                role,
                "serve",
                "--config",
                str(config),
                "--port-file",
                str(port_file),
                *options,
            ],
            cwd=run_dir,
            stdin=subprocess.DEVNULL,
            stdout=log_fh,
            stderr=log_fh,
        )
    deadline = time.monotonic() + START_TIMEOUT_S
    while not port_file.exists():
        if popen.poll() is not None:
            raise AssertionError(f"{name} exited while starting:\n{tail(log)}")
        if time.monotonic() > deadline:
            popen.kill()
            popen.wait()
            raise AssertionError(f"{name} did not start in {START_TIMEOUT_S} s:\n{tail(log)}")
        time.sleep(0.02)
    return Process(name, popen, port_file.read_text().strip(), log)


def terminate(process: Process) -> int:
    """SIGTERM, then wait; return the exit status (fail, after SIGKILL, if it hangs)."""
    if process.popen.poll() is None:
        process.popen.send_signal(signal.SIGTERM)
    try:
        return process.popen.wait(STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        process.popen.kill()
        process.popen.wait()
        raise AssertionError(
            f"{process.name} ignored SIGTERM for {STOP_TIMEOUT_S} s:\n{tail(process.log)}"
        ) from None


# --- random policies (Hypothesis) --------------------------------------------------
#
# Building blocks of the policy-engine properties. Strategies are built once per
# argument and reused: building them afresh in every draw costs Hypothesis more
# time than the engine itself.

POLICY_DATASETS = ("media", "accounts", "cases")
POLICY_ROLES = ("investigator", "analyst", "trainee")
DATASET_FIELDS = {d.name: d.field_names for d in CATALOG_V1.datasets}


@cache
def pick(names: tuple[str, ...]) -> st.SearchStrategy[str]:
    return st.sampled_from(names)


@cache
def some(names: tuple[str, ...], lo: int, hi: int) -> st.SearchStrategy[frozenset[str]]:
    return st.frozensets(pick(names), min_size=lo, max_size=hi)


@cache
def ordering(names: tuple[str, ...]) -> st.SearchStrategy[list[str]]:
    return st.permutations(names)


RULE_IDS = st.text(alphabet="abcdefgh", min_size=1, max_size=3)


@cache
def unique_ids(n: int) -> st.SearchStrategy[list[str]]:
    return st.lists(RULE_IDS, min_size=n, max_size=n, unique=True)


COIN = st.booleans()
OPERATION = st.sampled_from(Operation)
OPERATIONS = st.frozensets(OPERATION)
FIELD_COUNT = st.integers(1, 4)
SCOPE_MODE = st.sampled_from(("any", "wanted", "wanted", "other"))
# One forbid in four: forbids that apply to everything teach little.
EFFECT = st.sampled_from((Effect.PERMIT,) * 3 + (Effect.FORBID,))
MIN_COUNT = st.integers(0, 30)
MAX_ROWS = st.sampled_from((1, 10, 100))
RULE_COUNT = st.integers(0, 6)


def policy_query(draw: st.DrawFn, *, needs_a_predicate: tuple[Operation, ...]) -> Query:
    """A query on any dataset: equality predicates, fields for records, a grouping for count_by."""
    dataset = draw(pick(POLICY_DATASETS))
    names = DATASET_FIELDS[dataset]
    op = draw(OPERATION)
    on = sorted(draw(some(names, 1 if op in needs_a_predicate else 0, 2)))
    fields: tuple[str, ...] = ()
    group_by = None
    if op is Operation.RECORDS:
        fields = tuple(draw(ordering(names))[: draw(FIELD_COUNT)])
    if op is Operation.COUNT_BY:
        group_by = draw(pick(names))
    predicates = tuple(Predicate(f, Comparator.EQ, ("x",)) for f in on)
    return Query(dataset, op, predicates, fields, group_by)


def scope_near(draw: st.DrawFn, names: tuple[str, ...], wanted: frozenset[str]) -> frozenset[str]:
    """A scope: mostly the wildcard or names including one of ``wanted``, sometimes not."""
    mode = draw(SCOPE_MODE)
    if mode == "any":
        return frozenset({ANY})
    chosen = draw(some(names, 1, 3))
    if mode == "wanted" and wanted:
        return chosen | {draw(pick(tuple(sorted(wanted))))}
    return chosen


def subset_near(draw: st.DrawFn, names: frozenset[str], wanted: frozenset[str]) -> frozenset[str]:
    """Some of ``names``, half the time with every one of ``wanted`` among them."""
    if not names:
        return frozenset()
    chosen = draw(some(tuple(sorted(names)), 0, len(names)))
    return chosen | (wanted & names) if draw(COIN) else chosen


class Proxy:
    """tests/tcp_proxy.py in its own process: SIGSTOP makes the database behind it hang."""

    def __init__(self, target_port: int) -> None:
        self.popen = subprocess.Popen(
            [sys.executable, str(REPO / "tests" / "tcp_proxy.py"), str(target_port)],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.popen.stdout is not None
        self.port = int(self.popen.stdout.readline())

    def stop(self) -> None:
        self.popen.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        self.popen.send_signal(signal.SIGCONT)


@contextmanager
def tcp_proxy(target_port: int) -> Iterator[Proxy]:
    """A loopback proxy to ``target_port`` (``proxy.port``), killed on the way out."""
    proxy = Proxy(target_port)
    try:
        yield proxy
    finally:
        proxy.resume()
        proxy.popen.kill()
        proxy.popen.wait()
        if proxy.popen.stdout is not None:
            proxy.popen.stdout.close()


# --- ledger entries and files ---------------------------------------------------------


def receipt(n: int) -> bytes:
    """A valid ledger entry (a node's receipt), distinct for each ``n``."""
    return receipt_entry(
        ReceiptFacts(
            node_id="freedonia",
            time_ms=1_700_000_000_000 + n,
            query_id=f"query-{n}",
            request_digest=n.to_bytes(32, "big"),
            gateway_id="gateway",
            gateway_key_id="gateway-key",
            gateway_signature=b"\x01" * 64,
            gateway_entry=b'{"kind":"request"}',
            gateway_leaf_index=n,
            gateway_checkpoint="",
            status="answered",
            rules=("permit-hash-lookups",),
            obligations=(),
            answer_digest=f"{n:064x}",
            answer_key_id="node-key",
        )
    )


@contextmanager
def tampering(path: Path) -> Iterator[sqlite3.Connection]:
    """A plain sqlite3 connection to a ledger file, committed on success."""
    conn = sqlite3.connect(path)
    try:
        with conn:
            yield conn
    finally:
        conn.close()


def stored_entry(conn: sqlite3.Connection, index: int) -> bytes:
    """The entry stored at ``index`` of the ledger file ``conn`` is open on."""
    (raw,) = conn.execute(
        "SELECT entry FROM liaison_ledger_entries WHERE idx = ?", (index,)
    ).fetchone()
    assert isinstance(raw, bytes)
    return raw
