"""Per-turn results and the answer records written to ``answers/<method>.jsonl``.

The record follows FastChat / Spec-Bench (``question_id``, ``category``, ``answer_id``, ``model_id``,
``method``, ``tstamp``, ``choices``) with one choice whose per-turn lists are::

    turns           answer texts (special tokens skipped)
    token_ids       generated ids after stop-token trimming, the stop token included (what is counted)
    new_tokens      len(token_ids)
    wall_time       seconds from token ids in to token ids out (prefill included)
    steps           target verification forwards after the prefill (assisted: all target forwards)
    accept_lengths  tokens committed per step (a + 1); empty when the method cannot report them
    depths          draft levels grown per step (tree methods; empty otherwise)
    prefill_time, draft_time, verify_time   seconds; other time = wall_time minus these

and, for tree methods, the per-step decision data (optional fields; older files lack them)::

    tree_sizes          tokens verified per step, root included (N)
    accepted            draft nodes accepted per step (a, before stop-token trimming)
    predicted_accepted  the policy's expected a for the tree it chose (auto; null for other policies)
    beam_log_mass       logsumexp of the deepest beam's path log-values (DDD's H at the depth reached)
    tree_depths         depth of each step's verified tree (a suffix match may run deeper than the head)
    suffix_accepted     accepted nodes per step that a suffix match proposed (drafters suffix, hybrid, switch)

The summary is computed from these records alone, so it can be recomputed from the files.
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from dyndepth.errors import DyndepthError

TURN_FIELDS = ("turns", "token_ids", "new_tokens", "wall_time", "steps", "accept_lengths", "depths",
               "prefill_time", "draft_time", "verify_time")


@dataclass
class TurnResult:
    token_ids: list[int]
    wall_time: float
    steps: int
    accept_lengths: list[int] = field(default_factory=list)
    depths: list[int] = field(default_factory=list)
    prefill_time: float = 0.0
    draft_time: float = 0.0
    verify_time: float = 0.0
    text: str = ""
    tree_sizes: list[int] = field(default_factory=list)
    accepted: list[int] = field(default_factory=list)
    predicted_accepted: list[float | None] = field(default_factory=list)
    beam_log_mass: list[float | None] = field(default_factory=list)
    tree_depths: list[int] = field(default_factory=list)
    suffix_accepted: list[int] = field(default_factory=list)

    @property
    def new_tokens(self) -> int:
        return len(self.token_ids)


def answer_record(question, model_id: str, method: str, turns: list[TurnResult]) -> dict:
    choice: dict = {"index": 0}
    choice["turns"] = [t.text for t in turns]
    choice["token_ids"] = [list(t.token_ids) for t in turns]
    choice["new_tokens"] = [t.new_tokens for t in turns]
    choice["wall_time"] = [round(t.wall_time, 6) for t in turns]
    choice["steps"] = [t.steps for t in turns]
    choice["accept_lengths"] = [list(t.accept_lengths) for t in turns]
    choice["depths"] = [list(t.depths) for t in turns]
    for name in ("prefill_time", "draft_time", "verify_time"):
        choice[name] = [round(getattr(t, name), 6) for t in turns]
    if any(t.tree_sizes for t in turns):
        for name in ("tree_sizes", "accepted"):
            choice[name] = [list(getattr(t, name)) for t in turns]
        for name in ("predicted_accepted", "beam_log_mass"):
            choice[name] = [[None if v is None else round(v, 4) for v in getattr(t, name)] for t in turns]
    for name in ("tree_depths", "suffix_accepted"):
        if any(getattr(t, name) for t in turns):
            choice[name] = [list(getattr(t, name)) for t in turns]
    return {"question_id": question.question_id, "category": question.category,
            "answer_id": uuid.uuid4().hex[:22], "model_id": model_id, "method": method,
            "tstamp": round(time.time(), 3), "choices": [choice]}


def write_jsonl(path: Path, records: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as fh:
        for rec in records:
            fh.write(json.dumps(rec, ensure_ascii=False) + "\n")


def append_jsonl(path: Path, record: dict) -> None:
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(json.dumps(record, ensure_ascii=False) + "\n")


def read_answers(path: Path) -> list[dict]:
    records = []
    with open(path, encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            if line.strip():
                try:
                    rec = json.loads(line)
                except ValueError as exc:
                    raise DyndepthError(f"{path}:{lineno}: not valid JSON ({exc.msg})") from None
                choice = (rec.get("choices") or [{}])[0]
                missing = [k for k in ("new_tokens", "wall_time") if k not in choice]
                if missing:
                    raise DyndepthError(f"{path}:{lineno}: answer record lacks {', '.join(missing)}")
                records.append(rec)
    return records
