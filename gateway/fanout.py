"""Asking many nodes at once under one deadline, with grpc.aio.

Only transient failures (UNAVAILABLE) are retried, and only within the
deadline; retrying the identical envelope is safe because nodes answer a
retried nonce from their store instead of running it twice.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable
from dataclasses import dataclass
from functools import partial
from typing import Any

import grpc
from tenacity import (
    AsyncRetrying,
    retry_if_exception,
    stop_after_attempt,
    stop_after_delay,
    wait_exponential,
)

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
ANSWER_METHOD = f"/{pb_node.DESCRIPTOR.services_by_name['NodeService'].full_name}/Answer"


@dataclass(frozen=True, slots=True)
class NodeLink:
    node_id: str
    address: str
    key: VerifyingKey


@dataclass(frozen=True, slots=True)
class Reply:
    """What came back from one node: an envelope or a gRPC failure."""

    node_id: str
    latency_ms: float
    envelope: Envelope | None = None
    code: grpc.StatusCode | None = None
    detail: str = ""


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


class FanOut:
    """Long-lived channels to every node of the federation."""

    def __init__(self, links: tuple[NodeLink, ...], tls: TlsFiles | None = None) -> None:
        self.links = {link.node_id: link for link in links}
        credentials = tls.channel_credentials() if tls is not None else None
        self._channels = {
            link.node_id: (
                grpc.aio.insecure_channel(link.address, options=CHANNEL_OPTIONS)
                if credentials is None
                else grpc.aio.secure_channel(link.address, credentials, options=CHANNEL_OPTIONS)
            )
            for link in links
        }
        self._stubs = {
            node_id: pb_node_grpc.NodeServiceStub(channel)
            for node_id, channel in self._channels.items()
        }
        # Answer calls that take the request already serialized: it goes to
        # every node as the same bytes, so it is serialized once per search.
        self._answer = {
            node_id: channel.unary_unary(
                ANSWER_METHOD,
                request_serializer=None,
                response_deserializer=pb_node.AnswerResponse.FromString,
                _registered_method=True,  # type: ignore[call-arg]  # grpc-stubs predate it
            )
            for node_id, channel in self._channels.items()
        }

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
        """Ask every node in ``node_ids`` at once; one reply per node, in that order.

        The request is serialized once and every call is started before any is
        awaited. Calls are taken up as they finish (the gRPC calls' own done
        callbacks say when), so each node's latency is its own and a node that
        was unreachable is retried at once, whatever the others are doing.
        """
        request = signed_request_to_proto(signed).SerializeToString()
        loop = asyncio.get_running_loop()
        started = time.monotonic()
        until = started + deadline_s
        finished: list[tuple[int, Awaitable[Any], float]] = []
        wake: asyncio.Future[None] | None = None

        def done(index: int, awaited: Awaitable[Any]) -> None:
            finished.append((index, awaited, time.monotonic()))
            if wake is not None and not wake.done():
                wake.set_result(None)

        calls: list[Any] = []
        replies: list[Reply | None] = [None] * len(node_ids)
        try:
            for index, node_id in enumerate(node_ids):
                call = self._answer[node_id](request, timeout=deadline_s)
                calls.append(call)
                call.add_done_callback(partial(done, index))
            outstanding = len(node_ids)
            while outstanding:
                if not finished:
                    wake = loop.create_future()
                    await wake
                    continue
                index, awaited, at = finished.pop()
                node_id = node_ids[index]
                if isinstance(awaited, asyncio.Task):  # a retry: it made its own reply
                    replies[index] = await awaited
                    outstanding -= 1
                    continue
                latency_ms = (at - started) * 1000
                try:
                    response = await awaited
                except grpc.aio.AioRpcError as exc:
                    if _transient(exc):
                        retry = loop.create_task(self._retry(node_id, request, started, until))
                        calls.append(retry)
                        retry.add_done_callback(partial(done, index))
                        continue
                    replies[index] = Reply(
                        node_id, latency_ms, code=exc.code(), detail=exc.details() or ""
                    )
                else:
                    replies[index] = Reply(
                        node_id, latency_ms, envelope=envelope_from_proto(response.answer)
                    )
                outstanding -= 1
        except BaseException:
            # Cancelled (the investigator went away) or failed: stop asking.
            for call in calls:
                call.cancel()
            raise
        return [r for r in replies if r is not None]

    async def _retry(self, node_id: str, request: bytes, started: float, until: float) -> Reply:
        """Ask ``node_id`` again after a transient failure, within the deadline."""
        answer = self._answer[node_id]

        def elapsed() -> float:
            return (time.monotonic() - started) * 1000

        try:
            async for attempt in AsyncRetrying(
                retry=retry_if_exception(_transient),
                wait=wait_exponential(multiplier=0.02, max=0.5),
                stop=stop_after_attempt(3) | stop_after_delay(max(0.0, until - started)),
                reraise=True,
            ):
                with attempt:
                    remaining = until - time.monotonic()
                    if remaining <= 0:
                        return Reply(node_id, elapsed(), code=grpc.StatusCode.DEADLINE_EXCEEDED)
                    response = await answer(request, timeout=remaining)
        except grpc.aio.AioRpcError as exc:
            return Reply(node_id, elapsed(), code=exc.code(), detail=exc.details() or "")
        return Reply(node_id, elapsed(), envelope=envelope_from_proto(response.answer))

    async def close(self) -> None:
        await asyncio.gather(*(c.close(grace=None) for c in self._channels.values()))
