"""``dyndepth serve --replicas N`` / ``--ray-address ADDR``: the Ray Serve app from the command line.

Without ``--ray-address`` (or with ``--ray-address local``, Ray's name for "a new local instance"), a Ray
instance is started on this machine and stopped on exit; with ``--ray-address ADDR`` (``auto``, ``HOST:6379``,
``ray://HOST:10001``) the app is deployed to that cluster and deleted from it on exit. The options are those of
``dyndepth serve``; ``--threads`` is per replica (default on a local instance: this machine's cores shared out
between the replicas) and is also each replica's ``num_cpus``. The app is ``ray_app.build_app``.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading

from dyndepth import validate
from dyndepth.errors import DyndepthError

CLI_ONLY = {"host", "port", "log_level", "replicas", "ray_address", "func", "command"}



def app_options(args) -> dict:
    """The app's options from the parsed command line: every option of ``dyndepth serve`` by its dest (the app maps
    dests and switches back to their flags), without those that only the command line uses."""
    return {k: v for k, v in vars(args).items() if k not in CLI_ONLY and v not in (None, [])}

def run_ray(args) -> int:
    validate.integer("--replicas", args.replicas, lo=1, hi=1024)
    local = args.ray_address in (None, "local")
    if local:  # Ray's own traffic on loopback (else it uses this machine's address), and no usage report
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    try:
        import ray
        from ray import serve

        from dyndepth.serve import ray_app
    except ModuleNotFoundError as exc:
        raise DyndepthError(f"--replicas and --ray-address need the 'ray' extra ({exc.name} is missing): "
                            f"pip install 'dyndepth[ray]'") from None
    cores = os.cpu_count() or 1
    if local:
        if args.threads is None:
            args.threads = max(1, cores // args.replicas)
        validate.threads(args.threads)
    if local and args.device == "cpu" and args.replicas * args.threads > cores:
        raise DyndepthError(f"--replicas {args.replicas} x --threads {args.threads} needs "
                            f"{args.replicas * args.threads} CPUs; this machine has {cores} (lower --threads or "
                            f"--replicas)")
    options = app_options(args)
    app = ray_app.build_app(options, num_replicas=args.replicas)  # every check before Ray starts

    log = {"logging_level": args.log_level.upper(), "log_to_driver": args.log_level in ("info", "debug")}
    logging.getLogger("ray.serve").setLevel(args.log_level.upper())
    if local:
        ray.init(_node_ip_address="127.0.0.1", include_dashboard=False, **log)
    else:
        ray.init(address=args.ray_address, **log)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):  # after ray.init, which installs a handler that aborts
        signal.signal(sig, lambda *_: stop.set())
    try:
        serve.start(http_options={"host": args.host, "port": args.port},
                    proxy_location="HeadOnly" if local else "EveryNode")
        try:
            serve.run(app, name=ray_app.APP_NAME, route_prefix="/", blocking=False)
        except RuntimeError as exc:
            lines = [ln for ln in str(exc).splitlines() if ln.strip()]
            raise DyndepthError(f"the Ray Serve app did not start: {lines[-1] if lines else exc}") from None
        where = "a local Ray instance" if local else f"the Ray cluster at {args.ray_address}"
        host = f"[{args.host}]" if ":" in args.host else args.host
        print(f"dyndepth serve: {options.get('served_model_name') or args.model}, {args.replicas} replicas on "
              f"{where}, on http://{host}:{args.port}", file=sys.stderr)
        while not stop.wait(1.0):
            pass
    finally:
        try:
            if local:
                serve.shutdown()
            else:
                serve.delete(ray_app.APP_NAME)
        finally:
            ray.shutdown()
    return 0
