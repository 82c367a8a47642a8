"""A stand-in for vLLM's offline API, for tests/test_bench_vllm.py: just enough of ``LLM``, ``SamplingParams`` and
``LLMEngine.add_request``/``step`` to drive dyndepth's vLLM worker. Greedy decoding with transformers, one token
per running request per step, and it refuses more running requests than ``max_num_seqs`` (the worker's batch
cap must hold)."""

import types

import torch
from transformers import AutoModelForCausalLM

__version__ = "0.0+fake"


class SamplingParams:
    def __init__(self, temperature=0.0, max_tokens=16, **kwargs):
        self.temperature, self.max_tokens = temperature, max_tokens


class _Engine:
    def __init__(self, model, max_num_seqs):
        self.model, self.max_num_seqs = model, max_num_seqs
        self.running = {}  # request id -> (prompt ids, new ids, params)
        self.most_running = 0

    def add_request(self, request_id, prompt, params):
        self.running[request_id] = (list(prompt["prompt_token_ids"]), [], params)
        if len(self.running) > self.max_num_seqs:
            raise RuntimeError(f"{len(self.running)} running requests, max_num_seqs {self.max_num_seqs}")
        return request_id

    def step(self):
        outs = []
        for rid, (ids, new, params) in list(self.running.items()):
            with torch.no_grad():
                logits = self.model(torch.tensor([ids + new])).logits[0, -1]
            new.append(int(logits.argmax()))
            finished = len(new) >= params.max_tokens or new[-1] in self.model.stop_ids
            if finished:
                del self.running[rid]
            outs.append(types.SimpleNamespace(request_id=rid, finished=finished,
                                              outputs=[types.SimpleNamespace(token_ids=list(new))]))
        return outs


class LLM:
    def __init__(self, model, dtype="float32", max_num_seqs=16, **kwargs):
        m = AutoModelForCausalLM.from_pretrained(model, dtype=torch.float32).eval()
        eos = m.generation_config.eos_token_id
        m.stop_ids = set(eos if isinstance(eos, list) else [eos])
        self.llm_engine = _Engine(m, max_num_seqs)
