"""Reaping processes the daemon inherits when a pod monitor dies.

The daemon is a child subreaper (pod monitors detach by double fork, and PID 1
reaps late on some hosts). When a monitor is killed, its children -- the
pod's container inits -- are re-parented to the daemon, and nothing else will
ever wait for them: unreaped, they stay zombies and keep their cgroups busy.

The daemon cannot reap "any child" (waitpid(-1)): that would steal the exit
status of its own subprocesses (exec helpers, CNI plugins, runtimes). It
reaps only pids it knows to be adopted: the monitors and container inits its
records name, and dead pod inits (``--pid new``), known by their name.
"""

from __future__ import annotations

import contextlib
import os
import time
from typing import Iterable

from crio_fast.cgroups.tree import process_cgroups


def reap_adopted(pid: int) -> int | None:
    """Reap ``pid`` if it is an exited child of this process; its wait status, else None.

    None also when ``pid`` is not (or no longer) our child: then whoever is
    its parent reaps it.
    """
    if pid <= 0:
        return None
    try:
        waited, status = os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        return None
    return status if waited == pid else None


def _state_and_parent(pid: int) -> tuple[bytes, int] | None:
    """A process's state letter and parent pid from /proc/PID/stat; None when it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except (FileNotFoundError, ProcessLookupError):
        return None
    # "pid (comm) state ppid ...": comm may contain spaces and parentheses.
    fields = stat[stat.rfind(b")") + 2:].split()
    return (fields[0], int(fields[1])) if len(fields) > 1 else None


def is_adopted_child(pid: int) -> bool:
    """Whether ``pid`` is a live or zombie child of this process."""
    found = _state_and_parent(pid)
    return found is not None and found[1] == os.getpid()


def wait_adopted(pid: int, timeout: float) -> int | None:
    """Wait up to ``timeout`` for an adopted ``pid`` to exit and reap it.

    Returns its wait status; None if it is not our child (or did not exit in
    time: the caller decides what that means).
    """
    deadline = time.monotonic() + timeout
    delay = 0.002
    while True:
        status = reap_adopted(pid)
        if status is not None:
            return status
        if not is_adopted_child(pid) or time.monotonic() >= deadline:
            return None
        time.sleep(delay)
        delay = min(delay * 2, 0.05)


def is_daemon_helper(pid: int) -> bool:
    """Whether ``pid`` runs the monitor binary's exec or runtime helper: a subprocess of the daemon
    that joins a container's cgroup (ExecSync), whose exit status belongs to the call waiting for it."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            argv = f.read().split(b"\0")
    except OSError:
        return False
    return len(argv) > 1 and os.path.basename(argv[0]) == b"crio-fast-monitor" and argv[1] in (b"exec", b"runtime")


def reap_all_adopted(pids: Iterable[int], timeout: float) -> dict[int, int]:
    """Reap each of ``pids`` once it is an exited child of this process, waiting up to ``timeout``
    for those still alive (or not yet re-parented to it); returns the wait statuses by pid. A pid
    that goes away without becoming our child was someone else's to reap."""
    remaining = set(pids)
    statuses: dict[int, int] = {}
    deadline = time.monotonic() + timeout
    delay = 0.002
    while remaining:
        for pid in list(remaining):
            status = reap_adopted(pid)
            if status is not None:
                statuses[pid] = status
                remaining.discard(pid)
            elif _exited_elsewhere(pid):
                remaining.discard(pid)
        if not remaining or time.monotonic() >= deadline:
            return statuses
        time.sleep(delay)
        delay = min(delay * 2, 0.05)
    return statuses


def adopted_in_cgroup(cgroup_path: str) -> set[int]:
    """Children of this process, live or exited, in the cgroup ``cgroup_path`` (as /proc/PID/cgroup names
    it) or below: a killed monitor's container processes. An exited one is no longer listed in
    cgroup.procs, but its /proc/PID/cgroup still names the cgroup until it is reaped."""
    found = set()
    for pid in _adopted_children():
        if any(path == cgroup_path or path.startswith(cgroup_path + "/") for path in process_cgroups(pid)):
            found.add(pid)
    return found


def _exited_elsewhere(pid: int) -> bool:
    """Gone, or a zombie some other process is to reap."""
    found = _state_and_parent(pid)
    return found is None or (found[0] == b"Z" and found[1] != os.getpid())


def exit_code_of(status: int) -> tuple[int, int]:
    """(exit code as the CRI reports it, killing signal or 0) of a wait status."""
    if os.WIFSIGNALED(status):
        return 128 + os.WTERMSIG(status), os.WTERMSIG(status)
    return os.waitstatus_to_exitcode(status), 0


POD_INIT_COMM = "crio-fast-pod-i"  # the pod init's name (docs/monitor.md), as comm keeps it: 15 bytes


def reap_dead_pod_inits(timeout: float = 2.0) -> int:
    """Reap pod inits (``--pid new``) whose monitor was killed; returns how many.

    A pod init dies with its monitor (PR_SET_PDEATHSIG) and, when the caller is
    a child subreaper, is re-parented to it, exited: a zombie only the caller
    can reap. The death signal is asynchronous, so wait a little for inits that
    are still dying. A zombie has no namespaces left to match a pod by, but a
    dead pod init is nobody else's: every one found is reaped."""
    reaped = 0
    deadline = time.monotonic() + timeout
    while True:
        dying = 0
        for pid in _adopted_children():
            try:
                with open(f"/proc/{pid}/comm") as f:
                    if f.read().rstrip("\n") != POD_INIT_COMM:
                        continue
                with open(f"/proc/{pid}/stat", "rb") as f:
                    state = f.read().rsplit(b")", 1)[1].split()[0]
            except OSError:
                continue
            if state != b"Z":
                dying += 1
                continue
            with contextlib.suppress(ChildProcessError):
                if os.waitpid(pid, os.WNOHANG)[0] == pid:
                    reaped += 1
        if not dying or time.monotonic() >= deadline:
            return reaped
        time.sleep(0.01)


def _adopted_children() -> list[int]:
    pids: list[int] = []
    for task in os.listdir("/proc/self/task"):
        with contextlib.suppress(OSError):
            with open(f"/proc/self/task/{task}/children") as f:
                pids.extend(int(pid) for pid in f.read().split())
    return pids
