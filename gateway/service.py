"""The gateway's gRPC servicer: authenticate, convert, delegate, map errors."""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator
from typing import NoReturn

import grpc

from gateway.batch import run_batch
from gateway.dryrun import DryRunner
from gateway.followups import FollowUps
from gateway.search import GatewayCore
from liaison.followup_wire import filing_from_proto, view_to_proto
from liaison.grpc_errors import ERROR_KIND_KEY, error_kind, status_for
from liaison.identity.verify import TokenVerifier
from liaison.identity.verify import bearer_token as token_of
from liaison.messages import BatchHeader, NodeResult, SearchResult, SearchSummary
from liaison.metrics import GatewayMetrics
from liaison.wire import (
    batch_chunk_to_proto,
    batch_part_from_proto,
    dry_run_request_from_proto,
    dry_run_result_to_proto,
    search_event_to_proto,
    search_from_proto,
    search_result_to_proto,
)
from proto.liaison.v1 import gateway_pb2 as pb_gateway
from proto.liaison.v1 import gateway_pb2_grpc as pb_gateway_grpc

log = logging.getLogger("liaison.gateway")


async def _abort(context: grpc.aio.ServicerContext[object, object], exc: BaseException) -> NoReturn:
    code, message = status_for(exc, log)
    await context.abort(code, message, trailing_metadata=((ERROR_KIND_KEY, error_kind(exc)),))
    raise AssertionError("context.abort returned")  # pragma: no cover - abort always raises


def bearer_token(context: grpc.aio.ServicerContext[object, object]) -> str | None:
    return token_of(context.invocation_metadata())


class GatewayServicer(pb_gateway_grpc.GatewayServiceServicer):  # type: ignore[misc]  # generated base is untyped
    def __init__(
        self,
        core: GatewayCore,
        verifier: TokenVerifier,
        dry_runner: DryRunner | None = None,
        *,
        metrics: GatewayMetrics | None = None,
        followups: FollowUps | None = None,
    ) -> None:
        self.core = core
        self.verifier = verifier
        self.dry_runner = dry_runner or DryRunner(core)
        self.metrics = metrics or GatewayMetrics()
        self.followups = followups or FollowUps(core)

    async def Search(
        self,
        request: pb_gateway.SearchRequest,
        context: grpc.aio.ServicerContext[object, object],
    ) -> pb_gateway.SearchResponse:
        started = time.perf_counter()
        try:
            requester = await self.verifier.verify_async(bearer_token(context))
            result = await self.core.search(requester, search_from_proto(request))
        except Exception as exc:
            self.metrics.refused(error_kind(exc), time.perf_counter() - started)
            await _abort(context, exc)
        self.metrics.searched(result, time.perf_counter() - started)
        return search_result_to_proto(result)

    async def SearchStream(
        self,
        request: pb_gateway.SearchStreamRequest,
        context: grpc.aio.ServicerContext[object, object],
    ) -> AsyncIterator[pb_gateway.SearchStreamResponse]:
        started = time.perf_counter()
        try:
            requester = await self.verifier.verify_async(bearer_token(context))
            search = search_from_proto(request.search)
            events = self.core.search_stream(requester, search)
            results: list[NodeResult] = []
            async for event in events:
                if isinstance(event, NodeResult):
                    results.append(event)
                elif isinstance(event, SearchSummary):
                    self.metrics.searched(
                        SearchResult(event.query_id, search.query, tuple(results)),
                        time.perf_counter() - started,
                    )
                yield search_event_to_proto(event)
        except Exception as exc:
            self.metrics.refused(error_kind(exc), time.perf_counter() - started)
            await _abort(context, exc)

    async def SearchBatch(
        self,
        request_iterator: AsyncIterator[pb_gateway.SearchBatchRequest],
        context: grpc.aio.ServicerContext[object, object],
    ) -> AsyncIterator[pb_gateway.SearchBatchResponse]:
        started = time.perf_counter()

        async def parts() -> AsyncIterator[BatchHeader | tuple[str, ...]]:
            async for message in request_iterator:
                yield batch_part_from_proto(message)

        try:
            requester = await self.verifier.verify_async(bearer_token(context))
            async for chunk in run_batch(self.core, requester, parts()):
                self.metrics.searched(chunk.result, time.perf_counter() - started)
                yield batch_chunk_to_proto(chunk)
        except Exception as exc:
            self.metrics.refused(error_kind(exc), time.perf_counter() - started)
            await _abort(context, exc)

    async def ListNodes(
        self,
        request: pb_gateway.ListNodesRequest,
        context: grpc.aio.ServicerContext[object, object],
    ) -> pb_gateway.ListNodesResponse:
        try:
            await self.verifier.verify_async(bearer_token(context))
        except Exception as exc:
            await _abort(context, exc)
        fanout = self.core.fanout
        return pb_gateway.ListNodesResponse(
            nodes=[
                pb_gateway.NodeInfo(
                    node_id=link.node_id,
                    address=link.address,
                    key_id=link.key.key_id,
                    not_asked=fanout.breakers[link.node_id].why_open()
                    if fanout.breakers[link.node_id].open
                    else "",
                    usual_latency_ms=fanout.usual_latency_s(link.node_id) * 1000,
                )
                for link in sorted(fanout.links.values(), key=lambda x: x.node_id)
            ]
        )

    async def DryRun(
        self,
        request: pb_gateway.DryRunRequest,
        context: grpc.aio.ServicerContext[object, object],
    ) -> pb_gateway.DryRunResponse:
        try:
            requester = await self.verifier.verify_async(bearer_token(context))
            result = await self.dry_runner.run(requester, dry_run_request_from_proto(request))
        except Exception as exc:
            await _abort(context, exc)
        return dry_run_result_to_proto(result)

    async def FileFollowUp(
        self,
        request: pb_gateway.FileFollowUpRequest,
        context: grpc.aio.ServicerContext[object, object],
    ) -> pb_gateway.FileFollowUpResponse:
        try:
            requester = await self.verifier.verify_async(bearer_token(context))
            view = await self.followups.file(requester, filing_from_proto(request))
        except Exception as exc:
            await _abort(context, exc)
        return pb_gateway.FileFollowUpResponse(followup=view_to_proto(view))

    async def ListFollowUps(
        self,
        request: pb_gateway.ListFollowUpsRequest,
        context: grpc.aio.ServicerContext[object, object],
    ) -> pb_gateway.ListFollowUpsResponse:
        try:
            requester = await self.verifier.verify_async(bearer_token(context))
            views = await self.followups.list_for(requester, overdue_only=request.overdue_only)
        except Exception as exc:
            await _abort(context, exc)
        return pb_gateway.ListFollowUpsResponse(followups=[view_to_proto(v) for v in views])

    async def GetFollowUp(
        self,
        request: pb_gateway.GetFollowUpRequest,
        context: grpc.aio.ServicerContext[object, object],
    ) -> pb_gateway.GetFollowUpResponse:
        try:
            requester = await self.verifier.verify_async(bearer_token(context))
            view = await self.followups.get(requester, request.followup_id)
        except Exception as exc:
            await _abort(context, exc)
        return pb_gateway.GetFollowUpResponse(followup=view_to_proto(view))
