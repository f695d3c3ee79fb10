"""Gateway replicas on one PostgreSQL ledger: throughput with 1 and 2, and the gap when one dies.

``python -m liaison.bench.replicas`` builds a small demo federation, starts
its three nodes and two gateway processes whose configs share one fresh
PostgreSQL ledger (``[ledger] shared = true``), and measures:

- durable ledger appends (32 threads) on that database: a lone writer, one
  shared replica, and two shared replicas (two Ledgers in this process);
- federated searches per second through one replica, then through both;
- a burst through both in which one replica is killed with SIGKILL: how long
  the clients that were using it go without an answer (until the other
  replica answers them), and whether any search was lost.

Every search is acknowledged once the gateway returned its result, which it
does only after the request and its outcome are durable in the ledger. The
burst's client (:class:`ReplicaClient`) is also what
``tests/test_gateway_replicas.py`` drives: a search goes to its preferred
replica and, when that one is unreachable, to the next.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import statistics
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from itertools import pairwise
from pathlib import Path

import grpc
import sqlalchemy as sa

from liaison.keys import SigningKey
from liaison.ledger.log import Ledger
from liaison.messages import SearchInput, SearchResult
from liaison.query import Comparator, Operation, Predicate, Query
from liaison.serving import CHANNEL_OPTIONS
from liaison.wire import search_result_from_proto, search_to_proto
from proto.liaison.v1 import gateway_pb2_grpc as pb_gateway_grpc

DEFAULT_POSTGRES = os.environ.get(
    "LIAISON_TEST_POSTGRES", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)
# Codes that mean "this replica cannot take the search now": try another.
FAIL_OVER = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)


def hash_search(i: int) -> SearchInput:
    """A hash lookup every demo node answers (hit or not), distinct for each ``i``."""
    sha = hashlib.sha256(f"replica bench {i}".encode()).hexdigest()
    query = Query("media", Operation.MATCH, (Predicate("sha256", Comparator.EQ, (sha,)),))
    return SearchInput(query, "csam-investigation", "GEN-REPLICAS-1")


@dataclass(frozen=True, slots=True)
class Ack:
    """One search a gateway answered: which one, when, and whether another failed first."""

    job: int
    query_id: str
    replica: int
    started: float  # time.monotonic() when the client sent it
    at: float  # ... and when the answer came back
    failed_over: bool


@dataclass
class Burst:
    acks: list[Ack] = field(default_factory=list)
    # Searches no replica answered: (job, what the last one said).
    lost: list[tuple[int, str]] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def rate(self) -> float:
        return len(self.acks) / self.seconds if self.seconds else 0.0


class ReplicaClient:
    """Searches through any of several gateway replicas, failing over when one is unreachable.

    One channel per replica, shared by every thread. A search that fails with
    UNAVAILABLE (the replica is down or refuses while it cannot log) or runs
    out of time is sent again, as a new search, to the next replica; other
    refusals are final.
    """

    def __init__(self, addresses: Sequence[str], token: str, timeout_s: float = 10) -> None:
        self.addresses = tuple(addresses)
        self._metadata = (("authorization", f"Bearer {token}"),)
        self._timeout_s = timeout_s
        self._channels = [grpc.insecure_channel(a, options=CHANNEL_OPTIONS) for a in addresses]
        self._stubs = [pb_gateway_grpc.GatewayServiceStub(c) for c in self._channels]

    def close(self) -> None:
        for channel in self._channels:
            channel.close()

    def search(self, search: SearchInput, prefer: int) -> tuple[SearchResult, int, bool]:
        """The result, the replica that gave it, and whether another was tried first."""
        last: grpc.RpcError | None = None
        n = len(self._stubs)
        for attempt in range(n):
            replica = (prefer + attempt) % n
            try:
                response = self._stubs[replica].Search(
                    search_to_proto(search), metadata=self._metadata, timeout=self._timeout_s
                )
            except grpc.RpcError as exc:
                if exc.code() not in FAIL_OVER:
                    raise
                last = exc
                continue
            return search_result_from_proto(response, search.query), replica, attempt > 0
        assert last is not None
        raise last


def run_burst(
    client: ReplicaClient,
    total: int,
    workers: int,
    *,
    replicas: Sequence[int] | None = None,
    on_ack: Callable[[Ack, int], None] | None = None,
) -> Burst:
    """``total`` searches from ``workers`` threads, job ``j`` preferring replica ``j % n``.

    ``on_ack`` is told each acknowledged search and how many were so far.
    """
    preferred = tuple(replicas) if replicas is not None else tuple(range(len(client.addresses)))
    burst = Burst()
    lock = threading.Lock()
    jobs = iter(range(total))

    def work() -> None:
        while True:
            with lock:
                job = next(jobs, None)
            if job is None:
                return
            started = time.monotonic()
            try:
                result, replica, failed_over = client.search(
                    hash_search(job), preferred[job % len(preferred)]
                )
            except grpc.RpcError as exc:
                with lock:
                    burst.lost.append((job, f"{exc.code().name}: {exc.details()}"))
                continue
            ack = Ack(job, result.query_id, replica, started, time.monotonic(), failed_over)
            with lock:
                burst.acks.append(ack)
                count = len(burst.acks)
            if on_ack is not None:
                on_ack(ack, count)

    started = time.monotonic()
    with ThreadPoolExecutor(workers) as pool:
        for f in [pool.submit(work) for _ in range(workers)]:
            f.result()
    burst.seconds = time.monotonic() - started
    return burst


@dataclass(frozen=True, slots=True)
class Gap:
    """What the clients saw of a replica's death at ``killed_at`` (seconds)."""

    # The killed replica's last answer, from the kill (answers already on the wire).
    last_ack_killed_s: float
    # Searches in flight at the kill that another replica then answered: how
    # long after the kill the last of them was answered (None: none was caught).
    caught: int
    caught_answered_s: float | None
    # The longest time without any answer, from the kill on.
    longest_pause_s: float
    # Searches answered by another replica than the one asked first, and the
    # median time each took, against those answered at once (after the kill).
    failed_over: int
    failed_over_median_s: float | None
    direct_median_s: float | None


def service_gap(burst: Burst, killed: int, killed_at: float) -> Gap:
    acks = sorted(burst.acks, key=lambda a: a.at)
    from_killed = [a.at for a in acks if a.replica == killed]
    caught = [a.at - killed_at for a in acks if a.failed_over and a.started < killed_at]
    after = [a.at for a in acks if a.at >= killed_at]
    overs = [a.at - a.started for a in acks if a.failed_over]
    direct = [a.at - a.started for a in acks if not a.failed_over and a.started >= killed_at]
    return Gap(
        last_ack_killed_s=(max(from_killed) - killed_at) if from_killed else float("nan"),
        caught=len(caught),
        caught_answered_s=max(caught) if caught else None,
        longest_pause_s=max((b - a for a, b in pairwise([killed_at, *after])), default=0.0),
        failed_over=len(overs),
        failed_over_median_s=statistics.median(overs) if overs else None,
        direct_median_s=statistics.median(direct) if direct else None,
    )


# --- the benchmark ---------------------------------------------------------------------------


def fresh_database(admin_url: str) -> tuple[str, Callable[[], None]]:
    """A new PostgreSQL database for one run, and how to drop it."""
    admin = sa.create_engine(admin_url, isolation_level="AUTOCOMMIT")
    name = f"liaison_bench_{uuid.uuid4().hex[:10]}"
    with admin.connect() as conn:
        conn.execute(sa.text(f"CREATE DATABASE {name}"))
    url = sa.make_url(admin_url).set(database=name).render_as_string(hide_password=False)

    def drop() -> None:
        with admin.connect() as conn:
            conn.execute(sa.text(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
        admin.dispose()

    return url, drop


def ledger_rates(url: str, seconds: float, threads: int = 32) -> dict[str, float]:
    """Durable appends per second on ``url``: lone writer, one shared replica, two shared."""
    key = SigningKey.generate()
    rates: dict[str, float] = {}
    for name, shared, count in (("lone", False, 1), ("shared x1", True, 1), ("shared x2", True, 2)):
        _reset_ledger(url)
        ledgers = [
            Ledger.open(url, key, "liaison.bench/replicas", shared=shared) for _ in range(count)
        ]
        try:
            rates[name] = _append_rate(ledgers, seconds, threads)
        finally:
            for ledger in ledgers:
                ledger.close()
    _reset_ledger(url)
    return rates


def _append_rate(ledgers: Sequence[Ledger], seconds: float, threads: int) -> float:
    done = [0] * threads
    stop = time.monotonic() + seconds

    def work(t: int) -> None:
        ledger = ledgers[t % len(ledgers)]
        while time.monotonic() < stop:
            ledger.append(b'{"bench":%d}' % t, prove=True)
            done[t] += 1

    started = time.monotonic()
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(work, range(threads)))
    return sum(done) / (time.monotonic() - started)


def _reset_ledger(url: str) -> None:
    from liaison.ledger.store import metadata

    engine = sa.create_engine(url)
    metadata.drop_all(engine)
    engine.dispose()


def main(argv: Sequence[str] | None = None) -> int:
    from liaison.demo.data import INVESTIGATOR_AGENCY, demo_agencies
    from liaison.demo.federation import write_gateway_config
    from liaison.demo.processes import start_service, stop_service
    from liaison.demo.run import build_federation, investigator_token

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--postgres", default=DEFAULT_POSTGRES, help="an admin URL (CREATE DATABASE)"
    )
    parser.add_argument("--searches", type=int, default=300, help="searches per measurement")
    parser.add_argument("--workers", type=int, default=16, help="client threads")
    parser.add_argument("--ledger-seconds", type=float, default=2.0)
    args = parser.parse_args(argv)

    url, drop = fresh_database(args.postgres)
    services = []
    try:
        rates = ledger_rates(url, args.ledger_seconds)
        print("durable ledger appends, 32 threads, PostgreSQL (with proofs):")
        for name, rate in rates.items():
            print(f"  {name:<10} {rate:8.0f}/s")
        root = Path(tempfile.mkdtemp(prefix="liaison-replicas-"))
        with open(os.devnull, "w") as quiet:
            build_federation(root, media=2000, accounts=500, progress=quiet)
        run = root / "run"
        addresses = {}
        for agency in demo_agencies():
            svc = start_service(
                agency.agency_id, "node", root / "nodes" / agency.agency_id / "node.toml", run
            )
            services.append(svc)
            addresses[agency.agency_id] = svc.address
        config = write_gateway_config(root, [INVESTIGATOR_AGENCY], addresses, ledger=url)
        share(config)
        gateways = [start_service(f"gw-{n}", "gateway", config, run) for n in "ab"]
        services += gateways
        client = ReplicaClient([g.address for g in gateways], investigator_token(root))
        try:
            run_burst(client, 40, args.workers)  # warm up both (channels, caches)
            one = run_burst(client, args.searches, args.workers, replicas=[0])
            two = run_burst(client, args.searches, args.workers)
            print(f"federated searches, {args.workers} clients, 3 nodes:")
            print(f"  1 replica   {one.rate:7.1f}/s")
            print(f"  2 replicas  {two.rate:7.1f}/s ({two.rate / one.rate:.2f}x)")
            killed_at: list[float] = []

            def kill_once(_ack: Ack, count: int) -> None:
                if count == args.searches // 3 and not killed_at:
                    killed_at.append(time.monotonic())
                    gateways[0].process.kill()

            burst = run_burst(client, args.searches, args.workers, on_ack=kill_once)
        finally:
            client.close()
        gap = service_gap(burst, 0, killed_at[0])
        print("one replica killed (SIGKILL) a third into a burst through both:")
        print(f"  searches acknowledged {len(burst.acks)}, lost {len(burst.lost)}")
        print(f"  killed one's last answer  {gap.last_ack_killed_s * 1000:+8.1f} ms from the kill")
        if gap.caught_answered_s is not None:
            print(
                f"  {gap.caught} in flight at the kill, all answered by the other by "
                f"{gap.caught_answered_s * 1000:+.1f} ms"
            )
        print(
            f"  longest time without any answer after the kill: {gap.longest_pause_s * 1000:.1f} ms"
        )
        if gap.failed_over_median_s is not None and gap.direct_median_s is not None:
            print(
                f"  {gap.failed_over} searches failed over: median "
                f"{gap.failed_over_median_s * 1000:.1f} ms, against "
                f"{gap.direct_median_s * 1000:.1f} ms for those asked of the survivor"
            )
        return 1 if burst.lost else 0
    finally:
        for svc in reversed(services):
            stop_service(svc)
        drop()


def share(config: Path) -> None:
    """Mark a gateway config's ledger as shared by replicas (``[ledger] shared = true``)."""
    text = config.read_text()
    if "\n[ledger]\n" not in text:
        raise ValueError(f"{config} has no [ledger] table")
    config.write_text(text.replace("\n[ledger]\n", "\n[ledger]\nshared = true\n", 1))


if __name__ == "__main__":
    sys.exit(main())
