"""A gateway whose ledger hangs, fills up or leaks: faults made real, never patched in.

- A PostgreSQL ledger that stops answering with its connection open: a TCP
  proxy of our own, in its own process, stands between gateway and server
  and is frozen with SIGSTOP, as a stopped server or a frozen host would be.
- A disk that refuses writes, for root too: a per-process file-size limit
  (RLIMIT_FSIZE, set with prlimit on a real gateway process) makes every
  write past the limit fail with EFBIG, which SQLite reports as it does a
  full disk. chmod and read-only files do not stop root; this does.
- A failed write whose exception and log would show the entry's bytes.
"""

from __future__ import annotations

import json
import logging
import resource
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import grpc
import pytest
import sqlalchemy as sa
from grpc_health.v1 import health_pb2, health_pb2_grpc
from sqlalchemy.pool import NullPool

from gateway.server import SERVICE_NAME
from liaison import client
from liaison.demo.data import INVESTIGATOR_AGENCY, demo_agencies, probes
from liaison.demo.federation import write_gateway_config
from liaison.errors import LedgerUnavailable
from liaison.keys import SigningKey, VerifyingKey
from liaison.ledger.entries import ReceiptFacts, receipt_entry
from liaison.ledger.log import Ledger
from liaison.ledger.store import LedgerStore
from liaison.ledger.verify import verify_ledger
from liaison.messages import NodeStatus, SearchInput
from liaison.query import Comparator, Operation, Predicate, Query
from liaison.wire import search_to_proto
from proto.liaison.v1 import gateway_pb2_grpc as pb_gateway_grpc
from tests.support import running_gateway, running_node, tcp_proxy

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
NODES = ("freedonia", "ruritania", "sylvania")
REFUSED = (
    "the gateway cannot write its ledger; no query is sent until it can be written "
    "(the operator sees why in the gateway's log)"
)


# --- helpers ------------------------------------------------------------------------------


def shared_hash_search() -> SearchInput:
    predicate = Predicate("sha256", Comparator.EQ, (probes().shared_sha256,))
    return SearchInput(
        Query("media", Operation.MATCH, (predicate,)), "csam-investigation", "GEN-TEST-7"
    )


def health(address: str) -> dict[str, int]:
    with grpc.insecure_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        return {
            name: int(stub.Check(health_pb2.HealthCheckRequest(service=name), timeout=5).status)
            for name in ("", SERVICE_NAME)
        }


def wait_for_health(address: str, expected: int, timeout_s: float) -> dict[str, int]:
    """The gateway's health, once both entries are ``expected`` (or at the timeout)."""
    until = time.monotonic() + timeout_s
    while True:
        seen = health(address)
        if set(seen.values()) == {expected} or time.monotonic() > until:
            return seen
        time.sleep(0.05)


def search_refusal(address: str, token: str) -> tuple[grpc.StatusCode, str, float]:
    """Run a search that must be refused; its status, message and how long the refusal took."""
    with grpc.insecure_channel(address) as channel:
        stub = pb_gateway_grpc.GatewayServiceStub(channel)
        started = time.monotonic()
        with pytest.raises(grpc.RpcError) as info:
            stub.Search(
                search_to_proto(shared_hash_search()),
                metadata=(("authorization", f"Bearer {token}"),),
                timeout=30,
            )
    return info.value.code(), info.value.details() or "", time.monotonic() - started


def token_for(root: Path) -> str:
    from tests.support import investigator_token

    return investigator_token(root)


def add_ledger_settings(config: Path, **settings: int) -> None:
    """Add keys under the [ledger] table of a gateway config that write_gateway_config wrote."""
    text = config.read_text()
    head, _, rest = text.partition("[ledger]\n")
    lines = "".join(f"{k} = {v}\n" for k, v in settings.items())
    config.write_text(f"{head}[ledger]\n{lines}{rest}")


@contextmanager
def demo_nodes(root: Path) -> Iterator[dict[str, str]]:
    """The three demo nodes, serving in this process; yields id -> address."""
    with ExitStack() as stack:
        yield {
            a.agency_id: stack.enter_context(
                running_node(root / "nodes" / a.agency_id / "node.toml")
            ).address
            for a in demo_agencies()
        }


def nonces_seen(root: Path) -> dict[str, int]:
    counts = {}
    for node_id in NODES:
        # Replay records are kept in the node's receipts ledger, committed with receipts.
        db = root / "nodes" / node_id / "state" / "receipts.sqlite3"
        engine = sa.create_engine(f"sqlite:///file:{db}?mode=ro&uri=true")
        try:
            with engine.connect() as conn:
                counts[node_id] = int(
                    conn.execute(
                        sa.text("SELECT count(*) FROM liaison_node_seen_nonce")
                    ).scalar_one()
                )
        finally:
            engine.dispose()
    return counts


# --- a PostgreSQL ledger that hangs ----------------------------------------------------------


@pytest.mark.postgresql
def test_a_hung_postgresql_ledger_refuses_at_once_reports_not_serving_and_recovers(
    federation_dir: Path, postgres_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    # prepare: the gateway reaches its PostgreSQL ledger through the proxy
    caplog.set_level(logging.INFO, logger="liaison")
    url = sa.make_url(postgres_url)
    token = token_for(federation_dir)
    with ExitStack() as stack:
        nodes = stack.enter_context(demo_nodes(federation_dir))
        proxy = stack.enter_context(tcp_proxy(url.port or 5432))
        through = url.set(host="127.0.0.1", port=proxy.port)
        config = write_gateway_config(
            federation_dir,
            [INVESTIGATOR_AGENCY],
            nodes,
            ledger=through.render_as_string(hide_password=False),
            name="gateway-hung.toml",
        )
        add_ledger_settings(config, write_timeout_s=1, connect_timeout_s=2)
        gateway = stack.enter_context(running_gateway(config))
        address = gateway.address
        assert wait_for_health(address, SERVING, 5) == dict.fromkeys(("", SERVICE_NAME), SERVING)
        assert {r.status for r in client.search(address, token, shared_hash_search()).results} == {
            NodeStatus.ANSWERED
        }
        nonces_before = nonces_seen(federation_dir)

        # execute: the database stops answering, its connections still open
        proxy.stop()
        first = search_refusal(address, token)
        down = wait_for_health(address, NOT_SERVING, 5)
        second = search_refusal(address, token)
        nonces_while_down = nonces_seen(federation_dir)
        proxy.resume()
        up = wait_for_health(address, SERVING, 20)
        recovered = client.search(address, token, shared_hash_search())

    # assert: refused within the write timeout (not the gateway's 10 s), and at once after
    assert first[:2] == (grpc.StatusCode.UNAVAILABLE, REFUSED)
    assert first[2] < 5
    assert second[:2] == (grpc.StatusCode.UNAVAILABLE, REFUSED)
    assert second[2] < 1
    assert down == dict.fromkeys(("", SERVICE_NAME), NOT_SERVING)
    assert nonces_while_down == nonces_before
    # the operator's log says why, in fields a log pipeline can filter on
    (failed,) = [r for r in caplog.records if r.getMessage() == "ledger write failed"]
    assert failed.levelno == logging.ERROR
    assert failed.__dict__["reason"] == "write timed out"
    assert failed.__dict__["timeout_s"] == 1
    assert "did not confirm a write within 1 s" in failed.__dict__["error"]
    assert "not answering" in failed.__dict__["error"]
    assert str(proxy.port) in failed.__dict__["ledger"]
    # and it is back
    assert up == dict.fromkeys(("", SERVICE_NAME), SERVING)
    assert {r.status for r in recovered.results} == {NodeStatus.ANSWERED}
    assert any(r.getMessage() == "ledger writable again" for r in caplog.records)
    store = LedgerStore(postgres_url, create=False)
    try:
        report, _ = verify_ledger(
            store, VerifyingKey.from_pem_file(federation_dir / "gateway" / "gateway.pub")
        )
    finally:
        store.close()
    assert report.ok, [str(p) for p in report.problems]


# --- a disk that refuses writes ------------------------------------------------------------


class GatewayProcess:
    """A gateway served by `python -m liaison gateway serve`, its JSON log lines collected."""

    def __init__(self, config: Path, port_file: Path) -> None:
        # stderr is a pipe, not a file: a file-size limit must not silence the log.
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "liaison",
                "gateway",
                "serve",
                "--config",
                str(config),
                "--port-file",
                str(port_file),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.lines: list[dict[str, object]] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        until = time.monotonic() + 30
        while not port_file.exists():
            assert self.proc.poll() is None, f"gateway exited: {self.lines}"
            assert time.monotonic() < until, "gateway did not start"
            time.sleep(0.05)
        self.address = port_file.read_text().strip()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            try:
                self.lines.append(json.loads(line))
            except json.JSONDecodeError:
                self.lines.append({"msg": line.rstrip()})

    def messages(self) -> list[object]:
        return [line.get("msg") for line in list(self.lines)]

    def limit_file_size(self, size: int) -> None:
        _, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
        resource.prlimit(self.proc.pid, resource.RLIMIT_FSIZE, (size, hard))

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
        self._reader.join(5)
        if self.proc.stderr is not None:
            self.proc.stderr.close()


def test_health_stays_not_serving_while_the_disk_refuses_writes(federation_dir: Path) -> None:
    # prepare: a gateway process with a SQLite ledger, probing every second
    token = token_for(federation_dir)
    with demo_nodes(federation_dir) as nodes:
        config = write_gateway_config(
            federation_dir,
            [INVESTIGATOR_AGENCY],
            nodes,
            ledger="ledger-disk.sqlite3",
            checkpoint_interval_s=1,
            name="gateway-disk.toml",
        )
        gateway = GatewayProcess(config, federation_dir / "gateway" / "disk.addr")
        try:
            address = gateway.address
            assert wait_for_health(address, SERVING, 10) == dict.fromkeys(
                ("", SERVICE_NAME), SERVING
            )
            answered = client.search(address, token, shared_hash_search())

            # execute: no file of the gateway's may grow or be written past byte 1
            gateway.limit_file_size(1)
            refused = search_refusal(address, token)
            down = wait_for_health(address, NOT_SERVING, 5)
            # several probes' worth of time: health must not flap back meanwhile
            seen: set[int] = set()
            until = time.monotonic() + 4
            while time.monotonic() < until:
                seen |= set(health(address).values())
                time.sleep(0.02)
            refused_later = search_refusal(address, token)
            messages_while_full = gateway.messages()

            # execute: the disk takes writes again
            gateway.limit_file_size(resource.RLIM_INFINITY)
            up = wait_for_health(address, SERVING, 10)
            recovered = client.search(address, token, shared_hash_search())
        finally:
            gateway.stop()

    # assert
    assert {r.status for r in answered.results} == {NodeStatus.ANSWERED}
    assert refused[:2] == (grpc.StatusCode.UNAVAILABLE, REFUSED)
    assert down == dict.fromkeys(("", SERVICE_NAME), NOT_SERVING)
    assert seen == {NOT_SERVING}
    assert refused_later[:2] == (grpc.StatusCode.UNAVAILABLE, REFUSED)
    # a probe that rolls back passes on such a disk; ours commits and fails
    assert "ledger writable again" not in messages_while_full
    assert messages_while_full.count("ledger write failed") == 1
    assert up == dict.fromkeys(("", SERVICE_NAME), SERVING)
    assert {r.status for r in recovered.results} == {NodeStatus.ANSWERED}
    assert "ledger writable again" in gateway.messages()


# --- what a failed write shows ---------------------------------------------------------------


@pytest.mark.postgresql
def test_a_failed_write_shows_no_entry_bytes_in_its_error_or_log(
    postgres_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    # prepare: inserts into the entries table fail, as on a full disk. On
    # PostgreSQL an entry is bound as bytes, which SQLAlchemy would quote
    # in the error's "[parameters: ...]" (SQLite binds a memoryview).
    caplog.set_level(logging.DEBUG)
    ledger = Ledger.open(postgres_url, SigningKey.generate(), "liaison.test/faults")
    secret = "leak42"
    entry = receipt_entry(
        ReceiptFacts(
            node_id="freedonia",
            time_ms=1,
            query_id="query-1",
            request_digest=b"\0" * 32,
            gateway_id="gateway",
            gateway_key_id="k",
            gateway_signature=b"\1" * 64,
            gateway_entry=b"{}",
            gateway_leaf_index=0,
            gateway_checkpoint="",
            status="answered",
            rules=(),
            obligations=(),
            # sorted first in the entry's JSON, so no truncation of a long value hides it
            answer_digest=secret,
            answer_key_id="n",
        )
    )
    backdoor = sa.create_engine(postgres_url, poolclass=NullPool)
    with backdoor.begin() as conn:
        conn.execute(
            sa.text(
                "CREATE FUNCTION liaison_fail() RETURNS trigger LANGUAGE plpgsql AS "
                "$$ BEGIN RAISE EXCEPTION 'disk full'; END $$"
            )
        )
        conn.execute(
            sa.text(
                "CREATE TRIGGER fail BEFORE INSERT ON liaison_ledger_entries "
                "FOR EACH ROW EXECUTE FUNCTION liaison_fail()"
            )
        )
    backdoor.dispose()

    # execute
    try:
        with pytest.raises(LedgerUnavailable) as caught:
            ledger.append(entry, timeout_s=10)
    finally:
        ledger.close()

    # assert: the database's error is kept, the entry is not, anywhere in the chain
    chain: list[str] = []
    exc: BaseException | None = caught.value
    while exc is not None:
        chain.append(str(exc))
        exc = exc.__cause__ or exc.__context__
    assert any("disk full" in text for text in chain), chain
    assert not any(secret in text for text in chain), chain
    assert not any(secret in record.getMessage() for record in caplog.records)
    assert ledger.store.engine.hide_parameters is True


@pytest.mark.postgresql
def test_postgresql_ledger_connections_carry_timeouts_and_keepalives(postgres_url: str) -> None:
    # execute
    store = LedgerStore(postgres_url)
    try:
        with store.engine.connect() as conn:
            shown = {
                name: conn.execute(sa.text(f"SHOW {name}")).scalar_one()
                for name in ("statement_timeout", "lock_timeout")
            }
            info = conn.connection.dbapi_connection.info  # type: ignore[union-attr]  # psycopg
            params = info.get_parameters()
    finally:
        store.close()

    # assert: the defaults, as the server and libpq see them
    assert shown == {"statement_timeout": "30s", "lock_timeout": "5s"}
    assert params["connect_timeout"] == "5"
    assert params["keepalives"] == "1"
    assert store.engine.hide_parameters is True
