"""Follow-up requests at the gateway: sign, log, deliver; collect, verify, log, show.

A follow-up travels like a query: the gateway checks the filing, builds the
request, serialises it once, signs those bytes, and logs its entry (with the
follow-up's row, in the same commit) *before* the holding node hears of it;
the node gets the proof that it was logged with it. What the node says back
(its acknowledgement on delivery, a duty officer's decision later) is taken
only once it verifies under that node's key and names this very request, and
is logged (with the row's update, in one commit) before anyone is shown it.

Nothing here lives only in memory: replicas sharing one PostgreSQL ledger
share the rows (``gateway.followup_store``), so any replica answers for any
follow-up. A reply that does not verify is neither logged nor shown.

Delivery outcomes:

- the node acknowledges: "delivered" (or "refused" when its policy lets no
  one release any asked field), with the acknowledgement's digest;
- the node refuses the call or cannot be reached (after a few tries):
  "not delivered", with the reason;
- anything that leaves it unknown whether the node took the request in (no
  reply in time, an acknowledgement that does not verify): nothing is logged
  yet, the request stays pending, and the next look at it asks the node
  (Collect returns the acknowledgement of every request it holds). Once the
  request's delivery window has passed and the node holds no such request, it
  is logged as "not delivered".
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import time
import uuid
import weakref
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import grpc

from gateway.followup_store import FollowUpRow, FollowUpStore
from gateway.search import GatewayCore
from liaison.envelope import Envelope, open_envelope, seal
from liaison.errors import BadSignature, EnvelopeError, InvalidQuery, NotFound
from liaison.followup_wire import (
    ack_from_bytes,
    collect_to_proto,
    collected_from_proto,
    decision_from_bytes,
    followup_request_from_bytes,
    followup_request_to_bytes,
)
from liaison.followups import (
    DELIVERY_WINDOW_MS,
    FOLLOWUP_ACK_TYPE,
    FOLLOWUP_DECISION_TYPE,
    FOLLOWUP_REQUEST_TYPE,
    FollowUpAck,
    FollowUpDecision,
    FollowUpFiling,
    FollowUpRequest,
    FollowUpStatus,
    FollowUpView,
    answer_by,
    outcome_of,
    validate_filing,
)
from liaison.handling import handling_code
from liaison.ledger.entries import (
    followup_delivery_entry,
    followup_entry,
    followup_outcome_entry,
)
from liaison.ledger.logged import LedgerProof, SignedRequest
from liaison.ledger.store import SideRows
from liaison.messages import DEFAULT_CLOCK_SKEW_S, Requester
from liaison.wire import delivery_to_proto, envelope_from_proto

log = logging.getLogger("liaison.gateway")

# How long a delivery may take in all, and how many times a node that is
# unavailable is tried within it.
DELIVER_TIMEOUT_S = 5.0
DELIVER_ATTEMPTS = 3
# How long a look at follow-ups waits for a node's decisions.
COLLECT_TIMEOUT_S = 2.0
# A request the node does not hold once its delivery window has passed (and
# the clock skew a node allows, both ways) never reached it: the node refuses
# it from then on.
NEVER_ARRIVED_MARGIN_MS = 2 * DEFAULT_CLOCK_SKEW_S * 1000
MAX_DETAIL_CHARS = 300
MAX_ID_CHARS = 64

DELIVERED = "delivered"
REFUSED = "refused"
NOT_DELIVERED = "not delivered"

# Codes with which a node answered and refused the request: it did not take
# it in. (UNAVAILABLE, after a few tries, is a node that cannot be reached;
# any other code leaves it unknown.)
_REFUSALS = frozenset(
    {
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.PERMISSION_DENIED,
        grpc.StatusCode.UNAUTHENTICATED,
        grpc.StatusCode.ALREADY_EXISTS,
        grpc.StatusCode.NOT_FOUND,
        grpc.StatusCode.FAILED_PRECONDITION,
        grpc.StatusCode.UNIMPLEMENTED,
        grpc.StatusCode.OUT_OF_RANGE,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
    }
)


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def _short(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= MAX_DETAIL_CHARS else text[: MAX_DETAIL_CHARS - 1] + "…"


@dataclass(frozen=True, slots=True)
class _Delivery:
    """What one delivery came to: an acknowledgement, a definite failure, or not known."""

    ack: Envelope | None = None
    parsed: FollowUpAck | None = None
    # Set when the node did not take the request in, for certain.
    failed: str = ""
    # Set when it is not known whether it did.
    unknown: str = ""


class FollowUps:
    """File, list and show follow-up requests for the gateway ``core``."""

    def __init__(
        self,
        core: GatewayCore,
        *,
        deliver_timeout_s: float = DELIVER_TIMEOUT_S,
        collect_timeout_s: float = COLLECT_TIMEOUT_S,
    ) -> None:
        self.core = core
        self.rows = FollowUpStore(core.ledger.store, core.signing_key)
        self.deliver_timeout_s = deliver_timeout_s
        self.collect_timeout_s = collect_timeout_s
        # One update of a follow-up at a time in this process (a poll and a
        # listing may collect the same decision); other replicas are kept
        # from changing a row twice by the row's own state (see the store).
        self._locks: weakref.WeakValueDictionary[str, asyncio.Lock] = weakref.WeakValueDictionary()

    # --- filing -----------------------------------------------------------------------

    async def file(self, requester: Requester, filing: FollowUpFiling) -> FollowUpView:
        """Check, sign, log and deliver ``filing``; what the node said, as a view."""
        core = self.core
        checked = validate_filing(filing, core.catalog)
        known = core.fanout.links
        if checked.node_id not in known:
            raise InvalidQuery(
                f"unknown node {checked.node_id!r}; this federation has: "
                f"{', '.join(sorted(known))} (name the node whose answer named the records)"
            )
        await asyncio.to_thread(self.rows.ensure_table)
        issued = now_ms()
        request = FollowUpRequest(
            followup_id=str(uuid.uuid4()),
            gateway_id=core.gateway_id,
            issued_at_ms=issued,
            expires_at_ms=issued + DELIVERY_WINDOW_MS,
            nonce=os.urandom(16),
            node_id=checked.node_id,
            requester=requester,
            query_id=checked.query_id,
            record_refs=checked.record_refs,
            fields=checked.fields,
            purpose=checked.purpose,
            case_ref=checked.case_ref,
            legal_basis=checked.legal_basis,
            urgency=checked.urgency,
            answer_by_ms=answer_by(issued, checked.urgency),
            text=checked.text,
            catalog_version=core.catalog.version,
        )
        payload = followup_request_to_bytes(request)
        digest = hashlib.sha256(payload).digest()
        envelope = seal(core.signing_key, FOLLOWUP_REQUEST_TYPE, payload)
        entry = followup_entry(
            request,
            request_digest=digest,
            key_id=core.signing_key.key_id,
            audit_key=core.audit_key,
        )
        row = FollowUpRow(
            followup_id=request.followup_id,
            agency=requester.agency,
            subject=requester.subject,
            node_id=request.node_id,
            status=FollowUpStatus.PENDING,
            filed_at_ms=issued,
            expires_at_ms=request.expires_at_ms,
            answer_by_ms=request.answer_by_ms,
            request_digest=digest,
            request=envelope,
            ack=None,
            decision=None,
            decided_at_ms=0,
            detail="",
        )
        inserted = self.rows.insert(
            followup_id=row.followup_id,
            agency=row.agency,
            subject=row.subject,
            node_id=row.node_id,
            filed_at_ms=row.filed_at_ms,
            expires_at_ms=row.expires_at_ms,
            answer_by_ms=row.answer_by_ms,
            request_digest=digest,
            request=envelope,
            detail=row.detail,
        )
        # Logged before delivered: no node hears of a request the ledger lacks,
        # and the proof that it is logged travels with it.
        logged = await core._log(entry, prove=True, side=[inserted], what="follow-up request")
        assert logged.checkpoint is not None  # asked for with prove=True
        proof = LedgerProof(entry, logged.index, logged.inclusion_path, logged.checkpoint.note)
        # Shielded: an investigator who stops waiting does not stop the delivery
        # half-way, and what the node said is logged all the same.
        view = await asyncio.shield(self._deliver_and_settle(row, proof))
        log.info(
            "follow-up filed",
            extra={
                "followup_id": row.followup_id,
                "node_id": row.node_id,
                "agency": requester.agency,
                "subject": requester.subject,
                "about_query_id": request.query_id,
                "urgency": request.urgency.value,
                "status": view.status.value,
            },
        )
        return view

    async def _deliver_and_settle(self, row: FollowUpRow, proof: LedgerProof) -> FollowUpView:
        async with self._lock(row.followup_id):
            return await self._settle_delivery(row, await self._deliver(row, proof))

    async def _deliver(self, row: FollowUpRow, proof: LedgerProof) -> _Delivery:
        """NodeService.Deliver with the proof; UNAVAILABLE is tried again within the deadline."""
        node_id = row.node_id
        message = delivery_to_proto(SignedRequest(row.request, proof))
        stub = self._stub(node_id)
        until = time.monotonic() + self.deliver_timeout_s
        for attempt in range(1, DELIVER_ATTEMPTS + 1):
            remaining = until - time.monotonic()
            if remaining <= 0:
                break
            try:
                response = await stub.Deliver(message, timeout=remaining)
            except grpc.aio.AioRpcError as exc:
                code = exc.code()
                details = exc.details() or "no detail"
                if code == grpc.StatusCode.UNAVAILABLE and attempt < DELIVER_ATTEMPTS:
                    await asyncio.sleep(min(0.05 * 2**attempt, max(0.0, until - time.monotonic())))
                    continue
                if code == grpc.StatusCode.UNAVAILABLE:
                    # Not "not delivered": a node whose ledger or database is
                    # down says UNAVAILABLE too, and a reply lost after the
                    # node committed looks the same. Collect, or the window's
                    # end, settles it.
                    return _Delivery(
                        unknown=_short(f"node {node_id} could not be reached ({details})")
                    )
                if code in _REFUSALS:
                    return _Delivery(
                        failed=_short(f"node {node_id} refused it ({code.name}: {details})")
                    )
                return _Delivery(unknown=_short(f"node {node_id} said {code.name}: {details}"))
            ack = envelope_from_proto(response.ack)
            try:
                parsed = self._ack_for(node_id, ack, {row.followup_id: row})
            except EnvelopeError as exc:
                log.warning(
                    "follow-up acknowledgement discarded",
                    extra={"followup_id": row.followup_id, "node_id": node_id, "error": str(exc)},
                )
                return _Delivery(
                    unknown=_short(f"node {node_id}'s acknowledgement did not verify ({exc})")
                )
            return _Delivery(ack=ack, parsed=parsed)
        return _Delivery(
            unknown=f"node {node_id} did not acknowledge it within {self.deliver_timeout_s:g} s"
        )

    async def _settle_delivery(self, row: FollowUpRow, delivery: _Delivery) -> FollowUpView:
        """Log what ``delivery`` came to (if anything is known) and give the row's view."""
        if delivery.ack is not None and delivery.parsed is not None:
            row = await self._log_ack(row, delivery.ack, delivery.parsed)
            return row.view(self._pending_detail(row))
        if delivery.failed:
            return (await self._log_undelivered(row, delivery.failed)).view()
        return row.view(
            f"delivery not confirmed: {delivery.unknown}; the gateway asks the node again "
            "when you look at it"
        )

    async def _log_ack(self, row: FollowUpRow, ack: Envelope, parsed: FollowUpAck) -> FollowUpRow:
        accepted = parsed.accepted
        status = FollowUpStatus.PENDING if accepted else FollowUpStatus.REFUSED
        detail = "" if accepted else _short(parsed.reason or "refused on delivery")
        entry = followup_delivery_entry(
            followup_id=row.followup_id,
            request_digest=row.request_digest,
            time_ms=now_ms(),
            node_id=row.node_id,
            status=DELIVERED if accepted else REFUSED,
            ack_digest=hashlib.sha256(ack.payload).hexdigest(),
            detail=detail,
        )
        await self._log(entry, self.rows.delivered(row.followup_id, status, ack, detail))
        return replace(row, status=status, ack=ack, detail=detail)

    async def _log_undelivered(self, row: FollowUpRow, reason: str) -> FollowUpRow:
        detail = f"not delivered: {reason}"
        entry = followup_delivery_entry(
            followup_id=row.followup_id,
            request_digest=row.request_digest,
            time_ms=now_ms(),
            node_id=row.node_id,
            status=NOT_DELIVERED,
            detail=reason,
        )
        await self._log(entry, self.rows.undelivered(row.followup_id, detail))
        return replace(row, status=FollowUpStatus.NOT_DELIVERED, detail=detail)

    async def _log_decision(
        self, row: FollowUpRow, decision: Envelope, parsed: FollowUpDecision
    ) -> FollowUpRow:
        seen = now_ms()
        status = FollowUpStatus(parsed.outcome.value)
        entry = followup_outcome_entry(
            parsed, time_ms=seen, decision_digest=hashlib.sha256(decision.payload).hexdigest()
        )
        await self._log(entry, self.rows.decided(row.followup_id, status, decision, seen))
        return replace(row, status=status, decision=decision, decided_at_ms=seen, detail="")

    async def _log(self, entry: bytes, side: SideRows) -> None:
        await self.core._log(entry, side=[side], what="follow-up reply")

    # --- reading ----------------------------------------------------------------------

    async def get(self, requester: Requester, followup_id: str) -> FollowUpView:
        """The requester's own follow-up ``followup_id``, with any decision collected first."""
        row = None
        if 0 < len(followup_id) <= MAX_ID_CHARS:
            row = await asyncio.to_thread(self.rows.get, followup_id)
        if row is None or not _owns(requester, row):
            # The same words whether it does not exist or is someone else's.
            raise NotFound(
                f"no follow-up request {followup_id[:MAX_ID_CHARS]!r} of yours at this gateway; "
                "`liaison followups` lists yours"
            )
        if row.status is not FollowUpStatus.PENDING:
            return row.view()
        (view,) = await self._refresh([row])
        return view

    async def list_for(
        self, requester: Requester, *, overdue_only: bool = False
    ) -> list[FollowUpView]:
        """The requester's follow-ups, newest first; pending ones asked about first."""
        rows = await asyncio.to_thread(self.rows.of_requester, requester.agency, requester.subject)
        # of_requester matched the stored bytes; the check costs nothing and says why.
        rows = [r for r in rows if _owns(requester, r)]
        views = await self._refresh(rows)
        if overdue_only:
            now = now_ms()
            views = [v for v in views if v.overdue(now)]
        return views

    async def _refresh(self, rows: Sequence[FollowUpRow]) -> list[FollowUpView]:
        """A view of each row, in order; pending ones collected first, one Collect per node."""
        by_node: dict[str, list[FollowUpRow]] = {}
        for row in rows:
            if row.status is FollowUpStatus.PENDING:
                by_node.setdefault(row.node_id, []).append(row)
        collected: dict[str, FollowUpView] = {}
        for views in await asyncio.gather(
            *(self._collect(node_id, pending) for node_id, pending in by_node.items())
        ):
            collected.update(views)
        return [collected.get(r.followup_id) or r.view() for r in rows]

    async def _collect(self, node_id: str, rows: Sequence[FollowUpRow]) -> dict[str, FollowUpView]:
        """Ask ``node_id`` about ``rows``; log what it says that verifies; a view of each."""
        if node_id not in self.core.fanout.links:
            return {
                r.followup_id: r.view(
                    f"node {node_id} is no longer in this gateway's federation; its decision "
                    "cannot be collected"
                )
                for r in rows
            }
        try:
            response = await self._stub(node_id).Collect(
                collect_to_proto([r.followup_id for r in rows]),
                timeout=self.collect_timeout_s,
            )
        except grpc.aio.AioRpcError as exc:
            detail = (
                f"still pending: node {node_id} could not be asked for its decision "
                f"({exc.code().name}); ask again later"
            )
            return {r.followup_id: r.view(detail) for r in rows}
        by_id = {r.followup_id: r for r in rows}
        acks: dict[str, tuple[Envelope, FollowUpAck]] = {}
        decisions: dict[str, tuple[Envelope, FollowUpDecision]] = {}
        discarded: dict[str, str] = {}
        signed_acks, signed_decisions = collected_from_proto(response)
        for envelope in signed_acks:
            try:
                ack = self._ack_for(node_id, envelope, by_id)
            except EnvelopeError as exc:
                self._discarded(node_id, "acknowledgement", exc)
                continue
            acks[ack.followup_id] = (envelope, ack)
        for envelope in signed_decisions:
            try:
                decision = self._decision_for(node_id, envelope, by_id)
            except _Discarded as exc:
                self._discarded(node_id, "decision", exc.error)
                discarded[exc.followup_id] = (
                    f"a decision from node {node_id} was discarded: it did not verify "
                    f"({_short(str(exc.error))})"
                )
                continue
            except EnvelopeError as exc:
                self._discarded(node_id, "decision", exc)
                continue
            decisions[decision.followup_id] = (envelope, decision)
        views: dict[str, FollowUpView] = {}
        now = now_ms()
        for row in rows:
            fid = row.followup_id
            got_ack, got_decision = acks.get(fid), decisions.get(fid)
            never_arrived = row.ack is None and got_ack is None and _past_delivery(row, now)
            if (row.ack is None and got_ack is not None) or got_decision or never_arrived:
                row = await self._update(row, got_ack, got_decision)
            views[fid] = row.view(discarded.get(fid) or self._pending_detail(row))
        return views

    async def _update(
        self,
        row: FollowUpRow,
        ack: tuple[Envelope, FollowUpAck] | None,
        decision: tuple[Envelope, FollowUpDecision] | None,
    ) -> FollowUpRow:
        """Log what was collected for ``row``, unless another call (or replica) did already."""
        async with self._lock(row.followup_id):
            current = await asyncio.to_thread(self.rows.get, row.followup_id)
            if current is None:  # pragma: no cover - rows are never deleted
                return row
            row = current
            if row.ack is None and ack is not None:
                row = await self._log_ack(row, *ack)
            if row.status is FollowUpStatus.PENDING and decision is not None:
                row = await self._log_decision(row, *decision)
            if (
                row.status is FollowUpStatus.PENDING
                and row.ack is None
                and ack is None
                and _past_delivery(row, now_ms())
            ):
                row = await self._log_undelivered(
                    row,
                    f"node {row.node_id} has not acknowledged it, and its delivery window "
                    "has passed: it never arrived (file it again)",
                )
            return row

    @staticmethod
    def _pending_detail(row: FollowUpRow) -> str:
        if row.status is not FollowUpStatus.PENDING:
            return row.detail
        if row.ack is None:
            return (
                f"delivery to node {row.node_id} not confirmed yet; the gateway asks the node "
                "again when you look at it"
            )
        return f"waiting for a duty officer at {row.node_id} to decide"

    # --- checking what nodes sign ----------------------------------------------------

    def _node_key(self, node_id: str) -> dict[Any, Any]:
        key = self.core.fanout.links[node_id].key
        return {key.key_id: key}

    def _ack_for(
        self, node_id: str, envelope: Envelope, rows: dict[str, FollowUpRow]
    ) -> FollowUpAck:
        """The acknowledgement in ``envelope`` if ``node_id`` signed it for one of ``rows``."""
        payload = open_envelope(envelope, FOLLOWUP_ACK_TYPE, self._node_key(node_id))
        try:
            ack = ack_from_bytes(payload)
        except InvalidQuery as exc:
            raise EnvelopeError(
                f"node {node_id} signed a payload that is not a follow-up acknowledgement"
            ) from exc
        if ack.node_id != node_id:
            raise BadSignature(
                f"acknowledgement from {node_id} claims to come from {ack.node_id!r}"
            )
        row = rows.get(ack.followup_id)
        if row is None or ack.request_digest != row.request_digest:
            raise BadSignature(f"acknowledgement from {node_id} is for another follow-up request")
        return ack

    def _decision_for(
        self, node_id: str, envelope: Envelope, rows: dict[str, FollowUpRow]
    ) -> FollowUpDecision:
        """The decision in ``envelope`` if ``node_id`` signed it for one of ``rows``.

        Raises :class:`_Discarded` (naming the follow-up) when the envelope
        names one of ``rows`` but does not verify or does not fit the request.
        """
        named = _claimed_followup(envelope, rows)
        try:
            payload = open_envelope(envelope, FOLLOWUP_DECISION_TYPE, self._node_key(node_id))
            try:
                decision = decision_from_bytes(payload)
            except InvalidQuery as exc:
                raise EnvelopeError(
                    f"node {node_id} signed a payload that is not a follow-up decision"
                ) from exc
            if decision.node_id != node_id:
                raise BadSignature(
                    f"decision from {node_id} claims to come from {decision.node_id!r}"
                )
            row = rows.get(decision.followup_id)
            if row is None or decision.request_digest != row.request_digest:
                raise BadSignature(f"decision from {node_id} is for another follow-up request")
            _check_fits(decision, followup_request_from_bytes(row.request.payload))
        except EnvelopeError as exc:
            if named is None:
                raise
            raise _Discarded(named, exc) from exc
        return decision

    @staticmethod
    def _discarded(node_id: str, what: str, exc: BaseException) -> None:
        log.warning(
            f"follow-up {what} discarded", extra={"node_id": node_id, "error": str(exc)[:300]}
        )

    # --- plumbing --------------------------------------------------------------------

    def _stub(self, node_id: str) -> Any:
        # The fan-out's long-lived channel to the node: one connection per node
        # for queries and follow-ups alike (with its TLS identity).
        return self.core.fanout.stub(node_id)

    def _lock(self, followup_id: str) -> asyncio.Lock:
        lock = self._locks.get(followup_id)
        if lock is None:
            lock = asyncio.Lock()
            self._locks[followup_id] = lock
        return lock


class _Discarded(Exception):
    """A node's reply about ``followup_id`` that does not verify."""

    def __init__(self, followup_id: str, error: EnvelopeError) -> None:
        super().__init__(str(error))
        self.followup_id = followup_id
        self.error = error


def _claimed_followup(envelope: Envelope, rows: dict[str, FollowUpRow]) -> str | None:
    """The follow-up of ``rows`` an unverified decision claims to be about, for the detail only."""
    try:
        claimed = decision_from_bytes(envelope.payload).followup_id
    except InvalidQuery:
        return None
    return claimed if claimed in rows else None


def _check_fits(decision: FollowUpDecision, request: FollowUpRequest) -> None:
    """Raise EnvelopeError unless ``decision`` decides ``request``'s fields, releasing only them."""
    asked = set(request.fields)
    decided = [d.field for d in decision.field_decisions]
    stray = [f for f in decided if f not in asked]
    if stray:
        raise EnvelopeError(f"the decision decides fields not asked for: {', '.join(stray)}")
    released = {d.field for d in decision.field_decisions if d.released}
    for d in decision.field_decisions:
        if d.released:
            try:
                handling_code(d.handling, where=f"the handling code of {d.field!r}")
            except InvalidQuery as exc:
                raise EnvelopeError(str(exc)) from None
    extra = [f for f in decision.fields if f not in released]
    if extra:
        raise EnvelopeError(f"the decision carries values of fields not released: {extra}")
    if any(len(row) != len(decision.fields) for row in decision.rows):
        raise EnvelopeError("the decision's rows do not match its fields")
    if decision.field_decisions and decision.outcome is not outcome_of(decision.field_decisions):
        raise EnvelopeError(
            f"the decision's outcome {decision.outcome.value!r} does not sum up its fields"
        )


def _past_delivery(row: FollowUpRow, now: int) -> bool:
    return now > row.expires_at_ms + NEVER_ARRIVED_MARGIN_MS


def _owns(requester: Requester, row: FollowUpRow) -> bool:
    return row.agency == requester.agency and row.subject == requester.subject
