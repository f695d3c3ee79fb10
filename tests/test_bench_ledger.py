"""The ledger benchmark runs end to end at toy sizes and reports every section.

Prepare: nothing (the benchmark builds its own ledgers and demo federation).
Execute: `python -m liaison.bench.ledger --json` with tiny sizes, in a subprocess.
Assert: the JSON document holds each section, and what it measured is coherent.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from liaison.bench.ledger import NODES, BenchFailed, match_logs

ROOT = Path(__file__).resolve().parent.parent
TINY = [
    "--entries", "3000",
    "--appends", "20",
    "--block", "10",
    "--group-seconds", "0.1",
    "--threads", "2",
    "--proofs", "20",
    "--verify-repeats", "1",
    "--searches", "4",
    "--warmup", "1",
    "--media", "50",
    "--no-postgres",
    "--json",
]  # fmt: skip


def test_bench_ledger_reports_every_section() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "liaison.bench.ledger", *TINY],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    assert done.returncode == 0, done.stderr
    doc = json.loads(done.stdout)
    sqlite = doc["appends"]["sqlite"]
    assert sqlite["settings"] == {"journal_mode": "wal", "synchronous": 2}
    assert set(sqlite["single"]) == {"raw", "store", "ledger", "ledger_prove"}
    assert [(g["threads"], g["prove"]) for g in sqlite["group"]] == [(2, False), (2, True)]
    assert doc["appends"]["postgresql"] == {"skipped": "--no-postgres"}
    verify = doc["verify"]
    assert verify["report"]["ok"] and verify["report"]["size"] == 3000
    assert verify["report"]["checkpoints"] == 1
    # Against the Merkle floor measured in the same run (which computed the same root).
    assert set(verify["best_s"]) == {"read", "floor", "verify", "verify_1"}
    assert set(verify["best_cpu_s"]) == set(verify["best_s"])
    assert verify["verify_vs_floor"] > 0 and verify["read_vs_floor"] > 0
    assert verify["verify_1_vs_floor"] > 0 and verify["verify_vs_floor_cpu"] > 0
    # 3,000 entries are too few to start a second process for.
    assert verify["processes"] == {"read": 1, "floor": 1, "verify": 1, "verify_1": 1}
    assert verify["aim"]["seconds_per_million_under"] == 4.0
    assert verify["aim"]["vs_floor_at_most"] == 1.5
    assert isinstance(verify["aim"]["met"], bool) and verify["aim"]["extrapolated"]
    assert doc["proofs"]["size"] == 3000
    fed = doc["federation"]
    per_query = {name: x["entries_per_query"] for name, x in fed["bytes"]["ledgers"].items()}
    assert per_query == {"gateway": 2, "ruritania": 1, "freedonia": 1, "sylvania": 1}
    assert set(fed["entry_bytes"]) == {"request", "outcome", "receipt"}
    # Measured across real processes, from the client and from every service's log.
    lat = fed["latency_ms"]
    assert set(lat) == {
        "client",
        "gateway_total",
        "gateway_ledger",
        "slowest_receipt",
        "ledger_critical_path",
        *(f"receipt_{n}" for n in NODES),
    }
    assert all(x["samples"] == 4 for x in lat.values())
    assert lat["gateway_total"]["max_ms"] <= lat["client"]["max_ms"]
    assert lat["ledger_critical_path"]["min_ms"] >= lat["gateway_ledger"]["min_ms"]
    assert 0 < fed["share"]["p50"] < 1 and 0 < fed["share"]["of_means"] < 1
    assert isinstance(fed["aim"]["met"], bool)
    assert "machine" in doc and doc["machine"]["sqlite"]


def test_bench_ledger_runs_one_section_and_renders_its_table() -> None:
    done = subprocess.run(
        [
            sys.executable, "-m", "liaison.bench.ledger",
            "--only", "verify",
            "--entries", "2000",
            "--proofs", "5",
            "--verify-repeats", "1",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )  # fmt: skip

    assert done.returncode == 0, done.stderr
    table = done.stdout
    assert "4. Verifying 2,000 entries" in table and "5. Proofs at size 2,000" in table
    for row in (
        "read the entries only",
        "Merkle floor",
        "verify_ledger: every check, 1 process",
        "verify_ledger: every check, --processes 1",
    ):
        assert row in table
    assert "the Merkle floor by wall time (aim: under 4 s and at most 1.5x)" in table
    assert "wall s: elapsed time; CPU s: CPU time of every process" in table
    assert "aim met:" in table or "aim NOT met:" in table
    assert "Durable appends" not in table and "federated" not in table


def test_bench_ledger_refuses_an_unknown_section() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "liaison.bench.ledger", "--only", "verify,bogus"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    assert done.returncode == 2
    assert "expected sections among appends,verify,federation" in done.stderr


def _write_logs(run: Path, queries: list[str], skip_node: str | None = None) -> None:
    run.mkdir()
    gateway = [
        json.dumps({"msg": "search", "query_id": q, "ledger_ms": 1.5, "total_ms": 8.0})
        for q in queries
    ]
    (run / "gateway.log").write_text("\n".join(["not json", *gateway]) + "\n")
    for i, node in enumerate(NODES):
        lines = [
            json.dumps({"msg": "answered", "query_id": q, "receipt_ms": 1.0 + i})
            for q in queries
            if not (node == skip_node and q == queries[-1])
        ]
        (run / f"{node}.log").write_text("\n".join(lines) + "\n")


def test_match_logs_joins_by_query_id_and_fails_on_a_missing_line(tmp_path: Path) -> None:
    queries = ["q-1", "q-2"]
    _write_logs(tmp_path / "ok", queries)
    times = match_logs([("q-1", 10.0), ("q-2", 20.0)], tmp_path / "ok")
    assert [t.critical_path_ms for t in times] == [1.5 + 1.0 + len(NODES) - 1] * 2
    assert [t.share for t in times] == pytest.approx([0.45, 0.225])

    _write_logs(tmp_path / "gap", queries, skip_node=NODES[1])
    with pytest.raises(BenchFailed, match=f"1 of 2 measured searches .* {NODES[1]}'s log"):
        match_logs([("q-1", 10.0), ("q-2", 20.0)], tmp_path / "gap")
