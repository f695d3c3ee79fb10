"""The second process of a parallel verify: it reads chunks of a SQLite ledger and sums them up.

Verifying a million entries is a million leaf hashes and a million entries
read, which one Python process does at one core's pace. So
:func:`~liaison.ledger.verify.verify_ledger` starts this module as a second
process beside it. The ledger is cut into chunks of ``2**depth`` entries: the
verifier takes chunks from the front and checks them itself, in order, as it
always has; this process takes chunks from the back, each a
:class:`ChunkSummary`, until the two meet. Claims go through two counters in
a shared file (:class:`Claims`); at worst both take the same chunk once, and
the verifier keeps its own.

A summary says what no check can decide inside the chunk alone: the query
ids it requests, answers without a request before them, leaves open, and
receipts; the follow-up ids it logs, deliveries and outcomes without their
follow-up before them, the follow-ups a node took in, and its decisions,
those without a receipt before them; with the chunk's Merkle subtrees. The
verifier folds it into its state only when checking the chunk row by row
would have found nothing; otherwise, and for every chunk this process did
not deliver, it reads the chunk itself. So findings never come from here,
and they read as they would have in one process.

Run as ``python -m liaison.ledger.verify_worker``: a :class:`Job` in msgpack on
standard input, summaries in msgpack to the job's result file.
"""

from __future__ import annotations

import gc
import hashlib
import mmap
import operator
import os
import sqlite3
import struct
import subprocess
import sys
import tempfile
from array import array
from collections import Counter
from collections.abc import Iterator, Sequence
from itertools import count
from pathlib import Path
from typing import Any

import msgspec

from liaison.ledger.entries import SCANNED, EntryKind, scan_entries
from liaison.ledger.merkle import subtree_levels

# As verify.entry_batches reads them, from liaison.ledger.store's table.
_CHUNK_SQL = (
    "SELECT idx, leaf_hash, entry FROM liaison_ledger_entries "
    "WHERE idx >= ? AND idx < ? ORDER BY idx"
)
# Two signed 64-bit counters: the next chunk the verifier takes, the lowest this process took.
_CLAIMS = struct.Struct("=qq")


class Job(msgspec.Struct, frozen=True):
    """What the verifier asks of this process."""

    database: str  # a SQLite file
    depth: int  # chunks of 2**depth entries
    chunks: int  # chunk ``chunks - 1`` reads to the end of the ledger
    batch: int  # rows fetched at a time
    claims: str  # the shared claims file
    result: str  # where the summaries go


class ChunkSummary(msgspec.Struct, array_like=True):
    """One chunk read, hashed and checked on its own, for the verifier to fold in.

    ``clean`` is False if anything would be a finding inside the chunk (an
    index missing, a leaf that differs, an entry the fast reader refuses, a
    query id requested or receipted twice, a follow-up logged or decided
    twice): the verifier reads that chunk itself. The rest is set only for a clean chunk.
    """

    chunk: int
    clean: bool
    entries: int = 0
    kinds: dict[str, int] = {}
    # Levels 0..depth of the chunk's subtrees (merkle.subtree_levels).
    levels: list[bytes] = []
    # Request entries: query ids in order, and their indices (array "q" bytes).
    requests: list[str] = []
    request_at: bytes = b""
    # Outcomes whose query id has no request before them in the chunk.
    outside: list[str] = []
    # Query ids requested in the chunk and not answered after it there.
    still_open: list[str] = []
    # Receipts: query ids, indices (array "q" bytes) and request digests.
    receipts: list[str] = []
    receipt_at: bytes = b""
    digests: list[str] = []
    # Follow-up entries: ids in order, and their indices (array "q" bytes).
    followups: list[str] = []
    followup_at: bytes = b""
    # Follow-up deliveries and outcomes whose follow-up entry is not before them in the chunk.
    followups_outside: list[str] = []
    # Follow-up ids a node took in (its follow-up receipts), each once.
    followup_receipts: list[str] = []
    # Decisions: follow-up ids, their indices (array "q" bytes), and those
    # whose receipt is not before them in the chunk.
    decisions: list[str] = []
    decision_at: bytes = b""
    decisions_outside: list[str] = []


class Claims:
    """Who takes which chunk: the verifier from the front, this process from the back.

    Each side writes only its own counter and reads the other's before taking
    a chunk. A stale read can only make a side take one chunk too many (both
    then hold it), never leave one untaken.
    """

    def __init__(self, path: str | Path) -> None:
        with open(path, "r+b") as file:
            self._map = mmap.mmap(file.fileno(), _CLAIMS.size)

    @staticmethod
    def create(path: Path, chunks: int) -> None:
        path.write_bytes(_CLAIMS.pack(0, chunks))

    def front(self, chunk: int) -> bool:
        """For the verifier: take ``chunk`` unless the back has reached it."""
        if chunk >= _CLAIMS.unpack_from(self._map)[1]:
            return False
        struct.pack_into("=q", self._map, 0, chunk + 1)
        return True

    def back(self, chunk: int) -> bool:
        """For this process: take ``chunk`` unless the front has passed it."""
        if chunk < _CLAIMS.unpack_from(self._map)[0]:
            return False
        struct.pack_into("=q", self._map, 8, chunk)
        return True

    def taken_from_back(self) -> int:
        """The lowest chunk taken from the back."""
        return int(_CLAIMS.unpack_from(self._map)[1])

    def close(self) -> None:
        self._map.close()


# The helper is at most one chunk behind the verifier when it is asked to
# finish; past this, something is wrong with it and the verifier reads its chunks.
FINISH_TIMEOUT_S = 60.0


class Helper:
    """The verifier's handle on the second process: claims, and the summaries it leaves."""

    def __init__(self, job: Job, folder: tempfile.TemporaryDirectory[str]) -> None:
        self.job = job
        self._folder = folder
        self.claims = Claims(job.claims)
        self._process: subprocess.Popen[bytes] | None = None

    @classmethod
    def start(cls, database: Path, *, depth: int, chunks: int, batch: int) -> Helper | None:
        """Start the second process on ``database``; None if it cannot be started."""
        folder = tempfile.TemporaryDirectory(prefix="liaison-verify-")
        where = Path(folder.name)
        job = Job(
            str(database.resolve()),
            depth,
            chunks,
            batch,
            str(where / "claims"),
            str(where / "result"),
        )
        Claims.create(where / "claims", chunks)
        helper = cls(job, folder)
        # Where this package is imported from, so the child finds the same code.
        root = str(Path(__file__).resolve().parents[2])
        path = os.environ.get("PYTHONPATH")
        env = {**os.environ, "PYTHONPATH": root if not path else f"{root}{os.pathsep}{path}"}
        try:
            with open(where / "stderr", "wb") as stderr:
                helper._process = subprocess.Popen(
                    [sys.executable, "-m", "liaison.ledger.verify_worker"],
                    stdin=subprocess.PIPE,
                    stdout=subprocess.DEVNULL,
                    stderr=stderr,
                    env=env,
                )
            assert helper._process.stdin is not None
            helper._process.stdin.write(msgspec.msgpack.encode(job))
            helper._process.stdin.close()
        except OSError:
            # No process, or one that died at once: whatever it claimed, the
            # verifier reads for want of a summary.
            if helper._process is None:
                helper.close()
                return None
        return helper

    def finish(self) -> dict[int, ChunkSummary]:
        """Wait for the second process; its clean and dirty summaries by chunk."""
        process = self._process
        if process is None:
            return {}
        try:
            code = process.wait(timeout=FINISH_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            return {}
        if code != 0:
            return {}
        try:
            done = msgspec.msgpack.decode(
                Path(self.job.result).read_bytes(), type=list[ChunkSummary]
            )
        except (OSError, msgspec.DecodeError):
            return {}
        return {summary.chunk: summary for summary in done}

    def close(self) -> None:
        process = self._process
        if process is not None and process.poll() is None:
            process.kill()
            process.wait()
        self.claims.close()
        self._folder.cleanup()


def chunk_query(depth: int, chunk: int, chunks: int) -> tuple[str, tuple[int, ...]]:
    """The SQL and parameters reading chunk ``chunk`` of ``chunks``: idx, leaf_hash, entry."""
    start = chunk << depth
    # The last chunk reads to the end, which may have grown since the count.
    stop = start + (1 << depth) if chunk < chunks - 1 else 2**63 - 1
    return _CHUNK_SQL, (start, stop)


_sha256 = hashlib.sha256
_LEAF_PREFIX = b"\x00"
_SECOND, _THIRD = operator.itemgetter(1), operator.itemgetter(2)
_REQUEST, _OUTCOME, _RECEIPT = (
    SCANNED[EntryKind.REQUEST],
    SCANNED[EntryKind.OUTCOME],
    SCANNED[EntryKind.RECEIPT],
)
_FOLLOWUP, _DELIVERY, _FOLLOWUP_OUTCOME, _FOLLOWUP_RECEIPT, _DECISION = (
    SCANNED[EntryKind.FOLLOWUP],
    SCANNED[EntryKind.FOLLOWUP_DELIVERY],
    SCANNED[EntryKind.FOLLOWUP_OUTCOME],
    SCANNED[EntryKind.FOLLOWUP_RECEIPT],
    SCANNED[EntryKind.FOLLOWUP_DECISION],
)
# Only the follow-up kinds' structs have this field.
_followup_id = operator.attrgetter("followup_id")
_KIND_NAME = {scanned: kind.value for kind, scanned in SCANNED.items()}


def summarize(chunk: int, start: int, batches: Iterator[Sequence[Any]], depth: int) -> ChunkSummary:
    """Read one chunk's rows, which must start at index ``start``; see :class:`ChunkSummary`."""
    dirty = ChunkSummary(chunk, clean=False)
    expected = start
    leaves: list[bytes] = []
    kinds: Counter[type] = Counter()
    requests: dict[str, int] = {}
    still_open: set[str] = set()
    outside: list[str] = []
    receipts: dict[str, int] = {}
    digests: list[str] = []
    followups: dict[str, int] = {}
    followups_outside: list[str] = []
    followup_receipts: dict[str, None] = {}
    decisions: dict[str, int] = {}
    decisions_outside: list[str] = []
    for rows in batches:
        if rows[0][0] != expected or rows[-1][0] != expected + len(rows) - 1:
            return dirty
        try:
            computed = [_sha256(_LEAF_PREFIX + raw).digest() for _, _, raw in rows]
        except TypeError:  # TEXT where bytes belong
            return dirty
        if computed != list(map(_SECOND, rows)):
            return dirty
        scanned = scan_entries(list(map(_THIRD, rows)))
        if scanned is None:
            return dirty
        leaves += computed
        kinds.update(map(type, scanned))
        for index, entry in zip(count(expected), scanned):
            kind = type(entry)
            if kind is _REQUEST:
                query_id = entry.query_id
                if query_id in requests:
                    return dirty
                requests[query_id] = index
                still_open.add(query_id)
            elif kind is _OUTCOME:
                query_id = entry.query_id
                if query_id in still_open:
                    still_open.remove(query_id)
                elif query_id not in requests:
                    outside.append(query_id)
            elif kind is _RECEIPT:
                query_id = entry.query_id
                if query_id in receipts:
                    return dirty
                receipts[query_id] = index
                digests.append(entry.request_digest)
            elif kind is _FOLLOWUP:
                followup_id = _followup_id(entry)
                if followup_id in followups:
                    return dirty
                followups[followup_id] = index
            elif kind is _DELIVERY or kind is _FOLLOWUP_OUTCOME:
                followup_id = _followup_id(entry)
                if followup_id not in followups:
                    followups_outside.append(followup_id)
            elif kind is _FOLLOWUP_RECEIPT:
                followup_receipts[_followup_id(entry)] = None
            elif kind is _DECISION:
                followup_id = _followup_id(entry)
                if followup_id in decisions:
                    return dirty
                decisions[followup_id] = index
                if followup_id not in followup_receipts:
                    decisions_outside.append(followup_id)
        expected += len(rows)
    return ChunkSummary(
        chunk,
        clean=True,
        entries=expected - start,
        kinds={_KIND_NAME[k]: n for k, n in kinds.items()},
        levels=subtree_levels(leaves, depth),
        requests=list(requests),
        request_at=array("q", requests.values()).tobytes(),
        outside=outside,
        still_open=list(still_open),
        receipts=list(receipts),
        receipt_at=array("q", receipts.values()).tobytes(),
        digests=digests,
        followups=list(followups),
        followup_at=array("q", followups.values()).tobytes(),
        followups_outside=followups_outside,
        followup_receipts=list(followup_receipts),
        decisions=list(decisions),
        decision_at=array("q", decisions.values()).tobytes(),
        decisions_outside=decisions_outside,
    )


def run(job: Job) -> list[ChunkSummary]:
    """Take chunks from the back until the verifier's front reaches them."""
    claims = Claims(job.claims)
    # Read-only: an auditor's copy of a ledger is evidence, never to be touched.
    conn = sqlite3.connect(f"{Path(job.database).resolve().as_uri()}?mode=ro", uri=True)
    done: list[ChunkSummary] = []
    try:
        for chunk in range(job.chunks - 1, -1, -1):
            if not claims.back(chunk):
                break
            sql, params = chunk_query(job.depth, chunk, job.chunks)
            cursor = conn.execute(sql, params)
            done.append(
                summarize(chunk, chunk << job.depth, iter(_fetch(cursor, job.batch)), job.depth)
            )
    finally:
        conn.close()
        claims.close()
    return done


def _fetch(cursor: sqlite3.Cursor, size: int) -> Iterator[list[Any]]:
    while rows := cursor.fetchmany(size):
        yield rows


def main() -> int:
    job = msgspec.msgpack.decode(sys.stdin.buffer.read(), type=Job)
    # Nothing here makes reference cycles: see verify.gc_paused.
    gc.disable()
    done = run(job)
    Path(job.result).write_bytes(msgspec.msgpack.encode(done))
    return 0


if __name__ == "__main__":
    sys.exit(main())
