"""The streamed search: each agency's result as it arrives, each on record before it is sent.

Real nodes and a real gateway on loopback; the slow agency sits behind a TCP
proxy that is stopped (SIGSTOP), as a frozen host would be: connections stay
open and nothing comes back.
"""

from __future__ import annotations

import json
import time
from collections.abc import Generator, Iterator
from contextlib import contextmanager
from pathlib import Path

import grpc
import pytest

from liaison import client
from liaison.demo.data import probes
from liaison.ledger.entries import Entry, EntryKind, parse_entry
from liaison.ledger.reconcile import NodeLedger, reconcile
from liaison.ledger.verify import verify_ledger
from liaison.messages import (
    NodeResult,
    NodeStatus,
    SearchInput,
    SearchStarted,
    SearchSummary,
)
from liaison.query import Comparator, Operation, Predicate, Query
from proto.liaison.v1 import gateway_pb2 as pb_gateway
from proto.liaison.v1 import gateway_pb2_grpc as pb_gateway_grpc
from tests.conftest import Federation
from tests.support import RunningGateway, investigator_token, liaison, own_gateway, tcp_proxy
from tests.test_cli_outcomes import SCHEMA_PATH, validate

SLOW = "freedonia"
# Long enough that a busy two-core machine answers the fast agencies well within half of it.
DEADLINE_MS = 2500


def search(deadline_ms: int = DEADLINE_MS, purpose: str = "csam-investigation") -> SearchInput:
    query = Query(
        "media",
        Operation.MATCH,
        (Predicate("sha256", Comparator.EQ, (probes().shared_sha256,)),),
    )
    return SearchInput(query, purpose, "GEN-STREAM-1", (), deadline_ms)


def outcomes_of(gateway: RunningGateway, query_id: str) -> list[tuple[int, Entry]]:
    """The gateway ledger's outcome entries for ``query_id``, as committed now."""
    found = []
    for index, _, raw in gateway.core.ledger.store.rows():
        entry = parse_entry(raw)
        if entry.kind is EntryKind.OUTCOME and entry.query_id == query_id:
            found.append((index, entry))
    return found


@contextmanager
def one_slow_agency(federation: Federation) -> Iterator[RunningGateway]:
    """A gateway over the demo nodes, with ``SLOW`` behind a stopped proxy."""
    port = int(federation.nodes[SLOW].address.rsplit(":", 1)[1])
    with tcp_proxy(port) as proxy:
        nodes = {n: node.address for n, node in federation.nodes.items()}
        nodes[SLOW] = f"127.0.0.1:{proxy.port}"
        with own_gateway(federation.root, nodes) as gateway:
            proxy.stop()
            yield gateway


def test_results_arrive_as_they_come_each_already_in_the_ledger(federation: Federation) -> None:
    token = investigator_token(federation.root)
    with one_slow_agency(federation) as gateway:
        started = time.monotonic()
        events: list[tuple[float, object]] = []
        on_record_when_seen: dict[str, list[str]] = {}
        query_id = ""
        for event in client.search_stream(gateway.address, token, search()):
            events.append((time.monotonic() - started, event))
            if isinstance(event, SearchStarted):
                query_id = event.query_id
            if isinstance(event, NodeResult) and event.status is not NodeStatus.TIMED_OUT:
                # Read the ledger the moment the result is here: it must hold it already.
                on_record_when_seen[event.node_id] = [
                    str(r["node_id"])
                    for _, e in outcomes_of(gateway, query_id)
                    for r in e.fields["results"]
                ]
        final = outcomes_of(gateway, query_id)

    kinds = [type(e).__name__ for _, e in events]
    assert kinds == ["SearchStarted", "NodeResult", "NodeResult", "NodeResult", "SearchSummary"]
    first = events[0][1]
    assert isinstance(first, SearchStarted)
    assert set(first.asked) == {"freedonia", "ruritania", "sylvania"}
    assert first.signed_request is not None
    results = {e.node_id: (at, e) for at, e in events if isinstance(e, NodeResult)}
    # The fast agencies are shown long before the slow one's deadline runs out.
    for node in ("ruritania", "sylvania"):
        at, result = results[node]
        assert result.status is NodeStatus.ANSWERED
        assert at < DEADLINE_MS / 1000 / 2, f"{node} shown only after {at:.2f} s"
        assert node in on_record_when_seen[node], f"{node} was shown before it was on record"
    slow_at, slow = results[SLOW]
    assert slow.status is NodeStatus.TIMED_OUT
    assert slow_at >= DEADLINE_MS / 1000 * 0.9
    summary = events[-1][1]
    assert isinstance(summary, SearchSummary)
    assert summary.query_id == query_id
    assert summary.not_answered == (SLOW,)
    assert summary.counts == {NodeStatus.ANSWERED: 2, NodeStatus.TIMED_OUT: 1}
    # The last outcome entry holds every node's result, as for a search not streamed.
    last = final[-1][1]
    assert {r["node_id"]: r["status"] for r in last.fields["results"]} == {
        "ruritania": "answered",
        "sylvania": "answered",
        SLOW: "timed out",
    }
    assert len(final) >= 2  # the answers were written before the last entry


def test_a_streamed_search_leaves_a_ledger_that_verifies(federation: Federation) -> None:
    token = investigator_token(federation.root)
    with one_slow_agency(federation) as gateway:
        events = list(client.search_stream(gateway.address, token, search(deadline_ms=600)))
        store = gateway.core.ledger.store
        key = gateway.core.signing_key.verifying_key
        report, _ = verify_ledger(store, key, allow_unsigned_tail=True)
    assert isinstance(events[-1], SearchSummary)
    assert report.ok, report.problems


def test_a_refused_stream_is_refused_before_anything_is_sent(federation: Federation) -> None:
    token = investigator_token(federation.root)
    bad = search(purpose="curiosity")
    with grpc.insecure_channel(federation.gateway.address) as channel:
        stub = pb_gateway_grpc.GatewayServiceStub(channel)
        with pytest.raises(grpc.RpcError) as refused:
            list(
                stub.SearchStream(
                    pb_gateway.SearchStreamRequest(
                        search=pb_gateway.SearchRequest(purpose=bad.purpose)
                    ),
                    metadata=(("authorization", f"Bearer {token}"),),
                    timeout=10,
                )
            )
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        with pytest.raises(grpc.RpcError) as unauthenticated:
            list(stub.SearchStream(pb_gateway.SearchStreamRequest(), timeout=10))
        assert unauthenticated.value.code() == grpc.StatusCode.UNAUTHENTICATED


def _cli(federation: Federation, gateway: str, *extra: str) -> tuple[int, str, str]:
    token_file = federation.root / "investigator.jwt"
    token_file.write_text(investigator_token(federation.root))
    run = liaison(
        "query",
        "media",
        "--match",
        "--where",
        f"sha256={probes().shared_sha256}",
        "--purpose",
        "csam-investigation",
        "--case-ref",
        "GEN-STREAM-2",
        "--deadline-ms",
        str(DEADLINE_MS),
        "--gateway",
        gateway,
        "--token-file",
        token_file,
        "--node-keys",
        federation.root,
        "--stream",
        *extra,
        cwd=Path(federation.root),
    )
    return run.returncode, run.stdout, run.stderr


def test_the_cli_prints_each_agency_then_who_did_not_answer(federation: Federation) -> None:
    with one_slow_agency(federation) as gateway:
        code, out, err = _cli(federation, gateway.address)
    lines = out.splitlines()
    assert lines[0].startswith("query ")
    shown = [line.split()[0] for line in lines if line.startswith("  ") and "ms" in line]
    assert set(shown) == {"freedonia", "ruritania", "sylvania"}
    assert shown[-1] == SLOW  # the slow one last
    assert "2 of 3 agencies asked answered; no answer from freedonia (timed out)." in out
    assert code == 3, (out, err)  # some agencies answered, as without --stream
    assert "verify: ruritania: verified" in err


def test_the_cli_streams_json_lines_then_the_whole_search(federation: Federation) -> None:
    code, out, err = _cli(federation, federation.gateway.address, "--json")
    lines = [json.loads(line) for line in out.splitlines()]
    assert [line["kind"] for line in lines] == ["result", "result", "result", "search"]
    schema = json.loads(SCHEMA_PATH.read_text())
    for line in lines:
        validate(line, schema, schema)
    streamed = {line["result"]["node_id"]: line["result"] for line in lines[:3]}
    assert {n: r["verification"]["verdict"] for n, r in streamed.items()} == {
        "freedonia": "verified",
        "ruritania": "verified",
        "sylvania": "verified",
    }
    assert streamed["ruritania"]["answer"]["hit"] is True
    whole = lines[-1]
    assert whole["agencies"] == {"asked": 3, "answered": 3, "not_answered": 0, "not_asked": 0}
    assert {r["node_id"] for r in whole["results"]} == set(streamed)
    assert code == 0, err


def test_stream_refuses_batches_and_dry_runs() -> None:
    run = liaison(
        "query",
        "media",
        "--match",
        "--where",
        "sha256=" + "ab" * 32,
        "--purpose",
        "csam-investigation",
        "--case-ref",
        "X-1",
        "--dry-run",
        "--stream",
    )
    assert run.returncode == 2
    assert "--stream" in run.stderr


def test_a_stream_the_investigator_leaves_reconciles(federation: Federation) -> None:
    """Only the results written before the investigator left are on record, and they add up."""
    token = investigator_token(federation.root)
    with one_slow_agency(federation) as gateway:
        stream = client.search_stream(gateway.address, token, search(deadline_ms=3000))
        shown = []
        for event in stream:
            if isinstance(event, NodeResult):
                shown.append(event.node_id)
                break
        # The investigator goes away before the slow agency answers.
        assert isinstance(stream, Generator)
        stream.close()
        time.sleep(0.3)
        nodes = [
            NodeLedger(n, node.core.receipts.store, node.core.signing_key.verifying_key)
            for n, node in federation.nodes.items()
        ]
        report = reconcile(
            gateway.core.ledger.store,
            gateway.core.signing_key.verifying_key,
            nodes,
            allow_unsigned_tail=True,
        )
    assert shown and shown[0] != SLOW
    assert report.ok, [str(d) for d in report.differences if d.problem]
    recorded_nothing = [d for d in report.differences if "recorded nothing" in d.message]
    assert not [d for d in recorded_nothing if d.node_id in shown], recorded_nothing
