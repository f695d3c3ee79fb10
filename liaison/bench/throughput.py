"""Federated queries per second at a fixed number of queries in flight.

One asyncio client (``grpc.aio``) keeps ``in_flight`` coroutines asking the
gateway over one long-lived channel: each sends its next search as soon as its
last one returns. A warm-up period comes first; then, over the measured
window, every completed search counts, and the CPU counters of every process
(gateway, each node, and this client) are read at its two ends. Searches still
in flight when the window closes finish afterwards: they count for the ledger
check, not for the rate.

The client checks each response as cheaply as it can (every expected node
answered) so that it stays far from being the bottleneck; its own CPU per
query is measured and reported with the servers'.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TextIO

import grpc
import grpc.aio

from liaison.bench.cpu import CpuReading, cpu_ms_per_query
from liaison.bench.runner import Summary
from liaison.serving import CHANNEL_OPTIONS
from proto.liaison.v1 import gateway_pb2 as pb_gateway
from proto.liaison.v1 import gateway_pb2_grpc as pb_gateway_grpc

CALL_TIMEOUT_S = 10.0
# How many error messages a level keeps to show; all are counted.
ERRORS_SHOWN = 5
ERROR_PAUSE_S = 0.01
_ANSWERED = pb_gateway.NODE_STATUS_ANSWERED


@dataclass(frozen=True, slots=True)
class Load:
    """What to send: one search message as one investigator, answered by ``expected``."""

    address: str
    metadata: tuple[tuple[str, str], ...]
    message: pb_gateway.SearchRequest
    expected: frozenset[str]


@dataclass(slots=True)
class LevelResult:
    in_flight: int
    window_s: float = 0.0
    latencies_ms: list[float] = field(default_factory=list)
    # Query id and the slowest node (as the gateway saw it) of each search in the window.
    measured: list[tuple[str, str]] = field(default_factory=list)
    # Every search answered by every expected node, in or out of the window.
    answered: list[str] = field(default_factory=list)
    errors: int = 0
    error_messages: list[str] = field(default_factory=list)
    cpu_ms_per_query: dict[str, float] | None = None

    @property
    def queries(self) -> int:
        return len(self.latencies_ms)

    @property
    def rate(self) -> float:
        return self.queries / self.window_s if self.window_s > 0 else 0.0

    def error(self, message: str) -> None:
        self.errors += 1
        if len(self.error_messages) < ERRORS_SHOWN:
            self.error_messages.append(message)

    def as_dict(self) -> dict[str, Any]:
        latency = (
            Summary.of(self.latencies_ms).as_dict("ms") if len(self.latencies_ms) >= 2 else None
        )
        return {
            "in_flight": self.in_flight,
            "window_s": round(self.window_s, 3),
            "queries": self.queries,
            "queries_per_s": round(self.rate, 1),
            "latency_ms": latency,
            "errors": self.errors,
            "error_messages": list(self.error_messages),
            "cpu_ms_per_query": self.cpu_ms_per_query,
        }


def _problem(response: pb_gateway.SearchResponse, expected: frozenset[str]) -> str | None:
    answered = {r.node_id for r in response.results if r.status == _ANSWERED}
    if answered >= expected:
        return None
    missing = [r for r in response.results if r.node_id in expected and r.status != _ANSWERED]
    named = "; ".join(
        f"{r.node_id}: {pb_gateway.NodeStatus.Name(r.status)} {r.detail}".strip() for r in missing
    )
    return f"query {response.query_id}: not every node answered ({named or 'no results'})"


async def _run_level(
    load: Load, in_flight: int, warmup_s: float, duration_s: float, pids: Mapping[str, int]
) -> LevelResult:
    result = LevelResult(in_flight)
    async with grpc.aio.insecure_channel(load.address, options=CHANNEL_OPTIONS) as channel:
        stub = pb_gateway_grpc.GatewayServiceStub(channel)
        await channel.channel_ready()
        measuring = False
        stop = False

        async def worker() -> None:
            while not stop:
                started = time.perf_counter_ns()
                try:
                    response: pb_gateway.SearchResponse = await stub.Search(
                        load.message, metadata=load.metadata, timeout=CALL_TIMEOUT_S
                    )
                except grpc.aio.AioRpcError as exc:
                    result.error(f"{exc.code().name}: {exc.details()}")
                    # A gateway that fails at once must not turn the client into a busy loop.
                    await asyncio.sleep(ERROR_PAUSE_S)
                    continue
                elapsed_ms = (time.perf_counter_ns() - started) / 1e6
                problem = _problem(response, load.expected)
                if problem is not None:
                    result.error(problem)
                    continue
                result.answered.append(response.query_id)
                if measuring:
                    slowest = max(response.results, key=lambda r: r.latency_ms)
                    result.latencies_ms.append(elapsed_ms)
                    result.measured.append((response.query_id, slowest.node_id))

        workers = [asyncio.create_task(worker()) for _ in range(in_flight)]
        await asyncio.sleep(warmup_s)
        # Errors in the warm-up count too: a benchmark that errs measures nothing.
        before = CpuReading.now(pids)
        measuring = True
        await asyncio.sleep(duration_s)
        measuring = False
        after = CpuReading.now(pids)
        stop = True
        await asyncio.gather(*workers)
    result.window_s = after.wall_s - before.wall_s
    result.cpu_ms_per_query = cpu_ms_per_query(before, after, result.queries)
    return result


def run_levels(
    load: Load,
    levels: Sequence[int],
    *,
    warmup_s: float,
    duration_s: float,
    pids: Mapping[str, int],
    progress: TextIO,
) -> list[LevelResult]:
    """Each level in turn, on a fresh channel and event loop."""
    results = []
    for level in levels:
        print(
            f"  {level} in flight: {warmup_s:g} s warm-up, {duration_s:g} s measured",
            file=progress,
        )
        found = asyncio.run(_run_level(load, level, warmup_s, duration_s, pids))
        print(
            f"    {found.rate:.0f} queries/s, {found.errors} error(s)"
            + (f"; first: {found.error_messages[0]}" if found.error_messages else ""),
            file=progress,
        )
        results.append(found)
    return results
