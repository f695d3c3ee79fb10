"""`python -m liaison.wan`: start a federation over an emulated WAN, ask it, stop it.

Builds ``--nodes`` agencies in capitals drawn with ``--seed`` (round trips from
``liaison.wan.latency``), starts them behind the proxy with a gateway, asks
the same hit/no-hit question ``--queries`` times, prints what each query took
against the largest round trip among the agencies that answered, with the
start-up time and memory of every process, and stops everything, also on
failure and on Ctrl-C. Exit status 0 when the last query was answered by all.
"""

from __future__ import annotations

import argparse
import json
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path
from types import FrameType
from typing import Any

from liaison.errors import LiaisonError
from liaison.messages import NodeStatus
from liaison.wan.testbed import WanOptions, WanTestbed, running_testbed


def _sigterm(_signum: int, _frame: FrameType | None) -> None:
    # As a Ctrl-C: unwind through every `finally`, which stops the children.
    raise KeyboardInterrupt


def _query(bed: WanTestbed, rtts: dict[str, float]) -> dict[str, Any]:
    start = time.monotonic()
    result = bed.search()
    wall_ms = (time.monotonic() - start) * 1000
    counts: dict[str, int] = {}
    for r in result.results:
        counts[r.status.value] = counts.get(r.status.value, 0) + 1
    answered = [r for r in result.results if r.status is NodeStatus.ANSWERED]
    return {
        "wall_ms": round(wall_ms, 1),
        "statuses": counts,
        "max_rtt_answered_ms": max((rtts[r.node_id] for r in answered), default=0.0),
        "slowest_node_ms": round(max((r.latency_ms for r in answered), default=0.0), 1),
        "all_answered": len(answered) == len(result.results),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m liaison.wan", description=__doc__)
    parser.add_argument("--nodes", type=int, default=100)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--nodes-per-process", type=int, default=10)
    parser.add_argument("--queries", type=int, default=5)
    parser.add_argument("--rtt-scale", type=float, default=1.0)
    parser.add_argument("--max-loss", type=float, default=0.03)
    parser.add_argument("--deadline-ms", type=int, default=5000)
    parser.add_argument(
        "--no-tls", action="store_true", help="plain gRPC between gateway and nodes"
    )
    parser.add_argument(
        "--workdir", type=Path, help="keep the federation here (default: temporary)"
    )
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    args = parser.parse_args(argv)
    options = WanOptions(
        nodes=args.nodes,
        seed=args.seed,
        rtt_scale=args.rtt_scale,
        max_loss=args.max_loss,
        nodes_per_process=args.nodes_per_process,
        tls=not args.no_tls,
        deadline_ms=args.deadline_ms,
    )
    signal.signal(signal.SIGTERM, _sigterm)
    root = args.workdir or Path(tempfile.mkdtemp(prefix="liaison-wan-")) / "bed"
    err = sys.stderr
    report: dict[str, Any] = {}
    try:
        print(f"[1/3] building {options.nodes} agencies in {root}", file=err, flush=True)
        t0 = time.monotonic()
        with running_testbed(root, options, progress=err) as bed:
            started_s = time.monotonic() - t0
            rtts = {s.node_id: s.rtt_ms for s in bed.sites}
            memory = bed.memory_kb()
            print(f"[2/3] asking {args.queries} times", file=err, flush=True)
            queries = []
            for i in range(args.queries):
                q = _query(bed, rtts)
                queries.append(q)
                print(
                    f"  query {i + 1}: {q['wall_ms']:.0f} ms, {q['statuses']}, largest RTT "
                    f"answering {q['max_rtt_answered_ms']:.0f} ms",
                    file=err,
                    flush=True,
                )
            report = {
                "nodes": options.nodes,
                "processes": {"node_hosts": len(bed.hosts), "per_host": options.nodes_per_process},
                "rtt_ms": {"min": min(rtts.values()), "max": max(rtts.values())},
                "startup_s": {
                    "total": round(started_s, 1),
                    "build": round(bed.timings.build_s, 1),
                    "proxy": round(bed.timings.proxy_s, 1),
                    "nodes": round(bed.timings.nodes_s, 1),
                    "gateway": round(bed.timings.gateway_s, 1),
                },
                "rss_mb": {k: round(v / 1024, 1) for k, v in memory.items()},
                "rss_total_mb": round(sum(memory.values()) / 1024, 1),
                "queries": queries,
            }
            print("[3/3] stopping", file=err, flush=True)
    except KeyboardInterrupt:
        print("interrupted: everything started was stopped", file=err)
        return 130
    except LiaisonError as exc:
        print(f"error: {exc}", file=err)
        return 1
    finally:
        if args.workdir is None:
            shutil.rmtree(root.parent, ignore_errors=True)
    if args.json:
        print(json.dumps(report, indent=1))
    else:
        s = report["startup_s"]
        print(
            f"{report['nodes']} nodes in {report['processes']['node_hosts']} processes, "
            f"RTT {report['rtt_ms']['min']:.0f}-{report['rtt_ms']['max']:.0f} ms\n"
            f"start-up {s['total']} s (build {s['build']}, nodes {s['nodes']}, gateway "
            f"{s['gateway']}); memory {report['rss_total_mb']} MB in all"
        )
        for i, q in enumerate(report["queries"], 1):
            print(
                f"query {i}: {q['wall_ms']:>7.1f} ms  largest RTT answering "
                f"{q['max_rtt_answered_ms']:>5.1f} ms  {q['statuses']}"
            )
    return 0 if report["queries"] and report["queries"][-1]["all_answered"] else 1


if __name__ == "__main__":
    sys.exit(main())
