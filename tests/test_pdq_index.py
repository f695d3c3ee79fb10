"""The PDQ index answers exactly what a brute-force scan answers.

Every search is checked against np.bitwise_count over all stored hashes: every
hash within the threshold is found, none beyond it, with its distance, in
(distance, position) order. Every substring layout and both search paths
(multi-index probing and the linear scan) are run.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from unittest import mock

import numpy as np
import numpy.typing as npt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from liaison.demo.pdq_data import near, random_hashes, synthetic_hashes
from liaison.errors import InvalidValue
from liaison.hashing.pdq import (
    DEFAULT_DISTANCE,
    MAX_DISTANCE,
    PDQ_HEX_DIGITS,
    distances,
    hex_from_words,
    words_from_hex,
)
from node import pdq_index
from node.pdq_index import LAYOUT_11X23, LAYOUT_12X21, LAYOUT_16X16, Layout, PdqIndex

Words = npt.NDArray[np.uint64]
THRESHOLDS = (0, 1, 15, 16, 17, 31, 32, 47, 48, 63, 64)
LAYOUTS = {"16x16": LAYOUT_16X16, "12x21": LAYOUT_12X21}
# Substrings spanning two words; its bucket tables take 470 MB, so it has a test of its own.
WIDEST = {"11x23": LAYOUT_11X23}


def brute_force(words: Words, query: Words, t: int) -> tuple[np.ndarray, np.ndarray]:
    """Positions within ``t`` of ``query`` and their distances, by distance then position."""
    dist = np.bitwise_count(words ^ query).sum(axis=1)
    hits = np.flatnonzero(dist <= t)
    ranked = hits[np.lexsort((hits, dist[hits]))]
    return ranked, dist[ranked]


def assert_exact(index: PdqIndex, query: Words, t: int) -> None:
    positions, dists = index.search(query, t)
    want_positions, want_dists = brute_force(index.words, query, t)
    assert positions.dtype == np.intp and dists.dtype == np.uint16
    assert positions.tolist() == want_positions.tolist(), f"t={t}"
    assert dists.tolist() == want_dists.tolist(), f"t={t}"


@contextmanager
def search_path(path: str) -> Iterator[None]:
    """Force the linear scan ("scan"), force probing ("mih"), or let the index choose."""
    cost = {"scan": 0.0, "mih": float("inf")}.get(path)
    if cost is None:
        yield
        return
    with mock.patch.object(pdq_index, "_SCAN_COST", cost):
        yield


@pytest.fixture(scope="module")
def register() -> Words:
    # Structured: half the hashes are series of near-duplicates.
    return synthetic_hashes(50_000, seed=20260401)


@pytest.fixture(scope="module", params=list(LAYOUTS))
def layout(request: pytest.FixtureRequest) -> Layout:
    return LAYOUTS[request.param]


@pytest.fixture(scope="module")
def index(register: Words, layout: Layout) -> PdqIndex:
    return PdqIndex.build(register, layout=layout)


def spread(row: Words, flips: int, layout: Layout, rng: np.random.Generator) -> Words:
    """``row`` with ``flips`` bits flipped, spread as evenly as possible over the
    layout's substrings: the hardest case for the pigeonhole argument."""
    per = np.full(len(layout), flips // len(layout))
    per[rng.permutation(len(layout))[: flips % len(layout)]] += 1
    mask = np.zeros(4, dtype=np.uint64)
    for (start, width), k in zip(layout, per, strict=True):
        for bit in rng.choice(width, size=int(k), replace=False):
            word, at = divmod(start + int(bit), 64)  # bits numbered from the top of word 0
            mask[word] |= np.uint64(1) << np.uint64(63 - at)
    return row ^ mask


def queries_for(index: PdqIndex, t: int, rng: np.random.Generator) -> list[Words]:
    """Random hashes, stored ones, and hashes exactly t and t+1 bits from stored ones,
    some with the flips spread evenly over each layout's substrings."""
    stored = index.words[rng.integers(index.size, size=12)]
    out = [random_hashes(1, rng)[0], stored[0]]
    out += [near(row, t, rng) for row in stored[1:3]]
    out += [near(row, t + 1, rng) for row in stored[3:5]]
    out += [near(row, int(rng.integers(0, t + 1)), rng) for row in stored[5:6]]
    for row, layout in zip(stored[6:], [*LAYOUTS.values(), *WIDEST.values()] * 2, strict=True):
        out += [spread(row, t, layout, rng), spread(row, t + 1, layout, rng)]
    return out


# -- exactness -----------------------------------------------------------------


@pytest.mark.parametrize("path", ["auto", "mih", "scan"])
def test_search_equals_brute_force_on_structured_data(
    register: Words, layout: Layout, path: str
) -> None:
    rng = np.random.default_rng(7)
    with search_path(path):
        index = PdqIndex.build(register, layout=layout)
        for t in THRESHOLDS:
            for query in queries_for(index, t, rng):
                assert_exact(index, query, t)


def test_substrings_spanning_two_words_are_exact(register: Words) -> None:
    # 11 substrings of 23 and 24 bits: 3 of them span two words.
    rng = np.random.default_rng(8)
    with search_path("mih"):
        index = PdqIndex.build(register[:20_000], layout=LAYOUT_11X23)
        for t in (0, 21, 31, 32):
            for query in queries_for(index, t, rng):
                assert_exact(index, query, t)
    assert sum((s % 64) + b > 64 for s, b in LAYOUT_11X23) == 3


@pytest.mark.parametrize("t", THRESHOLDS)
def test_hash_at_exactly_t_is_found_and_at_t_plus_one_is_not(
    index: PdqIndex, layout: Layout, t: int
) -> None:
    rng = np.random.default_rng(t)
    for row in rng.integers(index.size, size=8):
        stored = index.words[row]
        for query in (near(stored, t, rng), spread(stored, t, layout, rng)):
            assert row in index.search(query, t)[0]
        for query in (near(stored, t + 1, rng), spread(stored, t + 1, layout, rng)):
            assert row not in index.search(query, t)[0]


@pytest.mark.parametrize("path", ["auto", "scan"])
def test_the_complement_of_a_hash_is_256_bits_away(path: str) -> None:
    rng = np.random.default_rng(16)
    stored = random_hashes(200, rng)
    with search_path(path):
        index = PdqIndex.build(stored)
        for t in (0, 31, 64):
            assert index.search(~stored[0], t)[0].tolist() == []
    assert distances(stored, ~stored[0])[0] == 256


def test_search_many_equals_each_search(index: PdqIndex) -> None:
    rng = np.random.default_rng(3)
    queries = np.array([q for t in (0, 16, 31, 40) for q in queries_for(index, t, rng)])
    for t in (0, 16, DEFAULT_DISTANCE, 40, 64):
        which, positions, dists = index.search_many(queries, t)
        for i, query in enumerate(queries):
            mine = which == i
            one_positions, one_dists = index.search(query, t)
            assert positions[mine].tolist() == one_positions.tolist()
            assert dists[mine].tolist() == one_dists.tolist()
        assert np.all(np.diff(which) >= 0)


def test_search_many_in_small_passes_gives_the_same_answer(index: PdqIndex) -> None:
    rng = np.random.default_rng(4)
    queries = np.array([q for t in (10, 31) for q in queries_for(index, t, rng)] * 5)
    whole = index.search_many(queries, DEFAULT_DISTANCE)
    with (
        mock.patch.object(pdq_index, "_PROBE_BUDGET", 1),
        mock.patch.object(pdq_index, "_CANDIDATE_BUDGET", 50),
    ):
        passes = index.search_many(queries, DEFAULT_DISTANCE)
    for i in range(3):
        assert whole[i].tolist() == passes[i].tolist()


def test_skewed_buckets_fall_back_to_a_scan_and_stay_exact() -> None:
    # Many hashes near all-zero: every substring's zero bucket is huge.
    rng = np.random.default_rng(5)
    zero = np.zeros(4, dtype=np.uint64)
    near_zero = np.array([near(zero, int(k), rng) for k in rng.integers(0, 24, size=3000)])
    index = PdqIndex.build(np.concatenate([near_zero, random_hashes(3000, rng)]))
    queries = np.array([zero, near(zero, 9, rng), random_hashes(1, rng)[0]])
    for t in (8, DEFAULT_DISTANCE):
        with mock.patch.object(
            PdqIndex, "_scan", autospec=True, side_effect=PdqIndex._scan
        ) as scan:
            which, positions, _ = index.search_many(queries, t)
        # Only the two queries near zero are scanned; the random one is probed.
        assert [call.args[2].tolist() for call in scan.call_args_list] == [[0, 1]]
        for i, query in enumerate(queries):
            assert_exact(index, query, t)
            assert positions[which == i].tolist() == brute_force(index.words, query, t)[0].tolist()


@st.composite
def clustered(draw: st.DrawFn) -> tuple[Words, Words]:
    """Hashes and a query, all a few bits from one base, so distances span 0..~80."""
    base = np.array(
        draw(st.lists(st.integers(0, 2**64 - 1), min_size=4, max_size=4)), dtype=np.uint64
    )
    flips = st.sets(st.integers(0, 255), max_size=40)

    def flipped(bits: set[int]) -> Words:
        mask = np.zeros(256, dtype=bool)
        mask[list(bits)] = True
        return base ^ np.packbits(mask).view(">u8").astype(np.uint64)

    rows = [flipped(bits) for bits in draw(st.lists(flips, max_size=40))]
    rows += list(random_hashes(draw(st.integers(0, 5)), np.random.default_rng(len(rows))))
    words = np.array(rows, dtype=np.uint64).reshape(-1, 4)
    return words, flipped(draw(flips))


@settings(max_examples=150, deadline=None)
@given(
    data=clustered(),
    t=st.integers(0, MAX_DISTANCE),
    path=st.sampled_from(["auto", "mih", "scan"]),
)
def test_property_search_is_brute_force(data: tuple[Words, Words], t: int, path: str) -> None:
    words, query = data
    with search_path(path):
        index = PdqIndex.build(words)
        positions, dists = index.search(query, t)
    dist = np.bitwise_count(index.words ^ query).sum(axis=1)
    assert set(zip(positions.tolist(), dists.tolist(), strict=True)) == {
        (int(p), int(dist[p])) for p in np.flatnonzero(dist <= t)
    }
    # Every stored row is one of the inputs, once.
    assert sorted(map(tuple, index.words.tolist())) == sorted(set(map(tuple, words.tolist())))


# -- building ------------------------------------------------------------------


def test_duplicates_collapse() -> None:
    rng = np.random.default_rng(6)
    distinct = random_hashes(100, rng)
    index = PdqIndex.build(np.concatenate([distinct, distinct[:40], distinct[:10]]))
    assert index.size == 100
    assert sorted(index.hex_at(np.arange(index.size))) == sorted(hex_from_words(distinct))
    positions, dists = index.search(distinct[3], 0)
    assert len(positions) == 1 and dists.tolist() == [0]
    assert index.hex_at(positions) == hex_from_words(distinct[3:4])


def test_hashes_sharing_a_first_word_are_told_apart() -> None:
    rng = np.random.default_rng(8)
    rows = random_hashes(50, rng)
    rows[:, 0] = rows[0, 0]
    index = PdqIndex.build(np.concatenate([rows, rows[::-1]]))
    assert index.size == 50
    for row in rows:
        assert_exact(index, row, 0)


def test_empty_index() -> None:
    index = PdqIndex.build(np.zeros((0, 4), dtype=np.uint64))
    assert index.size == 0
    positions, dists = index.search(np.zeros(4, dtype=np.uint64), 64)
    assert positions.dtype == np.intp and dists.dtype == np.uint16
    assert len(positions) == len(dists) == 0
    which, positions, dists = index.search_many(np.zeros((3, 4), dtype=np.uint64), 31)
    assert len(which) == len(positions) == len(dists) == 0
    assert index.hex_at([]) == []


def test_no_queries() -> None:
    index = PdqIndex.build(random_hashes(10, np.random.default_rng(9)))
    which, positions, dists = index.search_many(np.zeros((0, 4), dtype=np.uint64), 31)
    assert len(which) == len(positions) == len(dists) == 0


def test_nbytes_counts_the_arrays() -> None:
    rows = random_hashes(1000, np.random.default_rng(10))
    index = PdqIndex.build(rows, layout=LAYOUT_16X16)
    # 32 bytes of hash and 15 uint32 positions per hash, 16 tables of 65537 uint32.
    assert index.nbytes == 1000 * (32 + 15 * 4) + 16 * 65537 * 4


@pytest.mark.parametrize(
    ("words", "match"),
    [
        (np.zeros((5, 3), dtype=np.uint64), r"\(N, 4\) array of uint64.*got shape \(5, 3\)"),
        (np.zeros(4, dtype=np.uint64), r"got shape \(4,\)"),
        (np.zeros((5, 4), dtype=np.int64), "of int64"),
    ],
)
def test_build_rejects_bad_arrays(words: np.ndarray, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        PdqIndex.build(words)


def test_build_rejects_a_layout_that_misses_bits() -> None:
    with pytest.raises(ValueError, match="cover each bit once"):
        PdqIndex.build(random_hashes(3, np.random.default_rng(1)), layout=LAYOUT_16X16[:-1])


@pytest.mark.parametrize("t", [-1, 65, 1000])
def test_distance_outside_0_to_64_is_rejected(t: int) -> None:
    index = PdqIndex.build(random_hashes(10, np.random.default_rng(11)))
    with pytest.raises(ValueError, match=rf"within 0\.\.64, got {t}"):
        index.search(index.words[0], t)
    with pytest.raises(ValueError, match=rf"within 0\.\.64, got {t}"):
        index.search_many(index.words, t)


def test_bad_queries_are_rejected() -> None:
    index = PdqIndex.build(random_hashes(10, np.random.default_rng(12)))
    with pytest.raises(ValueError, match=r"query must be 4 uint64 words, got shape \(1, 4\)"):
        index.search(index.words[:1], 31)
    with pytest.raises(ValueError, match=r"got shape \(3,\)"):
        index.search(index.words[0, :3], 31)
    with pytest.raises(ValueError, match="queries must be an"):
        index.search_many(index.words[0], 31)
    with pytest.raises(ValueError, match="must be an integer"):
        index.search(index.words[0], 31.0)  # type: ignore[arg-type]  # a float is the mistake


# -- hex text and synthetic data -----------------------------------------------


def test_hex_round_trip() -> None:
    words = random_hashes(50, np.random.default_rng(13))
    text = hex_from_words(words)
    assert all(len(h) == PDQ_HEX_DIGITS and h == h.lower() for h in text)
    assert np.array_equal(words_from_hex(text), words)
    assert np.array_equal(words_from_hex([h.upper() for h in text]), words)


def test_hex_words_are_big_endian() -> None:
    words = words_from_hex(["0123456789abcdef" + "0" * 47 + "1"])
    assert words.tolist() == [[0x0123456789ABCDEF, 0, 0, 1]]
    assert words_from_hex([]).shape == (0, 4)


@pytest.mark.parametrize(
    ("hexes", "match"),
    [
        (["0" * 63], r"PDQ hash 0: '0{63}' has 63 characters; expected 64 hex digits"),
        (["f" * 64, "0" * 65], "PDQ hash 1: .* has 65 characters"),
        (["zz" + "0" * 62], r"contains 'z'; expected only hex digits 0-9 and a-f"),
        (["0" * 31 + " " + "0" * 32], r"contains ' '"),
        (["0" * 66, "0" * 62], "PDQ hash 0: .* has 66 characters"),
    ],
)
def test_words_from_hex_says_which_hash_is_wrong(hexes: list[str], match: str) -> None:
    with pytest.raises(InvalidValue, match=match):
        words_from_hex(hexes)


def test_distances_match_bit_counts() -> None:
    rng = np.random.default_rng(14)
    words = random_hashes(20, rng)
    query = near(words[5], 17, rng)
    got = distances(words, query)
    assert got[5] == 17
    assert got.tolist() == [
        bin(int.from_bytes(h, "big")).count("1") for h in _xor_bytes(words, query)
    ]


def _xor_bytes(words: Words, query: Words) -> list[bytes]:
    return [bytes.fromhex(h) for h in hex_from_words(words ^ query)]


def test_synthetic_hashes_are_deterministic_and_clustered() -> None:
    a = synthetic_hashes(5000, seed=1)
    assert a.shape == (5000, 4) and a.dtype == np.uint64
    assert np.array_equal(a, synthetic_hashes(5000, seed=1))
    assert not np.array_equal(a, synthetic_hashes(5000, seed=2))
    # About half belong to series, so many hashes have a near-duplicate.
    index = PdqIndex.build(a)
    which, _, dists = index.search_many(a[:500], 32)
    neighbours = np.bincount(which[dists > 0], minlength=500)
    assert 0.3 < np.mean(neighbours > 0) < 0.7
    uniform = synthetic_hashes(2000, seed=1, series_fraction=0.0)
    assert PdqIndex.build(uniform).search_many(uniform[:200], 32)[0].tolist() == list(range(200))


def test_near_is_exactly_that_far() -> None:
    rng = np.random.default_rng(15)
    row = random_hashes(1, rng)[0]
    for flips in (0, 1, 31, 64, 256):
        assert distances(row.reshape(1, 4), near(row, flips, rng)).tolist() == [flips]
