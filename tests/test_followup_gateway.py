"""Follow-up requests through the gateway: filed, logged, delivered, collected, shown.

Real nodes (with Freedonia's officers' inbox), a real gateway and real SQLite
ledgers on loopback: an investigator of Genovia hits a Freedonian file, files
a follow-up with the reference the answer named, a Freedonian duty officer
decides, and the investigator reads the decision back through the gateway.
Only the forgery tests put a fake node in Freedonia's place, since no real
node signs with the wrong key.
"""

from __future__ import annotations

import hashlib
import sqlite3
import time
from collections.abc import Iterator
from concurrent import futures
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest

from liaison import client
from liaison.catalog import CATALOG_V1
from liaison.config import load_node_config, node_inbox_audience
from liaison.demo.data import INVESTIGATOR_AGENCY
from liaison.demo.federation import write_gateway_config
from liaison.envelope import Envelope, open_envelope, seal
from liaison.errors import AuthenticationError, InvalidQuery, NotFound
from liaison.followup_wire import (
    ack_from_bytes,
    ack_to_bytes,
    decision_from_bytes,
    decision_to_bytes,
    followup_request_from_bytes,
)
from liaison.followups import (
    FOLLOWUP_ACK_TYPE,
    FOLLOWUP_DECISION_TYPE,
    DecisionOutcome,
    FieldChoice,
    FieldDecision,
    FollowUpAck,
    FollowUpDecision,
    FollowUpFiling,
    FollowUpStatus,
    FollowUpView,
    Urgency,
)
from liaison.inbox_client import Inbox
from liaison.keys import SigningKey, VerifyingKey
from liaison.ledger.entries import Entry, EntryKind, parse_entry
from liaison.ledger.store import LedgerStore
from liaison.messages import NodeStatus, SearchInput
from liaison.tokens import dev_issuer, issue_dev_token
from liaison.wire import envelope_to_proto
from node.server import serve_inbox
from proto.liaison.v1 import node_pb2 as pb_node
from proto.liaison.v1 import node_pb2_grpc as pb_node_grpc
from tests.conftest import Federation, start_federation
from tests.support import (
    investigator_token,
    node_config_file,
    node_receipts_file,
    own_gateway,
    running_gateway,
    sha256_match,
)

HOLDER = "freedonia"
CASE = "GEN-2024-0117"
PURPOSE = "csam-investigation"


# --- a federation whose holder has an inbox ------------------------------------------------


@dataclass
class Holding:
    """A running federation, Freedonia's officers' inbox, and the file both sides know."""

    federation: Federation
    inbox_address: str
    shared_sha256: str

    @property
    def root(self) -> Path:
        return self.federation.root

    @property
    def gateway(self) -> str:
        return self.federation.gateway.address


def start_inbox(federation: Federation, stack: ExitStack) -> str:
    """Serve Freedonia's officers' inbox until ``stack`` closes; its address."""
    config = load_node_config(node_config_file(federation.root, HOLDER), CATALOG_V1)
    assert config.inbox is not None
    server, port = serve_inbox(federation.nodes[HOLDER].core, config.inbox)
    stack.callback(lambda: server.stop(grace=None).wait())
    return f"127.0.0.1:{port}"


@contextmanager
def holding(root: Path) -> Iterator[Holding]:
    from liaison.demo.data import probes

    with ExitStack() as stack:
        federation = start_federation(root, stack)
        inbox = start_inbox(federation, stack)
        yield Holding(federation, inbox, probes().shared_sha256)


@pytest.fixture(scope="module")
def held(federation_template: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Holding]:
    """One federation for the tests of this module that look only at their own follow-ups."""
    import shutil

    root = tmp_path_factory.mktemp("followup-gateway") / "federation"
    shutil.copytree(federation_template, root)
    with holding(root) as h:
        yield h


def token(h: Holding, subject: str = "inv.alice") -> str:
    return investigator_token(h.root, subject=subject)


def hit(h: Holding, tok: str, gateway: str | None = None) -> tuple[str, str]:
    """Ask Freedonia whether it holds the shared file; the query id and the ref it named."""
    result = client.search(
        gateway or h.gateway,
        tok,
        SearchInput(sha256_match(h.shared_sha256), PURPOSE, CASE, nodes=(HOLDER,)),
    )
    (answer,) = [r for r in result.results if r.node_id == HOLDER]
    assert answer.status is NodeStatus.ANSWERED, answer
    assert answer.answer is not None and len(answer.answer.record_refs) == 1
    return result.query_id, answer.answer.record_refs[0]


def filing(query_id: str, ref: str, /, **changes: object) -> FollowUpFiling:
    fields: dict[str, object] = {
        "query_id": query_id,
        "node_id": HOLDER,
        "record_refs": (ref,),
        "fields": ("case_ref", "first_seen"),
        "purpose": PURPOSE,
        "case_ref": CASE,
        "urgency": Urgency.URGENT,
        "text": "Victim may be in Genovia; we need your case number to file an MLA request.",
    }
    fields.update(changes)
    return FollowUpFiling(**fields)  # type: ignore[arg-type]  # test values, typed above


def file_one(h: Holding, tok: str, gateway: str | None = None, **changes: object) -> FollowUpView:
    query_id, ref = hit(h, tok, gateway)
    return client.file_followup(gateway or h.gateway, tok, filing(query_id, ref, **changes))


def decide_partly(h: Holding, followup_id: str) -> None:
    """A Freedonian duty officer releases the case reference and refuses the first-seen date."""
    with officer_for(h) as inbox:
        inbox.decide(
            followup_id,
            [
                FieldChoice("case_ref", True),
                FieldChoice("first_seen", False, reason="ongoing operation"),
            ],
            "case number only; ask formally for the rest",
        )


def officer_for(h: Holding) -> Inbox:
    key = SigningKey.from_pem_file(h.root / "idp" / f"{HOLDER}.key")
    officer_jwt = issue_dev_token(
        key,
        issuer=dev_issuer(HOLDER),
        audience=node_inbox_audience(HOLDER),
        agency=HOLDER,
        subject="duty.fred",
        roles=("duty-officer",),
        ttl_s=600,
    )
    return Inbox(h.inbox_address, officer_jwt)


def node_key(root: Path, node_id: str = HOLDER) -> VerifyingKey:
    return VerifyingKey.from_pem_file(root / "nodes" / node_id / "node.pub")


# --- reading the ledgers as an auditor would --------------------------------------------


def ledger_entries(location: Path) -> list[tuple[int, Entry]]:
    store = LedgerStore(str(location), create=False)
    try:
        return [(i, parse_entry(raw)) for i, _, raw in store.rows()]
    finally:
        store.close()


def gateway_ledger(root: Path, name: str = "ledger.sqlite3") -> Path:
    return root / "gateway" / name


def of_followup(entries: list[tuple[int, Entry]], followup_id: str) -> list[tuple[int, Entry]]:
    return [(i, e) for i, e in entries if e.fields.get("followup_id") == followup_id]


def kinds(entries: list[tuple[int, Entry]]) -> list[str]:
    return [e.kind.value for _, e in entries]


# --- the whole way -------------------------------------------------------------------------


def test_a_followup_is_logged_before_it_is_delivered_and_the_node_checks_the_proof(
    held: Holding,
) -> None:
    tok = token(held)
    query_id, ref = hit(held, tok)

    view = client.file_followup(held.gateway, tok, filing(query_id, ref))

    assert view.status is FollowUpStatus.PENDING, view.detail
    assert view.ack is not None and view.decision is None
    key = node_key(held.root)
    ack = ack_from_bytes(open_envelope(view.ack, FOLLOWUP_ACK_TYPE, {key.key_id: key}))
    digest = hashlib.sha256(view.signed_request.payload).digest()
    assert (ack.followup_id, ack.node_id, ack.request_digest) == (view.followup_id, HOLDER, digest)
    assert ack.accepted, ack.reason
    request = followup_request_from_bytes(view.signed_request.payload)
    assert request.query_id == query_id and request.record_refs == (ref,)
    assert view.answer_by_ms - view.filed_at_ms == 24 * 3600 * 1000  # urgent
    # The gateway's ledger: the request first, then what the node said.
    logged = of_followup(ledger_entries(gateway_ledger(held.root)), view.followup_id)
    assert kinds(logged) == ["followup", "followup-delivery"]
    (index, entry), (_, delivery) = logged
    assert entry.fields["request_digest"] == digest.hex()
    assert entry.fields["text_hmac"] and "Victim" not in entry.raw.decode()
    assert delivery.fields["status"] == "delivered"
    assert delivery.fields["ack_digest"] == hashlib.sha256(view.ack.payload).hexdigest()
    # The node took it in on the gateway's proof: its receipt holds that very entry.
    receipts = of_followup(ledger_entries(node_receipts_file(held.root, HOLDER)), view.followup_id)
    (_, receipt), *_ = receipts
    assert receipt.kind is EntryKind.FOLLOWUP_RECEIPT
    assert receipt.fields["gateway_entry"] == entry.raw.decode()
    assert receipt.fields["gateway_leaf_index"] == index


def test_a_decision_is_collected_verified_and_logged_before_it_is_shown(held: Holding) -> None:
    tok = token(held)
    filed = file_one(held, tok)

    decide_partly(held, filed.followup_id)
    view = client.get_followup(held.gateway, tok, filed.followup_id)

    assert view.status is FollowUpStatus.PARTIAL, view.detail
    assert view.decision is not None and view.decided_at_ms >= view.filed_at_ms
    key = node_key(held.root)
    decision = decision_from_bytes(
        open_envelope(view.decision, FOLLOWUP_DECISION_TYPE, {key.key_id: key})
    )
    assert decision.outcome is DecisionOutcome.PARTIAL
    assert decision.officer == "duty.fred"
    assert decision.fields == ("case_ref",) and len(decision.rows) == 1
    assert decision.handling_of("case_ref") == "H1"  # the approve rule's default
    refused = [d for d in decision.field_decisions if not d.released]
    assert [(d.field, d.reason) for d in refused] == [("first_seen", "ongoing operation")]
    logged = of_followup(ledger_entries(gateway_ledger(held.root)), filed.followup_id)
    assert kinds(logged) == ["followup", "followup-delivery", "followup-outcome"]
    outcome = logged[-1][1]
    assert outcome.fields["outcome"] == "partial"
    assert outcome.fields["decision_digest"] == hashlib.sha256(view.decision.payload).hexdigest()
    # Looked at again: nothing new is logged, the same decision is shown.
    again = client.get_followup(held.gateway, tok, filed.followup_id)
    assert again.decision == view.decision and again.decided_at_ms == view.decided_at_ms
    listed = client.list_followups(held.gateway, tok)
    assert [v.status for v in listed if v.followup_id == filed.followup_id] == [
        FollowUpStatus.PARTIAL
    ]
    assert len(of_followup(ledger_entries(gateway_ledger(held.root)), filed.followup_id)) == 3


def test_a_pending_followup_says_it_waits_for_an_officer(held: Holding) -> None:
    tok = token(held)
    filed = file_one(held, tok, fields=("category",), urgency=Urgency.IMMEDIATE_RISK)

    view = client.get_followup(held.gateway, tok, filed.followup_id)

    assert view.status is FollowUpStatus.PENDING
    assert "waiting for a duty officer at freedonia" in view.detail
    assert view.answer_by_ms - view.filed_at_ms == 3600 * 1000
    assert not view.overdue(view.filed_at_ms + 1000)
    overdue = client.list_followups(held.gateway, tok, overdue_only=True)
    assert filed.followup_id not in {v.followup_id for v in overdue}


def test_a_ref_the_answer_did_not_name_is_refused_at_delivery(held: Holding) -> None:
    tok = token(held)
    query_id, _ = hit(held, tok)

    view = client.file_followup(held.gateway, tok, filing(query_id, "r-NOTISSUEDBYTHISNODE"))

    assert view.status is FollowUpStatus.REFUSED
    assert view.ack is not None and view.decision is None
    ack = ack_from_bytes(view.ack.payload)
    assert not ack.accepted and view.detail == ack.reason
    logged = of_followup(ledger_entries(gateway_ledger(held.root)), view.followup_id)
    assert [e.fields.get("status") for _, e in logged] == [None, "refused"]


def test_another_investigator_can_neither_see_nor_fetch_it(held: Holding) -> None:
    alice = token(held)
    filed = file_one(held, alice)
    bob = token(held, subject="inv.bob")

    with pytest.raises(NotFound, match=r"no follow-up request .* of yours"):
        client.get_followup(held.gateway, bob, filed.followup_id)
    with pytest.raises(NotFound, match=r"no follow-up request .* of yours"):
        client.get_followup(held.gateway, bob, "no-such-id")

    assert filed.followup_id not in {
        v.followup_id for v in client.list_followups(held.gateway, bob)
    }
    assert filed.followup_id in {v.followup_id for v in client.list_followups(held.gateway, alice)}


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"node_id": "atlantis"}, r"unknown node 'atlantis'; this federation has: freedonia"),
        ({"fields": ("shoe_size",)}, r"unknown field\(s\) 'shoe_size': not in the catalog"),
        ({"record_refs": ()}, r"name 1 to 16 record references from the answer \(--ref\), got 0"),
        ({"record_refs": ("r-ü",)}, r"record reference 'r-ü' is not one a node issues"),
        ({"purpose": "curiosity"}, r"unknown purpose 'curiosity'; use one of: csam-investigation"),
        ({"case_ref": ""}, r"a case reference is required \(--case-ref\)"),
        ({"query_id": ""}, r"name the query whose answer named the records \(--query-id\)"),
        ({"text": "x" * 4001}, r"the request's text takes at most 4000 characters, got 4001"),
    ],
)
def test_an_invalid_filing_is_refused_with_a_clear_message_and_nothing_logged(
    held: Holding, changes: dict[str, object], message: str
) -> None:
    tok = token(held)
    query_id, ref = hit(held, tok)
    before = len(ledger_entries(gateway_ledger(held.root)))

    with pytest.raises(InvalidQuery, match=message):
        client.file_followup(held.gateway, tok, filing(query_id, ref, **changes))

    after = ledger_entries(gateway_ledger(held.root))
    assert len(after) == before
    assert EntryKind.FOLLOWUP not in {e.kind for _, e in after[before:]}


def test_a_filing_without_an_urgency_is_refused(held: Holding) -> None:
    from proto.liaison.v1 import gateway_pb2 as pb_gateway
    from proto.liaison.v1 import gateway_pb2_grpc as pb_gateway_grpc

    tok = token(held)
    query_id, ref = hit(held, tok)
    with grpc.insecure_channel(held.gateway) as channel:
        stub = pb_gateway_grpc.GatewayServiceStub(channel)
        with pytest.raises(grpc.RpcError) as caught:
            stub.FileFollowUp(
                pb_gateway.FileFollowUpRequest(
                    query_id=query_id,
                    node_id=HOLDER,
                    record_refs=[ref],
                    fields=["case_ref"],
                    purpose=PURPOSE,
                    case_ref=CASE,
                ),
                metadata=(("authorization", f"Bearer {tok}"),),
                timeout=10,
            )
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "urgency" in (caught.value.details() or "")


def test_a_followup_without_a_valid_token_is_refused(held: Holding) -> None:
    with pytest.raises(AuthenticationError):
        client.list_followups(held.gateway, "not-a-jwt")
    with pytest.raises(AuthenticationError):
        client.get_followup(held.gateway, "not-a-jwt", "any")


def test_rows_survive_a_gateway_restart(held: Holding) -> None:
    # A gateway of its own, with a ledger of its own, stopped and started again.
    config = write_gateway_config(
        held.root,
        [INVESTIGATOR_AGENCY],
        {n: node.address for n, node in held.federation.nodes.items()},
        ledger="ledger-restart.sqlite3",
        name="gateway-restart.toml",
    )
    tok = token(held)
    with running_gateway(config) as first:
        decided = file_one(held, tok, first.address)
        pending = file_one(held, tok, first.address, fields=("category",))
        decide_partly(held, decided.followup_id)
        shown = client.get_followup(first.address, tok, decided.followup_id)
    assert shown.status is FollowUpStatus.PARTIAL

    with running_gateway(config) as again:
        after = client.get_followup(again.address, tok, decided.followup_id)
        listed = client.list_followups(again.address, tok)

    assert after.status is FollowUpStatus.PARTIAL
    assert after.decision == shown.decision and after.decided_at_ms == shown.decided_at_ms
    assert after.signed_request == decided.signed_request
    assert [v.followup_id for v in listed] == [pending.followup_id, decided.followup_id]
    assert listed[0].status is FollowUpStatus.PENDING and listed[0].ack == pending.ack
    logged = of_followup(
        ledger_entries(gateway_ledger(held.root, "ledger-restart.sqlite3")), decided.followup_id
    )
    assert kinds(logged) == ["followup", "followup-delivery", "followup-outcome"]


@pytest.mark.postgresql
def test_replicas_sharing_a_postgresql_ledger_share_every_followup(
    held: Holding, postgres_url: str
) -> None:
    from liaison.bench.replicas import share

    config = write_gateway_config(
        held.root,
        [INVESTIGATOR_AGENCY],
        {n: node.address for n, node in held.federation.nodes.items()},
        ledger=postgres_url,
        name="gateway-replicas.toml",
    )
    share(config)
    tok = token(held)
    with running_gateway(config) as a, running_gateway(config) as b:
        filed = file_one(held, tok, a.address)
        seen_by_b = client.get_followup(b.address, tok, filed.followup_id)
        decide_partly(held, filed.followup_id)
        decided_by_b = client.get_followup(b.address, tok, filed.followup_id)
        decided_by_a = client.get_followup(a.address, tok, filed.followup_id)
        listed_by_a = client.list_followups(a.address, tok)
        with pytest.raises(NotFound):
            client.get_followup(b.address, token(held, "inv.bob"), filed.followup_id)

    assert seen_by_b.status is FollowUpStatus.PENDING and seen_by_b.ack == filed.ack
    assert decided_by_b.status is FollowUpStatus.PARTIAL
    assert decided_by_a.decision == decided_by_b.decision
    assert decided_by_a.decided_at_ms == decided_by_b.decided_at_ms
    assert [v.followup_id for v in listed_by_a] == [filed.followup_id]
    store = LedgerStore(postgres_url, create=False)
    try:
        entries = [(i, parse_entry(raw)) for i, _, raw in store.rows()]
    finally:
        store.close()
    logged = of_followup(entries, filed.followup_id)
    # Written once each, whichever replica learnt it.
    assert kinds(logged) == ["followup", "followup-delivery", "followup-outcome"]


def test_an_unreachable_node_leaves_the_request_pending_and_says_why(held: Holding) -> None:
    # A node that says UNAVAILABLE may have taken the request in (its reply lost)
    # or be unable to write its ledger. Only the node can say it never arrived
    # (Collect, once its delivery window is over); until it answers, pending.
    h = held
    tok = token(h)
    query_id, ref = hit(h, tok)
    with own_gateway(h.root, {HOLDER: "127.0.0.1:1"}) as gateway:
        view = client.file_followup(gateway.address, tok, filing(query_id, ref))
        location = _ledger_of(gateway.core)
        _expire(location, view.followup_id)
        later = client.get_followup(gateway.address, tok, view.followup_id)
        logged = of_followup(ledger_entries(location), view.followup_id)

    assert view.status is FollowUpStatus.PENDING and view.ack is None
    assert "node freedonia could not be reached" in view.detail
    assert later.status is FollowUpStatus.PENDING
    assert "node freedonia could not be asked" in later.detail
    assert kinds(logged) == ["followup"]


# --- forgeries: a fake node in Freedonia's place ------------------------------------------


class FakeNode(pb_node_grpc.NodeServiceServicer):  # type: ignore[misc]  # generated base is untyped
    """Acknowledges and decides every follow-up, signing as ``ack_key`` and ``decision_key``."""

    def __init__(self, ack_key: SigningKey, decision_key: SigningKey | None = None) -> None:
        self.ack_key = ack_key
        self.decision_key = decision_key
        self.acks: dict[str, pb_node.CollectResponse] = {}
        self.requests: dict[str, bytes] = {}

    def Deliver(
        self, request: pb_node.DeliverRequest, context: grpc.ServicerContext
    ) -> pb_node.DeliverResponse:
        payload = request.request.payload
        followup = followup_request_from_bytes(payload)
        self.requests[followup.followup_id] = payload
        return pb_node.DeliverResponse(ack=envelope_to_proto(self._ack(payload)))

    def Collect(
        self, request: pb_node.CollectRequest, context: grpc.ServicerContext
    ) -> pb_node.CollectResponse:
        response = pb_node.CollectResponse()
        for followup_id in request.followup_ids:
            payload = self.requests.get(followup_id)
            if payload is None:
                continue
            response.acks.append(envelope_to_proto(self._ack(payload)))
            if self.decision_key is not None:
                response.decisions.append(envelope_to_proto(self._decision(payload)))
        return response

    def _ack(self, payload: bytes) -> Envelope:
        followup = followup_request_from_bytes(payload)
        ack = FollowUpAck(
            followup_id=followup.followup_id,
            node_id=HOLDER,
            request_digest=hashlib.sha256(payload).digest(),
            received_at_ms=time.time_ns() // 1_000_000,
            accepted=True,
            reason="",
            rules=("genovian-follow-up",),
            answer_by_ms=followup.answer_by_ms,
            decidable_fields=followup.fields,
        )
        return seal(self.ack_key, FOLLOWUP_ACK_TYPE, ack_to_bytes(ack))

    def _decision(self, payload: bytes) -> Envelope:
        assert self.decision_key is not None
        followup = followup_request_from_bytes(payload)
        decision = FollowUpDecision(
            followup_id=followup.followup_id,
            node_id=HOLDER,
            request_digest=hashlib.sha256(payload).digest(),
            decided_at_ms=time.time_ns() // 1_000_000,
            outcome=DecisionOutcome.APPROVED,
            field_decisions=tuple(FieldDecision(f, True, "H0") for f in followup.fields),
            reason="all yours",
            officer="mallory",
            officer_issuer="",
            rules=("genovian-follow-up",),
            fields=followup.fields,
            rows=(tuple("forged" for _ in followup.fields),),
        )
        return seal(self.decision_key, FOLLOWUP_DECISION_TYPE, decision_to_bytes(decision))


@contextmanager
def fake_node(servicer: FakeNode) -> Iterator[str]:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    pb_node_grpc.add_NodeServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield f"127.0.0.1:{port}"
    finally:
        server.stop(grace=None).wait()


def _ledger_of(gateway_core: object) -> Path:
    url: str = gateway_core.ledger.store.url  # type: ignore[attr-defined]  # a GatewayCore
    return Path(url.removeprefix("sqlite:///"))


def test_an_acknowledgement_signed_with_the_wrong_key_is_refused_and_not_logged(
    federation_dir: Path,
) -> None:
    root = federation_dir
    tok = investigator_token(root)
    forger = FakeNode(SigningKey.generate())
    with fake_node(forger) as address, own_gateway(root, {HOLDER: address}) as gateway:
        view = client.file_followup(gateway.address, tok, filing("q-1", "r-ABC"))
        shown = client.get_followup(gateway.address, tok, view.followup_id)
        logged = of_followup(ledger_entries(_ledger_of(gateway.core)), view.followup_id)
        # Once its delivery window is over, a request never acknowledged never arrived.
        _expire(_ledger_of(gateway.core), view.followup_id)
        expired = client.get_followup(gateway.address, tok, view.followup_id)
        logged_after = of_followup(ledger_entries(_ledger_of(gateway.core)), view.followup_id)

    assert view.status is FollowUpStatus.PENDING and view.ack is None
    assert "acknowledgement did not verify" in view.detail
    assert shown.status is FollowUpStatus.PENDING and shown.ack is None
    assert "not confirmed" in shown.detail
    assert kinds(logged) == ["followup"]  # the forged acknowledgement is nowhere
    assert expired.status is FollowUpStatus.NOT_DELIVERED and expired.ack is None
    assert "has not acknowledged it, and its delivery window has passed" in expired.detail
    assert [e.fields.get("status") for _, e in logged_after] == [None, "not delivered"]
    assert logged_after[-1][1].fields["ack_digest"] == ""


def _expire(ledger: Path, followup_id: str) -> None:
    """Move a stored request's delivery window into the past, as if filed long ago."""
    conn = sqlite3.connect(ledger, timeout=10)
    try:
        with conn:
            conn.execute(
                "UPDATE liaison_gateway_followup SET expires_at_ms = 1000 WHERE followup_id = ?",
                (followup_id,),
            )
    finally:
        conn.close()


def test_a_decision_signed_with_the_wrong_key_is_refused_and_not_logged(
    federation_dir: Path,
) -> None:
    root = federation_dir
    tok = investigator_token(root)
    # The acknowledgement is genuine (signed with Freedonia's own key); the decision is not.
    genuine = SigningKey.from_pem_file(root / "nodes" / HOLDER / "node.key")
    forger = FakeNode(genuine, decision_key=SigningKey.generate())
    with fake_node(forger) as address, own_gateway(root, {HOLDER: address}) as gateway:
        view = client.file_followup(gateway.address, tok, filing("q-1", "r-ABC"))
        shown = client.get_followup(gateway.address, tok, view.followup_id)
        listed = client.list_followups(gateway.address, tok)
        logged = of_followup(ledger_entries(_ledger_of(gateway.core)), view.followup_id)

    assert view.status is FollowUpStatus.PENDING and view.ack is not None
    assert shown.status is FollowUpStatus.PENDING and shown.decision is None
    assert "decision from node freedonia was discarded: it did not verify" in shown.detail
    assert [v.status for v in listed] == [FollowUpStatus.PENDING]
    assert kinds(logged) == ["followup", "followup-delivery"]


def test_a_decision_releasing_what_was_not_asked_is_refused_and_not_logged(
    federation_dir: Path,
) -> None:
    root = federation_dir
    tok = investigator_token(root)
    genuine = SigningKey.from_pem_file(root / "nodes" / HOLDER / "node.key")

    class Overreaching(FakeNode):
        def _decision(self, payload: bytes) -> Envelope:
            followup = followup_request_from_bytes(payload)
            fields = (*followup.fields, "category")
            decision = FollowUpDecision(
                followup_id=followup.followup_id,
                node_id=HOLDER,
                request_digest=hashlib.sha256(payload).digest(),
                decided_at_ms=time.time_ns() // 1_000_000,
                outcome=DecisionOutcome.APPROVED,
                field_decisions=tuple(FieldDecision(f, True, "H0") for f in fields),
                reason="",
                officer="duty.fred",
                officer_issuer="",
                rules=(),
                fields=fields,
                rows=(tuple("x" for _ in fields),),
            )
            return seal(genuine, FOLLOWUP_DECISION_TYPE, decision_to_bytes(decision))

    with (
        fake_node(Overreaching(genuine, decision_key=genuine)) as address,
        own_gateway(root, {HOLDER: address}) as gateway,
    ):
        view = client.file_followup(gateway.address, tok, filing("q-1", "r-ABC"))
        shown = client.get_followup(gateway.address, tok, view.followup_id)
        logged = of_followup(ledger_entries(_ledger_of(gateway.core)), view.followup_id)

    assert shown.status is FollowUpStatus.PENDING and shown.decision is None
    assert "fields not asked for: category" in shown.detail
    assert kinds(logged) == ["followup", "followup-delivery"]


def test_the_stored_rows_hold_no_text_or_released_value_in_clear(held: Holding) -> None:
    tok = token(held)
    filed = file_one(held, tok, text="the words only the duty officer may read")
    decide_partly(held, filed.followup_id)
    view = client.get_followup(held.gateway, tok, filed.followup_id)
    assert view.decision is not None
    (value,) = decision_from_bytes(view.decision.payload).rows[0]
    assert value

    conn = sqlite3.connect(f"file:{gateway_ledger(held.root)}?mode=ro", uri=True)
    try:
        (row,) = conn.execute(
            "SELECT * FROM liaison_gateway_followup WHERE followup_id = ?", (filed.followup_id,)
        ).fetchall()
    finally:
        conn.close()
    stored = b"".join(c if isinstance(c, bytes) else str(c).encode() for c in row)
    assert b"the words only the duty officer" not in stored
    assert value.encode() not in stored
