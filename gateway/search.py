"""One federated search: validate, build and sign the request once, fan out, merge.

A request is read by every node in its audience, so the audience is kept as
small as the gateway can make it: nodes that said (in Describe) that they do
not offer the dataset are not asked. A node whose offer is unknown (it did not
answer Describe in time) is asked, and says so itself.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, replace

import grpc

from gateway.answers import reduce_to_query, verify_answer
from gateway.fanout import FanOut, Reply
from liaison.catalog import Catalog
from liaison.envelope import REQUEST_TYPE, Envelope, seal
from liaison.errors import CatalogError, EnvelopeError, InvalidQuery, LedgerUnavailable
from liaison.keys import SigningKey
from liaison.ledger.entries import AuditKey, outcome_entry, request_entry
from liaison.ledger.log import Appended, Ledger
from liaison.ledger.logged import LedgerProof, SignedRequest
from liaison.ledger.store import SideRows
from liaison.messages import (
    AnswerStatus,
    NodeResult,
    NodeStatus,
    QueryRequest,
    Requester,
    SearchEvent,
    SearchInput,
    SearchResult,
    SearchStarted,
    SearchSummary,
)
from liaison.query import Query, validate_case_ref, validate_legal_basis, validate_query
from liaison.wire import request_to_bytes

log = logging.getLogger("liaison.gateway")

# Nodes accept a request until its expiry; a small margin past the fan-out
# deadline lets a retry that started in time still be answered.
EXPIRY_MARGIN_MS = 1000
# A backstop beyond the ledger's own write deadline (which marks it down and
# says why): a search never waits on the ledger longer than this past it.
LEDGER_TIMEOUT_MARGIN_S = 5.0
# How long a node's Describe (which datasets it offers) is trusted before it is
# asked again, and how long a search waits for it at most.
OFFERS_TTL_S = 60.0
OFFERS_TIMEOUT_S = 0.5
# How soon a node whose Describe failed is asked again.
OFFERS_RETRY_S = 5.0
# What a streamed search's summary names as "did not answer".
NOT_ANSWERED = frozenset({NodeStatus.TIMED_OUT, NodeStatus.UNREACHABLE, NodeStatus.ERROR})


@dataclass(frozen=True, slots=True)
class _Begun:
    """A search whose request is signed and logged, ready to be sent."""

    request: QueryRequest
    digest: bytes
    envelope: Envelope
    signed: SignedRequest
    not_asked: tuple[NodeResult, ...]
    # When the search came in (perf_counter), and the time its request took to log.
    started: float
    ledger_s: float

    @property
    def deadline_s(self) -> float:
        request = self.request
        return (request.expires_at_ms - request.issued_at_ms - EXPIRY_MARGIN_MS) / 1000


@dataclass(frozen=True, slots=True)
class CheckedSearch:
    """A search that passed every gateway check, in canonical form."""

    query: Query
    purpose: str
    case_ref: str
    legal_basis: str
    targets: tuple[str, ...]
    deadline_ms: int


class GatewayCore:
    def __init__(
        self,
        *,
        gateway_id: str,
        signing_key: SigningKey,
        catalog: Catalog,
        fanout: FanOut,
        ledger: Ledger,
        audit_key: AuditKey,
        default_deadline_ms: int,
        max_deadline_ms: int,
    ) -> None:
        self.gateway_id = gateway_id
        self.signing_key = signing_key
        self.catalog = catalog
        self.fanout = fanout
        self.ledger = ledger
        self.audit_key = audit_key
        self.default_deadline_ms = default_deadline_ms
        self.max_deadline_ms = max_deadline_ms
        # node id -> (when fetched, monotonic s; datasets it offers, None: unknown)
        self._offers: dict[str, tuple[float, frozenset[str] | None]] = {}
        self._describing: dict[str, asyncio.Task[None]] = {}

    async def close(self) -> None:
        """Close the channels to the nodes, then seal the ledger with a final checkpoint."""
        for task in list(self._describing.values()):
            task.cancel()
        await asyncio.gather(*self._describing.values(), return_exceptions=True)
        await self.fanout.close()
        await asyncio.to_thread(self.ledger.close)

    def check_search(self, search: SearchInput) -> CheckedSearch:
        """Validate ``search`` against the catalog and this federation; raise on anything wrong."""
        query = validate_query(search.query, self.catalog)
        if not search.purpose:
            raise InvalidQuery(
                f"a purpose is required (--purpose); one of: {', '.join(self.catalog.purposes)}"
            )
        try:
            self.catalog.check_purpose(search.purpose)
        except CatalogError as exc:
            raise InvalidQuery(str(exc)) from exc
        case_ref = validate_case_ref(search.case_ref)
        legal_basis = validate_legal_basis(search.legal_basis)
        known = self.fanout.links
        targets = tuple(dict.fromkeys(search.nodes)) if search.nodes else tuple(sorted(known))
        unknown = [n for n in targets if n not in known]
        if unknown:
            raise InvalidQuery(
                f"unknown node(s) {', '.join(unknown)}; this federation has: "
                f"{', '.join(sorted(known))}"
            )
        if not targets:
            raise InvalidQuery("this gateway knows no nodes; add [[node]] entries to its config")
        deadline = search.deadline_ms or self.default_deadline_ms
        if not 1 <= deadline <= self.max_deadline_ms:
            raise InvalidQuery(f"deadline must be between 1 and {self.max_deadline_ms} ms")
        return CheckedSearch(query, search.purpose, case_ref, legal_basis, targets, deadline)

    def build_request(self, requester: Requester, search: SearchInput) -> QueryRequest:
        """Validate ``search`` and turn it into the request every target node will verify."""
        return self.request_for(requester, self.check_search(search))

    async def narrow(self, checked: CheckedSearch) -> tuple[CheckedSearch, tuple[str, ...]]:
        """``checked`` without the targets known (from Describe) not to offer its dataset.

        Returns the narrowed search and the nodes left out.
        """
        dataset = checked.query.dataset
        offers = self._known_offers(checked.targets)
        if offers is None:
            offers = await self.offers(
                checked.targets, min(OFFERS_TIMEOUT_S, checked.deadline_ms / 4000)
            )
        # Unknown offers (None) are asked; an empty offer is a node offering nothing.
        skipped = tuple(
            n for n in checked.targets if (found := offers[n]) is not None and dataset not in found
        )
        if not skipped:
            return checked, ()
        targets = tuple(n for n in checked.targets if n not in skipped)
        if not targets:
            raise InvalidQuery(
                f"no node asked offers dataset {dataset!r} ({', '.join(skipped)} said they do "
                "not); ask for a dataset they offer"
            )
        log.info(
            "not asked: dataset not offered", extra={"dataset": dataset, "nodes": list(skipped)}
        )
        return replace(checked, targets=targets), skipped

    async def offers(
        self, node_ids: Sequence[str], timeout_s: float
    ) -> dict[str, frozenset[str] | None]:
        """The datasets each node offers (None: unknown), from a cache refreshed by Describe.

        Only a node never described is waited for (at most ``timeout_s``); a
        stale answer is used while a fresh one is fetched in the background,
        and a failed Describe is retried only after ``OFFERS_RETRY_S``, so a
        node that is down does not slow every search.
        """
        now = time.monotonic()
        unknown: list[str] = []
        for node_id in node_ids:
            fetched = self._offers.get(node_id)
            if fetched is None:
                unknown.append(node_id)
                continue
            at, offered = fetched
            if now - at >= (OFFERS_TTL_S if offered is not None else OFFERS_RETRY_S):
                self._refresh_later(node_id)
        if unknown:
            await asyncio.gather(*(self._describe(n, timeout_s) for n in unknown))
        return {n: self._offers.get(n, (0.0, None))[1] for n in node_ids}

    def _known_offers(self, node_ids: Sequence[str]) -> dict[str, frozenset[str] | None] | None:
        """:meth:`offers` without a coroutine, when no node needs waiting for; None otherwise.

        Every node was described before: stale offers are used while they are
        refreshed in the background, as :meth:`offers` does.
        """
        now = time.monotonic()
        known: dict[str, frozenset[str] | None] = {}
        for node_id in node_ids:
            fetched = self._offers.get(node_id)
            if fetched is None:
                return None
            at, offered = fetched
            if now - at >= (OFFERS_TTL_S if offered is not None else OFFERS_RETRY_S):
                self._refresh_later(node_id)
            known[node_id] = offered
        return known

    def _refresh_later(self, node_id: str) -> None:
        if node_id in self._describing:
            return
        task = asyncio.get_running_loop().create_task(self._describe(node_id, OFFERS_TIMEOUT_S))
        self._describing[node_id] = task
        task.add_done_callback(lambda _: self._describing.pop(node_id, None))

    async def _describe(self, node_id: str, timeout_s: float) -> None:
        offered = await self.fanout.offers(node_id, timeout_s)
        previous = self._offers.get(node_id)
        # A failed refresh keeps what the node said before, but retries sooner.
        if offered is None and previous is not None and previous[1] is not None:
            self._offers[node_id] = (time.monotonic() - OFFERS_TTL_S + OFFERS_RETRY_S, previous[1])
        else:
            self._offers[node_id] = (time.monotonic(), offered)

    def request_for(self, requester: Requester, checked: CheckedSearch) -> QueryRequest:
        """The request for a checked search, addressed to exactly its targets."""
        issued = time.time_ns() // 1_000_000
        return QueryRequest(
            query_id=str(uuid.uuid4()),
            gateway_id=self.gateway_id,
            issued_at_ms=issued,
            expires_at_ms=issued + checked.deadline_ms + EXPIRY_MARGIN_MS,
            nonce=os.urandom(16),
            audience=checked.targets,
            requester=requester,
            purpose=checked.purpose,
            case_ref=checked.case_ref,
            catalog_version=self.catalog.version,
            query=checked.query,
            legal_basis=checked.legal_basis,
        )

    async def _begin(self, requester: Requester, search: SearchInput) -> _Begun:
        """Check, build, sign and log ``search``: everything before any node hears of it."""
        started = time.perf_counter()
        # Validate before asking any node anything, then keep the audience minimal.
        checked, skipped = await self.narrow(self.check_search(search))
        request = self.request_for(requester, checked)
        payload = request_to_bytes(request)
        digest = hashlib.sha256(payload).digest()
        envelope = seal(self.signing_key, REQUEST_TYPE, payload)
        # Write before asking: no node hears of a request the ledger lacks,
        # and the proof that it is logged travels with it.
        entry = request_entry(
            request,
            request_digest=digest,
            key_id=self.signing_key.key_id,
            audit_key=self.audit_key,
        )
        logging_started = time.perf_counter()
        logged = await self._log(entry, prove=True)
        ledger_s = time.perf_counter() - logging_started
        assert logged.checkpoint is not None  # asked for with prove=True
        proof = LedgerProof(entry, logged.index, logged.inclusion_path, logged.checkpoint.note)
        not_asked = tuple(
            NodeResult(
                n, NodeStatus.NOT_ASKED, f"not asked: does not offer {request.query.dataset!r}"
            )
            for n in skipped
        )
        return _Begun(
            request, digest, envelope, SignedRequest(envelope, proof), not_asked, started, ledger_s
        )

    async def search(self, requester: Requester, search: SearchInput) -> SearchResult:
        begun = await self._begin(requester, search)
        request = begun.request
        replies = await self.fanout.ask_all(request.audience, begun.signed, begun.deadline_s)
        results = tuple(self._result(r, request, begun.digest) for r in replies) + begun.not_asked
        await self._finish(requester, begun, results)
        return SearchResult(request.query_id, request.query, results, signed_request=begun.envelope)

    async def search_stream(
        self, requester: Requester, search: SearchInput
    ) -> AsyncIterator[SearchEvent]:
        """As :meth:`search`, but each node's result is given as soon as it is on record.

        Results that arrive while earlier ones are being written are written
        together, in one outcome entry holding just them; the last entry holds
        every node's result, as :meth:`search` writes it. Nothing reaches the
        investigator that the ledger does not hold, however the stream ends.
        """
        begun = await self._begin(requester, search)
        request = begun.request
        yield SearchStarted(request.query_id, begun.envelope, request.audience)
        for result in begun.not_asked:
            yield result
        arrived: list[NodeResult] = []
        more = asyncio.Event()

        async def collect() -> None:
            try:
                async for reply in self.fanout.replies(
                    request.audience, begun.signed, begun.deadline_s
                ):
                    arrived.append(self._result(reply, request, begun.digest))
                    more.set()
            finally:
                more.set()

        collecting = asyncio.get_running_loop().create_task(collect())
        by_node: dict[str, NodeResult] = {}
        finished = False
        try:
            while not finished:
                if not arrived:
                    if collecting.done():
                        break
                    await more.wait()
                    more.clear()
                    continue
                batch = arrived[:]
                arrived.clear()
                by_node.update((r.node_id, r) for r in batch)
                finished = collecting.done() and not arrived
                if finished:
                    # The last results go into the final outcome entry: one write
                    # sooner than an entry of their own followed by that one.
                    collecting.result()  # a failure of the fan-out itself is raised here
                    await self._finish(requester, begun, self._ordered(begun, by_node))
                else:
                    await self._log(
                        outcome_entry(
                            query_id=request.query_id,
                            request_digest=begun.digest,
                            time_ms=time.time_ns() // 1_000_000,
                            results=batch,
                        )
                    )
                for result in batch:
                    yield result
            if not finished:
                collecting.result()
                await self._finish(requester, begun, self._ordered(begun, by_node))
        finally:
            collecting.cancel()
        results = self._ordered(begun, by_node)
        not_answered = tuple(r.node_id for r in results if r.status in NOT_ANSWERED)
        yield SearchSummary(
            request.query_id, not_answered, dict(Counter(r.status for r in results))
        )

    @staticmethod
    def _ordered(begun: _Begun, by_node: dict[str, NodeResult]) -> tuple[NodeResult, ...]:
        """Every node's result in the audience's order, then the nodes not asked."""
        audience = begun.request.audience
        return tuple(by_node[n] for n in audience if n in by_node) + begun.not_asked

    async def _finish(
        self, requester: Requester, begun: _Begun, results: tuple[NodeResult, ...]
    ) -> None:
        """Log what became of the request at every node; only then may the investigator know."""
        request = begun.request
        outcome_started = time.perf_counter()
        await self._log(
            outcome_entry(
                query_id=request.query_id,
                request_digest=begun.digest,
                time_ms=time.time_ns() // 1_000_000,
                results=results,
            )
        )
        if log.isEnabledFor(logging.INFO):
            log.info(
                "search",
                extra={
                    "query_id": request.query_id,
                    "agency": requester.agency,
                    "subject": requester.subject,
                    "purpose": request.purpose,
                    "dataset": request.query.dataset,
                    "operation": request.query.operation.value,
                    "outcome": {r.node_id: r.status.value for r in results},
                    # Time spent waiting for durable ledger writes, and in all: the
                    # operator's view of what the audit trail costs each query.
                    "ledger_ms": round(
                        (begun.ledger_s + time.perf_counter() - outcome_started) * 1000, 3
                    ),
                    "total_ms": round((time.perf_counter() - begun.started) * 1000, 3),
                },
            )

    async def _log(
        self,
        entry: bytes,
        *,
        prove: bool = False,
        side: Sequence[SideRows] = (),
        what: str = "query",
    ) -> Appended:
        """Append ``entry`` (with ``side`` rows, in its commit) and wait until it is durable.

        ``what`` names what is held back while the ledger cannot be written.
        """
        limit_s = self.ledger.write_timeout_s + LEDGER_TIMEOUT_MARGIN_S
        try:
            return await _durable(self.ledger.submit(entry, prove=prove, side=side), limit_s)
        except TimeoutError as exc:
            raise LedgerUnavailable(
                f"the gateway's ledger did not confirm a write within {limit_s:g} s; "
                f"no {what} is sent until it does"
            ) from exc
        except LedgerUnavailable as exc:
            # The ledger's location and the database's words are for the
            # operator's log (the writer logged them), not for investigators.
            raise LedgerUnavailable(
                f"the gateway cannot write its ledger; no {what} is sent until it can be "
                "written (the operator sees why in the gateway's log)"
            ) from exc

    def _result(self, reply: Reply, request: QueryRequest, digest: bytes) -> NodeResult:
        latency = round(reply.latency_ms, 2)
        if reply.envelope is None:
            status = _status_of(reply.code)
            detail = reply.detail
            if status is NodeStatus.TIMED_OUT:
                deadline = request.expires_at_ms - request.issued_at_ms - EXPIRY_MARGIN_MS
                detail = f"no answer within the {deadline} ms deadline (not a 'no hit')"
            return NodeResult(reply.node_id, status, detail, latency)
        link = self.fanout.links[reply.node_id]
        try:
            answer, answer_digest = verify_answer(
                reply.envelope,
                node_id=reply.node_id,
                node_key=link.key,
                query_id=request.query_id,
                request_digest=digest,
            )
        except EnvelopeError as exc:
            log.warning("answer discarded", extra={"node_id": reply.node_id, "error": str(exc)})
            return NodeResult(reply.node_id, NodeStatus.ERROR, f"answer discarded: {exc}", latency)
        reduced = reduce_to_query(answer, request.query)
        # The node's envelope travels on untouched, so the investigator's client
        # can check ``reduced`` against what the node signed (liaison.answer_check).
        if answer.status is AnswerStatus.DENIED:
            detail = answer.decision.reason or "denied"
            return NodeResult(
                reply.node_id,
                NodeStatus.DENIED,
                detail,
                latency,
                reduced,
                answer_digest,
                signed_answer=reply.envelope,
            )
        return NodeResult(
            reply.node_id,
            NodeStatus.ANSWERED,
            answer.decision.reason,
            latency,
            reduced,
            answer_digest,
            signed_answer=reply.envelope,
        )


async def _durable(future: Future[Appended], limit_s: float) -> Appended:
    """What the ledger's writer settles ``future`` with, awaited on the event loop.

    As ``wait_for(wrap_future(future), limit_s)`` (TimeoutError after
    ``limit_s``; a caller that gives up cancels ``future``, so a write not yet
    begun is dropped), with one loop future and one timer instead of the
    futures, callbacks and task those two make for every append.
    """
    loop = asyncio.get_running_loop()
    waiter: asyncio.Future[Appended] = loop.create_future()

    def settled(_: Future[Appended]) -> None:  # on the writer's thread, or here if done
        if not loop.is_closed():  # as asyncio's own future chaining: no loop, no one to tell
            loop.call_soon_threadsafe(_copy_outcome, future, waiter)

    timer = loop.call_later(limit_s, _time_out, waiter)
    future.add_done_callback(settled)
    try:
        return await waiter
    except BaseException:
        future.cancel()
        raise
    finally:
        timer.cancel()


def _copy_outcome(future: Future[Appended], waiter: asyncio.Future[Appended]) -> None:
    if waiter.done():  # timed out or cancelled meanwhile
        return
    if future.cancelled():
        waiter.cancel()
        return
    failure = future.exception()
    if failure is not None:
        waiter.set_exception(failure)
    else:
        waiter.set_result(future.result())


def _time_out(waiter: asyncio.Future[Appended]) -> None:
    if not waiter.done():
        waiter.set_exception(TimeoutError())


def _status_of(code: grpc.StatusCode | None) -> NodeStatus:
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return NodeStatus.TIMED_OUT
    if code == grpc.StatusCode.UNAVAILABLE:
        return NodeStatus.UNREACHABLE
    return NodeStatus.ERROR
