"""Turning search results into tables a person can read, or JSON for machines."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from liaison.messages import (
    AnswerStatus,
    Bucket,
    Decision,
    DryRunResult,
    NodeResult,
    NodeStatus,
    QueryAnswer,
    SearchInput,
    SearchResult,
    SearchStarted,
    SearchSummary,
)
from liaison.query import Comparator, Operation, Predicate, Query

# How an agency whose answer failed its signature check is shown instead of its answer.
NOT_VERIFIED = "NOT VERIFIED"
# The mark of an answer no key held here could check: the gateway's word alone.
UNVERIFIED = "UNVERIFIED"

if TYPE_CHECKING:
    # Type names only: rendering never runs policy code.
    from liaison.answer_check import AnswerCheck, NodeCheck
    from policies.analysis import Explanation, Finding
    from policies.cases import CaseResult
    from policies.engine import PolicyDecision
    from policies.model import Policy


def table(headers: Sequence[str], rows: Sequence[Sequence[str]], indent: str = "") -> str:
    widths = [len(h) for h in headers]
    for row in rows:
        widths = [max(w, len(c)) for w, c in zip(widths, row, strict=True)]

    def line(cells: Sequence[str]) -> str:
        return indent + "  ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)).rstrip()

    out = [line(headers), line(["-" * w for w in widths])]
    out += [line(r) for r in rows]
    return "\n".join(out)


def _describe_predicate(p: Predicate) -> str:
    values = ",".join(_short(v) for v in p.values[:MAX_VALUES_SHOWN])
    if len(p.values) > MAX_VALUES_SHOWN:
        values += f" (+{len(p.values) - MAX_VALUES_SHOWN} more)"
    if p.comparator is Comparator.NEAR:
        return f"{p.field} within {p.max_distance} bits of {values}"
    return f"{p.field} {'=' if p.comparator is Comparator.EQ else p.comparator.value} {values}"


def describe_query(query: Query) -> str:
    preds = " and ".join(_describe_predicate(p) for p in query.predicates)
    what = {
        Operation.MATCH: "hit/no-hit",
        Operation.COUNT: "count",
        Operation.COUNT_BY: f"count by {query.group_by}",
        Operation.RECORDS: f"records ({', '.join(query.fields)})",
    }[query.operation]
    return f"{query.dataset}: {what}" + (f" where {preds}" if preds else "")


def _short(value: str) -> str:
    return value if len(value) <= 20 else value[:16] + "…"


MAX_VALUES_SHOWN = 3


def _summary(result: NodeResult, op: Operation) -> str:
    a = result.answer
    if result.status is NodeStatus.DENIED:
        # The reason the node signed; ``detail`` is the gateway's own, unsigned word.
        reason = a.decision.reason if a is not None else ""
        return f"denied: {reason}" if reason else "denied"
    if result.status is not NodeStatus.ANSWERED or a is None:
        return result.detail or result.status.value
    if op is Operation.MATCH:
        return ("HIT" + _follow_up_note(a)) if a.hit else "no hit"
    if op is Operation.COUNT:
        return str(a.count) if a.count is not None else "?"
    if op is Operation.COUNT_BY:
        return f"{len(a.buckets)} groups" + (
            " (small groups hidden)" if a.buckets_suppressed else ""
        )
    text = f"{len(a.rows)} record(s)" + (" (more held)" if a.truncated else "")
    if a.withheld_fields:
        text += f"; withheld: {', '.join(a.withheld_fields)}"
    return text + _follow_up_note(a)


def _follow_up_note(answer: QueryAnswer) -> str:
    """The reference a follow-up request names, and whether the holder was told."""
    notes = [f"ref {ref}" for ref in answer.record_refs]
    if answer.holder_notified:
        notes.append("holder notified")
    return f" ({'; '.join(notes)})" if notes else ""


def _cell(bucket: Bucket) -> str:
    """A count-by cell; an approximate one says by how much it may be off."""
    if bucket.noise_bound:
        return f"≈ {bucket.count} (±{bucket.noise_bound})"
    return str(bucket.count)


def render_result(
    result: SearchResult,
    purpose: str = "",
    case_ref: str = "",
    check: AnswerCheck | None = None,
) -> str:
    """The table of one search; with ``check``, a column says what was verified.

    An agency whose answer FAILED its check is shown as NOT VERIFIED, never
    with the answer the gateway claimed for it; one the gateway left out of
    the result (but sent the request to) gets a row of its own.
    """
    op = result.query.operation
    head = f"query {result.query_id}\n  {describe_query(result.query)}"
    if purpose:
        head += f"\n  purpose {purpose}, case {case_ref}"
    failed = {n.node_id: n for n in check.failed} if check else {}
    unverified = _unverified(result, check)
    rows = []
    for r in result.results:
        trusted = r.node_id not in failed
        row = [
            r.node_id,
            f"{r.status.value}, {UNVERIFIED}" if r.node_id in unverified else r.status.value,
            _summary(r, op) if trusted else NOT_VERIFIED,
            ", ".join(r.answer.decision.rules) if r.answer and trusted else "",
        ]
        if check is not None:
            row.append(check.verdict_of(r.node_id).verdict.value)
        rows.append([*row, f"{r.latency_ms:.1f}"])
    listed = {r.node_id for r in result.results}
    for node_id, node in failed.items():
        if node_id not in listed:
            rows.append([node_id, "-", NOT_VERIFIED, "", node.verdict.value, ""])
    headers = ["agency", "status", "answer", "rule", *(["check"] if check else []), "ms"]
    parts = [head, "", table(headers, rows)]
    for r in result.results:
        a = r.answer
        if r.status is not NodeStatus.ANSWERED or a is None or r.node_id in failed:
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
            cells = [[b.key if b.key is not None else "(none)", _cell(b)] for b in a.buckets]
            if a.buckets_suppressed:
                cells.append(["(others)", f"each fewer than {a.bucket_minimum}"])
            parts += [
                "",
                f"{r.node_id}:",
                table([result.query.group_by or "", "count"], cells, indent="  "),
            ]
    referring = [
        r for r in result.results if r.answer and r.answer.record_refs and r.node_id not in failed
    ]
    if referring:
        first = referring[0]
        assert first.answer is not None
        parts += [
            "",
            "Ask a holding agency for more (its duty officer decides, field by field):",
            f"  liaison followup request --query-id {result.query_id} --node {first.node_id} "
            f"--ref {first.answer.record_refs[0]} --fields FIELD,... --purpose {purpose or 'P'} "
            f"--case-ref {case_ref or 'C'} --urgency urgent",
        ]
    if unverified:
        parts += [
            "",
            f"{UNVERIFIED}: no key is held here for {', '.join(unverified)}: what is shown for "
            "them rests on the gateway's word alone (an agency you never heard of may be the "
            "gateway's invention); add their <node_id>.pub to the node keys to check them",
        ]
    if failed:
        parts += [
            "",
            f"{NOT_VERIFIED}: what the gateway shows for these agencies is not what "
            "they signed; do not rely on it:",
        ]
        parts += [f"  {node}" for node in failed.values()]
    return "\n".join(parts)


def stream_header(started: SearchStarted, search: SearchInput) -> str:
    """The first lines of a streamed search, before any agency has answered."""
    return (
        f"query {started.query_id}\n  {describe_query(search.query)}\n"
        f"  purpose {search.purpose}, case {search.case_ref}\n"
        f"  asked {len(started.asked)} agencies; answers as they arrive:\n"
    )


def stream_line(result: NodeResult, query: Query, node: NodeCheck | None) -> str:
    """One agency's answer in a streamed search, as it arrives (with what it released)."""
    from liaison.answer_check import Verdict

    failed = node is not None and node.verdict is Verdict.FAILED
    status = result.status.value
    if node is not None and node.verdict is Verdict.UNVERIFIABLE and result.answer is not None:
        status += f", {UNVERIFIED}"
    answer = NOT_VERIFIED if failed else _summary(result, query.operation)
    rules = ", ".join(result.answer.decision.rules) if result.answer and not failed else ""
    check = f"  [{node.verdict.value}]" if node is not None else ""
    line = (
        f"  {result.node_id:<14} {status:<12} {answer}"
        + (f"  (rule {rules})" if rules else "")
        + f"  {result.latency_ms:.1f} ms{check}"
    )
    a = result.answer
    if failed or a is None or result.status is not NodeStatus.ANSWERED:
        return line
    if query.operation is Operation.RECORDS and a.rows:
        rows = [[c if c is not None else "" for c in row] for row in a.rows]
        return line + "\n" + table(list(a.fields), rows, indent="      ")
    if query.operation is Operation.COUNT_BY and a.buckets:
        cells = [[b.key if b.key is not None else "(none)", _cell(b)] for b in a.buckets]
        return line + "\n" + table([query.group_by or "", "count"], cells, indent="      ")
    return line


def stream_summary(result: SearchResult, summary: SearchSummary) -> str:
    """The closing lines of a streamed search: how many answered, and who did not."""
    asked = [r for r in result.results if r.status is not NodeStatus.NOT_ASKED]
    answered = sum(1 for r in asked if r.status is NodeStatus.ANSWERED)
    text = f"\n{answered} of {len(asked)} agencies asked answered"
    by_node = {r.node_id: r for r in result.results}
    if summary.not_answered:
        missing = [
            f"{n} ({by_node[n].status.value})" if n in by_node else n for n in summary.not_answered
        ]
        text += f"; no answer from {', '.join(missing)}"
    return text + "."


def _unverified(result: SearchResult, check: AnswerCheck | None) -> list[str]:
    """Agencies shown as answering or denying that no key held here could check."""
    from liaison.answer_check import Verdict

    if check is None:
        return []
    return [
        r.node_id
        for r in result.results
        if r.status in (NodeStatus.ANSWERED, NodeStatus.DENIED)
        and check.verdict_of(r.node_id).verdict is Verdict.UNVERIFIABLE
    ]


def _decision_to_dict(decision: Decision) -> dict[str, Any]:
    return {
        "permitted": decision.permitted,
        "rules": list(decision.rules),
        "reason": decision.reason,
        "obligations": list(decision.obligations),
    }


def answer_to_dict(answer: QueryAnswer, operation: Operation) -> dict[str, Any]:
    """A node's signed answer, every key always present.

    Keys that belong to another operation, or to an answer that was denied,
    are null: ``hit`` is true or false only for an answered match, ``count``
    only for an answered count, and so on (see query-output.schema.json).
    """
    answered = answer.status is AnswerStatus.ANSWERED
    op = operation if answered else None
    count = answer.count if op is Operation.COUNT else None
    return {
        "status": answer.status.value,
        "decision": _decision_to_dict(answer.decision),
        "answered_at_ms": answer.answered_at_ms,
        "hit": answer.hit if op is Operation.MATCH else None,
        "count": None
        if count is None
        else {
            "value": None if count.below_minimum else count.value,
            "below_minimum": count.below_minimum,
            "minimum": count.minimum,
            # Non-zero: the value is approximate, the true count within this many of it.
            "noise_bound": count.noise_bound,
        },
        "buckets": [
            {"key": b.key, "count": b.count, "noise_bound": b.noise_bound} for b in answer.buckets
        ]
        if op is Operation.COUNT_BY
        else None,
        "buckets_suppressed": answer.buckets_suppressed if op is Operation.COUNT_BY else None,
        "bucket_minimum": answer.bucket_minimum if op is Operation.COUNT_BY else None,
        "fields": list(answer.fields) if op is Operation.RECORDS else None,
        "rows": [list(r) for r in answer.rows] if op is Operation.RECORDS else None,
        "withheld_fields": list(answer.withheld_fields) if op is Operation.RECORDS else None,
        "truncated": answer.truncated if op is Operation.RECORDS else None,
        "record_refs": list(answer.record_refs),
        "holder_notified": answer.holder_notified,
    }


def tally(statuses: Sequence[NodeStatus]) -> dict[str, int]:
    """How many agencies were asked, answered, did not answer, were not asked."""
    not_asked = sum(1 for s in statuses if s is NodeStatus.NOT_ASKED)
    answered = sum(1 for s in statuses if s is NodeStatus.ANSWERED)
    return {
        "asked": len(statuses) - not_asked,
        "answered": answered,
        "not_answered": len(statuses) - not_asked - answered,
        "not_asked": not_asked,
    }


def result_to_dict(
    result: SearchResult, check: AnswerCheck | None = None, not_checked: str = ""
) -> dict[str, Any]:
    """`liaison query --json`: one federated search (the "search" kind of the schema).

    With ``check``, each result's ``verification`` is its verdict, and an
    answer that FAILED its check is null (with its digest): it is not what the
    agency signed. Without, every verdict is "not checked" (``not_checked``
    says why). An agency that FAILED, or answered unverifiably, is counted as
    not answered. ``detail`` and ``latency_ms`` are the gateway's own word
    (not signed); the node's signed reason is ``answer.decision.reason``.
    """
    from liaison.cli.verify_answers import search_verification, verification_to_dict

    q = result.query
    failed = {n.node_id for n in check.failed} if check else set()
    unverified = set(_unverified(result, check))
    return {
        "kind": "search",
        "query_id": result.query_id,
        "query": {**query_to_dict(q), "limit": q.limit},
        # As the exit code counts them: neither a FAILED nor an unverifiable
        # answer counts as answered.
        "agencies": tally(
            [
                NodeStatus.ERROR
                if r.node_id in failed
                or (r.node_id in unverified and r.status is NodeStatus.ANSWERED)
                else r.status
                for r in result.results
            ]
        ),
        "verification": search_verification(check, not_checked),
        "results": [
            {
                "node_id": r.node_id,
                "status": r.status.value,
                "detail": r.detail,
                "latency_ms": r.latency_ms,
                "answer_digest": (r.answer_digest or None) if r.node_id not in failed else None,
                "answer": answer_to_dict(r.answer, q.operation)
                if r.answer and r.node_id not in failed
                else None,
                "verification": verification_to_dict(
                    check.verdict_of(r.node_id) if check else None, not_checked
                ),
            }
            for r in result.results
        ],
    }


def to_json(value: Any) -> str:
    return json.dumps(value, indent=2, sort_keys=False)


# ------------------------------------------------------------ policy tools


def query_to_dict(query: Query) -> dict[str, Any]:
    return {
        "dataset": query.dataset,
        "operation": query.operation.value,
        "predicates": [
            {
                "field": p.field,
                "comparator": p.comparator.value,
                "values": list(p.values),
                "max_distance": p.max_distance,
            }
            for p in query.predicates
        ],
        "fields": list(query.fields),
        "group_by": query.group_by,
    }


def _severity_order(finding: Finding) -> int:
    return ("error", "warning", "note").index(finding.severity.value)


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def findings_summary(findings: Sequence[Finding]) -> str:
    tally = {"error": 0, "warning": 0, "note": 0}
    for f in findings:
        tally[f.severity.value] += 1
    parts = [_plural(n, word) for word, n in tally.items() if n]
    return ", ".join(parts) if parts else "no problems found"


def render_findings(path: Path, policy: Policy | None, findings: Sequence[Finding]) -> str:
    """The report of `liaison policy check`: a summary line, then one row per finding."""
    if policy is None:
        head = f"{path}: the node would refuse to load this policy"
    else:
        permits, forbids = len(policy.permits), len(policy.forbids)
        approves = len(policy.rules) - permits - forbids
        kinds = [_plural(permits, "permit"), _plural(forbids, "forbid")]
        if approves:
            kinds.append(_plural(approves, "approve rule"))
        head = (
            f"{path}: policy of {policy.agency}, {_plural(len(policy.rules), 'rule')} "
            f"({', '.join(kinds)})"
        )
    lines = [head, f"  {findings_summary(findings)}"]
    if findings:
        ordered = sorted(findings, key=_severity_order)
        rows = [[f.severity.value, f.rule or "(policy)", f.message] for f in ordered]
        lines += ["", table(["severity", "rule", "finding"], rows)]
    return "\n".join(lines)


def findings_to_dict(
    path: Path, policy: Policy | None, findings: Sequence[Finding], *, strict: bool
) -> dict[str, Any]:
    tally = {"error": 0, "warning": 0, "note": 0}
    for f in findings:
        tally[f.severity.value] += 1
    ok = tally["error"] == 0 and not (strict and tally["warning"])
    return {
        "file": str(path),
        "agency": policy.agency if policy else None,
        "loads": policy is not None,
        "ok": ok,
        "strict": strict,
        "errors": tally["error"],
        "warnings": tally["warning"],
        "notes": tally["note"],
        "findings": [
            {
                "severity": f.severity.value,
                "kind": f.kind.value,
                "rule": f.rule or None,
                "message": f.message,
            }
            for f in sorted(findings, key=_severity_order)
        ],
    }


def decision_to_dict(decision: PolicyDecision) -> dict[str, Any]:
    grant = decision.grant
    return {
        "decision": "permit" if decision.permitted else "deny",
        "permitted": decision.permitted,
        "rules": list(decision.rules),
        "reason": decision.reason,
        "released": list(grant.fields) if grant else [],
        "withheld": list(grant.withheld) if grant else [],
        "obligations": list(decision.obligations),
        "explanation": list(decision.explanation),
    }


def headline(decision: PolicyDecision) -> str:
    rules = ", ".join(decision.rules)
    if decision.permitted:
        return f"PERMIT under {rules}"
    return f"DENY by {rules}"


def _pairs(pairs: Sequence[tuple[str, str]], indent: str = "  ") -> str:
    width = max(len(k) for k, _ in pairs)
    return "\n".join(f"{indent}{k.ljust(width)}  {v}".rstrip() for k, v in pairs)


def requester_text(agency: str, roles: Sequence[str], attributes: dict[str, str]) -> str:
    text = f"{agency} (roles {', '.join(roles) or 'none'}"
    if attributes:
        text += "; attributes " + ", ".join(f"{k}={v}" for k, v in sorted(attributes.items()))
    return text + ")"


def render_explanation(
    explanation: Explanation,
    *,
    purpose: str,
    case_ref: str,
    legal_basis: str,
    query: Query,
    agency: str,
    roles: Sequence[str],
    attributes: dict[str, str],
) -> str:
    """The report of `liaison policy explain`."""
    d = explanation.decision
    lines = [f"decision: {headline(d)}"]
    if d.reason:
        lines.append(f"reason:   {d.reason}")
    lines += [
        "",
        "request",
        _pairs(
            [
                ("requester", requester_text(agency, roles, attributes)),
                ("purpose", purpose),
                ("case", case_ref),
                ("legal basis", legal_basis or "none cited"),
                ("query", describe_query(query)),
            ]
        ),
    ]
    if explanation.considered:
        rows = [[r.rule, r.effect or "-", r.outcome] for r in explanation.considered]
        lines += ["", "rules in scope", table(["rule", "effect", "outcome"], rows, indent="  ")]
    if explanation.out_of_scope:
        rows = [[r.rule, r.effect, r.outcome] for r in explanation.out_of_scope]
        lines += ["", "rules out of scope", table(["rule", "effect", "why not"], rows, indent="  ")]
    grant = d.grant
    if grant is not None:
        lines += ["", "obligations"] + [f"  - {o}" for o in d.obligations]
        if query.operation is Operation.RECORDS:
            lines += [
                "",
                f"released: {', '.join(grant.fields) or 'nothing'}",
                f"withheld: {', '.join(grant.withheld) or 'nothing'}",
            ]
    return "\n".join(lines)


def explanation_to_dict(
    explanation: Explanation,
    *,
    purpose: str,
    case_ref: str,
    legal_basis: str,
    query: Query,
    agency: str,
    roles: Sequence[str],
    attributes: dict[str, str],
) -> dict[str, Any]:
    return {
        "request": {
            "agency": agency,
            "roles": list(roles),
            "attributes": dict(attributes),
            "purpose": purpose,
            "case_ref": case_ref,
            "legal_basis": legal_basis,
            "query": query_to_dict(query),
        },
        **decision_to_dict(explanation.decision),
        "considered": [
            {"rule": r.rule, "effect": r.effect or None, "outcome": r.outcome}
            for r in explanation.considered
        ],
        "out_of_scope": [
            {"rule": r.rule, "effect": r.effect, "why_not": r.outcome}
            for r in explanation.out_of_scope
        ],
    }


def _case_outcome(result: CaseResult) -> str:
    """A query case's decision; for a follow-up case, what a duty officer may release."""
    bounds = result.bounds
    if bounds is None:
        return headline(result.decision).lower()
    if not bounds.decidable:
        if bounds.forbidden_by:
            why = f"forbidden by {', '.join(bounds.forbidden_by)}"
        else:
            why = "no approve rule applies" if not bounds.rules else "every field refused"
        return f"follow-up: nothing may be released ({why})"
    return (
        f"follow-up: an officer may release {', '.join(bounds.decidable)} "
        f"under {', '.join(bounds.rules)}"
    )


def render_case_results(policy_path: Path, cases_path: Path, results: Sequence[CaseResult]) -> str:
    """The report of `liaison policy test`: one row per case, then what differed."""
    rows = []
    for r in results:
        rows.append(["pass" if r.passed else "FAIL", r.case.name, _case_outcome(r)])
    lines = [f"{cases_path} against {policy_path}", "", table(["result", "case", "decision"], rows)]
    failed = [r for r in results if not r.passed]
    for r in failed:
        lines += ["", f"FAIL {r.case.name}"] + [f"  - {f}" for f in r.failures]
    passed = len(results) - len(failed)
    lines += ["", f"{_plural(len(results), 'case')}: {passed} passed, {len(failed)} failed"]
    return "\n".join(lines)


def case_results_to_dict(
    policy_path: Path, cases_path: Path, results: Sequence[CaseResult]
) -> dict[str, Any]:
    failed = sum(1 for r in results if not r.passed)
    return {
        "policy": str(policy_path),
        "cases": str(cases_path),
        "passed": len(results) - failed,
        "failed": failed,
        "results": [
            {
                "name": r.case.name,
                "passed": r.passed,
                "failures": list(r.failures),
                "query": query_to_dict(r.case.query),
                **decision_to_dict(r.decision),
            }
            for r in results
        ],
    }


def render_dry_run(result: DryRunResult, purpose: str = "", case_ref: str = "") -> str:
    """What each node's policy would decide, without any data being read."""
    head = f"dry run (no data read, nothing released)\n  {describe_query(result.query)}"
    if purpose:
        head += f"\n  purpose {purpose}, case {case_ref}"
    rows = []
    for r in result.results:
        d = r.decision
        policy = r.policy_sha256[:12]
        if d is None:
            rows.append([r.node_id, "unknown", "", policy, r.detail or "policy not available"])
        else:
            verdict = "would permit" if d.permitted else "would deny"
            rows.append([r.node_id, verdict, ", ".join(d.rules), policy, d.reason])
    headers = ["agency", "decision", "rules", "policy", "reason"]
    return "\n".join([head, "", table(headers, rows)])


def dry_run_to_dict(result: DryRunResult) -> dict[str, Any]:
    return {
        "kind": "dry_run",
        "dry_run": True,
        "query": {**query_to_dict(result.query), "limit": result.query.limit},
        # An agency answers a dry run with its published policy's decision.
        "agencies": tally(
            [
                NodeStatus.ANSWERED if r.decision is not None else NodeStatus.ERROR
                for r in result.results
            ]
        ),
        "results": [
            {
                "node_id": r.node_id,
                "policy_sha256": r.policy_sha256 or None,
                "detail": r.detail,
                "decision": None
                if r.decision is None
                else {
                    "decision": "permit" if r.decision.permitted else "deny",
                    "permitted": r.decision.permitted,
                    "rules": list(r.decision.rules),
                    "reason": r.decision.reason,
                    "obligations": list(r.decision.obligations),
                    "explanation": list(r.decision.explanation),
                },
            }
            for r in result.results
        ],
    }
