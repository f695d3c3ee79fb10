"""Reading a ledger as a person does: flat rows, filters, and a summary for oversight bodies.

Follow-up entries read as rows too: the follow-up id, the query it is about
(carried to the later entries of the same follow-up, which name only the
follow-up id), the node, what became of it, and each field with its handling
code.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from liaison.errors import EntryError, InvalidQuery
from liaison.ledger.entries import AuditKey, Entry, EntryKind, parse_entry
from liaison.ledger.store import LedgerStore


@dataclass(frozen=True, slots=True)
class Row:
    """One entry, flattened: the columns auditors filter and read by."""

    index: int
    time_ms: int
    kind: str
    query_id: str = ""
    agency: str = ""
    subject: str = ""
    purpose: str = ""
    case_ref: str = ""
    dataset: str = ""
    operation: str = ""
    # Target nodes of a request; the node of a receipt; nodes reported in an outcome.
    nodes: tuple[str, ...] = ()
    # Per node status ("ruritania=answered"), or a receipt's status.
    outcome: str = ""
    selectors: tuple[str, ...] = ()
    entry: Mapping[str, Any] = field(default_factory=dict)
    # Follow-up kinds only: the follow-up's id; its fields, as asked
    # ("case_ref") or as decided ("case_ref released H2", "first_seen refused");
    # and a word more (its urgency, the deciding officer, a delivery's detail).
    followup_id: str = ""
    fields: tuple[str, ...] = ()
    detail: str = ""

    def as_json(self) -> dict[str, Any]:
        # Follow-up keys only on follow-up rows: rows of queries read as they always have.
        extra = (
            {"followup_id": self.followup_id, "fields": list(self.fields), "detail": self.detail}
            if self.followup_id
            else {}
        )
        return {
            "index": self.index,
            "time": format_time(self.time_ms),
            "time_ms": self.time_ms,
            "kind": self.kind,
            "query_id": self.query_id,
            "agency": self.agency,
            "subject": self.subject,
            "purpose": self.purpose,
            "case_ref": self.case_ref,
            "dataset": self.dataset,
            "operation": self.operation,
            "nodes": list(self.nodes),
            "outcome": self.outcome,
            **extra,
            "entry": dict(self.entry),
        }


def format_time(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def parse_time(text: str) -> int:
    """Milliseconds since the epoch from an ISO date or time (UTC unless it says otherwise)."""
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError as exc:
        raise InvalidQuery(
            f"{text!r} is not a date or time; use ISO 8601, e.g. 2026-11-29 or 2026-11-29T10:00Z"
        ) from exc
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return int(moment.timestamp() * 1000)


def _request_part(fields: Mapping[str, Any]) -> dict[str, Any]:
    requester = fields.get("requester", {})
    return {
        "query_id": str(fields.get("query_id", "")),
        "agency": str(requester.get("agency", "")),
        "subject": str(requester.get("subject", "")),
        "purpose": str(fields.get("purpose", "")),
        "case_ref": str(fields.get("case_ref", "")),
        "dataset": str(fields.get("dataset", "")),
        "operation": str(fields.get("operation", "")),
        "selectors": tuple(
            str(h) for p in fields.get("predicates", []) for h in p.get("values_hmac", [])
        ),
    }


def row_of(index: int, entry: Entry) -> Row:
    f = entry.fields
    if entry.kind is EntryKind.REQUEST:
        return Row(
            index,
            entry.time_ms,
            entry.kind.value,
            nodes=tuple(f.get("targets", [])),
            entry=f,
            **_request_part(f),
        )
    if entry.kind is EntryKind.RECEIPT:
        try:
            asked = parse_entry(str(f.get("gateway_entry", "")).encode("utf-8")).fields
        except EntryError:
            asked = {}
        part = _request_part(asked)
        part["query_id"] = entry.query_id
        return Row(
            index,
            entry.time_ms,
            entry.kind.value,
            nodes=(entry.text("node_id"),),
            outcome=entry.text("status"),
            entry=f,
            **part,
        )
    if entry.kind is EntryKind.OUTCOME:
        results = [r for r in f.get("results", []) if isinstance(r, dict)]
        return Row(
            index,
            entry.time_ms,
            entry.kind.value,
            query_id=entry.query_id,
            nodes=tuple(str(r.get("node_id", "")) for r in results),
            outcome=", ".join(f"{r.get('node_id')}={r.get('status')}" for r in results),
            entry=f,
        )
    if entry.kind in FOLLOWUP_KINDS:
        return _followup_row(index, entry, {})
    return Row(index, entry.time_ms, entry.kind.value, entry=f)


FOLLOWUP_KINDS = frozenset(
    {
        EntryKind.FOLLOWUP,
        EntryKind.FOLLOWUP_DELIVERY,
        EntryKind.FOLLOWUP_OUTCOME,
        EntryKind.FOLLOWUP_RECEIPT,
        EntryKind.FOLLOWUP_DECISION,
    }
)


def decided_fields(fields: Mapping[str, Any]) -> tuple[str, ...]:
    """Each field of a decision: "case_ref released H2", "first_seen refused"."""
    listed = fields.get("fields")
    found = []
    for f in listed if isinstance(listed, list) else ():
        if not isinstance(f, dict):
            continue
        name = str(f.get("field", ""))
        if f.get("released") is True:
            found.append(f"{name} released {f.get('handling') or 'without a code'}".strip())
        else:
            found.append(f"{name} refused")
    return tuple(found)


def _followup_row(index: int, entry: Entry, known: dict[str, dict[str, Any]]) -> Row:
    """A follow-up entry as a row; ``known`` carries each follow-up's first row to its later ones.

    Only the follow-up entry (on the gateway) and the receipt (on a node, which
    holds the gateway's entry) say who asked, why, and about which query; the
    delivery, outcome and decision after them say only the follow-up id.
    """
    f = entry.fields
    kind = entry.kind
    followup_id = entry.text("followup_id")
    nodes = (entry.text("node_id"),)
    if kind is EntryKind.FOLLOWUP or kind is EntryKind.FOLLOWUP_RECEIPT:
        asked = f
        if kind is EntryKind.FOLLOWUP_RECEIPT:
            try:
                asked = parse_entry(entry.text("gateway_entry").encode("utf-8")).fields
            except EntryError:
                asked = {}
        part = _request_part(asked)
        part["query_id"] = str(asked.get("about_query_id", ""))
        part["dataset"] = ""
        part["operation"] = "follow-up"
        part["selectors"] = ()
        known.setdefault(followup_id, part)
        listed = asked.get("fields")
        wanted = tuple(str(n) for n in listed) if isinstance(listed, list) else ()
        if kind is EntryKind.FOLLOWUP:
            return Row(
                index,
                entry.time_ms,
                kind.value,
                nodes=nodes,
                entry=f,
                followup_id=followup_id,
                fields=wanted,
                detail=entry.text("urgency"),
                **part,
            )
        return Row(
            index,
            entry.time_ms,
            kind.value,
            nodes=nodes,
            outcome="accepted" if f.get("accepted") is True else "refused",
            entry=f,
            followup_id=followup_id,
            fields=wanted,
            detail=str(asked.get("urgency", "")),
            **part,
        )
    part = dict(known.get(followup_id, {"operation": "follow-up"}))
    if kind is EntryKind.FOLLOWUP_DELIVERY:
        return Row(
            index,
            entry.time_ms,
            kind.value,
            nodes=nodes,
            outcome=entry.text("status"),
            entry=f,
            followup_id=followup_id,
            detail=entry.text("detail"),
            **part,
        )
    return Row(
        index,
        entry.time_ms,
        kind.value,
        nodes=nodes,
        outcome=entry.text("outcome"),
        entry=f,
        followup_id=followup_id,
        fields=decided_fields(f),
        # A decision names its officer; the gateway's outcome, only what was decided.
        detail=f"by {entry.text('officer')}" if kind is EntryKind.FOLLOWUP_DECISION else "",
        **part,
    )


def rows(store: LedgerStore) -> Iterator[Row]:
    """Every readable entry as a row; unreadable ones are for `verify` to report."""
    # Follow-up id -> what its first entry says of who asked, why, about which query.
    known: dict[str, dict[str, Any]] = {}
    for index, _leaf, raw in store.rows():
        try:
            entry = parse_entry(raw)
        except EntryError:
            continue
        if entry.kind in FOLLOWUP_KINDS:
            yield _followup_row(index, entry, known)
        else:
            yield row_of(index, entry)


@dataclass(frozen=True, slots=True)
class Filters:
    agency: str = ""
    subject: str = ""
    purpose: str = ""
    case_ref: str = ""
    node: str = ""
    dataset: str = ""
    kind: str = ""
    query_id: str = ""
    selector_hash: str = ""
    since_ms: int | None = None
    until_ms: int | None = None
    followup_id: str = ""

    def match(self, row: Row) -> bool:
        checks = (
            (self.agency, row.agency),
            (self.subject, row.subject),
            (self.purpose, row.purpose),
            (self.dataset, row.dataset),
            (self.kind, row.kind),
            (self.query_id, row.query_id),
            (self.followup_id, row.followup_id),
        )
        if any(wanted and wanted != actual for wanted, actual in checks):
            return False
        if self.case_ref and not _glob(self.case_ref, row.case_ref):
            return False
        if self.node and self.node not in row.nodes:
            return False
        if self.selector_hash and self.selector_hash not in row.selectors:
            return False
        if self.since_ms is not None and row.time_ms < self.since_ms:
            return False
        return not (self.until_ms is not None and row.time_ms >= self.until_ms)


def _glob(pattern: str, value: str) -> bool:
    from fnmatch import fnmatchcase

    return fnmatchcase(value, pattern)


def select(store: LedgerStore, filters: Filters) -> list[Row]:
    return [r for r in rows(store) if filters.match(r)]


@dataclass(slots=True)
class Summary:
    """Queries per agency, purpose, node and outcome over a period; follow-ups likewise."""

    since_ms: int | None
    until_ms: int | None
    queries: int = 0
    by_agency: Counter[str] = field(default_factory=Counter)
    by_purpose: Counter[str] = field(default_factory=Counter)
    by_dataset: Counter[str] = field(default_factory=Counter)
    by_node_outcome: Counter[tuple[str, str]] = field(default_factory=Counter)
    unfinished: int = 0
    # Follow-ups filed (gateway) or taken in (node) in the period, by agency,
    # by node and status ("pending", "approved", ... as FollowUpStatus, or
    # "unfinished" when no delivery was recorded), and the fields decided:
    # released by handling code, and withheld.
    followups: int = 0
    followups_by_agency: Counter[str] = field(default_factory=Counter)
    followups_by_node_status: Counter[tuple[str, str]] = field(default_factory=Counter)
    released_by_handling: Counter[str] = field(default_factory=Counter)
    withheld: int = 0

    def followups_json(self) -> dict[str, Any]:
        return {
            "filed": self.followups,
            "by_agency": dict(sorted(self.followups_by_agency.items())),
            "by_node": _by_node(self.followups_by_node_status),
            "fields_released_by_handling": dict(sorted(self.released_by_handling.items())),
            "fields_withheld": self.withheld,
        }

    def as_json(self) -> dict[str, Any]:
        # Follow-ups only where there are any: a ledger of queries reports as it always has.
        extra = {"followups": self.followups_json()} if self.followups else {}
        return {
            "since": None if self.since_ms is None else format_time(self.since_ms),
            "until": None if self.until_ms is None else format_time(self.until_ms),
            "queries": self.queries,
            "by_agency": dict(sorted(self.by_agency.items())),
            "by_purpose": dict(sorted(self.by_purpose.items())),
            "by_dataset": dict(sorted(self.by_dataset.items())),
            "by_node": _by_node(self.by_node_outcome),
            "unfinished": self.unfinished,
            **extra,
        }


def _by_node(counts: Counter[tuple[str, str]]) -> dict[str, dict[str, int]]:
    return {
        node: {status: n for (nd, status), n in sorted(counts.items()) if nd == node}
        for node in sorted({nd for nd, _ in counts})
    }


def summarise(all_rows: Iterable[Row], filters: Filters) -> Summary:
    """Count requests in the period and the outcome each node gave them."""
    summary = Summary(filters.since_ms, filters.until_ms)
    # By query id and request digest: an id used for two requests (which
    # `verify` reports) must not lend one request the other's outcome.
    counted: set[tuple[str, str]] = set()
    # Node id -> status; a streamed search's outcome is several entries, the later the truer.
    outcomes: dict[tuple[str, str], dict[str, str]] = {}
    followups = _FollowUpTally()
    for row in all_rows:
        if row.followup_id:
            followups.add(row, filters)
            continue
        asked = (row.query_id, str(row.entry.get("request_digest", "")))
        if row.kind == EntryKind.OUTCOME.value:
            outcomes.setdefault(asked, {}).update(
                (str(r.get("node_id")), str(r.get("status")))
                for r in row.entry.get("results", [])
                if isinstance(r, dict)
            )
        elif row.kind == EntryKind.REQUEST.value and filters.match(row):
            counted.add(asked)
            summary.queries += 1
            summary.by_agency[row.agency] += 1
            summary.by_purpose[row.purpose] += 1
            summary.by_dataset[row.dataset] += 1
    for asked in counted:
        outcome = outcomes.get(asked)
        if outcome is None:
            summary.unfinished += 1
            continue
        for node_id, status in outcome.items():
            summary.by_node_outcome[(node_id, status)] += 1
    followups.into(summary)
    return summary


# What a follow-up's latest delivery (gateway) or receipt (node) makes of it
# while no decision is known: FollowUpStatus values.
_DELIVERED_AS = {"delivered": "pending", "refused": "refused", "not delivered": "not delivered"}


@dataclass(slots=True)
class _FollowUpTally:
    """Follow-ups counted by :func:`summarise`, each by its own id and request digest."""

    counted: dict[tuple[str, str], tuple[str, str]] = field(default_factory=dict)
    # The latest delivery status, and the latest decision's row, of each follow-up.
    delivered: dict[tuple[str, str], str] = field(default_factory=dict)
    decided: dict[tuple[str, str], Row] = field(default_factory=dict)

    def add(self, row: Row, filters: Filters) -> None:
        asked = (row.followup_id, str(row.entry.get("request_digest", "")))
        if row.kind in (EntryKind.FOLLOWUP.value, EntryKind.FOLLOWUP_RECEIPT.value):
            if filters.match(row) and asked not in self.counted:
                self.counted[asked] = (row.agency, row.nodes[0] if row.nodes else "")
            if row.kind == EntryKind.FOLLOWUP_RECEIPT.value:
                self.delivered[asked] = "delivered" if row.outcome == "accepted" else "refused"
        elif row.kind == EntryKind.FOLLOWUP_DELIVERY.value:
            self.delivered[asked] = row.outcome
        elif row.kind in (EntryKind.FOLLOWUP_OUTCOME.value, EntryKind.FOLLOWUP_DECISION.value):
            self.decided[asked] = row

    def into(self, summary: Summary) -> None:
        for asked, (agency, node) in self.counted.items():
            summary.followups += 1
            summary.followups_by_agency[agency] += 1
            decision = self.decided.get(asked)
            if decision is not None:
                status = decision.outcome
                for f in decision.entry.get("fields", []):
                    if not isinstance(f, dict):
                        continue
                    if f.get("released") is True:
                        summary.released_by_handling[str(f.get("handling", ""))] += 1
                    else:
                        summary.withheld += 1
            else:
                delivery = self.delivered.get(asked)
                status = "unfinished" if delivery is None else _DELIVERED_AS.get(delivery, delivery)
            summary.followups_by_node_status[(node, status)] += 1


def entry_text(row: Row) -> str:
    return json.dumps(dict(row.entry), indent=2, sort_keys=True, ensure_ascii=False)


def selector_hash(value: str, field_name: str, key: AuditKey) -> str:
    """The keyed hash a ledger holds for selector ``value``, to search for it.

    With ``field_name``, the value is first written as the catalog writes that
    field (hex in lower case, an e-mail address trimmed), as the gateway
    logged it.
    """
    from liaison.catalog import CATALOG_V1

    if field_name:
        matches = [d.field(field_name) for d in CATALOG_V1.datasets if field_name in d.field_names]
        if not matches:
            raise InvalidQuery(f"no catalog dataset has a field {field_name!r}")
        value = matches[0].canonical(value)
    return key.hash(value)
