"""Reading a ledger as a person does: flat rows, filters, and a summary for oversight bodies."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from liaison.errors import EntryError, InvalidQuery
from liaison.ledger.entries import Entry, EntryKind, parse_entry
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

    def as_json(self) -> dict[str, Any]:
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
    return Row(index, entry.time_ms, entry.kind.value, entry=f)


def rows(store: LedgerStore) -> Iterator[Row]:
    """Every readable entry as a row; unreadable ones are for `verify` to report."""
    for index, _leaf, raw in store.rows():
        try:
            yield row_of(index, parse_entry(raw))
        except EntryError:
            continue


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

    def match(self, row: Row) -> bool:
        checks = (
            (self.agency, row.agency),
            (self.subject, row.subject),
            (self.purpose, row.purpose),
            (self.dataset, row.dataset),
            (self.kind, row.kind),
            (self.query_id, row.query_id),
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
    """Queries per agency, purpose, node and outcome over a period."""

    since_ms: int | None
    until_ms: int | None
    queries: int = 0
    by_agency: Counter[str] = field(default_factory=Counter)
    by_purpose: Counter[str] = field(default_factory=Counter)
    by_dataset: Counter[str] = field(default_factory=Counter)
    by_node_outcome: Counter[tuple[str, str]] = field(default_factory=Counter)
    unfinished: int = 0

    def as_json(self) -> dict[str, Any]:
        return {
            "since": None if self.since_ms is None else format_time(self.since_ms),
            "until": None if self.until_ms is None else format_time(self.until_ms),
            "queries": self.queries,
            "by_agency": dict(sorted(self.by_agency.items())),
            "by_purpose": dict(sorted(self.by_purpose.items())),
            "by_dataset": dict(sorted(self.by_dataset.items())),
            "by_node": {
                node: {
                    status: n
                    for (nd, status), n in sorted(self.by_node_outcome.items())
                    if nd == node
                }
                for node in sorted({nd for nd, _ in self.by_node_outcome})
            },
            "unfinished": self.unfinished,
        }


def summarise(all_rows: Iterable[Row], filters: Filters) -> Summary:
    """Count requests in the period and the outcome each node gave them."""
    summary = Summary(filters.since_ms, filters.until_ms)
    # By query id and request digest: an id used for two requests (which
    # `verify` reports) must not lend one request the other's outcome.
    counted: set[tuple[str, str]] = set()
    # Node id -> status; a streamed search's outcome is several entries, the later the truer.
    outcomes: dict[tuple[str, str], dict[str, str]] = {}
    for row in all_rows:
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
    return summary


def entry_text(row: Row) -> str:
    return json.dumps(dict(row.entry), indent=2, sort_keys=True, ensure_ascii=False)
