"""`python -m liaison.bench.wan`, tiny: it starts the test bed, measures, reports, stops."""

from __future__ import annotations

import json
import subprocess
import sys

from tests.support import REPO


def test_the_wan_benchmark_reports_every_section_as_json() -> None:
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "liaison.bench.wan",
            "--nodes",
            "4",
            "--nodes-per-process",
            "4",
            "--queries",
            "3",
            "--levels",
            "2",
            "--duration",
            "1",
            "--no-scenarios",
            "--json",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    doc = json.loads(done.stdout)
    assert doc["nodes"] == 4
    for section in ("latency", "latency_no_loss"):
        lat = doc[section]
        assert lat["answered_share"] == 1.0
        # The full result cannot beat the largest round trip among those who answered.
        assert lat["full_ms"]["min_ms"] >= lat["max_rtt_ms"]["min_ms"] * 0.9
        assert lat["gateway_cpu_ms_per_query_per_node"] > 0
    (level,) = doc["throughput"]
    assert level["in_flight"] == 2 and level["queries"] > 0 and level["errors"] == 0
    assert set(level["cpu_ms_per_query"]) >= {"gateway", "proxy", "nodehost-0"}
    assert doc["memory_mb"]["gateway"] > 0
    assert set(doc["aim"]) >= {"met", "met_without_loss", "full_result_p50_over_max_rtt_ms"}
