"""`dyndepth serve` end to end: the real `openai` client against a server on a free loopback port.

SmolLM2-135M-Instruct in float32 with the shipped head, so greedy output is exact: every text the server sends
must equal ``SpeculativeDecoder.generate`` offline, token for token, whatever the concurrency. The decoder is
built once for the module; one engine serves every test (a second engine on the same decoder would fight over
it). The queue, timeout and failure tests use a model-free fake decoder and scheduler, so they are deterministic.
"""

from __future__ import annotations

import http.client
import json
import os
import shutil
import socket
import threading
import time

import pytest
import torch

from serve_helpers import LoopbackServer

openai = pytest.importorskip("openai", reason="the 'dev' extra (openai) is not installed")
pytest.importorskip("fastapi", reason="the 'serve' extra is not installed")

from dyndepth.errors import DyndepthError  # noqa: E402
from dyndepth.serve.app import Settings, create_app  # noqa: E402
from dyndepth.serve.worker import Engine  # noqa: E402
from dyndepth.text import TextChunk  # noqa: E402

MODEL = "smollm2-135m-instruct"
NAME = "smol"  # --served-model-name
MAX_TOKENS = 16
PROMPTS = ["What is the capital of France?", "Name three primary colors.", "Write a haiku about the sea.",
           "What is 12 times 12?", "Give me a synonym for happy.", "Why is the sky blue?",
           "Translate 'good morning' to Spanish.", "What do bees make?"]
STOP_PROMPT = "Tell me a short story about a robot."
COMPLETION_PROMPT = "The three largest planets are"  # a plain prompt for /v1/completions

pytestmark = pytest.mark.slow


# -- fixtures ---------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def decoder(smollm2_path):
    import torch

    from dyndepth.decoder import SpeculativeDecoder

    torch.set_num_threads(int(os.environ.get("DYNDEPTH_TEST_THREADS", "2")))
    return SpeculativeDecoder.from_pretrained(MODEL, dtype="float32", total_tokens=12, top_k=4)


@pytest.fixture(scope="module")
def offline(decoder):
    """prompt -> GenerationOutput of the offline greedy generation (computed before the engine starts).

    Run in a thread of its own, like the server's worker: on this shared 2-core machine torch decoded about
    10x slower in the main thread than in a second thread (same results; measured 2026-12-02)."""
    out = {}

    def run():
        for p in PROMPTS:
            out[p] = decoder.generate(decoder.chat_ids(p), max_new_tokens=MAX_TOKENS)
        out[STOP_PROMPT] = decoder.generate(decoder.chat_ids(STOP_PROMPT), max_new_tokens=32)
        out[COMPLETION_PROMPT] = decoder.generate(decoder.tokenizer(COMPLETION_PROMPT)["input_ids"],
                                                  max_new_tokens=MAX_TOKENS)

    worker = threading.Thread(target=run)
    worker.start()
    worker.join()
    assert len(out) == len(PROMPTS) + 2, "the offline generations failed (see the thread's traceback above)"
    return out


@pytest.fixture(scope="module")
def engine(decoder, offline):
    eng = Engine(decoder, max_queue=16).start()
    yield eng
    eng.close()


@pytest.fixture(scope="module")
def server(engine):
    app = create_app(engine, Settings(model_name=NAME, request_timeout_s=900))  # generous: a loaded 2-core CI
    with LoopbackServer(app) as url:
        yield url


def client(url, **kw):
    return openai.OpenAI(base_url=url + "/v1", api_key=kw.pop("api_key", "unused"), max_retries=0, timeout=900, **kw)


def chat(url, prompt, **kw):
    return client(url).chat.completions.create(model=NAME, messages=[{"role": "user", "content": prompt}],
                                               max_tokens=kw.pop("max_tokens", MAX_TOKENS), **kw)


def stream_chat(url, prompt, **kw):
    """(text, chunks) of a streamed chat completion."""
    chunks = list(chat(url, prompt, stream=True, **kw))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    return text, chunks


def raw(url, method, path, body=None, headers=None):
    """(status, parsed JSON or text) of one plain HTTP request, for what the openai client would not send."""
    host, port = url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=120)
    data = body if isinstance(body, (bytes, type(None))) else json.dumps(body).encode()
    sent = {"Content-Type": "application/json", **(headers or {})}
    conn.request(method, path, body=data, headers={k: v for k, v in sent.items() if v is not None})  # None: omit
    resp = conn.getresponse()
    text = resp.read().decode()
    conn.close()
    try:
        return resp.status, json.loads(text)
    except ValueError:
        return resp.status, text


def metric_values(url, headers=None) -> dict:
    """{(name, sorted label items): value} of /metrics."""
    from prometheus_client.parser import text_string_to_metric_families

    status, text = raw(url, "GET", "/metrics", headers=headers)
    assert status == 200
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def total(values: dict, name: str, **labels) -> float:
    return sum(v for (n, lab), v in values.items() if n == name and all(dict(lab).get(k) == x
                                                                         for k, x in labels.items()))


def until(condition, timeout=60.0, what="the condition") -> None:
    """Wait for ``condition()`` (the worker clears its state a moment after the client has the answer)."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


def assert_error(status, body, want_status, param=None, type_=None):
    assert status == want_status, body
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}, body
    assert isinstance(body["error"]["message"], str) and "\n" not in body["error"]["message"]
    assert "Traceback" not in body["error"]["message"]
    if param is not None:
        assert body["error"]["param"] == param, body
    if type_ is not None:
        assert body["error"]["type"] == type_, body


# -- exactness ----------------------------------------------------------------------------------------------
def test_non_streaming_chat_equals_offline_generate(server, offline):
    p = PROMPTS[0]
    r = chat(server, p)
    want = offline[p]
    assert r.choices[0].message.content == want.text
    assert r.usage.completion_tokens == len(want.token_ids)
    assert r.usage.prompt_tokens == want.stats.prompt_tokens
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens
    assert r.choices[0].finish_reason == ("stop" if want.stats.stop_reason == "stop_token" else "length")
    spec = r.model_extra["speculative"]
    assert spec["steps"] == want.stats.steps
    assert spec["mean_accepted_tokens"] == pytest.approx(want.stats.mean_accepted_tokens, abs=1e-3)
    assert spec["mean_depth"] == pytest.approx(want.stats.mean_depth, abs=1e-3)
    assert spec["draft_time_s"] > 0 and spec["verify_time_s"] > 0


def test_streaming_chat_equals_offline_generate_step_by_step(server, offline):
    p = PROMPTS[1]
    text, chunks = stream_chat(server, p, stream_options={"include_usage": True})
    want = offline[p]
    assert text == want.text
    steps = [c.model_extra["step"] for c in chunks if "step" in (c.model_extra or {})]
    # one chunk per step (plus the prefill's token), carrying that step's committed tokens
    assert [s["tokens"] for s in steps[1:]] == want.stats.accept_lengths
    assert [s["depth"] for s in steps[1:]] == want.stats.depths
    assert steps[0]["tokens"] == 1 and steps[0]["depth"] is None
    finals = [c for c in chunks if c.choices and c.choices[0].finish_reason]
    assert len(finals) == 1 and finals[0].model_extra["speculative"]["steps"] == want.stats.steps
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == len(want.token_ids)


def test_completions_endpoint_streams_and_not(server, offline):
    prompt = COMPLETION_PROMPT
    want = offline[prompt].text
    c = client(server)
    r = c.completions.create(model=NAME, prompt=prompt, max_tokens=MAX_TOKENS)
    assert r.choices[0].text == want
    assert "speculative" in r.model_extra and r.usage.completion_tokens > 0
    streamed = "".join(ch.choices[0].text for ch in c.completions.create(model=NAME, prompt=prompt,
                                                                            max_tokens=MAX_TOKENS, stream=True)
                       if ch.choices)
    assert streamed == want


def test_eight_concurrent_streaming_clients_get_their_own_answers(server, offline, engine):
    results, errors = {}, []
    barrier = threading.Barrier(len(PROMPTS))

    def one(p):
        try:
            barrier.wait(30)
            results[p] = stream_chat(server, p)[0]
        except Exception as exc:  # reported below, with the prompt
            errors.append((p, repr(exc)))

    threads = [threading.Thread(target=one, args=(p,)) for p in PROMPTS]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    assert not errors
    assert {p: results.get(p) for p in PROMPTS} == {p: offline[p].text for p in PROMPTS}
    until(lambda: engine.waiting == 0 and engine.running == 0, 30, "an idle engine")


def test_stop_strings_cut_the_text_where_str_find_does(server, offline):
    full = offline[STOP_PROMPT].text
    words = full.split()
    assert len(words) > 6, full
    stop = " " + words[4]
    later = " " + words[6]
    cut = full.find(stop)
    assert cut > 0
    r = chat(server, STOP_PROMPT, max_tokens=32, stop=stop)
    assert r.choices[0].message.content == full[:cut] and r.choices[0].finish_reason == "stop"
    two = [later, stop]
    earliest = min(full.find(s) for s in two)
    text, _ = stream_chat(server, STOP_PROMPT, max_tokens=32, stop=two)
    assert text == full[:earliest]


def test_sampling_with_a_seed_is_reproducible(server):
    a = chat(server, PROMPTS[4], max_tokens=8, temperature=0.9, top_p=0.95, seed=1234)
    b = chat(server, PROMPTS[4], max_tokens=8, temperature=0.9, top_p=0.95, seed=1234)
    assert a.choices[0].message.content == b.choices[0].message.content
    assert a.usage.completion_tokens == b.usage.completion_tokens > 0


# -- faults -------------------------------------------------------------------------------------------------
def test_a_client_that_disconnects_cancels_its_generation(server, engine, offline, monkeypatch):
    seen = []
    original = engine.decoder.sequence

    def spy(ids, options, **kw):
        seq = original(ids, options, **kw)
        seen.append(seq.stats)
        return seq

    monkeypatch.setattr(engine.decoder, "sequence", spy)
    host, port = server.removeprefix("http://").split(":")
    body = json.dumps({"model": NAME, "messages": [{"role": "user", "content": PROMPTS[5]}], "max_tokens": 256,
                       "stream": True}).encode()
    sock = socket.create_connection((host, int(port)), timeout=60)
    sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                 b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
    got = b""
    while got.count(b"data: ") < 3:  # the role chunk and two steps
        part = sock.recv(65536)
        assert part, f"the stream ended early: {got[-300:]!r}"
        got += part
    sock.close()
    until(lambda: engine.running == 0, 60, "the worker to drop the generation of a client that left")
    p = PROMPTS[6]
    assert chat(server, p).choices[0].message.content == offline[p].text
    cancelled = seen[0]
    assert cancelled.stop_reason == "" and cancelled.new_tokens < 256


def test_malformed_requests_get_openai_error_bodies(server):
    ok = {"model": NAME, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
    path = "/v1/chat/completions"
    assert_error(*raw(server, "POST", path, b'{"model": "smol", "messages": ['), 400)
    assert_error(*raw(server, "POST", path, b'{"model": "smol", "max_tokens": NaN}'), 400)
    assert_error(*raw(server, "POST", path, {**ok, "max_tokens": "many"}), 422, param="max_tokens")
    assert_error(*raw(server, "POST", path, {**ok, "temperature": "hot"}), 422, param="temperature")
    assert_error(*raw(server, "POST", path, {**ok, "messages": [{"role": "user", "content": 3}]}), 422)
    assert_error(*raw(server, "POST", path, {"model": NAME, "max_tokens": 4}), 422, param="messages")
    assert_error(*raw(server, "POST", path, [1, 2]), 422)
    assert_error(*raw(server, "POST", path, {**ok, "model": "gpt-4"}), 404, param="model", type_="not_found_error")
    assert_error(*raw(server, "POST", path, {**ok, "n": 2}), 400, param="n")
    assert_error(*raw(server, "POST", path, {**ok, "max_tokens": -1}), 400, param="max_tokens")
    assert_error(*raw(server, "POST", path, {**ok, "max_completion_tokens": 0}), 400, param="max_completion_tokens")
    assert_error(*raw(server, "POST", path, {**ok, "top_p": 1.5}), 400, param="top_p")
    assert_error(*raw(server, "POST", path, {**ok, "stop": ["a", "b", "c", "d", "e"]}), 400, param="stop")
    assert_error(*raw(server, "POST", path, {**ok, "logprobs": True}), 400, param="logprobs")
    assert_error(*raw(server, "POST", path, {**ok, "messages": []}), 400, param="messages")
    assert_error(*raw(server, "POST", "/v1/completions", {"model": NAME, "prompt": [10**9], "max_tokens": 4}), 400,
                 param="prompt")
    assert_error(*raw(server, "POST", path, b"x" * (1 << 20 + 1)), 413)
    assert_error(*raw(server, "GET", "/v1/nothing"), 404)
    assert_error(*raw(server, "GET", path), 405)
    with pytest.raises(openai.BadRequestError) as info:
        chat(server, "hi", n=2)
    assert info.value.body["param"] == "n"
    with pytest.raises(openai.NotFoundError):
        client(server).chat.completions.create(model="nope", messages=[{"role": "user", "content": "x"}])


def test_a_prompt_over_the_context_window_is_refused_before_any_work(server, engine, decoder):
    until(lambda: engine.running == 0, 30, "an idle engine")
    steps_before = total(metric_values(server), "dyndepth_steps_total")
    long_prompt = "hello " * (decoder.target.max_context + 10)
    status, body = raw(server, "POST", "/v1/completions", {"model": NAME, "prompt": long_prompt, "max_tokens": 4})
    assert_error(status, body, 400, param="prompt")
    assert body["error"]["code"] == "context_length_exceeded"
    assert total(metric_values(server), "dyndepth_steps_total") == steps_before and engine.running == 0


def test_metrics_count_exactly_the_tokens_served(server, offline):
    before = metric_values(server)
    r1 = chat(server, PROMPTS[2])
    text, chunks = stream_chat(server, PROMPTS[3], stream_options={"include_usage": True})
    after = metric_values(server)

    def delta(name, **labels):
        return total(after, name, **labels) - total(before, name, **labels)

    usages = [r1.usage, chunks[-1].usage]
    specs = [r1.model_extra["speculative"], chunks[-1].model_extra["speculative"]]
    assert delta("vllm:generation_tokens_total") == sum(u.completion_tokens for u in usages)
    assert delta("vllm:prompt_tokens_total") == sum(u.prompt_tokens for u in usages)
    assert delta("vllm:spec_decode_num_drafts_total") == sum(s["steps"] for s in specs)
    assert delta("vllm:spec_decode_num_draft_tokens_total") == sum(s["draft_tokens"] for s in specs)
    assert delta("vllm:spec_decode_num_accepted_tokens_total") == sum(s["accepted_tokens"] for s in specs)
    assert delta("vllm:spec_decode_num_accepted_tokens_per_pos_total") == sum(s["accepted_tokens"] for s in specs)
    assert delta("vllm:spec_decode_num_accepted_tokens_per_pos_total", position="0") <= sum(s["steps"] for s in specs)
    assert delta("dyndepth_spec_decode_draft_depth_count") == sum(s["steps"] for s in specs)
    assert delta("dyndepth_spec_decode_draft_depth_sum") == pytest.approx(
        sum(s["steps"] * s["mean_depth"] for s in specs), abs=1e-2)
    assert delta("vllm:time_to_first_token_seconds_count") == 2
    assert delta("vllm:request_success_total") == 2
    assert delta("dyndepth_http_requests_total", route="/v1/chat/completions", status="200") == 2
    assert total(after, "vllm:num_requests_waiting") == 0


def test_the_api_key_is_enforced(engine):
    app = create_app(engine, Settings(model_name=NAME, api_key="s3cret-key"))
    with LoopbackServer(app) as url:
        assert_error(*raw(url, "GET", "/v1/models"), 401, type_="authentication_error")
        assert_error(*raw(url, "GET", "/metrics", headers={"Authorization": "Bearer wrong"}), 401)
        assert_error(*raw(url, "POST", "/v1/chat/completions", {"model": NAME}, {"Authorization": "s3cret-key"}), 401)
        assert raw(url, "GET", "/health")[0] == 200
        assert raw(url, "GET", "/metrics", headers={"Authorization": "Bearer s3cret-key"})[0] == 200
        with pytest.raises(openai.AuthenticationError):
            chat(url, "hi")
        ok = client(url, api_key="s3cret-key").models.list()
        assert [m.id for m in ok.data] == [NAME]


def test_the_page_is_served_without_external_resources(server):
    status, page = raw(server, "GET", "/")
    assert status == 200 and "<script>" in page
    assert "http://" not in page and "https://" not in page  # no CDN: works offline
    assert '{"Content-Type": "application/json"}' in page  # what its POSTs must declare (else 415)


# -- the queue, timeouts and failures, on a model-free decoder ---------------------------------------------------
class FakeDecoder:
    """A model-free decoder for the engine's worker: ``sequence`` builds real Sequences (real options, stop rules
    and text streams); FakeScheduler steps them."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.total_tokens, self.vocab_size = 4, len(tokenizer)
        self.policy = type("P", (), {"max_depth": 2, "name": "fake"})()
        self.target = type("T", (), {"max_context": 2048, "device": torch.device("cpu")})()
        self.gate = threading.Event()
        self.gate.set()
        self.fail_id = 1  # None: never fails (a chat prompt of SmolLM2's template starts with id 1)
        self.token = tokenizer.convert_tokens_to_ids("a")  # what every step commits

    def describe(self):
        return {"policy": "fake"}

    def sequence(self, ids, options, want_text=True, stats=None, row=0):
        from dyndepth.engine.sequence import Sequence
        from dyndepth.request import GenerationRequest
        from dyndepth.text import TextStream

        req = GenerationRequest(**options).resolved(None, self.vocab_size, set(), context=self.target.max_context)
        return Sequence(torch.tensor(ids), req, TextStream(self.tokenizer, req.request.stop), stats, row)


class FakeScheduler:
    """The scheduler's interface over FakeDecoder, one row at a time: every step commits the token "a" for the
    running row; a prompt starting with ``fail_id`` fails in its first step; ``gate`` holds every step until set."""

    def __init__(self, dec):
        self.dec, self.max_batch_size = dec, 1
        self.waiting, self.running = [], []

    @property
    def has_work(self):
        return bool(self.waiting or self.running)

    def add(self, seq):
        self.waiting.append(seq)

    def cancel(self, seq):
        seq.cancelled = True

    def close(self):
        self.waiting, self.running = [], []

    def step(self):
        from dyndepth.engine.sequence import State
        from dyndepth.engine.step import Event
        from dyndepth.stats import StepStats

        self.running = [s for s in self.running if not s.cancelled]
        while self.waiting and not self.running:
            self.running.append(self.waiting.pop(0))
        events = []
        for seq in self.running:
            if not self.dec.gate.wait(30):
                raise RuntimeError("the test never opened the gate")
            if seq.prompt[0] == self.dec.fail_id:
                seq.state = State.DONE
                events.append(Event(seq, None, None, True, RuntimeError("boom inside the model")))
                continue
            first = seq.emitted == 0
            chunk, done = seq.emit([self.dec.token])
            step = None if first else StepStats(1, 0, 2, 4, 0.0, 0.0)
            if step is not None:
                seq.stats.step_stats.append(step)
            events.append(Event(seq, chunk, step, done))
            time.sleep(0.01)
        self.running = [s for s in self.running if not s.finished]
        return events


@pytest.fixture
def fake(decoder):
    dec = FakeDecoder(decoder.tokenizer)
    eng = Engine(dec, max_queue=1, scheduler=FakeScheduler(dec)).start()
    yield dec, eng
    dec.gate.set()
    eng.close()


def test_launch_builds_the_decoder_and_steps_in_one_thread(decoder):
    """Engine.launch: the build and every step run in the engine's thread, never the caller's (two threads with
    torch work give the process two OpenMP pools, which stops libgomp spinning); a build error reaches the caller."""
    dec = FakeDecoder(decoder.tokenizer)
    dec.fail_id = None
    sched = FakeScheduler(dec)
    seen = {}
    step = sched.step
    sched.step = lambda: seen.setdefault("step", threading.get_ident()) and step()

    def build():
        seen["build"] = threading.get_ident()
        return dec

    eng = Engine.launch(build, max_queue=4, scheduler=sched)
    try:
        assert eng.alive and eng.decoder is dec
        with LoopbackServer(create_app(eng, Settings(model_name=NAME))) as url:
            status, body = raw(url, "POST", "/v1/completions", {"model": NAME, "prompt": [5, 6], "max_tokens": 3})
        assert status == 200, body
        assert seen["build"] == seen["step"] == eng._thread.ident != threading.get_ident()
    finally:
        eng.close()

    def bad_build():
        raise DyndepthError("no such model")

    with pytest.raises(DyndepthError, match="no such model"):
        Engine.launch(bad_build, max_queue=4)


def test_a_full_queue_answers_429_then_recovers(fake):
    dec, eng = fake
    dec.gate.clear()
    with LoopbackServer(create_app(eng, Settings(model_name=NAME))) as url:
        done = []
        first = threading.Thread(target=lambda: done.append(raw(url, "POST", "/v1/completions", {
            "model": NAME, "prompt": [5, 6], "max_tokens": 3})))
        first.start()
        until(lambda: eng.running, 30, "the first request to run")
        second = threading.Thread(target=lambda: done.append(raw(url, "POST", "/v1/completions", {
            "model": NAME, "prompt": [5, 7], "max_tokens": 3})))
        second.start()
        until(lambda: eng.waiting, 30, "the second request to wait")
        with pytest.raises(openai.RateLimitError) as info:
            client(url).completions.create(model=NAME, prompt=[5, 8], max_tokens=3)
        assert info.value.status_code == 429 and info.value.body["code"] == "queue_full"
        assert_error(*raw(url, "POST", "/v1/completions", {"model": NAME, "prompt": [5], "max_tokens": 3}), 429,
                     type_="rate_limit_error")
        dec.gate.set()
        first.join(30)
        second.join(30)
        assert [(s, b["choices"][0]["text"]) for s, b in done] == [(200, "aaa"), (200, "aaa")]
        assert client(url).completions.create(model=NAME, prompt=[5], max_tokens=2).choices[0].text == "aa"


def test_an_exception_in_one_generation_fails_that_request_only(fake):
    dec, eng = fake
    with LoopbackServer(create_app(eng, Settings(model_name=NAME))) as url:
        status, body = raw(url, "POST", "/v1/completions", {"model": NAME, "prompt": [1, 2], "max_tokens": 3})
        assert_error(status, body, 500, type_="server_error")
        assert "boom" not in body["error"]["message"]  # details go to the log, not to the client
        with pytest.raises(openai.APIError):
            list(client(url).completions.create(model=NAME, prompt=[1, 2], max_tokens=3, stream=True))
        assert client(url).completions.create(model=NAME, prompt=[5], max_tokens=3).choices[0].text == "aaa"


def test_a_request_past_its_timeout_ends_with_an_error(fake):
    dec, eng = fake
    dec.gate.clear()
    with LoopbackServer(create_app(eng, Settings(model_name=NAME, request_timeout_s=0.5))) as url:
        status, body = raw(url, "POST", "/v1/completions", {"model": NAME, "prompt": [5], "max_tokens": 3})
        assert_error(status, body, 504, type_="timeout_error")
        dec.gate.set()
        until(lambda: eng.running == 0, 30, "the timed-out generation to end")
        assert client(url).completions.create(model=NAME, prompt=[5], max_tokens=3).choices[0].text == "aaa"


def test_a_client_that_leaves_a_non_streamed_request_frees_the_worker(fake):
    dec, eng = fake
    dec.gate.clear()
    seen = []
    original = dec.sequence
    dec.sequence = lambda ids, options, **kw: (lambda seq: (seen.append(seq.stats), seq)[1])(
        original(ids, options, **kw))
    with LoopbackServer(create_app(eng, Settings(model_name=NAME))) as url:
        host, port = url.removeprefix("http://").split(":")
        body = json.dumps({"model": NAME, "prompt": [5], "max_tokens": 1000}).encode()
        sock = socket.create_connection((host, int(port)), timeout=30)
        sock.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
        until(lambda: eng.running, 30, "the request to run")
        sock.close()
        until(lambda: total(metric_values(url), "dyndepth_http_requests_total", status="499") >= 1, 10,
              "the server to notice the client leave")
        dec.gate.set()
        until(lambda: eng.running == 0, 10, "the worker to drop the generation")
        assert seen[0].new_tokens < 1000 and seen[0].stop_reason == ""
        assert client(url).completions.create(model=NAME, prompt=[5], max_tokens=2).choices[0].text == "aa"


# -- the contract of the HTTP layer, on the model-free decoder (issue 27) --------------------------------------------
CONTRACT_CONTEXT = 128  # the fake model's context window


@pytest.fixture(scope="module")
def contract(smollm2_path):
    """(url, engine) of a server over the fake decoder with SmolLM2's tokenizer and chat template, a context of
    CONTRACT_CONTEXT tokens and a draft beam width of 4: for what is refused or answered without a model."""
    from transformers import AutoTokenizer

    dec = FakeDecoder(AutoTokenizer.from_pretrained(smollm2_path))
    dec.fail_id = None
    dec.target = type("T", (), {"max_context": CONTRACT_CONTEXT})()
    dec.describe = lambda: {"policy": "fake", "top_k": 4, "total_tokens": 4}
    eng = Engine(dec, max_queue=4, scheduler=FakeScheduler(dec)).start()
    with LoopbackServer(create_app(eng, Settings(model_name=NAME))) as url:
        yield url, eng
    eng.close()


def _chat_body(content="hi", **kw):
    return {"model": NAME, "messages": [{"role": "user", "content": content}], "max_tokens": 2, **kw}


def test_lone_surrogates_get_400_not_500(contract):
    """"\\ud800" is valid JSON but no UTF-8 text: every text field refuses it with an OpenAI error body."""
    url, _ = contract
    chat_path, comp = "/v1/chat/completions", {"model": NAME, "prompt": "hi", "max_tokens": 2}
    assert_error(*raw(url, "POST", chat_path, _chat_body("a\ud800b")), 400, param="messages")
    parts = [{"type": "text", "text": "x"}, {"type": "text", "text": "\udfff"}]
    assert_error(*raw(url, "POST", chat_path, _chat_body(parts)), 400, param="messages")
    assert_error(*raw(url, "POST", chat_path, _chat_body(stop=["\ud800"])), 400, param="stop")
    assert_error(*raw(url, "POST", "/v1/completions", {**comp, "prompt": "\ud800"}), 400, param="prompt")
    assert_error(*raw(url, "POST", "/v1/completions", {**comp, "prompt": ["\udc80"]}), 400, param="prompt")
    assert_error(*raw(url, "POST", "/v1/completions", {**comp, "stop": "\ud800"}), 400, param="stop")
    assert_error(*raw(url, "POST", "/v1/completions", {**comp, "model": "\ud800"}), 404, param="model")
    assert raw(url, "POST", "/v1/completions", comp)[0] == 200


def test_an_unexpected_exception_is_counted_as_a_500(contract, monkeypatch):
    url, eng = contract

    def broken(prompt):
        raise RuntimeError("a bug in the HTTP layer")

    monkeypatch.setattr(eng.prompts, "text", broken)

    def count():
        return total(metric_values(url), "dyndepth_http_requests_total", route="/v1/completions", status="500")

    before = count()
    status, body = raw(url, "POST", "/v1/completions", {"model": NAME, "prompt": "hi", "max_tokens": 2})
    assert_error(status, body, 500, type_="server_error")
    assert "a bug" not in body["error"]["message"]
    assert count() == before + 1


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded",
                                          "multipart/form-data; boundary=x", None])
def test_a_body_not_declared_json_gets_415(contract, content_type):
    """A page of any origin may POST these without a CORS preflight; JSON needs one."""
    url, _ = contract
    comp = {"model": NAME, "prompt": "hi", "max_tokens": 2}
    for path, body in (("/v1/completions", comp), ("/v1/chat/completions", _chat_body())):
        status, doc = raw(url, "POST", path, body, headers={"Content-Type": content_type})
        assert_error(status, doc, 415)
        assert doc["error"]["code"] == "unsupported_media_type"
    status, doc = raw(url, "POST", "/v1/completions", b"not json", headers={"Content-Type": content_type})
    assert_error(status, doc, 415)  # refused before the body is parsed


def test_json_with_a_charset_and_the_openai_client_are_accepted(contract):
    url, _ = contract
    comp = {"model": NAME, "prompt": "hi", "max_tokens": 2}
    for content_type in ("application/json; charset=utf-8", "Application/JSON"):
        status, doc = raw(url, "POST", "/v1/completions", comp, headers={"Content-Type": content_type})
        assert status == 200 and doc["choices"][0]["text"] == "aa"
    assert client(url).completions.create(model=NAME, prompt="hi", max_tokens=2).choices[0].text == "aa"
    assert client(url).chat.completions.create(model=NAME, messages=[{"role": "user", "content": "hi"}],
                                               max_tokens=2).choices[0].message.content == "aa"


def test_unsupported_fields_are_compared_with_their_type(contract):
    """0 is not false and true is not 1: completions' logprobs 0 still asks for logprobs (refused), while
    tool_choice "none" asks for no tool call (accepted, as documented)."""
    url, _ = contract
    comp = {"model": NAME, "prompt": "hi", "max_tokens": 2}
    for field, value in (("logprobs", 0), ("logprobs", False), ("best_of", True), ("echo", 0), ("top_logprobs", 1)):
        assert_error(*raw(url, "POST", "/v1/completions", {**comp, field: value}), 400, param=field)
    assert_error(*raw(url, "POST", "/v1/chat/completions", _chat_body(logprobs=0)), 400, param="logprobs")
    assert_error(*raw(url, "POST", "/v1/chat/completions", _chat_body(tool_choice="auto")), 400, param="tool_choice")
    neutral = dict(tool_choice="none", logprobs=False, presence_penalty=0.0, frequency_penalty=0, top_logprobs=0)
    assert raw(url, "POST", "/v1/chat/completions", _chat_body(**neutral))[0] == 200
    assert raw(url, "POST", "/v1/completions", {**comp, "logprobs": None, "best_of": 1, "echo": False})[0] == 200


def test_a_token_budget_above_the_context_is_refused_like_openai(contract):
    url, eng = contract
    for field in ("max_tokens", "max_completion_tokens"):
        body = {**_chat_body(), field: CONTRACT_CONTEXT + 1}
        status, doc = raw(url, "POST", "/v1/chat/completions", body)
        assert_error(status, doc, 400, param=field)
        assert doc["error"]["code"] == "context_length_exceeded"
        assert f"maximum context length of {CONTRACT_CONTEXT} tokens" in doc["error"]["message"]
    status, doc = raw(url, "POST", "/v1/completions", {"model": NAME, "prompt": "hi", "max_tokens": 10**20})
    assert_error(status, doc, 400, param="max_tokens")
    assert eng.running == 0 and eng.waiting == 0  # refused before any engine work


def test_chat_roles_follow_the_rule_of_the_api_and_the_cli(contract):
    url, _ = contract
    path = "/v1/chat/completions"
    turns = [{"role": "developer", "content": "Be brief."}, {"role": "user", "content": "hi"}]
    assert raw(url, "POST", path, {**_chat_body(), "messages": turns})[0] == 200
    for bad in ([{"role": "tool", "content": "x"}, {"role": "user", "content": "hi"}],
                [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]):
        assert_error(*raw(url, "POST", path, {**_chat_body(), "messages": bad}), 400, param="messages")


def test_model_settings_name_the_draft_beam_width_apart_from_sampling(contract):
    url, _ = contract
    status, doc = raw(url, "GET", "/v1/models")
    settings = doc["data"][0]["settings"]
    assert status == 200 and settings["draft_top_k"] == 4 and "top_k" not in settings


# -- the page in headless Chromium ------------------------------------------------------------------------------
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(CHROMIUM is None, reason="Chromium is not installed (Debian: apt-get install chromium)")
def test_the_page_chats_in_headless_chromium(server, offline, tmp_path):
    from serve_cdp import Browser

    prompt = PROMPTS[0]
    with Browser(CHROMIUM, tmp_path / "profile", server + "/") as page:
        page.wait_for("document.getElementById('model').textContent.startsWith('smol')", 60)
        page.evaluate(f"document.getElementById('max_tokens').value = '{MAX_TOKENS}'")
        page.evaluate("document.getElementById('prompt').focus()")
        page.type_text(prompt)
        page.click("#send")
        page.wait_for("['done', 'error'].includes(document.getElementById('status').textContent)", 120)
        assert page.evaluate("document.getElementById('status').textContent") == "done", page.evaluate(
            "document.querySelector('.assistant .stats').textContent")
        shown = page.evaluate("document.querySelector('.assistant div').textContent")
        assert shown == offline[prompt].text
        spans = page.evaluate("document.querySelectorAll('.assistant span.step').length")
        assert 2 <= spans <= 1 + offline[prompt].stats.steps  # one span per step that added text
        assert "tau" in page.evaluate("document.getElementById('live').textContent")
        png = page.screenshot()
    (tmp_path / "serve-page.png").write_bytes(png)
    if os.environ.get("DYNDEPTH_SCREENSHOT"):
        with open(os.environ["DYNDEPTH_SCREENSHOT"], "wb") as f:
            f.write(png)
