"""A restarted node answers through the gateway within 2 s of being back.

With gRPC's default reconnect backoff (1 s growing by 1.6 up to 120 s) a
gateway that kept asking a node while it was down waited up to half a minute
after the node came back before it tried again. The node here is killed
(SIGKILL: no goodbye on its connections), stays down while the gateway keeps
searching, and is started again on the same port.
"""

from __future__ import annotations

import datetime as dt
import signal
import time
from pathlib import Path

from liaison import client
from liaison.messages import NodeStatus
from tests.operations_support import (
    hash_match,
    log_events,
    make_gateway,
    make_node,
    set_keys,
    wait_for,
)
from tests.support import Process, investigator_token, spawn, terminate

NODE = "phoenixland"
# Long enough for the default backoff to have grown past several seconds.
DOWN_S = 10
# What the issue asks: answered within 2 s of the node saying it serves.
BACK_WITHIN_S = 2.0


def serving_time(node: Process) -> float:
    """When ``node`` said "node serving", from the ``ts`` of its JSON log line (UTC, ms)."""

    def logged() -> str | None:
        found = [e["ts"] for e in log_events(node) if e["msg"] == "node serving"]
        return str(found[0]) if found else None

    ts = wait_for(logged, 10, f"{node.name} logging node serving")
    stamp = dt.datetime.strptime(ts, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=dt.UTC)
    return stamp.timestamp()


def test_a_restarted_node_is_answered_within_two_seconds(tmp_path: Path) -> None:
    # prepare: a node, and a gateway process that has talked to it
    root = tmp_path / "federation"
    config = make_node(root, NODE)
    node = spawn("node", NODE, config, tmp_path)
    set_keys(config, "node", listen=node.address)  # the restart takes the same port
    gateway = spawn("gateway", "gw", make_gateway(root, {NODE: node.address}), tmp_path)
    token = investigator_token(root)
    search = hash_match(0, deadline_ms=1000)

    def status() -> NodeStatus:
        (result,) = client.search(gateway.address, token, search).results
        return result.status

    try:
        assert status() is NodeStatus.ANSWERED

        # execute: the node dies and stays down while investigators keep asking
        node.popen.send_signal(signal.SIGKILL)
        node.popen.wait(10)
        down_until = time.monotonic() + DOWN_S
        while time.monotonic() < down_until:
            assert status() is NodeStatus.UNREACHABLE
            time.sleep(0.1)
        node = spawn("node", f"{NODE}-again", config, tmp_path)
        # Searches back to back (each fails fast while the node is unreachable), so the
        # polling adds at most one search's time, and the moment of the first answer
        # is when that search returned.
        answered_at = wait_for(
            lambda: time.time() if status() is NodeStatus.ANSWERED else None,
            30,
            "the gateway answering from the restarted node",
            step_s=0,
        )

        # assert: measured from the node's own "node serving" line
        serving_at = serving_time(node)
        answered_after_s = answered_at - serving_at
        assert 0 < answered_after_s < BACK_WITHIN_S, answered_after_s
    finally:
        terminate(gateway)
        terminate(node)
