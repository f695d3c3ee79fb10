"""Follow-up requests at the holding node: delivery, the officers' inbox, decisions, attacks.

Real node gRPC servers (the gateway-facing port and the officers' inbox port)
on loopback, real SQLite ledgers, real signatures. Requests are signed and
logged here as a gateway would, so each attack can be made exactly.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path

import grpc
import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from liaison.catalog import CATALOG_V1, CATALOG_VERSION
from liaison.config import load_node_config, node_inbox_audience
from liaison.demo.federation import GATEWAY_ID
from liaison.envelope import Envelope, open_envelope, seal
from liaison.errors import AuthenticationError, InvalidQuery, NotFound, PolicyDenied
from liaison.followup_wire import (
    ack_from_bytes,
    decision_from_bytes,
    followup_request_to_bytes,
)
from liaison.followups import (
    DELIVERY_WINDOW_MS,
    FOLLOWUP_ACK_TYPE,
    FOLLOWUP_DECISION_TYPE,
    FOLLOWUP_REQUEST_TYPE,
    DecisionOutcome,
    FieldChoice,
    FollowUpRequest,
    Urgency,
    answer_by,
)
from liaison.inbox_client import Inbox
from liaison.keys import KeyId, SigningKey, VerifyingKey
from liaison.ledger.entries import EntryKind, followup_entry, parse_entry
from liaison.ledger.logged import LedgerProof, SignedRequest
from liaison.messages import Requester
from liaison.query import Comparator, Operation, Predicate, Query
from liaison.tokens import dev_issuer, issue_dev_token
from liaison.wire import (
    answer_from_bytes,
    delivery_to_proto,
    envelope_from_proto,
)
from node.inbox import MAX_LISTED
from node.server import serve_inbox
from proto.liaison.v1 import node_pb2 as pb_node
from proto.liaison.v1 import node_pb2_grpc as pb_node_grpc
from tests.support import (
    INVESTIGATOR,
    TEST_AUDIT_KEY,
    RunningNode,
    call_node,
    gateway_signing_key,
    investigator_token,
    make_request,
    node_config_file,
    node_receipts_file,
    now_ms,
    read_receipts_db,
    running_node,
    sha256_match,
    sign_request,
)
from tests.support import (
    test_ledger as gateway_test_ledger,
)

HOLDER = "freedonia"


@dataclass
class Holder:
    root: Path
    node: RunningNode
    inbox_address: str
    shared_sha256: str

    @property
    def address(self) -> str:
        return self.node.address


@contextmanager
def holder(root: Path) -> Iterator[Holder]:
    """Freedonia's node, with its officers' inbox, running in this process."""
    from liaison.demo.data import probes

    config_path = node_config_file(root, HOLDER)
    config = load_node_config(config_path, CATALOG_V1)
    assert config.inbox is not None
    with running_node(config_path) as node:
        server, port = serve_inbox(node.core, config.inbox)
        try:
            yield Holder(root, node, f"127.0.0.1:{port}", probes().shared_sha256)
        finally:
            server.stop(grace=None).wait()


@pytest.fixture
def fred(federation_dir: Path) -> Iterator[Holder]:
    with holder(federation_dir) as h:
        yield h


def officer_token(
    root: Path,
    *,
    agency: str = HOLDER,
    subject: str = "duty.fred",
    roles: tuple[str, ...] = ("duty-officer",),
    **kwargs: object,
) -> str:
    key = SigningKey.from_pem_file(root / "idp" / f"{agency}.key")
    return issue_dev_token(
        key,
        issuer=str(kwargs.pop("issuer", dev_issuer(agency))),
        audience=str(kwargs.pop("audience", node_inbox_audience(HOLDER))),
        agency=agency,
        subject=subject,
        roles=roles,
        ttl_s=600,
    )


def hit(h: Holder, requester: Requester = INVESTIGATOR) -> tuple[str, str]:
    """Ask Freedonia whether it holds the shared file; return the query id and the ref."""
    request = make_request(sha256_match(h.shared_sha256), audience=(HOLDER,), requester=requester)
    response = call_node(h.address, sign_request(gateway_signing_key(h.root), request))
    answer = answer_from_bytes(response.answer.payload)
    assert answer.hit and len(answer.record_refs) == 1
    return request.query_id, answer.record_refs[0]


def followup(
    query_id: str,
    refs: tuple[str, ...],
    *,
    fields: tuple[str, ...] = ("case_ref", "first_seen"),
    requester: Requester = INVESTIGATOR,
    urgency: Urgency = Urgency.IMMEDIATE_RISK,
    **overrides: object,
) -> FollowUpRequest:
    issued = now_ms()
    request = FollowUpRequest(
        followup_id=str(uuid.uuid4()),
        gateway_id=GATEWAY_ID,
        issued_at_ms=issued,
        expires_at_ms=issued + DELIVERY_WINDOW_MS,
        nonce=os.urandom(16),
        node_id=HOLDER,
        requester=requester,
        query_id=query_id,
        record_refs=refs,
        fields=fields,
        purpose="victim-identification",
        case_ref="GEN-2026-0142",
        legal_basis="",
        urgency=urgency,
        answer_by_ms=answer_by(issued, urgency),
        text="A child in the series may be at risk; we need the case to coordinate.",
        catalog_version=CATALOG_VERSION,
    )
    return replace(request, **overrides)  # type: ignore[arg-type]  # test overrides by name


def logged(key: SigningKey, request: FollowUpRequest, envelope: Envelope) -> LedgerProof:
    entry = followup_entry(
        request,
        request_digest=hashlib.sha256(envelope.payload).digest(),
        key_id=key.key_id,
        audit_key=TEST_AUDIT_KEY,
    )
    appended = gateway_test_ledger(key, request.gateway_id).append(entry, prove=True)
    assert appended.checkpoint is not None
    return LedgerProof(entry, appended.index, appended.inclusion_path, appended.checkpoint.note)


def signed(key: SigningKey, request: FollowUpRequest, *, log: bool = True) -> SignedRequest:
    envelope = seal(key, FOLLOWUP_REQUEST_TYPE, followup_request_to_bytes(request))
    return SignedRequest(envelope, logged(key, request, envelope) if log else None)


def deliver(address: str, delivery: SignedRequest) -> Envelope:
    with grpc.insecure_channel(address) as channel:
        response = pb_node_grpc.NodeServiceStub(channel).Deliver(
            delivery_to_proto(delivery), timeout=10
        )
    return envelope_from_proto(response.ack)


def refusal(address: str, delivery: SignedRequest) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as caught:
        deliver(address, delivery)
    return caught.value


def collect(address: str, *ids: str) -> pb_node.CollectResponse:
    with grpc.insecure_channel(address) as channel:
        response: pb_node.CollectResponse = pb_node_grpc.NodeServiceStub(channel).Collect(
            pb_node.CollectRequest(followup_ids=list(ids)), timeout=10
        )
    return response


def node_key(h: Holder) -> dict[KeyId, VerifyingKey]:
    key = VerifyingKey.from_pem_file(h.root / "nodes" / HOLDER / "node.pub")
    return {key.key_id: key}


def receipts(h: Holder, kind: EntryKind) -> list[dict[str, object]]:
    rows = read_receipts_db(
        node_receipts_file(h.root, HOLDER), "SELECT entry FROM liaison_ledger_entries"
    )
    entries = [parse_entry(bytes(row[0])) for row in rows]
    return [dict(e.fields) for e in entries if e.kind is kind]


# --- the whole path at the node ------------------------------------------------------------


def test_a_hit_names_a_reference_and_the_holder_sees_who_matched_it(fred: Holder) -> None:
    query_id, ref = hit(fred)
    assert ref.startswith("r-") and len(ref) <= 64
    with Inbox(fred.inbox_address, officer_token(fred.root)) as inbox:
        notices = [i for i in inbox.items(include_all=True) if i.kind == "hit"]
    (notice,) = notices
    assert notice.query_id == query_id
    assert notice.requester.agency == "genovia"
    assert notice.purpose == "csam-investigation" and notice.case_ref == "GEN-TEST-1"
    assert notice.record_refs == (ref,)
    # Without a follow-up, the investigator's words never reach the holder.
    assert notice.text == "" and notice.fields == ()
    (receipt,) = [r for r in receipts(fred, EntryKind.RECEIPT) if r["query_id"] == query_id]
    assert receipt["holder_notified"] is True


def test_a_follow_up_is_received_shown_and_decided_field_by_field(fred: Holder) -> None:
    key = gateway_signing_key(fred.root)
    query_id, ref = hit(fred)
    request = followup(query_id, (ref,))
    delivery = signed(key, request)
    ack_envelope = deliver(fred.address, delivery)
    ack = ack_from_bytes(open_envelope(ack_envelope, FOLLOWUP_ACK_TYPE, node_key(fred)))
    assert ack.accepted, ack.reason
    assert ack.followup_id == request.followup_id
    assert ack.request_digest == hashlib.sha256(delivery.envelope.payload).digest()
    assert set(ack.decidable_fields) == {"case_ref", "first_seen"}
    # Nothing is released by delivery: only a decision releases.
    assert collect(fred.address, request.followup_id).decisions == []

    with Inbox(fred.inbox_address, officer_token(fred.root)) as inbox:
        (pending,) = inbox.items()
        assert pending.id == request.followup_id and pending.status == "pending"
        shown = inbox.item(request.followup_id)
        assert shown.text.startswith("A child in the series")
        assert shown.preview_fields == ("case_ref", "first_seen")
        assert len(shown.preview_rows) == 1 and all(shown.preview_rows[0])
        envelope = inbox.decide(
            request.followup_id,
            [
                FieldChoice("first_seen", True),
                FieldChoice("case_ref", False, reason="our case is under seal"),
            ],
            "first-seen date only; the case file stays here",
        )
        assert inbox.items() == []
    decision = decision_from_bytes(open_envelope(envelope, FOLLOWUP_DECISION_TYPE, node_key(fred)))
    assert decision.outcome is DecisionOutcome.PARTIAL
    assert decision.officer == "duty.fred"
    assert decision.fields == ("first_seen",)
    assert decision.rows == ((shown.preview_rows[0][1],),)
    assert decision.handling_of("first_seen") == "H1"  # the policy's default code
    refused = {d.field: d.reason for d in decision.field_decisions if not d.released}
    assert refused == {"case_ref": "our case is under seal"}
    assert decision.request_digest == ack.request_digest

    collected = collect(fred.address, request.followup_id)
    assert [e.payload for e in collected.decisions] == [envelope.payload]
    (taken,) = receipts(fred, EntryKind.FOLLOWUP_RECEIPT)
    assert taken["followup_id"] == request.followup_id and taken["accepted"] is True
    (decided,) = receipts(fred, EntryKind.FOLLOWUP_DECISION)
    assert decided["officer"] == "duty.fred" and decided["outcome"] == "partial"
    assert decided["decision_digest"] == hashlib.sha256(envelope.payload).hexdigest()


def test_the_same_delivery_again_gets_the_same_acknowledgement_and_nothing_new(
    fred: Holder,
) -> None:
    key = gateway_signing_key(fred.root)
    query_id, ref = hit(fred)
    delivery = signed(key, followup(query_id, (ref,)))
    first = deliver(fred.address, delivery)
    again = deliver(fred.address, delivery)
    assert again == first
    assert len(receipts(fred, EntryKind.FOLLOWUP_RECEIPT)) == 1


def test_a_follow_up_id_reused_for_other_bytes_is_refused(fred: Holder) -> None:
    key = gateway_signing_key(fred.root)
    query_id, ref = hit(fred)
    request = followup(query_id, (ref,))
    deliver(fred.address, signed(key, request))
    other = replace(request, fields=("category",), nonce=os.urandom(16))
    error = refusal(fred.address, signed(key, other))
    assert error.code() == grpc.StatusCode.ALREADY_EXISTS


# --- forged, unlogged, misdirected ---------------------------------------------------------


def test_a_follow_up_signed_by_an_unknown_key_is_refused(fred: Holder) -> None:
    query_id, ref = hit(fred)
    forger = SigningKey.generate()
    error = refusal(fred.address, signed(forger, followup(query_id, (ref,))))
    assert error.code() == grpc.StatusCode.UNAUTHENTICATED
    assert receipts(fred, EntryKind.FOLLOWUP_RECEIPT) == []


def test_tampered_bytes_under_the_gateways_signature_are_refused(fred: Holder) -> None:
    key = gateway_signing_key(fred.root)
    query_id, ref = hit(fred)
    delivery = signed(key, followup(query_id, (ref,)))
    payload = bytearray(delivery.envelope.payload)
    payload[-3] ^= 0x01
    forged = replace(delivery, envelope=replace(delivery.envelope, payload=bytes(payload)))
    assert refusal(fred.address, forged).code() == grpc.StatusCode.UNAUTHENTICATED


def test_an_unlogged_follow_up_is_refused(fred: Holder) -> None:
    key = gateway_signing_key(fred.root)
    query_id, ref = hit(fred)
    request = followup(query_id, (ref,))
    error = refusal(fred.address, signed(key, request, log=False))
    assert error.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "ledger proof" in (error.details() or "")
    # A proof of another follow-up (logged) does not cover this one.
    other = signed(key, followup(query_id, (ref,)))
    mixed = SignedRequest(signed(key, request, log=False).envelope, other.proof)
    error = refusal(fred.address, mixed)
    assert error.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "does not describe" in (error.details() or "")


def test_a_query_proof_does_not_pass_for_a_follow_up(fred: Holder) -> None:
    key = gateway_signing_key(fred.root)
    query_id, ref = hit(fred)
    query = sign_request(key, make_request(sha256_match(fred.shared_sha256), audience=(HOLDER,)))
    envelope = signed(key, followup(query_id, (ref,)), log=False).envelope
    error = refusal(fred.address, SignedRequest(envelope, query.proof))
    assert error.code() == grpc.StatusCode.PERMISSION_DENIED


def test_a_follow_up_for_another_node_is_refused(fred: Holder) -> None:
    key = gateway_signing_key(fred.root)
    query_id, ref = hit(fred)
    error = refusal(fred.address, signed(key, followup(query_id, (ref,), node_id="ruritania")))
    assert error.code() == grpc.StatusCode.PERMISSION_DENIED


def test_an_expired_follow_up_is_refused(fred: Holder) -> None:
    key = gateway_signing_key(fred.root)
    query_id, ref = hit(fred)
    old = followup(query_id, (ref,))
    stale = replace(
        old,
        issued_at_ms=old.issued_at_ms - 3 * DELIVERY_WINDOW_MS,
        expires_at_ms=old.issued_at_ms - 2 * DELIVERY_WINDOW_MS,
    )
    error = refusal(fred.address, signed(key, stale))
    assert error.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "expired" in (error.details() or "")


@pytest.mark.parametrize(
    "why",
    ["another agency's reference", "another query's reference", "a made-up reference"],
)
def test_a_reference_not_issued_to_the_asker_for_that_query_releases_nothing(
    fred: Holder, why: str
) -> None:
    key = gateway_signing_key(fred.root)
    query_id, ref = hit(fred)
    sylvanian = replace(INVESTIGATOR, agency="sylvania")
    if why == "another agency's reference":
        request = followup(query_id, (ref,), requester=sylvanian)
    elif why == "another query's reference":
        other_query, _ = hit(fred)
        request = followup(other_query, (ref,))
    else:
        made_up = "r-" + base64.b32encode(os.urandom(16)).decode().rstrip("=").lower()
        request = followup(query_id, (made_up,))
    ack = ack_from_bytes(deliver(fred.address, signed(key, request)).payload)
    assert not ack.accepted
    assert "was not issued by this node" in ack.reason
    assert ack.decidable_fields == ()
    with Inbox(fred.inbox_address, officer_token(fred.root)) as inbox:
        assert inbox.items() == []
        with pytest.raises(InvalidQuery, match="refused already"):
            inbox.decide(request.followup_id, [FieldChoice("first_seen", True)], "")
    # The attempt itself is on record.
    (taken,) = receipts(fred, EntryKind.FOLLOWUP_RECEIPT)
    assert taken["accepted"] is False


# --- the policy bounds every decision ---------------------------------------------------------


def test_an_officer_cannot_release_a_field_the_policy_keeps(fred: Holder) -> None:
    key = gateway_signing_key(fred.root)
    query_id, ref = hit(fred)
    request = followup(query_id, (ref,), fields=("first_seen", "md5"))
    ack = ack_from_bytes(deliver(fred.address, signed(key, request)).payload)
    assert ack.accepted and ack.decidable_fields == ("first_seen",)
    with Inbox(fred.inbox_address, officer_token(fred.root)) as inbox:
        with pytest.raises(PolicyDenied, match="'md5' may not be released"):
            inbox.decide(request.followup_id, [FieldChoice("md5", True)], "")
        envelope = inbox.decide(
            request.followup_id, [FieldChoice("first_seen", True, "H2")], "urgent case"
        )
        with pytest.raises(InvalidQuery, match="a decision is final"):
            inbox.decide(request.followup_id, [FieldChoice("first_seen", True)], "")
    decision = decision_from_bytes(envelope.payload)
    assert decision.fields == ("first_seen",)
    assert decision.handling_of("first_seen") == "H2"
    md5 = next(d for d in decision.field_decisions if d.field == "md5")
    assert not md5.released and md5.reason


def test_a_request_outside_every_approve_rule_is_refused_at_once(fred: Holder) -> None:
    key = gateway_signing_key(fred.root)
    query_id, ref = hit(fred)
    # The approve rule wants a Genovian case number (GEN-*).
    request = followup(query_id, (ref,), case_ref="INT-2026-9")
    ack = ack_from_bytes(deliver(fred.address, signed(key, request)).payload)
    assert not ack.accepted and ack.decidable_fields == ()


@pytest.mark.parametrize(
    ("who", "error", "fragment"),
    [
        # Freedonia's inbox trusts only Freedonia's identity provider.
        ("another agency's officer", AuthenticationError, "not trusted|issuer"),
        ("an officer without the role", PolicyDenied, "takes a role"),
        ("an investigator's gateway token", AuthenticationError, None),
        ("a token for another node's inbox", AuthenticationError, "audience"),
        ("an unsigned token (alg none)", AuthenticationError, None),
        ("no token", AuthenticationError, None),
    ],
)
def test_only_the_holders_duty_officers_open_the_inbox(
    fred: Holder, who: str, error: type[Exception], fragment: str | None
) -> None:
    root = fred.root
    if who == "another agency's officer":
        token = officer_token(root, agency="genovia")
    elif who == "an officer without the role":
        token = officer_token(root, roles=("investigator",))
    elif who == "an investigator's gateway token":
        token = investigator_token(root)
    elif who == "a token for another node's inbox":
        token = officer_token(root, audience=node_inbox_audience("ruritania"))
    elif who == "an unsigned token (alg none)":
        claims = json.loads(
            base64.urlsafe_b64decode(officer_token(root).split(".")[1] + "==").decode()
        )
        header = base64.urlsafe_b64encode(b'{"alg":"none","typ":"JWT"}').rstrip(b"=")
        body = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=")
        token = f"{header.decode()}.{body.decode()}."
    else:
        token = ""
    with Inbox(fred.inbox_address, token) as inbox, pytest.raises(error, match=fragment):
        inbox.items()
    with Inbox(fred.inbox_address, token) as inbox, pytest.raises(error):
        inbox.decide("anything", [FieldChoice("first_seen", True)], "")


def test_an_unknown_item_is_not_found(fred: Holder) -> None:
    with Inbox(fred.inbox_address, officer_token(fred.root)) as inbox, pytest.raises(NotFound):
        inbox.item("no-such-item")


# --- nothing leaves without a recorded human decision ---------------------------------------

FIELDS = ("case_ref", "first_seen", "category", "md5")


@settings(
    max_examples=12,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    asked=st.lists(st.sampled_from(FIELDS), min_size=1, max_size=4, unique=True),
    release=st.lists(st.sampled_from(FIELDS), max_size=4, unique=True),
)
def test_released_fields_are_exactly_the_decided_ones_within_the_policy(
    fred: Holder, asked: list[str], release: list[str]
) -> None:
    key = gateway_signing_key(fred.root)
    query_id, ref = hit(fred)
    request = followup(query_id, (ref,), fields=tuple(asked))
    ack = ack_from_bytes(deliver(fred.address, signed(key, request)).payload)
    decidable = set(ack.decidable_fields)
    # Freedonia's approve rule releases these three on request; md5 never.
    assert decidable == set(asked) & {"case_ref", "first_seen", "category"}
    choices = [FieldChoice(f, True) for f in release if f in asked]
    with Inbox(fred.inbox_address, officer_token(fred.root)) as inbox:
        if not ack.accepted:
            assert collect(fred.address, request.followup_id).decisions == []
            return
        if any(c.field not in decidable for c in choices):
            with pytest.raises(PolicyDenied):
                inbox.decide(request.followup_id, choices, "")
            assert collect(fred.address, request.followup_id).decisions == []
            return
        envelope = inbox.decide(request.followup_id, choices, "")
    decision = decision_from_bytes(envelope.payload)
    assert set(decision.fields) == {c.field for c in choices}
    assert all(len(row) == len(decision.fields) for row in decision.rows)
    recorded = [
        r
        for r in receipts(fred, EntryKind.FOLLOWUP_DECISION)
        if r["followup_id"] == request.followup_id
    ]
    assert len(recorded) == 1
    assert recorded[0]["decision_digest"] == hashlib.sha256(envelope.payload).hexdigest()


def test_an_identity_provider_vouching_for_two_agencies_still_opens_only_its_own_inbox(
    fred: Holder,
) -> None:
    # Behind the issuer allow-list: a token for another agency, however it got
    # through, never opens this agency's inbox.
    desk = fred.node.core.followups
    visitor = Requester("genovia", "duty.gen", ("duty-officer",), dev_issuer("genovia"))
    with pytest.raises(PolicyDenied, match="this inbox is freedonia's"):
        desk.list_items(visitor)
    with pytest.raises(PolicyDenied, match="this inbox is freedonia's"):
        desk.decide(visitor, "anything", [FieldChoice("first_seen", True)], "")


def test_an_overdue_request_is_listed_as_such_and_reminded_once(
    fred: Holder, caplog: pytest.LogCaptureFixture
) -> None:
    key = gateway_signing_key(fred.root)
    query_id, ref = hit(fred)
    request = followup(query_id, (ref,))
    due = followup(query_id, (ref,), answer_by_ms=request.issued_at_ms + 300)
    deliver(fred.address, signed(key, request))
    deliver(fred.address, signed(key, due))
    desk = fred.node.core.followups
    late = due.answer_by_ms + 1
    with Inbox(fred.inbox_address, officer_token(fred.root)) as inbox:
        # Past its answer-by time (300 ms after filing).
        time.sleep(max(0.0, (due.answer_by_ms + 5 - now_ms()) / 1000))
        overdue = inbox.items(overdue_only=True)
        assert [i.id for i in overdue] == [due.followup_id]
        assert {i.id for i in inbox.items()} == {request.followup_id, due.followup_id}
    with caplog.at_level("WARNING", logger="liaison.node"):
        told = desk.remind(late)
        again = desk.remind(late + 1)
    assert [(item.id, stage) for item, stage in told] == [(due.followup_id, "overdue")]
    assert again == []
    assert any(r.getMessage() == "follow-up request overdue" for r in caplog.records)
    # The other is due in an hour (immediate risk): reminded in its last fifth.
    soon = request.answer_by_ms - 60_000
    assert [(i.id, s) for i, s in desk.remind(soon)] == [(request.followup_id, "due soon")]


def test_an_inbox_without_an_identity_provider_is_refused_at_load(federation_dir: Path) -> None:
    from liaison.errors import ConfigError

    config = node_config_file(federation_dir, HOLDER)
    text = config.read_text()
    head, _, rest = text.partition("[[inbox.issuer]]")
    # Drop the issuer table (up to the next table) and keep the rest.
    tail = rest[rest.index("\n[") :] if "\n[" in rest else ""
    config.write_text(head + tail)
    with pytest.raises(ConfigError, match=r"\[inbox\].*\[\[inbox.issuer\]\]"):
        load_node_config(config, CATALOG_V1)
    config.write_text(text.replace("[inbox]\n", "[inbox]\nport = 1\n"))
    with pytest.raises(ConfigError, match="unknown keys port"):
        load_node_config(config, CATALOG_V1)


def test_an_officer_releases_only_what_a_rule_naming_their_role_allows(
    federation_dir: Path,
) -> None:
    # prepare: category moves to a rule of its own, for supervisors only
    policy = federation_dir / "nodes" / HOLDER / "policy.toml"
    text = policy.read_text()
    policy.write_text(
        text.replace(
            'release = ["case_ref", "first_seen", "category"]',
            'release = ["case_ref", "first_seen"]',
        )
        + """
[[rule]]
id = "supervised-category"
effect = "approve"
description = "The category of a matched file, on a supervisor's decision."
agencies = ["genovia"]
roles = ["investigator"]
purposes = ["csam-investigation", "victim-identification"]
datasets = ["media"]
release = ["category"]
officers = ["supervisor"]
"""
    )
    with holder(federation_dir) as h:
        key = gateway_signing_key(h.root)
        query_id, ref = hit(h)
        request = followup(query_id, (ref,), fields=("first_seen", "category"))
        ack = ack_from_bytes(deliver(h.address, signed(key, request)).payload)
        assert set(ack.decidable_fields) == {"first_seen", "category"}

        # execute: the duty officer may decide, but not release the supervisors' field
        duty = Inbox(h.inbox_address, officer_token(h.root))
        with duty, pytest.raises(PolicyDenied, match="releasing 'category' takes one of the roles"):
            duty.decide(request.followup_id, [FieldChoice("category", True)], "")
        supervisor = officer_token(h.root, subject="sup.ann", roles=("supervisor",))
        with Inbox(h.inbox_address, supervisor) as inbox:
            envelope = inbox.decide(
                request.followup_id,
                [FieldChoice("category", True, "H0"), FieldChoice("first_seen", False)],
                "",
            )

    # assert
    decision = decision_from_bytes(envelope.payload)
    assert decision.fields == ("category",)
    assert decision.officer == "sup.ann"


def records_hit(h: Holder) -> tuple[str, str]:
    """Ask Freedonia for the shared file's records (its partner permit: shareable rows only)."""
    query = Query(
        "media",
        Operation.RECORDS,
        (Predicate("sha256", Comparator.EQ, (h.shared_sha256,)),),
        fields=("category", "first_seen"),
    )
    request = make_request(query, audience=(HOLDER,), case_ref="GEN-2026-0142")
    response = call_node(h.address, sign_request(gateway_signing_key(h.root), request))
    answer = answer_from_bytes(response.answer.payload)
    assert answer.rows and len(answer.record_refs) == 1, answer
    return request.query_id, answer.record_refs[0]


def set_shareable(h: Holder, shareable: bool) -> None:
    """Flip the shared file's shareable flag in Freedonia's own database."""
    mapped = h.node.core.schema["media"]
    sha = mapped.columns["sha256"]
    engine = sa.create_engine(h.node.core.engine.url.set(query={}))
    try:
        with engine.begin() as conn:
            conn.execute(
                mapped.table.update()
                .where(sa.func.lower(sha) == h.shared_sha256)
                .values({mapped.columns["shareable"].name: shareable})
            )
    finally:
        engine.dispose()


def test_a_follow_up_releases_only_rows_the_answering_permit_let_through(fred: Holder) -> None:
    # prepare: the same file hit twice, by a match (no row filter) and by a
    # records query (its permit keeps only shareable rows); then the record
    # stops being shareable
    key = gateway_signing_key(fred.root)
    match_query, match_ref = hit(fred)
    records_query, records_ref = records_hit(fred)
    set_shareable(fred, False)
    by_match = followup(match_query, (match_ref,), fields=("first_seen",))
    by_records = followup(records_query, (records_ref,), fields=("first_seen",))
    deliver(fred.address, signed(key, by_match))
    deliver(fred.address, signed(key, by_records))

    # execute
    with Inbox(fred.inbox_address, officer_token(fred.root)) as inbox:
        released = decision_from_bytes(
            inbox.decide(by_match.followup_id, [FieldChoice("first_seen", True)], "").payload
        )
        with pytest.raises(InvalidQuery, match=r"can be read now.*nothing was released"):
            inbox.decide(by_records.followup_id, [FieldChoice("first_seen", True)], "")
        still = inbox.item(by_records.followup_id)

    # assert: the match was about every row; the records answer only about shareable ones
    assert len(released.rows) == 1
    assert still.status == "pending" and still.preview_rows == ()


def test_pending_requests_stay_listed_and_reminded_behind_a_flood_of_hit_notices(
    fred: Holder,
) -> None:
    # prepare: a pending request, then more hit notices than a list shows
    key = gateway_signing_key(fred.root)
    query_id, ref = hit(fred)
    request = followup(query_id, (ref,))
    deliver(fred.address, signed(key, request))
    inbox_rows = fred.node.core.inbox
    notices = [
        inbox_rows.item_rows(
            item_id=f"hit-flood-{i}",
            kind="hit",
            received_ms=now_ms() + 1 + i,
            answer_by_ms=0,
            status="notice",
            gateway_id=GATEWAY_ID,
            request_digest=b"\0" * 32,
            body={
                "requester": {
                    "agency": "genovia",
                    "subject": "s",
                    "roles": [],
                    "issuer": "i",
                    "attributes": {},
                }
            },
        )
        for i in range(MAX_LISTED + 20)
    ]
    fred.node.core.receipts.apply(notices)

    # execute
    with Inbox(fred.inbox_address, officer_token(fred.root)) as inbox:
        pending = inbox.items()
        everything = inbox.items(include_all=True)
    told = fred.node.core.followups.remind(request.answer_by_ms + 1)

    # assert
    assert [i.id for i in pending] == [request.followup_id]
    assert everything[0].id == request.followup_id
    assert len(everything) == 1 + MAX_LISTED
    assert [(i.id, stage) for i, stage in told] == [(request.followup_id, "overdue")]


def test_a_policy_made_stricter_since_the_request_came_in_bounds_the_decision(
    federation_dir: Path,
) -> None:
    # prepare: a request received while case_ref could be released
    with holder(federation_dir) as h:
        key = gateway_signing_key(h.root)
        query_id, ref = hit(h)
        request = followup(query_id, (ref,))
        ack = ack_from_bytes(deliver(h.address, signed(key, request)).payload)
    assert "case_ref" in ack.decidable_fields
    policy = federation_dir / "nodes" / HOLDER / "policy.toml"
    policy.write_text(
        policy.read_text().replace(
            'release = ["case_ref", "first_seen", "category"]', 'release = ["first_seen"]'
        )
    )

    # execute: the node restarts under the new policy; the officer tries the old bounds
    with holder(federation_dir) as h, Inbox(h.inbox_address, officer_token(h.root)) as inbox:
        with pytest.raises(PolicyDenied, match="'case_ref' may not be released"):
            inbox.decide(request.followup_id, [FieldChoice("case_ref", True)], "")
        envelope = inbox.decide(request.followup_id, [FieldChoice("first_seen", True)], "")

    # assert
    assert decision_from_bytes(envelope.payload).fields == ("first_seen",)
