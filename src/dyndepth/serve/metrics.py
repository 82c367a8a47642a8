"""Prometheus metrics of one app, in a registry of its own (several apps can live in one process).

Metrics that vLLM also exports keep vLLM's names and meanings, so existing dashboards work; speculative decoding
is counted per step, as vLLM counts a "draft":

    vllm:spec_decode_num_drafts_total                steps that verified a drafted tree (tree_size > 1)
    vllm:spec_decode_num_draft_tokens_total          drafted tokens verified: tree_size - 1 per step
    vllm:spec_decode_num_accepted_tokens_total       drafted tokens the target accepted (a per step)
    vllm:spec_decode_num_accepted_tokens_per_pos_total{position=p}   steps that accepted a token at depth p + 1

so mean accepted tokens (tau) = 1 + accepted / drafts, and acceptance rate = accepted / draft tokens (small with
tree drafting: a tree verifies many siblings of which at most one per depth can be accepted). The full list,
with dyndepth's own metrics (``dyndepth_*``), is in docs/SERVING.md.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from dyndepth.serve.worker import Step

LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0, 160.0, 640.0)
DEPTH_BUCKETS = tuple(range(0, 17)) + (24, 32, 48, 64)
BATCH_BUCKETS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64)
BATCH_TOKEN_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048)
ROUTES = ("/", "/health", "/metrics", "/v1/models", "/v1/chat/completions", "/v1/completions")
CONTENT_TYPE = CONTENT_TYPE_LATEST


class Metrics:
    def __init__(self, model_name: str, engine):
        disable_created_metrics()  # no *_created series: half the output, and no dashboard reads them
        r = self.registry = CollectorRegistry()
        self.model = model_name
        m = ["model_name"]
        self.requests = Counter("dyndepth_http_requests", "HTTP requests answered, by route and status code",
                                ["route", "status"], registry=r)
        self.success = Counter("vllm:request_success", "Finished generations, by finish reason (stop, length, "
                               "abort: client gone or timed out, error)", m + ["finished_reason"], registry=r)
        self.prompt_tokens = Counter("vllm:prompt_tokens", "Prompt tokens of the generations started", m, registry=r)
        self.generation_tokens = Counter("vllm:generation_tokens", "Tokens generated and sent to clients", m,
                                         registry=r)
        Gauge("vllm:num_requests_running", "Generations running on the engine", m,
              registry=r).labels(model_name).set_function(lambda: engine.running)
        Gauge("vllm:num_requests_waiting", "Requests waiting in the engine's queue", m,
              registry=r).labels(model_name).set_function(lambda: engine.waiting)
        self.ttft = Histogram("vllm:time_to_first_token_seconds", "From the request's arrival in the queue to its "
                              "first token", m, buckets=LATENCY_BUCKETS, registry=r)
        self.itl = Histogram("vllm:inter_token_latency_seconds", "Between two consecutive steps of one request "
                             "(one step commits one or more tokens)", m, buckets=LATENCY_BUCKETS, registry=r)
        self.e2e = Histogram("vllm:e2e_request_latency_seconds", "From arrival to the last token", m,
                             buckets=LATENCY_BUCKETS, registry=r)
        self.queue_time = Histogram("vllm:request_queue_time_seconds", "Time waiting in the queue", m,
                                    buckets=LATENCY_BUCKETS, registry=r)
        self.drafts = Counter("vllm:spec_decode_num_drafts", "Steps that verified a drafted tree", m, registry=r)
        self.draft_tokens = Counter("vllm:spec_decode_num_draft_tokens", "Drafted tokens verified (tree size - 1 "
                                    "per step)", m, registry=r)
        self.accepted = Counter("vllm:spec_decode_num_accepted_tokens", "Drafted tokens accepted by the target",
                                m, registry=r)
        self.accepted_per_pos = Counter("vllm:spec_decode_num_accepted_tokens_per_pos", "Steps that accepted a "
                                        "drafted token at this position (0 = depth 1)", m + ["position"], registry=r)
        self.depth = Histogram("dyndepth_spec_decode_draft_depth", "Levels the draft head grew per step (the "
                               "depth policy's choice)", m, buckets=DEPTH_BUCKETS, registry=r)
        self.steps = Counter("dyndepth_steps", "Decoding steps (a prefill's first token is not a step)", m,
                             registry=r)
        batch = Histogram("dyndepth_batch_size", "Rows (requests) in each engine step's target forward", m,
                          buckets=BATCH_BUCKETS, registry=r).labels(model_name)
        batch_tokens = Histogram("dyndepth_batch_tokens", "Tokens in each engine step's target forward (every row's "
                                 "tree or prompt chunk)", m, buckets=BATCH_TOKEN_BUCKETS, registry=r).labels(model_name)
        if hasattr(engine, "listen"):
            engine.listen(lambda rows, tokens: (batch.observe(rows), batch_tokens.observe(tokens)))

    def expose(self) -> bytes:
        return generate_latest(self.registry)

    def http(self, path: str, status: int) -> None:
        route = path if path in ROUTES or path.startswith("/v1/models/") else "other"
        if route.startswith("/v1/models/"):
            route = "/v1/models/{model}"
        self.requests.labels(route, str(status)).inc()

    def request(self, prompt_tokens: int, submitted: float) -> "RequestMetrics":
        self.prompt_tokens.labels(self.model).inc(prompt_tokens)
        return RequestMetrics(self, submitted)


class RequestMetrics:
    """Counts one request's events as they reach its client."""

    def __init__(self, metrics: Metrics, submitted: float):
        self.m = metrics
        self.submitted = submitted
        self.last: float | None = None
        self.finished = False

    def step(self, event: Step, started: float | None) -> None:
        m, model = self.m, self.m.model
        if event.token_ids:
            m.generation_tokens.labels(model).inc(len(event.token_ids))
            if self.last is None:
                m.ttft.labels(model).observe(event.time - self.submitted)
                if started is not None:
                    m.queue_time.labels(model).observe(max(0.0, started - self.submitted))
            else:
                m.itl.labels(model).observe(event.time - self.last)
            self.last = event.time
        s = event.step
        if s is not None:
            m.steps.labels(model).inc()
            m.depth.labels(model).observe(s.depth)
            if s.tree_size > 1:
                m.drafts.labels(model).inc()
                m.draft_tokens.labels(model).inc(s.tree_size - 1)
                m.accepted.labels(model).inc(s.accepted)
                for p in range(s.accepted):
                    m.accepted_per_pos.labels(model, str(p)).inc()

    def finish(self, reason: str, now: float) -> None:
        if self.finished:
            return
        self.finished = True
        self.m.success.labels(self.m.model, reason).inc()
        if reason in ("stop", "length"):
            self.m.e2e.labels(self.m.model).observe(now - self.submitted)
