"""The investigators' answers page says what happened at each agency: a timeout or an
unreachable agency is never "no hit", and an answer whose signature failed is
never "answered". Rendered with the console's own template from the CLI's own
JSON of a search result, as the console does."""

from __future__ import annotations

import re

import jinja2

from liaison.answer_check import AnswerCheck, NodeCheck, Verdict
from liaison.cli.render import result_to_dict
from liaison.console.investigator import catalog_choices
from liaison.console.web import HERE
from liaison.messages import (
    AnswerStatus,
    Decision,
    NodeResult,
    NodeStatus,
    QueryAnswer,
    SearchInput,
    SearchResult,
)
from liaison.query import Comparator, Operation, Predicate, Query

QUERY = Query(
    dataset="media",
    operation=Operation.MATCH,
    predicates=(Predicate("sha256", Comparator.EQ, ("ab" * 32,)),),
)


def _answer(node: str, hit: bool) -> QueryAnswer:
    return QueryAnswer(
        query_id="q-1",
        node_id=node,
        request_digest=b"\0" * 32,
        answered_at_ms=1,
        status=AnswerStatus.ANSWERED,
        decision=Decision(True, ("hash-hit",)),
        hit=hit,
    )


def _rows(result: SearchResult, check: AnswerCheck) -> dict[str, str]:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(HERE / "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
    )
    html = env.get_template("inv_result.html").render(
        user=None,
        csrf="",
        sides=[],
        path="/investigate/result/k",
        title="Answers",
        shown={"kind": "search", "result": result_to_dict(result, check, "")},
        search=SearchInput(QUERY, "csam-investigation", "GEN-1"),
        catalog=catalog_choices(),
    )
    body = html.split('<table id="answers">', 1)[1].split("</table>", 1)[0]
    rows = {}
    for tr in re.findall(r"<tr>(.*?)</tr>", body, re.S)[1:]:
        cells = [
            re.sub(r"<[^>]+>|\s+", " ", c).strip()
            for c in re.findall(r"<t[hd][^>]*>(.*?)</t[hd]>", tr, re.S)
        ]
        rows[cells[0]] = " | ".join(cells[1:])
    return rows


def test_timeouts_unreachable_and_failed_signatures_are_said_as_such() -> None:
    result = SearchResult(
        query_id="q-1",
        query=QUERY,
        results=(
            NodeResult("freedonia", NodeStatus.ANSWERED, answer=_answer("freedonia", True)),
            NodeResult("ruritania", NodeStatus.TIMED_OUT, detail="no answer within 2000 ms"),
            NodeResult("sylvania", NodeStatus.UNREACHABLE, detail="connection refused"),
            NodeResult("genovia", NodeStatus.ANSWERED, answer=_answer("genovia", False)),
            NodeResult("elbonia", NodeStatus.ANSWERED, answer=_answer("elbonia", True)),
        ),
    )
    check = AnswerCheck(
        "q-1",
        (
            NodeCheck("freedonia", Verdict.VERIFIED),
            NodeCheck("ruritania", Verdict.NOT_ANSWERED),
            NodeCheck("sylvania", Verdict.NOT_ANSWERED),
            NodeCheck("genovia", Verdict.FAILED, "signature does not verify"),
            NodeCheck("elbonia", Verdict.UNVERIFIABLE, "no key for elbonia"),
        ),
    )
    rows = _rows(result, check)
    assert rows["freedonia"].startswith("answered | HIT")
    for node, said in (("ruritania", "timed out"), ("sylvania", "unreachable")):
        assert rows[node].startswith(said), rows[node]
        assert "no hit" not in rows[node] and "HIT" not in rows[node]
    # A failed signature: the answer is discarded, never shown as answered or as a hit.
    assert rows["genovia"].startswith("signature FAILED"), rows["genovia"]
    assert "no hit" not in rows["genovia"] and "answered" not in rows["genovia"]
    assert rows["elbonia"].startswith("answered, unverified"), rows["elbonia"]
