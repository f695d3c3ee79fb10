"""Prometheus metrics of a node or a gateway, served on their own HTTP port.

Each process keeps its metrics in a registry of its own (never the library's
global one), so several servers built in one test process count apart.

Labels stay bounded: outcomes and statuses are fixed sets, error kinds are
Liaison's error classes, node ids come from the gateway's config, rule ids
from the node's policy, datasets from the catalog. No query id, investigator,
agency or selector ever becomes a label.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from liaison.errors import ConfigError
from liaison.messages import AnswerStatus, NodeStatus, QueryAnswer, SearchResult

# Seconds: from a cached answer (~1 ms) to the longest fan-out deadline.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
# A durable ledger commit: an fsync on SQLite, a round trip on PostgreSQL.
LEDGER_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5)
# How a node words a rate-limit refusal (node/ratelimit.py); the node's answer
# carries no other mark of it.
RATE_LIMIT_PREFIX = "rate limit of rule "
# Node statuses as label values: one word each, as operators type them in PromQL.
NODE_STATUS_LABELS = {s: s.value.replace(" ", "_") for s in NodeStatus}
# The statuses that mean a node's answer is missing from a search.
MISSING = frozenset({NodeStatus.TIMED_OUT, NodeStatus.UNREACHABLE, NodeStatus.ERROR})


def _ledger_histogram(registry: CollectorRegistry, name: str, what: str) -> Histogram:
    return Histogram(
        name,
        f"Seconds one durable commit to the {what} took (one commit holds a burst of entries)",
        registry=registry,
        buckets=LEDGER_BUCKETS,
    )


class GatewayMetrics:
    """What a gateway counts: searches, each node's part in them, its ledger."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.searches = Counter(
            "liaison_gateway_searches",
            "Searches by outcome: complete (every asked node answered or denied), partial "
            "(some did not answer), unanswered (none did), or the kind of refusal",
            ["outcome"],
            registry=r,
        )
        self.partial = Counter(
            "liaison_gateway_partial_results",
            "Searches in which at least one asked node did not answer (timed out, "
            "unreachable or error)",
            registry=r,
        )
        self.node_results = Counter(
            "liaison_gateway_node_results",
            "Each node's part in a search, by node and status",
            ["node", "status"],
            registry=r,
        )
        self.search_seconds = Histogram(
            "liaison_gateway_search_seconds",
            "Seconds from receiving a search to answering it (refusals included)",
            registry=r,
            buckets=LATENCY_BUCKETS,
        )
        self.node_seconds = Histogram(
            "liaison_gateway_node_seconds",
            "Seconds each asked node took to answer or fail, by node",
            ["node"],
            registry=r,
            buckets=LATENCY_BUCKETS,
        )
        self.ledger_append = _ledger_histogram(
            r, "liaison_gateway_ledger_append_seconds", "gateway's ledger"
        )
        # Each labelled series, looked up once: ``labels()`` validates and locks
        # on every call, and a search touches one series per node. The keys are
        # node ids from the config and fixed statuses and outcomes: bounded.
        self._node_results: dict[tuple[str, NodeStatus], Counter] = {}
        self._node_seconds: dict[str, Histogram] = {}
        self._searches: dict[str, Counter] = {}

    def known_nodes(self, node_ids: Iterable[str]) -> None:
        """Show every node's series at zero from the start, so rates work from the first scrape."""
        for node_id in node_ids:
            for status in NODE_STATUS_LABELS:
                self._node_result(node_id, status)

    def _node_result(self, node_id: str, status: NodeStatus) -> Counter:
        series = self._node_results.get((node_id, status))
        if series is None:
            series = self.node_results.labels(node_id, NODE_STATUS_LABELS[status])
            self._node_results[node_id, status] = series
        return series

    def searched(self, result: SearchResult, seconds: float) -> None:
        self.search_seconds.observe(seconds)
        asked = [r for r in result.results if r.status is not NodeStatus.NOT_ASKED]
        missing = sum(1 for r in asked if r.status in MISSING)
        if not missing:
            outcome = "complete"
        elif missing < len(asked):
            outcome = "partial"
        else:
            outcome = "unanswered"
        self._search_outcome(outcome).inc()
        if missing:
            self.partial.inc()
        for r in result.results:
            self._node_result(r.node_id, r.status).inc()
            if r.status is not NodeStatus.NOT_ASKED:
                seconds_of = self._node_seconds.get(r.node_id)
                if seconds_of is None:
                    seconds_of = self._node_seconds[r.node_id] = self.node_seconds.labels(r.node_id)
                seconds_of.observe(r.latency_ms / 1000)

    def _search_outcome(self, outcome: str) -> Counter:
        series = self._searches.get(outcome)
        if series is None:
            series = self._searches[outcome] = self.searches.labels(outcome)
        return series

    def refused(self, kind: str, seconds: float) -> None:
        """A search refused before or while asking nodes; ``kind`` is its error kind."""
        self.search_seconds.observe(seconds)
        self._search_outcome(kind).inc()


class NodeMetrics:
    """What a node counts: answers, denials by rule, rate limits, receipts, PDQ indexes."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.answers = Counter(
            "liaison_node_answers",
            "Answer calls by outcome: answered, denied, or the kind of refusal",
            ["outcome"],
            registry=r,
        )
        self.denials = Counter(
            "liaison_node_policy_denials",
            "Denied answers by deciding rule id (one count per rule the denial names)",
            ["rule"],
            registry=r,
        )
        self.rate_limited = Counter(
            "liaison_node_rate_limit_refusals",
            "Queries denied because a permit's rate limit was reached",
            registry=r,
        )
        self.answer_seconds = Histogram(
            "liaison_node_answer_seconds",
            "Seconds from receiving an Answer call to replying (refusals included)",
            registry=r,
            buckets=LATENCY_BUCKETS,
        )
        self.receipts_append = _ledger_histogram(
            r, "liaison_node_receipts_append_seconds", "node's receipts ledger"
        )

    def answered(self, answer: QueryAnswer, seconds: float) -> None:
        self.answer_seconds.observe(seconds)
        if answer.status is AnswerStatus.ANSWERED:
            self.answers.labels("answered").inc()
            return
        self.answers.labels("denied").inc()
        if answer.decision.reason.startswith(RATE_LIMIT_PREFIX):
            self.rate_limited.inc()
            return
        for rule in answer.decision.rules or ("(none)",):
            self.denials.labels(rule).inc()

    def refused(self, kind: str, seconds: float) -> None:
        self.answer_seconds.observe(seconds)
        self.answers.labels(kind).inc()

    def watch_indexes(self, read: Callable[[], Iterable[IndexState]]) -> None:
        """Report the PDQ indexes ``read`` describes, read afresh at every scrape."""
        self.registry.register(_IndexCollector(read))


@dataclass(frozen=True, slots=True)
class IndexState:
    """One PDQ index as a scrape sees it."""

    dataset: str
    field: str
    hashes: int
    built_at: float  # time.time() when the index in use was built


class _IndexCollector(Collector):
    def __init__(self, read: Callable[[], Iterable[IndexState]]) -> None:
        self.read = read

    def collect(self) -> Iterable[Metric]:
        size = GaugeMetricFamily(
            "liaison_node_pdq_index_hashes",
            "Distinct PDQ hashes in the index in use",
            labels=["dataset", "field"],
        )
        age = GaugeMetricFamily(
            "liaison_node_pdq_index_age_seconds",
            "Seconds since the index in use was built from the database (grows while "
            "refreshes fail)",
            labels=["dataset", "field"],
        )
        now = time.time()
        for state in self.read():
            size.add_metric([state.dataset, state.field], state.hashes)
            age.add_metric([state.dataset, state.field], max(0.0, now - state.built_at))
        return [size, age]


class MetricsServer:
    """``/metrics`` of one registry over plain HTTP, on a thread of its own."""

    def __init__(self, registry: CollectorRegistry, listen: str) -> None:
        host, _, port = listen.rpartition(":")
        host = host.strip("[]") or "127.0.0.1"
        try:
            server, thread = start_http_server(int(port), host, registry)
        except (OSError, ValueError) as exc:
            raise ConfigError(
                f"cannot serve metrics on {listen!r} ({exc}); is the port in use?"
            ) from exc
        self._server: WSGIServer = server
        self._thread: threading.Thread = thread
        self.address = f"{listen.rpartition(':')[0] or host}:{server.server_port}"

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)
