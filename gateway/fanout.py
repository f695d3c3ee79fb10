"""Asking many nodes at once under one deadline, with grpc.aio.

Only transient failures (UNAVAILABLE) are retried, and only within the
deadline; retrying the identical envelope is safe because nodes answer a
retried nonce from their store instead of running it twice. For the same
reason a node slow to answer is asked again (*hedged*) over a second
connection of its own: a link that stalls (a lost packet waiting for TCP's
retransmission) holds up only the connection it happened on. The hedge sends
the same bytes; the node answers it from its store, or says the original is
still being answered (and the hedge asks again shortly). Whichever answer
comes first is taken; both are the same signed answer.

A node that keeps failing is not waited on (:mod:`gateway.breaker`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from tenacity import (
    AsyncRetrying,
    retry_if_exception,
    stop_after_attempt,
    stop_after_delay,
    wait_exponential,
)

from gateway.breaker import Breaker, BreakerSettings
from liaison.envelope import Envelope
from liaison.errors import PolicyTimedOut, PolicyUnavailable
from liaison.keys import VerifyingKey
from liaison.ledger.logged import SignedRequest
from liaison.serving import CHANNEL_OPTIONS
from liaison.tls import TlsFiles
from liaison.wire import envelope_from_proto, signed_request_to_proto
from proto.liaison.v1 import node_pb2 as pb_node
from proto.liaison.v1 import node_pb2_grpc as pb_node_grpc

log = logging.getLogger("liaison.gateway")
# A policy fetch that meets UNAVAILABLE is tried this many times in all, within the deadline.
POLICY_FETCH_ATTEMPTS = 3
# The gRPC path of NodeService.Answer, from the descriptor the stubs come from.
NODE_SERVICE = pb_node.DESCRIPTOR.services_by_name["NodeService"].full_name
ANSWER_METHOD = f"/{NODE_SERVICE}/Answer"
# A retry of a request that met UNAVAILABLE (a node restarting, or still
# answering the original when a hedge asks) waits 20 ms, then twice as long
# each time, at most this long.
RETRY_WAIT_MAX_S = 0.5
# A hedge that hears "in progress" asks again after 20, 40, 80, 160 ms.
HEDGE_ATTEMPTS = 5


@dataclass(frozen=True, slots=True)
class NodeLink:
    node_id: str
    address: str
    key: VerifyingKey


@dataclass(frozen=True, slots=True)
class HedgeSettings:
    """When a node slow to answer is asked again over its second connection.

    After ``factor`` times the node's usual latency (a moving average of its
    recent answers), and never sooner than ``min_s``; ``enabled`` off never.
    """

    enabled: bool = True
    min_s: float = 0.1
    factor: float = 2.0
    # Before a node has answered at all, its usual latency is taken as this.
    initial_s: float = 0.1
    # Hedges cost the nodes work twice: at most this share of requests is
    # hedged over time (plus a burst of ``burst``), so that a gateway under
    # load, where every answer is slow, does not double its own load.
    budget: float = 0.1
    burst: float = 10.0


@dataclass(slots=True)
class _Usual:
    """A node's usual answer latency: an exponentially weighted moving average."""

    latency_s: float
    WEIGHT = 0.2

    def add(self, latency_s: float) -> None:
        self.latency_s += self.WEIGHT * (latency_s - self.latency_s)


@dataclass(frozen=True, slots=True)
class Reply:
    """What came back from one node: an envelope or a gRPC failure."""

    node_id: str
    latency_ms: float
    envelope: Envelope | None = None
    code: grpc.StatusCode | None = None
    detail: str = ""
    # The answer came back on the hedge (the second connection), not the first.
    hedged: bool = False


def _policy_failure(node_id: str, code: grpc.StatusCode, details: str) -> PolicyUnavailable:
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return PolicyTimedOut(f"node {node_id} sent no policy in time")
    if code == grpc.StatusCode.UNAVAILABLE:
        return PolicyUnavailable(f"node {node_id} is unreachable ({details})")
    if code == grpc.StatusCode.UNIMPLEMENTED:
        return PolicyUnavailable(f"node {node_id} does not publish its policy ({details})")
    return PolicyUnavailable(f"node {node_id} did not publish its policy ({code.name}: {details})")


def _transient(exc: BaseException) -> bool:
    return isinstance(exc, grpc.aio.AioRpcError) and exc.code() == grpc.StatusCode.UNAVAILABLE


@dataclass(slots=True)
class _Asking:
    """One node's part of a fan-out: the calls in flight for it, and whether it is settled."""

    index: int
    node_id: str
    calls: list[Any] = field(default_factory=list)
    hedge_timer: asyncio.TimerHandle | None = None
    hedging: bool = False
    # The node was unreachable once already: that is no slowness to hedge.
    retrying: bool = False
    settled: bool = False
    # Calls and tasks still running for this node.
    running: int = 0

    def stop(self) -> None:
        self.settled = True
        if self.hedge_timer is not None:
            self.hedge_timer.cancel()
        for call in self.calls:
            if not call.done():
                call.cancel()


class FanOut:
    """Long-lived channels to every node of the federation."""

    def __init__(
        self,
        links: tuple[NodeLink, ...],
        tls: TlsFiles | None = None,
        *,
        breakers: BreakerSettings | None = None,
        hedging: HedgeSettings | None = None,
    ) -> None:
        self.links = {link.node_id: link for link in links}
        self._credentials = tls.channel_credentials() if tls is not None else None
        self._channels = {link.node_id: self._open(link.address) for link in links}
        self._stubs = {
            node_id: pb_node_grpc.NodeServiceStub(channel)
            for node_id, channel in self._channels.items()
        }
        # Answer calls that take the request already serialized: it goes to
        # every node as the same bytes, so it is serialized once per search.
        self._answer = {
            node_id: _raw_answer(channel) for node_id, channel in self._channels.items()
        }
        self.breaker_settings = breakers or BreakerSettings()
        self.hedge_settings = hedging or HedgeSettings()
        self.breakers = {n: Breaker(self.breaker_settings) for n in self.links}
        self._usual = {n: _Usual(self.hedge_settings.initial_s) for n in self.links}
        # Second connections, opened the first time a node is hedged.
        self._hedge_channels: dict[str, grpc.aio.Channel] = {}
        self._hedge_answer: dict[str, Any] = {}
        self._probes: dict[str, asyncio.Task[None]] = {}
        self._hedge_tokens = self.hedge_settings.burst
        self.hedges_sent = 0

    def stub(self, node_id: str) -> Any:
        """The node's stub over the fan-out's long-lived channel (its TLS identity and all)."""
        return self._stubs[node_id]

    def usual_latency_s(self, node_id: str) -> float:
        """``node_id``'s usual answer latency, as the hedging sees it."""
        return self._usual[node_id].latency_s

    def _open(self, address: str, *, own_connection: bool = False) -> grpc.aio.Channel:
        options = list(CHANNEL_OPTIONS)
        if own_connection:
            # Channels to one address share connections unless told not to;
            # a hedge is worth something only on a connection of its own.
            options.append(("grpc.use_local_subchannel_pool", 1))
        if self._credentials is None:
            return grpc.aio.insecure_channel(address, options=options)
        return grpc.aio.secure_channel(address, self._credentials, options=options)

    async def policy(self, node_id: str, until: float) -> Envelope:
        """``node_id``'s signed published policy, by ``until`` (a monotonic time).

        Raises PolicyTimedOut or PolicyUnavailable; UNAVAILABLE is retried
        within the deadline, as for answers.
        """
        stub = self._stubs[node_id]
        for attempt in range(1, POLICY_FETCH_ATTEMPTS + 1):
            remaining = until - time.monotonic()
            if remaining <= 0:
                raise PolicyTimedOut(f"node {node_id} sent no policy in time")
            try:
                response = await stub.GetPolicy(pb_node.GetPolicyRequest(), timeout=remaining)
            except grpc.aio.AioRpcError as exc:
                code = exc.code()
                if code == grpc.StatusCode.UNAVAILABLE and attempt < POLICY_FETCH_ATTEMPTS:
                    await asyncio.sleep(min(0.02 * 2**attempt, max(0.0, until - time.monotonic())))
                    continue
                raise _policy_failure(node_id, code, exc.details() or "no detail") from exc
            return envelope_from_proto(response.policy)
        raise AssertionError("unreachable: the last attempt returns or raises")  # pragma: no cover

    async def offers(self, node_id: str, timeout_s: float) -> frozenset[str] | None:
        """The datasets ``node_id`` says (in Describe) it offers; None if it does not say."""
        try:
            response = await self._stubs[node_id].Describe(
                pb_node.DescribeRequest(), timeout=timeout_s
            )
        except grpc.aio.AioRpcError as exc:
            log.info("describe failed", extra={"node_id": node_id, "code": exc.code().name})
            return None
        if response.node_id != node_id:
            log.warning(
                "describe names another node", extra={"node_id": node_id, "named": response.node_id}
            )
            return None
        return frozenset(d.dataset for d in response.datasets)

    async def ask_all(
        self, node_ids: tuple[str, ...], signed: SignedRequest, deadline_s: float
    ) -> list[Reply]:
        """Ask every node in ``node_ids`` at once; one reply per node, in that order."""
        order = {node_id: i for i, node_id in enumerate(node_ids)}
        replies = [r async for r in self.replies(node_ids, signed, deadline_s)]
        replies.sort(key=lambda r: order[r.node_id])
        return replies

    async def replies(
        self, node_ids: tuple[str, ...], signed: SignedRequest, deadline_s: float
    ) -> AsyncIterator[Reply]:
        """Ask every node in ``node_ids`` at once; yield each node's reply as it is settled.

        The request is serialized once and every call is started before any is
        awaited. Calls are taken up as they finish (the gRPC calls' own done
        callbacks say when), so each node's latency is its own and a node that
        was unreachable is retried at once, whatever the others are doing. A
        node whose breaker is open is not asked; its reply says why, first.
        """
        request = signed_request_to_proto(signed).SerializeToString()
        loop = asyncio.get_running_loop()
        started = time.monotonic()
        until = started + deadline_s
        finished: list[tuple[_Asking, Awaitable[Any], float]] = []
        wake: asyncio.Future[None] | None = None
        hedge = self.hedge_settings

        def done(asking: _Asking, awaited: Awaitable[Any]) -> None:
            finished.append((asking, awaited, time.monotonic()))
            if wake is not None and not wake.done():
                wake.set_result(None)

        def start_hedge(asking: _Asking) -> None:
            asking.hedge_timer = None
            if (
                asking.settled
                or asking.retrying
                or until - time.monotonic() <= 0
                or self._hedge_tokens < 1
            ):
                return
            self._hedge_tokens -= 1
            self.hedges_sent += 1
            asking.hedging = True
            task = loop.create_task(
                self._retry(asking.node_id, request, started, until, hedge=True)
            )
            asking.calls.append(task)
            asking.running += 1
            task.add_done_callback(partial(done, asking))

        askings: list[_Asking] = []
        not_asked: list[Reply] = []
        outstanding = 0
        try:
            for index, node_id in enumerate(node_ids):
                asking = _Asking(index, node_id)
                askings.append(asking)
                breaker = self.breakers[node_id]
                if breaker.open:
                    asking.settled = True
                    not_asked.append(
                        Reply(
                            node_id,
                            0.0,
                            code=grpc.StatusCode.UNAVAILABLE,
                            detail=breaker.why_open(),
                        )
                    )
                    continue
                call = self._answer[node_id](request, timeout=deadline_s)
                asking.calls.append(call)
                asking.running = 1
                call.add_done_callback(partial(done, asking))
                outstanding += 1
                if hedge.enabled:
                    after = max(hedge.min_s, hedge.factor * self._usual[node_id].latency_s)
                    if after < deadline_s:
                        asking.hedge_timer = loop.call_later(after, start_hedge, asking)
            if hedge.enabled:
                self._hedge_tokens = min(
                    hedge.burst, self._hedge_tokens + hedge.budget * outstanding
                )
            # Only once every call is on its way: the caller may take its time over each.
            for skipped in not_asked:
                yield skipped
            while outstanding:
                if not finished:
                    wake = loop.create_future()
                    await wake
                    continue
                asking, awaited, at = finished.pop()
                asking.running -= 1
                if asking.settled:
                    continue  # the loser of a hedge, cancelled
                settled = await self._settle(asking, awaited, at, started, until, request, done)
                if settled is None:
                    continue  # a retry or the other connection is still on it
                asking.stop()
                outstanding -= 1
                self._count(settled)
                yield settled
        finally:
            # Done, cancelled (the investigator went away) or failed: stop asking.
            for asking in askings:
                if not asking.settled:
                    asking.stop()

    async def _settle(
        self,
        asking: _Asking,
        awaited: Awaitable[Any],
        at: float,
        started: float,
        until: float,
        request: bytes,
        done: Any,
    ) -> Reply | None:
        """The node's reply if ``awaited`` settles it; None while another attempt is running."""
        node_id = asking.node_id
        if isinstance(awaited, asyncio.Task):  # a retry or hedge: it made its own reply
            reply: Reply = await awaited
            if reply.envelope is None and asking.running:
                return None  # a failed hedge while the first call goes on, or the reverse
            return reply
        latency_ms = (at - started) * 1000
        try:
            response = await awaited
        except asyncio.CancelledError:
            return None if asking.running else Reply(node_id, latency_ms, detail="cancelled")
        except grpc.aio.AioRpcError as exc:
            if _transient(exc) and not asking.hedging:
                asking.retrying = True
                retry = asyncio.get_running_loop().create_task(
                    self._retry(node_id, request, started, until)
                )
                asking.calls.append(retry)
                asking.running += 1
                retry.add_done_callback(partial(done, asking))
                return None
            if asking.running:
                return None  # the hedge may still bring the answer
            return Reply(node_id, latency_ms, code=exc.code(), detail=exc.details() or "")
        return Reply(node_id, latency_ms, envelope=envelope_from_proto(response.answer))

    def _count(self, reply: Reply) -> None:
        """Tell the node's breaker and usual latency what became of it."""
        node_id = reply.node_id
        if reply.envelope is not None or reply.code not in _BREAKING:
            self.breakers[node_id].succeeded()
            if reply.envelope is not None:
                self._usual[node_id].add(reply.latency_ms / 1000)
            return
        breaker = self.breakers[node_id]
        if breaker.failed(f"{reply.code.name if reply.code else 'ERROR'}: {reply.detail}"[:200]):
            log.warning(
                "node breaker open",
                extra={"node_id": node_id, "failures": breaker.failures, "last": reply.detail},
            )
            self._probe_later(node_id)

    def _probe_later(self, node_id: str) -> None:
        if node_id in self._probes:
            return
        task = asyncio.get_running_loop().create_task(self._probe(node_id))
        self._probes[node_id] = task
        task.add_done_callback(lambda _: self._probes.pop(node_id, None))

    async def _probe(self, node_id: str) -> None:
        """Health-check ``node_id`` until it is SERVING, then let searches ask it again."""
        settings = self.breaker_settings
        health = health_pb2_grpc.HealthStub(self._channels[node_id])
        breaker = self.breakers[node_id]
        while breaker.open:
            await asyncio.sleep(settings.probe_interval_s)
            try:
                response = await health.Check(
                    health_pb2.HealthCheckRequest(service=NODE_SERVICE),
                    timeout=settings.probe_timeout_s,
                )
            except grpc.aio.AioRpcError:
                continue
            if response.status == health_pb2.HealthCheckResponse.SERVING:
                breaker.probed()
                log.info("node breaker closed: node serving again", extra={"node_id": node_id})

    async def _retry(
        self,
        node_id: str,
        request: bytes,
        started: float,
        until: float,
        *,
        hedge: bool = False,
    ) -> Reply:
        """Ask ``node_id`` again, within the deadline: after a transient failure, or as a hedge.

        A hedge goes over the node's second connection, and asks a few times
        more while the node says the original is still being answered.
        """
        answer = self._hedge(node_id) if hedge else self._answer[node_id]

        def elapsed() -> float:
            return (time.monotonic() - started) * 1000

        try:
            async for attempt in AsyncRetrying(
                retry=retry_if_exception(_transient),
                wait=wait_exponential(multiplier=0.02, max=RETRY_WAIT_MAX_S),
                # A hedge asks again only while the node says it is answering the
                # original (a few tries); a node that cannot be reached is not
                # hedged into looking slow until the deadline.
                stop=stop_after_attempt(HEDGE_ATTEMPTS if hedge else 3)
                | stop_after_delay(max(0.0, until - time.monotonic())),
                reraise=True,
            ):
                with attempt:
                    remaining = until - time.monotonic()
                    if remaining <= 0:
                        return Reply(
                            node_id,
                            elapsed(),
                            code=grpc.StatusCode.DEADLINE_EXCEEDED,
                            hedged=hedge,
                        )
                    response = await answer(request, timeout=remaining)
        except grpc.aio.AioRpcError as exc:
            return Reply(
                node_id, elapsed(), code=exc.code(), detail=exc.details() or "", hedged=hedge
            )
        return Reply(
            node_id, elapsed(), envelope=envelope_from_proto(response.answer), hedged=hedge
        )

    def _hedge(self, node_id: str) -> Any:
        answer = self._hedge_answer.get(node_id)
        if answer is None:
            channel = self._open(self.links[node_id].address, own_connection=True)
            self._hedge_channels[node_id] = channel
            answer = self._hedge_answer[node_id] = _raw_answer(channel)
        return answer

    async def close(self) -> None:
        for task in list(self._probes.values()):
            task.cancel()
        await asyncio.gather(*self._probes.values(), return_exceptions=True)
        channels = [*self._channels.values(), *self._hedge_channels.values()]
        await asyncio.gather(*(c.close(grace=None) for c in channels))


# Failures that count against a node's breaker: it could not be reached, or did
# not answer in time. A refusal (a bad request, a denial) is the node working.
_BREAKING = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED})


def _raw_answer(channel: grpc.aio.Channel) -> Any:
    """NodeService.Answer on ``channel``, taking the request already serialized."""
    return channel.unary_unary(
        ANSWER_METHOD,
        request_serializer=None,
        response_deserializer=pb_node.AnswerResponse.FromString,
        _registered_method=True,  # type: ignore[call-arg]  # grpc-stubs predate it
    )
