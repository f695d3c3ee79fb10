"""A node killed with SIGKILL mid-burst keeps receipts and stored answers in step (issue 12).

A real ``python -m liaison node serve`` process answers signed requests from
several threads at once and is killed with SIGKILL while they stream. Its
receipt, the answer it keeps for retries and the rate usage of each answer are
one commit, so after the kill every stored answer has its receipt and every
receipt its stored answer; every answer a caller received is among them; and
after a restart a retry of any request gets the very answer that was stored,
or (for a request cut short) is answered once, afresh.
"""

from __future__ import annotations

import hashlib
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc

from liaison.query import Query
from proto.liaison.v1 import node_pb2 as pb_node
from tests.support import (
    STOP_TIMEOUT_S,
    answer_digest,
    call_node,
    gateway_signing_key,
    make_request,
    node_config_file,
    node_receipts,
    node_receipts_file,
    node_state_dir,
    sha256_match,
    sign_request,
    spawn,
    stored_answers,
    tail,
    terminate,
)

NODE_ID = "ruritania"
WORKERS = 8
REQUESTS = 1000


def burst_query(n: int) -> Query:
    return sha256_match(hashlib.sha256(f"crash-{n}".encode()).hexdigest())


def receipts(path: Path) -> dict[str, list[str]]:
    """Answer digests of the "answered" receipts, by query id."""
    found: dict[str, list[str]] = {}
    for query_id, status, digest in node_receipts(path):
        if status == "answered":
            found.setdefault(query_id, []).append(digest)
    return found


def stored(state_dir: Path) -> dict[str, str]:
    """Digests of the stored answers, by query id, opened with the node's replay key."""
    return {q: hashlib.sha256(payload).hexdigest() for q, payload in stored_answers(state_dir)}


def test_a_node_killed_mid_burst_keeps_receipts_and_stored_answers_in_step(
    federation_dir: Path, tmp_path: Path
) -> None:
    # prepare: requests signed and logged as the gateway would, valid long enough to retry
    key = gateway_signing_key(federation_dir)
    requests = [
        make_request(burst_query(n), audience=(NODE_ID,), ttl_ms=120_000) for n in range(REQUESTS)
    ]
    signed = {r.query_id: sign_request(key, r) for r in requests}
    config = node_config_file(federation_dir, NODE_ID)
    ledger = node_receipts_file(federation_dir, NODE_ID)
    state = node_state_dir(federation_dir, NODE_ID)
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    node = spawn("node", NODE_ID, config, run_dir)
    received: dict[str, pb_node.AnswerResponse] = {}
    first_answer = threading.Event()
    pending = iter(list(signed.items()))
    lock = threading.Lock()

    def stream() -> None:
        while True:
            with lock:
                item = next(pending, None)
            if item is None:
                return
            query_id, request = item
            try:
                response = call_node(node.address, request, timeout_s=10)
            except grpc.RpcError:
                return  # the node is gone
            received[query_id] = response
            first_answer.set()

    # execute: SIGKILL while answers stream, then read what is durable
    try:
        with ThreadPoolExecutor(WORKERS) as pool:
            for _ in range(WORKERS):
                pool.submit(stream)
            assert first_answer.wait(30), tail(node.log)
            time.sleep(0.15)
            node.popen.send_signal(signal.SIGKILL)
        assert node.popen.wait(STOP_TIMEOUT_S) == -signal.SIGKILL
        after_kill_receipts = receipts(ledger)
        after_kill_stored = stored(state)

        # every request again, from a restarted node
        node = spawn("node", NODE_ID, config, run_dir)
        retried = {query_id: call_node(node.address, r) for query_id, r in signed.items()}
        assert terminate(node) == 0, tail(node.log)
    finally:
        if node.popen.poll() is None:
            node.popen.kill()
            node.popen.wait()

    # assert: at the kill, stored answers and receipts were the same set, one each
    assert received, "nothing was answered before the kill"
    assert len(received) < REQUESTS, "the kill came after the burst"
    assert after_kill_stored.keys() == after_kill_receipts.keys()
    for query_id, digest in after_kill_stored.items():
        assert after_kill_receipts[query_id] == [digest], query_id
    # every answer a caller saw was durable, receipt and stored copy
    for query_id, response in received.items():
        assert after_kill_stored[query_id] == answer_digest(response), query_id
    # after the restart: the stored answer for those, one fresh answer for the rest
    final = receipts(ledger)
    for query_id, response in retried.items():
        if query_id in after_kill_stored:
            assert answer_digest(response) == after_kill_stored[query_id], query_id
        assert final[query_id] == [answer_digest(response)], query_id
