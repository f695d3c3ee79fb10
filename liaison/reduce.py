"""What a gateway keeps of a node's answer: only the parts the query asked for.

Shared by the gateway, which reduces every verified answer before passing it
on, and by an investigator's client, which recomputes the reduction from the
node's signed answer to check that the gateway showed exactly that
(``liaison.answer_check``). Both must compute the same thing, so there is one
function.
"""

from __future__ import annotations

from typing import Any

from liaison.messages import AnswerStatus, QueryAnswer
from liaison.query import Operation, Query

# References kept of one answer: as many as one follow-up request may name.
MAX_REFS = 16


def reduce_to_query(answer: QueryAnswer, query: Query) -> QueryAnswer:
    """Keep only the parts of ``answer`` that ``query`` asked for."""
    # Built once per answer, with only what is kept (no copy of a bare answer
    # and then another): the gateway does this for every node of every search.
    common: dict[str, Any] = {
        "query_id": answer.query_id,
        "node_id": answer.node_id,
        "request_digest": answer.request_digest,
        "answered_at_ms": answer.answered_at_ms,
        "status": answer.status,
        "decision": answer.decision,
    }
    if answer.status is not AnswerStatus.ANSWERED:
        return QueryAnswer(**common)
    op = query.operation
    # What a follow-up request needs: the node's references to what matched
    # (a few at most; a node issues one per answer), and whether it was told.
    follow_up: dict[str, Any] = {}
    if answer.record_refs:
        follow_up["record_refs"] = answer.record_refs[:MAX_REFS]
    if answer.holder_notified:
        follow_up["holder_notified"] = True
    if op is Operation.MATCH:
        return QueryAnswer(**common, hit=answer.hit, **follow_up)
    if op is Operation.COUNT:
        return QueryAnswer(**common, count=answer.count)
    if op is Operation.COUNT_BY:
        return QueryAnswer(
            **common,
            buckets=answer.buckets,
            buckets_suppressed=answer.buckets_suppressed,
            bucket_minimum=answer.bucket_minimum,
            truncated=answer.truncated,
        )
    asked = set(query.fields)
    keep = [i for i, f in enumerate(answer.fields) if f in asked and f not in answer.fields[:i]]
    limit = query.limit or len(answer.rows)
    rows = tuple(
        tuple(row[i] for i in keep) for row in answer.rows[:limit] if len(row) == len(answer.fields)
    )
    return QueryAnswer(
        **common,
        fields=tuple(answer.fields[i] for i in keep),
        rows=rows,
        withheld_fields=tuple(f for f in answer.withheld_fields if f in asked),
        truncated=answer.truncated or len(answer.rows) > limit,
        **follow_up,
    )
