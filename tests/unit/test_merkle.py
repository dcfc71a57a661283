"""RFC 6962 Merkle trees: reference vectors, corruption probes, and every proof up to 64 leaves.

Vectors are those of the certificate-transparency / transparency-dev
reference code (testonly/constants.go, proof/verify_test.go).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import pytest

from agent.custody import merkle
from agent.custody.merkle import (
    EMPTY_ROOT,
    MerkleTree,
    TreeBuilder,
    leaf_hash,
    node_hash,
    verify_consistency,
    verify_inclusion,
)

h = bytes.fromhex

LEAF_INPUTS = [h(x) for x in [
    "", "00", "10", "2021", "3031", "40414243", "5051525354555657",
    "606162636465666768696a6b6c6d6e6f"]]

LEAF_HASHES = [h(x) for x in [
    "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
    "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
    "0298d122906dcfc10892cb53a73992fc5b9f493ea4c9badb27b791b4127a7fe7",
    "07506a85fd9dd2f120eb694f86011e5bb4662e5c415a62917033d4a9624487e7",
    "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
    "4271a26be0d8a84f0bd54c8c302e7cb3a3b5d1fa6780a40bcce2873477dab658",
    "b08693ec2e721597130641e8211e7eedccb4c26413963eee6c1e2ed16ffb1a5f",
    "46f6ffadd3d06a09ff3c5860d2755c8b9819db7df44251788c7d8e3180de8eb1"]]

LEVEL1 = [h(x) for x in [
    "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
    "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
    "0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
    "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0"]]
LEVEL2 = [h(x) for x in [
    "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
    "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4"]]

ROOTS = [h(x) for x in [  # by tree size 0..8
    "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
    "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
    "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
    "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
    "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
    "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
    "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
    "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
    "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328"]]

# (1-based leaf, tree size, proof), as in verify_test.go
INCLUSION = [
    (1, 1, []),
    (1, 8, ["96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4"]),
    (6, 8, ["bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
            "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7"]),
    (3, 3, ["fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125"]),
    (2, 5, ["6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b"]),
]

CONSISTENCY = [
    (1, 1, []),
    (1, 8, ["96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4"]),
    (6, 8, ["0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
            "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7"]),
    (2, 5, ["5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b"]),
    (6, 7, ["0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
            "b08693ec2e721597130641e8211e7eedccb4c26413963eee6c1e2ed16ffb1a5f",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7"]),
]

SOME_HASH = h("abacaba000000000000000000000000000000000000000000060061e00123456")


def test_leaf_hashes_of_the_reference_inputs() -> None:
    assert [leaf_hash(x) for x in LEAF_INPUTS] == LEAF_HASHES
    assert [node_hash(LEAF_HASHES[i], LEAF_HASHES[i + 1]) for i in range(0, 8, 2)] == LEVEL1
    assert [node_hash(LEVEL1[i], LEVEL1[i + 1]) for i in range(0, 4, 2)] == LEVEL2


@pytest.mark.parametrize("size", range(9))
def test_roots_for_sizes_0_to_8(size: int) -> None:
    assert merkle.root(LEAF_HASHES[:size]) == ROOTS[size]
    assert TreeBuilder.from_leaves(LEAF_HASHES[:size]).root() == ROOTS[size]
    assert MerkleTree(LEAF_HASHES).root(size) == ROOTS[size]
    assert MerkleTree(LEAF_HASHES[:size]).root() == ROOTS[size]


def test_empty_tree_root_is_sha256_of_nothing() -> None:
    assert merkle.root([]) == EMPTY_ROOT == hashlib.sha256(b"").digest()


def test_compact_range_state_matches_the_reference() -> None:
    # testonly CompactTrees(): the perfect subtrees covering [0, size).
    expected = [[], [LEAF_HASHES[0]], [LEVEL1[0]], [LEVEL1[0], LEAF_HASHES[2]], [LEVEL2[0]],
                [LEVEL2[0], LEAF_HASHES[4]], [LEVEL2[0], LEVEL1[2]],
                [LEVEL2[0], LEVEL1[2], LEAF_HASHES[6]], [ROOTS[8]]]
    builder = TreeBuilder()
    assert builder.state() == (0, [])
    for size in range(1, 9):
        assert builder.append(LEAF_HASHES[size - 1]) == size - 1
        assert builder.state() == (size, expected[size])
        resumed = TreeBuilder.from_state(*builder.state())
        assert resumed.root() == ROOTS[size]


@pytest.mark.parametrize(("leaf", "size", "proof"), INCLUSION)
def test_inclusion_vectors(leaf: int, size: int, proof: list[str]) -> None:
    expected = [h(p) for p in proof]
    assert merkle.inclusion_proof(leaf - 1, LEAF_HASHES[:size]) == expected
    assert MerkleTree(LEAF_HASHES).inclusion_proof(leaf - 1, size) == expected
    assert verify_inclusion(LEAF_HASHES[leaf - 1], leaf - 1, size, expected, ROOTS[size])


@pytest.mark.parametrize(("size1", "size2", "proof"), CONSISTENCY)
def test_consistency_vectors(size1: int, size2: int, proof: list[str]) -> None:
    expected = [h(p) for p in proof]
    assert merkle.consistency_proof(size1, LEAF_HASHES[:size2]) == expected
    assert MerkleTree(LEAF_HASHES).consistency_proof(size1, size2) == expected
    assert verify_consistency(size1, size2, ROOTS[size1], ROOTS[size2], expected)


def _inclusion_probes(index: int, size: int, proof: list[bytes], root: bytes,
                      leaf: bytes) -> list[tuple[str, int, int, list[bytes], bytes, bytes]]:
    """The corruptions of verify_test.go corruptInclusionProof."""
    probes = [
        ("index - 1", index - 1, size, proof, root, leaf),
        ("index + 1", index + 1, size, proof, root, leaf),
        ("index ^ 2", index ^ 2, size, proof, root, leaf),
        ("size * 2", index, size * 2, proof, root, leaf),
        ("size / 2", index, size // 2, proof, root, leaf),
        ("wrong leaf", index, size, proof, root, b"WrongLeaf"),
        ("empty root", index, size, proof, EMPTY_ROOT, leaf),
        ("random root", index, size, proof, SOME_HASH, leaf),
        ("trailing garbage", index, size, [*proof, b""], root, leaf),
        ("trailing root", index, size, [*proof, root], root, leaf),
        ("preceding garbage", index, size, [b"", *proof], root, leaf),
        ("preceding root", index, size, [root, *proof], root, leaf),
    ]
    for i in range(len(proof)):
        flipped = list(proof)
        flipped[i] = bytes([proof[i][0] ^ 8]) + proof[i][1:]
        probes.append((f"proof[{i}] bit 3", index, size, flipped, root, leaf))
    if proof:
        probes.append(("removed component", index, size, proof[:-1], root, leaf))
    if len(proof) > 1:
        probes.append(("inserted component", index, size,
                       [proof[0], SOME_HASH, *proof[1:]], root, leaf))
    return probes


@pytest.mark.parametrize(("leaf", "size", "proof"), INCLUSION[1:])
def test_corrupted_inclusion_proofs_fail(leaf: int, size: int, proof: list[str]) -> None:
    probes = _inclusion_probes(leaf - 1, size, [h(p) for p in proof], ROOTS[size],
                               LEAF_HASHES[leaf - 1])
    wrongly_verified = [name for name, i, n, p, r, lf in probes if verify_inclusion(lf, i, n, p, r)]
    assert wrongly_verified == []


def _consistency_probes(size1: int, size2: int, root1: bytes, root2: bytes, proof: list[bytes]
                        ) -> list[tuple[str, int, int, bytes, bytes, list[bytes]]]:
    """The corruptions of verify_test.go corruptConsistencyProof."""
    probes = [
        ("size1 - 1", size1 - 1, size2, root1, root2, proof),
        ("size1 + 1", size1 + 1, size2, root1, root2, proof),
        ("size1 ^ 2", size1 ^ 2, size2, root1, root2, proof),
        ("size2 * 2", size1, size2 * 2, root1, root2, proof),
        ("size2 / 2", size1, size2 // 2, root1, root2, proof),
        ("wrong root1", size1, size2, b"WrongRoot", root2, proof),
        ("wrong root2", size1, size2, root1, b"WrongRoot", proof),
        ("swapped roots", size1, size2, root2, root1, proof),
        ("empty proof", size1, size2, root1, root2, []),
        ("trailing garbage", size1, size2, root1, root2, [*proof, b""]),
        ("trailing root1", size1, size2, root1, root2, [*proof, root1]),
        ("trailing root2", size1, size2, root1, root2, [*proof, root2]),
        ("preceding garbage", size1, size2, root1, root2, [b"", *proof]),
        ("preceding root1", size1, size2, root1, root2, [root1, *proof]),
        ("preceding root2", size1, size2, root1, root2, [root2, *proof]),
        ("preceding proof[0]", size1, size2, root1, root2, [proof[0], *proof]),
        ("truncated proof", size1, size2, root1, root2, proof[:-1]),
    ]
    for i in range(len(proof)):
        flipped = list(proof)
        flipped[i] = bytes([proof[i][0] ^ 16]) + proof[i][1:]
        probes.append((f"proof[{i}] bit 4", size1, size2, root1, root2, flipped))
    return probes


@pytest.mark.parametrize(("size1", "size2", "proof"), CONSISTENCY[1:])
def test_corrupted_consistency_proofs_fail(size1: int, size2: int, proof: list[str]) -> None:
    probes = _consistency_probes(size1, size2, ROOTS[size1], ROOTS[size2], [h(p) for p in proof])
    wrongly_verified = [name for name, m, n, r1, r2, p in probes
                        if verify_consistency(m, n, r1, r2, p)]
    assert wrongly_verified == []


R1, R2 = b"don't care 1", b"don't care 2"


@pytest.mark.parametrize("case", [
    (0, 0, R1, R2, [], False),
    (1, 1, R1, R2, [], False),
    (0, 0, R1, R1, [], True),       # same size, same root
    (0, 1, R1, R2, [], True),       # the empty tree is a prefix of any tree
    (1, 1, R2, R2, [], True),
    (1, 0, R1, R2, [], False),      # time travel to the past
    (2, 1, R1, R2, [], False),
    (1, 2, R1, R2, [], False),      # empty proof
    (0, 0, EMPTY_ROOT, R2, [], False),
    (1, 1, EMPTY_ROOT, R2, [], False),
    (0, 0, EMPTY_ROOT, EMPTY_ROOT, [EMPTY_ROOT], False),  # roots match, proof not empty
    (0, 1, EMPTY_ROOT, EMPTY_ROOT, [EMPTY_ROOT], False),
    (1, 1, EMPTY_ROOT, EMPTY_ROOT, [EMPTY_ROOT], False),
])
def test_consistency_edge_cases(case: tuple[int, int, bytes, bytes, list[bytes], bool]) -> None:
    size1, size2, root1, root2, proof, ok = case
    assert verify_consistency(size1, size2, root1, root2, proof) is ok


def test_inclusion_edge_cases() -> None:
    single = leaf_hash(b"data")
    assert verify_inclusion(single, 0, 1, [], single)
    assert not verify_inclusion(single, 0, 1, [], b"")
    assert not verify_inclusion(b"", 0, 1, [], single)
    for index, size in [(0, 0), (0, 1), (1, 0), (2, 1), (-1, 4)]:
        assert not verify_inclusion(SOME_HASH, index, size, [], EMPTY_ROOT)


# An independent implementation straight from the RFC 6962 section 2.1 text
# (recursive, quadratic), to check every proof of every tree up to 64 leaves.

def _mth(d: Sequence[bytes]) -> bytes:
    if not d:
        return EMPTY_ROOT
    if len(d) == 1:
        return d[0]
    k = 1 << ((len(d) - 1).bit_length() - 1)
    return node_hash(_mth(d[:k]), _mth(d[k:]))


def _path(m: int, d: Sequence[bytes]) -> list[bytes]:
    if len(d) == 1:
        return []
    k = 1 << ((len(d) - 1).bit_length() - 1)
    if m < k:
        return [*_path(m, d[:k]), _mth(d[k:])]
    return [*_path(m - k, d[k:]), _mth(d[:k])]


def _subproof(m: int, d: Sequence[bytes], b: bool) -> list[bytes]:
    if m == len(d):
        return [] if b else [_mth(d)]
    k = 1 << ((len(d) - 1).bit_length() - 1)
    if m <= k:
        return [*_subproof(m, d[:k], b), _mth(d[k:])]
    return [*_subproof(m - k, d[k:], False), _mth(d[:k])]


LEAVES_64 = [leaf_hash(i.to_bytes(2, "big")) for i in range(64)]
TREE_64 = MerkleTree(LEAVES_64)
ROOTS_64 = [_mth(LEAVES_64[:n]) for n in range(65)]


@pytest.mark.parametrize("size", range(1, 65))
def test_every_inclusion_proof_up_to_64_leaves(size: int) -> None:
    # Same proof but a wrong size of the same height (e.g. 3 -> 4 for leaf 0)
    # still verifies against the same root: an inclusion proof only means
    # something against a signed (size, root), so the probes change size by
    # a level (*2, //2) as the reference tests do.
    root = ROOTS_64[size]
    assert TREE_64.root(size) == root
    for index in range(size):
        proof = TREE_64.inclusion_proof(index, size)
        assert proof == _path(index, LEAVES_64[:size])
        assert verify_inclusion(LEAVES_64[index], index, size, proof, root)
        probes = _inclusion_probes(index, size, proof, root, LEAVES_64[index])
        probes.append(("other leaf", index, size, proof, root, LEAVES_64[(index + 1) % 64]))
        wrongly_verified = [name for name, i, n, p, r, lf in probes
                            if verify_inclusion(lf, i, n, p, r)]
        assert wrongly_verified == [], (index, size)


@pytest.mark.parametrize("new_size", range(1, 65))
def test_every_consistency_proof_up_to_64_leaves(new_size: int) -> None:
    new_root = ROOTS_64[new_size]
    for old_size in range(0, new_size + 1):
        proof = TREE_64.consistency_proof(old_size, new_size)
        expected = [] if old_size in (0, new_size) else _subproof(
            old_size, LEAVES_64[:new_size], True)
        assert proof == expected
        old_root = ROOTS_64[old_size]
        assert verify_consistency(old_size, new_size, old_root, new_root, proof)
        if not proof:
            continue
        probes = _consistency_probes(old_size, new_size, old_root, new_root, proof)
        wrongly_verified = [name for name, m, n, r1, r2, p in probes
                            if verify_consistency(m, n, r1, r2, p)]
        assert wrongly_verified == [], (old_size, new_size)


def test_builder_matches_tree_on_a_bigger_log() -> None:
    leaves = [hashlib.sha256(i.to_bytes(4, "big")).digest() for i in range(5000)]
    builder = TreeBuilder()
    tree = MerkleTree(leaves)
    for n, leaf in enumerate(leaves, start=1):
        builder.append(leaf)
        if n % 997 == 0 or n == len(leaves):
            assert builder.root() == tree.root(n)
            assert len(builder.state()[1]) == n.bit_count()  # O(log n) memory
    proof = tree.inclusion_proof(4321)
    assert verify_inclusion(leaves[4321], 4321, 5000, proof, builder.root())
    proof = tree.consistency_proof(2991)
    assert verify_consistency(2991, 5000, tree.root(2991), builder.root(), proof)


def test_bad_inputs_are_named() -> None:
    with pytest.raises(ValueError, match="leaf hash 1 is 3 bytes, not 32"):
        MerkleTree([LEAF_HASHES[0], b"abc"])
    with pytest.raises(ValueError, match="leaf index 8 is not within a tree of size 8"):
        merkle.inclusion_proof(8, LEAF_HASHES)
    with pytest.raises(ValueError, match=r"tree size 9 is not within 0\.\.8"):
        MerkleTree(LEAF_HASHES).root(9)
    with pytest.raises(ValueError, match=r"old size 9 is not within 0\.\.8"):
        merkle.consistency_proof(9, LEAF_HASHES)
    with pytest.raises(ValueError, match="leaf hash is 4 bytes"):
        TreeBuilder().append(b"abcd")
    with pytest.raises(ValueError, match="a tree of size 3 has 2 perfect subtrees, got 1"):
        TreeBuilder.from_state(3, [LEAF_HASHES[0]])


def test_a_log_resumed_from_its_saved_state_grows_as_if_never_stopped() -> None:
    """Rule: a station restarted at any log size (the empty log too) appends the next
    entries at the right index and signs the same roots as one that never stopped."""
    for saved in range(0, 9):
        builder = TreeBuilder.from_leaves(LEAF_HASHES[:saved])
        resumed = TreeBuilder.from_state(*builder.state())
        assert resumed.size == saved
        assert resumed.root() == ROOTS[saved]
        for size in range(saved + 1, 9):
            assert resumed.append(LEAF_HASHES[size - 1]) == size - 1
            assert resumed.root() == ROOTS[size]
        assert resumed.state() == TreeBuilder.from_leaves(LEAF_HASHES).state()


def test_a_saved_state_that_cannot_be_a_log_is_refused_by_name() -> None:
    """Rule: a damaged saved log state is refused, saying what is wrong, never resumed."""
    with pytest.raises(ValueError) as err:
        TreeBuilder.from_state(-1, [])
    assert str(err.value) == "a tree of size -1 has 0 perfect subtrees, got 0 hashes"
    with pytest.raises(ValueError) as err:
        TreeBuilder.from_state(1, [b"short"])
    assert str(err.value) == "compact range hashes must be 32 bytes each"


def test_the_tree_gives_back_each_leaf_hash_by_index() -> None:
    """Rule: the leaf an auditor is shown is the one at that index, and no other."""
    tree = MerkleTree(LEAF_HASHES)
    assert [tree.leaf(i) for i in range(8)] == LEAF_HASHES
    for bad in (-1, 8):
        with pytest.raises(ValueError) as err:
            tree.leaf(bad)
        assert str(err.value) == f"leaf index {bad} is not within a tree of size 8"


def test_proofs_over_hashes_of_the_wrong_length_never_verify() -> None:
    """Rule: a leaf or an old root that is not a 32-byte SHA-256 never verifies, even when
    the rest of the proof was computed from it."""
    sibling = LEAF_HASHES[1]
    for bad in (b"x" * 31, b"x" * 33):
        assert not verify_inclusion(bad, 0, 2, [sibling], node_hash(bad, sibling))
        assert not verify_consistency(1, 2, bad, node_hash(bad, sibling), [sibling])
        assert not verify_consistency(1, 2, LEAF_HASHES[0], bad, [sibling])
        assert not verify_inclusion(LEAF_HASHES[0], 0, 2, [sibling], bad)
    # The same shapes with proper hashes do verify: only the lengths were wrong above.
    assert verify_inclusion(LEAF_HASHES[0], 0, 2, [sibling], node_hash(LEAF_HASHES[0], sibling))
    assert verify_consistency(1, 2, LEAF_HASHES[0], node_hash(LEAF_HASHES[0], sibling),
                              [sibling])
