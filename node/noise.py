"""Sticky noise on counts released under a minimum count.

A minimum count k stops a direct question from naming a small count, but
exact counts above k can be added and subtracted: "how many in A?" + "how
many in B?" - "how many in A or B?" is the count of A and B together, however
small (a tracker, in Denning's terms). Comparing queries in pairs (the
differencing guard) cannot see three- or five-query trackers, so counts
released under a minimum count are not exact.

The scheme is Diffix's sticky noise with its AID-set seeding (Francis et al.,
"Diffix Elm", 2022; pg_diffix), and the cell-key method of the Australian
Bureau of Statistics' TableBuilder: the noise on a count is a pseudo-random
function of *the set of records counted*, keyed by a node secret.

- Sticky: the same set of records gets the same noise however it is asked
  ("category = A", "category in (A)", a date range that happens to select the
  same rows, a count_by cell), so asking again and averaging gains nothing.
- Bounded and zero-mean: the sum of ``TERMS`` independent uniform integers in
  [-h, h], so every released count is within ``bound(k) = TERMS * h`` of the
  truth, and an extreme draw is rare ((2h+1) ** -TERMS).
- The threshold is sticky and noisy too: a count is suppressed ("fewer than
  k") below k plus 0 to 2h, drawn from the same seed, so sweeping a
  predicate until the answer flips does not find a set of exactly k. A count
  below k is always suppressed; a released value is never below k nor
  negative (the noisy value is clamped up to k).
- Answers say so: a released count carries its bound, shown as "≈ 57 (±4)".

The set is fingerprinted by an order-independent multiset hash (a sum modulo
2**128 of a keyed hash of each counted row's identity: its primary key, or
every column where the table has none), so the database need only list the
counted rows' keys; no SQL function beyond SELECT is needed on any backend.

The secret lives in the node's state folder (``noise.key``, created 0600) and
must never be rotated casually: new noise for the same sets gives a second
independent look at each count. Replicas of one node must share it.
"""

from __future__ import annotations

import hashlib
import os
import secrets
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from liaison.messages import Count

# Noise is the sum of this many uniform draws in [-h, h].
TERMS = 4
_MOD = 1 << 128
NOISE_KEY_FILE = "noise.key"


def half_width(minimum: int) -> int:
    """h for a minimum count: one per ten of the minimum, at least one."""
    return max(1, minimum // 10)


def bound(minimum: int) -> int:
    """The largest difference between a released count and the true one."""
    return TERMS * half_width(minimum)


def load_or_create_key(path: Path) -> bytes:
    """The node's noise secret: 32 random bytes in ``path``, created 0600 if absent."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        key = bytes.fromhex(path.read_text().strip())
        if len(key) < 32:
            raise ValueError(f"{path} holds fewer than 32 bytes of key") from None
        return key
    key = secrets.token_bytes(32)
    with os.fdopen(fd, "w") as out:
        out.write(key.hex() + "\n")
    return key


def _canonical(identity: Iterable[Any]) -> bytes:
    return b"\x1f".join(
        b"\x00" if v is None else f"{type(v).__name__}:{v}".encode() for v in identity
    )


class RecordSet:
    """An order-independent fingerprint of a multiset of rows, and its size."""

    __slots__ = ("_key", "n", "total")

    def __init__(self, key: bytes) -> None:
        self._key = key
        self.n = 0
        self.total = 0

    def add(self, identity: Iterable[Any]) -> None:
        digest = hashlib.blake2b(_canonical(identity), key=self._key, digest_size=16).digest()
        self.total = (self.total + int.from_bytes(digest, "big")) % _MOD
        self.n += 1


class StickyNoise:
    """Noise for counts, seeded by the set of records each count covers."""

    def __init__(self, secret: bytes) -> None:
        if len(secret) < 32:
            raise ValueError("the noise secret must be at least 32 bytes")
        self._row_key = hashlib.blake2b(b"liaison row identity", key=secret[:64]).digest()[:32]
        self._seed_key = hashlib.blake2b(b"liaison count noise", key=secret[:64]).digest()[:32]

    def records(self) -> RecordSet:
        return RecordSet(self._row_key)

    def _draws(self, scope: str, counted: RecordSet) -> list[int]:
        """``TERMS + 1`` pseudo-random 64-bit draws for the set ``counted`` of ``scope``.

        They do not depend on the minimum count, so the same set counted under
        two permits with different minimums gets the same noise, scaled: a
        second permit is no second, independent look.
        """
        seed = hashlib.blake2b(
            f"{scope}\x00{counted.n}\x00{counted.total}".encode(),
            key=self._seed_key,
            digest_size=8 * (TERMS + 1),
        ).digest()
        return [int.from_bytes(seed[8 * i : 8 * i + 8], "big") for i in range(TERMS + 1)]

    def noise(self, scope: str, counted: RecordSet, minimum: int) -> int:
        """Deterministic noise in [-bound, bound] for the set ``counted`` of ``scope``."""
        h = half_width(minimum)
        # Each draw as a fraction of 2**64, spread over [-h, h]: one fraction per term.
        return sum((d * (2 * h + 1) >> 64) - h for d in self._draws(scope, counted)[:TERMS])

    def threshold(self, scope: str, counted: RecordSet, minimum: int) -> int:
        """The sticky, noisy threshold for ``counted``: ``minimum`` plus 0 to ``2h``.

        An exact threshold is itself an oracle: sweeping a date until a count
        flips from "fewer than k" to a number finds a set of exactly k, and
        adding one record to it then tells whether that record exists. A
        threshold that depends on the set (Diffix's noisy low-count filter)
        blurs the flip by up to 2h records.
        """
        h = half_width(minimum)
        return minimum + (self._draws(scope, counted)[TERMS] * (2 * h + 1) >> 64)

    def release(self, scope: str, counted: RecordSet, minimum: int) -> Count:
        """The count to release under ``minimum``: suppressed, or noisy and clamped."""
        if counted.n < self.threshold(scope, counted, minimum):
            return Count(0, below_minimum=True, minimum=minimum)
        value = max(minimum, counted.n + self.noise(scope, counted, minimum))
        return Count(value, minimum=minimum, noise_bound=bound(minimum))
