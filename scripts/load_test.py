"""Load test of `dyndepth serve` on loopback: N concurrent clients for M minutes, with faults, every answer checked.

    python scripts/load_test.py --clients 16 --minutes 10 --json runs/load.json      # starts its own server
    python scripts/load_test.py --url http://127.0.0.1:8000 --served-model-name smol   # an already running one
    python scripts/load_test.py --replicas 2 --threads 1 --kill-replica-at 300 ...     # Ray Serve, a replica killed

Each client loops until the time is up (or the request cap is reached): most requests are normal chat
completions (streamed or not, greedy) of one of ``--prompts`` MT-bench first turns; a share disconnects after
the first steps of a stream; a share is malformed (bad JSON, wrong types, n=2, negative max_tokens, unknown
model) and must get its 4xx with an OpenAI error body. Every completed answer is compared with the offline
``SpeculativeDecoder.generate`` answer of its own prompt (float32 greedy, so they must be equal): a different
text is a corrupted or mixed-up response, a request with neither an answer nor an error is a lost one.

Reports, under the names ``vllm bench serve`` uses: request_throughput (completed requests/s), output_throughput
(tokens/s of completed answers), ttft_ms (streamed requests), tpot_ms ((latency - ttft) / (tokens - 1)), itl_ms
(between two streamed chunks: one engine step, which may carry several tokens) and e2el_ms, each with mean, p50,
p90 and p99; plus errors by kind and the server's own counters afterwards (nothing waiting or running). Only
loopback addresses are accepted. Exit code 1 on any lost, mismatched or unexpected response.

    python scripts/load_test.py --clients 16 --minutes 10 --max-batch-size 1     # the one-request-at-a-time server
    python scripts/load_test.py --clients 16 --minutes 10 --policy plain         # batched, speculation off

With ``--replicas N`` the server it starts is ``dyndepth serve --replicas N`` (Ray Serve on a local Ray instance,
``--threads`` per replica; docs/SCALING.md). ``--kill-replica-at S`` then kills one engine replica process
(SIGKILL) S seconds into the load and records when Ray has brought it back; the requests it held must end with
the 503 error body of a lost replica (``replica_lost``: a 503 body, or an error event in a stream, with code
``replica_unavailable``), which is then an expected outcome: any other failure, a mismatch or a request with
neither answer nor error body still fails the run.
"""

from __future__ import annotations

import argparse
import http.client
import ipaddress
import json
import os
import random
import socket
import subprocess
import sys
import threading
import time
import urllib.parse
from collections import Counter
from pathlib import Path

QUESTIONS = Path(__file__).resolve().parents[1] / "src" / "dyndepth" / "data" / "mt_bench_question.jsonl"
MALFORMED = {  # name -> (body bytes or dict, the status it must get)
    "bad_json": (b'{"model": "M", "messages": [', 400),
    "wrong_type": ({"messages": "not a list", "max_tokens": 8}, 422),
    "missing_messages": ({"max_tokens": 8}, 422),
    "n_2": ({"messages": [{"role": "user", "content": "hi"}], "n": 2, "max_tokens": 8}, 400),
    "negative_max_tokens": ({"messages": [{"role": "user", "content": "hi"}], "max_tokens": -5}, 400),
    "unknown_model": ({"model": "no-such-model", "messages": [{"role": "user", "content": "hi"}]}, 404),
}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--url", default=None, help="a running server (loopback only); default: start one")
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--served-model-name", default="load-test")
    ap.add_argument("--dtype", default="float32", help="float32: greedy answers are exact, so they are checked")
    ap.add_argument("--threads", type=int, default=None,
                    help="torch threads of the server, of each replica with --replicas (and of the offline run)")
    ap.add_argument("--replicas", type=int, default=1,
                    help="engine replicas of the server it starts (> 1: Ray Serve on a local Ray instance)")
    ap.add_argument("--ray-address", default=None, help="'local': Ray Serve even for --replicas 1")
    ap.add_argument("--kill-replica-at", type=float, default=None, metavar="S",
                    help="SIGKILL one engine replica S seconds into the load (with --replicas >= 2, own server)")
    ap.add_argument("--total-tokens", type=int, default=12)
    ap.add_argument("--draft-top-k", type=int, default=4)
    ap.add_argument("--policy", default="ddd", help="the server's --policy (plain = speculation off)")
    ap.add_argument("--max-batch-size", type=int, default=None, help="the server's --max-batch-size (1 = one "
                    "request at a time; default: the server's)")
    ap.add_argument("--step-log", default=None, help="the server's --step-log FILE (own server only): a JSON "
                    "line per engine step")
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--minutes", type=float, default=10.0)
    ap.add_argument("--max-requests", type=int, default=20000, help="stop after this many requests in all")
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--prompts", type=int, default=16, help="distinct MT-bench prompts (at least --clients)")
    ap.add_argument("--disconnect-share", type=float, default=0.1)
    ap.add_argument("--malformed-share", type=float, default=0.1)
    ap.add_argument("--stream-share", type=float, default=0.5, help="share of normal requests that stream")
    ap.add_argument("--request-timeout", type=float, default=900.0, help="client socket timeout, seconds")
    ap.add_argument("--startup-timeout", type=float, default=300.0,
                    help="seconds the server it starts may take to answer /health (a 1.5B model in float32 that "
                    "probes its costs first needs more)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", type=Path, default=None, help="write the report here too")
    ap.add_argument("--answers-cache", type=Path, default=None,
                    help="keep the offline answers in this JSON file and reuse them when the settings match")
    args = ap.parse_args(argv)
    if not 1 <= args.clients <= 256 or not 0 < args.minutes <= 120:
        ap.error("--clients must be in 1..256 and --minutes in (0, 120]")
    if args.kill_replica_at is not None and (args.url or args.replicas < 2):
        ap.error("--kill-replica-at needs --replicas >= 2 and a server this script starts (no --url)")

    prompts = _questions(args.prompts)
    print(f"offline answers for {len(prompts)} prompts ({args.dtype}, greedy, {args.max_tokens} tokens)...",
          file=sys.stderr)
    expected = _offline(args, prompts)
    server = None
    url = args.url
    if url is None:
        server, url = _start_server(args)
    else:
        _require_loopback(url)
    try:
        killer = ReplicaKiller(server.pid, args.kill_replica_at) if args.kill_replica_at is not None else None
        report = run_load(args, url, prompts, expected, killer)
    finally:
        if server is not None:
            server.terminate()
            try:
                server.wait(60)
            except subprocess.TimeoutExpired:
                server.kill()
    text = json.dumps(report, indent=2)
    print(text)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(text + "\n")
    return 0 if report["ok"] else 1


# -- setup --------------------------------------------------------------------------------------------------
def _questions(n: int) -> list[str]:
    rows = [json.loads(line) for line in QUESTIONS.read_text().splitlines() if line.strip()]
    return [r["turns"][0] for r in rows[:n]]


def _offline(args, prompts) -> dict[str, dict]:
    key = {"model": args.model, "dtype": args.dtype, "total_tokens": args.total_tokens, "top_k": args.draft_top_k,
           "max_tokens": args.max_tokens, "prompts": prompts}
    if args.answers_cache is not None and args.answers_cache.is_file():
        cached = json.loads(args.answers_cache.read_text())
        if cached.get("key") == key:
            print(f"offline answers from {args.answers_cache}", file=sys.stderr)
            return cached["answers"]
    answers: dict = {}
    # in a thread of its own, like the server's worker: on a shared 2-core machine torch decoded about 10x
    # slower in the main thread than in a second one (same results)
    worker = threading.Thread(target=lambda: answers.update(_generate_offline(args, prompts)))
    worker.start()
    worker.join()
    if len(answers) != len(prompts):
        raise SystemExit("the offline generations failed (see the traceback above)")
    if args.answers_cache is not None:
        args.answers_cache.parent.mkdir(parents=True, exist_ok=True)
        args.answers_cache.write_text(json.dumps({"key": key, "answers": answers}))
    return answers


def _generate_offline(args, prompts) -> dict[str, dict]:
    import torch

    from dyndepth.decoder import SpeculativeDecoder

    if args.threads:
        torch.set_num_threads(args.threads)
    dec = SpeculativeDecoder.from_pretrained(args.model, dtype=args.dtype, total_tokens=args.total_tokens,
                                             top_k=args.draft_top_k)
    out = {}
    for i, p in enumerate(prompts):
        g = dec.generate(dec.chat_ids(p), max_new_tokens=args.max_tokens)
        out[p] = {"text": g.text, "tokens": len(g.token_ids)}
        print(f"  {i + 1}/{len(prompts)}: {len(g.token_ids)} tokens, {g.stats.tokens_per_s:.1f} tok/s", file=sys.stderr)
    return out


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start_server(args):
    port = _free_port()
    cmd = [sys.executable, "-m", "dyndepth.cli", "serve", "--model", args.model, "--dtype", args.dtype,
           "--host", "127.0.0.1", "--port", str(port), "--served-model-name", args.served_model_name,
           "--policy", args.policy, "--max-queue", str(max(64, 2 * args.clients)), "--log-level", "warning"]
    if args.policy != "plain":
        cmd += ["--total-tokens", str(args.total_tokens), "--draft-top-k", str(args.draft_top_k)]
    if args.max_batch_size:
        cmd += ["--max-batch-size", str(args.max_batch_size)]
    if args.step_log:
        cmd += ["--step-log", str(args.step_log)]
    if args.threads:
        cmd += ["--threads", str(args.threads)]
    if args.replicas != 1 or args.ray_address:
        cmd += ["--replicas", str(args.replicas)] + (["--ray-address", args.ray_address] if args.ray_address else [])
    proc = subprocess.Popen(cmd)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + args.startup_timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"the server exited with code {proc.returncode}")
        try:
            if _request(url, "GET", "/health", None, 5)[0] == 200:
                return proc, url
        except OSError:
            pass
        time.sleep(0.5)
    proc.terminate()
    raise SystemExit(f"the server did not come up in {args.startup_timeout:.0f} s")


def _require_loopback(url: str) -> None:
    host = urllib.parse.urlsplit(url).hostname or ""
    try:
        ok = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        ok = False
    if not ok:
        raise SystemExit(f"--url must be a loopback address (127.0.0.1, ::1 or localhost), got {host!r}")


# -- requests -----------------------------------------------------------------------------------------------
def _connection(url: str, timeout: float) -> http.client.HTTPConnection:
    parts = urllib.parse.urlsplit(url)
    return http.client.HTTPConnection(parts.hostname, parts.port or 80, timeout=timeout)


def _request(url, method, path, body, timeout):
    conn = _connection(url, timeout)
    try:
        data = body if isinstance(body, (bytes, type(None))) else json.dumps(body).encode()
        conn.request(method, path, body=data, headers={"Content-Type": "application/json"})
        resp = conn.getresponse()
        return resp.status, resp.read().decode("utf-8")
    finally:
        conn.close()


def _events(resp):
    """The JSON documents of a server-sent event stream, up to [DONE]."""
    while True:
        line = resp.readline()
        if not line:
            raise ConnectionError("the stream ended before [DONE]")
        line = line.strip()
        if not line.startswith(b"data:"):
            continue
        data = line[5:].strip()
        if data == b"[DONE]":
            return
        yield json.loads(data)


class Client(threading.Thread):
    def __init__(self, index, args, url, prompts, expected, stop_at, budget, results, lock):
        super().__init__(name=f"client-{index}", daemon=True)
        self.rng = random.Random(args.seed * 1000 + index)
        self.args, self.url, self.prompts, self.expected = args, url, prompts, expected
        self.stop_at, self.budget, self.results, self.lock = stop_at, budget, results, lock

    def run(self) -> None:
        while time.monotonic() < self.stop_at:
            with self.lock:
                if self.budget[0] <= 0:
                    return
                self.budget[0] -= 1
            r = self.rng.random()
            if r < self.args.malformed_share:
                rec = self.malformed()
            elif r < self.args.malformed_share + self.args.disconnect_share:
                rec = self.normal(disconnect=True)
            else:
                rec = self.normal(disconnect=False)
            with self.lock:
                self.results.append(rec)

    def body(self, prompt, stream):
        return {"model": self.args.served_model_name, "messages": [{"role": "user", "content": prompt}],
                "max_tokens": self.args.max_tokens, "stream": stream}

    def malformed(self) -> dict:
        name = self.rng.choice(sorted(MALFORMED))
        body, want = MALFORMED[name]
        if isinstance(body, dict) and "model" not in body:
            body = {"model": self.args.served_model_name, **body}
        t0 = time.monotonic()
        try:
            status, text = _request(self.url, "POST", "/v1/chat/completions", body, self.args.request_timeout)
            doc = json.loads(text)
            good = status == want and set(doc.get("error", {})) == {"message", "type", "param", "code"}
            outcome = "refused_as_expected" if good else f"malformed_got_{status}"
        except (OSError, ValueError, http.client.HTTPException) as exc:
            outcome = f"malformed_{type(exc).__name__}"
        return {"kind": "malformed", "case": name, "outcome": outcome, "latency_s": time.monotonic() - t0}

    def normal(self, disconnect: bool) -> dict:
        prompt = self.rng.choice(self.prompts)
        stream = disconnect or self.rng.random() < self.args.stream_share
        kind = "disconnect" if disconnect else ("stream" if stream else "whole")
        rec = {"kind": kind, "prompt": self.prompts.index(prompt)}
        t0 = time.monotonic()
        conn = _connection(self.url, self.args.request_timeout)
        try:
            conn.request("POST", "/v1/chat/completions", body=json.dumps(self.body(prompt, stream)).encode(),
                         headers={"Content-Type": "application/json"})
            resp = conn.getresponse()
            if resp.status != 200:
                rec["outcome"] = f"http_{resp.status}"
                try:
                    code = json.loads(resp.read())["error"]["code"]
                except (ValueError, KeyError, TypeError):
                    code = None
                if resp.status == 503 and code == "replica_unavailable":
                    rec["outcome"] = "replica_lost"
                return rec
            if not stream:
                doc = json.loads(resp.read())
                text, tokens = doc["choices"][0]["message"]["content"], doc["usage"]["completion_tokens"]
                rec["ttft_s"] = None
            else:
                parts, tokens, first, last, chunks = [], None, None, None, []
                for i, ev in enumerate(_events(resp)):
                    if "error" in ev:
                        code = ev["error"].get("code")
                        rec["outcome"] = "replica_lost" if code == "replica_unavailable" else f"stream_error_{code}"
                        return rec
                    if ev.get("step"):
                        last = time.monotonic() - t0
                        first = last if first is None else first
                        chunks.append(last)
                    for ch in ev.get("choices") or []:
                        parts.append((ch.get("delta") or {}).get("content") or "")
                    if ev.get("usage"):
                        tokens = ev["usage"]["completion_tokens"]
                    if disconnect and i >= 2:  # the role chunk and two steps, then leave
                        rec["outcome"] = "disconnected_as_planned"
                        rec["latency_s"] = time.monotonic() - t0
                        return rec
                text = "".join(parts)
                rec["ttft_s"], rec["last_token_s"] = first, last
                rec["itl_s"] = [b - a for a, b in zip(chunks, chunks[1:])]
            elapsed = time.monotonic() - t0
            want = self.expected[prompt]
            rec["latency_s"] = elapsed
            rec["tokens"] = tokens if tokens is not None else want["tokens"]
            rec["outcome"] = "ok" if text == want["text"] else "mismatch"
            if rec["outcome"] == "mismatch":
                rec["got"], rec["want"] = text[:200], want["text"][:200]
            return rec
        except (OSError, ValueError, KeyError, http.client.HTTPException) as exc:
            rec["outcome"] = f"lost_{type(exc).__name__}"
            return rec
        finally:
            conn.close()


class ReplicaKiller(threading.Thread):
    """SIGKILLs one engine replica process of the server (a descendant of ``root``) ``at_s`` seconds after
    ``start()``, then waits for Ray to bring the count of replica processes back."""

    TITLE = "ServeReplica:dyndepth:DyndepthEngine"

    def __init__(self, root: int, at_s: float):
        super().__init__(name="replica-killer", daemon=True)
        self.root, self.at_s, self.record = root, at_s, {"at_s": at_s}

    def replicas(self) -> list[int]:
        children: dict[int, list[int]] = {}
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                try:
                    stat = Path(f"/proc/{entry}/stat").read_text()
                except OSError:
                    continue
                children.setdefault(int(stat.rsplit(")", 1)[1].split()[1]), []).append(int(entry))
        out, todo = [], [self.root]
        while todo:
            kids = children.get(todo.pop(), [])
            out += kids
            todo += kids
        found = []
        for pid in out:
            try:
                if self.TITLE.encode() in Path(f"/proc/{pid}/cmdline").read_bytes():
                    found.append(pid)
            except OSError:
                pass
        return sorted(found)

    def run(self) -> None:
        time.sleep(self.at_s)
        before = self.replicas()
        if not before:
            self.record["error"] = "no engine replica process found"
            return
        os.kill(before[0], 9)
        t0 = time.monotonic()
        self.record.update(killed_pid=before[0], replicas_before=len(before))
        print(f"killed engine replica pid {before[0]} at {self.at_s:g} s", file=sys.stderr)
        while time.monotonic() - t0 < 600:
            now = self.replicas()
            if len(now) >= len(before) and before[0] not in now:
                self.record["back_after_s"] = round(time.monotonic() - t0, 1)
                return
            time.sleep(1.0)
        self.record["error"] = "the replica did not come back in 600 s"


def run_load(args, url, prompts, expected, killer=None) -> dict:
    results, lock = [], threading.Lock()
    budget = [args.max_requests]
    _request(url, "POST", "/v1/chat/completions", {"model": args.served_model_name, "max_tokens": 2,
                                                  "messages": [{"role": "user", "content": "hi"}]}, 300)  # warm up
    before = _scrape(url)
    load_before = os.getloadavg()[0]
    start = time.monotonic()
    stop_at = start + args.minutes * 60
    clients = [Client(i, args, url, prompts, expected, stop_at, budget, results, lock) for i in range(args.clients)]
    for c in clients:
        c.start()
    if killer is not None:
        killer.start()
    for c in clients:
        c.join(args.minutes * 60 + args.request_timeout + 60)
    wall = time.monotonic() - start
    time.sleep(1.0)
    after = _scrape(url)
    if killer is not None:
        killer.join(600)
    report = summarise(args, results, wall, before, after, alive=[c.name for c in clients if c.is_alive()],
                       killed=killer.record if killer is not None else None)
    report["settings"]["load_average_1min"] = {"start": round(load_before, 2), "end": round(os.getloadavg()[0], 2)}
    return report


def _scrape(url) -> dict:
    status, text = _request(url, "GET", "/metrics", None, 60)
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("#") or not line.strip():
            continue
        name_labels, _, value = line.rpartition(" ")
        name = name_labels.split("{", 1)[0]
        out[name] = out.get(name, 0.0) + float(value)
        out[name_labels] = float(value)
    return out


def _pct(values, qs=(50, 90, 99)) -> dict:
    v = sorted(x for x in values if x is not None)
    if not v:
        return {}
    return {f"p{q}": round(v[min(len(v) - 1, int(round(q / 100 * (len(v) - 1))))], 3) for q in qs} | {
        "mean": round(sum(v) / len(v), 3), "n": len(v)}


def _ms(values) -> dict:
    """mean, p50, p90, p99 of seconds, in milliseconds."""
    return {k: (round(v, 1) if k != "n" else v) for k, v in _pct([x * 1000 for x in values]).items()}


def summarise(args, results, wall, before, after, alive, killed=None) -> dict:
    outcomes = Counter(r["outcome"] for r in results)
    done = [r for r in results if r["outcome"] == "ok"]
    expected = {"ok", "refused_as_expected", "disconnected_as_planned"} | ({"replica_lost"} if killed else set())
    bad = {k: n for k, n in outcomes.items() if k not in expected}
    tokens = sum(r["tokens"] for r in done)

    def delta(name):
        return round(after.get(name, 0.0) - before.get(name, 0.0), 3)

    served = delta("vllm:generation_tokens_total")
    drafts = delta("vllm:spec_decode_num_drafts_total")
    report = {
        "settings": {"clients": args.clients, "minutes": args.minutes, "max_tokens": args.max_tokens,
                     "prompts": args.prompts, "dtype": args.dtype, "threads": args.threads or "torch default",
                     "total_tokens": args.total_tokens, "draft_top_k": args.draft_top_k, "policy": args.policy,
                     "max_batch_size": args.max_batch_size or "server default",
                     "disconnect_share": args.disconnect_share, "malformed_share": args.malformed_share,
                     "stream_share": args.stream_share, "machine": f"{os.cpu_count()} CPUs, {_cpu_name()}"},
        "wall_s": round(wall, 1),
        "requests": len(results),
        "requests_per_s": round(len(results) / wall, 3),
        "completed_per_s": round(len(done) / wall, 3),
        "outcomes": dict(sorted(outcomes.items())),
        "errors_by_kind": bad,
        "checked_against_offline": len(done),
        "ttft_s_streamed": _pct([r.get("ttft_s") for r in done if r["kind"] == "stream"]),
        "latency_s": _pct([r["latency_s"] for r in done]),
        "tokens_per_s_per_request": _pct([r["tokens"] / r["latency_s"] for r in done if r["latency_s"] > 0]),
        # while a streamed request was running: its tokens after the first, over first -> last token
        "decode_tokens_per_s_streamed": _pct([(r["tokens"] - 1) / (r["last_token_s"] - r["ttft_s"]) for r in done
                                              if r["kind"] == "stream" and r.get("last_token_s") and r.get("ttft_s")
                                              and r["last_token_s"] > r["ttft_s"]]),
        "tokens_per_s_aggregate": round(tokens / wall, 3),
        "server": {"generation_tokens": served, "prompt_tokens": delta("vllm:prompt_tokens_total"),
                   "drafts": drafts, "accepted": delta("vllm:spec_decode_num_accepted_tokens_total"),
                   "tau": round(1 + delta("vllm:spec_decode_num_accepted_tokens_total") / drafts, 3)
                   if drafts else None,
                   "waiting_after": after.get("vllm:num_requests_waiting"),
                   "running_after": after.get("vllm:num_requests_running"),
                   "finished": {k.split('finished_reason="')[1].split('"')[0]: delta(k) for k in after
                                if k.startswith("vllm:request_success_total{")}},
        "clients_still_running": alive,
    }
    streamed = [r for r in done if r["kind"] == "stream" and r.get("ttft_s") is not None]
    report["vllm_names"] = {  # the metric names and definitions of `vllm bench serve`
        "request_throughput": round(len(done) / wall, 3),
        "output_throughput": round(tokens / wall, 3),
        "ttft_ms": _ms(r["ttft_s"] for r in streamed),
        "tpot_ms": _ms((r["latency_s"] - r["ttft_s"]) / (r["tokens"] - 1) for r in streamed if r["tokens"] > 1),
        "itl_ms": _ms(x for r in streamed for x in r.get("itl_s", [])),
        "e2el_ms": _ms(r["latency_s"] for r in done),
    }
    replicas = {k.split('replica="')[1].split('"')[0]: delta(k) for k in after
                if k.startswith("dyndepth_replica_requests_total{")}
    if replicas or args.replicas != 1:
        report["settings"]["replicas"] = args.replicas
        report["server"]["requests_by_replica"] = replicas
        report["server"]["lost_with_replica"] = sum(v for k, v in after.items()
                                                    if k.startswith("dyndepth_replica_lost_total{"))
    if killed is not None:
        report["replica_killed"] = killed
    report["ok"] = not bad and not alive and not report["server"]["waiting_after"] and \
        not report["server"]["running_after"] and not (killed or {}).get("error") and \
        (killed is None or "back_after_s" in killed)
    return report


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown CPU"


if __name__ == "__main__":
    sys.exit(main())
