"""The node's core: from a signed request to a signed answer.

verify -> replay guard -> policy decision -> compile -> run read-only ->
obligations -> sign. Each step lives in its own module; this one only
orders them and keeps what must happen once (the replay claim) in one place.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlalchemy.exc import SQLAlchemyError

from liaison.catalog import Catalog, format_value
from liaison.envelope import ANSWER_TYPE, Envelope, seal
from liaison.errors import BackendError, CatalogError, InvalidQuery
from liaison.keys import KeyId, SigningKey
from liaison.messages import AnswerStatus, Bucket, Count, Decision, QueryAnswer
from liaison.query import Operation, validate_case_ref, validate_query
from liaison.wire import answer_to_bytes
from node import compile as sql
from node.database import MappedDataset
from node.replay import ReplayGuard
from node.verify import TrustedGateway, VerifiedRequest, verify_request
from policies import Grant, Policy, decide

log = logging.getLogger("liaison.node")

NOT_OFFERED = "dataset-not-offered"
MAX_BUCKETS = 1000


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
        limits: NodeLimits,
    ) -> None:
        self.node_id = node_id
        self.signing_key = signing_key
        self.trusted = dict(trusted)
        self.policy = policy
        self.catalog = catalog
        self.engine = engine
        self.schema = dict(schema)
        self.replay = replay
        self.limits = limits
        self._answered = 0

    def answer(self, envelope: Envelope) -> Envelope:
        """Verify ``envelope`` and return the signed answer (the same one on a retry)."""
        verified = verify_request(
            envelope,
            trusted=self.trusted,
            node_id=self.node_id,
            now_ms=now_ms(),
            max_age_s=self.limits.max_request_age_s,
            clock_skew_s=self.limits.clock_skew_s,
        )
        request = verified.request
        cached = self.replay.claim(request.nonce, verified.digest, request.expires_at_ms)
        if cached is not None:
            log.info("retry answered from store", extra={"query_id": request.query_id})
            return cached
        try:
            answer = self._decide_and_run(verified)
            sealed = seal(self.signing_key, ANSWER_TYPE, answer_to_bytes(answer))
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
            },
        )
        return sealed

    def _decide_and_run(self, verified: VerifiedRequest) -> QueryAnswer:
        request = verified.request
        query = validate_query(request.query, self.catalog)
        validate_case_ref(request.case_ref)
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

        mapped = self.schema.get(query.dataset)
        if mapped is None:
            return answer(
                AnswerStatus.DENIED,
                Decision(False, (NOT_OFFERED,), f"this node does not offer {query.dataset!r}"),
            )
        decision = decide(self.policy, request.requester, request.purpose, query)
        if not decision.permitted or decision.grant is None:
            return answer(AnswerStatus.DENIED, Decision(False, decision.rules, decision.reason))
        grant = decision.grant
        held = tuple(f for f in grant.fields if f in mapped.columns)
        not_held = tuple(f for f in grant.fields if f not in mapped.columns)
        grant = Grant(
            grant.rule_id, held, grant.withheld + not_held, grant.min_count, grant.max_rows
        )
        reason = decision.reason
        if not_held:
            reason = "; ".join(filter(None, [reason, f"not held here: {', '.join(not_held)}"]))
        verdict = Decision(True, decision.rules, reason, decision.obligations)
        if query.operation is Operation.RECORDS and not grant.fields:
            return answer(
                AnswerStatus.DENIED,
                Decision(False, decision.rules, "none of the requested fields is held here"),
            )
        parts = self._run(mapped, query, grant)
        return answer(AnswerStatus.ANSWERED, verdict, **parts)

    def _run(self, mapped: MappedDataset, query: Any, grant: Grant) -> dict[str, Any]:
        op = query.operation
        try:
            with self.engine.connect() as conn:
                if op is Operation.MATCH:
                    hit = conn.execute(sql.compile_match(mapped, query)).first() is not None
                    return {"hit": hit}
                if op is Operation.COUNT:
                    n = int(conn.execute(sql.compile_count(mapped, query)).scalar_one())
                    return {"count": _suppress(n, grant.min_count)}
                if op is Operation.COUNT_BY:
                    return self._count_by(conn, mapped, query, grant)
                return self._records(conn, mapped, query, grant)
        except SQLAlchemyError as exc:
            log.error("database error", extra={"error": type(exc).__name__, "detail": str(exc)})
            raise BackendError(
                "the agency database could not answer; the node operator's log has details"
            ) from exc

    def _records(
        self, conn: sa.Connection, mapped: MappedDataset, query: Any, grant: Grant
    ) -> dict[str, Any]:
        limit = min(query.limit or self.limits.default_limit, grant.max_rows)
        rows = conn.execute(sql.compile_records(mapped, query, grant, limit)).all()
        types = [mapped.dataset.field(f).type for f in grant.fields]
        released = tuple(
            tuple(
                None if v is None else format_value(t, v) for t, v in zip(types, row, strict=True)
            )
            for row in rows[:limit]
        )
        return {
            "fields": grant.fields,
            "rows": released,
            "withheld_fields": grant.withheld,
            "truncated": len(rows) > limit,
        }

    def _count_by(
        self, conn: sa.Connection, mapped: MappedDataset, query: Any, grant: Grant
    ) -> dict[str, Any]:
        ftype = mapped.dataset.field(query.group_by).type
        buckets = []
        suppressed = False
        for key, n in conn.execute(sql.compile_count_by(mapped, query)):
            if int(n) < grant.min_count:
                suppressed = True
                continue
            buckets.append(Bucket(None if key is None else format_value(ftype, key), int(n)))
        cap = min(grant.max_rows, MAX_BUCKETS)
        return {
            "buckets": tuple(buckets[:cap]),
            "buckets_suppressed": suppressed,
            "bucket_minimum": grant.min_count,
            "truncated": len(buckets) > cap,
        }


def _suppress(n: int, minimum: int) -> Count:
    if n < minimum:
        return Count(0, below_minimum=True, minimum=minimum)
    return Count(n, minimum=minimum)
