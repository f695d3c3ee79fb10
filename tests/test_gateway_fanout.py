"""Asking many nodes at once, and waiting on the ledger, without a task per node or per write.

The fan-out starts every node's call before awaiting any, and takes them up as they
finish: each node's latency must be its own, a node that was briefly unavailable
must be retried at once (not after the slowest node), every node must get the same
request bytes, and a search that is given up must cancel its calls. Real gRPC
servers on loopback play the nodes.
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Callable, Iterator
from concurrent import futures
from concurrent.futures import Future
from contextlib import contextmanager

import grpc
import pytest

from gateway.fanout import FanOut, HedgeSettings, NodeLink, Reply
from gateway.search import _durable
from liaison.envelope import ANSWER_TYPE, REQUEST_TYPE, Envelope, seal
from liaison.errors import LedgerUnavailable
from liaison.keys import KeyId, SigningKey
from liaison.ledger.log import Appended
from liaison.ledger.logged import LedgerProof, SignedRequest
from liaison.wire import envelope_to_proto
from proto.liaison.v1 import node_pb2 as pb_node
from proto.liaison.v1 import node_pb2_grpc as pb_node_grpc

Handler = Callable[[pb_node.AnswerRequest, grpc.ServicerContext], pb_node.AnswerResponse]
ANSWER = Envelope(b"an answer", ANSWER_TYPE, KeyId("node-key"), b"\x01" * 64)
GATEWAY_KEY = SigningKey.generate()
SIGNED = SignedRequest(
    seal(GATEWAY_KEY, REQUEST_TYPE, b"a request"),
    LedgerProof(b'{"kind":"request"}', 7, (b"\x02" * 32,), "checkpoint"),
)


class Node(pb_node_grpc.NodeServiceServicer):  # type: ignore[misc]  # generated base is untyped
    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.requests: list[bytes] = []
        self.lock = threading.Lock()

    def Answer(
        self, request: pb_node.AnswerRequest, context: grpc.ServicerContext
    ) -> pb_node.AnswerResponse:
        with self.lock:
            self.requests.append(request.SerializeToString())
        return self.handler(request, context)


@contextmanager
def nodes(**handlers: Handler) -> Iterator[dict[str, tuple[str, Node]]]:
    """A real NodeService per name on a free loopback port: name -> (address, servicer)."""
    started: dict[str, tuple[str, Node]] = {}
    servers = []
    try:
        for name, handler in handlers.items():
            servicer = Node(handler)
            server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
            pb_node_grpc.add_NodeServiceServicer_to_server(servicer, server)
            port = server.add_insecure_port("127.0.0.1:0")
            server.start()
            servers.append(server)
            started[name] = (f"127.0.0.1:{port}", servicer)
        yield started
    finally:
        for server in servers:
            server.stop(grace=None).wait()


def answering(delay_s: float = 0.0) -> Handler:
    def handle(
        request: pb_node.AnswerRequest, context: grpc.ServicerContext
    ) -> pb_node.AnswerResponse:
        time.sleep(delay_s)
        return pb_node.AnswerResponse(answer=envelope_to_proto(ANSWER))

    return handle


def fan_out(running: dict[str, tuple[str, Node]]) -> FanOut:
    """A fan-out to ``running``, without hedging: these tests count the calls each node gets,
    and on a busy machine any answer may be slow enough to be hedged (its own tests below).
    """
    key = SigningKey.generate().verifying_key
    return FanOut(
        tuple(NodeLink(name, address, key) for name, (address, _) in running.items()),
        hedging=HedgeSettings(enabled=False),
    )


def ask(
    running: dict[str, tuple[str, Node]], order: tuple[str, ...], deadline_s: float
) -> list[Reply]:
    async def run() -> list[Reply]:
        fanout = fan_out(running)
        try:
            return await fanout.ask_all(order, SIGNED, deadline_s)
        finally:
            await fanout.close()

    return asyncio.run(run())


def test_replies_come_in_the_order_asked_each_with_its_own_latency() -> None:
    with nodes(slow=answering(1.5), fast=answering()) as running:
        replies = ask(running, ("slow", "fast"), 5)

    slow, fast = replies
    assert (slow.node_id, fast.node_id) == ("slow", "fast")
    assert slow.envelope == ANSWER and fast.envelope == ANSWER
    assert slow.latency_ms >= 1450
    # Timed when it finished, not when the slow node did. Against the slow node's own
    # latency, so that a busy machine slowing both does not fail it.
    assert fast.latency_ms < slow.latency_ms - 500


def test_every_node_gets_the_same_request_bytes() -> None:
    with nodes(a=answering(), b=answering(), c=answering()) as running:
        ask(running, ("a", "b", "c"), 5)

    sent = [servicer.requests for _, servicer in running.values()]
    assert [len(s) for s in sent] == [1, 1, 1]
    assert sent[0] == sent[1] == sent[2]
    parsed = pb_node.AnswerRequest.FromString(sent[0][0])
    assert parsed.request.payload == b"a request"
    assert parsed.ledger_proof.leaf_index == 7


def test_a_node_briefly_unavailable_is_retried_at_once_not_after_the_slowest() -> None:
    calls = []

    def flaky(
        request: pb_node.AnswerRequest, context: grpc.ServicerContext
    ) -> pb_node.AnswerResponse:
        calls.append(time.monotonic())
        if len(calls) == 1:
            context.abort(grpc.StatusCode.UNAVAILABLE, "starting up")
        return pb_node.AnswerResponse(answer=envelope_to_proto(ANSWER))

    with nodes(slow=answering(1.5), flaky=flaky) as running:
        replies = ask(running, ("slow", "flaky"), 5)

    slow, retried = replies
    assert slow.envelope == ANSWER
    assert retried.node_id == "flaky" and retried.envelope == ANSWER
    assert len(calls) == 2
    # Retried at once: done well before the slow node (1500 ms), not after it.
    assert retried.latency_ms < slow.latency_ms - 500


def test_a_node_failing_for_good_is_reported_with_its_status() -> None:
    def refusing(
        request: pb_node.AnswerRequest, context: grpc.ServicerContext
    ) -> pb_node.AnswerResponse:
        context.abort(grpc.StatusCode.PERMISSION_DENIED, "not your gateway")
        raise AssertionError("abort returned")

    with nodes(ok=answering(), refusing=refusing) as running:
        ok, refused = ask(running, ("ok", "refusing"), 5)

    assert ok.envelope == ANSWER
    assert refused.envelope is None
    assert refused.code == grpc.StatusCode.PERMISSION_DENIED
    assert refused.detail == "not your gateway"
    assert len(running["refusing"][1].requests) == 1  # not transient: asked once


def test_a_search_given_up_cancels_its_calls_to_the_nodes() -> None:
    arrived, ended, release = threading.Event(), threading.Event(), threading.Event()

    def stuck(
        request: pb_node.AnswerRequest, context: grpc.ServicerContext
    ) -> pb_node.AnswerResponse:
        context.add_callback(ended.set)
        arrived.set()
        release.wait(10)
        return pb_node.AnswerResponse(answer=envelope_to_proto(ANSWER))

    async def give_up(running: dict[str, tuple[str, Node]]) -> None:
        fanout = fan_out(running)
        try:
            search = asyncio.ensure_future(fanout.ask_all(("stuck",), SIGNED, 30))
            await asyncio.to_thread(arrived.wait, 5)
            search.cancel()
            with pytest.raises(asyncio.CancelledError):
                await search
        finally:
            await fanout.close()

    with nodes(stuck=stuck) as running:
        try:
            asyncio.run(give_up(running))
            # The node hears of it long before its 30 s deadline.
            assert ended.wait(5)
        finally:
            release.set()


# --- waiting for a durable write -----------------------------------------------------------

APPENDED = Appended(3, b"\x00" * 32)


def later(action: Callable[[], None], delay_s: float = 0.05) -> None:
    """Run ``action`` on another thread, as the ledger's writer settles a future."""
    threading.Timer(delay_s, action).start()


def test_a_durable_write_is_awaited_on_the_loop() -> None:
    future: Future[Appended] = Future()
    later(lambda: future.set_result(APPENDED))

    assert asyncio.run(_durable(future, 5)) == APPENDED


def test_a_write_that_failed_raises_its_error() -> None:
    future: Future[Appended] = Future()
    later(lambda: future.set_exception(LedgerUnavailable("disk full")))

    with pytest.raises(LedgerUnavailable, match=r"^disk full$"):
        asyncio.run(_durable(future, 5))


def test_a_write_settled_before_it_is_awaited_is_not_missed() -> None:
    future: Future[Appended] = Future()
    future.set_result(APPENDED)

    assert asyncio.run(_durable(future, 5)) == APPENDED


def test_a_write_past_its_limit_times_out_and_is_withdrawn() -> None:
    future: Future[Appended] = Future()

    started = time.monotonic()
    with pytest.raises(TimeoutError):
        asyncio.run(_durable(future, 0.1))

    assert time.monotonic() - started < 2
    # Withdrawn: a writer that had not begun it drops it (Ledger._commit).
    assert future.cancelled()


def test_a_caller_that_goes_away_withdraws_its_write() -> None:
    future: Future[Appended] = Future()

    async def go_away() -> None:
        waiting = asyncio.ensure_future(_durable(future, 30))
        await asyncio.sleep(0.05)
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting

    asyncio.run(go_away())
    assert future.cancelled()


def test_a_write_settled_after_its_caller_gave_up_is_harmless() -> None:
    future: Future[Appended] = Future()
    # Running already: cancel() cannot withdraw it, and the writer settles it later.
    assert future.set_running_or_notify_cancel()

    with pytest.raises(TimeoutError):
        asyncio.run(_durable(future, 0.05))
    future.set_result(APPENDED)  # no loop to tell any more; nothing may raise
    assert future.result() == APPENDED


def test_a_node_that_cannot_be_reached_is_unreachable_even_when_a_hedge_fires_at_once() -> None:
    """Hedging is for slowness: it must not turn "unreachable" into "timed out"."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = f"127.0.0.1:{s.getsockname()[1]}"

    async def run() -> tuple[Reply, int, float]:
        key = SigningKey.generate().verifying_key
        fanout = FanOut(
            (NodeLink("gone", closed, key),),
            hedging=HedgeSettings(min_s=0.0, factor=0.0, initial_s=0.0),
        )
        try:
            started = time.monotonic()
            (reply,) = await fanout.ask_all(("gone",), SIGNED, 5.0)
            return reply, fanout.hedges_sent, time.monotonic() - started
        finally:
            await fanout.close()

    reply, _, took = asyncio.run(run())
    assert reply.code == grpc.StatusCode.UNAVAILABLE, reply
    assert took < 2.5, f"waited {took:.1f} s of a 5 s deadline for a closed port"


def test_a_slow_answer_is_hedged_with_the_same_bytes_and_the_first_answer_taken() -> None:
    calls: list[float] = []

    def first_slow(
        request: pb_node.AnswerRequest, context: grpc.ServicerContext
    ) -> pb_node.AnswerResponse:
        calls.append(time.monotonic())
        if len(calls) == 1:
            time.sleep(2.0)
        return pb_node.AnswerResponse(answer=envelope_to_proto(ANSWER))

    with nodes(slow_once=first_slow) as running:

        async def run() -> tuple[Reply, int]:
            (address, _), key = running["slow_once"], SigningKey.generate().verifying_key
            fanout = FanOut(
                (NodeLink("slow_once", address, key),),
                hedging=HedgeSettings(min_s=0.2, factor=0.0),
            )
            try:
                (reply,) = await fanout.ask_all(("slow_once",), SIGNED, 5.0)
                return reply, fanout.hedges_sent
            finally:
                await fanout.close()

        reply, hedges = asyncio.run(run())
        requests = running["slow_once"][1].requests
    assert reply.envelope == ANSWER and reply.hedged
    assert hedges == 1 and len(requests) == 2
    assert requests[0] == requests[1]  # the identical envelope: the node's replay guard copes
    assert 150 < reply.latency_ms < 1500
