"""`liaison followup request|show` and `liaison followups`, run as a user runs them.

A real federation (nodes, Freedonia's officers' inbox, gateway) in this
process; the commands in child processes, as `python -m liaison`, with the
demo folder's gateway address, token and node keys (``--federation``).
"""

from __future__ import annotations

import re
import shutil
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from liaison.cli.exits import ExitCode
from liaison.handling import MEANINGS, HandlingCode
from liaison.keys import SigningKey
from tests.support import REPO, Run, assert_one_line_error, investigator_token, liaison
from tests.test_followup_gateway import CASE, HOLDER, PURPOSE, Holding, decide_partly, holding

H1_MEANING = MEANINGS[HandlingCode.H1]


@pytest.fixture(scope="module")
def held(federation_template: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Holding]:
    """A federation whose demo folder names its gateway and investigator, as the demo's does."""
    root = tmp_path_factory.mktemp("followup-cli") / "federation"
    shutil.copytree(federation_template, root)
    with holding(root) as h:
        (root / "run").mkdir(exist_ok=True)
        (root / "run" / "gateway.addr").write_text(h.gateway + "\n")
        (root / "investigator.jwt").write_text(investigator_token(root) + "\n")
        yield h


def hit(h: Holding) -> tuple[str, str]:
    """`liaison query` for the shared file at Freedonia: the query id and the ref it names."""
    run = liaison(
        "query",
        "media",
        "--match",
        "--where",
        f"sha256={h.shared_sha256}",
        "--purpose",
        PURPOSE,
        "--case-ref",
        CASE,
        "--nodes",
        HOLDER,
        "--federation",
        h.root,
        "--json",
    )
    assert run.returncode == 0, run.stderr
    result = run.json()
    (answer,) = [r["answer"] for r in result["results"] if r["node_id"] == HOLDER]
    (ref,) = answer["record_refs"]
    return str(result["query_id"]), str(ref)


def request(h: Holding, *extra: str | Path, fields: str = "case_ref,first_seen") -> Run:
    query_id, ref = hit(h)
    return liaison(
        "followup",
        "request",
        "--query-id",
        query_id,
        "--node",
        HOLDER,
        "--ref",
        ref,
        "--fields",
        fields,
        "--purpose",
        PURPOSE,
        "--case-ref",
        CASE,
        "--urgency",
        "urgent",
        "--text",
        "Child may be at risk in Genovia.",
        "--federation",
        h.root,
        *extra,
    )


def filed_id(h: Holding, fields: str = "case_ref,first_seen") -> str:
    run = request(h, "--json", fields=fields)
    assert run.returncode == ExitCode.OK, run
    shown: dict[str, Any] = run.json()
    return str(shown["followup_id"])


def test_request_files_it_and_shows_the_signed_acknowledgement(held: Holding) -> None:
    run = request(held)

    assert run.returncode == ExitCode.OK, run
    head = run.stdout.splitlines()[0]
    assert head.startswith("filed: follow-up ") and head.endswith(f" to {HOLDER}: pending")
    text = run.stdout
    assert re.search(r"\n  asked for +case_ref, first_seen\n", text)
    assert "the agency took it in" in text
    assert f"verified against {HOLDER}'s key (--federation {held.root})" in text
    assert "liaison followup show " in text and "--wait 60" in text


def test_request_json_says_what_was_asked_and_verified(held: Holding) -> None:
    run = request(held, "--json")

    assert run.returncode == ExitCode.OK, run
    shown = run.json()
    assert shown["status"] == "pending" and shown["overdue"] is False
    assert shown["request"]["fields"] == ["case_ref", "first_seen"]
    assert shown["request"]["urgency"] == "urgent"
    assert shown["acknowledgement"]["accepted"] is True
    assert shown["decision"] is None
    assert shown["verification"] == {"verdict": "verified", "reason": None}


def test_show_gives_every_released_value_with_its_handling_code(held: Holding) -> None:
    followup_id = filed_id(held)
    pending = liaison("followup", "show", followup_id, "--federation", held.root)
    assert pending.returncode == ExitCode.SOME_NOT_ANSWERED, pending
    assert f"waiting for a duty officer at {HOLDER}" in pending.stdout

    decide_partly(held, followup_id)
    run = liaison("followup", "show", followup_id, "--federation", held.root)

    assert run.returncode == ExitCode.OK, run
    text = run.stdout
    assert f"follow-up {followup_id} to {HOLDER}: partial" in text
    assert "by duty.fred" in text and "after filing" in text
    released = text.split("released (each value with the holding agency's handling code):")[1]
    (line,) = [x for x in released.splitlines() if x.strip().startswith("case_ref")]
    assert line.rstrip().endswith(f"[H1: {H1_MEANING}]")
    assert "refused:" in text and "first_seen  ongoing operation" in text
    assert "reason" in text and "case number only" in text
    assert f"verified against {HOLDER}'s key" in text


def test_show_json_keeps_the_handling_code_with_every_value(held: Holding) -> None:
    followup_id = filed_id(held)
    decide_partly(held, followup_id)

    run = liaison("followup", "show", followup_id, "--federation", held.root, "--json")

    assert run.returncode == ExitCode.OK, run
    shown = run.json()
    decision = shown["decision"]
    assert shown["status"] == decision["outcome"] == "partial"
    (record,) = decision["records"]
    assert set(record) == {"case_ref"}
    assert record["case_ref"]["handling"] == "H1" and record["case_ref"]["value"]
    assert decision["handling_codes"] == {"H1": f"H1: {H1_MEANING}"}
    fields = {f["field"]: f for f in decision["fields"]}
    assert fields["first_seen"] == {
        "field": "first_seen",
        "released": False,
        "handling": None,
        "reason": "ongoing operation",
    }
    assert decision["officer"] == "duty.fred"
    assert shown["verification"]["verdict"] == "verified"


def test_show_wait_polls_until_the_officer_decides(held: Holding) -> None:
    followup_id = filed_id(held)
    command = [sys.executable, "-m", "liaison", "followup", "show", followup_id]
    with subprocess.Popen(
        [*command, "--wait", "60", "--federation", str(held.root)],
        cwd=REPO,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    ) as waiting:
        assert waiting.stderr is not None
        # Decided only once the command is seen waiting.
        first = waiting.stderr.readline()
        decide_partly(held, followup_id)
        out, rest = waiting.communicate(timeout=60)

    assert waiting.returncode == ExitCode.OK, (out, first + rest)
    assert first.startswith(f"waiting for {HOLDER}'s decision on {followup_id}: ")
    assert f"{HOLDER} decided: partial" in rest
    assert out.splitlines()[0].endswith(": partial")


def test_show_wait_runs_out_on_a_pending_request(held: Holding) -> None:
    followup_id = filed_id(held, fields="category")
    started = time.monotonic()

    run = liaison("followup", "show", followup_id, "--wait", "2", "--federation", held.root)

    assert run.returncode == ExitCode.SOME_NOT_ANSWERED, run
    assert time.monotonic() - started >= 2
    assert "still pending after 2s" in run.stderr


def test_followups_lists_yours_newest_first_and_marks_the_overdue(held: Holding) -> None:
    older = filed_id(held, fields="category")
    newer = filed_id(held, fields="first_seen")
    # As if the urgent request's day were over: the gateway's own row says when it is due.
    ledger = held.root / "gateway" / "ledger.sqlite3"
    conn = sqlite3.connect(ledger, timeout=10)
    try:
        with conn:
            conn.execute(
                "UPDATE liaison_gateway_followup SET answer_by_ms = 1000 WHERE followup_id = ?",
                (older,),
            )
    finally:
        conn.close()

    listed = liaison("followups", "--federation", held.root)
    overdue = liaison("followups", "--overdue", "--federation", held.root, "--json")

    assert listed.returncode == ExitCode.OK, listed
    lines = listed.stdout.splitlines()
    assert lines[0].split()[:3] == ["id", "agency", "status"]
    ids = [line.split()[0] for line in lines[2:] if line and line.split()[0] in (older, newer)]
    assert ids == [newer, older]
    (older_line,) = [line for line in lines if line.startswith(older)]
    assert "pending, OVERDUE" in older_line and "verified" in older_line
    assert "1 OVERDUE: past the answer-by time" in listed.stdout
    assert overdue.returncode == ExitCode.OK, overdue
    shown = overdue.json()
    assert shown["overdue_only"] is True
    assert [f["followup_id"] for f in shown["followups"]] == [older]
    assert shown["followups"][0]["overdue"] is True


def test_another_investigator_is_told_there_is_no_such_request(
    held: Holding, tmp_path: Path
) -> None:
    followup_id = filed_id(held)
    bob = tmp_path / "bob.jwt"
    bob.write_text(investigator_token(held.root, subject="inv.bob") + "\n")

    run = liaison("followup", "show", followup_id, "--gateway", held.gateway, "--token-file", bob)

    assert run.returncode == ExitCode.ERROR
    assert_one_line_error(run, f"no follow-up request '{followup_id}' of yours")
    listed = liaison("followups", "--gateway", held.gateway, "--token-file", bob, "--json")
    assert listed.returncode == ExitCode.OK, listed
    assert followup_id not in {f["followup_id"] for f in listed.json()["followups"]}


def test_a_signature_not_the_agencys_is_not_verified(held: Holding, tmp_path: Path) -> None:
    followup_id = filed_id(held)
    decide_partly(held, followup_id)
    # The investigator holds another key for Freedonia than the one it signs with.
    keys = tmp_path / "keys"
    keys.mkdir()
    SigningKey.generate().write(tmp_path / "other.key", keys / f"{HOLDER}.pub")

    run = liaison("followup", "show", followup_id, "--federation", held.root, "--node-keys", keys)

    assert run.returncode == ExitCode.NOT_VERIFIED, run
    assert "NOT VERIFIED" in run.stdout
    assert "released values not shown" in run.stdout
    assert "[H1:" not in run.stdout


def test_without_keys_nothing_is_checked_and_it_says_so(held: Holding) -> None:
    followup_id = filed_id(held)

    run = liaison(
        "followup",
        "show",
        followup_id,
        "--gateway",
        held.gateway,
        "--token-file",
        held.root / "investigator.jwt",
        "--json",
    )

    assert run.returncode == ExitCode.SOME_NOT_ANSWERED, run
    assert run.json()["verification"]["verdict"] == "not checked"


@pytest.mark.parametrize(
    ("changes", "fragment"),
    [
        (("--fields", "shoe_size"), "unknown field(s) 'shoe_size': not in the catalog"),
        (("--purpose", "curiosity"), "unknown purpose 'curiosity'"),
        (("--ref", "r-" + "A" * 80), "is not one a node issues"),
    ],
)
def test_a_bad_request_is_refused_here_and_nothing_is_sent(
    held: Holding, changes: tuple[str, str], fragment: str
) -> None:
    args = {
        "--query-id": "q-1",
        "--node": HOLDER,
        "--ref": "r-ABC",
        "--fields": "case_ref",
        "--purpose": PURPOSE,
        "--case-ref": CASE,
        "--urgency": "routine",
    }
    args[changes[0]] = changes[1]
    flat = [part for pair in args.items() for part in pair]
    before = _followup_rows(held)

    run = liaison("followup", "request", *flat, "--federation", held.root)

    assert run.returncode == ExitCode.USAGE, run
    assert_one_line_error(run, fragment)
    assert _followup_rows(held) == before


def test_an_unknown_urgency_is_a_usage_error(held: Holding) -> None:
    run = liaison(
        "followup",
        "request",
        "--query-id",
        "q",
        "--node",
        HOLDER,
        "--ref",
        "r-A",
        "--fields",
        "case_ref",
        "--purpose",
        PURPOSE,
        "--case-ref",
        CASE,
        "--urgency",
        "whenever",
        "--federation",
        held.root,
    )
    assert run.returncode == ExitCode.USAGE
    assert "invalid choice: 'whenever'" in run.stderr


def _followup_rows(h: Holding) -> int:
    conn = sqlite3.connect(f"file:{h.root / 'gateway' / 'ledger.sqlite3'}?mode=ro", uri=True)
    try:
        ((count,),) = conn.execute("SELECT COUNT(*) FROM liaison_gateway_followup").fetchall()
    except sqlite3.OperationalError:
        return 0  # no follow-up filed yet: the table is made with the first
    finally:
        conn.close()
    return int(count)
