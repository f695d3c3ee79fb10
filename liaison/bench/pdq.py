"""`python -m liaison.bench.pdq`: exact near-duplicate PDQ search, on one node and federated.

From the issue: on one node holding 2.7 million and 10 million PDQ hashes,
the index's build time, resident memory, single-query latency (p50, p99) at
t = 31, batch throughput in queries per second, and recall against a
brute-force scan, which must be 100%; side by side, in the same run, on the
same data and the same queries:

* ours: ``node.pdq_index.PdqIndex`` (multi-index hashing in numpy);
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

Then federated: the demo federation with a million PDQ hashes per node (rows
written straight into each agency's own media table), asked a batch of
10,000 hashes through the gateway as an investigator would
(``liaison.cli.batch.batch_search``: chunks of 1,000, each one signed, logged,
policy-checked request), end to end.

    python -m liaison.bench.pdq [--sizes 2700000,10000000] [--queries N] [--quick]
        [--no-threatexchange] [--federated/--no-federated] [--json]
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

from liaison.bench.runner import BenchFailed, at_least, bench_main, loadavg, machine, with_preset
from liaison.cli import render
from liaison.demo.pdq_data import near, random_hashes, synthetic_hashes
from liaison.errors import LiaisonError
from liaison.hashing.pdq import PDQ_WORDS, hex_from_words, words_from_hex
from node.pdq_index import PdqIndex

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

OURS, SCAN, TX, TX_FAISS = "ours", "numpy_scan", "threatexchange", "threatexchange_faiss"
LABELS = {
    OURS: "ours (PdqIndex)",
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
    queries: int
    singles: int
    threatexchange: bool
    federated: bool
    fed_per_node: int
    fed_hashes: int
    fed_distance: int
    seed: int


FULL: dict[str, Any] = {
    "sizes": (2_700_000, 10_000_000),
    "queries": 10_000,
    "singles": 1000,
    "fed_per_node": 1_000_000,
    "fed_hashes": 10_000,
}
QUICK: dict[str, Any] = {
    "sizes": (100_000, 300_000),
    "queries": 1000,
    "singles": 200,
    "fed_per_node": 50_000,
    "fed_hashes": 2000,
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
        self.index = PdqIndex.build(words)

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


CONTENDERS: dict[str, Callable[[], Contender]] = {
    OURS: Ours,
    SCAN: NumpyScan,
    TX: ThreatExchange,
    TX_FAISS: ThreatExchangeFaiss,
}


@dataclass(frozen=True, slots=True)
class WorkerSpec:
    contender: str
    size: int
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
    module = sys.modules[PdqIndex.__module__] if cls is Ours else sys.modules[__name__]
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
    batch_q, batch_pos = contender.batch(hexes, progress)
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
    spec = WorkerSpec(**json.loads(spec_json))
    try:
        result = worker(spec, sys.stderr)
    except (LiaisonError, MemoryError) as exc:
        print(json.dumps({"error": f"{type(exc).__name__}: {exc}"}))
        return 1
    print(json.dumps(result))
    return 0


_WORKER_CODE = (
    "import sys; from liaison.bench.pdq import worker_main; sys.exit(worker_main(sys.argv[1]))"
)


def run_worker(spec: WorkerSpec, progress: TextIO) -> dict[str, Any]:
    """Run ``spec`` in a fresh interpreter; its progress goes to ours."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, "-c", _WORKER_CODE, json.dumps(asdict(spec))],
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
        raise BenchFailed(f"the {spec.contender} worker at {spec.size:,} hashes failed: {why}")
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
    s: Settings, size: int, folder: Path, tx_skipped: str | None, progress: TextIO
) -> dict[str, Any]:
    names = [OURS, SCAN] + ([TX, TX_FAISS] if tx_skipped is None else [])
    print(f"  generating {size:,} hashes and {s.queries:,} queries (seed {s.seed})", file=progress)
    started = time.perf_counter()
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
    """Every distinct PDQ hash in the agency's table, as the node's index will hold them."""
    pdq = local.columns["pdq"]
    with closing(sqlite3.connect(db)) as conn:
        texts = [
            str(v).strip().lower()
            for (v,) in conn.execute(
                f'SELECT DISTINCT "{pdq}" FROM "{local.table.name}" '  # noqa: S608
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
    from liaison.cli.batch import CHUNK, DEFAULT_CONCURRENCY, batch_search
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
                "distinct_hashes": len(held[agency.agency_id]),
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
                f"({chunks} chunks of up to {CHUNK:,}, {DEFAULT_CONCURRENCY} at a time)",
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
        "concurrency": DEFAULT_CONCURRENCY,
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
    sizes = doc["sizes"]
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
    add(
        "100% recall, nothing extra (single queries and batch, every size)",
        all(
            z["contenders"][OURS]["recall"] == 1.0 and not z["contenders"][OURS]["extra"]
            for z in sizes
        ),
        "; ".join(
            f"{z['size']:,}: {z['contenders'][OURS]['recall']:.4%}, "
            f"{z['contenders'][OURS]['extra']} extra"
            for z in sizes
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
    for size in s.sizes:
        print(f"{size:,} PDQ hashes, t = {THRESHOLD}", file=progress)
        with tempfile.TemporaryDirectory(prefix="liaison-bench-pdq-") as tmp:
            doc["sizes"].append(size_section(s, size, Path(tmp), tx_skipped, progress))
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
        for name in (OURS, SCAN, TX, TX_FAISS):
            r = z["contenders"][name]
            if "skipped" in r:
                rows.append([LABELS[name], "skipped", *[""] * 11])
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
                    f"{r['recall']:.2%}",
                    f"{r['extra']}",
                    _ratio(v.get("batch_qps")),
                    _ratio(v.get("resident")),
                    _ratio(v.get("p50")),
                ]
            )
        scan = z["contenders"][SCAN]
        lines += [
            f"{z['size']:,} PDQ hashes ({z['distinct']:,} distinct), t = {st['threshold']}: "
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
        hashes = "no pdq column" if n["pdq_column"] is None else f"{n['distinct_hashes']:,}"
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
    p.add_argument("--seed", type=int, default=2026, help="seed of the hashes and queries")
    return p


def settings_from(args: argparse.Namespace) -> Settings:
    picked = with_preset(args, QUICK if args.quick else FULL)
    return Settings(
        sizes=picked["sizes"],
        queries=picked["queries"],
        singles=min(picked["singles"], picked["queries"]),
        threatexchange=not args.no_threatexchange,
        federated=args.federated,
        fed_per_node=picked["fed_per_node"],
        fed_hashes=min(picked["fed_hashes"], 100_000),
        fed_distance=args.fed_distance,
        seed=args.seed,
    )


def main(argv: list[str] | None = None) -> int:
    return bench_main(
        argv,
        build_parser(),
        lambda args, progress: run(settings_from(args), progress),
        render_report,
    )


if __name__ == "__main__":
    raise SystemExit(main())
