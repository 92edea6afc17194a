"""Where this host keeps cgroups, read from its layout (v1, v2 or hybrid) instead of assumed.

Tests use these to find a container's cgroup files and to scan for cgroups left behind, on
this machine's hybrid layout and in the pure cgroup v2 guests alike.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

from crio_fast.cgroups import CgroupManager, discover_layout
from crio_fast.cgroups.layout import CgroupLayout
from crio_fast.cgroups.systemd_driver import make_cgroup_manager


DRIVER_VARIABLE = "CRIO_FAST_TEST_CGROUP_MANAGER"
DRIVERS = ("cgroupfs", "systemd")


@functools.cache
def driver() -> str:
    """The cgroup driver the tests' daemons use unless a test names one: cgroupfs, or what
    $CRIO_FAST_TEST_CGROUP_MANAGER says (`scripts/vm test --cgroup-manager systemd`)."""
    value = os.environ.get(DRIVER_VARIABLE, "") or "cgroupfs"
    if value not in DRIVERS:
        raise ValueError(f"${DRIVER_VARIABLE}: expected one of {', '.join(DRIVERS)}, got {value!r}")
    return value


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


class KubeletParents:
    """Pod cgroup parents as the kubelet writes them, for the session's driver: ``/TOP/a/b``
    directories under cgroupfs, ``TOP-a-b.slice`` units under systemd (made through systemd, as
    the kubelet makes them). ``TOP`` and the names are without "-" and "/"."""

    def __init__(self, top: str) -> None:
        _check_component(top)
        self.top = top
        self.driver = driver()
        self._manager = make_cgroup_manager(self.driver, layout())

    def parent(self, *names: str) -> str:
        """The cgroup_parent of ``names`` under the top (the top's own without names)."""
        for name in names:
            _check_component(name)
        if self.driver == "cgroupfs":
            return "/" + "/".join((self.top, *names))
        return "-".join((self.top, *names)) + ".slice"

    def path(self, parent: str) -> str:
        """The cgroup path of a cgroup_parent from ``parent``, as /proc/PID/cgroup shows it."""
        return self._manager.pod_cgroup_paths(parent, "x").path

    @property
    def root(self) -> str:
        """The top's cgroup path."""
        return self.path(self.parent())

    def make(self, *names: str) -> str:
        """Make the parent of ``names`` (the top's own without names) as the kubelet would before
        RunPodSandbox; returns the cgroup_parent to send."""
        parent = self.parent(*names)
        self._manager.pod_cgroup(parent, "x")
        return parent

    def remove(self) -> None:
        """Remove the top and everything under it (processes are the test's to end first)."""
        try:
            if self.driver == "cgroupfs":
                self._manager.remove(self._manager.paths(self.root))
            elif os.path.isdir(cgroup_dir(self.root, "memory")):
                self._manager.bus.stop_unit(f"{self.top}.slice")  # and every slice in it
        finally:
            self._manager.close()


def _check_component(name: str) -> None:
    if not name or "-" in name or "/" in name:
        raise ValueError(f"{name!r}: a cgroup parent's part needs a name without '-' or '/'")


@functools.cache
def _session_manager() -> CgroupManager:
    """The session driver's manager, for its names and paths only (it never calls systemd)."""
    return make_cgroup_manager(driver(), layout())


def default_pod_path(pod_id: str) -> str:
    """The cgroup of a pod sent without a cgroup_parent, under the session's driver."""
    return _session_manager().default_pod_path(pod_id)


def default_parent() -> str:
    """Where the daemon puts pods sent without a cgroup_parent, under the session's driver."""
    return os.path.dirname(default_pod_path("0"))
