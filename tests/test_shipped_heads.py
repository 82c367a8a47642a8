"""The draft heads shipped in src/dyndepth/head_weights/: loadable, small, documented, and the default for their model."""

import json

import pytest
from safetensors import safe_open

from dyndepth.head import DraftHead
from dyndepth.head_weights import HEADS_DIR, shipped_head, shipped_heads
from dyndepth.models.registry import ZOO

EXPECTED = ["qwen2.5-coder-1.5b-instruct", "smollm2-135m-instruct"]


def test_a_head_ships_for_each_zoo_target():
    assert shipped_heads() == EXPECTED
    assert all(name in ZOO for name in shipped_heads())
    assert shipped_head("not-a-zoo-model") is None and shipped_head(str(HEADS_DIR / EXPECTED[0])) is None


@pytest.mark.parametrize("name", EXPECTED)
def test_shipped_head_is_a_small_bf16_eagle_checkpoint_with_its_record(name):
    path = shipped_head(name)
    weights = path / "model.safetensors"
    assert weights.stat().st_size < 50 * 2**20  # the repository is not a weights store
    with safe_open(str(weights), "pt") as f:
        dtypes = {f.get_slice(k).get_dtype() for k in f.keys()}
    assert dtypes - {"I64", "I32", "BOOL"} == {"BF16"}  # d2t/t2d are integer maps; every weight is bf16

    head = DraftHead.from_pretrained(path)
    cfg = json.loads((path / "config.json").read_text())
    assert head.config.hidden_size == cfg["hidden_size"]
    if cfg.get("draft_vocab_size"):  # reduced draft vocabulary: distinct target ids, in range
        ids = head.draft_vocab
        assert ids.numel() == cfg["draft_vocab_size"] == ids.unique().numel()
        assert int(ids.min()) >= 0 and int(ids.max()) < cfg["vocab_size"]

    record = json.loads((path / "training.json").read_text())
    assert record["model"] == name
    assert record["heldout_metrics"]["top1"][0] > 0.2  # a trained head, not a random one
    readme = (path / "README.md").read_text()
    assert name in readme and "dyndepth train-head" in readme


def test_shipped_head_matches_its_target(smollm2_path):
    cfg = json.loads((shipped_head("smollm2-135m-instruct") / "config.json").read_text())
    target_cfg = json.loads((smollm2_path / "config.json").read_text())
    assert (cfg["hidden_size"], cfg["vocab_size"]) == (target_cfg["hidden_size"], target_cfg["vocab_size"])
