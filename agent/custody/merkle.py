"""RFC 6962 / RFC 9162 Merkle trees: roots, inclusion and consistency proofs.

The custody log is a list of entries; leaf ``i`` is hashed as
``SHA-256(0x00 || JCS(entry_i))`` and interior nodes as
``SHA-256(0x01 || left || right)``, so the tree head (size, root) commits to
every entry before it, in order.  The Merkle Tree Hash of ``n`` leaves splits
them at ``k``, the largest power of two smaller than ``n`` (RFC 6962 section
2.1); the empty tree's hash is SHA-256 of nothing.

Proofs here are byte-for-byte those of the RFC (and of the
certificate-transparency / transparency-dev reference code): inclusion
proofs list sibling hashes from the leaf up, consistency proofs the subtree
hashes of RFC 9162 section 2.1.4.1.  The verifiers are the RFC 9162 section
2.1.3.2 / 2.1.4.2 algorithms; they return False for anything malformed and
never raise on untrusted input.

``TreeBuilder`` keeps only the O(log n) hashes of the perfect subtrees that
make up the tree (its compact range), for a log that grows one leaf at a time.
``MerkleTree`` caches every perfect-subtree hash of a full leaf list (one
contiguous buffer per level, 32 bytes a node) so that many proofs over a big
log cost O(log^2 n) hashes each after one O(n) pass.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence

__all__ = [
    "EMPTY_ROOT",
    "HASH_SIZE",
    "MerkleTree",
    "TreeBuilder",
    "consistency_proof",
    "inclusion_proof",
    "leaf_hash",
    "node_hash",
    "root",
    "verify_consistency",
    "verify_inclusion",
]

HASH_SIZE = 32
EMPTY_ROOT = hashlib.sha256(b"").digest()
_LEAF_PREFIX = b"\x00"
_NODE_PREFIX = b"\x01"


def leaf_hash(data: bytes) -> bytes:
    """RFC 6962 leaf hash: SHA-256(0x00 || data)."""
    return hashlib.sha256(_LEAF_PREFIX + data).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    """RFC 6962 interior node hash: SHA-256(0x01 || left || right)."""
    return hashlib.sha256(_NODE_PREFIX + left + right).digest()


def _split(size: int) -> int:
    """The largest power of two strictly smaller than ``size`` (size >= 2)."""
    return 1 << ((size - 1).bit_length() - 1)


class MerkleTree:
    """A read-only tree over ``leaf_hashes`` with every perfect-subtree hash cached.

    Proofs and roots may be asked for any tree size up to ``len(leaf_hashes)``:
    a perfect subtree of the first ``m`` leaves is the same in every larger
    tree, so one cache serves every older checkpoint too.
    """

    def __init__(self, leaf_hashes: Sequence[bytes]) -> None:
        level = b"".join(leaf_hashes)
        if len(level) != HASH_SIZE * len(leaf_hashes):
            bad = next(i for i, h in enumerate(leaf_hashes) if len(h) != HASH_SIZE)
            raise ValueError(
                f"leaf hash {bad} is {len(leaf_hashes[bad])} bytes, not {HASH_SIZE}")
        self._size = len(leaf_hashes)
        self._levels = [level]
        sha256 = hashlib.sha256
        while len(level) >= 2 * HASH_SIZE:
            pairs = len(level) // (2 * HASH_SIZE)
            # Siblings are adjacent in the buffer: left || right is one slice.
            level = b"".join([
                sha256(_NODE_PREFIX + level[i:i + 2 * HASH_SIZE]).digest()
                for i in range(0, pairs * 2 * HASH_SIZE, 2 * HASH_SIZE)
            ])
            self._levels.append(level)

    @property
    def size(self) -> int:
        return self._size

    def leaf(self, index: int) -> bytes:
        self._check_index(index, self._size)
        return self._levels[0][index * HASH_SIZE:(index + 1) * HASH_SIZE]

    def root(self, size: int | None = None) -> bytes:
        """The Merkle Tree Hash of the first ``size`` leaves (default: all)."""
        n = self._check_size(size)
        return EMPTY_ROOT if n == 0 else self._subtree(0, n)

    def inclusion_proof(self, index: int, size: int | None = None) -> list[bytes]:
        """The audit path of leaf ``index`` in the tree of the first ``size`` leaves."""
        n = self._check_size(size)
        self._check_index(index, n)
        proof: list[bytes] = []
        lo, hi = 0, n
        while hi - lo > 1:
            mid = lo + _split(hi - lo)
            if index < mid:
                proof.append(self._subtree(mid, hi))
                hi = mid
            else:
                proof.append(self._subtree(lo, mid))
                lo = mid
        proof.reverse()  # collected root-down; the RFC lists them leaf-up
        return proof

    def consistency_proof(self, old_size: int, new_size: int | None = None) -> list[bytes]:
        """RFC 9162 PROOF(old_size, D[new_size]): the tree of old_size is a prefix of new_size's."""
        n = self._check_size(new_size)
        if not 0 <= old_size <= n:
            raise ValueError(f"old size {old_size} is not within 0..{n}")
        if old_size in (0, n):
            return []
        proof: list[bytes] = []
        lo, hi, m = 0, n, old_size
        whole_old_tree = True  # SUBPROOF's flag b: m is still the original old tree
        while m != hi - lo:
            k = _split(hi - lo)
            if m <= k:
                proof.append(self._subtree(lo + k, hi))
                hi = lo + k
            else:
                proof.append(self._subtree(lo, lo + k))
                lo += k
                m -= k
                whole_old_tree = False
        if not whole_old_tree:
            proof.append(self._subtree(lo, hi))
        proof.reverse()
        return proof

    def _subtree(self, start: int, end: int) -> bytes:
        """MTH(D[start:end]); O(log n) for the ranges RFC 6962 trees are made of."""
        size = end - start
        if size & (size - 1) == 0 and start % size == 0:
            level = size.bit_length() - 1
            offset = (start >> level) * HASH_SIZE
            return self._levels[level][offset:offset + HASH_SIZE]
        k = _split(size)
        return node_hash(self._subtree(start, start + k), self._subtree(start + k, end))

    def _check_size(self, size: int | None) -> int:
        if size is None:
            return self._size
        if not 0 <= size <= self._size:
            raise ValueError(f"tree size {size} is not within 0..{self._size}")
        return size

    @staticmethod
    def _check_index(index: int, size: int) -> None:
        if not 0 <= index < size:
            raise ValueError(f"leaf index {index} is not within a tree of size {size}")


class TreeBuilder:
    """The root of a growing tree in O(log n) memory (a compact range over [0, size)).

    ``hashes`` are the perfect subtrees covering the leaves, left to right,
    one per set bit of ``size`` from the highest; ``state()`` /
    ``from_state()`` let a log persist and resume them without its leaves.
    """

    def __init__(self) -> None:
        self._size = 0
        self._hashes: list[bytes] = []

    @classmethod
    def from_state(cls, size: int, hashes: Sequence[bytes]) -> TreeBuilder:
        if size < 0 or len(hashes) != size.bit_count():
            raise ValueError(
                f"a tree of size {size} has {max(size, 0).bit_count()} perfect subtrees, "
                f"got {len(hashes)} hashes")
        if any(len(h) != HASH_SIZE for h in hashes):
            raise ValueError(f"compact range hashes must be {HASH_SIZE} bytes each")
        builder = cls()
        builder._size = size
        builder._hashes = [bytes(h) for h in hashes]
        return builder

    @classmethod
    def from_leaves(cls, leaf_hashes: Iterable[bytes]) -> TreeBuilder:
        builder = cls()
        builder.extend(leaf_hashes)
        return builder

    @property
    def size(self) -> int:
        return self._size

    def state(self) -> tuple[int, list[bytes]]:
        return self._size, list(self._hashes)

    def append(self, leaf: bytes) -> int:
        """Add one leaf hash; returns its index."""
        if len(leaf) != HASH_SIZE:
            raise ValueError(f"leaf hash is {len(leaf)} bytes, not {HASH_SIZE}")
        index = self._size
        merged = leaf
        # Each trailing 1 bit of the old size is a perfect subtree of the same
        # height as the one being carried: merge them, as binary addition does.
        carry = index
        while carry & 1:
            merged = node_hash(self._hashes.pop(), merged)
            carry >>= 1
        self._hashes.append(merged)
        self._size += 1
        return index

    def extend(self, leaf_hashes: Iterable[bytes]) -> None:
        for leaf in leaf_hashes:
            self.append(leaf)

    def root(self) -> bytes:
        if not self._hashes:
            return EMPTY_ROOT
        result = self._hashes[-1]
        for left in reversed(self._hashes[:-1]):
            result = node_hash(left, result)
        return result


def root(leaf_hashes: Sequence[bytes]) -> bytes:
    """The Merkle Tree Hash of ``leaf_hashes`` (SHA-256 of nothing for none)."""
    return TreeBuilder.from_leaves(leaf_hashes).root()


def inclusion_proof(index: int, leaf_hashes: Sequence[bytes]) -> list[bytes]:
    """Audit path of leaf ``index`` in the tree of all ``leaf_hashes``."""
    return MerkleTree(leaf_hashes).inclusion_proof(index)


def consistency_proof(old_size: int, leaf_hashes: Sequence[bytes]) -> list[bytes]:
    """Proof that the tree of the first ``old_size`` leaves is a prefix of the whole tree."""
    return MerkleTree(leaf_hashes).consistency_proof(old_size)


def verify_inclusion(
    leaf: bytes, index: int, size: int, proof: Sequence[bytes], root_hash: bytes
) -> bool:
    """RFC 9162 section 2.1.3.2: does ``proof`` place ``leaf`` at ``index`` under ``root_hash``?"""
    if not 0 <= index < size or len(leaf) != HASH_SIZE or len(root_hash) != HASH_SIZE:
        return False
    if any(len(p) != HASH_SIZE for p in proof):
        return False
    fn, sn, r = index, size - 1, leaf
    for p in proof:
        if sn == 0:
            return False  # more proof than tree height
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            while not fn & 1 and fn != 0:
                fn >>= 1
                sn >>= 1
        else:
            r = node_hash(r, p)
        fn >>= 1
        sn >>= 1
    return sn == 0 and r == root_hash


def verify_consistency(
    old_size: int, new_size: int, old_root: bytes, new_root: bytes, proof: Sequence[bytes]
) -> bool:
    """RFC 9162 section 2.1.4.2: is tree (old_size, old_root) a prefix of (new_size, new_root)?"""
    if not 0 <= old_size <= new_size:
        return False
    if any(len(p) != HASH_SIZE for p in proof):
        return False
    if old_size == new_size:
        return not proof and old_root == new_root
    if old_size == 0:
        return not proof  # the empty tree is a prefix of every tree
    if not proof or len(old_root) != HASH_SIZE or len(new_root) != HASH_SIZE:
        return False
    path = list(proof)
    if old_size & (old_size - 1) == 0:
        # A perfect old tree is itself a node of the new one; the RFC leaves
        # it out of the proof and the verifier starts from it.
        path.insert(0, old_root)
    fn, sn = old_size - 1, new_size - 1
    while fn & 1:
        fn >>= 1
        sn >>= 1
    fr = sr = path[0]
    for c in path[1:]:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            fr = node_hash(c, fr)
            sr = node_hash(c, sr)
            while not fn & 1 and fn != 0:
                fn >>= 1
                sn >>= 1
        else:
            sr = node_hash(sr, c)
        fn >>= 1
        sn >>= 1
    return sn == 0 and fr == old_root and sr == new_root
