"""RFC 9162 (Certificate Transparency v2) section 2.1 Merkle trees with SHA-256.

Hashing, an append-only in-memory tree that answers roots and proofs for every
earlier size, and the RFC's inclusion and consistency proof verifiers, which
raise :class:`~liaison.errors.ProofError` and return nothing.
"""

from __future__ import annotations

import hashlib
import operator
from collections.abc import Iterable, Sequence
from itertools import repeat

from liaison.errors import ProofError

HASH_SIZE = 32
EMPTY_ROOT: bytes = hashlib.sha256(b"").digest()

# Looked up once: a 1M-entry ledger is verified with about 2M calls.
_sha256 = hashlib.sha256
# Domain separation (RFC 9162 2.1.1): a leaf can never be passed off as an
# interior node, which is what makes second preimages infeasible.
_LEAF_PREFIX = b"\x00"
_NODE_PREFIX = b"\x01"


def leaf_hash(entry: bytes) -> bytes:
    """``SHA-256(0x00 || entry)``."""
    return _sha256(_LEAF_PREFIX + entry).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    """``SHA-256(0x01 || left || right)``."""
    return _sha256(_NODE_PREFIX + left + right).digest()


def root_from_leaf_hashes(leaves: Sequence[bytes]) -> bytes:
    """MTH over already-hashed leaves; :data:`EMPTY_ROOT` for no leaves.

    Hashes level by level, carrying an odd last node up unchanged: that builds
    exactly the RFC's tree (split at the largest power of two below n) without
    recursion, in n - 1 hashes.
    """
    _check_leaf_arguments(leaves)
    if not leaves:
        return EMPTY_ROOT
    level = list(leaves)
    while len(level) > 1:
        upper = _parents(level)
        if len(level) % 2:
            upper.append(level[-1])
        level = upper
    return bytes(level[0])


class MerkleTree:
    """Append-only tree over leaf hashes that answers roots and proofs for any earlier size.

    Keeps every complete subtree hash, level by level, in one bytearray per level
    (32 bytes per node), so memory is ~64 bytes per leaf and no per-node Python objects.
    Node ``j`` of level ``k`` is MTH of leaves ``[j * 2**k, (j + 1) * 2**k)``; such a
    node never changes once its last leaf is appended, so it serves every later size.
    """

    __slots__ = ("_levels", "_size")

    def __init__(self) -> None:
        self._levels: list[bytearray] = [bytearray()]
        self._size = 0

    @classmethod
    def from_leaf_hashes(cls, leaves: Iterable[bytes]) -> MerkleTree:
        """Build a tree from leaf hashes in one pass per level (faster than appending)."""
        level = list(leaves)
        _check_leaf_arguments(level)
        tree = cls()
        tree._size = len(level)
        tree._levels = [bytearray().join(level)]
        while len(level) > 1:
            # An odd last node is not a complete subtree yet; append() will pair it later.
            level = _parents(level)
            tree._levels.append(bytearray().join(level))
        return tree

    @classmethod
    def from_subtree_levels(cls, parts: Sequence[Sequence[bytes]]) -> MerkleTree:
        """Join trees built apart over consecutive runs of leaves (see :func:`subtree_levels`).

        Each part holds levels 0 to ``depth`` of one run, all to the same depth,
        and every run but the last covers a multiple of ``2**depth`` leaves, so
        no node of those levels spans two runs; the levels above are hashed here.
        """
        if not parts:
            return cls()
        depth = len(parts[0]) - 1
        span = HASH_SIZE << depth
        # An empty run adds nothing, wherever it stands.
        parts = [part for part in parts if len(part) != depth + 1 or part[0]]
        for position, part in enumerate(parts):
            leaves = len(part[0]) // HASH_SIZE
            if (
                len(part) != depth + 1
                or len(part[0]) % HASH_SIZE
                or (position < len(parts) - 1 and len(part[0]) % span)
                or any(len(part[k]) != (leaves >> k) * HASH_SIZE for k in range(depth + 1))
            ):
                raise ValueError(
                    f"subtree levels of part {position} do not fit: every part needs levels "
                    f"0..{depth}, and every part but the last a multiple of {1 << depth} leaves"
                )
        tree = cls()
        tree._levels = [bytearray().join(part[k] for part in parts) for k in range(depth + 1)]
        tree._size = len(tree._levels[0]) // HASH_SIZE
        top = tree._levels[-1]
        level = [bytes(top[i : i + HASH_SIZE]) for i in range(0, len(top), HASH_SIZE)]
        while len(level) > 1:
            level = _parents(level)
            tree._levels.append(bytearray().join(level))
        # As from_leaf_hashes leaves them: no level above the first of one node.
        while len(tree._levels) > 1 and len(tree._levels[-2]) <= HASH_SIZE:
            tree._levels.pop()
        return tree

    @property
    def size(self) -> int:
        return self._size

    def append(self, leaf: bytes) -> int:
        """Append a 32-byte leaf hash; return its index."""
        _check_leaf_argument(leaf)
        index = self._size
        self._levels[0] += leaf
        # Each odd position closes a complete subtree with its left sibling, so
        # appends cost one hash on average.
        position, level = index, 0
        while position & 1:
            nodes = self._levels[level]
            parent = _sha256(_NODE_PREFIX + nodes[-2 * HASH_SIZE :]).digest()
            if level + 1 == len(self._levels):
                self._levels.append(bytearray())
            self._levels[level + 1] += parent
            position >>= 1
            level += 1
        # Published last, so a reader in another thread never asks for a node of
        # the new size before it is stored. Appends themselves must be serialised.
        self._size = index + 1
        return index

    def leaf(self, index: int) -> bytes:
        if not 0 <= index < self._size:
            raise ValueError(f"leaf index {index} is outside the tree (size {self._size})")
        return self._node(0, index)

    def root(self, size: int | None = None) -> bytes:
        """MTH of the first ``size`` leaves (default: all)."""
        size = self._checked_size(size, "tree size")
        return self._mth(0, size)

    def inclusion_proof(self, index: int, size: int | None = None) -> list[bytes]:
        """RFC 9162 2.1.3.1 ``PATH(index, D[0:size])``, leaf to root."""
        size = self._checked_size(size, "tree size")
        if not 0 <= index < size:
            raise ValueError(f"leaf index {index} is outside a tree of size {size}")
        path: list[bytes] = []
        start, end = 0, size
        while end - start > 1:
            mid = start + _largest_power_of_two_below(end - start)
            if index < mid:
                path.append(self._mth(mid, end))
                end = mid
            else:
                path.append(self._mth(start, mid))
                start = mid
        # The loop walks root to leaf; the RFC lists the path leaf to root.
        path.reverse()
        return path

    def consistency_proof(self, old_size: int, new_size: int | None = None) -> list[bytes]:
        """RFC 9162 2.1.4.1 ``PROOF(old_size, D[0:new_size])``.

        Empty when ``old_size`` is 0 or equal to ``new_size``, where the RFC
        defines no proof: there is nothing an empty proof could fail to show.
        """
        new_size = self._checked_size(new_size, "new size")
        if not 0 <= old_size <= new_size:
            raise ValueError(f"old size {old_size} is not between 0 and the new size {new_size}")
        if old_size in (0, new_size):
            return []
        proof: list[bytes] = []
        start, end = 0, new_size
        # The RFC's flag b: still true while the old tree is a left prefix of
        # the current subtree, where the verifier already knows its hash.
        old_root_known = True
        while old_size != end:
            mid = start + _largest_power_of_two_below(end - start)
            if old_size <= mid:
                proof.append(self._mth(mid, end))
                end = mid
            else:
                proof.append(self._mth(start, mid))
                start = mid
                old_root_known = False
        if not old_root_known:
            proof.append(self._mth(start, end))
        proof.reverse()
        return proof

    def subtree_hash(self, start: int, end: int) -> bytes:
        """MTH(D[start:end]).

        O(log n) when ``start`` is a multiple of the largest power of two below
        ``end - start`` (every range the RFC's recursions produce); other ranges
        are computed correctly but may need up to ``end - start`` hashes.
        """
        if not 0 <= start <= end <= self._size:
            raise ValueError(
                f"leaf range [{start}, {end}) is not within the tree (size {self._size})"
            )
        return self._mth(start, end)

    def _checked_size(self, size: int | None, what: str) -> int:
        if size is None:
            return self._size
        if not 0 <= size <= self._size:
            raise ValueError(f"{what} {size} is not between 0 and the tree's size {self._size}")
        return size

    def _node(self, level: int, index: int) -> bytes:
        offset = index * HASH_SIZE
        return bytes(self._levels[level][offset : offset + HASH_SIZE])

    def _mth(self, start: int, end: int) -> bytes:
        count = end - start
        if count == 0:
            return EMPTY_ROOT
        if count & (count - 1) == 0 and start % count == 0:
            level = count.bit_length() - 1
            return self._node(level, start >> level)
        mid = start + _largest_power_of_two_below(count)
        return node_hash(self._mth(start, mid), self._mth(mid, end))


def root_from_inclusion(leaf: bytes, index: int, size: int, proof: Sequence[bytes]) -> bytes:
    """The root that ``proof`` leads to from ``leaf`` at ``index`` (RFC 9162 2.1.3.2, 1-4).

    Raises :class:`ProofError` when the arguments cannot describe a valid proof.
    """
    _check_hash(leaf, "leaf hash")
    if index < 0 or size < 0:
        raise ProofError(f"leaf index {index} and tree size {size} must not be negative")
    if index >= size:
        raise ProofError(f"leaf index {index} is outside a tree of size {size}")
    expected = _inclusion_proof_length(index, size)
    if len(proof) != expected:
        raise ProofError(
            f"inclusion proof for leaf {index} in a tree of size {size} has "
            f"{len(proof)} hashes, expected {expected}"
        )
    for position, element in enumerate(proof):
        _check_hash(element, f"inclusion proof hash {position}")

    # The RFC's steps 2-5. Its own length checks (sn reaching 0 too early or
    # not at all) cannot fail after the check above; they stay as in the RFC.
    fn, sn = index, size - 1
    r = leaf
    for p in proof:
        if sn == 0:
            raise ProofError(
                f"inclusion proof for leaf {index} in a tree of size {size} is too long"
            )
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            while fn and not fn & 1:
                fn >>= 1
                sn >>= 1
        else:
            r = node_hash(r, p)
        fn >>= 1
        sn >>= 1
    if sn != 0:
        raise ProofError(f"inclusion proof for leaf {index} in a tree of size {size} is too short")
    return r


def verify_inclusion(
    leaf: bytes, index: int, size: int, proof: Sequence[bytes], root: bytes
) -> None:
    """Raise :class:`ProofError` unless ``proof`` shows ``leaf`` at ``index`` under ``root``.

    Take ``size`` and ``root`` from the same signed checkpoint: a proof's hashes
    do not reveal how many leaves each covers, so a proof can also verify
    against ``root`` under another size whose tree has the same shape.
    """
    _check_hash(root, "root hash")
    computed = root_from_inclusion(leaf, index, size, proof)
    if computed != root:
        raise ProofError(
            f"inclusion proof for leaf {index} in a tree of size {size} leads to root "
            f"{computed.hex()}, expected {root.hex()}"
        )


def verify_consistency(
    old_size: int, new_size: int, old_root: bytes, new_root: bytes, proof: Sequence[bytes]
) -> None:
    """Raise :class:`ProofError` unless ``proof`` shows the old tree is a prefix of the new one.

    Follows RFC 9162 2.1.4.2, which covers ``0 < old_size < new_size``; outside it:

    - ``old_size == new_size``: the proof must be empty and the roots equal.
    - ``old_size == 0``: the proof must be empty and ``old_root`` must be
      :data:`EMPTY_ROOT`; any ``new_root`` is accepted, because every tree
      extends the empty one. This proves nothing about the new tree, so a
      caller that needs its root checked must do so separately.

    As with :func:`verify_inclusion`, take each size and root from one signed
    checkpoint: a proof can also fit a new size one off whose tree has the same
    shape over the proof's hashes.
    """
    if old_size < 0 or new_size < 0:
        raise ProofError(f"tree sizes {old_size} and {new_size} must not be negative")
    if old_size > new_size:
        raise ProofError(
            f"old tree size {old_size} is larger than new tree size {new_size}; a log never shrinks"
        )
    _check_hash(old_root, "old root hash")
    _check_hash(new_root, "new root hash")
    if old_size in (0, new_size):
        if proof:
            raise ProofError(
                f"consistency proof from size {old_size} to {new_size} has {len(proof)} "
                "hashes, expected none"
            )
        if old_size == 0 and old_root != EMPTY_ROOT:
            raise ProofError(
                f"old root for tree size 0 is {old_root.hex()}, expected the empty root "
                f"{EMPTY_ROOT.hex()}"
            )
        if old_size == new_size and old_root != new_root:
            raise ProofError(
                f"roots for the same tree size {old_size} differ: old {old_root.hex()}, "
                f"new {new_root.hex()}"
            )
        return

    # The length check also covers the RFC's step 1 (an empty proof fails):
    # the expected length is at least 1 whenever 0 < old_size < new_size.
    expected = _consistency_proof_length(old_size, new_size)
    if len(proof) != expected:
        raise ProofError(
            f"consistency proof from size {old_size} to {new_size} has {len(proof)} "
            f"hashes, expected {expected}"
        )
    for position, element in enumerate(proof):
        _check_hash(element, f"consistency proof hash {position}")

    path = list(proof)
    if old_size & (old_size - 1) == 0:
        path.insert(0, old_root)
    fn, sn = old_size - 1, new_size - 1
    while fn & 1:
        fn >>= 1
        sn >>= 1
    fr = sr = path[0]
    for c in path[1:]:
        if sn == 0:
            raise ProofError(f"consistency proof from size {old_size} to {new_size} is too long")
        if fn & 1 or fn == sn:
            fr = node_hash(c, fr)
            sr = node_hash(c, sr)
            while fn and not fn & 1:
                fn >>= 1
                sn >>= 1
        else:
            sr = node_hash(sr, c)
        fn >>= 1
        sn >>= 1
    if sn != 0:
        raise ProofError(f"consistency proof from size {old_size} to {new_size} is too short")
    if fr != old_root:
        raise ProofError(
            f"consistency proof from size {old_size} to {new_size} leads to old root "
            f"{fr.hex()}, expected {old_root.hex()}"
        )
    if sr != new_root:
        raise ProofError(
            f"consistency proof from size {old_size} to {new_size} leads to new root "
            f"{sr.hex()}, expected {new_root.hex()}"
        )


def subtree_levels(leaves: list[bytes], depth: int) -> list[bytes]:
    """Levels 0 to ``depth`` over ``leaves``, each level's complete-subtree nodes joined.

    What :meth:`MerkleTree.from_subtree_levels` joins: node ``j`` of level ``k``
    covers leaves ``[j * 2**k, (j + 1) * 2**k)`` of the run, and an odd last
    node of a level is left for the level above to pair later.
    """
    _check_leaf_arguments(leaves)
    levels = [b"".join(leaves)]
    level = leaves
    for _ in range(depth):
        level = _parents(level)
        levels.append(b"".join(level))
    return levels


def _parents(nodes: list[bytes]) -> list[bytes]:
    """Node hashes of adjacent pairs; an odd last node is left out."""
    pairs = iter(nodes)
    # Not strict: the odd last node is meant to be dropped.
    return [
        _sha256(_NODE_PREFIX + left + right).digest()
        for left, right in zip(pairs, pairs, strict=False)
    ]


def _largest_power_of_two_below(n: int) -> int:
    """The RFC's split point k: the largest power of two strictly less than n (n > 1)."""
    return 1 << ((n - 1).bit_length() - 1)


def _inclusion_proof_length(index: int, size: int) -> int:
    # Below the node where the paths to leaf `index` and to the last leaf join,
    # every level has a sibling; above it, only the levels where the path comes
    # from the right do, since the last leaf's path has nothing to its right.
    inner = (index ^ (size - 1)).bit_length()
    return inner + (index >> inner).bit_count()


def _consistency_proof_length(old_size: int, new_size: int) -> int:
    # The path to the old tree's last leaf, minus the levels inside the complete
    # subtree that ends the old tree, plus that subtree's own hash unless the
    # verifier has it already as the old root (old_size a power of two).
    shift = (old_size & -old_size).bit_length() - 1
    seed = 0 if old_size == 1 << shift else 1
    return seed + _inclusion_proof_length(old_size - 1, new_size) - shift


def _check_hash(value: bytes, what: str) -> None:
    if len(value) != HASH_SIZE:
        raise ProofError(f"{what} is {len(value)} bytes, expected {HASH_SIZE} (SHA-256)")


def _check_leaf_arguments(leaves: Sequence[bytes]) -> None:
    # In C over a million leaves; the loop below only runs to name the culprit.
    if any(map(operator.ne, map(len, leaves), repeat(HASH_SIZE))):
        for index, leaf in enumerate(leaves):
            _check_leaf_argument(leaf, index)


def _check_leaf_argument(leaf: bytes, index: int | None = None) -> None:
    if len(leaf) != HASH_SIZE:
        where = "" if index is None else f" at position {index}"
        raise ValueError(
            f"leaf hash{where} is {len(leaf)} bytes, expected {HASH_SIZE}; "
            "pass leaf_hash(entry), not the entry itself"
        )
