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
        self._check_identity()
        try:
            self.tree = MerkleTree.from_leaf_hashes(store.leaf_hashes())
        except LedgerError:
            store.close()
            raise
        self._queue: queue.SimpleQueue[_Pending | object] = queue.SimpleQueue()
        self._failure: LedgerError | None = None
        self._last_checkpoint: SignedCheckpoint | None = None
        self._closed = False
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
                self.store.close()
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
        if self._closed:
            future.set_exception(LedgerUnavailable("the ledger is closed; restart the service"))
            return future
        self._queue.put(_Pending(entry, prove, future))
        return future

    def append(self, entry: bytes, *, prove: bool = False, timeout_s: float = 30) -> Appended:
        """Append ``entry`` and wait until it is durable."""
        return self.submit(entry, prove=prove).result(timeout_s)

    def close(self) -> None:
        """Drain the queue, sign a final checkpoint, release the store."""
        if self._closed:
            return
        self._queue.put(_STOP)
        self._thread.join(30)
        self._closed = True
        self.store.close()

    def _run(self) -> None:
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
            if batch:
                self._commit(batch)
            if stop or time.monotonic() >= next_checkpoint:
                self._store_checkpoint()
                next_checkpoint = time.monotonic() + self.checkpoint_interval_s
            if stop:
                return

    def _commit(self, batch: list[_Pending]) -> None:
        leaves = [leaf_hash(p.entry) for p in batch]
        try:
            self._resync()
            self.store.append(
                self.tree.size, list(zip(leaves, (p.entry for p in batch), strict=True))
            )
        except LedgerError as exc:
            self._fail(exc)
            for p in batch:
                p.future.set_exception(exc)
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

    def _store_checkpoint(self) -> None:
        signed = self._sign()
        try:
            self.store.add_checkpoint(
                signed.checkpoint.size, signed.checkpoint.time_ms, signed.note
            )
        except LedgerError as exc:
            self._fail(exc)
            return
        self._recovered()
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
