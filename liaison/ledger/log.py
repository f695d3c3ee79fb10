"""The ledger writer: one thread, group commit, proofs for fresh entries, periodic checkpoints.

Appends from many threads (node workers) or coroutines (the gateway) queue up
for a single writer thread, which commits whatever has queued in one
transaction. One durable commit then serves a whole burst of concurrent
queries, and the in-memory Merkle tree is only ever touched by that thread,
so it needs no lock.

The writer also signs a checkpoint every ``checkpoint_interval_s``, even
when nothing was appended: a deleted tail or a stopped log then shows as a
missing stretch of checkpoints.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass

from liaison import __version__
from liaison.errors import LedgerError, LedgerUnavailable
from liaison.keys import SigningKey
from liaison.ledger.checkpoint import Checkpoint, SignedCheckpoint, check_origin, sign_checkpoint
from liaison.ledger.entries import opened_entry
from liaison.ledger.merkle import MerkleTree, leaf_hash
from liaison.ledger.store import LedgerStore

log = logging.getLogger("liaison.ledger")

DEFAULT_CHECKPOINT_INTERVAL_S = 30.0
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


_STOP = object()


def _closed_error() -> LedgerUnavailable:
    return LedgerUnavailable("the ledger is closed; restart the service")


class Ledger:
    """An append-only, signed Merkle log over a :class:`LedgerStore`."""

    def __init__(
        self,
        store: LedgerStore,
        key: SigningKey,
        origin: str,
        *,
        checkpoint_interval_s: float = DEFAULT_CHECKPOINT_INTERVAL_S,
    ) -> None:
        self.store = store
        self.key = key
        self.origin = check_origin(origin)
        self.checkpoint_interval_s = checkpoint_interval_s
        try:
            store.lock_writer()
            self._check_identity()
            self.tree = MerkleTree.from_leaf_hashes(store.leaf_hashes())
        except LedgerError:
            store.close()
            raise
        self._queue: queue.SimpleQueue[_Pending | object] = queue.SimpleQueue()
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
    ) -> Ledger:
        return cls(LedgerStore(location), key, origin, checkpoint_interval_s=checkpoint_interval_s)

    def _check_identity(self) -> None:
        # One file, one log: appending under another origin or key would make
        # every older checkpoint unverifiable with the key auditors were given.
        for name, value in (("origin", self.origin), ("key_id", self.key.key_id)):
            stored = self.store.get_meta(name)
            if stored is None:
                self.store.set_meta(name, value)
            elif stored != value:
                raise LedgerError(
                    f"the ledger at {self.store.url} belongs to {name} {stored!r}, not {value!r}; "
                    "give this process its own ledger, or its original key and origin"
                )
        self.store.set_meta("checkpoint_interval_s", str(self.checkpoint_interval_s))

    @property
    def healthy(self) -> bool:
        return self._failure is None and not self._closed

    @property
    def size(self) -> int:
        return self.tree.size

    @property
    def latest_checkpoint(self) -> SignedCheckpoint | None:
        return self._last_checkpoint

    def submit(self, entry: bytes, *, prove: bool = False) -> Future[Appended]:
        """Queue ``entry``; the future resolves once it is durable (or fails)."""
        future: Future[Appended] = Future()
        with self._gate:
            if not self._closed:
                self._queue.put(_Pending(entry, prove, future))
                return future
        future.set_exception(_closed_error())
        return future

    def append(self, entry: bytes, *, prove: bool = False, timeout_s: float = 30) -> Appended:
        """Append ``entry`` and wait until it is durable.

        When nobody is committing, the calling thread commits its entry (and
        whatever else has queued) itself: handing it to the writer thread
        costs two thread switches, which on a busy machine cost more than the
        fsync. Otherwise it queues and waits, as ``submit`` does.
        """
        if not self._commit_lock.acquire(blocking=False):
            return self.submit(entry, prove=prove).result(timeout_s)
        try:
            if self._closed:
                raise _closed_error()
            own = _Pending(entry, prove, Future())
            self._commit([own, *self._drain()])
        finally:
            self._commit_lock.release()
        return own.future.result(timeout_s)

    def _drain(self) -> list[_Pending]:
        """Whatever has queued, without waiting; a stop marker stays for the writer."""
        taken: list[_Pending] = []
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
            while True:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if isinstance(item, _Pending) and item.future.set_running_or_notify_cancel():
                    item.future.set_exception(_closed_error())
            self.store.close()

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
        while True:
            wait = max(0.0, next_checkpoint - time.monotonic())
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
            with self._commit_lock:
                if batch:
                    self._commit(batch)
                if stop or time.monotonic() >= next_checkpoint:
                    if self._failure is not None:
                        self._probe()
                    self._store_checkpoint()
                    next_checkpoint = time.monotonic() + self.checkpoint_interval_s
            if stop:
                return

    def _commit(self, batch: list[_Pending]) -> None:
        # A caller that gave up (a timeout, a cancelled RPC) asked nothing of
        # anyone: its entry is dropped, never half-answered.
        batch = [p for p in batch if p.future.set_running_or_notify_cancel()]
        if not batch:
            return
        leaves = [leaf_hash(p.entry) for p in batch]
        try:
            self._resync()
            self.store.append(
                self.tree.size, list(zip(leaves, (p.entry for p in batch), strict=True))
            )
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
                p.future.set_exception(failure)
            return
        self._recovered()
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
                p.future.set_result(Appended(index, leaves[i], signed, path))
            else:
                p.future.set_result(Appended(index, leaves[i]))

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
        # Only a write to the entries table proves entries can be written again;
        # a checkpoint row landing in its own table proves nothing about them.
        try:
            self.store.probe()
            self._resync()
        except LedgerError:
            return
        self._recovered()

    def _store_checkpoint(self) -> None:
        signed = self._sign()
        try:
            self.store.add_checkpoint(
                signed.checkpoint.size, signed.checkpoint.time_ms, signed.note
            )
        except LedgerError as exc:
            self._fail(exc)
            return
        self._last_checkpoint = signed

    def _fail(self, exc: LedgerError) -> None:
        first = self._failure is None
        self._failure = exc
        if first:
            log.error("ledger write failed", extra={"ledger": self.store.url, "error": str(exc)})
            if self.on_health_change is not None:
                self.on_health_change(False)

    def _recovered(self) -> None:
        if self._failure is None:
            return
        self._failure = None
        log.warning("ledger writable again", extra={"ledger": self.store.url})
        if self.on_health_change is not None:
            self.on_health_change(True)
