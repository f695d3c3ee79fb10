"""`python -m liaison.bench.pdq`: exact near-duplicate PDQ search, on one node and federated.

From the issues: on one node holding 2.7 million and 10 million PDQ hashes
(structured: series of near-duplicates; and 10 million uniformly random ones
with 1% planted near-duplicates), the index's build time, resident memory,
single-query latency (p50, p99) at t = 31, batch throughput in queries per
second (wall, and per CPU-second: per core), and recall against a brute-force
scan, which must be 100%; side by side, in the same run, on the same data and
the same queries:

* ours: ``node.pdq_index.PdqIndex`` as a node holds it: every row's (key,
  hash) pair (multi-index hashing in numpy);
* the previous index: distinct hashes, 12 substrings of 21-22 bits;
* numpy scan: the fastest plain scan, the hashes as four contiguous uint64
  columns, ``np.bitwise_count(col0 ^ q0) + ...`` over cache-sized blocks, one
  query at a time. It is the brute force every answer is checked against
  (itself checked against ``liaison.pdq.distances`` on a sample of queries);
* threatexchange: Meta's ``PDQIndex`` (faiss ``IndexBinaryMultiHash``, 16
  substrings of 16 bits, what the hasher-matcher-actioner runs), built with
  ``PDQIndex.build(entries)`` and asked with ``PDQIndex.query(hex)``; its batch
  is ``PDQMultiHashIndex.search(hexes, 31)``, one faiss ``range_search`` over
  all queries. Optional: ``pip install threatexchange`` (not a dependency).
  And, in a row of its own, that ``PDQMultiHashIndex`` alone, without
  PDQIndex's Python entries: how much of the memory is faiss's.

Each contender is built and measured in its own fresh interpreter, so one's
allocations never show in another's memory: resident MB is that process's
RSS after building (its input freed) minus its RSS just after its imports;
peak MB is its high-water mark while building (reset just before) minus the
same baseline, so it includes the input hashes, 32 bytes each, that every
contender is given. All of them take hex text and run on one thread
(OMP_NUM_THREADS=1; numpy is single-threaded here anyway).

Then one node over its agency's database: 10 million rows written into the
demo's ruritania media table (SQLite; no index on its PDQ column, then with
one), served by node.near and node.execute as a node runs them: time to serve
from nothing and from the persisted index, near queries (records, one hash,
a row filter) through ``Executor.run`` steadily and while a separate process
inserts, deletes and changes rows, refresh rounds run and a compaction runs,
memory steady and during that maintenance (the compaction child's too), and
what the index made of the writer's changes; and, in the same run, the
previous design (distinct hashes rebuilt from the whole column, rows fetched by
hash) as the baseline.

Then federated: the demo federation with a million PDQ hashes per node (rows
written straight into each agency's own media table), asked a batch of
10,000 hashes through the gateway as an investigator would
(``liaison.cli.batch.batch_search``: chunks of 1,000, each one signed, logged,
policy-checked request), end to end.

    python -m liaison.bench.pdq [--sizes 2700000,10000000] [--random-sizes 10000000]
        [--queries N] [--quick] [--no-threatexchange] [--node/--no-node]
        [--node-size N] [--node-window S] [--no-node-baseline]
        [--federated/--no-federated] [--json]
"""

from __future__ import annotations

import argparse
import gc
import hashlib
import importlib
import importlib.metadata
import importlib.util
import json
import os
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from contextlib import closing
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TextIO

import numpy as np
import numpy.typing as npt

from liaison.bench.runner import (
    BenchFailed,
    at_least,
    bench_main,
    loadavg,
    machine,
    positive,
    with_preset,
)
from liaison.cli import render
from liaison.demo.pdq_data import near, planted_hashes, random_hashes, synthetic_hashes
from liaison.errors import LiaisonError
from liaison.hashing.pdq import PDQ_WORDS, hex_from_words, words_from_hex
from node.pdq_index import LAYOUT_12X21, LAYOUT_16X16, PdqIndex

if TYPE_CHECKING:
    from liaison.demo.data import LocalTable

ROOT = Path(__file__).resolve().parents[2]
THRESHOLD = 31  # Meta's recommended distance; threatexchange's PDQIndex has it fixed
NEAR_SHARE = 0.5  # of the queries: near-duplicates of a stored hash; the rest random
MAX_FLIPS = 30  # a near-duplicate query is 1..MAX_FLIPS bits from its stored hash
WARMUP = 20  # untimed single queries first (plans, caches, faiss's first call)
CROSS_CHECK = 16  # queries whose brute-force answers are checked against pdq.distances
SCAN_BLOCK = 1 << 16  # hashes per block of the numpy scan (fastest measured here)
MIB = 1 << 20

# The aims, from the issue.
AIM_BATCH_VS_TX = 4.0  # at least this many times threatexchange's batch throughput
AIM_MEMORY_VS_TX = 0.25  # at most this share of threatexchange's resident memory
AIM_P50_MS = 1.0  # single-query p50 under this many ms at 2.7 million hashes
AIM_P50_SIZE = 2_700_000
AIM_RESIDENT_MB = 1024.0  # at most 1 GB resident for 10 million hashes
AIM_RESIDENT_SIZE = 10_000_000
AIM_LOOKUPS_PER_CORE = 4000  # batch lookups per CPU-second at 10 million random hashes
AIM_LOOKUPS_SIZE = 10_000_000

OURS, SCAN, TX, TX_FAISS = "ours", "numpy_scan", "threatexchange", "threatexchange_faiss"
PREVIOUS = "previous"
LABELS = {
    OURS: "ours (PdqIndex)",
    PREVIOUS: "  previous: distinct hashes",
    SCAN: "numpy scan",
    TX: "threatexchange PDQIndex",
    TX_FAISS: "  its faiss index alone",
}
FED_CASE_REF = "GEN-BENCH-PDQ"
FED_PURPOSE = "csam-investigation"
FED_DEADLINE_MS = 30_000  # the gateway's maximum; its 2 s default is for single questions
CATEGORIES = ("A", "B", "C", "baseline")

Words = npt.NDArray[np.uint64]
Positions = npt.NDArray[np.intp]


@dataclass(frozen=True, slots=True)
class Settings:
    sizes: tuple[int, ...]
    random_sizes: tuple[int, ...]
    queries: int
    singles: int
    threatexchange: bool
    federated: bool
    fed_per_node: int
    fed_hashes: int
    fed_distance: int
    seed: int
    node: bool = True
    node_size: int = 10_000_000
    node_queries: int = 1000
    node_window_s: float = 60.0
    node_refresh_s: float = 5.0
    node_baseline: bool = True
    node_baseline_queries: int = 30


FULL: dict[str, Any] = {
    "sizes": (2_700_000, 10_000_000),
    "random_sizes": (10_000_000,),
    "queries": 10_000,
    "singles": 1000,
    "fed_per_node": 1_000_000,
    "fed_hashes": 10_000,
    "node_size": 10_000_000,
    "node_queries": 1000,
    "node_window": 60.0,
}
QUICK: dict[str, Any] = {
    "sizes": (100_000, 300_000),
    "random_sizes": (100_000,),
    "queries": 1000,
    "singles": 200,
    "fed_per_node": 50_000,
    "fed_hashes": 2000,
    "node_size": 30_000,
    "node_queries": 100,
    "node_window": 6.0,
}


def _stats_ms(samples: Sequence[float]) -> dict[str, float]:
    ordered = sorted(samples)
    p99 = statistics.quantiles(ordered, n=100, method="inclusive")[98] if len(ordered) > 1 else 0
    return {
        "samples": len(ordered),
        "p50_ms": round(statistics.median(ordered), 4),
        "p99_ms": round(p99, 4),
        "mean_ms": round(statistics.fmean(ordered), 4),
        "max_ms": round(ordered[-1], 4),
    }


def make_queries(words: Words, count: int, seed: int) -> Words:
    """``count`` queries: near-duplicates of stored hashes (1..30 bits off) and random ones."""
    rng = np.random.default_rng(seed)
    n_near = min(round(count * NEAR_SHARE), count) if len(words) else 0
    picks = rng.integers(0, max(len(words), 1), size=n_near)
    flips = rng.integers(1, MAX_FLIPS, size=n_near, endpoint=True)
    rows = [near(words[i], int(f), rng) for i, f in zip(picks, flips, strict=True)]
    near_rows = np.stack(rows) if rows else np.zeros((0, PDQ_WORDS), dtype=np.uint64)
    out = np.concatenate([near_rows, random_hashes(count - n_near, rng)])
    shuffled: Words = out[rng.permutation(count)]
    return shuffled


# --- memory of this process (Linux /proc) ------------------------------------


def _status_bytes() -> dict[str, int]:
    """VmRSS and VmHWM of this process, in bytes."""
    found: dict[str, int] = {}
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                key, _, rest = line.partition(":")
                if key in ("VmRSS", "VmHWM"):
                    found[key] = int(rest.split()[0]) * 1024
    except OSError as exc:
        raise BenchFailed("measuring memory needs Linux's /proc/self/status") from exc
    return found


def _reset_peak() -> bool:
    """Reset VmHWM to the current RSS (Linux 4.0+); False if this kernel does not allow it."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
    except OSError:
        return False
    return True


def _pid_memory_mb(pid: int) -> dict[str, float] | None:
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    out: dict[str, float] = {}
    for line in text.splitlines():
        key, _, rest = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            out["rss_mb" if key == "VmRSS" else "peak_mb"] = round(int(rest.split()[0]) / 1024, 1)
    return out


# --- the contenders (each runs in its own worker process) ---------------------


class Contender(Protocol):
    def build(self, words: Words) -> None: ...

    def index_bytes(self) -> int | None: ...

    def held(self) -> int | None:
        """How many distinct hashes the index holds, if it says."""
        ...

    def single(self, hex_text: str) -> Positions:
        """Positions of the stored hashes within THRESHOLD of one query."""
        ...

    def batch(self, hexes: list[str], progress: TextIO) -> tuple[Positions, Positions]:
        """(query number, position) of every match of every query."""
        ...

    def rows(self, positions: Positions, regenerate: Callable[[], Words]) -> Words:
        """The hashes at ``positions``, as 4-word rows."""
        ...


class Ours:
    def __init__(self) -> None:
        self.index: PdqIndex | None = None

    def _index(self) -> PdqIndex:
        if self.index is None:
            raise BenchFailed("the index was asked before it was built")
        return self.index

    def build(self, words: Words) -> None:
        # As a node holds it: every row with its key (here its row number).
        self.index = PdqIndex.build(words, keys=np.arange(len(words), dtype=np.int64))

    def index_bytes(self) -> int | None:
        return self._index().nbytes

    def held(self) -> int | None:
        return self._index().size

    def single(self, hex_text: str) -> Positions:
        positions, _dist = self._index().search(words_from_hex([hex_text])[0], THRESHOLD)
        return positions

    def batch(self, hexes: list[str], progress: TextIO) -> tuple[Positions, Positions]:
        query, positions, _dist = self._index().search_many(words_from_hex(hexes), THRESHOLD)
        return query, positions

    def rows(self, positions: Positions, regenerate: Callable[[], Words]) -> Words:
        picked: Words = np.take(self._index().words, positions, axis=0)
        return picked


class NumpyScan:
    """Brute force over four contiguous uint64 columns, a cache-sized block at a time."""

    def __init__(self) -> None:
        self.cols: list[Words] = []
        self.size = 0

    def build(self, words: Words) -> None:
        self.cols = [np.ascontiguousarray(words[:, j]) for j in range(PDQ_WORDS)]
        self.size = len(words)
        block = min(SCAN_BLOCK, max(self.size, 1))
        self._x = np.empty(block, dtype=np.uint64)
        self._count = np.empty(block, dtype=np.uint8)
        self._sum = np.empty(block, dtype=np.uint8)

    def index_bytes(self) -> int | None:
        return sum(c.nbytes for c in self.cols)

    def held(self) -> int | None:
        return None  # every row, duplicates too

    def scan(self, q: Words) -> Positions:
        found: list[Positions] = []
        c0, c1, c2, c3 = self.cols
        q0, q1, q2, q3 = (np.uint64(v) for v in q)
        for lo in range(0, self.size, SCAN_BLOCK):
            hi = min(self.size, lo + SCAN_BLOCK)
            x, count, total = self._x[: hi - lo], self._count[: hi - lo], self._sum[: hi - lo]
            np.bitwise_xor(c0[lo:hi], q0, out=x)
            np.bitwise_count(x, out=total)
            for col, qj in ((c1, q1), (c2, q2), (c3, q3)):
                np.bitwise_xor(col[lo:hi], qj, out=x)
                np.bitwise_count(x, out=count)
                np.add(total, count, out=total)
            hits = np.flatnonzero(total <= THRESHOLD)
            if len(hits):
                # A uint8 sum of four counts wraps to 0 only at distance 256 (the
                # complement): keep a 0 only where the hash is the query itself.
                wrapped = hits[(total[hits] == 0) & (c0[lo:hi][hits] != q0)]
                if len(wrapped):
                    hits = np.setdiff1d(hits, wrapped)
                found.append(hits + lo)
        return np.concatenate(found) if found else np.zeros(0, dtype=np.intp)

    def single(self, hex_text: str) -> Positions:
        return self.scan(words_from_hex([hex_text])[0])

    def batch(self, hexes: list[str], progress: TextIO) -> tuple[Positions, Positions]:
        qs = words_from_hex(hexes)
        queries: list[Positions] = []
        positions: list[Positions] = []
        step = max(1, len(qs) // 5)
        for i, q in enumerate(qs):
            hits = self.scan(q)
            queries.append(np.full(len(hits), i, dtype=np.intp))
            positions.append(hits)
            if (i + 1) % step == 0 and i + 1 < len(qs):
                print(f"      scanned {i + 1:,}/{len(qs):,} queries", file=progress)
        return np.concatenate(queries), np.concatenate(positions)

    def rows(self, positions: Positions, regenerate: Callable[[], Words]) -> Words:
        return np.stack([c[positions] for c in self.cols], axis=1)


class ThreatExchange:
    """threatexchange's PDQIndex, as the hasher-matcher-actioner builds and asks it."""

    def __init__(self) -> None:
        # Through importlib: an optional, untyped package, imported only in its worker.
        faiss = importlib.import_module("faiss")
        faiss.omp_set_num_threads(1)
        self.pdq_index = importlib.import_module("threatexchange.signal_type.pdq.pdq_index")
        self.index: Any = None

    def build(self, words: Words) -> None:
        def entries() -> Any:
            for lo in range(0, len(words), SCAN_BLOCK):
                for i, text in enumerate(hex_from_words(words[lo : lo + SCAN_BLOCK]), lo):
                    yield text, i

        self.index = self.pdq_index.PDQIndex.build(entries())
        threshold = self.index.get_match_threshold()
        if threshold != THRESHOLD:
            raise BenchFailed(
                f"threatexchange's PDQIndex matches within {threshold} bits, the bench "
                f"within {THRESHOLD}: update bench_pdq"
            )

    def index_bytes(self) -> int | None:
        return None  # faiss does not say; its resident memory does

    def held(self) -> int | None:
        return None  # every entry; faiss gets duplicates too

    def single(self, hex_text: str) -> Positions:
        matches = self.index.query(hex_text)
        return np.fromiter((m.metadata for m in matches), dtype=np.intp, count=len(matches))

    def _faiss(self) -> Any:
        """The PDQMultiHashIndex (faiss IndexBinaryMultiHash and its id map) inside."""
        return self.index.index

    def batch(self, hexes: list[str], progress: TextIO) -> tuple[Positions, Positions]:
        # Ids are the entries' positions (the custom ids PDQIndex gives faiss).
        found = self._faiss().search(hexes, THRESHOLD, return_as_ids=True)
        counts = np.fromiter((len(f) for f in found), dtype=np.intp, count=len(found))
        flat = np.fromiter((i for f in found for i in f), dtype=np.intp, count=int(counts.sum()))
        return np.repeat(np.arange(len(found), dtype=np.intp), counts), flat

    def rows(self, positions: Positions, regenerate: Callable[[], Words]) -> Words:
        picked: Words = np.take(regenerate(), positions, axis=0)
        return picked


class ThreatExchangeFaiss(ThreatExchange):
    """Only the faiss matcher PDQIndex wraps (PDQMultiHashIndex), without its Python entries.

    What a caller holding ids elsewhere would keep; it shows how much of
    PDQIndex's memory is faiss's multi-index hashing and how much is Python.
    """

    def build(self, words: Words) -> None:
        matcher = importlib.import_module("threatexchange.signal_type.pdq.pdq_faiss_matcher")

        def hexes() -> Any:
            for lo in range(0, len(words), SCAN_BLOCK):
                yield from hex_from_words(words[lo : lo + SCAN_BLOCK])

        self.index = matcher.PDQMultiHashIndex()
        self.index.add(hexes(), range(len(words)))

    def _faiss(self) -> Any:
        return self.index

    def single(self, hex_text: str) -> Positions:
        (found,) = self.index.search([hex_text], THRESHOLD, return_as_ids=True)
        return np.asarray(found, dtype=np.intp)


class Previous(Ours):
    """The index as nodes held it before: distinct hashes, 12 substrings of 21-22 bits
    from a million hashes (16 of 16 below), substring 0's buckets runs of ``words``."""

    def build(self, words: Words) -> None:
        layout = LAYOUT_12X21 if len(words) >= 1_000_000 else LAYOUT_16X16
        self.index = PdqIndex.build(words, layout=layout)


CONTENDERS: dict[str, Callable[[], Contender]] = {
    OURS: Ours,
    PREVIOUS: Previous,
    SCAN: NumpyScan,
    TX: ThreatExchange,
    TX_FAISS: ThreatExchangeFaiss,
}


@dataclass(frozen=True, slots=True)
class WorkerSpec:
    contender: str
    size: int
    kind: str  # "structured" or "random"
    singles: int
    data: str  # .npy of the stored hashes, written once by the parent for every contender
    queries: str  # .npy of the queries
    out: str  # .npz the worker writes its answers to


def _pairs(query: Positions, rows: Words) -> Words:
    """Distinct (query number, hash) rows: 5 uint64 columns."""
    out = np.empty((len(query), 1 + PDQ_WORDS), dtype=np.uint64)
    out[:, 0] = query
    out[:, 1:] = rows
    unique: Words = np.unique(out, axis=0) if len(out) else out
    return unique


def _digest(a: Words) -> str:
    return hashlib.sha256(np.ascontiguousarray(a).data.cast("B")).hexdigest()


def _code_digest(cls: type) -> str:
    """SHA-256 (first 12 hex digits) of the source file of the module that ``cls`` wraps."""
    ours = cls in (Ours, Previous)
    module = sys.modules[PdqIndex.__module__] if ours else sys.modules[__name__]
    path = getattr(module, "__file__", None)
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:12] if path else ""


def _mb(n: int) -> float:
    return round(n / MIB, 1)


def worker(spec: WorkerSpec, progress: TextIO) -> dict[str, Any]:
    """Build one contender over ``spec.size`` hashes and measure it; in its own process."""
    name = f"    {spec.contender}"
    contender = CONTENDERS[spec.contender]()
    gc.collect()
    baseline = _status_bytes()["VmRSS"]
    print(f"{name}: loading {spec.size:,} hashes", file=progress)
    words: Words = np.load(spec.data)
    queries: Words = np.load(spec.queries)
    hexes = hex_from_words(queries)
    data_digest, query_digest = _digest(words), _digest(queries)
    gc.collect()
    peak_reset = _reset_peak()
    before = _status_bytes()["VmRSS"]
    print(f"{name}: building", file=progress)
    started = time.perf_counter()
    contender.build(words)
    build_s = time.perf_counter() - started
    peak = _status_bytes()["VmHWM"]
    del words
    gc.collect()
    after = _status_bytes()["VmRSS"]
    print(
        f"{name}: built in {build_s:.1f} s, {_mb(after - baseline):,.0f} MB resident; "
        f"{WARMUP} warm-up + {spec.singles:,} single queries",
        file=progress,
    )
    for text in hexes[-WARMUP:]:
        contender.single(text)
    latencies: list[float] = []
    single_q: list[Positions] = []
    single_pos: list[Positions] = []
    for i, text in enumerate(hexes[: spec.singles]):
        t0 = time.perf_counter_ns()
        positions = contender.single(text)
        latencies.append((time.perf_counter_ns() - t0) / 1e6)
        single_q.append(np.full(len(positions), i, dtype=np.intp))
        single_pos.append(positions)
    print(f"{name}: a batch of {len(hexes):,} queries", file=progress)
    t0 = time.perf_counter_ns()
    cpu0 = time.process_time()
    batch_q, batch_pos = contender.batch(hexes, progress)
    batch_cpu_s = time.process_time() - cpu0
    batch_s = (time.perf_counter_ns() - t0) / 1e9
    print(f"{name}: batch in {batch_s:.2f} s ({len(hexes) / batch_s:,.0f} q/s)", file=progress)

    regenerated: list[Words] = []

    def regenerate() -> Words:
        if not regenerated:
            regenerated.append(np.load(spec.data))
        return regenerated[0]

    sq, sp = np.concatenate(single_q), np.concatenate(single_pos)
    single_pairs = _pairs(sq, contender.rows(sp, regenerate))
    batch_pairs = _pairs(batch_q, contender.rows(batch_pos, regenerate))
    cross_check = None
    if spec.contender == SCAN:
        cross_check = _cross_check(contender, queries, batch_pairs)
    np.savez(spec.out, single=single_pairs, batch=batch_pairs)
    return {
        "contender": spec.contender,
        "size": spec.size,
        "kind": spec.kind,
        "data_sha256": data_digest,
        "queries_sha256": query_digest,
        "build_s": round(build_s, 3),
        "baseline_mb": _mb(baseline),
        "input_mb": _mb(before - baseline),
        "resident_mb": _mb(after - baseline),
        "peak_mb": _mb(peak - baseline),
        "peak_reset": peak_reset,
        "index_mb": None if (b := contender.index_bytes()) is None else _mb(b),
        "held": contender.held(),
        # The index is still being tuned: which version of it these numbers are for.
        "code_sha256": _code_digest(type(contender)),
        "single": _stats_ms(latencies),
        "batch": {
            "queries": len(hexes),
            "seconds": round(batch_s, 3),
            "qps": round(len(hexes) / batch_s, 1),
            # Lookups per CPU-second of this one-threaded process: per core,
            # and less disturbed than wall time by other work on the machine.
            "cpu_seconds": round(batch_cpu_s, 3),
            "qps_per_core": round(len(hexes) / max(batch_cpu_s, 1e-9), 1),
        },
        "pairs": {"single": len(single_pairs), "batch": len(batch_pairs)},
        "cross_check": cross_check,
        "loadavg": loadavg(),
    }


def _cross_check(contender: Contender, queries: Words, batch_pairs: Words) -> dict[str, Any]:
    """The scan's answers for the first queries against liaison.pdq.distances (row layout)."""
    from liaison.hashing.pdq import distances

    assert isinstance(contender, NumpyScan)
    rows = np.stack(contender.cols, axis=1)
    k = min(CROSS_CHECK, len(queries))
    want = []
    for i in range(k):
        hits = np.flatnonzero(distances(rows, queries[i]) <= THRESHOLD)
        want.append(_pairs(np.full(len(hits), i, dtype=np.intp), rows[hits]))
    expected = np.concatenate(want) if want else np.zeros((0, 5), dtype=np.uint64)
    got = batch_pairs[batch_pairs[:, 0] < k]
    return {
        "queries": k,
        "pairs": len(expected),
        "identical": bool(np.array_equal(np.unique(expected, axis=0), got)),
    }


def worker_main(spec_json: str) -> int:
    """Entry of a worker process: one JSON spec in, one JSON result on stdout."""
    return _answer(lambda: worker(WorkerSpec(**json.loads(spec_json)), sys.stderr))


def _answer(compute: Callable[[], dict[str, Any]]) -> int:
    """Print what ``compute`` returns as one JSON line, or the error it meets; the exit status."""
    try:
        result = compute()
    except (LiaisonError, MemoryError) as exc:
        print(json.dumps({"error": f"{type(exc).__name__}: {exc}"}))
        return 1
    print(json.dumps(result))
    return 0


def run_worker(spec: WorkerSpec | NodeSpec, progress: TextIO) -> dict[str, Any]:
    """Run ``spec`` in a fresh interpreter and return the JSON result it prints.

    A ``WorkerSpec`` goes to ``worker_main``, a ``NodeSpec`` to ``node_worker_main``.
    The worker's progress goes to ours; a failure names which worker it was.
    """
    if isinstance(spec, NodeSpec):
        entry, what = "node_worker_main", f"the node worker ({spec.variant}, {spec.mode})"
    else:
        entry, what = "worker_main", f"the {spec.contender} worker at {spec.size:,} hashes"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}
    code = f"import sys; from liaison.bench.pdq import {entry}; sys.exit({entry}(sys.argv[1]))"
    done = subprocess.run(
        [sys.executable, "-c", code, json.dumps(asdict(spec))],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=progress if _has_fileno(progress) else subprocess.PIPE,
        text=True,
        check=False,
    )
    if done.stderr:
        progress.write(done.stderr)
    last = done.stdout.strip().splitlines()[-1:] or ["{}"]
    try:
        result: dict[str, Any] = json.loads(last[0])
    except ValueError:
        result = {}
    if done.returncode != 0 or "error" in result:
        why = result.get("error") or f"exit status {done.returncode} (its output is above)"
        raise BenchFailed(f"{what} failed: {why}")
    return result


def _has_fileno(stream: TextIO) -> bool:
    try:
        stream.fileno()
    except (AttributeError, OSError, ValueError):
        return False
    return True


# --- comparing answers -------------------------------------------------------


def _distance_histogram(pairs: set[tuple[int, ...]], queries: Words) -> dict[str, int]:
    counts: dict[str, int] = {}
    for q, *row in pairs:
        d = int(np.bitwise_count(queries[q] ^ np.array(row, dtype=np.uint64)).sum())
        counts[str(d)] = counts.get(str(d), 0) + 1
    return dict(sorted(counts.items(), key=lambda kv: int(kv[0])))


def compare(truth: Words, got: Words, queries: Words) -> dict[str, Any]:
    """Recall and extras of ``got`` against ``truth``, both (query, hash) rows."""
    want = set(map(tuple, truth.tolist()))
    have = set(map(tuple, got.tolist()))
    missed, extra = want - have, have - want
    return {
        "pairs": len(want),
        "found": len(want) - len(missed),
        "missed": len(missed),
        "extra": len(extra),
        "recall": (len(want) - len(missed)) / len(want) if want else 1.0,
        "exact": not missed and not extra,
        "missed_at_distance": _distance_histogram(missed, queries),
        "extra_at_distance": _distance_histogram(extra, queries),
    }


def size_section(
    s: Settings, size: int, kind: str, folder: Path, tx_skipped: str | None, progress: TextIO
) -> dict[str, Any]:
    names = [OURS, PREVIOUS, SCAN] + ([TX, TX_FAISS] if tx_skipped is None else [])
    print(
        f"  generating {size:,} {kind} hashes and {s.queries:,} queries (seed {s.seed})",
        file=progress,
    )
    started = time.perf_counter()
    if kind == "random":
        words = planted_hashes(size, seed=s.seed)
    else:
        words = synthetic_hashes(size, seed=s.seed)
    queries = make_queries(words, s.queries, s.seed + 1)
    digests = (_digest(words), _digest(queries))
    np.save(folder / "data.npy", words)
    np.save(folder / "queries.npy", queries)
    del words
    generated_s = time.perf_counter() - started
    results: dict[str, dict[str, Any]] = {}
    failed: dict[str, str] = {}
    for name in names:
        print(f"  {LABELS[name]}: its own process", file=progress)
        spec = WorkerSpec(
            name,
            size,
            kind,
            s.singles,
            data=str(folder / "data.npy"),
            queries=str(folder / "queries.npy"),
            out=str(folder / f"{name}.npz"),
        )
        try:
            results[name] = run_worker(spec, progress)
        except BenchFailed as exc:
            if name not in (TX, TX_FAISS):
                raise
            # The yardstick failing (it needs several GB at 10 million) is a result too.
            print(f"  {exc}", file=progress)
            failed[name] = str(exc)
            continue
        if (results[name]["data_sha256"], results[name]["queries_sha256"]) != digests:
            raise BenchFailed(f"the {name} worker read other hashes or queries than were written")
    scan = results[SCAN]
    if not scan["cross_check"]["identical"]:
        raise BenchFailed(
            "the numpy scan disagrees with liaison.pdq.distances on its first "
            f"{scan['cross_check']['queries']} queries: it cannot be the reference"
        )
    with np.load(folder / f"{SCAN}.npz") as f:
        truth_batch = f["batch"]
    truth_single = truth_batch[truth_batch[:, 0] < s.singles]
    for name, r in results.items():
        with np.load(folder / f"{name}.npz") as f:
            single, batch = f["single"], f["batch"]
        r["answers"] = {
            "single": compare(truth_single, single, queries),
            "batch": compare(truth_batch, batch, queries),
        }
        both = r["answers"]
        r["recall"] = (both["single"]["found"] + both["batch"]["found"]) / max(
            1, both["single"]["pairs"] + both["batch"]["pairs"]
        )
        r["extra"] = both["single"]["extra"] + both["batch"]["extra"]
    doc: dict[str, Any] = {
        "size": size,
        "data": kind,
        "distinct": results[OURS]["held"],
        "generated_s": round(generated_s, 1),
        "contenders": results,
        "truth_pairs": len(truth_batch),
    }
    skipped = {
        name: {"skipped": tx_skipped if tx_skipped is not None else f"failed: {failed[name]}"}
        for name in (TX, TX_FAISS)
        if name not in results
    }
    doc["contenders"] = {**results, **skipped}
    for key, name in (("vs_threatexchange", TX), ("vs_threatexchange_faiss", TX_FAISS)):
        tx = results.get(name)
        if tx is None:
            continue
        doc[key] = {
            other: {
                "batch_qps": _over(r["batch"]["qps"], tx["batch"]["qps"]),
                "resident": _over(r["resident_mb"], tx["resident_mb"]),
                "peak": _over(r["peak_mb"], tx["peak_mb"]),
                "p50": _over(r["single"]["p50_ms"], tx["single"]["p50_ms"]),
                "build": _over(r["build_s"], tx["build_s"]),
            }
            for other, r in results.items()
        }
    return doc


def _over(x: float, y: float) -> float | None:
    """x / y to 3 places, or None where y is too small to divide by (toy sizes)."""
    return round(x / y, 3) if y > 0 else None


def _threatexchange_version() -> str | None:
    if importlib.util.find_spec("threatexchange") is None:
        return None
    try:
        return importlib.metadata.version("threatexchange")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


# --- federated -----------------------------------------------------------------


def _fill_media(db: Path, local: LocalTable, words: Words, seed: int) -> int:
    """Append one media row per hash to the agency's own table; returns rows written."""
    pdq = local.columns["pdq"]
    extra = [c for f in ("category", "shareable") if (c := local.columns.get(f))]
    columns = ", ".join(f'"{c}"' for c in [pdq, *extra])
    marks = ", ".join("?" * (1 + len(extra)))
    rng = np.random.default_rng(seed)
    categories = rng.integers(0, len(CATEGORIES), size=len(words))

    def rows() -> Any:
        for lo in range(0, len(words), SCAN_BLOCK):
            for i, text in enumerate(hex_from_words(words[lo : lo + SCAN_BLOCK]), lo):
                yield (text, CATEGORIES[categories[i]], 1)[: 1 + len(extra)]

    with closing(sqlite3.connect(db)) as conn, conn:
        # Identifiers are the demo schema's own table and column names, quoted.
        conn.executemany(
            f'INSERT INTO "{local.table.name}" ({columns}) VALUES ({marks})',  # noqa: S608
            rows(),
        )
    return len(words)


def _stored(db: Path, local: LocalTable) -> Words:
    """The PDQ hash of every row of the agency's table, as the node's index holds them."""
    pdq = local.columns["pdq"]
    with closing(sqlite3.connect(db)) as conn:
        texts = [
            str(v).strip().lower()
            for (v,) in conn.execute(
                f'SELECT "{pdq}" FROM "{local.table.name}" '  # noqa: S608
                f'WHERE "{pdq}" IS NOT NULL'
            )
        ]
    return words_from_hex([t for t in texts if len(t) == 64])


def _index_log(path: Path) -> list[dict[str, Any]]:
    """The node's "pdq index built" log lines: the build at startup, then each refresh."""
    found = []
    try:
        text = path.read_text(errors="replace")
    except FileNotFoundError:
        return []
    for line in text.splitlines():
        if not line.startswith("{"):
            continue
        try:
            obj = json.loads(line)
        except ValueError:
            continue
        if isinstance(obj, dict) and obj.get("msg") == "pdq index built":
            found.append(
                {k: obj.get(k) for k in ("ts", "dataset", "hashes", "bytes", "seconds", "skipped")}
            )
    return found


def federated_section(s: Settings, progress: TextIO) -> dict[str, Any]:
    from gateway.batch import CONCURRENT_CHUNKS
    from liaison.cli.batch import CHUNK, batch_search
    from liaison.demo.data import demo_agencies
    from liaison.demo.run import build_federation, investigator_token, running_federation
    from liaison.messages import SearchInput
    from liaison.query import Comparator, Operation, Predicate, Query

    agencies = demo_agencies()
    with tempfile.TemporaryDirectory(prefix="liaison-bench-pdq-fed-") as tmp:
        root = Path(tmp)
        print("  building the demo federation (mutual TLS)", file=progress)
        build_federation(root, media=100, accounts=50, tls=True, progress=progress)
        held: dict[str, Words] = {}
        generated: list[Words] = []
        nodes: dict[str, dict[str, Any]] = {}
        fill_started = time.perf_counter()
        for k, agency in enumerate(agencies):
            media = next(t for t in agency.tables if t.dataset == "media")
            db = root / "nodes" / agency.agency_id / f"{agency.agency_id}.sqlite3"
            if "pdq" not in media.columns:
                nodes[agency.agency_id] = {"pdq_column": None}
                print(f"  {agency.agency_id}: maps no pdq column; nothing to add", file=progress)
                continue
            print(
                f"  {agency.agency_id}: writing {s.fed_per_node:,} PDQ hashes into "
                f"{media.table.name}.{media.columns['pdq']}",
                file=progress,
            )
            words = synthetic_hashes(s.fed_per_node, seed=s.seed + 100 + k)
            _fill_media(db, media, words, s.seed + 200 + k)
            generated.append(words)
            held[agency.agency_id] = _stored(db, media)
            nodes[agency.agency_id] = {
                "pdq_column": f"{media.table.name}.{media.columns['pdq']}",
                "rows_added": len(words),
                "rows_with_pdq": len(held[agency.agency_id]),
            }
        fill_s = time.perf_counter() - fill_started
        if not generated:
            raise BenchFailed("no demo agency maps a pdq column: nothing to search")
        everything = np.concatenate(generated)
        values = list(
            dict.fromkeys(hex_from_words(make_queries(everything, s.fed_hashes, s.seed + 7)))
        )
        del everything, generated
        # What each node should say per chunk (hit/no-hit), from its own hashes.
        chunks = (len(values) + CHUNK - 1) // CHUNK
        asked = words_from_hex(values)
        for node_id, words in held.items():
            query, _pos, _d = PdqIndex.build(words).search_many(asked, s.fed_distance)
            hit_chunks = np.unique(query // CHUNK)
            nodes[node_id]["expected_hit_chunks"] = len(hit_chunks)
            nodes[node_id]["matching_pairs"] = len(query)
        del held, asked
        template = SearchInput(
            Query(dataset="media", operation=Operation.MATCH),
            FED_PURPOSE,
            FED_CASE_REF,
            deadline_ms=FED_DEADLINE_MS,
        )
        predicate = Predicate("pdq", Comparator.NEAR, tuple(values), s.fed_distance)
        print("  starting the nodes (each builds its index first) and the gateway", file=progress)
        started = time.perf_counter()
        with running_federation(root, progress=progress) as address:
            startup_s = time.perf_counter() - started
            pids = {
                p.stem: int(p.read_text().strip()) for p in sorted((root / "run").glob("*.pid"))
            }
            memory_start = {name: _pid_memory_mb(pid) for name, pid in pids.items()}
            token = investigator_token(root)
            print(
                f"  asking {len(values):,} PDQ hashes within {s.fed_distance} bits "
                f"({chunks} chunks of up to {CHUNK:,}, {CONCURRENT_CHUNKS} at a time)",
                file=progress,
            )
            step = max(1, len(values) // 5)

            def on_progress(done: int, total: int) -> None:
                if done % step < CHUNK or done == total:
                    print(f"    {done:,}/{total:,} hashes answered", file=progress)

            t0 = time.perf_counter()
            result = batch_search(address, token, template, predicate, on_progress=on_progress)
            wall_s = time.perf_counter() - t0
            memory_end = {name: _pid_memory_mb(pid) for name, pid in pids.items()}
            print("  stopping the federation", file=progress)
        for node_id, info in nodes.items():
            triage = result.nodes.get(node_id)
            builds = _index_log(root / "run" / f"{node_id}.log")
            info.update(
                {
                    "chunks_answered": triage.chunks_answered if triage else 0,
                    "chunks_denied": triage.chunks_denied if triage else 0,
                    "chunks_failed": triage.chunks_failed if triage else 0,
                    "hit_chunks": triage.hits if triage else 0,
                    "reasons": list(triage.reasons) if triage else [],
                    "index_at_startup": builds[0] if builds else None,
                    "index_refreshes": builds[1:],
                    "memory_after_startup": memory_start.get(node_id),
                    "memory_after_batch": memory_end.get(node_id),
                }
            )
            if "expected_hit_chunks" in info:
                complete = info["chunks_answered"] == chunks
                info["hits_as_expected"] = (
                    info["hit_chunks"] == info["expected_hit_chunks"] if complete else None
                )
    return {
        "hashes_per_node": s.fed_per_node,
        "asked": len(values),
        "distance": s.fed_distance,
        "chunks": chunks,
        "chunk_size": CHUNK,
        "concurrency": CONCURRENT_CHUNKS,
        "deadline_ms": FED_DEADLINE_MS,
        "query": "media MATCH (hit/no-hit per chunk), purpose csam-investigation",
        "fill_s": round(fill_s, 1),
        "startup_s": round(startup_s, 2),
        "wall_s": round(wall_s, 3),
        "hashes_per_s": round(len(values) / wall_s, 1),
        "gateway_memory": {"start": memory_start.get("gateway"), "end": memory_end.get("gateway")},
        "nodes": nodes,
    }


# --- the run and its report -------------------------------------------------


def _aims(doc: Mapping[str, Any]) -> list[dict[str, Any]]:
    sizes = [z for z in doc["sizes"] if z["data"] == "structured"]
    aims: list[dict[str, Any]] = []

    def add(text: str, met: bool | None, detail: str) -> None:
        aims.append({"aim": text, "met": met, "detail": detail})

    batch_aim = f"batch throughput at least {AIM_BATCH_VS_TX:g}x threatexchange's"
    memory_aim = f"resident memory at most {AIM_MEMORY_VS_TX:.0%} of threatexchange's"
    for aim, key, is_floor, shown in (
        (batch_aim, "batch_qps", True, "{:.1f}x"),
        (memory_aim, "resident", False, "{:.1%}"),
    ):
        ratios = [
            (z["size"], z["vs_threatexchange"][OURS][key])
            for z in sizes
            if z.get("vs_threatexchange", {}).get(OURS, {}).get(key) is not None
        ]
        if not ratios:
            tx = doc["settings"]["threatexchange"]
            why = f"skipped: {tx['skipped']}" if "skipped" in tx else "failed at every size"
            add(aim, None, f"threatexchange {why}")
            continue
        limit = AIM_BATCH_VS_TX if is_floor else AIM_MEMORY_VS_TX
        alone = {
            z["size"]: z["vs_threatexchange_faiss"][OURS][key]
            for z in sizes
            if z.get("vs_threatexchange_faiss", {}).get(OURS, {}).get(key) is not None
        }
        add(
            aim,
            all((r >= limit) if is_floor else (r <= limit) for _, r in ratios),
            "; ".join(
                f"{n:,}: {shown.format(r)}"
                + (f" (of its faiss index alone: {shown.format(alone[n])})" if n in alone else "")
                for n, r in ratios
            ),
        )
    at = {z["size"]: z["contenders"][OURS] for z in sizes}
    ours = at.get(AIM_P50_SIZE)
    add(
        f"single-query p50 under {AIM_P50_MS:g} ms at {AIM_P50_SIZE:,} hashes",
        None if ours is None else ours["single"]["p50_ms"] < AIM_P50_MS,
        "not measured at this size in this run"
        if ours is None
        else f"{ours['single']['p50_ms']:.3f} ms",
    )
    ours = at.get(AIM_RESIDENT_SIZE)
    add(
        f"at most {AIM_RESIDENT_MB / 1024:g} GB resident for {AIM_RESIDENT_SIZE:,} hashes",
        None if ours is None else ours["resident_mb"] <= AIM_RESIDENT_MB,
        "not measured at this size in this run"
        if ours is None
        else f"{ours['resident_mb']:,.0f} MB",
    )
    lookups = [
        (
            z["data"],
            z["contenders"][OURS]["batch"]["qps_per_core"],
            z["contenders"].get(PREVIOUS, {}).get("batch", {}).get("qps_per_core"),
        )
        for z in doc["sizes"]
        if z["size"] == AIM_LOOKUPS_SIZE
    ]
    on_random = [q for kind, q, _ in lookups if kind == "random"]
    add(
        f"at least {AIM_LOOKUPS_PER_CORE:,} lookups per second per core at "
        f"{AIM_LOOKUPS_SIZE:,} uniformly random hashes",
        None if not on_random else all(q >= AIM_LOOKUPS_PER_CORE for q in on_random),
        "; ".join(
            f"{kind}: {q:,.0f}"
            + ("" if not p else f" (the previous index in this run: {p:,.0f}, {q / p:.2f}x)")
            for kind, q, p in lookups
        )
        or "not measured at this size in this run",
    )
    everything = doc["sizes"]
    add(
        "100% recall, nothing extra (single queries and batch, every size)",
        all(
            z["contenders"][OURS]["recall"] == 1.0 and not z["contenders"][OURS]["extra"]
            for z in everything
        ),
        "; ".join(
            f"{z['size']:,} {z['data']}: {z['contenders'][OURS]['recall']:.4%}, "
            f"{z['contenders'][OURS]['extra']} extra"
            for z in everything
        ),
    )
    return aims


def run(s: Settings, progress: TextIO) -> dict[str, Any]:
    started = time.perf_counter()
    tx_version = _threatexchange_version()
    tx_skipped: str | None = None
    if not s.threatexchange:
        tx_skipped = "--no-threatexchange"
    elif tx_version is None:
        tx_skipped = (
            "not installed; `pip install threatexchange` into this environment "
            "(it is not a Liaison dependency)"
        )
    idle = subprocess.run(
        [
            sys.executable,
            "-c",
            "import numpy; print([l for l in open('/proc/self/status') "
            "if l.startswith('VmRSS')][0].split()[1])",
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    doc: dict[str, Any] = {
        "machine": {
            # From grpc's package metadata: only the federated part needs grpc loaded.
            **machine(grpc=importlib.metadata.version("grpcio")),
            "numpy": np.__version__,
            "memory_total_mb": _memory_total_mb(),
            "idle_interpreter_with_numpy_mb": round(int(idle.stdout.strip() or 0) / 1024, 1),
            "loadavg_start": loadavg(),
        },
        "settings": {
            "sizes": list(s.sizes),
            "random_sizes": list(s.random_sizes),
            "queries": s.queries,
            "singles": s.singles,
            "warmup": WARMUP,
            "threshold": THRESHOLD,
            "near_share": NEAR_SHARE,
            "max_flips": MAX_FLIPS,
            "seed": s.seed,
            "threatexchange": (
                {"version": tx_version, "index": "PDQIndex (faiss IndexBinaryMultiHash 16x16)"}
                if tx_skipped is None
                else {"skipped": tx_skipped}
            ),
        },
        "sizes": [],
    }
    runs = [(n, "structured") for n in s.sizes] + [(n, "random") for n in s.random_sizes]
    for size, kind in runs:
        print(f"{size:,} PDQ hashes ({kind}), t = {THRESHOLD}", file=progress)
        with tempfile.TemporaryDirectory(prefix="liaison-bench-pdq-") as tmp:
            doc["sizes"].append(size_section(s, size, kind, Path(tmp), tx_skipped, progress))
    if s.node:
        print(f"one node over {s.node_size:,} rows in its agency's database", file=progress)
        doc["node"] = node_section(s, progress)
    else:
        doc["node"] = {"skipped": "--no-node"}
    doc["aims"] = _aims(doc)
    if s.federated:
        print(
            f"federated: a {s.fed_hashes:,}-hash batch, {s.fed_per_node:,} hashes per node",
            file=progress,
        )
        try:
            doc["federated"] = federated_section(s, progress)
        except LiaisonError as exc:
            # The single-node results stand on their own; report why this part failed.
            print(f"  federated part failed: {exc}", file=progress)
            doc["federated"] = {"failed": str(exc)}
    else:
        doc["federated"] = {"skipped": "--no-federated"}
    doc["machine"]["loadavg_end"] = loadavg()
    doc["runtime_s"] = round(time.perf_counter() - started, 1)
    return doc


def _memory_total_mb() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    return None


def _ratio(x: float | None) -> str:
    return "" if x is None else f"{x:.2f}x"


def render_report(doc: dict[str, Any]) -> str:
    st, mc = doc["settings"], doc["machine"]
    lines: list[str] = []
    for z in doc["sizes"]:
        rows = []
        vs = z.get("vs_threatexchange", {})
        for name in (OURS, PREVIOUS, SCAN, TX, TX_FAISS):
            r = z["contenders"][name]
            if "skipped" in r:
                rows.append([LABELS[name], "skipped", *[""] * 12])
                continue
            v = vs.get(name, {})
            index_mb = "" if r["index_mb"] is None else f"{r['index_mb']:,.0f}"
            rows.append(
                [
                    LABELS[name],
                    f"{r['build_s']:.2f}",
                    f"{r['resident_mb']:,.0f}",
                    f"{r['peak_mb']:,.0f}",
                    index_mb,
                    f"{r['single']['p50_ms']:.3f}",
                    f"{r['single']['p99_ms']:.3f}",
                    f"{r['batch']['qps']:,.0f}",
                    f"{r['batch']['qps_per_core']:,.0f}",
                    f"{r['recall']:.2%}",
                    f"{r['extra']}",
                    _ratio(v.get("batch_qps")),
                    _ratio(v.get("resident")),
                    _ratio(v.get("p50")),
                ]
            )
        scan = z["contenders"][SCAN]
        lines += [
            f"{z['size']:,} PDQ hashes ({z['data']}; {z['distinct']:,} held), "
            f"t = {st['threshold']}: "
            f"{st['singles']:,} single queries "
            f"(after {st['warmup']} warm-up), a batch of {st['queries']:,}; half near-duplicates "
            f"(1-{st['max_flips']} bits from a stored hash), half random",
            "",
            render.table(
                [
                    "contender",
                    "build s",
                    "resident MB",
                    "peak MB",
                    "index MB",
                    "p50 ms",
                    "p99 ms",
                    "batch q/s",
                    "q/s per core",
                    "recall",
                    "extra",
                    "batch vs TX",
                    "memory vs TX",
                    "p50 vs TX",
                ],
                rows,
            ),
            f"reference: the numpy scan's {z['truth_pairs']:,} (query, hash) pairs within "
            f"{st['threshold']} bits; the scan agrees with liaison.pdq.distances on its first "
            f"{scan['cross_check']['queries']} queries ({scan['cross_check']['pairs']} pairs)",
        ]
        for name, r in z["contenders"].items():
            if "answers" in r and not (
                r["answers"]["single"]["exact"] and r["answers"]["batch"]["exact"]
            ):
                for kind in ("single", "batch"):
                    a = r["answers"][kind]
                    lines.append(
                        f"{LABELS[name]} {kind}: missed {a['missed']} (by distance "
                        f"{a['missed_at_distance']}), extra {a['extra']} (by distance "
                        f"{a['extra_at_distance']})"
                    )
        lines.append("")
    lines += _node_lines(doc["node"])
    lines.append("Aims")
    for a in doc["aims"]:
        state = "not measured" if a["met"] is None else ("met" if a["met"] else "NOT met")
        lines.append(f"  {state}: {a['aim']} ({a['detail']})")
    lines.append("")
    fed = doc["federated"]
    if "skipped" in fed:
        lines += [f"Federated: skipped ({fed['skipped']})", ""]
    elif "failed" in fed:
        lines += [f"Federated: FAILED ({fed['failed']})", ""]
    else:
        lines += _federated_lines(fed)
    tx = st["threatexchange"]
    versions = ", ".join(
        f"{z['size']:,}: {z['contenders'][OURS]['code_sha256']}" for z in doc["sizes"]
    )
    lines += [
        f"node/pdq_index.py measured (sha256 prefix): {versions}",
        "resident MB: the contender's process after building, its input freed, minus the same "
        "process just after its imports; peak MB: its high-water mark while building (input "
        "hashes included) over the same baseline; MB = 2^20 bytes; vs TX: the row's value over "
        "threatexchange's PDQIndex (batch: higher is better; memory and p50: lower is better)",
        "threatexchange PDQIndex: what the hasher-matcher-actioner holds, faiss's index plus "
        "PDQIndex's Python entries and id map; its faiss index alone: the PDQMultiHashIndex "
        "inside it, built and asked directly (the same faiss search)",
        "single queries: hex text in, matches out (ours: words_from_hex + PdqIndex.search; "
        "threatexchange: PDQIndex.query); batch: PdqIndex.search_many, the scan one query at a "
        "time, threatexchange PDQMultiHashIndex.search (one faiss range_search); all on one "
        "thread. Every contender matches distance <= 31 (faiss: range_search radius 32, "
        "strictly below)",
        (
            f"threatexchange {tx['version']}: {tx['index']}"
            if "version" in tx
            else f"threatexchange: skipped ({tx['skipped']})"
        ),
        f"machine: {mc['cpu_count']} CPUs ({mc['cpus_usable']} usable), "
        f"{(mc['memory_total_mb'] or 0) / 1024:.0f} GB, {mc['python']}, numpy {mc['numpy']}, "
        f"{mc['platform']}; an idle interpreter with numpy: {mc['idle_interpreter_with_numpy_mb']}"
        " MB",
        f"load average (1, 5, 15 min) at start {mc['loadavg_start']}, at end "
        f"{mc['loadavg_end']}; runtime {doc['runtime_s']:.0f} s",
    ]
    return "\n".join(lines)


def _federated_lines(fed: Mapping[str, Any]) -> list[str]:
    rows = []
    for node_id, n in fed["nodes"].items():
        hashes = "no pdq column" if n["pdq_column"] is None else f"{n['rows_with_pdq']:,}"
        start = n["index_at_startup"]
        built = "" if start is None else f"{start['seconds']:.2f} s, {start['bytes'] / MIB:,.0f} MB"
        expected = n.get("expected_hit_chunks")
        if expected is None:
            hits = str(n["hit_chunks"])
        elif n.get("hits_as_expected") is None:
            hits = f"{n['hit_chunks']} (not all chunks answered)"
        else:
            hits = f"{n['hit_chunks']} (expected {expected})"
        mem = n["memory_after_batch"] or {}
        rows.append(
            [
                node_id,
                hashes,
                built,
                str(len(n["index_refreshes"])),
                f"{n['chunks_answered']}/{fed['chunks']}",
                str(n["chunks_denied"]),
                str(n["chunks_failed"]),
                hits,
                f"{mem.get('rss_mb', 0):,.0f}",
            ]
        )
    lines = [
        f"Federated: {fed['asked']:,} PDQ hashes within {fed['distance']} bits, asked through the "
        f"gateway of the demo federation (3 nodes, mutual TLS), {fed['chunks']} chunks of "
        f"{fed['chunk_size']:,}, {fed['concurrency']} at a time, "
        f"deadline {fed['deadline_ms']:,} ms",
        "",
        f"end to end: {fed['wall_s']:.2f} s, {fed['hashes_per_s']:,.0f} hashes/s",
        "",
        render.table(
            [
                "node",
                "PDQ hashes",
                "index at startup",
                "refreshes",
                "answered",
                "denied",
                "failed",
                "hit chunks",
                "RSS MB",
            ],
            rows,
        ),
    ]
    for node_id, n in fed["nodes"].items():
        for reason in n["reasons"]:
            lines.append(f"{node_id}: {reason}")
        wrong = n.get("hits_as_expected") is False
        if wrong:
            lines.append(f"{node_id}: hit chunks differ from what its own hashes say")
    lines += [
        f"{fed['query']}; hashes written in {fed['fill_s']:.0f} s; federation started in "
        f"{fed['startup_s']:.1f} s (each node builds its index before listening); "
        "refreshes: background rebuilds during the run (every pdq_refresh_s)",
        "",
    ]
    return lines


def _sizes(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(x.replace("_", "")) for x in text.split(","))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(
            f"expected sizes like 2700000,10000000, got {text!r}"
        ) from exc
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"sizes must be at least 1, got {text!r}")
    return values


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m liaison.bench.pdq",
        description="Exact PDQ near-duplicate search: ours, a numpy scan and threatexchange.",
    )
    p.add_argument("--sizes", type=_sizes, help="hashes per index (2700000,10000000)")
    p.add_argument("--queries", type=at_least(2), help="queries in the batch (10,000)")
    p.add_argument("--singles", type=at_least(2), help="single queries timed (1,000)")
    p.add_argument("--quick", action="store_true", help="a smoke run at small sizes")
    p.add_argument("--no-threatexchange", action="store_true", help="skip threatexchange")
    p.add_argument(
        "--federated",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="the federated batch through the demo federation (on)",
    )
    p.add_argument("--fed-per-node", type=at_least(1), help="PDQ hashes per node (1,000,000)")
    p.add_argument("--fed-hashes", type=at_least(1), help="hashes in the federated batch (10,000)")
    p.add_argument(
        "--fed-distance",
        type=at_least(0),
        default=24,
        help="distance of the federated batch (24: sylvania's policy allows no more)",
    )
    p.add_argument(
        "--random-sizes",
        type=_sizes,
        help="hashes per index, uniformly random with planted near-duplicates (10000000)",
    )
    p.add_argument(
        "--node",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="one node over its agency's table: start, restart, queries during maintenance (on)",
    )
    p.add_argument("--node-size", type=at_least(1), help="rows in the node's table (10,000,000)")
    p.add_argument("--node-queries", type=at_least(2), help="steady near queries timed (1,000)")
    p.add_argument(
        "--node-window", type=positive, help="seconds of queries during maintenance (60)"
    )
    p.add_argument(
        "--node-baseline",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also the previous design (hash-only index, fetched by hash) in the same run (on)",
    )
    p.add_argument("--seed", type=int, default=2026, help="seed of the hashes and queries")
    return p


def settings_from(args: argparse.Namespace) -> Settings:
    picked = with_preset(args, QUICK if args.quick else FULL)
    return Settings(
        sizes=picked["sizes"],
        random_sizes=picked["random_sizes"],
        queries=picked["queries"],
        singles=min(picked["singles"], picked["queries"]),
        threatexchange=not args.no_threatexchange,
        federated=args.federated,
        fed_per_node=picked["fed_per_node"],
        fed_hashes=min(picked["fed_hashes"], 100_000),
        fed_distance=args.fed_distance,
        seed=args.seed,
        node=args.node,
        node_size=picked["node_size"],
        node_queries=picked["node_queries"],
        node_window_s=picked["node_window"],
        node_baseline=args.node_baseline,
    )


def main(argv: list[str] | None = None) -> int:
    return bench_main(
        argv,
        build_parser(),
        lambda args, progress: run(settings_from(args), progress),
        render_report,
    )


# --- one node over its agency's database -------------------------------------------

NODE_DATASET = "media"
NODE_FIELDS = ("pdq", "pdq_distance", "category")
NODE_CHECKED = 20  # steady-state answers compared with a brute-force scan of the rows
NODE_COMPACT_AFTER_S = 3.0  # into the maintenance window, a compaction is started
# The agency's tools while the node serves: every 0.1 s, one transaction.
WRITER_STEP_S = 0.1
WRITER_INSERTS, WRITER_DELETES, WRITER_UPDATES = 20, 5, 5


@dataclass(frozen=True, slots=True)
class NodeSpec:
    db: str  # the agency's SQLite file
    state: str  # the node's state folder
    data: str  # .npy of the stored hashes; row i has key i + 1
    shareable: str  # .npy of each row's releasable flag
    variant: str  # "no_pdq_index" or "pdq_indexed"
    mode: str  # "keyed" (ours) or "hash_only" (the previous design)
    queries: int
    window_s: float
    refresh_s: float
    seed: int
    writer_seed: int  # what the agency's tools insert, delete and change
    cold: bool  # start without a persisted index (its first build is measured)


def _register_mapping() -> Any:
    from liaison.config import DatasetMapping
    from liaison.demo.data import demo_agencies

    agency = next(a for a in demo_agencies() if a.agency_id == "ruritania")
    media = next(t for t in agency.tables if t.dataset == NODE_DATASET)
    return media, DatasetMapping(NODE_DATASET, media.table.name, dict(media.columns))


def _fill_register(db: Path, words: Words, shareable: npt.NDArray[np.bool_], seed: int) -> None:
    """The demo's ruritania media table (no index on its PDQ column), one row per hash."""
    import sqlalchemy as sa

    media, _ = _register_mapping()
    engine = sa.create_engine(f"sqlite:///{db}")
    media.table.metadata.create_all(engine, tables=[media.table])
    engine.dispose()
    rng = np.random.default_rng(seed)
    categories = rng.integers(0, len(CATEGORIES), size=len(words))
    table, pdq = media.table.name, media.columns["pdq"]
    cat, ok = media.columns["category"], media.columns["shareable"]

    def rows() -> Any:
        for lo in range(0, len(words), SCAN_BLOCK):
            texts = hex_from_words(words[lo : lo + SCAN_BLOCK])
            for i, text in enumerate(texts, lo):
                yield (i + 1, text, CATEGORIES[categories[i]], int(shareable[i]))

    with closing(sqlite3.connect(db)) as conn:
        conn.execute("PRAGMA journal_mode = WAL")
        with conn:
            # Identifiers are the demo schema's own table and column names, quoted.
            conn.executemany(
                f'INSERT INTO "{table}" ("entry_id", "{pdq}", "{cat}", "{ok}") '  # noqa: S608
                "VALUES (?, ?, ?, ?)",
                rows(),
            )


def _index_pdq_column(db: Path) -> float:
    media, _ = _register_mapping()
    started = time.perf_counter()
    with closing(sqlite3.connect(db)) as conn, conn:
        conn.execute(
            f'CREATE INDEX "ix_bench_pdq" ON "{media.table.name}" ("{media.columns["pdq"]}")'
        )
    return time.perf_counter() - started


def writer_main(argv: Sequence[str]) -> None:
    """The agency's tools, in a process of their own: insert, delete, update until told to stop.

    Every ``step`` seconds one transaction; what it did goes to ``log`` as JSON lines.
    """
    db, table, pdq, cat, ok, rows, seed, step, ins, dels, ups, log_path, stop = argv
    n, rng = int(rows), np.random.default_rng(int(seed))
    k_ins, k_del, k_up = int(ins), int(dels), int(ups)
    with closing(sqlite3.connect(db, timeout=30)) as conn, open(log_path, "w") as log:
        next_key = int(conn.execute(f'SELECT MAX(entry_id) FROM "{table}"').fetchone()[0]) + 1  # noqa: S608
        while not Path(stop).exists():
            began = time.monotonic()
            new = [rng.bytes(32).hex() for _ in range(k_ins)]
            gone = [int(x) for x in rng.integers(1, n + 1, size=k_del)]
            changed = [int(x) for x in rng.integers(1, n + 1, size=k_up)]
            values = [rng.bytes(32).hex() for _ in range(k_up)]
            marks = ",".join("?" * (k_del + k_up))
            # Identifiers are the demo schema's own table and column names, quoted.
            with conn:
                old = dict(
                    conn.execute(
                        f'SELECT entry_id, "{pdq}" FROM "{table}" '  # noqa: S608
                        f"WHERE entry_id IN ({marks})",
                        gone + changed,
                    ).fetchall()
                )
                conn.executemany(
                    f'INSERT INTO "{table}" (entry_id, "{pdq}", "{cat}", "{ok}") '  # noqa: S608
                    "VALUES (?, ?, 'A', 1)",
                    [(next_key + i, h) for i, h in enumerate(new)],
                )
                conn.executemany(
                    f'DELETE FROM "{table}" WHERE entry_id = ?',  # noqa: S608
                    [(k,) for k in gone],
                )
                conn.executemany(
                    f'UPDATE "{table}" SET "{pdq}" = ?, "{ok}" = 1 WHERE entry_id = ?',  # noqa: S608
                    list(zip(values, changed, strict=True)),
                )
            for i, h in enumerate(new):
                log.write(json.dumps(["insert", next_key + i, h]) + "\n")
            for k in gone:
                log.write(json.dumps(["delete", k, old.get(k)]) + "\n")
            for k, h in zip(changed, values, strict=True):
                log.write(json.dumps(["update", k, old.get(k), h]) + "\n")
            log.flush()
            next_key += k_ins
            time.sleep(max(0.0, float(step) - (time.monotonic() - began)))


_WRITER_CODE = "import sys; from liaison.bench.pdq import writer_main; writer_main(sys.argv[1:])"


class _Sampler:
    """Resident memory of this process and of a compaction child, every 0.2 s."""

    def __init__(self) -> None:
        import threading

        self.peak_rss = 0
        self.peak_anon = 0
        self.began = time.monotonic()
        self.timeline: list[tuple[float, float, float, float]] = []  # s, RSS, anon, child MB
        self.child_anon = 0
        self.child_rss = 0
        self.child: Callable[[], int | None] = lambda: None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.2):
            mine = _proc_status("self")
            self.peak_rss = max(self.peak_rss, mine.get("VmRSS", 0))
            self.peak_anon = max(self.peak_anon, mine.get("RssAnon", 0))
            pid = self.child()
            theirs = _proc_status(str(pid)) if pid is not None else {}
            self.child_anon = max(self.child_anon, theirs.get("RssAnon", 0))
            self.child_rss = max(self.child_rss, theirs.get("VmRSS", 0))
            self.timeline.append(
                (
                    round(time.monotonic() - self.began, 1),
                    _mb(mine.get("VmRSS", 0)),
                    _mb(mine.get("RssAnon", 0)),
                    _mb(theirs.get("RssAnon", 0)),
                )
            )

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def _proc_status(pid: str) -> dict[str, int]:
    """VmRSS, VmHWM, RssAnon, RssFile of a process, in bytes ({} if it is gone)."""
    found: dict[str, int] = {}
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return found
    for line in text.splitlines():
        key, _, rest = line.partition(":")
        if key in ("VmRSS", "VmHWM", "RssAnon", "RssFile"):
            found[key] = int(rest.split()[0]) * 1024
    return found


def node_worker(spec: NodeSpec, progress: TextIO) -> dict[str, Any]:
    """Start a node's PDQ index over the register and ask it near queries; in its own process."""
    import dataclasses
    import logging
    import shutil

    from liaison.catalog import CATALOG_V1
    from liaison.messages import QueryRequest, Requester
    from liaison.query import Comparator, Operation, Predicate, Query
    from node.database import bind_schema, open_read_only
    from node.differencing import RecentAggregates
    from node.execute import Executor
    from node.near import NearIndexes
    from policies import Grant
    from policies.model import RowFilter

    name = f"    {spec.variant}, {spec.mode}"
    gc.collect()
    baseline = _status_bytes()["VmRSS"]
    words: Words = np.load(spec.data, mmap_mode="r")
    shareable = np.load(spec.shareable)
    n = len(words)
    _, mapping = _register_mapping()
    state = Path(spec.state)
    if spec.cold:
        shutil.rmtree(state, ignore_errors=True)
    state.mkdir(parents=True, exist_ok=True)
    events: list[tuple[float, str, dict[str, Any]]] = []

    class Recorder(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            extra = {k: v for k, v in record.__dict__.items() if k in _LOG_FIELDS}
            events.append((time.monotonic(), record.getMessage(), extra))

    node_log = logging.getLogger("liaison.node")
    node_log.addHandler(Recorder())
    node_log.setLevel(logging.INFO)
    url = f"sqlite:///{spec.db}"

    def start() -> tuple[Any, NearIndexes, float, float]:
        t0 = time.perf_counter()
        engine = open_read_only(url)
        schema = bind_schema(engine, (mapping,), CATALOG_V1)
        if spec.mode == "hash_only":
            schema = {k: dataclasses.replace(v, row_key=None) for k, v in schema.items()}
        t1 = time.perf_counter()
        near = NearIndexes(engine, schema, refresh_s=spec.refresh_s, state_dir=state)
        return (engine, schema), near, t1 - t0, time.perf_counter() - t1

    print(
        f"{name}: starting ({'no persisted index' if spec.cold else 'persisted index'})",
        file=progress,
    )
    (engine, schema), near, bind_s, index_s = start()
    started = {
        "bind_s": round(bind_s, 3),
        "index_s": round(index_s, 3),
        "serve_s": round(bind_s + index_s, 3),
    }
    print(f"{name}: serving after {bind_s + index_s:.1f} s", file=progress)
    executor = Executor(
        engine=engine,
        transform_secret=b"\x00" * 32,
        maps={},
        recent=RecentAggregates(state / "aggregates.sqlite3"),
        default_limit=100,
        near=near,
    )
    grant = Grant(
        "bench",
        NODE_FIELDS,
        (),
        0,
        100,
        row_filters=(RowFilter("shareable", Comparator.EQ, ("true",)),),
    )
    who = Requester("genovia", "inv.bench", ("investigator",), "bench")
    asked = make_queries(np.asarray(words[: min(n, 1_000_000)]), spec.queries, spec.seed)
    hexes = hex_from_words(asked)

    def ask(value: str) -> tuple[float, dict[str, Any]]:
        query = Query(
            NODE_DATASET,
            Operation.RECORDS,
            (Predicate("pdq", Comparator.NEAR, (value,), THRESHOLD),),
            fields=NODE_FIELDS,
            limit=100,
        )
        request = QueryRequest(
            "q",
            "gw",
            0,
            1,
            b"\x00" * 16,
            ("bench",),
            who,
            "csam-investigation",
            "C-1",
            CATALOG_V1.version,
            query,
        )
        t0 = time.perf_counter_ns()
        answer = executor.run(schema[NODE_DATASET], query, grant, request, 0)
        took = (time.perf_counter_ns() - t0) / 1e6
        if not isinstance(answer, dict):
            raise BenchFailed(f"the node refused a near query: {answer}")
        return took, answer

    for value in hexes[:WARMUP]:
        ask(value)
    steady = [ask(value)[0] for value in hexes]
    # Exactness: answers against a scan of every row (shareable ones are released).
    checked = _check_answers(
        words, shareable, asked[:NODE_CHECKED], [ask(v)[1] for v in hexes[:NODE_CHECKED]]
    )
    status = _proc_status("self")
    result: dict[str, Any] = {
        "variant": spec.variant,
        "mode": spec.mode,
        "cold": spec.cold,
        "rows": n,
        "start": started,
        "steady": _stats_ms(steady),
        "exact": checked,
        "steady_rss_mb": _mb(status.get("VmRSS", 0) - baseline),
        "steady_anon_mb": _mb(status.get("RssAnon", 0)),
        "steady_file_mb": _mb(status.get("RssFile", 0)),
        "index": {"entries": near.index(NODE_DATASET, "pdq").size},  # type: ignore[union-attr]
    }
    print(
        f"{name}: steady p50 {result['steady']['p50_ms']:.2f} ms, "
        f"p99 {result['steady']['p99_ms']:.2f} ms",
        file=progress,
    )
    if spec.mode == "hash_only" or spec.window_s <= 0:
        near.close()
        return result
    # Restart from the persisted index.
    near.close()
    engine.dispose()
    (engine, schema), near, bind_s, index_s = start()
    executor.near = near
    executor.engine = engine
    result["restart"] = {
        "bind_s": round(bind_s, 3),
        "index_s": round(index_s, 3),
        "serve_s": round(bind_s + index_s, 3),
    }
    print(f"{name}: restarted, serving after {bind_s + index_s:.2f} s", file=progress)
    for value in hexes[:WARMUP]:
        ask(value)
    result.update(_maintenance_window(spec, near, ask, hexes, events, baseline, progress))
    window, memory = result["window"], result["memory"]
    print(
        f"{name}: during maintenance p50 {window['all']['p50_ms']:.2f} ms, p99 "
        f"{window['all']['p99_ms']:.2f} ms; memory peak {memory['peak_rss_mb']:,.0f} MB over "
        f"steady {memory['steady_rss_mb']:,.0f} MB",
        file=progress,
    )
    near.close()
    return result


_LOG_FIELDS = ("added", "removed", "entries", "delta", "tombstones", "seconds", "segment", "reason")


def _check_answers(
    words: Words, shareable: npt.NDArray[np.bool_], asked: Words, answers: list[dict[str, Any]]
) -> dict[str, Any]:
    scan = NumpyScan()
    scan.build(np.asarray(words))
    missed = extra = pairs = 0
    for query, answer in zip(asked, answers, strict=True):
        hits = scan.scan(query)
        hits = hits[shareable[hits]]
        want = sorted(
            (h, str(int(np.bitwise_count(words[i] ^ query).sum())))
            for i, h in zip(hits.tolist(), hex_from_words(np.asarray(words)[hits]), strict=True)
        )
        got = sorted((row[0], row[1]) for row in answer["rows"])
        pairs += len(want)
        missed += len(set(want) - set(got))
        extra += len(set(got) - set(want))
    return {"queries": len(asked), "rows": pairs, "missed": missed, "extra": extra}


def _maintenance_window(
    spec: NodeSpec,
    near: Any,
    ask: Callable[[str], tuple[float, dict[str, Any]]],
    hexes: list[str],
    events: list[tuple[float, str, dict[str, Any]]],
    baseline: int,
    progress: TextIO,
) -> dict[str, Any]:
    """Queries while the agency writes, the index follows, and a compaction runs."""
    media, _ = _register_mapping()
    index = near.index(NODE_DATASET, "pdq")
    folder = Path(spec.state)
    stop = folder / "writer.stop"
    stop.unlink(missing_ok=True)
    log_path = folder / "writer.jsonl"
    writer = subprocess.Popen(
        [
            sys.executable,
            "-c",
            _WRITER_CODE,
            spec.db,
            media.table.name,
            media.columns["pdq"],
            media.columns["category"],
            media.columns["shareable"],
            str(len(np.load(spec.shareable, mmap_mode="r"))),
            str(spec.writer_seed),
            str(WRITER_STEP_S),
            str(WRITER_INSERTS),
            str(WRITER_DELETES),
            str(WRITER_UPDATES),
            str(log_path),
            str(stop),
        ],
    )
    steady_rss = _proc_status("self").get("VmRSS", 0)
    _reset_peak()
    sampler = _Sampler()

    def child() -> int | None:
        job = index.compaction
        proc = getattr(job, "_proc", None) if job is not None else None
        return None if proc is None or proc.poll() is not None else int(proc.pid)

    sampler.child = child
    print(
        f"    maintenance: {spec.window_s:.0f} s of queries while the table changes "
        f"(refresh every {spec.refresh_s:g} s, a compaction after {NODE_COMPACT_AFTER_S:g} s)",
        file=progress,
    )
    began = time.monotonic()
    near.start()
    samples: list[tuple[float, float, bool, bool]] = []
    compacting_since: float | None = None
    i = 0
    while time.monotonic() - began < spec.window_s:
        now = time.monotonic() - began
        if compacting_since is None and now >= min(NODE_COMPACT_AFTER_S, spec.window_s / 3):
            index.compact()
            compacting_since = now
        job = index.compaction
        busy = index._writer.locked()
        took, _ = ask(hexes[i % len(hexes)])
        samples.append((now, took, job is not None and not job.done, busy))
        i += 1
    stop.touch()
    writer.wait(30)
    job = index.compaction
    if job is not None:
        job.wait(600)
    sampler.stop()
    peak = _status_bytes()["VmHWM"]
    # Two more rounds: every change the writer made is now past a round.
    index.refresh(full=False)
    index.refresh(full=False)
    followed = _followed(near, log_path)
    rounds = [e for e in events if e[0] >= began and e[1] == "pdq index updated"]
    compactions = [e for e in events if e[0] >= began and e[1] == "pdq index compacted"]
    during = [t for _, t, c, _ in samples if c]
    busy = [t for _, t, _, b in samples if b]
    return {
        "window": {
            "seconds": spec.window_s,
            "refresh_s": spec.refresh_s,
            "all": _stats_ms([t for _, t, _, _ in samples]),
            "during_compaction": _stats_ms(during) if during else None,
            "during_rounds": _stats_ms(busy) if busy else None,
            "rounds": len(rounds),
            "round_seconds": [e[2].get("seconds") for e in rounds],
            "compactions": [e[2] for e in compactions],
            "writer": {
                "inserts_per_s": WRITER_INSERTS / WRITER_STEP_S,
                "deletes_per_s": WRITER_DELETES / WRITER_STEP_S,
                "updates_per_s": WRITER_UPDATES / WRITER_STEP_S,
            },
        },
        "memory": {
            "steady_rss_mb": _mb(steady_rss - baseline),
            "peak_rss_mb": _mb(max(peak, sampler.peak_rss) - baseline),
            "peak_over_steady": _over(
                max(peak, sampler.peak_rss) - baseline, steady_rss - baseline
            ),
            "compaction_child_anon_mb": _mb(sampler.child_anon),
            "compaction_child_rss_mb": _mb(sampler.child_rss),
            "with_child_over_steady": _over(
                max(peak, sampler.peak_rss) - baseline + sampler.child_anon, steady_rss - baseline
            ),
        },
        "followed": followed,
        # Every 0.2 s: seconds into the window, this process's RSS and anonymous MB,
        # the compaction child's anonymous MB.
        "memory_timeline": sampler.timeline,
    }


def _followed(near: Any, log_path: Path) -> dict[str, Any]:
    """What the writer did, as the index sees it two rounds later."""
    inserted: dict[int, str] = {}
    deleted: dict[int, str] = {}
    updated: dict[int, tuple[str, str]] = {}
    for line in log_path.read_text().splitlines():
        kind, key, *values = json.loads(line)
        if kind == "insert":
            inserted[key] = values[0]
        elif kind == "delete":
            inserted.pop(key, None)
            updated.pop(key, None)
            if values[0] is not None:
                deleted[key] = values[0]
        else:
            first = updated.get(key, (values[0], values[1]))[0]
            updated[key] = (first, values[1])
            inserted.pop(key, None)
    still = {k: h for k, h in deleted.items() if k not in updated}

    def held(key: int, value: str) -> bool:
        found = near.match(NODE_DATASET, "pdq", [value], 0)
        return found.keys is not None and key in found.keys

    new_found = sum(held(k, h) for k, h in inserted.items())
    gone_found = sum(held(k, h) for k, h in still.items() if h)
    old_found = sum(held(k, old) for k, (old, new) in updated.items() if old and old != new)
    new_value_found = sum(held(k, new) for k, (_, new) in updated.items())
    return {
        "inserted": len(inserted),
        "inserted_matched": new_found,
        "deleted": len(still),
        "deleted_still_in_index": gone_found,
        "updated": len(updated),
        "old_value_still_in_index": old_found,
        "new_value_in_index": new_value_found,
    }


def node_worker_main(spec_json: str) -> int:
    """Entry of a node worker process: one JSON ``NodeSpec`` in, one JSON result on stdout."""
    return _answer(lambda: node_worker(NodeSpec(**json.loads(spec_json)), sys.stderr))


def node_section(s: Settings, progress: TextIO) -> dict[str, Any]:
    """A node over its agency's SQLite table: start, steady queries, maintenance, restart.

    Ours (keyed, persisted, incremental) and, in the same run, the previous
    design (an index of distinct hashes rebuilt from the whole column, matches
    fetched by hash), each without and then with an index on the PDQ column.
    """
    with tempfile.TemporaryDirectory(prefix="liaison-bench-pdq-node-") as tmp:
        folder = Path(tmp)
        db = folder / "agency.sqlite3"
        print(f"  writing {s.node_size:,} rows into the ruritania media table", file=progress)
        t0 = time.perf_counter()
        words = synthetic_hashes(s.node_size, seed=s.seed + 300)
        shareable = np.random.default_rng(s.seed + 301).random(s.node_size) < 0.9
        np.save(folder / "data.npy", words)
        np.save(folder / "shareable.npy", shareable)
        _fill_register(db, words, shareable, s.seed + 302)
        del words
        fill_s = time.perf_counter() - t0
        doc: dict[str, Any] = {"rows": s.node_size, "fill_s": round(fill_s, 1), "variants": {}}
        for variant in ("no_pdq_index", "pdq_indexed"):
            if variant == "pdq_indexed":
                print("  creating an index on the PDQ column", file=progress)
                doc["create_index_s"] = round(_index_pdq_column(db), 1)
            runs: dict[str, Any] = {}
            modes = ["keyed"] + (["hash_only"] if s.node_baseline else [])
            for mode in modes:
                spec = NodeSpec(
                    db=str(db),
                    state=str(folder / f"state-{mode}"),
                    data=str(folder / "data.npy"),
                    shareable=str(folder / "shareable.npy"),
                    variant=variant,
                    mode=mode,
                    queries=s.node_queries if mode == "keyed" else s.node_baseline_queries,
                    window_s=s.node_window_s if mode == "keyed" else 0.0,
                    refresh_s=s.node_refresh_s,
                    seed=s.seed + 303,
                    writer_seed=s.seed + (304 if variant == "no_pdq_index" else 305),
                    cold=variant == "no_pdq_index",
                )
                print(f"  {variant}: {mode}", file=progress)
                runs[mode] = run_worker(spec, progress)
            doc["variants"][variant] = runs
    return doc


def _node_lines(node: Mapping[str, Any]) -> list[str]:
    if "skipped" in node:
        return [f"Node: skipped ({node['skipped']})", ""]
    lines = [
        f"One node over {node['rows']:,} rows of the ruritania media table (SQLite), a near "
        f"query (records, one hash, t = {THRESHOLD}, row filter shareable = true) through "
        "node.execute.Executor.run:",
        "",
    ]
    rows = []
    for variant, runs in node["variants"].items():
        for mode, r in runs.items():
            window = r.get("window", {})
            during = window.get("during_compaction") or {}
            memory = r.get("memory", {})
            restart = r.get("restart", {})
            rows.append(
                [
                    variant,
                    "ours (keyed)" if mode == "keyed" else "previous (hash only)",
                    f"{r['start']['serve_s']:.1f}" if r["cold"] else "",
                    f"{restart['serve_s']:.2f}" if restart else "",
                    f"{r['steady']['p50_ms']:.2f}",
                    f"{r['steady']['p99_ms']:.2f}",
                    "" if not window else f"{window['all']['p50_ms']:.2f}",
                    "" if not window else f"{window['all']['p99_ms']:.2f}",
                    "" if not during else f"{during['p99_ms']:.2f}",
                    "" if not window else f"{window['all']['max_ms']:.1f}",
                    f"{r['steady_rss_mb']:,.0f}",
                    "" if not memory else f"{memory['peak_rss_mb']:,.0f}",
                    "" if not memory else f"{memory['with_child_over_steady']:.2f}",
                    f"{r['exact']['missed']}/{r['exact']['extra']}",
                ]
            )
    lines += [
        render.table(
            [
                "PDQ column",
                "index",
                "start s",
                "restart s",
                "p50 ms",
                "p99 ms",
                "maint. p50",
                "maint. p99",
                "compaction p99",
                "maint. max",
                "RSS MB",
                "maint. peak MB",
                "peak+child / steady",
                "missed/extra",
            ],
            rows,
        ),
        "start s: to serving with no persisted index (bind_schema + the first build; the "
        "previous design builds at every start); restart s: from the persisted index; "
        "p50/p99: steady queries; maint.: queries while the agency writes (inserts, "
        "deletes, updates), refresh rounds run and a compaction runs; RSS MB: "
        "after the steady queries, over the worker's RSS after its imports; peak+child / steady: "
        "the worker's peak during maintenance plus the compaction child's anonymous memory, "
        "over steady; missed/extra: rows against a scan of every row",
    ]
    for variant, runs in node["variants"].items():
        keyed = runs.get("keyed", {})
        f = keyed.get("followed")
        if f:
            lines.append(
                f"{variant}: after the window, {f['inserted_matched']}/{f['inserted']} inserted "
                f"rows matched; {f['deleted_still_in_index']}/{f['deleted']} deleted and "
                f"{f['old_value_still_in_index']}/{f['updated']} changed rows still offered by "
                f"the index (re-checked in SQL, so never answered); {f['new_value_in_index']}/"
                f"{f['updated']} changed values indexed (the sweep finds the rest)"
            )
    lines.append("")
    return lines


if __name__ == "__main__":
    raise SystemExit(main())
