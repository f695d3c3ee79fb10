"""RFC 9162 Merkle trees: published vectors, a naive reference written from the RFC, tampering.

The reference below (``path_ranges``, ``proof_ranges``, ``naive_mth``) is the
RFC's recursive definitions, word for word, over leaf ranges; every proof the
tree produces for sizes up to 64 must equal it. Tampered proofs must fail,
and claims about another index or size must be accepted exactly when no
verifier could tell them apart (see ``shape``).
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from liaison.errors import LedgerError, ProofError
from liaison.ledger import merkle
from liaison.ledger.merkle import (
    EMPTY_ROOT,
    HASH_SIZE,
    MerkleTree,
    leaf_hash,
    node_hash,
    root_from_inclusion,
    root_from_leaf_hashes,
    verify_consistency,
    verify_inclusion,
)

# github.com/transparency-dev/merkle: testonly/constants.go (LeafInputs,
# RootHashes, NodeHashes) and proof/verify_test.go, which is where these
# came from; the same vectors as RFC 6962's reference implementation.
LEAF_INPUTS = [
    bytes.fromhex(h)
    for h in (
        "",
        "00",
        "10",
        "2021",
        "3031",
        "40414243",
        "5051525354555657",
        "606162636465666768696a6b6c6d6e6f",
    )
]
EMPTY_ROOT_HEX = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
ROOTS_HEX = [  # index: tree size
    EMPTY_ROOT_HEX,
    "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
    "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
    "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
    "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
    "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
    "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
    "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
    "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
]
NODE_HASHES_HEX = [  # [level][index]: complete subtrees of the 8-leaf tree
    [
        "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
        "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
        "0298d122906dcfc10892cb53a73992fc5b9f493ea4c9badb27b791b4127a7fe7",
        "07506a85fd9dd2f120eb694f86011e5bb4662e5c415a62917033d4a9624487e7",
        "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
        "4271a26be0d8a84f0bd54c8c302e7cb3a3b5d1fa6780a40bcce2873477dab658",
        "b08693ec2e721597130641e8211e7eedccb4c26413963eee6c1e2ed16ffb1a5f",
        "46f6ffadd3d06a09ff3c5860d2755c8b9819db7df44251788c7d8e3180de8eb1",
    ],
    [
        "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
        "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
        "0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
        "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
    ],
    [
        "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
    ],
    ["5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328"],
]
# (index, size, proof); the Go file numbers leaves from 1, these from 0.
INCLUSION_VECTORS = [
    (
        0,
        8,
        [
            "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
        ],
    ),
    (
        5,
        8,
        [
            "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
            "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        ],
    ),
    (2, 3, ["fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125"]),
    (
        1,
        5,
        [
            "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
        ],
    ),
    (0, 1, []),
]
CONSISTENCY_VECTORS = [  # (old size, new size, proof)
    (1, 1, []),
    (
        1,
        8,
        [
            "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
        ],
    ),
    (
        6,
        8,
        [
            "0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
            "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        ],
    ),
    (
        2,
        5,
        [
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
        ],
    ),
    (
        6,
        7,
        [
            "0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
            "b08693ec2e721597130641e8211e7eedccb4c26413963eee6c1e2ed16ffb1a5f",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        ],
    ),
]

SOME_HASH = hashlib.sha256(b"in no tree at all").digest()
EXHAUSTIVE = 64  # every proof of every tree up to this size is compared with the reference
LEAVES = [hashlib.sha256(b"\x00entry %d" % i).digest() for i in range(1100)]

Range = tuple[int, int]


# The reference, straight from RFC 9162 2.1.1, 2.1.3.1 and 2.1.4.1. It hashes
# with hashlib itself so that a bug in leaf_hash or node_hash cannot hide.


def split(n: int) -> int:
    """k: the largest power of two smaller than n (n > 1)."""
    k = 1
    while k * 2 < n:
        k *= 2
    return k


def naive_mth(leaves: list[bytes]) -> bytes:
    if not leaves:
        return hashlib.sha256(b"").digest()
    if len(leaves) == 1:
        return leaves[0]
    k = split(len(leaves))
    return hashlib.sha256(b"\x01" + naive_mth(leaves[:k]) + naive_mth(leaves[k:])).digest()


def path_ranges(m: int, start: int, end: int) -> list[Range]:
    """PATH(m, D[start:end]), as the leaf ranges whose MTH it lists."""
    n = end - start
    if n == 1:
        return []
    k = split(n)
    if m < k:
        return [*path_ranges(m, start, start + k), (start + k, end)]
    return [*path_ranges(m - k, start + k, end), (start, start + k)]


def subproof_ranges(m: int, start: int, end: int, b: bool) -> list[Range]:
    """SUBPROOF(m, D[start:end], b), as leaf ranges."""
    n = end - start
    if m == n:
        return [] if b else [(start, end)]
    k = split(n)
    if m <= k:
        return [*subproof_ranges(m, start, start + k, b), (start + k, end)]
    return [*subproof_ranges(m - k, start + k, end, False), (start, start + k)]


def proof_ranges(m: int, n: int) -> list[Range]:
    """PROOF(m, D[0:n]); the RFC defines it for 0 < m < n, the API gives [] otherwise."""
    return subproof_ranges(m, 0, n, True) if 0 < m < n else []


def naive_path(m: int, leaves: list[bytes]) -> list[bytes]:
    return [naive_mth(leaves[a:b]) for a, b in path_ranges(m, 0, len(leaves))]


def naive_proof(m: int, leaves: list[bytes]) -> list[bytes]:
    return [naive_mth(leaves[a:b]) for a, b in proof_ranges(m, len(leaves))]


def shape(start: int, end: int, given_hashes: dict[Range, str]) -> str:
    """MTH(D[start:end]) spelled in the hashes a verifier is given, named by their role.

    A verifier sees only 32-byte hashes, never how many leaves each covers, so
    two claims over the same hashes verify alike exactly when their roots have
    the same spelling. A leaf the verifier is not given is spelled ``?``.
    """
    if (start, end) in given_hashes:
        return given_hashes[(start, end)]
    if end - start == 1:
        return "?"
    mid = start + split(end - start)
    return f"({shape(start, mid, given_hashes)},{shape(mid, end, given_hashes)})"


def inclusion_shape(index: int, size: int, proof_length: int) -> str | None:
    """How a root is computed from the claim; None where no valid proof has this length."""
    if not 0 <= index < size:
        return None
    ranges = path_ranges(index, 0, size)
    if len(ranges) != proof_length:
        return None
    given_hashes = {r: f"p{i}" for i, r in enumerate(ranges)}
    given_hashes[(index, index + 1)] = "leaf"
    return shape(0, size, given_hashes)


def consistency_shape(old_size: int, new_size: int, proof_length: int) -> tuple[str, str] | None:
    """How both roots are computed from the claim; None outside 0 < old < new or wrong length."""
    if not 0 < old_size < new_size:
        return None
    ranges = proof_ranges(old_size, new_size)
    if len(ranges) != proof_length:
        return None
    given_hashes = {r: f"p{i}" for i, r in enumerate(ranges)}
    if old_size & (old_size - 1) == 0:
        # Then the old root is a node of the new tree, so a verifier is given it.
        given_hashes[(0, old_size)] = "old"
    return shape(0, old_size, given_hashes), shape(0, new_size, given_hashes)


@pytest.fixture(scope="module")
def tree() -> MerkleTree:
    return MerkleTree.from_leaf_hashes(LEAVES)


@dataclass(frozen=True)
class Inclusion:
    leaf: bytes
    index: int
    size: int
    proof: tuple[bytes, ...]
    root: bytes

    def verifies(self) -> bool:
        try:
            verify_inclusion(self.leaf, self.index, self.size, self.proof, self.root)
        except ProofError:
            return False
        return True


@dataclass(frozen=True)
class Consistency:
    old_size: int
    new_size: int
    old_root: bytes
    new_root: bytes
    proof: tuple[bytes, ...]

    def verifies(self) -> bool:
        try:
            verify_consistency(
                self.old_size, self.new_size, self.old_root, self.new_root, self.proof
            )
        except ProofError:
            return False
        return True


def inclusion(tree: MerkleTree, index: int, size: int) -> Inclusion:
    return Inclusion(
        tree.leaf(index), index, size, tuple(tree.inclusion_proof(index, size)), tree.root(size)
    )


def consistency(tree: MerkleTree, old_size: int, new_size: int) -> Consistency:
    return Consistency(
        old_size,
        new_size,
        tree.root(old_size),
        tree.root(new_size),
        tuple(tree.consistency_proof(old_size, new_size)),
    )


def flip(data: bytes, bit: int) -> bytes:
    return data[: bit // 8] + bytes([data[bit // 8] ^ (1 << bit % 8)]) + data[bit // 8 + 1 :]


def bits_to_flip(size: int) -> range:
    # Every bit for trees up to 16 leaves. Beyond, every fifth bit keeps the
    # file fast and still hits every byte and every bit position within a byte.
    return range(HASH_SIZE * 8) if size <= 16 else range(0, HASH_SIZE * 8, 5)


def tampered_elements(
    proof: tuple[bytes, ...], bits: range, extras: dict[str, bytes]
) -> Iterator[tuple[str, tuple[bytes, ...]]]:
    """Every way to damage a proof's list of hashes that must fail verification."""
    for i, element in enumerate(proof):
        before, after = proof[:i], proof[i + 1 :]
        for bit in bits:
            yield f"proof[{i}] bit {bit} flipped", (*before, flip(element, bit), *after)
        yield f"proof[{i}] removed", (*before, *after)
        yield f"proof[{i}] duplicated", (*before, element, element, *after)
        yield f"proof[{i}] cut to 31 bytes", (*before, element[:31], *after)
        yield f"proof[{i}] grown to 33 bytes", (*before, element + b"\x00", *after)
    for name, extra in extras.items():
        yield f"{name} appended", (*proof, extra)
        yield f"{name} prepended", (extra, *proof)
        yield f"{name} inserted after the first hash", (*proof[:1], extra, *proof[1:])


def tampered_inclusions(claim: Inclusion, tree: MerkleTree) -> Iterator[tuple[str, Inclusion]]:
    yield "another entry's leaf", replace(claim, leaf=leaf_hash(b"not in the log"))
    yield "leaf with bit 0 flipped", replace(claim, leaf=flip(claim.leaf, 0))
    yield "leaf cut to 31 bytes", replace(claim, leaf=claim.leaf[:31])
    yield "root of the next smaller tree", replace(claim, root=tree.root(claim.size - 1))
    yield "unrelated root", replace(claim, root=SOME_HASH)
    yield "root with bit 255 flipped", replace(claim, root=flip(claim.root, 255))
    yield "root cut to 31 bytes", replace(claim, root=claim.root[:31])
    index, size = claim.index, claim.size
    for other_index, other_size in (
        (index - 1, size),
        (index + 1, size),
        (index ^ 2, size),
        (index, size * 2),
        (index, size // 2),
    ):
        yield (
            f"claimed as leaf {other_index} of {other_size}",
            replace(claim, index=other_index, size=other_size),
        )
    extras = {"unrelated hash": SOME_HASH, "root": claim.root, "leaf": claim.leaf}
    for name, proof in tampered_elements(claim.proof, bits_to_flip(claim.size), extras):
        yield name, replace(claim, proof=proof)


def tampered_consistencies(
    claim: Consistency, tree: MerkleTree
) -> Iterator[tuple[str, Consistency]]:
    old, new = claim.old_root, claim.new_root
    yield (
        "old root of the next smaller tree",
        replace(claim, old_root=tree.root(claim.old_size - 1)),
    )
    yield (
        "new root of the next smaller tree",
        replace(claim, new_root=tree.root(claim.new_size - 1)),
    )
    yield "unrelated old root", replace(claim, old_root=SOME_HASH)
    yield "unrelated new root", replace(claim, new_root=SOME_HASH)
    yield "old root with bit 7 flipped", replace(claim, old_root=flip(old, 7))
    yield "new root with bit 7 flipped", replace(claim, new_root=flip(new, 7))
    yield "roots swapped", replace(claim, old_root=new, new_root=old)
    yield "new root given as old", replace(claim, old_root=new)
    yield "old root given as new", replace(claim, new_root=old)
    yield "old root cut to 31 bytes", replace(claim, old_root=old[:31])
    yield "new root cut to 31 bytes", replace(claim, new_root=new[:31])
    yield "empty proof", replace(claim, proof=())
    old_size, new_size = claim.old_size, claim.new_size
    for other_old, other_new in (
        (old_size - 1, new_size),
        (old_size + 1, new_size),
        (old_size ^ 2, new_size),
        (old_size, new_size * 2),
        (old_size, new_size // 2),
    ):
        yield (
            f"claimed as {other_old}->{other_new}",
            replace(claim, old_size=other_old, new_size=other_new),
        )

    extras = {"unrelated hash": SOME_HASH, "old root": old, "new root": new}
    for name, proof in tampered_elements(claim.proof, bits_to_flip(claim.new_size), extras):
        yield name, replace(claim, proof=proof)


# Known answers.


def test_empty_root_is_sha256_of_nothing() -> None:
    assert EMPTY_ROOT.hex() == EMPTY_ROOT_HEX
    assert root_from_leaf_hashes([]) == EMPTY_ROOT
    assert MerkleTree().root() == EMPTY_ROOT
    assert MerkleTree().size == 0


def test_hashes_match_the_rfc6962_hasher_vectors() -> None:
    # transparency-dev/merkle rfc6962/rfc6962_test.go
    assert leaf_hash(b"").hex() == ROOTS_HEX[1]
    assert leaf_hash(b"L123456").hex() == (
        "395aa064aa4c29f7010acfe3f25db9485bbd4b91897b6ad7ad547639252b4d56"
    )
    assert node_hash(b"N123", b"N456").hex() == (
        "aa217fe888e47007fa15edab33c2b492a722cb106c64667fc2b044444de66bbb"
    )
    assert leaf_hash(b"L123456") == hashlib.sha256(bytes.fromhex("004C313233343536")).digest()
    assert node_hash(b"N123", b"N456") == (
        hashlib.sha256(bytes.fromhex("014E3132334E343536")).digest()
    )


def test_published_roots_for_sizes_0_to_8() -> None:
    leaves = [leaf_hash(entry) for entry in LEAF_INPUTS]
    incremental = MerkleTree()
    for size, expected in enumerate(ROOTS_HEX):
        assert naive_mth(leaves[:size]).hex() == expected, "the reference disagrees"
        assert root_from_leaf_hashes(leaves[:size]).hex() == expected
        assert MerkleTree.from_leaf_hashes(leaves[:size]).root().hex() == expected
        assert incremental.root().hex() == expected
        if size < len(leaves):
            assert incremental.append(leaves[size]) == size
    for size, expected in enumerate(ROOTS_HEX):
        assert incremental.root(size).hex() == expected


def test_published_complete_subtree_hashes() -> None:
    tree = MerkleTree.from_leaf_hashes([leaf_hash(entry) for entry in LEAF_INPUTS])
    for level, hashes in enumerate(NODE_HASHES_HEX):
        width = 1 << level
        for index, expected in enumerate(hashes):
            assert tree.subtree_hash(index * width, (index + 1) * width).hex() == expected


@pytest.mark.parametrize(("index", "size", "proof_hex"), INCLUSION_VECTORS)
def test_published_inclusion_proofs(index: int, size: int, proof_hex: list[str]) -> None:
    tree = MerkleTree.from_leaf_hashes([leaf_hash(entry) for entry in LEAF_INPUTS])
    proof = [bytes.fromhex(h) for h in proof_hex]

    assert tree.inclusion_proof(index, size) == proof
    verify_inclusion(
        leaf_hash(LEAF_INPUTS[index]), index, size, proof, bytes.fromhex(ROOTS_HEX[size])
    )


@pytest.mark.parametrize(("old_size", "new_size", "proof_hex"), CONSISTENCY_VECTORS)
def test_published_consistency_proofs(old_size: int, new_size: int, proof_hex: list[str]) -> None:
    tree = MerkleTree.from_leaf_hashes([leaf_hash(entry) for entry in LEAF_INPUTS])
    proof = [bytes.fromhex(h) for h in proof_hex]
    old_root, new_root = bytes.fromhex(ROOTS_HEX[old_size]), bytes.fromhex(ROOTS_HEX[new_size])

    assert tree.consistency_proof(old_size, new_size) == proof
    verify_consistency(old_size, new_size, old_root, new_root, proof)


# Every tree up to EXHAUSTIVE leaves against the reference.


def test_roots_of_every_size_match_the_reference(tree: MerkleTree) -> None:
    for size in range(EXHAUSTIVE + 1):
        expected = naive_mth(LEAVES[:size])
        assert tree.root(size) == expected
        assert root_from_leaf_hashes(LEAVES[:size]) == expected
    for size in (127, 128, 129, 1000, 1023, 1024, 1025, len(LEAVES)):
        assert tree.root(size) == root_from_leaf_hashes(LEAVES[:size]) == naive_mth(LEAVES[:size])


def test_inclusion_proofs_match_the_reference_and_verify(tree: MerkleTree) -> None:
    for size in range(1, EXHAUSTIVE + 1):
        root = tree.root(size)
        for index in range(size):
            proof = tree.inclusion_proof(index, size)
            assert proof == naive_path(index, LEAVES[:size]), (index, size)
            verify_inclusion(LEAVES[index], index, size, proof, root)
            assert root_from_inclusion(LEAVES[index], index, size, proof) == root


def test_consistency_proofs_match_the_reference_and_verify(tree: MerkleTree) -> None:
    for new_size in range(EXHAUSTIVE + 1):
        new_root = tree.root(new_size)
        for old_size in range(new_size + 1):
            proof = tree.consistency_proof(old_size, new_size)
            assert proof == naive_proof(old_size, LEAVES[:new_size]), (old_size, new_size)
            verify_consistency(old_size, new_size, tree.root(old_size), new_root, proof)


def test_proofs_for_large_trees_match_the_reference(tree: MerkleTree) -> None:
    rng = random.Random(9162)
    for size in (1023, 1024, 1025, len(LEAVES)):
        for index in (0, size - 1, *rng.sample(range(size), 5)):
            proof = tree.inclusion_proof(index, size)
            assert proof == naive_path(index, LEAVES[:size])
            verify_inclusion(LEAVES[index], index, size, proof, tree.root(size))
        for old_size in (1, 512, size - 1, *rng.sample(range(size), 5)):
            proof = tree.consistency_proof(old_size, size)
            assert proof == naive_proof(old_size, LEAVES[:size])
            verify_consistency(old_size, size, tree.root(old_size), tree.root(size), proof)


def test_subtree_hash_of_every_range_matches_the_reference(tree: MerkleTree) -> None:
    for end in range(41):
        for start in range(end + 1):
            assert tree.subtree_hash(start, end) == naive_mth(LEAVES[start:end]), (start, end)


def test_a_tree_answers_for_sizes_it_has_grown_past() -> None:
    grown = MerkleTree()
    for size in range(1, 40):
        grown.append(LEAVES[size - 1])
        kept = MerkleTree.from_leaf_hashes(LEAVES[:size])
        for earlier in range(size + 1):
            assert grown.root(earlier) == kept.root(earlier)
            assert grown.consistency_proof(earlier) == kept.consistency_proof(earlier)
        for index in range(size):
            assert grown.leaf(index) == LEAVES[index]
            assert grown.inclusion_proof(index) == kept.inclusion_proof(index)


# Tampering.


@pytest.mark.parametrize("size", [*range(1, 33), 127, 128, 129, 1025])
def test_tampered_inclusion_proofs_are_rejected(tree: MerkleTree, size: int) -> None:
    indexes = range(size) if size <= 32 else random.Random(size).sample(range(size), 4)
    accepted = []
    tried = 0
    for index in indexes:
        claim = inclusion(tree, index, size)
        assert claim.verifies()
        for name, tampered in tampered_inclusions(claim, tree):
            tried += 1
            if tampered.verifies():
                accepted.append(f"leaf {index}: {name}")
    assert accepted == []
    assert tried > 0


@pytest.mark.parametrize("size", [*range(2, 33), 127, 128, 129, 1025])
def test_tampered_consistency_proofs_are_rejected(tree: MerkleTree, size: int) -> None:
    old_sizes = range(1, size) if size <= 32 else random.Random(size).sample(range(1, size), 4)
    accepted = []
    for old_size in old_sizes:
        claim = consistency(tree, old_size, size)
        assert claim.verifies()
        for name, tampered in tampered_consistencies(claim, tree):
            if tampered.verifies():
                accepted.append(f"from size {old_size}: {name}")
    assert accepted == []


def test_inclusion_under_a_size_one_off_verifies_exactly_when_no_verifier_could_tell(
    tree: MerkleTree,
) -> None:
    # A root is bound to its size by the checkpoint, not by the proof: the
    # proof [l1, l2] of leaf 0 in three leaves also shows leaf 0 in a four-leaf
    # tree whose last two leaves hash to l2. So a size one off must fail exactly
    # when its root is spelled differently in the proof's hashes.
    wrongly = []
    outcomes = {True: 0, False: 0}
    for size in range(1, 33):
        for index in range(size):
            claim = inclusion(tree, index, size)
            truth = inclusion_shape(index, size, len(claim.proof))
            for other_size in (size - 1, size + 1):
                same = inclusion_shape(index, other_size, len(claim.proof)) == truth
                if replace(claim, size=other_size).verifies() != same:
                    wrongly.append(f"leaf {index} of {size} as of {other_size}")
                outcomes[same] += 1
    assert wrongly == []
    assert outcomes[True] > 0
    assert outcomes[False] > 0


def test_consistency_with_a_new_size_one_off_verifies_exactly_when_no_verifier_could_tell(
    tree: MerkleTree,
) -> None:
    wrongly = []
    outcomes = {True: 0, False: 0}
    for new_size in range(2, 33):
        for old_size in range(1, new_size):
            claim = consistency(tree, old_size, new_size)
            truth = consistency_shape(old_size, new_size, len(claim.proof))
            for other_size in (new_size - 1, new_size + 1):
                same = consistency_shape(old_size, other_size, len(claim.proof)) == truth
                if replace(claim, new_size=other_size).verifies() != same:
                    wrongly.append(f"{old_size}->{new_size} as {old_size}->{other_size}")
                outcomes[same] += 1
    assert wrongly == []
    assert outcomes[True] > 0
    assert outcomes[False] > 0


# The edges the RFC leaves to us, and messages.


def test_consistency_with_equal_sizes_needs_equal_roots_and_no_proof(tree: MerkleTree) -> None:
    for size in (0, 1, 5, 8):
        root = tree.root(size)
        verify_consistency(size, size, root, root, [])
        with pytest.raises(ProofError, match=r"roots for the same tree size \d+ differ"):
            verify_consistency(size, size, root, SOME_HASH, [])
        with pytest.raises(ProofError, match="has 1 hashes, expected none"):
            verify_consistency(size, size, root, root, [root])


def test_consistency_from_the_empty_tree_accepts_any_new_root() -> None:
    verify_consistency(0, 7, EMPTY_ROOT, SOME_HASH, [])
    with pytest.raises(ProofError, match="has 1 hashes, expected none"):
        verify_consistency(0, 7, EMPTY_ROOT, SOME_HASH, [SOME_HASH])
    with pytest.raises(
        ProofError, match=r"old root for tree size 0 is .*, expected the empty root"
    ):
        verify_consistency(0, 7, SOME_HASH, SOME_HASH, [])


def test_consistency_rejects_a_shrinking_or_negative_log(tree: MerkleTree) -> None:
    proof = tree.consistency_proof(3, 8)
    with pytest.raises(ProofError, match="old tree size 8 is larger than new tree size 3"):
        verify_consistency(8, 3, tree.root(8), tree.root(3), proof)
    with pytest.raises(ProofError, match="must not be negative"):
        verify_consistency(-1, 3, tree.root(3), tree.root(3), [])


def test_consistency_proof_messages_say_what_was_found_and_expected(tree: MerkleTree) -> None:
    proof = tree.consistency_proof(3, 8)
    old, new = tree.root(3), tree.root(8)
    with pytest.raises(ProofError, match="from size 3 to 8 has 2 hashes, expected 4"):
        verify_consistency(3, 8, old, new, proof[:2])
    with pytest.raises(ProofError, match="consistency proof hash 1 is 31 bytes, expected 32"):
        verify_consistency(3, 8, old, new, [proof[0], proof[1][:31], *proof[2:]])
    with pytest.raises(ProofError, match=f"leads to new root .*, expected {SOME_HASH.hex()}"):
        verify_consistency(3, 8, old, SOME_HASH, proof)
    with pytest.raises(ProofError, match=f"leads to old root .*, expected {SOME_HASH.hex()}"):
        verify_consistency(3, 8, SOME_HASH, new, proof)
    with pytest.raises(ProofError, match="new root hash is 0 bytes, expected 32"):
        verify_consistency(3, 8, old, b"", proof)


def test_inclusion_proof_messages_say_what_was_found_and_expected(tree: MerkleTree) -> None:
    proof = tree.inclusion_proof(5, 13)
    leaf, root = tree.leaf(5), tree.root(13)
    with pytest.raises(ProofError, match="leaf 5 in a tree of size 13 has 3 hashes, expected 4"):
        verify_inclusion(leaf, 5, 13, proof[1:], root)
    with pytest.raises(ProofError, match="inclusion proof hash 2 is 33 bytes, expected 32"):
        verify_inclusion(leaf, 5, 13, [*proof[:2], proof[2] + b"!", proof[3]], root)
    with pytest.raises(ProofError, match=f"leads to root .*, expected {SOME_HASH.hex()}"):
        verify_inclusion(leaf, 5, 13, proof, SOME_HASH)
    with pytest.raises(ProofError, match="leaf index 13 is outside a tree of size 13"):
        verify_inclusion(leaf, 13, 13, proof, root)
    with pytest.raises(ProofError, match="leaf index 0 is outside a tree of size 0"):
        verify_inclusion(leaf, 0, 0, [], EMPTY_ROOT)
    with pytest.raises(ProofError, match="must not be negative"):
        verify_inclusion(leaf, -1, 13, proof, root)
    with pytest.raises(ProofError, match="leaf hash is 7 bytes, expected 32"):
        verify_inclusion(b"L123456", 5, 13, proof, root)
    with pytest.raises(ProofError, match="root hash is 31 bytes, expected 32"):
        verify_inclusion(leaf, 5, 13, proof, root[:31])


def test_proof_errors_are_ledger_errors() -> None:
    with pytest.raises(LedgerError):
        verify_inclusion(SOME_HASH, 0, 1, [], EMPTY_ROOT)


def test_tree_methods_reject_bad_arguments(tree: MerkleTree) -> None:
    small = MerkleTree.from_leaf_hashes(LEAVES[:5])
    with pytest.raises(ValueError, match="leaf index 5 is outside the tree"):
        small.leaf(5)
    with pytest.raises(ValueError, match="leaf index -1 is outside the tree"):
        small.leaf(-1)
    with pytest.raises(ValueError, match="tree size 6 is not between 0 and the tree's size 5"):
        small.root(6)
    with pytest.raises(ValueError, match="tree size -1 is not between 0"):
        small.root(-1)
    with pytest.raises(ValueError, match="leaf index 3 is outside a tree of size 3"):
        small.inclusion_proof(3, 3)
    with pytest.raises(ValueError, match="leaf index 0 is outside a tree of size 0"):
        MerkleTree().inclusion_proof(0)
    with pytest.raises(ValueError, match="tree size 9 is not between"):
        small.inclusion_proof(0, 9)
    with pytest.raises(ValueError, match="old size 4 is not between 0 and the new size 3"):
        small.consistency_proof(4, 3)
    with pytest.raises(ValueError, match="new size 6 is not between"):
        small.consistency_proof(1, 6)
    with pytest.raises(ValueError, match=r"leaf range \[3, 2\) is not within the tree"):
        small.subtree_hash(3, 2)
    with pytest.raises(ValueError, match=r"leaf range \[0, 6\) is not within the tree"):
        small.subtree_hash(0, 6)
    with pytest.raises(ValueError, match="leaf hash is 7 bytes, expected 32; pass leaf_hash"):
        small.append(b"L123456")
    with pytest.raises(ValueError, match="leaf hash at position 1 is 31 bytes"):
        MerkleTree.from_leaf_hashes([LEAVES[0], LEAVES[1][:31]])
    with pytest.raises(ValueError, match="leaf hash at position 2 is 33 bytes"):
        root_from_leaf_hashes([LEAVES[0], LEAVES[1], LEAVES[2] + b"\x00"])
    assert small.size == 5, "a rejected append must not change the tree"
    assert small.root() == naive_mth(LEAVES[:5])


# Cost: counted in hashes, which no machine's speed can make flaky.


@pytest.fixture
def count_hashes(monkeypatch: pytest.MonkeyPatch) -> Callable[[], int]:
    calls = [0]
    real = hashlib.sha256

    def counting(data: bytes = b"") -> hashlib._Hash:
        calls[0] += 1
        return real(data)

    monkeypatch.setattr(merkle, "_sha256", counting)

    def taken() -> int:
        count, calls[0] = calls[0], 0
        return count

    return taken


def test_append_costs_one_hash_per_leaf_and_queries_log_n(
    tree: MerkleTree, count_hashes: Callable[[], int]
) -> None:
    grown = MerkleTree()
    for leaf in LEAVES:
        grown.append(leaf)
    assert count_hashes() == len(LEAVES) - bin(len(LEAVES)).count("1")
    bulk = MerkleTree.from_leaf_hashes(LEAVES)
    assert count_hashes() == len(LEAVES) - bin(len(LEAVES)).count("1")
    root_from_leaf_hashes(LEAVES)
    assert count_hashes() == len(LEAVES) - 1

    log_n = len(LEAVES).bit_length()
    for size in (1, 2, 3, 1023, 1024, 1025, 1099, len(LEAVES)):
        bulk.root(size)
        assert count_hashes() < log_n, size
        for index in (0, size // 3, size - 1):
            bulk.inclusion_proof(index, size)
            assert count_hashes() < log_n, (index, size)
        for old_size in (1, size // 3, size - 1):
            bulk.consistency_proof(old_size, size)
            assert count_hashes() < log_n, (old_size, size)


# Random trees.


@settings(max_examples=40, deadline=None)
@given(
    size=st.integers(min_value=1, max_value=2000),
    seed=st.binary(min_size=1, max_size=8),
    data=st.data(),
)
def test_random_trees(size: int, seed: bytes, data: st.DataObject) -> None:
    leaves = [hashlib.sha256(seed + i.to_bytes(4, "big")).digest() for i in range(size)]
    grown = MerkleTree()
    for i, leaf in enumerate(leaves):
        assert grown.append(leaf) == i
    bulk = MerkleTree.from_leaf_hashes(iter(leaves))

    assert bulk.size == grown.size == size
    assert bulk.root() == grown.root() == root_from_leaf_hashes(leaves)

    at_size = data.draw(st.integers(min_value=1, max_value=size), label="proof for size")
    index = data.draw(st.integers(min_value=0, max_value=at_size - 1), label="index")
    proof = bulk.inclusion_proof(index, at_size)
    assert proof == grown.inclusion_proof(index, at_size)
    verify_inclusion(leaves[index], index, at_size, proof, grown.root(at_size))

    old_size = data.draw(st.integers(min_value=0, max_value=size), label="old size")
    proof = bulk.consistency_proof(old_size)
    assert proof == grown.consistency_proof(old_size)
    assert grown.root(old_size) == root_from_leaf_hashes(leaves[:old_size])
    verify_consistency(old_size, size, grown.root(old_size), bulk.root(), proof)
