"""Draft-head checkpoints: read, tell EAGLE-1/2 from EAGLE-3, validate, build; and write (official layouts).

A head directory holds ``config.json`` and ``model.safetensors`` or ``pytorch_model.bin`` (read with
``torch.load(weights_only=True)``). The kind is told by the checkpoint itself:

- EAGLE-3 when the config says so (``speculators_model_type: "eagle3"``, or an architecture name containing
  "Eagle3"), or the weights have ``midlayer.*`` keys or ``layers.0.hidden_norm.weight``;
- EAGLE-1/2 otherwise.

EAGLE-3 layouts: the official one (``midlayer.*``, Llama-style config) and the speculators one (``layers.0.*``,
the layer's fields inside ``transformer_layer_config``, EAGLE-3 fields top level). Both load into the same
module, and saving always writes the official layout.

Target layers (``eagle_aux_hidden_state_layer_ids``) are HF ``output_hidden_states`` indices, i.e. the inputs of
those decoder layers, as vLLM and speculators read the top-level key. Inside ``eagle_config`` (SpecForge,
ModelOpt) the ids count layer *outputs* (SpecForge's default [1, L//2-1, L-4] is EAGLE's (2, L//2, L-3)), so
they are shifted by +1, as SGLang does.

Every malformed checkpoint raises one ``DyndepthError`` line naming the file and the key or field.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from transformers import LlamaConfig

from dyndepth.errors import DyndepthError
from dyndepth.head.eagle import DraftHead
from dyndepth.head.eagle3 import Eagle3Head
from dyndepth.head.fields import Fields, attention_shapes, rope_parameters

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
UNSUPPORTED_FLAGS = ("norm_before_fc", "fc_norm", "norm_output")  # EAGLE-3.1 variants: refused when true
SPECULATORS_TOP = ("draft_vocab_size", "target_hidden_size", "eagle_aux_hidden_state_layer_ids",
                   "norm_before_residual", *UNSUPPORTED_FLAGS, "torch_dtype", "dtype")


# -- reading --------------------------------------------------------------------------------------------------
def load_head_dir(path: str | Path, dtype: torch.dtype | None = None, device="cpu") -> DraftHead | Eagle3Head:
    """A head directory -> an EAGLE-1/2 ``DraftHead`` or an ``Eagle3Head`` (not yet bound to a target)."""
    from dyndepth.validate import json_object_file

    path = Path(path)
    cfg_file = path / "config.json"
    if not cfg_file.is_file():
        raise DyndepthError(f"not a draft head directory (no config.json): {path}")
    raw = json_object_file(cfg_file, "draft head config")
    state, weights = read_state_dict(path)
    if is_eagle3(raw, state, cfg_file):
        head = _build_eagle3(raw, state, cfg_file, weights)
    else:
        head = _build_eagle(raw, state, cfg_file, weights)
    return head.to(device=device, dtype=dtype or _config_dtype(raw))


def read_state_dict(path: Path) -> tuple[dict[str, torch.Tensor], Path]:
    st, pt = path / "model.safetensors", path / "pytorch_model.bin"
    if st.is_file():
        from safetensors.torch import load_file

        try:
            return load_file(str(st)), st
        except Exception as exc:  # noqa: BLE001 - safetensors raises its own error types for damaged files
            raise DyndepthError(f"draft head weights {st} cannot be read ({_first_line(exc)}); the file may be "
                                f"truncated or corrupt") from None
    if pt.is_file():
        try:
            obj = torch.load(pt, map_location="cpu", weights_only=True)
        except Exception as exc:  # noqa: BLE001 - any unpickling failure is a bad checkpoint
            raise DyndepthError(f"draft head weights {pt} cannot be read as a plain tensor state dict "
                                f"({_first_line(exc)})") from None
        if not isinstance(obj, dict):
            raise DyndepthError(f"draft head weights {pt} must hold a state dict (name -> tensor), not a "
                                f"{type(obj).__name__}")
        for k, v in obj.items():
            if not isinstance(k, str) or not isinstance(v, torch.Tensor):
                raise DyndepthError(f"draft head weights {pt} is not a plain state dict: entry {k!r} holds a "
                                    f"{type(v).__name__}, not a tensor")
        return obj, pt
    raise DyndepthError(f"draft head directory {path} has neither model.safetensors nor pytorch_model.bin")


def is_eagle3(raw: dict, state: dict, cfg_file: Path) -> bool:
    spec = raw.get("speculators_model_type")
    if spec is not None:
        if spec != "eagle3":
            raise DyndepthError(f"draft head config {cfg_file}: field 'speculators_model_type' {spec!r} is not "
                                f"supported (only 'eagle3'; EAGLE-1/2 heads load in the official EAGLE layout)")
        return True
    archs = raw.get("architectures") or []
    if isinstance(archs, list) and any(isinstance(a, str) and "eagle3" in a.lower() for a in archs):
        return True
    return any(k.startswith("midlayer.") for k in state) or "layers.0.hidden_norm.weight" in state


def _config_dtype(raw: dict) -> torch.dtype:
    name = raw.get("torch_dtype") or raw.get("dtype") or "float32"
    return DTYPES.get(str(name).replace("torch.", ""), torch.float32)


def _first_line(exc: Exception) -> str:
    lines = str(exc).strip().splitlines()
    return (lines[0] if lines else type(exc).__name__)[:200]


# -- EAGLE-1/2 ------------------------------------------------------------------------------------------------
def _build_eagle(raw: dict, state: dict, cfg_file: Path, weights: Path) -> DraftHead:
    f = Fields(raw, cfg_file)
    shapes = attention_shapes(f)
    rope_parameters(f, default_theta=10000.0)  # checks only: LlamaConfig reads the same fields
    bias = f.flag("bias", True)
    vocab = shapes["vocab_size"]
    d2t = state.get("d2t")
    vd = f.integer("draft_vocab_size", default=vocab if d2t is None or d2t.dim() != 1 else d2t.numel())
    if vd > vocab:
        raise f.fail("draft_vocab_size", f"{vd} exceeds vocab_size {vocab}")
    draft_vocab = draft_vocab_of(state, vocab, vd, weights)
    state.pop("embed_tokens.weight", None)  # a copy of the target's embedding; the target's own is used
    config = _llama_config({**raw, "bias": bias}, cfg_file)
    config.bias = bias
    head = DraftHead(config, draft_vocab)
    load_checked(head, state, weights)
    return head


# -- EAGLE-3 --------------------------------------------------------------------------------------------------
def _build_eagle3(raw: dict, state: dict, cfg_file: Path, weights: Path) -> Eagle3Head:
    flat = _flatten_speculators(raw, cfg_file)
    f = Fields(flat, cfg_file)
    shapes = attention_shapes(f)
    rope = rope_parameters(f, default_theta=10000.0)  # the draft's own RoPE: theta 10000 unless configured
    h, vocab = shapes["hidden_size"], shapes["vocab_size"]
    vd = f.integer("draft_vocab_size", default=vocab)
    if vd > vocab:
        raise f.fail("draft_vocab_size", f"{vd} exceeds vocab_size {vocab}")
    h_t = f.integer("target_hidden_size", default=h)
    ids = f.layer_ids("eagle_aux_hidden_state_layer_ids")
    if ids is None and isinstance(flat.get("eagle_config"), dict):
        inner = Fields(flat["eagle_config"], f"{cfg_file} (eagle_config)").layer_ids("eagle_aux_hidden_state_layer_ids")
        ids = None if inner is None else [i + 1 for i in inner]  # layer outputs -> layer inputs
    for flag in UNSUPPORTED_FLAGS:
        if f.flag(flag):
            raise f.fail(flag, "is true: this EAGLE-3.1 variant is not supported by dyndepth (only the reference "
                               "architecture and norm_before_residual)")
    state = {("midlayer." + k[len("layers.0."):] if k.startswith("layers.0.") else k): v for k, v in state.items()}
    draft_to_target = draft_vocab_of(state, vocab, vd, weights)
    own_embed = "embed_tokens.weight" in state
    if not own_embed and h_t != h:
        raise DyndepthError(f"draft head weights {weights} have no 'embed_tokens.weight', which a head with "
                            f"hidden_size {h} != target_hidden_size {h_t} must ship")
    try:
        config = LlamaConfig(**shapes, rope_parameters=rope, tie_word_embeddings=False)
    except Exception as exc:  # noqa: BLE001 - transformers' own config checks
        raise DyndepthError(f"draft head config {cfg_file} is not a valid Llama layer config ({_first_line(exc)})") from None
    config.draft_vocab_size, config.target_hidden_size = vd, h_t
    config.aux_layer_ids = None if ids is None else tuple(ids)
    config.norm_before_residual = f.flag("norm_before_residual")
    head = Eagle3Head(config, draft_to_target, own_embed=own_embed)
    load_checked(head, state, weights)
    return head


def _flatten_speculators(raw: dict, cfg_file: Path) -> dict:
    """A speculators config -> one flat dict: transformer_layer_config's fields plus the EAGLE-3 fields."""
    if raw.get("speculators_model_type") is None:
        return raw
    layer = raw.get("transformer_layer_config")
    if not isinstance(layer, dict):
        raise DyndepthError(f"draft head config {cfg_file}: field 'transformer_layer_config' must be an object "
                            f"(the speculators layout), got {type(layer).__name__}")
    flat = dict(layer)
    flat.update({k: raw[k] for k in SPECULATORS_TOP if k in raw})
    return flat


# -- shared: vocabulary mapping, keys and shapes --------------------------------------------------------------
def draft_vocab_of(state: dict, vocab: int, vd: int, weights: Path) -> torch.Tensor | None:
    """Pop ``d2t`` / ``t2d`` and check them -> target id of each draft id [V_d], or None for the identity."""
    d2t, t2d = state.pop("d2t", None), state.pop("t2d", None)
    where = f"draft head weights {weights}"
    ids = None
    if d2t is None:
        if vd != vocab:
            raise DyndepthError(f"{where}: key 'd2t' is missing; a draft vocabulary of {vd} < vocab_size {vocab} "
                                f"needs it (draft id -> target id offsets)")
    else:
        if d2t.dtype.is_floating_point or d2t.dtype.is_complex or d2t.dtype == torch.bool:
            raise DyndepthError(f"{where}: key 'd2t' must hold integer offsets, got dtype {d2t.dtype}")
        if tuple(d2t.shape) != (vd,):
            raise DyndepthError(f"{where}: key 'd2t' has shape {tuple(d2t.shape)}, expected ({vd},) "
                                f"(draft_vocab_size)")
        ids = torch.arange(vd) + d2t.long()  # [V_d] target ids
        bad = ((ids < 0) | (ids >= vocab)).nonzero()
        if bad.numel():
            i = int(bad[0, 0])
            raise DyndepthError(f"{where}: key 'd2t' maps draft id {i} to target id {int(ids[i])}, outside "
                                f"0..{vocab - 1}")
        uniq, counts = torch.unique(ids, return_counts=True)
        if uniq.numel() != vd:
            raise DyndepthError(f"{where}: key 'd2t' maps several draft ids to target id "
                                f"{int(uniq[counts > 1][0])}; target ids must be distinct")
    if t2d is not None:
        if tuple(t2d.shape) != (vocab,):
            raise DyndepthError(f"{where}: key 't2d' has shape {tuple(t2d.shape)}, expected ({vocab},) (vocab_size)")
        if t2d.dtype != torch.bool:
            if t2d.dtype.is_floating_point or not bool(((t2d == 0) | (t2d == 1)).all()):
                raise DyndepthError(f"{where}: key 't2d' must be a bool mask, got dtype {t2d.dtype}")
            t2d = t2d.bool()
        member = torch.zeros(vocab, dtype=torch.bool)
        member[torch.arange(vocab) if ids is None else ids] = True
        diff = (member != t2d).nonzero()
        if diff.numel():
            raise DyndepthError(f"{where}: key 't2d' disagrees with 'd2t' at target id {int(diff[0, 0])} "
                                f"(t2d must mark exactly the target ids arange + d2t)")
    if ids is not None and torch.equal(ids, torch.arange(vocab)[:vd]) and vd == vocab:
        return None  # V_d == V with zero offsets: no mapping
    return ids


def load_checked(head, state: dict, weights: Path) -> None:
    expected = head.expected_shapes()
    for key, shape in expected.items():
        if key not in state:
            raise DyndepthError(f"draft head checkpoint {weights} is missing key {key!r}")
        t = state[key]
        if tuple(t.shape) != shape:
            raise DyndepthError(f"draft head checkpoint {weights}: key {key!r} has shape {tuple(t.shape)}, "
                                f"expected {shape}")
        if not t.dtype.is_floating_point:
            raise DyndepthError(f"draft head checkpoint {weights}: key {key!r} has dtype {t.dtype}, expected a "
                                f"floating-point type")
        if not bool(torch.isfinite(t).all()):  # a diverged training run: the head would draft garbage silently
            bad = int((~torch.isfinite(t)).sum())
            raise DyndepthError(f"draft head checkpoint {weights}: key {key!r} holds {bad} NaN or infinite "
                                f"value(s) (a diverged training run?)")
    unexpected = sorted(set(state) - set(expected))
    if unexpected:
        raise DyndepthError(f"draft head checkpoint {weights} has unexpected key(s): {', '.join(unexpected)}")
    head.load_state_dict({k: state[k].float() for k in expected})


def _llama_config(raw: dict, cfg_file: Path) -> LlamaConfig:
    try:
        return LlamaConfig(**raw)
    except Exception as exc:  # noqa: BLE001 - transformers' own config checks
        raise DyndepthError(f"draft head config {cfg_file} is not a valid Llama layer config ({_first_line(exc)})") from None


# -- writing --------------------------------------------------------------------------------------------------
def _vocab_tensors(ids: torch.Tensor | None, vocab: int) -> dict[str, torch.Tensor]:
    if ids is None:
        return {}
    ids = ids.cpu().long()
    t2d = torch.zeros(vocab, dtype=torch.bool)
    t2d[ids] = True
    return {"d2t": ids - torch.arange(ids.numel()), "t2d": t2d}  # offsets [V_d], membership [V]


def _write(out_dir, cfg: dict, tensors: dict, extra: dict | None) -> Path:
    from safetensors.torch import save_file

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if extra:
        cfg.update(extra)
    (out / "config.json").write_text(json.dumps(cfg, indent=2, sort_keys=True, default=str) + "\n")
    save_file(tensors, str(out / "model.safetensors"), metadata={"format": "pt"})
    return out


def save_eagle(head: DraftHead, out_dir, dtype: torch.dtype = torch.bfloat16, extra: dict | None = None) -> Path:
    """EAGLE-1/2, official layout, without the embedding copy."""
    cfg = head.config.to_dict()
    cfg.update(bias=head.bias, num_hidden_layers=1, torch_dtype=str(dtype).replace("torch.", ""))
    tensors = {k: v.detach().to("cpu", dtype).contiguous() for k, v in head.state_dict().items()}
    if head.draft_vocab is not None:
        cfg["draft_vocab_size"] = int(head.draft_vocab.numel())
        tensors.update(_vocab_tensors(head.draft_vocab, head.config.vocab_size))
    return _write(out_dir, cfg, tensors, extra)


def save_eagle3(head: Eagle3Head, out_dir, dtype: torch.dtype = torch.bfloat16, extra: dict | None = None) -> Path:
    """EAGLE-3, official layout (``midlayer.*``; ``embed_tokens`` only when the head has its own)."""
    c = head.config
    rp = dict(getattr(c, "rope_parameters", None) or {"rope_type": "default", "rope_theta": 10000.0})
    cfg = {"architectures": ["LlamaForCausalLMEagle3"], "model_type": "llama", "hidden_size": c.hidden_size,
           "intermediate_size": c.intermediate_size, "num_attention_heads": c.num_attention_heads,
           "num_key_value_heads": c.num_key_value_heads, "head_dim": c.head_dim, "num_hidden_layers": 1,
           "rms_norm_eps": c.rms_norm_eps, "vocab_size": c.vocab_size, "draft_vocab_size": head.draft_vocab_size,
           "max_position_embeddings": c.max_position_embeddings, "hidden_act": c.hidden_act,
           "tie_word_embeddings": False, "rope_theta": float(rp.pop("rope_theta", 10000.0)),
           "torch_dtype": str(dtype).replace("torch.", "")}
    if rp.get("rope_type", "default") != "default":
        cfg["rope_scaling"] = rp
    if head.target_hidden_size != c.hidden_size:
        cfg["target_hidden_size"] = head.target_hidden_size
    if head.aux_layer_ids:
        cfg["eagle_aux_hidden_state_layer_ids"] = list(head.aux_layer_ids)
    if head.midlayer.norm_before_residual:
        cfg["norm_before_residual"] = True
    tensors = {k: v.detach().to("cpu", dtype).contiguous() for k, v in head.state_dict().items()}
    tensors.update(_vocab_tensors(head.draft_to_target, c.vocab_size))
    return _write(out_dir, cfg, tensors, extra)
