"""One federated search: validate, build and sign the request once, fan out, merge."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import time
import uuid
from dataclasses import dataclass

import grpc

from gateway.answers import reduce_to_query, verify_answer
from gateway.fanout import FanOut, Reply
from liaison.catalog import Catalog
from liaison.envelope import REQUEST_TYPE, seal
from liaison.errors import CatalogError, EnvelopeError, InvalidQuery, LedgerUnavailable
from liaison.keys import SigningKey
from liaison.ledger.entries import AuditKey, outcome_entry, request_entry
from liaison.ledger.log import Appended, Ledger
from liaison.ledger.logged import LedgerProof, SignedRequest
from liaison.messages import (
    AnswerStatus,
    NodeResult,
    NodeStatus,
    QueryRequest,
    Requester,
    SearchInput,
    SearchResult,
)
from liaison.query import Query, validate_case_ref, validate_legal_basis, validate_query
from liaison.wire import request_to_bytes

log = logging.getLogger("liaison.gateway")

# Nodes accept a request until its expiry; a small margin past the fan-out
# deadline lets a retry that started in time still be answered.
EXPIRY_MARGIN_MS = 1000
# A ledger that cannot make an entry durable in this time is treated as down.
LEDGER_TIMEOUT_S = 10.0


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

    async def close(self) -> None:
        """Close the channels to the nodes, then seal the ledger with a final checkpoint."""
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
        checked = self.check_search(search)
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

    async def search(self, requester: Requester, search: SearchInput) -> SearchResult:
        started = time.perf_counter()
        request = self.build_request(requester, search)
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
        deadline_ms = request.expires_at_ms - request.issued_at_ms - EXPIRY_MARGIN_MS
        replies = await self.fanout.ask_all(
            request.audience, SignedRequest(envelope, proof), deadline_ms / 1000
        )
        results = tuple(self._result(r, request, digest) for r in replies)
        # What was released is on record before the investigator sees it.
        outcome_started = time.perf_counter()
        await self._log(
            outcome_entry(
                query_id=request.query_id,
                request_digest=digest,
                time_ms=time.time_ns() // 1_000_000,
                results=results,
            )
        )
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
                "ledger_ms": round((ledger_s + time.perf_counter() - outcome_started) * 1000, 3),
                "total_ms": round((time.perf_counter() - started) * 1000, 3),
            },
        )
        return SearchResult(request.query_id, request.query, results)

    async def _log(self, entry: bytes, *, prove: bool = False) -> Appended:
        future = self.ledger.submit(entry, prove=prove)
        try:
            return await asyncio.wait_for(asyncio.wrap_future(future), LEDGER_TIMEOUT_S)
        except TimeoutError as exc:
            raise LedgerUnavailable(
                f"the gateway's ledger did not confirm a write within {LEDGER_TIMEOUT_S:g} s; "
                "no query is sent until it does"
            ) from exc
        except LedgerUnavailable as exc:
            # The ledger's location and the database's words are for the
            # operator's log (the writer logged them), not for investigators.
            raise LedgerUnavailable(
                "the gateway cannot write its ledger; no query is sent until it can be "
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
        if answer.status is AnswerStatus.DENIED:
            detail = answer.decision.reason or "denied"
            return NodeResult(
                reply.node_id, NodeStatus.DENIED, detail, latency, reduced, answer_digest
            )
        return NodeResult(
            reply.node_id,
            NodeStatus.ANSWERED,
            answer.decision.reason,
            latency,
            reduced,
            answer_digest,
        )


def _status_of(code: grpc.StatusCode | None) -> NodeStatus:
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return NodeStatus.TIMED_OUT
    if code == grpc.StatusCode.UNAVAILABLE:
        return NodeStatus.UNREACHABLE
    return NodeStatus.ERROR
