"""CRI messages of the stats and metrics calls, rendered from crio_fast.stats' samples and metrics.

A value the sample lacks (None: its file was absent) leaves its field unset
rather than zero, so the kubelet can tell "not measured" from "nothing".
"""

from __future__ import annotations

from crio_fast.api import api_pb2 as pb
from crio_fast.state.records import ContainerRecord, PodRecord, decode_container_config, decode_pod_config
from crio_fast.stats.cgroup import CgroupSample, Pressure, PressureData
from crio_fast.stats.collector import ContainerSample, InterfaceSample, PodSample
from crio_fast.stats.service import Metric, MetricKind, MetricSpec, PodMetrics

METRIC_TYPES = {MetricKind.COUNTER: pb.MetricType.COUNTER, MetricKind.GAUGE: pb.MetricType.GAUGE}


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
    return pb.MemoryUsage(
        timestamp=timestamp, working_set_bytes=_u64(sample.working_set),
        available_bytes=_u64(sample.memory_available), usage_bytes=_u64(sample.memory_usage),
        rss_bytes=_u64(sample.rss), page_faults=_u64(sample.page_faults),
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


def _interface(sample: InterfaceSample) -> pb.NetworkInterfaceUsage:
    return pb.NetworkInterfaceUsage(
        name=sample.name, rx_bytes=pb.UInt64Value(value=sample.rx_bytes),
        rx_errors=pb.UInt64Value(value=sample.rx_errors), tx_bytes=pb.UInt64Value(value=sample.tx_bytes),
        tx_errors=pb.UInt64Value(value=sample.tx_errors),
    )


def container_stats_message(sample: ContainerSample, storage_dir: str) -> pb.ContainerStats:
    """``storage_dir``: the filesystem the writable layer is on, named as its fs_id."""
    cg, ts = sample.cgroup, sample.timestamp
    stats = pb.ContainerStats(attributes=container_attributes(sample.record),
                              cpu=_cpu(ts, cg, sample.usage_nano_cores), memory=_memory(ts, cg),
                              swap=_swap(ts, cg), io=_io(ts, cg))
    if sample.layer is not None:
        stats.writable_layer.CopyFrom(pb.FilesystemUsage(
            timestamp=ts, fs_id=pb.FilesystemIdentifier(mountpoint=storage_dir),
            used_bytes=pb.UInt64Value(value=sample.layer.used_bytes),
            inodes_used=pb.UInt64Value(value=sample.layer.inodes_used),
        ))
    return stats


def pod_stats_message(sample: PodSample, storage_dir: str) -> pb.PodSandboxStats:
    cg, ts = sample.cgroup, sample.timestamp
    linux = pb.LinuxPodSandboxStats(cpu=_cpu(ts, cg, sample.usage_nano_cores), memory=_memory(ts, cg),
                                    io=_io(ts, cg))
    if cg.processes is not None:
        linux.process.CopyFrom(pb.ProcessUsage(timestamp=ts, process_count=pb.UInt64Value(value=cg.processes)))
    if sample.interfaces is not None:
        linux.network.timestamp = ts
        linux.network.interfaces.extend(_interface(iface) for iface in sample.interfaces)
        default = sample.default_interface
        if default is not None:
            linux.network.default_interface.CopyFrom(_interface(default))
    linux.containers.extend(container_stats_message(c, storage_dir) for c in sample.containers)
    return pb.PodSandboxStats(attributes=pod_attributes(sample.record), linux=linux)


def metric_descriptor_message(spec: MetricSpec) -> pb.MetricDescriptor:
    return pb.MetricDescriptor(name=spec.name, help=spec.help, label_keys=spec.label_keys)


def _metric(metric: Metric) -> pb.Metric:
    return pb.Metric(name=metric.name, timestamp=metric.timestamp, metric_type=METRIC_TYPES[metric.kind],
                     label_values=metric.labels, value=pb.UInt64Value(value=metric.value))


def pod_metrics_message(metrics: PodMetrics) -> pb.PodSandboxMetrics:
    out = pb.PodSandboxMetrics(pod_sandbox_id=metrics.pod_id, metrics=[_metric(m) for m in metrics.metrics])
    for container in metrics.containers:
        out.container_metrics.add(container_id=container.container_id,
                                  metrics=[_metric(m) for m in container.metrics])
    return out
