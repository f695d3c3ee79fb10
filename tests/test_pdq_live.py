"""The keyed PDQ index, its segments on disk, its delta and tombstones, its compaction.

Every answer is compared with a brute-force scan (np.bitwise_count over every
live pair): all pairs within the distance, none beyond it. Data is uniformly
random with near-duplicates planted a few bits from stored hashes, the hard
case for multi-index hashing, and hypothesis drives the adds and removals.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from liaison.demo.pdq_data import near, random_hashes
from node import pdq_index
from node.pdq_index import (
    FORMAT,
    MANIFEST,
    CompactionJob,
    LiveIndex,
    PdqIndex,
    SegmentError,
    compact,
    keys_of,
    open_segment,
    read_manifest,
    verify_segment,
    write_segment_from,
)

Words = npt.NDArray[np.uint64]
Pairs = dict[tuple[int, bytes], Words]


def planted(n: int, near_ones: int, seed: int) -> tuple[npt.NDArray[np.int64], Words]:
    """``n`` random hashes, the last ``near_ones`` of them 1-31 bits from earlier ones."""
    rng = np.random.default_rng(seed)
    words = random_hashes(n, rng)
    for i in range(n - near_ones, n):
        words[i] = near(words[int(rng.integers(0, n - near_ones))], int(rng.integers(1, 32)), rng)
    keys = rng.permutation(3 * n)[:n].astype(np.int64)
    return keys, words


def truth_of(keys: npt.NDArray[np.int64], words: Words) -> Pairs:
    return {(int(k), w.tobytes()): w for k, w in zip(keys.tolist(), words, strict=True)}


def brute(truth: Pairs, queries: Words, t: int) -> list[tuple[int, int, int]]:
    """(query, key, distance) of every live pair within ``t``."""
    if not truth:
        return []
    keys = np.array([k for k, _ in truth], dtype=np.int64)
    words = np.stack(list(truth.values()))
    out = []
    for q, query in enumerate(queries):
        dist = np.bitwise_count(words ^ query).sum(axis=1)
        out += [(q, int(k), int(d)) for k, d in zip(keys, dist, strict=True) if d <= t]
    return sorted(out)


def answers(index: LiveIndex, queries: Words, t: int) -> list[tuple[int, int, int]]:
    found = index.search_many(queries, t)
    return sorted(
        zip(found.query.tolist(), found.keys.tolist(), found.distance.tolist(), strict=True)
    )


def queries_near(truth: Pairs, n: int, rng: np.random.Generator) -> Words:
    words = list(truth.values())
    picks = [words[int(i)] for i in rng.integers(0, len(words), size=n)] if words else []
    made = [near(w, int(rng.integers(0, 32)), rng) for w in picks]
    return (
        np.concatenate([np.stack(made), random_hashes(3, rng)]) if made else random_hashes(3, rng)
    )


def test_keyed_build_keeps_every_pair_sorted_by_key() -> None:
    words = random_hashes(5, np.random.default_rng(1))
    keys = np.array([9, 3, 3, 7, 1])
    index = PdqIndex.build(np.concatenate([words[:4], words[:1]]), keys=keys)

    found, dist = index.search(words[0], 0)

    assert keys_of(index).tolist() == [1, 3, 3, 7, 9]
    assert sorted(keys_of(index)[found].tolist()) == [1, 9]  # one hash, two rows
    assert dist.tolist() == [0, 0]


@pytest.mark.parametrize("n", [3000, 40_000])
def test_recall_is_100_percent_on_random_data_with_planted_near_duplicates(n: int) -> None:
    # prepare: 40,000 pairs use the 16x16 layout; LAYOUT_12X21 is forced below
    keys, words = planted(n, n // 10, seed=n)
    truth = truth_of(keys, words)
    rng = np.random.default_rng(7)
    queries = queries_near(truth, 40, rng)
    layouts = [pdq_index.LAYOUT_16X16, pdq_index.LAYOUT_12X21]

    for layout in layouts:
        # execute
        index = LiveIndex(PdqIndex.build(words, keys=keys, layout=layout))

        # assert
        for t in (0, 8, 31, 32):
            assert answers(index, queries, t) == brute(truth, queries, t), (layout[0], t)


OPS = st.lists(
    st.tuples(
        st.integers(0, 40),  # pairs to add
        st.integers(0, 40),  # pairs to remove
        st.booleans(),  # re-add some removed pairs, and add held ones again
    ),
    min_size=1,
    max_size=6,
)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops=OPS, seed=st.integers(0, 2**16))
def test_adds_and_removals_equal_brute_force(ops: list[tuple[int, int, bool]], seed: int) -> None:
    # prepare: a base of 600 pairs, planted near-duplicates among them
    rng = np.random.default_rng(seed)
    keys, words = planted(600, 60, seed)
    truth = truth_of(keys, words)
    index = LiveIndex(PdqIndex.build(words, keys=keys))
    next_key = 10_000

    for adds, removes, again in ops:
        # execute: add new pairs (some near held ones), remove held ones
        held = list(truth)
        gone = [
            held[int(i)] for i in rng.choice(len(held), size=min(removes, len(held)), replace=False)
        ]
        new_words = (
            np.stack(
                [
                    near(
                        truth[held[int(rng.integers(0, len(held)))]], int(rng.integers(0, 20)), rng
                    )
                    for _ in range(adds)
                ]
            )
            if adds and held
            else random_hashes(adds, rng)
        )
        new_keys = np.arange(next_key, next_key + adds, dtype=np.int64)
        next_key += adds
        rk = np.array([k for k, _ in gone], dtype=np.int64)
        rw = np.stack([truth[p] for p in gone]) if gone else np.zeros((0, 4), dtype=np.uint64)
        index.update(add=(new_keys, new_words), remove=(rk, rw))
        for p in gone:
            del truth[p]
        truth.update(truth_of(new_keys, new_words))
        if again and gone:
            back = gone[: len(gone) // 2]
            bk = np.array([k for k, _ in back], dtype=np.int64)
            bw = np.stack([np.frombuffer(b, dtype=np.uint64) for _, b in back]) if back else rw[:0]
            index.update(add=(np.concatenate([bk, new_keys]), np.concatenate([bw, new_words])))
            truth.update(truth_of(bk, bw))

        # assert
        assert index.size == len(truth)
        queries = queries_near(truth, 6, rng)
        assert answers(index, queries, 31) == brute(truth, queries, 31)


def test_ranges_and_keys_list_live_pairs_only() -> None:
    keys, words = planted(500, 0, seed=3)
    index = LiveIndex(PdqIndex.build(words, keys=keys))
    order = np.argsort(keys)
    gone = order[10:20]
    added_w = random_hashes(3, np.random.default_rng(4))
    index.update(add=(np.array([-5, 7_000, 7_001]), added_w), remove=(keys[gone], words[gone]))
    live = {int(k) for k in keys} - {int(k) for k in keys[gone]} | {-5, 7_000, 7_001}

    k_all, _ = index.pairs_in_range(None, None)
    k_mid, _ = index.pairs_in_range(int(keys[order[5]]), int(keys[order[30]]))
    k_some, w_some = index.pairs_for_keys(np.array([-5, int(keys[gone[0]]), int(keys[order[0]])]))

    assert k_all.tolist() == sorted(live)
    assert k_mid.tolist() == sorted(k for k in live if keys[order[5]] < k <= keys[order[30]])
    assert k_some.tolist() == sorted([-5, int(keys[order[0]])])
    assert (w_some[0] == added_w[0]).all()


def test_a_segment_round_trips_through_its_files(tmp_path: Path) -> None:
    # prepare
    keys, words = planted(5000, 500, seed=5)
    built = PdqIndex.build(words, keys=keys)
    queries = queries_near(truth_of(keys, words), 30, np.random.default_rng(6))

    # execute
    manifest = write_segment_from(tmp_path / "seg-000001", built, meta={"source": {"x": 1}})
    opened, read = open_segment(tmp_path / "seg-000001")
    verify_segment(tmp_path / "seg-000001", read)

    # assert
    assert read == manifest and manifest["format"] == FORMAT and manifest["source"] == {"x": 1}
    assert isinstance(opened.words, np.memmap)
    assert not list(tmp_path.glob("*.tmp"))
    for t in (0, 31):
        assert [a.tolist() for a in opened.search_many(queries, t)] == [
            a.tolist() for a in built.search_many(queries, t)
        ]


def corrupt_byte(path: Path, at: int) -> None:
    with open(path, "r+b") as fh:
        fh.seek(at)
        byte = fh.read(1)
        fh.seek(at)
        fh.write(bytes([byte[0] ^ 0x5A]))


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        ("flip", "order.npy is corrupt"),
        ("truncate", "words.npy has"),
        ("manifest", "manifest.json is unreadable"),
        ("format", f"segment format 0, this node reads format {FORMAT}"),
        ("missing", "keys.npy is missing"),
    ],
)
def test_a_damaged_segment_is_refused(tmp_path: Path, damage: str, message: str) -> None:
    # prepare
    keys, words = planted(2000, 0, seed=8)
    folder = tmp_path / "seg-000001"
    write_segment_from(folder, PdqIndex.build(words, keys=keys), meta={})

    # execute
    if damage == "flip":
        corrupt_byte(folder / "order.npy", 4000)
    elif damage == "truncate":
        with open(folder / "words.npy", "r+b") as fh:
            fh.truncate(1000)
    elif damage == "manifest":
        (folder / MANIFEST).write_text('{"format": 1, "entr')
    elif damage == "format":
        doc = json.loads((folder / MANIFEST).read_text())
        (folder / MANIFEST).write_text(json.dumps({**doc, "format": 0}))
    else:
        (folder / "keys.npy").unlink()

    # assert
    with pytest.raises(SegmentError, match=message):
        open_and_verify(folder)


def open_and_verify(folder: Path) -> None:
    _, manifest = open_segment(folder)
    verify_segment(folder, manifest)


@pytest.mark.parametrize("where", ["thread", "child"])
def test_compaction_merges_and_carries_changes_made_meanwhile(
    tmp_path: Path, where: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # prepare: a segment, changes to it, a compaction, changes while it runs
    monkeypatch.setattr(pdq_index, "CHILD_FROM", 0 if where == "child" else 10**9)
    rng = np.random.default_rng(11)
    keys, words = planted(3000, 300, seed=11)
    write_segment_from(tmp_path / "seg-000001", PdqIndex.build(words, keys=keys), meta={})
    base, _ = open_segment(tmp_path / "seg-000001")
    index = LiveIndex(base)
    truth = truth_of(keys, words)
    first = (np.arange(5000, 5100, dtype=np.int64), random_hashes(100, rng))
    index.update(add=first, remove=(keys[:50], words[:50]))
    started = index.start_compaction()
    job = CompactionJob(tmp_path / "seg-000001", started, tmp_path / "seg-000002", meta={"n": 2})
    later = (np.arange(6000, 6020, dtype=np.int64), random_hashes(20, rng))
    index.update(
        add=later,
        remove=(
            np.concatenate([keys[50:60], first[0][:5]]),
            np.concatenate([words[50:60], first[1][:5]]),
        ),
    )
    for k, w in zip(keys[:60].tolist(), words[:60], strict=True):
        del truth[(k, w.tobytes())]
    truth.update(truth_of(*first))
    truth.update(truth_of(*later))
    for k, w in zip(first[0][:5].tolist(), first[1][:5], strict=True):
        del truth[(k, w.tobytes())]

    # execute
    assert job.wait(60), "the compaction did not finish"
    merged, manifest = open_segment(tmp_path / "seg-000002")
    index.finish_compaction(started, merged)

    # assert
    assert job.error is None and manifest["n"] == 2
    assert merged.size == 3000 - 50 + 100
    assert index.delta_size == 20 and index.dead_count == 15
    assert index.size == len(truth)
    queries = queries_near(truth, 20, rng)
    assert answers(index, queries, 31) == brute(truth, queries, 31)


def test_compact_streams_a_merge_in_chunks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Chunks of 64 pairs: the delta's keys fall before, between and after them.
    monkeypatch.setattr(pdq_index, "_WRITE_CHUNK", 64)
    keys, words = planted(1000, 100, seed=12)
    keys = keys * 2  # even keys in the segment, odd ones in the delta
    write_segment_from(tmp_path / "seg-000001", PdqIndex.build(words, keys=keys), meta={})
    base, _ = open_segment(tmp_path / "seg-000001")
    dk = np.array([-1, *range(1, 6001, 7), 10**6], dtype=np.int64)
    dw = random_hashes(len(dk), np.random.default_rng(13))
    dead = np.zeros(base.size, dtype=bool)
    dead[::5] = True

    compact(tmp_path / "seg-000001", dead, PdqIndex.build(dw, keys=dk), tmp_path / "seg-2", meta={})
    merged, _ = open_segment(tmp_path / "seg-2")

    expected = sorted([*keys_of(base)[~dead].tolist(), *dk.tolist()])
    assert keys_of(merged).tolist() == expected
    assert read_manifest(tmp_path / "seg-2")["entries"] == len(expected)


def test_the_journal_restores_delta_and_tombstones() -> None:
    keys, words = planted(800, 80, seed=14)
    base = PdqIndex.build(words, keys=keys)
    index = LiveIndex(base)
    index.update(
        add=(np.array([9_999]), random_hashes(1, np.random.default_rng(15))),
        remove=(keys[:7], words[:7]),
    )

    again = LiveIndex.restore(base, index.journal())

    queries = queries_near(truth_of(keys, words), 10, np.random.default_rng(16))
    assert again.size == index.size == 800 - 7 + 1
    assert answers(again, queries, 31) == answers(index, queries, 31)
    with pytest.raises(SegmentError, match="outside its segment"):
        LiveIndex.restore(base, {**index.journal(), "dead": np.array([800])})
