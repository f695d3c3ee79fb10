"""`python -m liaison.bench.ledger`: what the audit ledger costs.

From the issue: durable appends per second (one writer, and group commit
under concurrent writers), the time to verify a ledger of one million
entries, proof generation and verification, ledger bytes per query, and the
ledger's share of a federated query. The aims: ledger cost below 10% of a
federated query's time; one million entries verified, every check made, in
under 4 seconds and in at most 1.5 times the Merkle floor measured in the
same run.

The machine is shared and noisy, so every rate has a baseline measured in
the same run, interleaved where the measurements are short:

* durable appends, one writer: ``Ledger.append`` (writer thread, group
  commit, fsync'd transaction) against raw ``sqlite3`` INSERT + COMMIT per row
  with the same PRAGMAs (journal_mode=WAL, synchronous=FULL), in rotating
  blocks; on PostgreSQL against raw psycopg INSERT + COMMIT per row;
* group commit: N threads appending at once, against the single writer;
* verifying: ``verify_ledger`` against the Merkle floor, the least any
  verifier must do: read every entry from the same store and recompute the
  RFC 9162 root from the entries' bytes (a leaf hash each, then the tree),
  in the cheapest Python there is for it: the verifier's own streaming
  reader fetching entries only, hashlib in one comprehension per batch,
  levels as lists of digests, and no check of anything. ``verify_ledger``
  runs as ``liaison audit verify`` runs it, sharing a large SQLite ledger
  with a second process where two CPUs are free, and again with
  ``processes=1``; both are reported, by wall time and by the CPU time of
  every process together, and the aim is judged by wall time;
* the ledger's share of a federated query: searches through the demo
  federation run as a deployment runs it (three node processes and a gateway
  process on loopback, mutual TLS between them), timed at the client, against
  what each service logs per search: the gateway its ledger waits (request
  entry + proof, outcome entry) and its whole handling, each node the wait for
  its receipt. On the critical path: the gateway's waits plus the slowest
  node's receipt, as the nodes answer concurrently.

The million-entry ledger is generated, not appended: realistic request and
outcome entries (byte for byte what ``request_entry``/``outcome_entry``
write, checked at start) stored in bulk with ``LedgerStore.append``, with a
checkpoint signed by the ledger's key every 10,000 entries.

    python -m liaison.bench.ledger [--entries N] [--quick] [--no-postgres]
        [--only appends,verify,federation] [--json]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import resource
import sqlite3
import statistics
import tempfile
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import ExitStack, closing, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TextIO, TypeVar

import grpc
import sqlalchemy as sa
from sqlalchemy.exc import SQLAlchemyError

from liaison import __version__
from liaison.bench.federated import CALL_TIMEOUT_S, FederatedCaller, probe_query
from liaison.bench.runner import BenchFailed as BenchFailed  # re-exported: callers catch it here
from liaison.bench.runner import (
    Summary,
    at_least,
    bench_main,
    loadavg,
    machine,
    positive,
    with_preset,
)
from liaison.catalog import CATALOG_VERSION
from liaison.cli import render
from liaison.demo.data import INVESTIGATOR_AGENCY, demo_agencies
from liaison.demo.federation import GATEWAY_ID
from liaison.demo.run import build_federation, investigator_token, running_federation
from liaison.keys import SigningKey
from liaison.ledger.checkpoint import Checkpoint, open_checkpoint, sign_checkpoint
from liaison.ledger.entries import (
    AuditKey,
    opened_entry,
    outcome_entry,
    parse_entry,
    request_entry,
)
from liaison.ledger.log import Ledger
from liaison.ledger.logged import gateway_origin
from liaison.ledger.merkle import (
    MerkleTree,
    leaf_hash,
    root_from_leaf_hashes,
    verify_consistency,
    verify_inclusion,
)
from liaison.ledger.proofs import inclusion_proof as audit_inclusion_proof
from liaison.ledger.store import LedgerStore, entries_table
from liaison.ledger.verify import entry_batches, gc_paused, verify_ledger
from liaison.messages import (
    AnswerStatus,
    Decision,
    NodeResult,
    NodeStatus,
    QueryAnswer,
    QueryRequest,
    Requester,
)
from liaison.query import Comparator, Operation, Predicate, Query
from liaison.serving import CHANNEL_OPTIONS
from liaison.tokens import dev_issuer
from liaison.wire import search_result_from_proto

if TYPE_CHECKING:
    import psycopg

AIM_SHARE = 0.10  # ledger time at most this share of a federated query (p50)
AIM_VERIFY_S = 4.0  # seconds to verify one million entries
AIM_VERIFY_VS_FLOOR = 1.5  # verify_ledger at most this many times the Merkle floor
MILLION = 1_000_000
POSTGRES_ADMIN_URL = os.environ.get(
    "LIAISON_TEST_POSTGRES", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)

# The generated ledger: a checkpoint every this many entries, one entry every
# STEP_MS, so checkpoints are CHECKPOINT_INTERVAL_S apart as a live writer's are.
CHECKPOINT_EVERY = 10_000
STEP_MS = 3
CHECKPOINT_INTERVAL_S = CHECKPOINT_EVERY * STEP_MS / 1000
BULK_BATCH = CHECKPOINT_EVERY
REQUEST_TTL_MS = 3000  # the gateway's default deadline plus its expiry margin
NODES = tuple(a.agency_id for a in demo_agencies())


@dataclass(frozen=True, slots=True)
class Settings:
    entries: int
    appends: int
    block: int
    group_seconds: float
    threads: tuple[int, ...]
    proofs: int
    verify_repeats: int
    searches: int
    warmup: int
    media: int
    postgres: str | None
    seed: int
    sections: tuple[str, ...] = ("appends", "verify", "federation")


# What --only picks from: durable appends (SQLite, then PostgreSQL unless
# --no-postgres), the million-entry ledger (build, verify, proofs), and the
# ledger's share of federated searches.
SECTIONS = ("appends", "verify", "federation")

FULL = {
    "entries": MILLION,
    "appends": 2000,
    "group_seconds": 3.0,
    "proofs": 5000,
    "verify_repeats": 2,
    "searches": 300,
    "warmup": 30,
}
QUICK = {
    "entries": 50_000,
    "appends": 300,
    "group_seconds": 0.75,
    "proofs": 500,
    "verify_repeats": 1,
    "searches": 50,
    "warmup": 10,
}


def _elapsed_ms(started_ns: int) -> float:
    return (time.perf_counter_ns() - started_ns) / 1e6


# --- realistic entries, fast ------------------------------------------------
#
# request_entry and outcome_entry cost 10-25 us each; a million of them would
# take longer than verifying them. So each of a few dozen request and outcome
# shapes is encoded once, with placeholders of the exact width of the values
# that vary (query id, times, digests, selector HMACs, answer digests), and
# entries are made by filling them in. Keys are sorted and no value needs
# escaping, so a filled template is byte for byte the function's output:
# EntryFactory checks that for every shape before it is used.

_QID = "qqqqqqqq-qqqq-qqqq-qqqq-qqqqqqqqqqqq"  # a UUID's width
_TIME = 4_444_444_444_444  # 13 digits: milliseconds from 2001 to 2286
_EXPIRES = 5_555_555_555_555
_DIGEST = bytes.fromhex("de" * 32)
_SELECTOR = "s" * 64  # an HMAC-SHA-256 in hex
_ANSWER = "x" * 64  # an answer digest in hex


class _PlaceholderAuditKey(AuditKey):
    """Hashes every selector to a placeholder, so templates can be filled later."""

    def hash(self, value: str) -> str:
        return _SELECTOR


@dataclass(frozen=True, slots=True)
class RequestShape:
    requester: Requester
    purpose: str
    case_ref: str
    legal_basis: str
    targets: tuple[str, ...]
    query: Query

    def request(self, query_id: str, time_ms: int, expires_ms: int) -> QueryRequest:
        return QueryRequest(
            query_id=query_id,
            gateway_id=GATEWAY_ID,
            issued_at_ms=time_ms,
            expires_at_ms=expires_ms,
            nonce=bytes(16),
            audience=self.targets,
            requester=self.requester,
            purpose=self.purpose,
            case_ref=self.case_ref,
            catalog_version=CATALOG_VERSION,
            query=self.query,
            legal_basis=self.legal_basis,
        )

    @property
    def selectors(self) -> list[str]:
        return [v for p in self.query.predicates for v in p.values]


@dataclass(frozen=True, slots=True)
class OutcomeShape:
    # Per node: status, latency, rules, whether it signed an answer.
    results: tuple[tuple[str, NodeStatus, float, tuple[str, ...], bool], ...]

    def node_results(
        self, query_id: str, digest: bytes, time_ms: int, answers: Sequence[str]
    ) -> list[NodeResult]:
        out: list[NodeResult] = []
        filled = iter(answers)
        for node, status, latency, rules, signed in self.results:
            answer = None
            if signed:
                answer = QueryAnswer(
                    query_id=query_id,
                    node_id=node,
                    request_digest=digest,
                    answered_at_ms=time_ms,
                    status=AnswerStatus.ANSWERED
                    if status is NodeStatus.ANSWERED
                    else AnswerStatus.DENIED,
                    decision=Decision(status is NodeStatus.ANSWERED, rules),
                )
            out.append(
                NodeResult(node, status, "", latency, answer, next(filled) if signed else "")
            )
        return out

    @property
    def signed(self) -> int:
        return sum(r[4] for r in self.results)


@dataclass(frozen=True, slots=True)
class Template:
    raw: bytes
    slot: bytes  # the placeholder each filler value replaces, in order
    slots: int


def _template(raw: bytes, slot: str, slots: int) -> Template:
    for placeholder, expected in (
        (_QID.encode(), 1),
        (str(_TIME).encode(), 1),
        (_DIGEST.hex().encode(), 1),
        (slot.encode(), slots),
    ):
        found = raw.count(placeholder)
        if found != expected:
            raise BenchFailed(
                f"entry template holds {found} copies of placeholder {placeholder[:16]!r}, "
                f"expected {expected}: the entry format changed; update bench_ledger"
            )
    return Template(raw, slot.encode(), slots)


def _fill(
    t: Template,
    query_id: str,
    time_ms: int,
    digest: bytes,
    fillers: Sequence[str],
    expires_ms: int | None = None,
) -> bytes:
    raw = (
        t.raw.replace(_QID.encode(), query_id.encode(), 1)
        .replace(str(_TIME).encode(), str(time_ms).encode(), 1)
        .replace(_DIGEST.hex().encode(), digest.hex().encode(), 1)
    )
    if expires_ms is not None:
        raw = raw.replace(str(_EXPIRES).encode(), str(expires_ms).encode(), 1)
    for value in fillers:
        raw = raw.replace(t.slot, value.encode(), 1)
    return raw


def _hex_values(rng: random.Random, n: int, width: int) -> tuple[str, ...]:
    return tuple(rng.randbytes(width).hex() for _ in range(n))


def _random_request_shape(rng: random.Random) -> RequestShape:
    roll = rng.random()
    purpose = "csam-investigation"
    if roll < 0.5:
        query = Query(
            "media", Operation.MATCH, (Predicate("sha256", Comparator.EQ, _hex_values(rng, 1, 32)),)
        )
    elif roll < 0.65:
        values = _hex_values(rng, rng.randint(2, 5), 16)
        query = Query("media", Operation.MATCH, (Predicate("md5", Comparator.IN, values),))
    elif roll < 0.8:
        name = rng.choice(("email", "handle"))
        value = f"user{rng.randint(1, 99999)}@mail.example" if name == "email" else "someone"
        query = Query("accounts", Operation.MATCH, (Predicate(name, Comparator.EQ, (value,)),))
        purpose = "offender-identification"
    elif roll < 0.9:
        query = Query(
            "accounts",
            Operation.RECORDS,
            (Predicate("email", Comparator.EQ, (f"user{rng.randint(1, 99999)}@mail.example",)),),
            fields=("platform", "handle", "first_seen"),
            limit=50,
        )
    else:
        query = Query("media", Operation.COUNT_BY, (), group_by="category")
        purpose = "statistics"
    agency = rng.choice((INVESTIGATOR_AGENCY, INVESTIGATOR_AGENCY, "freedonia", "ruritania"))
    requester = Requester(
        agency,
        f"inv.{rng.randint(1, 400):03d}",
        rng.choice((("investigator",), ("investigator", "senior-investigator"), ("analyst",))),
        dev_issuer(agency),
        {"clearance": "secret", "unit": "victim-identification"},
    )
    targets = NODES if rng.random() < 0.8 else tuple(sorted(rng.sample(NODES, 2)))
    return RequestShape(
        requester,
        purpose,
        f"GEN-2026-{rng.randint(1, 9999):04d}",
        rng.choice(("", "", "court-order")),
        targets,
        query,
    )


def _random_outcome_shape(rng: random.Random) -> OutcomeShape:
    results: list[tuple[str, NodeStatus, float, tuple[str, ...], bool]] = []
    for node in NODES:
        roll = rng.random()
        if roll < 0.85:
            results.append(
                (node, NodeStatus.ANSWERED, round(rng.uniform(1, 40), 2), ("media-match",), True)
            )
        elif roll < 0.95:
            results.append((node, NodeStatus.DENIED, round(rng.uniform(1, 10), 2), (), True))
        else:
            results.append((node, NodeStatus.TIMED_OUT, 2000.0, (), False))
    return OutcomeShape(tuple(results))


class EntryFactory:
    """Realistic gateway entries (requests and outcomes), a few microseconds each."""

    SHAPES = 64

    def __init__(self, seed: int, key: SigningKey) -> None:
        self.rng = random.Random(seed)
        self.key = key
        secret = self.rng.randbytes(32)
        self.audit_key = AuditKey(secret)
        # Same secret, so the same audit key id in every entry.
        placeholder = _PlaceholderAuditKey(secret)
        self.request_shapes = [_random_request_shape(self.rng) for _ in range(self.SHAPES)]
        self.outcome_shapes = [_random_outcome_shape(self.rng) for _ in range(self.SHAPES // 2)]
        self.requests: list[Template] = []
        for shape in self.request_shapes:
            raw = request_entry(
                shape.request(_QID, _TIME, _EXPIRES),
                request_digest=_DIGEST,
                key_id=key.key_id,
                audit_key=placeholder,
            )
            self.requests.append(_template(raw, _SELECTOR, len(shape.selectors)))
        self.outcomes = [
            _template(
                outcome_entry(
                    query_id=_QID,
                    request_digest=_DIGEST,
                    time_ms=_TIME,
                    results=shape.node_results(_QID, _DIGEST, _TIME, [_ANSWER] * shape.signed),
                ),
                _ANSWER,
                shape.signed,
            )
            for shape in self.outcome_shapes
        ]
        self._check()

    def _check(self) -> None:
        """Every template, filled, is what the real encoders write for the same values."""
        for shape, t in zip(self.request_shapes, self.requests, strict=True):
            qid, now, digest = str(uuid.uuid4()), _now_ms(), os.urandom(32)
            real = request_entry(
                shape.request(qid, now, now + REQUEST_TTL_MS),
                request_digest=digest,
                key_id=self.key.key_id,
                audit_key=self.audit_key,
            )
            hashes = [self.audit_key.hash(v) for v in shape.selectors]
            if _fill(t, qid, now, digest, hashes, now + REQUEST_TTL_MS) != real:
                raise BenchFailed("a filled request template differs from request_entry's output")
        for oshape, t in zip(self.outcome_shapes, self.outcomes, strict=True):
            qid, now, digest = str(uuid.uuid4()), _now_ms(), os.urandom(32)
            answers = [os.urandom(32).hex() for _ in range(oshape.signed)]
            real = outcome_entry(
                query_id=qid,
                request_digest=digest,
                time_ms=now,
                results=oshape.node_results(qid, digest, now, answers),
            )
            if _fill(t, qid, now, digest, answers) != real:
                raise BenchFailed("a filled outcome template differs from outcome_entry's output")

    def _uuid(self) -> str:
        return str(uuid.UUID(int=self.rng.getrandbits(128), version=4))

    def request(self, query_id: str, time_ms: int, digest: bytes) -> bytes:
        t = self.rng.choice(self.requests)
        hashes = [self.rng.randbytes(32).hex() for _ in range(t.slots)]
        return _fill(t, query_id, time_ms, digest, hashes, time_ms + REQUEST_TTL_MS)

    def outcome(self, query_id: str, time_ms: int, digest: bytes) -> bytes:
        t = self.rng.choice(self.outcomes)
        answers = [self.rng.randbytes(32).hex() for _ in range(t.slots)]
        return _fill(t, query_id, time_ms, digest, answers)

    def fresh_requests(self, n: int) -> list[bytes]:
        now = _now_ms()
        return [self.request(self._uuid(), now + i, self.rng.randbytes(32)) for i in range(n)]

    def traffic(self, n: int, start_ms: int, lag: int = 2) -> Iterator[bytes]:
        """``n`` gateway entries: each request, then its outcome ``lag`` requests later."""
        pending: deque[tuple[str, bytes]] = deque()
        for i in range(n):
            time_ms = start_ms + i * STEP_MS
            if pending and (len(pending) >= lag or n - i <= len(pending)):
                qid, digest = pending.popleft()
                yield self.outcome(qid, time_ms, digest)
            else:
                qid, digest = self._uuid(), self.rng.randbytes(32)
                pending.append((qid, digest))
                yield self.request(qid, time_ms, digest)


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


# --- durable appends ---------------------------------------------------------


class CountingStore(LedgerStore):
    """A LedgerStore that counts its entry commits, to show group commit's batch sizes."""

    def __init__(self, location: str | Path) -> None:
        super().__init__(location)
        self.commits = 0
        self.rows_written = 0

    def append(self, start: int, rows: Sequence[tuple[bytes, bytes]]) -> None:
        super().append(start, rows)
        # Only the ledger's writer thread appends: no lock needed.
        self.commits += 1
        self.rows_written += len(rows)


class RawAppender(Protocol):
    label: str

    def append(self, index: int, leaf: bytes, entry: bytes) -> None: ...

    def close(self) -> None: ...


class RawSqlite:
    """The floor: one INSERT and one COMMIT per row, same PRAGMAs as the ledger's store."""

    label = "raw sqlite3: INSERT + COMMIT per row"

    def __init__(self, path: Path) -> None:
        self.conn = sqlite3.connect(path, isolation_level=None)
        self.conn.execute("PRAGMA journal_mode=WAL")
        self.conn.execute("PRAGMA synchronous=FULL")
        self.conn.execute(
            "CREATE TABLE bench_raw (idx INTEGER PRIMARY KEY, leaf_hash BLOB NOT NULL, "
            "entry BLOB NOT NULL)"
        )

    def append(self, index: int, leaf: bytes, entry: bytes) -> None:
        self.conn.execute("BEGIN")
        self.conn.execute("INSERT INTO bench_raw VALUES (?, ?, ?)", (index, leaf, entry))
        self.conn.execute("COMMIT")

    def settings(self) -> dict[str, Any]:
        return {
            "journal_mode": self.conn.execute("PRAGMA journal_mode").fetchone()[0],
            "synchronous": self.conn.execute("PRAGMA synchronous").fetchone()[0],
        }

    def close(self) -> None:
        self.conn.close()


class RawPostgres:
    """The floor on PostgreSQL: psycopg, one INSERT and one COMMIT per row."""

    label = "raw psycopg: INSERT + COMMIT per row"

    def __init__(self, url: str) -> None:
        import psycopg  # an optional dependency (liaison[postgresql])

        conninfo = sa.make_url(url).set(drivername="postgresql")
        self.conn: psycopg.Connection[Any] = psycopg.connect(
            conninfo.render_as_string(hide_password=False)
        )
        self.conn.execute(
            "CREATE TABLE bench_raw (idx BIGINT PRIMARY KEY, leaf_hash BYTEA NOT NULL, "
            "entry BYTEA NOT NULL)"
        )
        self.conn.commit()

    def append(self, index: int, leaf: bytes, entry: bytes) -> None:
        self.conn.execute("INSERT INTO bench_raw VALUES (%s, %s, %s)", (index, leaf, entry))
        self.conn.commit()

    def close(self) -> None:
        self.conn.close()


@dataclass(slots=True)
class AppendPath:
    key: str
    label: str
    append: Callable[[int, bytes], None]  # (position in this path, entry)
    latencies_ms: list[float] = field(default_factory=list)
    seconds: float = 0.0

    def result(self) -> dict[str, Any]:
        return {
            "label": self.label,
            "appends": len(self.latencies_ms),
            "appends_per_s": round(len(self.latencies_ms) / self.seconds, 1),
            "latency": Summary.of(self.latencies_ms).as_dict("ms"),
        }


def rotate_blocks(
    paths: Sequence[AppendPath], entries: Sequence[bytes], block: int, progress: TextIO
) -> None:
    """Every path appends the same entries, ``block`` at a time, rotating which goes first."""
    rounds = max(1, len(entries) // block)
    step = max(1, rounds // 5)
    for r in range(rounds):
        turn = r % len(paths)
        for path in [*paths[turn:], *paths[:turn]]:
            started_block = time.perf_counter()
            for i in range(r * block, (r + 1) * block):
                started = time.perf_counter_ns()
                path.append(i, entries[i])
                path.latencies_ms.append(_elapsed_ms(started))
            path.seconds += time.perf_counter() - started_block
        if (r + 1) % step == 0 or r + 1 == rounds:
            print(f"    {(r + 1) * block}/{rounds * block} appends per path", file=progress)


def group_commit(
    ledger: Ledger,
    store: CountingStore,
    entries: Sequence[bytes],
    *,
    threads: int,
    seconds: float,
    prove: bool,
) -> dict[str, Any]:
    """``threads`` writers appending (each waiting for its own commit) for ``seconds``."""
    latencies: list[list[float]] = [[] for _ in range(threads)]
    errors: list[BaseException] = []
    barrier = threading.Barrier(threads + 1)
    deadline = [0.0]

    def work(n: int) -> None:
        mine, i = latencies[n], n
        barrier.wait()
        try:
            while time.perf_counter() < deadline[0]:
                started = time.perf_counter_ns()
                ledger.append(entries[i % len(entries)], prove=prove)
                mine.append(_elapsed_ms(started))
                i += threads
        except BaseException as exc:  # reported after the join
            errors.append(exc)

    workers = [threading.Thread(target=work, args=(n,), daemon=True) for n in range(threads)]
    for w in workers:
        w.start()
    commits, rows = store.commits, store.rows_written
    deadline[0] = time.perf_counter() + seconds
    started = time.perf_counter()
    barrier.wait()
    for w in workers:
        w.join()
    wall = time.perf_counter() - started
    if errors:
        raise BenchFailed(f"a group-commit writer failed: {errors[0]!r}") from errors[0]
    commits, rows = store.commits - commits, store.rows_written - rows
    done = sum(len(x) for x in latencies)
    return {
        "threads": threads,
        "prove": prove,
        "appends": done,
        "seconds": round(wall, 3),
        "appends_per_s": round(done / wall, 1),
        "commits": commits,
        "commits_per_s": round(commits / wall, 1),
        "mean_batch": round(rows / commits, 2) if commits else 0.0,
        "latency": Summary.of([x for xs in latencies for x in xs]).as_dict("ms"),
    }


def appends_section(
    backend: str,
    location: Callable[[str], str],
    raw: RawAppender,
    s: Settings,
    factory: EntryFactory,
    progress: TextIO,
) -> dict[str, Any]:
    """Single writer against the raw floor (interleaved), then group commit."""
    key = factory.key
    origin = gateway_origin(GATEWAY_ID)
    entries = factory.fresh_requests(2 * s.appends)
    leaves = [leaf_hash(e) for e in entries]
    store = CountingStore(location("ledger"))
    ledger = Ledger(store, key, origin)
    plain_store = LedgerStore(location("store"))
    with ExitStack() as stack:
        stack.callback(raw.close)
        stack.callback(ledger.close)
        stack.callback(plain_store.close)
        second = s.appends  # the proving path appends the second half of the entries
        paths = [
            AppendPath("raw", raw.label, lambda i, e: raw.append(i, leaves[i], e)),
            AppendPath(
                "store",
                "LedgerStore.append, one row (no writer thread)",
                lambda i, e: plain_store.append(i, [(leaves[i], e)]),
            ),
            AppendPath("ledger", "Ledger.append", lambda i, e: _append(ledger, e, False)),
            AppendPath(
                "ledger_prove",
                "Ledger.append(prove=True): signed checkpoint + path",
                lambda i, e: _append(ledger, entries[second + i], True),
            ),
        ]
        print(f"  {backend}: single writer, {s.appends} appends per path", file=progress)
        rotate_blocks(paths, entries[: s.appends], s.block, progress)
        single = {p.key: p.result() for p in paths}
        raw_rate = single["raw"]["appends_per_s"]
        for p in single.values():
            p["vs_raw"] = round(p["appends_per_s"] / raw_rate, 3)
        groups = []
        pool = entries  # reused: group commit measures the writer, not the entries
        for threads, prove in [*((t, False) for t in s.threads), (max(s.threads), True)]:
            print(
                f"  {backend}: group commit, {threads} threads{' (prove)' if prove else ''}, "
                f"{s.group_seconds:g} s",
                file=progress,
            )
            g = group_commit(
                ledger, store, pool, threads=threads, seconds=s.group_seconds, prove=prove
            )
            base = single["ledger_prove" if prove else "ledger"]["appends_per_s"]
            g["vs_single_writer"] = round(g["appends_per_s"] / base, 2)
            groups.append(g)
        settings = _store_settings(store)
    return {"backend": backend, "settings": settings, "single": single, "group": groups}


def _append(ledger: Ledger, entry: bytes, prove: bool) -> None:
    ledger.append(entry, prove=prove)


def _store_settings(store: LedgerStore) -> dict[str, Any]:
    """The durability settings the ledger's own connection runs with."""
    with store.engine.connect() as conn:
        if store.engine.dialect.name == "sqlite":
            return {
                "journal_mode": conn.exec_driver_sql("PRAGMA journal_mode").scalar(),
                "synchronous": conn.exec_driver_sql("PRAGMA synchronous").scalar(),
            }
        names = ("server_version", "fsync", "synchronous_commit", "wal_sync_method")
        return {n: conn.exec_driver_sql(f"SHOW {n}").scalar() for n in names}


@contextmanager
def postgres_database(admin_url: str) -> Iterator[str]:
    """A throwaway database on the PostgreSQL service; dropped on exit."""
    admin = sa.create_engine(
        admin_url, isolation_level="AUTOCOMMIT", connect_args={"connect_timeout": 5}
    )
    name = f"liaison_bench_{uuid.uuid4().hex[:12]}"
    try:
        with admin.connect() as conn:
            conn.execute(sa.text(f"CREATE DATABASE {name}"))
        try:
            yield sa.make_url(admin_url).set(database=name).render_as_string(hide_password=False)
        finally:
            with admin.connect() as conn:
                conn.execute(sa.text(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
    finally:
        admin.dispose()


def _postgres_unusable(admin_url: str) -> str | None:
    """Why PostgreSQL cannot be used at ``admin_url``, or None when it can."""
    shown = sa.make_url(admin_url).render_as_string(hide_password=True)
    try:
        import psycopg  # noqa: F401  (an optional dependency: liaison[postgresql])
    except ImportError:
        return "psycopg is not installed (pip install 'liaison[postgresql]')"
    engine = sa.create_engine(admin_url, connect_args={"connect_timeout": 5})
    try:
        with engine.connect() as conn:
            conn.execute(sa.text("SELECT 1"))
    except SQLAlchemyError as exc:
        return f"not reachable at {shown} ({type(exc).__name__})"
    finally:
        engine.dispose()
    return None


def postgres_section(s: Settings, factory: EntryFactory, progress: TextIO) -> dict[str, Any]:
    if s.postgres is None:
        return {"skipped": "--no-postgres"}
    reason = _postgres_unusable(s.postgres)
    if reason is not None:
        print(f"  skipping PostgreSQL: {reason}", file=progress)
        return {"skipped": reason}
    with ExitStack() as stack:
        # Two databases: the ledger's tables have fixed names.
        ledger_db = stack.enter_context(postgres_database(s.postgres))
        other_db = stack.enter_context(postgres_database(s.postgres))
        return appends_section(
            "postgresql",
            lambda name: ledger_db if name == "ledger" else other_db,
            RawPostgres(other_db),
            s,
            factory,
            progress,
        )


# --- a million entries: build, verify, prove -----------------------------------


def build_ledger(path: Path, n: int, factory: EntryFactory, progress: TextIO) -> dict[str, Any]:
    """A gateway ledger of ``n`` entries, as the writer would leave it, in bulk."""
    key, origin = factory.key, gateway_origin(GATEWAY_ID)
    store = LedgerStore(path)
    store.set_meta("origin", origin)
    store.set_meta("key_id", key.key_id)
    store.set_meta("checkpoint_interval_s", str(CHECKPOINT_INTERVAL_S))
    start_ms = _now_ms() - n * STEP_MS
    tree = MerkleTree()
    batch: list[tuple[bytes, bytes]] = []
    checkpoints = 0
    started = time.perf_counter()

    def flush() -> None:
        nonlocal checkpoints
        store.append(tree.size - len(batch), batch)
        batch.clear()
        checkpoint = Checkpoint(origin, tree.size, tree.root(), start_ms + tree.size * STEP_MS)
        signed = sign_checkpoint(key, checkpoint)
        store.add_checkpoint(checkpoint.size, checkpoint.time_ms, signed.note)
        checkpoints += 1

    opened = opened_entry(
        time_ms=start_ms, origin=origin, key_id=key.key_id, software=f"liaison {__version__}"
    )
    step = max(BULK_BATCH, n // 10 // BULK_BATCH * BULK_BATCH)
    for entry in _chain(opened, factory.traffic(n - 1, start_ms + STEP_MS)):
        leaf = leaf_hash(entry)
        tree.append(leaf)
        batch.append((leaf, entry))
        if len(batch) == BULK_BATCH:
            flush()
            if tree.size % step == 0:
                print(f"    {tree.size:,}/{n:,} entries", file=progress)
    if batch:
        flush()
    seconds = time.perf_counter() - started
    store.close()  # the last connection out checkpoints the WAL into the file
    size = path.stat().st_size
    return {
        "entries": n,
        "checkpoints": checkpoints,
        "seconds": round(seconds, 2),
        "entries_per_s": round(n / seconds),
        "file_bytes": size,
        "file_bytes_per_entry": round(size / n, 1),
    }


_T = TypeVar("_T")


def _chain(first: _T, rest: Iterator[_T]) -> Iterator[_T]:
    yield first
    yield from rest


def read_entries(store: LedgerStore) -> int:
    """Every entry's bytes, in index order, as the verifier reads them; nothing else."""
    n = 0
    with gc_paused():
        for rows in entry_batches(store, entries_table.c.entry):
            n += len(rows)
    return n


def merkle_floor(store: LedgerStore) -> tuple[int, bytes]:
    """The least any verifier must do: read every entry and recompute the RFC 9162 root.

    In the cheapest Python there is for it: the verifier's own reader fetching
    entries alone, one comprehension of hashlib calls per batch, the levels as
    lists of digests (root_from_leaf_hashes), the cycle collector held off as
    the verifier holds it. Nothing is checked: no index, no stored leaf, no
    entry's content, no signature; so no verifier in Python on one core, as
    verify_ledger runs, can be faster.
    """
    sha256, prefix = hashlib.sha256, b"\x00"
    leaves: list[bytes] = []
    with gc_paused():
        for rows in entry_batches(store, entries_table.c.entry):
            leaves += [sha256(prefix + raw).digest() for (raw,) in rows]
        return len(leaves), root_from_leaf_hashes(leaves)


def _cpu_with_children() -> float:
    """CPU seconds of this process and of its children that have ended (the verifier's helper)."""
    mine = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return mine.ru_utime + mine.ru_stime + children.ru_utime + children.ru_stime


def verify_section(
    path: Path, n: int, key: SigningKey, repeats: int, progress: TextIO
) -> tuple[dict[str, Any], MerkleTree, LedgerStore]:
    """verify_ledger against reading alone and against the Merkle floor, alternated."""
    store = LedgerStore(path, create=False)
    paths = ("read", "floor", "verify", "verify_1")
    times: dict[str, list[float]] = {k: [] for k in paths}
    # CPU seconds too, of this process and the verifier's second one: on a
    # shared machine they say what wall time does not.
    cpu: dict[str, list[float]] = {k: [] for k in paths}
    processes: dict[str, int] = {}
    roots: dict[str, bytes] = {}
    tree = MerkleTree()
    report_doc: dict[str, Any] = {}
    for r in range(repeats):
        order = list(paths)
        order = order[r % len(order) :] + order[: r % len(order)]
        for what in order:
            print(f"    {what} ({r + 1}/{repeats})", file=progress)
            started, started_cpu = time.perf_counter(), _cpu_with_children()
            if what == "read":
                count = read_entries(store)
            elif what == "floor":
                count, roots["floor"] = merkle_floor(store)
            else:
                # "verify": as `liaison audit verify` runs it (a second process
                # where two CPUs are free); "verify_1": in this process alone.
                report, tree = verify_ledger(
                    store, key.verifying_key, processes=1 if what == "verify_1" else None
                )
                count, roots[what] = report.size, report.root
                processes[what] = report.processes
                if not report.ok or report.warnings:
                    found = report.first_problem or report.warnings[0]
                    raise BenchFailed(f"the generated ledger does not verify: {found}")
                report_doc = {
                    "ok": report.ok,
                    "size": report.size,
                    "checkpoints": report.checkpoints,
                    "kinds": report.kinds,
                    "unfinished": report.unfinished,
                }
            times[what].append(time.perf_counter() - started)
            cpu[what].append(_cpu_with_children() - started_cpu)
            if count != n:
                raise BenchFailed(f"{what} saw {count} entries, expected {n}")
    if not roots["floor"] == roots["verify"] == roots["verify_1"]:
        raise BenchFailed("the Merkle floor computed another root than verify_ledger")
    best = {k: min(v) for k, v in times.items()}
    best_cpu = {k: min(v) for k, v in cpu.items()}
    per_million = best["verify"] * MILLION / n
    vs_floor = best["verify"] / best["floor"]
    return (
        {
            "entries": n,
            "repeats": repeats,
            # Wall seconds of each run.
            "seconds": {k: [round(x, 3) for x in v] for k, v in times.items()},
            "best_s": {k: round(v, 3) for k, v in best.items()},
            # CPU seconds of each run, every process's together.
            "cpu_s": {k: [round(x, 3) for x in v] for k, v in cpu.items()},
            "best_cpu_s": {k: round(v, 3) for k, v in best_cpu.items()},
            "processes": {"read": 1, "floor": 1, **processes},
            "entries_per_s": {k: round(n / v) for k, v in best.items()},
            # By wall time; the aim is judged on it.
            "verify_vs_floor": round(vs_floor, 2),
            "verify_1_vs_floor": round(best["verify_1"] / best["floor"], 2),
            # By CPU time of all processes.
            "verify_vs_floor_cpu": round(best_cpu["verify"] / best_cpu["floor"], 2),
            "verify_1_vs_floor_cpu": round(best_cpu["verify_1"] / best_cpu["floor"], 2),
            "read_vs_floor": round(best["read"] / best["floor"], 2),
            "verify_vs_read": round(best["verify"] / best["read"], 2),
            "verify_s_per_million": round(per_million, 2),
            "verify_1_s_per_million": round(best["verify_1"] * MILLION / n, 2),
            "report": report_doc,
            "aim": {
                "seconds_per_million_under": AIM_VERIFY_S,
                "vs_floor_at_most": AIM_VERIFY_VS_FLOOR,
                "met": per_million < AIM_VERIFY_S and vs_floor <= AIM_VERIFY_VS_FLOOR,
                "extrapolated": n != MILLION,
            },
        },
        tree,
        store,
    )


def proofs_section(
    tree: MerkleTree, store: LedgerStore, key: SigningKey, samples: int, seed: int
) -> dict[str, Any]:
    """Inclusion and consistency proofs at the ledger's full size, made and checked."""
    rng = random.Random(seed)
    clock = time.perf_counter_ns
    n = tree.size
    root = tree.root()
    out: dict[str, list[float]] = {
        "inclusion_generate": [],
        "inclusion_verify": [],
        "consistency_generate": [],
        "consistency_verify": [],
        "checkpoint_open": [],
        "audit_prove_document": [],
    }
    hashes: dict[str, list[int]] = {"inclusion": [], "consistency": []}
    for _ in range(samples):
        index = rng.randrange(n)
        leaf = tree.leaf(index)
        t0 = clock()
        path = tree.inclusion_proof(index, n)
        t1 = clock()
        verify_inclusion(leaf, index, n, path, root)
        t2 = clock()
        out["inclusion_generate"].append((t1 - t0) / 1e3)
        out["inclusion_verify"].append((t2 - t1) / 1e3)
        hashes["inclusion"].append(len(path))
    for _ in range(samples):
        old = rng.randint(1, n - 1)
        new = rng.randint(old + 1, n)
        old_root, new_root = tree.root(old), tree.root(new)
        t0 = clock()
        proof = tree.consistency_proof(old, new)
        t1 = clock()
        verify_consistency(old, new, old_root, new_root, proof)
        t2 = clock()
        out["consistency_generate"].append((t1 - t0) / 1e3)
        out["consistency_verify"].append((t2 - t1) / 1e3)
        hashes["consistency"].append(len(proof))
    note = store.checkpoints()[-1].note
    for _ in range(samples):
        t0 = clock()
        open_checkpoint(note, key.verifying_key)
        out["checkpoint_open"].append((clock() - t0) / 1e3)
    # What `liaison audit prove` does per entry: read it, find a checkpoint, build the path.
    for _ in range(max(2, samples // 25)):
        index = rng.randrange(n)
        t0 = clock()
        audit_inclusion_proof(store, tree, index)
        out["audit_prove_document"].append((clock() - t0) / 1e3)
    return {
        "size": n,
        "samples": samples,
        **{k: Summary.of(v).as_dict("us", 2) for k, v in out.items()},
        "mean_hashes": {k: round(statistics.fmean(v), 1) for k, v in hashes.items()},
    }


# --- the ledger in a federated query, across real processes ---------------------
#
# The gateway and the nodes run as the deployment runs them, one process each
# (so one GIL each), talking mutual TLS on loopback. The client times each
# search; each service says in its own log what the ledger cost it:
#
# * the gateway, per search: ``"msg": "search"`` with ``ledger_ms`` (waiting for
#   its two durable writes: request entry + proof, then outcome entry) and
#   ``total_ms`` (its whole handling of the search);
# * every node, per answer: ``"msg": "answered"`` with ``receipt_ms`` (waiting
#   for its receipt to be durable).
#
# The logs are read once the federation has stopped, so every line is flushed,
# and every measured search must be found in every one of them.

GATEWAY_LOG = "gateway"


class IdentifiedCaller(FederatedCaller):
    """A FederatedCaller that also returns each search's query id, to find it in the logs."""

    def search(self) -> tuple[float, str]:
        """One search: (round trip in ms, query id), after checking every node answered."""
        started = time.perf_counter_ns()
        response = self.stub.Search(self.message, metadata=self.metadata, timeout=CALL_TIMEOUT_S)
        elapsed = _elapsed_ms(started)
        result = search_result_from_proto(response, self.query)
        answered = sorted(r.node_id for r in result.results if r.status is NodeStatus.ANSWERED)
        if answered != sorted(self.expected):
            failed = [f"{r.node_id}: {r.status.value} {r.detail}".strip() for r in result.results]
            raise BenchFailed(
                f"federated call: expected answers from {', '.join(sorted(self.expected))}, "
                f"got {'; '.join(failed) or 'nothing'}"
            )
        return elapsed, result.query_id


def _ledger_files(root: Path) -> dict[str, Path]:
    """Where the demo federation keeps each ledger (as ``liaison demo``'s audit reads them)."""
    files = {GATEWAY_LOG: root / "gateway" / "ledger.sqlite3"}
    for node in NODES:
        files[node] = root / "nodes" / node / "state" / "receipts.sqlite3"
    missing = [str(p) for p in files.values() if not p.exists()]
    if missing:
        raise BenchFailed(f"the running federation has no ledger at {', '.join(missing)}")
    return files


@dataclass(frozen=True, slots=True)
class LedgerSnapshot:
    entries: int
    checkpoints: int
    file_bytes: int
    wal_checkpointed: bool


def _snapshot(path: Path) -> LedgerSnapshot:
    """Entry and checkpoint counts, and bytes on disk once the WAL is folded into the file."""
    with closing(sqlite3.connect(path)) as conn:
        busy = conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()[0]
        entries = conn.execute("SELECT count(*) FROM liaison_ledger_entries").fetchone()[0]
        checkpoints = conn.execute("SELECT count(*) FROM liaison_ledger_checkpoints").fetchone()[0]
    wal = path.with_name(path.name + "-wal")
    size = path.stat().st_size + (wal.stat().st_size if wal.exists() else 0)
    return LedgerSnapshot(int(entries), int(checkpoints), size, busy == 0)


def _new_rows(path: Path, start: int, first_checkpoint: int) -> tuple[list[bytes], list[str]]:
    store = LedgerStore(path, create=False)
    try:
        entries = [entry for _i, _leaf, entry in store.rows(start)]
        notes = [c.note for c in store.checkpoints()[first_checkpoint:]]
    finally:
        store.close()
    return entries, notes


def _log_lines(path: Path, msg: str) -> dict[str, dict[str, Any]]:
    """The JSON lines of ``path`` whose message is ``msg``, by query id (once each)."""
    try:
        text = path.read_text(errors="replace")
    except FileNotFoundError as exc:
        raise BenchFailed(f"no log at {path}") from exc
    found: dict[str, dict[str, Any]] = {}
    for line in text.splitlines():
        if not line.startswith("{"):
            continue  # not ours: the JSON formatter writes one object per line
        try:
            obj = json.loads(line)
        except ValueError:
            continue
        if not isinstance(obj, dict) or obj.get("msg") != msg or "query_id" not in obj:
            continue
        qid = str(obj["query_id"])
        if qid in found:
            raise BenchFailed(f"{path.name} logs {msg!r} twice for query {qid}")
        found[qid] = obj
    return found


def _ms(line: Mapping[str, Any], key: str, where: str) -> float:
    value = line.get(key)
    if not isinstance(value, int | float) or isinstance(value, bool) or value < 0:
        raise BenchFailed(
            f"{where}'s log line for query {line.get('query_id')} has {key}={value!r}, "
            "expected milliseconds: the log format changed; update bench_ledger"
        )
    return float(value)


@dataclass(frozen=True, slots=True)
class QueryTimes:
    """One measured search: the client's round trip and what each service's log says."""

    query_id: str
    client_ms: float
    gateway_total_ms: float
    gateway_ledger_ms: float
    receipt_ms: Mapping[str, float]

    @property
    def critical_path_ms(self) -> float:
        """Gateway ledger waits + the slowest receipt (the nodes answer concurrently)."""
        return self.gateway_ledger_ms + max(self.receipt_ms.values())

    @property
    def share(self) -> float:
        return self.critical_path_ms / self.client_ms


def match_logs(measured: Sequence[tuple[str, float]], run_dir: Path) -> list[QueryTimes]:
    """Each measured search with its gateway and node log lines; fails if any is missing."""
    gateway = _log_lines(run_dir / f"{GATEWAY_LOG}.log", "search")
    nodes = {n: _log_lines(run_dir / f"{n}.log", "answered") for n in NODES}
    wanted = [qid for qid, _ms in measured]
    if len(set(wanted)) != len(wanted):
        raise BenchFailed("the gateway gave two measured searches the same query id")
    for name, lines in {GATEWAY_LOG: gateway, **nodes}.items():
        missing = [qid for qid in wanted if qid not in lines]
        if missing:
            raise BenchFailed(
                f"{len(missing)} of {len(wanted)} measured searches have no "
                f"{'search' if name == GATEWAY_LOG else 'answered'} line in {name}'s log "
                f"(first: {missing[0]}); every service must log every search"
            )
    return [
        QueryTimes(
            query_id=qid,
            client_ms=client_ms,
            gateway_total_ms=_ms(gateway[qid], "total_ms", GATEWAY_LOG),
            gateway_ledger_ms=_ms(gateway[qid], "ledger_ms", GATEWAY_LOG),
            receipt_ms={n: _ms(nodes[n][qid], "receipt_ms", n) for n in NODES},
        )
        for qid, client_ms in measured
    ]


def federation_section(s: Settings, progress: TextIO) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="liaison-bench-ledger-fed-") as tmp:
        root = Path(tmp)
        print(
            f"  building the demo federation ({s.media} media records per node, mutual TLS)",
            file=progress,
        )
        build_federation(root, media=s.media, accounts=300, tls=True, progress=progress)
        print("  starting the nodes and the gateway as processes", file=progress)
        with (
            running_federation(root, progress=progress) as address,
            grpc.insecure_channel(address, options=CHANNEL_OPTIONS) as channel,
        ):
            files = _ledger_files(root)
            caller = IdentifiedCaller(channel, investigator_token(root), probe_query(), (), NODES)
            print(f"  {s.warmup} warm-up searches", file=progress)
            for _ in range(s.warmup):
                caller.search()
            before = {name: _snapshot(p) for name, p in files.items()}
            print(f"  {s.searches} measured searches", file=progress)
            measured: list[tuple[str, float]] = []
            step = max(1, s.searches // 5)
            for i in range(s.searches):
                client_ms, query_id = caller.search()
                measured.append((query_id, client_ms))
                if (i + 1) % step == 0:
                    print(f"    {i + 1}/{s.searches}", file=progress)
            after = {name: _snapshot(p) for name, p in files.items()}
            new = {
                name: _new_rows(p, before[name].entries, before[name].checkpoints)
                for name, p in files.items()
            }
            print("  stopping the federation", file=progress)
        # Stopped: every service has flushed its log.
        print("  matching the searches with the gateway's and nodes' logs", file=progress)
        times = match_logs(measured, root / "run")
    return _federation_result(s, times, before, after, new)


def _bytes_result(
    k: int,
    before: Mapping[str, LedgerSnapshot],
    after: Mapping[str, LedgerSnapshot],
    new: Mapping[str, tuple[list[bytes], list[str]]],
) -> dict[str, Any]:
    sizes: dict[str, list[int]] = {}
    ledgers: dict[str, Any] = {}
    for name, (entries, notes) in new.items():
        for raw in entries:
            sizes.setdefault(parse_entry(raw).kind.value, []).append(len(raw))
        entry_bytes = sum(len(e) for e in entries)
        stored = entry_bytes + len(entries) * (32 + 8) + sum(len(n.encode()) for n in notes)
        ledgers[name] = {
            "entries_per_query": round(len(entries) / k, 3),
            "entry_bytes_per_query": round(entry_bytes / k, 1),
            "stored_bytes_per_query": round(stored / k, 1),
            "checkpoints_added": len(notes),
            "file_bytes_per_query": round(
                (after[name].file_bytes - before[name].file_bytes) / k, 1
            ),
            "wal_folded": before[name].wal_checkpointed and after[name].wal_checkpointed,
        }
    total = {
        key: round(sum(v[key] for v in ledgers.values()), 1)
        for key in (
            "entries_per_query",
            "entry_bytes_per_query",
            "stored_bytes_per_query",
            "file_bytes_per_query",
        )
    }
    return {
        "bytes": {"ledgers": ledgers, "total": total},
        "entry_bytes": {
            kind: {
                "count": len(v),
                "mean": round(statistics.fmean(v), 1),
                "min": min(v),
                "max": max(v),
            }
            for kind, v in sorted(sizes.items())
        },
    }


def _federation_result(
    s: Settings,
    times: Sequence[QueryTimes],
    before: Mapping[str, LedgerSnapshot],
    after: Mapping[str, LedgerSnapshot],
    new: Mapping[str, tuple[list[bytes], list[str]]],
) -> dict[str, Any]:
    client = [t.client_ms for t in times]
    critical = [t.critical_path_ms for t in times]
    receipts = {n: [t.receipt_ms[n] for t in times] for n in NODES}
    shares = Summary.of([t.share for t in times])
    return {
        "searches": len(times),
        "warmup": s.warmup,
        "media_records": s.media,
        "transport": (
            "gateway and 3 nodes as separate processes, mutual TLS between them; "
            "client to gateway plaintext loopback"
        ),
        "latency_ms": {
            "client": Summary.of(client).as_dict("ms"),
            "gateway_total": Summary.of([t.gateway_total_ms for t in times]).as_dict("ms"),
            "gateway_ledger": Summary.of([t.gateway_ledger_ms for t in times]).as_dict("ms"),
            **{f"receipt_{n}": Summary.of(v).as_dict("ms") for n, v in receipts.items()},
            "slowest_receipt": Summary.of([max(t.receipt_ms.values()) for t in times]).as_dict(
                "ms"
            ),
            "ledger_critical_path": Summary.of(critical).as_dict("ms"),
        },
        "share": {
            # Per query: critical-path ledger ms / the client's ms; then its percentiles.
            "p50": round(shares.p50, 4),
            "p99": round(shares.p99, 4),
            "mean": round(shares.mean, 4),
            "of_means": round(statistics.fmean(critical) / statistics.fmean(client), 4),
        },
        "aim": {"share_p50_under": AIM_SHARE, "met": shares.p50 < AIM_SHARE},
        "logs": "every measured search found once in the gateway's and every node's log",
        **_bytes_result(len(times), before, after, new),
    }


# --- the run and its report -------------------------------------------------


def run(s: Settings, progress: TextIO) -> dict[str, Any]:
    started = time.perf_counter()
    key = SigningKey.generate()
    factory = EntryFactory(s.seed, key)
    doc: dict[str, Any] = {
        "machine": {
            **machine(grpc=grpc.__version__),
            "sqlite": sqlite3.sqlite_version,
            "sqlalchemy": sa.__version__,
            "loadavg_start": loadavg(),
        },
        "settings": {
            "entries": s.entries,
            "appends_per_path": s.appends,
            "block": s.block,
            "group_seconds": s.group_seconds,
            "threads": list(s.threads),
            "proof_samples": s.proofs,
            "verify_repeats": s.verify_repeats,
            "searches": s.searches,
            "warmup": s.warmup,
            "seed": s.seed,
            "sections": list(s.sections),
        },
    }
    with tempfile.TemporaryDirectory(prefix="liaison-bench-ledger-") as tmp:
        folder = Path(tmp)
        if "appends" in s.sections:
            print("1-2. durable appends", file=progress)
            raw = RawSqlite(folder / "raw.sqlite3")
            raw_settings = raw.settings()
            sqlite_doc = appends_section(
                "sqlite", lambda name: str(folder / f"{name}.sqlite3"), raw, s, factory, progress
            )
            sqlite_doc["raw_settings"] = raw_settings
            print("3. durable appends on PostgreSQL", file=progress)
            doc["appends"] = {
                "sqlite": sqlite_doc,
                "postgresql": postgres_section(s, factory, progress),
            }
        if "verify" in s.sections:
            path = folder / "million.sqlite3"
            print(f"4. building a ledger of {s.entries:,} entries", file=progress)
            build = build_ledger(path, s.entries, factory, progress)
            print(f"4. verifying {s.entries:,} entries", file=progress)
            verify, tree, store = verify_section(path, s.entries, key, s.verify_repeats, progress)
            verify["build"] = build
            doc["verify"] = verify
            print(f"5. proofs at size {tree.size:,} ({s.proofs} samples)", file=progress)
            try:
                doc["proofs"] = proofs_section(tree, store, key, s.proofs, s.seed)
            finally:
                store.close()
            del tree
    if "federation" in s.sections:
        print("6-7. the ledger in federated searches", file=progress)
        doc["federation"] = federation_section(s, progress)
    doc["machine"]["loadavg_end"] = loadavg()
    doc["runtime_s"] = round(time.perf_counter() - started, 1)
    return doc


def _appends_tables(a: Mapping[str, Any]) -> list[str]:
    single, settings = a["single"], a["settings"]
    described = ", ".join(f"{k}={v}" for k, v in settings.items())
    rows = [
        [
            p["label"],
            f"{p['appends_per_s']:,.0f}",
            f"{p['latency']['p50_ms']:.3f}",
            f"{p['latency']['p99_ms']:.3f}",
            f"{p['vs_raw']:.2f}x",
        ]
        for p in single.values()
    ]
    group_rows = [
        [
            f"{g['threads']}{' (prove)' if g['prove'] else ''}",
            f"{g['appends_per_s']:,.0f}",
            f"{g['commits_per_s']:,.0f}",
            f"{g['mean_batch']:.1f}",
            f"{g['latency']['p50_ms']:.3f}",
            f"{g['latency']['p99_ms']:.3f}",
            f"{g['vs_single_writer']:.2f}x",
        ]
        for g in a["group"]
    ]
    return [
        render.table(["single writer", "appends/s", "p50 ms", "p99 ms", "vs raw"], rows),
        "",
        render.table(
            [
                "writer threads",
                "appends/s",
                "commits/s",
                "mean batch",
                "p50 ms",
                "p99 ms",
                "vs single writer",
            ],
            group_rows,
        ),
        f"store settings: {described}",
    ]


def render_report(doc: dict[str, Any]) -> str:
    mc = doc["machine"]
    lines = [
        *(_appends_lines(doc) if "appends" in doc else []),
        *(_verify_lines(doc) if "verify" in doc else []),
        *(_proofs_lines(doc) if "proofs" in doc else []),
        *(_federation_lines(doc) if "federation" in doc else []),
    ]
    lines += [
        f"machine: {mc['cpu_count']} CPUs ({mc['cpus_usable']} usable), {mc['python']}, "
        f"SQLite {mc['sqlite']}, SQLAlchemy {mc['sqlalchemy']}, {mc['platform']}",
        f"load average (1, 5, 15 min) at start {mc['loadavg_start']}, at end "
        f"{mc['loadavg_end']}; runtime {doc['runtime_s']:.0f} s",
    ]
    return "\n".join(lines)


def _appends_lines(doc: dict[str, Any]) -> list[str]:
    st, mc = doc["settings"], doc["machine"]
    lines = [
        f"1-2. Durable appends, SQLite {mc['sqlite']}: {st['appends_per_path']} realistic "
        f"request entries per path in rotating blocks of {st['block']}; group commit: "
        f"threads appending for {st['group_seconds']:g} s (vs single writer: Ledger.append, "
        "or with prove=True)",
        "",
        *_appends_tables(doc["appends"]["sqlite"]),
        f"raw settings: {doc['appends']['sqlite']['raw_settings']}",
        "",
    ]
    pg = doc["appends"]["postgresql"]
    if "skipped" in pg:
        lines += [f"3. PostgreSQL: skipped ({pg['skipped']})", ""]
    else:
        lines += ["3. Durable appends, PostgreSQL (same runs)", "", *_appends_tables(pg), ""]
    return lines


def _verify_lines(doc: dict[str, Any]) -> list[str]:
    v = doc["verify"]
    b = v["build"]
    n = v["entries"]
    cpu = v["best_cpu_s"]
    verify_rows = [
        [
            label,
            f"{v['best_s'][k]:.2f}",
            f"{v['entries_per_s'][k]:,}",
            f"{v['best_s'][k] / v['best_s']['floor']:.2f}x",
            f"{cpu[k]:.2f}",
            f"{cpu[k] / cpu['floor']:.2f}x",
        ]
        for label, k in (
            ("read the entries only (one streaming SELECT)", "read"),
            ("Merkle floor: read + leaf hashes + RFC 9162 root", "floor"),
            (
                f"verify_ledger: every check, {_processes(v['processes']['verify'])}",
                "verify",
            ),
            ("verify_ledger: every check, --processes 1", "verify_1"),
        )
    ]
    aim = v["aim"]
    return [
        f"4. Verifying {n:,} entries ({v['report']['checkpoints']} signed checkpoints; best "
        f"of {v['repeats']}, alternated)",
        "",
        render.table(
            ["path", "wall s", "entries/s", "wall vs floor", "CPU s", "CPU vs floor"],
            verify_rows,
        ),
        "wall s: elapsed time; CPU s: CPU time of every process of the path together "
        "(the floor and reading run in one process)",
        "",
        f"aim {'met' if aim['met'] else 'NOT met'}: "
        f"{v['verify_s_per_million']:.2f} s per million entries"
        + (" (extrapolated from this size)" if aim["extrapolated"] else "")
        + f", {v['verify_vs_floor']:.2f}x the Merkle floor by wall time (aim: under "
        f"{aim['seconds_per_million_under']:g} s and at most {aim['vs_floor_at_most']:g}x); "
        f"by CPU time {v['verify_vs_floor_cpu']:.2f}x; in one process "
        f"{v['verify_1_s_per_million']:.2f} s, {v['verify_1_vs_floor']:.2f}x by wall time",
        f"entries: {v['report']['kinds']}, {v['report']['unfinished']} unfinished request(s)",
        f"generated in {b['seconds']:.1f} s ({b['entries_per_s']:,} entries/s, bulk "
        f"LedgerStore.append of {BULK_BATCH:,}); file {b['file_bytes']:,} bytes "
        f"({b['file_bytes_per_entry']:.0f} bytes per entry)",
        "",
    ]


def _processes(n: int) -> str:
    return "1 process (no second one used)" if n == 1 else f"{n} processes"


def _proofs_lines(doc: dict[str, Any]) -> list[str]:
    p = doc["proofs"]
    proof_rows = [
        [label, f"{p[k]['p50_us']:.1f}", f"{p[k]['p99_us']:.1f}", f"{p[k]['mean_us']:.1f}", h]
        for label, k, h in (
            ("inclusion proof: generate", "inclusion_generate", f"{p['mean_hashes']['inclusion']}"),
            ("inclusion proof: verify", "inclusion_verify", ""),
            (
                "consistency proof: generate",
                "consistency_generate",
                f"{p['mean_hashes']['consistency']}",
            ),
            ("consistency proof: verify", "consistency_verify", ""),
            ("signed checkpoint: open (Ed25519)", "checkpoint_open", ""),
            ("audit prove document (store + checkpoint + path)", "audit_prove_document", ""),
        )
    ]
    return [
        f"5. Proofs at size {p['size']:,}, random indices and pairs ({p['samples']} samples "
        "each), microseconds",
        "",
        render.table(["operation", "p50", "p99", "mean", "hashes"], proof_rows),
        "",
    ]


def _federation_lines(doc: dict[str, Any]) -> list[str]:
    f = doc["federation"]
    lat = f["latency_ms"]
    client_p50 = lat["client"]["p50_ms"]

    def row(label: str, key: str) -> list[str]:
        s = lat[key]
        cells = (s["p50_ms"], s["p99_ms"], s["mean_ms"])
        return [label, *(f"{c:.2f}" for c in cells), f"{s['p50_ms'] / client_p50:.1%}"]

    fed_rows = [
        row("client: federated search, end to end", "client"),
        row("gateway: whole search (total_ms)", "gateway_total"),
        row("gateway: ledger waits, request + outcome (ledger_ms)", "gateway_ledger"),
        *(row(f"node {n}: receipt durable (receipt_ms)", f"receipt_{n}") for n in NODES),
        row("slowest node receipt", "slowest_receipt"),
        row("ledger on the critical path", "ledger_critical_path"),
    ]
    by = f["bytes"]
    byte_rows = [
        [
            name,
            f"{x['entries_per_query']:.2f}",
            f"{x['entry_bytes_per_query']:,.0f}",
            f"{x['stored_bytes_per_query']:,.0f}",
            f"{x['file_bytes_per_query']:,.0f}",
        ]
        for name, x in {**by["ledgers"], "total": by["total"]}.items()
    ]
    sizes = ", ".join(
        f"{kind} {x['mean']:.0f} B ({x['min']}-{x['max']})" for kind, x in f["entry_bytes"].items()
    )
    lines = [
        f"6. Ledger bytes per query: {f['searches']} searches through the demo federation "
        f"(3 nodes, {f['media_records']} media records each)",
        "",
        render.table(
            ["ledger", "entries", "entry bytes", "+ hashes, checkpoints", "file growth"],
            byte_rows,
        ),
        f"entry sizes: {sizes}",
        "file growth: the SQLite file after folding its WAL in, before and after the searches",
        "",
    ]
    share = f["share"]
    lines += [
        f"7. The ledger in a federated query: the same {f['searches']} searches, after "
        f"{f['warmup']} warm-up ({f['transport']}); client times from this process, the "
        "rest from each service's own log",
        "",
        render.table(["what", "p50 ms", "p99 ms", "mean ms", "of client p50"], fed_rows),
        "",
        f"aim {'met' if f['aim']['met'] else 'NOT met'}: the ledger takes {share['p50']:.1%} of "
        f"a federated query (p50 of the per-query share; p99 {share['p99']:.1%}; "
        f"{share['of_means']:.1%} of the mean) (aim: under {f['aim']['share_p50_under']:.0%})",
        "critical path = the gateway's ledger waits + the slowest node's receipt (the nodes "
        "answer concurrently, so this is an upper bound)",
        f"logs: {f['logs']}",
        "",
    ]
    return lines


def _threads(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(x) for x in text.split(","))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected numbers like 8,32, got {text!r}") from exc
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"thread counts must be at least 1, got {text!r}")
    return values


def _sections(text: str) -> tuple[str, ...]:
    picked = tuple(dict.fromkeys(x.strip() for x in text.split(",") if x.strip()))
    unknown = [x for x in picked if x not in SECTIONS]
    if unknown or not picked:
        raise argparse.ArgumentTypeError(
            f"expected sections among {','.join(SECTIONS)}, got {text!r}"
        )
    return tuple(x for x in SECTIONS if x in picked)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m liaison.bench.ledger",
        description="What the audit ledger costs: appends, verifying, proofs, bytes, share.",
    )
    p.add_argument("--entries", type=at_least(2), help=f"entries to verify and prove ({MILLION:,})")
    p.add_argument("--quick", action="store_true", help="a smoke run: 50,000 entries, shorter runs")
    p.add_argument("--appends", type=at_least(2), help="appends per single-writer path (2000)")
    p.add_argument("--block", type=at_least(1), default=100, help="appends per block (100)")
    p.add_argument("--group-seconds", type=positive, help="seconds per group-commit run (3)")
    p.add_argument("--threads", type=_threads, default=(8, 32), help="writer threads (8,32)")
    p.add_argument("--proofs", type=at_least(2), help="samples per proof operation (5000)")
    p.add_argument("--verify-repeats", type=at_least(1), help="verify runs to take the best of")
    p.add_argument("--searches", type=at_least(2), help="measured federated searches (300)")
    p.add_argument("--warmup", type=at_least(0), help="unmeasured searches first (30)")
    p.add_argument("--media", type=at_least(1), default=4000, help="media records per node")
    p.add_argument(
        "--postgres",
        default=POSTGRES_ADMIN_URL,
        help="PostgreSQL admin URL; a throwaway database is created there and dropped",
    )
    p.add_argument("--no-postgres", action="store_true", help="skip PostgreSQL")
    p.add_argument("--seed", type=int, default=2026, help="seed of the generated entries")
    p.add_argument(
        "--only",
        type=_sections,
        default=SECTIONS,
        metavar="SECTIONS",
        help=f"run only these sections, comma-separated, of {','.join(SECTIONS)} (all); "
        "verify builds the large ledger, verifies it and makes proofs on it",
    )
    return p


def settings_from(args: argparse.Namespace) -> Settings:
    picked = with_preset(args, QUICK if args.quick else FULL)
    return Settings(
        entries=picked["entries"],
        appends=picked["appends"],
        block=min(args.block, picked["appends"]),
        group_seconds=picked["group_seconds"],
        threads=args.threads,
        proofs=picked["proofs"],
        verify_repeats=picked["verify_repeats"],
        searches=picked["searches"],
        warmup=picked["warmup"],
        media=args.media,
        postgres=None if args.no_postgres else args.postgres,
        seed=args.seed,
        sections=args.only,
    )


def main(argv: list[str] | None = None) -> int:
    return bench_main(
        argv,
        build_parser(),
        lambda args, progress: run(settings_from(args), progress),
        render_report,
        rpc_call="a federated search",
    )


if __name__ == "__main__":
    raise SystemExit(main())
