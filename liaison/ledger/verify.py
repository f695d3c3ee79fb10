"""Verifying a ledger from its stored copy and a public key alone.

Everything is recomputed: every leaf from the entry's bytes, the tree from
the leaves, every checkpoint's signature, and each checkpoint's root against
the recomputed tree. A problem names the first place it shows: an entry by
index, a checkpoint by its position and time.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from liaison.errors import CheckpointError, EntryError, ProofError
from liaison.keys import VerifyingKey
from liaison.ledger.checkpoint import Checkpoint, open_checkpoint
from liaison.ledger.entries import EntryKind, parse_entry
from liaison.ledger.merkle import EMPTY_ROOT, MerkleTree, leaf_hash, verify_consistency
from liaison.ledger.store import LedgerStore, StoredCheckpoint

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
    allow_unsigned_tail: bool = False,
    progress: Progress | None = None,
) -> tuple[VerifyReport, MerkleTree]:
    """Check ``store`` against ``key``; ``kept`` are checkpoint notes the auditor saved earlier."""
    origin = origin or store.get_meta("origin") or ""
    report = VerifyReport(ledger=store.url, origin=origin)
    rebuilt = _rebuild(store, report, progress)
    tree = rebuilt.tree
    report.size = tree.size
    report.root = tree.root()
    interval_s = _float(store.get_meta("checkpoint_interval_s"))
    failed_before = len(report.problems)
    covered = _check_checkpoints(store.checkpoints(), key, origin, rebuilt, report, interval_s)
    checkpoints_failed = len(report.problems) > failed_before
    for i, note in enumerate(kept, start=1):
        covered = max(covered, _check_kept(note, i, key, origin, tree, report))
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
    return report, tree


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


def _rebuild(store: LedgerStore, report: VerifyReport, progress: Progress | None) -> _Rebuilt:
    edited: list[int] = []
    first_missing: int | None = None
    requests: dict[str, int] = {}
    finished: set[str] = set()
    kinds: dict[EntryKind, int] = dict.fromkeys(EntryKind, 0)
    expected = 0
    leaves: list[bytes] = []
    append = leaves.append
    for index, stored_leaf, raw in store.rows():
        if index != expected:
            if first_missing is None:
                first_missing = expected
            report.problems.append(
                Finding(
                    f"entry {expected}",
                    f"missing: the next stored entry is {index}, so entries "
                    f"{expected}..{index - 1} were deleted",
                    expected,
                )
            )
        # Keep going on what is there, so later findings still name places.
        expected = index + 1
        leaf = leaf_hash(raw)
        append(leaf)
        if leaf != stored_leaf:
            edited.append(index)
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
            continue
        kind = entry.kind
        kinds[kind] += 1
        if kind is EntryKind.REQUEST:
            query_id = entry.fields["query_id"]
            if query_id in requests:
                report.problems.append(
                    Finding(
                        f"entry {index}",
                        f"a second request entry for query {query_id} "
                        f"(the first is entry {requests[query_id]}): copied or replayed",
                        index,
                    )
                )
            requests[query_id] = index
        elif kind is EntryKind.OUTCOME:
            query_id = entry.fields["query_id"]
            if query_id not in requests:
                report.problems.append(
                    Finding(
                        f"entry {index}",
                        f"outcome of query {query_id}, whose request is not logged "
                        "before it: entries were reordered, or the request was removed",
                        index,
                    )
                )
            finished.add(query_id)
        if progress is not None and expected % 50_000 == 0:
            progress(expected)
    report.kinds.update({k.value: n for k, n in kinds.items() if n})
    # Requests with no outcome were cut short (a crash, a stop): they show, but
    # are no fault of the ledger's.
    report.unfinished = len(set(requests) - finished)
    # Built in one pass at the end: level by level is cheaper than leaf by leaf.
    return _Rebuilt(MerkleTree.from_leaf_hashes(leaves), edited, first_missing)


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


def _check_kept(
    note: str, number: int, key: VerifyingKey, origin: str, tree: MerkleTree, report: VerifyReport
) -> int:
    where = f"kept checkpoint {number}"
    try:
        cp = open_checkpoint(note, key, origin=origin or None)
    except CheckpointError as exc:
        report.problems.append(Finding(where, f"does not verify ({exc})"))
        return 0
    where = f"kept checkpoint {number} (size {cp.size}, time {cp.time_ms})"
    if cp.size > tree.size:
        report.problems.append(
            Finding(
                where,
                f"you saw {cp.size} entries, the ledger now holds {tree.size}: "
                f"entries {tree.size}..{cp.size - 1} were removed (truncated)",
                tree.size,
            )
        )
        return 0
    if tree.root(cp.size) != cp.root:
        report.problems.append(
            Finding(where, "the ledger's first entries no longer hash to what you saw: rewritten")
        )
        return 0
    return cp.size


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
