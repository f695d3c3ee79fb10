"""The federated benchmark, run for real at its smallest: every section, every ledger checked.

Prepare: one short run of ``python -m liaison.bench --json`` against a real
federation (processes on loopback, SQLite ledgers), kept in a folder.
Execute: the benchmark's main, then the ledger check again on that folder.
Assert: the report's structure, that every answered query was found in every
ledger that must hold it and the ledgers verified and reconciled, and that a
query the ledgers lack fails the check.
"""

from __future__ import annotations

import contextlib
import io
import json
import shutil
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from liaison.bench.federated import DIRECT_LEDGER, main
from liaison.bench.ledger_check import Asked, check_ledgers

QUICK = [
    "--iterations", "6", "--warmup", "1", "--cpu-calls", "3", "--media", "100",
    "--levels", "1,4", "--duration", "0.6", "--level-warmup", "0.2",
]  # fmt: skip
NODES = ("ruritania", "freedonia", "sylvania")


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], Path]:
    workdir = tmp_path_factory.mktemp("bench") / "federation"
    out = io.StringIO()
    # Module-scoped, so not capsys: one run serves every test here.
    with contextlib.redirect_stdout(out):
        status = main([*QUICK, "--workdir", str(workdir), "--json"])
    assert status == 0, out.getvalue()
    return json.loads(out.getvalue()), workdir


def test_the_report_has_every_section(run: tuple[dict[str, Any], Path]) -> None:
    doc, _ = run

    assert {"direct", "federated", "gateway_one_node"} <= set(doc["latency_ms"])
    assert doc["aim"]["p50_ratio_at_most"] == 2.0
    levels = doc["throughput"]["levels"]
    assert [lv["in_flight"] for lv in levels] == [1, 4]
    for lv in levels:
        assert lv["queries"] > 0 and lv["errors"] == 0 and lv["error_messages"] == []
        assert lv["latency_ms"]["p50_ms"] > 0
        assert {"gateway", *NODES, "client", "total", "wall"} <= set(lv["cpu_ms_per_query"])
    share = doc["ledger_share"]
    assert share["measured"], share
    assert 0 < share["share_of_p50"] < 1
    aims = doc["aims"]
    assert aims["judged_in_flight"] == 4  # 8 was not measured: the highest level stands in
    assert len(aims["aims"]) == 5
    assert all(isinstance(a["met"], bool) for a in aims["aims"])


def test_every_answered_query_is_in_every_ledger_and_they_verify(
    run: tuple[dict[str, Any], Path],
) -> None:
    doc, _ = run
    check = doc["ledger_check"]

    answered = (
        2 * (6 + 1) + 3 + (6 + 1 + 3) + sum(lv["queries"] for lv in doc["throughput"]["levels"])
    )
    assert check["ok"] and check["missing"] == 0 and check["reconciled"]
    # Queries still in flight as a level's window closed count too.
    assert check["queries_checked"] >= answered
    assert set(check["ledgers"]) == {"gateway", *NODES, "direct caller"}
    assert all(v["verified"] for v in check["ledgers"].values())


def test_a_query_the_ledgers_lack_fails_the_check(run: tuple[dict[str, Any], Path]) -> None:
    _, root = run
    asked = Asked()
    asked.add_federated(["never-asked"], NODES)

    check = check_ledgers(
        root, root / "gateway" / DIRECT_LEDGER, root / "gateway" / "gateway.pub", asked
    )

    assert not check.ok and check.missing == 5  # request, outcome, three receipts
    assert "never-asked: no request entry in the gateway's ledger" in check.failure()


def test_a_tampered_ledger_fails_the_check(
    run: tuple[dict[str, Any], Path], tmp_path: Path
) -> None:
    _, original = run
    root = tmp_path / "copy"
    shutil.copytree(original, root)
    with contextlib.closing(sqlite3.connect(root / "gateway" / "ledger.sqlite3")) as db, db:
        db.execute(
            "UPDATE liaison_ledger_entries SET entry = replace(entry, 'genovia', 'genovix') "
            "WHERE idx = 1"
        )
    asked = Asked()

    check = check_ledgers(
        root, root / "gateway" / DIRECT_LEDGER, root / "gateway" / "gateway.pub", asked
    )

    assert not check.ok
    assert "the gateway ledger does not verify" in check.failure()
