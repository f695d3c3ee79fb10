"""A batch as one call: the gateway chunks a stream of values, each chunk signed and logged.

Real nodes and a real gateway on loopback; batches sent through the client
library, and by a raw gRPC client where the client library would refuse first.
"""

from __future__ import annotations

from collections.abc import Iterator

import grpc
import pytest

from gateway.batch import MAX_BATCH_VALUES
from liaison import client
from liaison.demo.data import probes
from liaison.ledger.entries import EntryKind, parse_entry
from liaison.messages import BatchHeader, NodeStatus, SearchInput
from liaison.query import Comparator, Operation, Predicate, Query
from liaison.wire import batch_header_to_proto, batch_values_to_proto
from proto.liaison.v1 import gateway_pb2 as pb_gateway
from proto.liaison.v1 import gateway_pb2_grpc as pb_gateway_grpc
from tests.conftest import Federation
from tests.support import investigator_token

TEMPLATE = SearchInput(Query("media", Operation.MATCH), "csam-investigation", "GEN-BATCH-1")
IN_SHA256 = Predicate("sha256", Comparator.IN, ())


def logged_requests(federation: Federation) -> dict[str, int]:
    """Query id -> number of values asked, for every request in the gateway's ledger."""
    found = {}
    for _, _, raw in federation.gateway.core.ledger.store.rows():
        entry = parse_entry(raw)
        if entry.kind is EntryKind.REQUEST:
            (predicate,) = entry.fields["predicates"]
            found[entry.query_id] = len(predicate["values_hmac"])
    return found


def test_a_batch_is_chunked_by_the_gateway_and_every_chunk_is_logged(
    federation: Federation,
) -> None:
    token = investigator_token(federation.root)
    held = probes().shared_sha256
    values = [f"{i:064x}" for i in range(2_400)] + [held]
    before = federation.gateway.core.ledger.size

    chunks = list(
        client.search_batch(
            federation.gateway.address,
            token,
            TEMPLATE,
            Predicate("sha256", Comparator.IN, tuple(values + values[:50])),  # repeats: once
            chunk_size=1000,
        )
    )

    assert sorted(c.chunk for c in chunks) == [0, 1, 2]
    spans = sorted((c.first_value, c.value_count) for c in chunks)
    assert spans == [(0, 1000), (1000, 1000), (2000, 401)]
    logged = logged_requests(federation)
    assert {logged[c.result.query_id] for c in chunks} == {1000, 401}
    assert federation.gateway.core.ledger.size == before + 2 * 3  # request + outcome each
    last = next(c for c in chunks if c.chunk == 2)
    assert last.result.query.predicates[-1].values[-1] == held
    answered = {r.node_id: r for r in last.result.results}
    assert answered["freedonia"].answer is not None and answered["freedonia"].answer.hit
    assert answered["sylvania"].answer is not None and not answered["sylvania"].answer.hit
    # Each chunk is charged to each node's rate limits as its policy says: a
    # node may deny a chunk, never fail it.
    for c in chunks:
        assert {r.status for r in c.result.results} <= {NodeStatus.ANSWERED, NodeStatus.DENIED}


def raw_batch(
    federation: Federation, parts: list[pb_gateway.SearchBatchRequest], token: str | None = None
) -> list[pb_gateway.SearchBatchResponse]:
    with grpc.insecure_channel(federation.gateway.address) as channel:
        stub = pb_gateway_grpc.GatewayServiceStub(channel)
        metadata = (("authorization", f"Bearer {token}"),) if token else ()
        return list(stub.SearchBatch(iter(parts), metadata=metadata, timeout=30))


def header(value_count: int, chunk_size: int = 0) -> pb_gateway.SearchBatchRequest:
    return batch_header_to_proto(BatchHeader(TEMPLATE, IN_SHA256, chunk_size, value_count))


def values(n: int, start: int = 0) -> Iterator[pb_gateway.SearchBatchRequest]:
    for i in range(start, start + n, 1000):
        yield batch_values_to_proto([f"{j:064x}" for j in range(i, min(start + n, i + 1000))])


@pytest.mark.parametrize(
    ("parts", "message"),
    [
        ([], "a batch starts with its header"),
        (list(values(5)), "a batch starts with its header"),
        ([header(MAX_BATCH_VALUES + 1)], "a batch takes 1 to 100,000 values"),
        ([header(0)], "a batch takes 1 to 100,000 values"),
        ([header(5, chunk_size=1001), *values(5)], "a chunk holds 1 to 1000 values"),
        ([header(5), header(5), *values(5)], "a batch has one header"),
        ([header(5), *values(6)], "more values than its header announced"),
    ],
)
def test_a_malformed_batch_is_refused_and_asks_nothing(
    federation: Federation, parts: list[pb_gateway.SearchBatchRequest], message: str
) -> None:
    token = investigator_token(federation.root)
    before = federation.gateway.core.ledger.size
    with pytest.raises(grpc.RpcError) as refused:
        raw_batch(federation, parts, token)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert message in (refused.value.details() or "")
    assert federation.gateway.core.ledger.size == before


def test_a_batch_cut_short_keeps_the_chunks_already_asked(federation: Federation) -> None:
    token = investigator_token(federation.root)
    got: list[pb_gateway.SearchBatchResponse] = []
    with grpc.insecure_channel(federation.gateway.address) as channel:
        stub = pb_gateway_grpc.GatewayServiceStub(channel)
        calls = stub.SearchBatch(
            iter([header(3000), *values(1500)]),
            metadata=(("authorization", f"Bearer {token}"),),
            timeout=30,
        )
        with pytest.raises(grpc.RpcError) as refused:
            got.extend(calls)
    # The chunk asked before the stream broke off was answered, and sent.
    assert [(c.chunk, c.value_count) for c in got] == [(0, 1000)]
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "ended after 1,500 of the 3,000 values" in (refused.value.details() or "")
    assert sorted(logged_requests(federation).values()) == [1000]


def test_a_batch_without_a_valid_token_is_unauthenticated(federation: Federation) -> None:
    before = federation.gateway.core.ledger.size
    for token in (None, "not-a-jwt"):
        with pytest.raises(grpc.RpcError) as refused:
            raw_batch(federation, [header(5), *values(5)], token)
        assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert federation.gateway.core.ledger.size == before


def test_a_value_that_is_no_hash_refuses_its_chunk(federation: Federation) -> None:
    token = investigator_token(federation.root)
    bad = batch_values_to_proto(["' OR 1=1 --"] * 3)
    with pytest.raises(grpc.RpcError) as refused:
        raw_batch(federation, [header(3), bad], token)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert logged_requests(federation) == {}
