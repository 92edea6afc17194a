"""Driver steps only cgroup v1 needs.

v1 hierarchies are independent trees, one per mount; the manager creates the
cgroup in each and calls in here for what v1 adds on top of mkdir:

* cpuset: a new v1 cpuset cgroup starts with empty ``cpuset.cpus`` and
  ``cpuset.mems`` and refuses processes until both are set, so each new level
  is given its parent's values. The kernel's cgroup.clone_children does the
  same at mkdir, but it is a property of the parent, which we may not own:
  the pod cgroups we make set it for their containers.
* removal: v1 has no cgroup.kill, so the processes left in a cgroup are
  signalled one by one, frozen first (when the freezer hierarchy is mounted)
  so that none can fork between the listing and the signal.
"""

from __future__ import annotations

import errno
import os
import time

from crio_fast._native._cgroupfs import CgroupWriteError, read_files, write_files
from crio_fast.cgroups.errors import CgroupError
from crio_fast.cgroups.tree import levels, read_pids, signal_processes

CPUSET_FILES = ("cpuset.cpus", "cpuset.mems")
# How long to wait for a freezer to report FROZEN before signalling anyway.
FREEZE_WAIT_SECONDS = 0.1


def fill_cpusets(mount_point: str, relative_path: str) -> list[tuple[str, str]]:
    """Give every level of the cgroup with empty cpus/mems its nearest ancestor's values.

    All levels are read in one batch and the missing values written in one
    batch, top-down. Returns the writes made (for tests and logs).
    """
    chain = levels(mount_point, relative_path)
    # Under a parent with cgroup.clone_children (pods set it: set_clone_children) the kernel filled
    # the new cgroup at mkdir: one read of its own two files says so.
    leaf = read_files([os.path.join(chain[-1], name) for name in CPUSET_FILES])
    if all(content is not None and content.strip() for content in leaf):
        return []
    paths = [os.path.join(d, name) for d in chain for name in CPUSET_FILES]
    contents = read_files(paths)
    inherited: dict[str, str] = {}
    writes: list[tuple[str, str]] = []
    for path, content in zip(paths, contents, strict=True):
        name = os.path.basename(path)
        if content is None:
            raise CgroupError(
                f"{path} does not exist: the cgroup was removed while being set up, or {mount_point} is not a cpuset hierarchy"
            )
        value = content.decode().strip()
        if value:
            inherited[name] = value
        elif name in inherited:
            writes.append((path, inherited[name]))
        else:
            raise CgroupError(f"{path} is empty and no ancestor up to {mount_point} has a value to copy")
    write_files(writes)
    return writes


def set_clone_children(directory: str) -> None:
    """Have the kernel give the cpuset cgroups made under ``directory`` its cpus and mems at mkdir
    (cgroup.clone_children, inherited by the levels below), so fill_cpusets reads two files there
    instead of the whole chain and writes nothing."""
    write_files([(os.path.join(directory, "cgroup.clone_children"), "1")])


def _freezer_state(state_file: str) -> str | None:
    content = read_files([state_file])[0]
    return content.decode().strip() if content is not None else None


def kill_processes(directories: list[str], freezer_dir: str | None) -> set[int]:
    """SIGKILL every process in ``directories``; return the pids signalled.

    ``freezer_dir`` is the same cgroup in the freezer hierarchy, frozen for the
    duration so that a forking process cannot slip a child past the listing.
    This process itself is never signalled nor frozen.
    """
    own_pid = os.getpid()
    pids = read_pids(directories)
    if not pids:
        return set()
    freeze = freezer_dir is not None and own_pid not in pids and os.path.isdir(freezer_dir)
    state_file = os.path.join(freezer_dir, "freezer.state") if freezer_dir else ""
    if freeze:
        freeze = _write_state(state_file, "FROZEN")
        deadline = time.monotonic() + FREEZE_WAIT_SECONDS
        while freeze and _freezer_state(state_file) not in ("FROZEN", None) and time.monotonic() < deadline:
            time.sleep(0.005)
    try:
        return signal_processes(directories)
    finally:
        if freeze:
            # A frozen process does not act on SIGKILL until thawed.
            _write_state(state_file, "THAWED")


def _write_state(state_file: str, state: str) -> bool:
    """Write freezer.state; False if the cgroup is gone already."""
    try:
        write_files([(state_file, state)])
    except CgroupWriteError as e:
        if e.errno == errno.ENOENT:
            return False
        raise CgroupError(str(e)) from e
    return True
