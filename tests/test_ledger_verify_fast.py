"""The batched fast path of verify_ledger finds exactly what a row-by-row verifier finds.

The oracle is the verifier as it was before batches, kept below as
``reference_rebuild``: every row read through ``LedgerStore.rows``, hashed
with ``leaf_hash`` and parsed with ``parse_entry``, one at a time. Ledgers of
a few thousand entries, read in batches of 500, are tampered with in the
middle of a batch, at a batch's edges and across batches; the report of
``verify_ledger`` must equal, finding for finding and in the same order, the
report it gives with the reference in place of its own rebuild.

``scan_entries`` (msgspec) must accept only what ``parse_entry`` accepts and
read the same kind, query id and request digest from it; a property test
holds it to that over entries mutated at the JSON level and the byte level.

Prepare / execute / assert as everywhere; every ledger is a real SQLite file.
"""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from liaison.bench.ledger import EntryFactory, build_ledger, merkle_floor
from liaison.errors import EntryError
from liaison.keys import SigningKey, VerifyingKey
from liaison.ledger import verify as verify_module
from liaison.ledger.checkpoint import Checkpoint, sign_checkpoint
from liaison.ledger.entries import (
    MAX_ENTRY_BYTES,
    SCANNED,
    EntryKind,
    ReceiptFacts,
    canonical_json,
    opened_entry,
    parse_entry,
    receipt_entry,
    scan_entries,
)
from liaison.ledger.logged import gateway_origin
from liaison.ledger.merkle import MerkleTree, leaf_hash
from liaison.ledger.store import LedgerStore
from liaison.ledger.verify import (
    Finding,
    VerifyReport,
    _check_receipt_id,
    _Rebuilt,
    verify_ledger,
)
from tests.support import stored_entry, tampering

FIXTURE = Path(__file__).parent / "fixtures" / "ledger-v1"
GATEWAY_ENTRIES = 3_000
RECEIPTS = 1_200
BATCH = 500  # rows per read in these tests, so a ledger spans several batches


# --- the oracle: verify_ledger's rebuild before batches, row by row ----------------------


def reference_rebuild(
    store: LedgerStore, report: VerifyReport, progress: object, processes: object = None
) -> _Rebuilt:
    edited: list[int] = []
    first_missing: int | None = None
    requests: dict[str, int] = {}
    receipts: dict[str, tuple[int, str]] = {}
    finished: set[str] = set()
    kinds: dict[EntryKind, int] = dict.fromkeys(EntryKind, 0)
    expected = 0
    leaves: list[bytes] = []
    for index, stored_leaf, raw in store.rows():
        if index != expected:
            if first_missing is None:
                first_missing = expected
            report.problems.append(
                Finding(
                    f"entry {expected}",
                    f"missing: the next stored entry is {index}, so entries "
                    f"{expected}..{index - 1} were deleted",
                    expected,
                )
            )
        expected = index + 1
        leaf = leaf_hash(raw)
        leaves.append(leaf)
        if leaf != stored_leaf:
            edited.append(index)
            report.problems.append(
                Finding(
                    f"entry {index}",
                    "its bytes do not hash to its stored leaf: it was edited",
                    index,
                )
            )
        try:
            entry = parse_entry(raw)
        except EntryError as exc:
            report.problems.append(Finding(f"entry {index}", f"unreadable ({exc})", index))
            continue
        kind = entry.kind
        kinds[kind] += 1
        if kind is EntryKind.REQUEST:
            query_id = entry.fields["query_id"]
            if query_id in requests:
                report.problems.append(
                    Finding(
                        f"entry {index}",
                        f"a second request entry for query {query_id} "
                        f"(the first is entry {requests[query_id]}): copied or replayed, or two "
                        "requests sent under one query id; expected one request per query id. "
                        "Reconcile with the nodes' receipts (`liaison audit reconcile`) to see "
                        "which of them each node answered",
                        index,
                    )
                )
            requests[query_id] = index
        elif kind is EntryKind.OUTCOME:
            query_id = entry.fields["query_id"]
            if query_id not in requests:
                report.problems.append(
                    Finding(
                        f"entry {index}",
                        f"outcome of query {query_id}, whose request is not logged "
                        "before it: entries were reordered, or the request was removed",
                        index,
                    )
                )
            finished.add(query_id)
        elif kind is EntryKind.RECEIPT:
            _check_receipt_id(index, entry.query_id, entry.text("request_digest"), receipts, report)
    report.kinds.update({k.value: n for k, n in kinds.items() if n})
    report.unfinished = len(set(requests) - finished)
    return _Rebuilt(MerkleTree.from_leaf_hashes(leaves), edited, first_missing)


def summary(report: VerifyReport) -> dict[str, Any]:
    return {
        "problems": [(f.where, f.message, f.index) for f in report.problems],
        "warnings": [(f.where, f.message, f.index) for f in report.warnings],
        "size": report.size,
        "root": report.root,
        "kinds": report.kinds,
        "unfinished": report.unfinished,
        "checkpoints": report.checkpoints,
    }


@dataclass(frozen=True, slots=True)
class Verified:
    report: VerifyReport
    slow_rows: int


def verify_both(path: Path, key: VerifyingKey, monkeypatch: pytest.MonkeyPatch) -> Verified:
    """verify_ledger's report and how many rows left the fast path; asserts the oracle agrees."""
    monkeypatch.setattr(verify_module, "READ_BATCH", BATCH)
    slow = [0]
    row = verify_module._Rebuilder.row

    def counted(self: verify_module._Rebuilder, index: int, leaf: bytes, raw: bytes) -> None:
        slow[0] += 1
        row(self, index, leaf, raw)

    monkeypatch.setattr(verify_module._Rebuilder, "row", counted)
    store = LedgerStore(path, create=False)
    try:
        fast, fast_tree = verify_ledger(store, key, allow_unsigned_tail=True)
        with monkeypatch.context() as patch:
            patch.setattr(verify_module, "_rebuild", reference_rebuild)
            reference, reference_tree = verify_ledger(store, key, allow_unsigned_tail=True)
    finally:
        store.close()
    assert summary(fast) == summary(reference)
    assert fast_tree.size == reference_tree.size and fast_tree.root() == reference_tree.root()
    return Verified(fast, slow[0])


# --- ledgers ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Ledgers:
    folder: Path
    key: SigningKey

    @property
    def gateway(self) -> Path:
        return self.folder / "gateway.sqlite3"

    @property
    def receipts(self) -> Path:
        return self.folder / "receipts.sqlite3"


def build_receipts(path: Path, key: SigningKey, n: int) -> None:
    """A node's receipts ledger: an opened entry, then ``n`` receipts, one signed checkpoint."""
    origin = "liaison.node/freedonia"
    entries = [opened_entry(time_ms=1, origin=origin, key_id=key.key_id, software="test")]
    for i in range(n):
        gateway_entry = canonical_json({"format": "liaison.ledger.entry", "i": i})
        facts = ReceiptFacts(
            node_id="freedonia",
            time_ms=2 + i,
            query_id=f"query-{i}",
            request_digest=hashlib.sha256(b"%d" % i).digest(),
            gateway_id="gateway",
            gateway_key_id="g" * 16,
            gateway_signature=b"\1" * 64,
            gateway_entry=gateway_entry,
            gateway_leaf_index=i,
            gateway_checkpoint=f"gateway\n{i}\n",
            status="answered",
            rules=("media-match",),
            obligations=(),
            answer_digest="a" * 64,
            answer_key_id="n" * 16,
        )
        entries.append(receipt_entry(facts))
    tree = MerkleTree()
    rows = []
    for raw in entries:
        leaf = leaf_hash(raw)
        tree.append(leaf)
        rows.append((leaf, raw))
    store = LedgerStore(path)
    try:
        store.set_meta("origin", origin)
        store.append(0, rows)
        signed = sign_checkpoint(key, Checkpoint(origin, tree.size, tree.root(), 10**12))
        store.add_checkpoint(tree.size, 10**12, signed.note)
    finally:
        store.close()


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Ledgers:
    key = SigningKey.generate()
    ledgers = Ledgers(tmp_path_factory.mktemp("fast") / "original", key)
    ledgers.folder.mkdir(parents=True)
    build_ledger(ledgers.gateway, GATEWAY_ENTRIES, EntryFactory(7, key), io.StringIO())
    build_receipts(ledgers.receipts, key, RECEIPTS)
    return ledgers


@pytest.fixture
def ledgers(built: Ledgers, tmp_path: Path) -> Ledgers:
    """A private copy of the module's ledgers, to tamper with freely."""
    shutil.copytree(built.folder, tmp_path / "copy")
    return Ledgers(tmp_path / "copy", built.key)


def put(conn: sqlite3.Connection, index: int, raw: bytes | str, *, rehash: bool = True) -> None:
    if rehash:
        data = raw.encode() if isinstance(raw, str) else raw
        conn.execute(
            "UPDATE liaison_ledger_entries SET entry = ?, leaf_hash = ? WHERE idx = ?",
            (raw, leaf_hash(data), index),
        )
    else:
        conn.execute("UPDATE liaison_ledger_entries SET entry = ? WHERE idx = ?", (raw, index))


def kind_of(raw: bytes) -> str:
    return str(json.loads(raw)["kind"])


def first_of_kind(conn: sqlite3.Connection, kind: str, start: int) -> int:
    index = start
    while kind_of(stored_entry(conn, index)) != kind:
        index += 1
    return index


# --- tampering, and the fast path finding the same as the oracle -------------------------

Tamper = Callable[[sqlite3.Connection], None]


def edited_leaving_its_hash(conn: sqlite3.Connection) -> None:
    raw = stored_entry(conn, 1_234)
    put(conn, 1_234, raw.replace(b'"time_ms":', b'"time_ms":1', 1), rehash=False)


def edited_with_its_hash(conn: sqlite3.Connection) -> None:
    raw = stored_entry(conn, 1_750)
    put(conn, 1_750, raw.replace(b'"v":1', b'"v":1 ', 1))


def unreadable_in_the_middle(conn: sqlite3.Connection) -> None:
    put(conn, 1_501, stored_entry(conn, 1_501)[:-1])


def deleted_at_a_batch_edge(conn: sqlite3.Connection) -> None:
    conn.execute("DELETE FROM liaison_ledger_entries WHERE idx IN (999, 1000, 2500)")


def request_logged_twice(conn: sqlite3.Connection) -> None:
    first = first_of_kind(conn, "request", 480)
    second = first_of_kind(conn, "request", 1_480)
    query_id = json.loads(stored_entry(conn, first))["query_id"]
    again = json.loads(stored_entry(conn, second))
    put(conn, second, canonical_json({**again, "query_id": query_id}))


def outcome_moved_before_its_request(conn: sqlite3.Connection) -> None:
    outcome = first_of_kind(conn, "outcome", 2_200)
    query_id = json.loads(stored_entry(conn, outcome))["query_id"]
    request = next(
        i
        for i in range(outcome - 1, 0, -1)
        if json.loads(stored_entry(conn, i)).get("query_id") == query_id
    )
    a, b = stored_entry(conn, request), stored_entry(conn, outcome)
    put(conn, request, b)
    put(conn, outcome, a)


def outcome_with_no_request(conn: sqlite3.Connection) -> None:
    outcome = first_of_kind(conn, "outcome", 600)
    put(conn, outcome, canonical_json({**json.loads(stored_entry(conn, outcome)), "query_id": "x"}))


def required_field_of_another_type(conn: sqlite3.Connection) -> None:
    request = first_of_kind(conn, "request", 2_999 - 40)
    put(conn, request, canonical_json({**json.loads(stored_entry(conn, request)), "time_ms": True}))


def not_utf8_inside_a_string(conn: sqlite3.Connection) -> None:
    put(conn, 42, stored_entry(conn, 42).replace(b'"format":"', b'"format":"\xff', 1))


def stored_as_text(conn: sqlite3.Connection) -> None:
    # Through the sqlite3 shell an edit lands as TEXT, which the driver returns as str.
    put(conn, 777, stored_entry(conn, 777).decode().replace('"v":1', '"v":2'), rehash=False)
    put(conn, 778, stored_entry(conn, 778).decode())


def duplicated_kind_key(conn: sqlite3.Connection) -> None:
    raw = stored_entry(conn, 1_100)
    put(conn, 1_100, raw.replace(b'"kind":', b'"kind":"opened","kind":', 1))


def nested_too_deep(conn: sqlite3.Connection) -> None:
    raw = stored_entry(conn, 2_000)
    put(conn, 2_000, raw[:-1] + b',"deep":' + b"[" * 50_000 + b"]" * 50_000 + b"}")


def stored_leaf_edited(conn: sqlite3.Connection) -> None:
    conn.execute("UPDATE liaison_ledger_entries SET leaf_hash = ? WHERE idx = 2999", (b"\0" * 32,))


@pytest.mark.parametrize(
    "tamper",
    [
        edited_leaving_its_hash,
        edited_with_its_hash,
        unreadable_in_the_middle,
        deleted_at_a_batch_edge,
        request_logged_twice,
        outcome_moved_before_its_request,
        outcome_with_no_request,
        required_field_of_another_type,
        not_utf8_inside_a_string,
        stored_as_text,
        duplicated_kind_key,
        nested_too_deep,
        stored_leaf_edited,
    ],
)
def test_tampering_in_a_large_ledger_is_found_as_row_by_row(
    ledgers: Ledgers, tamper: Tamper, monkeypatch: pytest.MonkeyPatch
) -> None:
    # prepare
    with tampering(ledgers.gateway) as conn:
        tamper(conn)

    # execute
    verified = verify_both(ledgers.gateway, ledgers.key.verifying_key, monkeypatch)

    # assert: the oracle agreed (in verify_both), and the tampering shows
    assert not verified.report.ok
    # At most the batches holding the tampering leave the fast path (an entry
    # edited into other valid JSON with its hash need not leave it at all).
    assert verified.slow_rows <= 3 * BATCH


def test_an_untouched_ledger_takes_the_fast_path_throughout(
    ledgers: Ledgers, monkeypatch: pytest.MonkeyPatch
) -> None:
    # execute
    verified = verify_both(ledgers.gateway, ledgers.key.verifying_key, monkeypatch)

    # assert
    assert verified.report.ok and verified.report.warnings == []
    assert verified.report.size == GATEWAY_ENTRIES
    assert verified.slow_rows == 0


def test_the_floor_computes_the_root_that_verify_checks(ledgers: Ledgers) -> None:
    # prepare
    store = LedgerStore(ledgers.gateway, create=False)

    # execute
    try:
        count, root = merkle_floor(store)
        report, _tree = verify_ledger(store, ledgers.key.verifying_key)
    finally:
        store.close()

    # assert
    assert (count, root) == (report.size, report.root)


def receipt_id_reused(conn: sqlite3.Connection) -> None:
    raw = json.loads(stored_entry(conn, 900))
    put(conn, 900, canonical_json({**raw, "query_id": "query-10", "request_digest": "ab" * 32}))


def receipt_copied(conn: sqlite3.Connection) -> None:
    put(conn, 1_000, stored_entry(conn, 11))


@pytest.mark.parametrize("tamper", [None, receipt_id_reused, receipt_copied])
def test_receipts_are_checked_as_row_by_row(
    ledgers: Ledgers, tamper: Tamper | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    # prepare
    if tamper is not None:
        with tampering(ledgers.receipts) as conn:
            tamper(conn)

    # execute
    verified = verify_both(ledgers.receipts, ledgers.key.verifying_key, monkeypatch)

    # assert
    assert verified.report.kinds == {"opened": 1, "receipt": RECEIPTS}
    assert verified.slow_rows == 0
    assert bool(verified.report.problems or verified.report.warnings) == (tamper is not None)


@pytest.mark.parametrize("name", ["gateway-ledger.sqlite3", "ruritania-receipts.sqlite3"])
def test_v1_fixture_entries_take_the_fast_path(name: str, tmp_path: Path) -> None:
    # prepare
    shutil.copy(FIXTURE / name, tmp_path / name)
    store = LedgerStore(tmp_path / name, create=False)
    try:
        raws = [raw for _i, _leaf, raw in store.rows()]
    finally:
        store.close()

    # execute
    scanned = scan_entries(raws)

    # assert
    assert scanned is not None
    parsed = [parse_entry(raw) for raw in raws]
    assert [s.entry_kind for s in scanned] == [p.kind for p in parsed]
    assert [s.query_id for s in scanned] == [
        p.query_id if p.kind is not EntryKind.OPENED else "" for p in parsed
    ]


def test_a_deeply_nested_entry_is_unreadable_not_a_crash() -> None:
    # prepare
    raw = b'{"format":"liaison.ledger.entry","x":' + b"[" * 100_000 + b"]" * 100_000 + b"}"

    # execute / assert
    with pytest.raises(EntryError, match="nested too deeply"):
        parse_entry(raw)
    assert scan_entries([raw]) is None


# --- scan_entries accepts only what parse_entry accepts ---------------------------------


def _receipt() -> bytes:
    return receipt_entry(
        ReceiptFacts(
            node_id="freedonia",
            time_ms=5,
            query_id="q-1",
            request_digest=b"\2" * 32,
            gateway_id="gateway",
            gateway_key_id="g",
            gateway_signature=b"\3" * 64,
            gateway_entry='{"a":"\u00e9\\"}'.encode(),
            gateway_leaf_index=3,
            gateway_checkpoint="cp",
            status="answered",
            rules=("r",),
            obligations=("o",),
            answer_digest="d",
            answer_key_id="n",
        )
    )


def _samples() -> list[bytes]:
    factory = EntryFactory(3, SigningKey.generate())
    gateway = list(factory.traffic(6, 1_000))
    opened = opened_entry(time_ms=1, origin=gateway_origin("g"), key_id="k", software="s")
    return [opened, *gateway, _receipt()]


SAMPLES = _samples()
JSON_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=False)
    | st.text(max_size=5),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3)
    ),
    max_leaves=6,
)
KEYS = st.sampled_from(
    ["format", "v", "kind", "query_id", "request_digest", "time_ms", "requester", "targets",
     "results", "gateway_entry", "rules", "origin", "key_id", "x"]
)  # fmt: skip


@st.composite
def mutated_entries(draw: st.DrawFn) -> bytes:
    document = json.loads(draw(st.sampled_from(SAMPLES)))
    for _ in range(draw(st.integers(0, 3))):
        key = draw(KEYS)
        action = draw(st.sampled_from(["drop", "set", "kind"]))
        if action == "drop":
            document.pop(key, None)
        elif action == "set":
            document[key] = draw(JSON_VALUES)
        else:
            document["kind"] = draw(st.sampled_from([k.value for k in EntryKind] + ["other"]))
    text = json.dumps(
        document,
        sort_keys=draw(st.booleans()),
        separators=draw(st.sampled_from([(",", ":"), (", ", ": ")])),
        ensure_ascii=draw(st.booleans()),
    )
    raw = text.encode("utf-8", "surrogatepass")
    for _ in range(draw(st.integers(0, 2))):
        position = draw(st.integers(0, len(raw)))
        if draw(st.booleans()):
            raw = raw[:position] + draw(st.binary(min_size=1, max_size=3)) + raw[position:]
        else:
            raw = raw[:position] + raw[position + draw(st.integers(1, 3)) :]
    if draw(st.booleans()) and raw.endswith(b"}"):
        # A key twice: JSON readers keep the last one, and so must the verdict.
        key, value = draw(KEYS), json.dumps(draw(JSON_VALUES))
        raw = raw[:-1] + f',"{key}":{value}}}'.encode()
    return raw


def _verdict(raw: bytes) -> tuple[EntryKind, str, str] | None:
    try:
        entry = parse_entry(raw)
    except EntryError:
        return None
    # What a kind carries is read; a key a kind does not carry is read as "" (an
    # `opened` or `followup` entry with a stray "query_id" has no query id).
    carried = SCANNED[entry.kind].__struct_fields__
    query_id = entry.query_id if "query_id" in carried else ""
    digest = entry.text("request_digest") if "request_digest" in carried else ""
    return entry.kind, query_id, digest


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutated_entries())
def test_scan_entries_accepts_only_what_parse_entry_accepts(raw: bytes) -> None:
    # execute
    scanned = scan_entries([raw])
    expected = _verdict(raw)

    # assert
    if scanned is not None:
        (entry,) = scanned
        assert expected == (entry.entry_kind, entry.query_id, entry.request_digest)


@settings(max_examples=200, deadline=None)
@given(st.lists(mutated_entries(), min_size=1, max_size=6))
def test_scan_entries_refuses_a_batch_with_any_entry_parse_entry_refuses(
    raws: list[bytes],
) -> None:
    # execute
    scanned = scan_entries(raws)

    # assert
    if scanned is not None:
        assert all(_verdict(raw) is not None for raw in raws)


def test_every_entry_written_today_is_scanned() -> None:
    # execute
    scanned = scan_entries(SAMPLES)

    # assert
    assert scanned is not None
    assert [(s.entry_kind, s.query_id, s.request_digest) for s in scanned] == [
        _verdict(raw) for raw in SAMPLES
    ]


def test_an_entry_over_the_size_limit_is_left_to_parse_entry() -> None:
    # prepare
    big = SAMPLES[0][:-1] + b',"pad":"' + b"x" * MAX_ENTRY_BYTES + b'"}'

    # execute / assert
    assert scan_entries([SAMPLES[0], big]) is None
    with pytest.raises(EntryError, match="exceeds"):
        parse_entry(big)


def test_a_kept_field_order_does_not_matter() -> None:
    # prepare: the same entry with its keys reversed, as another encoder might write it
    document = json.loads(SAMPLES[1])
    raw = json.dumps(dict(reversed(document.items())), separators=(",", ":")).encode()

    # execute
    scanned = scan_entries([raw])

    # assert
    assert scanned is not None and _verdict(raw) == (
        scanned[0].entry_kind,
        scanned[0].query_id,
        scanned[0].request_digest,
    )
