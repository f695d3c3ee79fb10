"""The node's core: from a signed request to a signed answer.

peer -> verify -> proof of logging -> replay guard -> policy decision ->
compile -> run read-only -> obligations -> sign -> receipt -> stored answer.
Each step lives in its own module; this one only orders them and keeps what
must happen once (the replay claim, the receipt, the rate charge) in one place.

The receipt is durable before the answer is stored for retries, and the
answer leaves only once both are. If the store fails after the receipt, a
second receipt for the same request says "not-delivered", the rate charge is
refunded, and the caller is told UNAVAILABLE: receipts say what happened.
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
    LedgerUnavailable,
    ReplayDetected,
    StateUnavailable,
    UntrustedPeer,
)
from liaison.keys import KeyId, SigningKey
from liaison.ledger.entries import ReceiptFacts, receipt_entry
from liaison.ledger.log import Ledger
from liaison.ledger.logged import LoggedRequest, SignedRequest, check_logged
from liaison.messages import AnswerStatus, Decision, PublishedPolicy, QueryAnswer, Requester
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
from node.near import NearIndexes
from node.near_guard import NearGuard
from node.ratelimit import RateLedger
from node.replay import ReplayGuard, private_dir, private_file
from node.verify import Peer, TrustedGateway, VerifiedRequest, peer_gateways, verify_request
from policies import Policy, decide
from policies.model import RateLimit

log = logging.getLogger("liaison.node")

NOT_OFFERED = "dataset-not-offered"
# The status of a compensating receipt: the answer of the receipt before it
# (same request digest and answer digest) never left this node.
NOT_DELIVERED = "not-delivered"


def now_ms() -> int:
    return time.time_ns() // 1_000_000


@dataclass(frozen=True, slots=True)
class Charge:
    """One rate-limit charge, kept so that it can be refunded if no answer leaves."""

    rule_id: str
    limits: tuple[RateLimit, ...]
    requester: Requester
    cost: int
    at_ms: int


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
        replay: ReplayGuard,
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
        self.replay = replay
        self.receipts = receipts
        self.limits = limits
        # Replay answers, rate usage and recent aggregates describe who asked
        # what and what was released: owner-only.
        private_dir(state_dir)
        private_file(state_dir / "aggregates.sqlite3")
        self.rates = RateLedger(state_dir / "rates.sqlite3")
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
            # This node's own signed bytes, stored by complete() below.
            return SignedAnswer(cached, answer_from_bytes(cached.payload))
        charges: list[Charge] = []
        try:
            answer = self._decide_and_run(verified, charges)
            sealed = seal(self.signing_key, ANSWER_TYPE, answer_to_bytes(answer))
            # The receipt is durable before the answer can leave.
            receipt_started = time.perf_counter()
            try:
                self.receipts.append(receipt_entry(self._receipt(verified, logged, answer, sealed)))
            except LedgerUnavailable as exc:
                # Where the ledger lives is for the operator's log, not the caller.
                raise LedgerUnavailable(
                    "this node cannot write its receipts ledger, so it answers nothing; "
                    "try again later (the node's operator sees why in its log)"
                ) from exc
            receipt_ms = (time.perf_counter() - receipt_started) * 1000
            try:
                self.replay.complete(request.nonce, sealed)
            except StateUnavailable:
                self._withdraw(verified, logged, answer, sealed)
                raise
        except BaseException:
            self.replay.release(request.nonce)
            for charge in charges:
                self.rates.refund(
                    charge.rule_id, charge.limits, charge.requester, charge.cost, charge.at_ms
                )
            raise
        self._answered += 1
        if self._answered % 256 == 0:
            self.replay.purge(
                now_ms(),
                keep_ms=(2 * self.limits.max_request_age_s + self.limits.clock_skew_s) * 1000,
            )
            self.rates.purge(now_ms() - 8 * 86400 * 1000)
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

    def _withdraw(
        self,
        verified: VerifiedRequest,
        logged: LoggedRequest,
        answer: QueryAnswer,
        sealed: Envelope,
    ) -> None:
        """Record that the receipted answer never left (its store write failed)."""
        query_id = verified.request.query_id
        facts = self._receipt(verified, logged, answer, sealed, status=NOT_DELIVERED)
        try:
            self.receipts.append(receipt_entry(facts))
        except LedgerUnavailable:
            # Both stores failed: the receipts ledger overstates (answered, never
            # delivered) and only this log line says so. It errs towards
            # recording, never towards releasing unrecorded.
            log.critical(
                "receipt says answered but the answer was not delivered",
                extra={"query_id": query_id, "answer_digest": facts.answer_digest},
            )
        else:
            log.error(
                "answer not delivered: the replay guard could not store it",
                extra={"query_id": query_id, "answer_digest": facts.answer_digest},
            )

    def _receipt(
        self,
        verified: VerifiedRequest,
        logged: LoggedRequest,
        answer: QueryAnswer,
        sealed: Envelope,
        *,
        status: str = "",
    ) -> ReceiptFacts:
        request = verified.request
        return ReceiptFacts(
            node_id=self.node_id,
            time_ms=answer.answered_at_ms if not status else now_ms(),
            query_id=request.query_id,
            request_digest=verified.digest,
            gateway_id=request.gateway_id,
            gateway_key_id=verified.envelope.key_id,
            gateway_signature=verified.envelope.signature,
            gateway_entry=logged.proof.entry,
            gateway_leaf_index=logged.proof.leaf_index,
            gateway_checkpoint=logged.proof.checkpoint,
            status=status or answer.status.value,
            rules=answer.decision.rules,
            obligations=answer.decision.obligations,
            answer_digest=hashlib.sha256(sealed.payload).hexdigest(),
            answer_key_id=self.signing_key.key_id,
        )

    def _decide_and_run(self, verified: VerifiedRequest, charges: list[Charge]) -> QueryAnswer:
        """Decide and run ``verified``; append any rate charge made to ``charges``."""
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
        charged_at_ms = now_ms()
        limit_reason = self.rates.charge(
            grant.rule_id, grant.rate_limits, request.requester, query_cost(query), charged_at_ms
        )
        if limit_reason:
            return deny(
                decision.rules, limit_reason, (*decision.explanation, f"node: {limit_reason}")
            )
        charges.append(
            Charge(
                grant.rule_id,
                grant.rate_limits,
                request.requester,
                query_cost(query),
                charged_at_ms,
            )
        )
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
        return answer(AnswerStatus.ANSWERED, verdict, **outcome)


def query_cost(query: Query) -> int:
    """What a query costs against rate limits: its number of selector values."""
    return max(1, sum(len(p.values) for p in query.predicates))


def close_core(core: NodeCore) -> None:
    """Release the node's files and connections."""
    if core.near is not None:
        core.near.close()
    core.replay.close()
    core.receipts.close()
    core.rates.close()
    core.executor.recent.close()
    core.engine.dispose()
