"""The CRI stats and metrics calls: which records to sample, and the metrics made of the samples.

ContainerStats / ListContainerStats / PodSandboxStats / ListPodSandboxStats
and ListMetricDescriptors / ListPodSandboxMetrics (cAdvisor-named metrics the
kubelet re-exports on /metrics/cadvisor). Answers are plain data (samples,
metric specs and values); server/stats_messages.py renders them as CRI
messages. Everything here blocks on file I/O; the servicer runs it in a
worker thread.
"""

from __future__ import annotations

import enum
import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable, Iterable

from crio_fast.api import api_pb2 as pb
from crio_fast.errors import NotFound, shown
from crio_fast.state.records import (
    ContainerRecord,
    PodRecord,
    decode_container_config,
    decode_pod_config,
    labels_match,
    matches_filter,
)
from crio_fast.stats.collector import ContainerSample, PodSample, StatsCollector

if TYPE_CHECKING:
    from crio_fast.container.manager import ContainerManager
    from crio_fast.sandbox.manager import SandboxManager
    from crio_fast.state.records import StateStore

NANOSECONDS_PER_SECOND = 1_000_000_000

# Labels of every container metric, as cAdvisor names them; pod-level metrics
# (network) use the same keys with container "" and the pod's id and name.
BASE_LABELS = ("container", "id", "image", "name", "namespace", "pod")


@dataclass(frozen=True)
class MetricSpec:
    name: str
    help: str
    extra_labels: tuple[str, ...] = ()

    @property
    def label_keys(self) -> tuple[str, ...]:
        return (*BASE_LABELS, *self.extra_labels)


class MetricKind(enum.Enum):
    COUNTER = "counter"
    GAUGE = "gauge"


@dataclass(frozen=True)
class Metric:
    """One value of a metric, its labels in the order of its spec's label_keys."""

    name: str
    kind: MetricKind
    labels: tuple[str, ...]
    value: int
    timestamp: int  # unix ns


@dataclass
class ContainerMetrics:
    container_id: str
    metrics: list[Metric] = field(default_factory=list)


@dataclass
class PodMetrics:
    pod_id: str
    metrics: list[Metric] = field(default_factory=list)  # the pod's own: its network interfaces
    containers: list[ContainerMetrics] = field(default_factory=list)


METRICS = [
    MetricSpec("container_cpu_usage_seconds_total",
               "Cumulative cpu time consumed in seconds (whole seconds: CRI metric values are integers).", ("cpu",)),
    MetricSpec("container_memory_usage_bytes", "Current memory usage in bytes, including all memory regardless of when it was accessed."),
    MetricSpec("container_memory_working_set_bytes", "Current working set in bytes."),
    MetricSpec("container_memory_rss", "Size of RSS in bytes."),
    MetricSpec("container_memory_failures_total", "Cumulative count of memory allocation failures.",
               ("failure_type", "scope")),
    MetricSpec("container_spec_memory_limit_bytes", "Memory limit for the container."),
    MetricSpec("container_processes", "Number of processes running inside the container."),
    MetricSpec("container_fs_usage_bytes", "Number of bytes that are consumed by the container on this filesystem.",
               ("device",)),
    MetricSpec("container_fs_inodes_total", "Number of Inodes of the filesystem the container's writable layer is on.",
               ("device",)),
    MetricSpec("container_fs_inodes_free", "Number of available Inodes on the filesystem of the writable layer.",
               ("device",)),
    MetricSpec("container_fs_limit_bytes", "Number of bytes that can be consumed by the container on this filesystem.",
               ("device",)),
    MetricSpec("container_network_receive_bytes_total", "Cumulative count of bytes received.", ("interface",)),
    MetricSpec("container_network_transmit_bytes_total", "Cumulative count of bytes transmitted.", ("interface",)),
    MetricSpec("container_network_receive_errors_total", "Cumulative count of errors encountered while receiving.",
               ("interface",)),
    MetricSpec("container_network_transmit_errors_total", "Cumulative count of errors encountered while transmitting.",
               ("interface",)),
    MetricSpec("container_memory_swap", "Container swap usage in bytes."),
    # Pressure stall information (cgroup v2 with PSI), as cAdvisor and CRI-O name it: "waiting" is the
    # time at least one task waited ("some"), "stalled" the time no task could run ("full"), whole seconds.
    MetricSpec("container_pressure_cpu_stalled_seconds_total",
               "Total time duration no tasks in the container could make progress due to CPU congestion."),
    MetricSpec("container_pressure_cpu_waiting_seconds_total",
               "Total time duration tasks in the container have waited due to CPU congestion."),
    MetricSpec("container_pressure_memory_stalled_seconds_total",
               "Total time duration no tasks in the container could make progress due to memory congestion."),
    MetricSpec("container_pressure_memory_waiting_seconds_total",
               "Total time duration tasks in the container have waited due to memory congestion."),
    MetricSpec("container_pressure_io_stalled_seconds_total",
               "Total time duration no tasks in the container could make progress due to IO congestion."),
    MetricSpec("container_pressure_io_waiting_seconds_total",
               "Total time duration tasks in the container have waited due to IO congestion."),
]
# (resource, its CgroupSample attribute) for the pressure metrics above.
PRESSURE_METRICS = (("cpu", "cpu_pressure"), ("memory", "memory_pressure"), ("io", "io_pressure"))
MICROSECONDS_PER_SECOND = 1_000_000
METRIC_NAMES = frozenset(m.name for m in METRICS)


class StatsService:
    def __init__(self, state: StateStore, sandboxes: SandboxManager, containers: ContainerManager,
                 collector: StatsCollector) -> None:
        self.state = state
        self.sandboxes = sandboxes
        self.containers = containers
        self.collector = collector

    # -- record selection ----------------------------------------------------

    def _containers(self, flt: pb.ContainerStatsFilter | None) -> list[ContainerRecord]:
        records = self.state.containers.values()
        if flt is None:
            return records
        return [r for r in records if matches_filter(r, flt.id, flt.pod_sandbox_id, flt.label_selector)]

    def _pods(self, flt: pb.PodSandboxStatsFilter | None) -> list[PodRecord]:
        out = []
        for record in self.state.pods.values():
            if flt is not None:
                if flt.id and not record.id.startswith(flt.id):
                    continue
                if flt.label_selector and not labels_match(decode_pod_config(record.config).labels,
                                                           flt.label_selector):
                    continue
            out.append(record)
        return out

    def _containers_of(self, pods: Iterable[PodRecord]) -> list[ContainerRecord]:
        pod_ids = {p.id for p in pods}
        return [c for c in self.state.containers.values() if c.pod_id in pod_ids]

    def _forget_gone(self) -> None:
        self.collector.forget({c.id for c in self.state.containers.values()}, {p.id for p in self.state.pods.values()})

    # -- the calls -----------------------------------------------------------

    @property
    def storage_dir(self) -> str:
        """Where writable layers live: the filesystem their usage is reported on."""
        return self.collector.storage_dir

    def container_stats(self, container_id: str) -> ContainerSample:
        record = self.state.containers.find(container_id)
        if record is None:
            raise NotFound(f"container {shown(container_id)} not found")
        _, samples = self.collector.collect([], [record])
        return samples[0]

    def list_container_stats(self, flt: pb.ContainerStatsFilter | None) -> list[ContainerSample]:
        self._forget_gone()
        _, samples = self.collector.collect([], self._containers(flt))
        return samples

    def pod_stats(self, pod_id: str) -> PodSample:
        record = self.state.pods.find(pod_id)
        if record is None:
            raise NotFound(f"pod sandbox {shown(pod_id)} not found")
        pods, _ = self.collector.collect([record], self._containers_of([record]))
        return pods[0]

    def list_pod_stats(self, flt: pb.PodSandboxStatsFilter | None) -> list[PodSample]:
        self._forget_gone()
        pods = self._pods(flt)
        samples, _ = self.collector.collect(pods, self._containers_of(pods))
        return samples

    # -- metrics ---------------------------------------------------------------

    @staticmethod
    def metric_descriptors() -> list[MetricSpec]:
        return list(METRICS)

    def pod_metrics(self) -> list[PodMetrics]:
        self._forget_gone()
        pods = self._pods(None)
        samples, _ = self.collector.collect(pods, self._containers_of(pods))
        fs = _statvfs(self.collector.storage_dir)
        return [self._pod_metrics(sample, fs) for sample in samples]

    def _pod_metrics(self, sample: PodSample, fs: os.statvfs_result | None) -> PodMetrics:
        pod_config = decode_pod_config(sample.record.config)
        namespace, pod_name = pod_config.metadata.namespace, pod_config.metadata.name
        out = PodMetrics(pod_id=sample.record.id)
        pod_labels = ["", sample.record.id, "", sample.record.name, namespace, pod_name]
        add = _metric_adder(sample.timestamp)
        counter, gauge = MetricKind.COUNTER, MetricKind.GAUGE
        for iface in sample.interfaces or []:
            labels = [*pod_labels, iface.name]
            add(out.metrics, "container_network_receive_bytes_total", counter, labels, iface.rx_bytes)
            add(out.metrics, "container_network_transmit_bytes_total", counter, labels, iface.tx_bytes)
            add(out.metrics, "container_network_receive_errors_total", counter, labels, iface.rx_errors)
            add(out.metrics, "container_network_transmit_errors_total", counter, labels, iface.tx_errors)
        for ctr in sample.containers:
            config = decode_container_config(ctr.record.config)
            base = [config.metadata.name, ctr.record.id, ctr.record.image_ref, ctr.record.name, namespace, pod_name]
            container = ContainerMetrics(container_id=ctr.record.id)
            out.containers.append(container)
            metrics = container.metrics
            cg = ctr.cgroup
            if cg.cpu_usage_ns is not None:
                add(metrics, "container_cpu_usage_seconds_total", counter, [*base, "total"],
                    cg.cpu_usage_ns // NANOSECONDS_PER_SECOND)
            add(metrics, "container_memory_usage_bytes", gauge, base, cg.memory_usage)
            add(metrics, "container_memory_working_set_bytes", gauge, base, cg.working_set)
            add(metrics, "container_memory_rss", gauge, base, cg.rss)
            add(metrics, "container_memory_failures_total", counter, [*base, "pgfault", "container"], cg.page_faults)
            add(metrics, "container_memory_failures_total", counter, [*base, "pgmajfault", "container"],
                cg.major_page_faults)
            add(metrics, "container_spec_memory_limit_bytes", gauge, base, cg.memory_limit or 0)
            add(metrics, "container_processes", gauge, base, cg.processes)
            add(metrics, "container_memory_swap", gauge, base, cg.swap_usage)
            for resource, attribute in PRESSURE_METRICS:
                pressure = getattr(cg, attribute)
                if pressure is None:
                    continue
                for kind, data in (("stalled", pressure.full), ("waiting", pressure.some)):
                    if data is not None:
                        add(metrics, f"container_pressure_{resource}_{kind}_seconds_total", counter,
                            base, data.total_us // MICROSECONDS_PER_SECOND)
            device = [*base, self.collector.storage_dir]
            if ctr.layer is not None:
                add(metrics, "container_fs_usage_bytes", gauge, device, ctr.layer.used_bytes)
            if fs is not None:
                add(metrics, "container_fs_inodes_total", gauge, device, fs.f_files)
                add(metrics, "container_fs_inodes_free", gauge, device, fs.f_favail)
                add(metrics, "container_fs_limit_bytes", gauge, device, fs.f_blocks * fs.f_frsize)
        return out


def _metric_adder(timestamp: int) -> Callable[[list[Metric], str, MetricKind, list[str], int | None], None]:
    """Appends a Metric taken at ``timestamp``; a value of None (a file that was absent) adds nothing."""

    def add(target: list[Metric], name: str, kind: MetricKind, labels: list[str], value: int | None) -> None:
        if value is not None:
            target.append(Metric(name=name, kind=kind, labels=tuple(labels), value=value, timestamp=timestamp))
    return add


def _statvfs(path: str) -> os.statvfs_result | None:
    try:
        return os.statvfs(path)
    except OSError:
        return None
