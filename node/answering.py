"""The node's core: from a signed request to a signed answer.

peer -> verify -> proof of logging -> replay claim -> policy decision ->
rate charge -> compile -> run read-only -> obligations -> sign -> one commit
(receipt, stored answer, rate usage). Each step lives in its own module; this
one only orders them and keeps what must happen once (the replay claim, the
receipt, the rate charge) in one place.

The receipt, the answer stored for retries and the rate usage it paid are
committed in one transaction of the receipts ledger, and the answer leaves
only once that commit returned: all three are durable, or none is and
nothing left. When the commit fails, the claim and the charge are let go
and the caller is told UNAVAILABLE; a retry is answered afresh. (Earlier
releases stored the answer in a second commit after the receipt, and wrote
a compensating "not-delivered" receipt when that one failed; a single commit
leaves no such gap, so this node writes none. Ledgers that hold them still
reconcile.)
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from sqlalchemy.engine import Engine

from liaison.catalog import Catalog
from liaison.envelope import ANSWER_TYPE, POLICY_TYPE, Envelope, seal
from liaison.errors import (
    CatalogError,
    ConfigError,
    InvalidQuery,
    LedgerError,
    LedgerUnavailable,
    ReplayDetected,
    UntrustedPeer,
)
from liaison.keys import KeyId, SigningKey
from liaison.ledger.entries import ReceiptFacts, receipt_entry
from liaison.ledger.log import Ledger
from liaison.ledger.logged import LoggedRequest, SignedRequest, check_logged
from liaison.ledger.store import SideRows
from liaison.messages import AnswerStatus, Decision, PublishedPolicy, QueryAnswer
from liaison.query import (
    Operation,
    Query,
    validate_case_ref,
    validate_legal_basis,
    validate_query,
)
from liaison.wire import answer_from_bytes, answer_to_bytes, published_policy_to_bytes
from node.database import MappedDataset
from node.differencing import RecentAggregates
from node.execute import Executor, Refusal
from node.followup import FollowUpDesk
from node.inbox import Inbox, new_ref
from node.near import NearIndexes
from node.near_guard import NearGuard
from node.noise import load_or_create_key
from node.ratelimit import LEGACY_FILE as RATES_LEGACY_FILE
from node.ratelimit import Charge, RateLedger
from node.replay import LEGACY_FILE as REPLAY_LEGACY_FILE
from node.replay import SEAL_KEY_FILE, ReplayGuard, private_dir, private_file
from node.verify import Peer, TrustedGateway, VerifiedRequest, peer_gateways, verify_request
from policies import Policy, decide

log = logging.getLogger("liaison.node")

NOT_OFFERED = "dataset-not-offered"
# Every 256 answers, records past their use are purged.
PURGE_EVERY = 256


def now_ms() -> int:
    return time.time_ns() // 1_000_000


@dataclass(frozen=True, slots=True)
class SignedAnswer:
    """What :meth:`NodeCore.answer` returns: the envelope that leaves, and the answer in it.

    The answer is the object that was signed (or, for a retry, the stored
    envelope's payload read back), so callers need not parse what they send.
    """

    envelope: Envelope
    answer: QueryAnswer


@dataclass(frozen=True, slots=True)
class NodeLimits:
    max_request_age_s: int
    clock_skew_s: int
    default_limit: int


class NodeCore:
    """Answers verified requests under the node's own policy."""

    def __init__(
        self,
        *,
        node_id: str,
        signing_key: SigningKey,
        trusted: Mapping[KeyId, TrustedGateway],
        policy: Policy,
        catalog: Catalog,
        engine: Engine,
        schema: Mapping[str, MappedDataset],
        receipts: Ledger,
        limits: NodeLimits,
        state_dir: Path,
        transform_secret: bytes = b"",
        policy_document: str = "",
        near: NearIndexes | None = None,
    ) -> None:
        self.node_id = node_id
        self.signing_key = signing_key
        self.trusted = dict(trusted)
        self.policy = policy
        self.catalog = catalog
        self.engine = engine
        self.schema = dict(schema)
        self.receipts = receipts
        self.limits = limits
        # Recent aggregates and near probes describe who asked what: owner-only.
        private_dir(state_dir)
        private_file(state_dir / "aggregates.sqlite3")
        # Replay records and rate usage live beside the receipts and are
        # committed with them; files of an earlier release are taken in.
        seal_key_path = state_dir / SEAL_KEY_FILE
        seal_key = load_or_create_key(seal_key_path)
        self.replay = ReplayGuard(receipts, seal_key, legacy=state_dir / REPLAY_LEGACY_FILE)
        self.rates = RateLedger(receipts, legacy=state_dir / RATES_LEGACY_FILE)
        # Record references, follow-up requests and hit notices: beside the
        # receipts too, each committed with the receipt that accounts for it.
        self.inbox = Inbox(receipts, seal_key)
        # How long an append may wait: past the ledger's own write timeout,
        # whose watchdog answers first.
        self._append_timeout_s = receipts.write_timeout_s + 30
        self.near_guard = NearGuard(state_dir / "near.sqlite3")
        self.executor = Executor(
            engine=engine,
            transform_secret=transform_secret,
            maps=policy.maps,
            recent=RecentAggregates(state_dir / "aggregates.sqlite3"),
            default_limit=limits.default_limit,
            near=near,
        )
        self.near = near
        self.followups = FollowUpDesk(
            node_id=node_id,
            signing_key=signing_key,
            trusted=self.trusted,
            policy=policy,
            catalog=catalog,
            schema=self.schema,
            receipts=receipts,
            inbox=self.inbox,
            executor=self.executor,
            max_request_age_s=limits.max_request_age_s,
            clock_skew_s=limits.clock_skew_s,
            append_timeout_s=self._append_timeout_s,
        )
        self._answered = 0
        # The document ``policy`` was parsed from, signed once here: it is what
        # a gateway dry-runs queries against. Empty when the caller has no text.
        self.policy_document = policy_document
        self.published_policy: Envelope | None = None
        if policy_document:
            published = PublishedPolicy.of(
                node_id=node_id,
                catalog_version=catalog.version,
                document=policy_document,
                published_at_ms=now_ms(),
            )
            self.published_policy = seal(
                signing_key, POLICY_TYPE, published_policy_to_bytes(published)
            )

    def policy_envelope(self) -> Envelope:
        """The node's signed PublishedPolicy."""
        if self.published_policy is None:
            raise ConfigError(
                f"node {self.node_id} was started without its policy document, so it cannot "
                "publish it; start it from its config (build_node) to publish the policy"
            )
        return self.published_policy

    def check_peer(self, peer: Peer) -> frozenset[str]:
        """The trusted gateway ids ``peer`` proved to be; refuse (and log) anyone else."""
        try:
            return peer_gateways(peer, self.trusted)
        except UntrustedPeer:
            log.warning("refused: peer is not a trusted gateway", extra=peer.describe())
            raise

    def answer(self, signed: SignedRequest, peer: Peer | None = None) -> SignedAnswer:
        """Verify ``signed`` and return the signed answer (the same one on a retry).

        ``peer`` is who is on the line; None only for in-process callers of a
        node without TLS identities (tests).
        """
        peer = peer or Peer("in-process", None)
        gateways = self.check_peer(peer)
        envelope = signed.envelope
        verified = verify_request(
            envelope,
            trusted=self.trusted,
            node_id=self.node_id,
            now_ms=now_ms(),
            max_age_s=self.limits.max_request_age_s,
            clock_skew_s=self.limits.clock_skew_s,
        )
        request = verified.request
        if request.gateway_id not in gateways:
            # A trusted gateway presenting another gateway's request.
            log.warning(
                "refused: request signed by another gateway than the peer",
                extra={
                    **peer.describe(),
                    "query_id": request.query_id,
                    "signer": request.gateway_id,
                },
            )
            raise UntrustedPeer(
                f"this request is signed by gateway {request.gateway_id!r}; only that gateway "
                "may present it"
            )
        # Identity of the line, not of the bytes: a stored answer goes back only to it.
        peer_id = request.gateway_id if peer.certificate is not None else ""
        # Before the nonce is spent: a gateway that did not log gets nothing.
        logged = check_logged(
            signed.proof,
            request=request,
            request_digest=verified.digest,
            request_key_id=envelope.key_id,
            gateway_key=self.trusted[envelope.key_id].key,
        )
        try:
            cached = self.replay.claim(
                request.nonce,
                verified.digest,
                request.expires_at_ms,
                query_id=request.query_id,
                peer=peer_id,
            )
        except (ReplayDetected, UntrustedPeer) as exc:
            log.warning(
                "refused: replay",
                extra={
                    **peer.describe(),
                    "query_id": request.query_id,
                    "gateway_id": request.gateway_id,
                    "reason": str(exc),
                },
            )
            raise
        if cached is not None:
            log.info("retry answered from store", extra={"query_id": request.query_id})
            # This node's own signed bytes, committed with their receipt below.
            return SignedAnswer(cached, answer_from_bytes(cached.payload))
        charges: list[Charge] = []
        issued: list[SideRows] = []
        doubtful = False
        try:
            answer = self._decide_and_run(verified, charges, issued, peer_id)
            sealed = seal(self.signing_key, ANSWER_TYPE, answer_to_bytes(answer))
            side = [
                *self.replay.record(request.nonce, sealed),
                *self.rates.record(charges),
                *issued,
            ]
            receipt_started = time.perf_counter()
            try:
                # One commit: the receipt, the stored answer and the rate usage.
                # The answer cannot leave before it returned.
                self.receipts.append(
                    receipt_entry(self._receipt(verified, logged, answer, sealed)),
                    side=side,
                    timeout_s=self._append_timeout_s,
                )
            except (LedgerError, TimeoutError) as exc:
                # A write that overran its timeout may still land: its claim
                # waits until that is settled. Any other failed write was not
                # committed, and a retry is answered afresh.
                doubtful = self.receipts.stalled or isinstance(exc, TimeoutError)
                # Where the ledger lives is for the operator's log, not the caller.
                raise LedgerUnavailable(
                    "this node cannot write its receipts ledger, so it answers nothing; "
                    "try again later (the node's operator sees why in its log)"
                ) from exc
            receipt_ms = (time.perf_counter() - receipt_started) * 1000
        except BaseException:
            self.replay.release(request.nonce, doubtful=doubtful)
            for charge in charges:
                self.rates.refund(charge)
            raise
        self.replay.complete(request.nonce)
        self._answered += 1
        if self._answered % PURGE_EVERY == 0:
            self._purge()
        log.info(
            "answered",
            extra={
                "query_id": request.query_id,
                "agency": request.requester.agency,
                "subject": request.requester.subject,
                "purpose": request.purpose,
                "dataset": request.query.dataset,
                "operation": request.query.operation.value,
                "status": answer.status.value,
                "rules": list(answer.decision.rules),
                "reason": answer.decision.reason,
                "obligations": list(answer.decision.obligations),
                "explanation": list(answer.decision.explanation),
                "receipt_ms": round(receipt_ms, 3),
            },
        )
        return SignedAnswer(sealed, answer)

    def _purge(self) -> None:
        """Drop replay records and rate usage past their use; a failure waits for the next turn."""
        now = now_ms()
        try:
            self.replay.purge(
                now, keep_ms=(2 * self.limits.max_request_age_s + self.limits.clock_skew_s) * 1000
            )
            self.rates.purge(now)
        except LedgerError as exc:
            # The answer is committed already: upkeep never turns it into an error.
            log.warning("purge of old replay records failed", extra={"error": str(exc)})

    def _receipt(
        self,
        verified: VerifiedRequest,
        logged: LoggedRequest,
        answer: QueryAnswer,
        sealed: Envelope,
    ) -> ReceiptFacts:
        request = verified.request
        return ReceiptFacts(
            node_id=self.node_id,
            time_ms=answer.answered_at_ms,
            query_id=request.query_id,
            request_digest=verified.digest,
            gateway_id=request.gateway_id,
            gateway_key_id=verified.envelope.key_id,
            gateway_signature=verified.envelope.signature,
            gateway_entry=logged.proof.entry,
            gateway_leaf_index=logged.proof.leaf_index,
            gateway_checkpoint=logged.proof.checkpoint,
            status=answer.status.value,
            rules=answer.decision.rules,
            obligations=answer.decision.obligations,
            answer_digest=hashlib.sha256(sealed.payload).hexdigest(),
            answer_key_id=self.signing_key.key_id,
            holder_notified=answer.holder_notified,
        )

    def _decide_and_run(
        self,
        verified: VerifiedRequest,
        charges: list[Charge],
        issued: list[SideRows],
        peer_id: str,
    ) -> QueryAnswer:
        """Decide and run ``verified``; append any rate charge made to ``charges``.

        A hit gets a record reference (and, where the permit asks for it, a
        notice in this agency's inbox): their rows go to ``issued``, to be
        committed with the receipt.
        """
        request = verified.request
        query = validate_query(request.query, self.catalog)
        validate_case_ref(request.case_ref)
        validate_legal_basis(request.legal_basis)
        try:
            self.catalog.check_purpose(request.purpose)
        except CatalogError as exc:
            raise InvalidQuery(str(exc)) from exc

        def answer(status: AnswerStatus, decision: Decision, **parts: Any) -> QueryAnswer:
            return QueryAnswer(
                query_id=request.query_id,
                node_id=self.node_id,
                request_digest=verified.digest,
                answered_at_ms=now_ms(),
                status=status,
                decision=decision,
                **parts,
            )

        def deny(
            rules: tuple[str, ...], reason: str, explanation: tuple[str, ...] = ()
        ) -> QueryAnswer:
            return answer(AnswerStatus.DENIED, Decision(False, rules, reason, (), explanation))

        mapped = self.schema.get(query.dataset)
        if mapped is None:
            return deny((NOT_OFFERED,), f"this node does not offer {query.dataset!r}")
        decision = decide(
            self.policy,
            request.requester,
            request.purpose,
            query,
            case_ref=request.case_ref,
            legal_basis=request.legal_basis,
        )
        if not decision.permitted or decision.grant is None:
            return deny(decision.rules, decision.reason, decision.explanation)
        grant = decision.grant
        held = tuple(f for f in grant.fields if mapped.holds(f))
        not_held = tuple(f for f in grant.fields if not mapped.holds(f))
        grant = replace(grant, fields=held, withheld=grant.withheld + not_held)
        unenforceable = [f.field for f in grant.row_filters if f.field not in mapped.columns]
        if unenforceable:
            # A row filter this node cannot apply would release rows the policy excludes.
            reason = (
                f"row filter on {', '.join(unenforceable)} cannot be applied here; "
                "the node operator must map that field"
            )
            return deny(decision.rules, reason, (*decision.explanation, f"node: {reason}"))
        if query.operation is Operation.RECORDS and not grant.fields:
            reason = "none of the requested fields is held here"
            return deny(decision.rules, reason, (*decision.explanation, f"node: {reason}"))
        # Said before the near guard: a question this node cannot answer
        # spends no budget and leaves no probe behind.
        self.executor.require_near_index(query.dataset, query)
        # Near-duplicate budget and probing, before any rate limit is charged.
        near_reason = self.near_guard.admit(grant, query, request.requester, now_ms())
        if near_reason:
            return deny(
                decision.rules, near_reason, (*decision.explanation, f"node: {near_reason}")
            )
        charged = self.rates.charge(
            grant.rule_id, grant.rate_limits, request.requester, query_cost(query), now_ms()
        )
        if isinstance(charged, str):
            return deny(decision.rules, charged, (*decision.explanation, f"node: {charged}"))
        charges.append(charged)
        outcome = self.executor.run(mapped, query, grant, request, now_ms(), self.policy)
        if isinstance(outcome, Refusal):
            return deny(
                (outcome.rule,),
                outcome.reason,
                (*decision.explanation, f"{outcome.rule}: {outcome.reason}"),
            )
        reason = decision.reason
        if not_held:
            reason = "; ".join(filter(None, [reason, f"not held here: {', '.join(not_held)}"]))
        verdict = Decision(True, decision.rules, reason, decision.obligations, decision.explanation)
        if outcome.get("hit") or outcome.get("rows"):
            ref = new_ref()
            issued.append(
                self.inbox.ref_rows(
                    ref,
                    query_id=request.query_id,
                    agency=request.requester.agency,
                    dataset=query.dataset,
                    predicates=query.predicates,
                    row_filters=grant.row_filters,
                    now_ms=now_ms(),
                )
            )
            outcome = {**outcome, "record_refs": (ref,)}
            if grant.notify and request.requester.agency != self.policy.agency:
                issued.extend(
                    self.followups.notice_rows(
                        request=request,
                        ref=ref,
                        rules=decision.rules,
                        gateway_id=peer_id or request.gateway_id,
                        digest=verified.digest,
                    )
                )
                outcome["holder_notified"] = True
        return answer(AnswerStatus.ANSWERED, verdict, **outcome)


def query_cost(query: Query) -> int:
    """What a query costs against rate limits: its number of selector values."""
    return max(1, sum(len(p.values) for p in query.predicates))


def close_core(core: NodeCore) -> None:
    """Release the node's files and connections."""
    if core.near is not None:
        core.near.close()
    core.replay.close()
    core.rates.close()
    core.receipts.close()
    core.executor.recent.close()
    core.engine.dispose()
