"""Synthetic PDQ hashes shaped like a real hash register, for tests and benchmarks.

A register is not uniform noise: the same picture turns up re-encoded,
resized, cropped a little or watermarked, and each copy's PDQ hash differs
from the others in a few bits. So a synthetic register here is a mix of
uniformly random hashes and *series*: a random root hash plus variants of it,
each flipping a few random bits (mostly 1 to 12, some up to ``max_flips``).
Everything is vectorised, so ten million hashes take seconds, and the same
seed always gives the same hashes.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from liaison.hashing.pdq import PDQ_BITS, PDQ_WORDS

# Share of variants that are light edits (1..12 bits); the rest flip up to max_flips.
_LIGHT_EDIT_SHARE = 0.85
_LIGHT_EDIT_FLIPS = 12
_CHUNK = 1 << 20


def random_hashes(n: int, rng: np.random.Generator) -> npt.NDArray[np.uint64]:
    """``n`` uniformly random hashes, ``(n, 4)`` uint64."""
    raw = rng.bytes(n * PDQ_WORDS * 8)
    return np.frombuffer(raw, dtype=np.uint64).reshape(n, PDQ_WORDS).copy()


def synthetic_hashes(
    n: int,
    *,
    seed: int,
    series_fraction: float = 0.5,
    series_size: tuple[int, int] = (2, 20),
    max_flips: int = 16,
) -> npt.NDArray[np.uint64]:
    """``n`` PDQ hashes, ``(n, 4)`` uint64: random ones and series of near-duplicates.

    About ``series_fraction`` of them belong to series of ``series_size``
    (inclusive range) hashes: a root and variants of it, each variant at most
    ``max_flips`` bits from the root. Rows are shuffled; the same ``seed``
    gives the same array.
    """
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    if not 0.0 <= series_fraction <= 1.0:
        raise ValueError(f"series_fraction must be within 0..1, got {series_fraction}")
    low, high = series_size
    if not 1 <= low <= high:
        raise ValueError(
            f"series_size must be (low, high) with 1 <= low <= high, got {series_size}"
        )
    if not 1 <= max_flips <= PDQ_BITS:
        raise ValueError(f"max_flips must be within 1..256, got {max_flips}")
    rng = np.random.default_rng(seed)
    in_series = round(n * series_fraction)
    # Series sizes until they cover in_series hashes; the last one is cut short.
    sizes = rng.integers(low, high, size=in_series // low + 1, endpoint=True)
    count = int(np.searchsorted(np.cumsum(sizes), in_series)) + 1
    sizes = sizes[:count]
    roots = random_hashes(count, rng)
    members = np.repeat(roots, sizes, axis=0)[:in_series]
    # The first member of each series is its root; the others are variants.
    starts = np.cumsum(sizes) - sizes
    is_variant = np.ones(in_series, dtype=bool)
    is_variant[starts[starts < in_series]] = False
    variants = np.flatnonzero(is_variant)
    flips = _flip_counts(len(variants), max_flips, rng)
    for lo in range(0, len(variants), _CHUNK):
        rows = variants[lo : lo + _CHUNK]
        members[rows] ^= _flip_masks(flips[lo : lo + _CHUNK], rng)
    out = np.concatenate([members, random_hashes(n - in_series, rng)])
    return np.take(out, rng.permutation(n), axis=0)


def near(
    words_row: npt.NDArray[np.uint64], flips: int, rng: np.random.Generator
) -> npt.NDArray[np.uint64]:
    """A hash exactly ``flips`` bits away from ``words_row`` (4 uint64 words)."""
    row = np.asarray(words_row)
    if row.shape != (PDQ_WORDS,) or row.dtype != np.uint64:
        raise ValueError(f"words_row must be 4 uint64 words, got shape {row.shape} of {row.dtype}")
    if not 0 <= flips <= PDQ_BITS:
        raise ValueError(f"flips must be within 0..256, got {flips}")
    bits = rng.choice(PDQ_BITS, size=flips, replace=False)
    mask = np.zeros(PDQ_WORDS, dtype=np.uint64)
    np.bitwise_or.at(mask, bits // 64, np.left_shift(np.uint64(1), (bits % 64).astype(np.uint64)))
    out: npt.NDArray[np.uint64] = row ^ mask
    return out


def _flip_counts(n: int, max_flips: int, rng: np.random.Generator) -> npt.NDArray[np.int64]:
    light = rng.integers(1, min(_LIGHT_EDIT_FLIPS, max_flips), size=n, endpoint=True)
    heavy = rng.integers(1, max_flips, size=n, endpoint=True)
    counts: npt.NDArray[np.int64] = np.where(rng.random(n) < _LIGHT_EDIT_SHARE, light, heavy)
    return counts


def _flip_masks(flips: npt.NDArray[np.int64], rng: np.random.Generator) -> npt.NDArray[np.uint64]:
    """One XOR mask per entry of ``flips``, setting that many distinct random bits."""
    n = len(flips)
    width = int(flips.max(initial=0))
    masks = np.zeros((n, PDQ_WORDS), dtype=np.uint64)
    rows = np.arange(n)
    one = np.uint64(1)
    # Floyd's sampling, all rows at once: a row choosing k bits takes part in
    # the last k steps; step j picks a bit in 0..j, or j itself if that bit
    # is already set, which gives a uniformly random k-subset of the bits.
    for step in range(width):
        j = PDQ_BITS - width + step
        taking = flips >= width - step
        pick = rng.integers(0, j + 1, size=n)
        word, bit = pick // 64, (pick % 64).astype(np.uint64)
        already = (masks[rows, word] >> bit) & one
        pick = np.where(already.astype(bool), j, pick)
        pick = pick[taking]
        at = rows[taking], pick // 64
        masks[at] |= np.left_shift(one, (pick % 64).astype(np.uint64))
    return masks


def planted_hashes(
    n: int, *, seed: int, planted: float = 0.01, max_flips: int = 30
) -> npt.NDArray[np.uint64]:
    """``n`` uniformly random hashes, ``(n, 4)`` uint64, ``planted`` of them near-duplicates.

    A planted hash is a copy of an earlier random one with 1 to ``max_flips``
    random bits flipped, so a query near one finds both. Unlike
    :func:`synthetic_hashes` there are no series: the substrings a
    multi-index lookup probes are as evenly spread as hashes can be, the
    case where it has the fewest hashes to skip. Rows are shuffled; the same
    ``seed`` gives the same array.
    """
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    if not 0.0 <= planted < 1.0:
        raise ValueError(f"planted must be within 0..1, got {planted}")
    rng = np.random.default_rng(seed)
    copies = round(n * planted) if n > 1 else 0
    words = random_hashes(n, rng)
    sources = rng.integers(0, n - copies, size=copies) if copies else np.zeros(0, dtype=np.int64)
    flips = rng.integers(1, max_flips, size=copies, endpoint=True)
    for lo in range(0, copies, _CHUNK):
        rows = slice(n - copies + lo, n - copies + min(copies, lo + _CHUNK))
        words[rows] = words[sources[lo : lo + _CHUNK]] ^ _flip_masks(flips[lo : lo + _CHUNK], rng)
    return np.take(words, rng.permutation(n), axis=0)
