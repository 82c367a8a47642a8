"""Dequantize a GGUF once with transformers and save it as a plain safetensors model directory."""

from __future__ import annotations

import importlib.util
import sys
import time
from pathlib import Path

from dyndepth.models.registry import ZooError


def convert_gguf(gguf_path: Path, out_dir: Path, dtype: str) -> None:
    """Load ``gguf_path`` (dequantizing to ``dtype``) and ``save_pretrained`` model + tokenizer into ``out_dir``."""
    if importlib.util.find_spec("accelerate") is None:  # transformers needs it to load any GGUF file
        raise ZooError("converting a GGUF model needs the 'accelerate' package: run  pip install accelerate")
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    src, name = str(gguf_path.parent), gguf_path.name
    start = time.perf_counter()
    print(f"dequantizing {name} to {dtype} (one-time, up to a few minutes on CPU)...", file=sys.stderr, flush=True)
    tokenizer = AutoTokenizer.from_pretrained(src, gguf_file=name)
    # dequantize=True: with the optional `kernels` package installed, transformers 5.x would otherwise keep the
    # weights packed in GGUF blocks (GgufLinear), which is not what we want to save.
    model = AutoModelForCausalLM.from_pretrained(src, gguf_file=name, dtype=getattr(torch, dtype),
                                                 quantization_config=GgufConfig(dequantize=True))
    packed = [k for k, v in model.state_dict().items() if v.dtype != getattr(torch, dtype)]
    if packed:
        raise ZooError(f"{name}: {len(packed)} weights were not dequantized to {dtype} (e.g. {packed[0]})")
    loaded = time.perf_counter()
    # transformers 5.x refuses to save a GGUF-loaded model ("quantized with gguf and is not serializable");
    # the weights are already plain tensors, so drop the quantizer and its config entry.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)  # tokenizer.json + chat_template.jinja
    print(f"dequantized in {loaded - start:.1f} s, saved in {time.perf_counter() - loaded:.1f} s", file=sys.stderr)
