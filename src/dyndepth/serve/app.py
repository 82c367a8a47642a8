"""The HTTP routes: parse and check a request, submit it to the engine, answer with JSON or server-sent events.

    POST /v1/chat/completions   POST /v1/completions     (stream or not)
    GET  /v1/models[/{model}]   GET /health   GET /metrics   GET /  (the chat page)

Every answer to a generation carries ``usage`` and, in the extra top-level field ``speculative``, the request's
own statistics (steps, tau, mean depth, time split); with ``stream: true`` each chunk also carries ``step``,
the step that committed its tokens, so a client can show what each step produced. Checks run in this order,
each before any engine work: size limit and API key (``Guard``), Content-Type (415), JSON, schema (422), model
name (404), values (400; max_tokens also against the context window), prompt length against the context window
(400), queue place (429).
"""

from __future__ import annotations

import asyncio
import hmac
import json
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from pydantic import ValidationError
from starlette.background import BackgroundTask
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from dyndepth.options import settings_json
from dyndepth.serve import errors
from dyndepth.serve.errors import APIError
from dyndepth.serve.metrics import CONTENT_TYPE, Metrics
from dyndepth.serve.schemas import ChatCompletionRequest, CompletionRequest, schema_error
from dyndepth.serve.worker import Done, Engine, Failed, Job, Step

PAGE = Path(__file__).with_name("static") / "index.html"
# No API key for these: a liveness probe, and the static page (it holds no data; it asks for the key).
OPEN_PATHS = ("/health", "/")
FINISH_REASONS = {"stop_token": "stop", "stop_string": "stop", "max_new_tokens": "length", "context": "length"}
# The page may run its own inline script and style and talk to this server only.
PAGE_POLICY = "default-src 'self'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; img-src 'self' data:"
CLIENT_GONE = 499  # nginx's "client closed request": counted in the metrics, never seen by a client


@dataclass
class Settings:
    model_name: str
    api_key: str | None = None
    request_timeout_s: float | None = 600.0
    max_body_bytes: int = 1 << 20
    default_max_tokens: int = 256
    cors_origins: tuple[str, ...] = ()


def create_app(engine: Engine, settings: Settings) -> FastAPI:
    """An app over a started engine. The engine's lifetime is the caller's: several apps may share one engine."""
    app = FastAPI(title="dyndepth", docs_url=None, redoc_url=None, openapi_url=None)  # no CDN-hosted doc pages
    metrics = Metrics(settings.model_name, engine)
    prompts = engine.prompts
    page = PAGE.read_text(encoding="utf-8")
    started = int(time.time())
    app.state.metrics, app.state.engine, app.state.settings = metrics, engine, settings

    if settings.cors_origins:
        from fastapi.middleware.cors import CORSMiddleware

        app.add_middleware(CORSMiddleware, allow_origins=list(settings.cors_origins), allow_methods=["GET", "POST"],
                           allow_headers=["Authorization", "Content-Type"])
    app.add_middleware(Guard, metrics=metrics, api_key=settings.api_key, max_body_bytes=settings.max_body_bytes)

    @app.exception_handler(APIError)
    async def _api_error(request, exc: APIError):
        return exc.response()

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request, exc: StarletteHTTPException):
        kind = "not_found_error" if exc.status_code == 404 else "invalid_request_error"
        message = {404: f"no route {request.method} {request.url.path}",
                   405: f"{request.method} is not allowed on {request.url.path}"}.get(exc.status_code, str(exc.detail))
        return APIError(exc.status_code, message, type=kind).response()

    @app.exception_handler(Exception)
    async def _unexpected(request, exc: Exception):  # logged by the server; the client gets one line
        return APIError(500, f"internal server error ({type(exc).__name__})", type="server_error",
                        code="internal_error").response()

    # -- read-only routes ---------------------------------------------------------------------------------------
    @app.get("/", include_in_schema=False)
    async def index():
        return HTMLResponse(page, headers={"Content-Security-Policy": PAGE_POLICY})

    @app.get("/health")
    async def health():
        if not engine.alive:
            return JSONResponse({"status": "engine stopped"}, status_code=503)
        return {"status": "ok", "model": settings.model_name, "running": engine.running, "waiting": engine.waiting}

    @app.get("/metrics")
    async def metrics_route():
        return Response(metrics.expose(), media_type=CONTENT_TYPE)

    def model_card() -> dict:
        return {"id": settings.model_name, "object": "model", "created": started, "owned_by": "dyndepth",
                "max_model_len": prompts.max_context, "settings": settings_json(engine.describe())}

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [model_card()]}

    @app.get("/v1/models/{model:path}")
    async def model(model: str):
        if model != settings.model_name:
            raise errors.model_not_found(model, settings.model_name)
        return model_card()

    # -- generation ---------------------------------------------------------------------------------------------
    async def parse(request: Request, schema):
        require_json(request.headers.get("content-type"))
        raw = await read_body(request, settings.max_body_bytes)
        try:
            doc = json.loads(raw, parse_constant=_no_constants)
        except (ValueError, RecursionError) as exc:
            raise APIError(400, f"the body is not valid JSON: {_first_line(exc)}", code="invalid_json") from None
        try:
            body = schema.model_validate(doc)
        except ValidationError as exc:
            raise schema_error(exc) from None
        if body.model != settings.model_name:
            raise errors.model_not_found(body.model, settings.model_name)
        return body

    def checked_options(body) -> dict:
        options = body.engine_options(settings.default_max_tokens)
        prompts.budget(options["max_new_tokens"], body.max_new_tokens(settings.default_max_tokens)[1])
        return options

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        body = await parse(request, ChatCompletionRequest)
        options = checked_options(body)
        ids = await run_in_threadpool(prompts.chat, body.template_messages())
        return await generate(request, body, ids, options, chat=True)

    @app.post("/v1/completions")
    async def completions(request: Request):
        body = await parse(request, CompletionRequest)
        options = checked_options(body)
        ids = await run_in_threadpool(prompts.text, body.prompt_value())
        return await generate(request, body, ids, options, chat=False)

    async def generate(request: Request, body, ids: list[int], options: dict, chat: bool):
        _, budget_field = body.max_new_tokens(settings.default_max_tokens)
        handle = engine.submit(Job(ids, options, settings.request_timeout_s, {"max_new_tokens": budget_field}))
        record = metrics.request(len(ids), handle.submitted)
        reply = Reply(settings.model_name, chat, len(ids))
        if body.stream:
            usage = bool(body.stream_options and body.stream_options.include_usage)
            # the background task also runs when the client left before the stream began
            return StreamingResponse(stream(handle, record, reply, usage), media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
                                     background=BackgroundTask(handle.cancel))
        consume = asyncio.ensure_future(collect(handle, record))
        watch = asyncio.ensure_future(_until_disconnected(request))
        try:
            await asyncio.wait({consume, watch}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            watch.cancel()
            gone = not consume.done()
            if gone:  # the client left (or the server is stopping): free the worker
                handle.cancel()
                consume.cancel()
        if gone:
            record.finish("abort", time.monotonic())
            return Response(status_code=CLIENT_GONE)
        text, stats = consume.result()
        return reply.whole(text, stats)

    return app


async def collect(handle, record) -> tuple[str, object]:
    texts = []
    async for event in handle:
        if isinstance(event, Step):
            record.step(event, handle.started)
            texts.append(event.text)
        elif isinstance(event, Done):
            record.finish(FINISH_REASONS.get(event.stats.stop_reason, "stop"), event.time)
            return "".join(texts), event.stats
        else:
            record.finish("abort" if event.error.status == 504 else "error", time.monotonic())
            raise event.error
    raise APIError(500, "the engine ended the request without an answer", type="server_error")


async def stream(handle, record, reply: "Reply", include_usage: bool):
    """Server-sent events: one chunk per step as it is committed, the final chunk, optional usage, [DONE]."""
    try:
        if reply.chat:
            yield _sse(reply.chunk({"role": "assistant", "content": ""}, None, include_usage))
        index = 0
        async for event in handle:
            if isinstance(event, Step):
                record.step(event, handle.started)
                yield _sse(reply.chunk(event.text, _step_info(index, event), include_usage))
                index += 1
            elif isinstance(event, Done):
                finish = FINISH_REASONS.get(event.stats.stop_reason, "stop")
                record.finish(finish, event.time)
                yield _sse(reply.final(finish, event.stats, include_usage))
                if include_usage:
                    yield _sse(reply.usage_chunk(event.stats))
                yield "data: [DONE]\n\n"
                return
            else:
                record.finish("abort" if event.error.status == 504 else "error", time.monotonic())
                yield _sse(event.error.body())
                yield "data: [DONE]\n\n"
                return
    finally:  # the client left (the response was cancelled) or the stream ended: both free the worker
        handle.cancel()
        record.finish("abort", time.monotonic())


class Reply:
    """OpenAI's response and chunk objects for one request."""

    def __init__(self, model: str, chat: bool, prompt_tokens: int):
        self.model, self.chat, self.prompt_tokens = model, chat, prompt_tokens
        self.id = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex
        self.created = int(time.time())
        self.object = "chat.completion" if chat else "text_completion"

    def _head(self, obj: str) -> dict:
        return {"id": self.id, "object": obj, "created": self.created, "model": self.model}

    def usage(self, stats) -> dict:
        return {"prompt_tokens": self.prompt_tokens, "completion_tokens": stats.new_tokens,
                "total_tokens": self.prompt_tokens + stats.new_tokens}

    def whole(self, text: str, stats) -> dict:
        finish = FINISH_REASONS.get(stats.stop_reason, "stop")
        if self.chat:
            choice = {"index": 0, "message": {"role": "assistant", "content": text}, "logprobs": None,
                      "finish_reason": finish}
        else:
            choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": finish}
        return {**self._head(self.object), "choices": [choice], "usage": self.usage(stats),
                "speculative": speculative(stats)}

    def _choice(self, content, finish: str | None) -> dict:
        if self.chat:
            delta = content if isinstance(content, dict) else ({} if content is None else {"content": content})
            return {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
        return {"index": 0, "text": content or "", "logprobs": None, "finish_reason": finish}

    def chunk(self, content, step: dict | None, include_usage: bool) -> dict:
        obj = "chat.completion.chunk" if self.chat else "text_completion"
        doc = {**self._head(obj), "choices": [self._choice(content, None)]}
        if include_usage:
            doc["usage"] = None
        if step is not None:
            doc["step"] = step
        return doc

    def final(self, finish: str, stats, include_usage: bool) -> dict:
        obj = "chat.completion.chunk" if self.chat else "text_completion"
        doc = {**self._head(obj), "choices": [self._choice(None, finish)], "speculative": speculative(stats)}
        if include_usage:
            doc["usage"] = None
        return doc

    def usage_chunk(self, stats) -> dict:
        obj = "chat.completion.chunk" if self.chat else "text_completion"
        return {**self._head(obj), "choices": [], "usage": self.usage(stats), "speculative": speculative(stats)}


def speculative(stats) -> dict:
    """The request's speculative-decoding statistics (the extra ``speculative`` field)."""
    steps = stats.step_stats
    return {"steps": stats.steps, "mean_accepted_tokens": round(stats.mean_accepted_tokens, 4),
            "mean_depth": round(stats.mean_depth, 4), "draft_time_s": round(stats.draft_time_s, 6),
            "verify_time_s": round(stats.verify_time_s, 6), "prefill_time_s": round(stats.prefill_time_s, 6),
            "draft_tokens": sum(s.tree_size - 1 for s in steps), "accepted_tokens": sum(s.accepted for s in steps),
            "stop_reason": stats.stop_reason}


def _step_info(index: int, event: Step) -> dict:
    """The step behind one chunk: index 0 is the prefill's first token; later ones are decoding steps."""
    s = event.step
    return {"index": index, "tokens": len(event.token_ids), "accepted": None if s is None else s.accepted,
            "depth": None if s is None else s.depth, "tree_size": None if s is None else s.tree_size}


def _sse(doc: dict) -> str:
    return f"data: {json.dumps(doc, ensure_ascii=False, allow_nan=False)}\n\n"


async def read_body(request: Request, limit: int) -> bytes:
    size, parts = 0, []
    async for part in request.stream():
        size += len(part)
        if size > limit:
            raise too_large(limit)
        parts.append(part)
    return b"".join(parts)


def require_json(content_type: str | None) -> None:
    """415 unless the body is declared JSON. A page from any origin may POST text/plain or a form without a CORS
    preflight; application/json needs one, which this server answers only for --cors-origin origins."""
    media = (content_type or "").split(";", 1)[0].strip().lower()
    if media != "application/json":
        shown = f"{content_type!r}" if content_type else "missing"
        raise APIError(415, f"the request body must be JSON sent with 'Content-Type: application/json' (it is "
                            f"{shown})", param="Content-Type", code="unsupported_media_type")


def too_large(limit: int) -> APIError:
    return APIError(413, f"the request body is over the server's limit of {limit} bytes", code="body_too_large")


async def _until_disconnected(request: Request) -> None:
    while not await request.is_disconnected():
        await asyncio.sleep(0.25)


def _no_constants(name: str):
    raise ValueError(f"{name} is not a JSON number")


def _first_line(exc: BaseException) -> str:
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__


class Guard:
    """ASGI middleware before every route: counts answers by status (an unexpected exception as 500), refuses a
    body declared over the size limit (413) and, with an API key, any request without ``Authorization: Bearer
    KEY`` (401; constant-time compare)."""

    def __init__(self, app, metrics: Metrics, api_key: str | None, max_body_bytes: int):
        self.app, self.metrics, self.max_body_bytes = app, metrics, max_body_bytes
        self.key = api_key.encode("utf-8") if api_key else None

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path = scope["path"]

        started = False

        async def counted(message):
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                self.metrics.http(path, message["status"])
            await send(message)

        headers = dict(scope.get("headers") or [])
        refusal = None
        if self.key is not None and path not in OPEN_PATHS and not self._authorised(headers.get(b"authorization")):
            refusal = APIError(401, "a valid API key is required: send the header 'Authorization: Bearer KEY'",
                               type="authentication_error", code="invalid_api_key").response(
                                   headers={"WWW-Authenticate": "Bearer"})
        else:
            declared = headers.get(b"content-length")
            if declared is not None and (not declared.isdigit() or int(declared) > self.max_body_bytes):
                refusal = too_large(self.max_body_bytes).response() if declared.isdigit() else APIError(
                    400, "the Content-Length header is not a number", code="invalid_header").response()
        if refusal is not None:
            await refusal(scope, receive, counted)
            return
        try:
            await self.app(scope, receive, counted)
        except Exception:
            # Starlette answers an unexpected exception with its 500 in the outermost middleware, outside this
            # one: count that answer here (a stream that had begun was counted with its own status).
            if not started:
                self.metrics.http(path, 500)
            raise

    def _authorised(self, header: bytes | None) -> bool:
        if not header:
            return False
        scheme, _, token = header.partition(b" ")
        return scheme.lower() == b"bearer" and hmac.compare_digest(token.strip(), self.key)
