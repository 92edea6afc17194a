"""The systemd cgroup driver: systemd makes and removes the cgroups, as units.

Where things go (cgroup v2 only, systemd as PID 1):

* a pod is the slice named by its ``cgroup_parent`` (the kubelet's
  ``kubepods-burstable-pod<uid>.slice``; a path whose last part is a slice is
  taken by that part, as CRI-O does). A slice that systemd has not loaded yet
  (crictl, tests) is started here as a transient slice and stopped with the
  pod; so are its ancestors that were not loaded. A pod with no parent gets
  ``crio_fast-pod<id>.slice``;
* a container is the scope ``crio-fast-<id>.scope`` in the pod's slice, made
  around its process with ``Delegate=yes`` (limits are unit properties and
  control files both: see ``systemd_units.unit_properties``);
* a pod's monitor is the scope ``crio-fast-monitor-<pod id>.scope`` in the
  pod's slice, or in the slice ``monitor_cgroup`` names ("system.slice"), so
  ``systemctl restart`` of the daemon's unit leaves it running;
* containers of runc and crun get their scope from the runtime itself
  (``--systemd-cgroup``, cgroupsPath ``<slice>:crio-fast:<id>``), the same
  unit name.

Removal kills what is left through cgroup.kill, as the cgroupfs driver does,
then stops the unit, so nothing waits for systemd's stop timeout.
"""

from __future__ import annotations

import os

from crio_fast.cgroups.errors import CgroupError, CgroupRefusedError, CgroupValidationError
from crio_fast.cgroups.layout import V2, CgroupLayout
from crio_fast.cgroups.manager import (
    CGROUP_PARENT_LENGTH_MAX,
    CONTAINER_PREFIX,
    SYSTEMD_DRIVER,
    CgroupManager,
    CgroupPaths,
    _check_name,
)
from crio_fast.cgroups.systemd_units import (
    JOB_DEPENDENCY_FAILED,
    SystemdBus,
    SystemdError,
    UNIT_EXISTS,
    UNIT_MASKED,
    check_unit_name,
    oci_scope_annotations,
    parent_slice,
    scope_properties,
    slice_path,
    unit_of,
    unit_properties,
)
from crio_fast.errors import shown
from crio_fast.systemd import systemd_booted

SCOPE_SUFFIX = ".scope"
MONITOR_SCOPE_PREFIX = "crio-fast-monitor-"
DEFAULT_POD_SLICE_PREFIX = "crio_fast-pod"
OCI_SCOPE_PREFIX = "crio-fast"  # runc and crun name the scope "<prefix>-<id>.scope"

def pod_slice(cgroup_parent: str) -> str:
    """The slice a CRI cgroup_parent names under this driver (InvalidArgument with the fix when it
    names none)."""
    if len(cgroup_parent) > CGROUP_PARENT_LENGTH_MAX:
        raise CgroupValidationError(f"cgroup parent {shown(cgroup_parent)} is longer than "
                                    f"{CGROUP_PARENT_LENGTH_MAX} characters")
    name = cgroup_parent.rstrip("/").rsplit("/", 1)[-1]
    if not name.endswith(".slice"):
        raise CgroupValidationError(
            f"cgroup parent {shown(cgroup_parent)} is not a systemd slice, but the cgroup manager is "
            f'"systemd", which takes a slice name such as "kubepods-burstable-pod<uid>.slice"; '
            f"set cgroupDriver: systemd in the kubelet, or cgroup_manager = \"cgroupfs\" here to take cgroup paths")
    slice_path(name)  # validates it
    return name


class SystemdCgroupManager(CgroupManager):
    """Pods as slices, containers and monitors as transient scopes, through systemd's D-Bus API."""

    driver = SYSTEMD_DRIVER
    needs_pid = True
    oci_runtime_makes_cgroup = True

    def __init__(self, layout: CgroupLayout | None = None, monitor_slice: str = "pod",
                 bus: SystemdBus | None = None) -> None:
        super().__init__(layout)
        if self.layout.version != V2:
            raise CgroupError(
                f'the systemd cgroup driver needs a cgroup v2 host (this one is {self.layout.version}); '
                f'boot with systemd.unified_cgroup_hierarchy=1, or set cgroup_manager = "cgroupfs"')
        if bus is None and not systemd_booted():
            raise CgroupError('the systemd cgroup driver needs systemd as PID 1, and it is not; '
                              'set cgroup_manager = "cgroupfs"')
        if monitor_slice != "pod":
            check_unit_name(monitor_slice, ".slice")
        self.monitor_slice = monitor_slice
        self._bus = bus
        # The ancestors of a slice, as slice_path lays them out, are loaded once a child is started.

    @property
    def bus(self) -> SystemdBus:
        if self._bus is None:  # connected on first use: a daemon that never runs a pod never needs it
            self._bus = SystemdBus()
        return self._bus

    def close(self) -> None:
        if self._bus is not None:
            self._bus.close()
            self._bus = None

    # -- names and paths ---------------------------------------------------------

    def pod_cgroup_paths(self, cgroup_parent: str, pod_id: str) -> CgroupPaths:
        _check_name("pod id", pod_id)
        if cgroup_parent.strip("/"):
            return self.paths(slice_path(pod_slice(cgroup_parent)))
        return self.paths(self.default_pod_path(pod_id))

    def default_pod_path(self, pod_id: str) -> str:
        return slice_path(f"{DEFAULT_POD_SLICE_PREFIX}{pod_id}.slice")

    def check_cgroup_parent(self, cgroup_parent: str) -> None:
        pod_slice(cgroup_parent)

    def release_default_parent(self) -> None:
        parent = os.path.dirname(self.default_pod_path("0"))
        if os.path.isdir(self.paths(parent).dirs["unified"]):  # else never started: no call to make
            self.remove_parents([parent])

    def container_path(self, parent: CgroupPaths | str, container_id: str) -> str:
        _check_name("container id", container_id)
        parent_path = parent.path if isinstance(parent, CgroupPaths) else slice_path(pod_slice(parent))
        return f"{parent_path}/{CONTAINER_PREFIX}{container_id}{SCOPE_SUFFIX}"

    def monitor_cgroup_paths(self, pod: CgroupPaths, pod_id: str) -> CgroupPaths:
        parent = pod.path if self.monitor_slice == "pod" else slice_path(self.monitor_slice)
        return self.paths(f"{parent.rstrip('/')}/{MONITOR_SCOPE_PREFIX}{pod_id}{SCOPE_SUFFIX}")

    def pod_path_of_monitor(self, monitor_path: str, pod_id: str) -> str | None:
        if self.monitor_slice != "pod" or not monitor_path.endswith(f"/{MONITOR_SCOPE_PREFIX}{pod_id}{SCOPE_SUFFIX}"):
            return None
        return os.path.dirname(monitor_path)

    def made_by_us(self, name: str) -> bool:
        return name.endswith(SCOPE_SUFFIX) and name.startswith((MONITOR_SCOPE_PREFIX, CONTAINER_PREFIX))

    def oci_cgroups_path(self, container: CgroupPaths, container_id: str) -> str:
        return f"{parent_slice(container.path)}:{OCI_SCOPE_PREFIX}:{container_id}"

    def oci_global_args(self) -> list[str]:
        return ["--systemd-cgroup"]

    def oci_annotations(self) -> dict[str, str]:
        return oci_scope_annotations()

    # -- lifecycle ---------------------------------------------------------------

    def pod_cgroup(self, cgroup_parent: str, pod_id: str) -> CgroupPaths:
        paths = self.pod_cgroup_paths(cgroup_parent, pod_id)
        self._start_pod_slice(paths, explicitly=True)
        return paths

    def create_pod_and_monitor_cgroups(self, pod: CgroupPaths, monitor: CgroupPaths, pid: int | None = None) -> None:
        if pid is None:
            raise ValueError("the systemd driver makes the monitor's scope around its process: pass its pid")
        # A monitor scope in the pod's slice starts the slice along with it (systemd loads a slice
        # from its name): one D-Bus call and job for the pod instead of two.
        self._start_pod_slice(pod, explicitly=parent_slice(monitor.path) != unit_of(pod.path))
        try:
            self._start_scope(monitor, pid, "crio-fast pod monitor", delegate=False)
        except BaseException:
            if pod.created:
                self._stop_slices([pod.path, *reversed(pod.parents_made)])
            raise

    def make_container_cgroup(self, paths: CgroupPaths, writes: list[tuple[str, str]],
                              pid: int | None = None) -> CgroupPaths:
        if pid is None:
            raise ValueError("the systemd driver makes a container's scope around its process: pass its pid")
        self._start_scope(paths, pid, "crio-fast container", delegate=True, limits=unit_properties(writes))
        try:
            self._write(writes)  # the exact values, and the files systemd has no property for
        except BaseException:
            self.remove(paths, timeout=1.0)
            raise
        return paths

    def monitor_cgroup(self, pod: CgroupPaths, pod_id: str) -> CgroupPaths:
        raise CgroupError("the systemd driver makes a monitor's scope around its process: "
                          "use create_pod_and_monitor_cgroups")

    def apply_writes(self, cgroup: CgroupPaths, writes: list[tuple[str, str]]) -> None:
        unit = unit_of(cgroup.path)
        if unit is not None:
            try:
                self.bus.set_unit_properties(unit, unit_properties(writes))
            except SystemdError as exc:
                raise CgroupError(f"cannot update {unit}: {exc}") from exc
        self._write(writes)

    def remove(self, cgroup: CgroupPaths, timeout: float = 5.0) -> None:
        # A unit's cgroup exists while it is active: without one there is nothing to stop (a scope
        # whose processes are gone has stopped by itself, and systemd removed its cgroup).
        active = os.path.isdir(cgroup.dirs["unified"])
        super().remove(cgroup, timeout)  # kills what is left at once, instead of systemd's stop timeout
        unit = unit_of(cgroup.path)
        if unit is not None and active:
            try:
                self.bus.stop_unit(unit)
            except SystemdError as exc:
                raise CgroupError(f"cannot stop {unit}: {exc}") from exc

    def remove_parents(self, parents: list[str]) -> None:
        """Stop the slices above a pod's that were started for it, deepest first, while they are
        empty: stopping a slice would stop every unit in it."""
        for parent in sorted(parents, key=lambda path: path.count("/"), reverse=True):
            directory = self.paths(parent).dirs["unified"]
            try:
                busy = any(entry.is_dir() for entry in os.scandir(directory))
            except FileNotFoundError:
                busy = False
            if busy:
                return
            self._stop_slices([parent])

    # -- internals -----------------------------------------------------------------

    def _start_pod_slice(self, pod: CgroupPaths, explicitly: bool) -> None:
        """Unless the pod's slice is active (the kubelet's pod slices are: their cgroup exists), note
        that it is ours, and the ancestors started along with it in ``parents_made``; start it now
        when ``explicitly``, else the first unit started in it starts it."""
        name = unit_of(pod.path)
        assert name is not None and name.endswith(".slice"), pod.path
        if os.path.isdir(pod.dirs["unified"]):
            return
        # The parent of pods without a cgroup_parent stands while the daemon runs (release_default_parent),
        # as the cgroupfs driver's does: stopping and starting it again would cost every such pod a job.
        standing = os.path.dirname(self.default_pod_path("0"))
        ancestors = [path for path in _ancestors(pod.path)
                     if path != standing and not os.path.isdir(self.paths(path).dirs["unified"])]
        if explicitly:
            try:
                self.bus.start_transient_unit(name, [("Description", "s", "crio-fast pod")])
            except SystemdError as exc:
                if exc.name == UNIT_EXISTS:  # started meanwhile (by the kubelet, by another pod's call)
                    return
                raise _start_error(f"slice {name}", exc) from exc
        pod.created = True
        pod.parents_made = ancestors

    def _start_scope(self, paths: CgroupPaths, pid: int, description: str, delegate: bool,
                     limits: list | None = None) -> None:
        name = unit_of(paths.path)
        assert name is not None and name.endswith(SCOPE_SUFFIX), paths.path
        properties = scope_properties(parent_slice(paths.path), pid, description, delegate, limits or [])
        try:
            self.bus.start_transient_unit(name, properties)
        except SystemdError as exc:
            if exc.name == UNIT_EXISTS:
                raise CgroupError(f"scope {name} exists already (a container or pod by this id is running)") from exc
            raise _start_error(f"scope {name}", exc) from exc
        paths.created = True

    def _stop_slices(self, paths: list[str]) -> None:
        for path in paths:
            name = unit_of(path)
            if name is None:
                continue
            try:
                self.bus.stop_unit(name)
            except SystemdError as exc:
                raise CgroupError(f"cannot stop slice {name}: {exc}") from exc


def _start_error(what: str, exc: SystemdError) -> CgroupError:
    if exc.name in (UNIT_MASKED, JOB_DEPENDENCY_FAILED):  # the unit or its slice is masked, or failed
        return CgroupRefusedError(f"cannot start {what}: {exc} (is its slice masked? systemctl status shows why)")
    return CgroupError(f"cannot start {what}: {exc}")


def _ancestors(path: str) -> list[str]:
    """The slice paths above a slice's own path, top first (``/a.slice`` of ``/a.slice/a-b.slice``)."""
    parts = path.strip("/").split("/")[:-1]
    return ["/" + "/".join(parts[: i + 1]) for i in range(len(parts))]


def make_cgroup_manager(driver: str, layout: CgroupLayout | None = None, monitor_cgroup: str = "pod") -> CgroupManager:
    """The manager of ``driver`` ("cgroupfs" or "systemd")."""
    if driver == SYSTEMD_DRIVER:
        return SystemdCgroupManager(layout, monitor_slice=monitor_cgroup)
    if driver != CgroupManager.driver:
        raise CgroupValidationError(f'unknown cgroup driver {driver!r}; expected "cgroupfs" or "systemd"')
    return CgroupManager(layout)
