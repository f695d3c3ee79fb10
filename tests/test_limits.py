"""Query limits and ledger limits agree: the largest valid query is logged and answered.

Every predicate value is logged as a 64-hex-digit keyed hash, and each
node's receipt quotes the gateway's entry whole, so the number of values a
query may carry decides the size of both entries. MAX_QUERY_VALUES keeps
them under MAX_ENTRY_BYTES; a query past it is refused as INVALID_ARGUMENT
naming the limit, never as INTERNAL from the ledger.
"""

from __future__ import annotations

import hashlib
import random

import grpc
import pytest

from liaison import client
from liaison.ledger.entries import (
    MAX_ENTRY_BYTES,
    EntryKind,
    ReceiptFacts,
    parse_entry,
    receipt_entry,
    request_entry,
)
from liaison.messages import NodeStatus, SearchInput
from liaison.query import (
    MAX_CASE_REF_LENGTH,
    MAX_IN_VALUES,
    MAX_LEGAL_BASIS_LENGTH,
    MAX_PREDICATES,
    MAX_QUERY_VALUES,
    Comparator,
    Operation,
    Predicate,
    Query,
)
from liaison.serving import MAX_MESSAGE_BYTES
from liaison.wire import request_to_bytes, search_to_proto
from proto.liaison.v1 import gateway_pb2_grpc as pb_gateway_grpc
from tests.conftest import Federation
from tests.support import TEST_AUDIT_KEY, investigator_token, make_request

NODES = ("freedonia", "ruritania", "sylvania")


def sha256_values(n: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    return [hashlib.sha256(rng.randbytes(16)).hexdigest() for _ in range(n)]


def widest_query(total: int) -> Query:
    """``total`` SHA-256 values over as many predicates as a query may have."""
    assert total >= MAX_PREDICATES
    values = sha256_values(total, seed=total)
    sizes = [1] * MAX_PREDICATES
    left = total - MAX_PREDICATES
    for i in range(MAX_PREDICATES):
        extra = min(left, MAX_IN_VALUES - 1)
        sizes[i] += extra
        left -= extra
    assert left == 0 and sum(sizes) == total
    predicates, start = [], 0
    for size in sizes:
        predicates.append(Predicate("sha256", Comparator.IN, tuple(values[start : start + size])))
        start += size
    return Query("media", Operation.MATCH, tuple(predicates))


def search_of(query: Query) -> SearchInput:
    return SearchInput(query, "csam-investigation", "GEN-LIMITS-1")


def test_the_largest_valid_query_makes_entries_under_the_ledger_limit() -> None:
    # prepare: every free-text part of the request at its longest
    request = make_request(
        widest_query(MAX_QUERY_VALUES),
        audience=NODES,
        case_ref="C" * MAX_CASE_REF_LENGTH,
        legal_basis="L" * MAX_LEGAL_BASIS_LENGTH,
    )
    payload = request_to_bytes(request)

    # execute
    entry = request_entry(
        request,
        request_digest=hashlib.sha256(payload).digest(),
        key_id="k" * 16,
        audit_key=TEST_AUDIT_KEY,
    )
    receipt = receipt_entry(
        ReceiptFacts(
            node_id="freedonia",
            time_ms=request.issued_at_ms,
            query_id=request.query_id,
            request_digest=hashlib.sha256(payload).digest(),
            gateway_id=request.gateway_id,
            gateway_key_id="k" * 16,
            gateway_signature=b"\1" * 64,
            gateway_entry=entry,
            gateway_leaf_index=2**40,
            gateway_checkpoint="c" * 600,
            status="answered",
            rules=("r" * 64,) * 8,
            obligations=("o" * 64,) * 8,
            answer_digest="0" * 64,
            answer_key_id="n" * 16,
        )
    )

    # assert: both fit with room to spare, and so does what the node is sent
    assert len(entry) < 0.75 * MAX_ENTRY_BYTES
    assert len(receipt) < 0.8 * MAX_ENTRY_BYTES
    assert parse_entry(receipt).kind is EntryKind.RECEIPT
    assert len(payload) + len(entry) < MAX_MESSAGE_BYTES / 4


def test_the_largest_valid_query_is_answered_through_a_gateway(federation: Federation) -> None:
    # prepare
    token = investigator_token(federation.root)
    query = widest_query(MAX_QUERY_VALUES)

    # execute
    result = client.search(federation.gateway.address, token, search_of(query))

    # assert: answered by every node (no hit: the values are random), except that
    # Ruritania's policy caps the values an investigator may ask per hour: a
    # signed denial naming its rule, not a failure
    statuses = {r.node_id: r.status for r in result.results}
    assert statuses == {
        "freedonia": NodeStatus.ANSWERED,
        "ruritania": NodeStatus.DENIED,
        "sylvania": NodeStatus.ANSWERED,
    }
    (ruritania,) = [r for r in result.results if r.node_id == "ruritania"]
    assert ruritania.detail.startswith("rate limit of rule partner-hash-match reached")
    # every node's receipt quotes the gateway's whole entry, and was written
    for node_id, node in federation.nodes.items():
        receipts = [
            parse_entry(raw)
            for _, _, raw in node.core.receipts.store.rows()
            if result.query_id.encode() in raw
        ]
        assert [e.kind for e in receipts] == [EntryKind.RECEIPT], node_id
    logged = [
        parse_entry(raw)
        for _, _, raw in federation.gateway.core.ledger.store.rows()
        if result.query_id.encode() in raw
    ]
    assert [e.kind for e in logged] == [EntryKind.REQUEST, EntryKind.OUTCOME]
    assert sum(len(p["values_hmac"]) for p in logged[0].fields["predicates"]) == MAX_QUERY_VALUES


# One value over; and the query of the original report (16 x 1,000 SHA-256 values),
# whose 1.07 MB entry the ledger refused, which the caller saw as INTERNAL.
@pytest.mark.parametrize("total", [MAX_QUERY_VALUES + 1, 16 * MAX_IN_VALUES])
def test_a_query_over_the_limit_is_refused_naming_it(federation: Federation, total: int) -> None:
    # prepare
    token = investigator_token(federation.root)
    entries_before = federation.gateway.core.ledger.size

    # execute
    with grpc.insecure_channel(federation.gateway.address) as channel:
        stub = pb_gateway_grpc.GatewayServiceStub(channel)
        with pytest.raises(grpc.RpcError) as info:
            stub.Search(
                search_to_proto(search_of(widest_query(total))),
                metadata=(("authorization", f"Bearer {token}"),),
                timeout=30,
            )

    # assert: the caller's mistake, said as such, and nothing logged or asked
    assert info.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert info.value.details() == (
        f"a query takes at most {MAX_QUERY_VALUES} values in all its predicates together, "
        f"got {total}; split the values over several queries"
    )
    assert federation.gateway.core.ledger.size == entries_before
