"""Health that means something, on real processes: draining on SIGTERM, a database going away.

On SIGTERM a node and a gateway say NOT_SERVING at once, keep answering for
their drain period (a search goes through both while they drain), then exit 0.
A node whose SQLite database file disappears says NOT_SERVING within one
probe interval, and SERVING again once the file is back; so does a node whose
PostgreSQL server stops answering (a stopped proxy in front of it: connections
stay open, no reply comes).
"""

from __future__ import annotations

import signal
import time
from pathlib import Path

import pytest
import sqlalchemy as sa

from liaison import client
from liaison.messages import NodeStatus
from node.health import DEFAULT_INTERVAL_S, DEFAULT_RETRY_S, DEFAULT_TIMEOUT_S
from tests.operations_support import (
    hash_match,
    health_status,
    log_events,
    make_gateway,
    make_node,
    tcp_proxy,
    wait_for,
)
from tests.support import STOP_TIMEOUT_S, Process, investigator_token, spawn, terminate

DRAIN_S = 2
NODE = "drainland"
GATEWAY_SERVICE = "liaison.v1.GatewayService"
NODE_SERVICE = "liaison.v1.NodeService"


def test_sigterm_drains_then_stops(tmp_path: Path) -> None:
    # prepare: a node and a gateway with a short drain
    root = tmp_path / "federation"
    node = spawn("node", NODE, make_node(root, NODE, drain_s=DRAIN_S), tmp_path)
    try:
        gateway = spawn(
            "gateway", "gw", make_gateway(root, {NODE: node.address}, drain_s=DRAIN_S), tmp_path
        )
    except BaseException:
        terminate(node)
        raise
    token = investigator_token(root)
    try:
        for address, service in ((node.address, NODE_SERVICE), (gateway.address, GATEWAY_SERVICE)):
            assert health_status(address) == "SERVING"
            assert health_status(address, service) == "SERVING"

        # execute: SIGTERM both
        signalled = time.monotonic()
        node.popen.send_signal(signal.SIGTERM)
        gateway.popen.send_signal(signal.SIGTERM)

        # assert: NOT_SERVING while both still run, and still answering
        for process, service in ((node, NODE_SERVICE), (gateway, GATEWAY_SERVICE)):

            def draining(p: Process = process, s: str = service) -> bool:
                return health_status(p.address, s) == "NOT_SERVING"

            wait_for(draining, DRAIN_S, f"{process.name} saying NOT_SERVING after SIGTERM")
            assert health_status(process.address) == "NOT_SERVING"
            assert process.popen.poll() is None, "stopped without draining"
        result = client.search(gateway.address, token, hash_match(0))
        assert [(r.node_id, r.status) for r in result.results] == [(NODE, NodeStatus.ANSWERED)]
        assert node.popen.poll() is None and gateway.popen.poll() is None

        # assert: then both stop cleanly, not before the drain period ran out
        for process in (node, gateway):
            assert process.popen.wait(STOP_TIMEOUT_S) == 0
        assert time.monotonic() - signalled >= DRAIN_S
    finally:
        terminate(gateway)
        terminate(node)
    for process in (node, gateway):
        stopping = [e for e in log_events(process) if e["msg"].endswith(" stopping")]
        assert [e["drain_s"] for e in stopping] == [DRAIN_S]


def test_a_second_signal_cuts_the_drain_short(tmp_path: Path) -> None:
    root = tmp_path / "federation"
    node = spawn("node", NODE, make_node(root, NODE, drain_s=120), tmp_path)
    try:
        node.popen.send_signal(signal.SIGTERM)
        wait_for(
            lambda: health_status(node.address) == "NOT_SERVING", 5, "NOT_SERVING after SIGTERM"
        )
        node.popen.send_signal(signal.SIGINT)
        assert node.popen.wait(STOP_TIMEOUT_S) == 0
    finally:
        terminate(node)


def test_a_node_whose_database_disappears_is_not_serving_until_it_is_back(
    tmp_path: Path,
) -> None:
    # prepare
    root = tmp_path / "federation"
    node = spawn("node", NODE, make_node(root, NODE), tmp_path)
    database = root / f"{NODE}.sqlite3"
    moved = database.with_name("elsewhere.sqlite3")
    # One probe interval, plus a probe that may have to time out, plus slack.
    within_s = DEFAULT_INTERVAL_S + DEFAULT_TIMEOUT_S + 5
    # Once failing, it looks again every DEFAULT_RETRY_S.
    back_within_s = DEFAULT_RETRY_S + DEFAULT_TIMEOUT_S + 5
    try:
        assert health_status(node.address, NODE_SERVICE) == "SERVING"

        # execute / assert: gone, then back
        database.rename(moved)
        wait_for(
            lambda: health_status(node.address, NODE_SERVICE) == "NOT_SERVING",
            within_s,
            "NOT_SERVING once the database file is gone",
            step_s=0.2,
        )
        assert health_status(node.address) == "NOT_SERVING"
        moved.rename(database)
        wait_for(
            lambda: health_status(node.address, NODE_SERVICE) == "SERVING",
            back_within_s,
            "SERVING once the database file is back",
            step_s=0.2,
        )
    finally:
        if moved.exists():
            moved.rename(database)
        assert terminate(node) == 0
    events = log_events(node)
    failed = [e for e in events if e["msg"] == "agency database does not answer"]
    assert len(failed) == 1
    assert "unable to open database file" in failed[0]["reason"]
    health = [e["msg"] for e in events if e["logger"] == "liaison.health"]
    assert health == ["health: NOT_SERVING", "health: SERVING again"]


@pytest.mark.postgresql
def test_a_node_whose_postgresql_hangs_is_not_serving_until_it_answers(
    tmp_path: Path, postgres_url: str
) -> None:
    # prepare: the node reaches its PostgreSQL database through a proxy
    url = sa.make_url(postgres_url)
    within_s = DEFAULT_INTERVAL_S + DEFAULT_TIMEOUT_S + 5
    # Once failing, it looks again every DEFAULT_RETRY_S.
    back_within_s = DEFAULT_RETRY_S + DEFAULT_TIMEOUT_S + 5
    with tcp_proxy(url.port or 5432) as proxy:
        served_from = url.set(port=proxy.port).render_as_string(hide_password=False)
        config = make_node(
            tmp_path / "federation", NODE, database_url=postgres_url, serve_from=served_from
        )
        node = spawn("node", NODE, config, tmp_path)
        try:
            assert health_status(node.address, NODE_SERVICE) == "SERVING"

            # execute / assert: the database hangs, then answers again
            proxy.stop()
            wait_for(
                lambda: health_status(node.address, NODE_SERVICE) == "NOT_SERVING",
                within_s,
                "NOT_SERVING while the database hangs",
                step_s=0.2,
            )
            proxy.resume()
            wait_for(
                lambda: health_status(node.address, NODE_SERVICE) == "SERVING",
                back_within_s,
                "SERVING once the database answers",
                step_s=0.2,
            )
        finally:
            proxy.resume()
            assert terminate(node) == 0
    (failed,) = [e for e in log_events(node) if e["msg"] == "agency database does not answer"]
    assert failed["reason"] == f"no answer within {DEFAULT_TIMEOUT_S:g} s"
