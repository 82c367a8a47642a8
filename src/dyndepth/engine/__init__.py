"""The engine: sequences, the batch step, the scheduler.

    sequence.py    Sequence: one request's state (caches, root, pending pairs, options, generator, text, stats)
    step.py        run_step: draft every row's tree, verify all in one target forward, accept and commit per row
    scheduler.py   Scheduler: continuous batching (admission between steps, chunked prefill, rows leave alone)
    steplog.py     StepLog: a JSON line per step (rows, prompt tokens, drafted rows, committed, seconds)

``SpeculativeDecoder`` (decoder.py) drives a Scheduler for the Python API and the CLI; the server's worker drives
one for all its clients. Both run the same step: there is one generation loop.
"""
