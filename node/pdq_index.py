"""Exact near-duplicate search over PDQ hashes: multi-index hashing in numpy.

A node answers "which stored PDQ hashes are within Hamming distance ``t`` of
this one?" and must find every one of them and nothing further away. A scan
of millions of 256-bit hashes per query is too slow, so the index follows
Norouzi, Punjani and Fleet, *Fast Exact Search in Hamming Space with
Multi-Index Hashing* (2014):

* The 256 bits are cut into ``m`` disjoint substrings. If ``t = m*r + a``
  (``0 <= a < m``), a hash within ``t`` of the query has a substring within
  ``r`` of the query's among any chosen ``a + 1`` substrings, or one within
  ``r - 1`` among the others; otherwise the distance would be at least
  ``(a+1)(r+1) + (m-a-1)r = t + 1``.
* So for each substring every value within its radius of the query's
  substring is *probed*: the hashes whose substring has that value are
  candidates. Every candidate's full distance is computed, and only those
  within ``t`` are kept: the answer is exact, never approximate.

Two layouts of substrings:

* 16 of 16 bits: for ``t = 31``, radius 1 on every substring, 272 probes,
  and about ``N / 241`` candidates per query; bucket tables take 4 MB.
* 12 of 21 or 22 bits (three per 64-bit word): for ``t = 31``, radius 2 on
  eight substrings and 1 on four, about 2,000 probes but only ``N / 1,370``
  candidates; bucket tables take 134 MB. Verifying a candidate is a random
  read of its 32 bytes, so from about a million hashes this is the faster
  layout (1.6 times at 1 million, 3.7 times at 2.7 and 10 million); at 10
  million it even needs less memory, having four ``order`` arrays fewer.

Arrays, with nothing per hash held in Python objects:

* ``words``: the distinct hashes, ``(N, 4)`` uint64, sorted, so they are also
  sorted by substring 0 and that substring's buckets are runs of ``words``.
* For each other substring, ``order``: the positions of the hashes sorted by
  that substring's value (uint32, stable, so each bucket reads ``words`` in
  order).
* For each substring, a table of bucket starts (uint32): one per possible
  value plus an end, so the hashes whose substring has value ``v`` are
  ``order[start[v]:start[v+1]]``.

All probes of a batch of queries are looked up at once, their ranges expanded
into one candidate array, and every candidate checked in one vectorised pass.
Where the probes would touch so much of the data that reading it all is
cheaper (large ``t``, or a query whose buckets are crowded), the index scans
linearly instead; that is exact too.

Keyed entries. Built with ``keys`` (one int64 per hash: the agency row's key),
the index holds every (key, hash) pair rather than distinct hashes, sorted by
key, so a match names the rows to fetch by primary key and a pair is found by
its key with a binary search. Substring 0 then has an ``order`` array too.

Segments on disk. :func:`write_segment` streams keyed pairs into ``.npy``
files (written under a temporary name, fsynced, renamed) with a manifest
carrying a format version, each file's size and CRC-32, and what the caller
says the segment covers; :func:`open_segment` maps them back with
``mmap_mode="r"`` in milliseconds, so nothing is rebuilt at a restart.

:class:`LiveIndex` serves one segment plus what changed since: a small
in-memory *delta* index of pairs added and a *tombstone* mask of segment
pairs removed. :func:`compact` merges them into a new segment in chunks (the
old one stays mapped and untouched), in a child process for large segments so
that queries never wait for it.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import threading
import time
import zlib
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import IO, Any

import numpy as np
import numpy.typing as npt

from liaison.errors import LiaisonError
from liaison.hashing.pdq import MAX_DISTANCE, PDQ_WORDS, hex_from_words

# Substrings as (first bit, width), bits numbered from the top of word 0, in
# the order the index numbers them; one may span two words. Substring 0 must
# be the top bits of word 0: sorting the hashes then sorts them by substring 0
# too, and (without keys) its buckets are runs of ``words``.
Layout = tuple[tuple[int, int], ...]
LAYOUT_16X16: Layout = tuple((16 * j, 16) for j in range(16))
LAYOUT_12X21: Layout = tuple(
    (64 * (j // 3) + (0, 21, 42)[j % 3], (21, 21, 22)[j % 3]) for j in range(12)
)
_WIDTHS_11 = (23,) * 8 + (24,) * 3
LAYOUT_11X23: Layout = tuple((sum(_WIDTHS_11[:j]), w) for j, w in enumerate(_WIDTHS_11))
# Wider substrings mean fewer candidates (each a random read of 32 bytes) but
# more probes and larger bucket tables (134 MB for 12 of 21-22 bits, 470 MB
# for 11 of 23-24). Measured at t=31: 12 substrings break even with 16 at half
# a million hashes and are 1.6 times faster at a million, 3.7 times at 2.7
# million; 11 are 1.4 times faster than 12 at ten million.
_WIDE_FROM = 1_000_000
_WIDER_FROM = 6_000_000
# Candidates verified per vectorised pass (about 100 bytes of temporaries each).
_CANDIDATE_BUDGET = 400_000
# Probe lookups per pass (a few int64 arrays of this many entries).
_PROBE_BUDGET = 40_000
# Relative costs, measured: looking up one probe's bucket, verifying one
# candidate (a random gather of its 32 bytes, XOR, popcount), and reading one
# hash in a linear scan. MIH is used while it is expected to be cheaper.
_PROBE_COST = 0.8
_CANDIDATE_COST = 1.0
_SCAN_COST = 0.12
# The linear scan reads blocks of this many hashes, checking a group of
# queries against each block while it is in cache.
_SCAN_BLOCK = 16_384
_SCAN_GROUP = 8

# Segment files. A new FORMAT means old segments are rebuilt, never misread.
FORMAT = 1
MANIFEST = "manifest.json"
_FILES = ("keys", "words", "order", "starts")
# Pairs merged or checked per step while writing a segment (about 60 bytes each).
_WRITE_CHUNK = 1 << 20
# Segments of at least this many pairs are compacted in a child process, so
# the node's own threads (and the GIL) stay free for queries.
CHILD_FROM = 1_000_000

_Int64s = npt.NDArray[np.int64]
_IntPs = npt.NDArray[np.intp]
_UInt32s = npt.NDArray[np.uint32]
_Words = npt.NDArray[np.uint64]
_Bools = npt.NDArray[np.bool_]
_Distances = npt.NDArray[np.uint16]
_Matches = tuple[_IntPs, _IntPs, _Distances]


@dataclass(frozen=True, slots=True)
class _Plan:
    """The probes for one distance threshold, the same for every query."""

    linear: bool
    # One entry per probe: its substring, XOR mask and bucket-table offset.
    substring: _IntPs
    mask: _Int64s
    table: _Int64s
    # The first ``direct`` probes are on substring 0, whose buckets are runs of words.
    direct: int


class PdqIndex:
    """An immutable, exact index of PDQ hashes (see the module docstring).

    Built without keys it holds distinct hashes, sorted; with keys, every
    (key, hash) pair given, sorted by key.
    """

    words: _Words
    keys: _Int64s | None

    def __init__(
        self,
        *,
        words: _Words,
        order: _UInt32s,
        starts: _UInt32s,
        layout: Layout,
        keys: _Int64s | None = None,
        direct: bool = True,
    ) -> None:
        """Use :meth:`build` or :func:`open_segment`; this takes arrays already laid out.

        ``direct``: the hashes are sorted by substring 0, whose buckets are
        then runs of ``words`` and which has no ``order`` array.
        """
        for array in (words, order, starts, keys):
            if array is not None and array.flags.writeable:
                array.setflags(write=False)
        self.words = words
        self.keys = keys
        self._order = order
        self._starts = starts
        self._layout = layout
        self._direct = direct
        self._plans: dict[int, _Plan] = {}
        # A query's substring j is the top bits of (word a << off | word b >> (64 - off)).
        self._sub_a = np.array([s // 64 for s, _ in layout], dtype=np.intp)
        self._sub_b = np.array([min(s // 64 + 1, PDQ_WORDS - 1) for s, _ in layout], dtype=np.intp)
        self._sub_off = np.array([s % 64 for s, _ in layout], dtype=np.uint64)
        self._sub_back = np.array([63 - s % 64 for s, _ in layout], dtype=np.uint64)
        self._sub_drop = np.array([64 - b for _, b in layout], dtype=np.uint64)

    @classmethod
    def build(
        cls, words: _Words, *, keys: npt.ArrayLike | None = None, layout: Layout | None = None
    ) -> PdqIndex:
        """Index the rows of ``words`` (``(N, 4)`` uint64).

        Without ``keys``, duplicate rows are kept once. With ``keys`` (one
        int64 per row), every row is kept with its key, sorted by key (rows
        of equal keys in the order given). ``layout`` chooses the substrings;
        by default it is 16 of 16 bits for fewer than a million hashes and 12
        of 21 or 22 bits from there.
        """
        rows = _check_words(words, "words")
        ks: _Int64s | None = None
        if keys is None:
            rows = _distinct_sorted(rows)
        else:
            ks = _check_keys(keys, len(rows))
            if len(ks) > 1 and not bool((ks[1:] >= ks[:-1]).all()):
                by = np.argsort(ks, kind="stable")
                ks, rows = ks[by], np.take(rows, by, axis=0)
        n = len(rows)
        layout = _default_layout(n) if layout is None else layout
        _check_layout(layout)
        _check_size(n, layout)
        direct = ks is None
        first = 1 if direct else 0
        order = np.empty((len(layout) - first) * n, dtype=np.uint32)
        starts = np.empty(_table_offsets(layout)[-1], dtype=np.uint32)
        for _ in _substring_tables(
            lambda w: rows[:, w], n, layout, direct, tables=starts, order=order
        ):
            pass
        return cls(words=rows, order=order, starts=starts, layout=layout, keys=ks, direct=direct)

    @property
    def size(self) -> int:
        """The number of hashes (or, keyed, of pairs) held."""
        return len(self.words)

    @property
    def nbytes(self) -> int:
        """Bytes held by the index's arrays."""
        held = self.words.nbytes + self._order.nbytes + self._starts.nbytes
        return held + (0 if self.keys is None else self.keys.nbytes)

    @property
    def layout(self) -> Layout:
        return self._layout

    def hex_at(self, positions: npt.ArrayLike) -> list[str]:
        """The hex text of the hashes at ``positions`` (as returned by a search)."""
        picked = np.take(self.words, np.asarray(positions, dtype=np.intp).ravel(), axis=0)
        return hex_from_words(picked)

    def search(self, query: _Words, max_distance: int) -> tuple[_IntPs, _Distances]:
        """Every hash within ``max_distance`` of ``query`` (4 uint64 words).

        Returns positions into :attr:`words` and their distances, sorted by
        distance, then position.
        """
        q = np.asarray(query)
        if q.shape != (PDQ_WORDS,) or q.dtype != np.uint64:
            raise ValueError(f"query must be 4 uint64 words, got shape {q.shape} of {q.dtype}")
        _, positions, dists = self.search_many(q.reshape(1, PDQ_WORDS), max_distance)
        return positions, dists

    def search_many(self, queries: _Words, max_distance: int) -> _Matches:
        """Every (query, hash) pair within ``max_distance``, for ``(Q, 4)`` queries.

        Returns (query index, position, distance) arrays, sorted by query,
        then distance, then position. Temporaries stay bounded however many
        queries are given.
        """
        qs = _check_words(queries, "queries")
        t = _check_distance(max_distance)
        found: list[_Matches] = []
        if self.size and len(qs):
            plan = self._plan(t)
            if plan.linear:
                found.append(self._scan(qs, np.arange(len(qs)), t))
            else:
                per_pass = max(1, _PROBE_BUDGET // len(plan.mask))
                for lo in range(0, len(qs), per_pass):
                    found.extend(self._probe(qs[lo : lo + per_pass], lo, plan, t))
        return _merge(found)

    # -- internals ---------------------------------------------------------------

    def _plan(self, t: int) -> _Plan:
        plan = self._plans.get(t)
        if plan is None:
            plan = self._plans[t] = self._make_plan(t)
        return plan

    def _make_plan(self, t: int) -> _Plan:
        m = len(self._layout)
        widths = [b for _, b in self._layout]
        r, a = divmod(t, m)

        def cost(j: int, radius: int) -> float:
            probes = _ball(widths[j], radius)
            return probes * (_PROBE_COST + _CANDIDATE_COST * self.size / 2.0 ** widths[j])

        # Any a+1 substrings may take radius r (the others r-1): pick those
        # where the larger radius costs least.
        extra = set(sorted(range(m), key=lambda j: cost(j, r) - cost(j, r - 1))[: a + 1])
        radius = [r if j in extra else r - 1 for j in range(m)]
        expected = sum(cost(j, radius[j]) for j in range(m))
        if expected > _SCAN_COST * self.size:
            nothing = np.zeros(0, dtype=np.int64)
            return _Plan(True, nothing.astype(np.intp), nothing, nothing, 0)
        offsets = _table_offsets(self._layout)
        subs, masks, tables = [], [], []
        for j in range(m):
            ball = _ball_masks(widths[j], radius[j])
            subs.append(np.full(len(ball), j, dtype=np.intp))
            masks.append(ball)
            tables.append(np.full(len(ball), offsets[j], dtype=np.int64))
        return _Plan(
            False,
            np.concatenate(subs),
            np.concatenate(masks),
            np.concatenate(tables),
            direct=len(masks[0]) if self._direct else 0,
        )

    def _probe(self, qs: _Words, first: int, plan: _Plan, t: int) -> list[_Matches]:
        """Search ``qs`` (numbered from ``first``) by probing their buckets."""
        bits = np.take(qs, self._sub_a, axis=1) << self._sub_off
        bits |= (np.take(qs, self._sub_b, axis=1) >> self._sub_back) >> np.uint64(1)
        bits >>= self._sub_drop
        subs = bits.astype(np.int64)
        # Substring 0's buckets are runs of positions; the others' are runs of order.
        keys = subs[:, :1] ^ plan.mask[: plan.direct]
        direct_starts, direct_lengths = self._buckets(keys)
        keys = subs[:, plan.substring[plan.direct :]]
        keys ^= plan.mask[plan.direct :]
        keys += plan.table[plan.direct :]
        other_starts, other_lengths = self._buckets(keys)
        del keys
        direct_totals = direct_lengths.sum(axis=1)
        other_totals = other_lengths.sum(axis=1)
        totals = direct_totals + other_totals
        found: list[_Matches] = []
        probe_cost = _PROBE_COST * len(plan.mask)
        too_many = totals * _CANDIDATE_COST + probe_cost > _SCAN_COST * self.size
        if too_many.any():
            # Skewed data: these queries' buckets hold much of the index.
            which = np.flatnonzero(too_many)
            found.append(self._scan(qs[which], which + first, t))
            for a in (direct_lengths, other_lengths, direct_totals, other_totals, totals):
                a[which] = 0
        # Split the queries into passes of about _CANDIDATE_BUDGET candidates.
        cum = np.cumsum(totals)
        lo = 0
        while lo < len(qs):
            done = cum[lo - 1] if lo else 0
            hi = max(lo + 1, int(np.searchsorted(cum, done + _CANDIDATE_BUDGET, side="right")))
            n_direct = int(direct_totals[lo:hi].sum())
            n_other = int(other_totals[lo:hi].sum())
            candidates = np.empty(n_direct + n_other, dtype=np.intp)
            candidates[:n_direct] = _expand(
                direct_starts[lo:hi].ravel(), direct_lengths[lo:hi].ravel(), n_direct
            )
            at = _expand(other_starts[lo:hi].ravel(), other_lengths[lo:hi].ravel(), n_other)
            candidates[n_direct:] = np.take(self._order, at)
            del at
            counts = np.concatenate([direct_totals[lo:hi], other_totals[lo:hi]])
            found.append(self._verify(qs[lo:hi], lo + first, candidates, counts, t))
            lo = hi
        return found

    def _buckets(self, keys: _Int64s) -> tuple[_UInt32s, _Int64s]:
        """Start and length of the bucket at each key (an index into the tables).

        ``keys`` is used up: it is incremented in place to read the bucket ends.
        """
        starts = np.take(self._starts, keys)
        keys += 1
        lengths = np.subtract(np.take(self._starts, keys), starts, dtype=np.int64)
        return starts, lengths

    def _verify(
        self, qs: _Words, first: int, candidates: _IntPs, counts: _Int64s, t: int
    ) -> _Matches:
        """The candidates within ``t`` of their query.

        ``candidates`` holds runs of ``counts``: each query's direct
        candidates in turn, then each query's others in turn.
        """
        x = np.take(self.words, candidates, axis=0)
        x ^= np.repeat(np.concatenate([qs, qs]), counts, axis=0)
        hits, dist = _within(x, t)
        del x
        query = np.searchsorted(np.cumsum(counts), hits, side="right") % len(qs) + first
        return query, candidates[hits], dist.astype(np.uint16)

    def _scan(self, qs: _Words, numbers: _IntPs, t: int) -> _Matches:
        """Linear scan of every hash for each of ``qs`` (numbered ``numbers``)."""
        queries: list[_IntPs] = []
        positions: list[_IntPs] = []
        dists: list[_Distances] = []
        x = np.empty((_SCAN_BLOCK, PDQ_WORDS), dtype=np.uint64)
        for g in range(0, len(qs), _SCAN_GROUP):
            group = numbers[g : g + _SCAN_GROUP]
            # Each query repeated down a block, so the XOR runs over equal
            # shapes (broadcasting a 4-word row is several times slower).
            tiles = np.repeat(qs[g : g + _SCAN_GROUP], _SCAN_BLOCK, axis=0)
            tiles = tiles.reshape(len(group), _SCAN_BLOCK, PDQ_WORDS)
            # Each block of hashes is read from memory once for the group.
            for lo in range(0, self.size, _SCAN_BLOCK):
                block = self.words[lo : lo + _SCAN_BLOCK]
                n = len(block)
                for number, tile in zip(group, tiles, strict=True):
                    np.bitwise_xor(block, tile[:n], out=x[:n])
                    hits, dist = _within(x[:n], t)
                    if len(hits):
                        queries.append(np.full(len(hits), number, dtype=np.intp))
                        positions.append(hits + lo)
                        dists.append(dist.astype(np.uint16))
        if not queries:
            return _nothing()
        return np.concatenate(queries), np.concatenate(positions), np.concatenate(dists)


def _default_layout(n: int) -> Layout:
    if n >= _WIDER_FROM:
        return LAYOUT_11X23
    return LAYOUT_12X21 if n >= _WIDE_FROM else LAYOUT_16X16


def _check_size(n: int, layout: Layout) -> None:
    if n >= 2**32 // len(layout):
        raise ValueError(f"too many hashes for one index ({n}); split the register")


def _check_keys(keys: npt.ArrayLike, n: int) -> _Int64s:
    ks = np.asarray(keys)
    if ks.shape != (n,) or not np.issubdtype(ks.dtype, np.integer):
        raise ValueError(
            f"keys must be {n} integers, one per hash, got shape {ks.shape} of {ks.dtype}"
        )
    return ks.astype(np.int64, copy=False)


def _substring_tables(
    column: Callable[[int], _Words],
    n: int,
    layout: Layout,
    direct: bool,
    *,
    tables: _UInt32s | None = None,
    order: _UInt32s | None = None,
) -> Iterator[tuple[_UInt32s, _UInt32s | None]]:
    """For each substring in turn: its bucket table, and its ``order`` (None if direct).

    ``column(w)`` gives word ``w`` of every hash. A table's entries are
    offsets into the concatenated ``order`` arrays (or, for a direct
    substring 0, into ``words``). Given ``tables`` and ``order`` (the
    concatenated arrays), each is filled in place; otherwise one buffer of
    each is reused, so a caller must use each pair before asking the next.
    """
    first = 1 if direct else 0
    offsets = _table_offsets(layout)
    widest = max(width for _, width in layout)
    spare_table = np.empty((1 << widest) + 1, dtype=np.uint32) if tables is None else None
    spare_order = np.empty(n, dtype=np.uint32) if order is None else None
    for j, (start, width) in enumerate(layout):
        key = _substring(column, start, width)
        if tables is not None:
            table = tables[offsets[j] : offsets[j + 1]]
        else:
            assert spare_table is not None
            table = spare_table[: (1 << width) + 1]
        _cumulative_counts(key, table)
        if j < first:
            yield table, None
            continue
        table += np.uint32((j - first) * n)
        if order is not None:
            sorted_positions = order[(j - first) * n : (j - first + 1) * n]
        else:
            assert spare_order is not None
            sorted_positions = spare_order
        _stable_argsort(key, width, out=sorted_positions)
        del key
        yield table, sorted_positions


def _cumulative_counts(key: npt.NDArray[np.uint16 | np.uint32], table: _UInt32s) -> None:
    """``table[v]``: how many of ``key`` are below ``v`` (``len(table)`` = values + 1)."""
    table[:] = 0
    if len(key) * 4 < len(table):
        # Few keys for many buckets: count into the table itself.
        np.add.at(table, key.astype(np.intp) + 1, np.uint32(1))
    else:
        table[1:] = np.bincount(key, minlength=len(table) - 1)
    np.cumsum(table, out=table)


def _table_offsets(layout: Layout) -> list[int]:
    """Where each substring's bucket table starts in the concatenated tables."""
    offsets = [0]
    for _, width in layout:
        offsets.append(offsets[-1] + (1 << width) + 1)
    return offsets


def _check_layout(layout: Layout) -> None:
    bits = np.zeros(PDQ_WORDS * 64, dtype=np.int64)
    for start, width in layout:
        if not (1 <= width <= 24 and 0 <= start <= PDQ_WORDS * 64 - width):
            raise ValueError(f"bad substring {(start, width)} in layout")
        bits[start : start + width] += 1
    if not (bits == 1).all() or not layout or layout[0][0] != 0:
        raise ValueError("layout must cover each bit once, substring 0 the top of word 0")


def _distinct_sorted(rows: _Words) -> _Words:
    """The distinct rows, sorted by value (so by word 0, then the others)."""
    if not len(rows):
        return np.zeros((0, PDQ_WORDS), dtype=np.uint64)
    rows = np.take(rows, np.argsort(rows[:, 0]), axis=0)
    # Only rows sharing word 0 with a neighbour need the other words sorted:
    # that puts duplicates next to each other.
    same = rows[1:, 0] == rows[:-1, 0]
    if same.any():
        tied = np.zeros(len(rows), dtype=bool)
        tied[1:] = same
        tied[:-1] |= same
        at = np.flatnonzero(tied)
        group = np.take(rows, at, axis=0)
        rows[at] = np.take(group, np.lexsort(group.T[::-1]), axis=0)
        fresh = np.ones(len(rows), dtype=bool)
        fresh[1:] = (rows[1:] != rows[:-1]).any(axis=1)
        if not fresh.all():
            rows = rows[fresh]
    return rows


def _stable_argsort(key: npt.NDArray[np.uint16 | np.uint32], width: int, *, out: _UInt32s) -> None:
    """Positions sorted by ``key`` into ``out``, ties in position order.

    NumPy's stable sort is a radix sort for 16-bit keys, so wider keys take
    two 16-bit passes, low half first.
    """
    if width <= 16:
        out[:] = np.argsort(key, kind="stable")
        return
    first = np.argsort((key & 0xFFFF).astype(np.uint16), kind="stable").astype(np.uint32)
    high = np.take((key >> 16).astype(np.uint16), first)
    np.take(first, np.argsort(high, kind="stable"), out=out)


def _substring(
    column: Callable[[int], _Words], start: int, width: int
) -> npt.NDArray[np.uint16 | np.uint32]:
    """Bits ``start`` to ``start + width`` of every hash (``column(w)``: word ``w`` of each)."""
    word, off = divmod(start, 64)
    bits = column(word) << np.uint64(off)
    if off + width > 64:
        bits |= column(word + 1) >> np.uint64(64 - off)
    bits >>= np.uint64(64 - width)
    return bits.astype(np.uint16 if width <= 16 else np.uint32)


def _expand(starts: _UInt32s, lengths: _Int64s, total: int) -> _IntPs:
    """Concatenate the ranges ``[s, s + n)``: one index array, no Python loop."""
    steps = np.ones(total, dtype=np.intp)
    if total:
        # A running sum of ones, jumping at the first element of each range
        # from the previous range's last value (faster than np.repeat).
        used = np.flatnonzero(lengths)
        n = lengths[used]
        first = starts[used].astype(np.intp)
        steps[0] = first[0]
        steps[np.cumsum(n[:-1])] = first[1:] - first[:-1] - n[:-1] + 1
        np.cumsum(steps, out=steps)
    return steps


def _within(x: _Words, t: int) -> tuple[_IntPs, _UInt32s]:
    """Rows of ``x`` (``(n, 4)`` uint64, XORed with a query) with at most ``t`` bits set.

    Returns their indices and bit counts.
    """
    # The four per-word counts (each <= 64) are the bytes of one uint32;
    # multiplying by 0x01010101 sums them into the top byte, with no carries
    # from below (partial sums stay < 256). Only a sum of exactly 256 wraps
    # (to 0): every count is 64, which the check below rules out.
    counts = np.bitwise_count(x).view(np.uint32).ravel()
    summed = counts * np.uint32(0x01010101)
    hits = np.flatnonzero(summed < np.uint32((t + 1) << 24))
    hits = hits[counts[hits] != 0x40404040]
    return hits, summed[hits] >> np.uint32(24)


@cache
def _ball(width: int, radius: int) -> int:
    """How many ``width``-bit values lie within ``radius`` of a given one."""
    return sum(math.comb(width, k) for k in range(min(radius, width) + 1)) if radius >= 0 else 0


@cache
def _ball_masks(width: int, radius: int) -> _Int64s:
    """The XOR masks of all ``width``-bit values within ``radius`` of zero."""
    values = np.arange(1 << width, dtype=np.int64)
    weight = np.bitwise_count(values)
    masks = values[weight <= radius]
    masks = masks[np.argsort(weight[masks], kind="stable")]
    masks.setflags(write=False)  # shared by every plan through the cache
    return masks


def _merge(found: list[_Matches]) -> _Matches:
    """Deduplicate matches and sort them by query, distance, position."""
    if not found:
        return _nothing()
    query = np.concatenate([f[0] for f in found])
    position = np.concatenate([f[1] for f in found])
    dist = np.concatenate([f[2] for f in found]).astype(np.int64)
    if not len(query):
        return _nothing()
    span = int(position.max()) + 1
    key = np.unique((query * (MAX_DISTANCE + 1) + dist) * span + position)
    rest, pos = np.divmod(key, span)
    q, d = np.divmod(rest, MAX_DISTANCE + 1)
    return q.astype(np.intp), pos.astype(np.intp), d.astype(np.uint16)


def _nothing() -> _Matches:
    none = np.zeros(0, dtype=np.intp)
    return none, none.copy(), np.zeros(0, dtype=np.uint16)


def _check_words(words: _Words, name: str) -> _Words:
    a = np.asarray(words)
    if a.ndim != 2 or a.shape[1] != PDQ_WORDS or a.dtype != np.uint64:
        raise ValueError(
            f"{name} must be an (N, 4) array of uint64 words (see liaison.pdq.words_from_hex), "
            f"got shape {a.shape} of {a.dtype}"
        )
    return a


def _check_distance(max_distance: int) -> int:
    if isinstance(max_distance, bool) or not isinstance(max_distance, int | np.integer):
        raise ValueError(f"max_distance must be an integer within 0..64, got {max_distance!r}")
    t = int(max_distance)
    if not 0 <= t <= MAX_DISTANCE:
        raise ValueError(f"max_distance must be within 0..{MAX_DISTANCE}, got {t}")
    return t


# -- keyed pairs ------------------------------------------------------------------


def locate(index: PdqIndex, keys: _Int64s, words: _Words) -> _Int64s:
    """Where each (key, hash) pair is held in a keyed ``index``; -1 where it is not."""
    held = keys_of(index)
    found = np.full(len(keys), -1, dtype=np.int64)
    if not len(keys) or not index.size:
        return found
    lo = np.searchsorted(held, keys, side="left")
    hi = np.searchsorted(held, keys, side="right")
    runs = hi - lo
    one = np.flatnonzero(runs == 1)
    at = lo[one]
    same = (np.take(index.words, at, axis=0) == words[one]).all(axis=1)
    found[one[same]] = at[same]
    # A key held by several pairs (a key column that is not unique): compare each.
    for i in np.flatnonzero(runs > 1).tolist():
        rows = np.asarray(index.words[lo[i] : hi[i]])
        match = np.flatnonzero((rows == words[i]).all(axis=1))
        if len(match):
            found[i] = lo[i] + int(match[0])
    return found


def distinct_pairs(keys: _Int64s, words: _Words) -> tuple[_Int64s, _Words]:
    """The distinct (key, hash) pairs, sorted by key, then hash."""
    if not len(keys):
        return keys.astype(np.int64), words.reshape(-1, PDQ_WORDS)
    if not bool((keys[1:] >= keys[:-1]).all()):
        by = np.argsort(keys, kind="stable")
        keys, words = keys[by], np.take(words, by, axis=0)
    same = keys[1:] == keys[:-1]
    if not same.any():
        return keys, words  # unique keys (a primary key): nothing to compare
    # Only runs of one key need their hashes sorted and compared.
    tied = np.zeros(len(keys), dtype=bool)
    tied[1:] = same
    tied[:-1] |= same
    at = np.flatnonzero(tied)
    group = np.take(words, at, axis=0)
    by = np.lexsort((group[:, 3], group[:, 2], group[:, 1], group[:, 0], keys[at]))
    words = words.copy()
    words[at] = group[by]
    fresh = np.ones(len(keys), dtype=bool)
    fresh[1:] = ~same | (words[1:] != words[:-1]).any(axis=1)
    return keys[fresh], words[fresh]


def _positions(index: PdqIndex, keys: _Int64s) -> _IntPs:
    """Positions of every pair whose key is one of ``keys``."""
    held = keys_of(index)
    lo = np.searchsorted(held, keys, side="left")
    hi = np.searchsorted(held, keys, side="right")
    lengths = (hi - lo).astype(np.int64)
    return _expand(lo.astype(np.uint32), lengths, int(lengths.sum()))


@dataclass(frozen=True, slots=True)
class Found:
    """Matches of a :meth:`LiveIndex.search_many`: one entry per (query, pair)."""

    query: _IntPs
    keys: _Int64s
    words: _Words
    distance: _Distances


@dataclass(frozen=True, slots=True)
class _View:
    """What a search reads: replaced whole by the writer, never changed but for ``dead``."""

    base: PdqIndex
    # Tombstones over ``base``: the writer sets them in place (a reader seeing
    # one a moment early or late is harmless: matches are re-checked in SQL).
    dead: _Bools
    delta: PdqIndex
    dead_count: int


@dataclass(frozen=True, slots=True)
class Compaction:
    """What a compaction started from (see :meth:`LiveIndex.finish_compaction`)."""

    view: _View
    dead: _Bools  # a copy of the tombstones when it started


class LiveIndex:
    """A keyed segment (usually memory-mapped), a small delta of pairs added, tombstones.

    Queries call :meth:`search_many` from any thread; one writer calls
    :meth:`update` and the compaction methods. Readers never wait: the writer
    prepares a new delta, then swaps a new view in with one assignment.
    """

    def __init__(
        self,
        base: PdqIndex,
        *,
        dead: _Bools | None = None,
        delta: PdqIndex | None = None,
    ) -> None:
        if base.keys is None:
            raise ValueError("a LiveIndex needs a keyed base (PdqIndex.build(..., keys=...))")
        if dead is None:
            dead = np.zeros(base.size, dtype=bool)
        elif dead.shape != (base.size,):
            raise ValueError(f"tombstones cover {len(dead)} pairs, the base holds {base.size}")
        delta = _empty_keyed() if delta is None else delta
        self._view = _View(base, dead, delta, int(dead.sum()))

    @property
    def base(self) -> PdqIndex:
        return self._view.base

    @property
    def delta_size(self) -> int:
        return self._view.delta.size

    @property
    def dead_count(self) -> int:
        return self._view.dead_count

    @property
    def size(self) -> int:
        """Pairs held and not removed."""
        view = self._view
        return view.base.size - view.dead_count + view.delta.size

    @property
    def nbytes(self) -> int:
        view = self._view
        return view.base.nbytes + view.dead.nbytes + view.delta.nbytes

    def search_many(self, queries: _Words, max_distance: int) -> Found:
        """Every live pair within ``max_distance`` of any of ``queries``."""
        view = self._view
        parts = []
        for index, dead in ((view.base, view.dead), (view.delta, None)):
            query, position, dist = index.search_many(queries, max_distance)
            if dead is not None and view.dead_count and len(position):
                live = ~dead[position]
                query, position, dist = query[live], position[live], dist[live]
            parts.append(
                Found(
                    query,
                    np.take(keys_of(index), position),
                    np.take(index.words, position, axis=0),
                    dist,
                )
            )
        return Found(
            np.concatenate([p.query for p in parts]),
            np.concatenate([p.keys for p in parts]),
            np.concatenate([p.words for p in parts]),
            np.concatenate([p.distance for p in parts]),
        )

    def pairs_in_range(self, after: int | None, upto: int | None) -> tuple[_Int64s, _Words]:
        """Live pairs with ``after < key <= upto`` (None: unbounded), sorted by key."""
        view = self._view
        keys, words = [], []
        for index, dead in ((view.base, view.dead), (view.delta, None)):
            held = keys_of(index)
            lo = 0 if after is None else int(np.searchsorted(held, after, side="right"))
            hi = index.size if upto is None else int(np.searchsorted(held, upto, side="right"))
            k = np.asarray(held[lo:hi])
            w = np.asarray(index.words[lo:hi])
            if dead is not None and view.dead_count:
                live = ~dead[lo:hi]
                k, w = k[live], w[live]
            keys.append(k)
            words.append(w)
        return _sorted_pairs(np.concatenate(keys), np.concatenate(words))

    def pairs_for_keys(self, keys: _Int64s) -> tuple[_Int64s, _Words]:
        """Live pairs whose key is one of ``keys`` (distinct), sorted by key."""
        view = self._view
        wanted = np.unique(np.asarray(keys, dtype=np.int64))
        out_k, out_w = [], []
        for index, dead in ((view.base, view.dead), (view.delta, None)):
            at = _positions(index, wanted)
            if dead is not None and view.dead_count:
                at = at[~dead[at]]
            out_k.append(np.take(keys_of(index), at))
            out_w.append(np.take(index.words, at, axis=0))
        return _sorted_pairs(np.concatenate(out_k), np.concatenate(out_w))

    def update(
        self,
        add: tuple[_Int64s, _Words] | None = None,
        remove: tuple[_Int64s, _Words] | None = None,
    ) -> tuple[int, int]:
        """Remove pairs, then add pairs (writer only). Returns (added, removed).

        Removing a pair not held, or adding one already held, does nothing.
        """
        view = self._view
        delta = view.delta
        dead = view.dead
        dead_count = view.dead_count
        removed = 0
        keep_delta: _Bools | None = None
        if remove is not None and len(remove[0]):
            rk, rw = remove
            in_base = locate(view.base, rk, rw)
            live_in_base = np.zeros(len(rk), dtype=bool)
            live_in_base[in_base >= 0] = ~dead[in_base[in_base >= 0]]
            hit = in_base[live_in_base]
            dead[hit] = True
            dead_count += len(hit)
            removed += len(hit)
            # A pair removed from the base and added again lives in the delta.
            in_delta = locate(delta, rk[~live_in_base], rw[~live_in_base])
            in_delta = in_delta[in_delta >= 0]
            if len(in_delta):
                keep_delta = np.ones(delta.size, dtype=bool)
                keep_delta[in_delta] = False
                removed += len(in_delta)
        added = 0
        new_k: _Int64s = np.zeros(0, dtype=np.int64)
        new_w: _Words = np.zeros((0, PDQ_WORDS), dtype=np.uint64)
        if add is not None and len(add[0]):
            ak, aw = distinct_pairs(*add)
            in_base = locate(view.base, ak, aw)
            live_in_base = np.zeros(len(ak), dtype=bool)
            live_in_base[in_base >= 0] = ~dead[in_base[in_base >= 0]]
            in_delta = locate(delta, ak, aw)
            kept_in_delta = in_delta >= 0
            if keep_delta is not None:
                kept_in_delta[kept_in_delta] = keep_delta[in_delta[kept_in_delta]]
            fresh = ~live_in_base & ~kept_in_delta
            new_k, new_w = ak[fresh], aw[fresh]
            added = len(new_k)
        if keep_delta is not None or added:
            old_k, old_w = keys_of(delta), delta.words
            if keep_delta is not None:
                old_k, old_w = old_k[keep_delta], old_w[keep_delta]
            delta = _keyed(np.concatenate([old_k, new_k]), np.concatenate([old_w, new_w]))
        if delta is not view.delta or dead_count != view.dead_count:
            self._view = _View(view.base, dead, delta, dead_count)
        return added, removed

    def journal(self) -> dict[str, npt.NDArray[Any]]:
        """The delta and tombstones as arrays, for :meth:`restore` after a restart."""
        view = self._view
        return {
            "delta_keys": np.asarray(keys_of(view.delta)),
            "delta_words": np.asarray(view.delta.words),
            "dead": np.flatnonzero(view.dead).astype(np.int64),
        }

    @classmethod
    def restore(cls, base: PdqIndex, journal: Mapping[str, npt.NDArray[Any]]) -> LiveIndex:
        """A LiveIndex over ``base`` with a :meth:`journal`'s delta and tombstones."""
        dead = np.zeros(base.size, dtype=bool)
        positions = np.asarray(journal["dead"], dtype=np.int64)
        if len(positions) and (positions.min() < 0 or positions.max() >= base.size):
            raise SegmentError("the journal's tombstones lie outside its segment")
        dead[positions] = True
        delta = _keyed(
            np.asarray(journal["delta_keys"], dtype=np.int64),
            _check_words(np.asarray(journal["delta_words"]), "journal words"),
        )
        return cls(base, dead=dead, delta=delta)

    def start_compaction(self) -> Compaction:
        """Note what a compaction starts from (see :func:`compact`)."""
        view = self._view
        return Compaction(view, view.dead.copy())

    def finish_compaction(self, started: Compaction, merged: PdqIndex) -> None:
        """Serve ``merged`` (``started``'s base and delta, compacted) from now on.

        What changed since the compaction started is carried over: pairs
        removed since are tombstoned in ``merged``, pairs added since form
        the new delta.
        """
        now = self._view
        if now.base is not started.view.base:
            raise ValueError("the index changed base since this compaction started")
        gone = np.flatnonzero(now.dead & ~started.dead)
        gone_k = np.take(keys_of(now.base), gone)
        gone_w = np.take(now.base.words, gone, axis=0)
        then, delta = started.view.delta, now.delta
        then_k, delta_k = keys_of(then), keys_of(delta)
        left_delta = locate(delta, then_k, then.words) < 0
        since = locate(then, delta_k, delta.words) < 0
        dead = np.zeros(merged.size, dtype=bool)
        kill_k = np.concatenate([gone_k, then_k[left_delta]])
        kill_w = np.concatenate([gone_w, then.words[left_delta]])
        at = locate(merged, kill_k, kill_w)
        dead[at[at >= 0]] = True
        new_delta = _keyed(delta_k[since], delta.words[since])
        self._view = _View(merged, dead, new_delta, int(dead.sum()))


def keys_of(index: PdqIndex) -> _Int64s:
    """The keys of a keyed index."""
    if index.keys is None:
        raise ValueError("this index holds distinct hashes, not keyed pairs")
    return index.keys


def _sorted_pairs(keys: _Int64s, words: _Words) -> tuple[_Int64s, _Words]:
    by = np.argsort(keys, kind="stable")
    return keys[by], np.take(words, by, axis=0).reshape(-1, PDQ_WORDS)


def _keyed(keys: _Int64s, words: _Words) -> PdqIndex:
    return PdqIndex.build(words.reshape(-1, PDQ_WORDS), keys=keys)


def _empty_keyed() -> PdqIndex:
    return _keyed(np.zeros(0, dtype=np.int64), np.zeros((0, PDQ_WORDS), dtype=np.uint64))


# -- segments on disk ----------------------------------------------------------------


class SegmentError(LiaisonError):
    """A persisted index segment or journal is unusable (corrupt, stale, other format).

    Internal to the node: node.near logs why and rebuilds from the database.
    """


class _CrcWriter:
    """A file being written, with the CRC-32 and size of everything written so far."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fh: IO[bytes] = open(path, "wb")  # noqa: SIM115  # closed in close()
        self.crc = 0
        self.size = 0

    def write(self, data: Any) -> int:
        view = memoryview(data).cast("B")
        self.crc = zlib.crc32(view, self.crc)
        self.size += len(view)
        return self._fh.write(view)

    def close(self) -> None:
        self._fh.flush()
        os.fsync(self._fh.fileno())
        self._fh.close()


def _npy(path: Path, dtype: str, shape: tuple[int, ...]) -> _CrcWriter:
    """An .npy file of ``shape``, its header written; the data is written next."""
    out = _CrcWriter(path)
    header = {"descr": dtype, "fortran_order": False, "shape": shape}
    np.lib.format.write_array_header_1_0(out, header)
    return out


def write_segment(
    folder: Path,
    pairs: Iterable[tuple[_Int64s, _Words]],
    count: int,
    *,
    meta: Mapping[str, Any],
    layout: Layout | None = None,
) -> dict[str, Any]:
    """Write ``count`` (key, hash) pairs, given in key order in chunks, as a segment.

    The files are written into ``folder``.tmp, fsynced, and the folder is
    renamed to ``folder`` only when complete, so a crash leaves either no
    segment or a whole one. ``meta`` goes into the manifest as it is (what the
    segment covers). Returns the manifest. Memory: one chunk of pairs, then
    a few arrays of ``count`` small integers for one substring at a time.
    """
    layout = _default_layout(count) if layout is None else layout
    _check_layout(layout)
    _check_size(count, layout)
    tmp = folder.with_name(folder.name + ".tmp")
    tmp.mkdir(parents=True, exist_ok=False)
    keys = _npy(tmp / "keys.npy", "<i8", (count,))
    words = _npy(tmp / "words.npy", "<u8", (count, PDQ_WORDS))
    written = 0
    last: int | None = None
    for k, w in pairs:
        if not len(k):
            continue
        if last is not None and int(k[0]) < last:
            raise ValueError("write_segment needs pairs in key order")
        last = int(k[-1])
        keys.write(np.ascontiguousarray(k, dtype="<i8"))
        words.write(np.ascontiguousarray(w, dtype="<u8"))
        written += len(k)
    keys.close()
    words.close()
    if written != count:
        raise ValueError(f"write_segment was promised {count} pairs and given {written}")
    table_size = _table_offsets(layout)[-1]
    order = _npy(tmp / "order.npy", "<u4", (len(layout) * count,))
    starts = _npy(tmp / "starts.npy", "<u4", (table_size,))
    stored = _load(tmp / "words.npy", (count, PDQ_WORDS), "<u8")

    def column(w: int) -> _Words:
        return np.ascontiguousarray(stored[:, w])

    for table, sorted_positions in _substring_tables(column, count, layout, direct=False):
        starts.write(table)
        if sorted_positions is not None:
            order.write(sorted_positions)
    order.close()
    starts.close()
    manifest = {
        "format": FORMAT,
        "entries": count,
        "layout": [list(s) for s in layout],
        "files": {
            name: {"bytes": f.size, "crc32": f.crc}
            for name, f in zip(_FILES, (keys, words, order, starts), strict=True)
        },
        "written_at": time.time(),
        **meta,
    }
    _write_json(tmp / MANIFEST, manifest)
    _fsync_dir(tmp)
    os.replace(tmp, folder)
    _fsync_dir(folder.parent)
    return manifest


def write_segment_from(folder: Path, index: PdqIndex, *, meta: Mapping[str, Any]) -> dict[str, Any]:
    """Write a keyed in-memory index as a segment (see :func:`write_segment`)."""
    keys, words = keys_of(index), index.words
    chunks = (
        (keys[lo : lo + _WRITE_CHUNK], words[lo : lo + _WRITE_CHUNK])
        for lo in range(0, index.size, _WRITE_CHUNK)
    )
    return write_segment(folder, chunks, index.size, meta=meta, layout=index.layout)


def read_manifest(folder: Path) -> dict[str, Any]:
    """The segment's manifest, or SegmentError saying why it cannot be used."""
    try:
        manifest = json.loads((folder / MANIFEST).read_text())
    except FileNotFoundError:
        raise SegmentError(f"no {MANIFEST} in {folder}") from None
    except (OSError, ValueError) as exc:
        raise SegmentError(f"{folder / MANIFEST} is unreadable ({type(exc).__name__})") from None
    if not isinstance(manifest, dict):
        raise SegmentError(f"{folder / MANIFEST} is not a JSON object")
    if manifest.get("format") != FORMAT:
        raise SegmentError(
            f"segment format {manifest.get('format')!r}, this node reads format {FORMAT}"
        )
    try:
        entries = int(manifest["entries"])
        layout = tuple((int(s), int(b)) for s, b in manifest["layout"])
        files = {name: (int(f["bytes"]), int(f["crc32"])) for name, f in manifest["files"].items()}
    except (KeyError, TypeError, ValueError):
        raise SegmentError(f"{folder / MANIFEST} lacks entries, layout or files") from None
    try:
        _check_layout(layout)
    except ValueError as exc:
        raise SegmentError(f"{folder / MANIFEST}: {exc}") from None
    if entries < 0 or sorted(files) != sorted(_FILES):
        raise SegmentError(f"{folder / MANIFEST}: bad entry count or file list")
    return manifest


def open_segment(folder: Path) -> tuple[PdqIndex, dict[str, Any]]:
    """Map a segment's files (read-only, shared with the page cache) as a keyed index.

    Checks what is cheap to check (manifest, format, file sizes, shapes, the
    ends of the bucket tables); :func:`verify_segment` reads every byte.
    Raises SegmentError saying what is wrong.
    """
    manifest = read_manifest(folder)
    n = int(manifest["entries"])
    layout: Layout = tuple((int(s), int(b)) for s, b in manifest["layout"])
    for name, info in manifest["files"].items():
        path = folder / f"{name}.npy"
        try:
            size = path.stat().st_size
        except OSError:
            raise SegmentError(f"{path} is missing") from None
        if size != int(info["bytes"]):
            raise SegmentError(f"{path} has {size} bytes, its manifest says {info['bytes']}")
    table_size = _table_offsets(layout)[-1]
    keys = _load(folder / "keys.npy", (n,), "<i8")
    words = _load(folder / "words.npy", (n, PDQ_WORDS), "<u8")
    order = _load(folder / "order.npy", (len(layout) * n,), "<u4")
    starts = _load(folder / "starts.npy", (table_size,), "<u4")
    offsets = _table_offsets(layout)
    for j in range(len(layout)):
        first, end = int(starts[offsets[j]]), int(starts[offsets[j + 1] - 1])
        if (first, end) != (j * n, (j + 1) * n):
            raise SegmentError(f"{folder}: bucket table {j} does not span its order array")
    if n > 1 and int(keys[0]) > int(keys[-1]):
        raise SegmentError(f"{folder}: keys are not sorted")
    index = PdqIndex(
        words=words, order=order, starts=starts, layout=layout, keys=keys, direct=False
    )
    return index, manifest


def touch_pages(index: PdqIndex, *, still_wanted: Callable[[], bool] = lambda: True) -> None:
    """Read one byte of every page of a mapped index, so queries do not wait for page faults.

    A freshly mapped segment is in the page cache but not yet in this
    process's page tables: the first queries would each fault in thousands of
    pages. Reads a chunk at a time and stops once ``still_wanted()`` is false.
    """
    arrays = [index.words, index.keys, index._order, index._starts]
    for array in arrays:
        if not isinstance(array, np.memmap) or not array.size:
            continue
        flat = array.reshape(-1).view(np.uint8)
        step = 64 << 20
        for lo in range(0, len(flat), step):
            if not still_wanted():
                return
            int(flat[lo : lo + step : 4096].sum())


def verify_segment(folder: Path, manifest: Mapping[str, Any]) -> None:
    """Read every byte of the segment's files and check their CRC-32s; SegmentError if not."""
    buffer = bytearray(1 << 22)
    view = memoryview(buffer)
    for name, info in manifest["files"].items():
        path = folder / f"{name}.npy"
        crc = 0
        try:
            with open(path, "rb", buffering=0) as fh:
                while got := fh.readinto(buffer):
                    crc = zlib.crc32(view[:got], crc)
        except OSError as exc:
            raise SegmentError(f"{path} cannot be read ({type(exc).__name__})") from None
        if crc != int(info["crc32"]):
            raise SegmentError(
                f"{path} is corrupt (CRC-32 {crc:08x}, manifest {info['crc32']:08x})"
            )


def _load(path: Path, shape: tuple[int, ...], dtype: str) -> npt.NDArray[Any]:
    try:
        array = np.load(path, mmap_mode="r" if math.prod(shape) else None, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise SegmentError(f"{path} is not a readable array ({type(exc).__name__})") from None
    if array.shape != shape or array.dtype != np.dtype(dtype):
        raise SegmentError(f"{path} holds {array.shape} of {array.dtype}, expected {shape} {dtype}")
    loaded: npt.NDArray[Any] = array
    return loaded


def _write_json(path: Path, doc: Mapping[str, Any]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as fh:
        json.dump(doc, fh, sort_keys=True)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# -- compaction ----------------------------------------------------------------------


def compact(
    base_folder: Path,
    dead: _Bools,
    delta: PdqIndex,
    out: Path,
    *,
    meta: Mapping[str, Any],
) -> dict[str, Any]:
    """Merge a segment (less its tombstoned pairs) with a delta into a new segment ``out``.

    Streams: the segment is read a chunk at a time in key order and the
    delta's pairs are merged in, so memory stays at a chunk plus one
    substring's arrays however large the segment (see :func:`write_segment`).
    """
    base, _ = open_segment(base_folder)
    if dead.shape != (base.size,):
        raise ValueError(f"tombstones cover {len(dead)} pairs, the segment holds {base.size}")
    count = base.size - int(dead.sum()) + delta.size
    return write_segment(out, _merged(base, dead, delta), count, meta=meta)


def _merged(base: PdqIndex, dead: _Bools, delta: PdqIndex) -> Iterator[tuple[_Int64s, _Words]]:
    """The live pairs of ``base`` and all of ``delta``, in key order, a chunk at a time."""
    base_keys, delta_keys = keys_of(base), keys_of(delta)
    n = base.size
    taken = 0
    for lo in range(0, n, _WRITE_CHUNK):
        hi = min(n, lo + _WRITE_CHUNK)
        live = ~dead[lo:hi]
        k = np.asarray(base_keys[lo:hi])[live]
        w = np.asarray(base.words[lo:hi])[live]
        upto = delta.size if hi == n else int(np.searchsorted(delta_keys, base_keys[hi], "left"))
        if upto > taken:
            k = np.concatenate([k, delta_keys[taken:upto]])
            w = np.concatenate([w, delta.words[taken:upto]])
            by = np.argsort(k, kind="stable")
            k, w = k[by], np.take(w, by, axis=0)
            taken = upto
        yield k, w
    if taken < delta.size:
        yield np.asarray(delta_keys[taken:]), np.asarray(delta.words[taken:])


class CompactionJob:
    """:func:`compact` running in a child process (large segments) or a thread (small ones)."""

    def __init__(
        self,
        base_folder: Path,
        started: Compaction,
        out: Path,
        *,
        meta: Mapping[str, Any],
        on_done: Callable[[], None] | None = None,
    ) -> None:
        self.started: Compaction | None = started  # None once handed over (see release)
        self.out = out
        self.error: str | None = None
        self.manifest: dict[str, Any] | None = None
        self._on_done = on_done
        self._done = False
        view = started.view
        size = view.base.size + view.delta.size
        args = (base_folder, started.dead, view.delta, out, dict(meta))
        self._proc: subprocess.Popen[bytes] | None = None
        if size >= CHILD_FROM:
            self._thread = threading.Thread(
                target=self._child, args=args, name="pdq-compact", daemon=True
            )
        else:
            self._thread = threading.Thread(
                target=self._here, args=args, name="pdq-compact", daemon=True
            )
        self._thread.start()

    @property
    def done(self) -> bool:
        return self._done

    def wait(self, timeout: float | None = None) -> bool:
        self._thread.join(timeout)
        return self._done

    def release(self) -> Compaction:
        """What the compaction started from, for :meth:`LiveIndex.finish_compaction`.

        The job then holds no view of the old segment, so the segment can be
        unmapped as soon as the index lets it go.
        """
        started = self.started
        if started is None:
            raise ValueError("this compaction was already handed over")
        self.started = None
        return started

    def cancel(self) -> None:
        proc = self._proc
        if proc is not None and proc.poll() is None:
            proc.terminate()

    def _here(
        self, base: Path, dead: _Bools, delta: PdqIndex, out: Path, meta: dict[str, Any]
    ) -> None:
        try:
            self.manifest = compact(base, dead, delta, out, meta=meta)
        except (OSError, ValueError, SegmentError) as exc:
            self.error = f"{type(exc).__name__}: {exc}"
        self._finish()

    def _child(
        self, base: Path, dead: _Bools, delta: PdqIndex, out: Path, meta: dict[str, Any]
    ) -> None:
        job = out.with_name(out.name + ".job.npz")
        try:
            with open(job, "wb") as fh:
                np.savez(
                    fh,
                    dead=np.packbits(dead),
                    size=np.array([len(dead)]),
                    delta_keys=np.asarray(keys_of(delta)),
                    delta_words=np.asarray(delta.words),
                )
            spec = json.dumps({"base": str(base), "job": str(job), "out": str(out), "meta": meta})
            self._proc = subprocess.Popen(
                [sys.executable, "-c", "from node.pdq_index import compact_main; compact_main()"],
                stdin=subprocess.PIPE,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                cwd=Path(__file__).resolve().parents[1],
            )
            _, err = self._proc.communicate(spec.encode())
            if self._proc.returncode != 0:
                last = err.decode(errors="replace").strip().splitlines()[-1:] or ["no output"]
                self.error = f"exit status {self._proc.returncode}: {last[0][:300]}"
            else:
                self.manifest = read_manifest(out)
        except (OSError, SegmentError) as exc:
            self.error = f"{type(exc).__name__}: {exc}"
        finally:
            job.unlink(missing_ok=True)
        self._finish()

    def _finish(self) -> None:
        self._done = True
        if self._on_done is not None:
            self._on_done()


def compact_main() -> None:
    """Entry of a compaction child: a JSON spec on standard input (see CompactionJob)."""
    spec = json.loads(sys.stdin.read())
    parent = os.getppid()
    # Queries come first: the scheduler gives this merge what the node leaves.
    os.nice(10)
    with np.load(spec["job"], allow_pickle=False) as job:
        dead = np.unpackbits(job["dead"], count=int(job["size"][0])).astype(bool)
        delta = _keyed(job["delta_keys"], job["delta_words"])
    if os.getppid() != parent:
        sys.exit(3)  # the node went away; nobody will use the segment
    compact(Path(spec["base"]), dead, delta, Path(spec["out"]), meta=spec["meta"])
