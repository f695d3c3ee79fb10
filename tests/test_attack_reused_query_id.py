"""A query id used twice, and the audit that must not be fooled by it (issue 9, item A).

The attack, as an insider holding the gateway's key ran it on the demo
federation: sign a request, log it only in a shadow ledger kept with the same
key (the node checks the proof and answers), then send a second, properly
logged request under the same query id. Reconciling by query id let the
second receipt hide the first. Here the same histories are written with the
real ledger classes and keys, and `liaison audit` runs as a subprocess on them.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.ledger_parties import Asked, Parties, parties
from tests.support import Run, liaison

NODE = "ruritania"


@dataclass(frozen=True, slots=True)
class Attack:
    parties: Parties
    honest: tuple[Asked, ...]
    unlogged: Asked
    logged: Asked


@pytest.fixture(scope="module")
def attack_template(tmp_path_factory: pytest.TempPathFactory) -> Attack:
    """Two honest queries, then the unlogged request Q, then a logged request under Q."""
    root = tmp_path_factory.mktemp("reused-query-id") / "federation"
    party = parties(root)
    with party.session() as honest:
        first = (honest.ask(), honest.ask())
    with party.session(log_in=root / "insider" / "shadow.sqlite3") as shadow:
        unlogged = shadow.ask()
    with party.session() as again:
        logged = again.ask(query_id=unlogged.query_id)
    return Attack(party, first, unlogged, logged)


@pytest.fixture
def attack(attack_template: Attack, tmp_path: Path) -> Attack:
    root = tmp_path / "federation"
    shutil.copytree(attack_template.parties.root, root)
    moved = Parties(root, attack_template.parties.gateway_key, attack_template.parties.node_keys)
    return Attack(moved, attack_template.honest, attack_template.unlogged, attack_template.logged)


def audit(attack: Attack, *args: str | Path) -> Run:
    return liaison("audit", *args, cwd=attack.parties.root)


def reconcile_json(attack: Attack) -> dict[str, object]:
    p = attack.parties
    run = audit(
        attack,
        "reconcile",
        "--gateway",
        p.gateway_ledger,
        "--gateway-key",
        p.gateway_pub,
        *(a for node in p.node_keys for a in ("--node", node, p.receipts(node), p.node_pub(node))),
        "--json",
    )
    assert run.returncode == 1, run
    assert "Traceback" not in run.stderr, run.stderr
    doc: dict[str, object] = json.loads(run.stdout)
    return doc


def test_the_attack_is_what_the_issue_describes(attack: Attack) -> None:
    # The same query id, two different requests, and only the second in the gateway's log.
    assert attack.unlogged.query_id == attack.logged.query_id
    assert attack.unlogged.request_digest != attack.logged.request_digest
    shown = audit(attack, "show", attack.parties.gateway_ledger, "--json")
    requests = [r for r in json.loads(shown.stdout) if r["kind"] == "request"]
    assert [r["query_id"] for r in requests].count(attack.logged.query_id) == 1
    # ...while the gateway's ledger, on its own, is a clean log.
    alone = audit(
        attack, "verify", attack.parties.gateway_ledger, "--key", attack.parties.gateway_pub
    )
    assert alone.returncode == 0, alone


def test_reconcile_reports_the_receipt_of_the_unlogged_request(attack: Attack) -> None:
    # execute
    doc = reconcile_json(attack)

    # assert: every node that answered the unlogged request is reported for it
    query_id = attack.logged.query_id
    differences = doc["differences"]
    assert isinstance(differences, list)
    unlogged = [
        d
        for d in differences
        if d["query_id"] == query_id and "does not hold as logged" in d["message"]
    ]
    assert sorted(d["node_id"] for d in unlogged) == sorted(attack.parties.node_keys)
    assert all(d["problem"] for d in unlogged)
    assert unlogged[0]["message"] == (
        "the node answered a request that the gateway's ledger does not hold as logged "
        f"(expected at entry {attack.unlogged.index}; the gateway logged query {query_id} only "
        f"at entry {attack.logged.index}, for another request: it sent two requests under one "
        "query id); ask the gateway's operator what this request was and why it is not in the "
        "ledger"
    )
    # The checkpoint the shadow log showed the nodes is not the gateway's log either.
    forked = [
        d for d in differences if d["query_id"] == query_id and "(a forked log)" in d["message"]
    ]
    assert sorted(d["node_id"] for d in forked) == sorted(attack.parties.node_keys)
    # The honest queries and the logged request under Q reconcile.
    assert {d["query_id"] for d in differences} == {query_id}
    assert doc["ok"] is False


def test_reconcile_counts_every_receipt(attack: Attack) -> None:
    doc = reconcile_json(attack)

    # Two honest queries and both requests under Q: four receipts at each node.
    assert doc["receipts"] == dict.fromkeys(attack.parties.node_keys, 4)


def test_verify_fails_a_receipts_ledger_with_two_requests_under_one_query_id(
    attack: Attack,
) -> None:
    # prepare: the node's receipts are entries 1, 2 (honest), 4 (unlogged, after a
    # reopening) and 6 (logged, after another)
    p = attack.parties

    # execute
    run = audit(attack, "verify", p.receipts(NODE), "--key", p.node_pub(NODE))

    # assert
    assert run.returncode == 1, run
    query_id = attack.logged.query_id
    problem = (
        f"PROBLEM  entry 6: a second receipt for query {query_id} (the first is entry 4) for "
        f"another request (request digest {attack.logged.request_digest[:16]}…, the first "
        f"{attack.unlogged.request_digest[:16]}…): the gateway sent two requests under one "
        "query id, expected one. Reconcile with the gateway's ledger (`liaison audit "
        "reconcile`) to see which one it logged"
    )
    assert problem in run.stdout.splitlines()
    assert run.stdout.strip().splitlines()[-1] == ("FAILED: 1 problem(s); the first is at entry 6")


def test_verify_with_the_nodes_receipts_as_witness_shows_the_forked_log(attack: Attack) -> None:
    # The shadow log's checkpoint, handed to the node, is signed by the gateway's key.
    p = attack.parties

    run = audit(
        attack, "verify", p.gateway_ledger, "--key", p.gateway_pub, "--witness", p.receipts(NODE)
    )

    assert run.returncode == 1, run
    problems = [line for line in run.stdout.splitlines() if line.startswith("PROBLEM")]
    assert len(problems) == 1, run.stdout
    assert problems[0].startswith(
        f"PROBLEM  witness {p.receipts(NODE)} entry 4 (size {attack.unlogged.checkpoint_size}, "
    )
    assert problems[0].endswith(
        ": the ledger's first entries no longer hash to what the witness saw: rewritten, or "
        "the writer showed the witness another history (a forked log); keep both copies as "
        "evidence and ask the operator"
    )


def test_two_logged_requests_under_one_query_id_fail_the_gateways_ledger(
    tmp_path: Path,
) -> None:
    # prepare: both requests logged, both answered: every receipt matches its entry
    party = parties(tmp_path / "federation")
    with party.session() as session:
        first = session.ask()
        second = session.ask(query_id=first.query_id)

    # execute
    run = liaison(
        "audit", "verify", party.gateway_ledger, "--key", party.gateway_pub, cwd=party.root
    )

    # assert
    assert run.returncode == 1, run
    assert (
        f"PROBLEM  entry {second.index}: a second request entry for query {first.query_id} "
        f"(the first is entry {first.index}): copied or replayed, or two requests sent under "
        "one query id; expected one request per query id."
    ) in run.stdout
