"""``dyndepth bench``: speed benchmarks of speculative decoding methods on FastChat question sets.

One run loads the target once, builds every requested method on it (``methods.py``: a registry name ->
factory, so new depth policies plug in), answers the questions with each method (interleaved per question,
MT-bench's second turn conditioned on the method's own first answer), and writes:

    OUT/answers/<method>.jsonl     FastChat / Spec-Bench answer records, one per question (records.py)
    OUT/summary.json, summary.md   tokens/s, speedup vs vanilla, tau, depth, time split, exactness (summary.py)
    OUT/plots/*.png                speedup by category, drafted depths, accepted tokens per step (plots.py)
    OUT/sweep.md, sweep.csv        with ``--sweep``: one row per grid point (sweep.py)

Counting rule, the same for every method: a turn's tokens are the generated ids after stop-token trimming
(the stop token itself included); its wall time runs from the call with token ids to the returned ids
(prefill included, tokenisation excluded). Speedup = mean over questions of tokens/s divided by the same mean
of the baseline (Spec-Bench's ratio of means).

Apart from the runs, ``replay.py`` and ``hindsight.py`` compare depth policies offline: the full draft pool is
recorded at every position of a greedy answer, each policy's decisions are replayed over it under a price model,
and the hindsight oracle bounds what any per-step choice could gain (scripts/policy_replay.py).

Importing this package does not import torch.
"""
