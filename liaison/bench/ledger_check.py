"""After a benchmark run: is every answered query in every ledger, and do they verify?

Read with the project's own readers, as ``liaison audit`` reads them, once
every process has stopped (so each ledger ends on a signed checkpoint):

* every search the client saw answered has a request and an outcome entry in
  the gateway's ledger and a receipt in the ledger of every node it expected;
* every direct call has a request entry in the direct caller's ledger (it
  logs as a second gateway replica would, under the gateway's key) and a
  receipt at its node;
* the gateway's ledger and every node's receipts verify and reconcile
  (``reconcile`` verifies each ledger first), as `liaison audit reconcile`
  does; the direct calls' receipts reconcile against the direct caller's
  ledger instead, since the gateway never saw those requests.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from liaison.keys import VerifyingKey
from liaison.ledger.reconcile import (
    NOT_DELIVERED,
    Difference,
    NodeLedger,
    federation_ledgers,
    reconcile,
)
from liaison.ledger.store import LedgerStore
from liaison.ledger.verify import VerifyReport
from liaison.ledger.views import rows

# How many missing queries and problems a report names; all are counted.
SHOWN = 5


@dataclass(slots=True)
class Asked:
    """The query ids the client saw answered, by the nodes that must hold a receipt."""

    federated: dict[str, tuple[str, ...]] = field(default_factory=dict)
    direct: dict[str, str] = field(default_factory=dict)  # query id -> node

    def add_federated(self, query_ids: Iterable[str], nodes: tuple[str, ...]) -> None:
        for query_id in query_ids:
            self.federated[query_id] = nodes

    def add_direct(self, query_id: str, node: str) -> None:
        self.direct[query_id] = node


@dataclass(frozen=True, slots=True)
class LedgerState:
    """What one ledger says: entries, checkpoints, whether it verified, its first problems."""

    name: str
    entries: int
    checkpoints: int
    ok: bool
    problems: tuple[str, ...]

    @classmethod
    def of(cls, name: str, report: VerifyReport) -> LedgerState:
        return cls(
            name,
            report.size,
            report.checkpoints,
            report.ok,
            tuple(str(p) for p in report.problems[:SHOWN]),
        )


@dataclass(frozen=True, slots=True)
class LedgerCheck:
    queries: int  # answered queries looked for
    missing: int  # (query, ledger) pairs not found
    missing_examples: tuple[str, ...]
    ledgers: tuple[LedgerState, ...]
    reconciled: bool
    differences: tuple[str, ...]  # problems only; notes are explained by timing
    notes: int

    @property
    def ok(self) -> bool:
        return self.missing == 0 and self.reconciled and all(s.ok for s in self.ledgers)

    def as_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "queries_checked": self.queries,
            "missing": self.missing,
            "missing_examples": list(self.missing_examples),
            "ledgers": {
                s.name: {
                    "entries": s.entries,
                    "checkpoints": s.checkpoints,
                    "verified": s.ok,
                    "problems": list(s.problems),
                }
                for s in self.ledgers
            },
            "reconciled": self.reconciled,
            "differences": list(self.differences),
            "notes": self.notes,
        }

    def failure(self) -> str:
        """One line saying what went wrong, for a failed benchmark."""
        parts = []
        if self.missing:
            parts.append(
                f"{self.missing} answered quer(y/ies) missing from a ledger "
                f"(first: {self.missing_examples[0]})"
            )
        for s in self.ledgers:
            if not s.ok:
                parts.append(f"the {s.name} ledger does not verify ({s.problems[0]})")
        if not self.reconciled:
            parts.append(f"the ledgers do not reconcile ({self.differences[0]})")
        return "; ".join(parts)


def _query_ids(store: LedgerStore, kind: str) -> set[str]:
    return {r.query_id for r in rows(store) if r.kind == kind and r.outcome != NOT_DELIVERED}


def _missing(
    asked: Asked, gateway: LedgerStore, direct: LedgerStore, nodes: Mapping[str, LedgerStore]
) -> list[str]:
    requests, outcomes = _query_ids(gateway, "request"), _query_ids(gateway, "outcome")
    direct_requests = _query_ids(direct, "request")
    receipts = {name: _query_ids(store, "receipt") for name, store in nodes.items()}
    found = []
    for query_id, targets in asked.federated.items():
        if query_id not in requests:
            found.append(f"{query_id}: no request entry in the gateway's ledger")
        if query_id not in outcomes:
            found.append(f"{query_id}: no outcome entry in the gateway's ledger")
        found += [
            f"{query_id}: no receipt in {node}'s ledger"
            for node in targets
            if query_id not in receipts.get(node, set())
        ]
    for query_id, node in asked.direct.items():
        if query_id not in direct_requests:
            found.append(f"{query_id}: no request entry in the direct caller's ledger")
        if query_id not in receipts.get(node, set()):
            found.append(f"{query_id} (direct): no receipt in {node}'s ledger")
    return found


def check_ledgers(root: Path, direct_ledger: Path, gateway_key: Path, asked: Asked) -> LedgerCheck:
    """Count, verify and reconcile the stopped federation in ``root``."""
    gateway_files, node_files = federation_ledgers(root)
    key = VerifyingKey.from_pem_file(gateway_key)
    stores: list[LedgerStore] = []
    try:
        gateway = LedgerStore(gateway_files.location, create=False)
        stores.append(gateway)
        direct = LedgerStore(str(direct_ledger), create=False)
        stores.append(direct)
        nodes: dict[str, NodeLedger] = {}
        for files in node_files:
            store = LedgerStore(files.location, create=False)
            stores.append(store)
            nodes[files.name] = NodeLedger(files.name, store, VerifyingKey.from_pem_file(files.key))
        missing = _missing(asked, gateway, direct, {n: v.store for n, v in nodes.items()})
        main = reconcile(gateway, key, list(nodes.values()))
        direct_nodes = sorted(set(asked.direct.values()))
        beside = reconcile(direct, key, [nodes[n] for n in direct_nodes])
    finally:
        for store in stores:
            store.close()
    # Each reconciliation sees the other's requests as unlogged: keep, from
    # each, only the differences about its own queries.
    differences: list[Difference] = [
        d for d in main.differences if d.query_id not in asked.direct
    ] + [d for d in beside.differences if d.query_id in asked.direct and d.problem]
    problems = [f"{d.node_id}, query {d.query_id}: {d.message}" for d in differences if d.problem]
    states = [
        LedgerState.of("gateway", main.gateway),
        *(LedgerState.of(name, report) for name, report in sorted(main.nodes.items())),
        LedgerState.of("direct caller", beside.gateway),
    ]
    return LedgerCheck(
        queries=len(asked.federated) + len(asked.direct),
        missing=len(missing),
        missing_examples=tuple(missing[:SHOWN]),
        ledgers=tuple(states),
        reconciled=not problems,
        differences=tuple(problems[:SHOWN]),
        notes=sum(1 for d in differences if not d.problem),
    )
