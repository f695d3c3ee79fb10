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
    if op is Operation.MATCH:
        return QueryAnswer(**common, hit=answer.hit)
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
    )
