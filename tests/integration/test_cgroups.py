"""The cgroupfs driver on this host's real cgroup filesystems (root only).

Every test works under its own /crio-fast-test-<random> cgroup, removed (with
any process left in it) after the test whatever its outcome.
"""

from __future__ import annotations

import errno
import os
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator

import pytest

from crio_fast.cgroups import (
    CgroupError,
    CgroupManager,
    CgroupPaths,
    CgroupValidationError,
    CgroupWriteError,
    Resources,
    read_files,
    shares_to_weight,
    write_files,
)

pytestmark = pytest.mark.integration

MiB = 1 << 20


def _v2_root_controls(layout) -> tuple[str, set[str]] | None:
    """The cgroup2 root's subtree_control file and what it enables now."""
    if layout.unified is None:
        return None
    path = os.path.join(layout.unified.mount_point, "cgroup.subtree_control")
    with open(path) as f:
        return path, set(f.read().split())


@pytest.fixture(scope="module")
def manager() -> Iterator[CgroupManager]:
    """The driver on this host; the cgroup2 root's controllers are left as found."""
    if os.geteuid() != 0:
        pytest.skip("cgroup tests need root")
    manager = CgroupManager()
    before = _v2_root_controls(manager.layout)
    try:
        yield manager
    finally:
        if before is not None:
            path, enabled_before = before
            for controller in sorted(_v2_root_controls(manager.layout)[1] - enabled_before):
                try:
                    write_files([(path, f"-{controller}")])
                except OSError:
                    pass  # someone else's cgroup uses it now: theirs to keep


@pytest.fixture
def test_root(manager: CgroupManager) -> Iterator[str]:
    """A unique top-level cgroup path; removed with everything below it afterwards."""
    root = f"/crio-fast-test-{uuid.uuid4().hex[:12]}"
    try:
        yield root
    finally:
        manager.remove(manager.paths(root), timeout=10)
        left = [d for d in manager.paths(root).hierarchy_dirs.values() if os.path.exists(d)]
        assert not left, f"test cgroups left behind: {left}"


@pytest.fixture
def spawn() -> Iterator[Callable[..., subprocess.Popen]]:
    """Start processes; each is killed and reaped after the test."""
    started: list[subprocess.Popen] = []

    def start(*argv: str, **kwargs) -> subprocess.Popen:
        process = subprocess.Popen(list(argv or ("sleep", "60")), **kwargs)
        started.append(process)
        return process

    try:
        yield start
    finally:
        for process in started:
            if process.poll() is None:
                process.kill()
            process.wait(timeout=10)


def read(paths: CgroupPaths, controller: str, name: str) -> str:
    with open(os.path.join(paths.dirs[controller], name)) as f:
        return f.read().strip()


def place(paths: CgroupPaths, pid: int) -> None:
    write_files([(procs, str(pid)) for procs in paths.procs_files])


def cgroups_of(pid: int) -> set[str]:
    with open(f"/proc/{pid}/cgroup") as f:
        return {line.split(":", 2)[2] for line in f.read().splitlines()}


def test_pod_and_container_dirs_exist_in_every_hierarchy(manager, test_root):
    pod = manager.pod_cgroup(f"{test_root}/burstable/pod1", "pod1")
    assert pod.created
    container = manager.container_cgroup(pod, "c1", None)
    assert container.created and container.path == f"{test_root}/burstable/pod1/crio-fast-c1"
    for hierarchy in manager.layout.hierarchies:
        if hierarchy.version == 2 or hierarchy.controllers or hierarchy.name == "systemd":
            assert os.path.isdir(hierarchy.directory(container.path)), hierarchy.mount_point
    assert all(os.path.isfile(f) for f in container.procs_files)
    assert len(container.procs_files) == len(set(container.procs_files))
    # Making it again finds it in place.
    again = manager.container_cgroup(f"{test_root}/burstable/pod1", "c1", None)
    assert not again.created and again.dirs == container.dirs


def test_limits_applied_and_read_back(manager, test_root):
    pod = manager.pod_cgroup(f"{test_root}/pod", "p")
    resources = Resources(
        cpu_shares=512,
        cpu_quota=50000,
        cpu_period=100000,
        memory_limit_in_bytes=64 * MiB,
        pids_limit=50,
        cpuset_cpus="0",
    )
    c = manager.container_cgroup(pod, "limits", resources)
    layout = manager.layout
    if layout.is_v2("cpu"):
        assert read(c, "cpu", "cpu.weight") == str(shares_to_weight(512))
        assert read(c, "cpu", "cpu.max") == "50000 100000"
    else:
        assert read(c, "cpu", "cpu.shares") == "512"
        assert read(c, "cpu", "cpu.cfs_quota_us") == "50000"
        assert read(c, "cpu", "cpu.cfs_period_us") == "100000"
    if layout.is_v2("memory"):
        assert read(c, "memory", "memory.max") == str(64 * MiB)
        if layout.swap_accounting:
            assert read(c, "memory", "memory.swap.max") == "0"
    else:
        assert read(c, "memory", "memory.limit_in_bytes") == str(64 * MiB)
        if layout.swap_accounting:
            assert read(c, "memory", "memory.memsw.limit_in_bytes") == str(64 * MiB)
    assert read(c, "pids", "pids.max") == "50"
    assert read(c, "cpuset", "cpuset.cpus") == "0"


def test_cpuset_copied_from_parent_on_v1(manager, test_root):
    cpuset = manager.layout.hierarchy_of("cpuset")
    if cpuset is None or cpuset.version != 1:
        pytest.skip("v1 cpuset copy: cpuset is not on a v1 hierarchy here")
    with open(os.path.join(cpuset.mount_point, "cpuset.cpus")) as f:
        root_cpus = f.read().strip()
    with open(os.path.join(cpuset.mount_point, "cpuset.mems")) as f:
        root_mems = f.read().strip()
    pod = manager.pod_cgroup(f"{test_root}/a/b/pod", "p")
    # The pod has the kernel fill its containers' cpusets at mkdir...
    assert read(pod, "cpuset", "cgroup.clone_children") == "1"
    container = manager.container_cgroup(pod, "c", None)
    # ...and a pod that does not (made by a build before, or the kubelet's) gets them copied.
    write_files([(os.path.join(pod.dirs["cpuset"], "cgroup.clone_children"), "0")])
    copied = manager.container_cgroup(pod, "d", None)
    assert read(copied, "cpuset", "cgroup.clone_children") == "0"
    for path in (f"{test_root}/a", f"{test_root}/a/b", pod.path, container.path, copied.path):
        directory = cpuset.directory(path)
        assert read_files([f"{directory}/cpuset.cpus", f"{directory}/cpuset.mems"]) == [
            f"{root_cpus}\n".encode(),
            f"{root_mems}\n".encode(),
        ]


def test_process_is_placed_in_every_hierarchy(manager, test_root, spawn):
    pod = manager.pod_cgroup(f"{test_root}/pod", "p")
    container = manager.container_cgroup(pod, "placed", Resources(pids_limit=20))
    sleeper = spawn()
    place(container, sleeper.pid)
    assert cgroups_of(sleeper.pid) == {container.path}
    assert container.pids() == [sleeper.pid]
    assert pod.pids() == []


def test_v2_pod_cgroup_takes_no_processes_but_its_monitor_leaf_does(manager, test_root, spawn):
    if manager.layout.unified is None:
        pytest.skip("no cgroup2 mount on this host")
    pod = manager.pod_cgroup(f"{test_root}/pod", "p")
    sleeper = spawn()
    if manager.layout.v2_controllers:
        # Controllers are enabled for the pod's children: no internal processes.
        with pytest.raises(CgroupWriteError) as info:
            write_files([(os.path.join(pod.hierarchy_dirs["unified"], "cgroup.procs"), str(sleeper.pid))])
        assert info.value.errno == errno.EBUSY
        assert "cgroup.procs: Device or resource busy" in str(info.value)
    monitor = manager.monitor_cgroup(pod, "p")
    place(monitor, sleeper.pid)
    assert cgroups_of(sleeper.pid) == {monitor.path}


def test_pod_and_monitor_cgroups_in_one_pass(manager, test_root, spawn):
    """What RunPodSandbox makes while the monitor starts: the pod cgroup and the monitor's leaf in
    it, in every hierarchy, ready to take the monitor (cpusets filled in on v1)."""
    pod = manager.pod_cgroup_paths(f"{test_root}/pod", "p")
    monitor = manager.monitor_cgroup_paths(pod, "p")
    manager.create_pod_and_monitor_cgroups(pod, monitor)
    assert (pod.created, monitor.created) == (True, True)
    for cgroup in (pod, monitor):
        assert all(os.path.isdir(d) for d in cgroup.hierarchy_dirs.values())
    if "cpuset" in monitor.dirs and not manager.layout.is_v2("cpuset"):
        assert read(monitor, "cpuset", "cpuset.cpus") == read(pod, "cpuset", "cpuset.cpus") != ""
        assert read(monitor, "cpuset", "cpuset.mems") == read(pod, "cpuset", "cpuset.mems") != ""
    sleeper = spawn()
    place(monitor, sleeper.pid)
    assert cgroups_of(sleeper.pid) == {monitor.path}
    assert pod.pids() == []
    manager.remove(pod)
    assert not any(os.path.exists(d) for d in pod.hierarchy_dirs.values())


def test_pod_and_monitor_cgroups_under_a_parent_made_by_the_kubelet(manager, test_root):
    """With a cgroup_parent the kubelet made, the pod cgroup exists: only the monitor's leaf is
    ours, and that is what the pod's removal takes away."""
    kubelet_pod = manager.pod_cgroup(f"{test_root}/kubepods/podx", "p")
    pod = manager.pod_cgroup_paths(f"{test_root}/kubepods/podx", "p")
    monitor = manager.monitor_cgroup_paths(pod, "p")
    manager.create_pod_and_monitor_cgroups(pod, monitor)
    assert (pod.created, monitor.created) == (False, True)
    manager.remove(monitor)
    assert all(os.path.isdir(d) for d in kubelet_pod.hierarchy_dirs.values())
    with pytest.raises(ValueError):
        manager.create_pod_and_monitor_cgroups(pod, manager.paths(f"{test_root}/elsewhere"))


def test_live_update_raises_and_lowers_memory_and_cpu(manager, test_root, spawn):
    pod = manager.pod_cgroup(f"{test_root}/pod", "p")
    c = manager.container_cgroup(
        pod, "upd", Resources(memory_limit_in_bytes=64 * MiB, cpu_quota=50000, cpu_period=100000)
    )
    place(c, spawn().pid)
    # Raising both memory and memory+swap: on v1 memory+swap has to grow first.
    manager.update(
        c,
        Resources(
            memory_limit_in_bytes=128 * MiB, memory_swap_limit_in_bytes=256 * MiB, cpu_quota=20000, cpu_period=50000
        ),
    )
    if manager.layout.is_v2("memory"):
        assert read(c, "memory", "memory.max") == str(128 * MiB)
        if manager.layout.swap_accounting:
            assert read(c, "memory", "memory.swap.max") == str(128 * MiB)
    else:
        assert read(c, "memory", "memory.limit_in_bytes") == str(128 * MiB)
        if manager.layout.swap_accounting:
            assert read(c, "memory", "memory.memsw.limit_in_bytes") == str(256 * MiB)
    # Lowering both below the old memory limit: memory has to shrink first.
    manager.update(c, Resources(memory_limit_in_bytes=32 * MiB, memory_swap_limit_in_bytes=32 * MiB))
    memory_file = "memory.max" if manager.layout.is_v2("memory") else "memory.limit_in_bytes"
    assert read(c, "memory", memory_file) == str(32 * MiB)
    if manager.layout.is_v2("cpu"):
        assert read(c, "cpu", "cpu.max") == "20000 50000"
    else:
        assert (read(c, "cpu", "cpu.cfs_quota_us"), read(c, "cpu", "cpu.cfs_period_us")) == ("20000", "50000")


def test_remove_kills_remaining_processes_and_is_idempotent(manager, test_root, spawn):
    pod = manager.pod_cgroup(f"{test_root}/pod", "p")
    containers = [manager.container_cgroup(pod, f"c{i}", None) for i in range(2)]
    sleepers = [spawn() for _ in containers]
    for container, sleeper in zip(containers, sleepers, strict=True):
        place(container, sleeper.pid)
    monitor = manager.monitor_cgroup(pod, "p")
    manager.remove(pod, timeout=5)
    for sleeper in sleepers:
        assert sleeper.wait(timeout=5) == -9
    for cgroup in containers + [monitor, pod]:
        assert not any(os.path.exists(d) for d in cgroup.hierarchy_dirs.values())
    manager.remove(pod)
    manager.remove(containers[0])
    manager.remove(manager.paths(f"{test_root}/never-made"))


def test_hugetlb_limit_written_where_hugetlb_lives(manager, test_root):
    sizes = manager.layout.hugepage_sizes
    if not sizes:
        pytest.skip("this kernel offers no hugepage sizes (/sys/kernel/mm/hugepages is empty)")
    hugetlb = manager.layout.hierarchy_of("hugetlb")
    if hugetlb is None:
        pytest.skip("no hugetlb controller on this host")
    pod = manager.pod_cgroup(f"{test_root}/pod", "p")
    limits = [(size, 0 if i else 4 * MiB) for i, size in enumerate(sizes)]
    c = manager.container_cgroup(pod, "huge", Resources(hugepage_limits=limits))
    suffix = "max" if hugetlb.version == 2 else "limit_in_bytes"
    assert c.dirs["hugetlb"].startswith(hugetlb.mount_point + "/")
    for size, limit in limits:
        assert read(c, "hugetlb", f"hugetlb.{size}.{suffix}") == str(limit)


def test_unified_values_on_cgroup2_and_rejection_elsewhere(manager, test_root):
    layout = manager.layout
    pod = manager.pod_cgroup(f"{test_root}/pod", "p")
    if layout.unified is None:
        with pytest.raises(CgroupValidationError, match="cgroup v1 only"):
            manager.container_cgroup(pod, "u", Resources(unified={"memory.high": "1G"}))
        return
    c = manager.container_cgroup(pod, "u", Resources(unified={"cgroup.max.descendants": "7"}))
    assert read(c, "unified", "cgroup.max.descendants") == "7"
    if not layout.is_v2("memory"):
        with pytest.raises(CgroupValidationError, match="bound to cgroup v1"):
            manager.update(c, Resources(unified={"memory.high": "1G"}))


def test_failed_limits_roll_back_the_new_cgroup(manager, test_root):
    pod = manager.pod_cgroup(f"{test_root}/pod", "p")
    impossible_cpu = str((os.cpu_count() or 1) + 64)
    with pytest.raises(CgroupValidationError) as info:
        manager.container_cgroup(pod, "bad", Resources(cpuset_cpus=impossible_cpu))
    assert f"write {impossible_cpu} to " in str(info.value)
    assert "cpuset.cpus: " in str(info.value)
    leaf = manager.paths(f"{pod.path}/crio-fast-bad")
    assert not any(os.path.exists(d) for d in leaf.hierarchy_dirs.values())


def test_native_write_error_names_file_value_and_errno_text(manager, test_root):
    pod = manager.pod_cgroup(f"{test_root}/pod", "p")
    pids_max = os.path.join(pod.dirs["pids"], "pids.max")
    with pytest.raises(CgroupWriteError) as info:
        write_files([(pids_max, "12"), (pids_max, "many")])
    assert str(info.value) == f"write many to {pids_max}: Invalid argument"
    assert info.value.errno == errno.EINVAL and info.value.filename == pids_max
    # The batch stopped at the failing write; the one before it stayed applied.
    assert read(pod, "pids", "pids.max") == "12"
    missing = os.path.join(pod.dirs["pids"], "no-such-file")
    assert read_files([pids_max, missing]) == [b"12\n", None]


def test_oom_kill_is_counted(manager, test_root, spawn):
    pod = manager.pod_cgroup(f"{test_root}/pod", "p")
    c = manager.container_cgroup(pod, "oom", Resources(memory_limit_in_bytes=48 * MiB))
    assert manager.oom_kill_count(c) == 0
    hog = spawn(
        sys.executable, "-c", "import sys; sys.stdin.readline(); b = bytearray(512 << 20)", stdin=subprocess.PIPE
    )
    place(c, hog.pid)
    hog.stdin.write(b"go\n")
    hog.stdin.close()
    assert hog.wait(timeout=30) == -9
    assert manager.oom_kill_count(c) == 1


def test_slice_parent_rejected(manager):
    with pytest.raises(CgroupError, match="systemd slice name"):
        manager.pod_cgroup("kubepods-burstable-pod123.slice", "p")
