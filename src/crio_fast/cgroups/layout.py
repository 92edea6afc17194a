"""Discovery of the host's cgroup layout, assuming nothing.

Three shapes exist in the wild and all are handled:

* **v2**: one cgroup2 mount (usually /sys/fs/cgroup) carries every controller.
* **v1**: one cgroup (v1) mount per hierarchy; a hierarchy carries one
  controller (``cpu``) or several co-mounted ones (``cpu,cpuacct``), or none
  at all when it is a named hierarchy such as ``name=systemd``.
* **hybrid**: v1 hierarchies plus a cgroup2 mount (often
  /sys/fs/cgroup/unified). Controllers not bound to a v1 hierarchy may be
  enabled on the cgroup2 one (hugetlb, for example).

Sources: /proc/self/mountinfo says what is mounted where and from which
subtree (a container without a cgroup namespace sees its own subtree mounted
as the hierarchy); /proc/cgroups says which controllers the kernel has and
whether they are enabled; /proc/self/cgroup says where this process lives in
each hierarchy; the cgroup2 mount's ``cgroup.controllers`` says which
controllers the v2 hierarchy offers here. Every parser takes file contents as a
string, so tests can feed recorded samples of other hosts.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from crio_fast.cgroups.errors import CgroupError

V1 = "v1"
V2 = "v2"
HYBRID = "hybrid"

# Controllers a v1 mount may carry. Names from /proc/cgroups are added at run
# time, so a controller newer than this list is still recognised.
KNOWN_V1_CONTROLLERS = frozenset(
    {
        "blkio",
        "cpu",
        "cpuacct",
        "cpuset",
        "debug",
        "devices",
        "freezer",
        "hugetlb",
        "memory",
        "misc",
        "net_cls",
        "net_prio",
        "perf_event",
        "pids",
        "rdma",
    }
)

NAMED_PREFIX = "name="

_OCTAL_ESCAPE = re.compile(r"\\([0-7]{3})")


def _unescape_mount_field(text: str) -> str:
    """mountinfo writes space, tab, newline and backslash as \\040-style octal."""
    return _OCTAL_ESCAPE.sub(lambda m: chr(int(m.group(1), 8)), text)


@dataclass(frozen=True)
class MountEntry:
    """One line of /proc/<pid>/mountinfo."""

    mount_id: int
    parent_id: int
    root: str
    mount_point: str
    mount_options: tuple[str, ...]
    fs_type: str
    source: str
    super_options: tuple[str, ...]


def parse_mountinfo(text: str) -> list[MountEntry]:
    """Parse mountinfo (proc(5)); optional fields end at the ``-`` separator."""
    entries: list[MountEntry] = []
    for line_number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        fields = line.split(" ")
        try:
            separator = fields.index("-", 6)
            entries.append(
                MountEntry(
                    mount_id=int(fields[0]),
                    parent_id=int(fields[1]),
                    root=_unescape_mount_field(fields[3]),
                    mount_point=_unescape_mount_field(fields[4]),
                    mount_options=tuple(fields[5].split(",")),
                    fs_type=fields[separator + 1],
                    source=_unescape_mount_field(fields[separator + 2]),
                    super_options=tuple(fields[separator + 3].split(",")) if len(fields) > separator + 3 else (),
                )
            )
        except (ValueError, IndexError) as e:
            raise CgroupError(f"mountinfo line {line_number} is malformed ({e}): {line!r}") from e
    return entries


@dataclass(frozen=True)
class ControllerState:
    """One line of /proc/cgroups."""

    name: str
    hierarchy_id: int  # 0: bound to no v1 hierarchy (free, or on cgroup2)
    enabled: bool


def parse_proc_cgroups(text: str) -> dict[str, ControllerState]:
    states: dict[str, ControllerState] = {}
    for line_number, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.startswith("#"):
            continue
        fields = line.split()
        try:
            states[fields[0]] = ControllerState(fields[0], int(fields[1]), fields[3] == "1")
        except (ValueError, IndexError) as e:
            raise CgroupError(f"/proc/cgroups line {line_number} is malformed ({e}): {line!r}") from e
    return states


@dataclass(frozen=True)
class ProcCgroupEntry:
    """One line of /proc/<pid>/cgroup: ``hierarchy-id:controllers:path``."""

    hierarchy_id: int
    controllers: frozenset[str]  # empty for the cgroup2 line "0::/path"
    path: str


def parse_proc_self_cgroup(text: str) -> list[ProcCgroupEntry]:
    entries: list[ProcCgroupEntry] = []
    for line_number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        # The path may itself contain ':'; only the first two separate fields.
        parts = line.split(":", 2)
        try:
            hierarchy_id = int(parts[0])
            controllers = frozenset(c for c in parts[1].split(",") if c)
            path = parts[2]
        except (ValueError, IndexError) as e:
            raise CgroupError(f"/proc/self/cgroup line {line_number} is malformed ({e}): {line!r}") from e
        entries.append(ProcCgroupEntry(hierarchy_id, controllers, path))
    return entries


def hugepage_size_name(size_kb: int) -> str:
    """The size as hugetlb control files spell it: 64KB, 2MB, 1GB."""
    if size_kb % (1024 * 1024) == 0:
        return f"{size_kb // (1024 * 1024)}GB"
    if size_kb % 1024 == 0:
        return f"{size_kb // 1024}MB"
    return f"{size_kb}KB"


_HUGEPAGES_DIR = re.compile(r"hugepages-(\d+)kB")


def parse_hugepage_dirs(names: Iterable[str]) -> tuple[str, ...]:
    """Names under /sys/kernel/mm/hugepages (``hugepages-2048kB``) -> ("2MB", ...), smallest first."""
    sizes = sorted(int(m.group(1)) for name in names if (m := _HUGEPAGES_DIR.fullmatch(name)))
    return tuple(hugepage_size_name(kb) for kb in sizes)


def _relative_to_mount(cgroup_path: str, mount_root: str) -> str | None:
    """Where a cgroup (as /proc/self/cgroup names it) is under a mount of its hierarchy."""
    if mount_root == "/":
        return cgroup_path if not cgroup_path.startswith("/..") else None
    if cgroup_path == mount_root:
        return "/"
    if cgroup_path.startswith(mount_root + "/"):
        return cgroup_path[len(mount_root) :]
    return None


@dataclass(frozen=True)
class Hierarchy:
    """A mounted cgroup hierarchy.

    ``controllers`` are the controllers it carries: for v1 those bound to it
    (named hierarchies carry none and have ``name`` set), for v2 the root's
    ``cgroup.controllers``. ``own_path`` is this process's cgroup relative to
    ``mount_point``, or None when the process lives outside the mounted subtree.
    """

    version: int
    mount_point: str
    mount_root: str
    controllers: frozenset[str]
    name: str | None = None
    read_only: bool = False
    own_path: str | None = None

    @property
    def key(self) -> str:
        """How CgroupPaths names this hierarchy: "unified", "name=systemd", or "cpu,cpuacct"."""
        if self.version == 2:
            return "unified"
        if self.name is not None:
            return NAMED_PREFIX + self.name
        return ",".join(sorted(self.controllers))

    def directory(self, relative_path: str) -> str:
        """Absolute directory of a cgroup given relative to the hierarchy's mount."""
        relative = relative_path.strip("/")
        return os.path.join(self.mount_point, relative) if relative else self.mount_point


@dataclass(frozen=True)
class CgroupLayout:
    """Where each controller lives on this host."""

    version: str  # V1, V2 or HYBRID
    hierarchies: tuple[Hierarchy, ...]
    controllers: Mapping[str, Hierarchy]  # usable controller -> its hierarchy
    unified: Hierarchy | None
    hugepage_sizes: tuple[str, ...] = ()
    swap_accounting: bool = False
    disabled_controllers: frozenset[str] = field(default_factory=frozenset)

    @property
    def v2_mount_point(self) -> str | None:
        return self.unified.mount_point if self.unified else None

    @property
    def v2_controllers(self) -> frozenset[str]:
        return self.unified.controllers if self.unified else frozenset()

    def hierarchy_of(self, controller: str) -> Hierarchy | None:
        return self.controllers.get(controller)

    def is_v2(self, controller: str) -> bool:
        hierarchy = self.controllers.get(controller)
        return hierarchy is not None and hierarchy.version == 2

    def named(self, name: str) -> Hierarchy | None:
        for hierarchy in self.hierarchies:
            if hierarchy.name == name:
                return hierarchy
        return None

    def own_cgroup(self, controller: str) -> str | None:
        """This process's cgroup in the hierarchy of ``controller`` (relative to its mount)."""
        hierarchy = self.controllers.get(controller)
        return hierarchy.own_path if hierarchy else None

    def describe(self) -> str:
        """One line per hierarchy, for logs and error messages."""
        lines = [f"cgroup layout: {self.version}"]
        for h in self.hierarchies:
            what = ",".join(sorted(h.controllers)) or "-"
            lines.append(f"  v{h.version} {h.key} at {h.mount_point} controllers={what} own={h.own_path}")
        return "\n".join(lines)


def _pick_mount(candidates: list[MountEntry], own_path: str | None) -> MountEntry:
    """Among mounts of one hierarchy prefer one that shows our own cgroup, then the widest."""

    def rank(entry: MountEntry) -> tuple[int, int, int]:
        sees_own = own_path is not None and _relative_to_mount(own_path, entry.root) is not None
        return (0 if sees_own else 1, len(entry.root), candidates.index(entry))

    return min(candidates, key=rank)


def build_layout(
    mountinfo: str,
    proc_cgroups: str,
    self_cgroup: str,
    v2_root_controllers: str | None = None,
    hugepage_dir_names: Iterable[str] = (),
    swap_accounting: bool = False,
) -> CgroupLayout:
    """Describe the layout from the text of the files named in the module doc.

    ``v2_root_controllers`` is the content of ``cgroup.controllers`` at the
    cgroup2 mount (None when there is none).
    """
    states = parse_proc_cgroups(proc_cgroups)
    known = KNOWN_V1_CONTROLLERS | states.keys()
    disabled = frozenset(name for name, state in states.items() if not state.enabled)
    own = parse_proc_self_cgroup(self_cgroup)
    own_v2 = next((e.path for e in own if e.hierarchy_id == 0 and not e.controllers), None)

    v1_mounts: dict[frozenset[str], list[MountEntry]] = {}
    v2_mounts: list[MountEntry] = []
    for entry in parse_mountinfo(mountinfo):
        if entry.fs_type == "cgroup2":
            v2_mounts.append(entry)
        elif entry.fs_type == "cgroup":
            bound = frozenset(o for o in entry.super_options if o in known or o.startswith(NAMED_PREFIX))
            if bound:
                v1_mounts.setdefault(bound, []).append(entry)

    hierarchies: list[Hierarchy] = []
    controllers: dict[str, Hierarchy] = {}
    for bound, candidates in v1_mounts.items():
        own_path = next((e.path for e in own if e.controllers == bound), None)
        entry = _pick_mount(candidates, own_path)
        names = [o[len(NAMED_PREFIX) :] for o in bound if o.startswith(NAMED_PREFIX)]
        hierarchy = Hierarchy(
            version=1,
            mount_point=entry.mount_point,
            mount_root=entry.root,
            controllers=frozenset(o for o in bound if not o.startswith(NAMED_PREFIX)),
            name=names[0] if names else None,
            read_only="ro" in entry.mount_options,
            own_path=_relative_to_mount(own_path, entry.root) if own_path is not None else None,
        )
        hierarchies.append(hierarchy)
        for controller in hierarchy.controllers:
            if controller not in disabled:
                controllers[controller] = hierarchy

    unified: Hierarchy | None = None
    if v2_mounts:
        entry = _pick_mount(v2_mounts, own_v2)
        offered = frozenset((v2_root_controllers or "").split())
        unified = Hierarchy(
            version=2,
            mount_point=entry.mount_point,
            mount_root=entry.root,
            controllers=offered,
            read_only="ro" in entry.mount_options,
            own_path=_relative_to_mount(own_v2, entry.root) if own_v2 is not None else None,
        )
        hierarchies.append(unified)
        for controller in offered:
            # The kernel never offers on cgroup2 a controller bound to v1; be safe anyway.
            controllers.setdefault(controller, unified)

    has_v1_controllers = any(h.version == 1 and h.controllers for h in hierarchies)
    if unified is None and not hierarchies:
        raise CgroupError("no cgroup filesystem is mounted (no cgroup or cgroup2 entry in mountinfo)")
    if unified is None:
        version = V1
    elif has_v1_controllers:
        version = HYBRID
    else:
        version = V2

    hierarchies.sort(key=lambda h: (h.version, h.mount_point))
    return CgroupLayout(
        version=version,
        hierarchies=tuple(hierarchies),
        controllers=controllers,
        unified=unified,
        hugepage_sizes=parse_hugepage_dirs(hugepage_dir_names),
        swap_accounting=swap_accounting,
        disabled_controllers=disabled,
    )


def _read_text(path: str) -> str:
    with open(path, encoding="utf-8", errors="surrogateescape") as f:
        return f.read()


def _probe_v2_swap_accounting(hierarchy: Hierarchy) -> bool:
    """memory.swap.max exists in non-root cgroups with memory enabled iff swap is accounted."""
    candidates = []
    if hierarchy.own_path not in (None, "/"):
        candidates.append(hierarchy.directory(hierarchy.own_path))
    try:
        with os.scandir(hierarchy.mount_point) as it:
            candidates.extend(e.path for e in it if e.is_dir(follow_symlinks=False))
    except OSError:
        pass
    for directory in candidates:
        if os.path.exists(os.path.join(directory, "memory.max")):
            return os.path.exists(os.path.join(directory, "memory.swap.max"))
    # Nothing to look at yet; kernels account swap by default.
    return True


def discover_layout(proc_dir: str = "/proc", hugepages_dir: str = "/sys/kernel/mm/hugepages") -> CgroupLayout:
    """Read the live files and build the layout of this host as this process sees it."""
    try:
        mountinfo = _read_text(os.path.join(proc_dir, "self", "mountinfo"))
        self_cgroup = _read_text(os.path.join(proc_dir, "self", "cgroup"))
    except OSError as e:
        raise CgroupError(f"reading {e.filename}: {e.strerror}") from e
    try:
        proc_cgroups = _read_text(os.path.join(proc_dir, "cgroups"))
    except FileNotFoundError:
        proc_cgroups = ""  # absent on kernels built without cgroup v1 support
    except OSError as e:
        raise CgroupError(f"reading {e.filename}: {e.strerror}") from e

    v2_root_controllers = None
    provisional = build_layout(mountinfo, proc_cgroups, self_cgroup)
    if provisional.unified is not None:
        path = os.path.join(provisional.unified.mount_point, "cgroup.controllers")
        try:
            v2_root_controllers = _read_text(path)
        except OSError as e:
            raise CgroupError(f"reading {path}: {e.strerror}") from e
    try:
        hugepage_dir_names = os.listdir(hugepages_dir)
    except FileNotFoundError:
        hugepage_dir_names = []
    except OSError as e:
        raise CgroupError(f"listing {hugepages_dir}: {e.strerror}") from e

    layout = build_layout(mountinfo, proc_cgroups, self_cgroup, v2_root_controllers, hugepage_dir_names)
    memory = layout.hierarchy_of("memory")
    if memory is None:
        swap = False
    elif memory.version == 1:
        swap = os.path.exists(os.path.join(memory.mount_point, "memory.memsw.limit_in_bytes"))
    else:
        swap = _probe_v2_swap_accounting(memory)
    return build_layout(mountinfo, proc_cgroups, self_cgroup, v2_root_controllers, hugepage_dir_names, swap)
