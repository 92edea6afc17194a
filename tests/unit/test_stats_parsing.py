"""Stats parsing: cgroup v1 and v2 control files, pressure (PSI) files, /proc/net/dev, inotify records,
and the CRI messages and metrics made of them."""

from __future__ import annotations

import base64
import struct
from types import SimpleNamespace

import pytest

from crio_fast.api import api_pb2 as pb
from crio_fast.cgroups import CgroupManager, build_layout
from crio_fast.runtime.exitwatch import IN_MOVED_TO, IN_Q_OVERFLOW, parse_events
from crio_fast.server.stats_messages import container_stats_message, pod_metrics_message, pod_stats_message
from crio_fast.state.records import ContainerRecord, PodRecord
from crio_fast.stats.cgroup import CgroupSample, Pressure, PressureData, StatFiles, parse_pressure
from crio_fast.stats.collector import ContainerSample, InterfaceSample, PodSample, parse_net_dev
from crio_fast.stats.service import METRIC_NAMES, StatsService
from tests.unit.test_cgroups_layout import (
    HUGEPAGE_DIRS, HYBRID_MOUNTINFO, HYBRID_PROC_CGROUPS, HYBRID_SELF_CGROUP, HYBRID_V2_CONTROLLERS, V1_MOUNTINFO,
    V1_PROC_CGROUPS, V1_SELF_CGROUP, V2_CONTROLLERS, V2_MOUNTINFO, V2_PROC_CGROUPS, V2_SELF_CGROUP,
)

V1_MEMORY_STAT = b"""cache 100
rss 5
total_cache 4096000
total_rss 2000000
total_pgfault 321
total_pgmajfault 7
total_inactive_file 1000000
"""
V2_MEMORY_STAT = b"""anon 3000000
file 500000
inactive_file 200000
pgfault 1234
pgmajfault 5
"""


# cpu.pressure of Linux 5.13 and later: a cgroup's CPU "full" line counts time when all its
# runnable tasks waited (for other cgroups' tasks, or under its cpu.max quota).
CPU_PRESSURE = (b"some avg10=1.50 avg60=0.75 avg300=0.20 total=2500000\n"
                b"full avg10=0.50 avg60=0.25 avg300=0.05 total=700000\n")
CPU_PRESSURE_BEFORE_5_13 = b"some avg10=0.00 avg60=0.00 avg300=0.00 total=12\n"
MEMORY_PRESSURE = (b"some avg10=12.34 avg60=5.67 avg300=1.00 total=9000000\n"
                   b"full avg10=10.00 avg60=4.00 avg300=0.90 total=8000000\n")
IO_PRESSURE = b"some avg10=0.00 avg60=0.00 avg300=0.00 total=0\nfull avg10=0.00 avg60=0.00 avg300=0.00 total=0\n"


def v1_layout(swap_accounting: bool = True):
    return build_layout(V1_MOUNTINFO, V1_PROC_CGROUPS, V1_SELF_CGROUP, None, HUGEPAGE_DIRS, swap_accounting)


def v2_layout(swap_accounting: bool = True):
    return build_layout(V2_MOUNTINFO, V2_PROC_CGROUPS, V2_SELF_CGROUP, V2_CONTROLLERS, HUGEPAGE_DIRS, swap_accounting)


def files_for(layout, psi: bool = True) -> StatFiles:
    manager = CgroupManager(layout=layout)
    return StatFiles(layout, manager.paths("/kubepods/pod1/crio-fast-abc"), psi=psi)


def names_of(files: StatFiles) -> list[str]:
    return [p.rsplit("/", 1)[1] for p in files.paths]


def test_v1_files_and_parse():
    files = files_for(v1_layout())
    # No pressure files on v1, PSI or not: cgroup v1 has none.
    assert names_of(files) == ["cpuacct.usage", "memory.usage_in_bytes", "memory.stat", "memory.limit_in_bytes",
                               "pids.current", "memory.memsw.usage_in_bytes", "memory.memsw.limit_in_bytes"]
    unlimited = b"9223372036854771712\n"
    sample = files.parse([b"123456789\n", b"5000000\n", V1_MEMORY_STAT, unlimited, b"3\n", b"5000000\n", unlimited])
    assert sample.cpu_usage_ns == 123456789
    assert (sample.memory_usage, sample.working_set, sample.rss) == (5000000, 4000000, 2000000)
    assert (sample.page_faults, sample.major_page_faults, sample.processes) == (321, 7, 3)
    assert sample.memory_limit is None  # PAGE_COUNTER_MAX is "unlimited"
    assert (sample.swap_usage, sample.swap_limit, sample.swap_available) == (0, None, None)
    assert sample.cpu_pressure is sample.memory_pressure is sample.io_pressure is None
    limited = files.parse([None, b"5000000\n", V1_MEMORY_STAT, b"67108864\n", None, None, None])
    assert limited.memory_limit == 64 << 20
    assert limited.cpu_usage_ns is None and limited.processes is None
    assert limited.swap_usage is None and limited.swap_available is None


def test_v1_swap_is_memsw_beyond_memory():
    files = files_for(v1_layout())
    # 64 MiB of memory, 96 MiB of memory+swap: 32 MiB of swap, 3 MiB of it in use.
    sample = files.parse([b"1\n", b"5000000\n", V1_MEMORY_STAT, b"67108864\n", b"1\n",
                          str(5000000 + (3 << 20)).encode(), b"100663296\n"])
    assert (sample.swap_usage, sample.swap_limit, sample.swap_available) == (3 << 20, 32 << 20, 29 << 20)
    # The kubelet's default, memory+swap = memory: no swap at all.
    no_swap = files.parse([b"1\n", b"5000000\n", V1_MEMORY_STAT, b"67108864\n", b"1\n", b"5000000\n",
                           b"67108864\n"])
    assert (no_swap.swap_usage, no_swap.swap_available) == (0, 0)
    # A page charged to memory between the two reads never makes swap negative.
    raced = files.parse([b"1\n", b"5004096\n", V1_MEMORY_STAT, b"67108864\n", b"1\n", b"5000000\n",
                         b"67108864\n"])
    assert raced.swap_usage == 0


def test_v1_without_swap_accounting_reads_no_swap_files():
    files = files_for(v1_layout(swap_accounting=False))
    assert not any("memsw" in name for name in names_of(files))
    sample = files.parse([b"1\n", b"5000000\n", V1_MEMORY_STAT, b"67108864\n", b"1\n"])
    assert sample.swap_usage is None and sample.swap_available is None


def test_v2_files_and_parse():
    files = files_for(v2_layout())
    assert names_of(files) == ["cpu.stat", "memory.current", "memory.stat", "memory.max", "pids.current",
                               "memory.swap.current", "memory.swap.max", "cpu.pressure", "memory.pressure",
                               "io.pressure"]
    # All in the container's one cgroup2 directory.
    assert {p.rsplit("/", 1)[0] for p in files.paths} == {"/sys/fs/cgroup/kubepods/pod1/crio-fast-abc"}
    cpu_stat = b"usage_usec 2500\nuser_usec 2000\nsystem_usec 500\n"
    sample = files.parse([cpu_stat, b"1000000\n", V2_MEMORY_STAT, b"max\n", b"1\n", b"0\n", b"max\n",
                          CPU_PRESSURE, MEMORY_PRESSURE, IO_PRESSURE])
    assert sample.cpu_usage_ns == 2_500_000
    assert (sample.memory_usage, sample.working_set, sample.rss) == (1000000, 800000, 3000000)
    assert (sample.page_faults, sample.major_page_faults) == (1234, 5)
    assert sample.memory_limit is None
    assert (sample.swap_usage, sample.swap_limit, sample.swap_available) == (0, None, None)
    assert sample.cpu_pressure == Pressure(some=PressureData(2500000, 1.5, 0.75, 0.2),
                                           full=PressureData(700000, 0.5, 0.25, 0.05))
    assert sample.memory_pressure.full.avg10 == 10.0
    assert sample.io_pressure.some == PressureData(0, 0.0, 0.0, 0.0)
    limited = files.parse([cpu_stat, b"1000000\n", V2_MEMORY_STAT, b"2097152\n", b"1\n", b"4096\n", b"1048576\n",
                           None, None, None])
    assert limited.memory_limit == 2 << 20
    # memory.swap.max counts swap alone.
    assert (limited.swap_usage, limited.swap_limit, limited.swap_available) == (4096, 1 << 20, (1 << 20) - 4096)
    # Absent pressure files (cgroup.pressure set to 0) are no pressure, not zeros.
    assert limited.cpu_pressure is limited.memory_pressure is limited.io_pressure is None


def test_v2_without_psi_or_swap_accounting():
    files = files_for(v2_layout(swap_accounting=False), psi=False)
    assert names_of(files) == ["cpu.stat", "memory.current", "memory.stat", "memory.max", "pids.current"]
    sample = files.parse([b"usage_usec 1\n", b"1000000\n", V2_MEMORY_STAT, b"max\n", b"1\n"])
    assert sample.swap_usage is None and sample.cpu_pressure is None


def test_hybrid_reads_no_pressure_from_the_cgroup2_directory():
    """cpu and memory are on v1 there: the cgroup2 directory's pressure is not theirs to report."""
    layout = build_layout(HYBRID_MOUNTINFO, HYBRID_PROC_CGROUPS, HYBRID_SELF_CGROUP, HYBRID_V2_CONTROLLERS,
                          HUGEPAGE_DIRS, True)
    files = files_for(layout)
    assert not any(name.endswith(".pressure") for name in names_of(files))


def test_parse_pressure():
    assert parse_pressure(CPU_PRESSURE_BEFORE_5_13) == Pressure(some=PressureData(12, 0.0, 0.0, 0.0), full=None)
    assert parse_pressure(None) is None
    assert parse_pressure(b"") is None
    assert parse_pressure(b"garbage\n") is None
    # A malformed line is left out, the other kept.
    broken_full = b"some avg10=1.00 avg60=2.00 avg300=3.00 total=4\nfull avg10=x avg60=0.00 avg300=0.00 total=1\n"
    assert parse_pressure(broken_full) == Pressure(some=PressureData(4, 1.0, 2.0, 3.0), full=None)
    # Key order is not assumed.
    assert parse_pressure(b"full total=9 avg300=0.03 avg60=0.02 avg10=0.01\n") == \
        Pressure(some=None, full=PressureData(9, 0.01, 0.02, 0.03))


def _records() -> tuple[PodRecord, ContainerRecord]:
    pod_config = pb.PodSandboxConfig(metadata=pb.PodSandboxMetadata(name="web", namespace="shop", uid="u1"))
    ctr_config = pb.ContainerConfig(metadata=pb.ContainerMetadata(name="app"))
    pod = PodRecord(id="p" * 64, name="k8s_web_shop_u1_0",
                    config=base64.b64encode(pod_config.SerializeToString()).decode(), runtime_handler="",
                    state="ready", created_at=1, pod_dir="/nonexistent", cgroup_path="/x", cgroup_created=True)
    ctr = ContainerRecord(id="c" * 64, pod_id=pod.id, name="k8s_app_web_shop_u1_0",
                          config=base64.b64encode(ctr_config.SerializeToString()).decode(), image_id="sha256:1",
                          image_ref="busybox", state="running", created_at=1)
    return pod, ctr


def _service() -> StatsService:
    return StatsService(None, None, None, SimpleNamespace(storage_dir="/nonexistent"))


def test_cri_messages_carry_pressure_swap_and_io():
    pod, ctr = _records()
    files = files_for(v2_layout())
    cg = files.parse([b"usage_usec 2500\n", b"1000000\n", V2_MEMORY_STAT, b"2097152\n", b"1\n", b"8192\n",
                      b"0\n", CPU_PRESSURE_BEFORE_5_13, MEMORY_PRESSURE, IO_PRESSURE])
    stats = container_stats_message(ContainerSample(record=ctr, timestamp=42, cgroup=cg), "/nonexistent")
    # Totals in nanoseconds (the kernel's microseconds x 1000), averages as they are.
    assert stats.cpu.psi.Some == pb.PsiData(Total=12_000, Avg10=0.0, Avg60=0.0, Avg300=0.0)
    assert not stats.cpu.psi.HasField("Full")  # no "full" line: unset, not zeros
    assert stats.memory.psi.Full == pb.PsiData(Total=8_000_000_000, Avg10=10.0, Avg60=4.0, Avg300=0.9)
    assert stats.memory.psi.Some.Avg10 == pytest.approx(12.34)
    assert (stats.io.timestamp, stats.io.psi.Some.Total, stats.io.psi.HasField("Full")) == (42, 0, True)
    assert (stats.swap.timestamp, stats.swap.swap_usage_bytes.value, stats.swap.swap_available_bytes.value) == \
        (42, 8192, 0)

    pod_stats = pod_stats_message(PodSample(record=pod, timestamp=42, cgroup=cg), "/nonexistent")
    assert pod_stats.linux.cpu.psi == stats.cpu.psi
    assert pod_stats.linux.memory.psi == stats.memory.psi
    assert pod_stats.linux.io == stats.io


def test_cri_messages_without_pressure_or_swap_leave_them_unset():
    _, ctr = _records()
    cg = files_for(v1_layout(swap_accounting=False)).parse([b"1\n", b"5000000\n", V1_MEMORY_STAT, b"1\n", b"1\n"])
    stats = container_stats_message(ContainerSample(record=ctr, timestamp=42, cgroup=cg), "/nonexistent")
    assert not stats.cpu.HasField("psi") and not stats.memory.HasField("psi")
    assert not stats.HasField("io") and not stats.HasField("swap")


def test_pod_network_names_eth0_its_default_interface_else_the_first():
    pod, _ = _records()
    net1, eth0 = InterfaceSample("net1", 1, 2, 3, 4), InterfaceSample("eth0", 5, 6, 7, 8)
    network = pod_stats_message(PodSample(record=pod, timestamp=42, cgroup=CgroupSample(), interfaces=[net1, eth0]),
                                "/nonexistent").linux.network
    assert [i.name for i in network.interfaces] == ["net1", "eth0"]
    assert network.default_interface == network.interfaces[1]
    assert (network.timestamp, network.default_interface.rx_bytes.value) == (42, 5)
    only_net1 = PodSample(record=pod, timestamp=42, cgroup=CgroupSample(), interfaces=[net1])
    assert pod_stats_message(only_net1, "/nonexistent").linux.network.default_interface.name == "net1"
    # No pod network namespace (a host-network pod): no network usage at all.
    no_netns = pod_stats_message(PodSample(record=pod, timestamp=42, cgroup=CgroupSample()), "/nonexistent")
    assert not no_netns.linux.HasField("network")


def test_pressure_and_swap_metrics_as_cadvisor_names_them():
    pod, ctr = _records()
    cg = CgroupSample(cpu_usage_ns=3_000_000_000, swap_usage=4096,
                      cpu_pressure=parse_pressure(CPU_PRESSURE), memory_pressure=parse_pressure(MEMORY_PRESSURE),
                      io_pressure=parse_pressure(CPU_PRESSURE_BEFORE_5_13))
    sample = PodSample(record=pod, timestamp=42, cgroup=CgroupSample(),
                       containers=[ContainerSample(record=ctr, timestamp=42, cgroup=cg)])
    [container] = pod_metrics_message(_service()._pod_metrics(sample, None)).container_metrics
    values = {m.name: m for m in container.metrics}
    assert set(values) <= METRIC_NAMES
    # Whole seconds (CRI metric values are integers), cumulative.
    assert values["container_pressure_cpu_waiting_seconds_total"].value.value == 2  # 2.5 s
    assert values["container_pressure_cpu_stalled_seconds_total"].value.value == 0  # 0.7 s
    assert values["container_pressure_memory_waiting_seconds_total"].value.value == 9
    assert values["container_pressure_memory_stalled_seconds_total"].value.value == 8
    assert values["container_pressure_io_waiting_seconds_total"].value.value == 0
    assert "container_pressure_io_stalled_seconds_total" not in values  # no "full" line
    assert values["container_pressure_cpu_waiting_seconds_total"].metric_type == pb.MetricType.COUNTER
    assert values["container_memory_swap"].value.value == 4096
    assert list(values["container_pressure_cpu_waiting_seconds_total"].label_values) == \
        ["app", ctr.id, "busybox", ctr.name, "shop", "web"]

    bare = PodSample(record=pod, timestamp=42, cgroup=CgroupSample(),
                     containers=[ContainerSample(record=ctr, timestamp=42, cgroup=CgroupSample())])
    [container] = pod_metrics_message(_service()._pod_metrics(bare, None)).container_metrics
    assert not [m.name for m in container.metrics if "pressure" in m.name or "swap" in m.name]


def test_net_dev_skips_lo_and_headers():
    content = (
        b"Inter-|   Receive                                                |  Transmit\n"
        b" face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed\n"
        b"    lo:    1000      10    0    0    0     0          0         0     1000      10    0    0    0     0       0          0\n"
        b"  eth0: 5000 50 2 0 0 0 0 0 7000 70 3 0 0 0 0 0\n"
    )
    [eth0] = parse_net_dev(content)
    assert (eth0.name, eth0.rx_bytes, eth0.rx_errors, eth0.tx_bytes, eth0.tx_errors) == ("eth0", 5000, 2, 7000, 3)


def test_inotify_records():
    def record(mask: int, name: bytes) -> bytes:
        padded = name + b"\0" * (16 - len(name)) if name else b""
        return struct.pack("iIII", 1, mask, 0, len(padded)) + padded

    buffer = record(IN_MOVED_TO, b"abc") + record(IN_MOVED_TO, b".abc.tmp") + record(IN_Q_OVERFLOW, b"")
    assert parse_events(buffer) == (["abc"], True)
    assert parse_events(record(IN_MOVED_TO, b"def")) == (["def"], False)
