"""Follow-ups in the audit: `verify`, `reconcile`, `show` and `report` over real ledgers.

Every ledger here is written by the classes a gateway and a node write with
(``Ledger`` over SQLite files, checkpoints signed with real keys), every entry
by the real entry functions, and every signed payload (request,
acknowledgement, decision) sealed with the party's key, its digest what the
entries record. A whole follow-up is the gateway's FOLLOWUP entry with its
proof, the node's FOLLOWUP_RECEIPT (after checking that proof), the gateway's
FOLLOWUP_DELIVERY, the node's FOLLOWUP_DECISION and the gateway's
FOLLOWUP_OUTCOME. The tampered histories are those one side's operator could
write with its own key; each must show, in the ledger that lies or in the
reconciliation, and queries must read exactly as before.

The path through real processes (gateway and node services) is tested by
the follow-up service tests; this module owns what the auditor sees.

Prepare / execute / assert.
"""

from __future__ import annotations

import hashlib
import json
import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest

from liaison.cli.main import main as liaison_main
from liaison.envelope import seal
from liaison.followup_wire import ack_to_bytes, decision_to_bytes, followup_request_to_bytes
from liaison.followups import (
    FOLLOWUP_ACK_TYPE,
    FOLLOWUP_DECISION_TYPE,
    FOLLOWUP_REQUEST_TYPE,
    DecisionOutcome,
    FieldDecision,
    FollowUpAck,
    FollowUpDecision,
    FollowUpRequest,
    Urgency,
    answer_by,
    outcome_of,
)
from liaison.keys import SigningKey, VerifyingKey
from liaison.ledger import verify as verify_module
from liaison.ledger import verify_worker
from liaison.ledger.entries import (
    FollowUpReceiptFacts,
    followup_decision_entry,
    followup_delivery_entry,
    followup_entry,
    followup_outcome_entry,
    followup_receipt_entry,
)
from liaison.ledger.log import Ledger
from liaison.ledger.logged import LedgerProof, check_followup_logged, node_origin
from liaison.ledger.reconcile import (
    FollowUpCounts,
    NodeLedger,
    ReconcileReport,
    describe_followups,
    reconcile,
)
from liaison.ledger.store import LedgerStore
from liaison.ledger.verify import VerifyReport, verify_ledger
from liaison.ledger.views import Filters, rows, select, summarise
from tests.ledger_parties import GATEWAY_ID, Asked, Parties, Session, parties
from tests.support import INVESTIGATOR, TEST_AUDIT_KEY, now_ms

NODE = "freedonia"
ASKED_FIELDS = ("case_ref", "first_seen")
# The demo's story: one field released under H2, the other refused.
PARTIAL = (
    FieldDecision("case_ref", True, "H2"),
    FieldDecision("first_seen", False, "", "ongoing operation"),
)


# --- a follow-up, step by step, as gateway and node write it ---------------------------


@dataclass(frozen=True, slots=True)
class Filed:
    """A follow-up request as the gateway signed and logged it."""

    request: FollowUpRequest
    digest: bytes
    signature: bytes
    entry: bytes
    index: int
    checkpoint: str
    proof: LedgerProof


def file_followup(
    run: Session,
    asked: Asked,
    *,
    node: str = NODE,
    followup_id: str | None = None,
    fields: tuple[str, ...] = ASKED_FIELDS,
    urgency: Urgency = Urgency.URGENT,
    filed_at_ms: int | None = None,
) -> Filed:
    """The gateway signs a follow-up request and logs it (with proof) before delivery."""
    key = run.parties.gateway_key
    issued = now_ms() if filed_at_ms is None else filed_at_ms
    request = FollowUpRequest(
        followup_id=followup_id or str(uuid.uuid4()),
        gateway_id=GATEWAY_ID,
        issued_at_ms=issued,
        expires_at_ms=issued + 60_000,
        nonce=os.urandom(16),
        node_id=node,
        requester=INVESTIGATOR,
        query_id=asked.query_id,
        record_refs=("r-" + "A" * 16,),
        fields=fields,
        purpose="csam-investigation",
        case_ref="GEN-TEST-1",
        legal_basis="",
        urgency=urgency,
        answer_by_ms=answer_by(issued, urgency),
        text="a child may be at risk; please send the case reference",
        catalog_version="1",
    )
    envelope = seal(key, FOLLOWUP_REQUEST_TYPE, followup_request_to_bytes(request))
    digest = hashlib.sha256(envelope.payload).digest()
    entry = followup_entry(
        request, request_digest=digest, key_id=key.key_id, audit_key=TEST_AUDIT_KEY
    )
    appended = run.gateway.append(entry, prove=True)
    assert appended.checkpoint is not None
    proof = LedgerProof(entry, appended.index, appended.inclusion_path, appended.checkpoint.note)
    return Filed(
        request,
        digest,
        envelope.signature,
        entry,
        appended.index,
        appended.checkpoint.note,
        proof,
    )


def take_in(run: Session, filed: Filed, *, accepted: bool = True, **facts: Any) -> str:
    """The node checks the proof, acknowledges, and writes its receipt; the ack's digest.

    ``facts`` override the receipt's facts: a node that lies about what it took in.
    """
    request = filed.request
    gateway_key = run.parties.gateway_key
    check_followup_logged(
        filed.proof,
        request=request,
        request_digest=filed.digest,
        request_key_id=gateway_key.key_id,
        gateway_key=gateway_key.verifying_key,
    )
    node_key = run.parties.node_keys[request.node_id]
    ack = FollowUpAck(
        followup_id=request.followup_id,
        node_id=request.node_id,
        request_digest=filed.digest,
        received_at_ms=now_ms(),
        accepted=accepted,
        reason="" if accepted else "no approve rule covers these fields",
        rules=("approve-case-details",) if accepted else (),
        answer_by_ms=request.answer_by_ms,
        decidable_fields=request.fields if accepted else (),
    )
    ack_digest = hashlib.sha256(seal(node_key, FOLLOWUP_ACK_TYPE, ack_to_bytes(ack)).payload)
    receipt = FollowUpReceiptFacts(
        node_id=request.node_id,
        time_ms=now_ms(),
        followup_id=request.followup_id,
        request_digest=filed.digest,
        gateway_id=GATEWAY_ID,
        gateway_key_id=gateway_key.key_id,
        gateway_signature=filed.signature,
        gateway_entry=filed.entry,
        gateway_leaf_index=filed.index,
        gateway_checkpoint=filed.checkpoint,
        accepted=accepted,
        rules=ack.rules,
        answer_by_ms=request.answer_by_ms,
        ack_digest=ack_digest.hexdigest(),
        ack_key_id=node_key.key_id,
    )
    run.nodes[request.node_id].append(followup_receipt_entry(replace(receipt, **facts)))
    return ack_digest.hexdigest()


def deliver(run: Session, filed: Filed, ack_digest: str, status: str = "delivered") -> None:
    """The gateway records what the node said on delivery."""
    run.gateway.append(
        followup_delivery_entry(
            followup_id=filed.request.followup_id,
            request_digest=filed.digest,
            time_ms=now_ms(),
            node_id=filed.request.node_id,
            status=status,
            ack_digest=ack_digest if status != "not delivered" else "",
            detail="" if status != "not delivered" else "node unreachable",
        )
    )


@dataclass(frozen=True, slots=True)
class Decided:
    decision: FollowUpDecision
    digest: str


def decide(
    run: Session,
    filed: Filed,
    choices: tuple[FieldDecision, ...] = PARTIAL,
    *,
    followup_id: str | None = None,
) -> Decided:
    """A duty officer decides; the node signs the decision and records it."""
    request = filed.request
    node_key = run.parties.node_keys[request.node_id]
    released = tuple(c.field for c in choices if c.released)
    decision = FollowUpDecision(
        followup_id=followup_id or request.followup_id,
        node_id=request.node_id,
        request_digest=filed.digest,
        decided_at_ms=now_ms(),
        outcome=outcome_of(choices),
        field_decisions=choices,
        reason="",
        officer="duty.olga",
        officer_issuer="https://idp.freedonia.example",
        rules=("approve-case-details",),
        fields=released,
        rows=(tuple("GEN-2024-17" for _ in released),) if released else (),
    )
    envelope = seal(node_key, FOLLOWUP_DECISION_TYPE, decision_to_bytes(decision))
    digest = hashlib.sha256(envelope.payload).hexdigest()
    run.nodes[request.node_id].append(
        followup_decision_entry(
            decision,
            officer_roles=("duty-officer",),
            decision_digest=digest,
            decision_key_id=node_key.key_id,
        )
    )
    return Decided(decision, digest)


def collect(run: Session, decided: Decided, *, digest: str | None = None, **changes: Any) -> None:
    """The gateway records the node's signed decision it collected (``changes``: as it lies)."""
    run.gateway.append(
        followup_outcome_entry(
            replace(decided.decision, **changes),
            time_ms=now_ms(),
            decision_digest=decided.digest if digest is None else digest,
        )
    )


def whole_story(run: Session, asked: Asked | None = None) -> Filed:
    """A query, then a follow-up about it: filed, taken in, delivered, decided, collected."""
    asked = asked or run.ask()
    filed = file_followup(run, asked)
    ack = take_in(run, filed)
    deliver(run, filed, ack)
    collect(run, decide(run, filed))
    return filed


# --- reading the ledgers as an auditor ---------------------------------------------------


def reconciled(party: Parties, *, now: int | None = None) -> ReconcileReport:
    gateway = LedgerStore(str(party.gateway_ledger), create=False)
    stores = {n: LedgerStore(str(party.receipts(n)), create=False) for n in party.node_keys}
    try:
        return reconcile(
            gateway,
            VerifyingKey.from_pem_file(party.gateway_pub),
            [
                NodeLedger(n, store, VerifyingKey.from_pem_file(party.node_pub(n)))
                for n, store in stores.items()
            ],
            now_ms=now,
        )
    finally:
        gateway.close()
        for store in stores.values():
            store.close()


@contextmanager
def opened(path: Path) -> Iterator[LedgerStore]:
    store = LedgerStore(str(path), create=False)
    try:
        yield store
    finally:
        store.close()


def verified(path: Path, key: SigningKey, *, processes: int = 1) -> VerifyReport:
    store = LedgerStore(str(path), create=False)
    try:
        report, _tree = verify_ledger(store, key.verifying_key, processes=processes)
        return report
    finally:
        store.close()


def differences(report: ReconcileReport) -> list[tuple[str, str, bool]]:
    return [(d.followup_id, d.message, d.problem) for d in report.differences]


def assert_ledgers_verify(report: ReconcileReport) -> None:
    assert report.gateway.ok, report.gateway.problems
    for node, node_report in report.nodes.items():
        assert node_report.ok, (node, node_report.problems)


@pytest.fixture
def party(tmp_path: Path) -> Parties:
    return parties(tmp_path / "federation")


# --- the whole story --------------------------------------------------------------------


def test_a_whole_follow_up_verifies_and_reconciles(party: Parties) -> None:
    # prepare
    with party.session() as run:
        whole_story(run)

    # execute
    report = reconciled(party)

    # assert
    assert report.ok, report.differences
    assert report.differences == []
    assert report.gateway.kinds == {
        "opened": 1,
        "request": 1,
        "outcome": 1,
        "followup": 1,
        "followup-delivery": 1,
        "followup-outcome": 1,
    }
    assert report.nodes[NODE].kinds == {
        "opened": 1,
        "receipt": 1,
        "followup-receipt": 1,
        "followup-decision": 1,
    }
    counts = report.followups
    assert (counts.filed, counts.delivered, counts.decided) == (1, 1, 1)
    assert (counts.released, counts.withheld, counts.handling) == (1, 1, {"H2": 1})
    assert (counts.taken_in, counts.decided_at_nodes, counts.pending) == (1, 1, 0)
    assert describe_followups(report) == (
        "follow-ups: 1 filed, 1 delivered, 1 decided (1 field released under H2, 1 withheld); "
        "every step in both ledgers"
    )
    # The receipts still count queries only, as the demo and the CLI show them.
    assert report.receipts == {NODE: 1, "ruritania": 1}


def test_a_pending_follow_up_reconciles_with_a_note(party: Parties) -> None:
    # prepare: delivered, no one has decided yet
    with party.session() as run:
        filed = file_followup(run, run.ask())
        deliver(run, filed, take_in(run, filed))
    answer_by_ms = filed.request.answer_by_ms

    # execute: before and after its answer-by time
    early = reconciled(party, now=answer_by_ms - 1)
    late = reconciled(party, now=answer_by_ms + 1)

    # assert
    assert early.ok and late.ok
    (note,) = early.differences
    assert not note.problem
    assert note.followup_id == filed.request.followup_id
    assert note.query_id == filed.request.query_id
    assert note.message.startswith(
        "pending: the node took this follow-up in and no one has decided it yet; answer by "
    )
    assert "overdue since" in late.differences[0].message
    assert early.followups.pending == 1
    assert describe_followups(early) == (
        "follow-ups: 1 filed, 1 delivered, 0 decided, 1 pending; every step in both ledgers"
    )


def test_a_decision_not_collected_yet_is_a_note(party: Parties) -> None:
    # prepare: the officer decided; the gateway has not asked for it yet
    with party.session() as run:
        filed = file_followup(run, run.ask())
        deliver(run, filed, take_in(run, filed))
        decide(run, filed)

    # execute
    report = reconciled(party)

    # assert
    assert report.ok
    assert differences(report) == [
        (
            filed.request.followup_id,
            "the node decided this follow-up (partial: case_ref released (H2), first_seen "
            "refused); the gateway has not collected the decision yet",
            False,
        )
    ]
    assert report.followups.uncollected == 1


def test_a_follow_up_logged_and_never_delivered_is_a_note(party: Parties) -> None:
    # prepare: the gateway stopped after logging the follow-up
    with party.session() as run:
        filed = file_followup(run, run.ask())

    # execute
    report = reconciled(party)

    # assert
    assert report.ok
    assert differences(report) == [
        (
            filed.request.followup_id,
            "the gateway logged this follow-up and recorded no delivery: it stopped before "
            "delivering it (cut short)",
            False,
        )
    ]
    assert report.followups.unsent == 1


def test_a_follow_up_the_node_refused_to_take_in_reconciles(party: Parties) -> None:
    # prepare: the node's policy has no approve rule for these fields
    with party.session() as run:
        filed = file_followup(run, run.ask())
        deliver(run, filed, take_in(run, filed, accepted=False), status="refused")

    # execute
    report = reconciled(party)

    # assert: refused on delivery, nothing pending, nothing to decide
    assert report.ok
    assert report.differences == []
    assert (report.followups.refused, report.followups.pending) == (1, 0)


def test_a_request_the_node_took_in_but_the_gateway_calls_not_delivered_is_a_problem(
    party: Parties,
) -> None:
    # prepare: the node took it in; the gateway recorded "not delivered" (which it
    # does only when the node refused the call or said it holds no such request)
    with party.session() as run:
        filed = file_followup(run, run.ask())
        take_in(run, filed)
        deliver(run, filed, "", status="not delivered")

    # execute
    report = reconciled(party)

    # assert
    assert not report.ok
    assert (
        filed.request.followup_id,
        "the node took this follow-up in, but the gateway recorded it as not delivered: a "
        "decision on it would never reach the investigator",
        True,
    ) in differences(report)


def test_the_follow_up_line_names_every_handling_code() -> None:
    # prepare: counts as reconcile leaves them
    report = ReconcileReport(VerifyReport("gateway", "liaison.gateway/gateway"))
    report.followups = FollowUpCounts(
        filed=4,
        delivered=3,
        not_delivered=1,
        decided=2,
        released=3,
        withheld=1,
        handling={"H1": 2, "H3": 1},
        taken_in=3,
        decided_at_nodes=3,
        uncollected=1,
    )

    # execute / assert
    assert describe_followups(report) == (
        "follow-ups: 4 filed, 3 delivered, 1 not delivered, 2 decided (3 fields released "
        "(2 H1, 1 H3), 1 withheld), 1 decided and not collected yet; every step in both ledgers"
    )


# --- what each side's lie looks like ---------------------------------------------------


def test_a_decision_whose_digest_differs_from_the_gateways_outcome_is_a_problem(
    party: Parties,
) -> None:
    # prepare: the gateway records a decision other than the one the node signed
    with party.session() as run:
        filed = file_followup(run, run.ask())
        deliver(run, filed, take_in(run, filed))
        decided = decide(run, filed)
        collect(run, decided, digest=hashlib.sha256(b"another decision").hexdigest())

    # execute
    report = reconciled(party)

    # assert
    assert_ledgers_verify(report)
    assert not report.ok
    assert differences(report) == [
        (
            filed.request.followup_id,
            "the gateway showed a decision the node did not make: decision digests differ "
            f"(the node signed {decided.digest[:16]}…, the gateway recorded "
            f"{hashlib.sha256(b'another decision').hexdigest()[:16]}…)",
            True,
        )
    ]
    assert "1 difference(s) between the ledgers" in describe_followups(report)


def test_a_gateway_outcome_with_no_decision_at_the_node_is_a_problem(party: Parties) -> None:
    # prepare: the gateway shows an approval no officer made (the node never decided)
    with party.session() as run:
        filed = file_followup(run, run.ask())
        deliver(run, filed, take_in(run, filed))
        approved = (FieldDecision("case_ref", True, "H0"), FieldDecision("first_seen", True, "H0"))
        forged = FollowUpDecision(
            followup_id=filed.request.followup_id,
            node_id=NODE,
            request_digest=filed.digest,
            decided_at_ms=now_ms(),
            outcome=DecisionOutcome.APPROVED,
            field_decisions=approved,
            reason="",
            officer="nobody",
            officer_issuer="",
            rules=(),
        )
        collect(run, Decided(forged, hashlib.sha256(b"forged").hexdigest()))

    # execute
    report = reconciled(party)

    # assert
    assert_ledgers_verify(report)
    assert differences(report) == [
        (
            filed.request.followup_id,
            "the gateway showed a decision the node did not make (approved: case_ref released "
            "(H0), first_seen released (H0)): the node's ledger holds no decision on this "
            "follow-up",
            True,
        )
    ]


def test_a_gateway_outcome_that_changes_a_handling_code_is_a_problem(party: Parties) -> None:
    # prepare: the gateway keeps the node's digest but loosens H2 to H0 in its record
    with party.session() as run:
        filed = file_followup(run, run.ask())
        deliver(run, filed, take_in(run, filed))
        decided = decide(run, filed)
        loosened = (FieldDecision("case_ref", True, "H0"), PARTIAL[1])
        collect(run, decided, field_decisions=loosened)

    # execute
    report = reconciled(party)

    # assert
    assert differences(report) == [
        (
            filed.request.followup_id,
            "the gateway showed a decision the node did not make: it recorded partial: case_ref "
            "released (H0), first_seen refused, where the node decided partial: case_ref "
            "released (H2), first_seen refused (same decision digest)",
            True,
        )
    ]


def test_a_receipt_naming_a_gateway_entry_that_is_no_follow_up_is_a_problem(
    party: Parties,
) -> None:
    # prepare: the node's receipt points at the gateway's request entry instead
    with party.session() as run:
        asked = run.ask()
        filed = file_followup(run, asked)
        request_raw = run.gateway.store.entry(asked.index)
        assert request_raw is not None
        ack = take_in(run, filed, gateway_leaf_index=asked.index, gateway_entry=request_raw)
        deliver(run, filed, ack)

    # execute
    report = reconciled(party)

    # assert
    assert_ledgers_verify(report)
    assert (
        filed.request.followup_id,
        "the node took in a follow-up the gateway did not log (expected at entry "
        f"{asked.index}, which holds a request entry, not a follow-up); ask the gateway's "
        "operator what this follow-up was and why it is not in the ledger",
        True,
    ) in differences(report)


def test_a_receipt_naming_the_wrong_leaf_is_a_problem(party: Parties) -> None:
    # prepare: two follow-ups; the receipt of the second names the first's entry
    with party.session() as run:
        asked = run.ask()
        first = file_followup(run, asked)
        second = file_followup(run, asked)
        ack = take_in(run, second, gateway_leaf_index=first.index)
        deliver(run, second, ack)

    # execute
    report = reconciled(party)

    # assert
    assert (
        second.request.followup_id,
        "the node took in a follow-up the gateway did not log (expected at entry "
        f"{first.index}; the gateway logged it at entry {second.index}); ask the gateway's "
        "operator what this follow-up was and why it is not in the ledger",
        True,
    ) in differences(report)


def test_a_follow_up_logged_only_in_a_shadow_ledger_is_caught(party: Parties) -> None:
    # prepare: a real history, then a follow-up the gateway's key logs in a
    # shadow ledger (as only an insider could) and the node takes in
    with party.session() as run:
        asked = run.ask()
    with party.session(log_in=party.root / "gateway" / "shadow.sqlite3") as run:
        filed = file_followup(run, asked)
        deliver(run, filed, take_in(run, filed))

    # execute
    report = reconciled(party)

    # assert: the real gateway ledger verifies; the node's receipt exposes it
    assert_ledgers_verify(report)
    assert not report.ok
    found = [m for fid, m, problem in differences(report) if problem]
    assert found[0].startswith(
        "the node took in a follow-up the gateway did not log (expected at entry "
        f"{filed.index}, which holds a"
    )
    # And the checkpoint the shadow log gave the node is not of the real history.
    assert any(
        "no longer hash to the checkpoint" in m or "entries were removed" in m for m in found
    )


def test_a_delivery_the_node_has_no_receipt_for_is_a_problem(party: Parties) -> None:
    # prepare: the gateway records an acknowledgement the node never gave
    with party.session() as run:
        filed = file_followup(run, run.ask())
        deliver(run, filed, hashlib.sha256(b"made up").hexdigest())

    # execute
    report = reconciled(party)

    # assert
    assert differences(report) == [
        (
            filed.request.followup_id,
            "the gateway recorded that the node took this follow-up in (a signed "
            "acknowledgement), but the node holds no receipt for it",
            True,
        )
    ]


def test_an_acknowledgement_other_than_the_nodes_is_a_problem(party: Parties) -> None:
    # prepare
    with party.session() as run:
        filed = file_followup(run, run.ask())
        ack = take_in(run, filed)
        deliver(run, filed, hashlib.sha256(b"made up").hexdigest())

    # execute
    report = reconciled(party)

    # assert
    assert differences(report)[0] == (
        filed.request.followup_id,
        f"the gateway recorded another acknowledgement than the node signed (ack digests "
        f"differ: the node {ack[:16]}…, the gateway "
        f"{hashlib.sha256(b'made up').hexdigest()[:16]}…)",
        True,
    )


def test_a_refusal_recorded_as_delivered_is_a_problem(party: Parties) -> None:
    # prepare: the node refused to take it in; the gateway says it was delivered
    with party.session() as run:
        filed = file_followup(run, run.ask())
        deliver(run, filed, take_in(run, filed, accepted=False), status="delivered")

    # execute
    report = reconciled(party)

    # assert
    assert differences(report) == [
        (
            filed.request.followup_id,
            "the gateway recorded this follow-up as delivered, but the node's receipt says it "
            "refused it",
            True,
        )
    ]


# --- verify: each ledger on its own -----------------------------------------------------


def test_a_second_followup_entry_with_the_same_id_fails_verify(party: Parties) -> None:
    # prepare
    with party.session() as run:
        asked = run.ask()
        first = file_followup(run, asked)
        second = file_followup(run, asked, followup_id=first.request.followup_id)

    # execute
    report = verified(party.gateway_ledger, party.gateway_key)

    # assert
    assert [(f.where, f.message) for f in report.problems] == [
        (
            f"entry {second.index}",
            f"a second follow-up entry for follow-up {first.request.followup_id} (the first is "
            f"entry {first.index}): copied or replayed, or two follow-up requests sent under "
            "one id; expected one entry per follow-up id. Reconcile with the holding node's "
            "receipts (`liaison audit reconcile`) to see which one it took in",
        )
    ]


def test_a_delivery_or_outcome_before_its_followup_fails_verify(party: Parties) -> None:
    # prepare: steps of a follow-up the gateway's ledger never logged (it went
    # into another federation's ledger)
    with party.session() as run:
        asked = run.ask()
    with parties(party.root / "elsewhere").session() as elsewhere:
        unlogged = file_followup(elsewhere, asked)
    with party.session() as run:
        deliver(run, unlogged, "")
        decided = Decided(
            FollowUpDecision(
                followup_id=unlogged.request.followup_id,
                node_id=NODE,
                request_digest=unlogged.digest,
                decided_at_ms=now_ms(),
                outcome=DecisionOutcome.REFUSED,
                field_decisions=(FieldDecision("case_ref", False),),
                reason="",
                officer="duty.olga",
                officer_issuer="",
                rules=(),
            ),
            "00" * 32,
        )
        collect(run, decided)
        size = run.gateway.size

    # execute
    report = verified(party.gateway_ledger, party.gateway_key)

    # assert: the delivery and the outcome, the last two entries, are found
    fid = unlogged.request.followup_id
    assert [f.message for f in report.problems] == [
        f"delivery of follow-up {fid}, whose follow-up entry is not logged before it: entries "
        "were reordered, or the follow-up entry was removed (a gateway logs each follow-up "
        "before it delivers it)",
        f"outcome of follow-up {fid}, whose follow-up entry is not logged before it: entries "
        "were reordered, or the follow-up entry was removed (a gateway logs each follow-up "
        "before it delivers it)",
    ]
    assert [f.index for f in report.problems] == [size - 2, size - 1]


def test_a_decision_without_a_receipt_fails_verify(party: Parties) -> None:
    # prepare: the node records a decision on a follow-up it never took in
    with party.session() as run:
        filed = file_followup(run, run.ask())
        decided = decide(run, filed)
        index = run.nodes[NODE].size - 1

    # execute
    report = verified(party.receipts(NODE), party.node_keys[NODE])

    # assert
    assert [(f.where, f.message) for f in report.problems] == [
        (
            f"entry {index}",
            f"decision on follow-up {decided.decision.followup_id}, whose receipt is not "
            "logged before it: the node decided a follow-up it has no record of taking in; "
            "entries were reordered, or the receipt was removed",
        )
    ]


def test_a_second_decision_fails_verify(party: Parties) -> None:
    # prepare: two officers' decisions both recorded for one follow-up
    with party.session() as run:
        filed = file_followup(run, run.ask())
        deliver(run, filed, take_in(run, filed))
        decide(run, filed)
        first = run.nodes[NODE].size - 1
        decide(run, filed, (FieldDecision("case_ref", False), FieldDecision("first_seen", False)))
        second = run.nodes[NODE].size - 1

    # execute
    report = verified(party.receipts(NODE), party.node_keys[NODE])

    # assert
    assert [(f.where, f.message) for f in report.problems] == [
        (
            f"entry {second}",
            f"a second decision on follow-up {filed.request.followup_id} (the first is entry "
            f"{first}): a follow-up has one decision; copied, or decided twice. Ask the node's "
            "operator which decision was signed and released",
        )
    ]


def test_a_delivered_follow_up_never_decided_verifies(party: Parties) -> None:
    # prepare
    with party.session() as run:
        filed = file_followup(run, run.ask())
        deliver(run, filed, take_in(run, filed))

    # execute / assert
    assert verified(party.gateway_ledger, party.gateway_key).ok
    assert verified(party.receipts(NODE), party.node_keys[NODE]).ok


def test_follow_up_receipts_witness_the_gateways_log(party: Parties) -> None:
    # prepare: the gateway signs a checkpoint after the query, then one after the follow-up
    with party.session() as run:
        filed = file_followup(run, run.ask())
        deliver(run, filed, take_in(run, filed))

    # execute
    with opened(party.receipts(NODE)) as store:
        witness = verify_module.receipts_witness(store, "node")
    with opened(party.gateway_ledger) as gateway:
        report, _ = verify_ledger(
            gateway, party.gateway_key.verifying_key, witnesses=[witness], processes=1
        )

    # assert: the follow-up receipt's checkpoint witnesses the gateway's log
    assert filed.checkpoint in {note for _, note in witness.notes}
    assert report.ok
    (summary_of_witness,) = report.witnesses
    assert summary_of_witness.largest is not None
    assert summary_of_witness.largest.size == filed.index + 1


# --- queries read exactly as before -----------------------------------------------------


def test_query_differences_are_unchanged_by_follow_ups(party: Parties) -> None:
    # prepare: a query history with a lie in it (the not-delivered answer the gateway claims)
    with party.session() as run:
        run.ask()
        run.ask(undelivered=(NODE,), gateway_saw_undelivered=True)
    before = reconciled(party)

    # execute: the same history, and then a whole follow-up
    with party.session() as run:
        whole_story(run)
    after = reconciled(party)

    # assert: the queries' differences are as they were, word for word
    assert [d for d in after.differences if not d.followup_id] == before.differences
    assert all(d.followup_id == "" for d in before.differences)
    assert before.followups.any is False
    assert describe_followups(before) == ""
    # Receipts count queries: freedonia also holds the not-delivered receipt.
    assert after.receipts == {NODE: 4, "ruritania": 3}


def test_a_ledger_without_follow_ups_reconciles_and_prints_as_before(
    party: Parties, capsys: pytest.CaptureFixture[str]
) -> None:
    # prepare
    with party.session() as run:
        run.ask()
        run.ask()

    # execute
    code = liaison_main(reconcile_args(party, "--json"))
    doc = json.loads(capsys.readouterr().out)
    text_code = liaison_main(reconcile_args(party))
    text = capsys.readouterr().out

    # assert: no follow-up keys, no follow-up line
    assert code == text_code == 0
    assert sorted(doc) == ["differences", "gateway", "nodes", "ok", "receipts"]
    assert "follow-up" not in text
    assert text.strip().splitlines()[-1] == (
        "RECONCILED: every answered request is on both sides with the same digests"
    )


# --- the second process of verify reads follow-ups as the first does -------------------


DEPTH = 8  # chunks of 256 entries


@pytest.fixture
def small_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(verify_module, "PARALLEL_DEPTH", DEPTH)
    monkeypatch.setattr(verify_module, "PARALLEL_MIN_ENTRIES", 1_000)
    monkeypatch.setattr(verify_module, "READ_BATCH", 100)


def hold_front(monkeypatch: pytest.MonkeyPatch, front: int) -> None:
    """The verifier takes only its first ``front`` chunks; the second process the rest."""
    claim = verify_worker.Claims.front

    def held(self: verify_worker.Claims, chunk: int) -> bool:
        return chunk < front and claim(self, chunk)

    monkeypatch.setattr(verify_worker.Claims, "front", held)


@dataclass(frozen=True, slots=True)
class Steps:
    """Which follow-ups' steps go wrong (by id), for the verifier to find."""

    # Logged twice in a row (the second process finds it inside one chunk).
    twice: str = ""
    # Its follow-up entry never logged: its delivery and outcome stand alone.
    unlogged: str = ""
    # Its receipt never written: its decision stands alone.
    unreceipted: str = ""
    # Logged, or decided, once more at the very end of the ledger.
    logged_again: str = ""
    decided_again: str = ""


def step_entries(n: int, wrong: Steps) -> Iterator[bytes]:
    """``n`` follow-ups, each as five steps: follow-up entry, receipt, delivery, decision, outcome.

    Gateway and node steps in one ledger, as no party writes them: the verifier
    checks kinds, not sides.
    """
    for i in range(n):
        followup_id = f"fu-{i:05d}"
        followup, receipt, delivery, decided, outcome = _steps(followup_id)
        if followup_id != wrong.unlogged:
            yield followup
        if followup_id == wrong.twice:
            yield followup
        if followup_id != wrong.unreceipted:
            yield receipt
        yield from (delivery, decided, outcome)
    if wrong.logged_again:
        yield _steps(wrong.logged_again)[0]
    if wrong.decided_again:
        yield _steps(wrong.decided_again)[3]


def _steps(followup_id: str) -> tuple[bytes, bytes, bytes, bytes, bytes]:
    digest = hashlib.sha256(followup_id.encode()).digest()
    decision = FollowUpDecision(
        followup_id=followup_id,
        node_id=NODE,
        request_digest=digest,
        decided_at_ms=2_000,
        outcome=DecisionOutcome.PARTIAL,
        field_decisions=PARTIAL,
        reason="",
        officer="duty.olga",
        officer_issuer="",
        rules=(),
    )
    receipt = FollowUpReceiptFacts(
        node_id=NODE,
        time_ms=1_500,
        followup_id=followup_id,
        request_digest=digest,
        gateway_id=GATEWAY_ID,
        gateway_key_id="k",
        gateway_signature=b"",
        gateway_entry=b"{}",
        gateway_leaf_index=0,
        gateway_checkpoint="",
        accepted=True,
        rules=(),
        answer_by_ms=0,
        ack_digest=digest.hex(),
        ack_key_id="k",
    )
    return (
        _followup_raw(followup_id, digest),
        followup_receipt_entry(receipt),
        followup_delivery_entry(
            followup_id=followup_id,
            request_digest=digest,
            time_ms=1_600,
            node_id=NODE,
            status="delivered",
            ack_digest=digest.hex(),
        ),
        followup_decision_entry(
            decision, officer_roles=(), decision_digest=digest.hex(), decision_key_id="k"
        ),
        followup_outcome_entry(decision, time_ms=3_000, decision_digest=digest.hex()),
    )


_FOLLOWUP_TEMPLATE: dict[str, bytes] = {}


def _followup_raw(followup_id: str, digest: bytes) -> bytes:
    """A FOLLOWUP entry for ``followup_id`` (the rest of it the same for all)."""
    if "raw" not in _FOLLOWUP_TEMPLATE:
        request = FollowUpRequest(
            followup_id="FOLLOWUP-ID",
            gateway_id=GATEWAY_ID,
            issued_at_ms=1,
            expires_at_ms=2,
            nonce=b"",
            node_id=NODE,
            requester=INVESTIGATOR,
            query_id="q",
            record_refs=("r-A",),
            fields=ASKED_FIELDS,
            purpose="csam-investigation",
            case_ref="GEN-TEST-1",
            legal_basis="",
            urgency=Urgency.ROUTINE,
            answer_by_ms=3,
            text="",
            catalog_version="1",
        )
        _FOLLOWUP_TEMPLATE["raw"] = followup_entry(
            request, request_digest=b"\0" * 32, key_id="k", audit_key=TEST_AUDIT_KEY
        )
    return (
        _FOLLOWUP_TEMPLATE["raw"]
        .replace(b"FOLLOWUP-ID", followup_id.encode())
        .replace(b"00" * 32, digest.hex().encode())
    )


def write_steps(path: Path, key: SigningKey, entries: Iterator[bytes]) -> None:
    ledger = Ledger.open(str(path), key, node_origin(NODE), checkpoint_interval_s=3600)
    try:
        futures = [ledger.submit(raw) for raw in entries]
        for future in futures:
            future.result(timeout=60)
    finally:
        ledger.close()


WRONG_STEPS = {
    "untouched": (Steps(), []),
    "twice-in-front": (
        Steps(twice="fu-00010"),
        ["a second follow-up entry for follow-up fu-00010"],
    ),
    "twice-in-the-back": (
        Steps(twice="fu-00250"),
        ["a second follow-up entry for follow-up fu-00250"],
    ),
    "unlogged-in-front": (
        Steps(unlogged="fu-00003"),
        ["delivery of follow-up fu-00003", "outcome of follow-up fu-00003"],
    ),
    "unlogged-in-the-back": (
        Steps(unlogged="fu-00260"),
        ["delivery of follow-up fu-00260", "outcome of follow-up fu-00260"],
    ),
    "unreceipted-in-the-back": (
        Steps(unreceipted="fu-00270"),
        ["decision on follow-up fu-00270"],
    ),
    "logged-in-front-again-in-the-back": (
        Steps(logged_again="fu-00020"),
        ["a second follow-up entry for follow-up fu-00020"],
    ),
    "logged-in-the-back-again-later": (
        Steps(logged_again="fu-00200"),
        ["a second follow-up entry for follow-up fu-00200"],
    ),
    "decided-in-front-again-in-the-back": (
        Steps(decided_again="fu-00020"),
        ["a second decision on follow-up fu-00020"],
    ),
    "decided-in-the-back-again-later": (
        Steps(decided_again="fu-00200"),
        ["a second decision on follow-up fu-00200"],
    ),
}


@pytest.mark.parametrize("case", list(WRONG_STEPS))
def test_two_processes_find_what_one_does_in_follow_ups(
    tmp_path: Path, small_chunks: None, monkeypatch: pytest.MonkeyPatch, case: str
) -> None:
    # prepare: 300 follow-ups' steps, 1,500 entries: six chunks; the helper takes four
    wrong, expected = WRONG_STEPS[case]
    key = SigningKey.generate()
    path = tmp_path / "steps.sqlite3"
    write_steps(path, key, step_entries(300, wrong))
    hold_front(monkeypatch, 2)

    # execute
    two = verified(path, key, processes=2)
    one = verified(path, key, processes=1)
    with monkeypatch.context() as patch:
        # Row by row: every entry through parse_entry, none through the fast reader.
        patch.setattr(verify_module, "scan_entries", lambda raws: None)
        slow = verified(path, key, processes=1)

    # assert
    assert summary(two) == summary(one) == summary(slow)
    assert two.processes == 2
    assert [f.message.split(",")[0].split(" (")[0] for f in one.problems] == expected


def summary(report: VerifyReport) -> dict[str, Any]:
    return {
        "problems": [(f.where, f.message, f.index) for f in report.problems],
        "size": report.size,
        "root": report.root,
        "kinds": report.kinds,
        "unfinished": report.unfinished,
    }


# --- what the auditor reads: show, report, reconcile ----------------------------------


def reconcile_args(party: Parties, *extra: str) -> list[str]:
    args = [
        "audit",
        "reconcile",
        "--gateway",
        str(party.gateway_ledger),
        "--gateway-key",
        str(party.gateway_pub),
    ]
    for node in party.node_keys:
        args += ["--node", node, str(party.receipts(node)), str(party.node_pub(node))]
    return [*args, *extra]


def test_show_reads_every_step_of_a_follow_up(party: Parties) -> None:
    # prepare
    with party.session() as run:
        filed = whole_story(run)
    fid = filed.request.followup_id

    # execute
    with opened(party.gateway_ledger) as store:
        gateway_rows = select(store, Filters(followup_id=fid))
        about_query = select(store, Filters(query_id=filed.request.query_id))
    with opened(party.receipts(NODE)) as store:
        node_rows = select(store, Filters(followup_id=fid))

    # assert
    assert [(r.kind, r.outcome, r.fields) for r in gateway_rows] == [
        ("followup", "", ASKED_FIELDS),
        ("followup-delivery", "delivered", ()),
        ("followup-outcome", "partial", ("case_ref released H2", "first_seen refused")),
    ]
    assert [(r.kind, r.outcome, r.fields, r.detail) for r in node_rows] == [
        ("followup-receipt", "accepted", ASKED_FIELDS, "urgent"),
        (
            "followup-decision",
            "partial",
            ("case_ref released H2", "first_seen refused"),
            "by duty.olga",
        ),
    ]
    # Every step names who asked and about which query, as the follow-up entry says.
    for row in [*gateway_rows, *node_rows]:
        assert (row.agency, row.subject, row.query_id, row.nodes) == (
            "genovia",
            "inv.alice",
            filed.request.query_id,
            (NODE,),
        )
    assert [r.kind for r in about_query] == [
        "request",
        "outcome",
        "followup",
        "followup-delivery",
        "followup-outcome",
    ]
    assert gateway_rows[0].as_json()["followup_id"] == fid


def test_show_prints_follow_ups_with_their_handling_codes(
    party: Parties, capsys: pytest.CaptureFixture[str]
) -> None:
    # prepare
    with party.session() as run:
        filed = whole_story(run)
    fid = filed.request.followup_id

    # execute
    code = liaison_main(["audit", "show", str(party.gateway_ledger), "--kind", "followup-outcome"])
    text = capsys.readouterr().out
    json_code = liaison_main(
        ["audit", "show", str(party.receipts(NODE)), "--followup-id", fid, "--json"]
    )
    shown = json.loads(capsys.readouterr().out)

    # assert
    assert code == json_code == 0
    (line,) = [ln for ln in text.splitlines() if "followup-outcome" in ln]
    assert f"follow-up {fid[:8]}: case_ref released H2, first_seen refused" in line
    assert line.rstrip().endswith(f"{NODE} partial")
    assert [r["kind"] for r in shown] == ["followup-receipt", "followup-decision"]
    assert shown[1]["fields"] == ["case_ref released H2", "first_seen refused"]
    assert shown[1]["entry"]["officer"] == "duty.olga"


def test_report_counts_follow_ups_by_status_and_handling(
    party: Parties, capsys: pytest.CaptureFixture[str]
) -> None:
    # prepare: one decided (partial), one pending, one cut short
    with party.session() as run:
        asked = run.ask()
        whole_story(run, asked)
        pending = file_followup(run, asked)
        deliver(run, pending, take_in(run, pending))
        file_followup(run, asked)

    # execute
    with opened(party.gateway_ledger) as store:
        gateway_summary = summarise(rows(store), Filters())
    with opened(party.receipts(NODE)) as store:
        node_summary = summarise(rows(store), Filters())
    code = liaison_main(
        ["audit", "report", str(party.gateway_ledger), "--key", str(party.gateway_pub)]
    )
    text = capsys.readouterr().out

    # assert
    assert gateway_summary.queries == 1
    assert gateway_summary.as_json()["followups"] == {
        "filed": 3,
        "by_agency": {"genovia": 3},
        "by_node": {NODE: {"partial": 1, "pending": 1, "unfinished": 1}},
        "fields_released_by_handling": {"H2": 1},
        "fields_withheld": 1,
    }
    # The node's side: two taken in, one decided.
    assert node_summary.as_json()["followups"]["by_node"] == {NODE: {"partial": 1, "pending": 1}}
    assert code == 0
    assert "Follow-ups: 3; fields released 1, withheld 1" in text
    assert "H2: not to be shared onward" in text
    assert text.strip().splitlines()[-1] == "ledger verified"


def test_report_of_a_ledger_without_follow_ups_has_no_follow_up_part(party: Parties) -> None:
    # prepare
    with party.session() as run:
        run.ask()

    # execute
    with opened(party.gateway_ledger) as store:
        doc = summarise(rows(store), Filters()).as_json()

    # assert
    assert "followups" not in doc


def test_reconcile_prints_the_follow_up_line_and_json(
    party: Parties, capsys: pytest.CaptureFixture[str]
) -> None:
    # prepare
    with party.session() as run:
        whole_story(run)
        pending = file_followup(run, run.ask())
        deliver(run, pending, take_in(run, pending))

    # execute
    code = liaison_main(reconcile_args(party))
    text = capsys.readouterr().out
    json_code = liaison_main(reconcile_args(party, "--json"))
    doc = json.loads(capsys.readouterr().out)

    # assert
    assert code == json_code == 0
    lines = text.strip().splitlines()
    assert lines[-1] == "RECONCILED: every answered request is on both sides with the same digests"
    assert lines[-3] == (
        "follow-ups: 2 filed, 2 delivered, 1 decided (1 field released under H2, 1 withheld), "
        "1 pending; every step in both ledgers"
    )
    assert any(f"follow-up {pending.request.followup_id[:8]}: pending" in ln for ln in lines)
    assert doc["followups"]["filed"] == 2
    assert doc["followups"]["released_by_handling"] == {"H2": 1}
    (note,) = doc["differences"]
    assert note["followup_id"] == pending.request.followup_id
    assert note["problem"] is False


def test_reconcile_exits_1_on_a_follow_up_problem(
    party: Parties, capsys: pytest.CaptureFixture[str]
) -> None:
    # prepare
    with party.session() as run:
        filed = file_followup(run, run.ask())
        deliver(run, filed, take_in(run, filed))
        collect(run, decide(run, filed), digest="ab" * 32)

    # execute
    code = liaison_main(reconcile_args(party))
    text = capsys.readouterr().out

    # assert
    assert code == 1
    assert "the gateway showed a decision the node did not make" in text
    assert "follow-ups: 1 filed, 1 delivered, 1 decided" in text
    assert "1 difference(s) between the ledgers" in text
    assert text.strip().splitlines()[-1].startswith("NOT RECONCILED: 1 difference(s)")
