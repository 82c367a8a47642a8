"""scripts/suffix_replay.py: its prompt-lookup simulation equals transformers' own candidate generator, and the
replay's step accounting (accepted nodes + bonus per step) on a crafted answer."""

import importlib.util
import random
from pathlib import Path

import torch

from dyndepth.drafters import SuffixOptions

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "suffix_replay.py"
spec = importlib.util.spec_from_file_location("suffix_replay", SCRIPT)
replay = importlib.util.module_from_spec(spec)
spec.loader.exec_module(replay)


def test_prompt_lookup_simulation_equals_transformers():
    from transformers.generation.candidate_generator import PromptLookupCandidateGenerator

    stop = {7}
    hf = PromptLookupCandidateGenerator(eos_token_id=torch.tensor(sorted(stop)), num_output_tokens=10,
                                        max_matching_ngram_size=2, max_length=10_000)
    rng = random.Random(0)
    hits = 0
    for _ in range(300):
        seq = [rng.randrange(rng.choice([3, 6, 12])) for _ in range(rng.randrange(2, 60))]
        out, _ = hf.get_candidates(torch.tensor([seq]))
        want = out[0, len(seq):].tolist()
        assert replay.pld_candidates(seq, 10, 2, stop) == want, seq
        hits += bool(want)
    assert hits > 100


def test_replay_counts_accepted_nodes_and_the_bonus():
    prompt = [1, 2, 3, 4, 5, 6, 9]
    answer = [1, 2, 3, 4, 5, 6, 8]  # root 1 (from the prefill), then a copy of the prompt, then 8
    row = {"prompt_ids": prompt, "answer_ids": answer, "category": "c"}
    (res,) = replay.replay_suffix([row], SuffixOptions(spec_factor=8.0))
    # step 1 at root 1: proposes 2 3 4 5 6 9 1 (a match of 1 may go 8 deep; the copy runs on to the context's
    # end, the root itself), accepts 2..6, bonus 8: done
    assert res["steps"] == 1 and res["accepted"] == [5] and res["tokens"] == 6 and res["nodes"] == 7
    (res,) = replay.replay_suffix([row], SuffixOptions(spec_factor=1.0))
    # one level per matched token: 1 -> 2 (match 1), then 3 -> 4 5 (match 3: 1 2 3) ...
    assert sum(a + 1 for a in res["accepted"]) >= res["tokens"] and res["steps"] < 6
    table = replay.table([res])
    assert table["all"]["tau"] == 6 / res["steps"]
    (pld,) = replay.replay_pld([row], stop={0})
    assert pld["steps"] == 1 and pld["accepted"] == [5]
