"""Prometheus metrics, scraped over HTTP from a real node and a real gateway process.

The gateway knows two nodes: one serving, one whose port nobody listens on.
Searches asked only of the serving node are answered, denied by default, or
refused by its rate limit; one search asked of both comes back partial; one
with a forged token is refused. Each counter must move by exactly that.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import pytest

from liaison import client
from liaison.catalog import CATALOG_V1
from liaison.config import load_node_config
from liaison.errors import ConfigError, LiaisonError
from liaison.messages import NodeStatus
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
from tests.support import Process, investigator_token, liaison, spawn, terminate

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
