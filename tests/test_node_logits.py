"""NodeLogits: the lm_head runs once per branch verification walks, and its rows equal the row-by-row ones."""

import torch

from dyndepth.tree import DraftTree
from dyndepth.verify import NodeLogits, verify_greedy

H, V = 8, 5


def make_tree() -> DraftTree:
    # root 0 -> 1 (best), 2;  1 -> 3, 4 (best);  2 -> 5;  4 -> 6
    return DraftTree(tokens=[0, 1, 2, 3, 4, 0, 1], parents=[-1, 0, 0, 1, 1, 2, 4], depths=[0, 1, 1, 2, 2, 2, 3],
                     values=[0.0, -0.1, -1.0, -2.0, -0.5, -1.5, -0.9])


class Counting:
    def __init__(self, weight):
        self.weight, self.calls = weight, 0

    def __call__(self, feats):  # [..., H] -> [..., V]
        self.calls += 1
        return feats @ self.weight


def test_best_children():
    assert make_tree().best_children() == [1, 4, 5, -1, 6, -1, -1]
    no_values = DraftTree(tokens=[0, 1, 2], parents=[-1, 0, 0], depths=[0, 1, 1])
    assert no_values.best_children() == [1, -1, -1]


def test_one_lm_head_call_along_the_best_branch_and_rows_match():
    g = torch.Generator().manual_seed(0)
    feats, weight = torch.randn(7, H, generator=g), torch.randn(H, V, generator=g)
    head = Counting(weight)
    logits = NodeLogits(feats, head, make_tree())
    for node in (0, 1, 4, 6):  # the best branch: one call computes all four
        torch.testing.assert_close(logits(node), feats[node] @ weight)
    assert head.calls == 1
    torch.testing.assert_close(logits(2), feats[2] @ weight)  # another branch: one more call (2 and 5)
    torch.testing.assert_close(logits(5), feats[5] @ weight)
    assert head.calls == 2
    row_by_row = Counting(weight)
    plain = NodeLogits(feats, row_by_row)  # no tree: one row per call
    for node in (0, 1, 4):
        plain(node)
    assert row_by_row.calls == 3


def test_greedy_path_is_the_same_with_batched_rows():
    tree = make_tree()
    # the target's argmax: at the root token 1 (node 1), at node 1 token 4 (node 4), at node 4 token 1 (node 6)
    table = torch.full((7, V), -5.0)
    for node, best in ((0, 1), (1, 4), (4, 1), (6, 3)):
        table[node, best] = 5.0
    table[[2, 3, 5], 0] = 5.0
    feats = torch.eye(7)  # feature row i selects table row i
    head = Counting(table)
    assert verify_greedy(tree, NodeLogits(feats, head, tree)) == ([0, 1, 4, 6], 3)
    assert head.calls == 1
    row_by_row = Counting(table)
    assert verify_greedy(tree, NodeLogits(feats, row_by_row)) == ([0, 1, 4, 6], 3)
    assert row_by_row.calls == 4


def test_prefetch_fills_small_trees_whole_in_one_call_and_big_ones_along_the_branch(monkeypatch):
    """prefetch reads the lm_head once for all rows: every node of trees that fit PREFETCH_FLAT rows in all (a
    verification that leaves the best branch needs no second read), only the best branches beyond."""
    import dyndepth.verify as verify

    tree = make_tree()  # 7 nodes, best branch 0 -> 1 -> 4 -> 6
    table = torch.full((7, V), -5.0)
    for node, best in ((0, 2), (2, 0), (5, 3)):  # the target takes node 2 (off the best branch), then node 5
        table[node, best] = 5.0
    table[[1, 3, 4, 6], 4] = 5.0
    for flat, rows, calls_after in ((12, 1, 1), (14, 2, 1), (4, 1, 2)):
        monkeypatch.setattr(verify, "PREFETCH_FLAT", flat)
        head = Counting(table)
        logits = [NodeLogits(torch.eye(7), head, tree) for _ in range(rows)]
        verify.prefetch(logits)
        assert head.calls == 1
        assert len(logits[0].cache) == (7 if rows * 7 <= flat else 4)  # the whole tree, or the best branch
        assert verify_greedy(tree, logits[0]) == ([0, 2, 5], 3)
        assert head.calls == calls_after  # leaving the branch costs a read only where it was not prefetched
    monkeypatch.setattr(verify, "PREFETCH_FLAT", 10)  # room for 3 of the 3 off-branch nodes: most likely first
    head = Counting(table)
    logits = NodeLogits(torch.eye(7), head, tree)
    verify.prefetch([logits])
    assert sorted(logits.cache) == [0, 1, 2, 3, 4, 5, 6] and head.calls == 1
    monkeypatch.setattr(verify, "PREFETCH_FLAT", 6)  # room for 2: nodes 2 (-1.0) and 5 (-1.5), not 3 (-2.0)
    logits = NodeLogits(torch.eye(7), Counting(table), tree)
    verify.prefetch([logits])
    assert sorted(logits.cache) == [0, 1, 2, 4, 5, 6]
