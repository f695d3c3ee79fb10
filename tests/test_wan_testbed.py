"""A small WAN test bed: nodes behind emulated links, asked through a real gateway process."""

from __future__ import annotations

import io
import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from liaison.demo.processes import ProcessFailed, running_in
from liaison.messages import NodeStatus, SearchResult
from liaison.wan.testbed import WanOptions, WanTestbed, build_testbed, running_testbed

OPTIONS = WanOptions(
    nodes=6,
    seed=5,
    rtt_scale=0.2,
    max_loss=0.0,
    nodes_per_process=3,
    media=120,
    accounts=40,
    deadline_ms=1500,
)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.fixture(scope="module")
def bed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WanTestbed]:
    root = tmp_path_factory.mktemp("wan") / "bed"
    with running_testbed(root, OPTIONS, progress=io.StringIO()) as running:
        yield running
    # Everything the test bed started is gone with it.
    assert running_in(root / "run") == []


def _statuses(result: SearchResult) -> dict[str, NodeStatus]:
    return {r.node_id: r.status for r in result.results}


def _answered_by_all(bed: WanTestbed, within_s: float) -> SearchResult:
    deadline = time.monotonic() + within_s
    while True:
        result = bed.search()
        if set(_statuses(result).values()) == {NodeStatus.ANSWERED}:
            return result
        if time.monotonic() > deadline:
            return result
        time.sleep(0.3)


def test_every_agency_answers_across_its_link(bed: WanTestbed) -> None:
    result = bed.search()

    assert _statuses(result) == {n: NodeStatus.ANSWERED for n in bed.node_ids}
    by_node = {r.node_id: r for r in result.results}
    for site in bed.sites:
        # The gateway's wait for each node includes that node's emulated round trip.
        assert by_node[site.node_id].latency_ms >= site.rtt_ms, (site, by_node[site.node_id])
    assert len({s.node_id for s in bed.sites}) == OPTIONS.nodes
    assert len(bed.pids()) == 1 + 2 + 1  # gateway, two node hosts, the proxy


def test_a_link_down_makes_its_node_unreachable_and_the_rest_answer(bed: WanTestbed) -> None:
    down = bed.node_ids[0]
    bed.link_down(down)
    try:
        result = bed.search()
    finally:
        bed.restore(down)

    statuses = _statuses(result)
    assert statuses.pop(down) is NodeStatus.UNREACHABLE
    assert set(statuses.values()) == {NodeStatus.ANSWERED}
    # Once the link is back, the gateway reaches the node again (after its reconnect backoff).
    after = _answered_by_all(bed, within_s=15)
    assert _statuses(after) == {n: NodeStatus.ANSWERED for n in bed.node_ids}


def test_a_blackholed_node_times_out_and_a_slow_one_answers_late(bed: WanTestbed) -> None:
    hole, slow = bed.node_ids[1], bed.node_ids[2]
    bed.blackhole(hole)
    bed.slow(slow, 400)
    try:
        result = bed.search()
    finally:
        bed.restore(hole)
        bed.restore(slow)

    by_node = {r.node_id: r for r in result.results}
    assert by_node[hole].status is NodeStatus.TIMED_OUT
    assert by_node[slow].status is NodeStatus.ANSWERED
    assert by_node[slow].latency_ms >= 400
    assert {r.status for n, r in by_node.items() if n not in (hole, slow)} == {NodeStatus.ANSWERED}


def test_a_lossy_link_stalls(bed: WanTestbed) -> None:
    node = bed.node_ids[3]
    profile = bed.lossy(node, 0.2)
    assert bed.proxy is not None
    before = bed.proxy.stats(node).stalls
    try:
        latencies = []
        for _ in range(5):
            r = {x.node_id: x for x in bed.search().results}[node]
            assert r.status in (NodeStatus.ANSWERED, NodeStatus.TIMED_OUT)
            latencies.append(r.latency_ms if r.status is NodeStatus.ANSWERED else 1e9)
    finally:
        bed.restore(node)

    assert bed.proxy.stats(node).stalls > before
    # A stall holds the answer back a whole retransmission timeout.
    assert max(latencies) >= profile.to_client.stall_ms


def test_a_restarted_node_keeps_its_state_and_answers_again(bed: WanTestbed) -> None:
    node = bed.node_ids[-1]
    receipts = bed.root / "nodes" / node / "state" / "receipts.sqlite3"
    before = bed.pids()
    restarted = bed.restart_node(node)

    assert node in restarted
    assert set(restarted) == set(bed.colocated(node))
    assert bed.pids() != before  # a new process
    assert receipts.exists()
    result = _answered_by_all(bed, within_s=15)
    assert _statuses(result) == {n: NodeStatus.ANSWERED for n in bed.node_ids}


def test_a_failed_start_leaves_no_process_behind(tmp_path: Path) -> None:
    options = WanOptions(nodes=2, seed=2, rtt_scale=0.1, nodes_per_process=1, media=20, accounts=10)
    root = tmp_path / "bed"
    sites = build_testbed(root, options, progress=io.StringIO())
    # The second agency's policy no longer loads: its node host exits while starting.
    (root / "nodes" / sites[1].node_id / "policy.toml").write_text("version = 1\n[[rule]]\n")
    bed = WanTestbed(root, options, sites, io.StringIO())

    with pytest.raises(ProcessFailed, match="node host 1 exited while starting"):
        bed.start()

    assert running_in(root / "run") == []
    pids = [int(p.read_text()) for p in (root / "run").glob("*.pid")]
    assert pids
    assert not any(_alive(p) for p in pids)
