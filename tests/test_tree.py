"""Rerank, connectivity and the flattened tree tensors."""

import torch

from dyndepth.tree import DraftPool


def pool_from(levels):
    """levels: list of (tokens, values, parents) per depth."""
    pool = DraftPool()
    for tokens, values, parents in levels:
        pool.add_level(torch.tensor(tokens), torch.tensor(values), torch.tensor(parents))
    return pool


def test_rerank_keeps_best_values_over_all_depths():
    pool = pool_from([
        ([10, 11], [-0.1, -2.0], [-1, -1]),  # pool 0, 1
        ([20, 21, 22, 23], [-0.2, -0.3, -2.5, -2.6], [0, 0, 1, 1]),  # pool 2..5
    ])
    tree = pool.select(root_token=5, n_nodes=4)
    assert tree.tokens == [5, 10, 11, 20, 21]  # root, then level-major
    assert tree.parents == [-1, 0, 0, 1, 1]
    assert tree.depths == [0, 1, 1, 2, 2]


def test_ties_never_disconnect_the_tree():
    # a child with log-prob 0 ties with its parent; a sibling subtree ties too
    pool = pool_from([
        ([1, 2, 3], [-1.0, -1.0, -1.0], [-1, -1, -1]),
        ([4, 5, 6], [-1.0, -1.0, -1.0], [2, 1, 0]),
        ([7, 8, 9], [-1.0, -1.0, -1.0], [5, 4, 3]),
    ])
    for n in range(1, 10):
        tree = pool.select(0, n)
        assert len(tree) == n + 1
        for i in range(1, len(tree)):
            assert 0 <= tree.parents[i] < i
            assert tree.depths[i] == tree.depths[tree.parents[i]] + 1
        # with all values tied, shallower nodes are preferred: depth order
        assert tree.depths == sorted(tree.depths)


def test_ancestor_mask_positions_and_paths():
    pool = pool_from([
        ([1, 2], [-0.1, -0.2], [-1, -1]),
        ([3, 4], [-0.3, -0.4], [0, 1]),
        ([5], [-0.5], [2]),
    ])
    tree = pool.select(0, 5)
    m = tree.ancestor_mask()
    expected = torch.tensor([
        [1, 0, 0, 0, 0, 0],
        [1, 1, 0, 0, 0, 0],
        [1, 0, 1, 0, 0, 0],
        [1, 1, 0, 1, 0, 0],
        [1, 0, 1, 0, 1, 0],
        [1, 1, 0, 1, 0, 1],
    ], dtype=torch.bool)
    assert torch.equal(m, expected)
    assert tree.position_ids(7, "cpu").tolist() == [[7, 8, 8, 9, 9, 10]]
    assert tree.path_to(5) == [0, 1, 3, 5]
    vis = tree.visibility(3, "cpu")
    assert vis.shape == (6, 9) and vis[:, :3].all() and torch.equal(vis[:, 3:], expected)


def test_n_is_clipped_to_the_pool():
    pool = pool_from([([1, 2], [-0.1, -0.2], [-1, -1])])
    assert len(pool.select(0, 50)) == 3


def test_head_budget_caps_head_only_nodes_not_suffix_ones():
    """Beside suffix matches a cost-blind tree keeps at most ``head_budget`` nodes the head alone proposed; nodes a
    suffix match proposed (alone or merged with a head node) fill the rest of N."""
    pool = pool_from([
        ([10, 11, 12], [-0.1, -0.2, -0.3], [-1, -1, -1]),  # pool 0..2: head level 1
        ([20, 21], [-0.4, -0.5], [0, 1]),  # pool 3, 4: head level 2
    ])
    pool.suffix[0] = (4, -0.05)  # pool 0 merged with a suffix node
    first = pool.add_nodes([30, 31], [-0.6, -0.7], [0, 5], [2, 3])  # pool 5, 6: a suffix chain under pool 0
    for p in (first, first + 1):
        pool.suffix[p] = (4, -0.1)
    assert len(pool.select(0, 6)) == 7  # no budget: the 6 best
    pool.head_budget = 1
    tree = pool.select(0, 6)
    head_only = [s for s in tree.sources[1:] if s == 1]
    assert len(head_only) == 1 and tree.tokens == [0, 10, 11, 30, 31]  # merged 10, head 11, the suffix chain
    pool.head_budget = 0
    assert pool.select(0, 6).tokens == [0, 10, 30, 31]
