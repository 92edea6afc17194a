"""CRI resources -> cgroup file writes, for v1, v2 and hybrid layouts (no filesystem)."""

from __future__ import annotations

import dataclasses

import pytest

from crio_fast.cgroups import (
    CgroupError,
    CgroupManager,
    CgroupValidationError,
    Resources,
    normalize_cgroup_parent,
    parse_oom_kill_count,
    plan_writes,
    shares_to_weight,
)
from crio_fast.cgroups.resources import cpu_max_value, v2_swap_max
from crio_fast.cgroups.v2 import plan_subtree_control
from tests.unit.test_cgroups_layout import hybrid_layout, v1_layout, v2_layout

POD = "/kubepods/burstable/pod1"


def container_dirs(layout):
    return CgroupManager(layout).paths(f"{POD}/crio-fast-c1").dirs


def full_resources(**overrides) -> Resources:
    values = dict(
        cpu_period=100000,
        cpu_quota=50000,
        cpu_shares=512,
        memory_limit_in_bytes=256 << 20,
        memory_swap_limit_in_bytes=512 << 20,
        cpuset_cpus="0-1",
        cpuset_mems="0",
        hugepage_limits=[("2MB", 4 << 20), ("1GB", 0)],
        pids_limit=100,
    )
    values.update(overrides)
    return Resources(**values)


def test_v1_full_mapping_with_co_mounted_cpu():
    layout = v1_layout()
    base = "/sys/fs/cgroup/{}/kubepods/burstable/pod1/crio-fast-c1"
    cpu = base.format("cpu,cpuacct")
    writes = plan_writes(layout, container_dirs(layout), full_resources())
    assert writes == [
        (f"{cpu}/cpu.shares", "512"),
        (f"{cpu}/cpu.cfs_quota_us", "-1"),
        (f"{cpu}/cpu.cfs_period_us", "100000"),
        (f"{cpu}/cpu.cfs_quota_us", "50000"),
        (f"{base.format('cpuset')}/cpuset.cpus", "0-1"),
        (f"{base.format('cpuset')}/cpuset.mems", "0"),
        (f"{base.format('memory')}/memory.limit_in_bytes", str(256 << 20)),
        (f"{base.format('memory')}/memory.memsw.limit_in_bytes", str(512 << 20)),
        (f"{base.format('hugetlb')}/hugetlb.2MB.limit_in_bytes", str(4 << 20)),
        (f"{base.format('hugetlb')}/hugetlb.1GB.limit_in_bytes", "0"),
        (f"{base.format('pids')}/pids.max", "100"),
    ]


def test_hybrid_mapping_puts_hugetlb_on_cgroup2():
    layout = hybrid_layout()
    writes = dict(plan_writes(layout, container_dirs(layout), full_resources()))
    unified = "/sys/fs/cgroup/unified/kubepods/burstable/pod1/crio-fast-c1"
    assert writes[f"{unified}/hugetlb.2MB.max"] == str(4 << 20)
    assert writes[f"{unified}/hugetlb.1GB.max"] == "0"
    assert writes["/sys/fs/cgroup/cpu/kubepods/burstable/pod1/crio-fast-c1/cpu.shares"] == "512"
    assert writes["/sys/fs/cgroup/memory/kubepods/burstable/pod1/crio-fast-c1/memory.memsw.limit_in_bytes"] == str(
        512 << 20
    )
    assert not any("limit_in_bytes" in path and "hugetlb" in path for path in writes)


def test_v2_full_mapping():
    layout = v2_layout()
    d = "/sys/fs/cgroup/kubepods/burstable/pod1/crio-fast-c1"
    writes = plan_writes(layout, container_dirs(layout), full_resources())
    assert writes == [
        (f"{d}/cpu.weight", str(shares_to_weight(512))),
        (f"{d}/cpu.max", "50000 100000"),
        (f"{d}/cpuset.cpus", "0-1"),
        (f"{d}/cpuset.mems", "0"),
        (f"{d}/memory.max", str(256 << 20)),
        (f"{d}/memory.swap.max", str(256 << 20)),
        (f"{d}/hugetlb.2MB.max", str(4 << 20)),
        (f"{d}/hugetlb.1GB.max", "0"),
        (f"{d}/pids.max", "100"),
    ]


def test_zero_means_not_set():
    for layout in (v1_layout(), v2_layout(), hybrid_layout()):
        assert plan_writes(layout, container_dirs(layout), Resources()) == []


@pytest.mark.parametrize(
    "shares, weight",
    [(2, 1), (1024, 39), (262144, 10000), (1, 1), (10**7, 10000), (512, 20), (100000, 3815)],
)
def test_shares_to_weight(shares, weight):
    assert shares_to_weight(shares) == weight


def test_shares_are_clamped_like_the_kernel_does():
    layout = v1_layout()
    dirs = container_dirs(layout)
    assert plan_writes(layout, dirs, Resources(cpu_shares=1))[0][1] == "2"
    assert plan_writes(layout, dirs, Resources(cpu_shares=10**6))[0][1] == "262144"


@pytest.mark.parametrize(
    "quota, period, value",
    [(50000, 100000, "50000 100000"), (-1, 100000, "max 100000"), (0, 20000, "max 20000"), (30000, 0, "30000")],
)
def test_v2_cpu_max(quota, period, value):
    assert cpu_max_value(quota, period) == value


def test_v1_cpu_quota_or_period_alone():
    layout = v1_layout()
    dirs = container_dirs(layout)
    assert [w[1] for w in plan_writes(layout, dirs, Resources(cpu_quota=-1))] == ["-1"]
    assert [w[0].rsplit("/", 1)[1] for w in plan_writes(layout, dirs, Resources(cpu_period=50000))] == [
        "cpu.cfs_period_us"
    ]


def test_memory_without_swap_limit_forbids_swap():
    layout = v2_layout()
    writes = dict(plan_writes(layout, container_dirs(layout), Resources(memory_limit_in_bytes=1 << 30)))
    d = "/sys/fs/cgroup/kubepods/burstable/pod1/crio-fast-c1"
    assert writes == {f"{d}/memory.max": str(1 << 30), f"{d}/memory.swap.max": "0"}
    layout = v1_layout()
    writes = plan_writes(layout, container_dirs(layout), Resources(memory_limit_in_bytes=1 << 30))
    assert [value for _, value in writes] == [str(1 << 30), str(1 << 30)]


def test_unlimited_swap():
    assert v2_swap_max(1 << 30, -1) == "max"
    assert v2_swap_max(1 << 30, 3 << 30) == str(2 << 30)
    layout = v1_layout()
    writes = plan_writes(
        layout, container_dirs(layout), Resources(memory_limit_in_bytes=1 << 30, memory_swap_limit_in_bytes=-1)
    )
    # Unlimited memory+swap goes first: it can never be below the memory limit.
    assert [(p.rsplit("/", 1)[1], v) for p, v in writes] == [
        ("memory.memsw.limit_in_bytes", "-1"),
        ("memory.limit_in_bytes", str(1 << 30)),
    ]


def test_swap_files_skipped_without_swap_accounting():
    layout = v1_layout()
    layout = dataclasses.replace(layout, swap_accounting=False)
    writes = plan_writes(layout, container_dirs(layout), full_resources())
    assert not any("memsw" in path for path, _ in writes)
    assert any(path.endswith("memory.limit_in_bytes") for path, _ in writes)


@pytest.mark.parametrize(
    "current, expected_first",
    [
        (None, "memory.limit_in_bytes"),  # new cgroup: limits start unlimited
        (1 << 30, "memory.limit_in_bytes"),  # lowering below the present limit
        (128 << 20, "memory.memsw.limit_in_bytes"),  # raising: memory+swap must grow first
        (512 << 20, "memory.memsw.limit_in_bytes"),  # new memory+swap equals the present limit
    ],
)
def test_v1_memory_write_order_on_update(current, expected_first):
    layout = v1_layout()
    res = Resources(memory_limit_in_bytes=256 << 20, memory_swap_limit_in_bytes=512 << 20)
    writes = plan_writes(layout, container_dirs(layout), res, current_memory_limit=current)
    names = [p.rsplit("/", 1)[1] for p, _ in writes]
    assert names[0] == expected_first and len(names) == 2


def test_unified_rejected_on_pure_v1():
    layout = v1_layout()
    with pytest.raises(CgroupValidationError, match="need cgroup v2; this host has cgroup v1 only"):
        plan_writes(layout, container_dirs(layout), Resources(unified={"memory.high": "1G"}))


def test_unified_on_hybrid_only_for_controllers_on_cgroup2():
    layout = hybrid_layout()
    dirs = container_dirs(layout)
    with pytest.raises(CgroupValidationError, match="controller memory is bound to cgroup v1"):
        plan_writes(layout, dirs, Resources(unified={"memory.high": "1G"}))
    with pytest.raises(CgroupValidationError, match="controller io is not available"):
        plan_writes(layout, dirs, Resources(unified={"io.weight": "100"}))
    writes = plan_writes(layout, dirs, Resources(unified={"hugetlb.2MB.max": "0", "cgroup.max.descendants": "5"}))
    assert writes == [
        ("/sys/fs/cgroup/unified/kubepods/burstable/pod1/crio-fast-c1/hugetlb.2MB.max", "0"),
        ("/sys/fs/cgroup/unified/kubepods/burstable/pod1/crio-fast-c1/cgroup.max.descendants", "5"),
    ]


def test_unified_on_v2_is_written_last_and_overrides():
    layout = v2_layout()
    d = "/sys/fs/cgroup/kubepods/burstable/pod1/crio-fast-c1"
    writes = plan_writes(
        layout,
        container_dirs(layout),
        Resources(memory_limit_in_bytes=1 << 30, unified={"memory.swap.max": "max", "memory.high": "900M"}),
    )
    assert writes == [
        (f"{d}/memory.max", str(1 << 30)),
        (f"{d}/memory.swap.max", "max"),
        (f"{d}/memory.high", "900M"),
    ]


@pytest.mark.parametrize(
    "key", ["cgroup.procs", "cgroup.subtree_control", "../memory.max", "memory", "Memory.max", "cgroup.kill"]
)
def test_unified_keys_that_are_not_settable(key):
    layout = v2_layout()
    with pytest.raises(CgroupValidationError, match="not a settable control file"):
        plan_writes(layout, container_dirs(layout), Resources(unified={key: "1"}))


@pytest.mark.parametrize(
    "resources, message",
    [
        (Resources(memory_limit_in_bytes=1 << 30, memory_swap_limit_in_bytes=1 << 29), "is below the memory limit"),
        (Resources(memory_swap_limit_in_bytes=1 << 29), "needs a memory limit as well"),
        (Resources(memory_limit_in_bytes=-5), "memory limit must not be negative"),
        (Resources(memory_limit_in_bytes=1 << 30, memory_swap_limit_in_bytes=-2), "memory\\+swap limit must be -1"),
        (Resources(cpu_quota=999), "at least 1000us"),
        (Resources(cpu_quota=-7), "cpu quota must be -1"),
        (Resources(cpu_period=500), "cpu period must be 1000..1000000us"),
        (Resources(cpu_period=2_000_000), "cpu period must be"),
        (Resources(cpu_shares=-1), "cpu shares must not be negative"),
        (Resources(hugepage_limits=[("3MB", 1)]), "unknown hugepage size '3MB' \\(this host has: 2MB, 1GB\\)"),
        (Resources(hugepage_limits=[("2MB", 1), ("2MB", 2)]), "limited twice"),
        (Resources(hugepage_limits=[("2MB", -1)]), "must not be negative"),
        (Resources(cpuset_cpus="0-3;4"), "cpuset cpus must be a list"),
        (Resources(cpuset_mems="all"), "cpuset mems must be a list"),
        (Resources(pids_limit=-3), "pids limit must be -1"),
        (Resources(oom_score_adj=1001), "oom_score_adj must be -1000..1000"),
    ],
)
def test_validation_errors(resources, message):
    for layout in (v1_layout(), v2_layout()):
        with pytest.raises(CgroupValidationError, match=message):
            plan_writes(layout, container_dirs(layout), resources)


def test_missing_controller_is_reported():
    layout = hybrid_layout()
    without_hugetlb = {k: v for k, v in layout.controllers.items() if k != "hugetlb"}
    layout = dataclasses.replace(layout, controllers=without_hugetlb)
    with pytest.raises(CgroupValidationError, match="needs the hugetlb cgroup controller"):
        plan_writes(layout, container_dirs(layout), Resources(hugepage_limits=[("2MB", 0)]))


def test_pids_unlimited():
    layout = v2_layout()
    assert plan_writes(layout, container_dirs(layout), Resources(pids_limit=-1))[0][1] == "max"


def test_validation_error_is_an_invalid_argument_cgroup_error():
    import grpc

    from crio_fast.errors import InvalidArgument
    from crio_fast.server.status import status_of

    with pytest.raises(CgroupError) as info:
        normalize_cgroup_parent("kubepods-burstable-pod123.slice")
    assert isinstance(info.value, InvalidArgument)
    assert status_of(info.value) == grpc.StatusCode.INVALID_ARGUMENT


# --- cgroup paths and names ------------------------------------------------


def test_slice_parent_rejected_with_cgroupfs():
    with pytest.raises(CgroupValidationError, match='systemd slice name, but the cgroup manager is "cgroupfs"'):
        normalize_cgroup_parent("kubepods-burstable-pod123.slice")
    with pytest.raises(CgroupValidationError, match="systemd slice name"):
        normalize_cgroup_parent("/kubepods.slice/kubepods-burstable.slice/")


@pytest.mark.parametrize("parent", ["/", "", "/kubepods/../etc", "/a/./b", "/a/b\nc", "/l" * 33, "/" + "c" * 256,
                                    "/a" + "/" * 1100 + "b"])
def test_invalid_parents(parent):
    with pytest.raises(CgroupValidationError):
        normalize_cgroup_parent(parent)


def test_parent_normalized():
    assert normalize_cgroup_parent("kubepods//burstable/pod1/") == "/kubepods/burstable/pod1"
    assert normalize_cgroup_parent("/l" * 32) == "/l" * 32


def test_container_names_validated():
    manager = CgroupManager(v2_layout())
    assert manager.container_path(POD, "abc123") == f"{POD}/crio-fast-abc123"
    for bad in ("", "../x", "a/b", ".hidden", "x" * 300):
        with pytest.raises(CgroupValidationError):
            manager.container_path(POD, bad)


def test_paths_on_hybrid_host():
    paths = CgroupManager(hybrid_layout()).paths(f"{POD}/crio-fast-c1")
    leaf = "kubepods/burstable/pod1/crio-fast-c1"
    assert paths.path == f"/{leaf}"
    assert paths.dirs["cpu"] == f"/sys/fs/cgroup/cpu/{leaf}"
    assert paths.dirs["hugetlb"] == f"/sys/fs/cgroup/unified/{leaf}"
    assert paths.dirs["unified"] == f"/sys/fs/cgroup/unified/{leaf}"
    assert paths.dirs["name=systemd"] == f"/sys/fs/cgroup/systemd/{leaf}"
    assert len(paths.procs_files) == 10  # 8 controller hierarchies, name=systemd, unified
    assert f"/sys/fs/cgroup/unified/{leaf}/cgroup.procs" in paths.procs_files
    assert paths.oom_counter_file == f"/sys/fs/cgroup/memory/{leaf}/memory.oom_control"


def test_paths_on_v1_host_share_co_mounted_dirs():
    paths = CgroupManager(v1_layout()).paths(f"{POD}/crio-fast-c1")
    assert paths.dirs["cpu"] == paths.dirs["cpuacct"]
    assert paths.dirs["cpu"].startswith("/sys/fs/cgroup/cpu,cpuacct/")
    assert "unified" not in paths.dirs
    # One procs file per hierarchy: 10 controller hierarchies + name=systemd.
    assert len(paths.procs_files) == 11 == len(set(paths.procs_files))


def test_paths_on_v2_host():
    paths = CgroupManager(v2_layout()).paths(f"{POD}/crio-fast-c1")
    assert paths.procs_files == ["/sys/fs/cgroup/kubepods/burstable/pod1/crio-fast-c1/cgroup.procs"]
    assert paths.oom_counter_file == "/sys/fs/cgroup/kubepods/burstable/pod1/crio-fast-c1/memory.events"
    assert set(paths.dirs.values()) == {"/sys/fs/cgroup/kubepods/burstable/pod1/crio-fast-c1"}


def test_oom_kill_counter_parsing():
    v1 = b"oom_kill_disable 0\nunder_oom 0\noom_kill 3\n"
    v2 = b"low 0\nhigh 0\nmax 12\noom 2\noom_kill 2\noom_group_kill 0\n"
    assert parse_oom_kill_count(v1) == 3
    assert parse_oom_kill_count(v2) == 2
    assert parse_oom_kill_count(b"oom_kill_disable 0\nunder_oom 0\n") == 0  # kernels before 4.13
    assert parse_oom_kill_count(None) == 0


# --- v2 controller enabling plan ---------------------------------------------


def test_v2_subtree_control_enables_top_down_what_is_offered():
    chain = ["/cg", "/cg/kubepods", "/cg/kubepods/pod1"]
    writes = plan_subtree_control(
        chain,
        [b"cpuset cpu io memory pids\n", b"cpu memory\n", b""],
        [b"cpu memory\n", b"\n", b""],
        frozenset({"cpu", "memory", "pids", "hugetlb"}),
    )
    assert writes == [
        ("/cg/cgroup.subtree_control", "+pids"),
        ("/cg/kubepods/cgroup.subtree_control", "+cpu +memory +pids"),
        ("/cg/kubepods/pod1/cgroup.subtree_control", "+cpu +memory +pids"),
    ]


def test_v2_subtree_control_nothing_when_already_enabled():
    writes = plan_subtree_control(["/cg", "/cg/a"], [b"cpu\n", b"cpu\n"], [b"cpu\n", b"cpu\n"], frozenset({"cpu"}))
    assert writes == []


def test_v2_subtree_control_requires_cgroup2_dirs():
    with pytest.raises(CgroupError, match="not a cgroup v2 directory"):
        plan_subtree_control(["/x"], [None], [None], frozenset({"cpu"}))
