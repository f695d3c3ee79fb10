"""Near-duplicate lookups: a PDQ index per mapped perceptual-hash column, kept current.

Keyed index (the usual case). When the mapped table has a single integer
primary key (see :attr:`node.database.MappedDataset.row_key`), the index holds
each row's (key, PDQ) pair, so a match is fetched by primary key, which every
database indexes, whether or not the PDQ column has an index of its own; the
query's other predicates, the policy's row filters and the PDQ value itself
are then checked in SQL on exactly those rows (see node.execute), so a row
deleted or changed a moment ago stops matching at once.

The index is a segment of files in the node's state folder
(``pdq/<dataset>-<field>/``), memory-mapped, plus an in-memory delta and
tombstones (:class:`node.pdq_index.LiveIndex`). Every ``refresh_s`` seconds
one round brings it up to date without rebuilding it:

* **new rows**: keys above the high-water mark, re-reading from the mark of
  the round before, so a row whose transaction committed late (after a row
  with a higher key) is still found;
* **re-checks**: rows the index recently offered as matches are read again by
  key, so a stale candidate is dropped within a round;
* **the sweep**: the next ``sweep_rows`` rows in key order are compared with
  the index (pairs only the table has are added, pairs only the index has are
  removed), so every change is seen within one cycle over the table (about an
  hour at ten million rows; every round for tables of up to 50,000 rows).
  This is also what finds a PDQ value changed in place, and new rows in a
  table whose keys do not increase.

When the delta and tombstones reach a sixteenth of the segment, a compaction
merges them into a new segment in the background (a child process for large
segments), which then replaces the old one at once. At a restart the segment
and a small journal (the delta, the tombstones, the marks) are opened again:
the node serves in well under a second, reading only rows added since. A
segment whose manifest is missing, corrupt, of another format, or describes
another table, column or key is rebuilt from the database, with a log line
saying why; a segment's files are also checked against their CRC-32s after
opening (in the background for large ones).

Hash-only index (fallback). A table or view without a single integer key is
indexed by distinct hash, rebuilt from the whole column every refresh and
fetched by hash, as before; the node logs a warning with what to do.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shutil
import tempfile
import threading
import time
import weakref
import zipfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt
import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlalchemy.exc import SQLAlchemyError

from liaison.config import HexCase
from liaison.errors import BackendError, InvalidValue
from liaison.hashing.pdq import PDQ_WORDS, hex_from_words, words_from_hex
from node.database import HexSpelling, MappedDataset
from node.pdq_index import (
    CompactionJob,
    Found,
    LiveIndex,
    PdqIndex,
    SegmentError,
    distinct_pairs,
    open_segment,
    touch_pages,
    verify_segment,
    write_segment,
)

log = logging.getLogger("liaison.node")

DEFAULT_REFRESH_S = 30.0
READ_BATCH = 100_000  # rows per fetch when the whole column is read (hash-only index)
# Rows fetched at a time while the node serves: each batch is turned into
# arrays before the next, so the refresh thread holds the GIL only briefly.
ROW_BATCH = 2_000
# Rows compared per round by the sweep: at least this many, and enough to
# pass over the whole table in about SWEEP_CYCLE_S.
SWEEP_MIN_ROWS = 20_000
SWEEP_CYCLE_S = 3600.0
# Keys the index offered as matches, re-read at the next round (at most).
RECHECK_MAX = 2_000
# Compact when the delta plus tombstones reach this many pairs, or this share
# of the segment, whichever is more.
COMPACT_MIN = 100_000
COMPACT_SHARE = 1 / 16
COMPACT_RETRY_S = 600.0  # after a compaction fails
# Segments up to this size are checked against their CRC-32s before serving;
# larger ones right after, in the background.
VERIFY_BEFORE_SERVING = 256 << 20
# At start, up to this long is spent mapping the index's pages in before the
# node serves (the rest continues in the background): the first queries then
# do not each wait for thousands of page faults.
WARM_BEFORE_SERVING_S = 3.0
# After a compaction, how long the new segment's pages wait for the old one to go.
LET_GO_S = 5.0
# A node writing unusual spellings for many hashes gets both cases asked instead.
MAX_ALIASES = 1000
JOURNAL = "journal.npz"
CURRENT = "current.json"

_Int64s = npt.NDArray[np.int64]
_Words = npt.NDArray[np.uint64]


@dataclass(frozen=True, slots=True)
class NearColumn:
    dataset: str
    field: str


@dataclass(frozen=True, slots=True)
class NearMatch:
    """What a near predicate matched.

    ``nearest``: each matched stored hash (canonical hex) and its distance to
    the nearest hash asked. ``keys``: the keys of the rows holding them, or
    None where the index holds hashes only (fetch by hash).
    """

    nearest: dict[str, int]
    keys: tuple[int, ...] | None


def near_columns(schema: Mapping[str, MappedDataset]) -> list[NearColumn]:
    """Every perceptual-hash field this node maps."""
    return [
        NearColumn(name, f.name)
        for name, mapped in sorted(schema.items())
        for f in mapped.dataset.fields
        if f.near and f.name in mapped.columns
    ]


# -- reading the agency's rows ------------------------------------------------------


@dataclass
class _Pairs:
    """Rows read: keys, hashes, and what was learned about their spelling."""

    keys: _Int64s
    words: _Words
    skipped: int = 0
    aliases: dict[str, set[str]] = field(default_factory=dict)
    lower: int = 0  # values spelled in lower case (or digits only)
    upper: int = 0  # values spelled in upper case
    top: int | None = None  # the largest key read, skipped values' too

    @classmethod
    def empty(cls) -> _Pairs:
        return cls(np.zeros(0, dtype=np.int64), np.zeros((0, PDQ_WORDS), dtype=np.uint64))

    def extend(self, other: _Pairs) -> None:
        self.keys = np.concatenate([self.keys, other.keys])
        self.words = np.concatenate([self.words, other.words])
        self.absorb(other)

    def absorb(self, other: _Pairs) -> None:
        """Take ``other``'s counts and spellings, not its pairs."""
        self.skipped += other.skipped
        if other.top is not None:
            self.top = other.top if self.top is None else max(self.top, other.top)
        self.lower += other.lower
        self.upper += other.upper
        for k, v in other.aliases.items():
            self.aliases.setdefault(k, set()).update(v)


def _parse(rows: Sequence[Any], spelling: HexSpelling | None) -> _Pairs:
    """Keys and hashes of ``(key, stored PDQ text)`` rows; values not 64 hex digits are skipped."""
    if not rows:
        return _Pairs.empty()
    keys = [r[0] for r in rows]
    texts = [str(r[1]) for r in rows]
    joined = "".join(texts)
    out = _Pairs.empty()
    out.top = int(max(keys))
    raw = b""
    if set(map(len, texts)) == {64}:
        with contextlib.suppress(ValueError):
            raw = bytes.fromhex(joined)
    if len(raw) == 32 * len(texts):
        words = np.frombuffer(raw, dtype=">u8").reshape(-1, PDQ_WORDS).astype(np.uint64)
        out.keys, out.words = np.array(keys, dtype=np.int64), words
        if joined == joined.lower():
            out.lower = len(texts)
            if spelling is not None and spelling.case is HexCase.UPPER:
                _learn(out, texts, spelling)
            return out
        if joined == joined.upper():
            out.upper = len(texts)
            if spelling is not None and spelling.case is HexCase.LOWER:
                _learn(out, texts, spelling)
            return out
        _learn(out, texts, spelling)
        return out
    # Some value is padded or malformed: one at a time.
    good_keys, good = [], []
    for key, text in zip(keys, texts, strict=True):
        canonical = text.strip().lower()
        try:
            (row,) = words_from_hex([canonical])
        except InvalidValue:
            out.skipped += 1
            continue
        good_keys.append(key)
        good.append(row)
        _learn_one(out, canonical, text, spelling)
    if good:
        out.keys = np.array(good_keys, dtype=np.int64)
        out.words = np.stack(good)
    return out


def _learn(out: _Pairs, texts: Sequence[str], spelling: HexSpelling | None) -> None:
    out.lower = out.upper = 0
    for text in texts:
        _learn_one(out, text.lower(), text, spelling)


def _learn_one(out: _Pairs, canonical: str, text: str, spelling: HexSpelling | None) -> None:
    if text == canonical:
        out.lower += 1
    elif text == canonical.upper():
        out.upper += 1
    if spelling is not None and not spelling.covers(canonical, text):
        out.aliases.setdefault(canonical, set()).add(text)


def _read(
    conn: sa.Connection, statement: sa.Select[Any], spelling: HexSpelling | None
) -> Iterable[_Pairs]:
    """``statement``'s (key, PDQ) rows, parsed a batch at a time."""
    result = conn.execution_options(stream_results=True, yield_per=ROW_BATCH).execute(statement)
    for part in result.partitions():
        yield _parse(part, spelling)
        # Let a query thread waiting for the GIL have it between batches.
        time.sleep(0)


def _void(keys: _Int64s, words: _Words) -> npt.NDArray[np.void]:
    """(key, hash) pairs as single comparable values (40 bytes each)."""
    both = np.empty((len(keys), 1 + PDQ_WORDS), dtype=np.uint64)
    both[:, 0] = keys.view(np.uint64)
    both[:, 1:] = words
    return both.view(np.dtype((np.void, 8 * (1 + PDQ_WORDS)))).ravel()


def _diff(
    table: tuple[_Int64s, _Words], index: tuple[_Int64s, _Words]
) -> tuple[tuple[_Int64s, _Words], tuple[_Int64s, _Words]]:
    """Pairs the table has and the index lacks, and pairs the index has and the table lacks.

    Both sides come sorted by key.
    """
    (tk, tw), (ik, iw) = table, index
    if _unique_sorted(tk) and _unique_sorted(ik):
        # One pair per key on each side (a primary key): compare key by key.
        at = np.minimum(np.searchsorted(ik, tk), max(len(ik) - 1, 0))
        same = np.zeros(len(tk), dtype=bool)
        if len(ik):
            same = (ik[at] == tk) & (iw[at] == tw).all(axis=1)
        kept = np.zeros(len(ik), dtype=bool)
        kept[at[same]] = True
        return (tk[~same], tw[~same]), (ik[~kept], iw[~kept])
    a, b = _void(tk, tw), _void(ik, iw)
    new = ~np.isin(a, b)
    gone = ~np.isin(b, a)
    return (tk[new], tw[new]), (ik[gone], iw[gone])


def _unique_sorted(keys: _Int64s) -> bool:
    return len(keys) < 2 or bool((keys[1:] > keys[:-1]).all())


# -- the hash-only index (tables without an integer key) ------------------------------


def load_index(engine: Engine, mapped: MappedDataset, field: str) -> tuple[PdqIndex, int, int]:
    """Build an index of the column's distinct hashes.

    Also returns the values skipped (not 64 hex digits) and those stored in a
    spelling beyond the column's hex case (padded, or mixing cases): the
    dataset learns those spellings, so SQL is asked for them as stored.
    """
    column = mapped.columns[field]
    spelling = mapped.spelling(field)
    stored: dict[str, list[str]] = {}
    hexes: list[str] = []
    skipped = 0
    with engine.connect() as conn:
        result = conn.execution_options(yield_per=READ_BATCH).execute(
            sa.select(column).where(column.is_not(None)).distinct()
        )
        for (value,) in result:
            text = str(value).strip().lower()
            if len(text) == 64:
                hexes.append(text)
                if str(value) != text:
                    stored.setdefault(text, []).append(str(value))
            else:
                skipped += 1
    noncanonical = 0
    if spelling is not None:
        case = spelling.case
        if spelling.detected:
            # Every value was read: settle the case the start-up sample guessed.
            upper = sum(v == k.upper() for k, vs in stored.items() for v in vs)
            lower = len(hexes) - len(stored)
            case = HexCase.MIXED if upper and lower else HexCase.UPPER if upper else HexCase.LOWER
        settled = HexSpelling(case)
        aliases = {k: [v for v in vs if not settled.covers(k, v)] for k, vs in stored.items()}
        aliases = {k: vs for k, vs in aliases.items() if vs}
        noncanonical = sum(map(len, aliases.values()))
        mapped.set_spelling(field, case, aliases)
    try:
        words = words_from_hex(hexes)
    except InvalidValue:
        # A stray malformed value must not take the whole index down: keep the good ones.
        good = []
        for text in hexes:
            try:
                words_from_hex([text])
            except InvalidValue:
                skipped += 1
                continue
            good.append(text)
        words = words_from_hex(good)
    return PdqIndex.build(words), skipped, noncanonical


class _ColumnIndex(Protocol):
    built_at: float
    keyed: bool

    @property
    def size(self) -> int: ...

    def search(self, queries: _Words, max_distance: int) -> Found: ...

    def note_candidates(self, keys: Sequence[int]) -> None: ...

    def refresh(self, *, full: bool) -> None: ...

    def maintain(self) -> None: ...

    def close(self) -> None: ...


def _database_error(column: NearColumn, exc: SQLAlchemyError) -> BackendError:
    log.error(
        "pdq index refresh failed",
        extra={"dataset": column.dataset, "field": column.field, "error": type(exc).__name__},
    )
    return BackendError(
        "the agency database could not be read for the PDQ index; the node operator's "
        "log has details"
    )


class _HashOnly:
    """Distinct hashes of the whole column, rebuilt and swapped in whole every refresh."""

    keyed = False

    def __init__(self, engine: Engine, mapped: MappedDataset, column: NearColumn) -> None:
        self.engine = engine
        self.mapped = mapped
        self.column = column
        self.built_at = 0.0
        self._index = PdqIndex.build(np.zeros((0, PDQ_WORDS), dtype=np.uint64))
        self.refresh(full=True)

    @property
    def size(self) -> int:
        return self._index.size

    def search(self, queries: _Words, max_distance: int) -> Found:
        index = self._index
        query, position, dist = index.search_many(queries, max_distance)
        none = np.zeros(len(position), dtype=np.int64)
        return Found(query, none, np.take(index.words, position, axis=0), dist)

    def note_candidates(self, keys: Sequence[int]) -> None:
        pass

    def maintain(self) -> None:
        pass

    def close(self) -> None:
        pass

    def refresh(self, *, full: bool) -> None:
        started = time.perf_counter()
        try:
            index, skipped, noncanonical = load_index(self.engine, self.mapped, self.column.field)
        except SQLAlchemyError as exc:
            raise _database_error(self.column, exc) from exc
        self._index = index
        self.built_at = time.time()
        log.info(
            "pdq index built",
            extra={
                "dataset": self.column.dataset,
                "field": self.column.field,
                "hashes": index.size,
                "bytes": index.nbytes,
                "skipped": skipped,
                "seconds": round(time.perf_counter() - started, 3),
                "keyed": False,
            },
        )
        if noncanonical:
            log.warning(
                "pdq values spelled unusually",
                extra={
                    "dataset": self.column.dataset,
                    "field": self.column.field,
                    "values": noncanonical,
                    "fix": "they match as stored; store PDQ hashes as 64 hex digits of one "
                    "case, without spaces, to keep lookups to one spelling",
                },
            )


# -- the keyed index ------------------------------------------------------------------


class _Keyed:
    """A keyed, persisted, incrementally maintained index of one PDQ column."""

    keyed = True

    def __init__(
        self,
        engine: Engine,
        mapped: MappedDataset,
        column: NearColumn,
        folder: Path,
        *,
        refresh_s: float,
        wake: threading.Event,
    ) -> None:
        assert mapped.row_key is not None
        self.engine = engine
        self.mapped = mapped
        self.column = column
        self.folder = folder
        self.refresh_s = refresh_s
        self.built_at = 0.0
        self._wake = wake
        self._key = mapped.row_key
        self._pdq = mapped.columns[column.field]
        self._writer = threading.Lock()  # one round, compaction step or rebuild at a time
        self._pending = threading.Lock()  # guards _recheck
        self._recheck: set[int] = set()
        self._hwm: int | None = None  # largest key read
        self._reread_from: int | None = None  # the mark of the round before
        self._cursor: int | None = None  # the sweep's position (None: the start)
        self._aliases: dict[str, set[str]] = {}
        self._cycle_aliases: dict[str, set[str]] = {}
        self._case: HexCase | None = None
        self._segment = ""
        self._job: CompactionJob | None = None
        self._compact_after = 0.0  # after a failed compaction, the next waits until then
        self._corrupt: str | None = None
        self._closed = False
        self._verifier: threading.Thread | None = None
        self.source = {
            "dataset": column.dataset,
            "field": column.field,
            "table": mapped.table.fullname,
            "column": self._pdq.name,
            "key": self._key.name,
            "database": engine.url.render_as_string(hide_password=True),
        }
        folder.mkdir(parents=True, exist_ok=True)
        self._live: LiveIndex
        self._open()

    # -- serving --------------------------------------------------------------------

    @property
    def size(self) -> int:
        return self._live.size

    @property
    def live(self) -> LiveIndex:
        return self._live

    def search(self, queries: _Words, max_distance: int) -> Found:
        return self._live.search_many(queries, max_distance)

    def note_candidates(self, keys: Sequence[int]) -> None:
        with self._pending:
            room = RECHECK_MAX - len(self._recheck)
            if room > 0:
                self._recheck.update(keys[:room])

    # -- opening ----------------------------------------------------------------------

    def _open(self) -> None:
        started = time.perf_counter()
        try:
            self._live = self._open_persisted()
            with self.engine.connect() as conn:
                # Rows added while the node was down, before it serves.
                added = self._new_rows(conn, self.mapped.spelling(self.column.field))
        except SegmentError as exc:
            reason = str(exc)
        except SQLAlchemyError as exc:
            raise _database_error(self.column, exc) from exc
        else:
            if added:
                self._write_journal()
            log.info(
                "pdq index opened",
                extra={
                    **self._where(),
                    "entries": self._live.size,
                    "added": added,
                    "segment": self._segment,
                    "seconds": round(time.perf_counter() - started, 3),
                },
            )
            return
        if (self.folder / CURRENT).exists():
            log.warning("pdq index rebuilt", extra={**self._where(), "reason": reason})
        self._rebuild(reason)

    def _where(self) -> dict[str, str]:
        return {"dataset": self.column.dataset, "field": self.column.field}

    def _open_persisted(self) -> LiveIndex:
        try:
            current = json.loads((self.folder / CURRENT).read_text())
            name = str(current["segment"])
        except FileNotFoundError:
            raise SegmentError("no index was persisted yet") from None
        except (OSError, ValueError, KeyError, TypeError):
            raise SegmentError(f"{self.folder / CURRENT} is unreadable") from None
        if not re.fullmatch(r"seg-\d+", name):
            raise SegmentError(f"{self.folder / CURRENT} names no segment")
        base, manifest = open_segment(self.folder / name)
        covers = manifest.get("source")
        if covers != self.source:
            raise SegmentError(f"the segment covers {covers}, this node maps {self.source}")
        self._segment = name
        live, meta = self._read_journal(name, base) or (LiveIndex(base), manifest.get("state", {}))
        self._restore_state(meta)
        self._check_high_water()
        self._warm(base, wait_s=WARM_BEFORE_SERVING_S)
        bytes_ = sum(int(f["bytes"]) for f in manifest["files"].values())
        if bytes_ <= VERIFY_BEFORE_SERVING:
            verify_segment(self.folder / name, manifest)
        else:
            self._verifier = threading.Thread(
                target=self._verify, args=(name, manifest), name="pdq-verify", daemon=True
            )
            self._verifier.start()
        self.built_at = time.time()
        return live

    def _restore_state(self, meta: Mapping[str, Any]) -> None:
        self._hwm = _int_or_none(meta.get("high_water"))
        self._reread_from = _int_or_none(meta.get("reread_from", meta.get("high_water")))
        self._cursor = _int_or_none(meta.get("cursor"))
        case = meta.get("case")
        self._case = HexCase(case) if case in {c.value for c in HexCase} else None
        aliases = meta.get("aliases", {})
        self._aliases = {str(k): {str(x) for x in v} for k, v in dict(aliases).items()}
        self._publish_spellings()

    def _check_high_water(self) -> None:
        """A table whose largest key is below the index's mark was replaced: rebuild."""
        if self._hwm is None:
            return
        with self.engine.connect() as conn:
            top = conn.execute(sa.select(sa.func.max(self._key))).scalar()
        if top is None or int(top) < self._hwm:
            raise SegmentError(
                f"the table's largest key ({top}) is below the index's high-water mark "
                f"({self._hwm}): the table was emptied or replaced"
            )

    def _read_journal(
        self, segment: str, base: PdqIndex
    ) -> tuple[LiveIndex, dict[str, Any]] | None:
        """The delta, tombstones and marks written since ``segment``, if still for it."""
        path = self.folder / JOURNAL
        try:
            with open(path, "rb") as fh, np.load(fh, allow_pickle=False) as stored:
                arrays = {k: stored[k] for k in stored.files}
            meta = json.loads(bytes(arrays.pop("meta")).decode())
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as exc:
            log.warning(
                "pdq index journal ignored",
                extra={**self._where(), "reason": f"unreadable ({type(exc).__name__})"},
            )
            return None
        if meta.get("segment") != segment:
            return None  # written for a segment since replaced
        try:
            return LiveIndex.restore(base, arrays), meta
        except (SegmentError, ValueError, KeyError) as exc:
            log.warning("pdq index journal ignored", extra={**self._where(), "reason": str(exc)})
            return None

    def _warm(
        self,
        base: PdqIndex,
        *,
        wait_s: float = 0.0,
        after: weakref.ref[PdqIndex] | None = None,
    ) -> None:
        """Fault the segment's pages in (see touch_pages), waiting up to ``wait_s`` for it.

        ``after``: a segment being replaced; its pages are let go first (queries
        still reading it finish within milliseconds), so resident memory never
        holds both.
        """

        def wanted() -> bool:
            live: LiveIndex | None = getattr(self, "_live", None)
            return not self._closed and (live is None or live.base is base)

        def warm() -> None:
            deadline = time.monotonic() + LET_GO_S
            while after is not None and after() is not None and time.monotonic() < deadline:
                time.sleep(0.01)
            touch_pages(base, still_wanted=wanted)

        thread = threading.Thread(target=warm, name="pdq-warm", daemon=True)
        thread.start()
        thread.join(wait_s)

    def _verify(self, name: str, manifest: Mapping[str, Any]) -> None:
        try:
            verify_segment(self.folder / name, manifest)
        except SegmentError as exc:
            self._corrupt = str(exc)
            self._wake.set()

    # -- building from the database ------------------------------------------------------

    def _rebuild(self, reason: str) -> None:
        """Read the whole column, write a new segment, serve it."""
        started = time.perf_counter()
        if self._job is not None:
            self._job.cancel()
            self._job.wait()
            self._job = None
        spelling = self.mapped.spelling(self.column.field)
        pairs = _Pairs.empty()
        chunks: list[_Pairs] = []
        statement = sa.select(self._key, self._pdq).where(self._pdq.is_not(None))
        try:
            with self.engine.connect() as conn:
                for part in _read(conn, statement, spelling):
                    chunks.append(part)
                    pairs.absorb(part)
        except SQLAlchemyError as exc:
            raise _database_error(self.column, exc) from exc
        keys = np.concatenate([c.keys for c in chunks] or [pairs.keys])
        words = np.concatenate([c.words for c in chunks] or [pairs.words])
        del chunks
        keys, words = distinct_pairs(keys, words)
        self._hwm = int(keys.max()) if len(keys) else None
        self._reread_from = self._hwm
        self._cursor = None
        self._aliases = pairs.aliases
        self._cycle_aliases = {}
        self._settle_case(pairs)
        name = self._next_segment_name()
        chunked = (
            (keys[lo : lo + 1_000_000], words[lo : lo + 1_000_000])
            for lo in range(0, len(keys), 1_000_000)
        )
        count = len(keys)
        write_segment(self.folder / name, chunked, count, meta=self._segment_meta())
        del keys, words
        base, _ = open_segment(self.folder / name)
        self._live = live = LiveIndex(base)
        self._warm(base, wait_s=WARM_BEFORE_SERVING_S)
        self._switch_to(name)
        self._write_journal()
        self.built_at = time.time()
        log.info(
            "pdq index built",
            extra={
                **self._where(),
                "hashes": live.size,
                "entries": live.size,
                "bytes": live.nbytes,
                "skipped": pairs.skipped,
                "seconds": round(time.perf_counter() - started, 3),
                "keyed": True,
                "reason": reason,
            },
        )

    def _settle_case(self, pairs: _Pairs) -> None:
        """The column's case, from every value (where the config left it to detection)."""
        spelling = self.mapped.spelling(self.column.field)
        if spelling is None or not spelling.detected:
            return
        if pairs.lower and not pairs.upper:
            self._case = HexCase.LOWER
        elif pairs.upper and not pairs.lower:
            self._case = HexCase.UPPER
        elif pairs.lower or pairs.upper:
            self._case = HexCase.MIXED
        else:
            self._case = spelling.case
        if self._case is not spelling.case:
            # Values the sampled case did not cover were learned as aliases; the
            # settled case covers them, so keep only what it does not.
            self._aliases = _uncovered(self._aliases, HexSpelling(self._case, detected=True))
        self._publish_spellings()

    def _publish_spellings(self) -> None:
        spelling = self.mapped.spelling(self.column.field)
        if spelling is None:
            return
        case = self._case if (self._case is not None and spelling.detected) else spelling.case
        if len(self._aliases) > MAX_ALIASES and case is not HexCase.MIXED and spelling.detected:
            case = HexCase.MIXED
            self._case = case
            settled = HexSpelling(case, detected=True)
            self._aliases = _uncovered(self._aliases, settled)
        self.mapped.set_spelling(
            self.column.field, case, {k: sorted(v) for k, v in self._aliases.items()}
        )

    def _next_segment_name(self) -> str:
        taken = [
            int(p.name[4:].split(".")[0])
            for p in self.folder.glob("seg-*")
            if p.name[4:].split(".")[0].isdigit()
        ]
        return f"seg-{max(taken, default=0) + 1:06d}"

    def _switch_to(self, name: str) -> None:
        """Make ``name`` the persisted segment and remove the others."""
        doc = {"segment": name, "source": self.source}
        tmp = self.folder / (CURRENT + ".tmp")
        tmp.write_text(json.dumps(doc, sort_keys=True))
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        tmp.replace(self.folder / CURRENT)
        self._segment = name
        for old in self.folder.glob("seg-*"):
            if old.name != name and not (self._job is not None and old == self._job.out):
                # Mapped files stay readable to queries still holding them (POSIX).
                shutil.rmtree(old, ignore_errors=True)

    def _state(self) -> dict[str, Any]:
        return {
            "high_water": self._hwm,
            "reread_from": self._reread_from,
            "cursor": self._cursor,
            "case": None if self._case is None else self._case.value,
            "aliases": {k: sorted(v) for k, v in self._aliases.items()},
        }

    def _segment_meta(self) -> dict[str, Any]:
        return {"source": self.source, "state": self._state()}

    def _write_journal(self) -> None:
        arrays = self._live.journal()
        meta = {"segment": self._segment, **self._state()}
        tmp = self.folder / (JOURNAL + ".tmp")
        with open(tmp, "wb") as fh:
            np.savez(
                fh,
                meta=np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8),
                delta_keys=arrays["delta_keys"],
                delta_words=arrays["delta_words"],
                dead=arrays["dead"],
            )
        tmp.replace(self.folder / JOURNAL)

    # -- keeping up with the table ---------------------------------------------------

    def refresh(self, *, full: bool) -> None:
        """One round: new rows, re-checks, the sweep (the whole table if ``full``)."""
        with self._writer:
            if self._closed:
                return
            self._finish_compaction()
            if self._corrupt is not None:
                reason, self._corrupt = self._corrupt, None
                log.warning("pdq index rebuilt", extra={**self._where(), "reason": reason})
                self._rebuild(reason)
                return
            started = time.perf_counter()
            try:
                with self.engine.connect() as conn:
                    added, removed = self._round(conn, full=full)
            except SQLAlchemyError as exc:
                raise _database_error(self.column, exc) from exc
            if added or removed or full:
                self._write_journal()
            self.built_at = time.time()
            if added or removed:
                log.info(
                    "pdq index updated",
                    extra={
                        **self._where(),
                        "added": added,
                        "removed": removed,
                        "entries": self._live.size,
                        "delta": self._live.delta_size,
                        "tombstones": self._live.dead_count,
                        "seconds": round(time.perf_counter() - started, 3),
                    },
                )
            self._maybe_compact()

    def _round(self, conn: sa.Connection, *, full: bool) -> tuple[int, int]:
        spelling = self.mapped.spelling(self.column.field)
        seen = _Pairs.empty()
        added = self._new_rows(conn, spelling, seen)
        a, removed = self._rechecks(conn, spelling, seen)
        added += a
        if full:
            self._cursor = None
            self._cycle_aliases = {}
        budget = max(SWEEP_MIN_ROWS, int(self._live.size * self.refresh_s / SWEEP_CYCLE_S))
        while True:
            a, r, done = self._sweep(conn, spelling, seen, budget)
            added, removed = added + a, removed + r
            if done or not full:
                break
        self._learn_spellings(seen)
        return added, removed

    def _learn_spellings(self, seen: _Pairs) -> None:
        for k, v in seen.aliases.items():
            self._aliases.setdefault(k, set()).update(v)
            self._cycle_aliases.setdefault(k, set()).update(v)
        if seen.aliases:
            self._publish_spellings()

    def _new_rows(
        self, conn: sa.Connection, spelling: HexSpelling | None, seen: _Pairs | None = None
    ) -> int:
        """Add rows above the mark of the round before (a row committed late, below a key
        already read, is still found); returns the pairs added."""
        statement = sa.select(self._key, self._pdq).where(self._pdq.is_not(None))
        if self._reread_from is not None:
            statement = statement.where(self._key > self._reread_from)
        added = 0
        read = _Pairs.empty()
        for part in _read(conn, statement.order_by(self._key), spelling):
            added += self._live.update(add=(part.keys, part.words))[0]
            read.absorb(part)
        top = self._hwm
        if read.top is not None:
            top = read.top if top is None else max(top, read.top)
        self._reread_from, self._hwm = self._hwm, top
        if seen is None:
            self._learn_spellings(read)
        else:
            seen.absorb(read)
        return added

    def _rechecks(
        self, conn: sa.Connection, spelling: HexSpelling | None, seen: _Pairs
    ) -> tuple[int, int]:
        """Read again, by key, the rows the index offered as matches since the last round."""
        with self._pending:
            wanted = np.fromiter(self._recheck, dtype=np.int64, count=len(self._recheck))
            self._recheck.clear()
        added = removed = 0
        for lo in range(0, len(wanted), ROW_BATCH):
            keys = wanted[lo : lo + ROW_BATCH]
            statement = sa.select(self._key, self._pdq).where(
                self._key.in_(keys.tolist()), self._pdq.is_not(None)
            )
            part = _parse(conn.execute(statement).all(), spelling)
            seen.absorb(part)
            a, r = self._apply((part.keys, part.words), self._live.pairs_for_keys(keys))
            added, removed = added + a, removed + r
        return added, removed

    def _sweep(
        self, conn: sa.Connection, spelling: HexSpelling | None, seen: _Pairs, budget: int
    ) -> tuple[int, int, bool]:
        """Compare the next ``budget`` rows after the cursor with the index.

        Returns (added, removed, whether the sweep reached the end of the table).
        """
        after = self._cursor
        base = sa.select(self._key, self._pdq).where(self._pdq.is_not(None))
        statement = base if after is None else base.where(self._key > after)
        table = self._gather(conn, statement.order_by(self._key).limit(budget), spelling)
        done = table.top is None or len(table.keys) + table.skipped < budget
        upto: int | None = None
        if not done:
            assert table.top is not None
            # The range compared ends before the last key read, whose rows may
            # continue past the limit (a key column that is not unique)...
            upto = table.top - 1
            keep = table.keys <= upto
            table.keys, table.words = table.keys[keep], table.words[keep]
            if after is not None and upto <= after:
                # ... unless that key is all the range holds: read all of its rows.
                upto = table.top
                table = self._gather(conn, base.where(self._key == upto), spelling)
        seen.absorb(table)
        added, removed = self._apply(
            (table.keys, table.words), self._live.pairs_in_range(after, upto)
        )
        if table.top is not None and (self._hwm is None or table.top > self._hwm):
            self._hwm = table.top
        self._cursor = upto
        if done:
            # A whole cycle: the spellings seen in it are all that is stored.
            self._aliases = self._cycle_aliases
            self._cycle_aliases = {}
        return added, removed, done

    def _gather(
        self, conn: sa.Connection, statement: sa.Select[Any], spelling: HexSpelling | None
    ) -> _Pairs:
        table = _Pairs.empty()
        parts = list(_read(conn, statement, spelling))
        for part in parts:
            table.absorb(part)
        if parts:
            table.keys = np.concatenate([p.keys for p in parts])
            table.words = np.concatenate([p.words for p in parts])
        return table

    def _apply(
        self, table: tuple[_Int64s, _Words], index: tuple[_Int64s, _Words]
    ) -> tuple[int, int]:
        new, gone = _diff(table, index)
        if not len(new[0]) and not len(gone[0]):
            return 0, 0
        return self._live.update(add=new, remove=gone)

    # -- compaction ----------------------------------------------------------------------

    def _maybe_compact(self) -> None:
        live = self._live
        if self._job is not None or time.monotonic() < self._compact_after:
            return
        pending = live.delta_size + live.dead_count
        if pending < max(COMPACT_MIN, live.base.size * COMPACT_SHARE):
            return
        self._compact()

    def compact(self) -> CompactionJob:
        """Start merging the delta and tombstones into a new segment now (operators, benchmarks)."""
        with self._writer:
            return self._compact()

    @property
    def compaction(self) -> CompactionJob | None:
        """The compaction running, if one is."""
        return self._job

    def _compact(self) -> CompactionJob:
        if self._job is not None:
            return self._job
        started = self._live.start_compaction()
        name = self._next_segment_name()
        log.info(
            "pdq index compaction started",
            extra={
                **self._where(),
                "segment": name,
                "entries": self._live.size,
                "delta": self._live.delta_size,
                "tombstones": self._live.dead_count,
            },
        )
        self._job = CompactionJob(
            self.folder / self._segment,
            started,
            self.folder / name,
            meta=self._segment_meta(),
            on_done=self._wake.set,
        )
        return self._job

    def maintain(self) -> None:
        """Swap in a finished compaction; rebuild a segment found corrupt."""
        with self._writer:
            if self._closed:
                return
            self._finish_compaction()
            if self._corrupt is not None:
                reason, self._corrupt = self._corrupt, None
                log.warning("pdq index rebuilt", extra={**self._where(), "reason": reason})
                with contextlib.suppress(BackendError):
                    self._rebuild(reason)

    def _finish_compaction(self) -> None:
        job = self._job
        if job is None or not job.done:
            return
        self._job = None
        name = job.out.name
        error = job.error
        merged: PdqIndex | None = None
        if error is None:
            try:
                merged, _ = open_segment(job.out)
            except SegmentError as exc:
                error = str(exc)
        if merged is None:
            # The index keeps serving its segment, delta and tombstones; try again later.
            log.error(
                "pdq index compaction failed",
                extra={**self._where(), "error": error, "retry_in_s": COMPACT_RETRY_S},
            )
            shutil.rmtree(job.out, ignore_errors=True)
            shutil.rmtree(job.out.with_name(name + ".tmp"), ignore_errors=True)
            self._compact_after = time.monotonic() + COMPACT_RETRY_S
            return
        started = time.perf_counter()
        previous = weakref.ref(self._live.base)
        self._live.finish_compaction(job.release(), merged)
        # Faulted in once the old segment is let go, so the two are never both resident.
        self._warm(merged, after=previous)
        self._switch_to(name)
        self._write_journal()
        log.info(
            "pdq index compacted",
            extra={
                **self._where(),
                "segment": name,
                "entries": self._live.size,
                "delta": self._live.delta_size,
                "tombstones": self._live.dead_count,
                "seconds": round(time.perf_counter() - started, 3),
            },
        )

    def close(self) -> None:
        with self._writer:
            self._closed = True
            if self._job is not None:
                self._job.cancel()
                self._job.wait(10)


def _uncovered(aliases: dict[str, set[str]], spelling: HexSpelling) -> dict[str, set[str]]:
    """The spellings ``spelling`` does not already ask for."""
    kept = {k: {v for v in vs if not spelling.covers(k, v)} for k, vs in aliases.items()}
    return {k: vs for k, vs in kept.items() if vs}


def _int_or_none(value: Any) -> int | None:
    return None if value is None else int(value)


def _folder_name(column: NearColumn) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", f"{column.dataset}-{column.field}")


class NearIndexes:
    """The node's PDQ indexes, one per mapped perceptual-hash field, kept current in the background.

    ``state_dir``: where keyed indexes persist (``pdq/`` inside it). Without
    one they are kept in a temporary folder removed at :meth:`close`, and
    rebuilt from the database at every start.
    """

    def __init__(
        self,
        engine: Engine,
        schema: Mapping[str, MappedDataset],
        *,
        refresh_s: float = DEFAULT_REFRESH_S,
        state_dir: Path | None = None,
    ) -> None:
        self.engine = engine
        self.schema = dict(schema)
        self.refresh_s = refresh_s
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._scratch: Path | None = None
        if state_dir is None:
            self._scratch = Path(tempfile.mkdtemp(prefix="liaison-pdq-"))
            root = self._scratch
        else:
            root = Path(state_dir) / "pdq"
        self._indexes: dict[NearColumn, _ColumnIndex] = {}
        try:
            for column in near_columns(self.schema):
                self._indexes[column] = self._open(column, root / _folder_name(column))
        except BaseException:
            self.close()
            raise

    def _open(self, column: NearColumn, folder: Path) -> _ColumnIndex:
        mapped = self.schema[column.dataset]
        if mapped.row_key is None:
            log.warning(
                "pdq index without row keys",
                extra={
                    "dataset": column.dataset,
                    "field": column.field,
                    "table": mapped.table.fullname,
                    "fix": "the table has no single integer primary key, so the PDQ index is "
                    "rebuilt from the whole column every refresh and matches are fetched by "
                    "hash (slow without an index on the column); give the table an integer "
                    "primary key, or map a view's unique integer column as its key",
                },
            )
            return _HashOnly(self.engine, mapped, column)
        return _Keyed(
            self.engine, mapped, column, folder, refresh_s=self.refresh_s, wake=self._wake
        )

    def start(self) -> None:
        """Keep the indexes current until :meth:`close`."""
        if self._thread is None and self._indexes:
            self._thread = threading.Thread(target=self._run, name="pdq-refresh", daemon=True)
            self._thread.start()

    def close(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(10)
        for index in self._indexes.values():
            index.close()
        if self._scratch is not None:
            shutil.rmtree(self._scratch, ignore_errors=True)

    def _run(self) -> None:
        due = time.monotonic() + self.refresh_s
        while not self._stop.is_set():
            self._wake.wait(max(0.0, due - time.monotonic()))
            self._wake.clear()
            if self._stop.is_set():
                return
            for index in list(self._indexes.values()):
                index.maintain()
            if time.monotonic() < due:
                continue
            for index in list(self._indexes.values()):
                # Logged; the index keeps serving what it has until the next try.
                with contextlib.suppress(BackendError):
                    index.refresh(full=False)
            due = time.monotonic() + self.refresh_s

    def refresh(self) -> None:
        """Bring every index fully up to date now (tests, and operators after a bulk load)."""
        for index in list(self._indexes.values()):
            index.refresh(full=True)

    def in_use(self) -> list[tuple[NearColumn, int, float]]:
        """Each index in use: its column, its size, when it was last brought up to date."""
        return [(c, i.size, i.built_at) for c, i in list(self._indexes.items())]

    def index(self, dataset: str, field: str) -> _ColumnIndex | None:
        return self._indexes.get(NearColumn(dataset, field))

    def match(
        self, dataset: str, field: str, values: Sequence[str], max_distance: int
    ) -> NearMatch:
        """Stored hashes within ``max_distance`` of any of ``values``, and their rows' keys."""
        index = self.index(dataset, field)
        if index is None or index.size == 0 or not values:
            return NearMatch({}, None if index is None or not index.keyed else ())
        found = index.search(words_from_hex(list(values)), max_distance)
        nearest: dict[str, int] = {}
        if len(found.distance):
            distinct, inverse = np.unique(
                np.ascontiguousarray(found.words).view(np.dtype((np.void, 32))).ravel(),
                return_inverse=True,
            )
            best = np.full(len(distinct), 1 << 16, dtype=np.int64)
            np.minimum.at(best, inverse, found.distance.astype(np.int64))
            rows = distinct.view(np.uint64).reshape(-1, PDQ_WORDS)
            nearest = dict(zip(hex_from_words(rows), best.tolist(), strict=True))
        if not index.keyed:
            return NearMatch(nearest, None)
        keys = tuple(np.unique(found.keys).tolist())
        index.note_candidates(keys)
        return NearMatch(nearest, keys)

    def lookup(
        self, dataset: str, field: str, values: Sequence[str], max_distance: int
    ) -> dict[str, int]:
        """Stored hashes within ``max_distance`` of any of ``values``, with the nearest distance."""
        return self.match(dataset, field, values, max_distance).nearest
