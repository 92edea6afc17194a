"""The systemd cgroup driver's decisions that need no systemd: slice paths, unit names, the unit
properties that stand for control-file writes, and the refusals (the D-Bus side runs in the
guests, tests/integration/test_systemd_cgroups.py)."""

from __future__ import annotations

import grpc
import pytest

from crio_fast.cgroups import CgroupError, CgroupValidationError, Resources, SystemdCgroupManager, plan_writes
from crio_fast.cgroups.errors import CgroupRefusedError
from crio_fast.cgroups.systemd_driver import _start_error, make_cgroup_manager, pod_slice
from crio_fast.cgroups.systemd_units import (JOB_DEPENDENCY_FAILED, UNIT_MASKED, UNLIMITED, SystemdError, parent_slice,
                                             scope_properties, slice_path, unit_of, unit_properties)
from crio_fast.server.status import status_of
from tests.unit.test_cgroups_layout import hybrid_layout, v1_layout, v2_layout

POD_SLICE = "kubepods-burstable-pod0a1b2c3d_4e5f.slice"
POD_PATH = "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod0a1b2c3d_4e5f.slice"


class NoBus:
    """Stands where the D-Bus connection goes: these tests make no call (one would fail here)."""

    def __getattr__(self, name: str):
        raise AssertionError(f"unexpected D-Bus call {name}")


def manager(monitor_slice: str = "pod") -> SystemdCgroupManager:
    return SystemdCgroupManager(v2_layout(), monitor_slice=monitor_slice, bus=NoBus())


def test_slice_paths_follow_systemds_dashes():
    assert slice_path(POD_SLICE) == POD_PATH
    assert slice_path("system.slice") == "/system.slice"
    assert slice_path("-.slice") == "/"
    for bad in ("a--b.slice", "-a.slice", "a-.slice", ".slice", "a.scope", "a b.slice", "a/b.slice"):
        with pytest.raises(CgroupValidationError):
            slice_path(bad)


def test_a_pod_is_the_slice_its_parent_names():
    m = manager()
    assert m.pod_cgroup_paths(POD_SLICE, "p1").path == POD_PATH
    # A path whose last part is a slice: that part, as CRI-O takes it.
    assert m.pod_cgroup_paths(f"{POD_PATH}/", "p1").path == POD_PATH
    assert m.pod_cgroup_paths("", "abc").path == "/crio_fast.slice/crio_fast-podabc.slice"
    assert m.pod_cgroup_paths(POD_SLICE, "p1").dirs["unified"] == "/sys/fs/cgroup" + POD_PATH


def test_a_cgroupfs_parent_is_refused_with_the_fix():
    with pytest.raises(CgroupValidationError, match="cgroupDriver: systemd") as caught:
        manager().check_cgroup_parent("/kubepods/burstable/pod1")
    assert 'cgroup_manager = "cgroupfs"' in str(caught.value)
    with pytest.raises(CgroupValidationError, match="not a valid systemd slice"):
        pod_slice("kube--pods.slice")
    with pytest.raises(CgroupValidationError, match="longer than"):
        pod_slice("a" * 2000 + ".slice")


def test_containers_and_monitors_are_scopes():
    m = manager()
    pod = m.pod_cgroup_paths(POD_SLICE, "p1")
    container = m.container_path(pod, "c0ffee")
    assert container == f"{POD_PATH}/crio-fast-c0ffee.scope"
    assert m.container_path(POD_SLICE, "c0ffee") == container
    assert unit_of(container) == "crio-fast-c0ffee.scope" and parent_slice(container) == POD_SLICE
    # runc and crun name the scope "<prefix>-<name>.scope" in the slice of "slice:prefix:name".
    assert m.oci_cgroups_path(m.paths(container), "c0ffee") == f"{POD_SLICE}:crio-fast:c0ffee"
    assert m.oci_global_args() == ["--systemd-cgroup"]
    # runc and crun make their scopes with the collect mode the daemon gives its own (GVariant text).
    collect_mode = dict((name, value) for name, _, value in scope_properties(POD_SLICE, 1, "d", True))["CollectMode"]
    assert m.oci_annotations() == {"org.systemd.property.CollectMode": f"'{collect_mode}'"}
    monitor = m.monitor_cgroup_paths(pod, "p1")
    assert monitor.path == f"{POD_PATH}/crio-fast-monitor-p1.scope"
    assert m.pod_path_of_monitor(monitor.path, "p1") == POD_PATH
    assert m.pod_path_of_monitor(monitor.path, "other") is None
    assert m.made_by_us("crio-fast-c0ffee.scope") and m.made_by_us("crio-fast-monitor-p1.scope")
    assert not m.made_by_us("crio-c0ffee.scope") and not m.made_by_us("crio-fast-c0ffee")


def test_monitors_in_a_slice_of_their_own():
    m = manager("system.slice")
    pod = m.pod_cgroup_paths(POD_SLICE, "p1")
    monitor = m.monitor_cgroup_paths(pod, "p1")
    assert monitor.path == "/system.slice/crio-fast-monitor-p1.scope"
    assert m.pod_path_of_monitor(monitor.path, "p1") is None  # the pod's cgroup is not the monitor's parent


def test_unit_properties_say_what_the_writes_set():
    m = manager()
    paths = m.paths(f"{POD_PATH}/crio-fast-c1.scope")
    resources = Resources(cpu_period=100_000, cpu_quota=25_000, cpu_shares=512, memory_limit_in_bytes=256 << 20,
                          memory_swap_limit_in_bytes=512 << 20, cpuset_cpus="0-1,3", pids_limit=-1,
                          unified={"memory.high": "max", "memory.oom.group": "1"})
    writes = plan_writes(m.layout, paths.dirs, resources)
    properties = {name: (signature, value) for name, signature, value in unit_properties(writes)}
    assert properties["MemoryMax"] == ("t", 256 << 20)
    assert properties["MemorySwapMax"] == ("t", 256 << 20)  # v2 counts swap alone
    assert properties["MemoryHigh"] == ("t", UNLIMITED)
    assert properties["CPUWeight"][1] == 1 + (512 - 2) * 9999 // 262142
    assert properties["CPUQuotaPerSecUSec"] == ("t", 250_000)
    assert properties["CPUQuotaPeriodUSec"] == ("t", 100_000)
    assert properties["AllowedCPUs"] == ("ay", bytes([0b1011]))
    assert properties["TasksMax"] == ("t", UNLIMITED)
    # Files systemd has no property for are only written.
    assert "memory.oom.group" in {w[0].rsplit("/", 1)[-1] for w in writes}
    assert not any("oom" in name.lower() for name in properties)


def test_a_quota_systemd_cannot_express_is_rounded_up_to_its_step():
    properties = dict((n, v) for n, _, v in unit_properties([("/x/cpu.max", "1234 100000")]))
    assert properties["CPUQuotaPerSecUSec"] == 20_000  # 12.34 ms per second, in steps of 10 ms
    properties = dict((n, v) for n, _, v in unit_properties([("/x/cpu.max", "max 50000")]))
    assert properties == {"CPUQuotaPeriodUSec": 50_000, "CPUQuotaPerSecUSec": UNLIMITED}


@pytest.mark.parametrize("layout", [v1_layout, hybrid_layout], ids=["v1", "hybrid"])
def test_only_on_cgroup_v2(layout):
    with pytest.raises(CgroupError, match="needs a cgroup v2 host"):
        SystemdCgroupManager(layout(), bus=NoBus())


def test_the_driver_is_picked_by_name():
    assert make_cgroup_manager("cgroupfs", v2_layout()).driver == "cgroupfs"
    with pytest.raises(CgroupValidationError, match="unknown cgroup driver"):
        make_cgroup_manager("openrc", v2_layout())


@pytest.mark.parametrize("name", [UNIT_MASKED, JOB_DEPENDENCY_FAILED])
def test_a_unit_systemd_will_not_start_is_a_failed_precondition(name):
    error = _start_error("slice a.slice", SystemdError("StartTransientUnit: no", name))
    assert isinstance(error, CgroupRefusedError)
    assert status_of(error) == grpc.StatusCode.FAILED_PRECONDITION
    assert "slice a.slice" in str(error)


def test_other_systemd_failures_stay_cgroup_errors():
    error = _start_error("scope b.scope", SystemdError("StartTransientUnit: timeout", "timeout"))
    assert type(error) is CgroupError
