"""Where this host keeps cgroups, read from its layout (v1, v2 or hybrid) instead of assumed.

Tests use these to find a container's cgroup files and to scan for cgroups left behind, on
this machine's hybrid layout and in the pure cgroup v2 guests alike.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

from crio_fast.cgroups import discover_layout
from crio_fast.cgroups.layout import CgroupLayout


@functools.cache
def layout() -> CgroupLayout:
    return discover_layout()


def is_v2(controller: str) -> bool:
    """Whether ``controller`` is used through the cgroup2 hierarchy here."""
    return layout().is_v2(controller)


def cgroup_dir(cgroup: str, controller: str) -> Path:
    """The directory of ``cgroup`` (a path as /proc/PID/cgroup shows it) for ``controller``."""
    hierarchy = layout().hierarchy_of(controller)
    if hierarchy is None:
        raise LookupError(f"no {controller} controller on this host ({layout().describe()})")
    return Path(hierarchy.directory(cgroup))


def cgroups_of(pid: int) -> dict[str, str]:
    """Each usable controller's cgroup of ``pid``: v1 lines per hierarchy, the v2 line for the rest."""
    found: dict[str, str] = {}
    v2_path = None
    for line in Path(f"/proc/{pid}/cgroup").read_text().splitlines():
        hierarchy_id, controllers, path = line.split(":", 2)
        if hierarchy_id == "0" and not controllers:
            v2_path = path
        for controller in controllers.split(","):
            if controller:
                found[controller] = path
    if v2_path is not None:
        for controller in layout().v2_controllers:
            found.setdefault(controller, v2_path)
    return found


def hierarchy_roots() -> list[Path]:
    """The mount point of every cgroup hierarchy here, for scans of what a test left behind."""
    return [Path(h.mount_point) for h in layout().hierarchies]


def find_cgroups(*names: str, depth: int = 6) -> list[str]:
    """Cgroup directories (in any hierarchy) whose name contains one of ``names``."""
    found = []
    for root in hierarchy_roots():
        base_depth = str(root).count("/")
        for current, dirs, _ in os.walk(root):
            for name in dirs:
                if any(n in name for n in names):
                    found.append(os.path.join(current, name))
            if current.count("/") - base_depth >= depth:
                dirs[:] = []
    return found
