"""The federation end to end, in process: three nodes, a gateway, an investigator."""

from __future__ import annotations

from liaison import client
from liaison.demo.data import probes
from liaison.demo.run import demo_queries
from liaison.messages import NodeStatus
from tests.conftest import Federation
from tests.support import investigator_token


def test_demo_queries_get_per_agency_answers(federation: Federation) -> None:
    token = investigator_token(federation.root)
    queries = demo_queries(probes())

    match = client.search(federation.gateway.address, token, queries[0].search)
    by_node = {r.node_id: r for r in match.results}

    assert {n: r.status for n, r in by_node.items()} == {
        "freedonia": NodeStatus.ANSWERED,
        "ruritania": NodeStatus.ANSWERED,
        "sylvania": NodeStatus.ANSWERED,
    }
    assert by_node["ruritania"].answer is not None and by_node["ruritania"].answer.hit
    assert by_node["freedonia"].answer is not None and by_node["freedonia"].answer.hit
    assert by_node["sylvania"].answer is not None and not by_node["sylvania"].answer.hit

    records = client.search(federation.gateway.address, token, queries[1].search)
    by_node = {r.node_id: r for r in records.results}
    rur = by_node["ruritania"].answer
    fre = by_node["freedonia"].answer
    assert rur is not None and rur.fields == ("category", "first_seen", "case_ref")
    assert fre is not None and fre.fields == ("category", "first_seen")
    assert fre.withheld_fields == ("case_ref",)
    assert by_node["sylvania"].status is NodeStatus.DENIED
    assert by_node["sylvania"].answer is not None
    assert by_node["sylvania"].answer.decision.rules == ("default-deny",)
