"""A gateway and its nodes as their ledgers see them: real writers, real keys, real signatures.

The audit tests need histories that a federation writes, and some that only an
insider holding the gateway's key could write: a request logged in a shadow
ledger, a query id used twice, a copy cut back to an earlier checkpoint. These
helpers write them through the classes a gateway and a node use (``Ledger``,
``seal``, ``request_entry``, ``check_logged``, ``receipt_entry``) to SQLite
files, and write the keys as PEM files for `liaison audit` to read.

They do not run the node's replay or query-id guards: those keep a running
node from writing some of these histories today, but ledgers written before
them, or by a node whose guard failed, must still be audited.
"""

from __future__ import annotations

import hashlib
import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path

from liaison.envelope import ANSWER_TYPE, REQUEST_TYPE, seal
from liaison.keys import SigningKey
from liaison.ledger.entries import ReceiptFacts, outcome_entry, receipt_entry, request_entry
from liaison.ledger.log import Ledger
from liaison.ledger.logged import LedgerProof, check_logged, gateway_origin, node_origin
from liaison.messages import NodeResult, NodeStatus
from liaison.query import Comparator, Operation, Predicate, Query
from liaison.wire import request_to_bytes
from tests.support import TEST_AUDIT_KEY, make_request, now_ms

GATEWAY_ID = "gateway"
NODES = ("freedonia", "ruritania")


@dataclass(frozen=True, slots=True)
class Asked:
    """One request as the gateway logged it, and where."""

    query_id: str
    request_digest: str
    index: int
    checkpoint_size: int


@dataclass(slots=True)
class Parties:
    """Keys under ``root`` (gateway/gateway.pub, nodes/<id>/node.pub) and the ledger files."""

    root: Path
    gateway_key: SigningKey
    node_keys: dict[str, SigningKey]
    asked: list[Asked] = field(default_factory=list)

    @property
    def gateway_ledger(self) -> Path:
        return self.root / "gateway" / "ledger.sqlite3"

    @property
    def gateway_pub(self) -> Path:
        return self.root / "gateway" / "gateway.pub"

    def receipts(self, node: str) -> Path:
        return self.root / "nodes" / node / "receipts.sqlite3"

    def node_pub(self, node: str) -> Path:
        return self.root / "nodes" / node / "node.pub"

    @contextmanager
    def session(self, *, log_in: Path | None = None) -> Iterator[Session]:
        """The gateway and every node writing, as one run of the federation.

        ``log_in`` is another ledger file the gateway's key writes instead of
        its own: a shadow log, as only an insider holding the key could keep.
        """
        gateway = Ledger.open(
            str(log_in or self.gateway_ledger), self.gateway_key, gateway_origin(GATEWAY_ID)
        )
        nodes: dict[str, Ledger] = {}
        try:
            for node, key in self.node_keys.items():
                nodes[node] = Ledger.open(str(self.receipts(node)), key, node_origin(node))
            yield Session(self, gateway, nodes)
        finally:
            for ledger in nodes.values():
                ledger.close()
            gateway.close()


@dataclass(slots=True)
class Session:
    parties: Parties
    gateway: Ledger
    nodes: dict[str, Ledger]

    def ask(
        self,
        *,
        query_id: str | None = None,
        outcome: bool = True,
        undelivered: tuple[str, ...] = (),
        gateway_saw_undelivered: bool = False,
    ) -> Asked:
        """Log a request, have every node check its proof and receipt it, log the outcome.

        Nodes in ``undelivered`` could not store their answer: they add a
        not-delivered receipt, and the gateway records an error for them
        unless ``gateway_saw_undelivered`` (a lie one of the two ledgers tells).
        """
        key = self.parties.gateway_key
        value = hashlib.sha256(f"probe {uuid.uuid4()}".encode()).hexdigest()
        request = make_request(
            Query("media", Operation.MATCH, (Predicate("sha256", Comparator.EQ, (value,)),)),
            audience=tuple(self.nodes),
            gateway_id=GATEWAY_ID,
        )
        if query_id is not None:
            request = replace(request, query_id=query_id)
        envelope = seal(key, REQUEST_TYPE, request_to_bytes(request))
        digest = hashlib.sha256(envelope.payload).digest()
        entry = request_entry(
            request, request_digest=digest, key_id=key.key_id, audit_key=TEST_AUDIT_KEY
        )
        appended = self.gateway.append(entry, prove=True)
        assert appended.checkpoint is not None
        proof = LedgerProof(
            entry, appended.index, appended.inclusion_path, appended.checkpoint.note
        )
        results = []
        for node, ledger in self.nodes.items():
            node_key = self.parties.node_keys[node]
            # What a node checks before it answers: the gateway logged this request.
            check_logged(
                proof,
                request=request,
                request_digest=digest,
                request_key_id=key.key_id,
                gateway_key=key.verifying_key,
            )
            answer = seal(node_key, ANSWER_TYPE, f"{node} answers {request.query_id}".encode())
            answer_digest = hashlib.sha256(answer.payload).hexdigest()
            facts = ReceiptFacts(
                node_id=node,
                time_ms=now_ms(),
                query_id=request.query_id,
                request_digest=digest,
                gateway_id=GATEWAY_ID,
                gateway_key_id=key.key_id,
                gateway_signature=envelope.signature,
                gateway_entry=entry,
                gateway_leaf_index=appended.index,
                gateway_checkpoint=appended.checkpoint.note,
                status="answered",
                rules=("permit-investigators",),
                obligations=(),
                answer_digest=answer_digest,
                answer_key_id=node_key.key_id,
            )
            ledger.append(receipt_entry(facts))
            if node in undelivered:
                ledger.append(receipt_entry(replace(facts, status="not-delivered")))
                if not gateway_saw_undelivered:
                    results.append(NodeResult(node, NodeStatus.ERROR, detail="unavailable"))
                    continue
            results.append(
                NodeResult(node, NodeStatus.ANSWERED, latency_ms=2.0, answer_digest=answer_digest)
            )
        if outcome:
            self.gateway.append(
                outcome_entry(
                    query_id=request.query_id,
                    request_digest=digest,
                    time_ms=now_ms(),
                    results=tuple(results),
                )
            )
        asked = Asked(
            request.query_id, digest.hex(), appended.index, appended.checkpoint.checkpoint.size
        )
        self.parties.asked.append(asked)
        return asked


def parties(root: Path, nodes: tuple[str, ...] = NODES) -> Parties:
    """Fresh keys for a gateway and ``nodes``, written under ``root``; no ledgers yet."""
    gateway_key = SigningKey.generate()
    gateway_key.write(root / "gateway" / "gateway.key", root / "gateway" / "gateway.pub")
    node_keys = {}
    for node in nodes:
        key = SigningKey.generate()
        key.write(root / "nodes" / node / "node.key", root / "nodes" / node / "node.pub")
        node_keys[node] = key
    os.makedirs(root / "audit", exist_ok=True)
    return Parties(root, gateway_key, node_keys)
