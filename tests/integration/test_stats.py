"""CRI stats and ListPodSandboxMetrics of real containers: cgroup CPU and memory,
writable layers, pod network counters from the pod's namespace."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import grpc
import pytest

from crio_fast.api import api_pb2 as api
from crio_fast.stats.cgroup import parse_pressure
from tests.support import cgroups
from tests.support.pods import create, daemon_with_busybox, exec_sync, run_container, run_pod, start, wait_for
from tests.support.timing import SLOWDOWN

pytestmark = pytest.mark.integration

MB = 1024 * 1024


@pytest.fixture(scope="module")
def cri(registry, busybox_image, tmp_path_factory):
    with daemon_with_busybox(registry, busybox_image, tmp_path_factory.mktemp("stats")) as d:
        yield d


def container_stats(d, container_id: str) -> api.ContainerStats:
    return d.client.runtime.ContainerStats(api.ContainerStatsRequest(container_id=container_id), timeout=10).stats


def pod_stats(d, pod_id: str) -> api.PodSandboxStats:
    return d.client.runtime.PodSandboxStats(api.PodSandboxStatsRequest(pod_sandbox_id=pod_id), timeout=10).stats


def test_cpu_usage_grows_for_a_busy_container(cri):
    _, ctr = run_container(cri, ["/bin/sh", "-c", "while :; do :; done"])
    first = container_stats(cri, ctr)
    time.sleep(0.5)
    second = container_stats(cri, ctr)
    assert second.cpu.usage_core_nano_seconds.value > first.cpu.usage_core_nano_seconds.value > 0
    assert second.cpu.timestamp > first.cpu.timestamp
    # A spinning shell uses most of a core over the interval.
    assert second.cpu.usage_nano_cores.value > 200_000_000
    assert second.attributes.id == ctr


def test_memory_working_set_counts_shm_pages(cri):
    pod_id, ctr = run_container(cri, ["/bin/sleep", "1000"])
    before = container_stats(cri, ctr).memory
    # /dev/shm is the pod's tmpfs: its pages are charged to the cgroup of the writer.
    exec_sync(cri, ctr, ["/bin/sh", "-c", "head -c 52428800 /dev/zero > /dev/shm/fill"])
    after = container_stats(cri, ctr).memory
    assert after.working_set_bytes.value > 40 * MB > before.working_set_bytes.value
    assert after.usage_bytes.value >= after.working_set_bytes.value
    assert after.page_faults.value > 0
    assert not after.HasField("available_bytes")  # no memory limit
    swap = container_stats(cri, ctr).swap
    if cgroups.layout().swap_accounting:
        assert swap.timestamp > 0 and swap.HasField("swap_usage_bytes")
        assert not swap.HasField("swap_available_bytes")  # no swap limit
    else:
        assert not container_stats(cri, ctr).HasField("swap")
    pod = pod_stats(cri, pod_id)
    assert pod.linux.memory.working_set_bytes.value >= after.working_set_bytes.value
    assert [c.attributes.id for c in pod.linux.containers] == [ctr]


def test_available_memory_under_a_limit(cri):
    pod_id, pod = run_pod(cri)
    config = api.ContainerConfig(
        metadata=api.ContainerMetadata(name="limited"), image=api.ImageSpec(image=cri.image),
        command=["/bin/sleep", "1000"],
    )
    config.linux.resources.memory_limit_in_bytes = 64 * MB
    ctr = cri.client.runtime.CreateContainer(
        api.CreateContainerRequest(pod_sandbox_id=pod_id, config=config, sandbox_config=pod), timeout=30).container_id
    start(cri, ctr)
    stats = container_stats(cri, ctr)
    memory = stats.memory
    assert memory.available_bytes.value == 64 * MB - memory.working_set_bytes.value
    if cgroups.layout().swap_accounting:
        # A memory limit without a swap limit allows no swap (the kubelet's default): none available.
        assert stats.swap.HasField("swap_available_bytes") and stats.swap.swap_available_bytes.value == 0
        assert stats.swap.swap_usage_bytes.value < MB


def test_writable_layer_grows_after_writing_a_file(cri):
    _, ctr = run_container(cri, ["/bin/sleep", "1000"])
    before = container_stats(cri, ctr).writable_layer
    assert before.fs_id.mountpoint
    exec_sync(cri, ctr, ["/bin/sh", "-c", "mkdir /data && head -c 3145728 /dev/urandom > /data/blob"])
    # The layer walk is cached for a few seconds.
    after = wait_for(
        lambda: (s := container_stats(cri, ctr).writable_layer).used_bytes.value >= before.used_bytes.value + 3 * MB
        and s, timeout=15, what="the writable layer to show the new file")
    assert after.inodes_used.value >= before.inodes_used.value + 2  # /data and /data/blob


def test_list_container_stats_filters_and_attributes(cri):
    pod_id, pod = run_pod(cri)
    a = create(cri, pod_id, pod, ["/bin/sleep", "1000"], name="alpha", labels={"tier": "front"},
               annotations={"note": "a"})
    b = create(cri, pod_id, pod, ["/bin/sleep", "1000"], name="beta", labels={"tier": "back"})
    start(cri, a)
    start(cri, b)
    other_pod, other = run_container(cri, ["/bin/sleep", "1000"])

    def listed(**flt) -> list[api.ContainerStats]:
        request = api.ListContainerStatsRequest(filter=api.ContainerStatsFilter(**flt))
        return list(cri.client.runtime.ListContainerStats(request, timeout=10).stats)

    everything = {s.attributes.id for s in listed()}
    assert {a, b, other} <= everything
    assert sorted(s.attributes.id for s in listed(pod_sandbox_id=pod_id)) == sorted([a, b])
    [front] = listed(label_selector={"tier": "front"})
    assert front.attributes.id == a
    assert front.attributes.metadata.name == "alpha"
    assert dict(front.attributes.labels) == {"tier": "front"}
    assert dict(front.attributes.annotations) == {"note": "a"}
    assert front.memory.working_set_bytes.value > 0
    assert [s.attributes.id for s in listed(id=other[:20])] == [other]

    pods = cri.client.runtime.ListPodSandboxStats(api.ListPodSandboxStatsRequest(), timeout=10).stats
    by_id = {p.attributes.id: p for p in pods}
    assert {c.attributes.id for c in by_id[pod_id].linux.containers} == {a, b}
    assert by_id[pod_id].linux.process.process_count.value >= 2  # the two sleeps (and the monitor)
    assert {c.attributes.id for c in by_id[other_pod].linux.containers} == {other}


def test_container_stats_of_a_missing_container(cri):
    with pytest.raises(grpc.RpcError) as err:
        container_stats(cri, "0" * 64)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND


def _monitor_pid(d, pod_id: str) -> int:
    response = d.client.runtime.PodSandboxStatus(api.PodSandboxStatusRequest(pod_sandbox_id=pod_id, verbose=True),
                                                 timeout=10)
    return json.loads(response.info["info"])["pid"]


def test_pod_network_counters_from_the_pods_namespace(cri):
    pod_id, _ = run_container(cri, ["/bin/sleep", "1000"])
    # Without CNI configuration the pod has only lo, which is not reported.
    assert not pod_stats(cri, pod_id).linux.network.interfaces

    # A veth pair inside the pod's namespace (it goes away with the namespace):
    # ARP requests from eth0 are transmitted on eth0 and received on peer0.
    netns = f"/proc/{_monitor_pid(cri, pod_id)}/ns/net"

    def in_pod(*argv: str, check: bool = True) -> None:
        subprocess.run(["nsenter", f"--net={netns}", *argv], check=check, capture_output=True, timeout=20)

    in_pod("ip", "link", "add", "eth0", "type", "veth", "peer", "name", "peer0")
    in_pod("ip", "addr", "add", "192.0.2.1/24", "dev", "eth0")
    in_pod("ip", "link", "set", "eth0", "up")
    in_pod("ip", "link", "set", "peer0", "up")
    # Nobody answers: arping exits 1, but its requests went out.
    in_pod("busybox", "arping", "-c", "3", "-w", "3", "-I", "eth0", "192.0.2.2", check=False)

    network = pod_stats(cri, pod_id).linux.network
    by_name = {i.name: i for i in network.interfaces}
    assert set(by_name) == {"eth0", "peer0"}
    assert network.default_interface.name == "eth0"
    assert by_name["eth0"].tx_bytes.value >= 3 * 42  # three ARP requests
    assert by_name["peer0"].rx_bytes.value >= 3 * 42
    assert by_name["eth0"].rx_errors.value == 0

    metrics = cri.client.runtime.ListPodSandboxMetrics(api.ListPodSandboxMetricsRequest(), timeout=10).pod_metrics
    [pod_metrics] = [m for m in metrics if m.pod_sandbox_id == pod_id]
    tx = {tuple(m.label_values)[-1]: m.value.value for m in pod_metrics.metrics
          if m.name == "container_network_transmit_bytes_total"}
    assert tx["eth0"] >= 3 * 42


def test_metric_descriptors_match_pod_metrics(cri):
    _, ctr = run_container(cri, ["/bin/sh", "-c", "while :; do :; done"])
    descriptors = cri.client.runtime.ListMetricDescriptors(api.ListMetricDescriptorsRequest(), timeout=10).descriptors
    keys = {d.name: list(d.label_keys) for d in descriptors}
    for name in ("container_cpu_usage_seconds_total", "container_memory_working_set_bytes",
                 "container_memory_usage_bytes", "container_memory_rss", "container_processes",
                 "container_fs_usage_bytes", "container_fs_inodes_total", "container_network_receive_bytes_total",
                 "container_network_transmit_errors_total"):
        assert name in keys

    def container_metrics() -> dict[str, int]:
        metrics = cri.client.runtime.ListPodSandboxMetrics(api.ListPodSandboxMetricsRequest(), timeout=10).pod_metrics
        [container] = [c for p in metrics for c in p.container_metrics if c.container_id == ctr]
        values = {}
        for metric in container.metrics:
            # The kubelet builds Prometheus metrics from these: label values must match the descriptor's keys.
            assert len(metric.label_values) == len(keys[metric.name]), metric.name
            values.setdefault(metric.name, metric.value.value)
        return values

    # The busy loop gets a whole CPU second soon on an idle node, later on a busy one.
    deadline = time.monotonic() + 20 * SLOWDOWN
    while (values := container_metrics())["container_cpu_usage_seconds_total"] < 1 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert values["container_cpu_usage_seconds_total"] >= 1
    assert values["container_processes"] == 1
    assert values["container_memory_working_set_bytes"] > 0
    assert values["container_fs_inodes_total"] > 0


PRESSURE_FILES = ("cpu.pressure", "memory.pressure", "io.pressure")
PRESSURE_METRICS = [f"container_pressure_{resource}_{kind}_seconds_total"
                    for resource in ("cpu", "memory", "io") for kind in ("stalled", "waiting")]


def _cgroup_of(d, container_id: str) -> str:
    response = d.client.runtime.ContainerStatus(api.ContainerStatusRequest(container_id=container_id, verbose=True),
                                                timeout=10)
    return json.loads(response.info["info"])["cgroup"]


def _pressure_dir_or_skip(cgroup: str) -> Path:
    """The container's cgroup2 directory with its pressure files; skips (naming what is missing) elsewhere."""
    layout = cgroups.layout()
    if not all(cgroups.is_v2(c) for c in ("cpu", "memory", "io")):
        pytest.skip(f"cgroup v2 only: PSI is reported where cpu, memory and io are on cgroup v2; this host is "
                    f"{layout.version}")
    directory = cgroups.cgroup_dir(cgroup, "memory")
    missing = [name for name in PRESSURE_FILES if not (directory / name).exists()]
    if missing:
        pytest.skip(f"the container's cgroup {directory} has no {', '.join(missing)} "
                    f"(a kernel without PSI, booted with psi=0, or cgroup.pressure set to 0)")
    return directory


def _psi_total_ns(directory: Path, name: str, line: str) -> int:
    pressure = parse_pressure((directory / name).read_bytes())
    return getattr(pressure, line).total_us * 1000


def test_pressure_stall_information_on_cgroup_v2(cri):
    """Two busy loops under a tenth of a CPU wait for it: CPU pressure grows; memory and io pressure are
    there too, from the same pass. Totals are the kernel's microseconds as nanoseconds."""
    def limit_cpu(config: api.ContainerConfig) -> None:
        config.linux.resources.cpu_period = 100_000
        config.linux.resources.cpu_quota = 10_000

    pod_id, ctr = run_container(cri, ["/bin/sh", "-c", "while :; do :; done & while :; do :; done"],
                                configure=limit_cpu)
    directory = _pressure_dir_or_skip(_cgroup_of(cri, ctr))

    before = _psi_total_ns(directory, "cpu.pressure", "some")
    stats = wait_for(lambda: (s := container_stats(cri, ctr)).cpu.psi.Some.Total > 0 and s, timeout=30,
                     what="CPU pressure of a throttled container")
    after = _psi_total_ns(directory, "cpu.pressure", "some")
    assert before <= stats.cpu.psi.Some.Total <= after  # the file as read around the calls
    for psi in (stats.cpu.psi, stats.memory.psi, stats.io.psi):
        assert psi.HasField("Some")
        for data in (psi.Some, psi.Full) if psi.HasField("Full") else (psi.Some,):
            assert 0 <= data.Avg10 <= 100 and 0 <= data.Avg60 <= 100 and 0 <= data.Avg300 <= 100
    # memory and io have both lines; cpu has "full" from Linux 5.13.
    assert stats.memory.psi.HasField("Full") and stats.io.psi.HasField("Full")
    has_cpu_full = b"full" in (directory / "cpu.pressure").read_bytes()
    assert stats.cpu.psi.HasField("Full") == has_cpu_full
    assert stats.io.timestamp == stats.cpu.timestamp > 0

    pod = pod_stats(cri, pod_id)
    assert pod.linux.cpu.psi.Some.Total >= stats.cpu.psi.Some.Total  # the pod's cgroup holds the container's
    assert pod.linux.memory.HasField("psi") and pod.linux.io.psi.HasField("Some")
    [listed] = cri.client.runtime.ListContainerStats(
        api.ListContainerStatsRequest(filter=api.ContainerStatsFilter(id=ctr)), timeout=10).stats
    assert listed.cpu.psi.Some.Total >= stats.cpu.psi.Some.Total

    descriptors = {d.name for d in cri.client.runtime.ListMetricDescriptors(api.ListMetricDescriptorsRequest(),
                                                                           timeout=10).descriptors}
    assert set(PRESSURE_METRICS) <= descriptors
    metrics = cri.client.runtime.ListPodSandboxMetrics(api.ListPodSandboxMetricsRequest(), timeout=10).pod_metrics
    [container] = [c for p in metrics for c in p.container_metrics if c.container_id == ctr]
    names = {m.name for m in container.metrics}
    expected = {n for n in PRESSURE_METRICS if n != "container_pressure_cpu_stalled_seconds_total" or has_cpu_full}
    assert expected <= names
