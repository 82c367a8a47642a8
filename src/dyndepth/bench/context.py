"""What the methods of one benchmark run share: the target (loaded once), the draft head, the assistant.

Everything is loaded lazily on first use, so a run of ``vanilla`` alone never builds a head and a run
without ``assisted`` never loads an assistant model.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from dyndepth.errors import DyndepthError


@dataclass
class BenchContext:
    model: str  # zoo name, model directory or Hub id
    dtype: str = "bfloat16"
    device: str = "cpu"
    head: str | None = None  # None: the head shipped for the zoo model; "random"; or an EAGLE-format directory
    seed: int = 0
    fast_path: bool | str = True  # dyndepth.fastpath on the shared model ("pack": + prepacked multi-row linears)
    vllm_python: str | None = None  # vLLM's own interpreter, for the vllm methods (bench/vllm_method.py)
    max_batch: int = 1  # the largest batch a method is asked for (the vLLM engine's max_num_seqs)
    _target: object = field(default=None, repr=False)
    _head: object = field(default=None, repr=False)
    _assistants: dict = field(default_factory=dict, repr=False)
    _variants: dict = field(default_factory=dict, repr=False)

    @property
    def model_id(self) -> str:
        return Path(self.model).name if Path(self.model).expanduser().exists() else self.model

    def target(self, static_cache: bool = False, compile: bool = False, max_len: int | None = None):
        """The dyndepth ``Target`` (its ``.model`` is the transformers model that vanilla generate uses); with
        engine options, a Target of that engine on the same model object (one per option set, built once)."""
        if static_cache or compile or max_len is not None:
            key = (static_cache, compile, max_len)
            if key not in self._variants:
                self._variants[key] = self.target().variant(static_cache=static_cache, max_len=max_len,
                                                            compile=compile)
            return self._variants[key]
        if self._target is None:
            from dyndepth.target import Target

            self._target = Target.from_pretrained(self.model, dtype=self.dtype, device=self.device,
                                                  fast_path=self.fast_path)
            if self._target.tokenizer is None:
                raise DyndepthError(f"{self.model}: no tokenizer found; the benchmark needs one for the chat template")
        return self._target

    def draft_head(self):
        """The draft head, built once and shared by every tree method of the run."""
        if self._head is None:
            from dyndepth.decoder import load_head

            if self.head is None and not self._is_zoo_name():
                raise DyndepthError(f"heads ship only for zoo models, not for {self.model}; pass --head DIR "
                                    f"(EAGLE format) or --head random")
            self._head = load_head(self.head, self.model, self.target(), seed=self.seed)
        return self._head

    def _is_zoo_name(self) -> bool:
        from dyndepth.models import ZOO

        return self.model in ZOO

    def head_label(self) -> str:
        if self.head is None:
            from dyndepth.head_weights import shipped_head

            path = shipped_head(self.model) if self._is_zoo_name() else None
            return f"shipped ({path})" if path else "none shipped"
        if str(self.head) == "random":
            return f"random (untrained, seed {self.seed})"
        return str(self.head)

    def assistant(self, name: str):
        """A transformers model for assisted generation, in the target's dtype and device (loaded once)."""
        if name not in self._assistants:
            from dyndepth.target import Target

            self._assistants[name] = Target.from_pretrained(name, dtype=self.dtype, device=self.device)
        return self._assistants[name]
