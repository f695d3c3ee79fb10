"""Verifying a ledger from its stored copy and a public key alone.

Everything is recomputed: every leaf from the entry's bytes, the tree from
the leaves, every checkpoint's signature, and each checkpoint's root against
the recomputed tree. A problem names the first place it shows: an entry by
index, a checkpoint by its position and time.

A prefix of a valid log is itself a valid log, so a lone copy cannot show
that it is whole: one rolled back to an earlier checkpoint verifies just as
cleanly. What can show it is a checkpoint of the same log held by someone the
writer cannot reach afterwards, a *witness*: a checkpoint file an auditor
saved earlier, or the gateway checkpoints every node keeps in its receipts.
A witness that saw a larger tree than the copy holds, or a different one,
fails the copy. For a live ledger, a maximum age of the newest checkpoint
catches a copy rolled back to a stale one.

A million entries are verified in a few seconds: rows are read in batches
by one streaming query, leaf hashes computed in one comprehension per batch,
and entries read by :func:`~liaison.ledger.entries.scan_entries` in C. A
batch with anything amiss (a missing index, a leaf that differs, an entry
the fast reader refuses) is checked again row by row with ``parse_entry``,
so every finding reads as it always has.

A large SQLite ledger is shared with a second process where two CPUs are
free (:mod:`~liaison.ledger.verify_worker`): it reads, hashes and checks
chunks from the back while this one does so from the front, and its
summaries are folded in only where reading the chunk here would have found
nothing; any other chunk is read here. The report is the same either way.
"""

from __future__ import annotations

import gc
import hashlib
import operator
import os
import sqlite3
import sys
import time
from array import array
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from itertools import count
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.exc import SQLAlchemyError

from liaison.errors import CheckpointError, EntryError, LedgerUnavailable, ProofError
from liaison.keys import VerifyingKey
from liaison.ledger.checkpoint import Checkpoint, open_checkpoint, parse_unverified
from liaison.ledger.entries import SCANNED, EntryKind, ScannedEntry, parse_entry, scan_entries
from liaison.ledger.merkle import (
    EMPTY_ROOT,
    HASH_SIZE,
    MerkleTree,
    leaf_hash,
    subtree_levels,
    verify_consistency,
)
from liaison.ledger.store import LedgerStore, StoredCheckpoint, entries_table
from liaison.ledger.verify_worker import ChunkSummary, Helper

# A checkpoint gap wider than this many intervals (plus slack) is reported:
# the log was stopped, or checkpoints were removed.
GAP_INTERVALS = 2.5
GAP_SLACK_MS = 5_000


@dataclass(frozen=True, slots=True)
class Finding:
    where: str
    message: str
    index: int | None = None

    def __str__(self) -> str:
        return f"{self.where}: {self.message}"


@dataclass(frozen=True, slots=True)
class Witness:
    """Signed checkpoints of a log kept by someone other than its writer.

    ``notes`` pairs where each checkpoint was found (for messages) with its
    signed note. Build one with :func:`kept_witness` or :func:`receipts_witness`.
    """

    name: str
    notes: tuple[tuple[str, str], ...]
    # The auditor's own saved checkpoints: each must be of this log.
    kept: bool = False

    @property
    def saw(self) -> str:
        return "you saw" if self.kept else "the witness saw"

    @property
    def whom(self) -> str:
        return "you" if self.kept else "the witness"


@dataclass(slots=True)
class WitnessSummary:
    """What one witness vouched for: how many checkpoints of this log, and the largest."""

    name: str
    # Checkpoints of this log it holds, and how many of them check out.
    seen: int = 0
    checkpoints: int = 0
    largest: Checkpoint | None = None


@dataclass(slots=True)
class VerifyReport:
    ledger: str
    origin: str
    size: int = 0
    root: bytes = EMPTY_ROOT
    checkpoints: int = 0
    latest: Checkpoint | None = None
    kinds: dict[str, int] = field(default_factory=dict)
    unfinished: int = 0
    problems: list[Finding] = field(default_factory=list)
    warnings: list[Finding] = field(default_factory=list)
    # When the check ran, for the age of the newest checkpoint.
    checked_at_ms: int = 0
    max_age_s: float | None = None
    witnesses: list[WitnessSummary] = field(default_factory=list)
    # Processes that read the entries: 2 when a second one summed up any chunk.
    processes: int = 1

    @property
    def witnessed(self) -> Checkpoint | None:
        """The largest checkpoint a witness holds that this copy checks out against."""
        found = [w.largest for w in self.witnesses if w.largest is not None]
        return max(found, key=lambda c: (c.size, c.time_ms), default=None)

    @property
    def latest_age_ms(self) -> int | None:
        return None if self.latest is None else self.checked_at_ms - self.latest.time_ms

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def first_problem(self) -> Finding | None:
        return self.problems[0] if self.problems else None


Progress = Callable[[int], None]


def verify_ledger(
    store: LedgerStore,
    key: VerifyingKey,
    *,
    origin: str | None = None,
    kept: Sequence[str] = (),
    witnesses: Sequence[Witness] = (),
    warn_unwitnessed: bool = False,
    max_age_s: float | None = None,
    now_ms: int | None = None,
    allow_unsigned_tail: bool = False,
    progress: Progress | None = None,
    processes: int | None = None,
) -> tuple[VerifyReport, MerkleTree]:
    """Check ``store`` against ``key``.

    ``kept`` are checkpoint notes the auditor saved earlier and ``witnesses``
    other parties' checkpoints of this log: the copy fails if any saw a larger
    or a different tree. ``warn_unwitnessed`` warns when no witness holds a
    checkpoint of this log (a lone copy may be rolled back); ``max_age_s``
    fails a copy whose newest checkpoint is older than that at ``now_ms``.
    ``processes`` is 1 to read every entry in this process, 2 to let a second
    process share a large SQLite ledger (see :mod:`~liaison.ledger.verify_worker`),
    None for 2 where two CPUs are free to this process; the report is the same.
    """
    if processes not in (None, 1, 2):
        raise ValueError(f"processes must be 1 or 2, not {processes!r}")
    origin = origin or store.get_meta("origin") or ""
    report = VerifyReport(
        ledger=store.url,
        origin=origin,
        checked_at_ms=time.time_ns() // 1_000_000 if now_ms is None else now_ms,
        max_age_s=max_age_s,
    )
    rebuilt = _rebuild(store, report, progress, processes)
    tree = rebuilt.tree
    report.size = tree.size
    report.root = tree.root()
    interval_s = _float(store.get_meta("checkpoint_interval_s"))
    failed_before = len(report.problems)
    covered = _check_checkpoints(store.checkpoints(), key, origin, rebuilt, report, interval_s)
    checkpoints_failed = len(report.problems) > failed_before
    every = [kept_witness(kept), *witnesses] if kept else list(witnesses)
    for witness in every:
        covered = max(covered, _check_witness(witness, key, origin, rebuilt, report))
    if covered < tree.size:
        advice = (
            "not covered by any checkpoint that verifies (see the problems above)"
            if checkpoints_failed
            else "not covered by any signed checkpoint, so nothing vouches for them yet; the "
            f"writer signs one every {interval_s:g} s: copy the ledger again later"
            if interval_s
            else "not covered by any signed checkpoint"
        )
        finding = Finding(f"entries {covered}..{tree.size - 1}", advice, covered)
        (report.warnings if allow_unsigned_tail else report.problems).append(finding)
    if max_age_s is not None:
        _check_age(report, max_age_s)
    if warn_unwitnessed and not any(w.seen for w in report.witnesses):
        report.warnings.append(
            Finding(
                "witnesses",
                f"{'none holds a checkpoint of this log' if report.witnesses else 'none given'}"
                f": this copy shows that its {tree.size:,} entries are a log signed "
                "by the key, not that the log ends there; a copy rolled back to an earlier "
                "checkpoint verifies just the same. Check it against a witness: --witness with "
                "a node's receipts ledger (or an earlier copy of this ledger), or --checkpoint "
                "with a checkpoint saved by an earlier `liaison audit verify --save-checkpoint`",
            )
        )
    return report, tree


def kept_witness(notes: Sequence[str]) -> Witness:
    """The checkpoints an auditor saved from earlier audits, numbered from 1."""
    return Witness(
        "kept checkpoints",
        tuple((f"kept checkpoint {i}", note) for i, note in enumerate(notes, start=1)),
        kept=True,
    )


def receipts_witness(store: LedgerStore, name: str) -> Witness:
    """Every checkpoint held in the ledger at ``store``, each once.

    A node's receipts ledger holds, in each receipt, the gateway checkpoint
    that proved the request was logged; an earlier copy of a ledger holds
    that ledger's own checkpoints. Both are signed by the log's key, so the
    witness ledger need not be trusted or verified for them to count.
    Checkpoints of other logs are kept here and skipped by the verifier.
    """
    found: dict[str, str] = {}
    for position, row in enumerate(store.checkpoints(), start=1):
        found.setdefault(row.note, f"{name} checkpoint #{position}")
    c = entries_table.c
    with gc_paused():
        for rows in entry_batches(store, c.idx, c.entry):
            scanned = scan_entries(list(map(_SECOND, rows)))
            if scanned is not None:
                for (index, _raw), entry in zip(rows, scanned, strict=True):
                    if type(entry) in _SCANNED_RECEIPTS:
                        found.setdefault(entry.gateway_checkpoint, f"{name} entry {index}")
                continue
            for index, raw in rows:
                try:
                    parsed = parse_entry(_bytes_of(raw))
                except EntryError:
                    continue  # that ledger's own verification reports it
                if parsed.kind in _RECEIPT_KINDS:
                    found.setdefault(parsed.text("gateway_checkpoint"), f"{name} entry {index}")
    return Witness(name, tuple((where, note) for note, where in found.items()))


def _check_witness(
    witness: Witness, key: VerifyingKey, origin: str, rebuilt: _Rebuilt, report: VerifyReport
) -> int:
    """Check every checkpoint of this log that ``witness`` holds; return the largest that fits."""
    summary = WitnessSummary(witness.name)
    report.witnesses.append(summary)
    for where, note in witness.notes:
        if not witness.kept and origin:
            # A node may answer several gateways: their checkpoints are not this log's.
            try:
                named = parse_unverified(note).origin
            except CheckpointError as exc:
                report.problems.append(
                    Finding(where, f"holds a checkpoint that does not parse ({exc})")
                )
                continue
            if named != origin:
                try:
                    open_checkpoint(note, key)
                except CheckpointError:
                    continue  # another log's, under another key
                # The copy's origin is unsigned metadata: a checkpoint this key
                # signed under another name says it was changed.
                report.problems.append(
                    Finding(
                        where,
                        f"holds a checkpoint signed by this ledger's key for origin "
                        f"{named!r}, but the copy names its origin {origin!r}: the copy's "
                        "origin was changed, or one key signs two logs; verify with the "
                        "origin the key's owner publishes",
                    )
                )
                continue
        summary.seen += 1
        cp = _check_witnessed(where, note, witness, key, origin, rebuilt, report)
        if cp is not None:
            summary.checkpoints += 1
            if summary.largest is None or (cp.size, cp.time_ms) > (
                summary.largest.size,
                summary.largest.time_ms,
            ):
                summary.largest = cp
    if not summary.seen and not witness.kept:
        report.warnings.append(
            Finding(
                witness.name,
                f"holds no checkpoint of log {origin or '(unknown origin)'}, so it witnesses "
                "nothing for this ledger; give the receipts ledger of a node this log's "
                "gateway asks, or an earlier copy of this ledger",
            )
        )
    return 0 if summary.largest is None else summary.largest.size


def _check_witnessed(
    where: str,
    note: str,
    witness: Witness,
    key: VerifyingKey,
    origin: str,
    rebuilt: _Rebuilt,
    report: VerifyReport,
) -> Checkpoint | None:
    tree = rebuilt.tree
    try:
        cp = open_checkpoint(note, key, origin=origin or None)
    except CheckpointError as exc:
        report.problems.append(Finding(where, f"does not verify ({exc})"))
        return None
    where = f"{where} (size {cp.size}, time {cp.time_ms})"
    if cp.size > tree.size:
        report.problems.append(
            Finding(
                where,
                f"{witness.saw} {cp.size} entries, the ledger now holds {tree.size}: "
                f"entries {tree.size}..{cp.size - 1} were removed (truncated): this copy was "
                "cut short or rolled back to an earlier checkpoint; ask the ledger's operator "
                "for the whole ledger and why this copy lacks them",
                tree.size,
            )
        )
        return None
    if rebuilt.first_missing is not None and cp.size > rebuilt.first_missing:
        report.problems.append(
            Finding(
                where,
                f"cannot be checked: entry {rebuilt.first_missing}, which it covers, is missing",
                rebuilt.first_missing,
            )
        )
        return None
    if tree.root(cp.size) != cp.root:
        report.problems.append(
            Finding(
                where,
                f"the ledger's first entries no longer hash to what {witness.saw}: rewritten, or "
                f"the writer showed {witness.whom} another history "
                "(a forked log); keep both copies as evidence and ask the operator",
            )
        )
        return None
    return cp


def _check_age(report: VerifyReport, max_age_s: float) -> None:
    latest = report.latest
    if latest is None:
        report.problems.append(
            Finding(
                "newest checkpoint",
                f"none verifies, so nothing shows this copy is younger than --max-age "
                f"{max_age_s:g} s; fetch a fresh copy of the ledger",
            )
        )
        return
    age_ms = report.checked_at_ms - latest.time_ms
    if age_ms > max_age_s * 1000:
        report.problems.append(
            Finding(
                f"newest checkpoint (size {latest.size}, time {latest.time_ms})",
                f"signed {describe_age(age_ms)} ago, expected at most {max_age_s:g} s for a "
                "live ledger: its writer stopped signing, or this copy was rolled back to an "
                "earlier checkpoint; fetch a fresh copy, and check it against a witness "
                "(a node's receipts)",
                latest.size,
            )
        )


def describe_age(ms: int) -> str:
    """A duration for people: "42 s", "17 min", "5 h", "3 d"."""
    seconds = ms / 1000
    if abs(seconds) < 120:
        return f"{seconds:.0f} s"
    if abs(seconds) < 2 * 3600:
        return f"{seconds / 60:.0f} min"
    if abs(seconds) < 2 * 86400:
        return f"{seconds / 3600:.0f} h"
    return f"{seconds / 86400:.0f} d"


def _float(text: str | None) -> float:
    try:
        return float(text) if text else 0.0
    except ValueError:
        return 0.0


@dataclass(slots=True)
class _Rebuilt:
    """The tree recomputed from the entries' own bytes, and what did not fit."""

    tree: MerkleTree
    # Indices whose bytes do not hash to their stored leaf.
    edited: list[int]
    # The first index missing from the store, if any: past it, positions in
    # the tree no longer match stored indices.
    first_missing: int | None = None


# Rows fetched at a time: enough that the work per batch vanishes, few enough
# (about 1 MB of entries) that hashing, then reading, a batch finds it in cache.
READ_BATCH = 1_000
PROGRESS_EVERY = 50_000


def entry_batches(
    store: LedgerStore,
    *columns: sa.Column[Any],
    size: int | None = None,
    start: int = 0,
    stop: int | None = None,
) -> Iterator[Sequence[Sequence[Any]]]:
    """``columns`` of every stored entry (index 0 on) in index order, ``size`` rows at a time.

    ``start`` and ``stop`` bound the indices read (``stop`` excluded; None: to the end).

    One streaming query, so the rows are one snapshot of the ledger. On SQLite
    the driver's own cursor hands over its tuples; SQLAlchemy's rows would cost
    more than the rest of a verifier's reading. Values are as the driver
    returns them: an entry hand-edited into TEXT comes back as ``str``.
    """
    size = size or READ_BATCH
    c = entries_table.c
    query = sa.select(*(columns or (c.idx, c.leaf_hash, c.entry))).where(c.idx >= start)
    if stop is not None:
        query = query.where(c.idx < stop)
    query = query.order_by(c.idx)
    try:
        with store.engine.connect() as conn:
            driver = conn.connection.driver_connection
            if isinstance(driver, sqlite3.Connection):
                sql = str(query.compile(conn, compile_kwargs={"literal_binds": True}))
                cursor = driver.execute(sql)
                while rows := cursor.fetchmany(size):
                    yield rows
                return
            result = conn.execution_options(stream_results=True, yield_per=size).execute(query)
            yield from result.partitions()
    except (SQLAlchemyError, sqlite3.Error) as exc:
        reason = (str(getattr(exc, "orig", None) or exc).strip().splitlines() or ["?"])[0]
        raise LedgerUnavailable(f"cannot read the ledger at {store.url} ({reason})") from exc


def _bytes_of(value: object) -> bytes:
    # As LedgerStore.rows: an entry edited by hand through the sqlite3 shell
    # is TEXT, which must be reported as an edit, not trip the verifier.
    if isinstance(value, str):
        return value.encode("utf-8")
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value)
    return str(value).encode("utf-8")


_sha256 = hashlib.sha256
_LEAF_PREFIX = b"\x00"
_REQUEST, _OUTCOME, _RECEIPT = EntryKind.REQUEST, EntryKind.OUTCOME, EntryKind.RECEIPT
_FOLLOWUP, _DELIVERY, _FOLLOWUP_OUTCOME = (
    EntryKind.FOLLOWUP,
    EntryKind.FOLLOWUP_DELIVERY,
    EntryKind.FOLLOWUP_OUTCOME,
)
_FOLLOWUP_RECEIPT, _DECISION = EntryKind.FOLLOWUP_RECEIPT, EntryKind.FOLLOWUP_DECISION
# Only the follow-up kinds' scanned structs have this field (ScannedEntry does not declare it).
_followup_id: Callable[[object], str] = operator.attrgetter("followup_id")
_KIND_OF_TYPE = {scanned: kind for kind, scanned in SCANNED.items()}
# Columns of a row by position: (index, leaf, entry), or (index, entry) for a witness.
_SECOND, _THIRD = operator.itemgetter(1), operator.itemgetter(2)
# Both kinds of a node's receipt hold the gateway checkpoint that proved its entry logged.
_RECEIPT_KINDS = (EntryKind.RECEIPT, EntryKind.FOLLOWUP_RECEIPT)
_SCANNED_RECEIPTS = tuple(SCANNED[kind] for kind in _RECEIPT_KINDS)


class _Rebuilder:
    """Recomputes the tree from the entries and checks each entry, a batch at a time.

    A batch whose rows are whole (no index missing, every leaf as stored, every
    entry readable by scan_entries) takes the fast path: leaf hashes in one
    comprehension, entries read in C, no object per entry beyond what the
    driver and msgspec hand over. Any other batch is checked row by row with
    parse_entry, so its findings name the same places, in the same order,
    with the same words, as they always have.
    """

    def __init__(self, report: VerifyReport) -> None:
        self.report = report
        self.leaves: list[bytes] = []
        self.edited: list[int] = []
        self.first_missing: int | None = None
        self.expected = 0
        self.kinds: Counter[EntryKind] = Counter()
        # The latest request entry of each query id.
        self.requests: dict[str, int] = {}
        # Requests no outcome has answered yet: few at a time (a gateway logs
        # each outcome soon after its request), so checking an outcome against
        # them stays in the CPU's cache. What is left at the end was cut short:
        # a query id requested and never answered anywhere in the log, which is
        # what "requested minus answered" over every id counted before. A
        # request enters only if no outcome of its id came first (orphans) and
        # it is the id's first request; any outcome of the id takes it out.
        self.open: set[str] = set()
        # Outcomes logged before any request of theirs (each one a finding).
        self.orphans: set[str] = set()
        # A node's receipts by query id: the first receipt's index and request digest.
        self.receipts: dict[str, tuple[int, str]] = {}
        # Follow-ups: the gateway's first FOLLOWUP entry of each id; the ids a
        # node took in (FOLLOWUP_RECEIPT); a node's first decision of each id.
        # Rare beside queries (a person decides each one), so a plain dict each.
        self.followups: dict[str, int] = {}
        self.followup_receipts: set[str] = set()
        self.decisions: dict[str, int] = {}
        # With a second process: levels 0..depth of the subtrees over the leaves
        # before self.leaves, a run of leaves (a chunk) at a time.
        self.parts: list[list[bytes]] = []
        self.depth = 0
        self.absorbed = 0

    def batch(self, rows: Sequence[Sequence[Any]]) -> None:
        start = self.expected
        if rows[0][0] == start and rows[-1][0] == start + len(rows) - 1:
            try:
                computed = [_sha256(_LEAF_PREFIX + raw).digest() for _, _, raw in rows]
            except TypeError:  # TEXT where bytes belong: row by row says which
                computed = []
            if computed == list(map(_SECOND, rows)):
                scanned = scan_entries(list(map(_THIRD, rows)))
                if scanned is not None:
                    self.leaves += computed
                    self.expected = start + len(rows)
                    kinds = list(map(_KIND_OF_TYPE.__getitem__, map(type, scanned)))
                    self.check(start, kinds, scanned)
                    return
        for index, leaf, raw in rows:
            self.row(int(index), _bytes_of(leaf), _bytes_of(raw))

    def row(self, index: int, stored_leaf: bytes, raw: bytes) -> None:
        report = self.report
        if index != self.expected:
            if self.first_missing is None:
                self.first_missing = self.expected
            report.problems.append(
                Finding(
                    f"entry {self.expected}",
                    f"missing: the next stored entry is {index}, so entries "
                    f"{self.expected}..{index - 1} were deleted",
                    self.expected,
                )
            )
        # Keep going on what is there, so later findings still name places.
        self.expected = index + 1
        leaf = leaf_hash(raw)
        self.leaves.append(leaf)
        if leaf != stored_leaf:
            self.edited.append(index)
            report.problems.append(
                Finding(
                    f"entry {index}",
                    "its bytes do not hash to its stored leaf: it was edited",
                    index,
                )
            )
        try:
            entry = parse_entry(raw)
        except EntryError as exc:
            report.problems.append(Finding(f"entry {index}", f"unreadable ({exc})", index))
            return
        read = _Read(entry.query_id, entry.text("request_digest"), entry.text("followup_id"))
        self.check(index, [entry.kind], [read])

    def check(
        self, start: int, kinds: Sequence[EntryKind], entries: Sequence[ScannedEntry | _Read]
    ) -> None:
        """The checks across entries: one request and one receipt per query id, outcomes last.

        And of follow-ups: one FOLLOWUP entry per follow-up id, its delivery and
        outcome after it; on a node, one decision per id, after its receipt.
        """
        self.kinds.update(kinds)
        requests, still_open, orphans = self.requests, self.open, self.orphans
        for index, kind, entry in zip(count(start), kinds, entries):
            if kind is _REQUEST:
                query_id = entry.query_id
                if query_id in requests:
                    self._second_request(index, query_id)
                elif query_id not in orphans:
                    still_open.add(query_id)
                requests[query_id] = index
            elif kind is _OUTCOME:
                query_id = entry.query_id
                if query_id in still_open:
                    still_open.remove(query_id)
                elif query_id not in requests:
                    self._orphan_outcome(index, query_id)
                    orphans.add(query_id)
            elif kind is _RECEIPT:
                _check_receipt_id(
                    index, entry.query_id, entry.request_digest, self.receipts, self.report
                )
            elif kind is _FOLLOWUP:
                followup_id = _followup_id(entry)
                first = self.followups.setdefault(followup_id, index)
                if first != index:
                    self._second_followup(index, followup_id, first)
            elif kind is _DELIVERY or kind is _FOLLOWUP_OUTCOME:
                followup_id = _followup_id(entry)
                if followup_id not in self.followups:
                    self._orphan_followup_step(index, kind, followup_id)
            elif kind is _FOLLOWUP_RECEIPT:
                self.followup_receipts.add(_followup_id(entry))
            elif kind is _DECISION:
                followup_id = _followup_id(entry)
                if followup_id not in self.followup_receipts:
                    self._decision_without_receipt(index, followup_id)
                first = self.decisions.setdefault(followup_id, index)
                if first != index:
                    self._second_decision(index, followup_id, first)

    def _second_request(self, index: int, query_id: str) -> None:
        self.report.problems.append(
            Finding(
                f"entry {index}",
                f"a second request entry for query {query_id} "
                f"(the first is entry {self.requests[query_id]}): copied or replayed, or two "
                "requests sent under one query id; expected one request per query id. "
                "Reconcile with the nodes' receipts (`liaison audit reconcile`) to see "
                "which of them each node answered",
                index,
            )
        )

    def _orphan_outcome(self, index: int, query_id: str) -> None:
        self.report.problems.append(
            Finding(
                f"entry {index}",
                f"outcome of query {query_id}, whose request is not logged "
                "before it: entries were reordered, or the request was removed",
                index,
            )
        )

    def _second_followup(self, index: int, followup_id: str, first: int) -> None:
        self.report.problems.append(
            Finding(
                f"entry {index}",
                f"a second follow-up entry for follow-up {followup_id} (the first is entry "
                f"{first}): copied or replayed, or two follow-up requests sent under one id; "
                "expected one entry per follow-up id. Reconcile with the holding node's "
                "receipts (`liaison audit reconcile`) to see which one it took in",
                index,
            )
        )

    def _orphan_followup_step(self, index: int, kind: EntryKind, followup_id: str) -> None:
        what = "delivery" if kind is _DELIVERY else "outcome"
        self.report.problems.append(
            Finding(
                f"entry {index}",
                f"{what} of follow-up {followup_id}, whose follow-up entry is not logged "
                "before it: entries were reordered, or the follow-up entry was removed (a "
                "gateway logs each follow-up before it delivers it)",
                index,
            )
        )

    def _decision_without_receipt(self, index: int, followup_id: str) -> None:
        self.report.problems.append(
            Finding(
                f"entry {index}",
                f"decision on follow-up {followup_id}, whose receipt is not logged before it: "
                "the node decided a follow-up it has no record of taking in; entries were "
                "reordered, or the receipt was removed",
                index,
            )
        )

    def _second_decision(self, index: int, followup_id: str, first: int) -> None:
        self.report.problems.append(
            Finding(
                f"entry {index}",
                f"a second decision on follow-up {followup_id} (the first is entry {first}): "
                "a follow-up has one decision; copied, or decided twice. Ask the node's "
                "operator which decision was signed and released",
                index,
            )
        )

    def seal(self) -> None:
        """Hash the leaves read so far into subtrees, which the rest of the tree builds on."""
        self.parts.append(subtree_levels(self.leaves, self.depth))
        self.leaves = []

    def absorb(self, summary: ChunkSummary, start: int) -> bool:
        """Fold in a chunk the second process read, if reading it here would find nothing.

        Nothing is changed unless it is folded in: on False, read the chunk here.
        """
        if not summary.clean or self.expected != start:
            return False
        requests, receipts = self.requests, self.receipts
        followups, decisions = self.followups, self.decisions
        # As check() would find: a query id requested before, an outcome whose
        # request is not before it, a query id receipted before; a follow-up id
        # logged before, a delivery or outcome whose follow-up is not before it,
        # a follow-up decided before, a decision whose receipt is not before it.
        if (
            not requests.keys().isdisjoint(summary.requests)
            or not all(map(requests.__contains__, summary.outside))
            or not receipts.keys().isdisjoint(summary.receipts)
            or not followups.keys().isdisjoint(summary.followups)
            or not all(map(followups.__contains__, summary.followups_outside))
            or not decisions.keys().isdisjoint(summary.decisions)
            or not all(map(self.followup_receipts.__contains__, summary.decisions_outside))
        ):
            return False
        requests.update(zip(summary.requests, array("q", summary.request_at), strict=True))
        self.open.difference_update(summary.outside)
        # An outcome logged before any request of its id keeps later requests out of "open".
        self.open.update(summary.still_open)
        self.open.difference_update(self.orphans)
        receipts.update(
            zip(
                summary.receipts,
                zip(array("q", summary.receipt_at), summary.digests, strict=True),
                strict=True,
            )
        )
        if summary.followups:
            followups.update(zip(summary.followups, array("q", summary.followup_at), strict=True))
        self.followup_receipts.update(summary.followup_receipts)
        if summary.decisions:
            decisions.update(zip(summary.decisions, array("q", summary.decision_at), strict=True))
        self.kinds.update({EntryKind(k): n for k, n in summary.kinds.items()})
        self.parts.append(summary.levels)
        self.expected = start + summary.entries
        self.absorbed += 1
        return True

    def rebuilt(self) -> _Rebuilt:
        report = self.report
        report.kinds.update({k.value: self.kinds[k] for k in EntryKind if self.kinds[k]})
        # Requests with no outcome were cut short (a crash, a stop): they show, but
        # are no fault of the ledger's.
        report.unfinished = len(self.open)
        if self.absorbed:
            report.processes = 2
        if self.parts:
            if self.leaves:
                self.seal()
            tree = _joined(self.parts, self.depth)
        else:
            # Built in one pass at the end: level by level is cheaper than leaf by leaf.
            tree = MerkleTree.from_leaf_hashes(self.leaves)
        return _Rebuilt(tree, self.edited, self.first_missing)


def _joined(parts: list[list[bytes]], depth: int) -> MerkleTree:
    """The tree over every part's leaves, from their subtrees if the parts line up."""
    span = HASH_SIZE << depth
    parts = [part for part in parts if part[0]]
    if all(len(part[0]) % span == 0 for part in parts[:-1]):
        return MerkleTree.from_subtree_levels(parts)
    # Rows missing from a chunk shift every leaf after them: hash from the leaves.
    leaves = [
        part[0][i : i + HASH_SIZE] for part in parts for i in range(0, len(part[0]), HASH_SIZE)
    ]
    return MerkleTree.from_leaf_hashes(leaves)


@dataclass(frozen=True, slots=True)
class _Read:
    """What the checks use of an entry parse_entry read, named as in ScannedEntry."""

    query_id: str
    request_digest: str
    # "" for kinds that have none; read only for the follow-up kinds.
    followup_id: str = ""


@contextmanager
def gc_paused() -> Iterator[None]:
    """Hold off Python's cycle collector while a million short-lived rows pass.

    Each row the driver returns is a tuple the collector tracks; kept for a
    batch, they outlive the youngest generation and set off collections of
    the whole heap every few batches, which cost a verifier about a fifth of
    its time. Nothing in a rebuild makes reference cycles, so there is
    nothing for it to find; it runs again (if it ran before) on leaving.
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


# With a second process: chunks of 2**PARALLEL_DEPTH entries, for ledgers of at
# least PARALLEL_MIN_ENTRIES (below that, starting the process costs more than
# it saves).
PARALLEL_DEPTH = 13
PARALLEL_MIN_ENTRIES = 100_000


def _rebuild(
    store: LedgerStore, report: VerifyReport, progress: Progress | None, processes: int | None
) -> _Rebuilt:
    rebuilder = _Rebuilder(report)
    shown = 0
    with gc_paused():
        helper = _helper(store, processes)
        if helper is None:
            for rows in entry_batches(store):
                rebuilder.batch(rows)
                if progress is not None and rebuilder.expected // PROGRESS_EVERY > shown:
                    shown = rebuilder.expected // PROGRESS_EVERY
                    progress(rebuilder.expected)
            return rebuilder.rebuilt()
        depth, chunks = helper.job.depth, helper.job.chunks
        rebuilder.depth = depth
        try:
            # This process takes chunks from the front, in order, checking each
            # as in one process; the helper takes them from the back.
            front = 0
            while front < chunks and helper.claims.front(front):
                _read_chunk(store, rebuilder, front, chunks)
                front += 1
                if progress is not None:
                    done = rebuilder.expected + (
                        (chunks - helper.claims.taken_from_back()) << depth
                    )
                    if done // PROGRESS_EVERY > shown:
                        shown = done // PROGRESS_EVERY
                        progress(done)
            summaries = helper.finish()
        finally:
            helper.close()
        for chunk in range(front, chunks):
            summary = summaries.get(chunk)
            if summary is None or not rebuilder.absorb(summary, chunk << depth):
                _read_chunk(store, rebuilder, chunk, chunks)
        if progress is not None and rebuilder.expected // PROGRESS_EVERY > shown:
            progress(rebuilder.expected)
        return rebuilder.rebuilt()


def _read_chunk(store: LedgerStore, rebuilder: _Rebuilder, chunk: int, chunks: int) -> None:
    start = chunk << rebuilder.depth
    stop = None if chunk == chunks - 1 else start + (1 << rebuilder.depth)
    for rows in entry_batches(store, start=start, stop=stop):
        rebuilder.batch(rows)
    rebuilder.seal()


def _free_cpus() -> int:
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def _helper(store: LedgerStore, processes: int | None) -> Helper | None:
    """A second process sharing the reading of ``store``, where one is worth starting."""
    if processes == 1 or (processes is None and _free_cpus() < 2):
        return None
    url = store.engine.url
    # The helper reads the file itself; other databases are read here alone.
    if url.get_backend_name() != "sqlite" or not url.database or url.database == ":memory:":
        return None
    database = Path(url.database)
    if not database.is_file() or not sys.executable:
        return None
    c = entries_table.c
    try:
        with store.engine.connect() as conn:
            stored, top = conn.execute(
                sa.select(sa.func.count(), sa.func.max(c.idx)).where(c.idx >= 0)
            ).one()
    except SQLAlchemyError:
        return None  # reading the entries reports it
    # Rows missing make findings, found in order by one process.
    if stored < PARALLEL_MIN_ENTRIES or top != stored - 1:
        return None
    chunks = -(-stored // (1 << PARALLEL_DEPTH))
    return Helper.start(database, depth=PARALLEL_DEPTH, chunks=chunks, batch=READ_BATCH)


def _check_receipt_id(
    index: int,
    query_id: str,
    digest: str,
    receipts: dict[str, tuple[int, str]],
    report: VerifyReport,
) -> None:
    """One receipt per query id: a second one for other bytes is a second request under its id."""
    first = receipts.setdefault(query_id, (index, digest))
    if first[0] == index:
        return
    first_index, first_digest = first
    if digest != first_digest:
        report.problems.append(
            Finding(
                f"entry {index}",
                f"a second receipt for query {query_id} (the first is entry {first_index}) "
                f"for another request (request digest {digest[:16]}…, the first "
                f"{first_digest[:16]}…): the gateway sent two requests under one query id, "
                "expected one. Reconcile with the gateway's ledger (`liaison audit reconcile`) "
                "to see which one it logged",
                index,
            )
        )
    else:
        report.warnings.append(
            Finding(
                f"entry {index}",
                f"a second receipt for the same request of query {query_id} (the first is "
                f"entry {first_index}): the node answered it twice (a retry after a failed "
                "answer) or the entry was copied",
                index,
            )
        )


def _check_checkpoints(
    stored: list[StoredCheckpoint],
    key: VerifyingKey,
    origin: str,
    rebuilt: _Rebuilt,
    report: VerifyReport,
    interval_s: float,
) -> int:
    """Check each stored checkpoint; return the largest size a valid one vouches for."""
    tree = rebuilt.tree
    report.checkpoints = len(stored)
    covered = 0
    previous: Checkpoint | None = None
    good: Checkpoint | None = None
    for position, row in enumerate(stored, start=1):
        where = f"checkpoint #{position}"
        try:
            cp = open_checkpoint(row.note, key, origin=origin or None)
        except CheckpointError as exc:
            report.problems.append(Finding(where, f"does not verify ({exc})"))
            continue
        where = f"checkpoint #{position} (size {cp.size}, time {cp.time_ms})"
        if (row.size, row.time_ms) != (cp.size, cp.time_ms):
            report.problems.append(
                Finding(where, "its stored size or time differs from what it signs: edited")
            )
        if previous is not None:
            _check_sequence(previous, cp, where, report, interval_s)
        previous = cp
        if rebuilt.first_missing is not None and cp.size > rebuilt.first_missing:
            report.problems.append(
                Finding(
                    where,
                    f"cannot be checked: entry {rebuilt.first_missing}, which it covers, "
                    "is missing",
                    rebuilt.first_missing,
                )
            )
            continue
        if cp.size > tree.size:
            report.problems.append(
                Finding(
                    where,
                    f"vouches for {cp.size} entries but the ledger holds {tree.size}: "
                    f"entries {tree.size}..{cp.size - 1} were removed (truncated)",
                    tree.size,
                )
            )
            continue
        start = 0 if good is None else good.size
        if tree.root(cp.size) != cp.root:
            report.problems.append(
                Finding(
                    where,
                    _mismatch(start, cp.size, rebuilt.edited),
                    _first(start, rebuilt.edited),
                )
            )
            continue
        if good is not None and cp.size >= good.size:
            # Both roots match the recomputed tree, so this holds unless the
            # tree code itself is wrong; checking costs O(log n) and says so.
            try:
                verify_consistency(
                    good.size,
                    cp.size,
                    good.root,
                    cp.root,
                    tree.consistency_proof(good.size, cp.size),
                )
            except ProofError as exc:
                report.problems.append(
                    Finding(where, f"inconsistent with the checkpoint before it ({exc})")
                )
                continue
        good = cp
        covered = max(covered, cp.size)
        if report.latest is None or cp.size >= report.latest.size:
            report.latest = cp
    return covered


def _check_sequence(
    previous: Checkpoint, cp: Checkpoint, where: str, report: VerifyReport, interval_s: float
) -> None:
    if cp.size < previous.size:
        report.problems.append(
            Finding(
                where,
                f"smaller than the {previous.size} entries vouched for before it: rolled back",
            )
        )
    if cp.time_ms < previous.time_ms:
        report.problems.append(
            Finding(where, "signed before the checkpoint stored ahead of it: reordered")
        )
        return
    gap = cp.time_ms - previous.time_ms
    if interval_s and gap > interval_s * 1000 * GAP_INTERVALS + GAP_SLACK_MS:
        report.warnings.append(
            Finding(
                where,
                f"no checkpoint for {gap / 1000:.0f} s before it (one is signed every "
                f"{interval_s:g} s): the log was stopped, or checkpoints were removed",
            )
        )


def _first(start: int, edited: list[int]) -> int:
    return next((i for i in edited if i >= start), start)


def _mismatch(start: int, end: int, edited: list[int]) -> str:
    inside = [i for i in edited if start <= i < end]
    if inside:
        return (
            f"its root does not match the entries: entry {inside[0]} was edited "
            f"({len(inside)} edited entr{'y' if len(inside) == 1 else 'ies'} in {start}..{end - 1})"
        )
    return (
        f"its root does not match the entries: one or more of entries {start}..{end - 1} were "
        "edited together with their stored hashes, inserted, removed or reordered"
    )
