"""Seized-device triage: thousands of hashes asked of every agency, in chunks.

A device's hashes (up to 100,000) go out as federated searches of at most
``CHUNK`` values each, so every message stays far inside gRPC's size limit
and every chunk is one signed, logged request like any other: the gateway's
ledger records each with its selectors as keyed hashes, and each node's
policy, rate limits and receipts apply to it. The answers are merged per
agency: which of the asked values matched, with what the policy releases.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path

from liaison import client
from liaison.errors import InvalidQuery
from liaison.messages import NodeStatus, SearchInput, SearchResult
from liaison.query import MAX_IN_VALUES, Comparator, Predicate

MAX_BATCH_VALUES = 100_000
CHUNK = MAX_IN_VALUES
DEFAULT_CONCURRENCY = 4

Progress = Callable[[int, int], None]


@dataclass(slots=True)
class NodeTriage:
    """What one agency said across every chunk."""

    node_id: str
    chunks_answered: int = 0
    chunks_denied: int = 0
    chunks_failed: int = 0
    hits: int = 0  # chunks with a hit (match queries)
    fields: tuple[str, ...] = ()
    rows: list[tuple[str | None, ...]] = field(default_factory=list)
    reasons: list[str] = field(default_factory=list)
    truncated: bool = False

    def matched(self, key: str) -> set[str]:
        """The values of ``key`` in released rows: which asked values this agency holds."""
        if key not in self.fields:
            return set()
        i = self.fields.index(key)
        return {value for r in self.rows if (value := r[i]) is not None}


@dataclass(slots=True)
class BatchResult:
    selector: str
    values: int
    chunks: int
    query_ids: list[str] = field(default_factory=list)
    nodes: dict[str, NodeTriage] = field(default_factory=dict)


def chunks_of(values: Sequence[str], size: int = CHUNK) -> list[tuple[str, ...]]:
    return [tuple(values[i : i + size]) for i in range(0, len(values), size)]


def batch_search(
    address: str,
    token: str,
    template: SearchInput,
    predicate: Predicate,
    *,
    concurrency: int = DEFAULT_CONCURRENCY,
    chunk_size: int = CHUNK,
    on_progress: Progress | None = None,
    tls_ca: Path | None = None,
) -> BatchResult:
    """Ask ``template`` once per chunk of ``predicate``'s values, merged per agency."""
    values = list(dict.fromkeys(predicate.values))
    if not values:
        raise InvalidQuery("a batch needs at least one value")
    if len(values) > MAX_BATCH_VALUES:
        raise InvalidQuery(
            f"a batch takes at most {MAX_BATCH_VALUES:,} values, got {len(values):,}; "
            "split the device's hashes"
        )
    if predicate.comparator not in (Comparator.IN, Comparator.NEAR):
        raise InvalidQuery("a batch matches values with 'in' (exact) or 'near' (perceptual)")
    if not 1 <= chunk_size <= CHUNK:
        raise InvalidQuery(f"a chunk holds 1 to {CHUNK} values, got {chunk_size}")
    parts = chunks_of(values, chunk_size)
    result = BatchResult(predicate.field, len(values), len(parts))
    done = 0

    def ask(part: tuple[str, ...]) -> SearchResult:
        query = replace(
            template.query,
            predicates=(*template.query.predicates, replace(predicate, values=part)),
        )
        return client.search(address, token, replace(template, query=query), tls_ca=tls_ca)

    with ThreadPoolExecutor(max_workers=max(1, concurrency)) as pool:
        for part, searched in zip(parts, pool.map(ask, parts), strict=True):
            _merge(result, searched)
            done += len(part)
            if on_progress is not None:
                on_progress(done, len(values))
    return result


def _merge(result: BatchResult, searched: SearchResult) -> None:
    result.query_ids.append(searched.query_id)
    for r in searched.results:
        node = result.nodes.setdefault(r.node_id, NodeTriage(r.node_id))
        if r.status is NodeStatus.ANSWERED and r.answer is not None:
            node.chunks_answered += 1
            node.hits += int(r.answer.hit)
            if r.answer.fields:
                node.fields = r.answer.fields
                node.rows.extend(r.answer.rows)
            node.truncated = node.truncated or r.answer.truncated
        elif r.status is NodeStatus.DENIED:
            node.chunks_denied += 1
            if r.detail and r.detail not in node.reasons:
                node.reasons.append(r.detail)
        else:
            node.chunks_failed += 1
            if r.detail and r.detail not in node.reasons:
                node.reasons.append(r.detail)
