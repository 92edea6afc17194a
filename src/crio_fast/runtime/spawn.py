"""Starting a pod monitor, and cleaning up after one.

``spawn_monitor`` runs ``crio-fast-monitor pod`` (posix_spawn) with the
arguments a ``PodMonitorSpec`` gives and waits for its ready line: the
spawned process sets the pod up (namespaces, /dev/shm, cgroups), forks the
monitor and exits, so the monitor is not the daemon's child. It returns a
``PodMonitor`` connected to it. ``cleanup_pod_dir`` undoes what a monitor
that died left in its pod dir. See docs/monitor.md, "Starting a pod monitor".
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import re
import signal as signal_module
import time
from dataclasses import dataclass, field
from typing import Callable

from crio_fast.runtime import fdwait, mounts
from crio_fast.runtime.monitor import (
    PID_FILE_NAME,
    PINNED_NAMESPACES,
    POD_NAMESPACES,
    SOCKET_NAME,
    MonitorError,
    PodMonitor,
    run_then_open_gate,
)


@dataclass
class PodMonitorSpec:
    """What the pod monitor anchors: namespaces, hostname, cgroups, /dev/shm."""

    pod_id: str
    pod_dir: str
    exits_dir: str
    namespaces: dict[str, str] = field(default_factory=lambda: {"net": "new", "ipc": "new", "uts": "new"})
    pid: str = "host"  # "new": a pod pid namespace whose pid 1 is the monitor's pod init (shareProcessNamespace)
    hostname: str | None = None
    cgroup_procs: list[str] = field(default_factory=list)
    shm_size: int = 64 * 1024 * 1024  # 0: no shm mount
    stderr_path: str | None = None  # a file for the monitor's own diagnostics
    # "legacy": mount overlays with mount(2) and one page of options even where the kernel has
    # fsconfig lowerdir+ (tests; a kernel whose lowerdir+ misbehaves). "auto": the monitor probes.
    overlay_mount: str = "auto"
    # A user namespace of the pod's own (hostUsers: false): its uid and gid mapping, one line each of
    # uid_map(5)'s form, "CONTAINER HOST LENGTH". It owns the pod's new net, ipc and uts namespaces.
    userns_uid_map: str | None = None
    userns_gid_map: str | None = None
    # The pod's network namespace made ahead (network/netns_pool.py): joined instead of made, with
    # namespaces["net"] "new" (it is the pod's own); never with a user namespace, which must own it.
    net_path: str | None = None

    def argv(self, monitor_path: str, ready_fd: int, cgroup_gate_fd: int | None = None) -> list[str]:
        args = [monitor_path, "pod", "--pod-id", self.pod_id, "--pod-dir", self.pod_dir,
                "--exits-dir", self.exits_dir, "--ready-fd", str(ready_fd)]
        if cgroup_gate_fd is not None:
            args += ["--cgroup-gate-fd", str(cgroup_gate_fd)]
        for name in POD_NAMESPACES:
            mode = self.namespaces.get(name, "host")
            if mode not in ("new", "host"):
                raise ValueError(f"namespace {name}: {mode!r} is neither 'new' nor 'host'")
            args += [f"--{name}", self.net_path if name == "net" and self.net_path is not None else mode]
        if self.pid not in ("new", "host"):
            raise ValueError(f"pid namespace: {self.pid!r} is neither 'new' nor 'host'")
        args += ["--pid", self.pid]
        if self.hostname is not None:
            args += ["--hostname", self.hostname]
        for path in self.cgroup_procs:
            args += ["--cgroup-procs", path]
        args += ["--shm-size", str(self.shm_size)]
        if self.overlay_mount not in ("auto", "legacy"):
            raise ValueError(f"overlay_mount: {self.overlay_mount!r} is neither 'auto' nor 'legacy'")
        if self.overlay_mount != "auto":
            args += ["--overlay-mount", self.overlay_mount]
        if self.net_path is not None and (self.namespaces.get("net") != "new" or self.userns_uid_map is not None):
            raise ValueError("net_path is for a pod's own network namespace, without a user namespace")
        if (self.userns_uid_map is None) != (self.userns_gid_map is None):
            raise ValueError("userns_uid_map and userns_gid_map go together")
        if self.userns_uid_map is not None and self.userns_gid_map is not None:
            args += ["--userns-uid-map", self.userns_uid_map, "--userns-gid-map", self.userns_gid_map]
        return args


def spawn_monitor(monitor_path: str, spec: PodMonitorSpec, timeout: float = 10.0,
                  meanwhile: Callable[[int], None] | None = None,
                  after_gate: Callable[[], None] | None = None) -> PodMonitor:
    """Start a pod monitor and wait until it is ready (namespaces anchored, socket listening).

    ``meanwhile`` runs while the monitor makes the pod's namespaces, and
    the monitor joins ``spec.cgroup_procs`` only once it has returned: the
    daemon makes the cgroups there, on the other CPU, instead of before
    the spawn. It is given the pid of the spawned process, which joins the
    cgroups and forks the monitor (a driver that makes a cgroup around a
    process places this one). If it raises, the monitor is told to give up (it undoes its
    set-up) and the exception propagates. ``after_gate`` (with
    ``meanwhile`` only) runs once the monitor may go on, while it joins
    its cgroups and forks: for work the monitor does not need. If it
    raises, the monitor, once ready, is shut down again.

    Raises MonitorError with the monitor's message and errno on failure;
    the monitor has then undone its own work (after a timeout, call
    cleanup_pod_dir).
    """
    ready_read, ready_write = os.pipe()
    gate_read = gate_write = -1
    stderr_fd = -1
    try:
        if meanwhile is not None:
            gate_read, gate_write = os.pipe()
        # posix_spawn's dup2 onto the same number would keep close-on-exec
        # set: move the fds handed over out of the way of 3 and 4 first.
        ready_write = _above(ready_write, 4)
        if gate_read >= 0:
            gate_read = _above(gate_read, 4)
        stderr_fd = (os.open(spec.stderr_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
                     if spec.stderr_path else os.open(os.devnull, os.O_WRONLY | os.O_CLOEXEC))
        actions = [
            (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
            (os.POSIX_SPAWN_OPEN, 1, os.devnull, os.O_WRONLY, 0),
            (os.POSIX_SPAWN_DUP2, stderr_fd, 2),
            (os.POSIX_SPAWN_DUP2, ready_write, 3),
        ]
        if gate_read >= 0:
            actions.append((os.POSIX_SPAWN_DUP2, gate_read, 4))
        # The spawned process sets the pod up, forks the monitor, writes
        # the ready line and exits; the monitor is not our child.
        child = os.posix_spawn(
            monitor_path,
            spec.argv(monitor_path, 3, 4 if gate_read >= 0 else None),
            {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"},
            file_actions=actions,
        )
    except BaseException:
        os.close(ready_read)
        if gate_write >= 0:
            os.close(gate_write)
        raise
    finally:
        for fd in (ready_write, gate_read, stderr_fd):
            if fd >= 0:
                os.close(fd)
    meanwhile_error: BaseException | None = None
    if meanwhile is not None:
        # Given the spawned process: it joins the cgroups after the gate, then forks the monitor there.
        meanwhile_error = run_then_open_gate(meanwhile, gate_write, child_pid=child)
        if meanwhile_error is None and after_gate is not None:
            try:
                after_gate()
            except BaseException as exc:
                meanwhile_error = exc
    try:
        line = _read_ready_line(ready_read, timeout)
    except BaseException:
        # Stuck in set-up: stop it (what it mounted is left for cleanup_pod_dir).
        with contextlib.suppress(ProcessLookupError):
            os.kill(child, signal_module.SIGKILL)
        raise
    finally:
        os.close(ready_read)
        _, status = os.waitpid(child, 0)
    if meanwhile_error is not None:
        if line.startswith("ok "):  # after_gate failed: stop the monitor cleanly (it undoes its set-up)
            with contextlib.suppress(MonitorError, ValueError, OSError):
                pid = int(line.split()[1])
                PodMonitor(spec.pod_dir, pid, os.pidfd_open(pid)).shutdown()
        raise meanwhile_error
    if line.startswith("ok "):
        pid = int(line.split()[1])
        try:
            pidfd = os.pidfd_open(pid)
        except ProcessLookupError:
            raise MonitorError(f"pod monitor {pid} for {spec.pod_id} died right after starting") from None
        return PodMonitor(spec.pod_dir, pid, pidfd)
    match = re.match(r"error (\d+) (.*)", line, re.S)
    if match:
        raise MonitorError(f"pod monitor for {spec.pod_id}: {match.group(2).strip()}", int(match.group(1)))
    raise MonitorError(f"pod monitor for {spec.pod_id} exited without reporting "
                       f"(wait status {status:#x}, said {line!r})")


def _above(fd: int, highest_reserved: int) -> int:
    """``fd``, or a close-on-exec duplicate above ``highest_reserved`` (closing ``fd``)."""
    if fd > highest_reserved:
        return fd
    moved = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, highest_reserved + 1)
    os.close(fd)
    return moved


def _read_ready_line(fd: int, timeout: float) -> str:
    deadline = time.monotonic() + timeout
    chunks = []
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise MonitorError(f"pod monitor not ready within {timeout}s", errno.ETIMEDOUT)
        if not fdwait.wait_readable(fd, remaining):
            continue
        chunk = os.read(fd, 4096)
        if not chunk:
            break
        chunks.append(chunk)
        if chunk.endswith(b"\n"):
            break
    return b"".join(chunks).decode(errors="replace").strip()


def cleanup_pod_dir(pod_dir: str) -> list[str]:
    """Undo what a dead monitor left in its pod dir: lazy-unmount every mount at
    or under it (nsfs, shm, the private self-bind) and remove the files the
    monitor made. Returns the mount points it unmounted. Runs at every pod stop
    and removal, so it finds the mounts without reading the host's mount table
    (see runtime/mounts.py)."""
    root = os.path.realpath(pod_dir)
    unmounted = mounts.detach_all_under(root)
    for name in (SOCKET_NAME, PID_FILE_NAME, PID_FILE_NAME + ".tmp"):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(os.path.join(root, name))
    for name in PINNED_NAMESPACES:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(os.path.join(root, "ns", name))
    for name in ("ns", "shm"):
        try:
            os.rmdir(os.path.join(root, name))
        except FileNotFoundError:
            pass
        except OSError as e:
            if e.errno != errno.ENOTEMPTY:  # someone else's files: leave them
                raise
    return unmounted


def processes_naming_pod_dir(pod_dir: str) -> list[int]:
    """Pids of the processes whose command line has ``--pod-dir POD_DIR``: a spawned monitor still
    setting its pod up, or the monitor it forked (the pod init renames itself). Reads every
    process's command line: for pods whose start was cut short, not for every pod."""
    needle = b"\0--pod-dir\0" + os.fsencode(pod_dir) + b"\0"
    found = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/cmdline", "rb") as f:
                if needle in f.read():
                    found.append(int(entry.name))
        except OSError:
            continue  # gone meanwhile, or a kernel thread
    return found


def stop_pod_processes(pod_dir: str, timeout: float = 5.0) -> None:
    """End the monitor of a pod whose start was cut short, whatever point it had reached.

    A monitor that is up is shut down (it kills its children and undoes its mounts); one still
    setting the pod up is waited for: it gives up by itself when its cgroup gate closes unopened,
    or finishes and becomes a monitor to shut down. What is left at ``timeout`` is SIGKILLed
    (cleanup_pod_dir then undoes its mounts)."""
    deadline = time.monotonic() + timeout
    delay = 0.005
    while True:
        with contextlib.suppress(MonitorError, OSError):
            PodMonitor.attach(pod_dir).shutdown(timeout=max(0.1, deadline - time.monotonic()))
        pids = processes_naming_pod_dir(pod_dir)
        if not pids:
            return
        if time.monotonic() >= deadline:
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal_module.SIGKILL)
            return
        time.sleep(delay)
        delay = min(delay * 2, 0.1)
