"""The ledger benchmark runs end to end at toy sizes and reports every section.

Prepare: nothing (the benchmark builds its own ledgers and demo federation).
Execute: `python -m liaison.bench_ledger --json` with tiny sizes, in a subprocess.
Assert: the JSON document holds each section, and what it measured is coherent.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

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
        [sys.executable, "-m", "liaison.bench_ledger", *TINY],
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
    assert doc["proofs"]["size"] == 3000
    fed = doc["federation"]
    per_query = {name: x["entries_per_query"] for name, x in fed["bytes"]["ledgers"].items()}
    assert per_query == {"gateway": 2, "ruritania": 1, "freedonia": 1, "sylvania": 1}
    assert set(fed["entry_bytes"]) == {"request", "outcome", "receipt"}
    assert 0 < fed["share"]["p50"] < 1
    assert "machine" in doc and doc["machine"]["sqlite"]
