"""Per-replica series for ``/metrics`` of the Ray Serve app, next to the app's own metrics.

Every request passes through the ingress, so the app's metrics (docs/SERVING.md) already add up all engine
replicas. These series split the load by replica (label ``replica``: Ray Serve's replica id, as in
``ray list actors`` and Ray's own ``ray_serve_*`` metrics):

    dyndepth_replica_requests_total{model_name, replica}   requests a replica took
    dyndepth_replica_requests_running{model_name, replica} requests on a replica now (running or in its queue)
    dyndepth_replica_lost_total{model_name, replica}       requests ended with 503 because the replica stopped
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge


class ReplicaMetrics:
    def __init__(self, registry, model_name: str):
        m = ["model_name", "replica"]
        self.model = model_name
        self.requests = Counter("dyndepth_replica_requests", "Requests an engine replica took", m, registry=registry)
        self.running = Gauge("dyndepth_replica_requests_running", "Requests on an engine replica now (running or "
                             "in its queue)", m, registry=registry)
        self.lost_total = Counter("dyndepth_replica_lost", "Requests ended with 503 because their replica stopped", m,
                            registry=registry)

    def accepted(self, replica: str) -> None:
        self.requests.labels(self.model, replica).inc()
        self.running.labels(self.model, replica).inc()

    def finished(self, replica: str) -> None:
        self.running.labels(self.model, replica).dec()

    def lost(self, replica: str) -> None:
        self.lost_total.labels(self.model, replica).inc()
