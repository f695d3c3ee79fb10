"""`make bench`: what a federated exact-hash query costs, against one direct call to a node.

Builds the demo federation in a temporary folder, runs its nodes and gateway
as real processes on loopback, and measures in the same run:

1. Latency, interleaved, one call at a time:

   * direct: a signed MATCH request (signed as the gateway signs it) sent
     straight to one node over a long-lived gRPC channel;
   * federated: the same question asked through the gateway, which verifies
     the investigator's token, signs one request, fans it out to all three
     nodes, verifies their answers and merges them;
   * as a diagnostic, the gateway asking only the direct call's node.

   Only the round trip is timed. The direct request is built, logged and
   signed before its timer starts and its answer checked after it stops, so
   the baseline is the cheapest possible call and the ratio errs against the
   gateway.

2. CPU per call of every process, each path alone, one call at a time.

3. Throughput: federated queries per second at 1, 8 and 64 in flight from a
   ``grpc.aio`` client (``throughput``), with latency, errors, and CPU per
   query of every process and of the client over the measured window.

4. Once every process has stopped: every answered query must be in the
   gateway's ledger and in every node's receipts, and the ledgers must verify
   and reconcile (``ledger_check``); the run fails otherwise. From the
   services' logs, the ledger's share of the federated p50 (``ledger_share``).

5. The issue's aims, each met or not (``federated_report``).

The demo policies' rate limits are raised a thousandfold in the benchmark's
own copy, so that thousands of queries a second by one investigator are
answered: every rate-limit check still runs, none is reached.

    python -m liaison.bench [--iterations N] [--levels 1,8,64] [--duration S] [--json]
"""

from __future__ import annotations

import argparse
import hashlib
import os
import re
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import closing, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import grpc

from liaison.bench import federated_report
from liaison.bench.cpu import CpuReading, cpu_ms_per_query, server_pids
from liaison.bench.ledger_check import Asked, check_ledgers
from liaison.bench.ledger_share import Measured, ledger_share
from liaison.bench.runner import (
    FAILED,
    BenchFailed,
    Summary,
    at_least,
    bench_main,
    loadavg,
    machine,
    positive,
    ratios,
    with_preset,
)
from liaison.bench.throughput import LevelResult, Load, run_levels
from liaison.catalog import CATALOG_VERSION
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

PURPOSE = "csam-investigation"
CASE_REF = "GEN-BENCH-1"
CALL_TIMEOUT_S = 10.0
# A direct request lives as long as the gateway's would under its default deadline.
REQUEST_TTL_MS = 3000
HOLDERS = ("ruritania", "freedonia")  # the demo nodes that hold the probe
RATE_LIMIT_FACTOR = 1000
DIRECT_LEDGER = "direct-ledger.sqlite3"


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
        # Every request the node answered, for the ledger check.
        self.answered: list[str] = []

    def prepare(self) -> tuple[str, pb_node.AnswerRequest]:
        """A fresh request (new id, nonce and signature: a node answers each nonce once)."""
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
        return request.query_id, signed_request_to_proto(SignedRequest(envelope, proof))

    def timed(self) -> float:
        """One call; returns the round trip in ms, after checking the node found the probe."""
        query_id, message = self.prepare()
        started = time.perf_counter_ns()
        response: pb_node.AnswerResponse = self.stub.Answer(message, timeout=CALL_TIMEOUT_S)
        elapsed = _elapsed_ms(started)
        self.answered.append(query_id)
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
    # Per call: query id, the node the gateway waited for longest, the round trip.
    calls: list[Measured] = field(default_factory=list)

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
        slowest = max(result.results, key=lambda r: r.latency_ms)
        self.slowest_node.append(slowest.latency_ms)
        self.calls.append(Measured(result.query_id, slowest.node_id, elapsed))
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


def cpu_per_call(
    timed: Callable[[], float], calls: int, pids: dict[str, int]
) -> dict[str, float] | None:
    """CPU ms per call of each server process (by name), of this client, and wall ms."""
    before = CpuReading.now(pids)
    for _ in range(calls):
        timed()
    return cpu_ms_per_query(before, CpuReading.now(pids), calls)


_RATE = re.compile(r'"(\d+)/(minute|hour|day)"')


def lift_rate_limits(root: Path, factor: int = RATE_LIMIT_FACTOR) -> None:
    """Raise every rate limit of the benchmark's own node policies by ``factor``."""
    for policy in sorted((root / "nodes").glob("*/policy.toml")):
        lines = policy.read_text().splitlines(keepends=True)
        policy.write_text(
            "".join(
                _RATE.sub(lambda m: f'"{int(m[1]) * factor}/{m[2]}"', line)
                if line.lstrip().startswith("rate_limit")
                else line
                for line in lines
            )
        )


def levels(text: str) -> tuple[int, ...]:
    """An argparse type for a comma-separated list of queries in flight: "1,8,64"."""
    try:
        found = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        found = ()
    if not found or any(n < 1 for n in found):
        raise argparse.ArgumentTypeError(
            f"{text!r}: give whole numbers of queries in flight, at least 1, e.g. 1,8,64"
        )
    return found


# The full run, and a smoke run of about 20 s; an option given overrides either.
FULL: dict[str, Any] = {
    "iterations": 300,
    "warmup": 30,
    "cpu_calls": 100,
    "levels": (1, 8, 64),
    "duration": 10.0,
    "level_warmup": 2.0,
    "media": 4000,
}
QUICK: dict[str, Any] = {
    "iterations": 40,
    "warmup": 5,
    "cpu_calls": 20,
    "levels": (1, 8),
    "duration": 2.0,
    "level_warmup": 0.5,
    "media": 500,
}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m liaison.bench",
        description="A federated exact-hash query: latency against one direct gRPC call to a "
        "node, throughput, CPU per query of every process, the ledgers' check, the issue's aims.",
    )
    p.add_argument(
        "--quick",
        action="store_true",
        help="a smoke run of about 20 s: 40 rounds, levels 1,8 of 2 s each, 500 media records",
    )
    p.add_argument("--iterations", type=at_least(2), help="measured latency rounds (300)")
    p.add_argument("--warmup", type=at_least(0), help="unmeasured latency rounds first (30)")
    p.add_argument(
        "--node", choices=HOLDERS, default=HOLDERS[0], help="the node of the direct call"
    )
    p.add_argument("--media", type=at_least(1), help="media records per node (4000)")
    p.add_argument(
        "--plaintext", action="store_true", help="no mutual TLS between gateway and nodes"
    )
    p.add_argument(
        "--cpu-calls",
        type=at_least(1),
        help="sequential calls of each path to read CPU per call (100)",
    )
    p.add_argument(
        "--levels",
        type=levels,
        help="queries in flight of the throughput runs, comma-separated (1,8,64)",
    )
    p.add_argument("--duration", type=positive, help="measured seconds per level (10)")
    p.add_argument("--level-warmup", type=positive, help="warm-up seconds per level (2)")
    p.add_argument(
        "--judge-level",
        type=at_least(1),
        default=federated_report.JUDGED_IN_FLIGHT,
        help="the level whose CPU per query the aims judge "
        f"({federated_report.JUDGED_IN_FLIGHT}; the highest level if it is not measured)",
    )
    p.add_argument(
        "--workdir",
        type=Path,
        help="build the federation here and keep it, to audit it afterwards (an empty or new "
        "folder; by default a temporary one, removed after the run)",
    )
    return p


def _channel(address: str, tls: TlsFiles | None) -> grpc.Channel:
    if tls is None:
        return grpc.insecure_channel(address, options=CHANNEL_OPTIONS)
    return grpc.secure_channel(address, tls.channel_credentials(), options=CHANNEL_OPTIONS)


@dataclass
class Measurements:
    samples: dict[str, list[float]] = field(default_factory=dict)
    slowest: list[float] = field(default_factory=list)
    federated_calls: list[Measured] = field(default_factory=list)
    cpu: dict[str, dict[str, float] | None] = field(default_factory=dict)
    levels: list[LevelResult] = field(default_factory=list)
    asked: Asked = field(default_factory=Asked)


def _measure_running(
    root: Path,
    gateway_address: str,
    args: argparse.Namespace,
    all_nodes: tuple[str, ...],
    tls: bool,
    progress: TextIO,
) -> Measurements:
    found = Measurements()
    query = probe_query()
    node_address = (root / "run" / f"{args.node}.addr").read_text().strip()
    # The direct caller stands where the gateway stands: its key, its certificate.
    pki = root / PKI_DIR
    node_tls = (
        TlsFiles(pki / f"{GATEWAY_ID}.crt", pki / f"{GATEWAY_ID}.key", pki / "ca.pem")
        if tls
        else None
    )
    gateway_key = SigningKey.from_pem_file(root / "gateway" / "gateway.key")
    token = investigator_token(root)
    pids = server_pids(root / "run")
    with (
        _channel(node_address, node_tls) as node_channel,
        _channel(gateway_address, None) as gateway_channel,
        # The gateway writes its own ledger; the direct caller keeps another
        # under the same key, as a second gateway replica would.
        closing(
            Ledger.open(
                str(root / "gateway" / DIRECT_LEDGER), gateway_key, gateway_origin(GATEWAY_ID)
            )
        ) as direct_ledger,
    ):
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
        one_node = FederatedCaller(gateway_channel, token, query, (args.node,), (args.node,))
        print(
            f"latency: {args.iterations} interleaved rounds after {args.warmup} warm-up rounds",
            file=progress,
        )
        try:
            found.samples = measure(
                [
                    Timed("direct", direct.timed),
                    Timed("federated", federated.timed),
                    Timed("gateway_one_node", one_node.timed),
                ],
                warmup=args.warmup,
                iterations=args.iterations,
                progress=progress,
            )
            found.slowest = federated.slowest_node[-args.iterations :]
            found.federated_calls = federated.calls[-args.iterations :]
            print(f"CPU per call: {args.cpu_calls} calls of each path alone", file=progress)
            found.cpu = {
                "direct": cpu_per_call(direct.timed, args.cpu_calls, pids),
                "federated": cpu_per_call(federated.timed, args.cpu_calls, pids),
            }
            print("throughput: federated queries/s", file=progress)
            load = Load(
                gateway_address,
                federated.metadata,
                federated.message,
                frozenset(all_nodes),
            )
            found.levels = run_levels(
                load,
                args.levels,
                warmup_s=args.level_warmup,
                duration_s=args.duration,
                pids=pids,
                progress=progress,
            )
        finally:
            # What was answered before a failure is still checked against the ledgers.
            found.asked.add_federated((c.query_id for c in federated.calls), all_nodes)
            found.asked.add_federated((c.query_id for c in one_node.calls), (args.node,))
            for query_id in direct.answered:
                found.asked.add_direct(query_id, args.node)
            for level in found.levels:
                found.asked.add_federated(level.answered, all_nodes)
    return found


@contextmanager
def _workdir(given: Path | None) -> Iterator[Path]:
    if given is None:
        with tempfile.TemporaryDirectory(prefix="liaison-bench-") as tmp:
            yield Path(tmp)
        return
    if given.exists() and any(given.iterdir()):
        raise BenchFailed(f"--workdir {given} is not empty; give a new or empty folder")
    given.mkdir(parents=True, exist_ok=True)
    yield given


def run(given: argparse.Namespace, progress: TextIO) -> dict[str, Any]:
    args = argparse.Namespace(
        **{**vars(given), **with_preset(given, QUICK if given.quick else FULL)}
    )
    tls = not args.plaintext
    all_nodes = tuple(a.agency_id for a in demo_agencies())
    started = time.perf_counter()
    load_before = loadavg()
    with _workdir(args.workdir) as root:
        print(f"building the demo federation in {root}", file=progress)
        build_federation(root, media=args.media, accounts=300, tls=tls, progress=progress)
        lift_rate_limits(root)
        with running_federation(root, progress=progress) as gateway_address:
            found = _measure_running(root, gateway_address, args, all_nodes, tls, progress)
        # Stopped: every ledger ends on a signed checkpoint, every log is flushed.
        print(
            f"checking {len(found.asked.federated) + len(found.asked.direct)} answered queries "
            "against every ledger; verifying and reconciling the ledgers",
            file=progress,
        )
        checked = check_ledgers(
            root, root / "gateway" / DIRECT_LEDGER, root / "gateway" / "gateway.pub", found.asked
        )
        share = ledger_share(found.federated_calls, root / "run", all_nodes)
        level_shares = {
            str(level.in_flight): ledger_share(
                [
                    Measured(qid, node, ms)
                    for (qid, node), ms in zip(level.measured, level.latencies_ms, strict=True)
                ],
                root / "run",
                all_nodes,
            )
            for level in found.levels
        }
    summaries = {key: Summary.of(values) for key, values in found.samples.items()}
    direct_s, federated_s = summaries["direct"], summaries["federated"]
    doc: dict[str, Any] = {
        "machine": machine(grpc=grpc.__version__),
        # Other work on the machine shows in every number: at the start and at the end.
        "loadavg_start": load_before,
        "loadavg": loadavg(),
        "settings": {
            "iterations": args.iterations,
            "warmup": args.warmup,
            "node": args.node,
            "nodes": len(all_nodes),
            "tls": tls,
            "media_records": args.media,
            "cpu_calls": args.cpu_calls,
            "levels": list(args.levels),
            "duration_s": args.duration,
            "quick": args.quick,
            "level_warmup_s": args.level_warmup,
            "rate_limits_raised": RATE_LIMIT_FACTOR,
            "workdir": None if args.workdir is None else str(args.workdir),
            "client": "one grpc.aio process: N coroutines on one long-lived channel; its CPU "
            "is measured as the client's",
        },
        "latency_ms": {
            **{key: s.as_dict() for key, s in summaries.items()},
            "slowest_node_seen_by_gateway": Summary.of(found.slowest).as_dict(),
        },
        "ratio": ratios(federated_s, direct_s),
        "ratio_gateway_one_node": ratios(summaries["gateway_one_node"], direct_s),
        "cpu_ms_per_call": (found.cpu if all(v is not None for v in found.cpu.values()) else None),
        "throughput": {
            "levels": [level.as_dict() for level in found.levels],
            "errors": sum(level.errors for level in found.levels),
            "ledger_share_by_level": level_shares,
        },
        "ledger_share": share,
        "ledger_check": checked.as_dict(),
        "seconds": round(time.perf_counter() - started, 1),
    }
    federated_report.add_aims(doc, judge_level=args.judge_level, nodes=all_nodes)
    if not checked.ok:
        doc[FAILED] = f"ledger check failed: {checked.failure()}"
    return doc


def main(argv: list[str] | None = None) -> int:
    return bench_main(
        argv,
        build_parser(),
        run,
        federated_report.render_report,
        rpc_call="a measured call",
    )


if __name__ == "__main__":
    raise SystemExit(main())
