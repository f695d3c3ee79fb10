"""Failing links: a node that keeps failing is not waited on, and is asked again once back;
a node slow on one connection is hedged on another, safely.

Real nodes and a real gateway on loopback. A frozen host is a TCP proxy in front
of a node, stopped with SIGSTOP (connections stay open, nothing comes back). A
lossy link is a proxy whose first connection stops passing replies, as a TCP
connection does while it waits out a retransmission: a second connection gets
through.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import grpc
import pytest

from gateway.fanout import HedgeSettings
from liaison import client
from liaison.client import GatewayUnavailable
from liaison.demo.data import probes
from liaison.messages import NodeResult, NodeStatus, SearchInput, SearchResult, SearchSummary
from liaison.query import Comparator, Operation, Predicate, Query
from proto.liaison.v1 import gateway_pb2 as pb_gateway
from proto.liaison.v1 import gateway_pb2_grpc as pb_gateway_grpc
from tests.conftest import Federation
from tests.support import investigator_token, own_gateway, receipts_for, tcp_proxy

NODE = "sylvania"


def search(deadline_ms: int) -> SearchInput:
    query = Query(
        "media",
        Operation.MATCH,
        (Predicate("sha256", Comparator.EQ, (probes().shared_sha256,)),),
    )
    return SearchInput(query, "csam-investigation", "GEN-LINKS-1", (), deadline_ms)


def result_of(result: SearchResult, node_id: str = NODE) -> NodeResult:
    return next(r for r in result.results if r.node_id == node_id)


def list_nodes(address: str, token: str) -> dict[str, str]:
    with grpc.insecure_channel(address) as channel:
        response = pb_gateway_grpc.GatewayServiceStub(channel).ListNodes(
            pb_gateway.ListNodesRequest(),
            metadata=(("authorization", f"Bearer {token}"),),
            timeout=10,
        )
    return {n.node_id: n.not_asked for n in response.nodes}


def timed(address: str, token: str, deadline_ms: int) -> tuple[float, SearchResult]:
    started = time.monotonic()
    result = client.search(address, token, search(deadline_ms))
    return time.monotonic() - started, result


def test_a_frozen_node_is_not_waited_on_and_is_asked_again_within_2_s_of_its_return(
    federation: Federation,
) -> None:
    token = investigator_token(federation.root)
    port = int(federation.nodes[NODE].address.rsplit(":", 1)[1])
    deadline_ms = 1200
    with tcp_proxy(port) as proxy:
        nodes = {n: node.address for n, node in federation.nodes.items()}
        nodes[NODE] = f"127.0.0.1:{proxy.port}"
        with own_gateway(federation.root, nodes) as gateway:
            _, warm = timed(gateway.address, token, deadline_ms)
            assert result_of(warm).status is NodeStatus.ANSWERED
            proxy.stop()
            # Three searches wait out the deadline for it: then its breaker opens.
            for _ in range(3):
                took, result = timed(gateway.address, token, deadline_ms)
                assert result_of(result).status is NodeStatus.TIMED_OUT
                assert took >= deadline_ms / 1000 * 0.9
            took, result = timed(gateway.address, token, deadline_ms)
            skipped = result_of(result)
            assert skipped.status is NodeStatus.UNREACHABLE
            assert skipped.detail.startswith("not asked: its last 3 requests failed"), skipped
            assert took < deadline_ms / 1000 / 2, f"the open breaker still cost {took:.2f} s"
            assert result_of(result, "ruritania").status is NodeStatus.ANSWERED
            # The operator sees which node is not asked, and why.
            listed = list_nodes(gateway.address, token)
            assert listed[NODE].startswith("not asked: its last 3 requests failed")
            assert listed["ruritania"] == ""

            proxy.resume()
            back = time.monotonic()
            while True:
                _, result = timed(gateway.address, token, deadline_ms)
                if result_of(result).status is NodeStatus.ANSWERED:
                    break
                assert time.monotonic() - back < 2.0, result_of(result)
                time.sleep(0.05)
            assert time.monotonic() - back < 2.0


class StallingProxy:
    """Relays to ``target_port``; the first connection's replies are held back until released.

    That is a TCP connection stuck in retransmission on a lossy link: what was
    sent arrives, nothing comes back on it. Later connections pass freely.
    """

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self.listener.getsockname()[1]
        self.release = threading.Event()
        self.connections = 0
        self._sockets: list[socket.socket] = []
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while True:
            try:
                downstream, _ = self.listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.target_port))
            self._sockets += [downstream, upstream]
            stalled = self.connections == 0
            self.connections += 1
            threading.Thread(
                target=self._pump, args=(downstream, upstream, False), daemon=True
            ).start()
            threading.Thread(
                target=self._pump, args=(upstream, downstream, stalled), daemon=True
            ).start()

    def _pump(self, source: socket.socket, sink: socket.socket, stalled: bool) -> None:
        with contextlib.suppress(OSError):
            while data := source.recv(65536):
                if stalled:
                    self.release.wait()
                sink.sendall(data)

    def close(self) -> None:
        self.release.set()
        self.listener.close()
        for s in self._sockets:
            with contextlib.suppress(OSError):
                s.close()


@contextmanager
def stalling_proxy(target_port: int) -> Iterator[StallingProxy]:
    proxy = StallingProxy(target_port)
    try:
        yield proxy
    finally:
        proxy.close()


def test_a_stalled_connection_is_hedged_on_another_and_answered_once(
    federation: Federation,
) -> None:
    token = investigator_token(federation.root)
    port = int(federation.nodes[NODE].address.rsplit(":", 1)[1])
    deadline_ms = 4000
    with stalling_proxy(port) as proxy:
        nodes = {n: node.address for n, node in federation.nodes.items()}
        nodes[NODE] = f"127.0.0.1:{proxy.port}"
        with own_gateway(federation.root, nodes) as gateway:
            took, result = timed(gateway.address, token, deadline_ms)
            hedges = gateway.core.fanout.hedges_sent
    answered = result_of(result)
    assert answered.status is NodeStatus.ANSWERED, answered
    assert answered.answer is not None and answered.answer.hit is False
    assert took < deadline_ms / 1000 / 2, f"the hedge did not help: {took:.2f} s"
    assert proxy.connections >= 2
    assert hedges >= 1
    # The node answered the request once: the hedge carried the same bytes, and was
    # given the stored answer (or waited for it), not a second answer or receipt.
    receipts = receipts_for(
        federation.root / "nodes" / NODE / "state" / "receipts.sqlite3", result.query_id
    )
    assert len(receipts) == 1, receipts


def test_hedges_are_budgeted_so_a_slow_federation_does_not_double_its_load(
    federation: Federation,
) -> None:
    """With every answer slow, only the budgeted share of requests is hedged."""
    token = investigator_token(federation.root)
    port = int(federation.nodes[NODE].address.rsplit(":", 1)[1])
    with tcp_proxy(port) as proxy:
        nodes = {n: node.address for n, node in federation.nodes.items()}
        nodes[NODE] = f"127.0.0.1:{proxy.port}"
        with own_gateway(federation.root, nodes) as gateway:
            fanout = gateway.core.fanout
            fanout.hedge_settings = HedgeSettings(min_s=0.05, budget=0.0, burst=1.0)
            fanout._hedge_tokens = 1.0
            proxy.stop()
            for _ in range(3):
                _, result = timed(gateway.address, token, 400)
                assert result_of(result).status is NodeStatus.TIMED_OUT
            assert fanout.hedges_sent == 1


def test_the_client_passes_over_a_replica_that_is_down(federation: Federation) -> None:
    """``--gateway A,B``: A down (a closed port), B answers; nothing to do for the investigator."""
    token = investigator_token(federation.root)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        down = f"127.0.0.1:{s.getsockname()[1]}"
    result = client.search(f"{down},{federation.gateway.address}", token, search(2000))
    assert {r.status for r in result.results} == {NodeStatus.ANSWERED}
    streamed = list(
        client.search_stream(f"{down}, {federation.gateway.address}", token, search(2000))
    )
    assert isinstance(streamed[-1], SearchSummary)
    with pytest.raises(GatewayUnavailable) as refused:
        client.search(f"{down},{down}", token, search(2000))
    assert down in str(refused.value)
