"""The cgroupfs driver: pod and container cgroups in every hierarchy.

Paths are CRI's: a pod's ``cgroup_parent`` (``/kubepods/burstable/pod<uid>``)
is the pod cgroup itself, relative to the root of each hierarchy as this
process sees it mounted; a container lives in ``<pod>/crio-fast-<id>``.

Which hierarchies a cgroup is made in:

* every v1 hierarchy that carries a controller (cpu, cpuacct, cpuset,
  memory, pids, devices, freezer, blkio, and net_cls, perf_event, ... when
  mounted), so the container is accounted everywhere the host accounts;
* the v1 ``name=systemd`` hierarchy when mounted: systemd tracks services by
  it, and a container left in the daemon's own systemd cgroup would be
  killed by ``systemctl stop`` of the daemon, while pods must outlive it.
  Other named v1 hierarchies are left alone;
* the cgroup2 hierarchy when mounted (v2 and hybrid), with the v2 controllers
  we use enabled top-down.

All methods block on syscalls (a few dozen for a container); the daemon
calls them from a worker thread.
"""

from __future__ import annotations

import errno
import os
import re
import time
from dataclasses import dataclass, field

from crio_fast._native._cgroupfs import CgroupReadError, CgroupWriteError, read_files, write_files
from crio_fast.cgroups import tree, v1, v2
from crio_fast.cgroups.devices_bpf import DeviceFilterCache, container_rules
from crio_fast.cgroups.errors import CgroupError, CgroupValidationError
from crio_fast.cgroups.layout import NAMED_PREFIX, CgroupLayout, Hierarchy, discover_layout
from crio_fast.cgroups.resources import Resources, effective_swap_limit, plan_writes
from crio_fast.errors import shown

CONTAINER_PREFIX = "crio-fast-"
MONITOR_CGROUP_NAME = "crio-fast-monitor"
# Parent of pods whose sandbox config names no cgroup_parent (crictl without one).
DEFAULT_POD_PARENT = "/crio-fast"
SYSTEMD_HIERARCHY = "systemd"
CGROUPFS_DRIVER = "cgroupfs"
SYSTEMD_DRIVER = "systemd"

# Bounds of a pod's cgroup_parent: the kubelet's are three levels deep ("/kubepods/burstable/pod<uid>");
# every level missing is made (and removed with the pod), and the deepest path plus a container's
# directory and file names must stay within PATH_MAX.
CGROUP_PARENT_DEPTH_MAX = 32
CGROUP_PARENT_LENGTH_MAX = 1024
CGROUP_NAME_MAX = 255

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,199}")
_OOM_KILL_LINE = re.compile(rb"^oom_kill (\d+)$", re.MULTILINE)
# Errors of a write that mean "this value is not acceptable", not "the host failed".
_VALUE_ERRNOS = frozenset({errno.EINVAL, errno.ERANGE, errno.EOVERFLOW})
# Bounds of the poll between killing a cgroup's processes and retrying rmdir.
_FIRST_RETRY_DELAY = 0.002
_MAX_RETRY_DELAY = 0.1


@dataclass
class CgroupPaths:
    """Where one cgroup is, in every hierarchy it exists in.

    ``dirs`` maps each usable controller, ``name=systemd`` and ``unified``
    (the cgroup2 directory) to the cgroup's directory; co-mounted controllers
    share one. ``hierarchy_dirs`` has one directory per hierarchy.
    ``procs_files`` are the cgroup.procs files a process must be written into
    to be fully placed. ``oom_counter_file`` holds the ``oom_kill N`` counter
    (v1 memory.oom_control, v2 memory.events). ``created`` tells whether this
    call made the cgroup (it did not exist in some hierarchy before);
    ``parents_made``, for a pod's cgroup, which of its ancestors it made
    (paths like ``path``, the daemon's standing DEFAULT_POD_PARENT aside).
    """

    path: str
    dirs: dict[str, str]
    hierarchy_dirs: dict[str, str]
    procs_files: list[str]
    oom_counter_file: str | None
    created: bool = field(default=False, compare=False)
    parents_made: list[str] = field(default_factory=list, compare=False)

    def pids(self) -> list[int]:
        """Processes in this cgroup (not its descendants) in any hierarchy, sorted."""
        return sorted(tree.read_pids(list(self.hierarchy_dirs.values())))


def parse_oom_kill_count(content: bytes | None) -> int:
    """The ``oom_kill N`` counter of memory.oom_control (v1, Linux 4.13+) or memory.events (v2)."""
    if not content:
        return 0
    match = _OOM_KILL_LINE.search(content)
    return int(match.group(1)) if match else 0


def normalize_cgroup_parent(cgroup_parent: str, driver: str = CGROUPFS_DRIVER) -> str:
    """Validate a CRI cgroup_parent for the cgroupfs driver and return it as ``/a/b/c``."""
    if len(cgroup_parent) > CGROUP_PARENT_LENGTH_MAX:
        raise CgroupValidationError(f"cgroup parent {shown(cgroup_parent)} is longer than "
                                    f"{CGROUP_PARENT_LENGTH_MAX} characters")
    components = [c for c in cgroup_parent.split("/") if c]
    if components and components[-1].endswith(".slice") and driver == CGROUPFS_DRIVER:
        raise CgroupValidationError(
            f"cgroup parent {shown(cgroup_parent)} is a systemd slice name, but the cgroup manager is "
            f'"cgroupfs", which takes a cgroup path such as "/kubepods/burstable/pod<uid>"; '
            f'set cgroup_manager = "systemd" here and cgroupDriver: systemd in the kubelet to use slices, '
            f"or cgroupDriver: cgroupfs in the kubelet to keep this driver"
        )
    if not components:
        raise CgroupValidationError(
            f"cgroup parent {shown(cgroup_parent)} names the root cgroup; pods need a cgroup below it"
        )
    if len(components) > CGROUP_PARENT_DEPTH_MAX:
        raise CgroupValidationError(f"cgroup parent {shown(cgroup_parent)} is {len(components)} levels deep, "
                                    f"more than {CGROUP_PARENT_DEPTH_MAX}")
    for component in components:
        if component in (".", "..") or any(ch in component for ch in "\0\n") or len(component) > CGROUP_NAME_MAX:
            raise CgroupValidationError(
                f"cgroup parent {shown(cgroup_parent)} has an invalid component {shown(component)}")
    return "/" + "/".join(components)


def _check_name(kind: str, name: str) -> None:
    if not _NAME.fullmatch(name):
        raise CgroupValidationError(f"{kind} {name!r} is not usable in a cgroup name (letters, digits, '_', '.', '-')")


class CgroupManager:
    """Creates, limits and removes pod and container cgroups with the cgroupfs driver.

    The systemd driver (cgroups/systemd_driver.py) keeps the paths and the control files of this
    class and has systemd make and remove the cgroups as units."""

    driver = CGROUPFS_DRIVER
    # Whether a container's cgroup is made around its process (the caller passes its pid), or
    # before it and joined by it.
    needs_pid = False
    # Whether runc and crun make a container's cgroup themselves (told where by oci_cgroups_path);
    # else the daemon makes it and the runtime joins it.
    oci_runtime_makes_cgroup = False

    def __init__(self, layout: CgroupLayout | None = None) -> None:
        self.layout = layout if layout is not None else discover_layout()
        self._hierarchies: list[Hierarchy] = [
            h for h in self.layout.hierarchies if h.version == 2 or h.controllers or h.name == SYSTEMD_HIERARCHY
        ]
        self._v2_wanted = frozenset(c for c in v2.WANTED_CONTROLLERS if self.layout.is_v2(c))
        # What paths() puts together for every cgroup, worked out once: (name, mount point) pairs.
        self._hierarchy_mounts = [(h.key, h.mount_point.rstrip("/")) for h in self._hierarchies]
        dir_mounts = {controller: h.mount_point for controller, h in sorted(self.layout.controllers.items())}
        for hierarchy in self._hierarchies:
            if hierarchy.version == 2:
                dir_mounts["unified"] = hierarchy.mount_point
            elif hierarchy.name is not None:
                dir_mounts[NAMED_PREFIX + hierarchy.name] = hierarchy.mount_point
        self._dir_mounts = [(name, mount_point.rstrip("/")) for name, mount_point in dir_mounts.items()]
        memory = self.layout.hierarchy_of("memory")
        self._oom_counter = None if memory is None else (
            memory.mount_point.rstrip("/"), "/memory.events" if memory.version == 2 else "/memory.oom_control")
        self._device_filters = DeviceFilterCache()

    # -- paths (no side effects) -------------------------------------------

    def paths(self, relative_path: str) -> CgroupPaths:
        """Directories of a cgroup given by its path relative to the hierarchy roots."""
        relative = relative_path.strip("/")
        path = "/" + relative
        suffix = "/" + relative if relative else ""
        hierarchy_dirs = {key: mount_point + suffix for key, mount_point in self._hierarchy_mounts}
        dirs = {name: mount_point + suffix for name, mount_point in self._dir_mounts}
        return CgroupPaths(
            path=path,
            dirs=dirs,
            hierarchy_dirs=hierarchy_dirs,
            procs_files=[d + "/cgroup.procs" for d in hierarchy_dirs.values()],
            oom_counter_file=(self._oom_counter[0] + suffix + self._oom_counter[1]) if self._oom_counter else None,
        )

    def container_path(self, parent: CgroupPaths | str, container_id: str) -> str:
        """The cgroup path of a container of the pod whose cgroup is ``parent`` (a path)."""
        _check_name("container id", container_id)
        parent_path = parent.path if isinstance(parent, CgroupPaths) else normalize_cgroup_parent(parent, self.driver)
        return f"{parent_path}/{CONTAINER_PREFIX}{container_id}"

    def made_by_us(self, name: str) -> bool:
        """Whether a cgroup named ``name`` inside a pod's cgroup is one crio-fast makes there (a
        container's, a monitor's), as opposed to the kubelet's or another runtime's."""
        return name == MONITOR_CGROUP_NAME or name.startswith(CONTAINER_PREFIX)

    def default_pod_path(self, pod_id: str) -> str:
        """The pod cgroup of a pod whose config names no cgroup_parent."""
        return f"{DEFAULT_POD_PARENT}/pod-{pod_id}"

    def pod_path_of_monitor(self, monitor_path: str, pod_id: str) -> str | None:
        """The pod cgroup a pod's monitor in cgroup ``monitor_path`` belongs to, when that says."""
        return os.path.dirname(monitor_path) if monitor_path.endswith("/" + MONITOR_CGROUP_NAME) else None

    def check_cgroup_parent(self, cgroup_parent: str) -> None:
        """CgroupValidationError, with the fix, for a CRI cgroup_parent this driver cannot take."""
        normalize_cgroup_parent(cgroup_parent, self.driver)

    def release_default_parent(self) -> None:
        """At daemon shutdown: remove the parent of the pods without a cgroup_parent if it is empty.
        Other daemons on the node may share it: one still in use stays."""
        for directory in self.paths(DEFAULT_POD_PARENT).hierarchy_dirs.values():
            try:
                os.rmdir(directory)
            except OSError:
                pass  # still used by a pod (ours or another daemon's), or never made

    def close(self) -> None:
        """Release what the driver holds (the systemd driver's bus connection)."""

    def oci_cgroups_path(self, container: CgroupPaths, container_id: str) -> str:
        """The ``cgroupsPath`` an OCI runtime is given for a container: the cgroup the daemon made."""
        return container.path

    def oci_global_args(self) -> list[str]:
        """Options an OCI runtime needs before its command under this driver."""
        return []

    def oci_annotations(self) -> dict[str, str]:
        """Annotations of a container's OCI spec for its runtime under this driver."""
        return {}

    # -- lifecycle -----------------------------------------------------------

    def pod_cgroup_paths(self, cgroup_parent: str, pod_id: str) -> CgroupPaths:
        """Where the pod cgroup goes: ``cgroup_parent`` itself, or /crio-fast/pod-<id> when it is empty.

        Nothing is made; a malformed ``cgroup_parent`` raises CgroupError here.
        """
        _check_name("pod id", pod_id)
        if cgroup_parent.strip("/"):
            path = normalize_cgroup_parent(cgroup_parent, self.driver)
        else:
            path = self.default_pod_path(pod_id)
        return self.paths(path)

    def pod_cgroup(self, cgroup_parent: str, pod_id: str) -> CgroupPaths:
        """Make the pod cgroup (see pod_cgroup_paths).

        On v2 the pod cgroup enables the controllers for its children at once,
        so nothing may be placed in it directly (see monitor_cgroup).
        """
        paths = self.pod_cgroup_paths(cgroup_parent, pod_id)
        [paths.created] = self._create([paths], enable_for_children=True, pod_first=True)
        return paths

    def container_cgroup(
        self, parent: CgroupPaths | str, container_id: str, resources: Resources | None = None
    ) -> CgroupPaths:
        """Make ``<parent>/crio-fast-<id>`` and apply ``resources``.

        The resources are validated before anything is created; if applying
        them fails, a cgroup made by this call is removed again.
        """
        paths = self.paths(self.container_path(parent, container_id))
        return self.make_container_cgroup(paths, self.limit_writes(paths, resources))

    def limit_writes(self, paths: CgroupPaths, resources: Resources | None) -> list[tuple[str, str]]:
        """container_cgroup's first half, without side effects: the writes that apply ``resources`` to
        the cgroup at ``paths`` (CgroupValidationError for one the host cannot apply)."""
        return plan_writes(self.layout, paths.dirs, resources) if resources is not None else []

    def make_container_cgroup(self, paths: CgroupPaths, writes: list[tuple[str, str]],
                              pid: int | None = None) -> CgroupPaths:
        """container_cgroup's second half: mkdir in every hierarchy, then the writes. ``pid``, the
        container's process, is for drivers that need one (``needs_pid``); it joins by itself here."""
        [paths.created] = self._create([paths], enable_for_children=False, under_pod=True)
        try:
            self._write(writes)
        except BaseException:
            if paths.created:
                self.remove(paths, timeout=1.0)
            raise
        return paths

    def monitor_cgroup_paths(self, pod: CgroupPaths, pod_id: str) -> CgroupPaths:
        """A leaf under the pod for its monitor process (v2 allows no process in the pod cgroup itself)."""
        return self.paths(f"{pod.path}/{MONITOR_CGROUP_NAME}")

    def monitor_cgroup(self, pod: CgroupPaths, pod_id: str) -> CgroupPaths:
        paths = self.monitor_cgroup_paths(pod, pod_id)
        [paths.created] = self._create([paths], enable_for_children=False)
        return paths

    def create_pod_and_monitor_cgroups(self, pod: CgroupPaths, monitor: CgroupPaths, pid: int | None = None) -> None:
        """The pod cgroup, then the monitor's leaf in it, in one pass over the hierarchies.

        Both on the start-up path: per hierarchy the cpuset values are read
        and copied once for both levels, and cgroup2 controllers enabled once
        down to the pod (the monitor's parent). On failure nothing this call
        made is left.
        """
        if os.path.dirname(monitor.path) != pod.path:
            raise ValueError(f"{monitor.path} is not a child of {pod.path}")
        pod.created, monitor.created = self._create([pod, monitor], enable_for_children=False, pod_first=True)

    def remove_monitor_cgroup(self, pod: CgroupPaths, pod_id: str) -> None:
        """Remove the cgroup of a pod's monitor once it has exited (idempotent)."""
        self.remove(self.monitor_cgroup_paths(pod, pod_id))

    def update(self, cgroup: CgroupPaths, resources: Resources) -> None:
        """Apply new limits to a live cgroup (UpdateContainerResources)."""
        current_memory_limit = None
        memory = self.layout.hierarchy_of("memory")
        if (
            memory is not None
            and memory.version == 1
            and self.layout.swap_accounting
            and resources.memory_limit_in_bytes > 0
            and effective_swap_limit(resources) > 0
        ):
            limit_file = os.path.join(cgroup.dirs["memory"], "memory.limit_in_bytes")
            content = read_files([limit_file])[0]
            if content is None:
                raise CgroupError(f"cannot update {cgroup.path}: {limit_file} does not exist (cgroup removed?)")
            current_memory_limit = int(content)
        self.apply_writes(cgroup, plan_writes(self.layout, cgroup.dirs, resources, current_memory_limit))

    def apply_writes(self, cgroup: CgroupPaths, writes: list[tuple[str, str]]) -> None:
        """Write limits (``limit_writes``, ``update``) into a cgroup that exists."""
        self._write(writes)

    def restrict_devices(self, cgroup: CgroupPaths, allow_rules: list[str]) -> bool:
        """Attach the eBPF device filter (deny all, then ``allow_rules`` in v1 syntax) to the cgroup's
        cgroup2 directory. Returns False when the cgroup has none (a pure v1 host).

        On a hybrid host this is done in addition to the v1 devices cgroup: the kernel enforces both.
        Devices never change after creation (UpdateContainerResources carries none), and removing the
        cgroup detaches the program, so this is the only call a container needs.
        """
        unified_dir = cgroup.dirs.get("unified")
        if unified_dir is None:
            return False
        self._device_filters.attach(unified_dir, container_rules(allow_rules))
        return True

    def remove(self, cgroup: CgroupPaths, timeout: float = 5.0) -> None:
        """Remove the cgroup and its descendants in every hierarchy, leaf first.

        Processes still inside are killed (cgroup.kill on v2, else SIGKILL
        under the v1 freezer) and rmdir is retried until ``timeout``. A
        missing cgroup is fine: removal is idempotent. The process calling
        this is never killed; a cgroup holding it raises CgroupError.
        """
        deadline = time.monotonic() + timeout
        delay = _FIRST_RETRY_DELAY
        unified_dir = cgroup.hierarchy_dirs.get("unified")
        freezer_dir = cgroup.dirs.get("freezer") if not self.layout.is_v2("freezer") else None
        killed_once = False
        while True:
            remaining = [d for top in cgroup.hierarchy_dirs.values() for d in tree.subtree(top)]
            busy = tree.remove_dirs(remaining)
            if not busy:
                return
            still_there = [d for d in remaining if os.path.isdir(d)]
            pids = tree.read_pids(still_there)
            if os.getpid() in pids:
                raise CgroupError(
                    f"cannot remove cgroup {cgroup.path}: this daemon's own process (pid {os.getpid()}) is in it"
                )
            if killed_once and time.monotonic() >= deadline:
                raise CgroupError(
                    f"cgroup {cgroup.path} is still busy after {timeout:g}s: {', '.join(busy)}; "
                    f"processes left: {sorted(pids) or 'none (a dying process pins it)'}"
                )
            if pids:
                if unified_dir is not None and os.path.isdir(unified_dir):
                    v2.kill_processes(unified_dir)  # the whole subtree at once
                # Also covers processes placed in some v1 hierarchies only, and v2 before 5.14.
                v1.kill_processes(still_there, freezer_dir)
            killed_once = True
            time.sleep(delay)
            delay = min(delay * 2, _MAX_RETRY_DELAY)

    def kill(self, cgroup: CgroupPaths) -> None:
        """SIGKILL every process in the cgroup and its descendants, in every hierarchy.

        For when no monitor is left to do it (it was killed): the processes
        stay in place, so a later ``remove`` still finds the cgroup.
        """
        dirs = [d for top in cgroup.hierarchy_dirs.values() for d in tree.subtree(top) if os.path.isdir(d)]
        if os.getpid() in tree.read_pids(dirs):
            raise CgroupError(f"cannot kill cgroup {cgroup.path}: this daemon's own process is in it")
        unified_dir = cgroup.hierarchy_dirs.get("unified")
        if unified_dir is not None and os.path.isdir(unified_dir):
            v2.kill_processes(unified_dir)
        freezer_dir = cgroup.dirs.get("freezer") if not self.layout.is_v2("freezer") else None
        v1.kill_processes(dirs, freezer_dir)

    def processes(self, cgroup: CgroupPaths) -> set[int]:
        """Processes in the cgroup and its descendants, in any hierarchy."""
        return tree.read_pids([d for top in cgroup.hierarchy_dirs.values() for d in tree.subtree(top)])

    def populated(self, cgroup: CgroupPaths) -> bool:
        """Whether a process is in the cgroup or a descendant, in any hierarchy (False once it is gone)."""
        return any(tree.read_pids(tree.subtree(top)) for top in cgroup.hierarchy_dirs.values())

    def oom_kill_count(self, cgroup: CgroupPaths) -> int:
        """How many processes the kernel's OOM killer killed in this cgroup (0 if unknown)."""
        if cgroup.oom_counter_file is None:
            return 0
        return parse_oom_kill_count(read_files([cgroup.oom_counter_file])[0])

    # -- internals -----------------------------------------------------------

    def _create(self, levels: list[CgroupPaths], enable_for_children: bool, pod_first: bool = False,
                under_pod: bool = False) -> list[bool]:
        """mkdir each level (each a child of the one before) in every hierarchy; on failure undo
        what this call made. Cpusets are filled and cgroup2 controllers enabled down to the last
        level's parent, or the last level itself with ``enable_for_children``. ``pod_first``: the
        first level is a pod's, whose v1 cpuset gets cgroup.clone_children for the containers.
        ``under_pod``: the first level's parent is a pod cgroup made before, its ancestors set up
        then, so only that parent's cgroup2 controllers are checked. Returns, per level, whether
        this call made it (in some hierarchy)."""
        made: list[str] = []
        level_made = [False] * len(levels)
        deepest = levels[-1].path
        try:
            for hierarchy in self._hierarchies:
                for index, level in enumerate(levels):
                    new = tree.make_dirs(hierarchy.mount_point, level.path)
                    level_made[index] = level_made[index] or bool(new)
                    made.extend(new)
                    if index == 0 and pod_first:
                        self._note_parents_made(level, hierarchy.mount_point, new)
                if hierarchy.version == 1 and "cpuset" in hierarchy.controllers:
                    v1.fill_cpusets(hierarchy.mount_point, deepest)
                    if pod_first:
                        v1.set_clone_children(hierarchy.directory(levels[0].path))
                elif hierarchy.version == 2:
                    v2.enable_controllers(hierarchy.mount_point, deepest, self._v2_wanted,
                                          include_leaf=enable_for_children,
                                          from_parent=under_pod)
        except (CgroupWriteError, CgroupReadError) as e:
            self._undo(made)
            raise CgroupError(str(e)) from e
        except BaseException:
            self._undo(made)
            raise
        return level_made

    @staticmethod
    def _note_parents_made(pod: CgroupPaths, mount_point: str, made: list[str]) -> None:
        prefix = mount_point.rstrip("/")
        for directory in made:
            relative = directory[len(prefix):]
            if relative != pod.path and relative != DEFAULT_POD_PARENT and relative not in pod.parents_made:
                pod.parents_made.append(relative)

    def remove_parents(self, parents: list[str]) -> None:
        """rmdir ancestors of a pod's cgroup that crio-fast made (``CgroupPaths.parents_made``), deepest first,
        in every hierarchy. One that another pod still uses stays, and so do those above it."""
        for parent in sorted(parents, key=lambda path: path.count("/"), reverse=True):
            for directory in self.paths(parent).hierarchy_dirs.values():
                try:
                    os.rmdir(directory)
                except FileNotFoundError:
                    pass
                except OSError as exc:
                    if exc.errno in (errno.EBUSY, errno.ENOTEMPTY):
                        return
                    raise CgroupError(f"rmdir {directory}: {exc.strerror}") from exc

    @staticmethod
    def _undo(made: list[str]) -> None:
        for directory in reversed(made):
            try:
                os.rmdir(directory)
            except OSError:
                pass  # best effort: the original error is the one to report

    @staticmethod
    def _write(writes: list[tuple[str, str]]) -> None:
        try:
            write_files(writes)
        except CgroupWriteError as e:
            if e.errno in _VALUE_ERRNOS:
                raise CgroupValidationError(str(e)) from e
            raise CgroupError(str(e)) from e
