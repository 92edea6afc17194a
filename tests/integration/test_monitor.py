"""The per-pod monitor and native launcher against the real kernel.

Each test gets a private directory under /tmp (short: the control socket path
is limited to 107 bytes) and a harness that shuts down every monitor it
spawned, SIGKILLs any that would not go, lazily unmounts whatever is left
under the directory and removes it, whatever the test did. The rootfs is
built once per module from Debian's busybox-static; containers get an
overlay of it with a private upper dir, so no test changes it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import os
import platform
import re
import shutil
import signal
import socket
import stat
import struct
import subprocess
import threading
import time
import uuid
from pathlib import Path
from typing import Iterator

import psutil
import pytest

from crio_fast._native import monitor_path
from crio_fast.runtime import (
    Capabilities,
    ExecPlan,
    MonitorError,
    MountOp,
    Namespace,
    Overlay,
    PodMonitor,
    PodMonitorSpec,
    Rlimit,
    cleanup_pod_dir,
    default_linux_mounts,
    exec_sync,
    spawn_monitor,
)
from crio_fast.errors import InvalidArgument
from crio_fast.runtime.reaper import reap_dead_pod_inits
from crio_fast.runtime.reaper import wait_adopted
from crio_fast.runtime.plan import MS_NOATIME, MS_NODEV, MS_NODIRATIME, MS_NOEXEC, MS_NOSUID
from crio_fast.runtime.wire import (
    FIELD_CONTAINER_ID,
    FIELD_LOG_PATH,
    FIELD_PLAN,
    FIELD_PLAN_FOLLOWS,
    MONITOR_FEATURES,
    REQUEST_CREATE,
    TLVWriter,
    encode_message,
)
from tests.support import cgroups
from tests.support.monitor_fixtures import MONITOR_TEST_MARKS
from tests.support.monitor_harness import ENV, Harness

pytestmark = MONITOR_TEST_MARKS


@pytest.fixture
def cgroup_dir():
    """Make a test cgroup for a controller and remove it after its processes are gone.

    On cgroup v1 each controller has a hierarchy and a directory of its own; on cgroup2 one
    directory serves every controller (a process is in one cgroup there), with the controllers
    enabled in the root for it."""
    created: list[Path] = []
    v2_dir: list[Path] = []

    def make(controller: str) -> Path:
        hierarchy = cgroups.layout().hierarchy_of(controller)
        if hierarchy is None:
            pytest.skip(f"no {controller} cgroup controller on this host")
        if hierarchy.version == 2:
            root = Path(hierarchy.mount_point)
            with open(root / "cgroup.subtree_control", "w") as f:
                f.write(f"+{controller}")
            if v2_dir:
                return v2_dir[0]
        path = Path(hierarchy.mount_point) / f"crio-fast-test-{uuid.uuid4().hex[:12]}"
        path.mkdir()
        created.append(path)
        if hierarchy.version == 2:
            v2_dir.append(path)
        return path

    yield make
    for path in reversed(created):
        deadline = time.monotonic() + 5
        while True:
            try:
                path.rmdir()
                break
            except FileNotFoundError:
                break  # a test that makes the cgroup itself failed before it did
            except OSError as e:
                if e.errno != errno.EBUSY or time.monotonic() > deadline:
                    raise
                # Still in use: a test that failed midway left its container or monitor in it. The
                # harness cleans up after them; the cgroup must not outlive the test either.
                with contextlib.suppress(OSError):
                    for pid in (path / "cgroup.procs").read_text().split():
                        with contextlib.suppress(ProcessLookupError):
                            os.kill(int(pid), signal.SIGKILL)
                time.sleep(0.02)


def host_mountinfo() -> str:
    return Path("/proc/self/mountinfo").read_text()


def ns_inode(pid: int | str, name: str) -> int:
    return os.stat(f"/proc/{pid}/ns/{name}").st_ino


def status_field(text: str, name: str) -> str:
    match = re.search(rf"^{name}:\s*(\S+)", text, re.M)
    assert match, f"{name} missing from /proc/self/status"
    return match.group(1)


# ---------------------------------------------------------------- pod level


def test_pod_monitor_anchors_new_namespaces_and_hostname(harness: Harness) -> None:
    monitor = harness.spawn(hostname="pod-host", shm_size=8 << 20)
    assert monitor.alive()
    for name in ("net", "ipc", "uts"):
        assert ns_inode(monitor.pid, name) != ns_inode("self", name), f"{name} namespace was not created"
        # The nsfs bind mount is the same namespace, findable without the pid.
        assert os.stat(monitor.ns_paths[name]).st_ino == ns_inode(monitor.pid, name)
    assert ns_inode(monitor.pid, "mnt") == ns_inode("self", "mnt")
    pod_dir = harness.base / "pod"
    assert oct((pod_dir / "monitor.sock").stat().st_mode & 0o777) == "0o600"
    assert int((pod_dir / "monitor.pid").read_text()) == monitor.pid
    shm_lines = [line for line in host_mountinfo().splitlines() if f" {pod_dir}/shm " in line]
    assert len(shm_lines) == 1 and " - tmpfs " in shm_lines[0] and "size=8192k" in shm_lines[0]
    assert "nosuid" in shm_lines[0] and "nodev" in shm_lines[0] and "noexec" in shm_lines[0]
    assert oct((pod_dir / "shm").stat().st_mode & 0o7777) == "0o1777"

    plan = harness.plan("c", ["/bin/hostname"], namespaces=[Namespace("mnt"), Namespace("pid")])
    assert harness.run(monitor, "c", plan).exit_code == 0
    assert harness.output("c") == "pod-host\n"

    # The pod's /dev/shm is one tmpfs shared by its containers.
    shm = default_linux_mounts(shm_source=str(pod_dir / "shm"))
    writer = harness.plan("w", ["/bin/sh", "-c", "echo shared > /dev/shm/note"], mounts=shm)
    assert harness.run(monitor, "w", writer).exit_code == 0
    reader = harness.plan("r", ["/bin/sh", "-c", "cat /dev/shm/note; grep ' /dev/shm ' /proc/self/mountinfo"],
                          mounts=shm)
    assert harness.run(monitor, "r", reader).exit_code == 0
    note, mount_line = harness.output("r").splitlines()
    assert note == "shared" and "nosuid" in mount_line and "noexec" in mount_line
    assert (pod_dir / "shm" / "note").read_text() == "shared\n"


def test_pod_monitor_with_host_namespaces(harness: Harness) -> None:
    monitor = harness.spawn(namespaces={"net": "host", "ipc": "host", "uts": "new"}, shm_size=0)
    assert ns_inode(monitor.pid, "net") == ns_inode("self", "net")
    assert ns_inode(monitor.pid, "ipc") == ns_inode("self", "ipc")
    assert ns_inode(monitor.pid, "uts") != ns_inode("self", "uts")
    assert set(monitor.ns_paths) == {"uts"}
    assert not (harness.base / "pod" / "shm").exists()


def test_pod_monitor_joins_a_network_namespace_made_ahead(harness: Harness) -> None:
    """`make-netns` makes a namespace with lo up and pins it; `pod --net PATH` joins and pins it anew."""
    ahead = harness.base / "ahead"
    ahead.mkdir()
    made = ahead / "a"
    subprocess.run([str(monitor_path()), "make-netns", str(made)], check=True, capture_output=True, timeout=30)
    try:
        inode = os.stat(made).st_ino
        assert inode != ns_inode("self", "net")
        links = subprocess.run(["nsenter", f"--net={made}", "ip", "-o", "link", "show", "lo"],
                               capture_output=True, text=True, check=True).stdout
        assert ",UP," in links or "<LOOPBACK,UP" in links
        monitor = harness.spawn(net_path=str(made), hostname="ahead")
        assert ns_inode(monitor.pid, "net") == inode
        assert os.stat(monitor.ns_paths["net"]).st_ino == inode
        # Only the network namespace is taken: the others are the pod's new ones as usual.
        assert ns_inode(monitor.pid, "uts") != ns_inode("self", "uts")
        # A second make-netns on a taken path fails, naming it and the errno, and leaves it alone.
        again = subprocess.run([str(monitor_path()), "make-netns", str(made)], capture_output=True, text=True)
        assert again.returncode == 1 and f"create {made}: File exists (errno 17)" in again.stderr
        assert os.stat(made).st_ino == inode
    finally:
        subprocess.run(["umount", "-l", str(made)], capture_output=True)
        made.unlink()


def test_pod_monitor_refuses_a_network_namespace_made_ahead_with_a_user_namespace(harness: Harness) -> None:
    """A pod's user namespace must own its network namespace: the spec and the monitor both refuse one
    made ahead."""
    pod_dir = harness.base / "userns-net"
    pod_dir.mkdir()
    spec = PodMonitorSpec("usernsnet", str(pod_dir), str(harness.exits), userns_uid_map="0 100000 65536",
                          userns_gid_map="0 100000 65536")
    with pytest.raises(ValueError, match="without a user namespace"):
        dataclasses.replace(spec, net_path="/proc/self/ns/net").argv(str(monitor_path()), 3)
    read_fd, write_fd = os.pipe()
    try:
        argv = spec.argv(str(monitor_path()), write_fd)
        argv[argv.index("--net") + 1] = "/proc/self/ns/net"
        proc = subprocess.run(argv, pass_fds=(write_fd,), capture_output=True, text=True, timeout=30)
        os.close(write_fd)
        write_fd = -1
        line = os.read(read_fd, 4096).decode()
    finally:
        os.close(read_fd)
        if write_fd >= 0:
            os.close(write_fd)
    assert proc.returncode == 2 and line == ""
    assert "--net /proc/self/ns/net: a pod with its own user namespace makes its network namespace" in proc.stderr
    assert sorted(p.name for p in pod_dir.iterdir()) == []


def test_spawn_failure_is_reported_and_undone(harness: Harness) -> None:
    pod_dir = harness.base / "bad"
    pod_dir.mkdir()
    (pod_dir / "ns").mkdir()
    (pod_dir / "ns" / "uts").write_text("someone else's file")
    spec = PodMonitorSpec("bad", str(pod_dir), str(harness.exits))
    with pytest.raises(MonitorError) as failure:
        spawn_monitor(str(monitor_path()), spec)
    assert failure.value.code == errno.EEXIST
    assert f"create {pod_dir}/ns/uts: File exists" in failure.value.message
    # Everything the monitor made is gone again; what it found is still there.
    assert sorted(p.name for p in pod_dir.iterdir()) == ["ns"]
    assert sorted(p.name for p in (pod_dir / "ns").iterdir()) == ["uts"]
    assert str(pod_dir) not in host_mountinfo()


# ------------------------------------------------------ exit codes and logs


def test_exit_code_and_cri_log_format(harness: Harness) -> None:
    monitor = harness.spawn()
    plan = harness.plan("c", ["/bin/sh", "-c", "echo out; echo err >&2; exit 3"])
    started = time.time_ns()
    info = harness.run(monitor, "c", plan)
    assert info.exit_code == 3 and info.signal == 0 and not info.oom_killed
    assert started <= info.started_at <= info.finished_at <= time.time_ns()
    assert ("stdout", "F", "out") in harness.records("c")
    assert ("stderr", "F", "err") in harness.records("c")
    state = monitor.state("c")
    assert (state.status, state.exit_code, state.signal) == ("exited", 3, 0)


def test_long_line_is_split_into_partial_records(harness: Harness) -> None:
    monitor = harness.spawn()
    # 100 KiB without a newline, then the same with one.
    plan = harness.plan("nonl", ["/bin/sh", "-c", "head -c 102400 /dev/zero | tr '\\0' a"])
    assert harness.run(monitor, "nonl", plan).exit_code == 0
    records = harness.records("nonl")
    assert all(tag == "P" and stream == "stdout" for stream, tag, _ in records)
    assert len(records) >= 7 and all(len(content) <= 16384 for _, _, content in records)
    assert "".join(content for _, _, content in records) == "a" * 102400

    plan = harness.plan("nl", ["/bin/sh", "-c", "head -c 5000 /dev/zero | tr '\\0' b; echo; echo next"],
                        log_line_max=1000)
    assert harness.run(monitor, "nl", plan).exit_code == 0
    records = harness.records("nl")
    assert all(len(content) <= 1000 for _, _, content in records)
    assert harness.output("nl") == "b" * 5000 + "\nnext\n"
    assert records[-1] == ("stdout", "F", "next")


def test_tty_output_is_stdout(harness: Harness) -> None:
    monitor = harness.spawn()
    plan = harness.plan("c", ["/bin/sh", "-c", "tty; echo to-stderr >&2"], tty=True)
    assert harness.run(monitor, "c", plan).exit_code == 0
    records = harness.records("c")
    assert records and all(stream == "stdout" for stream, _, _ in records)
    text = harness.output("c")
    assert "/dev/pts/0" in text and "to-stderr" in text


def test_reopen_log_after_rotation(harness: Harness) -> None:
    monitor = harness.spawn()
    plan = harness.plan("c", ["/bin/sh", "-c", "i=0; while true; do i=$((i+1)); echo tick $i; sleep 0.02; done"])
    harness.start(monitor, "c", plan)
    log = Path(harness.log_path("c"))
    deadline = time.monotonic() + 5
    while "tick 3" not in log.read_text():
        assert time.monotonic() < deadline
        time.sleep(0.01)
    rotated = log.with_name("ctr.log.1")
    log.rename(rotated)
    monitor.reopen_log("c")
    while not log.exists() or "tick" not in log.read_text():
        assert time.monotonic() < deadline
        time.sleep(0.01)
    before = rotated.read_text()
    monitor.kill("c", signal.SIGKILL)
    assert harness.wait_exit("c").exit_code == 137
    assert rotated.read_text() == before, "nothing is written to the rotated file after the reopen"
    first_new = int(re.search(r"tick (\d+)", log.read_text()).group(1))
    last_old = int(re.findall(r"tick (\d+)", before)[-1])
    assert first_new == last_old + 1, "no line is lost or duplicated across the rotation"


# ----------------------------------------------------------- isolation


def test_pid_one_in_its_pid_namespace(harness: Harness) -> None:
    monitor = harness.spawn()
    plan = harness.plan("c", ["/bin/sh", "-c", "echo $$; exec /bin/sh -c 'echo $$; ps -o pid,comm'"])
    assert harness.run(monitor, "c", plan).exit_code == 0
    lines = harness.output("c").splitlines()
    assert lines[0] == "1" and lines[1] == "1"
    assert re.search(r"^\s*1 ps$", "\n".join(lines[2:]), re.M), "ps ran as pid 1 (exec kept the pid)"


def test_mount_namespace_is_private_and_overlay_leaves_with_the_container(harness: Harness) -> None:
    monitor = harness.spawn()
    marker = f"cftest-{uuid.uuid4().hex[:8]}"
    plan = harness.plan("c", ["/bin/sleep", "1000"],
                        extra_mounts=(MountOp.mount("tmpfs", "/data", source=marker, data="size=1m"),))
    pid = harness.start(monitor, "c", plan)
    container_mounts = Path(f"/proc/{pid}/mountinfo").read_text()
    upper = str(harness.container_dir("c") / "upper")
    assert f"upperdir={upper}" in container_mounts
    assert re.search(rf"^\S+ \S+ \S+ \S+ /data .* - tmpfs {marker} ", container_mounts, re.M)
    host = host_mountinfo()
    assert marker not in host and upper not in host
    assert str(harness.container_dir("c")) not in host

    monitor.kill("c", signal.SIGKILL)
    assert harness.wait_exit("c").exit_code == 137
    for proc_dir in Path("/proc").glob("[0-9]*"):
        try:
            text = (proc_dir / "mountinfo").read_text()
        except OSError:  # gone, or a zombie (EINVAL)
            continue
        assert upper not in text and marker not in text, f"overlay or tmpfs still mounted in {proc_dir}"


def test_default_mounts_devices_masks_and_readonly_paths(harness: Harness) -> None:
    def has_content(path: str) -> bool:
        try:
            with open(path, "rb") as f:
                return bool(f.read(1))
        except OSError:
            return False

    masked_file = next((p for p in ("/proc/timer_list", "/proc/keys", "/proc/kcore") if has_content(p)), None)
    if masked_file is None:
        pytest.skip("none of the usual masked /proc files has content on this kernel")
    monitor = harness.spawn()
    script = "; ".join([
        "stat -c '%n %F %t:%T' /dev/null /dev/zero /dev/full /dev/random /dev/urandom /dev/tty",
        "readlink /dev/fd; readlink /dev/ptmx",
        f"wc -c < {masked_file}",
        "ls -A /sys/firmware | wc -l",
        "echo 1 > /proc/sys/kernel/shm_rmid_forced && echo proc-sys-writable",
        "touch /sys/x 2>/dev/null || echo sys-readonly",
        "grep -c ' /sys/fs/cgroup .* cgroup2 ' /proc/self/mountinfo",
        "head -c 4 /dev/zero | wc -c",
    ])
    assert harness.run(monitor, "c", harness.plan("c", ["/bin/sh", "-c", script])).exit_code == 0
    lines = harness.output("c").splitlines()
    assert lines[:6] == ["/dev/null character special file 1:3", "/dev/zero character special file 1:5",
                         "/dev/full character special file 1:7", "/dev/random character special file 1:8",
                         "/dev/urandom character special file 1:9", "/dev/tty character special file 5:0"]
    assert lines[6:8] == ["/proc/self/fd", "pts/ptmx"]
    assert lines[8:] == ["0", "0", "sys-readonly", "1", "4"], "kcore masked, firmware hidden, /proc/sys read-only"
    assert "Read-only file system" in harness.output("c", "stderr")


def test_readonly_rootfs_refuses_writes(harness: Harness) -> None:
    monitor = harness.spawn()
    plan = harness.plan("ro", ["/bin/sh", "-c", "touch /newfile; echo rc=$?; touch /tmp/x; echo tmp=$?"],
                        rootfs_readonly=True)
    assert harness.run(monitor, "ro", plan).exit_code == 0
    assert "rc=1" in harness.output("ro") and "Read-only file system" in harness.output("ro", "stderr")
    assert not (harness.container_dir("ro") / "upper" / "newfile").exists()
    plan = harness.plan("rw", ["/bin/sh", "-c", "touch /newfile; echo rc=$?"])
    assert harness.run(monitor, "rw", plan).exit_code == 0
    assert "rc=0" in harness.output("rw")
    assert (harness.container_dir("rw") / "upper" / "newfile").exists()


def test_ready_rootfs_path_and_readonly_bind_mount(harness: Harness, tmp_path: Path) -> None:
    volume = tmp_path / "volume"
    volume.mkdir()
    (volume / "hello.txt").write_text("hello from the host\n")
    monitor = harness.spawn()
    # A ready rootfs (no overlay): the launcher binds it onto itself to pivot.
    ready = harness.container_dir("c") / "ready"
    shutil.copytree(harness.rootfs, ready, symlinks=True)
    plan = harness.plan(
        "c", ["/bin/sh", "-c", "cat /mnt/vol/hello.txt; echo x > /mnt/vol/new; echo rc=$?"],
        overlay=None, rootfs=str(ready),
        extra_mounts=(MountOp.bind(str(volume), "/mnt/vol", readonly=True),),
    )
    assert harness.run(monitor, "c", plan).exit_code == 0
    assert harness.output("c") == "hello from the host\nrc=1\n"
    assert "Read-only file system" in harness.output("c", "stderr")
    assert not (volume / "new").exists()
    assert (ready / "mnt" / "vol").is_dir(), "the mount point was created inside the rootfs"


def test_bind_mount_flags_reach_the_mount(harness: Harness, tmp_path: Path) -> None:
    """Each MS_* flag of a BIND becomes its mount_setattr attribute; noatime is one of the atime modes,
    which the kernel changes only with the whole atime field cleared (else EINVAL)."""
    volume = tmp_path / "volume"
    volume.mkdir()
    monitor = harness.spawn()
    flags = MS_NOATIME | MS_NODIRATIME | MS_NOSUID | MS_NODEV | MS_NOEXEC
    plan = harness.plan("c", ["/bin/sh", "-c", "grep ' /vol ' /proc/self/mountinfo"],
                        extra_mounts=(MountOp.bind(str(volume), "/vol", readonly=True, flags=flags),))
    assert harness.run(monitor, "c", plan).exit_code == 0
    options = harness.output("c").split()[5].split(",")
    assert {"ro", "nosuid", "nodev", "noexec", "noatime", "nodiratime"} <= set(options), options


def test_symlink_destinations_stay_inside_the_rootfs(harness: Harness) -> None:
    monitor = harness.spawn()
    name = f"crio-fast-escape-{uuid.uuid4().hex[:8]}"
    assert not Path("/" + name).exists()
    plan = harness.plan(
        "c", ["/bin/sh", "-c", f"ls -d /{name}-dir; grep -c ' /{name}-mnt ' /proc/self/mountinfo"],
        upper_files={"/etc/evil": "/"},
        extra_mounts=(MountOp.mkdir(f"/etc/evil/{name}-dir"),
                      MountOp.mount("tmpfs", f"/etc/evil/{name}-mnt", data="size=1m")),
    )
    try:
        assert harness.run(monitor, "c", plan).exit_code == 0
        # /etc/evil -> / resolved to the container's root, not the host's.
        assert harness.output("c") == f"/{name}-dir\n1\n"
        assert not Path("/" + name + "-dir").exists() and not Path("/" + name + "-mnt").exists()
        assert (harness.container_dir("c") / "upper" / f"{name}-dir").is_dir()
        assert name not in host_mountinfo()
    finally:
        for leftover in (Path(f"/{name}-dir"), Path(f"/{name}-mnt")):
            if leftover.exists():
                leftover.rmdir()


def test_join_another_containers_pid_namespace(harness: Harness) -> None:
    monitor = harness.spawn()
    first = harness.start(monitor, "first", harness.plan("first", ["/bin/sleep", "1000"]))
    plan = harness.plan("second", ["/bin/sh", "-c", "echo $$; ps -o pid,comm"],
                        namespaces=[Namespace("mnt"), Namespace("pid", f"/proc/{first}/ns/pid")])
    assert harness.run(monitor, "second", plan).exit_code == 0
    lines = harness.output("second").splitlines()
    assert lines[0] != "1"
    assert re.search(r"^\s*1 sleep$", "\n".join(lines), re.M), "the first container's init is pid 1 here"
    # The monitor went back to its own pid namespace after the clone.
    assert ns_inode(monitor.pid, "pid_for_children") == ns_inode("self", "pid")


def test_process_settings(harness: Harness) -> None:
    import resource

    host_value = Path("/proc/sys/kernel/shm_rmid_forced").read_text().strip()
    pod_value = "0" if host_value == "1" else "1"
    monitor = harness.spawn()
    script = ("hostname; cat /proc/sys/kernel/shm_rmid_forced; ulimit -n; pwd; umask; echo $GREETING; "
              "cat /proc/self/mountinfo | grep -c ' / / '")
    plan = harness.plan(
        "c", ["/bin/sh", "-c", script],
        namespaces=[Namespace("mnt"), Namespace("pid"), Namespace("uts"), Namespace("cgroup")],
        hostname="own-uts", sysctls={"kernel.shm_rmid_forced": pod_value},
        rlimits=[Rlimit(resource.RLIMIT_NOFILE, 1000, 2000)], cwd="/srv/created/here", umask=0o027,
        env=[*ENV, "GREETING=hello there"], no_pivot=True,
    )
    assert harness.run(monitor, "c", plan).exit_code == 0
    assert harness.output("c").splitlines() == ["own-uts", pod_value, "1000", "/srv/created/here", "0027",
                                                "hello there", "1"]
    assert (harness.container_dir("c") / "upper" / "srv" / "created" / "here").is_dir()
    # The sysctl went to the pod's IPC namespace, not the host's.
    assert Path("/proc/sys/kernel/shm_rmid_forced").read_text().strip() == host_value


def test_stdin_pipe_is_held_open(harness: Harness) -> None:
    monitor = harness.spawn()
    probe = "if read -t 1 line; then echo got; else echo rc=$?; fi; ls -l /proc/self/fd/0"
    plan = harness.plan("held", ["/bin/sh", "-c", probe], stdin=True)
    started = time.monotonic()
    assert harness.run(monitor, "held", plan).exit_code == 0
    assert time.monotonic() - started >= 0.9, "read waited: the monitor holds the pipe's write end"
    assert "pipe:" in harness.output("held") and "rc=" in harness.output("held")
    plan = harness.plan("null", ["/bin/sh", "-c", probe])
    assert harness.run(monitor, "null", plan).exit_code == 0
    assert "/dev/null" in harness.output("null"), "without stdin the container reads /dev/null"


# ------------------------------------------------------------ credentials


def test_uid_gid_and_groups(harness: Harness) -> None:
    monitor = harness.spawn()
    plan = harness.plan("c", ["/bin/id"], uid=1000, gid=1000, additional_gids=[2000], cwd="/home/user")
    assert harness.run(monitor, "c", plan).exit_code == 0
    out = harness.output("c")
    assert out.startswith("uid=1000(user) gid=1000(user) groups=") and "2000(extra)" in out
    assert "0(root)" not in out


def test_capabilities_and_no_new_privs(harness: Harness) -> None:
    monitor = harness.spawn()
    caps = Capabilities.from_names(["CAP_CHOWN", "CAP_KILL", "CAP_NET_BIND_SERVICE"])
    plan = harness.plan("c", ["/bin/cat", "/proc/self/status"], capabilities=caps, no_new_privs=True)
    assert harness.run(monitor, "c", plan).exit_code == 0
    status = harness.output("c")
    expected = (1 << 0) | (1 << 5) | (1 << 10)
    for field in ("CapEff", "CapPrm", "CapBnd"):
        assert int(status_field(status, field), 16) == expected, field
    assert int(status_field(status, "CapInh"), 16) == 0
    assert status_field(status, "NoNewPrivs") == "1"

    # Non-root with ambient capabilities keeps them across exec.
    ambient = Capabilities(bounding=expected, effective=expected, permitted=expected, inheritable=expected,
                           ambient=1 << 10)
    plan = harness.plan("user", ["/bin/cat", "/proc/self/status"], uid=1000, gid=1000, capabilities=ambient)
    assert harness.run(monitor, "user", plan).exit_code == 0
    status = harness.output("user")
    assert int(status_field(status, "CapAmb"), 16) == 1 << 10
    assert int(status_field(status, "CapEff"), 16) == 1 << 10
    assert status_field(status, "NoNewPrivs") == "0"


def _bpf(code: int, k: int, jt: int = 0, jf: int = 0) -> bytes:
    return struct.pack("<HBBI", code, jt, jf, k)


def deny_unshare_filter() -> bytes:
    """Allow everything except unshare(2), which fails with EPERM (x86_64)."""
    load_word, jump_equal, ret = 0x20, 0x15, 0x06
    audit_arch_x86_64, nr_unshare = 0xC000003E, 272
    allow, errno_eperm = 0x7FFF0000, 0x00050000 | errno.EPERM
    return b"".join([
        _bpf(load_word, 4),  # seccomp_data.arch
        _bpf(jump_equal, audit_arch_x86_64, jt=1, jf=0),
        _bpf(ret, allow),
        _bpf(load_word, 0),  # seccomp_data.nr
        _bpf(jump_equal, nr_unshare, jt=0, jf=1),
        _bpf(ret, errno_eperm),
        _bpf(ret, allow),
    ])


@pytest.mark.skipif(platform.machine() != "x86_64", reason="the test filter is written for x86_64")
@pytest.mark.parametrize("no_new_privs", [True, False])
def test_seccomp_filter_makes_unshare_fail(harness: Harness, no_new_privs: bool) -> None:
    monitor = harness.spawn()
    script = "unshare -n true; echo rc=$?; grep Seccomp: /proc/self/status"
    plan = harness.plan("filtered", ["/bin/sh", "-c", script], seccomp=deny_unshare_filter(),
                        no_new_privs=no_new_privs)
    assert harness.run(monitor, "filtered", plan).exit_code == 0
    assert "rc=1" in harness.output("filtered") and "Seccomp:\t2" in harness.output("filtered")
    assert "Operation not permitted" in harness.output("filtered", "stderr")
    plan = harness.plan("open", ["/bin/sh", "-c", script], no_new_privs=no_new_privs)
    assert harness.run(monitor, "open", plan).exit_code == 0
    assert "rc=0" in harness.output("open")


def test_oom_score_adj_is_set_or_clamped_with_a_warning(harness: Harness) -> None:
    monitor = harness.spawn()
    raised = harness.plan("up", ["/bin/cat", "/proc/self/oom_score_adj"], oom_score_adj=500)
    result = monitor.create("up", raised, harness.log_path("up"))
    assert result.warnings == []
    monitor.start("up")
    harness.wait_exit("up")
    assert harness.output("up") == "500\n"
    lowered = harness.plan("down", ["/bin/cat", "/proc/self/oom_score_adj"], oom_score_adj=-999)
    result = monitor.create("down", lowered, harness.log_path("down"))
    monitor.start("down")
    harness.wait_exit("down")
    if result.warnings:  # no CAP_SYS_RESOURCE here: kept the monitor's value
        assert "oom_score_adj -999 refused" in result.warnings[0]
        assert harness.output("down") == Path(f"/proc/{monitor.pid}/oom_score_adj").read_text()
    else:
        assert harness.output("down") == "-999\n"


# ------------------------------------------------------- errors and signals


def test_exec_of_a_missing_binary_fails_start(harness: Harness) -> None:
    monitor = harness.spawn()
    monitor.create("abs", harness.plan("abs", ["/bin/nope"]), harness.log_path("abs"))
    with pytest.raises(MonitorError) as failure:
        monitor.start("abs")
    assert failure.value.code == errno.EIO
    assert failure.value.message == "exec: /bin/nope: No such file or directory"
    assert harness.wait_exit("abs").exit_code == 127
    monitor.create("rel", harness.plan("rel", ["nope"]), harness.log_path("rel"))
    with pytest.raises(MonitorError, match=r'exec: "nope": executable file not found in \$PATH'):
        monitor.start("rel")


def test_an_exec_failing_after_its_checks_ends_the_started_container(harness: Harness) -> None:
    """The child checks the working directory and the executable before READY, and the monitor
    answers START once GO is out. An exec that fails all the same (here ENOEXEC: a file with the
    execute bit that is neither ELF nor #!) is the container's exit, 126, with the reason in its
    log, as with runc."""
    monitor = harness.spawn()
    plan = harness.plan("c", ["/not-a-program"])
    program = harness.container_dir("c") / "upper" / "not-a-program"
    program.write_text("plain text\n")
    program.chmod(0o755)
    monitor.create("c", plan, harness.log_path("c"))
    monitor.start("c")
    info = harness.wait_exit("c")
    assert info.exit_code == 126
    assert ("stderr", "F", "exec: /not-a-program: Exec format error") in harness.records("c")
    assert monitor.state("c").status == "exited"


@pytest.mark.parametrize("overlay_mount", ["auto", "legacy"])
def test_create_errors_are_precise_and_leave_nothing(harness: Harness, overlay_mount: str) -> None:
    """fsconfig names the parameter it refuses; mount(2) (kernels before 6.8, or "legacy") refuses
    the whole option string, so the monitor looks for the missing directory itself."""
    monitor = harness.spawn(**({"overlay_mount": overlay_mount} if overlay_mount != "auto" else {}))
    missing = harness.container_dir("c") / "missing-lower"
    plan = harness.plan("c", ["/bin/true"],
                        overlay=Overlay(lower=[str(missing)], target=str(harness.container_dir("c") / "rootfs")))
    with pytest.raises(MonitorError) as failure:
        monitor.create("c", plan, harness.log_path("c"))
    assert str(missing) in failure.value.message and "No such file or directory" in failure.value.message
    time.sleep(0.05)
    assert not (harness.exits / "c").exists(), "a container that was never created has no exit file"
    # The failed container is forgotten: the id can be used again at once.
    assert [s.id for s in monitor.list_containers()] == []
    plan = harness.plan("c", ["/bin/true"])
    assert harness.run(monitor, "c", plan).exit_code == 0

    bad = harness.plan("bad", ["/bin/true"], sysctls={"kernel.no_such_sysctl_here": "1"})
    with pytest.raises(MonitorError, match="kernel.no_such_sysctl_here.*No such file or directory"):
        monitor.create("bad", bad, harness.log_path("bad"))
    with pytest.raises(MonitorError) as failure:
        monitor.create("../escape", harness.plan("x", ["/bin/true"]), harness.log_path("x"))
    assert failure.value.code == errno.EINVAL
    with pytest.raises(MonitorError, match="a hostname needs a new uts namespace"):
        monitor.create("shared-uts", harness.plan("x", ["/bin/true"], hostname="renamed"), harness.log_path("x"))


def test_a_log_that_cannot_be_opened_fails_the_create_and_leaves_nothing(harness: Harness) -> None:
    """The log is opened after the clone (its creation on disk need not hold the child back): when it
    cannot be, the child is killed, CREATE fails naming the file, and the id is free again."""
    monitor = harness.spawn()
    nowhere = harness.container_dir("c") / "no-such-dir" / "ctr.log"
    with pytest.raises(MonitorError, match=f"open log file {nowhere}: No such file or directory"):
        monitor.create("c", harness.plan("c", ["/bin/sleep", "100"]), str(nowhere))
    deadline = time.monotonic() + 5
    while [s.id for s in monitor.list_containers()]:
        assert time.monotonic() < deadline, "the failed container is still listed"
        time.sleep(0.01)
    assert not (harness.exits / "c").exists()
    # The child was killed and is reaped: a failed create leaves the list at once, its reaping
    # follows on the child's SIGCHLD.
    while psutil.Process(monitor.pid).children():
        assert time.monotonic() < deadline, "the killed child was never reaped"
        time.sleep(0.01)
    assert harness.run(monitor, "c", harness.plan("c2", ["/bin/true"])).exit_code == 0


def test_malformed_plans_are_rejected_without_harm(harness: Harness) -> None:
    monitor = harness.spawn()
    good = harness.plan("c", ["/bin/true"]).encode()
    candidates = [b"", b"\x01", good[:-3], good[:7], good[:40] + b"\xff" * 9, b"\x01\x00\x04\x00\x00\x00\x09\x00\x00\x00",
                  good.replace(b"/bin/true\0", b"/bin/true!")]
    for index, plan_bytes in enumerate(candidates):
        w = TLVWriter()
        w.string(FIELD_CONTAINER_ID, f"bad{index}")
        w.raw(FIELD_PLAN, plan_bytes)
        w.string(FIELD_LOG_PATH, harness.log_path("c"))
        with pytest.raises(MonitorError) as failure:
            monitor._request(REQUEST_CREATE, w)
        assert failure.value.code in (errno.EINVAL, errno.EPROTO), failure.value.message
        assert "invalid launch plan" in failure.value.message
    assert monitor.ping()["pid"] == monitor.pid
    assert monitor.list_containers() == []


def test_a_request_with_more_than_one_fd_closes_only_its_connection(harness: Harness) -> None:
    monitor = harness.spawn()
    w = TLVWriter()
    w.string(FIELD_CONTAINER_ID, "two-fds")
    w.raw(FIELD_PLAN, harness.plan("two-fds", ["/bin/true"]).encode())
    w.string(FIELD_LOG_PATH, harness.log_path("two-fds"))
    message = encode_message(REQUEST_CREATE, 1, w)
    read_end, write_end = os.pipe()
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET) as sock:
            sock.settimeout(5)
            sock.connect(str(harness.base / "pod" / "monitor.sock"))
            sock.sendmsg([message], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, struct.pack("ii", read_end, write_end))])
            assert sock.recv(65536) == b"", "the monitor answered a request carrying two descriptors"
    finally:
        os.close(read_end)
        os.close(write_end)
    # Nothing was created and the monitor serves other connections as before.
    assert monitor.list_containers() == []
    assert harness.run(monitor, "two-fds", harness.plan("two-fds", ["/bin/true"])).exit_code == 0


def test_large_plan(harness: Harness) -> None:
    monitor = harness.spawn()
    env = [*ENV, *(f"VARIABLE_{index}={'x' * 200}" for index in range(1500))]
    plan = harness.plan("c", ["/bin/sh", "-c", "echo $VARIABLE_1499 | wc -c"], env=env)
    assert len(plan.encode()) > 300_000
    assert harness.run(monitor, "c", plan).exit_code == 0
    assert harness.output("c") == "201\n"


def test_kill_with_sigterm_and_sigkill(harness: Harness) -> None:
    monitor = harness.spawn()
    # Without a pid namespace of its own: an ns init ignores SIGTERM it has no handler for.
    shared = harness.plan("term", ["/bin/sleep", "1000"], namespaces=[Namespace("mnt")], cgroup="none")
    harness.start(monitor, "term", shared)
    assert monitor.state("term").status == "running"
    monitor.kill("term", signal.SIGTERM)
    info = harness.wait_exit("term")
    assert (info.exit_code, info.signal) == (143, signal.SIGTERM)

    pid = harness.start(monitor, "nine", harness.plan("nine", ["/bin/sleep", "1000"]))
    os.kill(pid, signal.SIGKILL)  # killed from outside, not through the monitor
    info = harness.wait_exit("nine")
    assert (info.exit_code, info.signal) == (137, signal.SIGKILL)
    state = monitor.state("nine")
    assert (state.status, state.exit_code) == ("exited", 137)
    with pytest.raises(MonitorError) as failure:
        monitor.kill("nine", signal.SIGKILL)
    assert failure.value.code == errno.ESRCH


def test_list_and_remove(harness: Harness) -> None:
    monitor = harness.spawn()
    harness.start(monitor, "long", harness.plan("long", ["/bin/sleep", "1000"]))
    harness.run(monitor, "short", harness.plan("short", ["/bin/true"]))
    states = {s.id: s for s in monitor.list_containers()}
    assert states["long"].status == "running" and states["short"].status == "exited"
    with pytest.raises(MonitorError) as failure:
        monitor.remove("long")
    assert failure.value.code == errno.EBUSY
    monitor.remove("short")
    with pytest.raises(MonitorError) as failure:
        monitor.state("short")
    assert failure.value.code == errno.ENOENT
    assert (harness.exits / "short").exists(), "the exit file is the daemon's to delete"

    # Created, never started: it can be killed, and then not started any more.
    monitor.create("idle", harness.plan("idle", ["/bin/true"]), harness.log_path("idle"))
    assert monitor.state("idle").status == "created"
    monitor.kill("idle", signal.SIGKILL)
    info = harness.wait_exit("idle")
    assert (info.exit_code, info.started_at) == (137, 0)
    with pytest.raises(MonitorError, match="cannot be started: it is exited"):
        monitor.start("idle")


def oom_plan(harness: Harness, name: str, memory: Path, pids: Path):
    """A container in the memory and pids cgroups (16 MiB, 20 tasks) that prints its cgroups and
    then allocates 64 MiB: it is OOM killed."""
    v2 = cgroups.is_v2("memory")
    return harness.plan(
        name, ["/bin/sh", "-c", "cat /proc/self/cgroup; exec dd if=/dev/zero of=/dev/null bs=64M count=1"],
        cgroup_writes=[(str(memory / ("memory.max" if v2 else "memory.limit_in_bytes")), str(16 << 20)),
                       (str(pids / "pids.max"), "20")],
        cgroup_procs=sorted({str(memory / "cgroup.procs"), str(pids / "cgroup.procs")}),
        oom_counter_path=str(memory / ("memory.events" if v2 else "memory.oom_control")),
        namespaces=[Namespace("mnt"), Namespace("pid")], cgroup="none",
    )


def assert_oom_killed_in(harness: Harness, name: str, info, memory: Path, pids: Path) -> None:
    assert (info.exit_code, info.oom_killed) == (137, True)
    # /proc/self/cgroup as the container saw it: "ID:CONTROLLERS:PATH", cgroup2's line "0::PATH".
    entries = [line.split(":", 2) for line in harness.output(name).splitlines() if line.count(":") >= 2]
    for controller, path in (("memory", memory), ("pids", pids)):
        v2 = cgroups.is_v2(controller)
        assert any(cgroup == f"/{path.name}" and (hid == "0" if v2 else controller in names.split(","))
                   for hid, names, cgroup in entries), (controller, entries)


def test_cgroups_are_joined_and_oom_kills_recorded(harness: Harness, cgroup_dir) -> None:
    memory = cgroup_dir("memory")
    pids = cgroup_dir("pids")
    monitor = harness.spawn()
    plan = oom_plan(harness, "oom", memory, pids)
    info = harness.run(monitor, "oom", plan)
    assert_oom_killed_in(harness, "oom", info, memory, pids)
    assert (pids / "pids.max").read_text().strip() == "20"

    # Same cgroup, no new OOM kill: the flag is the counter's change during this container's life.
    plan.argv = ["/bin/true"]
    plan.cgroup_writes = []
    info = harness.run(monitor, "fine", plan)
    assert (info.exit_code, info.oom_killed) == (0, False)


def test_monitor_joins_cgroups_made_while_it_starts(harness: Harness, tmp_path: Path, cgroup_dir) -> None:
    """With a `meanwhile` step the cgroups need not exist at spawn: the monitor joins them after it returns."""
    pids = cgroup_dir("pids")
    pids.rmdir()  # only the name: the step below makes it
    pod_dir = harness.base / "gated"
    pod_dir.mkdir()
    spec = PodMonitorSpec("gated", str(pod_dir), str(harness.exits), cgroup_procs=[str(pids / "cgroup.procs")])
    seen_during_step: list[bool] = []

    def make_cgroup(_spawned: int) -> None:
        seen_during_step.append((pod_dir / "monitor.pid").exists())
        pids.mkdir()

    monitor = spawn_monitor(str(monitor_path()), spec, meanwhile=make_cgroup)
    harness.monitors.append(monitor)
    assert seen_during_step == [False]  # it waited for the step before reporting ready
    assert str(monitor.pid) in (pids / "cgroup.procs").read_text().split()
    monitor.shutdown()  # out of the cgroup before the fixture removes it
    harness.monitors.remove(monitor)


def test_monitor_gives_up_when_the_meanwhile_step_fails(harness: Harness) -> None:
    pod_dir = harness.base / "cancelled"
    pod_dir.mkdir()
    spec = PodMonitorSpec("cancelled", str(pod_dir), str(harness.exits), hostname="cancelled", shm_size=1 << 20,
                          cgroup_procs=[f"{cgroups.cgroup_dir('/crio-fast-test-never-made', 'pids')}/cgroup.procs"])

    def fail(_spawned: int) -> None:
        raise RuntimeError("the daemon's part failed")

    with pytest.raises(RuntimeError, match="the daemon's part failed"):
        spawn_monitor(str(monitor_path()), spec, meanwhile=fail)
    # The monitor undid its namespaces and mounts itself and left no process.
    assert str(pod_dir) not in host_mountinfo()
    assert sorted(p.name for p in pod_dir.iterdir()) in ([], ["monitor.log"])
    assert not (pod_dir / "monitor.pid").exists()


def test_monitor_is_shut_down_when_the_after_gate_step_fails(harness: Harness) -> None:
    pod_dir = harness.base / "late"
    pod_dir.mkdir()
    spec = PodMonitorSpec("late", str(pod_dir), str(harness.exits), hostname="late", shm_size=1 << 20)
    steps: list[str] = []

    def fail() -> None:  # after_gate: no pid
        steps.append("after")
        raise RuntimeError("writing the pod's files failed")

    with pytest.raises(RuntimeError, match="writing the pod's files failed"):
        spawn_monitor(str(monitor_path()), spec, meanwhile=lambda _pid: steps.append("meanwhile"), after_gate=fail)
    assert steps == ["meanwhile", "after"]
    # The monitor came up and was shut down again: its mounts and socket are gone, no process is left.
    assert str(pod_dir) not in host_mountinfo()
    assert not (pod_dir / "monitor.sock").exists()
    pids = [p.pid for p in psutil.process_iter(["cmdline"]) if str(pod_dir) in " ".join(p.info["cmdline"] or [])
            and p.status() != psutil.STATUS_ZOMBIE]
    assert pids == []


def test_gated_create_joins_cgroups_made_meanwhile(harness: Harness, cgroup_dir) -> None:
    """CREATE with a gate: the cgroups are made after the request went out; the child joins them,
    gets their limits, and OOM kills are counted from its start."""
    memory = cgroup_dir("memory")
    pids = cgroup_dir("pids")
    dirs = sorted({memory, pids})  # one directory on cgroup2
    for d in dirs:
        d.rmdir()  # only the names: the step below makes them
    monitor = harness.spawn()
    plan = oom_plan(harness, "gated", memory, pids)
    made: list[bool] = []

    def make_cgroups(_pid: int | None) -> None:
        made.append(True)
        for d in dirs:
            d.mkdir()

    result = monitor.create("gated", plan, harness.log_path("gated"), meanwhile=make_cgroups)
    harness.container_pids.append(result.pid)
    assert made == [True]
    assert str(result.pid) in (pids / "cgroup.procs").read_text().split()
    monitor.start("gated")
    assert_oom_killed_in(harness, "gated", harness.wait_exit("gated"), memory, pids)


def test_gated_create_fails_cleanly_when_the_step_fails(harness: Harness) -> None:
    monitor = harness.spawn()
    never = cgroups.cgroup_dir("/crio-fast-test-never-made", "pids")
    plan = harness.plan("cancelled", ["/bin/true"], cgroup_procs=[f"{never}/cgroup.procs"],
                        namespaces=[Namespace("mnt"), Namespace("pid")], cgroup="none")

    def fail(_pid: int | None) -> None:
        raise RuntimeError("cgroup could not be made")

    with pytest.raises(RuntimeError, match="cgroup could not be made"):
        monitor.create("cancelled", plan, harness.log_path("cancelled"), meanwhile=fail)
    # The child gave up before joining anything or running the command, and the failed container is
    # forgotten (no exit file: it never existed); the monitor goes on.
    deadline = time.monotonic() + 5
    while [s.id for s in monitor.list_containers()]:
        assert time.monotonic() < deadline, "the cancelled container is still listed"
        time.sleep(0.01)
    assert not (harness.exits / "cancelled").exists()
    assert not os.path.exists(never)
    assert harness.run(monitor, "cancelled", harness.plan("cancelled", ["/bin/true"])).exit_code == 0


def test_a_plan_in_two_parts_runs_as_one(harness: Harness, cgroup_dir) -> None:
    """The head clones the child and mounts the rootfs; the rest (command, env, user, mounts) follows
    through the gate while the daemon decides it, and the cgroups are made after that."""
    pids = cgroup_dir("pids")
    pids.rmdir()  # made by the step, after the rest went out
    monitor = harness.spawn(hostname="split-host")
    plan = harness.plan("split", ["/bin/sh", "-c", 'echo "$GREETING $(id -u) $(hostname -s)"; cat /etc/motd'],
                        env=[*ENV, "GREETING=hello"], uid=1234, cgroup_procs=[str(pids / "cgroup.procs")],
                        namespaces=[Namespace("mnt"), Namespace("pid")], cgroup="none",
                        upper_files={"/etc/motd": "/proc/self/comm"})
    order: list[str] = []

    def rest() -> Iterator[bytes]:
        order.append("rootfs")
        yield plan.encode_rootfs()
        order.append("rest")
        yield plan.encode_rest()

    made = harness.container_dir("split") / "made-by-the-child"
    head = dataclasses.replace(plan.head(), host_dirs=[str(made), str(made / "inner")])
    pending = monitor.begin_create("split", head, harness.log_path("split"),
                                   meanwhile=lambda _pid: (order.append("cgroup"), pids.mkdir()), rest=rest)
    result = pending.result()
    harness.container_pids.append(result.pid)
    assert order == ["rootfs", "rest", "cgroup"]
    assert stat.S_IMODE((made / "inner").stat().st_mode) == 0o755
    assert str(result.pid) in (pids / "cgroup.procs").read_text().split()
    monitor.start("split")
    assert harness.wait_exit("split").exit_code == 0
    assert harness.output("split") == "hello 1234 split-host\ncat\n"


@pytest.mark.parametrize("how", ["the rest fails", "the rest is malformed"])
def test_a_plan_whose_rest_never_comes_right_fails_cleanly(harness: Harness, how: str) -> None:
    monitor = harness.spawn()
    plan = harness.plan("cut", ["/bin/true"], namespaces=[Namespace("mnt"), Namespace("pid")], cgroup="none")
    steps: list[str] = []

    def rest() -> Iterator[bytes]:
        yield plan.encode_rootfs()  # the child mounts it, then the rest goes wrong
        if how == "the rest fails":
            raise InvalidArgument("user nobody-here not found in the image")
        yield b"\x01\x00"  # half a field header

    if how == "the rest fails":
        with pytest.raises(InvalidArgument, match="nobody-here"):
            monitor.begin_create("cut", plan.head(), harness.log_path("cut"), meanwhile=lambda _pid: steps.append("cg"),
                                 rest=rest)
        assert steps == []  # nothing after the rest: the cgroups are never made
    else:
        pending = monitor.begin_create("cut", plan.head(), harness.log_path("cut"),
                                       meanwhile=lambda _pid: steps.append("cg"), rest=rest)
        with pytest.raises(MonitorError, match="invalid launch plan"):
            pending.result()
    # The child gave up and the container is forgotten: the id is free again, the monitor goes on.
    deadline = time.monotonic() + 5
    while [s.id for s in monitor.list_containers()]:
        assert time.monotonic() < deadline, "the cut container is still listed"
        time.sleep(0.01)
    assert not (harness.exits / "cut").exists()
    assert harness.run(monitor, "cut", harness.plan("cut", ["/bin/true"])).exit_code == 0


def test_the_child_reports_its_pid_through_the_gate(harness: Harness) -> None:
    """PLAN_REPORT_PID: the step gets the child's pid before the gate opens (the systemd driver makes
    the container's scope around it): the host's pid, though the child is pid 1 of its namespace."""
    monitor = harness.spawn()
    plan = harness.plan("reporting", ["/bin/sh", "-c", "echo $$"], namespaces=[Namespace("mnt"), Namespace("pid")],
                        cgroup="none")
    seen: list[tuple[int | None, str]] = []

    def step(pid: int | None) -> None:
        assert pid is not None
        seen.append((pid, Path(f"/proc/{pid}/status").read_text().split("NSpid:")[1].split("\n")[0].split()[-1]))

    head = dataclasses.replace(plan.head(), report_pid=True)
    pending = monitor.begin_create("reporting", head, harness.log_path("reporting"), meanwhile=step,
                                   rest=lambda: [plan.encode_rootfs(), plan.encode_rest()])
    result = pending.result()
    harness.container_pids.append(result.pid)
    assert seen == [(result.pid, "1")]
    monitor.start("reporting")
    assert harness.wait_exit("reporting").exit_code == 0
    assert harness.output("reporting") == "1\n"
    # Without the flag the gate is a pipe and the step gets no pid.
    plain: list[int | None] = []
    pending = monitor.begin_create("plain", plan.head(), harness.log_path("reporting"), meanwhile=plain.append,
                                   rest=lambda: [plan.encode_rootfs(), plan.encode_rest()])
    harness.container_pids.append(pending.result().pid)
    assert plain == [None]


def test_a_head_without_its_gate_or_its_rest_is_refused(harness: Harness) -> None:
    monitor = harness.spawn()
    plan = harness.plan("head", ["/bin/true"])
    with pytest.raises(ValueError, match="needs a meanwhile step"):
        monitor.begin_create("head", plan.head(), harness.log_path("head"), rest=lambda: [plan.encode_rest()])
    w = monitor._create_fields("head", plan.head(), harness.log_path("head"), None)
    w.boolean(FIELD_PLAN_FOLLOWS, True)
    with pytest.raises(MonitorError, match="PLAN_FOLLOWS needs the gate descriptor"):
        monitor._request(REQUEST_CREATE, w)
    with pytest.raises(MonitorError, match="no command"):  # a head alone is not a whole plan
        monitor.create("head", plan.head(), harness.log_path("head"))  # type: ignore[arg-type]
    assert harness.run(monitor, "head", plan).exit_code == 0


def _start_while_the_child_waits_at_the_gate(harness: Harness, name: str, step):
    """begin_create with ``step`` as the cgroup step (run in a thread), and a START sent while the child
    is still held at the gate. Returns the monitor, how long START took, what it raised (None when it
    worked), and what begin_create returned or raised."""
    monitor = harness.spawn()
    plan = harness.plan(name, ["/bin/sh", "-c", "exec sleep 1000"], namespaces=[Namespace("mnt"), Namespace("pid")],
                        cgroup="none")
    pending: list = []
    creator = threading.Thread(target=lambda: pending.append(
        _outcome(lambda: monitor.begin_create(name, plan, harness.log_path(name), meanwhile=step))))
    creator.start()
    time.sleep(0.2)  # the child is at the gate: the CREATE is unanswered
    started = time.monotonic()
    outcome = _outcome(lambda: monitor.start(name))
    took = time.monotonic() - started
    creator.join()
    if not isinstance(pending[0], BaseException):
        with contextlib.suppress(MonitorError):
            harness.container_pids.append(pending[0].result().pid)
    return monitor, took, outcome, pending[0]


def _outcome(call):
    try:
        result = call()
    except BaseException as exc:  # noqa: BLE001 - the test looks at it
        return exc
    return result


def test_a_start_sent_during_the_set_up_waits_for_it(harness: Harness) -> None:
    monitor, took, outcome, pending = _start_while_the_child_waits_at_the_gate(harness, "early",
                                                                              lambda _pid: time.sleep(0.6))
    assert outcome is None, outcome  # START did not refuse a container still being created...
    assert took >= 0.3  # ...it was answered once the child, released by the gate, ran its command
    assert pending.result().pid > 0
    assert monitor.state("early").status == "running"


def test_a_start_sent_during_a_failing_set_up_gets_its_error(harness: Harness) -> None:
    def fail(_pid: int | None) -> None:
        time.sleep(0.6)
        raise RuntimeError("cgroup could not be made")

    _, _, outcome, pending = _start_while_the_child_waits_at_the_gate(harness, "doomed", fail)
    assert isinstance(pending, RuntimeError)
    assert isinstance(outcome, MonitorError) and "gave up" in outcome.message, outcome
    assert not (harness.exits / "doomed").exists()


def test_kill_all_signals_the_whole_cgroup(harness: Harness, cgroup_dir) -> None:
    pids = cgroup_dir("pids")
    monitor = harness.spawn()
    plan = harness.plan("c", ["/bin/sh", "-c", "sleep 1000 & echo $!; exec sleep 1000"],
                        namespaces=[Namespace("mnt")], cgroup="none", cgroup_procs=[str(pids / "cgroup.procs")])
    pid = harness.start(monitor, "c", plan)
    deadline = time.monotonic() + 5
    while not harness.output("c"):
        assert time.monotonic() < deadline
        time.sleep(0.01)
    background = int(harness.output("c"))
    members = {int(p) for p in (pids / "cgroup.procs").read_text().split()}
    assert members == {pid, background}
    monitor.kill("c", signal.SIGKILL, all=True)
    assert harness.wait_exit("c").exit_code == 137
    deadline = time.monotonic() + 5
    while (pids / "cgroup.procs").read_text().strip():
        assert time.monotonic() < deadline, "the background process survived KILL --all"
        time.sleep(0.01)


def probe_fs_param(*args: str) -> tuple[int, str]:
    """``crio-fast-monitor --probe-fs-param ARGS``: (exit status, its line)."""
    result = subprocess.run([str(monitor_path()), "--probe-fs-param", *args], capture_output=True, text=True,
                            timeout=10, check=False)
    return result.returncode, result.stdout.strip()


def lowerdir_plus_usable() -> bool:
    """What the pod monitor's probe finds on this kernel (the same function answers both)."""
    return probe_fs_param("overlay", "lowerdir+", "/")[0] == 0


def kernel_version() -> tuple[int, int]:
    match = re.match(r"(\d+)\.(\d+)", platform.release())
    assert match, platform.release()
    return int(match.group(1)), int(match.group(2))


def test_fs_param_probe_is_not_fooled_by_a_context_that_takes_any_key() -> None:
    # ramfs takes (and ignores) every key, as overlayfs's legacy context does before Linux 6.5:
    # fsconfig's "yes" means nothing there, and the probe must say so instead of "taken".
    rc, line = probe_fs_param("ramfs", "lowerdir+", "/")
    assert (rc, line.split(":")[0]) == (1, "no-parser"), line
    assert "cannot tell whether it knows lowerdir+" in line
    # A real parser: an unknown key is refused, a known one taken.
    rc, line = probe_fs_param("tmpfs", "lowerdir+", "/")
    assert (rc, line) == (1, "refused: tmpfs refuses lowerdir+=/: Invalid argument")
    assert probe_fs_param("tmpfs", "size", "1m") == (0, "taken: tmpfs takes size")
    assert probe_fs_param("tmpfs", "size", "not-a-size")[1].startswith("refused: "), "a bad value is refused too"
    rc, line = probe_fs_param("crio-fast-no-such-fs", "x")
    assert (rc, line) == (1, "no-fsopen: fsopen crio-fast-no-such-fs: No such device")
    if lowerdir_plus_usable():
        # An error other than EINVAL is no answer at all: the probe failed.
        assert probe_fs_param("overlay", "lowerdir+", "/nonexistent-crio-fast") == (
            2, "error: fsconfig overlay lowerdir+=/nonexistent-crio-fast: No such file or directory")


def test_overlay_probe_answers_by_the_kernel_version() -> None:
    """Mainline kernels: no overlay parser before 6.5 (the legacy context takes lowerdir+ and only the
    mount refuses it), a parser without lowerdir+ in 6.5-6.7, lowerdir+ from 6.8. A distribution
    kernel with overlayfs backported may answer as a newer one; the probe, not the version, decides."""
    version = kernel_version()
    expected = "taken" if version >= (6, 8) else "refused" if version >= (6, 5) else "no-parser"
    rc, line = probe_fs_param("overlay", "lowerdir+", "/")
    assert line.split(":")[0] == expected, (platform.release(), line)
    assert rc == (0 if expected == "taken" else 1)
    # The legacy context's blind spot: it takes the key, so fsconfig alone would have said yes.
    if expected == "no-parser":
        assert "takes even the unknown parameter" in line


def overlay_mount_source(pid: int) -> str:
    """The source field of the container's root mount: "none" when fsconfig made it (no source is
    set), "overlay" when mount(2) did."""
    for line in Path(f"/proc/{pid}/mountinfo").read_text().splitlines():
        fields = line.split()
        if fields[4] == "/":
            separator = fields.index("-")
            assert fields[separator + 1] == "overlay", line
            return fields[separator + 2]
    raise AssertionError(f"no root mount in /proc/{pid}/mountinfo")


def many_layers_plan(harness: Harness, tmp_path: Path, name: str):
    layers = []
    for index in range(40):
        layer = tmp_path / f"layer-with-a-deliberately-long-directory-name-to-pass-one-page-{index:03d}"
        layer.mkdir(exist_ok=True)
        (layer / f"file{index}").write_text(str(index))
        layers.append(str(layer))
    assert sum(len(p) + 1 for p in layers) > 4096, "more than mount(2) could take in one page"
    directory = harness.container_dir(name)
    for sub in ("upper", "work", "rootfs"):
        (directory / sub).mkdir()
    overlay = Overlay(lower=[*reversed(layers), str(harness.rootfs)], upper=str(directory / "upper"),
                      work=str(directory / "work"), target=str(directory / "rootfs"))
    return harness.plan(name, ["/bin/sh", "-c", "cat /file0 /file39; ls / | grep -c '^file'"], overlay=overlay)


def test_many_overlay_layers(harness: Harness, tmp_path: Path) -> None:
    monitor = harness.spawn()
    plan = many_layers_plan(harness, tmp_path, "c")
    if not lowerdir_plus_usable():
        # mount(2) it is, and the options do not fit: a clear error, not a failed mount of lowerdir+.
        with pytest.raises(MonitorError) as failure:
            monitor.create("c", plan, harness.log_path("c"))
        assert "over the one-page limit of mount(2)" in failure.value.message
        assert "lowerdir+" in failure.value.message and "overlayfs" in failure.value.message
        return
    assert harness.run(monitor, "c", plan).exit_code == 0
    assert harness.output("c") == "0" + "39" + "40\n"


def test_overlay_is_mounted_the_way_the_probe_says(harness: Harness) -> None:
    monitor = harness.spawn()
    pid = harness.start(monitor, "c", harness.plan("c", ["/bin/sleep", "1000"]))
    assert overlay_mount_source(pid) == ("none" if lowerdir_plus_usable() else "overlay")
    monitor.kill("c", signal.SIGKILL)
    assert harness.wait_exit("c").exit_code == 137


def test_the_legacy_overlay_mount(harness: Harness, tmp_path: Path) -> None:
    """--overlay-mount legacy: the mount(2) path of kernels without lowerdir+, on any kernel."""
    monitor = harness.spawn(overlay_mount="legacy")
    pid = harness.start(monitor, "c", harness.plan("c", ["/bin/sh", "-c", "echo layered > /new; cat /new; sleep 1000"]))
    assert overlay_mount_source(pid) == "overlay"
    assert re.search(r"^\S+ \S+ \S+ / / \S+ .*- overlay overlay \S*lowerdir=",
                     Path(f"/proc/{pid}/mountinfo").read_text(), re.M), "mount(2) with its lowerdir= string"
    deadline = time.monotonic() + 5
    while harness.output("c") != "layered\n":
        assert time.monotonic() < deadline, f"no output: {harness.output('c')!r}"
        time.sleep(0.01)
    assert (harness.container_dir("c") / "upper" / "new").read_text() == "layered\n", "written to the upper dir"
    monitor.kill("c", signal.SIGKILL)
    assert harness.wait_exit("c").exit_code == 137
    # Options over a page cannot go that way, and the error says why lowerdir+ was not used.
    with pytest.raises(MonitorError) as failure:
        monitor.create("many", many_layers_plan(harness, tmp_path, "many"), harness.log_path("many"))
    assert "over the one-page limit of mount(2)" in failure.value.message
    assert "the pod monitor was started with --overlay-mount legacy" in failure.value.message
    assert [s.id for s in monitor.list_containers()] == ["c"], "the failed create left nothing"
    # No way to force the fsconfig path: on a kernel without lowerdir+ it is the bug this replaced.
    with pytest.raises(ValueError, match="overlay_mount"):
        PodMonitorSpec("p", "/p", "/e", overlay_mount="fsconfig").argv("/m", 3)
    refused = subprocess.run([str(monitor_path()), "pod", "--overlay-mount", "fsconfig"], capture_output=True,
                             text=True, timeout=10, check=False)
    assert refused.returncode == 2 and "--overlay-mount fsconfig: expected auto or legacy" in refused.stderr


# ----------------------------------------------- daemon restart, shutdown


def test_containers_survive_the_daemon_and_attach_reconnects(harness: Harness) -> None:
    monitor = harness.spawn()
    pid = harness.start(monitor, "c", harness.plan("c", ["/bin/sleep", "1000"]))
    monitor_pid = monitor.pid
    # The "daemon" forgets everything it had.
    monitor.close()
    harness.monitors.clear()
    del monitor
    attached = PodMonitor.attach(str(harness.base / "pod"))
    harness.monitors.append(attached)
    assert attached.pid == monitor_pid and attached.alive()
    assert attached.features == MONITOR_FEATURES  # from its PING reply: every bit of this build
    state = attached.state("c")
    assert (state.status, state.pid) == ("running", pid)
    assert psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    attached.kill("c", signal.SIGKILL)
    assert harness.wait_exit("c").exit_code == 137


def test_shutdown_leaves_no_process_mount_or_file(harness: Harness) -> None:
    monitor = harness.spawn(hostname="gone")
    pod_dir = harness.base / "pod"
    harness.start(monitor, "a", harness.plan("a", ["/bin/sleep", "1000"]))
    # No pid namespace: its background child is reparented to the monitor.
    shared = harness.plan("b", ["/bin/sh", "-c", "sleep 1000 & echo $!; exec sleep 1000"],
                          namespaces=[Namespace("mnt")], cgroup="none")
    harness.start(monitor, "b", shared)
    deadline = time.monotonic() + 5
    while not harness.output("b"):
        assert time.monotonic() < deadline
        time.sleep(0.01)
    monitor_process = psutil.Process(monitor.pid)
    victims = monitor_process.children(recursive=True)
    assert int(harness.output("b")) in {p.pid for p in victims}
    assert len(victims) >= 3

    monitor.shutdown()
    assert not monitor.alive()
    assert not psutil.pid_exists(monitor_process.pid)
    for process in victims:
        assert not psutil.pid_exists(process.pid), f"{process.pid} survived the pod"
    assert str(pod_dir) not in host_mountinfo()
    assert list(pod_dir.iterdir()) == []
    assert {p.name for p in harness.exits.iterdir()} == {"a", "b"}
    assert harness.wait_exit("a").exit_code == 137


def test_cleanup_after_a_killed_monitor(harness: Harness) -> None:
    monitor = harness.spawn()
    pod_dir = harness.base / "pod"
    pid = harness.start(monitor, "c", harness.plan("c", ["/bin/sleep", "1000"]))
    os.kill(monitor.pid, signal.SIGKILL)
    deadline = time.monotonic() + 5
    while monitor.alive():
        assert time.monotonic() < deadline
        time.sleep(0.01)
    # The container lives on, orphaned; the anchors stay mounted.
    assert psutil.pid_exists(pid)
    assert f" {pod_dir}/ns/net " in host_mountinfo()
    with pytest.raises(MonitorError) as failure:
        monitor.state("c")
    assert failure.value.code in (errno.ECONNREFUSED, errno.ECONNRESET, errno.EPIPE)
    unmounted = cleanup_pod_dir(str(pod_dir))
    assert {f"{pod_dir}/ns/net", f"{pod_dir}/ns/ipc", f"{pod_dir}/ns/uts", f"{pod_dir}/shm", str(pod_dir)} <= set(unmounted)
    assert str(pod_dir) not in host_mountinfo()
    assert list(pod_dir.iterdir()) == []
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)  # adopted by this process, the subreaper


# ------------------------------------------------------------------ exec


def test_exec_sync_runs_inside_the_container(harness: Harness) -> None:
    monitor = harness.spawn(hostname="exec-host")
    pid = harness.start(monitor, "c", harness.plan("c", ["/bin/sleep", "1000"]))
    binary = str(monitor_path())

    def run(argv: list[str], **kw: object):
        return exec_sync(binary, ExecPlan(target_pid=pid, argv=argv, env=list(ENV), cwd="/"), **kw)

    result = run(["/bin/sh", "-c", "hostname; echo $$; ps -o pid,comm; echo oops >&2; exit 7"], timeout=10)
    assert result.exit_code == 7 and result.error is None
    lines = result.stdout.decode().splitlines()
    assert lines[0] == "exec-host" and lines[1] != "1"
    assert re.search(r"^\s*1 sleep$", result.stdout.decode(), re.M), "sees the container's pid namespace"
    assert result.stderr == b"oops\n"

    assert run(["cat"], timeout=10, stdin=b"fed through stdin").stdout == b"fed through stdin"

    missing = run(["/bin/nope"], timeout=10)
    assert missing.exit_code == 127 and missing.error == "exec: /bin/nope: No such file or directory"
    assert b"/bin/nope" in missing.stderr

    started = time.monotonic()
    with pytest.raises(TimeoutError):
        run(["/bin/sleep", "77"], timeout=0.5)
    assert time.monotonic() - started < 5
    # The helper reaped the killed command itself: nothing was orphaned to us.
    assert not [c for c in psutil.Process().children() if c.status() == psutil.STATUS_ZOMBIE]
    deadline = time.monotonic() + 5
    while True:  # the killed command is gone from the container
        listing = run(["ps", "-o", "args"], timeout=10).stdout.decode()
        if "sleep 77" not in listing:
            break
        assert time.monotonic() < deadline, listing
        time.sleep(0.05)
    # With the command reaped, the container dies at once on SHUTDOWN.
    started = time.monotonic()
    monitor.shutdown()
    assert time.monotonic() - started < 2


# ------------------------------------------------------- pod pid namespace


def pod_init_pids(pod_dir: Path) -> list[int]:
    """Host pids of processes whose pid namespace is the one pinned at pod_dir/ns/pid."""
    pinned = os.stat(pod_dir / "ns" / "pid").st_ino
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError):
                if os.stat(f"/proc/{entry}/ns/pid").st_ino == pinned:
                    pids.append(int(entry))
    return pids


def test_pod_pid_namespace_init_reaps_and_is_shared(harness: Harness) -> None:
    monitor = harness.spawn(pid="new")
    pod_dir = harness.base / "pod"
    assert set(monitor.ns_paths) == {"net", "ipc", "uts", "pid"}
    # The pinned namespace is not the monitor's: the monitor stays in the host's (and so do its children
    # unless a plan joins the pod's).
    assert os.stat(monitor.ns_paths["pid"]).st_ino != ns_inode(monitor.pid, "pid")
    assert ns_inode(monitor.pid, "pid_for_children") == ns_inode("self", "pid")
    (init_pid,) = pod_init_pids(pod_dir)
    assert Path(f"/proc/{init_pid}/cmdline").read_bytes() == b"crio-fast-pod-init\0"
    assert Path(f"/proc/{init_pid}/comm").read_text() == "crio-fast-pod-i\n"  # comm is cut to 15 bytes
    assert int(status_field(Path(f"/proc/{init_pid}/status").read_text(), "PPid")) == monitor.pid

    pod_pid = [Namespace("mnt"), Namespace("pid", monitor.ns_paths["pid"])]
    first = harness.start(monitor, "first", harness.plan("first", ["/bin/sleep", "1000"], namespaces=pod_pid))
    # The second container leaves an orphan that exits at once: the pod init must reap it.
    plan = harness.plan("second", ["/bin/sh", "-c",
                                   "(sleep 0.1 &) ; sleep 0.5; cat /proc/1/cmdline; echo; ps -o pid,stat,comm"],
                        namespaces=pod_pid)
    assert harness.run(monitor, "second", plan).exit_code == 0
    lines = harness.output("second").splitlines()
    assert lines[0] == "crio-fast-pod-init\0"  # cmdline: the name and its NUL, nothing else
    assert re.search(r"^\s*1 \S+\s+crio-fast-pod-i", "\n".join(lines), re.M)
    assert re.search(r"^\s*\d+ \S+\s+sleep$", "\n".join(lines), re.M), "the first container is visible"
    assert not re.search(r"^\s*\d+ Z", "\n".join(lines[1:]), re.M), f"a zombie was left: {lines}"
    assert first in pod_init_pids(pod_dir)

    monitor.shutdown()
    deadline = time.monotonic() + 5
    while any(Path(f"/proc/{pid}").exists() for pid in (init_pid, first)) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not Path(f"/proc/{init_pid}").exists() and not Path(f"/proc/{first}").exists()
    assert not (pod_dir / "ns").exists()
    assert f" {pod_dir}/" not in host_mountinfo()


def test_pod_init_dies_with_a_killed_monitor(harness: Harness) -> None:
    monitor = harness.spawn(pid="new")
    pod_dir = harness.base / "pod"
    (init_pid,) = pod_init_pids(pod_dir)
    pod_pid = [Namespace("mnt"), Namespace("pid", monitor.ns_paths["pid"])]
    member = harness.start(monitor, "member", harness.plan("member", ["/bin/sleep", "1000"], namespaces=pod_pid))
    os.kill(monitor.pid, signal.SIGKILL)
    # All are re-parented to this process (a child subreaper): reap them, as the daemon does. The
    # dying init waits for every process of its namespace to be reaped (the kernel's zap_pid_ns_processes):
    # the container first.
    assert wait_adopted(monitor.pid, 5) is not None
    assert wait_adopted(member, 5) is not None
    assert reap_dead_pod_inits() == 1
    assert not Path(f"/proc/{init_pid}").exists()
    cleanup_pod_dir(str(pod_dir))
    assert f" {pod_dir}/" not in host_mountinfo()
