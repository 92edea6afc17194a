"""cgroups v1 and v2, with the cgroupfs driver or the systemd driver (cgroup v2).

``discover_layout`` describes where each controller lives on this host,
``CgroupManager`` creates, limits and removes pod and container cgroups
(``SystemdCgroupManager`` as systemd units; ``make_cgroup_manager`` picks), and
``plan_writes`` maps CRI resources onto control-file writes, which the native
``write_files`` applies with the GIL released.
"""

from crio_fast._native._cgroupfs import CgroupReadError, CgroupWriteError, read_files, write_files
from crio_fast.cgroups.errors import CgroupError, CgroupRefusedError, CgroupValidationError
from crio_fast.cgroups.layout import HYBRID, V1, V2, CgroupLayout, Hierarchy, build_layout, discover_layout
from crio_fast.cgroups.manager import (
    CONTAINER_PREFIX,
    MONITOR_CGROUP_NAME,
    CgroupManager,
    CgroupPaths,
    normalize_cgroup_parent,
    parse_oom_kill_count,
)
from crio_fast.cgroups.resources import Resources, plan_writes, shares_to_weight
from crio_fast.cgroups.systemd_driver import SystemdCgroupManager, make_cgroup_manager

__all__ = [
    "CONTAINER_PREFIX",
    "HYBRID",
    "MONITOR_CGROUP_NAME",
    "V1",
    "V2",
    "CgroupError",
    "CgroupLayout",
    "CgroupManager",
    "CgroupPaths",
    "CgroupReadError",
    "CgroupRefusedError",
    "CgroupValidationError",
    "CgroupWriteError",
    "Hierarchy",
    "Resources",
    "SystemdCgroupManager",
    "build_layout",
    "discover_layout",
    "make_cgroup_manager",
    "normalize_cgroup_parent",
    "parse_oom_kill_count",
    "plan_writes",
    "read_files",
    "shares_to_weight",
    "write_files",
]
