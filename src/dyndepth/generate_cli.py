"""``dyndepth generate``: decode one prompt (or a conversation) and print the text and the statistics; or many
prompts from a JSON Lines file, batched.

The prompt comes from ``--prompt TEXT`` (``--prompt -`` reads standard input), ``--prompt-file FILE``, or
``--messages FILE`` (a JSON list of ``{"role", "content"}`` turns, implying ``--chat``). ``--chat`` applies the
model's chat template; ``--system`` adds a system message. Text streams to stdout as it is committed; the
statistics go to stderr. ``--json`` prints one JSON object instead (strict JSON: no NaN).

``--prompt-file F.jsonl`` decodes every line of F, ``--batch-size`` rows at a time (continuous batching), and
writes one JSON line per prompt to stdout, in the file's order, as soon as it and every earlier one are done. A
line is ``{"prompt": TEXT}`` (chat-templated with ``--chat``) or ``{"messages": [...]}``, optionally with its own
``max_new_tokens``, ``seed`` and ``stop``; an output line is ``{"index", "text", "token_ids", "stats", "error"}``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from dyndepth import validate
from dyndepth.errors import DyndepthError
from dyndepth.options import (add_decoder_options, add_sampling_options, build_decoder, check_sampling, sampling_kwargs,
                              settings_json)


def register(sub) -> None:
    p = sub.add_parser("generate", help="generate text for one prompt with speculative decoding")
    add_decoder_options(p)
    add_sampling_options(p)
    src = p.add_argument_group("prompt (exactly one of --prompt, --prompt-file, --messages)")
    src.add_argument("--prompt", default=None, help="the prompt text; '-' reads it from standard input")
    src.add_argument("--prompt-file", type=Path, default=None, help="read the prompt from a UTF-8 text file")
    src.add_argument("--messages", type=Path, default=None,
                     help='a JSON file with a list of {"role": ..., "content": ...} turns (implies --chat)')
    src.add_argument("--system", default=None, help="a system message (with --chat or --messages)")
    p.add_argument("--chat", action="store_true", help="wrap the prompt in the model's chat template")
    p.add_argument("--json", action="store_true", help="print token ids, text and statistics as one JSON object")
    p.add_argument("--batch-size", type=int, default=None, metavar="B",
                   help="with --prompt-file F.jsonl: prompts decoded together (default: 8 on a CPU, 64 on a GPU)")
    p.set_defaults(func=run)


PER_LINE = ("max_new_tokens", "seed", "stop")  # what a JSON Lines prompt may set for itself


def read_jsonl_prompts(path: Path, chat: bool, system: str | None) -> tuple[list, dict]:
    """A --prompt-file .jsonl -> (prompts: text or message lists, per-prompt options {name: [value per line]});
    a bad line is one error naming its line number."""
    rows, options = [], {name: [] for name in PER_LINE}
    for n, line in enumerate(_read_text(path, "--prompt-file").splitlines(), 1):
        if not line.strip():
            continue
        where = f"--prompt-file {path} line {n}"
        try:
            obj = json.loads(line)
        except ValueError as exc:
            raise DyndepthError(f"{where} is not valid JSON ({exc})") from None
        if not isinstance(obj, dict) or ("prompt" in obj) == ("messages" in obj):
            raise DyndepthError(f"{where} must be an object with exactly one of \"prompt\" or \"messages\"")
        unknown = sorted(set(obj) - {"prompt", "messages", *PER_LINE})
        if unknown:
            raise DyndepthError(f"{where} has unknown field(s) {', '.join(unknown)} (allowed: prompt, messages, "
                                f"{', '.join(PER_LINE)})")
        if "messages" in obj:
            msgs = validate.chat_messages(obj["messages"], option=f"{where}:")
            if system is not None and msgs[0]["role"] != "system":
                msgs = [{"role": "system", "content": system}] + msgs
            rows.append(msgs)
        else:
            if not isinstance(obj["prompt"], str) or not obj["prompt"]:
                raise DyndepthError(f"{where}: \"prompt\" must be a non-empty string")
            text = validate.utf8_text(f"{where}: prompt", obj["prompt"])
            sys_msg = [{"role": "system", "content": system}] if system else []
            rows.append(sys_msg + [{"role": "user", "content": text}] if chat else text)
        for name in PER_LINE:
            value = obj.get(name)
            options[name].append([value] if name == "stop" and isinstance(value, str) else value)
    if not rows:
        raise DyndepthError(f"--prompt-file {path} holds no prompts")
    return rows, options


def read_prompt(args) -> str | list[dict]:
    """The user's prompt text, or the list of chat messages; every problem is one line."""
    given = [name for name in ("prompt", "prompt_file", "messages") if getattr(args, name) is not None]
    if len(given) != 1:
        raise DyndepthError("give exactly one of --prompt, --prompt-file or --messages"
                            + (f" (got {', '.join('--' + g.replace('_', '-') for g in given)})" if given else ""))
    if args.messages is not None:
        return _read_messages(args.messages, args.system)
    if args.prompt_file is not None:
        text = _read_text(args.prompt_file, "--prompt-file")
    elif args.prompt == "-":
        text = sys.stdin.buffer.read().decode("utf-8", "surrogateescape")
        validate.utf8_text("prompt", text)
    else:
        text = validate.utf8_text("prompt", args.prompt)
    if not text:
        raise DyndepthError("the prompt is empty")
    if args.system is not None and not args.chat:
        raise DyndepthError("--system needs --chat (a system message belongs to the chat template)")
    if args.chat:
        msgs = [{"role": "system", "content": validate.utf8_text("--system", args.system)}] if args.system else []
        return msgs + [{"role": "user", "content": text}]
    return text


def _read_text(path: Path, option: str) -> str:
    if not path.is_file():
        raise DyndepthError(f"{option} {path}: no such file")
    try:
        return path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DyndepthError(f"{option} {path} is not UTF-8 text (byte {exc.start})") from None
    except OSError as exc:
        raise DyndepthError(f"{option} {path} cannot be read: {exc.strerror}") from None


def _read_messages(path: Path, system: str | None) -> list[dict]:
    try:
        msgs = json.loads(_read_text(path, "--messages"))
    except ValueError as exc:
        raise DyndepthError(f"--messages {path} is not valid JSON ({exc})") from None
    if not isinstance(msgs, list) or not msgs:
        raise DyndepthError(f"--messages {path} must hold a non-empty JSON list of {{role, content}} objects")
    msgs = validate.chat_messages(msgs, option=f"--messages {path}:")  # the rule of chat_ids and the server
    if system is not None:
        if msgs[0]["role"] == "system":
            raise DyndepthError(f"--system given, but --messages {path} already starts with a system message")
        msgs = [{"role": "system", "content": validate.utf8_text("--system", system)}] + msgs
    return msgs


def run(args) -> int:
    if args.prompt_file is not None and args.prompt_file.suffix == ".jsonl":
        return run_batch(args)
    if args.batch_size is not None:
        raise DyndepthError("--batch-size needs a JSON Lines --prompt-file (F.jsonl, one prompt per line)")
    prompt = read_prompt(args)
    check_sampling(args)  # before the model loads
    dec = build_decoder(args)
    validate.max_new_tokens_fit(args.max_new_tokens, dec.target.max_context)
    ids = dec.chat_ids(prompt) if isinstance(prompt, list) else dec.tokenizer(prompt)["input_ids"]
    sampling = sampling_kwargs(args)
    if args.json:
        out = dec.generate(ids, **sampling)
        doc = {"token_ids": out.token_ids, "text": out.text, "settings": settings_json(dec.describe()),
               "sampling": dec.last_request.describe(), "stats": out.stats.to_dict()}
        print(json.dumps(validate.finite_json(doc), allow_nan=False))
        return 0
    out_stream = _utf8_stdout()
    for chunk in dec.stream_text(ids, **sampling):  # print as it is committed, whole characters only
        out_stream.write(chunk.text)
        out_stream.flush()
    s = dec.last_stats
    out_stream.write("\n")
    out_stream.flush()
    print(f"\n[{dec.policy.name}] {s.new_tokens} tokens in {s.total_time_s:.2f}s = {s.tokens_per_s:.1f} tok/s | "
          f"steps {s.steps} | tau {s.mean_accepted_tokens:.2f} | mean depth {s.mean_depth:.1f} | "
          f"draft {s.draft_time_s:.2f}s verify {s.verify_time_s:.2f}s prefill {s.prefill_time_s:.2f}s | "
          f"stop: {s.stop_reason}", file=sys.stderr)
    return 0


def run_batch(args) -> int:
    """--prompt-file F.jsonl: every prompt through the batched engine, one JSON line out per prompt, in order."""
    if args.prompt is not None or args.messages is not None:
        raise DyndepthError("give exactly one of --prompt, --prompt-file or --messages")
    if args.system is not None and not args.chat:
        raise DyndepthError("--system needs --chat (a system message belongs to the chat template)")
    if args.batch_size is not None:
        validate.integer("--batch-size", args.batch_size, lo=1, hi=1024)
    prompts, per_line = read_jsonl_prompts(args.prompt_file, args.chat, args.system)
    check_sampling(args)
    dec = build_decoder(args)
    ids = [dec.chat_ids(p) if isinstance(p, list) else dec.tokenizer(p)["input_ids"] for p in prompts]
    sampling = sampling_kwargs(args)
    for name, values in per_line.items():  # a line's own value, else the command line's
        default = sampling.get(name)
        sampling[name] = [v if v is not None else default for v in values]
    for i, budget in enumerate(sampling["max_new_tokens"]):
        try:
            validate.max_new_tokens_fit(budget, dec.target.max_context)
        except DyndepthError as exc:
            raise DyndepthError(f"prompt {i}: {exc}") from None
    from tqdm import tqdm

    out_stream = _utf8_stdout()
    done: dict[int, str] = {}
    written = 0
    with tqdm(total=len(ids), unit="prompt", file=sys.stderr, disable=not sys.stderr.isatty()) as bar:
        for row, out in dec.generate_iter(ids, batch_size=args.batch_size, **sampling):
            doc = {"index": row, "text": out.text, "token_ids": out.token_ids, "stats": out.stats.summary(),
                   "error": out.error}
            done[row] = json.dumps(validate.finite_json(doc), allow_nan=False)
            bar.update(1)
            while written in done:  # in the file's order, as soon as every earlier prompt is out
                out_stream.write(done.pop(written) + "\n")
                out_stream.flush()
                written += 1
    return 0


def _utf8_stdout():
    """stdout that writes UTF-8 whatever the locale says (a C locale would turn emoji into errors)."""
    enc = (getattr(sys.stdout, "encoding", None) or "").lower().replace("-", "")
    if enc == "utf8" or not hasattr(sys.stdout, "reconfigure"):
        return sys.stdout
    sys.stdout.reconfigure(encoding="utf-8", errors="replace")
    return sys.stdout
