"""Attack: near-duplicate queries as a distance oracle on a stored PDQ.

Against a hit/no-hit rule without a rate limit, an attacker holding an edited
copy of an image (its PDQ 40 bits from the stored one) ran a binary search on
``--distance`` to learn the exact distance d, then flipped one bit at a time
and asked at distance d - 1: a hit means the flip moved closer, so that bit
differs. 6 + 256 queries recovered the stored hash exactly.

The attacker program below does just that. Against a local brute-force
oracle it recovers the hash (so the program is right); against a real node
on loopback, with a policy that sets no limit at all, it is refused after
eight questions around one spot (the binary search and a flip or two), and an
attacker who only ever asks fresh hashes runs into the default near budget.
The node remembers both across a restart, in a file only its user can read.
A normal near query and device triage (hundreds of hashes in one query) still
answer.
"""

from __future__ import annotations

import hashlib
import stat
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest
import sqlalchemy as sa

from liaison.catalog import CATALOG_V1
from liaison.config import load_node_config
from liaison.demo.pdq_data import near, random_hashes
from liaison.hashing.pdq import hex_from_words, words_from_hex
from liaison.messages import AnswerStatus, Count, QueryAnswer
from liaison.query import Comparator, Operation, Predicate, Query
from node import execute
from node.near_guard import SPOT_ALLOWANCE
from policies.model import DEFAULT_NEAR_BUDGET
from tests.support import INVESTIGATOR, LocalNode, start_local_node, write_local_node

LOCAL = sa.MetaData()
REGISTER = sa.Table(
    "register",
    LOCAL,
    sa.Column("rid", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("phash", sa.String(64)),
    sa.Column("digest", sa.String(64)),
)
MAPPING = {"media": ("register", {"pdq": "phash", "sha256": "digest"})}
# Hit/no-hit on near-duplicates up to 64 bits, no rate limit, no near budget.
POLICY = """\
version = 1
agency = "oracleland"

[[rule]]
id = "pdq-hit"
effect = "permit"
agencies = ["genovia"]
roles = ["investigator"]
purposes = ["csam-investigation"]
datasets = ["media"]
operations = ["match", "count"]
match_fields = ["pdq", "sha256"]
max_distance = 64
"""
RNG_SEED = 20260901
STORED = 500
START_BITS = 40  # the attacker's edited copy, this far from the stored hash


@dataclass
class OracleNode:
    node: LocalNode
    config: Path
    target: str  # the stored hash the attacker is after
    stored: npt.NDArray[np.uint64]

    def ask(self, query: Query, subject: str) -> QueryAnswer:
        return self.node.answer(query, requester=replace(INVESTIGATOR, subject=subject))


def near_match(values: list[str], distance: int) -> Query:
    predicate = Predicate("pdq", Comparator.NEAR, tuple(values), distance)
    return Query("media", Operation.MATCH, (predicate,))


@contextmanager
def oracle_node(root: Path) -> Iterator[OracleNode]:
    """A real node over a register of random PDQs, made on first use, kept in ``root``."""
    rng = np.random.default_rng(RNG_SEED)
    stored = random_hashes(STORED, rng)
    hexes = hex_from_words(stored)
    config = root / "federation" / "nodes" / "oracleland" / "node.toml"
    if not config.exists():
        url = f"sqlite:///{root / 'agency.sqlite3'}"
        engine = sa.create_engine(url)
        LOCAL.create_all(engine)
        with engine.begin() as conn:
            conn.execute(
                REGISTER.insert(),
                [
                    {"rid": i, "phash": h, "digest": hashlib.sha256(h.encode()).hexdigest()}
                    for i, h in enumerate(hexes)
                ],
            )
        engine.dispose()
        write_local_node(
            root / "federation", "oracleland", database_url=url, mapping=MAPPING, policy_text=POLICY
        )
    with ExitStack() as stack:
        yield OracleNode(start_local_node(stack, config), config, hexes[123], stored)


@pytest.fixture
def oracle(tmp_path: Path) -> Iterator[OracleNode]:
    with oracle_node(tmp_path) as node:
        yield node


# --- the attacker ----------------------------------------------------------------------

Oracle = Callable[[str, int], bool | None]  # hit, or None when refused


def flip(value: str, bit: int) -> str:
    words = words_from_hex([value])
    words[0, bit // 64] ^= np.uint64(1) << np.uint64(63 - bit % 64)
    return hex_from_words(words)[0]


@dataclass
class Attack:
    recovered: str | None
    queries: int


def attack(ask: Oracle, start: str) -> Attack:
    """Binary search on the distance, then one bit at a time at one bit less."""
    queries = 0

    def hit(value: str, distance: int) -> bool | None:
        nonlocal queries
        queries += 1
        return ask(value, distance)

    lo, hi = 0, 64
    while lo < hi:
        mid = (lo + hi) // 2
        found = hit(start, mid)
        if found is None:
            return Attack(None, queries)
        lo, hi = (lo, mid) if found else (mid + 1, hi)
    differs = []
    for bit in range(256):
        found = hit(flip(start, bit), lo - 1)
        if found is None:
            return Attack(None, queries)
        if found:
            differs.append(bit)
    recovered = start
    for bit in differs:
        recovered = flip(recovered, bit)
    return Attack(recovered, queries)


def brute_force_oracle(stored: npt.NDArray[np.uint64]) -> Oracle:
    def ask(value: str, distance: int) -> bool:
        words = words_from_hex([value])[0]
        return bool((np.bitwise_count(stored ^ words).sum(axis=1) <= distance).any())

    return ask


def node_oracle(oracle: OracleNode, subject: str, refusals: list[str]) -> Oracle:
    def ask(value: str, distance: int) -> bool | None:
        answer = oracle.ask(near_match([value], distance), subject)
        if answer.status is not AnswerStatus.ANSWERED:
            refusals.append(answer.decision.reason)
            return None
        return bool(answer.hit)

    return ask


def start_for(target: str, seed: int) -> str:
    rng = np.random.default_rng(seed)
    return hex_from_words(near(words_from_hex([target])[0], START_BITS, rng)[None, :])[0]


# --- the tests --------------------------------------------------------------------------


def test_the_attacker_program_recovers_a_hash_from_an_unguarded_oracle(oracle: OracleNode) -> None:
    # The control: without the guard this program is exactly the attack.
    result = attack(brute_force_oracle(oracle.stored), start_for(oracle.target, 1))

    assert result.recovered == oracle.target
    assert result.queries == 262


def test_binary_search_and_bit_flipping_are_refused_as_probing(oracle: OracleNode) -> None:
    # prepare
    refusals: list[str] = []

    # execute
    result = attack(node_oracle(oracle, "inv.mallory", refusals), start_for(oracle.target, 1))

    # assert: every question of the attack is around one spot, so the one after
    # the allowance is refused, hundreds of queries before the hash is known
    assert result.recovered is None
    assert result.queries == SPOT_ALLOWANCE + 1
    (reason,) = refusals
    assert reason.startswith(
        "near-duplicate probing refused: value 1 of this query asks a pdq hash that one stored "
        f"hash could match together with {SPOT_ALLOWANCE} questions you asked in the last 24 h "
        "(the last "
    )
    assert reason.endswith(
        f"and at most {SPOT_ALLOWANCE} are answered around one spot. Asking around one hash "
        "again and again (other bits or other distances) measures the distance to what this "
        "node holds; the earlier answers stand. For more about that image, ask the agency for "
        "a follow-up"
    )


def test_skipping_the_binary_search_bit_flipping_is_refused_too(oracle: OracleNode) -> None:
    # prepare: the attacker guesses the distance and flips bits straight away
    start = start_for(oracle.target, 2)
    answers = []

    # execute
    for bit in range(SPOT_ALLOWANCE + 2):
        answers.append(oracle.ask(near_match([flip(start, bit)], START_BITS - 1), "inv.mallory"))

    # assert
    answered = [a.status for a in answers[:SPOT_ALLOWANCE]]
    assert answered == [AnswerStatus.ANSWERED] * SPOT_ALLOWANCE
    for answer in answers[SPOT_ALLOWANCE:]:
        assert answer.status is AnswerStatus.DENIED
        assert answer.decision.reason.startswith(
            "near-duplicate probing refused: value 1 of this query asks a pdq hash that one "
            f"stored hash could match together with {SPOT_ALLOWANCE} questions you asked"
        )
        assert not answer.hit


def test_probes_just_outside_the_radius_run_into_the_default_budget(oracle: OracleNode) -> None:
    # prepare: fresh hashes, each far from all earlier ones
    rng = np.random.default_rng(RNG_SEED + 3)
    fresh = hex_from_words(random_hashes(DEFAULT_NEAR_BUDGET.amount + 1, rng))

    # execute
    answers = [oracle.ask(near_match([value], 31), "inv.mallory") for value in fresh]

    # assert
    assert [a.status for a in answers[:-1]] == [AnswerStatus.ANSWERED] * DEFAULT_NEAR_BUDGET.amount
    assert answers[-1].status is AnswerStatus.DENIED
    assert answers[-1].decision.reason.startswith(
        "near-duplicate budget reached: 100 near queries per 3600 s per investigator (100 used); "
        "repeated near queries would measure the distance to a stored hash, so they are "
        "limited. Try again in "
    )
    assert answers[-1].decision.rules == ("pdq-hit",)


def test_normal_near_queries_and_device_triage_still_answer(oracle: OracleNode) -> None:
    # prepare: an edited copy 9 bits from the stored hash; a device of 300 images,
    # among them two edits of stored ones and two near-duplicates of each other
    rng = np.random.default_rng(RNG_SEED + 4)
    target = words_from_hex([oracle.target])[0]
    edited = hex_from_words(near(target, 9, rng)[None, :])[0]
    device = hex_from_words(random_hashes(296, rng))
    twin = hex_from_words(near(words_from_hex([device[0]])[0], 5, rng)[None, :])[0]
    device += [twin, *hex_from_words(np.stack([near(oracle.stored[k], 12, rng) for k in (7, 8)]))]
    device.append(hex_from_words(near(target, 30, rng)[None, :])[0])
    second_device = hex_from_words(random_hashes(300, rng))

    # execute
    single = oracle.ask(near_match([edited], 31), "inv.alice")
    triage = oracle.ask(near_match(device, 31), "inv.bob")
    count = oracle.ask(
        Query("media", Operation.COUNT, (Predicate("pdq", Comparator.NEAR, tuple(device), 31),)),
        "inv.bob",
    )
    second = oracle.ask(near_match(second_device, 31), "inv.bob")
    retry = oracle.ask(near_match(device, 31), "inv.bob")

    # assert
    assert single.status is AnswerStatus.ANSWERED and single.hit is True
    assert triage.status is AnswerStatus.ANSWERED, triage.decision.reason
    assert triage.hit is True
    assert count.status is AnswerStatus.ANSWERED
    assert count.count == Count(3)
    assert second.status is AnswerStatus.ANSWERED and second.hit is False
    assert retry.status is AnswerStatus.ANSWERED and retry.hit is True


def test_the_guard_remembers_across_a_restart_in_a_private_file(tmp_path: Path) -> None:
    # prepare: one probe, then the node restarts
    with oracle_node(tmp_path) as oracle:
        start = start_for(oracle.target, 5)
        first = oracle.ask(near_match([start], 31), "inv.mallory")
    state = load_node_config(oracle.config, CATALOG_V1).state_dir

    # execute
    with oracle_node(tmp_path) as restarted:
        flips = [
            restarted.ask(near_match([flip(start, 200 + bit)], 31), "inv.mallory")
            for bit in range(SPOT_ALLOWANCE)
        ]
        same = restarted.ask(near_match([start], 31), "inv.mallory")
        modes = {
            p.name: stat.S_IMODE(p.stat().st_mode)
            for p in state.iterdir()
            if p.name.startswith("near.sqlite3")
        }

    # assert
    # the probe before the restart counts: the allowance ends one flip early
    assert first.status is AnswerStatus.ANSWERED
    assert [f.status for f in flips[:-1]] == [AnswerStatus.ANSWERED] * (SPOT_ALLOWANCE - 1)
    assert flips[-1].status is AnswerStatus.DENIED
    assert f"together with {SPOT_ALLOWANCE} questions" in flips[-1].decision.reason
    assert same.status is AnswerStatus.ANSWERED  # the same question again
    assert "near.sqlite3" in modes
    assert set(modes.values()) == {0o600}, modes


def test_random_masks_around_one_copy_are_refused_too(oracle: OracleNode) -> None:
    # prepare: the threshold search a reviewer found: each probe is the edited
    # copy with 17 random bits flipped, so probes lie about 32 bits apart (no two
    # within 16), yet one stored hash could match them all
    rng = np.random.default_rng(RNG_SEED + 9)
    start = start_for(oracle.target, 3)
    probes = []
    for _ in range(SPOT_ALLOWANCE + 1):
        value = start
        for bit in rng.choice(256, 17, replace=False):
            value = flip(value, int(bit))
        probes.append(value)
    words = words_from_hex(probes)
    apart = np.bitwise_count(words[:, None, :] ^ words[None, :, :]).sum(axis=2)
    assert apart[~np.eye(len(probes), dtype=bool)].min() > 16

    # execute
    answers = [oracle.ask(near_match([value], 31), "inv.mallory") for value in probes]

    # assert
    assert [a.status for a in answers[:-1]] == [AnswerStatus.ANSWERED] * SPOT_ALLOWANCE
    assert answers[-1].status is AnswerStatus.DENIED
    assert f"together with {SPOT_ALLOWANCE} questions" in answers[-1].decision.reason


def test_too_many_near_matches_is_a_signed_denial_not_a_free_error(
    oracle: OracleNode, monkeypatch: pytest.MonkeyPatch
) -> None:
    # An error is refunded; "more than N stored hashes are near" tells something
    # about what the node holds, so it is a denial that keeps its charge.
    monkeypatch.setattr(execute, "MAX_NEAR_MATCHES", 0)

    answer = oracle.ask(near_match([oracle.target], 0), "inv.alice")

    assert answer.status is AnswerStatus.DENIED
    assert answer.decision.rules == (execute.NEAR_CAP_RULE,)
    assert answer.decision.reason == (
        "more than 0 stored hashes are within 0 bits; ask for a smaller distance"
    )
