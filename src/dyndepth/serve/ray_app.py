"""``dyndepth serve`` on Ray Serve: engine replicas behind one ingress, on one machine or a Ray cluster.

    serve run dyndepth.serve.ray_app:app_builder model=smollm2-135m-instruct dtype=float32 threads=1
    serve deploy docs/ray-serve.yaml              # on a running cluster; the config documents every field
    dyndepth serve --replicas 2 ...               # a local Ray instance (ray_cli.py); --ray-address joins one

Two deployments (docs/SCALING.md):

    DyndepthEngine   N replicas (num_replicas or autoscaling_config); each loads the model and owns one
                     ``worker.Engine`` (the continuous-batching engine, --max-batch-size rows);
                     ``max_ongoing_requests`` = twice its batch by default (a batch running, a batch ready to
                     start; Ray's default of 5 would cap a batch of 8)
    DyndepthIngress  the HTTP app of ``dyndepth serve`` itself (``create_app``: routes, checks, API key, error
                     bodies, SSE, the page, /metrics) over a ``RemoteEngine`` that sends each job to an engine
                     replica through Ray's router; it holds no model

The ingress is what survives an engine replica's death, so it is where a lost request becomes a clean 503
body or a stream's error event (``ray_engine.py``). Both take the options of ``dyndepth serve`` as a dict
(``args`` of the config: the long option names with ``_``), checked like the command line's.
"""

from __future__ import annotations

import argparse
import collections
import os

from ray import serve

from dyndepth.errors import DyndepthError

APP_NAME = "dyndepth"
# Options of `dyndepth serve` that Ray Serve's own config sets instead (http_options, num_replicas).
NOT_IN_ARGS = {"host": "http_options.host", "port": "http_options.port", "log_level": "logging_config",
               "replicas": "num_replicas of DyndepthEngine", "ray_address": "the cluster you deploy to"}
INGRESS_MAX_ONGOING = 1024
REPLICA_QUEUE = 4096  # concurrent client connections the ingress takes (Ray's default 5 would cap them)


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # a bad option in a config file is one line, not a usage message and exit
        raise DyndepthError(f"dyndepth Ray app: {message}")


def parse_options(options: dict) -> argparse.Namespace:
    """The options of ``dyndepth serve`` from a dict (``{"model": ..., "draft_top_k": 4}``), checked like the
    command line's; ``api_key`` defaults to ``$DYNDEPTH_API_KEY`` of the process that reads them."""
    from dyndepth.options import check_decoder_options
    from dyndepth.serve.cli import check_server_options, register

    parser = _Parser(prog="dyndepth")
    subparsers = parser.add_subparsers(dest="command")
    register(subparsers)
    actions = subparsers.choices["serve"]._actions
    argv = ["serve"]
    for key, value in (options or {}).items():
        if key in NOT_IN_ARGS:
            raise DyndepthError(f"dyndepth Ray app: '{key}' is not an app argument; set {NOT_IN_ARGS[key]} in "
                                f"the Serve config instead")
        # a key is an option's long name with "_" (draft_top_k, no_fast_path) or its dest (vars(args) of the
        # command line: tree_top_k, fast_path=False for --no-fast-path)
        flag = "--" + key.replace("_", "-")
        by_flag = next((a for a in actions if flag in a.option_strings), None)
        dests = [a for a in actions if a.dest == key and a.option_strings]  # switches may share one dest
        by_dest = next((a for a in dests if a.nargs == 0 and getattr(a, "const", None) == value), None) or \
            next((a for a in dests if a.nargs != 0), None) or (dests[0] if dests else None)
        if by_flag is None and by_dest is not None:
            if by_dest.nargs == 0:  # a switch: given when the value is not its default
                if value != by_dest.default:
                    argv.append(by_dest.option_strings[-1])
                continue
            flag = by_dest.option_strings[-1]
        elif by_flag is not None and by_flag.nargs == 0:  # a switch by its own name: no_fast_path: true
            if value not in (True, False):
                raise DyndepthError(f"dyndepth Ray app: '{key}' is a switch: true or false, got {value!r}")
            if value:
                argv.append(flag)
            continue
        for v in value if isinstance(value, (list, tuple)) else [value]:
            if v is not None:
                argv += [flag, str(v)]
    args = parser.parse_args(argv)
    if args.step_log:
        raise DyndepthError("dyndepth Ray app: step_log logs one process's engine; use dyndepth serve without Ray")
    if args.api_key is None:
        args.api_key = os.environ.get("DYNDEPTH_API_KEY") or None
    check_server_options(args)
    # the model-free decoder checks; --threads is checked against the cores where a replica runs, not here
    check_decoder_options(argparse.Namespace(**{**vars(args), "threads": None}))
    if args.threads is not None and args.threads < 1:
        raise DyndepthError(f"dyndepth Ray app: threads must be >= 1, got {args.threads}")
    return args


def settings_from(args):
    from dyndepth.serve.app import Settings

    return Settings(model_name=args.served_model_name or args.model, api_key=args.api_key,
                    request_timeout_s=args.request_timeout or None, max_body_bytes=args.max_body_bytes,
                    default_max_tokens=args.default_max_tokens, cors_origins=tuple(args.cors_origin))


def batch_size(args) -> int:
    """The engine's batch: --max-batch-size, else the engine's default for the device (8 on a CPU)."""
    from dyndepth.engine.scheduler import DEFAULT_MAX_BATCH

    return int(args.max_batch_size or DEFAULT_MAX_BATCH["cuda" if args.device.startswith("cuda") else "cpu"])


@serve.deployment(name="DyndepthEngine", health_check_period_s=10, health_check_timeout_s=30)
class DyndepthEngine:
    """One engine replica: the model, its draft head and one ``worker.Engine``."""

    def __init__(self, options: dict):
        from dyndepth import validate
        from dyndepth.options import build_decoder
        from dyndepth.serve.worker import Engine

        args = parse_options(options)
        self.replica = serve.get_replica_context().replica_id.unique_id

        def build():
            decoder = build_decoder(args)
            validate.max_new_tokens_fit(args.default_max_tokens, decoder.target.max_context,
                                        option="--default-max-tokens")
            return decoder

        # Built in the engine's own thread (Engine.launch: one OpenMP pool per process). The router sends at most
        # max_ongoing_requests jobs, far fewer than REPLICA_QUEUE: the queue that can fill up, and answer 429, is
        # the ingress's
        self.engine = Engine.launch(build, max_queue=REPLICA_QUEUE, max_batch_size=args.max_batch_size,
                                    prefill_chunk=args.prefill_chunk)
        self.cancelled = 0  # jobs whose call the ingress cancelled (client gone, timeout)
        # each engine step's (rows, tokens), sent to the ingress with the next event of any job (its metrics)
        self._steps: collections.deque = collections.deque()
        self.engine.listen(lambda rows, tokens: self._steps.append((rows, tokens)))

    def spec(self) -> dict:
        """What the ingress needs to tokenise, check and describe without the model."""
        p = self.engine.prompts
        return {"tokenizer": p.tokenizer, "max_context": p.max_context, "tree_tokens": p.tree_tokens,
                "vocab_size": p.vocab_size, "describe": self.engine.describe(), "replica": self.replica}

    def stats(self) -> dict:
        """This replica's engine: jobs running and waiting, and jobs cancelled by the ingress so far."""
        return {"replica": self.replica, "running": self.engine.running, "waiting": self.engine.waiting,
                "cancelled": self.cancelled}

    async def generate(self, job):
        """The job's events, as ``ray_engine`` describes them; cancelling this call cancels the job."""
        from dyndepth.serve import errors
        from dyndepth.serve.worker import Done, Step

        try:
            handle = self.engine.submit(job)
        except errors.APIError as exc:
            yield _failed(exc)
            return
        ended = False
        try:
            yield ("accepted", self.replica)
            first = True
            async for event in handle:
                if self._steps:
                    yield ("batch", [self._steps.popleft() for _ in range(len(self._steps))])
                if isinstance(event, Step):
                    waited = handle.started - handle.submitted if first and handle.started else None
                    first = False
                    yield ("step", event.token_ids, event.text, event.step, waited)
                else:
                    ended = True
                    yield ("done", event.stats) if isinstance(event, Done) else _failed(event.error)
        finally:  # the job ended, or the ingress cancelled the call (client gone, timeout): end the job
            if not ended:
                self.cancelled += 1
            handle.cancel()

    def check_health(self) -> None:
        """Ray Serve calls this every health_check_period_s; a raise makes it replace the replica."""
        if not self.engine.alive:
            raise RuntimeError("the engine's worker thread has stopped")

    def __del__(self):
        engine = getattr(self, "engine", None)
        if engine is not None:
            engine.close()


def _failed(exc) -> tuple:
    return ("failed", exc.status, exc.message, exc.type, exc.param, exc.code)


@serve.deployment(name="DyndepthIngress", max_ongoing_requests=INGRESS_MAX_ONGOING,
                  ray_actor_options={"num_cpus": 0})
@serve.ingress()
class DyndepthIngress:
    """The HTTP app of ``dyndepth serve`` over the engine replicas."""

    def __init__(self, engine, options: dict):
        self._engine_handle = engine
        self._options = options

    async def __serve_build_asgi_app__(self):
        from dyndepth.serve.app import create_app
        from dyndepth.serve.ray_engine import RemoteEngine
        from dyndepth.serve.ray_metrics import ReplicaMetrics

        args = parse_options(self._options)
        settings = settings_from(args)
        spec = await self._engine_handle.spec.remote()
        self.engine = RemoteEngine(self._engine_handle, spec, max_queue=args.max_queue)
        app = create_app(self.engine, settings)
        self.engine.replica_metrics = ReplicaMetrics(app.state.metrics.registry, settings.model_name)
        return app


def build_app(options: dict, num_replicas: int | None = None, **engine_deployment_options):
    """The bound application: the ingress over ``num_replicas`` engine replicas (None: the config's
    ``num_replicas`` or ``autoscaling_config``; 1 when it sets neither). engine_deployment_options: more
    ``DyndepthEngine.options`` (a Serve config's ``deployments`` section overrides all of these)."""
    args = parse_options(options)  # every check before anything is deployed
    gpus = 1 if args.device.startswith("cuda") else 0
    engine_options = {
        "max_ongoing_requests": 2 * batch_size(args),
        "ray_actor_options": {"num_cpus": args.threads or 1, "num_gpus": gpus},
        # a replica being stopped (downscaling, a redeploy) finishes its requests first
        "graceful_shutdown_timeout_s": max(20.0, args.request_timeout or 600.0),
        **({"num_replicas": num_replicas} if num_replicas else {}),
        **engine_deployment_options,
    }
    return DyndepthIngress.bind(DyndepthEngine.options(**engine_options).bind(options), options)


def app_builder(args: dict):
    """The application builder of ``serve run`` / ``serve deploy`` (``import_path:
    dyndepth.serve.ray_app:app_builder``): ``args`` are the options of ``dyndepth serve``."""
    return build_app(dict(args or {}))
