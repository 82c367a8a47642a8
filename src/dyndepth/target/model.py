"""The target model: an unmodified transformers causal LM behind a small interface.

Every target forward goes through ``Target.forward_rows``: the new tokens of one or more rows (sequences), each row
with its own KV cache (``RowKV``), position ids and visibility (its committed prefix, then its tree's ancestors or
its chunk's causal past), flattened into ONE forward of the model. It returns the target's features (the
final-normed last hidden states, i.e. exactly the input of ``lm_head``, which the draft head consumes) for every
new token; ``logits`` turns features into logits. Prefill chunks, plain decoding (a one-node tree) and tree
verification are all this one call, for one row or a batch.

KV cache handling: after a forward a row holds ``L`` committed entries followed by its new entries. ``RowKV.commit``
keeps the accepted path (root + accepted nodes) at ``L .. L+a``, or a whole prefill chunk.

Two engines, one interface: the default gives each row its own buffers and attends row by row (``target/ragged.py``:
no row pays for another's context); ``static_cache=True`` writes every row into regions of one preallocated buffer
at fixed slots, pads the flattened tokens to a few fixed sizes and attends densely under one mask
(``target/static.py``), so that ``compile=True`` can ``torch.compile`` the forward (CUDA graphs on a GPU).

The single-sequence methods (``prefill``, ``forward``, ``commit_path``, ``length``) work on a default row: for the
cost probe, training and tests that drive one sequence by hand.
"""

from __future__ import annotations

import contextlib
import inspect
import sys
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from dyndepth.errors import DyndepthError
from dyndepth.target import ragged
from dyndepth.target.rows import RowInput, RowKV
from dyndepth.target.static import (DEFAULT_MAX_LEN, SlotCache, SlotRow, check_model, check_options, padded_rows,
                                    padded_size)

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def parse_dtype(dtype) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in DTYPES:
        raise DyndepthError(f"unknown dtype {dtype!r}; choose one of: {', '.join(DTYPES)}")
    return DTYPES[dtype]


WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                "pytorch_model.bin.index.json")


def check_model_dir(path: Path) -> None:
    """One line for a model directory that cannot load: config.json broken or without model_type, no weights."""
    from dyndepth.validate import json_object_file

    if not path.is_dir():
        return  # a Hub cache path or similar: transformers reports it
    config = json_object_file(path / "config.json", "model config")
    if "model_type" not in config:
        raise DyndepthError(f"model config {path / 'config.json'} has no 'model_type' field")
    if not any((path / name).is_file() for name in WEIGHT_FILES) and not any(path.glob("*.safetensors")):
        raise DyndepthError(f"model directory {path} has no weights (none of: {', '.join(WEIGHT_FILES)})")


def _first_line(exc: Exception) -> str:
    text = str(exc).strip().splitlines()
    return (text[0] if text else type(exc).__name__)[:300]


@contextlib.contextmanager
def quiet_loading():
    """transformers' loading bars and notices go to stderr only, and only on a terminal: never into stdout
    (``dyndepth generate --json`` prints one JSON document there)."""
    from transformers.utils import logging as hf_logging

    bars = hf_logging.is_progress_bar_enabled()
    if not sys.stderr.isatty():
        hf_logging.disable_progress_bar()
    try:
        with contextlib.redirect_stdout(sys.stderr):
            yield
    finally:
        if bars:
            hf_logging.enable_progress_bar()


class Target:
    def __init__(self, model, tokenizer=None, static_cache: bool = False, max_len: int | None = None,
                 compile: bool = False, fast_path: str = "eager"):
        """static_cache: preallocated KV buffers of ``max_len`` (+1 pad slot) committed-plus-tree tokens (default
        min(2048, the model's context)); compile: ``torch.compile`` the padded verify forward (needs static_cache;
        CUDA graphs on a GPU, inductor on a CPU). fast_path: the name of what ``dyndepth.fastpath`` did to the
        model (``from_pretrained`` applies it). Several Targets may wrap the same model: each owns its caches."""
        check_options(static_cache, max_len, compile)
        self.model = model.eval()
        self.fast_path = fast_path  # what the forward runs: "eager (...)" or "cpu: float32 compute (...)"
        self.tokenizer = tokenizer
        self.config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
        self.base = model.get_decoder()  # the transformer body: returns final-normed hidden states
        self.lm_head = model.get_output_embeddings()
        self.embed = model.get_input_embeddings()
        self.softcap = getattr(self.config, "final_logit_softcapping", None)
        self.dtype = next(model.parameters()).dtype
        self.device = next(model.parameters()).device
        self.cache: SlotCache | None = None  # the static engine's buffers (None: the dynamic engine)
        self._row: RowKV | None = None  # the single-sequence methods' row
        self.owner: object | None = None  # the generation that owns the target now (see claim)
        # transformers >= 5.24 takes the cache as `cache=`; earlier releases as `past_key_values=`
        params = inspect.signature(self.base.forward).parameters
        self.cache_kwarg = "cache" if "cache" in params else "past_key_values"
        # Sliding-window attention (Gemma 3, Mistral): a custom mask overrides the model's own window, so the
        # window is applied here. The cache keeps every position in every layer (no ring buffers).
        layer_types = list(getattr(self.config, "layer_types", None) or [])
        window = getattr(self.config, "sliding_window", None)
        if getattr(self.config, "use_sliding_window", True) is False:
            window = None
        self.window = int(window) if window else None
        self.mask_kinds = sorted(set(layer_types)) if "sliding_attention" in layer_types else None
        self.all_sliding = self.window is not None and not layer_types
        self.static_cache, self.compiled, self.max_len = static_cache, compile, None
        if static_cache:
            check_model(self.config)
            context = int(getattr(self.config, "max_position_embeddings", 2048))
            if max_len is not None and max_len > context:
                raise DyndepthError(f"max_len {max_len} exceeds the model's context of {context} tokens")
            self.max_len = max_len or min(DEFAULT_MAX_LEN, context)
        else:
            ragged.install(model)
        self._run = self._compile_run() if compile else self._run_base

    @classmethod
    def from_pretrained(cls, model: str, dtype="float32", device="cpu", static_cache: bool = False,
                        max_len: int | None = None, compile: bool = False,
                        fast_path: bool | str = True) -> "Target":
        """fast_path: make the forward faster where it pays on this machine (``dyndepth.fastpath``: on a CPU without
        a native bf16/fp16 matmul, a half-precision checkpoint computes in float32); "pack" adds oneDNN-prepacked
        weights for multi-row forwards (trees, batches; a second copy of the weights); False keeps eager as loaded."""
        from dyndepth.models import locate_model

        check_options(static_cache, max_len, compile)  # before any loading
        path = locate_model(model)
        torch_dtype = parse_dtype(dtype)
        check_model_dir(Path(path))
        with quiet_loading():
            try:
                tok = AutoTokenizer.from_pretrained(path)
            except Exception as exc:  # noqa: BLE001 - a broken tokenizer in the user's directory
                raise DyndepthError(f"cannot load the tokenizer of {path}: {_first_line(exc)}") from None
            try:
                lm = AutoModelForCausalLM.from_pretrained(path, dtype=torch_dtype).to(device)
            except Exception as exc:  # noqa: BLE001 - truncated weights, unknown architecture, ...
                raise DyndepthError(f"cannot load the model in {path}: {_first_line(exc)}") from None
        ran = "eager (fast_path=False)"
        if fast_path:
            from dyndepth.fastpath import apply_fast_path

            # before the Target reads the dtype and a head binds to it
            ran = apply_fast_path(lm, torch_dtype, pack=fast_path == "pack")
        return cls(lm, tok, static_cache=static_cache, max_len=max_len, compile=compile, fast_path=ran)

    def variant(self, static_cache: bool = False, max_len: int | None = None, compile: bool = False) -> "Target":
        """Another Target on the same model object (weights held once) with other engine options."""
        return Target(self.model, self.tokenizer, static_cache=static_cache, max_len=max_len, compile=compile,
                      fast_path=self.fast_path)

    @property
    def max_context(self) -> int:
        """Committed tokens plus one tree must fit this: the model's context, or ``max_len`` when static."""
        context = int(getattr(self.config, "max_position_embeddings", 2048))
        return min(context, self.max_len) if self.max_len else context

    def stop_token_ids(self) -> set[int]:
        """EOS ids of the model and its generation config, plus common chat end-of-turn tokens."""
        ids: set[int] = set()
        for source in (self.config, getattr(self.model, "generation_config", None), self.tokenizer):
            eos = getattr(source, "eos_token_id", None) if source is not None else None
            if isinstance(eos, int):
                ids.add(eos)
            elif isinstance(eos, (list, tuple)):
                ids.update(int(e) for e in eos)
        if self.tokenizer is not None:
            vocab = self.tokenizer.get_vocab()
            for t in ("<|im_end|>", "<|eot_id|>", "<end_of_turn>", "<|endoftext|>"):
                if t in vocab and t in getattr(self.tokenizer, "all_special_tokens", []):
                    ids.add(vocab[t])
        return ids

    # -- ownership: one generation at a time -----------------------------------------------------------
    def claim(self) -> object:
        """Start a generation (one call of the decoder, one batch): returns its token. An older generation's token
        is no longer ``owner``, so its stream fails its next step instead of decoding on."""
        self.owner = object()
        return self.owner

    def release(self, token: object) -> None:
        if self.owner is token:
            self.owner = None

    # -- rows ------------------------------------------------------------------------------------------
    def new_row(self, capacity: int) -> RowKV:
        """An empty KV cache for one sequence that will hold about ``capacity`` entries (committed + one tree)."""
        if self.static_cache:
            if self.cache is None:  # allocated on first use, then kept at its address
                self.cache = SlotCache(self.num_layers, self.max_len)
            return SlotRow(self.cache)
        return RowKV(self.num_layers, min(capacity, self.max_context + 1))

    def logits(self, features: torch.Tensor) -> torch.Tensor:
        """features [..., H] -> logits [..., V] in float32 (lm_head plus any final soft-capping)."""
        with torch.inference_mode():
            logits = self.lm_head(features)
            if self.softcap:
                logits = torch.tanh(logits / self.softcap) * self.softcap
            return logits.float()

    @torch.inference_mode()
    def forward_rows(self, rows: list[RowInput]) -> torch.Tensor:
        """One forward over every row's new tokens -> features [T, H], the rows' tokens one after another.

        Each row's new KV entries are written after its committed ones; the caller commits what it keeps
        (``row.kv.commit``). Logits are not computed here: verification asks ``logits`` only for the branches it
        walks (verify.NodeLogits). EAGLE-3 features of the same forward: ``head_features``."""
        if self.static_cache:
            n = sum(r.size for r in rows)
            if any(r.visible is None and r.size > 1 for r in rows):  # a prefill chunk: its own shape, never compiled
                return self._forward_static(rows, n, self._run_base)
            return self._forward_static(rows, padded_size(n), self._run)
        tokens = torch.cat([r.tokens for r in rows])  # [T]
        positions = torch.cat([r.positions for r in rows])  # [T]
        batch = ragged.RaggedRows(rows, self.dtype, self.window, self.window is not None)
        placeholder = torch.zeros(1, 1, batch.total, 1, dtype=self.dtype, device=self.device)  # passed through
        out = self.base(input_ids=tokens[None], position_ids=positions[None], attention_mask=placeholder,
                        use_cache=False, dyndepth_rows=batch)
        return out.last_hidden_state[0]  # [T, H]

    # -- one sequence by hand (the default row) --------------------------------------------------------
    def reset(self) -> None:
        if self._row is not None:
            self._row.release()
        self._row = self.new_row(self.max_context + 1)

    @property
    def length(self) -> int:
        """Committed entries of the default row (L)."""
        return self._row.length if self._row is not None else 0

    def forward(self, tokens: torch.Tensor, positions: torch.Tensor, visible: torch.Tensor) -> torch.Tensor:
        """The default row: tokens [n], positions [n], visible [n, L + n] bool -> features [n, H]."""
        if self._row is None:
            self.reset()
        return self.forward_rows([RowInput(self._row, tokens, positions, visible)])

    def prefill(self, input_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """input_ids [L] -> (logits of the last position [V], features [L, H]); the default row then holds L."""
        self.reset()
        n = input_ids.numel()
        row = RowInput(self._row, input_ids, torch.arange(n, device=self.device))
        feats = self.forward_rows([row])
        self._row.commit(n)
        return self.logits(feats[-1]), feats

    def commit_path(self, path: torch.Tensor) -> None:
        """Keep the default row's entries of the accepted path (tree indices [a+1], root first) at L .. L+a."""
        self._row.commit(path.numel(), keep=path)

    # -- the static-cache engine (target/static.py) ------------------------------------------------------
    @torch.inference_mode()
    def _forward_static(self, rows: list[RowInput], bucket: int, run) -> torch.Tensor:
        """``forward_rows`` on the static cache: n tokens padded to ``bucket`` over all S slots -> [n, H]."""
        n = sum(r.size for r in rows)
        tok, pos, slots, vis, k_pos = padded_rows(rows, bucket, self.cache)  # [b], [b], [b], [b, S], [S]
        self.cache.slots = slots
        hidden = run(tok[None], pos[None], self.attention_mask(vis, pos, k_pos))  # [1, b, H]
        if not self.cache.written:
            raise DyndepthError(f"model type {getattr(self.config, 'model_type', '?')!r} cannot use "
                                f"static_cache: some of its layers bypass the KV cache")
        if self.captured_layers is not None:  # EAGLE-3 features: drop the pad rows too
            self._captured = {i: t[:, :n] for i, t in self._captured.items()}
        return hidden[0, :n]

    def attention_mask(self, visible: torch.Tensor, q_pos: torch.Tensor, k_pos: torch.Tensor):
        """visible [n, S] bool over the static buffer's slots, q_pos [n], k_pos [S] -> what the model's forward
        takes: an additive float mask [1, 1, n, S], or a dict of them per layer type when some layers slide."""
        neg = torch.finfo(self.dtype).min

        def additive(vis):
            return torch.zeros(vis.shape, dtype=self.dtype, device=self.device).masked_fill_(~vis, neg)[None, None]

        if self.window is None:
            return additive(visible)
        in_window = k_pos[None, :] > (q_pos[:, None] - self.window)  # [n, S]
        if self.all_sliding:
            return additive(visible & in_window)
        masks = {"full_attention": additive(visible), "sliding_attention": additive(visible & in_window)}
        return {kind: masks[kind] for kind in self.mask_kinds}

    def _run_base(self, tokens: torch.Tensor, positions: torch.Tensor, mask) -> torch.Tensor:
        """tokens [1, b], positions [1, b], mask [1, 1, b, S] (or a dict per layer type) -> hidden [1, b, H]."""
        return self.base(input_ids=tokens, position_ids=positions, attention_mask=mask, use_cache=True,
                         **{self.cache_kwarg: self.cache}).last_hidden_state

    def _compile_run(self):
        """``_run_base`` under torch.compile: one graph per bucket (shapes are fixed, L is only in tensor
        contents); on CUDA with CUDA graphs (mode reduce-overhead), whose outputs are copied before reuse."""
        cuda = self.device.type == "cuda"
        compiled = torch.compile(self._run_base, mode="reduce-overhead" if cuda else None, dynamic=False)
        if not cuda:
            return compiled

        def run(tokens, positions, mask):
            torch.compiler.cudagraph_mark_step_begin()
            return compiled(tokens, positions, mask).clone()

        return run

    # -- head features: what the draft head reads (EAGLE-3: hidden states of chosen layers) ---------------
    @property
    def num_layers(self) -> int:
        return len(self.base.layers)

    @property
    def captured_layers(self) -> tuple[int, ...] | None:
        """The layers ``capture`` keeps (None: none)."""
        return getattr(self, "_capture_ids", None)

    def capture(self, layer_ids) -> None:
        """From now on every forward also keeps the residual stream entering decoder layers ``layer_ids``, i.e.
        HF ``output_hidden_states[i]`` (forward pre-hooks, no patched modeling code). None: no hooks at all."""
        ids = None if layer_ids is None else tuple(int(i) for i in layer_ids)
        if ids == getattr(self, "_capture_ids", None):
            return
        for hook in getattr(self, "_hooks", ()):
            hook.remove()
        self._hooks, self._captured, self._capture_ids = [], {}, ids
        if ids is None:
            return
        bad = [i for i in ids if not 0 <= i < self.num_layers]
        if bad:
            self._capture_ids = None
            raise DyndepthError(f"target layers {list(ids)} must lie in 0..{self.num_layers - 1} (this target has "
                                f"{self.num_layers} decoder layers)")

        def keep(i):
            def hook(module, args, kwargs):
                self._captured[i] = args[0] if args else kwargs["hidden_states"]  # [B, n, H]
            return hook

        self._hooks = [self.base.layers[i].register_forward_pre_hook(keep(i), with_kwargs=True)
                       for i in sorted(set(ids))]

    def head_features(self, hidden: torch.Tensor) -> torch.Tensor:
        """What the head reads for the last forward: ``hidden`` itself (no capture), or the captured layers
        concatenated, [n, k·H] (batch row 0; ``captured_batch`` for batches)."""
        if self.captured_layers is None:
            return hidden
        return self.captured_batch()[0]

    def captured_batch(self) -> torch.Tensor:
        """The captured layers of the last forward, concatenated in ``layer_ids`` order: [B, n, k·H]."""
        feats = torch.cat([self._captured[i] for i in self._capture_ids], dim=-1)
        self._captured = {}
        return feats

    def forward_features(self, tokens: torch.Tensor, positions: torch.Tensor,
                         visible: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``forward`` -> (features [n, H] for the logits, head features [n, F]) from the same forward pass."""
        hidden = self.forward(tokens, positions, visible)
        return hidden, self.head_features(hidden)

    def prefill_features(self, input_ids: torch.Tensor, head=None):
        """``prefill`` for a generation with ``head`` (None: no draft): sets what is captured for the head ->
        (logits of the last position [V], features [L, H], head features [L, F])."""
        layers = getattr(head, "feature_layers", None)
        self.capture(None if layers is None else layers(self.num_layers))
        logits, hidden = self.prefill(input_ids)
        return logits, hidden, self.head_features(hidden)
