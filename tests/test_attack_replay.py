"""Reused query ids, and an answer whose replay record cannot be written (issue 9, items 2 and 3).

Real nodes on loopback, requests signed with the demo gateway's key, real
SQLite files: the failure is injected the way a full disk shows itself to
SQLite, through a trigger added from a connection of our own. The replay
record, the rate usage and the receipt of an answer are one commit of the
receipts ledger, so a failure of any of them leaves none of them.
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import grpc
import pytest

from liaison.errors import ReplayDetected
from node.verify import verify_request
from tests.support import (
    call_node,
    gateway_signing_key,
    make_request,
    node_config_file,
    node_receipts_file,
    node_refusal,
    node_state_dir,
    rate_used,
    receipts_for,
    running_node,
    sha256_match,
    sign_request,
    stored_answers,
)

NODE_ID = "ruritania"
RATED_RULE = "partner-hash-match"  # rate_limit = { investigator = "2000/hour" }


@contextmanager
def replay_records_full(root: Path) -> Iterator[None]:
    """Make every write of a replay record fail, as a full disk would, until exit."""
    conn = sqlite3.connect(node_receipts_file(root, NODE_ID), isolation_level=None)
    conn.execute(
        "CREATE TRIGGER fail_seen_nonce BEFORE INSERT ON liaison_node_seen_nonce "
        "BEGIN SELECT RAISE(ABORT, 'database or disk is full'); END"
    )
    try:
        yield
    finally:
        conn.execute("DROP TRIGGER IF EXISTS fail_seen_nonce")
        conn.close()


# --- item 2: one query id, one request ---------------------------------------------------


def test_a_reused_query_id_is_refused_and_an_identical_retry_is_answered(
    federation_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # prepare: one answered request, and another request carrying its query id
    key = gateway_signing_key(federation_dir)
    first = make_request(sha256_match("ab" * 32), audience=(NODE_ID,))
    second = make_request(sha256_match("cd" * 32), audience=(NODE_ID,), query_id=first.query_id)
    signed_first, signed_second = sign_request(key, first), sign_request(key, second)
    caplog.set_level(logging.WARNING, logger="liaison.node")

    with running_node(node_config_file(federation_dir, NODE_ID)) as node:
        # execute
        answered = call_node(node.address, signed_first)
        reused = node_refusal(node.address, signed_second)
        retried = call_node(node.address, signed_first)
    # A restart does not forget which query ids were answered.
    third = make_request(sha256_match("ef" * 32), audience=(NODE_ID,), query_id=first.query_id)
    with running_node(node_config_file(federation_dir, NODE_ID)) as node:
        after_restart = node_refusal(node.address, sign_request(key, third))

    # assert
    expected = (
        f"query id {first.query_id!r} was already answered for a different request; the "
        "gateway must give every request a new query id"
    )
    for refusal in (reused, after_restart):
        assert refusal.code() == grpc.StatusCode.ALREADY_EXISTS
        assert refusal.details() == expected
    assert retried == answered
    receipts = receipts_for(node_receipts_file(federation_dir, NODE_ID), first.query_id)
    assert [status for status, _ in receipts] == ["answered"]
    logged = [r for r in caplog.records if r.getMessage() == "refused: replay"]
    assert [r.query_id for r in logged] == [first.query_id] * 2  # type: ignore[attr-defined]
    assert all(r.reason == expected for r in logged)  # type: ignore[attr-defined]


def test_concurrent_requests_sharing_a_query_id_do_not_both_get_answers(
    federation_dir: Path,
) -> None:
    # The second claim arrives while the first is still pending in memory.
    key = gateway_signing_key(federation_dir)
    first = make_request(sha256_match("ab" * 32), audience=(NODE_ID,))
    second = make_request(sha256_match("cd" * 32), audience=(NODE_ID,), query_id=first.query_id)
    with running_node(node_config_file(federation_dir, NODE_ID)) as node:
        core = node.core
        verified = [
            verify_request(
                sign_request(key, r).envelope,
                trusted=core.trusted,
                node_id=NODE_ID,
                now_ms=r.issued_at_ms,
                max_age_s=300,
                clock_skew_s=30,
            )
            for r in (first, second)
        ]
        assert (
            core.replay.claim(
                first.nonce,
                verified[0].digest,
                first.expires_at_ms,
                query_id=first.query_id,
                peer="",
            )
            is None
        )
        with pytest.raises(ReplayDetected, match="already answered for a different request"):
            core.replay.claim(
                second.nonce,
                verified[1].digest,
                second.expires_at_ms,
                query_id=second.query_id,
                peer="",
            )
        core.replay.release(first.nonce)


# --- item 3: an answer that cannot be stored never leaves, and costs nothing -----------------


def test_an_unwritable_replay_record_leaves_no_receipt_no_charge_and_no_answer(
    federation_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # prepare
    request = make_request(sha256_match("ab" * 32), audience=(NODE_ID,))
    signed = sign_request(gateway_signing_key(federation_dir), request)
    ledger = node_receipts_file(federation_dir, NODE_ID)
    state = node_state_dir(federation_dir, NODE_ID)
    caplog.set_level(logging.ERROR, logger="liaison.ledger")

    with running_node(node_config_file(federation_dir, NODE_ID)) as node:
        used_before = rate_used(ledger, RATED_RULE)
        # execute: the record fails in the commit that would hold the receipt, then recovers
        with replay_records_full(federation_dir):
            failed = node_refusal(node.address, signed)
        used_while_failed = rate_used(ledger, RATED_RULE)
        receipts_while_failed = receipts_for(ledger, request.query_id)
        stored_while_failed = len(stored_answers(state, request.query_id))
        recovered = call_node(node.address, signed)
        retried = call_node(node.address, signed)
        used_after = rate_used(ledger, RATED_RULE)

    # assert: a plain UNAVAILABLE, and nothing of the failed answer anywhere
    assert failed.code() == grpc.StatusCode.UNAVAILABLE
    assert failed.details() == (
        "this node cannot write its receipts ledger, so it answers nothing; try again later "
        "(the node's operator sees why in its log)"
    )
    assert (receipts_while_failed, stored_while_failed) == ([], 0)
    assert used_while_failed == used_before
    # the retry is answered, receipted, stored and charged once; its own retry gets it back
    assert recovered.answer.signature
    assert retried == recovered
    receipts = receipts_for(ledger, request.query_id)
    assert [status for status, _ in receipts] == ["answered"]
    assert len(stored_answers(state, request.query_id)) == 1
    assert used_after == used_before + 1
    assert any(r.getMessage() == "ledger write failed" for r in caplog.records)


def test_a_request_failing_after_its_charge_is_refunded(federation_dir: Path) -> None:
    # A receipts ledger that cannot be written: nothing leaves, nothing is charged.
    request = make_request(sha256_match("ab" * 32), audience=(NODE_ID,))
    signed = sign_request(gateway_signing_key(federation_dir), request)
    ledger = node_receipts_file(federation_dir, NODE_ID)
    with running_node(node_config_file(federation_dir, NODE_ID)) as node:
        used_before = rate_used(ledger, RATED_RULE)
        conn = sqlite3.connect(ledger, isolation_level=None)
        tables = [
            r[0]
            for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'").fetchall()
        ]
        for table in tables:
            conn.execute(
                f'CREATE TRIGGER "fail_{table}" BEFORE INSERT ON "{table}" '
                "BEGIN SELECT RAISE(ABORT, 'database or disk is full'); END"
            )
        try:
            refusal = node_refusal(node.address, signed, timeout_s=30)
        finally:
            for table in tables:
                conn.execute(f'DROP TRIGGER IF EXISTS "fail_{table}"')
            conn.close()
        used_after = rate_used(ledger, RATED_RULE)

    assert refusal.code() == grpc.StatusCode.UNAVAILABLE
    assert used_after == used_before
