"""vLLM's engine as benchmark methods, ``vllm`` (plain decoding) and ``vllm-ngram`` (its n-gram speculation), run
in vLLM's own Python environment: ``dyndepth bench --vllm-python /path/to/vllm-venv/bin/python``.

vLLM is never a dependency: the methods start ``vllm_worker.py`` under that interpreter and talk to it over a
pipe, one JSON line per request (the worker times each request itself). Without ``--vllm-python`` they are skipped
with a clear reason, like ``assisted`` on a model it does not fit. They take the same prompt ids as every other
method, so answers, tok/s and the ratios to vanilla come from the same run; in the offline throughput mode
(``--batch-size``) vLLM batches continuously with at most B requests running.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from dyndepth.bench.base import BenchMethod, GenParams, MethodSkipped, trim_at_stop
from dyndepth.bench.records import TurnResult
from dyndepth.errors import DyndepthError

WORKER = Path(__file__).with_name("vllm_worker.py")
VLLM_DEFAULTS = {"bind": "0-1", "dtype": None, "max_num_batched_tokens": 512, "max_model_len": 2048}
NGRAM_DEFAULTS = {**VLLM_DEFAULTS, "num_speculative_tokens": 5, "prompt_lookup_min": 2, "prompt_lookup_max": 4}


class VLLMMethod(BenchMethod):
    """A vLLM engine in a worker process; ``generate`` and ``generate_batch`` send it prompt ids."""

    family = "vllm"

    def __init__(self, name: str, python: str, model_dir: str, stop_ids: set[int], settings: dict, dtype: str,
                 max_batch: int):
        self.name = name
        self.stop_ids = stop_ids
        self._settings = dict(settings)
        self._settings["dtype"] = settings.get("dtype") or dtype
        cmd = [python, str(WORKER), "--model", model_dir, "--dtype", self._settings["dtype"],
               "--max-model-len", str(settings["max_model_len"]), "--max-num-seqs", str(max(1, max_batch)),
               "--max-num-batched-tokens", str(settings["max_num_batched_tokens"])]
        if settings.get("num_speculative_tokens"):
            cmd += ["--ngram", str(settings["num_speculative_tokens"]), "--lookup-min",
                    str(settings["prompt_lookup_min"]), "--lookup-max", str(settings["prompt_lookup_max"])]
        env = dict(os.environ)
        if str(settings.get("bind") or "auto") != "auto":
            env["VLLM_CPU_OMP_THREADS_BIND"] = str(settings["bind"])
        else:
            env.pop("VLLM_CPU_OMP_THREADS_BIND", None)
        self.log_path = Path(tempfile.mkstemp(prefix=f"dyndepth-{name}-", suffix=".log")[1])
        print(f"{name}: starting vLLM in {python} (start-up compiles the model: minutes on a CPU; log "
              f"{self.log_path})", file=sys.stderr, flush=True)
        started = time.perf_counter()
        self._log = self.log_path.open("w")
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._log, text=True,
                                     env=env, bufsize=1)
        ready = self._read()
        self.info = {k: ready[k] for k in ("version", "startup_s", "warmup_s", "bind")}
        print(f"{name}: vLLM {ready['version']} ready in {time.perf_counter() - started:.0f} s", file=sys.stderr,
              flush=True)

    def _read(self) -> dict:
        line = self.proc.stdout.readline()
        if not line:
            self.proc.wait()
            tail = self.log_path.read_text(errors="replace").strip().splitlines()[-1:] or ["no output"]
            raise DyndepthError(f"{self.name}: the vLLM worker exited with code {self.proc.returncode}: "
                                f"{tail[0][:300]} (log {self.log_path})")
        return json.loads(line)

    def _ask(self, prompts: list[list[int]], params: GenParams, seed: int, batch_size: int) -> dict:
        req = {"prompts": prompts, "batch_size": batch_size, "max_tokens": params.max_new_tokens,
               "temperature": params.temperature, "top_p": params.top_p, "top_k": params.top_k, "seed": seed}
        self.proc.stdin.write(json.dumps(req) + "\n")
        self.proc.stdin.flush()
        return self._read()

    def settings(self) -> dict:
        return {"backend": f"vllm-cpu {self.info['version']} (its own environment)", **self._settings,
                "bind": self.info["bind"], "startup_s": self.info["startup_s"]}

    def generate(self, ids: list[int], params: GenParams, seed: int) -> TurnResult:
        answer = self._ask([ids], params, seed, 1)
        new = trim_at_stop(answer["ids"][0], self.stop_ids, params.max_new_tokens)
        return TurnResult(new, answer["seconds"], 0)  # vLLM does not report steps to its caller

    def generate_batch(self, prompts: list[list[int]], params: GenParams, seed: int, batch_size: int):
        from dyndepth.bench.throughput import BatchResult

        answer = self._ask(prompts, params, seed, batch_size)
        outputs = [trim_at_stop(ids, self.stop_ids, params.max_new_tokens) for ids in answer["ids"]]
        tokens = sum(len(o) for o in outputs)
        return BatchResult(self.name, batch_size, answer["seconds"], tokens, 0, outputs)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.stdin.close()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        self._log.close()


def vllm_factory(ctx, name: str, settings: dict) -> VLLMMethod:
    python = getattr(ctx, "vllm_python", None)
    if not python:
        raise MethodSkipped("needs vLLM's own Python: --vllm-python PATH (e.g. a venv with vllm-cpu installed)")
    if not Path(python).is_file():
        raise MethodSkipped(f"--vllm-python {python}: no such file")
    target = ctx.target()
    model_dir = getattr(target.model, "name_or_path", None) or ""
    if not Path(model_dir).is_dir():
        raise MethodSkipped(f"vLLM needs the model as a local directory; {ctx.model_id} was loaded from {model_dir!r}")
    return VLLMMethod(name, python, model_dir, target.stop_token_ids(), settings, ctx.dtype,
                      max_batch=getattr(ctx, "max_batch", 1))
