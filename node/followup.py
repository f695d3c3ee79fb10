"""Follow-up requests at the holding node: take them in, show them, record decisions.

delivery: peer -> signature -> freshness and audience -> proof of logging ->
record references (issued here, to this agency, for that query) -> the
policy's bounds (which fields a person may release at all) -> signed
acknowledgement, receipt and inbox item in one commit.

decision: an officer of this agency, holding a role the policy names ->
field by field, never past the policy's bounds -> the released values read
from the database -> signed decision, its receipt and the item's new status
in one commit. Nothing leaves without a recorded human decision.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from liaison.catalog import Catalog
from liaison.envelope import Envelope, open_envelope, seal
from liaison.errors import (
    CatalogError,
    EnvelopeError,
    InvalidQuery,
    LedgerError,
    LedgerUnavailable,
    MalformedMessage,
    NotFound,
    PolicyDenied,
    ReplayDetected,
    RequestRejected,
    UntrustedPeer,
)
from liaison.followup_wire import ack_to_bytes, decision_to_bytes, followup_request_from_bytes
from liaison.followups import (
    FOLLOWUP_ACK_TYPE,
    FOLLOWUP_DECISION_TYPE,
    FOLLOWUP_REQUEST_TYPE,
    MAX_REF_CHARS,
    FieldChoice,
    FieldDecision,
    FollowUpAck,
    FollowUpDecision,
    FollowUpRequest,
    FollowUpStatus,
    InboxItem,
    Urgency,
    outcome_of,
    validate_reason,
)
from liaison.handling import handling_code
from liaison.keys import KeyId, SigningKey
from liaison.ledger.entries import (
    FollowUpReceiptFacts,
    followup_decision_entry,
    followup_receipt_entry,
)
from liaison.ledger.log import Ledger
from liaison.ledger.logged import LoggedRequest, SignedRequest, check_followup_logged
from liaison.messages import QueryRequest, Requester
from liaison.query import (
    Operation,
    Query,
    validate_case_ref,
    validate_legal_basis,
)
from node.database import MappedDataset
from node.execute import Executor, Refusal
from node.inbox import FOLLOW_UP, HIT, NOTICE, PENDING, Inbox, StoredItem
from node.verify import Freshness, TrustedGateway, check_fresh
from policies import Effect, FollowUpBounds, Grant, Policy, decide_followup

log = logging.getLogger("liaison.node")

# Rows a release (or an officer's preview) holds at most, over all references.
MAX_RELEASED_ROWS = 100


def now_ms() -> int:
    return time.time_ns() // 1_000_000


@dataclass(frozen=True, slots=True)
class _Assessment:
    accepted: bool
    reason: str
    dataset: str
    rules: tuple[str, ...]
    decidable: tuple[str, ...]
    refused: Mapping[str, str]
    handling: Mapping[str, str]
    officer_roles: tuple[str, ...]
    # Decidable field -> roles whose approve rules release it.
    field_officers: Mapping[str, tuple[str, ...]] = field(default_factory=dict)


class FollowUpDesk:
    """The node's side of follow-ups: deliveries from gateways, decisions by officers."""

    def __init__(
        self,
        *,
        node_id: str,
        signing_key: SigningKey,
        trusted: Mapping[KeyId, TrustedGateway],
        policy: Policy,
        catalog: Catalog,
        schema: Mapping[str, MappedDataset],
        receipts: Ledger,
        inbox: Inbox,
        executor: Executor,
        max_request_age_s: int,
        clock_skew_s: int,
        append_timeout_s: float,
    ) -> None:
        self.node_id = node_id
        self.signing_key = signing_key
        self.trusted = trusted
        self.policy = policy
        self.catalog = catalog
        self.schema = schema
        self.receipts = receipts
        self.inbox = inbox
        self.executor = executor
        self.max_request_age_s = max_request_age_s
        self.clock_skew_s = clock_skew_s
        self.append_timeout_s = append_timeout_s
        # (item id, stage) of the reminders already given.
        self._reminded: set[tuple[str, str]] = set()
        # Items whose last write overran the ledger's timeout and may still land.
        self._doubtful: set[str] = set()
        # Every role any approve rule names: who may open the inbox at all.
        self.officer_roles = frozenset(
            role for r in policy.rules if r.effect is Effect.APPROVE for role in r.officers
        )

    # --- from the gateway ---------------------------------------------------------

    def deliver(self, signed: SignedRequest, gateways: frozenset[str]) -> Envelope:
        """Take a signed, logged follow-up request in; return the signed acknowledgement.

        ``gateways``: the trusted gateway ids the TLS peer proved to be. The
        same bytes delivered again get the same acknowledgement and nothing new.
        """
        envelope = signed.envelope
        request, digest = self._verified(envelope, gateways)
        logged = check_followup_logged(
            signed.proof,
            request=request,
            request_digest=digest,
            request_key_id=envelope.key_id,
            gateway_key=self.trusted[envelope.key_id].key,
        )
        with self.inbox.lock(request.followup_id):
            existing = self.inbox.get(request.followup_id)
            if existing is not None:
                if existing.request_digest != digest or existing.kind != FOLLOW_UP:
                    raise ReplayDetected(
                        f"follow-up id {request.followup_id!r} was already used for another "
                        "request; the gateway must give every follow-up request a new id"
                    )
                if existing.gateway_id != request.gateway_id or existing.ack is None:
                    raise UntrustedPeer(
                        "this follow-up request was delivered by another gateway; only that "
                        "gateway hears about it"
                    )
                return existing.ack
            assessed = self._assess(request)
            received = now_ms()
            ack = FollowUpAck(
                followup_id=request.followup_id,
                node_id=self.node_id,
                request_digest=digest,
                received_at_ms=received,
                accepted=assessed.accepted,
                reason=assessed.reason,
                rules=assessed.rules,
                answer_by_ms=request.answer_by_ms,
                decidable_fields=assessed.decidable,
            )
            sealed = seal(self.signing_key, FOLLOWUP_ACK_TYPE, ack_to_bytes(ack))
            body = self._body(request, assessed)
            status = PENDING if assessed.accepted else FollowUpStatus.REFUSED.value
            self._append(
                request.followup_id,
                followup_receipt_entry(self._receipt(request, envelope, logged, ack, sealed)),
                self.inbox.item_rows(
                    item_id=request.followup_id,
                    kind=FOLLOW_UP,
                    received_ms=received,
                    answer_by_ms=request.answer_by_ms,
                    status=status,
                    gateway_id=request.gateway_id,
                    request_digest=digest,
                    body=body,
                    ack=sealed,
                ),
            )
        log.info(
            "follow-up request received",
            extra={
                "followup_id": request.followup_id,
                "agency": request.requester.agency,
                "subject": request.requester.subject,
                "purpose": request.purpose,
                "urgency": request.urgency.value,
                "accepted": assessed.accepted,
                "decidable": list(assessed.decidable),
                "answer_by_ms": request.answer_by_ms,
            },
        )
        return sealed

    def collect(
        self, followup_ids: Sequence[str], gateways: frozenset[str]
    ) -> tuple[list[Envelope], list[Envelope]]:
        """Signed decisions and acknowledgements of ``followup_ids`` delivered by ``gateways``."""
        decisions: list[Envelope] = []
        acks: list[Envelope] = []
        for followup_id in dict.fromkeys(followup_ids[:1000]):
            item = self.inbox.get(followup_id)
            if item is None or item.kind != FOLLOW_UP or item.gateway_id not in gateways:
                continue  # not this gateway's to know about
            if item.ack is not None:
                acks.append(item.ack)
            if item.decision is not None:
                decisions.append(item.decision)
        return decisions, acks

    def _verified(
        self, envelope: Envelope, gateways: frozenset[str]
    ) -> tuple[FollowUpRequest, bytes]:
        keys = {k: t.key for k, t in self.trusted.items()}
        payload = open_envelope(envelope, FOLLOWUP_REQUEST_TYPE, keys)
        try:
            request = followup_request_from_bytes(payload)
        except MalformedMessage as exc:
            raise EnvelopeError(f"signed payload is not a valid FollowUpRequest ({exc})") from exc
        signer = self.trusted[envelope.key_id].gateway_id
        if request.gateway_id != signer:
            raise RequestRejected(
                f"follow-up request names gateway {request.gateway_id!r} but is signed by "
                f"{signer!r}"
            )
        if signer not in gateways:
            raise UntrustedPeer(
                f"this follow-up request is signed by gateway {signer!r}; only that gateway "
                "may deliver it"
            )
        if request.node_id != self.node_id:
            raise RequestRejected(
                f"follow-up request is for node {request.node_id!r}, not this node ({self.node_id})"
            )
        check_fresh(
            Freshness(
                request.issued_at_ms, request.expires_at_ms, request.nonce, request.catalog_version
            ),
            now_ms=now_ms(),
            max_age_s=self.max_request_age_s,
            clock_skew_s=self.clock_skew_s,
            what="follow-up request",
            again="file it again",
        )
        fid = request.followup_id
        if not fid or len(fid) > 64 or not fid.isascii() or not fid.isprintable():
            raise RequestRejected("follow-up request has no usable id")
        if not request.requester.agency or not request.requester.subject:
            raise RequestRejected("follow-up request names no requesting agency or subject")
        if request.answer_by_ms <= request.issued_at_ms:
            raise RequestRejected("follow-up request must be answerable after it is issued")
        return request, hashlib.sha256(payload).digest()

    def _assess(self, request: FollowUpRequest) -> _Assessment:
        """What may become of ``request``: which fields a person here may release at all."""
        fields = tuple(dict.fromkeys(request.fields))

        def refuse(reason: str, dataset: str = "") -> _Assessment:
            return _Assessment(
                False, reason, dataset, (), (), dict.fromkeys(fields, reason), {}, ()
            )

        try:
            self.catalog.check_purpose(request.purpose)
            validate_case_ref(request.case_ref)
            validate_legal_basis(request.legal_basis)
        except (CatalogError, InvalidQuery) as exc:
            return refuse(str(exc))
        if not fields or not request.record_refs:
            return refuse("a follow-up request names records and fields")
        datasets: set[str] = set()
        for ref in request.record_refs:
            resolved = self.inbox.resolve(ref) if len(ref) <= MAX_REF_CHARS else None
            if (
                resolved is None
                or resolved.agency != request.requester.agency
                or resolved.query_id != request.query_id
            ):
                # One reason for all three: who holds which reference is not for the asker.
                return refuse(
                    f"record reference {ref[:MAX_REF_CHARS]!r} was not issued by this node to "
                    f"{request.requester.agency} in the answer to query {request.query_id}"
                )
            datasets.add(resolved.dataset)
        if len(datasets) != 1:
            return refuse("the record references of one request must name records of one dataset")
        dataset = datasets.pop()
        mapped = self.schema.get(dataset)
        if mapped is None:
            return refuse(f"this node no longer offers {dataset!r}", dataset)
        bounds = decide_followup(
            self.policy,
            request.requester,
            request.purpose,
            dataset,
            fields,
            case_ref=request.case_ref,
            legal_basis=request.legal_basis,
        )
        refused = dict(bounds.refused)
        decidable = []
        for name in bounds.decidable:
            if mapped.holds(name):
                decidable.append(name)
            else:
                refused[name] = "not held here"
        reason = ""
        if not decidable:
            reason = "no field asked for may be released on request: " + "; ".join(
                f"{name}: {why}" for name, why in refused.items()
            )
        return _Assessment(
            bool(decidable),
            reason,
            dataset,
            bounds.rules,
            tuple(decidable),
            refused,
            dict(bounds.handling),
            tuple(sorted(bounds.officer_roles)),
            {name: tuple(sorted(bounds.field_officers.get(name, ()))) for name in decidable},
        )

    @staticmethod
    def _body(request: FollowUpRequest, assessed: _Assessment) -> dict[str, Any]:
        return {
            "requester": request.requester.as_json(),
            "purpose": request.purpose,
            "case_ref": request.case_ref,
            "legal_basis": request.legal_basis,
            "urgency": request.urgency.value,
            "text": request.text,
            "query_id": request.query_id,
            "fields": list(dict.fromkeys(request.fields)),
            "record_refs": list(request.record_refs),
            "dataset": assessed.dataset,
            "rules": list(assessed.rules),
            "decidable": list(assessed.decidable),
            "refused": dict(assessed.refused),
            "handling": dict(assessed.handling),
            "officer_roles": list(assessed.officer_roles),
            "field_officers": {k: list(v) for k, v in assessed.field_officers.items()},
            "reason": assessed.reason,
        }

    def _receipt(
        self,
        request: FollowUpRequest,
        envelope: Envelope,
        logged: LoggedRequest,
        ack: FollowUpAck,
        sealed: Envelope,
    ) -> FollowUpReceiptFacts:
        return FollowUpReceiptFacts(
            node_id=self.node_id,
            time_ms=ack.received_at_ms,
            followup_id=request.followup_id,
            request_digest=ack.request_digest,
            gateway_id=request.gateway_id,
            gateway_key_id=envelope.key_id,
            gateway_signature=envelope.signature,
            gateway_entry=logged.proof.entry,
            gateway_leaf_index=logged.proof.leaf_index,
            gateway_checkpoint=logged.proof.checkpoint,
            accepted=ack.accepted,
            rules=ack.rules,
            answer_by_ms=ack.answer_by_ms,
            ack_digest=hashlib.sha256(sealed.payload).hexdigest(),
            ack_key_id=self.signing_key.key_id,
        )

    # --- for the agency's duty officers -----------------------------------------------

    def check_officer(self, officer: Requester) -> None:
        """Only this agency's people, holding a role some approve rule names."""
        if officer.agency != self.policy.agency:
            raise PolicyDenied(
                f"this inbox is {self.policy.agency}'s; a token of {officer.agency} cannot open it",
                (),
            )
        if not self.officer_roles & set(officer.roles):
            named = ", ".join(sorted(self.officer_roles)) or "none (add an approve rule)"
            raise PolicyDenied(
                f"opening the inbox takes a role the node's policy names for decisions "
                f"({named}); your token has {', '.join(officer.roles) or 'no role'}",
                (),
            )

    def list_items(
        self, officer: Requester, *, overdue_only: bool = False, include_all: bool = False
    ) -> list[InboxItem]:
        self.check_officer(officer)
        now = now_ms()
        pending = [self._view(s, preview=False) for s in self.inbox.pending()]
        if overdue_only:
            return [i for i in pending if i.overdue(now)]
        if not include_all:
            return pending
        listed = {i.id for i in pending}
        recent = [self._view(s, preview=False) for s in self.inbox.recent(now)]
        return pending + [i for i in recent if i.id not in listed]

    def get_item(self, officer: Requester, item_id: str) -> InboxItem:
        self.check_officer(officer)
        stored = self.inbox.get(item_id)
        if stored is None:
            raise NotFound(
                f"this inbox holds no item {item_id!r}; list it with `liaison node inbox`"
            )
        return self._view(stored, preview=stored.kind == FOLLOW_UP)

    def decide(
        self, officer: Requester, item_id: str, choices: Sequence[FieldChoice], reason: str
    ) -> Envelope:
        """Record ``officer``'s decision on a pending follow-up request; return it signed."""
        self.check_officer(officer)
        reason = validate_reason(reason)
        with self.inbox.lock(item_id):
            if item_id in self._doubtful:
                if self.receipts.stalled:
                    raise LedgerUnavailable(
                        f"the last decision on {item_id} is still being written (the receipts "
                        "database is not answering); look again with `liaison node inbox --show` "
                        "once it is back"
                    )
                # Settled: the status read below says whether that write landed.
                self._doubtful.discard(item_id)
            stored = self.inbox.get(item_id)
            if stored is None or stored.kind != FOLLOW_UP:
                raise NotFound(f"this inbox holds no follow-up request {item_id!r}")
            if stored.status != PENDING:
                raise InvalidQuery(
                    f"follow-up request {item_id} is {stored.status} already and a decision is "
                    f"final; see it with `liaison node inbox --show {item_id}`"
                )
            body = stored.body
            allowed_roles = set(body["officer_roles"])
            if not allowed_roles & set(officer.roles):
                raise PolicyDenied(
                    f"deciding this request takes one of the roles "
                    f"{', '.join(sorted(allowed_roles))}",
                    tuple(body["rules"]),
                )
            decisions = self._field_decisions(body, choices, officer.roles)
            released = tuple(d.field for d in decisions if d.released)
            rows = self._released_rows(stored, released) if released else ()
            if released and not rows:
                # Signing "approved" over nothing would read as a release that is not one.
                raise InvalidQuery(
                    f"none of the records follow-up request {item_id} names can be read now "
                    "(deleted or changed since the answer); nothing was released: refuse the "
                    "fields, saying so"
                )
            decision = FollowUpDecision(
                followup_id=stored.id,
                node_id=self.node_id,
                request_digest=stored.request_digest,
                decided_at_ms=now_ms(),
                outcome=outcome_of(decisions),
                field_decisions=decisions,
                reason=reason,
                officer=officer.subject,
                officer_issuer=officer.issuer,
                rules=tuple(body["rules"]),
                fields=released,
                rows=rows,
            )
            sealed = seal(self.signing_key, FOLLOWUP_DECISION_TYPE, decision_to_bytes(decision))
            self._append(
                item_id,
                followup_decision_entry(
                    decision,
                    officer_roles=officer.roles,
                    decision_digest=hashlib.sha256(sealed.payload).hexdigest(),
                    decision_key_id=self.signing_key.key_id,
                ),
                self.inbox.decided_rows(
                    stored.id, decision.outcome.value, sealed, decision.decided_at_ms
                ),
            )
        log.info(
            "follow-up request decided",
            extra={
                "followup_id": stored.id,
                "officer": officer.subject,
                "outcome": decision.outcome.value,
                "released": list(released),
                "handling": {d.field: d.handling for d in decisions if d.released},
                "late_ms": max(0, decision.decided_at_ms - stored.answer_by_ms),
            },
        )
        return sealed

    def _field_decisions(
        self, body: Mapping[str, Any], choices: Sequence[FieldChoice], roles: Sequence[str]
    ) -> tuple[FieldDecision, ...]:
        asked: list[str] = list(body["fields"])
        # The policy as it is now: one made stricter since the request came in
        # bounds its decision, never the looser one it was received under.
        now = self._bounds(body)
        decidable = set(body["decidable"]) & set(now.decidable)
        refused: Mapping[str, str] = {**dict(now.refused), **body["refused"]}
        # Per field: the roles whose approve rule releases it (one rule's
        # officers never release what only another rule allows).
        releasers: Mapping[str, list[str]] = {
            name: sorted(roles) for name, roles in now.field_officers.items()
        }
        defaults: Mapping[str, str] = body["handling"]
        by_field: dict[str, FieldChoice] = {}
        for choice in choices:
            if choice.field not in asked:
                raise InvalidQuery(
                    f"{choice.field!r} was not asked for; the request asks for {', '.join(asked)}"
                )
            if choice.field in by_field:
                raise InvalidQuery(f"{choice.field!r} is decided twice; decide each field once")
            if choice.release and choice.field not in decidable:
                why = refused.get(choice.field, "the policy does not let it be released")
                raise PolicyDenied(
                    f"{choice.field!r} may not be released on this request ({why}); the node's "
                    "policy bounds every decision",
                    tuple(body["rules"]),
                )
            allowed = releasers.get(choice.field, [])
            if choice.release and not set(allowed) & set(roles):
                raise PolicyDenied(
                    f"releasing {choice.field!r} takes one of the roles "
                    f"{', '.join(sorted(allowed))}; refuse it, or ask a colleague who holds one",
                    tuple(body["rules"]),
                )
            by_field[choice.field] = choice
        decisions = []
        for name in asked:
            chosen = by_field.get(name)
            if name in refused:
                decisions.append(FieldDecision(name, False, "", refused[name]))
            elif chosen is not None and chosen.release:
                code = handling_code(
                    chosen.handling or defaults.get(name, ""), where=f"the handling code of {name}"
                )
                decisions.append(
                    FieldDecision(name, True, code.value, validate_reason(chosen.reason))
                )
            else:
                why = validate_reason(chosen.reason) if chosen is not None else ""
                decisions.append(
                    FieldDecision(name, False, "", why or "not released by the duty officer")
                )
        return tuple(decisions)

    def _bounds(self, body: Mapping[str, Any]) -> FollowUpBounds:
        requester = _requester(body)
        return decide_followup(
            self.policy,
            requester,
            body["purpose"],
            body["dataset"],
            body["fields"],
            case_ref=body["case_ref"],
            legal_basis=body["legal_basis"],
        )

    def _released_rows(
        self, stored: StoredItem, fields: Sequence[str]
    ) -> tuple[tuple[str | None, ...], ...]:
        """The asked fields of the referenced records, read now from the agency's database.

        Only rows the answering permit's row filters let through: a follow-up
        is about what the answer was about.
        """
        body = stored.body
        mapped = self.schema[body["dataset"]]
        requester = _requester(body)
        grant = Grant(
            rule_id=(body["rules"] or ["approve"])[0],
            fields=tuple(fields),
            withheld=(),
            min_count=0,
            max_rows=MAX_RELEASED_ROWS,
        )
        rows: list[tuple[str | None, ...]] = []
        for ref in body["record_refs"]:
            resolved = self.inbox.resolve(ref)
            if resolved is None:
                continue
            query = Query(
                dataset=resolved.dataset,
                operation=Operation.RECORDS,
                predicates=resolved.predicates,
                fields=tuple(fields),
                limit=MAX_RELEASED_ROWS,
            )
            request = QueryRequest(
                query_id=stored.id,
                gateway_id=stored.gateway_id,
                issued_at_ms=stored.received_ms,
                expires_at_ms=stored.answer_by_ms,
                nonce=b"",
                audience=(self.node_id,),
                requester=requester,
                purpose=body["purpose"],
                case_ref=body["case_ref"],
                catalog_version=self.catalog.version,
                query=query,
                legal_basis=body["legal_basis"],
            )
            narrowed = replace(grant, row_filters=resolved.row_filters)
            outcome = self.executor.run(mapped, query, narrowed, request, now_ms(), None)
            if isinstance(outcome, Refusal):
                continue
            for row in outcome.get("rows", ()):
                if row not in rows:
                    rows.append(tuple(row))
        return tuple(rows[:MAX_RELEASED_ROWS])

    def _view(self, stored: StoredItem, *, preview: bool) -> InboxItem:
        body = stored.body
        requester = _requester(body)
        preview_fields: tuple[str, ...] = ()
        preview_rows: tuple[tuple[str | None, ...], ...] = ()
        if preview and stored.status == PENDING and body.get("decidable"):
            preview_fields = tuple(body["decidable"])
            preview_rows = self._released_rows(stored, preview_fields)
        urgency = body.get("urgency")
        return InboxItem(
            id=stored.id,
            kind=stored.kind,
            received_at_ms=stored.received_ms,
            answer_by_ms=stored.answer_by_ms,
            status=stored.status,
            requester=requester,
            purpose=body.get("purpose", ""),
            case_ref=body.get("case_ref", ""),
            legal_basis=body.get("legal_basis", ""),
            urgency=Urgency(urgency) if urgency else None,
            text=body.get("text", ""),
            query_id=body.get("query_id", ""),
            fields=tuple(body.get("fields", ())),
            decidable_fields=tuple(body.get("decidable", ())),
            default_handling=", ".join(
                f"{name}={code}" for name, code in body.get("handling", {}).items()
            ),
            rules=tuple(body.get("rules", ())),
            dataset=body.get("dataset", ""),
            record_refs=tuple(body.get("record_refs", ())),
            preview_fields=preview_fields,
            preview_rows=preview_rows,
            decision=stored.decision,
            officer_roles=tuple(body.get("officer_roles", ())),
        )

    def remind(self, now: int) -> list[tuple[InboxItem, str]]:
        """Pending requests newly due soon or overdue, each told once per stage.

        "due soon": in the last fifth of its time (at most an hour before);
        "overdue": past its answer-by time. Each is logged as a warning for the
        agency's monitoring to page whoever is on duty.
        """
        told: list[tuple[InboxItem, str]] = []
        for stored in self.inbox.pending():
            window = stored.answer_by_ms - stored.received_ms
            soon_at = stored.answer_by_ms - min(window // 5, 3_600_000)
            stage = "overdue" if now > stored.answer_by_ms else "due soon" if now >= soon_at else ""
            if not stage or (stored.id, stage) in self._reminded:
                continue
            self._reminded.add((stored.id, stage))
            item = self._view(stored, preview=False)
            told.append((item, stage))
            log.warning(
                f"follow-up request {stage}",
                extra={
                    "followup_id": item.id,
                    "agency": item.requester.agency,
                    "urgency": item.urgency.value if item.urgency else "",
                    "answer_by_ms": item.answer_by_ms,
                    "late_ms": max(0, now - item.answer_by_ms),
                },
            )
        return told

    # --- hits -------------------------------------------------------------------------

    def notice_rows(
        self,
        *,
        request: QueryRequest,
        ref: str,
        rules: Sequence[str],
        gateway_id: str,
        digest: bytes,
    ) -> list[Any]:
        """The inbox notice of a hit on this agency's records, for its officers."""
        return [
            self.inbox.item_rows(
                item_id=f"hit-{request.query_id}",
                kind=HIT,
                received_ms=now_ms(),
                answer_by_ms=0,
                status=NOTICE,
                gateway_id=gateway_id,
                request_digest=digest,
                body={
                    "requester": request.requester.as_json(),
                    "purpose": request.purpose,
                    "case_ref": request.case_ref,
                    "legal_basis": request.legal_basis,
                    "query_id": request.query_id,
                    "dataset": request.query.dataset,
                    "record_refs": [ref],
                    "rules": list(rules),
                },
            )
        ]

    # --- plumbing ------------------------------------------------------------------------

    def _append(self, item_id: str, entry: bytes, *side: Any) -> None:
        try:
            self.receipts.append(entry, side=side, timeout_s=self.append_timeout_s)
        except (LedgerError, TimeoutError) as exc:
            if self.receipts.stalled or isinstance(exc, TimeoutError):
                # The write may still land: nothing more on this item until it is settled.
                self._doubtful.add(item_id)
                raise LedgerUnavailable(
                    "this node's receipts database did not confirm the write in time; it may "
                    "still be recorded: look again with `liaison node inbox` once the node is "
                    "serving again (the node's operator sees why in its log)"
                ) from exc
            raise LedgerUnavailable(
                "this node cannot write its receipts ledger, so it records nothing now; "
                "try again later (the node's operator sees why in its log)"
            ) from exc


def _requester(body: Mapping[str, Any]) -> Requester:
    """The investigator of a stored item, as the gateway authenticated them."""
    r = body["requester"]
    return Requester(r["agency"], r["subject"], tuple(r["roles"]), r["issuer"], r["attributes"])
