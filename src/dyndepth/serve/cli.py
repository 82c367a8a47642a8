"""``dyndepth serve``: load one model with its draft head and serve it over an OpenAI-compatible HTTP API.

    dyndepth serve --model smollm2-135m-instruct --dtype float32 [--port 8000] [--api-key KEY]

Binds 127.0.0.1 unless ``--host`` says otherwise; a non-loopback address without ``--api-key`` is allowed but
warned about. Every option is checked before the model loads. docs/SERVING.md is the guide.
"""

from __future__ import annotations

import ipaddress
import os
import sys
from pathlib import Path

from dyndepth import validate
from dyndepth.engine.steplog import StepLog
from dyndepth.errors import DyndepthError
from dyndepth.options import add_decoder_options


def register(sub) -> None:
    p = sub.add_parser("serve", help="serve a model over an OpenAI-compatible HTTP API (needs the 'serve' extra)")
    add_decoder_options(p)
    g = p.add_argument_group("server")
    g.add_argument("--host", default="127.0.0.1", metavar="ADDR",
                   help="address to bind (default: %(default)s, this machine only)")
    g.add_argument("--port", type=int, default=8000, metavar="PORT", help="TCP port (default: %(default)s)")
    g.add_argument("--api-key", default=None, metavar="KEY",
                   help="require 'Authorization: Bearer KEY' on every route but /health and the page "
                        "(default: $DYNDEPTH_API_KEY, else none)")
    g.add_argument("--max-queue", type=int, default=64, metavar="N",
                   help="requests that may wait for the engine; more get 429 (default: %(default)s)")
    g.add_argument("--max-batch-size", type=int, default=None, metavar="N",
                   help="requests decoded together, each step verifying every row's tree in one forward; 1 = one "
                        "request at a time (default: 8 on a CPU, 64 on a GPU)")
    g.add_argument("--suffix-cache", type=int, default=None, metavar="N",
                   help="with --drafter suffix, hybrid or switch: the suffix matches also search the outputs of the "
                        "last N requests (a FIFO, as SuffixDecoding's global tree; default 0: none)")
    g.add_argument("--prefill-chunk", type=int, default=None, metavar="N",
                   help="prompt tokens a step takes while other requests decode, so their streams keep flowing "
                        "(default: 128 on a CPU, 2048 on a GPU)")
    g.add_argument("--step-log", default=None, metavar="FILE",
                   help="append one JSON line per engine step (rows, prompt tokens, drafted rows, committed "
                        "tokens, draft and verify seconds) to FILE: where the time goes (docs/SERVING.md)")
    g.add_argument("--request-timeout", type=float, default=600.0, metavar="S",
                   help="seconds from arrival (queue included) after which a request ends with 504 (default: "
                        "%(default)s; 0 = none)")
    g.add_argument("--served-model-name", default=None, metavar="NAME",
                   help="the model name clients send (default: --model)")
    g.add_argument("--default-max-tokens", type=int, default=256, metavar="N",
                   help="token budget when a request sets neither max_tokens nor max_completion_tokens "
                        "(default: %(default)s)")
    g.add_argument("--max-body-bytes", type=int, default=1 << 20, metavar="N",
                   help="request size limit (default: 1 MiB)")
    g.add_argument("--cors-origin", action="append", default=[], metavar="ORIGIN",
                   help="allow browser pages from ORIGIN to call the API (repeatable; default: none)")
    g.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"],
                   help="uvicorn's log level: what the server logs, access lines included at info (default: "
                        "%(default)s)")
    # -- Ray Serve: several engine replicas, or a Ray cluster (ray_cli.py, docs/SCALING.md) --------------------
    r = p.add_argument_group("replicas (Ray Serve; needs the 'ray' extra)")
    r.add_argument("--replicas", type=int, default=1, metavar="N",
                   help="engine replicas, each with its own model and --threads threads, behind Ray Serve's router; "
                        "1 without --ray-address is this single process, no Ray (default: %(default)s)")
    r.add_argument("--ray-address", default=None, metavar="ADDR",
                   help="deploy to this Ray cluster ('auto', HOST:6379, ray://HOST:10001) instead of a local Ray "
                        "instance; 'local' starts a local one even for --replicas 1")
    # -- end Ray Serve ------------------------------------------------------------------------------------------
    p.set_defaults(func=run)


def check_server_options(args) -> None:
    """Every server option, before the model loads."""
    validate.integer("--port", args.port, lo=1, hi=65535)
    validate.integer("--max-queue", args.max_queue, lo=1)
    if args.max_batch_size is not None:
        validate.integer("--max-batch-size", args.max_batch_size, lo=1, hi=1024)
    if args.prefill_chunk is not None:
        validate.integer("--prefill-chunk", args.prefill_chunk, lo=1)
    validate.number("--request-timeout", args.request_timeout, lo=0.0)
    validate.integer("--default-max-tokens", args.default_max_tokens, lo=1)
    validate.integer("--max-body-bytes", args.max_body_bytes, lo=1024)
    if args.api_key is not None and not args.api_key.strip():
        raise DyndepthError("--api-key must not be empty")
    if args.served_model_name is not None and not args.served_model_name.strip():
        raise DyndepthError("--served-model-name must not be empty (clients send it as 'model')")
    if getattr(args, "step_log", None):
        if args.replicas != 1 or args.ray_address:
            raise DyndepthError("--step-log logs this process's engine; it does not apply with --replicas or "
                                "--ray-address")
        parent = Path(args.step_log).expanduser().parent
        if not parent.is_dir():
            raise DyndepthError(f"--step-log: folder {parent} does not exist")
    for origin in args.cors_origin:
        if origin == "*":
            raise DyndepthError("--cors-origin '*' would let any web page use this server; name the origins")
        check_origin(origin)


def check_origin(origin: str) -> None:
    """A browser's Origin header is scheme://host[:port] and nothing else; CORS compares it with ours exactly, so
    anything else would never match (and is most likely a typo)."""
    from urllib.parse import urlsplit

    try:
        u = urlsplit(origin)
        u.port  # noqa: B018 - reading it raises ValueError for a port that is not a number in 0..65535
    except ValueError:
        u = None
    if u is None or not (u.scheme in ("http", "https") and u.hostname and not u.username and not u.password
                         and u.path == "" and not u.query and not u.fragment and origin == origin.strip()):
        raise DyndepthError(f"--cors-origin {origin!r} is not an origin: write scheme://host[:port] without a path, "
                            f"e.g. http://localhost:3000")


def bind(host: str, port: int) -> list:
    """Bind the listening sockets now, before the model loads, so a busy port or a foreign address is one line
    at once; uvicorn serves on these sockets (no window in which another process could take the port)."""
    import socket

    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise DyndepthError(f"--host {host!r} cannot be resolved ({exc.strerror})") from None
    sockets = []
    try:
        for family, kind, proto, _, address in dict.fromkeys((i[0], i[1], i[2], i[3], i[4]) for i in infos):
            sock = socket.socket(family, kind, proto)
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6 and hasattr(socket, "IPPROTO_IPV6"):
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind(address)
    except OSError as exc:
        for sock in sockets:
            sock.close()
        import errno

        why = "is already in use (another server?); pick another --port" if exc.errno == errno.EADDRINUSE else \
            f"cannot be bound ({exc.strerror})"
        raise DyndepthError(f"--host {host} --port {port}: the address {why}") from None
    return sockets


def run(args) -> int:
    try:
        import uvicorn

        from dyndepth.serve.app import Settings, create_app
        from dyndepth.serve.worker import Engine
    except ModuleNotFoundError as exc:
        raise DyndepthError(f"dyndepth serve needs the 'serve' extra ({exc.name} is missing): "
                            f"pip install 'dyndepth[serve]'") from None
    if args.api_key is None:
        args.api_key = os.environ.get("DYNDEPTH_API_KEY") or None
    check_server_options(args)
    if not _is_loopback(args.host) and not args.api_key:
        print(f"warning: serving on {args.host} without --api-key: anyone who can reach this address can use "
              f"the model", file=sys.stderr)
    if args.replicas != 1 or args.ray_address:  # -- Ray Serve (ray_cli.py, docs/SCALING.md) --
        from dyndepth.serve.ray_cli import run_ray

        return run_ray(args)
    from dyndepth.options import check_decoder_options

    check_decoder_options(args)
    sockets = bind(args.host, args.port)
    engine = step_log = None
    try:
        step_log = StepLog(Path(args.step_log).expanduser()) if args.step_log else None
        engine = Engine.launch(lambda: _decoder(args), max_queue=args.max_queue, max_batch_size=args.max_batch_size,
                               prefill_chunk=args.prefill_chunk, step_log=step_log)  # built in the engine's thread
        dec = engine.decoder
        settings = Settings(model_name=args.served_model_name or args.model, api_key=args.api_key,
                            request_timeout_s=args.request_timeout or None, max_body_bytes=args.max_body_bytes,
                            default_max_tokens=args.default_max_tokens, cors_origins=tuple(args.cors_origin))
        app = create_app(engine, settings)
        print(f"dyndepth serve: {settings.model_name} ({dec.describe()}) on "
              f"http://{_url_host(args.host)}:{args.port}", file=sys.stderr)
        config = uvicorn.Config(app, host=args.host, port=args.port, log_level=args.log_level,
                                timeout_graceful_shutdown=5)
        uvicorn.Server(config).run(sockets=sockets)
    finally:
        if engine is not None:
            engine.close()
        if step_log is not None:
            step_log.close()
        for sock in sockets:
            sock.close()
    return 0


def _decoder(args):
    from dyndepth.options import build_decoder

    dec = build_decoder(args)
    validate.max_new_tokens_fit(args.default_max_tokens, dec.target.max_context, option="--default-max-tokens")
    return dec


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host
