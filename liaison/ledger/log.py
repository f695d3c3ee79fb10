"""The ledger writer: one thread, group commit, proofs for fresh entries, periodic checkpoints.

Appends from coroutines (the gateway, through :meth:`Ledger.submit`) queue up
for a writer thread, which commits whatever has queued in one transaction.
Threads that wait anyway (node workers, through :meth:`Ledger.append`) commit
themselves: the first to find nobody committing writes its entry and every
other one waiting, and when it is done it wakes the first that came in
meanwhile to do the same (leader and followers). One durable commit serves a
whole burst of concurrent queries either way, and only whoever holds the
commit lock touches the in-memory Merkle tree.

The writer also signs a checkpoint every ``checkpoint_interval_s``, even
when nothing was appended: a deleted tail or a stopped log then shows as a
missing stretch of checkpoints.

An entry may carry rows of other tables of the ledger's database
(:class:`~liaison.ledger.store.SideRows`), committed in its batch's
transaction: a node makes an answer's replay record and rate charge durable
with its receipt, in one commit, or none of them.

A watchdog bounds every write by the store's ``timeouts.write_s``: a write
that has not returned by then (a database that stopped answering, its
connection still open) marks the ledger unavailable, refuses everyone waiting
and everyone who comes until a probe commits again, and cuts the stuck
connection. While unavailable, the writer probes every ``retry_interval_s``.

Shared (gateway replicas on one PostgreSQL ledger, ``store.shared``): the
numbering moves into the database. Each commit is one turn of
:meth:`LedgerStore.write_shared` under a transaction-scoped advisory lock,
which returns the leaves the other replicas appended since this process last
looked; the tree takes those in before its own, so it is always the
database's log up to this process's last turn, and proofs and checkpoints
computed from it hold for everyone. Stored checkpoints are signed inside a
turn of their own, so their sizes and times never go backwards whichever
replica signs. Every replica signs with the gateway's one key and origin.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, InvalidStateError
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from typing import Any

from liaison import __version__
from liaison.errors import LedgerError, LedgerUnavailable
from liaison.keys import SigningKey
from liaison.ledger.checkpoint import Checkpoint, SignedCheckpoint, check_origin, sign_checkpoint
from liaison.ledger.entries import opened_entry
from liaison.ledger.merkle import MerkleTree, leaf_hash
from liaison.ledger.store import LedgerStore, LedgerTimeouts, SideRows

log = logging.getLogger("liaison.ledger")

DEFAULT_CHECKPOINT_INTERVAL_S = 30.0
# While writes fail, how often the writer tries a committed probe.
DEFAULT_RETRY_INTERVAL_S = 1.0
MAX_BATCH = 1024


def now_ms() -> int:
    return time.time_ns() // 1_000_000


@dataclass(frozen=True, slots=True)
class Appended:
    """Where an entry landed and, when asked for, the proof that it did."""

    index: int
    leaf_hash: bytes
    # A checkpoint covering the entry and the inclusion path to its root;
    # None unless the append asked for a proof.
    checkpoint: SignedCheckpoint | None = None
    inclusion_path: tuple[bytes, ...] = ()


@dataclass(slots=True)
class _Pending:
    entry: bytes
    prove: bool
    future: Future[Appended]
    side: Sequence[SideRows] = ()
    # An append() caller's wake-up: released when its entry is settled, or
    # when it should try to commit (the committer before it is done).
    wake: threading.Lock | None = None


_STOP = object()
# Put on the writer's queue when the ledger fails outside the writer's own
# turn (a caller's commit, the watchdog): the writer, asleep until its next
# checkpoint, must start probing one retry interval from now instead.
_WAKE = object()


def _closed_error() -> LedgerUnavailable:
    return LedgerUnavailable("the ledger is closed; restart the service")


def _settle(pending: _Pending, result: Appended | BaseException) -> None:
    """Resolve ``pending`` unless the watchdog already failed it (a write that came back late)."""
    try:
        if isinstance(result, BaseException):
            pending.future.set_exception(result)
        else:
            pending.future.set_result(result)
    except InvalidStateError:
        pass
    _wake(pending)


def _refuse(pending: _Pending, failure: BaseException) -> None:
    """Fail ``pending`` before it was taken up (it was never written)."""
    if pending.future.set_running_or_notify_cancel():
        pending.future.set_exception(failure)
    _wake(pending)


def _wake(pending: _Pending) -> None:
    if pending.wake is not None:
        # Already released (woken twice): one wake-up is all it needs.
        with suppress(RuntimeError):
            pending.wake.release()


def _asleep() -> threading.Lock:
    lock = threading.Lock()
    lock.acquire()
    return lock


class Ledger:
    """An append-only, signed Merkle log over a :class:`LedgerStore`."""

    def __init__(
        self,
        store: LedgerStore,
        key: SigningKey,
        origin: str,
        *,
        checkpoint_interval_s: float = DEFAULT_CHECKPOINT_INTERVAL_S,
        retry_interval_s: float = DEFAULT_RETRY_INTERVAL_S,
    ) -> None:
        self.store = store
        self.key = key
        self.origin = check_origin(origin)
        self.checkpoint_interval_s = checkpoint_interval_s
        self.retry_interval_s = retry_interval_s
        self.write_timeout_s = store.timeouts.write_s
        try:
            store.lock_writer()
            self._check_identity()
            self.tree = MerkleTree.from_leaf_hashes(store.leaf_hashes())
        except LedgerError:
            store.close()
            raise
        self._queue: queue.SimpleQueue[_Pending | object] = queue.SimpleQueue()
        # append() callers waiting for someone (or themselves) to commit, oldest first.
        self._waiting: list[_Pending] = []
        self._failure: LedgerError | None = None
        self._last_checkpoint: SignedCheckpoint | None = None
        self._closed = False
        # Makes "closed" and "queued" one step, so no append can slip in
        # behind the stop marker and wait forever.
        self._gate = threading.Lock()
        # Held by whoever commits: the writer thread, or a caller of append()
        # that found nobody committing and does it itself (leader/follower).
        self._commit_lock = threading.Lock()
        # Told True/False when writes start failing or work again (health checks).
        self.on_health_change: Callable[[bool], None] | None = None
        # Told the seconds each successful commit of entries took (metrics).
        self.on_append: Callable[[float], None] | None = None
        # Orders failure and recovery, which the watchdog and the writer both report.
        self._health_lock = threading.Lock()
        # When the store call under way began (None when none is), the entries
        # it is writing, and whether one overran the write timeout; then every
        # append is refused at once until a write succeeds again.
        self._busy_since: float | None = None
        self._inflight: list[_Pending] = []
        self._stalled = False
        self._watch_stop = threading.Event()
        self._read_cut_at = 0.0
        self._watchdog = threading.Thread(target=self._watch, name="ledger-watchdog", daemon=True)
        self._watchdog.start()
        # The reopening is itself logged and checkpointed before anything else,
        # so requests cut short by a crash are explained by the next entry.
        self._commit(
            [
                _Pending(
                    opened_entry(
                        time_ms=now_ms(),
                        origin=self.origin,
                        key_id=key.key_id,
                        software=f"liaison {__version__}",
                    ),
                    False,
                    Future(),
                )
            ]
        )
        self._store_checkpoint()
        if not self.healthy:
            self._stop_watchdog()
            store.close()
            raise self._failure or LedgerUnavailable(f"cannot write the ledger at {store.url}")
        self._thread = threading.Thread(target=self._run, name="ledger-writer", daemon=True)
        self._thread.start()

    @classmethod
    def open(
        cls,
        location: str,
        key: SigningKey,
        origin: str,
        *,
        checkpoint_interval_s: float = DEFAULT_CHECKPOINT_INTERVAL_S,
        timeouts: LedgerTimeouts | None = None,
        retry_interval_s: float = DEFAULT_RETRY_INTERVAL_S,
        shared: bool = False,
    ) -> Ledger:
        """Open the ledger at ``location``; ``shared`` for one of several replicas (PostgreSQL)."""
        return cls(
            LedgerStore(location, timeouts=timeouts, shared=shared),
            key,
            origin,
            checkpoint_interval_s=checkpoint_interval_s,
            retry_interval_s=retry_interval_s,
        )

    def _check_identity(self) -> None:
        # One file, one log: appending under another origin or key would make
        # every older checkpoint unverifiable with the key auditors were given.
        for name, value in (("origin", self.origin), ("key_id", self.key.key_id)):
            if self.store.shared:
                # Replicas may start at once: the first to store its identity wins.
                stored: str | None = self.store.claim_meta(name, value)
            else:
                stored = self.store.get_meta(name)
                if stored is None:
                    self.store.set_meta(name, value)
            if stored is not None and stored != value:
                raise LedgerError(
                    f"the ledger at {self.store.url} belongs to {name} {stored!r}, not {value!r}; "
                    "give this process its own ledger, or its original key and origin"
                )
        self.store.set_meta("checkpoint_interval_s", str(self.checkpoint_interval_s))

    @property
    def healthy(self) -> bool:
        return self._failure is None and not self._closed

    @property
    def stalled(self) -> bool:
        """A write overran the write timeout, and none has succeeded since.

        Such a write may still land (its callers were told it failed): until
        a later write succeeds, which can only begin once it has returned,
        what the database holds is not yet settled.
        """
        return self._stalled

    @property
    def size(self) -> int:
        """Entries in the tree; shared, as of this process's last turn (others may have added)."""
        return self.tree.size

    @property
    def latest_checkpoint(self) -> SignedCheckpoint | None:
        return self._last_checkpoint

    def submit(
        self, entry: bytes, *, prove: bool = False, side: Sequence[SideRows] = ()
    ) -> Future[Appended]:
        """Queue ``entry`` (and ``side``); the future resolves once it is durable (or fails)."""
        future: Future[Appended] = Future()
        with self._gate:
            refusal = _closed_error() if self._closed else self._stalled_error()
            if refusal is None:
                self._queue.put(_Pending(entry, prove, future, side))
                return future
        future.set_exception(refusal)
        return future

    def _stalled_error(self) -> LedgerError | None:
        # A write is stuck or was: waiting behind it would only time out later.
        if not self._stalled:
            return None
        return self._failure or LedgerUnavailable(f"cannot write the ledger at {self.store.url}")

    def append(
        self,
        entry: bytes,
        *,
        prove: bool = False,
        timeout_s: float = 30,
        side: Sequence[SideRows] = (),
    ) -> Appended:
        """Append ``entry`` (and ``side``, in the same transaction) and wait until it is durable.

        When nobody is committing, the calling thread commits its entry (and
        whatever else has queued) itself: handing it to the writer thread
        costs two thread switches, which on a busy machine cost more than the
        fsync. Otherwise it queues and waits, as ``submit`` does.
        """
        refusal = self._stalled_error()
        if refusal is not None:
            raise refusal
        own = _Pending(entry, prove, Future(), side, _asleep())
        with self._gate:
            if self._closed:
                raise _closed_error()
            self._waiting.append(own)
        deadline = time.monotonic() + timeout_s
        while not own.future.done():
            # Whoever gets the lock commits everyone waiting, itself included
            # unless a committer already took it.
            if self._commit_lock.acquire(blocking=False):
                try:
                    self._commit(self._drain())
                finally:
                    self._release_commit()
                continue
            left = deadline - time.monotonic()
            if left <= 0 or not own.wake.acquire(timeout=left):  # type: ignore[union-attr]  # set above
                break
        return own.future.result(max(0.0, deadline - time.monotonic()))

    def _release_commit(self) -> None:
        """Release the commit lock and wake the oldest append() waiting, to commit next."""
        self._commit_lock.release()
        with self._gate:
            first = self._waiting[0] if self._waiting else None
        if first is not None:
            _wake(first)

    def apply(self, side: Sequence[SideRows]) -> None:
        """Write ``side`` in a transaction of its own, between commits of entries.

        For upkeep of the tables that ride along with entries (purging old
        rows, importing old files): the ledger's database keeps one writer.
        Raises LedgerUnavailable if the write fails; the ledger's health is
        left to the entries.
        """
        refusal = self._stalled_error()
        if refusal is not None:
            raise refusal
        self._commit_lock.acquire()
        try:
            if self._closed:
                raise _closed_error()
            with self._watched():
                self.store.write(self.tree.size, (), side)
        finally:
            self._release_commit()

    def _drain(self) -> list[_Pending]:
        """Whatever waits or has queued, without waiting; a stop marker stays for the writer."""
        with self._gate:
            taken = self._waiting[:MAX_BATCH]
            del self._waiting[:MAX_BATCH]
        while len(taken) < MAX_BATCH:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            if isinstance(item, _Pending):
                taken.append(item)
            else:
                self._queue.put(item)
                break
        return taken

    def close(self) -> None:
        """Drain the queue, sign a final checkpoint, release the store."""
        with self._gate:
            if self._closed:
                return
            self._closed = True
            self._queue.put(_STOP)
        self._thread.join(30)
        with self._commit_lock:
            # Only possible if the writer died or hung: nobody may wait forever.
            with self._gate:
                left: list[object] = [*self._waiting]
                self._waiting.clear()
            while True:
                try:
                    left.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            for item in left:
                if isinstance(item, _Pending):
                    _refuse(item, _closed_error())
            self._stop_watchdog()
            self.store.close()

    def _stop_watchdog(self) -> None:
        self._watch_stop.set()
        if self._watchdog is not threading.current_thread():
            self._watchdog.join(5)

    def _run(self) -> None:
        try:
            self._loop()
        except BaseException as exc:
            # A writer that dies silently would leave every caller hanging
            # while health still said SERVING.
            log.exception("ledger writer stopped", extra={"ledger": self.store.url})
            self._fail(LedgerUnavailable(f"the ledger writer stopped ({type(exc).__name__})"))
            with self._gate:
                self._closed = True
            raise

    def _loop(self) -> None:
        next_checkpoint = time.monotonic() + self.checkpoint_interval_s
        next_probe = next_checkpoint
        while True:
            if self._failure is not None:
                # The first probe after a failure comes one retry interval after it.
                next_probe = min(next_probe, time.monotonic() + self.retry_interval_s)
            wake = next_checkpoint if self._failure is None else min(next_checkpoint, next_probe)
            wait = max(0.0, wake - time.monotonic())
            try:
                first = self._queue.get(timeout=wait)
            except queue.Empty:
                first = None
            batch: list[_Pending] = []
            stop = first is _STOP
            if isinstance(first, _Pending):
                batch.append(first)
            while not stop and len(batch) < MAX_BATCH:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is _STOP:
                    stop = True
                elif isinstance(item, _Pending):
                    batch.append(item)
            self._commit_lock.acquire()
            try:
                if stop:
                    # The last batch: whoever still waits in append() goes too.
                    batch.extend(self._drain())
                if batch:
                    self._commit(batch)
                checkpoint_due = stop or time.monotonic() >= next_checkpoint
                if self._failure is not None and (checkpoint_due or time.monotonic() >= next_probe):
                    self._probe()
                    next_probe = time.monotonic() + self.retry_interval_s
                if checkpoint_due:
                    self._store_checkpoint()
                    next_checkpoint = time.monotonic() + self.checkpoint_interval_s
            finally:
                self._release_commit()
            if stop:
                return

    @contextmanager
    def _watched(self, batch: list[_Pending] | None = None) -> Iterator[None]:
        """Mark a store call under way, for the watchdog to time."""
        self._inflight = batch or []
        self._busy_since = time.monotonic()
        try:
            yield
        finally:
            self._busy_since = None
            self._inflight = []

    def _watch(self) -> None:
        limit = self.write_timeout_s
        # Checks cost a wake-up each, on a busy server too: a few a second
        # find a stuck write well within a quarter of its limit.
        tick = min(0.25, limit / 4)
        handled: float | None = None
        last_cut = 0.0
        while not self._watch_stop.wait(tick):
            self._watch_reads(limit)
            since = self._busy_since
            if since is None or time.monotonic() - since < limit:
                continue
            if since != handled:
                handled = since
                self._stall(limit, inflight=list(self._inflight))
                last_cut = time.monotonic()
            elif time.monotonic() - last_cut >= limit:
                # Still stuck: a reconnect may have opened another hung connection.
                self.store.cut_connections()
                last_cut = time.monotonic()

    def _watch_reads(self, limit: float) -> None:
        """Cut the connections under a read that overran ``limit`` (its caller then fails)."""
        began = self.store.oldest_read()
        if began is None or time.monotonic() - began < limit:
            return
        now = time.monotonic()
        if now - self._read_cut_at < limit:
            return  # cut already; a read begun since gets its own full limit
        self._read_cut_at = now
        cut = self.store.cut_connections()
        if cut:
            log.warning(
                "ledger read did not return; connections cut",
                extra={"ledger": self.store.url, "connections": cut, "timeout_s": limit},
            )

    def _stall(self, limit: float, *, inflight: list[_Pending]) -> None:
        """A write overran ``limit``: unavailable, tell everyone waiting, cut the connection."""
        failure = LedgerUnavailable(
            f"the ledger at {self.store.url} did not confirm a write within {limit:g} s; "
            "its database is not answering (stopped, unreachable or locked), "
            "so no query is sent until a write succeeds again"
        )
        self._stalled = True
        self._fail(failure, reason="write timed out", timeout_s=limit)
        for p in inflight:
            _settle(p, failure)
        for p in self._drain():
            _refuse(p, failure)
        cut = self.store.cut_connections()
        if cut:
            log.warning(
                "ledger connections cut",
                extra={"ledger": self.store.url, "connections": cut, "timeout_s": limit},
            )

    def _commit(self, batch: list[_Pending]) -> None:
        # A caller that gave up (a timeout, a cancelled RPC) asked nothing of
        # anyone: its entry is dropped, never half-answered.
        batch = [p for p in batch if p.future.set_running_or_notify_cancel()]
        if not batch:
            return
        leaves = [leaf_hash(p.entry) for p in batch]
        rows = list(zip(leaves, (p.entry for p in batch), strict=True))
        side = [s for p in batch for s in p.side]
        started = time.perf_counter()
        missed: list[bytes] = []
        try:
            with self._watched(batch):
                if self.store.shared:
                    missed = self.store.write_shared(self.tree.size, rows, side)
                else:
                    self._resync()
                    if side:
                        self.store.write(self.tree.size, rows, side)
                    else:
                        self.store.append(self.tree.size, rows)
        except Exception as exc:
            failure = (
                exc
                if isinstance(exc, LedgerError)
                else LedgerUnavailable(
                    f"cannot write the ledger at {self.store.url} ({type(exc).__name__})"
                )
            )
            self._fail(failure)
            for p in batch:
                _settle(p, failure)
            return
        if self.on_append is not None:
            self.on_append(time.perf_counter() - started)
        self._recovered()
        # Other replicas' entries come first: ours were numbered after them.
        for leaf in missed:
            self.tree.append(leaf)
        start = self.tree.size
        for leaf in leaves:
            self.tree.append(leaf)
        signed: SignedCheckpoint | None = None
        if any(p.prove for p in batch):
            signed = self._sign()
        for i, p in enumerate(batch):
            index = start + i
            if p.prove and signed is not None:
                path = tuple(self.tree.inclusion_proof(index, signed.checkpoint.size))
                _settle(p, Appended(index, leaves[i], signed, path))
            else:
                _settle(p, Appended(index, leaves[i]))

    def _resync(self) -> None:
        # After a failed commit whose fate is unknown (a dropped connection
        # mid-commit), the store may hold rows the tree lacks: take them in.
        if self._failure is None:
            return
        stored = self.store.size()
        if stored > self.tree.size:
            for index, leaf, _entry in self.store.rows(self.tree.size):
                if index != self.tree.size:
                    raise LedgerError(f"ledger {self.store.url} has a gap at entry {index}")
                self.tree.append(leaf)

    def _sign(self) -> SignedCheckpoint:
        checkpoint = Checkpoint(self.origin, self.tree.size, self.tree.root(), now_ms())
        return sign_checkpoint(self.key, checkpoint)

    def _probe(self) -> None:
        # Only a committed write to the entries table proves entries can be
        # written again; a checkpoint row landing in its own table proves
        # nothing about them.
        try:
            with self._watched():
                self.store.probe()
                self._resync()
        except LedgerError:
            return
        self._recovered()

    def _take_in(self, first: int, leaves: Sequence[bytes]) -> None:
        """Append the stored leaves ``first``... that the tree lacks; check those it holds."""
        held = self.tree.size - first
        for i, leaf in enumerate(leaves[:held]):
            if self.tree.leaf(first + i) != leaf:
                raise LedgerError(
                    f"ledger {self.store.url} holds another entry {first + i} than this process "
                    "wrote or read: the log forked. Stop every replica and run "
                    "`liaison audit verify`"
                )
        for leaf in leaves[held:]:
            self.tree.append(leaf)

    def _store_shared_checkpoint(self) -> SignedCheckpoint:
        """Sign and store a checkpoint of the shared log as it is in the database now."""
        known = self.tree.size
        signed: list[SignedCheckpoint] = []

        def sign(missed: list[bytes], last_time_ms: int | None) -> tuple[int, int, str]:
            self._take_in(known, missed)
            # Another host's clock may run ahead: a checkpoint stored after
            # another never says it was signed before it.
            time_ms = max(now_ms(), last_time_ms or 0)
            checkpoint = Checkpoint(self.origin, self.tree.size, self.tree.root(), time_ms)
            signed.append(sign_checkpoint(self.key, checkpoint))
            return checkpoint.size, checkpoint.time_ms, signed[-1].note

        self.store.add_checkpoint_shared(known, sign)
        return signed[-1]

    def _store_checkpoint(self) -> None:
        if self.store.shared:
            try:
                with self._watched():
                    self._last_checkpoint = self._store_shared_checkpoint()
            except LedgerError as exc:
                self._fail(exc)
            return
        signed = self._sign()
        try:
            with self._watched():
                self.store.add_checkpoint(
                    signed.checkpoint.size, signed.checkpoint.time_ms, signed.note
                )
        except LedgerError as exc:
            self._fail(exc)
            return
        self._last_checkpoint = signed

    def _fail(self, exc: LedgerError, **details: Any) -> None:
        with self._health_lock:
            first = self._failure is None
            self._failure = exc
            if first:
                log.error(
                    "ledger write failed",
                    extra={"ledger": self.store.url, "error": str(exc), **details},
                )
                if self.on_health_change is not None:
                    self.on_health_change(False)
                self._queue.put(_WAKE)

    def _recovered(self) -> None:
        with self._health_lock:
            self._stalled = False
            if self._failure is None:
                return
            self._failure = None
            log.warning("ledger writable again", extra={"ledger": self.store.url})
            if self.on_health_change is not None:
                self.on_health_change(True)
