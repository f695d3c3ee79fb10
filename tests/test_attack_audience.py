"""A request is read by every node in its audience: keep the audience minimal (issue 9, item 1).

The gateway asks only nodes that offer the dataset (from their Describe), so
a node that does not map `cases` never learns who asked about which case.
"""

from __future__ import annotations

import sqlite3

from liaison import client
from liaison.ledger.entries import EntryKind, parse_entry
from liaison.messages import NodeStatus, SearchInput
from liaison.query import Comparator, Operation, Predicate, Query
from tests.conftest import Federation
from tests.support import investigator_token


def nonces(federation: Federation, node_id: str) -> int:
    # Replay records live in the node's receipts ledger, committed with the receipts.
    db = federation.root / "nodes" / node_id / "state" / "receipts.sqlite3"
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        return int(conn.execute("SELECT count(*) FROM liaison_node_seen_nonce").fetchone()[0])
    finally:
        conn.close()


def test_nodes_not_offering_the_dataset_never_see_the_request(federation: Federation) -> None:
    # prepare: Sylvania maps media and accounts, not cases
    token = investigator_token(federation.root)
    before = nonces(federation, "sylvania")
    search = SearchInput(
        Query("cases", Operation.MATCH, (Predicate("case_ref", Comparator.EQ, ("RUR-1",)),)),
        "csam-investigation",
        "GEN-TEST-1",
    )

    # execute
    result = client.search(federation.gateway.address, token, search)

    # assert: the request was addressed to, and sent to, the two that offer it,
    # and the investigator sees why the third is missing
    statuses = {r.node_id: (r.status, r.detail) for r in result.results}
    assert statuses.pop("sylvania") == (NodeStatus.NOT_ASKED, "not asked: does not offer 'cases'")
    assert sorted(statuses) == ["freedonia", "ruritania"]
    store = federation.gateway.core.ledger.store
    (request,) = [
        e
        for e in (parse_entry(raw) for _, _, raw in store.rows())
        if e.kind is EntryKind.REQUEST and e.query_id == result.query_id
    ]
    assert request.fields["targets"] == ["freedonia", "ruritania"]
    assert nonces(federation, "sylvania") == before


def test_a_dataset_every_node_offers_goes_to_every_node(federation: Federation) -> None:
    token = investigator_token(federation.root)
    search = SearchInput(
        Query("media", Operation.MATCH, (Predicate("sha256", Comparator.EQ, ("ab" * 32,)),)),
        "csam-investigation",
        "GEN-TEST-1",
    )

    result = client.search(federation.gateway.address, token, search)

    assert sorted(r.node_id for r in result.results) == ["freedonia", "ruritania", "sylvania"]
