"""`liaison query --stream`: print each agency's answer as it arrives.

With a hundred agencies the investigator should not wait for the slowest: the
gateway sends each agency's verified result as soon as it is in its ledger,
and this prints it at once, checked against the agency's signature where the
key is held. The last lines say who did not answer. The exit code and the
closing verification are those of a search that was not streamed: the whole
result is checked again at the end, as one.

With ``--json`` each result is one line (``{"kind": "result", ...}``) as it
arrives, and the last line is the whole search, as ``--json`` prints it
without ``--stream``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from liaison.answer_check import SearchWindow, now_ms
from liaison.cli.exits import outcome
from liaison.cli.verify_answers import Verification, verification_to_dict
from liaison.errors import LiaisonError
from liaison.messages import NodeResult, SearchInput, SearchResult, SearchStarted, SearchSummary


def ask_streamed(
    gateway: str,
    token: str,
    search: SearchInput,
    verification: Verification,
    *,
    as_json: bool,
    tls_ca: Path | None,
) -> int:
    from liaison import client
    from liaison.cli import render
    from liaison.cli.verify_answers import counted_statuses, exit_code, nobody_asked, report

    sent = now_ms()
    started: SearchStarted | None = None
    summary: SearchSummary | None = None
    results: list[NodeResult] = []
    for event in client.search_stream(gateway, token, search, tls_ca=tls_ca):
        if isinstance(event, SearchStarted):
            started = event
            if not as_json:
                _say(render.stream_header(event, search))
        elif isinstance(event, NodeResult):
            if started is None:
                raise LiaisonError("the gateway sent an answer before saying what it asked")
            results.append(event)
            one = SearchResult(started.query_id, search.query, (event,), started.signed_request)
            check = verification.check(one, search, SearchWindow(sent, now_ms()))
            node = check.verdict_of(event.node_id) if check is not None else None
            if as_json:
                _say(json.dumps(_result_line(started.query_id, event, search, node, verification)))
            else:
                _say(render.stream_line(event, search.query, node))
        else:
            summary = event
    if started is None or summary is None:
        raise LiaisonError(
            "the gateway ended the search before every agency's result was in; "
            "ask again, or ask the gateway's operator"
        )
    result = SearchResult(started.query_id, search.query, tuple(results), started.signed_request)
    check = verification.check(result, search, SearchWindow(sent, now_ms()))
    if check is not None:
        report(check.nodes)
    nobody = nobody_asked(result)
    if nobody:
        print(f"liaison query: {nobody}", file=sys.stderr)
    if as_json:
        _say(json.dumps(render.result_to_dict(result, check, verification.source)))
    else:
        _say(render.stream_summary(result, summary))
    return exit_code(outcome(counted_statuses(result, check)), bool(check and check.failed))


def _result_line(
    query_id: str,
    result: NodeResult,
    search: SearchInput,
    node: Any,
    verification: Verification,
) -> dict[str, Any]:
    from liaison.answer_check import Verdict
    from liaison.cli.render import answer_to_dict

    failed = node is not None and node.verdict is Verdict.FAILED
    return {
        "kind": "result",
        "query_id": query_id,
        "result": {
            "node_id": result.node_id,
            "status": result.status.value,
            "detail": result.detail,
            "latency_ms": result.latency_ms,
            "answer_digest": None if failed else (result.answer_digest or None),
            "answer": answer_to_dict(result.answer, search.query.operation)
            if result.answer and not failed
            else None,
            "verification": verification_to_dict(node, verification.source),
        },
    }


def _say(text: str) -> None:
    print(text, flush=True)
