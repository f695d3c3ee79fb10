"""The ledger survives a gateway killed at random moments with SIGKILL.

Three demo nodes and the gateway run as real ``python -m liaison ... serve``
processes. In each round investigators fire a burst of concurrent searches,
and the gateway is killed with SIGKILL at a random moment in the middle of
it, then restarted on the same config and ledger. Whatever an investigator
got an answer for must already be in the ledger, request and outcome, when
the gateway dies; after all rounds the ledger verifies, and a search cut short
shows only as a request without an outcome.

Under CI=true the kill moments come from a fixed seed; locally they are fresh
each run; failure messages name the seed, which LIAISON_CRASH_SEED replays.
"""

from __future__ import annotations

import itertools
import json
import os
import random
import signal
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

from liaison import client
from liaison.client import GatewayUnavailable
from liaison.demo.data import INVESTIGATOR_AGENCY, demo_agencies, probes
from liaison.demo.federation import write_gateway_config
from liaison.keys import VerifyingKey
from liaison.ledger.store import LedgerStore
from liaison.ledger.verify import VerifyReport, verify_ledger
from liaison.ledger.views import Row, rows
from liaison.messages import SearchInput
from liaison.query import Comparator, Operation, Predicate, Query
from tests.conftest import IN_CI
from tests.support import (
    STOP_TIMEOUT_S,
    Process,
    investigator_token,
    liaison,
    spawn,
    tail,
    terminate,
)

CI_SEED = 20260142
ROUNDS = 5
# Searches in flight at once (drawn per round): each worker streams searches back to back.
MIN_WORKERS = 4
MAX_WORKERS = 10
# The gateway is killed this long (drawn at random) after the round's first answer,
# so every round is killed with searches streaming, at a different point of them.
KILL_AFTER_S = (0.0, 0.6)
SEARCH_TIMEOUT_S = 10


# --- processes -----------------------------------------------------------------------------


def reap(process: Process) -> None:
    """Last resort at teardown: kill ``process`` if it still runs (only this test's own)."""
    if process.popen.poll() is None:
        process.popen.kill()
    process.popen.wait()


# --- searches ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Call:
    """One search as the investigator saw it."""

    case_ref: str
    round: int
    started: float
    # The query id of the answer that came back; "" when the search failed.
    query_id: str = ""
    error: str = ""

    @property
    def answered(self) -> bool:
        return bool(self.query_id)


@dataclass
class Round:
    number: int
    workers: int = 1
    calls: list[Call] = field(default_factory=list)
    killed_at: float = 0.0
    kill_delay_s: float = 0.0

    @property
    def answered(self) -> list[Call]:
        return [c for c in self.calls if c.answered]

    @property
    def cut_short(self) -> list[Call]:
        """Searches that were already on their way when the gateway was killed."""
        return [c for c in self.calls if not c.answered and c.started < self.killed_at]


def match_search(case_ref: str) -> SearchInput:
    sha256 = Predicate("sha256", Comparator.EQ, (probes().shared_sha256,))
    return SearchInput(Query("media", Operation.MATCH, (sha256,)), "csam-investigation", case_ref)


def stream_searches(
    address: str,
    token: str,
    number: int,
    worker: int,
    stop: threading.Event,
    first_answer: threading.Event,
) -> list[Call]:
    """Search back to back until ``stop``, or until the gateway stops answering."""
    calls = []
    for n in itertools.count():
        if stop.is_set():
            break
        case_ref = f"CRASH-{number}-{worker}-{n}"
        started = time.monotonic()
        try:
            result = client.search(address, token, match_search(case_ref), SEARCH_TIMEOUT_S)
        except GatewayUnavailable as exc:
            calls.append(Call(case_ref, number, started, error=str(exc)))
            break  # the gateway is gone: this worker's part of the burst is over
        calls.append(Call(case_ref, number, started, query_id=result.query_id))
        first_answer.set()
    return calls


# --- the ledger ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class LedgerState:
    report: VerifyReport
    rows: list[Row]

    def of_kind(self, kind: str) -> list[Row]:
        return [r for r in self.rows if r.kind == kind]

    def query_ids(self, kind: str) -> set[str]:
        return {r.query_id for r in self.of_kind(kind)}


def read_ledger(path: Path, key: VerifyingKey, *, allow_unsigned_tail: bool) -> LedgerState:
    store = LedgerStore(path, create=False)
    try:
        report, _tree = verify_ledger(store, key, allow_unsigned_tail=allow_unsigned_tail)
        return LedgerState(report, list(rows(store)))
    finally:
        store.close()


def missing_from(state: LedgerState, calls: list[Call]) -> list[str]:
    """Answered searches without their request or outcome entry in the ledger."""
    requests = {r.query_id: r for r in state.of_kind("request")}
    outcomes = state.query_ids("outcome")
    missing = []
    for call in calls:
        request = requests.get(call.query_id)
        if request is None or request.case_ref != call.case_ref:
            missing.append(f"{call.case_ref} ({call.query_id}): no request entry")
        if call.query_id not in outcomes:
            missing.append(f"{call.case_ref} ({call.query_id}): no outcome entry")
    return missing


# --- the test ------------------------------------------------------------------------------


def start_nodes(root: Path, run_dir: Path, stack: ExitStack) -> list[Process]:
    """The three demo nodes, each killed at teardown if it is still running."""
    nodes = []
    for agency in demo_agencies():
        config = root / "nodes" / agency.agency_id / "node.toml"
        node = spawn("node", agency.agency_id, config, run_dir)
        stack.callback(reap, node)
        nodes.append(node)
    return nodes


def burst_and_kill(gateway: Process, tokens: list[str], current: Round) -> None:
    """Stream searches from ``current.workers`` threads; SIGKILL the gateway mid-stream."""
    stop = threading.Event()
    first_answer = threading.Event()
    with ThreadPoolExecutor(current.workers) as pool:
        try:
            futures = [
                pool.submit(
                    stream_searches,
                    gateway.address,
                    tokens[w],
                    current.number,
                    w,
                    stop,
                    first_answer,
                )
                for w in range(current.workers)
            ]
            assert first_answer.wait(SEARCH_TIMEOUT_S), (
                f"round {current.number}: no answer in {SEARCH_TIMEOUT_S} s:\n{tail(gateway.log)}"
            )
            time.sleep(current.kill_delay_s)
            current.killed_at = time.monotonic()
            gateway.popen.send_signal(signal.SIGKILL)
        finally:
            stop.set()
            if gateway.popen.poll() is None:  # the round failed before its kill
                gateway.popen.kill()
        for future in futures:
            current.calls.extend(future.result(SEARCH_TIMEOUT_S * 2))
    assert gateway.popen.wait(STOP_TIMEOUT_S) == -signal.SIGKILL


def test_gateway_killed_mid_burst_keeps_every_answered_query_in_its_ledger(
    federation_dir: Path, tmp_path: Path
) -> None:
    # prepare: real node processes, and a gateway that checkpoints every second
    seed = CI_SEED if IN_CI else int(os.environ.get("LIAISON_CRASH_SEED", random.randrange(2**32)))
    rng = random.Random(seed)
    context = f"(seed {seed}; replay with LIAISON_CRASH_SEED={seed})"
    root = federation_dir
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    ledger_path = root / "gateway" / "ledger.sqlite3"
    gateway_pub = root / "gateway" / "gateway.pub"
    key = VerifyingKey.from_pem_file(gateway_pub)
    # One investigator per worker, so no node's per-investigator rate limit shapes a burst.
    tokens = [investigator_token(root, subject=f"inv.crash{w}") for w in range(MAX_WORKERS)]
    rounds: list[Round] = []
    starts = 0

    with ExitStack() as stack:
        nodes = start_nodes(root, run_dir, stack)
        config = write_gateway_config(
            root, [INVESTIGATOR_AGENCY], {n.name: n.address for n in nodes}, checkpoint_interval_s=1
        )

        def start_gateway() -> Process:
            nonlocal starts
            gateway = spawn("gateway", "gateway", config, run_dir)
            stack.callback(reap, gateway)
            starts += 1
            return gateway

        # execute: rounds of bursts, each cut short by SIGKILL at a random moment
        gateway = start_gateway()
        for number in range(1, ROUNDS + 1):
            current = Round(
                number,
                workers=rng.randint(MIN_WORKERS, MAX_WORKERS),
                kill_delay_s=rng.uniform(*KILL_AFTER_S),
            )
            rounds.append(current)
            burst_and_kill(gateway, tokens, current)

            # What reached the investigator is durable before the gateway restarts:
            # nothing a later process writes can stand in for a lost entry.
            crashed = read_ledger(ledger_path, key, allow_unsigned_tail=True)
            assert crashed.report.ok, (crashed.report.problems, context)
            assert missing_from(crashed, current.answered) == [], context

            gateway = start_gateway()
            # The reopening logs itself and signs a checkpoint over everything, the
            # entries the killed process never covered included.
            reopened = read_ledger(ledger_path, key, allow_unsigned_tail=False)
            assert reopened.report.ok, (reopened.report.problems, context)
            assert len(reopened.of_kind("opened")) == starts, context

        # After the last crash the gateway still answers, then stops cleanly.
        after = Round(ROUNDS + 1)
        for n in range(5):
            case_ref = f"CRASH-{after.number}-0-{n}"
            result = client.search(gateway.address, tokens[0], match_search(case_ref))
            after.calls.append(Call(case_ref, after.number, 0.0, query_id=result.query_id))
        rounds.append(after)
        assert terminate(gateway) == 0, tail(gateway.log)
        for node in nodes:  # their receipts ledgers sign a last checkpoint on the way out
            assert terminate(node) == 0, tail(node.log)

    # assert: the auditor's command verifies the ledger ...
    verified = liaison("audit", "verify", ledger_path, "--key", gateway_pub, "--json", cwd=tmp_path)
    assert verified.returncode == 0, (verified.stdout, verified.stderr, context)
    cli_report = json.loads(verified.stdout)
    assert cli_report["ok"] is True

    # ... and so does the library, with nothing wrong but searches cut short
    final = read_ledger(ledger_path, key, allow_unsigned_tail=False)
    assert final.report.ok, (final.report.problems, context)
    assert cli_report["unfinished_requests"] == final.report.unfinished
    # A gap in checkpoints while the gateway was down is worth a warning, nothing else is.
    unexpected = [w for w in final.report.warnings if "no checkpoint for" not in w.message]
    assert unexpected == [], context
    assert len(final.of_kind("opened")) == starts == ROUNDS + 1

    calls = {c.case_ref: c for r in rounds for c in r.calls}
    answered = [c for c in calls.values() if c.answered]
    assert missing_from(final, answered) == [], context

    # Every request in the ledger is one an investigator made, logged once, by the
    # gateway process that round ran against (the stretch after its `opened` entry).
    requests = final.of_kind("request")
    logged_twice = [c for c, n in Counter(r.case_ref for r in requests).items() if n > 1]
    assert logged_twice == [], context
    assert {r.case_ref for r in requests} <= set(calls), context
    opened_at = [r.index for r in final.of_kind("opened")]
    wrong_process = [
        r.case_ref
        for r in requests
        if calls[r.case_ref].round != sum(1 for i in opened_at if i < r.index)
    ]
    assert wrong_process == [], context

    # A request without an outcome is a search whose investigator never got an answer.
    outcomes = final.query_ids("outcome")
    assert outcomes <= {r.query_id for r in requests}
    unfinished = [r for r in requests if r.query_id not in outcomes]
    assert len(unfinished) == final.report.unfinished
    assert [r.case_ref for r in unfinished if calls[r.case_ref].answered] == [], context
    errors = [c.error for c in calls.values() if c.error]
    assert all("UNAVAILABLE" in e for e in errors), (errors, context)

    # The kills landed mid-burst: some round had searches answered and searches on
    # their way when it was killed, and some search was cut short after its request
    # entry was written and before its answer was.
    summary = [(r.number, len(r.answered), len(r.cut_short)) for r in rounds]
    assert any(answered and cut for _, answered, cut in summary), (summary, context)
    assert final.report.unfinished >= 1, (summary, context)

    # The nodes' receipts agree with the gateway's ledger; the crashes leave notes only.
    reconciled = liaison("audit", "reconcile", "--federation", root, "--json", cwd=tmp_path)
    assert reconciled.returncode == 0, (reconciled.stdout, reconciled.stderr, context)
    doc = json.loads(reconciled.stdout)
    assert doc["ok"] is True
    assert [d for d in doc["differences"] if d["problem"]] == [], context
