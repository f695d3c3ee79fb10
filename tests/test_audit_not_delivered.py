"""A node's compensating receipt ("not-delivered") as reconciliation reads it.

Earlier releases stored an answer for retries in a second commit after its
receipt, and when that commit failed they added a second receipt for the
same request saying the answer never left (issue 9, "found under faults").
A node now commits the receipt and the stored answer together, so it writes
no such receipt (tests/test_attack_replay.py shows the failure leaving
nothing), but ledgers written before hold them for years: reconciliation
must read such a pair as one request that was not answered, not as an answer
the gateway lost, and must still catch a gateway that claims to hold an
answer the node says it never sent.
"""

from __future__ import annotations

from pathlib import Path

from liaison.keys import VerifyingKey
from liaison.ledger.reconcile import NodeLedger, reconcile
from liaison.ledger.store import LedgerStore
from tests.ledger_parties import Parties, parties

NODE = "ruritania"


def reconciled(party: Parties) -> list[tuple[str, str, bool]]:
    gateway = LedgerStore(str(party.gateway_ledger), create=False)
    stores = {n: LedgerStore(str(party.receipts(n)), create=False) for n in party.node_keys}
    try:
        report = reconcile(
            gateway,
            VerifyingKey.from_pem_file(party.gateway_pub),
            [
                NodeLedger(n, store, VerifyingKey.from_pem_file(party.node_pub(n)))
                for n, store in stores.items()
            ],
        )
        assert report.gateway.ok and all(r.ok for r in report.nodes.values()), report
        return [(d.node_id, d.message, d.problem) for d in report.differences]
    finally:
        gateway.close()
        for store in stores.values():
            store.close()


def test_an_answer_withdrawn_by_the_node_reconciles_with_the_gateways_error(
    tmp_path: Path,
) -> None:
    party = parties(tmp_path / "federation")
    with party.session() as run:
        run.ask()
        run.ask(undelivered=(NODE,))
        run.ask()

    assert reconciled(party) == []


def test_a_gateway_holding_an_answer_the_node_never_sent_is_a_problem(tmp_path: Path) -> None:
    party = parties(tmp_path / "federation")
    with party.session() as run:
        asked = run.ask(undelivered=(NODE,), gateway_saw_undelivered=True)

    differences = reconciled(party)

    assert differences == [
        (
            NODE,
            "the node recorded this answer as not delivered, yet the gateway recorded "
            "receiving it (same answer digest): one of the two ledgers is wrong",
            True,
        )
    ], asked
