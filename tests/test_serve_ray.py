"""`dyndepth serve` on Ray Serve: a local Ray instance with 2 engine replicas of SmolLM2 (float32, 1 thread each).

One Ray instance for the module, started and stopped inside it (its own processes only, on loopback; the
teardown checks that none is left). Every answer is compared with ``SpeculativeDecoder.generate`` offline:
greedy float32 is exact, so a replica's text must equal it token for token.

- concurrent streams equal their offline answers, and both replicas serve them;
- a client that leaves a stream cancels its generation on the replica;
- a replica process killed (SIGKILL) with a stream and a whole request on it: both end with a clean 503 error
  (the stream with an error event and [DONE], never a cut that looks finished), the other replica's two
  requests complete exactly, and Ray brings the replica back, which then serves;
- the API key and the error bodies are those of the single-process server (same requests, same answers);
- model-free: the RemoteEngine's events, queue, timeout and lost replicas on a fake handle; the documented
  config file; the command line's refusals.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import os
import signal
import socket
import threading
import time
from pathlib import Path

import pytest

pytest.importorskip("fastapi", reason="the 'serve' extra is not installed")
pytest.importorskip("ray.serve", reason="the 'ray' extra is not installed")
openai = pytest.importorskip("openai", reason="the 'dev' extra (openai) is not installed")

from serve_helpers import LoopbackServer  # noqa: E402

from dyndepth.serve import errors  # noqa: E402
from dyndepth.serve.worker import Done, Failed, Job, Step  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
MODEL, NAME, KEY = "smollm2-135m-instruct", "smol", "ray-test-key"
OPTIONS = {"model": MODEL, "dtype": "float32", "threads": 1, "total_tokens": 12, "draft_top_k": 4,
           "served_model_name": NAME, "api_key": KEY, "max_queue": 8, "request_timeout": 300}
SHORT, SHORT_TOKENS = ["What is the capital of France?", "Name three primary colors."], 16
# answers that run the whole budget (no end of turn before it), so they are still running when the replica dies
LONG, LONG_TOKENS = ["Write a long story about a robot who learns to paint.",
                     "Write a long essay about the history of the printing press."], 64
ENGINE = "ServeReplica:dyndepth:DyndepthEngine"  # the process title Ray gives an engine replica
# Ray's own traffic on loopback only (without the first, Ray reaches its processes at the machine's address),
# and no usage report
LOOPBACK_RAY = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_USAGE_STATS_ENABLED": "0"}
OFFLINE_TOKENS: dict[str, int] = {}  # prompt -> tokens of its offline answer (filled by the cluster fixture)
START_TIMEOUT_S, RESTART_TIMEOUT_S = 300, 180  # bounds for a loaded 2-core machine; normally ~40 s and ~20 s


# -- model-free: the RemoteEngine over a fake DeploymentHandle --------------------------------------------------
class FakeGen:
    """A DeploymentResponseGenerator that yields the given items (an exception item is raised)."""

    def __init__(self, items, delay=0.0):
        self.items, self.delay, self.cancels = list(items), delay, 0

    async def __anext__(self):
        await asyncio.sleep(self.delay)
        if not self.items:
            raise StopAsyncIteration
        item = self.items.pop(0)
        if isinstance(item, BaseException):
            raise item
        return item

    def cancel(self):
        self.cancels += 1


class FakeHandle:
    def __init__(self, *gens):
        self.gens, self.jobs = list(gens), []
        self.generate = self

    def options(self, stream):
        assert stream is True
        return self

    def remote(self, job):
        self.jobs.append(job)
        return self.gens.pop(0)


class FakeTokenizer:
    chat_template = None


def remote_engine(*gens, max_queue=4):
    from dyndepth.serve.ray_engine import RemoteEngine

    spec = {"tokenizer": FakeTokenizer(), "max_context": 64, "tree_tokens": 4, "vocab_size": 10,
            "describe": {"policy": "ddd"}}
    return RemoteEngine(FakeHandle(*gens), spec, max_queue=max_queue)


def events(handle):
    async def run():
        return [e async for e in handle]

    return asyncio.run(run())


def test_remote_engine_turns_the_replica_stream_into_engine_events():
    from dyndepth.stats import GenerationStats, StepStats

    step = StepStats(committed=3, accepted=2, depth=3, tree_size=5, draft_time_s=0.01, verify_time_s=0.02)
    gen = FakeGen([("accepted", "r1"), ("step", [7], "Hi", None, 0.25), ("batch", [(2, 24), (3, 30)]),
                   ("step", [8, 9, 4], " there", step, None), ("done", GenerationStats(stop_reason="max_new_tokens"))])
    engine = remote_engine(gen)
    steps = []
    engine.listen(lambda rows, tokens: steps.append((rows, tokens)))  # what the app's batch metrics listen with
    job = Job([1, 2], {"max_new_tokens": 4}, None)

    async def run():
        handle = engine.submit(job)
        assert (engine.waiting, engine.running) == (1, 0)
        first = await handle.next()  # "accepted" is consumed on the way: the first event is a Step
        assert (engine.waiting, engine.running, handle.replica) == (0, 1, "r1")
        return handle, [first] + [e async for e in handle]

    handle, got = asyncio.run(run())
    assert [type(e) for e in got] == [Step, Step, Done]
    assert [(e.token_ids, e.text, e.step) for e in got[:2]] == [([7], "Hi", None), ([8, 9, 4], " there", step)]
    assert got[2].stats.stop_reason == "max_new_tokens"
    assert steps == [(2, 24), (3, 30)]  # the replica's engine steps, each once
    assert handle.started is not None and handle.started >= handle.submitted + 0.25  # the replica's queue time
    assert (engine.waiting, engine.running) == (0, 0)
    handle.cancel()  # what the app does after the last event: nothing left to cancel in Ray
    assert gen.cancels == 0


def test_remote_engine_a_lost_replica_is_a_503_and_counted():
    from ray.exceptions import ActorDiedError

    from dyndepth.serve.ray_metrics import ReplicaMetrics
    from prometheus_client import CollectorRegistry

    engine = remote_engine(FakeGen([("accepted", "r1"), ("step", [7], "Hi", None, 0.0), ActorDiedError()]))
    registry = CollectorRegistry()
    engine.replica_metrics = ReplicaMetrics(registry, NAME)
    got = events(engine.submit(Job([1], {}, None)))
    assert isinstance(got[0], Step) and isinstance(got[1], Failed) and len(got) == 2
    err = got[1].error
    assert (err.status, err.type, err.code) == (503, "server_error", "replica_unavailable")
    assert "stopped before the answer was complete" in err.message and "\n" not in err.message
    labels = {"model_name": NAME, "replica": "r1"}
    assert registry.get_sample_value("dyndepth_replica_lost_total", labels) == 1
    assert registry.get_sample_value("dyndepth_replica_requests_total", labels) == 1
    assert registry.get_sample_value("dyndepth_replica_requests_running", labels) == 0


def test_remote_engine_queue_timeout_cancel_and_a_stream_without_an_end():
    # queue: max_queue jobs may wait for a replica; one more is a 429 at once
    engine = remote_engine(FakeGen([], delay=10), FakeGen([], delay=10), max_queue=2)

    async def fill():
        a, b = engine.submit(Job([1], {}, None)), engine.submit(Job([1], {}, None))
        with pytest.raises(errors.APIError) as exc:
            engine.submit(Job([1], {}, None))
        a.cancel()
        b.cancel()
        return exc.value, a, b

    full, a, b = asyncio.run(fill())
    assert (full.status, full.code) == (429, "queue_full") and engine.waiting == 0
    assert a._gen.cancels == 1 and b._gen.cancels == 1
    a.cancel()  # idempotent
    assert a._gen.cancels == 1

    # timeout from submission, queue included: a 504, and the replica's call is cancelled
    gen = FakeGen([("accepted", "r1")] + [("step", [1], "x", None, None)] * 50, delay=0.05)
    got = events(remote_engine(gen).submit(Job([1], {}, 0.3)))
    assert isinstance(got[-1], Failed) and got[-1].error.status == 504 and gen.cancels == 1

    # a replica stream that ends without done/failed is a 500, never an answer that looks complete
    got = events(remote_engine(FakeGen([("accepted", "r1"), ("step", [1], "x", None, None)])).submit(Job([1], {})))
    assert isinstance(got[-1], Failed) and got[-1].error.status == 500

    # a failure the replica's engine reported keeps its status and body
    got = events(remote_engine(FakeGen([("failed", 400, "bad", "invalid_request_error", "stop", "invalid_value")]))
                 .submit(Job([1], {})))
    assert got[0].error.body() == {"error": {"message": "bad", "type": "invalid_request_error", "param": "stop",
                                             "code": "invalid_value"}}


def test_engine_replica_health_check_fails_once_its_engine_has_stopped():
    from types import SimpleNamespace

    from dyndepth.serve.ray_app import DyndepthEngine

    replica = object.__new__(DyndepthEngine.func_or_class)  # the class Ray runs, without loading a model
    replica.engine = SimpleNamespace(alive=True, close=lambda: None)
    replica.check_health()  # healthy: no exception
    replica.engine.alive = False
    with pytest.raises(RuntimeError, match="worker thread has stopped"):
        replica.check_health()


# -- model-free: the config file and the options ------------------------------------------------------------
def test_documented_config_is_a_valid_serve_config_and_builds():
    import yaml
    from ray.serve.schema import ServeDeploySchema

    from dyndepth.serve.ray_app import app_builder, batch_size, parse_options

    doc = yaml.safe_load((ROOT / "docs" / "ray-serve.yaml").read_text())
    schema = ServeDeploySchema.model_validate(doc)
    (app,) = schema.applications
    assert app.import_path == "dyndepth.serve.ray_app:app_builder"
    engine = {d.name: d for d in app.deployments}["DyndepthEngine"]
    args = parse_options(app.args)  # the args are options of `dyndepth serve`, checked like them
    # sized to the engine's batch (a batch running, a batch ready), not Ray's default of 5
    assert engine.max_ongoing_requests == 2 * batch_size(args)
    assert engine.autoscaling_config["target_ongoing_requests"] == batch_size(args)
    assert engine.ray_actor_options.num_cpus == args.threads
    assert type(app_builder(app.args)).__name__ == "Application"


@pytest.mark.parametrize("options, message", [
    ({"model": MODEL, "port": 9000}, "'port' is not an app argument; set http_options.port"),
    ({"model": MODEL, "no_such_option": 1}, "unrecognized arguments: --no-such-option 1"),
    ({"model": MODEL, "max_queue": 0}, "--max-queue must be >= 1, got 0"),
])
def test_app_arguments_are_checked_like_the_command_line(options, message):
    from dyndepth.errors import DyndepthError
    from dyndepth.serve.ray_app import app_builder

    with pytest.raises(DyndepthError) as exc:
        app_builder(options)
    assert message in str(exc.value) and "\n" not in str(exc.value)


@pytest.mark.parametrize("flags", [[], ["--no-fast-path", "--draft-top-k", "4", "--cors-origin", "http://localhost:3000"],
                                   ["--pack-linears"]])
def test_the_command_lines_options_reach_the_replicas_unchanged(flags):
    """`dyndepth serve --replicas N ...` hands its parsed options to the app by dest: switches (--no-fast-path:
    fast_path=False) and options whose dest is not their flag (--draft-top-k: tree_top_k) come back the same."""
    import argparse

    from dyndepth.serve.cli import register
    from dyndepth.serve.ray_app import parse_options
    from dyndepth.serve.ray_cli import CLI_ONLY, app_options

    parser = argparse.ArgumentParser(prog="dyndepth")
    register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["serve", "--model", MODEL, "--replicas", "2", *flags])
    back = parse_options(app_options(args))
    same = {k: v for k, v in vars(args).items() if k not in CLI_ONLY}
    assert {k: getattr(back, k) for k in same if k != "api_key"} == {k: v for k, v in same.items() if k != "api_key"}
    assert parse_options({"model": MODEL, "no_fast_path": True}).fast_path is False


@pytest.mark.parametrize("argv, message", [
    (["--replicas", "0"], "--replicas must be in 1..1024, got 0"),
    (["--replicas", "2", "--threads", str((os.cpu_count() or 1) + 1)], "--threads must be in 1.."),
])
def test_bad_replica_options_are_one_line_errors_before_ray_starts(argv, message, capsys):
    from dyndepth.cli import main

    assert main(["serve", *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and err.count("\n") == 1


# -- a local Ray instance with 2 replicas -----------------------------------------------------------------------
def _descendants(root: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            children.setdefault(int(stat.rsplit(")", 1)[1].split()[1]), []).append(int(entry))
    out, todo = [], [root]
    while todo:
        kids = children.get(todo.pop(), [])
        out += kids
        todo += kids
    return out


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def engine_pids() -> list[int]:
    """This test's engine replica processes (descendants of this process, so never another session's Ray)."""
    return sorted(p for p in _descendants(os.getpid()) if ENGINE in _cmdline(p))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def decoder(smollm2_path):
    import torch

    from dyndepth.decoder import SpeculativeDecoder

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as each replica
    yield SpeculativeDecoder.from_pretrained(MODEL, dtype="float32", total_tokens=12, top_k=4)
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def cluster(decoder):
    """(url, offline answers): Ray, Serve and the app start while the offline answers are computed."""
    import logging

    import ray
    from ray import serve
    from ray._private import ray_constants

    from dyndepth.serve.ray_app import APP_NAME, build_app

    offline: dict[str, str] = {}
    offline_tokens: dict[str, int] = {}

    def answers():  # in a thread of its own, like the server's worker (see test_serve.py)
        for prompts, n in ((SHORT, SHORT_TOKENS), (LONG, LONG_TOKENS)):
            for p in prompts:
                g = decoder.generate(decoder.chat_ids(p), max_new_tokens=n)
                offline[p] = g.text
                offline_tokens[p] = len(g.token_ids)
                assert n != LONG_TOKENS or len(g.token_ids) == n, f"{p!r} ends before {n} tokens"

    worker = threading.Thread(target=answers, daemon=True)
    worker.start()
    saved = {k: os.environ.get(k) for k in LOOPBACK_RAY}
    os.environ.update(LOOPBACK_RAY)  # Ray's own processes inherit these
    # read when Ray is imported, and this process imported it already
    cluster_mode, ray_constants.ENABLE_RAY_CLUSTER = ray_constants.ENABLE_RAY_CLUSTER, False
    logging.getLogger("ray.serve").setLevel(logging.WARNING)
    port = _free_port()
    ray.init(num_cpus=2, _node_ip_address="127.0.0.1", include_dashboard=False, logging_level="WARNING",
             log_to_driver=False)
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port}, proxy_location="HeadOnly")
        # batch-1 engines with one job ready behind the running one, so each replica holds a stream and a
        # whole request in the kill test; a fast health check, so the dead replica is replaced soon
        app = build_app(OPTIONS, num_replicas=2, max_ongoing_requests=2, health_check_period_s=1)
        runner = threading.Thread(target=serve.run, args=(app,), kwargs={"name": APP_NAME, "route_prefix": "/"},
                                  daemon=True)
        runner.start()
        runner.join(START_TIMEOUT_S)
        assert not runner.is_alive(), f"the Ray Serve app did not start in {START_TIMEOUT_S} s"
        worker.join(START_TIMEOUT_S)
        assert len(offline) == len(SHORT) + len(LONG), "the offline generations failed (see the traceback above)"
        assert len(engine_pids()) == 2
        OFFLINE_TOKENS.update(offline_tokens)
        yield f"http://127.0.0.1:{port}", offline
    finally:
        try:
            serve.shutdown()
        finally:
            ray.shutdown()
            ray_constants.ENABLE_RAY_CLUSTER = cluster_mode
            for k, v in saved.items():
                os.environ.pop(k) if v is None else os.environ.__setitem__(k, v)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and any("ray" in _cmdline(p) for p in _descendants(os.getpid())):
        time.sleep(0.5)
    left = [_cmdline(p)[:80] for p in _descendants(os.getpid()) if "ray" in _cmdline(p)]
    assert not left, f"Ray processes left running: {left}"


def client(url, key=KEY):
    return openai.OpenAI(base_url=url + "/v1", api_key=key, max_retries=0, timeout=240)


def stream_text(url, prompt, max_tokens):
    chunks = list(client(url).chat.completions.create(model=NAME, stream=True, max_tokens=max_tokens,
                                                      messages=[{"role": "user", "content": prompt}]))
    assert chunks[-1].choices[0].finish_reason in ("stop", "length")
    return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)


def raw(url, method, path, body=None, headers=None, key=KEY):
    """(status, JSON or text, headers) of one plain HTTP request."""
    host, port = url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=240)
    data = body if isinstance(body, (bytes, type(None))) else json.dumps(body).encode()
    auth = {"Authorization": f"Bearer {key}"} if key else {}
    conn.request(method, path, body=data, headers={"Content-Type": "application/json", **auth, **(headers or {})})
    resp = conn.getresponse()
    text = resp.read().decode()
    conn.close()
    try:
        return resp.status, json.loads(text), dict(resp.getheaders())
    except ValueError:
        return resp.status, text, dict(resp.getheaders())


def replica_series(url, name: str) -> dict[str, float]:
    """replica id -> value of one per-replica series of /metrics."""
    from prometheus_client.parser import text_string_to_metric_families

    _, text, _ = raw(url, "GET", "/metrics")
    return {s.labels["replica"]: s.value for f in text_string_to_metric_families(text) for s in f.samples
            if s.name == name}


def metric_total(url, name: str) -> float:
    from prometheus_client.parser import text_string_to_metric_families

    _, text, _ = raw(url, "GET", "/metrics")
    return sum(s.value for f in text_string_to_metric_families(text) for s in f.samples if s.name == name)


def wait_until(predicate, timeout, what):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def test_concurrent_streams_equal_offline_answers_and_both_replicas_serve(cluster):
    url, offline = cluster
    prompts = SHORT * 2  # 4 streams, 2 per replica at most (max_ongoing_requests 2): both replicas must serve
    tokens_before = metric_total(url, "vllm:generation_tokens_total")
    got: dict[int, str] = {}

    def ask(i, p):
        try:
            got[i] = stream_text(url, p, SHORT_TOKENS)
        except Exception as exc:  # noqa: BLE001 - shown by the comparison below
            got[i] = repr(exc)

    threads = [threading.Thread(target=ask, args=(i, p)) for i, p in enumerate(prompts)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(240)
    assert [got.get(i) for i in range(len(prompts))] == [offline[p] for p in prompts]
    served = replica_series(url, "dyndepth_replica_requests_total")
    assert len(served) == 2 and all(n >= 1 for n in served.values()), served
    # /metrics counts the tokens both replicas generated, and the replicas' engine steps (batch histograms)
    assert metric_total(url, "vllm:generation_tokens_total") - tokens_before == sum(OFFLINE_TOKENS[p] for p in prompts)
    assert metric_total(url, "dyndepth_batch_size_count") > 0
    assert sum(replica_series(url, "dyndepth_replica_requests_running").values()) == 0


def engine_stats() -> dict[str, dict]:
    """replica id -> DyndepthEngine.stats() of every engine replica (the router picks one per call)."""
    from ray import serve

    from dyndepth.serve.ray_app import APP_NAME

    handle = serve.get_deployment_handle("DyndepthEngine", app_name=APP_NAME)
    seen: dict[str, dict] = {}
    for _ in range(100):  # two replicas: both are seen in a few calls
        s = handle.stats.remote().result(timeout_s=60)
        seen[s["replica"]] = s
        if len(seen) == 2:
            break
    return seen


def test_a_client_that_disconnects_cancels_its_generation_on_the_replica(cluster):
    url, _ = cluster
    before = {r: s["cancelled"] for r, s in engine_stats().items()}
    stream = Stream(url, LONG[0], max_tokens=400)
    stream.stop_after = 3  # the role chunk and two steps, then the client leaves
    stream.start()
    stream.join(120)
    assert stream.end == "left" and len(stream.events) == 3

    def cancelled_and_idle():
        now = engine_stats()
        return (sum(s["cancelled"] - before.get(r, 0) for r, s in now.items()) == 1
                and all(s["running"] == s["waiting"] == 0 for s in now.values()))

    wait_until(cancelled_and_idle, 30, "the replica to cancel the generation of the client that left")
    assert sum(replica_series(url, "dyndepth_replica_requests_running").values()) == 0


class Stream(threading.Thread):
    """A streamed chat read event by event, recording whether it ended with [DONE], an error or a cut."""

    def __init__(self, url, prompt, max_tokens=LONG_TOKENS):
        super().__init__(daemon=True)
        self.url, self.prompt, self.max_tokens, self.events, self.end = url, prompt, max_tokens, [], None
        self.started = threading.Event()
        self.stop_after = None  # leave (close the connection) after this many events

    def run(self):
        host, port = self.url.removeprefix("http://").split(":")
        conn = http.client.HTTPConnection(host, int(port), timeout=240)
        body = {"model": NAME, "stream": True, "max_tokens": self.max_tokens,
                "messages": [{"role": "user", "content": self.prompt}]}
        conn.request("POST", "/v1/chat/completions", body=json.dumps(body).encode(),
                     headers={"Content-Type": "application/json", "Authorization": f"Bearer {KEY}"})
        resp = conn.getresponse()
        self.status = resp.status
        while True:
            line = resp.readline()
            if not line:
                self.end = "cut"  # the connection closed before [DONE]
                break
            line = line.strip()
            if not line.startswith(b"data:"):
                continue
            if line == b"data: [DONE]":
                self.end = "done"
                break
            self.events.append(json.loads(line[5:]))
            if len(self.events) >= 3:  # the role chunk and two steps: it is running on a replica
                self.started.set()
            if len(self.events) == self.stop_after:
                self.end = "left"
                break
        self.started.set()
        conn.close()

    @property
    def text(self):
        return "".join((c.get("delta") or {}).get("content") or "" for e in self.events for c in e.get("choices", []))


class Whole(threading.Thread):
    def __init__(self, url, prompt):
        super().__init__(daemon=True)
        self.url, self.prompt = url, prompt

    def run(self):
        body = {"model": NAME, "max_tokens": LONG_TOKENS, "messages": [{"role": "user", "content": self.prompt}]}
        self.status, self.body, _ = raw(self.url, "POST", "/v1/chat/completions", body)


@pytest.fixture(scope="module")
def killed(cluster):
    """Two streams (one per replica), then two whole requests (one queued behind each stream), then SIGKILL
    to one replica process. Returns what each request got, and the pids before the kill."""
    url, offline = cluster
    s1, s2 = Stream(url, LONG[0]), Stream(url, LONG[1])
    s1.start()
    assert s1.started.wait(120)
    s2.start()  # the least-loaded replica: the other one
    assert s2.started.wait(120)
    w1 = Whole(url, LONG[1])
    w1.start()
    wait_until(lambda: sum(replica_series(url, "dyndepth_replica_requests_running").values()) == 3, 60, "w1")
    w2 = Whole(url, LONG[0])
    w2.start()  # max_ongoing_requests 2: the replica that does not hold w1
    wait_until(lambda: sorted(replica_series(url, "dyndepth_replica_requests_running").values()) == [2, 2], 60,
               "2 requests on each replica")
    pids = engine_pids()
    done_before = [s.end for s in (s1, s2)] + [None if w.is_alive() else w.status for w in (w1, w2)]
    os.kill(pids[0], signal.SIGKILL)
    for t in (s1, s2, w1, w2):
        t.join(240)
        assert not t.is_alive(), "a request hung after the replica died"
    return {"streams": (s1, s2), "wholes": (w1, w2), "pids": pids, "done_before": done_before}


def test_killed_replicas_requests_end_with_a_clean_503_and_the_others_complete(cluster, killed):
    url, offline = cluster
    assert killed["done_before"] == [None] * 4, "a request had ended before the kill: the test proves nothing"
    lost_streams = [s for s in killed["streams"] if "error" in s.events[-1]]
    ok_streams = [s for s in killed["streams"] if s not in lost_streams]
    assert len(lost_streams) == 1 and len(ok_streams) == 1
    lost, ok = lost_streams[0], ok_streams[0]
    # the lost stream: 200 (it had begun), steps, then one error event and [DONE]; no finish chunk
    assert lost.status == 200 and lost.end == "done" and len(lost.events) >= 3
    err = lost.events[-1]["error"]
    assert set(err) == {"message", "type", "param", "code"}
    assert (err["type"], err["code"]) == ("server_error", "replica_unavailable") and "retry" in err["message"]
    assert all(c.get("finish_reason") is None for e in lost.events[:-1] for c in e.get("choices", []))
    assert offline[lost.prompt].startswith(lost.text)  # what it had sent was right
    # the other replica's stream is complete and exact
    assert ok.status == 200 and ok.end == "done" and ok.text == offline[ok.prompt]
    assert ok.events[-1]["choices"][0]["finish_reason"] == "length"

    statuses = sorted(w.status for w in killed["wholes"])
    assert statuses == [200, 503]
    for w in killed["wholes"]:
        if w.status == 503:
            assert w.body["error"]["code"] == "replica_unavailable" and w.body["error"]["type"] == "server_error"
        else:
            assert w.body["choices"][0]["message"]["content"] == offline[w.prompt]
    lost_counts = replica_series(url, "dyndepth_replica_lost_total")
    assert list(lost_counts.values()) == [2], lost_counts  # the stream and the whole request of one replica


def test_api_key_and_error_bodies_are_those_of_the_single_process_server(cluster, decoder):
    from dyndepth.serve.app import Settings, create_app
    from dyndepth.serve.worker import Engine

    url, _ = cluster
    chat = {"model": NAME, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
    cases = [  # (method, path, body, key)
        ("POST", "/v1/chat/completions", chat, None),
        ("POST", "/v1/chat/completions", chat, "wrong-key"),
        ("GET", "/v1/models", None, None),
        ("POST", "/v1/chat/completions", chat, KEY, "text/plain"),
        ("GET", "/metrics", None, "wrong-key"),
        ("POST", "/v1/chat/completions", b'{"model": "smol", "messages": [', KEY),
        ("POST", "/v1/chat/completions", {"model": NAME, "messages": "not a list"}, KEY),
        ("POST", "/v1/chat/completions", {"model": NAME}, KEY),
        ("POST", "/v1/chat/completions", {**chat, "model": "gpt-4"}, KEY),
        ("POST", "/v1/chat/completions", {**chat, "n": 2}, KEY),
        ("POST", "/v1/chat/completions", {**chat, "max_tokens": -1}, KEY),
        ("POST", "/v1/chat/completions", {**chat, "logprobs": True}, KEY),
        ("POST", "/v1/completions", {"model": NAME, "prompt": "word " * 9000, "max_tokens": 4}, KEY),
        ("POST", "/v1/completions", {"model": NAME, "prompt": [1, 2, 10 ** 9]}, KEY),
        ("POST", "/v1/chat/completions", b"x" * (2 << 20), KEY),
        ("GET", "/v1/chat/completions", None, KEY),
        ("GET", "/no/such/route", None, KEY),
        ("GET", "/v1/models/gpt-4", None, KEY),
        ("GET", "/health", None, None),
    ]
    engine = Engine(decoder, max_queue=8).start()
    single = create_app(engine, Settings(model_name=NAME, api_key=KEY, request_timeout_s=300))
    try:
        with LoopbackServer(single) as single_url:
            for method, path, body, key, *content_type in cases:
                headers = {"Content-Type": content_type[0]} if content_type else None
                want = raw(single_url, method, path, body, headers, key=key)
                got = raw(url, method, path, body, headers, key=key)
                assert (got[0], got[1]) == (want[0], want[1]), (method, path, key)
                assert got[2].get("www-authenticate") == want[2].get("www-authenticate")
                if want[0] >= 400:
                    assert set(got[1]["error"]) == {"message", "type", "param", "code"}
            # the key opens the API; the model card is the same but for its creation time
            want, got = raw(single_url, "GET", "/v1/models")[:2], raw(url, "GET", "/v1/models")[:2]
            assert got[0] == want[0] == 200
            for card in (want[1]["data"][0], got[1]["data"][0]):
                card.pop("created")
            assert got[1] == want[1] and got[1]["data"][0]["id"] == NAME
    finally:
        engine.close()
    assert raw(url, "GET", "/", key=None)[0] == 200  # the page needs no key


def test_killed_replica_comes_back_and_serves(cluster, killed):
    from ray import serve

    from dyndepth.serve.ray_app import APP_NAME

    url, offline = cluster

    def back():
        pids = engine_pids()
        state = serve.status().applications[APP_NAME].deployments["DyndepthEngine"]
        return len(pids) == 2 and pids != killed["pids"] and state.replica_states.get("RUNNING", 0) == 2

    wait_until(back, RESTART_TIMEOUT_S, "Ray to restart the killed replica")
    before = replica_series(url, "dyndepth_replica_requests_total")
    # the second request goes out while the first (a long one) runs: the least-loaded replica is the other one
    first = Stream(url, LONG[0])
    first.start()
    assert first.started.wait(120)
    second = Stream(url, SHORT[0], max_tokens=SHORT_TOKENS)
    second.start()
    for s in (first, second):
        s.join(240)
        assert s.status == 200 and s.end == "done" and s.text == offline[s.prompt]
    after = replica_series(url, "dyndepth_replica_requests_total")
    new = set(after) - set(before)
    assert len(new) == 1 and after[new.pop()] == 1, (before, after)  # the new replica served one of them
