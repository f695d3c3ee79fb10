"""PDQ hashes as numbers: 256 bits held as four big-endian 64-bit words.

PDQ is Meta's perceptual image hash. Two images are near-duplicates when their
hashes differ in at most ``t`` of 256 bits; Meta recommends ``t = 31`` and
discards hashes whose quality is below 50. Text form is 64 hex digits; in
arrays a hash is a row of four ``uint64`` words, word 0 holding the first 16
hex digits, so ``hex_from_words(words_from_hex(h)) == h.lower()``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from liaison.errors import InvalidValue
from liaison.query import DEFAULT_NEAR_DISTANCE, MAX_NEAR_DISTANCE, MIN_PDQ_QUALITY

DEFAULT_DISTANCE = DEFAULT_NEAR_DISTANCE
MAX_DISTANCE = MAX_NEAR_DISTANCE
MIN_QUALITY = MIN_PDQ_QUALITY
PDQ_HEX_DIGITS = 64
PDQ_BITS = 256
PDQ_WORDS = 4

_HEX_DIGITS = frozenset("0123456789abcdefABCDEF")
_BIG_ENDIAN_WORDS = np.dtype(">u8")


def words_from_hex(hexes: Sequence[str]) -> npt.NDArray[np.uint64]:
    """Parse PDQ hashes from hex text into an ``(N, 4)`` array of ``uint64`` words.

    Upper-case digits are accepted; anything else but exactly 64 hex digits
    raises :class:`InvalidValue` naming the offending hash.
    """
    if isinstance(hexes, str):
        raise InvalidValue("expected a sequence of PDQ hashes, got one string; wrap it in a list")
    try:
        lengths_ok = set(map(len, hexes)) <= {PDQ_HEX_DIGITS}
        raw = bytes.fromhex("".join(hexes)) if lengths_ok else b""
    except (TypeError, ValueError):
        lengths_ok, raw = False, b""
    # bytes.fromhex skips whitespace, so the length of its result is also what
    # catches a hash with spaces in it.
    if not lengths_ok or len(raw) != len(hexes) * (PDQ_HEX_DIGITS // 2):
        _raise_first_bad(hexes)
    return (
        np.frombuffer(raw, dtype=_BIG_ENDIAN_WORDS).reshape(len(hexes), PDQ_WORDS).astype(np.uint64)
    )


def _raise_first_bad(hexes: Sequence[object]) -> None:
    for i, text in enumerate(hexes):
        if not isinstance(text, str):
            raise InvalidValue(f"PDQ hash {i}: {text!r} is not text; expected 64 hex digits")
        shown = text if len(text) <= 80 else text[:77] + "..."
        if len(text) != PDQ_HEX_DIGITS:
            raise InvalidValue(
                f"PDQ hash {i}: {shown!r} has {len(text)} characters; expected 64 hex digits"
            )
        bad = sorted(set(text) - _HEX_DIGITS)
        if bad:
            raise InvalidValue(
                f"PDQ hash {i}: {shown!r} contains {''.join(bad)!r}; "
                "expected only hex digits 0-9 and a-f"
            )
    raise InvalidValue("PDQ hashes do not parse as 64 hex digits each")  # pragma: no cover


def hex_from_words(words: npt.NDArray[np.uint64]) -> list[str]:
    """Lower-case 64-digit hex text of each row of an ``(N, 4)`` word array."""
    rows = _check_words(words, "words")
    text = rows.astype(_BIG_ENDIAN_WORDS).tobytes().hex()
    return [text[i : i + PDQ_HEX_DIGITS] for i in range(0, len(text), PDQ_HEX_DIGITS)]


def distances(
    words: npt.NDArray[np.uint64], query: npt.NDArray[np.uint64]
) -> npt.NDArray[np.uint16]:
    """Hamming distance from ``query`` (4 words) to every row of ``words``."""
    rows = _check_words(words, "words")
    q = np.asarray(query)
    if q.shape != (PDQ_WORDS,) or q.dtype != np.uint64:
        raise ValueError(f"query must be 4 uint64 words, got shape {q.shape} of {q.dtype}")
    out: npt.NDArray[np.uint16] = np.bitwise_count(rows ^ q).sum(axis=1, dtype=np.uint16)
    return out


def _check_words(words: npt.NDArray[np.uint64], name: str) -> npt.NDArray[np.uint64]:
    a = np.asarray(words)
    if a.ndim != 2 or a.shape[1] != PDQ_WORDS or a.dtype != np.uint64:
        raise ValueError(
            f"{name} must be an (N, 4) array of uint64 words (see words_from_hex), "
            f"got shape {a.shape} of {a.dtype}"
        )
    return a
