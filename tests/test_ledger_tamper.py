"""Tampering with a ledger file behind the writer's back, and the verifier finding it.

One real ledger is written per module by :class:`Ledger` under a real Ed25519
key: four sessions (each reopening logs an ``opened`` entry and signs a
checkpoint, each close signs another) of request/outcome pairs. Each test
edits a private copy of its SQLite file through a separate ``sqlite3``
connection, as anyone with write access to the file could, and asserts that
``verify_ledger`` fails and that its FIRST problem names the exact place.

The writer's clock is replaced by one that advances 30 s per reading, so the
checkpoints are spaced as a long-running writer would space them and a
missing stretch shows as a gap without the test waiting for it.
"""

from __future__ import annotations

import base64
import hashlib
import itertools
import json
import shutil
import sqlite3
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from liaison.keys import SigningKey
from liaison.ledger import log as ledger_log
from liaison.ledger.checkpoint import Checkpoint, open_checkpoint, sign_checkpoint
from liaison.ledger.entries import canonical_json, outcome_entry, request_entry
from liaison.ledger.log import Ledger
from liaison.ledger.logged import gateway_origin
from liaison.ledger.merkle import leaf_hash
from liaison.ledger.store import LedgerStore, StoredCheckpoint
from liaison.ledger.verify import VerifyReport, verify_ledger
from liaison.messages import NodeResult, NodeStatus
from liaison.query import Comparator, Operation, Predicate, Query
from liaison.wire import request_to_bytes
from tests.support import TEST_AUDIT_KEY, make_request, stored_entry, tampering

ORIGIN = gateway_origin("tamper-test")
SESSIONS = 4
PAIRS = 60  # request + outcome pairs per session
SESSION_SIZE = 1 + 2 * PAIRS  # the `opened` entry, then the pairs
SIZE = SESSIONS * SESSION_SIZE
# Each session signs a checkpoint when it opens and one when it closes.
CHECKPOINTS = 2 * SESSIONS
CLOCK_START_MS = 1_700_000_000_000  # in the past: a later real-time reopening is not "reordered"
CLOCK_STEP_MS = 30_000  # the default checkpoint interval
LEDGER_FILE = "ledger.sqlite3"


# --- building the ledger ------------------------------------------------------------


@contextmanager
def stepping_clock() -> Iterator[set[int]]:
    """The writer's clock, advancing 30 s each time it is read by this test.

    Yields the set of thread ids the stepping clock serves (the caller adds
    each writer thread it starts); any other thread gets the real time. A
    ledger left open by an earlier test in this process that signs its
    periodic checkpoint meanwhile must not take a step, or the layout (and
    every gap the tests expect) shifts by 30 s.
    """
    readings = itertools.count(CLOCK_START_MS, CLOCK_STEP_MS)
    ours = {threading.get_ident()}

    def now() -> int:
        if threading.get_ident() in ours:
            return next(readings)
        return time.time_ns() // 1_000_000

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(ledger_log, "now_ms", now)
        yield ours


def request_index(n: int) -> int:
    """Where the request of the ``n``-th query (counting from 0) is logged."""
    session, i = divmod(n, PAIRS)
    return session * SESSION_SIZE + 1 + 2 * i


def outcome_index(n: int) -> int:
    return request_index(n) + 1


def query_pair(n: int) -> tuple[str, bytes, bytes]:
    """A query id with its request and outcome entries, as the gateway logs them."""
    value = hashlib.sha256(f"probe {n} {uuid.uuid4()}".encode()).hexdigest()
    request = make_request(
        Query("media", Operation.MATCH, (Predicate("sha256", Comparator.EQ, (value,)),)),
        audience=("freedonia", "ruritania"),
        case_ref=f"GEN-TAMPER-{n}",
    )
    digest = hashlib.sha256(request_to_bytes(request)).digest()
    logged = request_entry(
        request, request_digest=digest, key_id="k" * 64, audit_key=TEST_AUDIT_KEY
    )
    results = tuple(
        NodeResult(node, NodeStatus.ANSWERED, latency_ms=3.0, answer_digest=f"{n:064x}")
        for node in ("freedonia", "ruritania")
    )
    outcome = outcome_entry(
        query_id=request.query_id,
        request_digest=digest,
        time_ms=request.issued_at_ms + 5,
        results=results,
    )
    return request.query_id, logged, outcome


def write_ledger(path: Path, key: SigningKey) -> list[str]:
    """Write the module's ledger layout at ``path``; return the query ids in order."""
    query_ids: list[str] = []
    with stepping_clock() as ours:
        for _session in range(SESSIONS):
            ledger = Ledger.open(str(path), key, ORIGIN)
            # The writer thread signs the closing checkpoint.
            assert ledger._thread.ident is not None
            ours.add(ledger._thread.ident)
            try:
                pending = []
                for _ in range(PAIRS):
                    query_id, request, outcome = query_pair(len(query_ids))
                    query_ids.append(query_id)
                    pending += [ledger.submit(request), ledger.submit(outcome)]
                for future in pending:
                    future.result(30)
            finally:
                ledger.close()
    return query_ids


@dataclass(frozen=True, slots=True)
class Built:
    folder: Path
    key: SigningKey
    query_ids: list[str]
    checkpoints: list[StoredCheckpoint]

    def where(self, position: int) -> str:
        """How the verifier names stored checkpoint ``position`` (from 1)."""
        row = self.checkpoints[position - 1]
        return f"checkpoint #{position} (size {row.size}, time {row.time_ms})"


def build(folder: Path, key: SigningKey) -> Built:
    folder.mkdir(parents=True)
    query_ids = write_ledger(folder / LEDGER_FILE, key)
    store = LedgerStore(folder / LEDGER_FILE, create=False)
    try:
        checkpoints = store.checkpoints()
    finally:
        store.close()
    return Built(folder, key, query_ids, checkpoints)


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Built:
    return build(tmp_path_factory.mktemp("tamper") / "original", SigningKey.generate())


@pytest.fixture(scope="module")
def rewritten_same_key(built: Built, tmp_path_factory: pytest.TempPathFactory) -> Built:
    """Another history of the same size, signed with the log's own key (an insider)."""
    return build(tmp_path_factory.mktemp("tamper") / "same-key", built.key)


@pytest.fixture(scope="module")
def rewritten_other_key(tmp_path_factory: pytest.TempPathFactory) -> Built:
    """Another history of the same size, signed with another key (an outsider)."""
    return build(tmp_path_factory.mktemp("tamper") / "other-key", SigningKey.generate())


def private_copy(built: Built, folder: Path) -> Path:
    shutil.copytree(built.folder, folder)
    return folder / LEDGER_FILE


@pytest.fixture
def ledger(built: Built, tmp_path: Path) -> Path:
    """A private copy of the module's ledger file, to tamper with freely."""
    return private_copy(built, tmp_path / "ledger")


# --- tampering and verifying ----------------------------------------------------------


def put_entry(conn: sqlite3.Connection, index: int, raw: bytes, *, rehash: bool) -> None:
    """Replace entry ``index`` with ``raw``; with ``rehash`` its stored leaf hash too."""
    if rehash:
        conn.execute(
            "UPDATE liaison_ledger_entries SET entry = ?, leaf_hash = ? WHERE idx = ?",
            (raw, leaf_hash(raw), index),
        )
    else:
        conn.execute("UPDATE liaison_ledger_entries SET entry = ? WHERE idx = ?", (raw, index))


def swap_entries(conn: sqlite3.Connection, a: int, b: int) -> None:
    """Swap the positions of entries ``a`` and ``b`` (each keeps its own leaf hash)."""
    conn.execute("UPDATE liaison_ledger_entries SET idx = -1 WHERE idx = ?", (a,))
    conn.execute("UPDATE liaison_ledger_entries SET idx = ? WHERE idx = ?", (a, b))
    conn.execute("UPDATE liaison_ledger_entries SET idx = ? WHERE idx = -1", (b,))


def checkpoint_id(conn: sqlite3.Connection, position: int) -> int:
    ids = [i for (i,) in conn.execute("SELECT id FROM liaison_ledger_checkpoints ORDER BY id")]
    return int(ids[position - 1])


def with_flipped_signature(note: str) -> str:
    """``note`` with one bit of its Ed25519 signature flipped (the key hash left alone)."""
    text, signature_line = note.rstrip("\n").rsplit("\n", 1)
    prefix, encoded = signature_line.rsplit(" ", 1)
    blob = bytearray(base64.b64decode(encoded))
    blob[4 + 10] ^= 0x01  # past the 4-byte key hash, inside the signature
    return f"{text}\n{prefix} {base64.b64encode(bytes(blob)).decode('ascii')}\n"


def verify(
    path: Path, built: Built, *, kept: tuple[str, ...] = (), allow_unsigned_tail: bool = False
) -> VerifyReport:
    store = LedgerStore(path, create=False)
    try:
        report, _tree = verify_ledger(
            store, built.key.verifying_key, kept=kept, allow_unsigned_tail=allow_unsigned_tail
        )
    finally:
        store.close()
    return report


# --- the clean ledger -----------------------------------------------------------------


def test_the_untouched_ledger_verifies_with_nothing_to_report(ledger: Path, built: Built) -> None:
    report = verify(ledger, built, kept=(built.checkpoints[-1].note,))

    assert report.ok
    assert report.problems == []
    assert report.warnings == []
    assert report.size == SIZE
    assert report.checkpoints == CHECKPOINTS
    assert [c.size for c in built.checkpoints] == [
        size for s in range(SESSIONS) for size in (s * SESSION_SIZE + 1, (s + 1) * SESSION_SIZE)
    ]
    assert report.kinds == {
        "opened": SESSIONS,
        "request": SESSIONS * PAIRS,
        "outcome": SESSIONS * PAIRS,
    }
    assert report.unfinished == 0
    latest = open_checkpoint(built.checkpoints[-1].note, built.key.verifying_key, origin=ORIGIN)
    assert report.latest == latest
    assert report.root == latest.root


# --- tampering, one way per case ------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Expected:
    """The first problem: where, at which index, and fragments of its message."""

    where: str
    index: int | None
    fragments: tuple[str, ...]
    kept: tuple[str, ...] = ()


Tamper = Callable[[Path, Built], Expected]

EDITED = request_index(130)  # a request in the third session, between checkpoints #5 and #6
EDITED_QUERY = 130


def covering(built: Built, index: int) -> tuple[int, int]:
    """The first checkpoint position covering ``index`` and the size of the one before it."""
    sizes = [c.size for c in built.checkpoints]
    position = next(p for p, size in enumerate(sizes, start=1) if size > index)
    return position, sizes[position - 2] if position > 1 else 0


def edited_request(raw: bytes) -> bytes:
    assert b'"purpose":"csam-investigation"' in raw
    return raw.replace(b'"purpose":"csam-investigation"', b'"purpose":"statistics"')


def entry_edited_leaving_its_hash(path: Path, built: Built) -> Expected:
    with tampering(path) as conn:
        put_entry(conn, EDITED, edited_request(stored_entry(conn, EDITED)), rehash=False)
    return Expected(
        f"entry {EDITED}", EDITED, ("its bytes do not hash to its stored leaf", "it was edited")
    )


def entry_edited_with_its_hash(path: Path, built: Built) -> Expected:
    with tampering(path) as conn:
        put_entry(conn, EDITED, edited_request(stored_entry(conn, EDITED)), rehash=True)
    position, good = covering(built, EDITED)
    end = built.checkpoints[position - 1].size - 1
    return Expected(
        built.where(position),
        good,
        ("its root does not match the entries", f"one or more of entries {good}..{end}"),
    )


def entry_deleted_in_the_middle(path: Path, built: Built) -> Expected:
    with tampering(path) as conn:
        conn.execute("DELETE FROM liaison_ledger_entries WHERE idx = ?", (EDITED,))
    return Expected(
        f"entry {EDITED}",
        EDITED,
        (
            "missing",
            f"the next stored entry is {EDITED + 1}",
            f"entries {EDITED}..{EDITED} were deleted",
        ),
    )


def last_entry_deleted(path: Path, built: Built) -> Expected:
    with tampering(path) as conn:
        conn.execute("DELETE FROM liaison_ledger_entries WHERE idx = ?", (SIZE - 1,))
    return Expected(
        built.where(CHECKPOINTS),
        SIZE - 1,
        (
            f"vouches for {SIZE} entries but the ledger holds {SIZE - 1}",
            f"entries {SIZE - 1}..{SIZE - 1} were removed (truncated)",
        ),
    )


def two_queries_interleaved(path: Path, built: Built) -> Expected:
    # The outcome of one query and the request of the next change places:
    # every outcome still follows its request, so only the tree shows it.
    with tampering(path) as conn:
        swap_entries(conn, outcome_index(EDITED_QUERY), request_index(EDITED_QUERY + 1))
    position, good = covering(built, outcome_index(EDITED_QUERY))
    end = built.checkpoints[position - 1].size - 1
    return Expected(
        built.where(position),
        good,
        ("its root does not match the entries", f"one or more of entries {good}..{end}"),
    )


def outcome_before_its_request(path: Path, built: Built) -> Expected:
    with tampering(path) as conn:
        swap_entries(conn, request_index(EDITED_QUERY), outcome_index(EDITED_QUERY))
    return Expected(
        f"entry {request_index(EDITED_QUERY)}",
        request_index(EDITED_QUERY),
        (
            f"outcome of query {built.query_ids[EDITED_QUERY]}, whose request is not logged "
            "before it",
            "reordered",
        ),
    )


def entry_appended_out_of_band(path: Path, built: Built) -> Expected:
    _query_id, request, _outcome = query_pair(SIZE)
    with tampering(path) as conn:
        conn.execute(
            "INSERT INTO liaison_ledger_entries (idx, leaf_hash, entry) VALUES (?, ?, ?)",
            (SIZE, leaf_hash(request), request),
        )
    return Expected(f"entries {SIZE}..{SIZE}", SIZE, ("not covered by any signed checkpoint",))


def checkpoint_column_edited(column: str, position: int) -> Tamper:
    def tamper(path: Path, built: Built) -> Expected:
        with tampering(path) as conn:
            conn.execute(
                f"UPDATE liaison_ledger_checkpoints SET {column} = {column} + 1 WHERE id = ?",
                (checkpoint_id(conn, position),),
            )
        return Expected(
            built.where(position), None, ("its stored size or time differs from what it signs",)
        )

    return tamper


def checkpoint_signature_flipped(path: Path, built: Built) -> Expected:
    position = 3
    with tampering(path) as conn:
        conn.execute(
            "UPDATE liaison_ledger_checkpoints SET note = ? WHERE id = ?",
            (
                with_flipped_signature(built.checkpoints[position - 1].note),
                checkpoint_id(conn, position),
            ),
        )
    return Expected(f"checkpoint #{position}", None, ("does not verify",))


def checkpoint_by_another_key_inserted(path: Path, built: Built) -> Expected:
    last = open_checkpoint(built.checkpoints[-1].note, built.key.verifying_key)
    forged = sign_checkpoint(
        SigningKey.generate(),
        Checkpoint(ORIGIN, last.size, last.root, last.time_ms + CLOCK_STEP_MS),
    )
    with tampering(path) as conn:
        conn.execute(
            "INSERT INTO liaison_ledger_checkpoints (size, time_ms, note) VALUES (?, ?, ?)",
            (last.size, last.time_ms + CLOCK_STEP_MS, forged.note),
        )
    return Expected(f"checkpoint #{CHECKPOINTS + 1}", None, ("does not verify",))


def rolled_back_below_a_kept_checkpoint(path: Path, built: Built) -> Expected:
    # The last session is removed with its own checkpoints, so the stored
    # checkpoints agree with what is left: only the auditor's copy shows it.
    cut = (SESSIONS - 1) * SESSION_SIZE
    kept = built.checkpoints[-1]
    with tampering(path) as conn:
        conn.execute("DELETE FROM liaison_ledger_entries WHERE idx >= ?", (cut,))
        conn.execute("DELETE FROM liaison_ledger_checkpoints WHERE size > ?", (cut,))
    return Expected(
        f"kept checkpoint 1 (size {kept.size}, time {kept.time_ms})",
        cut,
        (
            f"you saw {SIZE} entries, the ledger now holds {cut}",
            f"entries {cut}..{SIZE - 1} were removed (truncated)",
        ),
        kept=(kept.note,),
    )


def replaced_by(path: Path, other: Built) -> None:
    """Every row of the ledger at ``path`` replaced by the rows of ``other``'s ledger."""
    with tampering(path) as conn:
        conn.execute("ATTACH DATABASE ? AS other", (str(other.folder / LEDGER_FILE),))
        for table in (
            "liaison_ledger_entries",
            "liaison_ledger_checkpoints",
            "liaison_ledger_meta",
        ):
            conn.execute(f"DELETE FROM main.{table}")
            conn.execute(f"INSERT INTO main.{table} SELECT * FROM other.{table}")


def duplicate_request_logged(path: Path, built: Built) -> Expected:
    # Replayed through the writer itself: every signature and root holds,
    # and only what the entries say shows the copy.
    with tampering(path) as conn:
        replayed = stored_entry(conn, request_index(7))
    ledger = Ledger.open(str(path), built.key, ORIGIN)
    try:
        appended = ledger.append(replayed)
    finally:
        ledger.close()
    assert appended.index == SIZE + 1  # after the reopening's `opened` entry
    return Expected(
        f"entry {SIZE + 1}",
        SIZE + 1,
        (
            f"a second request entry for query {built.query_ids[7]}",
            f"(the first is entry {request_index(7)})",
            "copied or replayed",
        ),
    )


def entry_replaced_by_text(raw: bytes, *fragments: str) -> Tamper:
    def tamper(path: Path, built: Built) -> Expected:
        with tampering(path) as conn:
            put_entry(conn, EDITED, raw, rehash=True)
        return Expected(f"entry {EDITED}", EDITED, ("unreadable", *fragments))

    return tamper


def entry_of_version_2(path: Path, built: Built) -> Expected:
    with tampering(path) as conn:
        document = json.loads(stored_entry(conn, EDITED))
        put_entry(conn, EDITED, canonical_json({**document, "v": 2}), rehash=True)
    return Expected(
        f"entry {EDITED}",
        EDITED,
        ("unreadable", "format version 2 is not one this release reads"),
    )


TAMPERS = [
    pytest.param(entry_edited_leaving_its_hash, id="entry-edited-hash-stale"),
    pytest.param(entry_edited_with_its_hash, id="entry-edited-with-its-hash"),
    pytest.param(entry_deleted_in_the_middle, id="entry-deleted-in-the-middle"),
    pytest.param(last_entry_deleted, id="tail-truncated"),
    pytest.param(two_queries_interleaved, id="two-entries-swapped"),
    pytest.param(outcome_before_its_request, id="outcome-before-its-request"),
    pytest.param(entry_appended_out_of_band, id="entry-appended-after-last-checkpoint"),
    pytest.param(checkpoint_column_edited("size", 3), id="checkpoint-size-edited"),
    pytest.param(checkpoint_column_edited("time_ms", 6), id="checkpoint-time-edited"),
    pytest.param(checkpoint_signature_flipped, id="checkpoint-signature-flipped"),
    pytest.param(checkpoint_by_another_key_inserted, id="checkpoint-by-another-key"),
    pytest.param(rolled_back_below_a_kept_checkpoint, id="rolled-back-below-kept-checkpoint"),
    pytest.param(duplicate_request_logged, id="duplicate-request"),
    pytest.param(entry_replaced_by_text(b"not json at all", "not UTF-8 JSON"), id="entry-not-json"),
    pytest.param(entry_of_version_2, id="entry-of-unknown-version"),
]


@pytest.mark.parametrize("tamper", TAMPERS)
def test_tampering_is_found_where_it_happened(ledger: Path, built: Built, tamper: Tamper) -> None:
    # prepare
    expected = tamper(ledger, built)

    # execute
    report = verify(ledger, built, kept=expected.kept)

    # assert
    assert not report.ok
    first = report.problems[0]
    assert (first.where, first.index) == (expected.where, expected.index), report.problems
    for fragment in expected.fragments:
        assert fragment in first.message, (fragment, report.problems)


def test_history_rewritten_with_the_logs_own_key_is_caught_by_a_kept_checkpoint(
    ledger: Path, built: Built, rewritten_same_key: Built
) -> None:
    # prepare: an insider with the log's key writes another history of the same size
    kept = built.checkpoints[-1]
    replaced_by(ledger, rewritten_same_key)
    assert verify(ledger, built).ok  # on its own, the rewritten ledger is flawless

    # execute
    report = verify(ledger, built, kept=(kept.note,))

    # assert
    assert not report.ok
    (problem,) = report.problems
    assert problem.where == f"kept checkpoint 1 (size {SIZE}, time {kept.time_ms})"
    assert "no longer hash to what you saw: rewritten" in problem.message


def test_history_rewritten_with_another_key_fails_every_checkpoint_and_the_kept_one(
    ledger: Path, built: Built, rewritten_other_key: Built
) -> None:
    # prepare
    kept = built.checkpoints[-1]
    replaced_by(ledger, rewritten_other_key)

    # execute
    report = verify(ledger, built, kept=(kept.note,))

    # assert
    assert not report.ok
    first = report.problems[0]
    assert first.where == "checkpoint #1"
    assert "does not verify" in first.message
    wheres = [p.where for p in report.problems]
    assert wheres[:CHECKPOINTS] == [f"checkpoint #{p}" for p in range(1, CHECKPOINTS + 1)]
    kept_problem = report.problems[CHECKPOINTS]
    assert kept_problem.where == f"kept checkpoint 1 (size {SIZE}, time {kept.time_ms})"
    assert "rewritten" in kept_problem.message


def test_an_unsigned_tail_is_only_a_warning_when_allowed(ledger: Path, built: Built) -> None:
    # prepare
    expected = entry_appended_out_of_band(ledger, built)

    # execute
    report = verify(ledger, built, allow_unsigned_tail=True)

    # assert
    assert report.ok
    assert report.problems == []
    (warning,) = report.warnings
    assert (warning.where, warning.index) == (expected.where, expected.index)
    assert "not covered by any signed checkpoint" in warning.message
    assert report.size == SIZE + 1


def test_deleted_checkpoints_leave_a_gap_that_is_reported(ledger: Path, built: Built) -> None:
    # prepare: checkpoints are 30 s (within a session) or 60 s (across a
    # reopening) apart; removing #4 leaves 90 s between #3 and #5, more than
    # the 2.5 intervals plus slack the verifier tolerates.
    with tampering(ledger) as conn:
        conn.execute(
            "DELETE FROM liaison_ledger_checkpoints WHERE id = ?", (checkpoint_id(conn, 4),)
        )

    # execute
    report = verify(ledger, built)

    # assert
    (warning,) = report.warnings
    after = built.checkpoints[4]  # stored 5th before, 4th now
    assert warning.where == f"checkpoint #4 (size {after.size}, time {after.time_ms})"
    assert warning.message.startswith(
        "no checkpoint for 90 s before it (one is signed every 30 s): the log was stopped, "
        "or checkpoints were removed"
    )
    assert report.checkpoints == CHECKPOINTS - 1
    # The entries are still all vouched for, so this is a warning, not a failure.
    assert report.ok


# --- edits that once tripped the verifier -----------------------------------------------


def test_an_entry_rewritten_as_text_is_named_not_a_crash(ledger: Path, built: Built) -> None:
    # prepare: SQL's replace() on a BLOB yields TEXT, the easiest edit by hand
    with tampering(ledger) as conn:
        conn.execute(
            "UPDATE liaison_ledger_entries SET entry = replace(entry, 'csam', 'CSAM') "
            "WHERE idx = ?",
            (EDITED,),
        )

    # execute
    report = verify(ledger, built)

    # assert
    assert not report.ok
    assert report.problems[0].where == f"entry {EDITED}"


def test_an_entry_deleted_in_the_middle_is_not_called_a_truncated_tail(
    ledger: Path, built: Built
) -> None:
    # prepare
    entry_deleted_in_the_middle(ledger, built)

    # execute
    report = verify(ledger, built)

    # assert
    truncated = [str(p) for p in report.problems if "truncated" in p.message]
    assert truncated == [], truncated


# --- any single byte ------------------------------------------------------------------


@settings(max_examples=50, deadline=None)
@given(
    index=st.integers(0, SIZE - 1),
    column=st.sampled_from(["entry", "leaf_hash"]),
    position=st.floats(0, 1, exclude_max=True),
    mask=st.integers(1, 255),
)
def test_any_flipped_byte_in_any_entry_fails_verification_at_that_entry(
    built: Built, index: int, column: str, position: float, mask: int
) -> None:
    with tempfile.TemporaryDirectory(prefix="liaison-flip-") as scratch:
        # prepare
        path = private_copy(built, Path(scratch) / "ledger")
        with tampering(path) as conn:
            (value,) = conn.execute(
                f"SELECT {column} FROM liaison_ledger_entries WHERE idx = ?", (index,)
            ).fetchone()
            flipped = bytearray(value)
            flipped[int(position * len(flipped))] ^= mask
            conn.execute(
                f"UPDATE liaison_ledger_entries SET {column} = ? WHERE idx = ?",
                (bytes(flipped), index),
            )

        # execute
        report = verify(path, built)

    # assert
    assert not report.ok
    first = report.problems[0]
    assert (first.where, first.index) == (f"entry {index}", index), report.problems
    assert "its bytes do not hash to its stored leaf: it was edited" in first.message
