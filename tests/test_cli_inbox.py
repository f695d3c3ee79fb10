"""`liaison node inbox` and `liaison node decide`, as a duty officer runs them.

Freedonia's node runs as a real process (`liaison node serve`), which publishes
its inbox address in its state folder; follow-up requests are signed, logged
and delivered here as a gateway would; the commands run as subprocesses.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from liaison.demo.data import probes
from liaison.followup_wire import ack_from_bytes
from liaison.wire import answer_from_bytes
from tests.support import (
    Process,
    assert_one_line_error,
    call_node,
    gateway_signing_key,
    investigator_token,
    liaison,
    make_request,
    node_config_file,
    sha256_match,
    sign_request,
    spawn,
    terminate,
)
from tests.test_followup_node import HOLDER, deliver, followup, officer_token, signed


@dataclass
class Running:
    root: Path
    node: Process
    config: Path
    token_file: Path


@pytest.fixture
def running(federation_dir: Path) -> Iterator[Running]:
    config = node_config_file(federation_dir, HOLDER)
    run_dir = federation_dir / "run"
    run_dir.mkdir(exist_ok=True)
    node = spawn("node", HOLDER, config, run_dir)
    token_file = federation_dir / "officer.jwt"
    token_file.write_text(officer_token(federation_dir) + "\n")
    token_file.chmod(0o600)
    try:
        yield Running(federation_dir, node, config, token_file)
    finally:
        terminate(node)


def pending_request(r: Running) -> str:
    """A hit on Freedonia's file, then a follow-up on it, delivered; its id."""
    key = gateway_signing_key(r.root)
    query = make_request(sha256_match(probes().shared_sha256), audience=(HOLDER,))
    answer = answer_from_bytes(call_node(r.node.address, sign_request(key, query)).answer.payload)
    request = followup(query.query_id, answer.record_refs)
    ack = ack_from_bytes(deliver(r.node.address, signed(key, request)).payload)
    assert ack.accepted, ack.reason
    return request.followup_id


def officer(r: Running, *args: str | Path) -> tuple[str, ...]:
    return (*map(str, args), "--config", str(r.config), "--token-file", str(r.token_file))


def test_an_officer_lists_reads_and_decides_a_request(running: Running) -> None:
    r = running
    followup_id = pending_request(r)

    listed = liaison("node", "inbox", *officer(r))
    shown = liaison("node", "inbox", *officer(r, "--show", followup_id))
    decided = liaison(
        "node",
        "decide",
        followup_id,
        *officer(
            r,
            "--release",
            "first_seen=H2",
            "--refuse",
            "case_ref=our case file is under seal",
            "--reason",
            "the date now, the case through a formal request",
        ),
    )
    after = liaison("node", "inbox", *officer(r, "--show", followup_id, "--json"))
    left = liaison("node", "inbox", *officer(r, "--json"))

    assert listed.returncode == 0, listed
    (row,) = [line for line in listed.stdout.splitlines() if line.startswith(followup_id)]
    assert "genovia/inv.alice" in row and "immediate-risk" in row and "case_ref, first_seen" in row
    assert "in 60 min" in row or "in 59 min" in row
    assert shown.returncode == 0, shown
    assert "A child in the series may be at risk" in shown.stdout
    assert "may release case_ref, first_seen" in shown.stdout
    assert "what a release would hold:" in shown.stdout
    assert f"liaison node decide {followup_id}" in shown.stdout
    assert decided.returncode == 0, decided
    assert decided.stdout.startswith(f"follow-up {followup_id}: partial")
    assert "released first_seen [H2: not to be shared onward" in decided.stdout
    assert "refused  case_ref: our case file is under seal" in decided.stdout
    item = json.loads(after.stdout)
    assert item["status"] == "partial"
    fields = {f["field"]: f for f in item["decision"]["fields"]}
    assert fields["first_seen"]["handling"] == "H2" and fields["first_seen"]["released"]
    assert fields["case_ref"] == {
        "field": "case_ref",
        "released": False,
        "handling": None,
        "reason": "our case file is under seal",
    }
    assert json.loads(left.stdout) == {"items": []}


@pytest.mark.parametrize(
    ("args", "fragments", "code"),
    [
        (
            ("--release", "first_seen=H9"),
            ("the handling code of first_seen 'H9' is not one of", "H1 ("),
            1,
        ),
        (("--release", "md5"), ("'md5' was not asked for",), 1),
        ((), ("decide at least one field with --release or --refuse",), 2),
    ],
)
def test_a_decision_the_node_cannot_take_is_one_clear_line(
    running: Running, args: tuple[str, ...], fragments: tuple[str, ...], code: int
) -> None:
    followup_id = pending_request(running)

    run = liaison("node", "decide", followup_id, *officer(running, *args))

    assert run.returncode == code
    assert_one_line_error(run, *fragments)


def test_an_investigators_token_does_not_open_the_inbox(running: Running) -> None:
    running.token_file.write_text(investigator_token(running.root) + "\n")

    run = liaison("node", "inbox", *officer(running))

    assert_one_line_error(run, "is not trusted by node freedonia's inbox")


def test_a_node_not_running_has_no_inbox_address(federation_dir: Path) -> None:
    config = node_config_file(federation_dir, HOLDER)
    token = federation_dir / "officer.jwt"
    token.write_text(officer_token(federation_dir) + "\n")

    run = liaison("node", "inbox", "--config", config, "--token-file", token)

    assert_one_line_error(run, "has not published its inbox address", "is it running?")
