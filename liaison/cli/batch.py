"""Seized-device triage: thousands of hashes asked of every agency, in chunks.

A device's hashes (up to 100,000) go to the gateway in one batch call, which
asks the federation about them in chunks of at most ``CHUNK`` values, so
every request stays far inside gRPC's size limit and every chunk is one
signed, logged request like any other: the gateway's
ledger records each with its selectors as keyed hashes, and each node's
policy, rate limits and receipts apply to it. The answers are merged per
agency: which of the asked values matched, with what the policy releases.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from liaison.answer_check import AnswerCheck, NodeCheck, Verdict
from liaison.cli.render import NOT_VERIFIED
from liaison.cli.verify_answers import Verification, overall, verification_to_dict
from liaison.errors import InvalidQuery
from liaison.messages import NodeStatus, SearchInput, SearchResult
from liaison.query import MAX_IN_VALUES, Comparator, Predicate

MAX_BATCH_VALUES = 100_000
CHUNK = MAX_IN_VALUES

Progress = Callable[[int, int], None]
NO_VERIFICATION = "not asked to verify"


@dataclass(slots=True)
class NodeTriage:
    """What one agency said across every chunk."""

    node_id: str
    chunks_answered: int = 0
    chunks_denied: int = 0
    chunks_failed: int = 0
    # Left out by the gateway: the agency does not offer the dataset (not a failure).
    chunks_not_asked: int = 0
    # Chunks whose answer, as the gateway showed it, is not what the agency
    # signed: neither merged nor counted as answered.
    chunks_not_verified: int = 0
    # Chunks answered without a key held here to check them (unverifiable):
    # merged and shown, marked UNVERIFIED, but not counted as answered.
    chunks_unverified: int = 0
    # One verdict per chunk, when answers are verified (liaison.cli.verify_answers).
    checks: list[NodeCheck] = field(default_factory=list)
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

    def statuses(self) -> list[NodeStatus]:
        """One status per chunk, for the exit code (denied and failed are not answers)."""
        return (
            [NodeStatus.ANSWERED] * (self.chunks_answered - self.chunks_unverified)
            + [NodeStatus.DENIED] * self.chunks_denied
            + [NodeStatus.ERROR]
            * (self.chunks_failed + self.chunks_not_verified + self.chunks_unverified)
            + [NodeStatus.NOT_ASKED] * self.chunks_not_asked
        )


@dataclass(slots=True)
class BatchResult:
    selector: str
    values: int
    chunks: int
    query_ids: list[str] = field(default_factory=list)
    nodes: dict[str, NodeTriage] = field(default_factory=dict)
    comparator: Comparator = Comparator.IN
    distance: int | None = None
    # Why answers were not checked; empty when every chunk was verified.
    not_checked: str = ""

    def statuses(self) -> list[NodeStatus]:
        return [s for t in self.nodes.values() for s in t.statuses()]

    @property
    def failed(self) -> bool:
        """Some chunk's answer, as shown, is not what its agency signed."""
        return any(t.chunks_not_verified for t in self.nodes.values())

    def verdict(self, node_id: str) -> NodeCheck | None:
        """One verdict for the agency over every chunk; None when nothing was checked."""
        checks = self.nodes[node_id].checks
        return overall(node_id, checks) if checks else None


def batch_to_dict(result: BatchResult | None) -> dict[str, Any] | None:
    """A batch for --json (the ``batch`` of query-output.schema.json); None stays None."""
    if result is None:
        return None
    return {
        "selector": result.selector,
        "comparator": result.comparator.value,
        "max_distance": result.distance,
        "values": result.values,
        "chunks": result.chunks,
        "query_ids": list(result.query_ids),
        "nodes": {
            n: {
                "answered": t.chunks_answered,
                "denied": t.chunks_denied,
                "failed": t.chunks_failed,
                "not_asked": t.chunks_not_asked,
                "not_verified": t.chunks_not_verified,
                "hits": t.hits,
                "fields": list(t.fields),
                "rows": [list(r) for r in t.rows],
                "truncated": t.truncated,
                "reasons": list(t.reasons),
                "verification": verification_to_dict(result.verdict(n), result.not_checked),
            }
            for n, t in sorted(result.nodes.items())
        },
    }


def chunks_of(values: Sequence[str], size: int = CHUNK) -> list[tuple[str, ...]]:
    return [tuple(values[i : i + size]) for i in range(0, len(values), size)]


def batch_search(
    address: str,
    token: str,
    template: SearchInput,
    predicate: Predicate,
    *,
    chunk_size: int = CHUNK,
    on_progress: Progress | None = None,
    tls_ca: Path | None = None,
    verification: Verification | None = None,
) -> BatchResult:
    """Ask ``template`` once per chunk of ``predicate``'s values, merged per agency.

    The values go to the gateway in one batch call, which cuts them into
    chunks and asks the federation about each (``gateway.batch``).

    With ``verification`` on, each chunk's result is checked against the
    request of that chunk; a chunk an agency's answer FAILED for is left out
    of the merge (counted as not verified).
    """
    verification = verification or Verification.off(NO_VERIFICATION)
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
    result = BatchResult(
        predicate.field,
        len(values),
        len(parts),
        comparator=predicate.comparator,
        distance=predicate.max_distance,
        not_checked="" if verification.on else verification.source,
    )
    from liaison import client
    from liaison.answer_check import SearchWindow, now_ms

    sent = now_ms()
    done = 0
    ids: dict[int, str] = {}
    for chunk in client.search_batch(
        address,
        token,
        template,
        replace(predicate, values=tuple(values)),
        chunk_size=chunk_size,
        tls_ca=tls_ca,
    ):
        # Each chunk is a request of its own: checked against its own input.
        asked = replace(template, query=chunk.result.query)
        check = verification.check(chunk.result, asked, SearchWindow(sent, now_ms()))
        _merge(result, chunk.result, check)
        ids[chunk.chunk] = chunk.result.query_id
        done += chunk.value_count
        if on_progress is not None:
            on_progress(done, len(values))
    # In the order the values were sent, whatever order the chunks finished in.
    result.query_ids[:] = [ids[i] for i in sorted(ids)]
    return result


def _merge(result: BatchResult, searched: SearchResult, check: AnswerCheck | None) -> None:
    result.query_ids.append(searched.query_id)
    if check is not None:
        for verdict in check.nodes:
            result.nodes.setdefault(verdict.node_id, NodeTriage(verdict.node_id)).checks.append(
                verdict
            )
            if verdict.verdict is Verdict.FAILED:
                # Never merged: what the gateway showed is not the agency's answer.
                node = result.nodes[verdict.node_id]
                node.chunks_not_verified += 1
                reason = f"{NOT_VERIFIED}: {verdict.reason}"
                if reason not in node.reasons:
                    node.reasons.append(reason)
    failed = {n.node_id for n in check.failed} if check else set()
    unverified = (
        {n.node_id for n in check.nodes if n.verdict is Verdict.UNVERIFIABLE} if check else set()
    )
    for r in searched.results:
        node = result.nodes.setdefault(r.node_id, NodeTriage(r.node_id))
        if r.node_id in failed:
            continue
        if r.status is NodeStatus.ANSWERED and r.answer is not None:
            node.chunks_answered += 1
            node.chunks_unverified += int(r.node_id in unverified)
            node.hits += int(r.answer.hit)
            if r.answer.fields:
                node.fields = r.answer.fields
                node.rows.extend(r.answer.rows)
            node.truncated = node.truncated or r.answer.truncated
        elif r.status is NodeStatus.NOT_ASKED:
            node.chunks_not_asked += 1
        elif r.status is NodeStatus.DENIED:
            node.chunks_denied += 1
            # The node's signed reason; the gateway's own ``detail`` is not signed.
            reason = r.answer.decision.reason if r.answer else ""
            if reason and reason not in node.reasons:
                node.reasons.append(reason)
        else:
            node.chunks_failed += 1
            if r.detail and r.detail not in node.reasons:
                node.reasons.append(r.detail)
