"""verify_ledger with a second process finds exactly what it finds in one.

The ledgers of test_ledger_verify_fast (3,000 gateway entries, 1,200 receipts)
are cut into chunks of 256 entries, small enough that the second process
(a real subprocess, ``liaison.ledger.verify_worker``) takes several. Which
chunks it takes is fixed by holding the verifier's own claims to the first
``front`` chunks, so tampering lands in chunks the helper read, in chunks
the verifier read, and across the line between them. Every report must
equal, finding for finding and in order, the one process's report and the
row-by-row oracle's.

Prepare / execute / assert; every ledger is a real SQLite file, and the
PostgreSQL and MariaDB ledgers real databases (read in one process).
"""

from __future__ import annotations

import io
import json
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from liaison.bench.ledger import EntryFactory, build_ledger
from liaison.keys import SigningKey, VerifyingKey
from liaison.ledger import verify as verify_module
from liaison.ledger import verify_worker
from liaison.ledger.merkle import MerkleTree
from liaison.ledger.store import LedgerStore
from liaison.ledger.verify import VerifyReport, verify_ledger
from tests.support import stored_entry, tampering
from tests.test_ledger_verify_fast import (
    GATEWAY_ENTRIES,
    RECEIPTS,
    Ledgers,
    Tamper,
    duplicated_kind_key,
    edited_leaving_its_hash,
    edited_with_its_hash,
    first_of_kind,
    nested_too_deep,
    not_utf8_inside_a_string,
    outcome_moved_before_its_request,
    outcome_with_no_request,
    put,
    receipt_copied,
    receipt_id_reused,
    reference_rebuild,
    request_logged_twice,
    required_field_of_another_type,
    stored_as_text,
    stored_leaf_edited,
    summary,
    unreadable_in_the_middle,
)
from tests.test_ledger_verify_fast import (
    built as built,  # a fixture, used by name
)
from tests.test_ledger_verify_fast import (
    ledgers as ledgers,  # a fixture, used by name
)

DEPTH = 8  # chunks of 256 entries: 12 of the gateway's 3,000
CHUNKS = -(-GATEWAY_ENTRIES // (1 << DEPTH))


@pytest.fixture
def small_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(verify_module, "PARALLEL_DEPTH", DEPTH)
    monkeypatch.setattr(verify_module, "PARALLEL_MIN_ENTRIES", 1_000)
    monkeypatch.setattr(verify_module, "READ_BATCH", 100)


def hold_front(monkeypatch: pytest.MonkeyPatch, front: int) -> None:
    """The verifier takes only its first ``front`` chunks: the helper takes all the rest."""
    claim = verify_worker.Claims.front

    def held(self: verify_worker.Claims, chunk: int) -> bool:
        return chunk < front and claim(self, chunk)

    monkeypatch.setattr(verify_worker.Claims, "front", held)


def report_of(path: Path, key: VerifyingKey, processes: int) -> tuple[VerifyReport, MerkleTree]:
    store = LedgerStore(path, create=False)
    try:
        return verify_ledger(store, key, allow_unsigned_tail=True, processes=processes)
    finally:
        store.close()


def check_all_agree(
    path: Path, key: VerifyingKey, monkeypatch: pytest.MonkeyPatch
) -> tuple[VerifyReport, VerifyReport]:
    """Two processes, one process and the oracle report the same; return (two, one)."""
    two, two_tree = report_of(path, key, 2)
    one, one_tree = report_of(path, key, 1)
    with monkeypatch.context() as patch:
        patch.setattr(verify_module, "_rebuild", reference_rebuild)
        oracle, _ = report_of(path, key, 1)
    assert summary(two) == summary(one) == summary(oracle)
    assert two_tree.size == one_tree.size
    assert two_tree._levels == one_tree._levels  # every stored node, for later proofs
    return two, one


@pytest.mark.parametrize("front", [0, 1, 5, CHUNKS - 1])
def test_an_untouched_ledger_is_shared_between_two_processes(
    ledgers: Ledgers,
    small_chunks: None,
    front: int,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # prepare
    hold_front(monkeypatch, front)
    joined = []
    from_levels = MerkleTree.from_subtree_levels.__func__  # type: ignore[attr-defined]

    def counted(cls: type[MerkleTree], parts: list[list[bytes]]) -> MerkleTree:
        joined.append(len(parts))
        return from_levels(cls, parts)  # type: ignore[no-any-return]

    monkeypatch.setattr(MerkleTree, "from_subtree_levels", classmethod(counted))

    # execute
    two, _one = check_all_agree(ledgers.gateway, ledgers.key.verifying_key, monkeypatch)

    # assert: the helper's chunks were folded in, not read again here, and the
    # tree joined from the chunks' subtrees, not hashed again from the leaves
    assert two.ok and two.warnings == []
    assert two.size == GATEWAY_ENTRIES and two.processes == 2
    assert joined == [CHUNKS]


def query_id_at(conn: sqlite3.Connection, index: int) -> str:
    return str(json.loads(stored_entry(conn, index))["query_id"])


def with_query_id(conn: sqlite3.Connection, index: int, query_id: str) -> None:
    raw = stored_entry(conn, index)
    put(conn, index, raw.replace(query_id_at(conn, index).encode(), query_id.encode()))


def request_answered_across_the_line(conn: sqlite3.Connection) -> None:
    # A request just before chunk 5, answered again just after it: the two
    # processes each see one side, and only folding the summary in joins them.
    request = first_of_kind(conn, "request", 5 * 256 - 6)
    with_query_id(conn, first_of_kind(conn, "outcome", 5 * 256 + 1), query_id_at(conn, request))


def request_again_in_the_helpers_part(conn: sqlite3.Connection) -> None:
    request = first_of_kind(conn, "request", 100)
    with_query_id(conn, first_of_kind(conn, "request", 2_600), query_id_at(conn, request))


def outcome_in_the_helpers_part_of_an_unknown_request(conn: sqlite3.Connection) -> None:
    with_query_id(conn, first_of_kind(conn, "outcome", 2_700), "never-requested")


@pytest.mark.parametrize("front", [0, 5])
@pytest.mark.parametrize(
    "tamper",
    [
        edited_leaving_its_hash,
        edited_with_its_hash,
        unreadable_in_the_middle,
        request_logged_twice,
        outcome_moved_before_its_request,
        outcome_with_no_request,
        required_field_of_another_type,
        not_utf8_inside_a_string,
        stored_as_text,
        duplicated_kind_key,
        nested_too_deep,
        stored_leaf_edited,
        request_answered_across_the_line,
        request_again_in_the_helpers_part,
        outcome_in_the_helpers_part_of_an_unknown_request,
    ],
)
def test_tampering_is_found_as_in_one_process(
    ledgers: Ledgers,
    small_chunks: None,
    tamper: Tamper,
    front: int,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # prepare
    with tampering(ledgers.gateway) as conn:
        tamper(conn)
    hold_front(monkeypatch, front)

    # execute / assert (check_all_agree compares the reports)
    two, _one = check_all_agree(ledgers.gateway, ledgers.key.verifying_key, monkeypatch)
    if tamper is not request_answered_across_the_line:
        assert not two.ok


@pytest.mark.parametrize("tamper", [None, receipt_id_reused, receipt_copied])
def test_receipts_are_checked_as_in_one_process(
    ledgers: Ledgers,
    small_chunks: None,
    tamper: Tamper | None,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # prepare: the helper takes every chunk but the first
    if tamper is not None:
        with tampering(ledgers.receipts) as conn:
            tamper(conn)
    hold_front(monkeypatch, 1)

    # execute
    two, _one = check_all_agree(ledgers.receipts, ledgers.key.verifying_key, monkeypatch)

    # assert
    assert two.kinds == {"opened": 1, "receipt": RECEIPTS}
    assert two.processes == 2
    assert bool(two.problems or two.warnings) == (tamper is not None)


def test_chunks_the_helper_does_not_deliver_are_read_here(
    ledgers: Ledgers,
    small_chunks: None,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # prepare: the helper claims the chunks past the first two, then its summaries are lost
    with tampering(ledgers.gateway) as conn:
        unreadable_in_the_middle(conn)
    hold_front(monkeypatch, 2)
    monkeypatch.setattr(verify_worker.Helper, "finish", lambda self: {})

    # execute
    two, _one = check_all_agree(ledgers.gateway, ledgers.key.verifying_key, monkeypatch)

    # assert
    assert two.processes == 1 and not two.ok


def test_a_helper_that_cannot_run_leaves_it_to_one_process(
    ledgers: Ledgers,
    small_chunks: None,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # prepare: the "Python" the helper is started with exits at once
    monkeypatch.setattr(sys, "executable", "/bin/false")

    # execute
    two, _one = check_all_agree(ledgers.gateway, ledgers.key.verifying_key, monkeypatch)

    # assert
    assert two.ok and two.processes == 1


def test_a_small_ledger_is_read_in_one_process(ledgers: Ledgers) -> None:
    # execute: the ledger is below PARALLEL_MIN_ENTRIES
    two, _ = report_of(ledgers.gateway, ledgers.key.verifying_key, 2)

    # assert
    assert two.ok and two.processes == 1


def test_processes_must_be_one_or_two(ledgers: Ledgers) -> None:
    with pytest.raises(ValueError, match="processes must be 1 or 2"):
        report_of(ledgers.gateway, ledgers.key.verifying_key, 3)


@pytest.fixture(params=["postgres", "mariadb"])
def server_url(request: pytest.FixtureRequest) -> str:
    return str(request.getfixturevalue(f"{request.param}_url"))


def test_a_ledger_on_a_database_server_verifies_in_one_process(
    server_url: str, small_chunks: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # prepare: a tampered gateway ledger, copied row for row from SQLite to the server
    key = SigningKey.generate()
    build_ledger(tmp_path / "gateway.sqlite3", 1_500, EntryFactory(5, key), io.StringIO())
    with tampering(tmp_path / "gateway.sqlite3") as conn:
        request_logged_twice(conn)
    source = LedgerStore(tmp_path / "gateway.sqlite3", create=False)
    target = LedgerStore(server_url)
    try:
        target.set_meta("origin", source.get_meta("origin") or "")
        target.append(0, [(leaf, raw) for _i, leaf, raw in source.rows()])
        for row in source.checkpoints():
            target.add_checkpoint(row.size, row.time_ms, row.note)
    finally:
        source.close()
        target.close()

    # execute
    store = LedgerStore(server_url, create=False)
    try:
        two, _ = verify_ledger(store, key.verifying_key, allow_unsigned_tail=True, processes=2)
        one, _ = verify_ledger(store, key.verifying_key, allow_unsigned_tail=True, processes=1)
        with monkeypatch.context() as patch:
            patch.setattr(verify_module, "_rebuild", reference_rebuild)
            oracle, _ = verify_ledger(store, key.verifying_key, allow_unsigned_tail=True)
    finally:
        store.close()

    # assert
    assert summary(two) == summary(one) == summary(oracle)
    assert two.processes == 1 and two.size == 1_500
    assert any("a second request entry" in p.message for p in two.problems)


@pytest.mark.parametrize("processes", ["1", "2"])
def test_audit_verify_takes_processes(ledgers: Ledgers, processes: str, tmp_path: Path) -> None:
    # prepare
    pub = tmp_path / "gateway.pub"
    pub.write_bytes(ledgers.key.verifying_key.to_pem())

    # execute
    command = ["audit", "verify", str(ledgers.gateway), "--key", str(pub)]
    done = subprocess.run(
        [sys.executable, "-m", "liaison", *command, "--processes", processes, "--json"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    # assert
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["ok"] is True
