"""dyndepth: lossless speculative decoding with EAGLE-2 dynamic draft trees and Dynamic Depth Decoding (DDD).

Terminology (used the same way in every module; see docs/ALGORITHM.md for the full method):

target        the model being accelerated; its output distribution never changes.
draft head    a one-layer network that predicts the target's next tokens from the target's features
              (the final-normed last hidden states, i.e. the input of the target's ``lm_head``).
committed     tokens that are final: prompt + everything accepted so far; ``L`` is their number, which is also
              the length of the target's KV cache and of the draft head's committed KV cache.
root          the last token produced by the target (argmax or sample). It is not yet in the target's KV cache;
              it is node 0 of the tree and is always accepted.
node          one drafted token in the tree, with a parent (the root or another node), a depth and a path value.
depth         number of draft tokens on the path root -> node (the root has depth 0). "Drafted depth" of a step
              is the number of levels the head grew, i.e. its number of draft forward passes.
path value    product of the draft probabilities along root -> node, kept as a log (``s(node) = s(parent) +
              log p_draft(token)``); it never increases along a path.
beam          the ``top_k`` nodes of one depth with the highest path values; only beam nodes are expanded (fewer,
              ``total_tokens - 1``, where a tree holds fewer nodes and the policy does not read the beam: the same
              tree).
pool          every node drafted in a step (all ``top_k`` children of every beam node), before the rerank.
tree          the ``total_tokens - 1`` pool nodes with the highest path values (plus the root) that the target
              verifies in one forward pass.
accepted      draft nodes the target agrees with, along one root -> node path (``a`` of them per step).
bonus         the token the target produces after the last accepted node; it becomes the next root.
step          one tree growth + one target verification forward + commit; it commits ``a + 1`` tokens.
tau           mean accepted tokens = mean over steps of ``a + 1``; plain decoding has tau = 1.
chain         (replay) the answer's next tokens after a root; in greedy decoding a node is accepted iff its path
              spells the chain's first tokens, so a recorded pool plus the chain tells any tree's ``a``.
hindsight oracle  the per-step choice of (levels, N) that would be fastest knowing every step's ``a`` in advance:
              a bound no causal depth policy beats (bench/hindsight.py).
"""

from dyndepth.errors import DyndepthError

__version__ = "0.1.0"

__all__ = ["DyndepthError", "SpeculativeDecoder", "GenerationOutput", "__version__"]


def __getattr__(name):  # lazy: importing dyndepth must not import torch
    if name in ("SpeculativeDecoder", "GenerationOutput"):
        from dyndepth import decoder

        return getattr(decoder, name)
    raise AttributeError(name)
