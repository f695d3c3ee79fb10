"""Reconciling the gateway's ledger with every node's receipts.

Each side is verified on its own first; then every request a node answered
must be in the gateway's ledger with the same digests, every answer the
gateway recorded must be in that node's receipts, and every checkpoint a node
kept must match the gateway's ledger as it is now. Nodes so act as witnesses:
a gateway that rewrites or truncates its history after the fact is caught by
the checkpoints it gave them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from liaison.errors import CheckpointError, EntryError
from liaison.keys import VerifyingKey
from liaison.ledger.checkpoint import open_checkpoint
from liaison.ledger.entries import Entry, EntryKind, parse_entry
from liaison.ledger.merkle import MerkleTree, leaf_hash
from liaison.ledger.store import LedgerStore
from liaison.ledger.verify import VerifyReport, verify_ledger

ANSWERING = ("answered", "denied")
# A node's compensating receipt: the answer of its earlier receipt for the same
# request (same answer digest) never left the node.
NOT_DELIVERED = "not-delivered"


@dataclass(frozen=True, slots=True)
class Difference:
    node_id: str
    query_id: str
    message: str
    # Problems mean a ledger lies or lost something; notes are explained by
    # timing (an answer that arrived after the deadline, a crash mid-query).
    problem: bool = True


@dataclass(frozen=True, slots=True)
class NodeLedger:
    node_id: str
    store: LedgerStore
    key: VerifyingKey


@dataclass(slots=True)
class ReconcileReport:
    gateway: VerifyReport
    nodes: dict[str, VerifyReport] = field(default_factory=dict)
    receipts: dict[str, int] = field(default_factory=dict)
    differences: list[Difference] = field(default_factory=list)

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
) -> ReconcileReport:
    """Compare every receipt of every node with the gateway's ledger, and back.

    Nothing is keyed by query id alone: an id may have been used twice (a
    gateway that sent an unlogged request, then a logged one, under the same
    id), so each receipt is matched to the gateway entry it names by index and
    digest, and each outcome to its request digest.
    """
    gateway_report, tree = verify_ledger(
        gateway, gateway_key, allow_unsigned_tail=allow_unsigned_tail
    )
    report = ReconcileReport(gateway_report)
    logged_at: dict[int, Entry] = {}
    requests: dict[str, list[int]] = {}
    outcomes: dict[tuple[str, str], dict[str, Any]] = {}
    for index, entry in _entries(gateway):
        if entry.kind is EntryKind.REQUEST:
            logged_at[index] = entry
            requests.setdefault(entry.query_id, []).append(index)
        elif entry.kind is EntryKind.OUTCOME:
            # A streamed search writes each batch of results as it arrives, then
            # every result: together they are the outcome, the later the truer.
            outcomes.setdefault((entry.query_id, entry.text("request_digest")), {}).update(
                (str(r.get("node_id")), r) for r in entry.fields["results"] if isinstance(r, dict)
            )
    origin = gateway.get_meta("origin") or ""
    for node in nodes:
        node_report, _ = verify_ledger(
            node.store, node.key, allow_unsigned_tail=allow_unsigned_tail
        )
        report.nodes[node.node_id] = node_report
        receipts = [e for _, e in _entries(node.store) if e.kind is EntryKind.RECEIPT]
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
    gateway: LedgerFiles, nodes: Sequence[LedgerFiles], *, allow_unsigned_tail: bool = False
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
        )
    finally:
        for store in stores:
            store.close()
