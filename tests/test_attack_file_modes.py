"""Secrets and caches of released data are owner-only (issue 9, item 4).

A bearer token lets whoever reads it ask as the investigator; a node's
receipts ledger keeps the answers it released lately (its replay records) and
its rate usage; its aggregate file says who asked what. None of them may be
readable by other local users.
"""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

from liaison.cli.main import main as cli_main
from liaison.keys import SigningKey
from liaison.query import Comparator, Operation, Predicate, Query
from tests.support import call_node, make_request, running_node, sign_request

STATE_FILES = ("receipts.sqlite3", "aggregates.sqlite3")


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def assert_private_state(state: Path) -> None:
    assert mode(state) == 0o700, state
    for name in STATE_FILES:
        assert (state / name).exists(), name
        for path in state.glob(f"{name}*"):  # with any -wal and -shm
            assert mode(path) == 0o600, path


def test_node_state_is_owner_only_after_answering(federation_dir: Path) -> None:
    # prepare: state left world-readable by an earlier release
    state = federation_dir / "nodes" / "ruritania" / "state"
    state.mkdir(mode=0o755)
    os.chmod(state, 0o755)  # noqa: S103 - the world-readable state of an older release
    (state / "receipts.sqlite3").touch()
    os.chmod(state / "receipts.sqlite3", 0o644)
    key = SigningKey.from_pem_file(federation_dir / "gateway" / "gateway.key")
    request = make_request(
        Query("media", Operation.COUNT, (Predicate("category", Comparator.EQ, ("A",)),)),
        audience=("ruritania",),
        purpose="statistics",
        case_ref="GEN-STATS-1",
    )

    # execute
    with running_node(federation_dir / "nodes" / "ruritania" / "node.toml") as node:
        call_node(node.address, sign_request(key, request))
        # assert: while the node runs, with its -wal and -shm files
        assert (state / "receipts.sqlite3-wal").exists()
        assert_private_state(state)


def test_token_and_keys_from_init_and_token_issue_are_owner_only(tmp_path: Path) -> None:
    root = tmp_path / "fed"
    assert cli_main(["init", str(root), "--node", "alpha", "--agency", "genovia"]) == 0
    token = root / "investigator.jwt"
    token.write_text("old\n")
    os.chmod(token, 0o644)  # an older file does not keep its wider mode

    status = cli_main(
        [
            "token",
            "issue",
            "--key",
            str(root / "idp" / "genovia.key"),
            "--agency",
            "genovia",
            "--subject",
            "inv.alice",
            "--out",
            str(token),
        ]
    )

    assert status == 0
    assert mode(token) == 0o600
    assert token.read_text().count(".") == 2  # a JWT, not "old"
    for secret in (
        root / "gateway" / "gateway.key",
        root / "idp" / "genovia.key",
        root / "nodes" / "alpha" / "node.key",
        root / "nodes" / "alpha" / "transform.key",
        root / "audit" / "audit.key",
        root / "pki" / "gateway.key",
        root / "pki" / "alpha.key",
    ):
        assert mode(secret) == 0o600, secret


def test_demo_token_and_node_state_are_owner_only(tmp_path: Path) -> None:
    root = tmp_path / "demo"
    run = subprocess.run(
        [sys.executable, "-m", "liaison", "demo", "--workdir", str(root), "--json"],
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
        cwd=tmp_path,
    )

    assert run.returncode == 0, run.stderr[-2000:]
    assert mode(root / "investigator.jwt") == 0o600
    # The web consoles' and the sign-in provider's TLS keys too.
    for key in ("console.key", "dev-idp.key"):
        assert mode(root / "pki" / key) == 0o600, key
    for node_id in ("freedonia", "ruritania", "sylvania"):
        assert_private_state(root / "nodes" / node_id / "state")
