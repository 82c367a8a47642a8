"""The target: the model being accelerated, behind one forward over a batch of rows.

    model.py    Target: loading, ``forward_rows`` (one forward over several sequences' new tokens), logits, the
                EAGLE-3 feature capture, the single-sequence helpers
    rows.py     RowKV (one sequence's KV cache) and RowInput (a row's part of a forward)
    ragged.py   the attention function that lets several rows share one forward of an unmodified HF model
    static.py   the static engine: regions of one preallocated buffer, padded shapes, for torch.compile
"""

from dyndepth.target.model import DTYPES, Target, check_model_dir, parse_dtype, quiet_loading
from dyndepth.target.rows import RowInput, RowKV

__all__ = ["DTYPES", "Target", "RowInput", "RowKV", "check_model_dir", "parse_dtype", "quiet_loading"]
