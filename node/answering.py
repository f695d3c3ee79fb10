"""The node's core: from a signed request to a signed answer.

verify -> proof of logging -> replay guard -> policy decision -> compile ->
run read-only -> obligations -> sign -> receipt. Each step lives in its own
module; this one only orders them and keeps what must happen once (the
replay claim, the receipt) in one place.
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
from liaison.errors import CatalogError, ConfigError, InvalidQuery, LedgerUnavailable
from liaison.keys import KeyId, SigningKey
from liaison.ledger.entries import ReceiptFacts, receipt_entry
from liaison.ledger.log import Ledger
from liaison.ledger.logged import LoggedRequest, SignedRequest, check_logged
from liaison.messages import AnswerStatus, Decision, QueryAnswer
from liaison.query import (
    Operation,
    Query,
    validate_case_ref,
    validate_legal_basis,
    validate_query,
)
from liaison.wire import PublishedPolicy, answer_to_bytes, published_policy_to_bytes
from node.database import MappedDataset
from node.differencing import RecentAggregates
from node.execute import Executor, Refusal
from node.near import NearIndexes
from node.ratelimit import RateLedger
from node.replay import ReplayGuard
from node.verify import TrustedGateway, VerifiedRequest, verify_request
from policies import Policy, decide

log = logging.getLogger("liaison.node")

NOT_OFFERED = "dataset-not-offered"


def now_ms() -> int:
    return time.time_ns() // 1_000_000


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
        self.rates = RateLedger(state_dir / "rates.sqlite3")
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

    def answer(self, signed: SignedRequest) -> Envelope:
        """Verify ``signed`` and return the signed answer (the same one on a retry)."""
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
        # Before the nonce is spent: a gateway that did not log gets nothing.
        logged = check_logged(
            signed.proof,
            request=request,
            request_digest=verified.digest,
            request_key_id=envelope.key_id,
            gateway_key=self.trusted[envelope.key_id].key,
        )
        cached = self.replay.claim(request.nonce, verified.digest, request.expires_at_ms)
        if cached is not None:
            log.info("retry answered from store", extra={"query_id": request.query_id})
            return cached
        try:
            answer = self._decide_and_run(verified)
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
            self.replay.complete(request.nonce, sealed)
        except BaseException:
            self.replay.release(request.nonce)
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
        return sealed

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
        )

    def _decide_and_run(self, verified: VerifiedRequest) -> QueryAnswer:
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
        limit_reason = self.rates.charge(
            grant.rule_id, grant.rate_limits, request.requester, query_cost(query), now_ms()
        )
        if limit_reason:
            return deny(
                decision.rules, limit_reason, (*decision.explanation, f"node: {limit_reason}")
            )
        outcome = self.executor.run(mapped, query, grant, request.requester.agency, now_ms())
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
