"""Draft heads: EAGLE-1/2 (``eagle``) and EAGLE-3 (``eagle3``), their KV cache (``kv``: growing or static),
shared attention (``attention``), config checks (``fields``) and checkpoints (``checkpoint``: ``load_head_dir`` tells the two
kinds apart by the checkpoint). The shipped weights live in ``dyndepth/head_weights/``.

Both heads offer what tree growth (``dyndepth.drafters.eagle``) uses: ``project(target_features)``, ``forward(tokens,
features, positions, cache, mask)`` -> hidden fed back, ``logits(hidden)`` over the draft vocabulary,
``to_target_ids``, ``draft_vocab_size``, ``bind(embed, lm_head_weight)``, and ``feature_layers(L)`` (which target
hidden states they read; None = the final-normed last hidden state).
"""

from dyndepth.head.checkpoint import load_head_dir
from dyndepth.head.eagle import DraftHead, head_config
from dyndepth.head.eagle3 import Eagle3Head, default_layers, eagle3_config
from dyndepth.head.kv import DraftKV, StaticDraftKV
from dyndepth.head_weights import shipped_head

__all__ = ["DraftHead", "DraftKV", "Eagle3Head", "StaticDraftKV", "default_layers", "eagle3_config", "head_config",
           "load_head_dir", "shipped_head"]
