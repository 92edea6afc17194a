"""Cgroup layout discovery from recorded /proc samples of different hosts."""

from __future__ import annotations

import pytest

from crio_fast.cgroups import HYBRID, V1, V2, CgroupError, build_layout
from crio_fast.cgroups.layout import (
    hugepage_size_name,
    parse_hugepage_dirs,
    parse_mountinfo,
    parse_proc_cgroups,
    parse_proc_self_cgroup,
)

# --- A hybrid host (the development machine): every controller but hugetlb on
# its own v1 mount, hugetlb only on the cgroup2 mount at /sys/fs/cgroup/unified.
HYBRID_MOUNTINFO = """\
22 27 0:21 / /proc rw,relatime - proc proc rw
23 27 0:22 / /sys rw,relatime - sysfs sysfs rw
24 27 0:6 / /dev rw,relatime - devtmpfs devtmpfs rw,size=12334492k,nr_inodes=3083623,mode=755
27 1 254:0 / / rw,relatime - ext4 /dev/vda rw,discard
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
33 31 0:30 / /sys/fs/cgroup/cpuacct rw,relatime - cgroup cgroup rw,cpuacct
34 31 0:31 / /sys/fs/cgroup/cpuset rw,relatime - cgroup cgroup rw,cpuset
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
36 31 0:33 / /sys/fs/cgroup/devices rw,relatime - cgroup cgroup rw,devices
37 31 0:34 / /sys/fs/cgroup/freezer rw,relatime - cgroup cgroup rw,freezer
38 31 0:35 / /sys/fs/cgroup/blkio rw,relatime - cgroup cgroup rw,blkio
39 31 0:36 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
"""
HYBRID_PROC_CGROUPS = """\
#subsys_name\thierarchy\tnum_cgroups\tenabled
cpuset\t3\t1\t1
cpu\t1\t1\t1
cpuacct\t2\t1\t1
blkio\t7\t1\t1
memory\t4\t17\t1
devices\t5\t1\t1
freezer\t6\t1\t1
net_cls\t0\t1\t1
perf_event\t0\t1\t1
net_prio\t0\t1\t1
hugetlb\t0\t1\t1
pids\t8\t1\t1
"""
HYBRID_SELF_CGROUP = """\
9:name=systemd:/
8:pids:/
7:blkio:/
6:freezer:/
5:devices:/
4:memory:/jobs/0123abcd
3:cpuset:/
2:cpuacct:/
1:cpu:/
0::/
"""
HYBRID_V2_CONTROLLERS = "hugetlb\n"
HUGEPAGE_DIRS = ["hugepages-1048576kB", "hugepages-2048kB"]

# --- A pure cgroup v2 host booted by systemd, the daemon running as a service.
V2_MOUNTINFO = """\
22 1 253:0 / / rw,relatime shared:1 - ext4 /dev/mapper/root rw,seclabel
23 22 0:21 / /proc rw,nosuid,nodev,noexec,relatime shared:12 - proc proc rw
24 22 0:22 / /sys rw,nosuid,nodev,noexec,relatime shared:2 - sysfs sysfs rw,seclabel
25 24 0:26 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:4 - cgroup2 cgroup2 rw,seclabel,nsdelegate,memory_recursiveprot
26 24 0:27 / /sys/fs/pstore rw,nosuid,nodev,noexec,relatime shared:5 - pstore pstore rw,seclabel
27 24 0:28 / /sys/fs/bpf rw,nosuid,nodev,noexec,relatime shared:6 - bpf bpf rw,mode=700
"""
V2_PROC_CGROUPS = """\
#subsys_name\thierarchy\tnum_cgroups\tenabled
cpuset\t0\t143\t1
cpu\t0\t143\t1
cpuacct\t0\t143\t1
blkio\t0\t143\t1
memory\t0\t143\t1
devices\t0\t143\t1
freezer\t0\t143\t1
net_cls\t0\t143\t1
perf_event\t0\t143\t1
net_prio\t0\t143\t1
hugetlb\t0\t143\t1
pids\t0\t143\t1
rdma\t0\t143\t1
misc\t0\t143\t1
"""
V2_SELF_CGROUP = "0::/system.slice/crio-fast.service\n"
V2_CONTROLLERS = "cpuset cpu io memory hugetlb pids rdma misc\n"

# --- A pure v1 host of the CentOS 7 generation: cpu,cpuacct and
# net_cls,net_prio co-mounted (with symlinks cpu -> cpu,cpuacct that mountinfo
# does not show), a named systemd hierarchy, and a second bind mount of the
# memory hierarchy at a path with a space, showing only a subtree.
V1_MOUNTINFO = """\
18 62 0:17 / /sys rw,nosuid,nodev,noexec,relatime shared:6 - sysfs sysfs rw
24 18 0:20 / /sys/fs/cgroup ro,nosuid,nodev,noexec shared:7 - tmpfs tmpfs ro,mode=755
25 24 0:21 / /sys/fs/cgroup/systemd rw,nosuid,nodev,noexec,relatime shared:8 - cgroup cgroup rw,xattr,release_agent=/usr/lib/systemd/systemd-cgroups-agent,name=systemd
27 24 0:23 / /sys/fs/cgroup/net_cls,net_prio rw,nosuid,nodev,noexec,relatime shared:10 - cgroup cgroup rw,net_cls,net_prio
28 24 0:24 / /sys/fs/cgroup/cpu,cpuacct rw,nosuid,nodev,noexec,relatime shared:11 - cgroup cgroup rw,cpu,cpuacct
29 24 0:25 / /sys/fs/cgroup/memory rw,nosuid,nodev,noexec,relatime shared:12 - cgroup cgroup rw,memory
30 24 0:26 / /sys/fs/cgroup/cpuset rw,nosuid,nodev,noexec,relatime shared:13 - cgroup cgroup rw,cpuset
31 24 0:27 / /sys/fs/cgroup/hugetlb rw,nosuid,nodev,noexec,relatime shared:14 - cgroup cgroup rw,hugetlb
32 24 0:28 / /sys/fs/cgroup/pids rw,nosuid,nodev,noexec,relatime shared:15 - cgroup cgroup rw,pids
33 24 0:29 / /sys/fs/cgroup/blkio rw,nosuid,nodev,noexec,relatime shared:16 - cgroup cgroup rw,blkio
34 24 0:30 / /sys/fs/cgroup/devices rw,nosuid,nodev,noexec,relatime shared:17 - cgroup cgroup rw,devices
35 24 0:31 / /sys/fs/cgroup/freezer rw,nosuid,nodev,noexec,relatime shared:18 - cgroup cgroup rw,freezer
36 24 0:32 / /sys/fs/cgroup/perf_event rw,nosuid,nodev,noexec,relatime shared:19 - cgroup cgroup rw,perf_event
90 62 0:25 /system.slice /mnt/cg\\040copy rw,relatime shared:12 - cgroup cgroup rw,memory
"""
V1_PROC_CGROUPS = """\
#subsys_name\thierarchy\tnum_cgroups\tenabled
cpuset\t6\t4\t1
cpu\t4\t72\t1
cpuacct\t4\t72\t1
memory\t5\t72\t1
devices\t10\t72\t1
freezer\t11\t4\t1
net_cls\t3\t4\t1
blkio\t9\t72\t1
perf_event\t12\t4\t1
hugetlb\t7\t4\t1
pids\t8\t72\t1
net_prio\t3\t4\t1
"""
V1_SELF_CGROUP = """\
12:perf_event:/
11:freezer:/
10:devices:/system.slice/crio-fast.service
9:blkio:/system.slice/crio-fast.service
8:pids:/system.slice/crio-fast.service
7:hugetlb:/
6:cpuset:/
5:memory:/system.slice/crio-fast.service
4:cpu,cpuacct:/system.slice/crio-fast.service
3:net_cls,net_prio:/
1:name=systemd:/system.slice/crio-fast.service
"""

# --- The daemon inside a Docker container on a v1 host, without a cgroup
# namespace: each hierarchy is mounted read-only from the container's subtree.
CONTAINER_ID = "4f1c2b7d9e0a"
CONTAINER_MOUNTINFO = f"""\
1045 1044 0:72 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime - tmpfs tmpfs rw,mode=755
1046 1045 0:21 /docker/{CONTAINER_ID} /sys/fs/cgroup/systemd ro,nosuid,nodev,noexec,relatime master:8 - cgroup cgroup rw,xattr,name=systemd
1047 1045 0:24 /docker/{CONTAINER_ID} /sys/fs/cgroup/cpu,cpuacct ro,nosuid,nodev,noexec,relatime master:11 - cgroup cgroup rw,cpu,cpuacct
1048 1045 0:25 /docker/{CONTAINER_ID} /sys/fs/cgroup/memory ro,nosuid,nodev,noexec,relatime master:12 - cgroup cgroup rw,memory
1049 1045 0:26 /docker/{CONTAINER_ID} /sys/fs/cgroup/cpuset ro,nosuid,nodev,noexec,relatime master:13 - cgroup cgroup rw,cpuset
1050 1045 0:28 /docker/{CONTAINER_ID} /sys/fs/cgroup/pids ro,nosuid,nodev,noexec,relatime master:15 - cgroup cgroup rw,pids
"""
CONTAINER_SELF_CGROUP = f"""\
8:pids:/docker/{CONTAINER_ID}
6:cpuset:/docker/{CONTAINER_ID}
5:memory:/docker/{CONTAINER_ID}/worker
4:cpu,cpuacct:/docker/{CONTAINER_ID}
1:name=systemd:/docker/{CONTAINER_ID}
"""

# --- A container with its own cgroup namespace on a v2 host (kind node style).
NS_CONTAINER_MOUNTINFO = """\
700 690 0:30 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime - cgroup2 cgroup rw,nsdelegate
"""


def hybrid_layout():
    return build_layout(
        HYBRID_MOUNTINFO, HYBRID_PROC_CGROUPS, HYBRID_SELF_CGROUP, HYBRID_V2_CONTROLLERS, HUGEPAGE_DIRS, True
    )


def v2_layout():
    return build_layout(V2_MOUNTINFO, V2_PROC_CGROUPS, V2_SELF_CGROUP, V2_CONTROLLERS, HUGEPAGE_DIRS, True)


def v1_layout():
    return build_layout(V1_MOUNTINFO, V1_PROC_CGROUPS, V1_SELF_CGROUP, None, HUGEPAGE_DIRS, True)


def test_hybrid_host_separate_v1_mounts_and_hugetlb_on_cgroup2():
    layout = hybrid_layout()
    assert layout.version == HYBRID
    assert layout.v2_mount_point == "/sys/fs/cgroup/unified"
    assert layout.v2_controllers == {"hugetlb"}
    assert layout.hierarchy_of("hugetlb").version == 2
    assert layout.is_v2("hugetlb") and not layout.is_v2("memory")
    # cpu and cpuacct are separate hierarchies here.
    assert layout.hierarchy_of("cpu").mount_point == "/sys/fs/cgroup/cpu"
    assert layout.hierarchy_of("cpuacct").mount_point == "/sys/fs/cgroup/cpuacct"
    assert layout.hierarchy_of("cpu") is not layout.hierarchy_of("cpuacct")
    assert layout.named("systemd").mount_point == "/sys/fs/cgroup/systemd"
    assert layout.own_cgroup("memory") == "/jobs/0123abcd"
    assert layout.own_cgroup("cpu") == "/"
    assert layout.unified.own_path == "/"
    # Bound to no hierarchy and not offered on cgroup2: not usable.
    assert layout.hierarchy_of("net_cls") is None
    assert set(layout.controllers) == {
        "blkio",
        "cpu",
        "cpuacct",
        "cpuset",
        "devices",
        "freezer",
        "hugetlb",
        "memory",
        "pids",
    }
    assert layout.hugepage_sizes == ("2MB", "1GB")


def test_pure_v2_systemd_host():
    layout = v2_layout()
    assert layout.version == V2
    assert [h.version for h in layout.hierarchies] == [2]
    assert layout.v2_mount_point == "/sys/fs/cgroup"
    assert set(layout.controllers) == {"cpuset", "cpu", "io", "memory", "hugetlb", "pids", "rdma", "misc"}
    assert all(h.version == 2 for h in layout.controllers.values())
    assert layout.own_cgroup("memory") == "/system.slice/crio-fast.service"
    # v1-only names have no v2 home.
    assert layout.hierarchy_of("cpuacct") is None and layout.hierarchy_of("blkio") is None


def test_pure_v1_with_co_mounted_controllers():
    layout = v1_layout()
    assert layout.version == V1
    assert layout.unified is None and layout.v2_controllers == frozenset()
    cpu = layout.hierarchy_of("cpu")
    assert cpu is layout.hierarchy_of("cpuacct")
    assert cpu.mount_point == "/sys/fs/cgroup/cpu,cpuacct"
    assert cpu.controllers == {"cpu", "cpuacct"} and cpu.key == "cpu,cpuacct"
    assert layout.hierarchy_of("net_prio").mount_point == "/sys/fs/cgroup/net_cls,net_prio"
    assert layout.hierarchy_of("hugetlb").version == 1
    systemd = layout.named("systemd")
    assert systemd.controllers == frozenset() and systemd.key == "name=systemd"
    assert systemd.own_path == "/system.slice/crio-fast.service"
    assert layout.own_cgroup("cpuacct") == "/system.slice/crio-fast.service"


def test_duplicate_mount_prefers_the_full_hierarchy_and_unescapes_paths():
    layout = v1_layout()
    memory = layout.hierarchy_of("memory")
    assert memory.mount_point == "/sys/fs/cgroup/memory"
    assert memory.mount_root == "/"
    entries = parse_mountinfo(V1_MOUNTINFO)
    assert entries[-1].mount_point == "/mnt/cg copy"
    assert entries[-1].root == "/system.slice"


def test_container_view_without_cgroup_namespace():
    layout = build_layout(CONTAINER_MOUNTINFO, V1_PROC_CGROUPS, CONTAINER_SELF_CGROUP)
    assert layout.version == V1
    memory = layout.hierarchy_of("memory")
    assert memory.mount_root == f"/docker/{CONTAINER_ID}"
    assert memory.read_only
    # /proc/self/cgroup names host paths; relative to what the container sees:
    assert memory.own_path == "/worker"
    assert layout.own_cgroup("cpu") == "/"
    assert layout.named("systemd").own_path == "/"
    assert memory.directory("/kubepods/pod1") == "/sys/fs/cgroup/memory/kubepods/pod1"
    # Controllers the container does not see are not usable.
    assert layout.hierarchy_of("freezer") is None


def test_container_with_cgroup_namespace_and_a_process_outside_its_root():
    layout = build_layout(NS_CONTAINER_MOUNTINFO, V2_PROC_CGROUPS, "0::/../../system.slice\n", "cpu memory pids\n")
    assert layout.version == V2
    assert layout.unified.own_path is None
    layout = build_layout(NS_CONTAINER_MOUNTINFO, V2_PROC_CGROUPS, "0::/init.scope\n", "cpu memory pids\n")
    assert layout.unified.own_path == "/init.scope"
    assert set(layout.controllers) == {"cpu", "memory", "pids"}


def test_hybrid_with_empty_unified_mount_still_counts_as_hybrid():
    layout = build_layout(HYBRID_MOUNTINFO, HYBRID_PROC_CGROUPS, HYBRID_SELF_CGROUP, "")
    assert layout.version == HYBRID
    assert layout.v2_controllers == frozenset()
    assert layout.hierarchy_of("hugetlb") is None


def test_disabled_controller_is_not_usable():
    disabled = V1_PROC_CGROUPS.replace("hugetlb\t7\t4\t1", "hugetlb\t7\t4\t0")
    layout = build_layout(V1_MOUNTINFO, disabled, V1_SELF_CGROUP)
    assert layout.hierarchy_of("hugetlb") is None
    assert "hugetlb" in layout.disabled_controllers


def test_no_cgroup_mount_is_an_error():
    with pytest.raises(CgroupError, match="no cgroup filesystem"):
        build_layout("27 1 254:0 / / rw,relatime - ext4 /dev/vda rw\n", "", "")


def test_malformed_lines_name_the_file_and_line():
    with pytest.raises(CgroupError, match="mountinfo line 1"):
        parse_mountinfo("garbage\n")
    with pytest.raises(CgroupError, match="/proc/self/cgroup line 2"):
        parse_proc_self_cgroup("0::/\nx:y\n")
    with pytest.raises(CgroupError, match="/proc/cgroups line 2"):
        parse_proc_cgroups("#subsys_name\thierarchy\nmemory\tx\t1\t1\n")


def test_proc_self_cgroup_keeps_colons_in_paths():
    (entry,) = parse_proc_self_cgroup("0::/a:b/c\n")
    assert entry.hierarchy_id == 0 and entry.controllers == frozenset() and entry.path == "/a:b/c"
    (entry,) = parse_proc_self_cgroup("4:cpu,cpuacct:/x\n")
    assert entry.controllers == {"cpu", "cpuacct"}


def test_mountinfo_optional_fields_and_super_options():
    (entry,) = parse_mountinfo(
        "25 24 0:26 / /sys/fs/cgroup rw,nosuid shared:4 master:1 - cgroup2 cgroup2 rw,nsdelegate\n"
    )
    assert entry.fs_type == "cgroup2"
    assert entry.super_options == ("rw", "nsdelegate")
    assert entry.mount_options == ("rw", "nosuid")


@pytest.mark.parametrize(
    "size_kb, name",
    [(64, "64KB"), (2048, "2MB"), (32768, "32MB"), (524288, "512MB"), (1048576, "1GB"), (16777216, "16GB")],
)
def test_hugepage_size_names_match_the_kernel_file_names(size_kb, name):
    assert hugepage_size_name(size_kb) == name


def test_hugepage_dirs_sorted_and_filtered():
    assert parse_hugepage_dirs(["hugepages-1048576kB", "README", "hugepages-2048kB"]) == ("2MB", "1GB")


def test_describe_lists_each_hierarchy():
    text = hybrid_layout().describe()
    assert text.splitlines()[0] == "cgroup layout: hybrid"
    assert "v2 unified at /sys/fs/cgroup/unified controllers=hugetlb" in text
    assert "v1 name=systemd at /sys/fs/cgroup/systemd" in text
