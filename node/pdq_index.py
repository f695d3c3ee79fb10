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
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cache

import numpy as np
import numpy.typing as npt

from liaison.hashing.pdq import MAX_DISTANCE, PDQ_WORDS, hex_from_words

# Substrings as (word, shift, width), in the order the index numbers them.
# Substring 0 must be the top bits of word 0: sorting the hashes then sorts
# them by substring 0 too, and its buckets are runs of ``words``.
Layout = tuple[tuple[int, int, int], ...]
LAYOUT_16X16: Layout = tuple((j // 4, 48 - 16 * (j % 4), 16) for j in range(16))
LAYOUT_12X21: Layout = tuple((j // 3, (43, 22, 0)[j % 3], (21, 21, 22)[j % 3]) for j in range(12))
# Wide substrings mean far fewer candidates but 134 MB of bucket tables and
# more probes: measured at t=31, they break even at half a million hashes
# and are 1.6 times faster at a million, 3.7 times at 2.7 million.
_WIDE_FROM = 1_000_000
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

_Int64s = npt.NDArray[np.int64]
_IntPs = npt.NDArray[np.intp]
_UInt32s = npt.NDArray[np.uint32]
_Words = npt.NDArray[np.uint64]
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
    """An immutable, exact index of distinct PDQ hashes (see the module docstring)."""

    words: _Words

    def __init__(self, *, words: _Words, order: _UInt32s, starts: _UInt32s, layout: Layout) -> None:
        """Use :meth:`build`; this takes arrays already laid out by it."""
        for array in (words, order, starts):
            array.setflags(write=False)
        self.words = words
        self._order = order
        self._starts = starts
        self._layout = layout
        self._plans: dict[int, _Plan] = {}
        self._sub_word = np.array([w for w, _, _ in layout], dtype=np.intp)
        self._sub_shift = np.array([s for _, s, _ in layout], dtype=np.uint64)
        self._sub_mask = np.array([(1 << b) - 1 for _, _, b in layout], dtype=np.uint64)

    @classmethod
    def build(cls, words: _Words, *, layout: Layout | None = None) -> PdqIndex:
        """Index the rows of ``words`` (``(N, 4)`` uint64); duplicate rows are kept once.

        ``layout`` chooses the substrings; by default it is 16 of 16 bits for
        fewer than a million hashes and 12 of 21 or 22 bits from there.
        """
        rows = _distinct_sorted(_check_words(words, "words"))
        n = len(rows)
        if layout is None:
            layout = LAYOUT_12X21 if n >= _WIDE_FROM else LAYOUT_16X16
        _check_layout(layout)
        if n >= 2**32 // len(layout):
            raise ValueError(f"too many hashes for one index ({n}); split the register")
        order = np.empty((len(layout) - 1) * n, dtype=np.uint32)
        offsets = _table_offsets(layout)
        starts = np.zeros(offsets[-1], dtype=np.uint32)
        for j, (word, shift, width) in enumerate(layout):
            key = _substring(rows[:, word], shift, width)
            table = starts[offsets[j] : offsets[j + 1]]
            np.cumsum(np.bincount(key, minlength=1 << width), out=table[1:])
            if j > 0:
                table += np.uint32((j - 1) * n)
                _stable_argsort(key, width, out=order[(j - 1) * n : j * n])
        return cls(words=rows, order=order, starts=starts, layout=layout)

    @property
    def size(self) -> int:
        """The number of distinct hashes held."""
        return len(self.words)

    @property
    def nbytes(self) -> int:
        """Bytes held by the index's arrays."""
        return self.words.nbytes + self._order.nbytes + self._starts.nbytes

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
        widths = [b for _, _, b in self._layout]
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
            direct=len(masks[0]),
        )

    def _probe(self, qs: _Words, first: int, plan: _Plan, t: int) -> list[_Matches]:
        """Search ``qs`` (numbered from ``first``) by probing their buckets."""
        bits = (np.take(qs, self._sub_word, axis=1) >> self._sub_shift) & self._sub_mask
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


def _table_offsets(layout: Layout) -> list[int]:
    """Where each substring's bucket table starts in the concatenated tables."""
    offsets = [0]
    for _, _, width in layout:
        offsets.append(offsets[-1] + (1 << width) + 1)
    return offsets


def _check_layout(layout: Layout) -> None:
    bits = np.zeros(PDQ_WORDS * 64, dtype=np.int64)
    for word, shift, width in layout:
        if not (0 <= word < PDQ_WORDS and 1 <= width <= 24 and 0 <= shift <= 64 - width):
            raise ValueError(f"bad substring {(word, shift, width)} in layout")
        bits[word * 64 + 64 - shift - width : word * 64 + 64 - shift] += 1
    if not (bits == 1).all() or layout[0][:2] != (0, 64 - layout[0][2]):
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


def _substring(word: _Words, shift: int, width: int) -> npt.NDArray[np.uint16 | np.uint32]:
    bits = word >> np.uint64(shift)
    bits &= np.uint64((1 << width) - 1)
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
