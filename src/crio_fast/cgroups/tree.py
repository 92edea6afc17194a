"""Directory operations shared by the v1 and v2 drivers.

A cgroup is a directory; its control files are not real files and vanish
with it, so removing a cgroup is one rmdir of each directory, leaf first.
"""

from __future__ import annotations

import errno
import os
import signal

from crio_fast._native._cgroupfs import read_files
from crio_fast.cgroups.errors import CgroupError

_WALK_ATTEMPTS = 5


def levels(mount_point: str, relative_path: str) -> list[str]:
    """The directories from the hierarchy root down to the cgroup, root included."""
    out = [mount_point]
    current = mount_point
    for component in relative_path.strip("/").split("/"):
        if component:
            current = os.path.join(current, component)
            out.append(current)
    return out


def make_dirs(mount_point: str, relative_path: str) -> list[str]:
    """mkdir the cgroup and any missing ancestors; return the directories created, top first."""
    relative = relative_path.strip("/")
    if not relative:
        return []
    leaf = os.path.join(mount_point, relative)
    try:
        os.mkdir(leaf)
        return [leaf]
    except FileExistsError:
        _require_directory(leaf)
        return []
    except FileNotFoundError:
        pass  # an ancestor is missing: walk down from the top
    except OSError as e:
        raise CgroupError(f"mkdir {leaf}: {e.strerror}") from e
    created = []
    # An ancestor another pod made may be removed with that pod while this walk is under way: walk again.
    for attempt in range(_WALK_ATTEMPTS):
        try:
            for directory in levels(mount_point, relative_path)[1:]:
                try:
                    os.mkdir(directory)
                    if directory not in created:
                        created.append(directory)
                except FileExistsError:
                    _require_directory(directory)
            return created
        except FileNotFoundError as e:
            if attempt + 1 == _WALK_ATTEMPTS:
                raise CgroupError(f"mkdir {e.filename}: {e.strerror}") from e
        except OSError as e:
            raise CgroupError(f"mkdir {e.filename}: {e.strerror}") from e
    return created


def _require_directory(path: str) -> None:
    if not os.path.isdir(path):
        raise CgroupError(f"mkdir {path}: a control file of that name exists; pick another cgroup name")


def subtree(directory: str) -> list[str]:
    """The cgroup and its descendant cgroups, deepest first (the rmdir order)."""
    # A missing directory yields nothing: removal is idempotent.
    return [root for root, _subdirs, _files in os.walk(directory, topdown=False)]


def process_cgroups(pid: int) -> list[str]:
    """The cgroup paths of a process, one per hierarchy, as /proc/PID/cgroup names them (relative to
    the hierarchy's root as this process sees it); empty when the process is gone."""
    try:
        with open(f"/proc/{pid}/cgroup") as f:
            return [line.rstrip("\n").split(":", 2)[-1] for line in f]
    except OSError:
        return []


def read_pids(directories: list[str]) -> set[int]:
    """Processes in the given cgroups (not their descendants)."""
    contents = read_files([os.path.join(d, "cgroup.procs") for d in directories])
    return {int(token) for content in contents if content for token in content.split()}


def remove_dirs(directories: list[str]) -> list[str]:
    """rmdir each (deepest first); return those still busy. Missing ones count as removed."""
    busy = []
    for directory in directories:
        try:
            os.rmdir(directory)
        except FileNotFoundError:
            pass
        except OSError as e:
            if e.errno == errno.EBUSY:
                busy.append(directory)
            else:
                raise CgroupError(f"rmdir {directory}: {e.strerror}") from e
    return busy


def signal_processes(directories: list[str], sig: int = signal.SIGKILL) -> set[int]:
    """Send ``sig`` to every process in the given cgroups except this one; return the pids."""
    pids = read_pids(directories)
    pids.discard(os.getpid())
    for pid in pids:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass  # exited between the listing and the signal
    return pids
