"""Draft-head training: data, feature extraction, the EAGLE-1 objective, and the ``train-head`` command.

Modules: ``data`` (ShareGPT salvage, chat rendering, loss masks), ``distill`` (optional self-distillation),
``extract`` (target features to resumable safetensors shards), ``vocab`` (reduced draft vocabulary),
``trainer`` (loss, optimisation, held-out metrics), ``pipeline`` (all of it), ``cli``.
"""
