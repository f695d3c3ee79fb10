"""A ledger copy rolled back to an earlier checkpoint, and the audit that sees it (issue 9, B).

A prefix of a valid log is a valid log: deleting every entry after checkpoint
S, and every checkpoint after it, leaves a copy that verifies on its own. The
attack needs no key, only write access to the file. `liaison audit verify`
must say how far the copy goes and when that was signed, warn that nothing
vouches for more without a witness, and fail when a witness (a node's
receipts, a checkpoint saved earlier) saw more, or when the newest checkpoint
of a live ledger is older than allowed.

The history: a first run of the gateway and two nodes an hour ago, then a
second run now. The copy is cut back to the end of the first run.
"""

from __future__ import annotations

import itertools
import json
import re
import shutil
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from liaison.ledger import log as ledger_log
from tests.ledger_parties import Parties, parties
from tests.support import Run, liaison, now_ms

HOUR_MS = 3_600_000
FIRST_RUN = 3  # queries in the first run, an hour ago
SECOND_RUN = 3
# The first run: `opened`, then a request and an outcome per query.
ROLLED_BACK = 1 + 2 * FIRST_RUN
SIZE = ROLLED_BACK + 1 + 2 * SECOND_RUN


@dataclass(frozen=True, slots=True)
class History:
    parties: Parties
    # Sizes of the gateway checkpoints each node holds in its receipts.
    witnessed_sizes: tuple[int, ...]
    first_run_closed_ms: int


@pytest.fixture(scope="module")
def history_template(tmp_path_factory: pytest.TempPathFactory) -> History:
    party = parties(tmp_path_factory.mktemp("rollback") / "federation")
    start = now_ms() - HOUR_MS
    readings = itertools.count(start, 1_000)  # an hour ago, a second per reading
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(ledger_log, "now_ms", lambda: next(readings))
        with party.session() as first:
            for _ in range(FIRST_RUN):
                first.ask()
    closed = next(readings) - 1_000
    with party.session() as second:
        for _ in range(SECOND_RUN):
            second.ask()
    return History(party, tuple(a.checkpoint_size for a in party.asked), closed)


@pytest.fixture
def history(history_template: History, tmp_path: Path) -> History:
    root = tmp_path / "federation"
    shutil.copytree(history_template.parties.root, root)
    p = history_template.parties
    return History(
        Parties(root, p.gateway_key, p.node_keys, list(p.asked)),
        history_template.witnessed_sizes,
        history_template.first_run_closed_ms,
    )


def roll_back(path: Path, size: int) -> None:
    """Delete every entry from ``size`` on and every checkpoint past it, as a plain sqlite3 user."""
    conn = sqlite3.connect(path)
    try:
        with conn:
            conn.execute("DELETE FROM liaison_ledger_entries WHERE idx >= ?", (size,))
            conn.execute("DELETE FROM liaison_ledger_checkpoints WHERE size > ?", (size,))
    finally:
        conn.close()


@pytest.fixture
def rolled_back(history: History) -> History:
    roll_back(history.parties.gateway_ledger, ROLLED_BACK)
    return history


def verify(history: History, *args: str | Path) -> Run:
    p = history.parties
    return liaison("audit", "verify", p.gateway_ledger, "--key", p.gateway_pub, *args, cwd=p.root)


def verify_json(history: History, *args: str | Path) -> dict[str, Any]:
    run = verify(history, *args, "--json")
    assert "Traceback" not in run.stderr, run.stderr
    doc: dict[str, Any] = json.loads(run.stdout)
    assert run.returncode == (0 if doc["ok"] else 1), run
    return doc


def lines(run: Run) -> Iterator[str]:
    yield from run.stdout.strip().splitlines()


def test_the_rolled_back_copy_verifies_alone_but_says_how_far_and_warns(
    rolled_back: History,
) -> None:
    # execute
    run = verify(rolled_back)

    # assert: still VERIFIED (a prefix is a valid log), but the verdict names its
    # size and age, and a warning says that a longer log cannot be ruled out
    assert run.returncode == 0, run
    *_, verdict = lines(run)
    assert re.fullmatch(
        "VERIFIED: every entry, the tree and every checkpoint check out, up to the newest "
        rf"checkpoint: {ROLLED_BACK} entries signed \S+Z \((59|6\d) min ago\); no witness, so a "
        "longer log may exist",
        verdict,
    ), verdict
    assert (
        f"WARNING  witnesses: none given: this copy shows that its {ROLLED_BACK} entries are a "
        "log signed by the key, not that the log ends there; a copy rolled back to an earlier "
        "checkpoint verifies just the same."
    ) in run.stdout


def test_the_rolled_back_copy_in_json(rolled_back: History) -> None:
    doc = verify_json(rolled_back)

    assert doc["ok"] is True
    assert doc["entries"] == ROLLED_BACK
    latest = doc["latest_checkpoint"]
    assert latest["size"] == ROLLED_BACK
    assert latest["time_ms"] == rolled_back.first_run_closed_ms
    assert HOUR_MS / 1000 - 120 < latest["age_s"] < HOUR_MS / 1000 + 600
    assert doc["witnessed_checkpoint"] is None
    assert doc["witnesses"] == []
    assert doc["max_age_s"] is None
    assert [w["where"] for w in doc["warnings"]] == ["witnesses"]


@pytest.mark.parametrize("node", ["freedonia", "ruritania"])
def test_a_nodes_receipts_as_witness_fail_the_rolled_back_copy(
    rolled_back: History, node: str
) -> None:
    # prepare
    receipts = rolled_back.parties.receipts(node)

    # execute
    run = verify(rolled_back, "--witness", receipts)
    doc = verify_json(rolled_back, "--witness", receipts)

    # assert: one problem for each checkpoint the node was shown past the cut
    assert run.returncode == 1, run
    later = sorted({s for s in rolled_back.witnessed_sizes if s > ROLLED_BACK})
    assert len(later) == SECOND_RUN
    problems = doc["problems"]
    assert [p["index"] for p in problems] == [ROLLED_BACK] * len(later)
    for problem, size in zip(problems, later, strict=True):
        assert problem["where"].startswith(f"witness {receipts} entry ")
        assert f"(size {size}, time " in problem["where"]
        assert problem["message"] == (
            f"the witness saw {size} entries, the ledger now holds {ROLLED_BACK}: entries "
            f"{ROLLED_BACK}..{size - 1} were removed (truncated): this copy was cut short or "
            "rolled back to an earlier checkpoint; ask the ledger's operator for the whole "
            "ledger and why this copy lacks them"
        )
    assert run.stdout.strip().splitlines()[-1] == (
        f"FAILED: {len(later)} problem(s); the first is at {problems[0]['where']}"
    )
    (witness,) = doc["witnesses"]
    assert witness["checkpoints_of_this_log"] == len(set(rolled_back.witnessed_sizes))
    assert witness["checkpoints_verified"] == FIRST_RUN


def test_a_checkpoint_saved_at_an_earlier_audit_fails_the_rolled_back_copy(
    history: History,
) -> None:
    # prepare: the auditor saved the newest checkpoint last time
    saved = history.parties.root.parent / "seen.checkpoint"
    first = verify(history, "--save-checkpoint", saved)
    assert first.returncode == 0, first
    roll_back(history.parties.gateway_ledger, ROLLED_BACK)

    # execute
    run = verify(history, "--checkpoint", saved)

    # assert
    assert run.returncode == 1, run
    time_ms = saved.read_text().splitlines()[3].split()[1]
    where = f"kept checkpoint 1 (size {SIZE}, time {time_ms})"
    assert (
        f"PROBLEM  {where}: you saw {SIZE} entries, the ledger now holds {ROLLED_BACK}: entries "
        f"{ROLLED_BACK}..{SIZE - 1} were removed (truncated): this copy was cut short or rolled "
        "back to an earlier checkpoint"
    ) in run.stdout
    assert list(lines(run))[-1] == f"FAILED: 1 problem(s); the first is at {where}"


def test_max_age_fails_the_rolled_back_copy_of_a_live_ledger(rolled_back: History) -> None:
    # execute
    run = verify(rolled_back, "--max-age", "600")

    # assert
    assert run.returncode == 1, run
    where = f"newest checkpoint (size {ROLLED_BACK}, time {rolled_back.first_run_closed_ms})"
    (problem,) = [line for line in lines(run) if line.startswith("PROBLEM")]
    assert re.fullmatch(
        rf"PROBLEM  {re.escape(where)}: signed (59|6\d) min ago, expected at most 600 s for a live "
        "ledger: its writer stopped signing, or this copy was rolled back to an earlier "
        r"checkpoint; fetch a fresh copy, and check it against a witness \(a node's receipts\)",
        problem,
    ), problem
    assert list(lines(run))[-1] == f"FAILED: 1 problem(s); the first is at {where}"


def test_the_whole_ledger_passes_with_witnesses_and_max_age(history: History) -> None:
    # execute
    p = history.parties
    witnesses = [a for node in p.node_keys for a in ("--witness", p.receipts(node))]
    run = verify(history, *witnesses, "--max-age", "600")
    doc = verify_json(history, *witnesses, "--max-age", "600")

    # assert: the receipts saw every request, the closing checkpoint adds the last outcome
    assert run.returncode == 0, run
    largest = max(history.witnessed_sizes)
    assert largest == SIZE - 1
    assert list(lines(run))[-1].endswith(f" ago); witnesses saw {largest} of them, none saw more")
    assert doc["ok"] is True
    assert doc["max_age_s"] == 600
    assert doc["witnessed_checkpoint"]["size"] == largest
    assert [w["largest"]["size"] for w in doc["witnesses"]] == [largest, largest]
    # The hour between the two runs shows as a stopped log; no witness warning.
    (warning,) = doc["warnings"]
    assert warning["where"].startswith(f"checkpoint #3 (size {ROLLED_BACK + 1}, ")
    assert re.match(
        r"no checkpoint for 3\d{3} s before it \(one is signed every 30 s\)", warning["message"]
    )


def test_a_witness_that_holds_no_checkpoint_of_this_log_witnesses_nothing(
    history: History,
) -> None:
    # prepare: a node's receipts ledger, verified with a node's ledger as "witness"
    p = history.parties
    other = p.receipts("freedonia")

    # execute
    run = liaison(
        "audit",
        "verify",
        p.receipts("ruritania"),
        "--key",
        p.node_pub("ruritania"),
        "--witness",
        other,
        cwd=p.root,
    )

    # assert
    assert run.returncode == 0, run
    assert (
        f"WARNING  witness {other}: holds no checkpoint of log liaison.node/ruritania, so it "
        "witnesses nothing for this ledger"
    ) in run.stdout
    assert "WARNING  witnesses: none holds a checkpoint of this log: " in run.stdout


@pytest.mark.parametrize("value", ["0", "-5", "soon", "inf"])
def test_max_age_must_be_a_positive_number_of_seconds(history: History, value: str) -> None:
    run = verify(history, "--max-age", value)

    assert run.returncode == 2, run
    assert "is not a number of seconds above 0" in run.stderr


def test_a_copy_whose_origin_was_changed_does_not_shed_its_witnesses(
    rolled_back: History,
) -> None:
    # prepare: besides the cut, the copy's unsigned origin is renamed, so that
    # a verifier filtering witness checkpoints by origin would skip them all
    conn = sqlite3.connect(rolled_back.parties.gateway_ledger)
    try:
        with conn:
            conn.execute("DELETE FROM liaison_ledger_checkpoints")
            conn.execute("UPDATE liaison_ledger_meta SET value = 'x' WHERE name = 'origin'")
    finally:
        conn.close()
    receipts = rolled_back.parties.receipts("ruritania")

    # execute
    doc = verify_json(rolled_back, "--witness", receipts, "--allow-unsigned-tail")

    # assert: checkpoints this key signed under another origin are problems, not skipped
    assert doc["ok"] is False
    messages = {p["message"] for p in doc["problems"]}
    assert any(
        m.startswith("holds a checkpoint signed by this ledger's key for origin ")
        and m.endswith(
            "but the copy names its origin 'x': the copy's origin was changed, or one key "
            "signs two logs; verify with the origin the key's owner publishes"
        )
        for m in messages
    ), messages
