"""Sticky noise on counts: its threshold, its bound, and its independence from the minimum.

The tracker property (tests/test_attack_trackers.py) attacks real nodes; these
pin the mechanism's own promises on many record sets at once.
"""

from __future__ import annotations

import secrets

from node.noise import RecordSet, StickyNoise, bound, half_width

MINIMUM = 10


def record_set(noise: StickyNoise, ids: range) -> RecordSet:
    counted = noise.records()
    for i in ids:
        counted.add((i,))
    return counted


def test_below_the_minimum_is_always_suppressed_and_above_the_band_never() -> None:
    noise = StickyNoise(secrets.token_bytes(32))
    h = half_width(MINIMUM)
    for n in range(0, 3 * MINIMUM):
        for start in range(0, 400, 7):
            released = noise.release("media", record_set(noise, range(start, start + n)), MINIMUM)
            if n < MINIMUM:
                assert released.below_minimum, n
            elif n >= MINIMUM + 2 * h:
                assert not released.below_minimum, n
            if not released.below_minimum:
                assert released.value >= MINIMUM
                assert abs(released.value - n) <= bound(MINIMUM) or released.value == MINIMUM


def test_the_threshold_is_noisy_so_a_sweep_finds_no_set_of_exactly_the_minimum() -> None:
    # The sweep attack: grow a set one record at a time until the answer flips
    # from "fewer than k" to a number; with an exact threshold the flip is at k.
    noise = StickyNoise(secrets.token_bytes(32))
    flips = set()
    for start in range(0, 4000, 40):
        n = next(
            n
            for n in range(0, 3 * MINIMUM)
            if not noise.release(
                "media", record_set(noise, range(start, start + n)), MINIMUM
            ).below_minimum
        )
        flips.add(n)
    assert flips == set(range(MINIMUM, MINIMUM + 2 * half_width(MINIMUM) + 1))


def test_the_same_set_under_two_minimums_gets_related_noise() -> None:
    # Independent draws per minimum would give a second look at the same set.
    noise = StickyNoise(secrets.token_bytes(32))
    same_sign = 0
    trials = 300
    for start in range(trials):
        counted = record_set(noise, range(start * 50, start * 50 + 40))
        small, large = noise.noise("media", counted, 10), noise.noise("media", counted, 100)
        assert abs(small) <= bound(10) and abs(large) <= bound(100)
        same_sign += (small > 0) == (large > 0) or small == 0
    assert same_sign > 0.9 * trials
