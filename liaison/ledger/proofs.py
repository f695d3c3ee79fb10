"""Proof files an auditor can hand to someone else: small, JSON, checkable offline.

An inclusion proof carries the entry itself, its index, the RFC 9162 path and
a checkpoint the log signed, so a court can check with the log's public key
alone that this exact entry is in the log it was shown. A consistency proof
carries two signed checkpoints and the path that shows the later log extends
the earlier one without rewriting it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from liaison.errors import CheckpointError, ConfigError, LedgerError, ProofError
from liaison.keys import VerifyingKey
from liaison.ledger.checkpoint import Checkpoint, open_checkpoint, parse_unverified
from liaison.ledger.merkle import MerkleTree, leaf_hash, verify_consistency, verify_inclusion
from liaison.ledger.store import LedgerStore

INCLUSION_TYPE = "liaison.inclusion-proof.v1"
CONSISTENCY_TYPE = "liaison.consistency-proof.v1"
MAX_PROOF_FILE_BYTES = 4 * 1024 * 1024


def _signed_at(store: LedgerStore, size: int | None, *, at_least: int) -> str:
    """A stored checkpoint of exactly ``size``, or else the newest covering ``at_least`` entries."""
    found = store.checkpoint_for(size=size, at_least=at_least)
    if found is None:
        wanted = f"of size {size}" if size is not None else f"covering entry {at_least - 1}"
        raise LedgerError(
            f"the ledger holds no signed checkpoint {wanted}; choose a size a checkpoint "
            "vouches for (`liaison audit verify` lists them), or wait for the next checkpoint"
        )
    return found.note


def inclusion_proof(store: LedgerStore, tree: MerkleTree, index: int) -> dict[str, Any]:
    if not 0 <= index < tree.size:
        raise LedgerError(f"the ledger has entries 0..{tree.size - 1}; there is no entry {index}")
    note = _signed_at(store, None, at_least=index + 1)
    size = parse_unverified(note).size
    entry = store.entry(index)
    assert entry is not None  # the tree was built from these rows
    return {
        "type": INCLUSION_TYPE,
        "index": index,
        "entry": entry.decode("utf-8"),
        "path": [h.hex() for h in tree.inclusion_proof(index, size)],
        "checkpoint": note,
    }


def consistency_proof(
    store: LedgerStore, tree: MerkleTree, old_size: int, new_size: int | None
) -> dict[str, Any]:
    old_note = _signed_at(store, old_size, at_least=0)
    new_note = _signed_at(store, new_size, at_least=tree.size if new_size is None else new_size)
    new = parse_unverified(new_note)
    if new.size > tree.size:
        raise LedgerError(
            f"the newest checkpoint vouches for {new.size} entries but the ledger holds "
            f"{tree.size}; run `liaison audit verify` first"
        )
    return {
        "type": CONSISTENCY_TYPE,
        "old_checkpoint": old_note,
        "new_checkpoint": new_note,
        "path": [h.hex() for h in tree.consistency_proof(old_size, new.size)],
    }


@dataclass(frozen=True, slots=True)
class ProofResult:
    kind: str
    summary: str
    checkpoint: Checkpoint


def write_proof(document: dict[str, Any], path: Path) -> None:
    path.write_text(json.dumps(document, indent=2, sort_keys=True) + "\n")


def check_proof_file(path: Path, key: VerifyingKey, origin: str | None = None) -> ProofResult:
    """Verify a proof file offline; raise ProofError or CheckpointError saying what failed."""
    try:
        if path.stat().st_size > MAX_PROOF_FILE_BYTES:
            raise ProofError(f"{path} is larger than any proof file ({MAX_PROOF_FILE_BYTES} bytes)")
        document = json.loads(path.read_text())
    except OSError as exc:
        raise ConfigError(f"cannot read proof file {path} ({exc.strerror})") from exc
    except (ValueError, UnicodeDecodeError) as exc:
        raise ProofError(f"{path} is not a JSON proof file ({exc})") from exc
    if not isinstance(document, dict):
        raise ProofError(f"{path} is not a proof file")
    try:
        return _check(document, key, origin)
    except (KeyError, TypeError, ValueError) as exc:
        raise ProofError(f"{path} is malformed ({type(exc).__name__}: {exc})") from exc


def _path(document: dict[str, Any]) -> list[bytes]:
    return [bytes.fromhex(h) for h in document["path"]]


def _check(document: dict[str, Any], key: VerifyingKey, origin: str | None) -> ProofResult:
    kind = document.get("type")
    if kind == INCLUSION_TYPE:
        cp = open_checkpoint(str(document["checkpoint"]), key, origin=origin)
        entry = str(document["entry"]).encode("utf-8")
        index = int(document["index"])
        verify_inclusion(leaf_hash(entry), index, cp.size, _path(document), cp.root)
        return ProofResult(
            "inclusion",
            f"entry {index} is in the log {cp.origin} of {cp.size} entries (checkpoint signed "
            f"at {cp.time_ms})",
            cp,
        )
    if kind == CONSISTENCY_TYPE:
        old = open_checkpoint(str(document["old_checkpoint"]), key, origin=origin)
        new = open_checkpoint(str(document["new_checkpoint"]), key, origin=origin or old.origin)
        if new.origin != old.origin:
            raise CheckpointError(f"the checkpoints are of two logs: {old.origin}, {new.origin}")
        verify_consistency(old.size, new.size, old.root, new.root, _path(document))
        return ProofResult(
            "consistency",
            f"the log {new.origin} of {new.size} entries extends, unchanged, the log of "
            f"{old.size} entries",
            new,
        )
    raise ProofError(
        f"unknown proof type {kind!r}; expected {INCLUSION_TYPE} or {CONSISTENCY_TYPE}"
    )
