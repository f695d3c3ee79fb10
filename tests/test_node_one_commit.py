"""An answer's receipt, its stored copy and its rate usage are one commit (issue 12).

A node commits the receipt of an answer, the answer it keeps for retries
(the replay record) and the rate usage the answer paid, in one transaction of
its receipts ledger, and the answer leaves only after it. These tests run real
nodes on loopback against real SQLite files (and PostgreSQL), inject failures
through connections of their own, and read what is durable the way an operator
would: from the database.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sqlite3
import stat
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import pytest
import sqlalchemy as sa

from liaison.catalog import CATALOG_V1
from liaison.config import load_node_config
from liaison.errors import ConfigError
from liaison.ledger.logged import SignedRequest
from liaison.ledger.store import LedgerTimeouts
from node.ratelimit import scope_key
from node.replay import SEAL_KEY_FILE
from policies.model import RateLimit, RateScope
from proto.liaison.v1 import node_pb2 as pb_node
from tests.support import (
    INVESTIGATOR,
    answer_digest,
    call_node,
    gateway_signing_key,
    make_request,
    node_config_file,
    node_receipts_file,
    node_refusal,
    node_state_dir,
    rate_used,
    read_receipts_db,
    receipts_for,
    running_node,
    sha256_match,
    sign_request,
    stored_answers,
    tcp_proxy,
    unseal_answer,
)

NODE_ID = "ruritania"
RATED_RULE = "partner-hash-match"  # rate_limit = { investigator = "2000/hour" }
IN_PROGRESS = "this request is being answered right now; retry shortly"
# How long the receipts ledger waits on a write before it gives up, in the tests
# of a stuck database below: short, so that they do not wait out the default (5 s).
WRITE_TIMEOUT_S = 1


def answer_when_settled(
    address: str, signed: SignedRequest, timeout_s: float
) -> pb_node.AnswerResponse:
    """Ask again while the node says the request is still being answered (or down)."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return call_node(address, signed, timeout_s)
        except grpc.RpcError as exc:
            if exc.code() != grpc.StatusCode.UNAVAILABLE or time.monotonic() > deadline:
                raise
        time.sleep(0.2)


# --- one commit --------------------------------------------------------------------------------


def test_every_receipt_has_its_stored_answer_and_its_charge(federation_dir: Path) -> None:
    # prepare
    key = gateway_signing_key(federation_dir)
    ledger = node_receipts_file(federation_dir, NODE_ID)
    state = node_state_dir(federation_dir, NODE_ID)
    requests = [make_request(sha256_match(f"{n:02x}" * 32), audience=(NODE_ID,)) for n in range(6)]

    # execute
    with running_node(node_config_file(federation_dir, NODE_ID)) as node:
        before = rate_used(ledger, RATED_RULE)
        answers = {r.query_id: call_node(node.address, sign_request(key, r)) for r in requests}

    # assert: for each answer, one receipt naming the very bytes kept for retries
    for query_id, response in answers.items():
        assert receipts_for(ledger, query_id) == [("answered", answer_digest(response))]
        assert stored_answers(state, query_id) == [(query_id, response.answer.payload)]
    assert rate_used(ledger, RATED_RULE) == before + len(requests)


def test_a_rate_usage_row_that_cannot_be_written_takes_the_receipt_and_the_answer_with_it(
    federation_dir: Path,
) -> None:
    # prepare
    request = make_request(sha256_match("ab" * 32), audience=(NODE_ID,))
    signed = sign_request(gateway_signing_key(federation_dir), request)
    ledger = node_receipts_file(federation_dir, NODE_ID)
    state = node_state_dir(federation_dir, NODE_ID)

    with running_node(node_config_file(federation_dir, NODE_ID)) as node:
        before = rate_used(ledger, RATED_RULE)
        conn = sqlite3.connect(ledger, isolation_level=None)
        conn.execute(
            "CREATE TRIGGER fail_usage BEFORE INSERT ON liaison_node_rate_usage "
            "BEGIN SELECT RAISE(ABORT, 'database or disk is full'); END"
        )
        try:
            # execute: the usage row fails inside the commit that holds the receipt
            failed = node_refusal(node.address, signed)
            receipts_while_failed = receipts_for(ledger, request.query_id)
            stored_while_failed = stored_answers(state, request.query_id)
        finally:
            conn.execute("DROP TRIGGER fail_usage")
            conn.close()
        retried = call_node(node.address, signed)

    # assert: nothing of the failed answer is durable; the retry is answered once
    assert failed.code() == grpc.StatusCode.UNAVAILABLE
    assert (receipts_while_failed, stored_while_failed) == ([], [])
    assert receipts_for(ledger, request.query_id) == [("answered", answer_digest(retried))]
    assert stored_answers(state, request.query_id) == [(request.query_id, retried.answer.payload)]
    assert rate_used(ledger, RATED_RULE) == before + 1


def test_the_same_request_at_once_on_many_connections_is_answered_once(
    federation_dir: Path,
) -> None:
    # prepare
    request = make_request(sha256_match("cd" * 32), audience=(NODE_ID,))
    signed = sign_request(gateway_signing_key(federation_dir), request)
    ledger = node_receipts_file(federation_dir, NODE_ID)
    start = threading.Barrier(8)

    def ask() -> pb_node.AnswerResponse | grpc.RpcError:
        start.wait(10)
        try:
            return call_node(node.address, signed)
        except grpc.RpcError as exc:
            return exc

    # execute
    with running_node(node_config_file(federation_dir, NODE_ID)) as node:
        before = rate_used(ledger, RATED_RULE)
        with ThreadPoolExecutor(8) as pool:
            outcomes = list(pool.map(lambda _: ask(), range(8)))
        after = call_node(node.address, signed)

    # assert: one answer (the others were told to retry), one receipt, one charge
    answers = {o.answer.payload for o in outcomes if isinstance(o, pb_node.AnswerResponse)}
    refusals = [o for o in outcomes if isinstance(o, grpc.RpcError)]
    assert answers == {after.answer.payload}
    assert all(
        (r.code(), r.details()) == (grpc.StatusCode.UNAVAILABLE, IN_PROGRESS) for r in refusals
    )
    assert receipts_for(ledger, request.query_id) == [("answered", answer_digest(after))]
    assert rate_used(ledger, RATED_RULE) == before + 1


# --- state of an earlier release ---------------------------------------------------------------

LEGACY_REPLAY_SCHEMA = """
CREATE TABLE seen_nonce (
    nonce BLOB PRIMARY KEY, digest BLOB NOT NULL, expires_at_ms INTEGER NOT NULL,
    answer_payload BLOB, answer_type TEXT, answer_key_id TEXT, answer_signature BLOB,
    peer TEXT, query_id TEXT
);
CREATE TABLE answered_query (query_id TEXT PRIMARY KEY, digest BLOB NOT NULL);
"""
LEGACY_RATES_SCHEMA = """
CREATE TABLE usage (rule_id TEXT NOT NULL, scope_key TEXT NOT NULL, at_ms INTEGER NOT NULL,
    cost INTEGER NOT NULL);
"""


def test_replay_records_and_rate_usage_of_an_earlier_release_are_taken_in(
    federation_template: Path, federation_dir: Path, tmp_path: Path
) -> None:
    # prepare: an answer made elsewhere by the same node key, kept in the files
    # an earlier release wrote, and an investigator who used up the hourly limit
    key = gateway_signing_key(federation_dir)
    state = node_state_dir(federation_dir, NODE_ID)
    earlier = make_request(sha256_match("12" * 32), audience=(NODE_ID,))
    signed = sign_request(key, earlier)
    elsewhere = tmp_path / "elsewhere"
    shutil.copytree(federation_template, elsewhere)
    with running_node(node_config_file(elsewhere, NODE_ID)) as node:
        kept = call_node(node.address, signed)
    nonce_row = read_receipts_db(
        node_receipts_file(elsewhere, NODE_ID),
        "SELECT nonce, digest, expires_at_ms, answer_payload, answer_type, answer_key_id, "
        "answer_signature, peer, query_id FROM liaison_node_seen_nonce WHERE query_id = ?",
        earlier.query_id.encode(),
    )
    state.mkdir(mode=0o700, exist_ok=True)
    replay = sqlite3.connect(state / "replay.sqlite3")
    replay.executescript(LEGACY_REPLAY_SCHEMA)
    # The earlier release kept query ids as text, and answers unsealed.
    state_elsewhere = node_state_dir(elsewhere, NODE_ID)
    legacy_rows = [
        (
            *row[:3],
            unseal_answer(state_elsewhere, bytes(row[3]), bytes(row[0]), bytes(row[1])),
            *row[4:8],
            bytes(row[8]).decode(),
        )
        for row in nonce_row
    ]
    replay.executemany("INSERT INTO seen_nonce VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", legacy_rows)
    replay.execute("INSERT INTO answered_query VALUES (?, ?)", (earlier.query_id, nonce_row[0][1]))
    replay.commit()
    replay.close()
    rates = sqlite3.connect(state / "rates.sqlite3")
    rates.executescript(LEGACY_RATES_SCHEMA)
    limit = RateLimit(RateScope.INVESTIGATOR, 2000, 3600)
    rates.execute(
        "INSERT INTO usage VALUES (?, ?, ?, ?)",
        (RATED_RULE, scope_key(limit, INVESTIGATOR), time.time_ns() // 1_000_000, 2000),
    )
    rates.commit()
    rates.close()
    reused = make_request(sha256_match("34" * 32), audience=(NODE_ID,), query_id=earlier.query_id)
    fresh = make_request(sha256_match("56" * 32), audience=(NODE_ID,))

    # execute
    with running_node(node_config_file(federation_dir, NODE_ID)) as node:
        retried = call_node(node.address, signed)
        reused_refusal = node_refusal(node.address, sign_request(key, reused))
        limited = call_node(node.address, sign_request(key, fresh))

    # assert: the old answer comes back, the old query id stays taken, the old usage
    # counts, and the old files are gone
    assert retried == kept
    assert reused_refusal.code() == grpc.StatusCode.ALREADY_EXISTS
    assert b"rate limit of rule partner-hash-match reached" in limited.answer.payload
    assert not list(state.glob("replay.sqlite3*"))
    assert not list(state.glob("rates.sqlite3*"))


# --- owner-only, and nothing released in a copy ---------------------------------------------------


def test_a_copy_of_the_receipts_ledger_holds_no_released_answer(federation_dir: Path) -> None:
    # prepare: the node keeps each answer for retries beside its receipts; an
    # auditor is handed a copy of that file
    key = gateway_signing_key(federation_dir)
    state = node_state_dir(federation_dir, NODE_ID)
    requests = [make_request(sha256_match(f"{n:02x}" * 32), audience=(NODE_ID,)) for n in range(3)]

    # execute
    with running_node(node_config_file(federation_dir, NODE_ID)) as node:
        answers = [call_node(node.address, sign_request(key, r)) for r in requests]
        retried = call_node(node.address, sign_request(key, requests[0]))
        copied = b"".join(p.read_bytes() for p in state.glob("receipts.sqlite3*"))

    # assert: the retry still gets its stored answer, yet no answer's bytes are in the copy
    assert retried == answers[0]
    for response in answers:
        assert response.answer.payload not in copied
    assert {p.name for p in state.glob(SEAL_KEY_FILE)} == {SEAL_KEY_FILE}
    assert mode(state / SEAL_KEY_FILE) == 0o600


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_the_receipts_ledger_holding_released_answers_is_owner_only(
    federation_dir: Path,
) -> None:
    # prepare: a receipts file left world-readable by an earlier release
    state = node_state_dir(federation_dir, NODE_ID)
    ledger = node_receipts_file(federation_dir, NODE_ID)
    state.mkdir(mode=0o755)
    os.chmod(state, 0o755)  # noqa: S103 - the open state folder of an older release
    ledger.touch()
    os.chmod(ledger, 0o644)
    signed = sign_request(
        gateway_signing_key(federation_dir),
        make_request(sha256_match("78" * 32), audience=(NODE_ID,)),
    )

    # execute
    with running_node(node_config_file(federation_dir, NODE_ID)) as node:
        call_node(node.address, signed)

        # assert: while the node runs, with the -wal and -shm SQLite made beside it
        assert mode(state) == 0o700
        files = list(state.glob("receipts.sqlite3*"))
        assert {p.name for p in files} >= {"receipts.sqlite3", "receipts.sqlite3-wal"}
        assert {p.name: mode(p) for p in files} == {p.name: 0o600 for p in files}


# --- the receipts ledger's timeouts --------------------------------------------------------------


def set_ledger_keys(config: Path, **values: str | int) -> None:
    """Set ``values`` in the [ledger] table of the node config at ``config`` (replacing any)."""
    lines = config.read_text().splitlines()
    start = lines.index("[ledger]") + 1
    end = next((i for i in range(start, len(lines)) if lines[i].startswith("[")), len(lines))
    kept = [line for line in lines[start:end] if line.partition("=")[0].strip() not in values]
    # JSON's strings and integers are TOML's too.
    given = [f"{key} = {json.dumps(value)}" for key, value in values.items()]
    config.write_text("\n".join([*lines[:start], *given, *kept, *lines[end:]]) + "\n")


def test_a_node_takes_the_write_timeout_of_its_receipts_ledger_from_its_config(
    federation_dir: Path,
) -> None:
    # prepare
    config = node_config_file(federation_dir, NODE_ID)
    set_ledger_keys(config, write_timeout_s=2)

    # execute
    loaded = load_node_config(config, CATALOG_V1)
    with running_node(config) as node:
        in_force = node.core.receipts.write_timeout_s

    # assert: the write timeout is the config's, in the ledger the node opened too;
    # the other timeouts keep their defaults
    assert loaded.ledger_timeouts.write_s == 2
    assert loaded.ledger_timeouts == LedgerTimeouts(write_s=2)
    assert in_force == 2


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("write_timeout_s", 0),
        ("write_timeout_s", 999),
        ("connect_timeout_s", 0),
        ("statement_timeout_s", 0),
    ],
)
def test_a_receipts_ledger_timeout_out_of_range_is_refused_naming_the_key(
    federation_dir: Path, key: str, value: int
) -> None:
    # prepare
    config = node_config_file(federation_dir, NODE_ID)
    set_ledger_keys(config, **{key: value})

    # execute / assert
    expected = f"{config.resolve()} [ledger]: `{key}` must be a whole number in 1.."
    with pytest.raises(ConfigError, match=re.escape(expected)):
        load_node_config(config, CATALOG_V1)


# --- PostgreSQL ----------------------------------------------------------------------------------


def postgresql_receipts(root: Path, url: str, **ledger: int) -> Path:
    """Ruritania's config with its receipts ledger at ``url`` (and ``ledger`` set in [ledger])."""
    config = node_config_file(root, NODE_ID)
    set_ledger_keys(config, location=url, **ledger)
    return config


@pytest.mark.postgresql
def test_a_postgresql_receipts_ledger_keeps_the_replay_records_and_the_rate_usage(
    federation_dir: Path, postgres_url: str
) -> None:
    # prepare: Ruritania's receipts in PostgreSQL
    config = postgresql_receipts(federation_dir, postgres_url)
    key = gateway_signing_key(federation_dir)
    first = make_request(sha256_match("9a" * 32), audience=(NODE_ID,))
    reused = make_request(sha256_match("bc" * 32), audience=(NODE_ID,), query_id=first.query_id)

    # execute: answered, retried, and after a restart asked again under the same id
    with running_node(config) as node:
        answered = call_node(node.address, sign_request(key, first))
        retried = call_node(node.address, sign_request(key, first))
    with running_node(config) as node:
        refusal = node_refusal(node.address, sign_request(key, reused))

    # assert: the retry got the stored answer, the id stayed taken across the restart
    assert retried == answered
    assert refusal.code() == grpc.StatusCode.ALREADY_EXISTS
    engine = sa.create_engine(postgres_url)
    try:
        with engine.connect() as conn:
            nonces = conn.execute(
                sa.text("SELECT count(*) FROM liaison_node_seen_nonce WHERE query_id = :q"),
                {"q": first.query_id.encode()},
            ).scalar_one()
            charged = conn.execute(
                sa.text("SELECT count(*) FROM liaison_node_rate_usage WHERE rule_id = :r"),
                {"r": RATED_RULE.encode()},
            ).scalar_one()
    finally:
        engine.dispose()
    assert (nonces, charged) == (1, 1)
    assert receipts_for(postgres_url, first.query_id) == [("answered", answer_digest(answered))]


@pytest.mark.postgresql
def test_a_receipts_database_that_stops_answering_is_cut_off_and_answers_nothing_twice(
    federation_dir: Path, postgres_url: str
) -> None:
    # prepare: the receipts database behind a proxy that can make it hang
    url = sa.make_url(postgres_url)
    request = make_request(sha256_match("ef" * 32), audience=(NODE_ID,), ttl_ms=120_000)
    signed = sign_request(gateway_signing_key(federation_dir), request)
    with tcp_proxy(url.port or 5432) as proxy:
        through = url.set(host="127.0.0.1", port=proxy.port).render_as_string(False)
        config = postgresql_receipts(
            federation_dir, through, write_timeout_s=WRITE_TIMEOUT_S, connect_timeout_s=1
        )
        with running_node(config) as node:
            # execute: the database stops answering, its connections still open
            proxy.stop()
            try:
                started = time.monotonic()
                first = node_refusal(node.address, signed, 30)
                first_s = time.monotonic() - started
                second = node_refusal(node.address, signed, 30)
            finally:
                proxy.resume()
            answered = answer_when_settled(node.address, signed, 60)
            again = call_node(node.address, signed)

    # assert: refused once the write and connect timeouts (1 s each) have passed,
    # not held forever; then answered once, with one receipt, and the retry gets
    # the same answer
    assert first.code() == second.code() == grpc.StatusCode.UNAVAILABLE
    assert first_s < 15
    assert again == answered
    assert receipts_for(postgres_url, request.query_id) == [("answered", answer_digest(answered))]


@pytest.mark.postgresql
def test_a_commit_held_up_past_the_write_timeout_leaves_one_answer_and_one_receipt(
    federation_dir: Path, postgres_url: str
) -> None:
    # prepare: another session blocks writes of replay records (reads still work).
    # The checkpoint interval stays long: the ledger must probe its database again
    # one retry interval after the timeout, not wait for its next checkpoint.
    config = postgresql_receipts(federation_dir, postgres_url, write_timeout_s=WRITE_TIMEOUT_S)
    request = make_request(sha256_match("fe" * 32), audience=(NODE_ID,), ttl_ms=120_000)
    signed = sign_request(gateway_signing_key(federation_dir), request)
    engine = sa.create_engine(postgres_url)
    try:
        with running_node(config) as node:
            with engine.connect() as blocker:
                blocker.execute(sa.text("LOCK TABLE liaison_node_seen_nonce IN EXCLUSIVE MODE"))
                # execute: the commit waits past the write timeout, however it then ends
                first = node_refusal(node.address, signed, 30)
                blocker.rollback()
            released = time.monotonic()
            answered = answer_when_settled(node.address, signed, 60)
            recovered_s = time.monotonic() - released
            again = call_node(node.address, signed)
    finally:
        engine.dispose()

    # assert
    assert first.code() == grpc.StatusCode.UNAVAILABLE
    assert again == answered
    assert receipts_for(postgres_url, request.query_id) == [("answered", answer_digest(answered))]
    # Writable again within a few retry intervals, not at the next checkpoint (30 s).
    assert recovered_s < 10
