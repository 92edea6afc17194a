"""The CRI stats and metrics calls: which records to sample, samples to protos.

ContainerStats / ListContainerStats / PodSandboxStats / ListPodSandboxStats
and ListMetricDescriptors / ListPodSandboxMetrics (cAdvisor-named metrics the
kubelet re-exports on /metrics/cadvisor). Everything here blocks on file I/O;
the servicer runs it in a worker thread.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Iterable

from crio_fast.api import api_pb2 as pb
from crio_fast.errors import NotFound
from crio_fast.state.records import (
    ContainerRecord,
    PodRecord,
    decode_container_config,
    decode_pod_config,
    labels_match,
    matches_filter,
)
from crio_fast.stats.cgroup import CgroupSample, Pressure, PressureData
from crio_fast.stats.collector import ContainerSample, PodSample, StatsCollector

if TYPE_CHECKING:
    from crio_fast.container.manager import ContainerManager
    from crio_fast.sandbox.manager import SandboxManager
    from crio_fast.state.records import StateStore

NANOSECONDS_PER_SECOND = 1_000_000_000
DEFAULT_INTERFACE = "eth0"

# Labels of every container metric, as cAdvisor names them; pod-level metrics
# (network) use the same keys with container "" and the pod's id and name.
BASE_LABELS = ("container", "id", "image", "name", "namespace", "pod")


@dataclass(frozen=True)
class MetricSpec:
    name: str
    help: str
    extra_labels: tuple[str, ...] = ()

    def descriptor(self) -> pb.MetricDescriptor:
        return pb.MetricDescriptor(name=self.name, help=self.help, label_keys=[*BASE_LABELS, *self.extra_labels])


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


def _u64(value: int | None) -> pb.UInt64Value | None:
    return pb.UInt64Value(value=value) if value is not None else None


def container_attributes(record: ContainerRecord) -> pb.ContainerAttributes:
    config = decode_container_config(record.config)
    return pb.ContainerAttributes(id=record.id, metadata=config.metadata, labels=config.labels,
                                  annotations=config.annotations)


def pod_attributes(record: PodRecord) -> pb.PodSandboxAttributes:
    config = decode_pod_config(record.config)
    return pb.PodSandboxAttributes(id=record.id, metadata=config.metadata, labels=config.labels,
                                   annotations=config.annotations)


def _psi_data(data: PressureData | None) -> pb.PsiData | None:
    if data is None:
        return None
    # The kernel counts microseconds; CRI's Total is nanoseconds (as containerd sends it).
    return pb.PsiData(Total=data.total_us * 1000, Avg10=data.avg10, Avg60=data.avg60, Avg300=data.avg300)


def _psi(pressure: Pressure | None) -> pb.PsiStats | None:
    """CRI PsiStats of a pressure file; None (the field left unset) where there is none."""
    if pressure is None:
        return None
    return pb.PsiStats(Full=_psi_data(pressure.full), Some=_psi_data(pressure.some))


def _cpu(timestamp: int, sample: CgroupSample, nano_cores: int | None) -> pb.CpuUsage:
    return pb.CpuUsage(timestamp=timestamp, usage_core_nano_seconds=_u64(sample.cpu_usage_ns),
                       usage_nano_cores=_u64(nano_cores), psi=_psi(sample.cpu_pressure))


def _memory(timestamp: int, sample: CgroupSample) -> pb.MemoryUsage:
    available = None
    if sample.memory_limit is not None and sample.working_set is not None:
        available = max(0, sample.memory_limit - sample.working_set)
    return pb.MemoryUsage(
        timestamp=timestamp, working_set_bytes=_u64(sample.working_set), available_bytes=_u64(available),
        usage_bytes=_u64(sample.memory_usage), rss_bytes=_u64(sample.rss), page_faults=_u64(sample.page_faults),
        major_page_faults=_u64(sample.major_page_faults), psi=_psi(sample.memory_pressure),
    )


def _io(timestamp: int, sample: CgroupSample) -> pb.IoUsage | None:
    """IoUsage carries only pressure: none without io.pressure (cgroup v1, no PSI)."""
    if sample.io_pressure is None:
        return None
    return pb.IoUsage(timestamp=timestamp, psi=_psi(sample.io_pressure))


def _swap(timestamp: int, sample: CgroupSample) -> pb.SwapUsage | None:
    """None where swap is not accounted; available only under a swap limit."""
    if sample.swap_usage is None:
        return None
    return pb.SwapUsage(timestamp=timestamp, swap_usage_bytes=_u64(sample.swap_usage),
                        swap_available_bytes=_u64(sample.swap_available))


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

    # -- protos --------------------------------------------------------------

    def container_stats_proto(self, sample: ContainerSample) -> pb.ContainerStats:
        cg, ts = sample.cgroup, sample.timestamp
        stats = pb.ContainerStats(attributes=container_attributes(sample.record),
                                  cpu=_cpu(ts, cg, sample.usage_nano_cores), memory=_memory(ts, cg),
                                  swap=_swap(ts, cg), io=_io(ts, cg))
        if sample.layer is not None:
            stats.writable_layer.CopyFrom(pb.FilesystemUsage(
                timestamp=ts, fs_id=pb.FilesystemIdentifier(mountpoint=self.collector.storage_dir),
                used_bytes=pb.UInt64Value(value=sample.layer.used_bytes),
                inodes_used=pb.UInt64Value(value=sample.layer.inodes_used),
            ))
        return stats

    def pod_stats_proto(self, sample: PodSample) -> pb.PodSandboxStats:
        cg, ts = sample.cgroup, sample.timestamp
        linux = pb.LinuxPodSandboxStats(cpu=_cpu(ts, cg, sample.usage_nano_cores), memory=_memory(ts, cg),
                                        io=_io(ts, cg))
        if cg.processes is not None:
            linux.process.CopyFrom(pb.ProcessUsage(timestamp=ts, process_count=pb.UInt64Value(value=cg.processes)))
        if sample.interfaces is not None:
            linux.network.timestamp = ts
            for iface in sample.interfaces:
                usage = linux.network.interfaces.add(
                    name=iface.name, rx_bytes=pb.UInt64Value(value=iface.rx_bytes),
                    rx_errors=pb.UInt64Value(value=iface.rx_errors), tx_bytes=pb.UInt64Value(value=iface.tx_bytes),
                    tx_errors=pb.UInt64Value(value=iface.tx_errors),
                )
                if iface.name == DEFAULT_INTERFACE:
                    linux.network.default_interface.CopyFrom(usage)
            if not linux.network.HasField("default_interface") and linux.network.interfaces:
                linux.network.default_interface.CopyFrom(linux.network.interfaces[0])
        linux.containers.extend(self.container_stats_proto(c) for c in sample.containers)
        return pb.PodSandboxStats(attributes=pod_attributes(sample.record), linux=linux)

    # -- the calls -----------------------------------------------------------

    def container_stats(self, container_id: str) -> pb.ContainerStats:
        record = self.state.containers.find(container_id)
        if record is None:
            raise NotFound(f"container {container_id!r} not found")
        _, samples = self.collector.collect([], [record])
        return self.container_stats_proto(samples[0])

    def list_container_stats(self, flt: pb.ContainerStatsFilter | None) -> list[pb.ContainerStats]:
        self._forget_gone()
        _, samples = self.collector.collect([], self._containers(flt))
        return [self.container_stats_proto(s) for s in samples]

    def pod_stats(self, pod_id: str) -> pb.PodSandboxStats:
        record = self.state.pods.find(pod_id)
        if record is None:
            raise NotFound(f"pod sandbox {pod_id!r} not found")
        pods, _ = self.collector.collect([record], self._containers_of([record]))
        return self.pod_stats_proto(pods[0])

    def list_pod_stats(self, flt: pb.PodSandboxStatsFilter | None) -> list[pb.PodSandboxStats]:
        self._forget_gone()
        pods = self._pods(flt)
        samples, _ = self.collector.collect(pods, self._containers_of(pods))
        return [self.pod_stats_proto(s) for s in samples]

    # -- metrics ---------------------------------------------------------------

    @staticmethod
    def metric_descriptors() -> list[pb.MetricDescriptor]:
        return [m.descriptor() for m in METRICS]

    def pod_metrics(self) -> list[pb.PodSandboxMetrics]:
        self._forget_gone()
        pods = self._pods(None)
        samples, _ = self.collector.collect(pods, self._containers_of(pods))
        fs = _statvfs(self.collector.storage_dir)
        return [self._pod_metrics(sample, fs) for sample in samples]

    def _pod_metrics(self, sample: PodSample, fs: os.statvfs_result | None) -> pb.PodSandboxMetrics:
        pod_config = decode_pod_config(sample.record.config)
        namespace, pod_name = pod_config.metadata.namespace, pod_config.metadata.name
        ts = sample.timestamp
        out = pb.PodSandboxMetrics(pod_sandbox_id=sample.record.id)
        pod_labels = ["", sample.record.id, "", sample.record.name, namespace, pod_name]
        add = _metric_adder(ts)
        for iface in sample.interfaces or []:
            labels = [*pod_labels, iface.name]
            add(out.metrics, "container_network_receive_bytes_total", pb.MetricType.COUNTER, labels, iface.rx_bytes)
            add(out.metrics, "container_network_transmit_bytes_total", pb.MetricType.COUNTER, labels, iface.tx_bytes)
            add(out.metrics, "container_network_receive_errors_total", pb.MetricType.COUNTER, labels, iface.rx_errors)
            add(out.metrics, "container_network_transmit_errors_total", pb.MetricType.COUNTER, labels, iface.tx_errors)
        for ctr in sample.containers:
            config = decode_container_config(ctr.record.config)
            base = [config.metadata.name, ctr.record.id, ctr.record.image_ref, ctr.record.name, namespace, pod_name]
            metrics = out.container_metrics.add(container_id=ctr.record.id).metrics
            cg = ctr.cgroup
            if cg.cpu_usage_ns is not None:
                add(metrics, "container_cpu_usage_seconds_total", pb.MetricType.COUNTER, [*base, "total"],
                    cg.cpu_usage_ns // NANOSECONDS_PER_SECOND)
            gauge = pb.MetricType.GAUGE
            add(metrics, "container_memory_usage_bytes", gauge, base, cg.memory_usage)
            add(metrics, "container_memory_working_set_bytes", gauge, base, cg.working_set)
            add(metrics, "container_memory_rss", gauge, base, cg.rss)
            add(metrics, "container_memory_failures_total", pb.MetricType.COUNTER, [*base, "pgfault", "container"],
                cg.page_faults)
            add(metrics, "container_memory_failures_total", pb.MetricType.COUNTER, [*base, "pgmajfault", "container"],
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
                        add(metrics, f"container_pressure_{resource}_{kind}_seconds_total", pb.MetricType.COUNTER,
                            base, data.total_us // MICROSECONDS_PER_SECOND)
            device = [*base, self.collector.storage_dir]
            if ctr.layer is not None:
                add(metrics, "container_fs_usage_bytes", gauge, device, ctr.layer.used_bytes)
            if fs is not None:
                add(metrics, "container_fs_inodes_total", gauge, device, fs.f_files)
                add(metrics, "container_fs_inodes_free", gauge, device, fs.f_favail)
                add(metrics, "container_fs_limit_bytes", gauge, device, fs.f_blocks * fs.f_frsize)
        return out


def _metric_adder(timestamp: int) -> Callable:
    def add(target, name: str, metric_type: int, labels: list[str], value: int | None) -> None:
        if value is None:
            return
        target.add(name=name, timestamp=timestamp, metric_type=metric_type, label_values=labels,
                   value=pb.UInt64Value(value=value))
    return add


def _statvfs(path: str) -> os.statvfs_result | None:
    try:
        return os.statvfs(path)
    except OSError:
        return None
