"""Many agencies over an emulated WAN: how long the last answer takes, and what it costs.

    python -m liaison.bench.wan [--nodes 100] [--queries 40] [--levels 1,8,64] [--json]

Starts the WAN test bed (``liaison.wan.testbed``: every agency a node of its
own behind a delaying, lossy proxy link, round trips from a table of
capitals), then measures, with the gateway in its own process:

* streamed searches one at a time: when the first and the last agency's
  answer reached the investigator, and the full result, against the largest
  round trip among the agencies that answered (the floor no gateway can beat:
  that agency's answer cannot arrive sooner). Aim: the full result within
  that round trip plus 50 ms at p50;
* the gateway's CPU per query and per node asked, and its resident memory;
* searches per second at 1, 8 and 64 in flight, with their errors;
* failing links: one agency's link down, one very slow, one lossy, and a
  fifth of the agencies restarted during a burst, each against the healthy
  federation in the same run.

Everything stays on loopback; the test bed is stopped on the way out,
whatever happens.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TextIO

from liaison import client
from liaison.bench.cpu import process_cpu_s
from liaison.bench.runner import FAILED, Report, Summary, bench_main, loadavg, machine
from liaison.bench.throughput import Load, run_levels
from liaison.cli.render import table
from liaison.messages import NodeResult, NodeStatus, SearchStarted, SearchSummary
from liaison.wan.links import LinkProfile
from liaison.wan.testbed import WanOptions, WanTestbed, probe_search, running_testbed
from liaison.wire import search_to_proto

AIM_OVER_RTT_MS = 50.0


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m liaison.bench.wan", description=__doc__)
    p.add_argument("--nodes", type=int, default=100, help="agencies (default 100)")
    p.add_argument("--queries", type=int, default=40, help="streamed searches timed one by one")
    p.add_argument("--levels", default="1,8,64", help="searches in flight, comma-separated")
    p.add_argument("--duration", type=float, default=10.0, help="seconds measured per level")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--nodes-per-process", type=int, default=10)
    p.add_argument("--no-scenarios", action="store_true", help="skip the failing-link runs")
    p.add_argument("--workdir", type=Path, help="keep the test bed here (default: a temp dir)")
    p.add_argument("--quick", action="store_true", help="20 agencies, fewer queries (a smoke run)")
    return p


# --- one streamed search, timed -------------------------------------------------------


def _streamed(bed: WanTestbed, rtts: Mapping[str, float]) -> dict[str, Any]:
    """One streamed search: when the first and last answers came, against the round trips."""
    started = time.perf_counter()
    first_ms: float | None = None
    last_ms = 0.0
    results: list[NodeResult] = []
    summary_ms = 0.0
    for event in client.search_stream(bed.gateway_address, bed.token(), probe_search()):
        at = (time.perf_counter() - started) * 1000
        if isinstance(event, NodeResult):
            results.append(event)
            if event.status is NodeStatus.ANSWERED:
                first_ms = at if first_ms is None else first_ms
                last_ms = at
        elif isinstance(event, SearchSummary):
            summary_ms = at
        elif not isinstance(event, SearchStarted):  # pragma: no cover - all kinds named
            raise AssertionError(event)
    answered = [r.node_id for r in results if r.status is NodeStatus.ANSWERED]
    max_rtt = max((rtts[n] for n in answered), default=0.0)
    return {
        "first_ms": first_ms or 0.0,
        "last_answer_ms": last_ms,
        "full_ms": summary_ms,
        "max_rtt_ms": max_rtt,
        "over_rtt_ms": summary_ms - max_rtt,
        "answered": len(answered),
        "asked": len(results),
    }


def _latency(bed: WanTestbed, queries: int, progress: TextIO) -> dict[str, Any]:
    rtts = {s.node_id: s.rtt_ms for s in bed.sites}
    gateway_pid = bed.pids()["gateway"]
    for _ in range(3):  # connections, TLS sessions and node caches warm
        _streamed(bed, rtts)
    cpu_before = process_cpu_s(gateway_pid)
    runs = []
    for i in range(queries):
        runs.append(_streamed(bed, rtts))
        if (i + 1) % 10 == 0 or i + 1 == queries:
            print(f"  streamed searches: {i + 1}/{queries}", file=progress)
    cpu_after = process_cpu_s(gateway_pid)
    doc: dict[str, Any] = {"queries": queries}
    for key in ("first_ms", "last_answer_ms", "full_ms", "max_rtt_ms", "over_rtt_ms"):
        doc[key] = Summary.of([r[key] for r in runs]).as_dict("ms", 1)
    doc["answered_share"] = round(
        sum(r["answered"] for r in runs) / max(1, sum(r["asked"] for r in runs)), 4
    )
    if cpu_before is not None and cpu_after is not None:
        per_query = (cpu_after - cpu_before) * 1000 / queries
        doc["gateway_cpu_ms_per_query"] = round(per_query, 2)
        doc["gateway_cpu_ms_per_query_per_node"] = round(per_query / len(bed.sites), 3)
    return doc


# --- failing links ----------------------------------------------------------------------


def _scenario(bed: WanTestbed, name: str, rounds: int, progress: TextIO) -> dict[str, Any]:
    """``rounds`` streamed searches with the test bed as it is now: times and who answered."""
    rtts = {s.node_id: s.rtt_ms for s in bed.sites}
    runs = [_streamed(bed, rtts) for _ in range(rounds)]
    full = [r["full_ms"] for r in runs]
    print(f"  {name}: full result p50 {statistics.median(full):.0f} ms", file=progress)
    return {
        "scenario": name,
        "rounds": rounds,
        "full_ms_each": [round(x, 1) for x in full],
        "full_ms_p50": round(statistics.median(full), 1),
        "answered_each": [r["answered"] for r in runs],
        "asked": runs[0]["asked"] if runs else 0,
    }


def _restarts_during_burst(
    bed: WanTestbed, share: float, seconds: float, progress: TextIO
) -> dict[str, Any]:
    """Searches 8 at a time while ``share`` of the agencies are killed and started again."""
    ids = bed.node_ids
    hosts = sorted({bed.colocated(n) for n in ids})
    # Restart whole node hosts (several agencies each), as a host reboot does.
    chosen: list[tuple[str, ...]] = []
    for group in hosts:
        if sum(len(g) for g in chosen) >= share * len(ids):
            break
        chosen.append(group)
    restarted = [n for g in chosen for n in g]
    stop = threading.Event()
    # When each search was sent, and what became of it at each agency.
    outcomes: list[tuple[float, dict[str, NodeStatus]]] = []
    errors: list[str] = []
    started = time.monotonic()

    def ask() -> None:
        while not stop.is_set():
            asked_at = time.monotonic() - started
            try:
                result = bed.search(timeout_s=30)
            except Exception as exc:  # the gateway must not fail: count it
                errors.append(str(exc)[:200])
                continue
            outcomes.append((asked_at, {r.node_id: r.status for r in result.results}))

    workers = [threading.Thread(target=ask, daemon=True) for _ in range(8)]
    for w in workers:
        w.start()
    time.sleep(seconds / 4)
    print(f"  restarting {len(restarted)} agencies ({len(chosen)} node hosts)", file=progress)
    for group in chosen:
        bed.kill_node(group[0])
    down_at = time.monotonic() - started
    time.sleep(seconds / 4)
    for group in chosen:
        bed.start_node(group[0])
    back_at = time.monotonic() - started
    time.sleep(seconds / 2)
    stop.set()
    for w in workers:
        w.join(timeout=60)
    answered_again = [
        at
        for at, statuses in outcomes
        if at > back_at and all(statuses.get(n) is NodeStatus.ANSWERED for n in restarted)
    ]
    healthy = [n for n in ids if n not in restarted]
    others_missed = sum(
        1 for _, statuses in outcomes for n in healthy if statuses.get(n) is not NodeStatus.ANSWERED
    )
    return {
        "scenario": f"{len(restarted)} of {len(ids)} agencies restarted during a burst",
        "searches": len(outcomes),
        "gateway_errors": len(errors),
        "error_messages": errors[:3],
        "down_at_s": round(down_at, 2),
        "back_at_s": round(back_at, 2),
        "all_answer_again_after_s": round(min(answered_again) - back_at, 2)
        if answered_again
        else None,
        "other_agencies_missed": others_missed,
    }


def _scenarios(bed: WanTestbed, progress: TextIO) -> list[dict[str, Any]]:
    ids = bed.node_ids
    far = max(bed.sites, key=lambda s: s.rtt_ms).node_id
    near = min(bed.sites, key=lambda s: s.rtt_ms).node_id
    middle = sorted(bed.sites, key=lambda s: s.rtt_ms)[len(ids) // 2].node_id
    found = [_scenario(bed, "healthy", 5, progress)]
    bed.link_down(near)
    found.append(_scenario(bed, f"one link down ({near})", 5, progress))
    bed.restore(near)
    bed.slow(middle, rtt_ms=3000)
    found.append(_scenario(bed, f"one agency very slow ({middle}, 3 s round trip)", 6, progress))
    bed.restore(middle)
    bed.lossy(far, 0.2)
    found.append(_scenario(bed, f"one lossy link ({far}, 20% loss)", 6, progress))
    bed.restore_all()
    found.append(_restarts_during_burst(bed, 0.2, 12.0, progress))
    return found


# --- the run ----------------------------------------------------------------------------


def run(args: argparse.Namespace, progress: TextIO) -> Report:
    nodes = 20 if args.quick else args.nodes
    queries = 10 if args.quick else args.queries
    duration = 4.0 if args.quick else args.duration
    levels = [int(x) for x in str(args.levels).split(",") if x.strip()]
    options = WanOptions(nodes=nodes, seed=args.seed, nodes_per_process=args.nodes_per_process)
    root = args.workdir or Path(tempfile.mkdtemp(prefix="liaison-wan-bench-"))
    doc: Report = {
        "benchmark": "wan",
        "machine": machine(),
        "load_before": loadavg(),
        "nodes": nodes,
    }
    try:
        with running_testbed(root / "bed", options, progress=progress) as bed:
            doc["startup_s"] = {
                "build": round(bed.timings.build_s, 1),
                "nodes": round(bed.timings.nodes_s, 1),
                "gateway": round(bed.timings.gateway_s, 1),
            }
            rtts = sorted(s.rtt_ms for s in bed.sites)
            doc["rtt_ms"] = {"min": rtts[0], "median": statistics.median(rtts), "max": rtts[-1]}
            print(f"  {nodes} agencies up; timing streamed searches", file=progress)
            doc["latency"] = _latency(bed, queries, progress)
            # The same searches with every link's loss taken away: what is left
            # over the largest round trip is the federation's own cost; the rest
            # above was TCP waiting out lost packets.
            for site in bed.sites:
                bed.set_link(site.node_id, LinkProfile.wan(site.rtt_ms, jitter_ms=site.jitter_ms))
            print("  the same without loss", file=progress)
            doc["latency_no_loss"] = _latency(bed, queries, progress)
            bed.restore_all()
            memory = bed.memory_kb()
            doc["memory_mb"] = {
                "gateway": round(memory.get("gateway", 0) / 1024, 1),
                "node_hosts": round(
                    sum(v for k, v in memory.items() if k.startswith("nodehost")) / 1024, 1
                ),
                "proxy": round(memory.get("proxy", 0) / 1024, 1),
            }
            load = Load(
                bed.gateway_address,
                (("authorization", f"Bearer {bed.token()}"),),
                search_to_proto(probe_search()),
                frozenset(bed.node_ids),
            )
            print("  throughput", file=progress)
            found = run_levels(
                load,
                levels,
                warmup_s=2.0,
                duration_s=duration,
                pids=bed.pids(),
                progress=progress,
            )
            doc["throughput"] = [level.as_dict() for level in found]
            if not args.no_scenarios:
                print("  failing links", file=progress)
                doc["scenarios"] = _scenarios(bed, progress)
            doc["memory_mb"]["gateway_after"] = round(bed.memory_kb().get("gateway", 0) / 1024, 1)
    finally:
        if args.workdir is None:
            shutil.rmtree(root, ignore_errors=True)
    over = doc["latency"]["over_rtt_ms"]["p50_ms"]
    over_no_loss = doc["latency_no_loss"]["over_rtt_ms"]["p50_ms"]
    doc["aim"] = {
        "full_result_p50_over_max_rtt_ms": over,
        "without_loss_ms": over_no_loss,
        "aim_ms": AIM_OVER_RTT_MS,
        "met": over <= AIM_OVER_RTT_MS,
        "met_without_loss": over_no_loss <= AIM_OVER_RTT_MS,
    }
    if doc["latency"]["answered_share"] < 0.99:
        doc[FAILED] = (
            f"only {doc['latency']['answered_share']:.1%} of agencies answered the timed "
            "searches on healthy links"
        )
    doc["load_after"] = loadavg()
    return doc


def render_report(doc: Mapping[str, Any]) -> str:
    lat = doc["latency"]
    over = doc["aim"]["full_result_p50_over_max_rtt_ms"]
    rows = [
        [name, f"{lat[key]['p50_ms']:.0f}", f"{lat[key]['p99_ms']:.0f}"]
        for name, key in (
            ("first answer", "first_ms"),
            ("last answer", "last_answer_ms"),
            ("full result (summary)", "full_ms"),
            ("largest RTT among answering agencies", "max_rtt_ms"),
            ("full result minus that RTT", "over_rtt_ms"),
        )
    ]
    free = doc["latency_no_loss"]
    rows += [
        [f"{name}, no loss", f"{free[key]['p50_ms']:.0f}", f"{free[key]['p99_ms']:.0f}"]
        for name, key in (
            ("full result", "full_ms"),
            ("full result minus the largest RTT", "over_rtt_ms"),
        )
    ]
    parts = [
        f"WAN test bed: {doc['nodes']} agencies, round trips {doc['rtt_ms']['min']:.0f}-"
        f"{doc['rtt_ms']['max']:.0f} ms (median {doc['rtt_ms']['median']:.0f}); "
        f"load {doc.get('load_before')}",
        f"start-up: build {doc['startup_s']['build']} s, nodes {doc['startup_s']['nodes']} s, "
        f"gateway {doc['startup_s']['gateway']} s",
        "",
        f"streamed searches, one at a time ({lat['queries']}):",
        table(["", "p50 ms", "p99 ms"], rows, indent="  "),
        f"  agencies answering: {lat['answered_share']:.1%}",
        f"  aim: full result within the largest RTT + {AIM_OVER_RTT_MS:.0f} ms at p50: "
        f"{'met' if doc['aim']['met'] else 'NOT met'} ({over:.0f} ms over); without loss "
        f"{'met' if doc['aim']['met_without_loss'] else 'NOT met'} "
        f"({doc['aim']['without_loss_ms']:.0f} ms over)",
    ]
    if "gateway_cpu_ms_per_query" in lat:
        parts.append(
            f"  gateway CPU: {lat['gateway_cpu_ms_per_query']:.1f} ms per query, "
            f"{lat['gateway_cpu_ms_per_query_per_node']:.3f} ms per node asked"
        )
    mem = doc["memory_mb"]
    parts.append(
        f"  memory: gateway {mem['gateway']} MB (after every run: {mem.get('gateway_after')} MB), "
        f"node hosts {mem['node_hosts']} MB in all, proxy {mem['proxy']} MB"
    )
    rows = []
    for t in doc["throughput"]:
        cpu = t.get("cpu_ms_per_query") or {}
        nodes_cpu = sum(v for k, v in cpu.items() if k.startswith("nodehost"))
        rows.append(
            [
                str(t["in_flight"]),
                f"{t['queries_per_s']:.1f}",
                f"{t['latency_ms']['p50_ms']:.0f}" if t["latency_ms"] else "-",
                f"{t['latency_ms']['p99_ms']:.0f}" if t["latency_ms"] else "-",
                str(t["errors"]),
                f"{cpu['gateway']:.1f}" if "gateway" in cpu else "-",
                f"{nodes_cpu:.1f}" if cpu else "-",
                f"{cpu['proxy']:.1f}" if "proxy" in cpu else "-",
            ]
        )
    parts += [
        "",
        "throughput (unary searches to every agency):",
        table(
            [
                "in flight",
                "queries/s",
                "p50 ms",
                "p99 ms",
                "errors",
                "CPU ms/query: gateway",
                "all nodes",
                "WAN proxy",
            ],
            rows,
            indent="  ",
        ),
    ]
    if doc.get("scenarios"):
        rows = []
        for s in doc["scenarios"]:
            if "full_ms_p50" in s:
                rows.append(
                    [
                        s["scenario"],
                        f"{s['full_ms_p50']:.0f}",
                        ", ".join(f"{x:.0f}" for x in s["full_ms_each"]),
                        ", ".join(str(a) for a in s["answered_each"]) + f" of {s['asked']}",
                    ]
                )
        parts += [
            "",
            "failing links (streamed searches one after another):",
            table(["", "full p50 ms", "each, ms", "answered"], rows, indent="  "),
        ]
        for s in doc["scenarios"]:
            if "searches" in s:
                again = s["all_answer_again_after_s"]
                parts.append(
                    f"  {s['scenario']}: {s['searches']} searches, {s['gateway_errors']} gateway "
                    f"error(s); restarted agencies all answering again "
                    + (
                        f"in searches sent {again:.2f} s after they were back"
                        if again is not None
                        else "never"
                    )
                    + f"; answers missed from agencies not restarted: {s['other_agencies_missed']}"
                )
    return "\n".join(parts)


def main(argv: list[str] | None = None) -> int:
    return bench_main(argv, _parser(), run, render_report, rpc_call="a measured search")


if __name__ == "__main__":
    raise SystemExit(main())
