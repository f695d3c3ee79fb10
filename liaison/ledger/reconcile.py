"""Reconciling the gateway's ledger with every node's receipts.

Each side is verified on its own first; then every request a node answered
must be in the gateway's ledger with the same digests, every answer the
gateway recorded must be in that node's receipts, and every checkpoint a node
kept must match the gateway's ledger as it is now. Nodes so act as witnesses:
a gateway that rewrites or truncates its history after the fact is caught by
the checkpoints it gave them.

Follow-ups are reconciled step by step, each step against the other side's
record of it: every follow-up a node took in must be the follow-up entry of
the gateway's ledger that its receipt names; every acknowledgement the
gateway recorded must be the one in the node's receipt; every decision the
gateway showed must be one the node made, field by field and code by code. A
decision the gateway has not collected yet, and a follow-up still waiting for
one, are notes: people take time.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from liaison.errors import CheckpointError, EntryError
from liaison.keys import VerifyingKey
from liaison.ledger.checkpoint import open_checkpoint
from liaison.ledger.entries import Entry, EntryKind, parse_entry
from liaison.ledger.merkle import MerkleTree, leaf_hash
from liaison.ledger.store import LedgerStore
from liaison.ledger.verify import VerifyReport, Witness, verify_ledger

ANSWERING = ("answered", "denied")
# A node's compensating receipt: the answer of its earlier receipt for the same
# request (same answer digest) never left the node.
NOT_DELIVERED = "not-delivered"
# Follow-up deliveries the holding node answered with a signed acknowledgement:
# it took the follow-up in ("delivered") or would not ("refused"). Either way
# its receipt holds the same acknowledgement.
ACKNOWLEDGED = ("delivered", "refused")


@dataclass(frozen=True, slots=True)
class Difference:
    node_id: str
    query_id: str
    message: str
    # Problems mean a ledger lies or lost something; notes are explained by
    # timing (an answer that arrived after the deadline, a crash mid-query).
    problem: bool = True
    # Set for a follow-up's difference; ``query_id`` is then the query it is about.
    followup_id: str = ""


@dataclass(frozen=True, slots=True)
class NodeLedger:
    node_id: str
    store: LedgerStore
    key: VerifyingKey


@dataclass(slots=True)
class FollowUpCounts:
    """Follow-ups as the ledgers show them: each follow-up id once."""

    # From the gateway's ledger, each follow-up by its latest delivery and outcome.
    filed: int = 0
    delivered: int = 0
    # The holding node would not take it in (its policy or the request's checks).
    refused: int = 0
    not_delivered: int = 0
    # Logged, and no delivery recorded: the gateway stopped before delivering.
    unsent: int = 0
    # Decisions the gateway collected, and the fields they released or withheld.
    decided: int = 0
    released: int = 0
    withheld: int = 0
    # Released fields by handling code.
    handling: dict[str, int] = field(default_factory=dict)
    # From the nodes' ledgers: follow-ups taken in (receipts), decided, decided
    # and not collected by the gateway yet, and taken in and not decided yet.
    taken_in: int = 0
    decided_at_nodes: int = 0
    uncollected: int = 0
    pending: int = 0
    # Filed for nodes whose ledgers were not given: not reconciled.
    unchecked: int = 0

    @property
    def any(self) -> bool:
        return bool(self.filed or self.taken_in or self.decided_at_nodes)

    def as_json(self) -> dict[str, Any]:
        return {
            "filed": self.filed,
            "delivered": self.delivered,
            "refused": self.refused,
            "not_delivered": self.not_delivered,
            "unsent": self.unsent,
            "decided": self.decided,
            "fields_released": self.released,
            "fields_withheld": self.withheld,
            "released_by_handling": dict(sorted(self.handling.items())),
            "taken_in": self.taken_in,
            "decided_at_nodes": self.decided_at_nodes,
            "uncollected": self.uncollected,
            "pending": self.pending,
            "unchecked": self.unchecked,
        }


@dataclass(slots=True)
class ReconcileReport:
    gateway: VerifyReport
    nodes: dict[str, VerifyReport] = field(default_factory=dict)
    receipts: dict[str, int] = field(default_factory=dict)
    differences: list[Difference] = field(default_factory=list)
    followups: FollowUpCounts = field(default_factory=FollowUpCounts)

    @property
    def ok(self) -> bool:
        return (
            self.gateway.ok
            and all(r.ok for r in self.nodes.values())
            and not any(d.problem for d in self.differences)
        )


def _entries(store: LedgerStore) -> list[tuple[int, Entry]]:
    found = []
    for index, _leaf, raw in store.rows():
        try:
            found.append((index, parse_entry(raw)))
        except EntryError:
            continue  # verify_ledger reports it
    return found


def reconcile(
    gateway: LedgerStore,
    gateway_key: VerifyingKey,
    nodes: Sequence[NodeLedger],
    *,
    allow_unsigned_tail: bool = False,
    now_ms: int | None = None,
    witnesses: Mapping[str, Sequence[Witness]] | None = None,
) -> ReconcileReport:
    """Compare every receipt of every node with the gateway's ledger, and back.

    ``witnesses`` holds, per ledger ("gateway" or a node id), checkpoints seen
    before (kept by an auditor, or by a console that watched the ledger): a
    ledger rolled back or rewritten since fails.

    Nothing is keyed by query id alone: an id may have been used twice (a
    gateway that sent an unlogged request, then a logged one, under the same
    id), so each receipt is matched to the gateway entry it names by index and
    digest, and each outcome to its request digest. Follow-ups likewise: a
    node's receipt by the gateway entry it names, each acknowledgement and
    decision by follow-up id, request digest and its own digest. ``now_ms``
    (default: now) tells which pending follow-ups are overdue.
    """
    seen = witnesses or {}
    gateway_report, tree = verify_ledger(
        gateway,
        gateway_key,
        allow_unsigned_tail=allow_unsigned_tail,
        witnesses=seen.get("gateway", ()),
    )
    report = ReconcileReport(gateway_report)
    logged_at: dict[int, Entry] = {}
    requests: dict[str, list[int]] = {}
    outcomes: dict[tuple[str, str], dict[str, Any]] = {}
    gateway_entries = _entries(gateway)
    followups = _GatewayFollowUps(gateway_entries)
    for index, entry in gateway_entries:
        if entry.kind is EntryKind.REQUEST:
            logged_at[index] = entry
            requests.setdefault(entry.query_id, []).append(index)
        elif entry.kind is EntryKind.OUTCOME:
            # A streamed search writes each batch of results as it arrives, then
            # every result: together they are the outcome, the later the truer.
            outcomes.setdefault((entry.query_id, entry.text("request_digest")), {}).update(
                (str(r.get("node_id")), r) for r in entry.fields["results"] if isinstance(r, dict)
            )
        elif entry.kind in _FOLLOWUP_KINDS:
            followups.add(index, entry)
    report.followups = followups.counts({node.node_id for node in nodes})
    now = time.time_ns() // 1_000_000 if now_ms is None else now_ms
    origin = gateway.get_meta("origin") or ""
    for node in nodes:
        node_report, _ = verify_ledger(
            node.store,
            node.key,
            allow_unsigned_tail=allow_unsigned_tail,
            witnesses=seen.get(node.node_id, ()),
        )
        report.nodes[node.node_id] = node_report
        node_entries = [e for _, e in _entries(node.store)]
        receipts = [e for e in node_entries if e.kind is EntryKind.RECEIPT]
        report.receipts[node.node_id] = len(receipts)
        diff = report.differences
        seen_checkpoints: set[str] = set()
        answered: set[tuple[str, str]] = set()
        withdrawn = {
            (r.query_id, r.text("request_digest"), r.text("answer_digest"))
            for r in receipts
            if r.text("status") == NOT_DELIVERED
        }
        withdrawn_requests = {(query_id, digest) for query_id, digest, _ in withdrawn}
        for receipt in receipts:
            asked = (receipt.query_id, receipt.text("request_digest"))
            delivered = (
                receipt.text("status") != NOT_DELIVERED
                and (*asked, receipt.text("answer_digest")) not in withdrawn
            )
            if delivered:
                answered.add(asked)
            diff.extend(
                _check_receipt(
                    node.node_id,
                    receipt,
                    logged_at,
                    requests,
                    outcomes.get(asked),
                    delivered=delivered,
                )
            )
            note = receipt.text("gateway_checkpoint")
            if note not in seen_checkpoints:
                seen_checkpoints.add(note)
                found = _check_witnessed(
                    node.node_id, receipt.query_id, note, gateway_key, origin, tree
                )
                if found is not None:
                    diff.append(found)
        for (query_id, digest), results in outcomes.items():
            result = results.get(node.node_id)
            if result is None or result.get("status") not in ANSWERING:
                continue
            if (query_id, digest) not in answered and (query_id, digest) not in withdrawn_requests:
                diff.append(
                    Difference(
                        node.node_id,
                        query_id,
                        f"the gateway recorded this node's answer ({result.get('status')}) but "
                        "the node holds no receipt for it",
                    )
                )
        if (
            followups.at
            or followups.deliveries
            or followups.outcomes
            or any(e.kind in _FOLLOWUP_KINDS for e in node_entries)
        ):
            _NodeFollowUps(node.node_id, node_entries, followups, report.followups).check(
                diff, seen_checkpoints, gateway_key, origin, tree, now
            )
    return report


def _check_receipt(
    node_id: str,
    receipt: Entry,
    logged_at: dict[int, Entry],
    requests: dict[str, list[int]],
    outcome: dict[str, Any] | None,
    *,
    delivered: bool = True,
) -> list[Difference]:
    """What is wrong with one receipt; ``delivered`` is false for an answer the node withdrew."""
    query_id = receipt.query_id
    index = receipt.fields["gateway_leaf_index"]
    request = logged_at.get(index)
    if request is None or leaf_hash(request.raw) != leaf_hash(
        receipt.text("gateway_entry").encode()
    ):
        same_id = requests.get(query_id, [])
        where = (
            f"at entry {index}; the gateway logged query {query_id} only at "
            + ", ".join(f"entry {i}" for i in same_id)
            + ", for another request: it sent two requests under one query id"
            if same_id
            else f"at entry {index}"
        )
        return [
            Difference(
                node_id,
                query_id,
                "the node answered a request that the gateway's ledger does not hold as logged "
                f"(expected {where}); ask the gateway's operator what this request was and "
                "why it is not in the ledger",
            )
        ]
    found = []
    if request.text("request_digest") != receipt.text("request_digest"):
        found.append(
            Difference(
                node_id,
                query_id,
                f"request digests differ: the node answered {receipt.text('request_digest')[:16]}"
                f"…, the gateway logged {request.text('request_digest')[:16]}… at entry {index}",
            )
        )
        return found
    if node_id not in request.fields["targets"]:
        found.append(
            Difference(node_id, query_id, "the node answered a request not addressed to it")
        )
    if outcome is None:
        found.append(
            Difference(
                node_id,
                query_id,
                "the gateway logged no outcome for this query (it stopped before the answers "
                "came back)",
                problem=False,
            )
        )
        return found
    result = outcome.get(node_id)
    status = None if result is None else result.get("status")
    if not delivered:
        # The node says this answer never left: the gateway cannot have it.
        # The not-delivered receipt speaks for the pair; the one it withdraws is quiet.
        if (
            receipt.text("status") == NOT_DELIVERED
            and status in ANSWERING
            and result is not None
            and result.get("answer_digest") == receipt.text("answer_digest")
        ):
            found.append(
                Difference(
                    node_id,
                    query_id,
                    "the node recorded this answer as not delivered, yet the gateway recorded "
                    "receiving it (same answer digest): one of the two ledgers is wrong",
                )
            )
        return found
    if status not in ANSWERING:
        found.append(
            Difference(
                node_id,
                query_id,
                f"the node answered ({receipt.text('status')}) but the gateway recorded "
                f"{status or 'nothing'} for it (the answer came after the deadline)",
                problem=False,
            )
        )
    elif result is not None and result.get("answer_digest") != receipt.text("answer_digest"):
        found.append(
            Difference(
                node_id,
                query_id,
                "the gateway recorded a different answer than the node signed (answer digests "
                "differ)",
            )
        )
    return found


def _check_witnessed(
    node_id: str,
    query_id: str,
    note: str,
    key: VerifyingKey,
    origin: str,
    tree: MerkleTree,
) -> Difference | None:
    """A checkpoint the gateway gave a node must match the gateway's ledger as it is now."""
    try:
        cp = open_checkpoint(note, key, origin=origin or None)
    except CheckpointError as exc:
        return Difference(
            node_id, query_id, f"the gateway checkpoint it holds does not verify ({exc})"
        )
    if cp.size > tree.size:
        return Difference(
            node_id,
            query_id,
            f"the gateway showed this node a ledger of {cp.size} entries; it now holds "
            f"{tree.size}: entries were removed",
        )
    if tree.root(cp.size) != cp.root:
        return Difference(
            node_id,
            query_id,
            f"the gateway's first {cp.size} entries no longer hash to the checkpoint it gave "
            "this node: its history was rewritten, or it showed this node another history "
            "(a forked log)",
        )
    return None


# --- follow-ups ----------------------------------------------------------------------

_FOLLOWUP_KINDS = frozenset(
    {
        EntryKind.FOLLOWUP,
        EntryKind.FOLLOWUP_DELIVERY,
        EntryKind.FOLLOWUP_OUTCOME,
        EntryKind.FOLLOWUP_RECEIPT,
        EntryKind.FOLLOWUP_DECISION,
    }
)


class _GatewayFollowUps:
    """The follow-up entries of the gateway's ledger, by index and by follow-up id."""

    def __init__(self, entries: list[tuple[int, Entry]]) -> None:
        self._entries = entries
        self._kinds: dict[int, EntryKind] | None = None
        # Follow-up entries by index (receipts name them so), and their indices by id.
        self.at: dict[int, Entry] = {}
        self.by_id: dict[str, list[int]] = {}
        # Deliveries and outcomes by follow-up id, in ledger order.
        self.deliveries: dict[str, list[Entry]] = {}
        self.outcomes: dict[str, list[Entry]] = {}

    def add(self, index: int, entry: Entry) -> None:
        followup_id = entry.text("followup_id")
        if entry.kind is EntryKind.FOLLOWUP:
            self.at[index] = entry
            self.by_id.setdefault(followup_id, []).append(index)
        elif entry.kind is EntryKind.FOLLOWUP_DELIVERY:
            self.deliveries.setdefault(followup_id, []).append(entry)
        elif entry.kind is EntryKind.FOLLOWUP_OUTCOME:
            self.outcomes.setdefault(followup_id, []).append(entry)

    def kind_at(self, index: int) -> EntryKind | None:
        """The kind of the gateway's entry ``index``, for saying what a receipt named instead."""
        if self._kinds is None:
            self._kinds = {i: e.kind for i, e in self._entries}
        return self._kinds.get(index)

    def about(self, followup_id: str) -> str:
        """The query a follow-up is about, as the gateway logged it ("" if it did not)."""
        for index in self.by_id.get(followup_id, ()):
            return self.at[index].text("about_query_id")
        return ""

    def counts(self, nodes: set[str]) -> FollowUpCounts:
        """What the gateway's ledger says of its follow-ups: each id once, its latest entries."""
        counts = FollowUpCounts()
        for followup_id, indices in self.by_id.items():
            counts.filed += 1
            if self.at[indices[0]].text("node_id") not in nodes:
                counts.unchecked += 1
            deliveries = self.deliveries.get(followup_id)
            status = deliveries[-1].text("status") if deliveries else ""
            if not status:
                counts.unsent += 1
            elif status == "delivered":
                counts.delivered += 1
            elif status == "refused":
                counts.refused += 1
            else:
                counts.not_delivered += 1
        for outcomes in self.outcomes.values():
            counts.decided += 1
            for f in _field_decisions(outcomes[-1]):
                if f[1]:
                    counts.released += 1
                    counts.handling[f[2]] = counts.handling.get(f[2], 0) + 1
                else:
                    counts.withheld += 1
        return counts


def _field_decisions(entry: Entry) -> tuple[tuple[str, bool, str], ...]:
    """(field, released, handling code) of each field a decision names, in its order."""
    fields = entry.fields.get("fields")
    return tuple(
        (str(f.get("field", "")), f.get("released") is True, str(f.get("handling", "")))
        for f in (fields if isinstance(fields, list) else ())
        if isinstance(f, dict)
    )


def describe_decision(entry: Entry) -> str:
    """A decision's outcome and fields for people: "partial: case_ref released (H2), ..."."""
    fields = ", ".join(
        f"{name} released ({code})" if released else f"{name} refused"
        for name, released, code in _field_decisions(entry)
    )
    return f"{entry.text('outcome')}: {fields}" if fields else entry.text("outcome")


class _NodeFollowUps:
    """One node's follow-up receipts and decisions, checked against the gateway's follow-ups."""

    def __init__(
        self,
        node_id: str,
        entries: list[Entry],
        gateway: _GatewayFollowUps,
        counts: FollowUpCounts,
    ) -> None:
        self.node_id = node_id
        self.gateway = gateway
        self.counts = counts
        self.receipts = [e for e in entries if e.kind is EntryKind.FOLLOWUP_RECEIPT]
        self.decisions = [e for e in entries if e.kind is EntryKind.FOLLOWUP_DECISION]
        self.receipts_of: dict[str, list[Entry]] = {}
        for receipt in self.receipts:
            self.receipts_of.setdefault(receipt.text("followup_id"), []).append(receipt)
        self.decisions_of: dict[str, list[Entry]] = {}
        for decision in self.decisions:
            self.decisions_of.setdefault(decision.text("followup_id"), []).append(decision)

    def _difference(self, followup_id: str, message: str, *, problem: bool = True) -> Difference:
        return Difference(
            self.node_id,
            self.gateway.about(followup_id),
            message,
            problem=problem,
            followup_id=followup_id,
        )

    def _own(self, entries: Sequence[Entry]) -> list[Entry]:
        return [e for e in entries if e.text("node_id") == self.node_id]

    def check(
        self,
        diff: list[Difference],
        seen_checkpoints: set[str],
        gateway_key: VerifyingKey,
        origin: str,
        tree: MerkleTree,
        now_ms: int,
    ) -> None:
        """Append every difference of this node's follow-ups to ``diff``; count them."""
        gateway = self.gateway
        for receipt in self.receipts:
            diff.extend(self._check_receipt(receipt))
            note = receipt.text("gateway_checkpoint")
            if note not in seen_checkpoints:
                seen_checkpoints.add(note)
                followup_id = receipt.text("followup_id")
                found = _check_witnessed(
                    self.node_id, gateway.about(followup_id), note, gateway_key, origin, tree
                )
                if found is not None:
                    diff.append(replace(found, followup_id=followup_id))
        for followup_id, deliveries in gateway.deliveries.items():
            for delivery in self._own(deliveries):
                if delivery.text("status") in ACKNOWLEDGED:
                    diff.extend(self._check_delivery(followup_id, delivery))
        for followup_id, outcomes in gateway.outcomes.items():
            for outcome in self._own(outcomes):
                diff.extend(self._check_outcome(followup_id, outcome))
        diff.extend(self._notes(now_ms))
        self.counts.taken_in += len(self.receipts_of)
        self.counts.decided_at_nodes += len(self.decisions_of)

    def _check_receipt(self, receipt: Entry) -> list[Difference]:
        """A follow-up receipt must name the gateway's follow-up entry, as logged."""
        gateway = self.gateway
        followup_id = receipt.text("followup_id")
        index = receipt.fields["gateway_leaf_index"]
        logged = gateway.at.get(index)
        if logged is None or leaf_hash(logged.raw) != leaf_hash(
            receipt.text("gateway_entry").encode()
        ):
            same_id = gateway.by_id.get(followup_id, [])
            kind = gateway.kind_at(index)
            named = receipt.text("gateway_entry").encode()
            elsewhere = [i for i in same_id if gateway.at[i].raw == named]
            if kind is not None and kind is not EntryKind.FOLLOWUP:
                where = f"at entry {index}, which holds a {kind} entry, not a follow-up"
            elif elsewhere:
                where = f"at entry {index}; the gateway logged it at entry {elsewhere[0]}"
            elif same_id:
                where = (
                    f"at entry {index}; the gateway logged follow-up {followup_id} only at "
                    + ", ".join(f"entry {i}" for i in same_id)
                    + ", for another request: it sent two follow-ups under one id"
                )
            elif logged is not None:
                where = f"at entry {index}, which holds follow-up {logged.text('followup_id')}"
            else:
                where = f"at entry {index}, which the gateway's ledger does not hold"
            return [
                self._difference(
                    followup_id,
                    f"the node took in a follow-up the gateway did not log (expected {where}); "
                    "ask the gateway's operator what this follow-up was and why it is not in "
                    "the ledger",
                )
            ]
        if logged.text("request_digest") != receipt.text("request_digest"):
            return [
                self._difference(
                    followup_id,
                    "request digests differ: the node took in "
                    f"{receipt.text('request_digest')[:16]}…, the gateway logged "
                    f"{logged.text('request_digest')[:16]}… at entry {index}",
                )
            ]
        found = []
        if logged.text("followup_id") != followup_id:
            found.append(
                self._difference(
                    followup_id,
                    f"the node recorded follow-up {followup_id} against the gateway's entry "
                    f"{index}, which is follow-up {logged.text('followup_id')}",
                )
            )
        if logged.text("node_id") != self.node_id:
            found.append(
                self._difference(
                    followup_id,
                    f"the node took in a follow-up addressed to {logged.text('node_id')}, "
                    "not to it",
                )
            )
        return found

    def _check_delivery(self, followup_id: str, delivery: Entry) -> list[Difference]:
        """An acknowledgement the gateway recorded must be the one in the node's receipt."""
        status = delivery.text("status")
        receipts = self.receipts_of.get(followup_id, [])
        if not receipts:
            said = "took this follow-up in" if status == "delivered" else "refused this follow-up"
            return [
                self._difference(
                    followup_id,
                    f"the gateway recorded that the node {said} (a signed acknowledgement), "
                    "but the node holds no receipt for it",
                )
            ]
        same = [r for r in receipts if r.text("request_digest") == delivery.text("request_digest")]
        if not same:
            return [
                self._difference(
                    followup_id,
                    "the gateway recorded delivering another request under this follow-up id "
                    "than the node took in (request digests differ)",
                )
            ]
        acked = [r for r in same if r.text("ack_digest") == delivery.text("ack_digest")]
        if not acked:
            return [
                self._difference(
                    followup_id,
                    "the gateway recorded another acknowledgement than the node signed (ack "
                    f"digests differ: the node {same[0].text('ack_digest')[:16]}…, the gateway "
                    f"{delivery.text('ack_digest')[:16]}…)",
                )
            ]
        if not any(r.fields["accepted"] is (status == "delivered") for r in acked):
            return [
                self._difference(
                    followup_id,
                    f"the gateway recorded this follow-up as {status}, but the node's receipt "
                    f"says it {'took it in' if acked[0].fields['accepted'] else 'refused it'}",
                )
            ]
        return []

    def _check_outcome(self, followup_id: str, outcome: Entry) -> list[Difference]:
        """A decision the gateway showed must be one the node made, field by field."""
        did_not = "the gateway showed a decision the node did not make"
        decisions = self.decisions_of.get(followup_id, [])
        if not decisions:
            return [
                self._difference(
                    followup_id,
                    f"{did_not} ({describe_decision(outcome)}): the node's ledger holds no "
                    "decision on this follow-up",
                )
            ]
        same = [d for d in decisions if d.text("request_digest") == outcome.text("request_digest")]
        if not same:
            return [
                self._difference(
                    followup_id,
                    f"{did_not}: the node decided another request under this follow-up id "
                    "(request digests differ)",
                )
            ]
        signed = [d for d in same if d.text("decision_digest") == outcome.text("decision_digest")]
        if not signed:
            return [
                self._difference(
                    followup_id,
                    f"{did_not}: decision digests differ (the node signed "
                    f"{same[0].text('decision_digest')[:16]}…, the gateway recorded "
                    f"{outcome.text('decision_digest')[:16]}…)",
                )
            ]
        shown = (outcome.text("outcome"), _field_decisions(outcome))
        if not any((d.text("outcome"), _field_decisions(d)) == shown for d in signed):
            return [
                self._difference(
                    followup_id,
                    f"{did_not}: it recorded {describe_decision(outcome)}, where the node "
                    f"decided {describe_decision(signed[0])} (same decision digest)",
                )
            ]
        return []

    def _notes(self, now_ms: int) -> list[Difference]:
        """What timing explains: cut short, not collected yet, still pending."""
        from liaison.ledger.views import format_time

        gateway = self.gateway
        found = []
        for followup_id, indices in gateway.by_id.items():
            if gateway.at[indices[0]].text("node_id") != self.node_id:
                continue
            deliveries = gateway.deliveries.get(followup_id, [])
            taken_in = followup_id in self.receipts_of
            if not deliveries:
                found.append(
                    self._difference(
                        followup_id,
                        "the gateway logged this follow-up and recorded no delivery: "
                        + (
                            "the node took it in, and the gateway stopped before its "
                            "acknowledgement came back"
                            if taken_in
                            else "it stopped before delivering it (cut short)"
                        ),
                        problem=False,
                    )
                )
            elif taken_in and all(d.text("status") not in ACKNOWLEDGED for d in deliveries):
                # A gateway records "not delivered" only when the node refused the call,
                # or said (after the delivery window) that it holds no such request: a
                # receipt contradicts that, and the node's decision would never reach
                # the investigator.
                found.append(
                    self._difference(
                        followup_id,
                        "the node took this follow-up in, but the gateway recorded it as "
                        f"{deliveries[-1].text('status')}: a decision on it would never reach "
                        "the investigator",
                    )
                )
        collected = {
            followup_id for followup_id, outcomes in gateway.outcomes.items() if self._own(outcomes)
        }
        for followup_id, decisions in self.decisions_of.items():
            if followup_id not in collected:
                self.counts.uncollected += 1
                found.append(
                    self._difference(
                        followup_id,
                        f"the node decided this follow-up ({describe_decision(decisions[0])}); "
                        "the gateway has not collected the decision yet",
                        problem=False,
                    )
                )
        for followup_id, receipts in self.receipts_of.items():
            accepted = [r for r in receipts if r.fields["accepted"] is True]
            if not accepted or followup_id in self.decisions_of or followup_id in collected:
                continue
            if followup_id not in gateway.deliveries:
                continue  # said above: the gateway recorded no delivery
            self.counts.pending += 1
            answer_by = accepted[0].fields.get("answer_by_ms")
            when = ""
            if type(answer_by) is int and answer_by > 0:
                when = (
                    f"; overdue since {format_time(answer_by)}"
                    if answer_by < now_ms
                    else f"; answer by {format_time(answer_by)}"
                )
            found.append(
                self._difference(
                    followup_id,
                    f"pending: the node took this follow-up in and no one has decided it yet{when}",
                    problem=False,
                )
            )
        return found


def describe_followups(report: ReconcileReport) -> str:
    """One line on the follow-ups for `audit reconcile` and the demo; "" when there are none.

    "follow-ups: 1 filed, 1 delivered, 1 decided (1 field released under H2, 1 withheld);
    every step in both ledgers".
    """
    c = report.followups
    if not c.any:
        return ""
    parts = [f"{c.filed} filed"]
    parts += [
        f"{n} {what}"
        for n, what in (
            (c.delivered, "delivered"),
            (c.refused, "refused on delivery"),
            (c.not_delivered, "not delivered"),
            (c.unsent, "cut short before delivery"),
        )
        if n
    ]
    decided = f"{c.decided} decided"
    if c.decided:
        released = f"{c.released} field{'' if c.released == 1 else 's'} released"
        codes = sorted(c.handling.items())
        if len(codes) == 1:
            released += f" under {codes[0][0] or 'no code'}"
        elif codes:
            released += " (" + ", ".join(f"{n} {code or 'no code'}" for code, n in codes) + ")"
        decided += f" ({released}, {c.withheld} withheld)"
    parts.append(decided)
    if c.uncollected:
        parts.append(f"{c.uncollected} decided and not collected yet")
    if c.pending:
        parts.append(f"{c.pending} pending")
    problems = sum(1 for d in report.differences if d.problem and d.followup_id)
    if problems:
        verdict = f"{problems} difference(s) between the ledgers"
    elif c.unchecked:
        verdict = f"{c.unchecked} not checked (their node's ledger was not given)"
    else:
        verdict = "every step in both ledgers"
    return f"follow-ups: {', '.join(parts)}; {verdict}"


@dataclass(frozen=True, slots=True)
class LedgerFiles:
    """Where one party's ledger is and the public key its checkpoints verify under."""

    name: str
    location: str
    key: Path


def federation_ledgers(folder: Path) -> tuple[LedgerFiles, list[LedgerFiles]]:
    """The gateway's ledger and every node's receipts, as a federation folder's configs say."""
    from liaison.catalog import CATALOG_V1
    from liaison.config import load_gateway_config, load_node_config

    gateway_config = load_gateway_config(folder / "gateway" / "gateway.toml")
    gateway = LedgerFiles("gateway", gateway_config.ledger, folder / "gateway" / "gateway.pub")
    nodes = []
    for config_path in sorted((folder / "nodes").glob("*/node.toml")):
        config = load_node_config(config_path, CATALOG_V1)
        nodes.append(LedgerFiles(config.node_id, config.receipts, config_path.parent / "node.pub"))
    return gateway, nodes


def reconcile_files(
    gateway: LedgerFiles,
    nodes: Sequence[LedgerFiles],
    *,
    allow_unsigned_tail: bool = False,
    witnesses: Mapping[str, Sequence[Witness]] | None = None,
) -> ReconcileReport:
    """Open every ledger read-only, reconcile them, and close them again."""
    stores: list[LedgerStore] = []
    try:
        gateway_store = LedgerStore(gateway.location, create=False)
        stores.append(gateway_store)
        opened = []
        for node in nodes:
            store = LedgerStore(node.location, create=False)
            stores.append(store)
            opened.append(NodeLedger(node.name, store, VerifyingKey.from_pem_file(node.key)))
        return reconcile(
            gateway_store,
            VerifyingKey.from_pem_file(gateway.key),
            opened,
            allow_unsigned_tail=allow_unsigned_tail,
            witnesses=witnesses,
        )
    finally:
        for store in stores:
            store.close()
