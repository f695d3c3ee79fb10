"""Prometheus metrics, scraped over HTTP from a real node and a real gateway process.

The gateway knows two nodes: one serving, one whose port nobody listens on.
Searches asked only of the serving node are answered, denied by default, or
refused by its rate limit; one search asked of both comes back partial; one
with a forged token is refused. Each counter must move by exactly that.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import pytest

from liaison import client
from liaison.catalog import CATALOG_V1
from liaison.config import load_node_config
from liaison.envelope import ANSWER_TYPE, open_envelope
from liaison.errors import ConfigError, LiaisonError
from liaison.messages import AnswerStatus, NodeStatus
from liaison.wire import answer_from_bytes
from tests.operations_support import (
    ROWS,
    free_port,
    hash_count,
    hash_match,
    make_gateway,
    make_node,
    metrics_address,
    scrape,
    value,
)
from tests.support import (
    REPO,
    Process,
    investigator_token,
    liaison,
    make_request,
    sign_request,
    spawn,
    start_local_node,
    terminate,
)

NODE = "metricland"
GHOST = "ghostland"


@pytest.fixture
def processes(tmp_path: Path) -> Iterator[tuple[Process, Process, Path]]:
    root = tmp_path / "federation"
    node_config = make_node(root, NODE, metrics_listen="127.0.0.1:0")
    make_node(root, GHOST)  # its keys only: it never runs
    with ExitStack() as stack:
        node = spawn("node", NODE, node_config, tmp_path)
        stack.callback(terminate, node)
        gateway_config = make_gateway(
            root,
            {NODE: node.address, GHOST: f"127.0.0.1:{free_port()}"},
            metrics_listen="127.0.0.1:0",
        )
        metrics_file = tmp_path / "gateway.metrics"
        gateway = spawn(
            "gateway", "gateway", gateway_config, tmp_path, "--metrics-port-file", str(metrics_file)
        )
        stack.callback(terminate, gateway)
        # Scripts that started it on port 0 find /metrics where the log says.
        assert metrics_file.read_text().strip() == metrics_address(gateway)
        yield node, gateway, root


def test_counters_move_by_what_was_asked(processes: tuple[Process, Process, Path]) -> None:
    # prepare
    node, gateway, root = processes
    node_metrics, gateway_metrics = metrics_address(node), metrics_address(gateway)
    token = investigator_token(root)
    only_node = (NODE,)
    node_before, gateway_before = scrape(node_metrics), scrape(gateway_metrics)

    # execute
    statuses = []
    for search in [
        hash_match(0, nodes=only_node),
        hash_match(1, nodes=only_node),
        hash_count(0, nodes=only_node),  # default deny
        # 2 per hour: the third is refused by the rate limit
        *(hash_match(i, "victim-identification", nodes=only_node) for i in range(3)),
    ]:
        result = client.search(gateway.address, token, search)
        statuses += [r.status for r in result.results if r.node_id == NODE]
    partial = client.search(gateway.address, token, hash_match(2))
    with pytest.raises(LiaisonError, match="token"):
        client.search(gateway.address, token[:-4] + "AAAA", hash_match(0))
    node_after, gateway_after = scrape(node_metrics), scrape(gateway_metrics)

    # assert: what the investigator saw
    assert statuses == [NodeStatus.ANSWERED] * 2 + [NodeStatus.DENIED] + (
        [NodeStatus.ANSWERED] * 2 + [NodeStatus.DENIED]
    )
    assert {r.node_id: r.status for r in partial.results} == {
        NODE: NodeStatus.ANSWERED,
        GHOST: NodeStatus.UNREACHABLE,
    }

    def node_delta(name: str, **labels: str) -> float:
        return value(node_after, name, **labels) - value(node_before, name, **labels)

    def gateway_delta(name: str, **labels: str) -> float:
        return value(gateway_after, name, **labels) - value(gateway_before, name, **labels)

    # assert: the node
    assert node_delta("liaison_node_answers_total", outcome="answered") == 5
    assert node_delta("liaison_node_answers_total", outcome="denied") == 2
    assert node_delta("liaison_node_policy_denials_total", rule="default-deny") == 1
    assert node_delta("liaison_node_policy_denials_total", rule="limited-hits") == 0
    assert node_delta("liaison_node_rate_limit_refusals_total") == 1
    assert node_delta("liaison_node_answer_seconds_count") == 7
    # One durable receipt per answer, each committed on its own (the calls came one by one).
    assert node_delta("liaison_node_receipts_append_seconds_count") == 7
    assert value(node_after, "liaison_node_pdq_index_hashes", dataset="media", field="pdq") == ROWS
    age = value(node_after, "liaison_node_pdq_index_age_seconds", dataset="media", field="pdq")
    assert 0 <= age < 120
    # assert: the gateway
    assert gateway_delta("liaison_gateway_searches_total", outcome="complete") == 6
    assert gateway_delta("liaison_gateway_searches_total", outcome="partial") == 1
    assert gateway_delta("liaison_gateway_searches_total", outcome="authentication-error") == 1
    assert gateway_delta("liaison_gateway_partial_results_total") == 1
    assert gateway_delta("liaison_gateway_node_results_total", node=NODE, status="answered") == 5
    assert gateway_delta("liaison_gateway_node_results_total", node=NODE, status="denied") == 2
    assert (
        gateway_delta("liaison_gateway_node_results_total", node=GHOST, status="unreachable") == 1
    )
    assert gateway_delta("liaison_gateway_node_seconds_count", node=NODE) == 7
    assert gateway_delta("liaison_gateway_node_seconds_count", node=GHOST) == 1
    assert gateway_delta("liaison_gateway_search_seconds_count") == 8
    # The request and the outcome of each of the 7 searches, each durable on its own.
    assert gateway_delta("liaison_gateway_ledger_append_seconds_count") == 14
    # Bounded labels: no query id, investigator or agency anywhere.
    labels = {v for (_, pairs) in gateway_after.keys() | node_after.keys() for _, v in pairs}
    assert not labels & {"genovia", "inv.alice", partial.query_id}


def test_the_core_returns_the_answer_it_signed(tmp_path: Path) -> None:
    """Metrics count the answer the core signed; the servicer does not parse it back."""
    with ExitStack() as stack:
        node = start_local_node(stack, make_node(tmp_path / "federation", NODE))
        request = make_request(hash_match(0).query, audience=(NODE,))
        signed = sign_request(node.gateway_key, request)

        first = node.core.answer(signed)
        retry = node.core.answer(signed)  # from the replay store

    key = node.public_key
    assert answer_from_bytes(open_envelope(first.envelope, ANSWER_TYPE, {key.key_id: key})) == (
        first.answer
    )
    assert first.answer.status is AnswerStatus.ANSWERED
    assert first.answer.query_id == request.query_id
    assert (retry.envelope, retry.answer) == (first.envelope, first.answer)


def test_a_metrics_port_in_use_stops_the_node_with_one_clear_error(tmp_path: Path) -> None:
    root = tmp_path / "federation"
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        listen = f"127.0.0.1:{taken.getsockname()[1]}"
        config = make_node(root, NODE, metrics_listen=listen)
        run = liaison("node", "serve", "--config", config, cwd=tmp_path)
    assert run.returncode == 1
    assert "Traceback" not in run.stderr
    last = run.stderr.strip().splitlines()[-1]
    assert last.startswith(f"error: cannot serve metrics on '{listen}'"), last
    assert "is the port in use?" in last


@pytest.mark.parametrize("listen", ["9464", "127.0.0.1:", "127.0.0.1:99999", ":9464", ""])
def test_a_malformed_metrics_address_is_refused(tmp_path: Path, listen: str) -> None:
    config = make_node(tmp_path / "federation", NODE, metrics_listen=listen)
    with pytest.raises(ConfigError, match=r"\[node\]: `metrics_listen` must be"):
        load_node_config(config, CATALOG_V1)


# A start that fails after the metrics server started (the service port is in use):
# serve() must close what it opened. Run in a process of its own without the stderr
# capture, which would take over the test's fd 2.
LEFT_BEHIND = """
import json, socket, sys, threading
from pathlib import Path
from liaison.errors import LiaisonError
import {module} as server

server.capture_native_stderr = lambda: None
metrics_file = Path(sys.argv[2])
try:
    server.serve(Path(sys.argv[1]), None, metrics_file)
except LiaisonError as exc:
    error = str(exc)
host, _, port = metrics_file.read_text().strip().rpartition(":")
with socket.socket() as probe:
    probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        probe.bind((host, int(port)))
        metrics_port_free = True
    except OSError:
        metrics_port_free = False
# gRPC's asyncio poller is one per process, for any later aio channel or server.
threads = [
    t.name
    for t in threading.enumerate()
    if t is not threading.main_thread() and "_poll_wrapper" not in t.name
]
print(json.dumps({{"error": error, "metrics_port_free": metrics_port_free, "threads": threads}}))
"""


@pytest.mark.parametrize("role", ["node", "gateway"])
def test_a_service_port_in_use_closes_what_started(tmp_path: Path, role: str) -> None:
    # prepare: the metrics port is free, the service port is taken
    root = tmp_path / "federation"
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        listen = f"127.0.0.1:{taken.getsockname()[1]}"
        config = make_node(root, NODE, metrics_listen="127.0.0.1:0", listen=listen)
        if role == "gateway":
            config = make_gateway(
                root, {NODE: "127.0.0.1:1"}, metrics_listen="127.0.0.1:0", listen=listen
            )
        module = "node.server" if role == "node" else "gateway.server"

        # execute: serve() in a process of its own, then the command a user runs
        done = subprocess.run(
            [
                sys.executable,
                "-c",
                textwrap.dedent(LEFT_BEHIND.format(module=module)),
                str(config),
                str(tmp_path / "metrics.addr"),
            ],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=60,
            stdin=subprocess.DEVNULL,
            check=False,
        )
        run = liaison(role, "serve", "--config", config, cwd=tmp_path)

    # assert: one clear error; the metrics port closed and no thread left running
    assert done.returncode == 0, done.stderr
    found = json.loads(done.stdout)
    assert found["error"].startswith(f"cannot listen on '{listen}'"), found
    assert found["metrics_port_free"], found
    assert found["threads"] == [], found
    assert run.returncode == 1
    assert "Traceback" not in run.stderr
    last = run.stderr.strip().splitlines()[-1]
    assert last.startswith(f"error: cannot listen on '{listen}'"), last
