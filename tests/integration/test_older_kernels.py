"""What the native runtime does on kernels older than this one, done on this one.

A small wrapper installs a seccomp filter and execs the monitor under it, so
the monitor and every container it clones see what an older kernel shows:
newer calls answer ENOSYS (clone3 before 5.3, close_range before 5.9,
fsopen before 5.2, mount_setattr before 5.12), or overlayfs behaves as
before Linux 6.5, when it had no parameter parser and the kernel's legacy
mount context took any key in fsconfig (the filter answers 0 to every
fsconfig but FSCONFIG_CMD_CREATE, without doing anything, exactly what such
a context does). The fallbacks must be taken and work; what has none must
be named by the self check. The real kernels (6.1, 6.12) run the whole
suite in scripts/vm.
"""

from __future__ import annotations

import ctypes
import dataclasses
import errno
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest

from crio_fast._native import monitor_path
from crio_fast.check import Status, check_monitor
from crio_fast.config.schema import Config
from crio_fast.runtime import MonitorError, Namespace, Overlay, PodMonitor, PodMonitorSpec, spawn_monitor
from tests.support.monitor_fixtures import MONITOR_TEST_MARKS
from tests.support.monitor_harness import Harness

pytestmark = MONITOR_TEST_MARKS

# Numbers from 424 on are the same on every architecture.
SYSCALLS = {"fsopen": 430, "fsconfig": 431, "clone3": 435, "close_range": 436, "openat2": 437,
            "mount_setattr": 442}
FSCONFIG_CMD_CREATE = 6

_BPF_LD_W_ABS, _BPF_JEQ_K, _BPF_RET_K = 0x20, 0x15, 0x06
_RET_ALLOW, _RET_ERRNO = 0x7FFF0000, 0x00050000
_NR_OFFSET, _ARG1_OFFSET = 0, 24  # struct seccomp_data: nr, arch, ip, args[6]; the low word of args[1]


def filter_program(enosys: tuple[str, ...] = (), legacy_overlay_context: bool = False) -> bytes:
    """A classic BPF seccomp program: ENOSYS for the named calls; with ``legacy_overlay_context``,
    every fsconfig but FSCONFIG_CMD_CREATE succeeds without doing anything."""
    program: list[tuple[int, int, int, int]] = [(_BPF_LD_W_ABS, 0, 0, _NR_OFFSET)]
    for name in enosys:
        program += [(_BPF_JEQ_K, 0, 1, SYSCALLS[name]), (_BPF_RET_K, 0, 0, _RET_ERRNO | errno.ENOSYS)]
    if legacy_overlay_context:
        program += [
            (_BPF_JEQ_K, 0, 4, SYSCALLS["fsconfig"]),
            (_BPF_LD_W_ABS, 0, 0, _ARG1_OFFSET),
            (_BPF_JEQ_K, 0, 1, FSCONFIG_CMD_CREATE),
            (_BPF_RET_K, 0, 0, _RET_ALLOW),  # the mount itself: the kernel refuses the empty context
            (_BPF_RET_K, 0, 0, _RET_ERRNO | 0),  # any key, any value: "taken"
        ]
    program.append((_BPF_RET_K, 0, 0, _RET_ALLOW))
    return b"".join(struct.pack("<HBBI", *instruction) for instruction in program)


WRAPPER = """#!{python}
import ctypes, os, sys
libc = ctypes.CDLL(None, use_errno=True)
program = ctypes.create_string_buffer(bytes.fromhex({program!r}))
class SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]
fprog = SockFprog({count}, ctypes.addressof(program))
# PR_SET_NO_NEW_PRIVS, then PR_SET_SECCOMP with SECCOMP_MODE_FILTER.
if libc.prctl(38, 1, 0, 0, 0) != 0 or libc.prctl(22, 2, ctypes.byref(fprog), 0, 0) != 0:
    sys.exit("seccomp: " + os.strerror(ctypes.get_errno()))
os.execv({monitor!r}, [{monitor!r}, *sys.argv[1:]])
"""


def old_kernel_monitor(directory: Path, name: str, **kernel: object) -> Path:
    """An executable that runs the monitor as on an older kernel (see filter_program)."""
    program = filter_program(**kernel)  # type: ignore[arg-type]
    path = directory / name
    path.write_text(WRAPPER.format(python=sys.executable, program=program.hex(), count=len(program) // 8,
                                   monitor=str(monitor_path())))
    path.chmod(0o755)
    return path


def run(path: Path, *args: str) -> tuple[int, str]:
    result = subprocess.run([str(path), *args], capture_output=True, text=True, timeout=30, check=False)
    return result.returncode, (result.stdout + result.stderr).strip()


def spawn(harness: Harness, monitor: Path, pod_id: str, **spec: object) -> PodMonitor:
    pod_dir = harness.base / pod_id
    pod_dir.mkdir()
    pod = spawn_monitor(str(monitor), PodMonitorSpec(pod_id, str(pod_dir), str(harness.exits), **spec))
    harness.monitors.append(pod)
    return pod


def root_mount_source(pid: int) -> str:
    """"none" when fsconfig made the container's root overlay (no source set), "overlay" for mount(2)."""
    for line in Path(f"/proc/{pid}/mountinfo").read_text().splitlines():
        fields = line.split()
        if fields[4] == "/":
            return fields[fields.index("-") + 2]
    raise AssertionError(f"no root mount in /proc/{pid}/mountinfo")


def many_layers(harness: Harness, tmp_path: Path, name: str) -> Overlay:
    layers = []
    for index in range(40):
        layer = tmp_path / f"layer-with-a-deliberately-long-directory-name-to-pass-one-page-{index:03d}"
        layer.mkdir(exist_ok=True)
        layers.append(str(layer))
    directory = harness.container_dir(name)
    for sub in ("upper", "work", "rootfs"):
        (directory / sub).mkdir()
    return Overlay(lower=[*layers, str(harness.rootfs)], upper=str(directory / "upper"),
                   work=str(directory / "work"), target=str(directory / "rootfs"))


def test_the_filter_shows_an_older_kernel(tmp_path: Path) -> None:
    """The harness's own check: a call the filter hides is ENOSYS, the rest are untouched."""
    hidden = old_kernel_monitor(tmp_path, "no-mount-setattr", enosys=("mount_setattr", "openat2"))
    rc, output = run(hidden, "--check")
    assert rc == 1, output
    assert output.splitlines() == [
        "missing: openat2 (Linux 5.6): the kernel is too old for it (Function not implemented)",
        "missing: mount_setattr (Linux 5.12): the kernel is too old for it (Function not implemented)",
    ]
    assert run(old_kernel_monitor(tmp_path, "nothing-hidden"), "--check") == (0, "ok")


def test_crio_fast_check_says_the_kernel_is_too_old(tmp_path: Path) -> None:
    config = Config()
    config = dataclasses.replace(config, runtime=dataclasses.replace(
        config.runtime, monitor_path=str(old_kernel_monitor(tmp_path, "pre-5.12", enosys=("mount_setattr",)))))
    finding = check_monitor(config)
    assert finding.status is Status.MISSING
    assert "missing: mount_setattr (Linux 5.12): the kernel is too old for it" in finding.detail
    assert "crio-fast needs Linux 5.12 or newer" in finding.hint


def test_the_probe_is_not_fooled_by_a_legacy_overlay_context(tmp_path: Path) -> None:
    legacy = old_kernel_monitor(tmp_path, "pre-6.5", legacy_overlay_context=True)
    rc, output = run(legacy, "--probe-fs-param", "overlay", "lowerdir+", "/")
    assert (rc, output.split(":")[0]) == (1, "no-parser"), output
    rc, output = run(old_kernel_monitor(tmp_path, "pre-5.2", enosys=("fsopen",)),
                     "--probe-fs-param", "overlay", "lowerdir+", "/")
    assert (rc, output) == (1, "no-fsopen: fsopen overlay: Function not implemented")


def test_containers_start_where_overlayfs_has_a_legacy_mount_context(harness: Harness, tmp_path: Path) -> None:
    """The reported bug (Debian 12's 6.1): fsconfig takes lowerdir+ and only the mount refuses it. The
    monitor's probe sees through it and mounts with mount(2); fsconfig's "yes" alone would fail every
    container here."""
    monitor = spawn(harness, old_kernel_monitor(tmp_path, "pre-6.5", legacy_overlay_context=True), "legacy")
    pid = harness.start(monitor, "c", harness.plan("c", ["/bin/sh", "-c", "echo up; exec sleep 1000"]))
    assert root_mount_source(pid) == "overlay", "mounted with mount(2)"
    deadline = time.monotonic() + 10
    while harness.output("c") != "up\n":
        assert time.monotonic() < deadline, harness.output("c")
        time.sleep(0.01)
    monitor.kill("c", signal.SIGKILL)
    assert harness.wait_exit("c").exit_code == 137
    # More than a page of options: the error names the kernel's lack, not a failed mount of lowerdir+.
    plan = harness.plan("many", ["/bin/true"], overlay=many_layers(harness, tmp_path, "many"))
    with pytest.raises(MonitorError) as failure:
        monitor.create("many", plan, harness.log_path("many"))
    assert "over the one-page limit of mount(2)" in failure.value.message
    assert "this kernel's overlayfs has no parameter parser (Linux 6.5) and no lowerdir+" in failure.value.message


def test_containers_start_without_clone3_close_range_and_fsopen(harness: Harness) -> None:
    """clone3 (5.3) -> clone(2) with CLONE_PIDFD, close_range (5.9) -> close() one by one, fsopen (5.2)
    -> overlays by mount(2); a pod pid namespace and its init too (the same clone)."""
    old = old_kernel_monitor(harness.base, "pre-5.2", enosys=("clone3", "close_range", "fsopen"))
    monitor = spawn(harness, old, "old", pid="new")
    plan = harness.plan("c", ["/bin/sh", "-c", "ls /proc/self/fd; echo pid=$$; exec sleep 1000"],
                        namespaces=[Namespace("mnt"), Namespace("pid", monitor.ns_paths["pid"]),
                                    Namespace("cgroup")])
    pid = harness.start(monitor, "c", plan)
    assert root_mount_source(pid) == "overlay"
    assert "Seccomp:\t2" in Path(f"/proc/{pid}/status").read_text(), "it runs under the old-kernel filter"
    deadline = time.monotonic() + 10
    while "pid=" not in harness.output("c"):
        assert time.monotonic() < deadline, harness.output("c")
        time.sleep(0.01)
    # Only stdio was left open (the ls's own directory fd is the 3); the pod's init is 1.
    assert harness.output("c").split() == ["0", "1", "2", "3", "pid=2"], harness.output("c")
    # KILL goes through the pidfd clone(2) returned.
    monitor.kill("c", signal.SIGKILL)
    assert harness.wait_exit("c").exit_code == 137


# ------------------------------------------------------------ the daemon's side


def test_mount_ids_without_statx_mnt_id(monkeypatch: pytest.MonkeyPatch) -> None:
    """Before 5.8 statx has no STATX_MNT_ID (the mask says so), before 4.11 no statx (ENOSYS): no mount
    ids, and the callers read mountinfo instead (test_mounts checks that it finds the same)."""
    from crio_fast.runtime import mounts

    def basic_stats_only(dirfd, path, flags, mask, buffer):  # type: ignore[no-untyped-def]
        ctypes.memmove(buffer, struct.pack("<I", 0x7FF), 4)  # STATX_BASIC_STATS
        return 0

    def no_statx(dirfd, path, flags, mask, buffer):  # type: ignore[no-untyped-def]
        ctypes.set_errno(errno.ENOSYS)
        return -1

    for statx in (basic_stats_only, no_statx):
        monkeypatch.setattr(mounts, "_statx", statx)
        assert mounts.mount_id("/") is None
        assert mounts.mount_points_under("/proc") is None


def test_cgroup_kill_absent_before_5_14(tmp_path: Path) -> None:
    """A v2 cgroup without cgroup.kill: kill_processes says so, and the callers signal each process
    (they always do: CgroupManager.remove and kill)."""
    from crio_fast.cgroups import v2

    assert v2.kill_processes(str(tmp_path)) is False
