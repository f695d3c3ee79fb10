"""`make bench`: one federated exact-hash query against one direct call to a node.

Builds the demo federation in a temporary folder, runs its nodes and gateway
as real processes on loopback, and measures in the same run, interleaved:

* direct: a signed MATCH request (signed as the gateway signs it) sent
  straight to one node over a long-lived gRPC channel;
* federated: the same question asked through the gateway, which verifies the
  investigator's token, signs one request, fans it out to all three nodes,
  verifies their answers and merges them, also over a long-lived channel;
* as a diagnostic, the gateway asking only the direct call's node, which
  separates the gateway's own cost from the cost of asking three nodes.

Only the round trip is timed. The direct request is built and signed before
its timer starts and its answer is checked after it stops, so the baseline is
the cheapest possible call and the ratio errs against the gateway. The aim,
from the issue: federated p50 within 3x of the direct call.

After the latency run, a short run of each path alone reads the CPU time of
every process (Linux /proc), which shows whether the machine had the cores
to run the nodes in parallel.

    python -m liaison.bench [--iterations N] [--warmup N] [--node ID] [--json]
"""

from __future__ import annotations

import argparse
import hashlib
import os
import tempfile
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import grpc

from liaison.bench.runner import BenchFailed, Summary, at_least, bench_main, machine, ratios
from liaison.catalog import CATALOG_VERSION
from liaison.cli import render
from liaison.demo.data import INVESTIGATOR_AGENCY, demo_agencies, probes
from liaison.demo.federation import AUDIT_KEY, GATEWAY_ID, PKI_DIR
from liaison.demo.run import build_federation, investigator_token, running_federation
from liaison.envelope import ANSWER_TYPE, REQUEST_TYPE, open_envelope, seal
from liaison.keys import SigningKey, VerifyingKey
from liaison.ledger.entries import AuditKey, request_entry
from liaison.ledger.log import Ledger
from liaison.ledger.logged import LedgerProof, SignedRequest, gateway_origin
from liaison.messages import NodeStatus, QueryRequest, Requester, SearchInput
from liaison.query import Comparator, Operation, Predicate, Query
from liaison.serving import CHANNEL_OPTIONS
from liaison.tls import TlsFiles
from liaison.tokens import dev_issuer
from liaison.wire import (
    answer_from_bytes,
    envelope_from_proto,
    request_to_bytes,
    search_result_from_proto,
    search_to_proto,
    signed_request_to_proto,
)
from proto.liaison.v1 import gateway_pb2 as pb_gateway
from proto.liaison.v1 import gateway_pb2_grpc as pb_gateway_grpc
from proto.liaison.v1 import node_pb2 as pb_node
from proto.liaison.v1 import node_pb2_grpc as pb_node_grpc

AIM_P50_RATIO = 3.0
PURPOSE = "csam-investigation"
CASE_REF = "GEN-BENCH-1"
CALL_TIMEOUT_S = 10.0
# A direct request lives as long as the gateway's would under its default deadline.
REQUEST_TTL_MS = 3000
CPU_CALLS = 100
HOLDERS = ("ruritania", "freedonia")  # the demo nodes that hold the probe


def _elapsed_ms(started_ns: int) -> float:
    return (time.perf_counter_ns() - started_ns) / 1e6


def probe_query() -> Query:
    return Query(
        dataset="media",
        operation=Operation.MATCH,
        predicates=(Predicate("sha256", Comparator.EQ, (probes().shared_sha256,)),),
    )


class DirectCaller:
    """Signs requests with the gateway's key and sends them straight to one node."""

    def __init__(
        self,
        channel: grpc.Channel,
        *,
        node_id: str,
        node_key: VerifyingKey,
        gateway_key: SigningKey,
        query: Query,
        ledger: Ledger,
        audit_key: AuditKey,
    ) -> None:
        self.ledger = ledger
        self.audit_key = audit_key
        self.node_id = node_id
        self.node_key = node_key
        self.gateway_key = gateway_key
        self.query = query
        self.requester = Requester(
            INVESTIGATOR_AGENCY, "inv.bench", ("investigator",), dev_issuer(INVESTIGATOR_AGENCY)
        )
        self.stub = pb_node_grpc.NodeServiceStub(channel)

    def prepare(self) -> pb_node.AnswerRequest:
        """A fresh request: new id, nonce and signature (a node answers each nonce once)."""
        issued = time.time_ns() // 1_000_000
        request = QueryRequest(
            query_id=str(uuid.uuid4()),
            gateway_id=GATEWAY_ID,
            issued_at_ms=issued,
            expires_at_ms=issued + REQUEST_TTL_MS,
            nonce=os.urandom(16),
            audience=(self.node_id,),
            requester=self.requester,
            purpose=PURPOSE,
            case_ref=CASE_REF,
            catalog_version=CATALOG_VERSION,
            query=self.query,
        )
        envelope = seal(self.gateway_key, REQUEST_TYPE, request_to_bytes(request))
        # Logged as the gateway logs it (nodes answer nothing unlogged), outside
        # the timed round trip: the baseline is the call itself.
        entry = request_entry(
            request,
            request_digest=hashlib.sha256(envelope.payload).digest(),
            key_id=self.gateway_key.key_id,
            audit_key=self.audit_key,
        )
        logged = self.ledger.append(entry, prove=True)
        assert logged.checkpoint is not None
        proof = LedgerProof(entry, logged.index, logged.inclusion_path, logged.checkpoint.note)
        return signed_request_to_proto(SignedRequest(envelope, proof))

    def timed(self) -> float:
        """One call; returns the round trip in ms, after checking the node found the probe."""
        message = self.prepare()
        started = time.perf_counter_ns()
        response: pb_node.AnswerResponse = self.stub.Answer(message, timeout=CALL_TIMEOUT_S)
        elapsed = _elapsed_ms(started)
        envelope = envelope_from_proto(response.answer)
        answer = answer_from_bytes(
            open_envelope(envelope, ANSWER_TYPE, {self.node_key.key_id: self.node_key})
        )
        if answer.hit is not True:
            raise BenchFailed(
                f"direct call: {self.node_id} answered {answer.status.value} "
                f"({answer.decision.reason or 'no reason given'}), expected a hit"
            )
        return elapsed


@dataclass
class FederatedCaller:
    """Asks the gateway, as an investigator, the same question of ``nodes`` (() for all)."""

    channel: grpc.Channel
    token: str
    query: Query
    nodes: tuple[str, ...]
    expected: tuple[str, ...]  # the nodes that must answer
    # Per call, the slowest node's latency as the gateway measured it (ms).
    slowest_node: list[float] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.stub = pb_gateway_grpc.GatewayServiceStub(self.channel)
        self.metadata = (("authorization", f"Bearer {self.token}"),)
        # The gateway draws a fresh id and nonce per search, so one message serves.
        self.message = search_to_proto(SearchInput(self.query, PURPOSE, CASE_REF, self.nodes))

    def timed(self) -> float:
        """One search; returns the round trip in ms, after checking every node answered."""
        started = time.perf_counter_ns()
        response: pb_gateway.SearchResponse = self.stub.Search(
            self.message, metadata=self.metadata, timeout=CALL_TIMEOUT_S
        )
        elapsed = _elapsed_ms(started)
        result = search_result_from_proto(response, self.query)
        answered = sorted(r.node_id for r in result.results if r.status is NodeStatus.ANSWERED)
        if answered != sorted(self.expected):
            failed = [f"{r.node_id}: {r.status.value} {r.detail}".strip() for r in result.results]
            raise BenchFailed(
                f"federated call: expected answers from {', '.join(sorted(self.expected))}, "
                f"got {'; '.join(failed) or 'nothing'}"
            )
        self.slowest_node.append(max(r.latency_ms for r in result.results))
        return elapsed


@dataclass(frozen=True, slots=True)
class Timed:
    key: str
    timed: Callable[[], float]


def measure(
    paths: Sequence[Timed], *, warmup: int, iterations: int, progress: TextIO
) -> dict[str, list[float]]:
    """Run every path once per round, rotating which goes first, so drift hits all alike."""
    samples: dict[str, list[float]] = {p.key: [] for p in paths}
    step = max(1, iterations // 10)
    for i in range(warmup + iterations):
        turn = i % len(paths)
        for path in [*paths[turn:], *paths[:turn]]:
            elapsed = path.timed()
            if i >= warmup:
                samples[path.key].append(elapsed)
        done = i + 1 - warmup
        if done == 0:
            print(f"  warm-up done ({warmup} rounds)", file=progress)
        elif done > 0 and (done % step == 0 or done == iterations):
            print(f"  measured {done}/{iterations} rounds", file=progress)
    return samples


def _cpu_s(pid: int) -> float | None:
    """User plus system CPU seconds of ``pid`` so far (Linux), or None."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return None


def cpu_per_call(
    timed: Callable[[], float], calls: int, servers: Mapping[str, int]
) -> dict[str, float] | None:
    """CPU ms per call of each server process (by name), of this client, and wall ms."""
    before = {name: _cpu_s(pid) for name, pid in servers.items()}
    client, wall = time.process_time(), time.perf_counter()
    for _ in range(calls):
        timed()
    client, wall = time.process_time() - client, time.perf_counter() - wall
    after = {name: _cpu_s(pid) for name, pid in servers.items()}
    out: dict[str, float] = {}
    for name in servers:
        b, a = before[name], after[name]
        if a is None or b is None:
            return None
        out[name] = round((a - b) * 1000 / calls, 3)
    out["client"] = round(client * 1000 / calls, 3)
    out["total"] = round(sum(out.values()), 3)
    out["wall"] = round(wall * 1000 / calls, 3)
    return out


def render_report(doc: dict[str, Any]) -> str:
    lat, st, mc = doc["latency_ms"], doc["settings"], doc["machine"]

    def row(label: str, s: Mapping[str, float]) -> list[str]:
        return [label, f"{s['p50_ms']:.2f}", f"{s['p99_ms']:.2f}", f"{s['mean_ms']:.2f}"]

    def ratio_row(label: str, r: Mapping[str, float]) -> list[str]:
        return [label, f"{r['p50']:.2f}x", f"{r['p99']:.2f}x", f"{r['mean']:.2f}x"]

    node, n = st["node"], st["nodes"]
    main = [
        row(f"direct: one node ({node})", lat["direct"]),
        row(f"federated: gateway + {n} nodes", lat["federated"]),
        ratio_row("ratio federated / direct", doc["ratio"]),
    ]
    diagnostics = [
        row(f"gateway + one node ({node})", lat["gateway_one_node"]),
        ratio_row("ratio gateway + one node / direct", doc["ratio_gateway_one_node"]),
        row(f"slowest of the {n} nodes (gateway's view)", lat["slowest_node_seen_by_gateway"]),
    ]
    r = doc["ratio"]["p50"]
    aim = doc["aim"]["p50_ratio_at_most"]
    lines = [
        f"Exact SHA-256 hit/no-hit query, milliseconds; {st['iterations']} interleaved rounds "
        f"after {st['warmup']} warm-up rounds",
        "",
        render.table(["path", "p50", "p99", "mean"], main),
        "",
        f"aim {'met' if doc['aim']['met'] else 'NOT met'}: federated p50 is {r:.2f}x the "
        f"direct call (aim: at most {aim:g}x)",
        "",
        "diagnostics",
        render.table(["path", "p50", "p99", "mean"], diagnostics),
    ]
    cpu = doc["cpu_ms_per_call"]
    if cpu is not None:
        names = [k for k in cpu["federated"] if k not in ("client", "total", "wall")]
        cells = [
            [path, *(f"{cpu[path].get(k, 0.0):.2f}" for k in [*names, "client", "total", "wall"])]
            for path in ("direct", "federated")
        ]
        usable = mc["cpus_usable"] or 1
        lines += [
            "",
            f"CPU per call, milliseconds ({st['cpu_calls']} calls of each path alone)",
            render.table(["path", *names, "client", "total", "wall"], cells),
            f"a federated query needs {cpu['federated']['total']:.1f} ms of CPU: on {usable} "
            f"usable CPU(s) it cannot take less than {cpu['federated']['total'] / usable:.1f} ms",
        ]
    lines += [
        "",
        f"gateway-node transport: {'mutual TLS' if st['tls'] else 'plaintext'}; "
        f"{st['media_records']} media records per node",
        f"machine: {mc['cpu_count']} CPUs ({mc['cpus_usable']} usable), {mc['python']}, "
        f"grpc {mc['grpc']}, {mc['platform']}",
    ]
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m liaison.bench",
        description="A federated exact-hash query against one direct gRPC call to a node.",
    )
    p.add_argument("--iterations", type=at_least(2), default=300, help="measured rounds (300)")
    p.add_argument("--warmup", type=at_least(0), default=30, help="unmeasured rounds first (30)")
    p.add_argument(
        "--node", choices=HOLDERS, default=HOLDERS[0], help="the node of the direct call"
    )
    p.add_argument("--media", type=at_least(1), default=4000, help="media records per node")
    p.add_argument(
        "--plaintext", action="store_true", help="no mutual TLS between gateway and nodes"
    )
    return p


def _channel(address: str, tls: TlsFiles | None) -> grpc.Channel:
    if tls is None:
        return grpc.insecure_channel(address, options=CHANNEL_OPTIONS)
    return grpc.secure_channel(address, tls.channel_credentials(), options=CHANNEL_OPTIONS)


def _server_pids(run_dir: Path) -> dict[str, int]:
    return {p.stem: int(p.read_text().strip()) for p in sorted(run_dir.glob("*.pid"))}


def run(args: argparse.Namespace, progress: TextIO) -> dict[str, Any]:
    tls = not args.plaintext
    all_nodes = tuple(a.agency_id for a in demo_agencies())
    query = probe_query()
    with tempfile.TemporaryDirectory(prefix="liaison-bench-") as tmp:
        root = Path(tmp)
        print(f"building the demo federation in {root}", file=progress)
        build_federation(root, media=args.media, accounts=300, tls=tls, progress=progress)
        with running_federation(root, progress=progress) as gateway_address:
            node_address = (root / "run" / f"{args.node}.addr").read_text().strip()
            # The direct caller stands where the gateway stands: its key, its certificate.
            pki = root / PKI_DIR
            node_tls = (
                TlsFiles(pki / f"{GATEWAY_ID}.crt", pki / f"{GATEWAY_ID}.key", pki / "ca.pem")
                if tls
                else None
            )
            gateway_key = SigningKey.from_pem_file(root / "gateway" / "gateway.key")
            with (
                _channel(node_address, node_tls) as node_channel,
                _channel(gateway_address, None) as gateway_channel,
                # The gateway writes its own ledger; the direct caller keeps another
                # under the same key, as a second gateway replica would.
                closing(
                    Ledger.open(
                        str(root / "gateway" / "direct-ledger.sqlite3"),
                        gateway_key,
                        gateway_origin(GATEWAY_ID),
                    )
                ) as direct_ledger,
            ):
                token = investigator_token(root)
                direct = DirectCaller(
                    node_channel,
                    node_id=args.node,
                    node_key=VerifyingKey.from_pem_file(root / "nodes" / args.node / "node.pub"),
                    gateway_key=gateway_key,
                    query=query,
                    ledger=direct_ledger,
                    audit_key=AuditKey.from_file(root / AUDIT_KEY),
                )
                federated = FederatedCaller(gateway_channel, token, query, (), all_nodes)
                one_node = FederatedCaller(
                    gateway_channel, token, query, (args.node,), (args.node,)
                )
                print(
                    f"measuring {args.iterations} rounds after {args.warmup} warm-up rounds",
                    file=progress,
                )
                samples = measure(
                    [
                        Timed("direct", direct.timed),
                        Timed("federated", federated.timed),
                        Timed("gateway_one_node", one_node.timed),
                    ],
                    warmup=args.warmup,
                    iterations=args.iterations,
                    progress=progress,
                )
                slowest = federated.slowest_node[-args.iterations :]
                print("measuring CPU per call", file=progress)
                pids = _server_pids(root / "run")
                direct_cpu = cpu_per_call(direct.timed, CPU_CALLS, pids)
                federated_cpu = cpu_per_call(federated.timed, CPU_CALLS, pids)
    summaries = {key: Summary.of(values) for key, values in samples.items()}
    direct_s, federated_s = summaries["direct"], summaries["federated"]
    ratio = ratios(federated_s, direct_s)
    return {
        "machine": machine(grpc=grpc.__version__),
        "settings": {
            "iterations": args.iterations,
            "warmup": args.warmup,
            "node": args.node,
            "nodes": len(all_nodes),
            "tls": tls,
            "media_records": args.media,
            "cpu_calls": CPU_CALLS,
        },
        "latency_ms": {
            **{key: s.as_dict() for key, s in summaries.items()},
            "slowest_node_seen_by_gateway": Summary.of(slowest).as_dict(),
        },
        "ratio": ratio,
        "ratio_gateway_one_node": ratios(summaries["gateway_one_node"], direct_s),
        "aim": {"p50_ratio_at_most": AIM_P50_RATIO, "met": ratio["p50"] <= AIM_P50_RATIO},
        "cpu_ms_per_call": (
            {"direct": direct_cpu, "federated": federated_cpu}
            if direct_cpu is not None and federated_cpu is not None
            else None
        ),
    }


def main(argv: list[str] | None = None) -> int:
    return bench_main(argv, build_parser(), run, render_report, rpc_call="a measured call")


if __name__ == "__main__":
    raise SystemExit(main())
