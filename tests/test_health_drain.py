"""Health that means something, on real processes: draining on SIGTERM, a database going away.

On SIGTERM a node and a gateway say NOT_SERVING at once, keep answering for
their drain period (a search goes through both while they drain), then exit 0;
a second signal ends the drain at once.
A node whose SQLite database file disappears says NOT_SERVING within one
probe interval, and SERVING again once the file is back; so does a node whose
PostgreSQL server stops answering (a stopped proxy in front of it: connections
stay open, no reply comes).
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
import time
from pathlib import Path

import pytest
import sqlalchemy as sa

from liaison import client
from liaison.catalog import CATALOG_V1
from liaison.config import load_node_config
from liaison.messages import NodeStatus
from node.answering import close_core
from node.health import DEFAULT_INTERVAL_S, DEFAULT_RETRY_S, DEFAULT_TIMEOUT_S, DatabaseProbe
from node.server import build_node
from tests.operations_support import (
    hash_match,
    health_status,
    log_events,
    make_gateway,
    make_node,
    wait_for,
)
from tests.support import STOP_TIMEOUT_S, Process, investigator_token, spawn, tcp_proxy, terminate

# Long enough that nothing checked while draining can outlast it on a loaded machine;
# the second signal then ends it.
LONG_DRAIN_S = 120
# For "not before the drain ran out", where nothing else is timed.
SHORT_DRAIN_S = 2
NODE = "drainland"
GATEWAY_SERVICE = "liaison.v1.GatewayService"
NODE_SERVICE = "liaison.v1.NodeService"


def node_and_gateway(root: Path, tmp_path: Path, drain_s: int) -> tuple[Process, Process]:
    node = spawn("node", NODE, make_node(root, NODE, drain_s=drain_s), tmp_path)
    try:
        gateway = spawn(
            "gateway", "gw", make_gateway(root, {NODE: node.address}, drain_s=drain_s), tmp_path
        )
    except BaseException:
        terminate(node)
        raise
    return node, gateway


def test_sigterm_drains_and_a_second_signal_stops(tmp_path: Path) -> None:
    # prepare: a node and a gateway with a long drain
    root = tmp_path / "federation"
    node, gateway = node_and_gateway(root, tmp_path, LONG_DRAIN_S)
    token = investigator_token(root)
    try:
        for address, service in ((node.address, NODE_SERVICE), (gateway.address, GATEWAY_SERVICE)):
            assert health_status(address) == "SERVING"
            assert health_status(address, service) == "SERVING"

        # execute: SIGTERM both
        node.popen.send_signal(signal.SIGTERM)
        gateway.popen.send_signal(signal.SIGTERM)

        # assert: NOT_SERVING while both still run, and still answering
        for process, service in ((node, NODE_SERVICE), (gateway, GATEWAY_SERVICE)):

            def draining(p: Process = process, s: str = service) -> bool:
                return health_status(p.address, s) == "NOT_SERVING"

            wait_for(draining, 10, f"{process.name} saying NOT_SERVING after SIGTERM")
            assert health_status(process.address) == "NOT_SERVING"
            assert process.popen.poll() is None, "stopped without draining"
        result = client.search(gateway.address, token, hash_match(0))
        assert [(r.node_id, r.status) for r in result.results] == [(NODE, NodeStatus.ANSWERED)]
        assert node.popen.poll() is None and gateway.popen.poll() is None

        # execute / assert: a second signal ends the drain; both stop cleanly, long
        # before the drain would have run out
        for process in (gateway, node):
            process.popen.send_signal(signal.SIGINT)
        for process in (gateway, node):
            assert process.popen.wait(STOP_TIMEOUT_S) == 0
    finally:
        terminate(gateway)
        terminate(node)
    for process in (node, gateway):
        stopping = [e for e in log_events(process) if e["msg"].endswith(" stopping")]
        assert [e["drain_s"] for e in stopping] == [LONG_DRAIN_S]


def test_without_a_second_signal_nothing_stops_before_the_drain_ran_out(tmp_path: Path) -> None:
    root = tmp_path / "federation"
    node, gateway = node_and_gateway(root, tmp_path, SHORT_DRAIN_S)
    try:
        signalled = time.monotonic()
        for process in (node, gateway):
            process.popen.send_signal(signal.SIGTERM)
        for process in (node, gateway):
            assert process.popen.wait(SHORT_DRAIN_S + STOP_TIMEOUT_S) == 0
        assert time.monotonic() - signalled >= SHORT_DRAIN_S
    finally:
        terminate(gateway)
        terminate(node)


# tgkill(2): send a signal to one thread of another process.
_TGKILL = {"x86_64": 234, "aarch64": 131}


def signal_a_thread(pid: int, sig: int) -> None:
    """Send ``sig`` to a thread of ``pid`` other than its main thread (Linux)."""
    number = _TGKILL.get(os.uname().machine)
    if not sys.platform.startswith("linux") or number is None:
        pytest.skip("needs Linux tgkill to pick the thread a signal goes to")
    others = sorted(int(t) for t in os.listdir(f"/proc/{pid}/task") if int(t) != pid)
    assert others, "the node runs threads"
    libc = ctypes.CDLL(None, use_errno=True)
    assert libc.syscall(number, pid, others[-1], sig) == 0, ctypes.get_errno()


@pytest.mark.parametrize("role", ["node", "gateway"])
def test_a_signal_to_another_thread_stops_the_process(tmp_path: Path, role: str) -> None:
    """The kernel may deliver SIGTERM to any thread; Python handles it on the main one."""
    root = tmp_path / "federation"
    config = make_node(root, NODE, drain_s=0)
    if role == "gateway":
        config = make_gateway(root, {NODE: "127.0.0.1:1"}, drain_s=0)
    process = spawn(role, role, config, tmp_path)
    try:
        signal_a_thread(process.popen.pid, signal.SIGTERM)
        assert process.popen.wait(STOP_TIMEOUT_S) == 0
    finally:
        terminate(process)


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


@pytest.mark.postgresql
def test_the_probe_keeps_the_search_path_of_the_url(tmp_path: Path, postgres_url: str) -> None:
    """Unqualified table names found through ``?options=-csearch_path%3D...`` in the URL.

    The probe adds its statement timeout to the connection's options; it must
    add to the URL's own, not replace them, or every probe fails.
    """
    # prepare: the register in a schema of its own, nothing of that name in public
    admin = sa.create_engine(postgres_url)
    with admin.begin() as conn:
        conn.execute(sa.text("CREATE SCHEMA evidencia"))
    admin.dispose()
    url = f"{postgres_url}?options=-csearch_path%3Devidencia"
    config = make_node(tmp_path / "federation", NODE, database_url=url)
    check = sa.create_engine(postgres_url)
    with check.connect() as conn:
        where = conn.execute(
            sa.text("SELECT table_schema FROM information_schema.tables WHERE table_name = :t"),
            {"t": "ops_register"},
        ).scalars()
        assert list(where) == ["evidencia"]
    check.dispose()
    # The node itself binds the unqualified name through the URL's search_path.
    core = build_node(load_node_config(config, CATALOG_V1))
    changes: list[bool] = []
    probe = DatabaseProbe(core.engine.url, [m.table for m in core.schema.values()], changes.append)
    try:
        assert core.schema["media"].table.schema is None

        # execute
        failure = probe.check()
    finally:
        probe.close()
        close_core(core)

    # assert
    assert failure == ""
