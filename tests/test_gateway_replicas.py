"""Gateway replicas: several gateways write one PostgreSQL ledger, as one log.

Shared mode (``[ledger] shared = true``) numbers entries inside PostgreSQL
transactions under an advisory lock, never from a process's memory. These
tests run it for real: two ``Ledger`` objects appending at once to one
database, and two gateway processes serving investigators over one ledger,
one of them killed with SIGKILL in the middle of a burst. Every ledger is
then checked as an auditor would (``verify_ledger``, ``liaison audit verify``
and ``liaison audit reconcile``).
"""

from __future__ import annotations

import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from itertools import pairwise
from pathlib import Path

import psycopg
import pytest

from liaison.bench.replicas import (
    Ack,
    ReplicaClient,
    hash_search,
    run_burst,
    service_gap,
    share,
)
from liaison.config import load_gateway_config
from liaison.demo.data import INVESTIGATOR_AGENCY, demo_agencies
from liaison.demo.federation import write_gateway_config
from liaison.demo.run import investigator_token
from liaison.errors import ConfigError, LedgerError, LedgerUnavailable
from liaison.keys import SigningKey
from liaison.ledger.checkpoint import open_checkpoint
from liaison.ledger.entries import EntryKind, parse_entry
from liaison.ledger.log import Appended, Ledger
from liaison.ledger.merkle import leaf_hash, verify_inclusion
from liaison.ledger.store import APPEND_LOCK, LedgerStore, LedgerTimeouts
from liaison.ledger.verify import verify_ledger
from tests.support import liaison, receipt, running_node, spawn, terminate

ORIGIN = "liaison.test/replicas"
WAIT_S = 20


# --- configuration ------------------------------------------------------------------------


def test_shared_needs_postgresql(tmp_path: Path) -> None:
    config = tmp_path / "gateway.toml"
    config.write_text(
        '[gateway]\nid = "gw"\nsigning_key = "gw.key"\n'
        '[ledger]\nlocation = "ledger.sqlite3"\naudit_key = "audit.key"\nshared = true\n'
        '[[issuer]]\nissuer = "i"\nagencies = ["a"]\npublic_keys = ["i.pub"]\n'
        'algorithms = ["EdDSA"]\n'
    )
    with pytest.raises(ConfigError, match=r"`shared = true` .* needs PostgreSQL"):
        load_gateway_config(config)
    with pytest.raises(ConfigError, match="cannot be shared: several writers need PostgreSQL"):
        LedgerStore(tmp_path / "ledger.sqlite3", shared=True)
    # Not a flag a typo can turn on: it is a boolean or an error.
    config.write_text(config.read_text().replace("shared = true", 'shared = "yes"'))
    with pytest.raises(ConfigError, match="`shared` must be true or false"):
        load_gateway_config(config)


def test_shared_is_off_by_default(tmp_path: Path) -> None:
    config = tmp_path / "gateway.toml"
    config.write_text(
        '[gateway]\nid = "gw"\nsigning_key = "gw.key"\n'
        '[ledger]\nlocation = "postgresql://u@db.example/ledger"\naudit_key = "audit.key"\n'
        '[[issuer]]\nissuer = "i"\nagencies = ["a"]\npublic_keys = ["i.pub"]\n'
        'algorithms = ["EdDSA"]\n'
    )
    assert load_gateway_config(config).ledger_shared is False
    config.write_text(config.read_text().replace("[[issuer]]", "shared = true\n[[issuer]]"))
    assert load_gateway_config(config).ledger_shared is True


# --- two writers, one ledger ----------------------------------------------------------------


def test_two_replicas_append_as_one_log(postgres_url: str) -> None:
    """Two shared Ledgers append at once: one tree, every proof and checkpoint verifies."""
    key = SigningKey.generate()
    # Opened at once, as replicas started together are: the first creates the tables.
    with ThreadPoolExecutor(2) as pool:
        replicas = list(
            pool.map(
                lambda _: Ledger.open(
                    postgres_url, key, ORIGIN, shared=True, checkpoint_interval_s=0.05
                ),
                range(2),
            )
        )
    appended: list[tuple[bytes, Appended]] = []
    lock = threading.Lock()

    def work(worker: int) -> None:
        ledger = replicas[worker % 2]
        for i in range(25):
            entry = receipt(worker * 1000 + i)
            if i % 2:
                done = ledger.append(entry, prove=True, timeout_s=WAIT_S)
            else:
                done = ledger.submit(entry, prove=True).result(WAIT_S)
            with lock:
                appended.append((entry, done))

    try:
        with ThreadPoolExecutor(8) as pool:
            list(pool.map(work, range(8)))
    finally:
        for ledger in replicas:
            ledger.close()

    # Indices came from the database: unique, and each holds what was appended there.
    indices = [a.index for _, a in appended]
    assert len(set(indices)) == len(indices) == 200
    store = LedgerStore(postgres_url, create=False)
    try:
        stored = {i: (leaf, entry) for i, leaf, entry in store.rows()}
        checkpoints = store.checkpoints()
        report, tree = verify_ledger(store, key.verifying_key)
    finally:
        store.close()
    for entry, done in appended:
        assert stored[done.index] == (leaf_hash(entry), entry)
        # Each proof was made from a tree caught up with the other replica.
        assert done.checkpoint is not None
        cp = open_checkpoint(done.checkpoint.note, key.verifying_key, origin=ORIGIN)
        verify_inclusion(leaf_hash(entry), done.index, cp.size, done.inclusion_path, cp.root)
        assert tree.root(cp.size) == cp.root
    # Two opened entries (one per replica), the 200 appended, nothing else.
    assert sorted(stored) == list(range(202))
    kinds = [parse_entry(entry).kind for _, entry in stored.values()]
    assert kinds.count(EntryKind.OPENED) == 2
    assert report.ok, [str(p) for p in report.problems]
    assert report.warnings == []
    # Checkpoints of both replicas, stored in one order that never goes back.
    assert len(checkpoints) >= 4
    for before, after in pairwise(checkpoints):
        assert before.size <= after.size
        assert before.time_ms <= after.time_ms
    assert checkpoints[-1].size == 202


def test_lone_writer_and_replicas_exclude_each_other(postgres_url: str) -> None:
    key = SigningKey.generate()
    lone = Ledger.open(postgres_url, key, ORIGIN)
    try:
        with pytest.raises(LedgerError, match="does not share it; set `shared = true`"):
            Ledger.open(postgres_url, key, ORIGIN, shared=True)
    finally:
        lone.close()
    replica = Ledger.open(postgres_url, key, ORIGIN, shared=True)
    try:
        with pytest.raises(LedgerError, match="already written by another process"):
            Ledger.open(postgres_url, key, ORIGIN)
        # Another replica is welcome, but only with the log's one key.
        with pytest.raises(LedgerError, match="belongs to key_id"):
            Ledger.open(postgres_url, SigningKey.generate(), ORIGIN, shared=True)
    finally:
        replica.close()


def test_a_frozen_replica_does_not_stop_the_others(postgres_url: str) -> None:
    """A replica that froze mid-turn (SIGSTOP, a paused VM) holds the append lock until
    PostgreSQL ends its idle transaction, after ``write_timeout_s``; then the others go on."""
    key = SigningKey.generate()
    timeouts = LedgerTimeouts(write_s=1.0)
    frozen = LedgerStore(postgres_url, timeouts=timeouts, shared=True)
    replica = Ledger.open(postgres_url, key, ORIGIN, shared=True, timeouts=timeouts)
    try:
        held = frozen.engine.raw_connection().driver_connection
        assert held is not None
        cursor = held.cursor()
        cursor.execute(APPEND_LOCK)  # the turn taken, then nothing more is sent
        started = time.monotonic()
        while True:
            try:
                done = replica.append(receipt(1), timeout_s=WAIT_S)
                break
            except LedgerUnavailable:
                assert time.monotonic() - started < 8, "the frozen turn was never ended"
                time.sleep(0.2)
        assert done.index == 1
        # The server ended it: the frozen process's next word finds the session gone.
        with pytest.raises(psycopg.errors.IdleInTransactionSessionTimeout):
            cursor.execute("SELECT 1")
    finally:
        replica.close()
        frozen.close()


# --- two gateway processes, one killed mid-burst ---------------------------------------------

SEARCHES = 90
KILL_AFTER = 30
WORKERS = 6


def test_replica_killed_mid_burst_loses_nothing(federation_dir: Path, postgres_url: str) -> None:
    """Two gateway processes on one ledger; SIGKILL one mid-burst; the other serves on.

    Every search a client got an answer for is in the ledger (request and
    outcome), the ledger verifies against the gateway's one key and every
    node's receipts as witnesses, and reconciles with every node.
    """
    root = federation_dir
    run_dir = root / "run"
    run_dir.mkdir()
    with ExitStack() as stack:
        nodes = {
            a.agency_id: stack.enter_context(
                running_node(root / "nodes" / a.agency_id / "node.toml")
            )
            for a in demo_agencies()
        }
        config = write_gateway_config(
            root,
            [INVESTIGATOR_AGENCY],
            {n: node.address for n, node in nodes.items()},
            ledger=postgres_url,
            checkpoint_interval_s=1,
        )
        share(config)
        # Both start at once: creating the ledger's tables must not race.
        with ThreadPoolExecutor(2) as pool:
            starting = [pool.submit(spawn, "gateway", f"gw-{n}", config, run_dir) for n in "ab"]
        for future in starting:
            if future.exception() is None:
                stack.callback(_kill, future.result().popen)
        replicas = [future.result() for future in starting]
        client = ReplicaClient([p.address for p in replicas], investigator_token(root))
        stack.callback(client.close)
        killed_at: list[float] = []

        def kill_a(_ack: Ack, count: int) -> None:
            if count == KILL_AFTER and not killed_at:
                replicas[0].popen.kill()
                killed_at.append(time.monotonic())

        burst = run_burst(client, SEARCHES, WORKERS, on_ack=kill_a)
        assert burst.lost == []
        assert len(burst.acks) == SEARCHES
        assert replicas[0].popen.wait(5) == -9
        gap = service_gap(burst, 0, killed_at[0])
        # Both served before the kill; the survivor took over every search after.
        before = [a for a in burst.acks if a.at < killed_at[0]]
        assert {a.replica for a in before} == {0, 1}
        after = [a for a in burst.acks if a.at > killed_at[0]]
        # A killed replica answers nothing more than what was already on the wire
        # (at most one search per client); the survivor answered all the rest.
        assert sum(1 for a in after if a.replica == 0) <= WORKERS
        assert gap.last_ack_killed_s < 2
        assert gap.failed_over > 0
        # The survivor still serves after the burst, and stops cleanly (a final checkpoint).
        result, replica, _ = client.search(hash_search(SEARCHES), 1)
        assert replica == 1 and result.query_id
        assert terminate(replicas[1]) == 0
        acked = {a.query_id for a in burst.acks} | {result.query_id}
    # Nodes stopped (each signed a final checkpoint of its receipts): audit as an auditor would.
    store = LedgerStore(postgres_url, create=False)
    try:
        entries = [parse_entry(entry) for _, _, entry in store.rows()]
    finally:
        store.close()
    requests = {e.fields["query_id"] for e in entries if e.kind is EntryKind.REQUEST}
    outcomes = {e.fields["query_id"] for e in entries if e.kind is EntryKind.OUTCOME}
    assert acked <= requests
    assert acked <= outcomes
    assert sum(1 for e in entries if e.kind is EntryKind.OPENED) == 2
    gateway_pub = root / "gateway" / "gateway.pub"
    receipts = {n: root / "nodes" / n / "state" / "receipts.sqlite3" for n in nodes}
    verify = (
        "audit",
        "verify",
        postgres_url,
        "--key",
        gateway_pub,
        *(arg for path in receipts.values() for arg in ("--witness", path)),
    )
    reconcile = (
        "audit",
        "reconcile",
        "--gateway",
        postgres_url,
        "--gateway-key",
        gateway_pub,
        *(
            arg
            for n, path in receipts.items()
            for arg in ("--node", n, path, root / "nodes" / n / "node.pub")
        ),
    )
    with ThreadPoolExecutor(2) as pool:
        verified, reconciled = pool.map(lambda args: liaison(*args), (verify, reconcile))
    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert "VERIFIED" in verified.stdout
    assert reconciled.returncode == 0, reconciled.stdout + reconciled.stderr


def _kill(popen: subprocess.Popen[bytes]) -> None:
    if popen.poll() is None:
        popen.kill()
        popen.wait()
