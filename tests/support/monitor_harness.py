"""A harness for tests that drive pod monitors directly (no daemon).

Each test gets a private directory under /tmp (short: the control socket path
is limited to 107 bytes); the harness spawns pod monitors and containers over
an overlay of a busybox rootfs there, and on cleanup shuts down every monitor
it spawned, SIGKILLs any that would not go, lazily unmounts whatever is left
under the directory and removes it, whatever the test did.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import re
import shutil
import signal
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from crio_fast._native import monitor_path
from crio_fast.runtime import (
    ExitInfo,
    LaunchPlan,
    Namespace,
    Overlay,
    PodMonitor,
    PodMonitorSpec,
    cleanup_pod_dir,
    default_linux_mounts,
    read_exit_file,
    spawn_monitor,
)

PR_SET_CHILD_SUBREAPER = 36
ENV = ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "HOME=/root"]
LOG_RECORD = re.compile(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{9}Z) (stdout|stderr) ([PF]) (.*)$", re.S)


@contextlib.contextmanager
def child_subreaper() -> Iterator[bool]:
    """Make this process a child subreaper for the duration; yields False if the kernel refused.

    A monitor is orphaned by design and normally adopted (and reaped) by init;
    on hosts whose PID 1 does not reap, exited monitors would stay zombies.
    As subreaper, PodMonitor.shutdown reaps them itself.
    """
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        yield False
        return
    try:
        yield True
    finally:
        libc.prctl(PR_SET_CHILD_SUBREAPER, 0, 0, 0, 0)


class Harness:
    """Spawns pod monitors and containers in one private directory; cleans up everything."""

    def __init__(self, base: Path, rootfs: Path) -> None:
        self.base = base
        self.rootfs = rootfs
        self.exits = base / "exits"
        self.exits.mkdir()
        self.monitors: list[PodMonitor] = []
        self.container_pids: list[int] = []

    def spawn(self, pod_id: str = "pod", **spec: object) -> PodMonitor:
        pod_dir = self.base / pod_id
        pod_dir.mkdir()
        monitor = spawn_monitor(str(monitor_path()), PodMonitorSpec(pod_id, str(pod_dir), str(self.exits), **spec))
        self.monitors.append(monitor)
        return monitor

    def container_dir(self, name: str) -> Path:
        path = self.base / f"ctr-{name}"
        path.mkdir(exist_ok=True)
        return path

    def plan(self, name: str, argv: list[str], *, extra_mounts: tuple = (), cgroup: str = "v2",
             upper_files: dict[str, str] | None = None, **fields: object) -> LaunchPlan:
        """A container over an overlay of the module's rootfs, with the standard mounts."""
        directory = self.container_dir(name)
        for sub in ("upper", "work", "rootfs"):
            (directory / sub).mkdir(exist_ok=True)
        for path, link_target in (upper_files or {}).items():
            link = directory / "upper" / path.lstrip("/")
            link.parent.mkdir(parents=True, exist_ok=True)
            link.symlink_to(link_target)
        fields.setdefault("namespaces", [Namespace("mnt"), Namespace("pid"), Namespace("cgroup")])
        fields.setdefault("overlay", Overlay(lower=[str(self.rootfs)], upper=str(directory / "upper"),
                                             work=str(directory / "work"), target=str(directory / "rootfs")))
        fields.setdefault("mounts", default_linux_mounts(cgroup=cgroup, extra=extra_mounts))
        fields.setdefault("env", list(ENV))
        return LaunchPlan(argv=argv, **fields)

    def log_path(self, name: str) -> str:
        return str(self.container_dir(name) / "ctr.log")

    def start(self, monitor: PodMonitor, name: str, plan: LaunchPlan) -> int:
        result = monitor.create(name, plan, self.log_path(name))
        self.container_pids.append(result.pid)
        monitor.start(name)
        return result.pid

    def wait_exit(self, name: str, timeout: float = 10.0) -> ExitInfo:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            info = read_exit_file(self.exits / name)
            if info is not None:
                return info
            time.sleep(0.005)
        raise AssertionError(f"container {name} did not exit within {timeout}s")

    def run(self, monitor: PodMonitor, name: str, plan: LaunchPlan, timeout: float = 10.0) -> ExitInfo:
        self.start(monitor, name, plan)
        return self.wait_exit(name, timeout)

    def records(self, name: str) -> list[tuple[str, str, str]]:
        """(stream, tag, content) of every CRI log record."""
        text = Path(self.log_path(name)).read_text(errors="replace")
        assert text == "" or text.endswith("\n"), "every record ends with a newline"
        out = []
        for line in text.split("\n")[:-1]:
            match = LOG_RECORD.match(line)
            assert match, f"not a CRI log record: {line[:120]!r}"
            out.append((match.group(2), match.group(3), match.group(4)))
        return out

    def output(self, name: str, stream: str = "stdout") -> str:
        """The stream's text, partial records joined as the kubelet does."""
        return "".join(content + ("\n" if tag == "F" else "")
                       for s, tag, content in self.records(name) if s == stream)

    def cleanup(self) -> None:
        killed_a_monitor = False
        for monitor in self.monitors:
            try:
                monitor.shutdown(timeout=10)
            except Exception:
                killed_a_monitor = True
                try:
                    os.kill(monitor.pid, signal.SIGKILL)
                    os.waitpid(monitor.pid, 0)
                except (ProcessLookupError, ChildProcessError):
                    pass
            finally:
                monitor.close()
        if killed_a_monitor:
            # Its containers were orphaned (to this process, the subreaper).
            for pid in self.container_pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                    os.waitpid(pid, 0)
                except (ProcessLookupError, ChildProcessError):
                    pass
        cleanup_pod_dir(str(self.base))


@contextlib.contextmanager
def private_harness(rootfs: Path) -> Iterator[Harness]:
    """A Harness in a fresh directory under /tmp, cleaned up and removed afterwards."""
    base = Path(tempfile.mkdtemp(prefix="cfm-", dir="/tmp"))
    harness = Harness(base, rootfs)
    try:
        yield harness
    finally:
        try:
            harness.cleanup()
        finally:
            shutil.rmtree(base, ignore_errors=True)
