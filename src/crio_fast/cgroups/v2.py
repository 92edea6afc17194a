"""Driver steps only cgroup v2 needs.

cgroup v2 is one tree. A controller is active in a cgroup only when every
ancestor lists it in ``cgroup.subtree_control``, and a non-root cgroup that
lists controllers there may hold no processes itself ("no internal
processes"). So the manager enables controllers top-down along the path,
never in a container's own (leaf) cgroup, and in a pod cgroup only: on v2 no
process may live in a pod cgroup directly (the pod monitor gets a leaf of its
own, see CgroupManager.monitor_cgroup).
"""

from __future__ import annotations

import errno
import os

from crio_fast._native._cgroupfs import CgroupWriteError, read_files, write_files
from crio_fast.cgroups.errors import CgroupError
from crio_fast.cgroups.tree import levels

# Domain controllers a container may be limited or accounted by.
WANTED_CONTROLLERS = ("cpuset", "cpu", "io", "memory", "hugetlb", "pids", "rdma", "misc")


def plan_subtree_control(
    chain: list[str], controllers: list[bytes | None], subtree_control: list[bytes | None], wanted: frozenset[str]
) -> list[tuple[str, str]]:
    """Writes to ``cgroup.subtree_control`` that make ``wanted`` reach below the last of ``chain``.

    ``controllers``/``subtree_control`` are the files' contents for each
    directory of ``chain`` (top first). A controller enabled in one level
    becomes available in the next, which the plan accounts for.
    """
    writes: list[tuple[str, str]] = []
    enabled_above: set[str] | None = None
    for directory, offered_text, enabled_text in zip(chain, controllers, subtree_control, strict=True):
        if offered_text is None or enabled_text is None:
            raise CgroupError(f"{directory} is not a cgroup v2 directory (no cgroup.controllers)")
        offered = set(offered_text.decode().split())
        if enabled_above is not None:
            offered |= enabled_above
        enabled = set(enabled_text.decode().split())
        missing = sorted((wanted & offered) - enabled)
        if missing:
            writes.append((os.path.join(directory, "cgroup.subtree_control"), " ".join("+" + c for c in missing)))
        enabled_above = enabled | set(missing)
    return writes


def enable_controllers(mount_point: str, relative_path: str, wanted: frozenset[str], include_leaf: bool,
                       from_parent: bool = False) -> None:
    """Enable ``wanted`` (where offered) from the hierarchy root down to the cgroup's parent, or the cgroup itself.

    ``from_parent``: the levels above the parent were set up before (a container under its pod):
    only the parent is read, its cgroup.controllers telling what the levels above offer.
    """
    chain = levels(mount_point, relative_path)
    if not include_leaf:
        chain = chain[:-1]
    if from_parent:
        chain = chain[-1:]
    if not chain or not wanted:
        return
    contents = read_files(
        [os.path.join(d, name) for d in chain for name in ("cgroup.controllers", "cgroup.subtree_control")]
    )
    writes = plan_subtree_control(chain, contents[0::2], contents[1::2], wanted)
    try:
        write_files(writes)
    except CgroupWriteError as e:
        if e.errno == errno.EBUSY:
            raise CgroupError(
                f"{e}: the cgroup holds processes of its own, and cgroup v2 lets a non-root cgroup with "
                "processes enable no controllers for its children (no internal processes rule)"
            ) from e
        raise CgroupError(str(e)) from e


def kill_processes(directory: str) -> bool:
    """Kill every process in the cgroup and its descendants with cgroup.kill (Linux 5.14+).

    Returns False when the kernel has no cgroup.kill (the caller signals instead).
    """
    kill_file = os.path.join(directory, "cgroup.kill")
    try:
        write_files([(kill_file, "1")])
    except CgroupWriteError as e:
        if e.errno == errno.ENOENT:
            return False
        raise CgroupError(str(e)) from e
    return True
