"""The Prometheus endpoint (``[crio.metrics]``), served by prometheus_client.

What is measured, all under the ``crio_fast_`` prefix:

* ``operations_latency_seconds{operation,code}`` (histogram) and
  ``operations_total{operation,code}``: every CRI call, observed in the
  servicer wrappers of server/base.py;
* ``errors_total{kind}``: failed calls by error class (NotFound, Internal, ...);
* ``image_pulls_total{outcome}``, ``image_pulled_bytes_total`` (compressed
  bytes downloaded), ``image_layer_pull_seconds`` (histogram per layer);
* ``containers{state}`` and ``pods{state}``: read from the store at scrape time;
* ``container_oom_kills_total`` and ``monitor_gone_total`` (pods whose
  monitor was found dead), counted from container events and at recovery;
* ``container_events_total{type}``.

The registry belongs to the daemon (not prometheus_client's global one), so
several daemons in one process do not collide.
"""

from __future__ import annotations

import logging
import threading
from typing import TYPE_CHECKING, Iterable

from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from crio_fast.api import api_pb2 as pb
from crio_fast.server import base

if TYPE_CHECKING:
    from crio_fast.server.engine import Engine

log = logging.getLogger("crio_fast.metrics")

PREFIX = "crio_fast"
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
LAYER_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
EVENT_NAMES = {v: k.removeprefix("CONTAINER_").removesuffix("_EVENT").lower()
               for k, v in pb.ContainerEventType.items()}


class _StoreCollector(Collector):
    """Containers and pods by state and GetContainerEvents streams, counted when scraped."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def collect(self) -> Iterable[GaugeMetricFamily]:
        containers = GaugeMetricFamily(f"{PREFIX}_containers", "Containers by state.", labels=["state"])
        counts: dict[str, int] = {}
        for record in self.engine.state.containers.values():
            counts[record.state] = counts.get(record.state, 0) + 1
        for state in ("created", "running", "exited", "unknown"):
            containers.add_metric([state], counts.pop(state, 0))
        for state, count in counts.items():
            containers.add_metric([state], count)
        yield containers
        pods = GaugeMetricFamily(f"{PREFIX}_pods", "Pod sandboxes by state.", labels=["state"])
        pod_counts: dict[str, int] = {"ready": 0, "notready": 0}
        for record in self.engine.state.pods.values():
            pod_counts[record.state] = pod_counts.get(record.state, 0) + 1
        for state, count in pod_counts.items():
            pods.add_metric([state], count)
        yield pods
        yield GaugeMetricFamily(f"{PREFIX}_event_subscribers", "Open GetContainerEvents streams.",
                                value=self.engine.events.subscriber_count)


class Metrics:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.latency = Histogram(f"{PREFIX}_operations_latency_seconds", "Latency of CRI calls.",
                                 ["operation", "code"], buckets=LATENCY_BUCKETS, registry=r)
        self.operations = Counter(f"{PREFIX}_operations", "CRI calls served.", ["operation", "code"], registry=r)
        self.errors = Counter(f"{PREFIX}_errors", "Failed CRI calls by error kind.", ["kind"], registry=r)
        self.image_pulls = Counter(f"{PREFIX}_image_pulls", "Image pulls by outcome (gRPC code).", ["outcome"],
                                   registry=r)
        self.pulled_bytes = Counter(f"{PREFIX}_image_pulled_bytes", "Compressed layer bytes downloaded.", registry=r)
        self.layer_seconds = Histogram(f"{PREFIX}_image_layer_pull_seconds",
                                       "Time to download, verify and extract one layer.", buckets=LAYER_BUCKETS,
                                       registry=r)
        self.oom_kills = Counter(f"{PREFIX}_container_oom_kills", "Containers killed by the OOM killer.", registry=r)
        self.monitor_gone = Counter(f"{PREFIX}_monitor_gone", "Pods whose monitor was found dead.", registry=r)
        self.events = Counter(f"{PREFIX}_container_events", "Container events published.", ["type"], registry=r)
        r.register(_StoreCollector(engine))
        self._pods_seen_gone: set[str] = set()
        self._lock = threading.Lock()
        self._server = None
        self._thread: threading.Thread | None = None

    # -- observers -------------------------------------------------------------

    def observe_rpc(self, service: str, method: str, code: str, seconds: float, error_kind: str | None) -> None:
        self.latency.labels(method, code).observe(seconds)
        self.operations.labels(method, code).inc()
        if error_kind is not None:
            self.errors.labels(error_kind).inc()
        if method == "PullImage":
            self.image_pulls.labels(code).inc()

    def observe_layer(self, seconds: float, compressed_bytes: int) -> None:
        self.layer_seconds.observe(seconds)
        if compressed_bytes > 0:
            self.pulled_bytes.inc(compressed_bytes)

    def observe_event(self, event: pb.ContainerEventResponse) -> None:
        self.events.labels(EVENT_NAMES.get(event.container_event_type, "unknown")).inc()
        if event.container_event_type != pb.ContainerEventType.CONTAINER_STOPPED_EVENT:
            return
        for status in event.containers_statuses:
            if status.id != event.container_id:
                continue
            if status.reason == "OOMKilled":
                self.oom_kills.inc()
            elif status.reason == "MonitorGone":
                self.count_monitor_gone(event.pod_sandbox_status.id)

    def count_monitor_gone(self, pod_id: str) -> None:
        with self._lock:
            if pod_id in self._pods_seen_gone:
                return
            self._pods_seen_gone.add(pod_id)
        self.monitor_gone.inc()

    # -- the endpoint ----------------------------------------------------------

    def install(self) -> None:
        """Hook into the servicers, the image manager and the event bus."""
        base.set_rpc_observer(self.observe_rpc)
        self.engine.images.layer_observer = self.observe_layer
        self.engine.events.add_listener(self.observe_event)
        for pod_id in self.engine.monitors_found_gone:
            self.count_monitor_gone(pod_id)
        self.engine.recovery.monitor_gone_listeners.append(self.count_monitor_gone)

    def start(self, host: str, port: int) -> None:
        self._server, self._thread = start_http_server(port, addr=host, registry=self.registry)
        log.info("serving metrics on http://%s:%d/metrics", host, port)

    def stop(self) -> None:
        base.set_rpc_observer(None)
        if self.count_monitor_gone in self.engine.recovery.monitor_gone_listeners:
            self.engine.recovery.monitor_gone_listeners.remove(self.count_monitor_gone)
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
