"""Old ledgers stay verifiable: the v1 fixture, written by release 0.1.0, must verify forever.

The fixture is copied before use, because opening a SQLite ledger may add
WAL side files, and the committed bytes must never change.
"""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import pytest

from liaison.keys import VerifyingKey
from liaison.ledger.entries import EntryKind, parse_entry
from liaison.ledger.proofs import check_proof_file
from liaison.ledger.reconcile import NodeLedger, reconcile
from liaison.ledger.store import LedgerStore
from liaison.ledger.verify import verify_ledger

FIXTURE = Path(__file__).parent / "fixtures" / "ledger-v1"
# What release 0.1.0 recorded; a change here means old ledgers no longer verify.
GATEWAY_ROOT = "53694e7572a547de8cc15828cb9c1984ca05179496a6956e9dc9b8af129c7f7e"
FILE_SHA256 = {
    "gateway-ledger.sqlite3": "ded1482a2b92c522eb7260e1228191c9d05f08288c1e2dc2a41688fdd2bbfae7",
    "ruritania-receipts.sqlite3": (
        "3630b4b8919c0a9dce9c69cc8d1c65f6f60eb296528ade5249259141b8685775"
    ),
}


@pytest.fixture
def copy(tmp_path: Path) -> Path:
    target = tmp_path / "ledger-v1"
    shutil.copytree(FIXTURE, target)
    return target


def test_v1_gateway_ledger_verifies_with_its_public_key(copy: Path) -> None:
    # prepare
    store = LedgerStore(copy / "gateway-ledger.sqlite3", create=False)

    # execute
    try:
        report, _tree = verify_ledger(store, VerifyingKey.from_pem_file(copy / "gateway.pub"))
    finally:
        store.close()

    # assert
    assert report.ok, report.problems
    assert report.warnings == []
    assert report.size == 11
    assert report.root.hex() == GATEWAY_ROOT
    assert report.kinds == {"opened": 1, "request": 5, "outcome": 5}


def test_v1_entries_all_parse(copy: Path) -> None:
    # prepare
    store = LedgerStore(copy / "ruritania-receipts.sqlite3", create=False)

    # execute
    try:
        kinds = [parse_entry(raw).kind for _i, _leaf, raw in store.rows()]
    finally:
        store.close()

    # assert
    assert kinds == [EntryKind.OPENED] + [EntryKind.RECEIPT] * 5


def test_v1_receipts_reconcile_with_the_gateway_ledger(copy: Path) -> None:
    # prepare
    gateway = LedgerStore(copy / "gateway-ledger.sqlite3", create=False)
    node = LedgerStore(copy / "ruritania-receipts.sqlite3", create=False)

    # execute
    try:
        report = reconcile(
            gateway,
            VerifyingKey.from_pem_file(copy / "gateway.pub"),
            [NodeLedger("ruritania", node, VerifyingKey.from_pem_file(copy / "ruritania.pub"))],
        )
    finally:
        gateway.close()
        node.close()

    # assert
    assert report.ok
    assert report.receipts == {"ruritania": 5}
    assert report.differences == []


@pytest.mark.parametrize("name", ["inclusion-3.json", "consistency-1.json"])
def test_v1_proof_files_still_verify(copy: Path, name: str) -> None:
    # execute
    result = check_proof_file(copy / name, VerifyingKey.from_pem_file(copy / "gateway.pub"))

    # assert
    assert result.checkpoint.origin == "liaison.gateway/gateway"
    assert result.checkpoint.root.hex() == GATEWAY_ROOT


@pytest.mark.parametrize("name", sorted(FILE_SHA256))
def test_v1_fixture_files_are_untouched(name: str) -> None:
    # assert: regenerating the fixture would hide a broken reader
    assert hashlib.sha256((FIXTURE / name).read_bytes()).hexdigest() == FILE_SHA256[name]
