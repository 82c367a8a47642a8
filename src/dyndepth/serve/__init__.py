"""``dyndepth serve``: an OpenAI-compatible HTTP server over one SpeculativeDecoder.

One file per concern:

    cli.py      the ``dyndepth serve`` subcommand: options, building the decoder, running uvicorn
    app.py      the HTTP routes (FastAPI): parse, check, submit to the engine, answer (JSON or SSE)
    schemas.py  the pydantic request models (OpenAI's field names) and their conversion to engine options
    prompts.py  chat template and tokenisation for the HTTP layer, and the context-window check
    worker.py   the engine: one worker thread owns the decoder; a bounded FIFO queue; handles with events
    metrics.py  Prometheus metrics (vLLM's names for the shared ones), one registry per app
    errors.py   OpenAI's error body and the mapping of every failure to a status code
    static/     the chat page served at ``/`` (one HTML file, no external resources)

and, for several engine replicas on Ray Serve (the 'ray' extra; docs/SCALING.md):

    ray_app.py      the two deployments (engine replicas, the ingress running this app) and the app builder
    ray_engine.py   RemoteEngine: the engine interface over the engine replicas (a lost replica -> 503)
    ray_metrics.py  per-replica series added to /metrics
    ray_cli.py      ``dyndepth serve --replicas N`` / ``--ray-address ADDR``

The HTTP layer talks to the engine only through ``Engine.submit(job) -> Handle`` and the handle's events, so a
batched engine can replace the worker without touching the routes. See docs/SERVING.md.
"""
