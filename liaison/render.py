"""Turning search results into tables a person can read, or JSON for machines."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from liaison.messages import NodeResult, NodeStatus, QueryAnswer, SearchResult
from liaison.query import Operation, Query


def table(headers: Sequence[str], rows: Sequence[Sequence[str]], indent: str = "") -> str:
    widths = [len(h) for h in headers]
    for row in rows:
        widths = [max(w, len(c)) for w, c in zip(widths, row, strict=True)]

    def line(cells: Sequence[str]) -> str:
        return indent + "  ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)).rstrip()

    out = [line(headers), line(["-" * w for w in widths])]
    out += [line(r) for r in rows]
    return "\n".join(out)


def describe_query(query: Query) -> str:
    preds = " and ".join(
        f"{p.field} {'=' if p.comparator.value == 'eq' else p.comparator.value} "
        + (",".join(_short(v) for v in p.values))
        for p in query.predicates
    )
    what = {
        Operation.MATCH: "hit/no-hit",
        Operation.COUNT: "count",
        Operation.COUNT_BY: f"count by {query.group_by}",
        Operation.RECORDS: f"records ({', '.join(query.fields)})",
    }[query.operation]
    return f"{query.dataset}: {what}" + (f" where {preds}" if preds else "")


def _short(value: str) -> str:
    return value if len(value) <= 20 else value[:16] + "…"


def _summary(result: NodeResult, op: Operation) -> str:
    a = result.answer
    if result.status is NodeStatus.DENIED:
        return f"denied: {result.detail}"
    if result.status is not NodeStatus.ANSWERED or a is None:
        return result.detail or result.status.value
    if op is Operation.MATCH:
        return "HIT" if a.hit else "no hit"
    if op is Operation.COUNT:
        return str(a.count) if a.count is not None else "?"
    if op is Operation.COUNT_BY:
        return f"{len(a.buckets)} groups" + (
            " (small groups hidden)" if a.buckets_suppressed else ""
        )
    text = f"{len(a.rows)} record(s)" + (" (more held)" if a.truncated else "")
    if a.withheld_fields:
        text += f"; withheld: {', '.join(a.withheld_fields)}"
    return text


def render_result(result: SearchResult, purpose: str = "", case_ref: str = "") -> str:
    op = result.query.operation
    head = f"query {result.query_id}\n  {describe_query(result.query)}"
    if purpose:
        head += f"\n  purpose {purpose}, case {case_ref}"
    rows = [
        [
            r.node_id,
            r.status.value,
            _summary(r, op),
            ", ".join(r.answer.decision.rules) if r.answer else "",
            f"{r.latency_ms:.1f}",
        ]
        for r in result.results
    ]
    parts = [head, "", table(["agency", "status", "answer", "rule", "ms"], rows)]
    for r in result.results:
        a = r.answer
        if r.status is not NodeStatus.ANSWERED or a is None:
            continue
        if op is Operation.RECORDS and a.rows:
            parts += [
                "",
                f"{r.node_id} released:",
                table(
                    list(a.fields),
                    [[c if c is not None else "" for c in row] for row in a.rows],
                    indent="  ",
                ),
            ]
        if op is Operation.COUNT_BY and (a.buckets or a.buckets_suppressed):
            cells = [[b.key if b.key is not None else "(none)", str(b.count)] for b in a.buckets]
            if a.buckets_suppressed:
                cells.append(["(others)", f"each fewer than {a.bucket_minimum}"])
            parts += [
                "",
                f"{r.node_id}:",
                table([result.query.group_by or "", "count"], cells, indent="  "),
            ]
    return "\n".join(parts)


def answer_to_dict(answer: QueryAnswer) -> dict[str, Any]:
    out: dict[str, Any] = {
        "status": answer.status.value,
        "decision": {
            "permitted": answer.decision.permitted,
            "rules": list(answer.decision.rules),
            "reason": answer.decision.reason,
            "obligations": list(answer.decision.obligations),
        },
        "answered_at_ms": answer.answered_at_ms,
    }
    out["hit"] = answer.hit
    if answer.count is not None:
        out["count"] = {
            "value": None if answer.count.below_minimum else answer.count.value,
            "below_minimum": answer.count.below_minimum,
            "minimum": answer.count.minimum,
        }
    if answer.buckets or answer.buckets_suppressed:
        out["buckets"] = [{"key": b.key, "count": b.count} for b in answer.buckets]
        out["buckets_suppressed"] = answer.buckets_suppressed
        out["bucket_minimum"] = answer.bucket_minimum
    if answer.fields:
        out["fields"] = list(answer.fields)
        out["rows"] = [list(r) for r in answer.rows]
    out["withheld_fields"] = list(answer.withheld_fields)
    out["truncated"] = answer.truncated
    return out


def result_to_dict(result: SearchResult) -> dict[str, Any]:
    q = result.query
    return {
        "query_id": result.query_id,
        "query": {
            "dataset": q.dataset,
            "operation": q.operation.value,
            "predicates": [
                {"field": p.field, "comparator": p.comparator.value, "values": list(p.values)}
                for p in q.predicates
            ],
            "fields": list(q.fields),
            "group_by": q.group_by,
            "limit": q.limit,
        },
        "results": [
            {
                "node_id": r.node_id,
                "status": r.status.value,
                "detail": r.detail,
                "latency_ms": r.latency_ms,
                "answer_digest": r.answer_digest,
                "answer": answer_to_dict(r.answer) if r.answer else None,
            }
            for r in result.results
        ],
    }


def to_json(value: Any) -> str:
    return json.dumps(value, indent=2, sort_keys=False)
