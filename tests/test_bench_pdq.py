"""The PDQ benchmark runs end to end at toy sizes, and its reference scan is exact.

Prepare: nothing (the benchmark generates its own hashes and demo federation).
Execute: `python -m liaison.bench.pdq --json` at toy sizes, in a subprocess;
threatexchange only if it is installed (it is not a Liaison dependency).
Assert: every contender answered exactly what the brute force answers, and the
federated batch was answered by every node that holds PDQ hashes.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np

from liaison.bench.pdq import THRESHOLD, NumpyScan, compare, make_queries
from liaison.demo.pdq_data import synthetic_hashes
from liaison.hashing.pdq import distances, hex_from_words

ROOT = Path(__file__).resolve().parent.parent
HAS_THREATEXCHANGE = importlib.util.find_spec("threatexchange") is not None
TINY = [
    "--sizes", "20000",
    "--random-sizes", "5000",
    "--queries", "300",
    "--singles", "50",
    "--fed-per-node", "5000",
    "--fed-hashes", "1200",
    "--node-size", "20000",
    "--node-queries", "40",
    "--node-window", "2",
    "--no-node-baseline",
    "--json",
]  # fmt: skip


def test_bench_pdq_reports_exact_answers_and_the_federated_batch() -> None:
    args = TINY if HAS_THREATEXCHANGE else [*TINY, "--no-threatexchange"]

    done = subprocess.run(
        [sys.executable, "-m", "liaison.bench.pdq", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    assert done.returncode == 0, done.stderr
    doc = json.loads(done.stdout)
    structured, planted = doc["sizes"]
    assert (structured["size"], structured["data"]) == (20000, "structured")
    assert (planted["size"], planted["data"]) == (5000, "random")
    for size in (structured, planted):
        assert size["truth_pairs"] > 0
        contenders = size["contenders"]
        yardsticks = ["threatexchange", "threatexchange_faiss"]
        measured = ["ours", "numpy_scan"] + (yardsticks if HAS_THREATEXCHANGE else [])
        for name in measured:
            r = contenders[name]
            assert r["recall"] == 1.0 and r["extra"] == 0, (name, r["answers"])
            assert r["build_s"] >= 0 and r["resident_mb"] >= 0 and r["batch"]["qps"] > 0
            assert r["batch"]["qps_per_core"] > 0
            assert r["single"]["samples"] == 50
        assert contenders["numpy_scan"]["cross_check"]["identical"]
        if not HAS_THREATEXCHANGE:
            for name in yardsticks:
                assert contenders[name] == {"skipped": "--no-threatexchange"}
    assert [a["met"] for a in doc["aims"]][-1] is True  # 100% recall
    # One node over its agency's table: exact answers, the writer's changes followed.
    for variant in ("no_pdq_index", "pdq_indexed"):
        node = doc["node"]["variants"][variant]["keyed"]
        assert node["exact"]["missed"] == 0 and node["exact"]["extra"] == 0, node["exact"]
        assert node["exact"]["rows"] > 0 and node["steady"]["samples"] == 40
        assert node["restart"]["serve_s"] < 5
        followed = node["followed"]
        assert followed["inserted"] > 0
        assert followed["inserted_matched"] == followed["inserted"], followed
        assert followed["deleted_still_in_index"] == 0, followed
        assert followed["old_value_still_in_index"] == 0, followed
        assert node["window"]["compactions"], node["window"]
    fed = doc["federated"]
    assert fed["asked"] == 1200 and fed["chunks"] == 2
    holders = {n: x for n, x in fed["nodes"].items() if x["pdq_column"] is not None}
    assert holders, fed["nodes"]
    for node_id, x in holders.items():
        assert x["chunks_answered"] == 2, (node_id, x["reasons"])
        assert x["hits_as_expected"] is True, node_id
        assert x["index_at_startup"]["hashes"] == x["rows_with_pdq"]


def test_bench_pdq_tables_without_threatexchange_or_federation() -> None:
    done = subprocess.run(
        [
            sys.executable, "-m", "liaison.bench.pdq",
            "--sizes", "2000", "--random-sizes", "2000", "--queries", "40", "--singles", "10",
            "--no-threatexchange", "--no-federated", "--no-node",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )  # fmt: skip

    assert done.returncode == 0, done.stderr
    report = done.stdout
    assert "2,000 PDQ hashes" in report and "ours (PdqIndex)" in report
    assert "not measured: batch throughput at least 4x threatexchange's" in report
    assert "met: 100% recall, nothing extra" in report
    assert "Federated: skipped (--no-federated)" in report
    assert "Node: skipped (--no-node)" in report
    assert "2,000 PDQ hashes (random" in report


def test_numpy_scan_matches_distances_including_the_complement() -> None:
    words = synthetic_hashes(3000, seed=5)
    scan = NumpyScan()
    scan.build(words)
    queries = make_queries(words, 40, seed=6)
    # A stored hash itself (distance 0) and its complement (256: a uint8 sum wraps to 0).
    queries = np.concatenate([queries, words[:1], ~words[1:2]])

    for q in queries:
        got = scan.scan(q).tolist()

        assert got == np.flatnonzero(distances(words, q) <= THRESHOLD).tolist()
    assert 1 not in scan.scan(~words[1]).tolist()
    assert 1 in scan.single(hex_from_words(words[1:2])[0]).tolist()


def test_compare_counts_missed_and_extra_pairs_by_distance() -> None:
    queries = np.zeros((2, 4), dtype=np.uint64)
    near = np.array([[0, 0, 0, 7]], dtype=np.uint64)  # 3 bits from the query
    far = np.array([[0, 0, 0, 1]], dtype=np.uint64)
    truth = np.array([[0, *near[0]], [1, *far[0]]], dtype=np.uint64)
    got = np.array([[0, *near[0]], [1, *near[0]]], dtype=np.uint64)

    result = compare(truth, got, queries)

    assert result["recall"] == 0.5 and not result["exact"]
    assert result["missed_at_distance"] == {"1": 1}
    assert result["extra_at_distance"] == {"3": 1}
