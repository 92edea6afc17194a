"""Containers on external OCI runtimes (runc, crun) driven by the pod monitor, next to the native handler.

The same behaviour is checked for every handler: logs in CRI format, exit codes, stop, ExecSync, and that
removing a pod leaves no mount, cgroup, runtime state or process behind.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import grpc
import psutil
import pytest

from crio_fast.api import api_pb2 as api
from crio_fast.cgroups import parse_oom_kill_count
from tests.support import cgroups
from tests.support.daemon import Daemon
from tests.support.oci_runtimes import HANDLERS, RUNC, configure_oci_runtimes, crun_problem, runc_problem
from tests.support.pods import (daemon_with_busybox, kubelet_pod_linux, log_records, log_text, remove_all_pods, status,
                                wait_exited, wait_for)

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def env(registry, busybox_image, tmp_path_factory):
    if problem := runc_problem():
        pytest.skip(problem)
    with daemon_with_busybox(registry, busybox_image, tmp_path_factory.mktemp("regconf"),
                             configure=configure_oci_runtimes) as d:
        yield d


def _handler(request, env):
    if request.param == "crun":
        problem = crun_problem()
        if problem:
            pytest.skip(problem)
    try:
        yield request.param
    finally:
        remove_all_pods(env)


handler = pytest.fixture(params=HANDLERS)(_handler)
oci_handler = pytest.fixture(params=["runc", "crun"])(_handler)

_numbers = iter(range(1_000_000))


def run_pod(d: Daemon, handler: str) -> tuple[str, api.PodSandboxConfig]:
    n = next(_numbers)
    config = api.PodSandboxConfig(
        metadata=api.PodSandboxMetadata(name=f"opod{n}", namespace="oci", uid=f"ouid-{n}", attempt=0),
        hostname=f"opod{n}", log_directory=str(d.dirs.log_dir / f"opod{n}"), linux=kubelet_pod_linux(),
    )
    request = api.RunPodSandboxRequest(config=config, runtime_handler=handler)
    return d.client.runtime.RunPodSandbox(request, timeout=30).pod_sandbox_id, config


def create(d: Daemon, pod_id: str, pod: api.PodSandboxConfig, command: list[str], tty: bool = False) -> str:
    config = api.ContainerConfig(metadata=api.ContainerMetadata(name=f"c{next(_numbers)}"),
                                 image=api.ImageSpec(image=d.image), command=command, log_path="ctr.log", tty=tty)
    request = api.CreateContainerRequest(pod_sandbox_id=pod_id, config=config, sandbox_config=pod)
    return d.client.runtime.CreateContainer(request, timeout=30).container_id


def start(d: Daemon, ctr: str) -> None:
    d.client.runtime.StartContainer(api.StartContainerRequest(container_id=ctr), timeout=30)






def run_container(d: Daemon, handler: str, command: list[str]) -> tuple[str, str]:
    pod_id, pod = run_pod(d, handler)
    ctr = create(d, pod_id, pod, command)
    start(d, ctr)
    return pod_id, ctr




def monitor_children(d: Daemon, pod_id: str) -> list[psutil.Process]:
    pid = int((d.dirs.runroot / "pods" / pod_id / "monitor.pid").read_text())
    return psutil.Process(pid).children(recursive=True)


def container_inits(d: Daemon, pod_id: str, name: str = "sleep", timeout: float = 5.0) -> list[psutil.Process]:
    """The monitor's descendants named ``name``, once there is one. ``runc start`` returns when it
    has released the init through its exec FIFO, so for a moment the init may still be
    ``runc:[2:INIT]``, before its execve."""
    deadline = time.monotonic() + timeout
    while True:
        found = [p for p in monitor_children(d, pod_id) if _name(p) == name]
        if found or time.monotonic() >= deadline:
            return found
        time.sleep(0.01)


def _name(process: psutil.Process) -> str | None:
    try:
        return process.name()
    except psutil.NoSuchProcess:
        return None


def dead(process: psutil.Process) -> bool:
    """Gone, or a zombie (its parent, the daemon as child subreaper, may not have reaped it yet)."""
    try:
        return process.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def test_runs_and_logs_in_cri_format(env, handler):
    _, ctr = run_container(env, handler, ["/bin/sh", "-c", "echo out; echo err >&2"])
    st = wait_exited(env, ctr)
    assert (st.exit_code, st.reason) == (0, "Completed")
    assert sorted(log_records(st.log_path)) == [("stderr", "F", b"err"), ("stdout", "F", b"out")]


def test_exit_code_3_is_an_error(env, handler):
    _, ctr = run_container(env, handler, ["/bin/sh", "-c", "exit 3"])
    st = wait_exited(env, ctr)
    assert (st.exit_code, st.reason) == (3, "Error")


def test_stop_leaves_it_exited(env, handler):
    _, ctr = run_container(env, handler, ["/bin/sh", "-c",
                                          "trap 'exit 7' TERM; echo trapped; while :; do sleep 0.05; done"])
    st = status(env, ctr)
    assert st.state == api.ContainerState.CONTAINER_RUNNING
    # StartContainer returns before the shell has set its trap (as runc start does): wait for it.
    deadline = time.monotonic() + 10
    while log_text(st.log_path) != b"trapped\n":
        assert time.monotonic() < deadline, log_text(st.log_path)
        time.sleep(0.01)
    env.client.runtime.StopContainer(api.StopContainerRequest(container_id=ctr, timeout=10), timeout=30)
    st = status(env, ctr)
    assert st.state == api.ContainerState.CONTAINER_EXITED
    assert st.exit_code == 7  # the stop signal (SIGTERM) reached the container's trap


def test_stop_kills_what_ignores_the_stop_signal(env, handler):
    _, ctr = run_container(env, handler, ["/bin/sleep", "1000"])  # pid 1 of its namespace: SIGTERM is ignored
    env.client.runtime.StopContainer(api.StopContainerRequest(container_id=ctr, timeout=1), timeout=30)
    st = status(env, ctr)
    assert (st.state, st.exit_code) == (api.ContainerState.CONTAINER_EXITED, 128 + 9)


def test_exec_sync_output_and_exit_code(env, handler):
    _, ctr = run_container(env, handler, ["/bin/sleep", "1000"])
    reply = env.client.runtime.ExecSync(api.ExecSyncRequest(
        container_id=ctr, cmd=["/bin/sh", "-c", "echo hi; echo oops >&2; hostname; exit 4"], timeout=10), timeout=30)
    lines = reply.stdout.decode().splitlines()
    assert lines[0] == "hi" and lines[1].startswith("opod")  # the pod's UTS namespace
    assert reply.stderr == b"oops\n"
    assert reply.exit_code == 4


def test_exec_sync_timeout_kills_the_command(env, handler):
    _, ctr = run_container(env, handler, ["/bin/sleep", "1000"])
    started = time.monotonic()
    with pytest.raises(grpc.RpcError) as info:
        env.client.runtime.ExecSync(api.ExecSyncRequest(container_id=ctr, cmd=["/bin/sleep", "77"], timeout=1),
                                    timeout=30)
    assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert time.monotonic() - started < 10
    deadline = time.monotonic() + 5
    while any(_cmdline(p) == ["/bin/sleep", "77"] for p in psutil.process_iter()):
        assert time.monotonic() < deadline, "the timed-out command still runs"
        time.sleep(0.05)


def _cmdline(process: psutil.Process) -> list[str]:
    """A process's argv, or [] for one that is gone or a zombie (other jobs on the host come and go)."""
    try:
        return process.cmdline()
    except psutil.Error:
        return []


# Not runc: a foreground `runc exec` itself waits for end of file on the command's output (docs/security.md).
@pytest.mark.parametrize("handler", ["native", "crun"], indirect=True)
def test_exec_sync_returns_when_the_command_exits(env, handler):
    """A background process left holding stdout does not hold up ExecSync: it ends with the command."""
    _, ctr = run_container(env, handler, ["/bin/sleep", "1000"])
    started = time.monotonic()
    reply = env.client.runtime.ExecSync(api.ExecSyncRequest(
        container_id=ctr, cmd=["/bin/sh", "-c", "sleep 30 & echo started; exit 3"], timeout=20), timeout=30)
    assert time.monotonic() - started < 10
    assert (reply.exit_code, reply.stdout) == (3, b"started\n")


def test_exec_sync_of_a_missing_command_fails(env, handler):
    pod_id, ctr = run_container(env, handler, ["/bin/sleep", "1000"])
    # crun's helper process of a failed exec outlives crun itself, now and then (mostly under load).
    for _ in range(20):
        reply = env.client.runtime.ExecSync(api.ExecSyncRequest(container_id=ctr, cmd=["/no/such"], timeout=10),
                                            timeout=30)
        assert reply.exit_code != 0
        assert b"/no/such" in reply.stderr
    # Nothing the failed execs left behind is the daemon's to reap: a zombie in the container's pid namespace
    # would keep the container's init from finishing its exit, and the stop below would wait it out.
    time.sleep(0.05)
    zombies = [p for p in psutil.Process(env.proc.pid).children() if p.status() == psutil.STATUS_ZOMBIE]
    assert zombies == []
    started = time.monotonic()
    env.client.runtime.StopPodSandbox(api.StopPodSandboxRequest(pod_sandbox_id=pod_id), timeout=60)
    env.client.runtime.RemovePodSandbox(api.RemovePodSandboxRequest(pod_sandbox_id=pod_id), timeout=60)
    assert time.monotonic() - started < 5


def test_terminal_output_is_logged(env, handler):
    pod_id, pod = run_pod(env, handler)
    ctr = create(env, pod_id, pod, ["/bin/sh", "-c", "test -t 1 && echo on a tty"], tty=True)
    start(env, ctr)
    st = wait_exited(env, ctr)
    assert st.exit_code == 0
    assert log_text(st.log_path) == b"on a tty\r\n"  # the terminal's own \r\n


def test_spec_joins_the_pod_namespaces(env, oci_handler):
    pod_id, ctr = run_container(env, oci_handler, ["/bin/sleep", "1000"])
    spec = json.loads((env.dirs.runroot / "containers" / ctr / "config.json").read_text())
    pod_dir = env.dirs.runroot / "pods" / pod_id
    namespaces = {ns["type"]: ns.get("path") for ns in spec["linux"]["namespaces"]}
    expected = {"mount": None, "pid": None, "network": str(pod_dir / "ns" / "net"),
                "ipc": str(pod_dir / "ns" / "ipc"), "uts": str(pod_dir / "ns" / "uts")}
    if cgroups.layout().version == "v2":
        expected["cgroup"] = None  # on pure cgroup v2, a container sees only its own cgroup
    assert namespaces == expected
    assert spec["process"]["args"] == ["/bin/sleep", "1000"]
    assert "CAP_SYS_ADMIN" not in spec["process"]["capabilities"]["bounding"]
    assert "/proc/kcore" in spec["linux"]["maskedPaths"]
    # The init really is in the pod's network namespace, and a child of the pod's monitor.
    init = container_inits(env, pod_id)
    assert len(init) == 1
    monitor_pid = int((pod_dir / "monitor.pid").read_text())
    assert os.readlink(f"/proc/{init[0].pid}/ns/net") == os.readlink(f"/proc/{monitor_pid}/ns/net")


def test_pod_removal_leaves_nothing(env, handler):
    pod_id, ctr = run_container(env, handler, ["/bin/sleep", "1000"])
    sleepers = container_inits(env, pod_id)
    assert len(sleepers) == 1
    init = sleepers[0]
    own = cgroups.cgroups_of(init.pid)
    paths = [own["memory"], own["pids"]]
    assert all(ctr in path for path in paths), own
    rootfs = str(env.dirs.runroot / "containers" / ctr / "rootfs")
    mounted = any(line.split()[4] == rootfs for line in Path("/proc/self/mountinfo").read_text().splitlines())
    assert mounted == (handler != "native")  # only oci handlers mount the rootfs on the host
    state_dir = env.dirs.runroot / "runtimes" / handler
    if handler != "native":
        assert (state_dir / ctr).exists()

    env.client.runtime.StopPodSandbox(api.StopPodSandboxRequest(pod_sandbox_id=pod_id), timeout=60)
    env.client.runtime.RemovePodSandbox(api.RemovePodSandboxRequest(pod_sandbox_id=pod_id), timeout=60)

    assert not init.is_running()
    mountinfo = Path("/proc/self/mountinfo").read_text()
    assert ctr not in mountinfo and pod_id not in mountinfo
    for root in cgroups.hierarchy_roots():  # every hierarchy: runtimes create the path in all of them
        for relative in paths:
            for path in (relative, os.path.dirname(relative)):  # the container's and the pod's cgroup
                assert not os.path.exists(f"{root}{path}"), (root, path)
    if state_dir.exists():
        assert ctr not in os.listdir(state_dir)
    assert not (env.dirs.runroot / "containers" / ctr).exists()


def test_unknown_handler_names_the_configured_ones(env):
    with pytest.raises(grpc.RpcError) as info:
        run_pod(env, "nope")
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    message = info.value.details()
    assert "'nope'" in message and all(name in message for name in ("native", "runc", "crun"))


def test_runtime_failure_comes_back_with_its_stderr(env):
    """A command that does not exist: runc's own complaint reaches the CRI error."""
    pod_id, pod = run_pod(env, "runc")
    ctr = None
    with pytest.raises(grpc.RpcError) as info:
        ctr = create(env, pod_id, pod, ["/nonexistent-command"])
        start(env, ctr)
    assert "nonexistent-command" in info.value.details()
    assert "runc" in info.value.details()
    if ctr is None:
        assert not list((env.dirs.runroot / "runtimes" / "runc").glob("*"))


def test_removal_after_the_monitor_was_killed_cleans_the_runtime_state(env, oci_handler):
    pod_id, ctr = run_container(env, oci_handler, ["/bin/sleep", "1000"])
    init = container_inits(env, pod_id)[0]
    monitor = psutil.Process(int((env.dirs.runroot / "pods" / pod_id / "monitor.pid").read_text()))
    monitor.kill()
    state_dir = env.dirs.runroot / "runtimes" / oci_handler
    assert (state_dir / ctr).exists()

    env.client.runtime.StopPodSandbox(api.StopPodSandboxRequest(pod_sandbox_id=pod_id), timeout=60)
    env.client.runtime.RemovePodSandbox(api.RemovePodSandboxRequest(pod_sandbox_id=pod_id), timeout=60)

    assert not (state_dir / ctr).exists()
    deadline = time.monotonic() + 5
    while not dead(init):
        assert time.monotonic() < deadline, "the container init outlived its removal"
        time.sleep(0.05)
    assert ctr not in Path("/proc/self/mountinfo").read_text()


# A bystander (sleep) and an allocator (tail keeps one endless line of /dev/zero) under the shell, the
# container's init; the allocator starts once the test has found the others, through a FIFO.
OOM_SCRIPT = "mkfifo /go; sleep 1000 & read x < /go; tail /dev/zero; echo allocator gone; wait"
OOM_LIMIT = 32 << 20


def _oom_container(d: Daemon, handler: str,
                   unified: dict[str, str]) -> tuple[str, str, psutil.Process, psutil.Process]:
    """A started OOM_SCRIPT container with a memory limit: (pod id, container id, its shell, its sleep)."""
    pod_id, pod = run_pod(d, handler)
    config = api.ContainerConfig(metadata=api.ContainerMetadata(name=f"c{next(_numbers)}"),
                                 image=api.ImageSpec(image=d.image), command=["/bin/sh", "-c", OOM_SCRIPT],
                                 log_path="ctr.log")
    config.linux.resources.memory_limit_in_bytes = OOM_LIMIT
    config.linux.resources.unified.update(unified)
    request = api.CreateContainerRequest(pod_sandbox_id=pod_id, config=config, sandbox_config=pod)
    ctr = d.client.runtime.CreateContainer(request, timeout=30).container_id
    start(d, ctr)
    [sleeper] = container_inits(d, pod_id, "sleep")
    [shell] = container_inits(d, pod_id, "sh")
    return pod_id, ctr, shell, sleeper


def _release_the_allocator(d: Daemon, ctr: str) -> None:
    reply = d.client.runtime.ExecSync(api.ExecSyncRequest(container_id=ctr, cmd=["/bin/sh", "-c", "echo > /go"],
                                                          timeout=30), timeout=60)
    assert reply.exit_code == 0, reply.stderr


def _cgroup_of(d: Daemon, ctr: str) -> str:
    response = d.client.runtime.ContainerStatus(api.ContainerStatusRequest(container_id=ctr, verbose=True), timeout=10)
    return json.loads(response.info["info"])["cgroup"]


def _oom_kills(directory: Path) -> int:
    """The oom_kill counter of a memory cgroup (v2 memory.events counts its descendants' too)."""
    name = "memory.events" if cgroups.is_v2("memory") else "memory.oom_control"
    return parse_oom_kill_count((directory / name).read_bytes())


def test_memory_oom_group_kills_the_whole_container(env, handler):
    """The kubelet (1.32+, singleProcessOOMKill false, the default on cgroup v2) sends
    unified memory.oom.group=1: one process past the limit takes all of the container with it,
    the init included, and the container is OOMKilled, whichever runtime runs it."""
    if not cgroups.is_v2("memory"):
        pytest.skip(f"cgroup v2 only: memory.oom.group is a cgroup v2 file (this host is {cgroups.layout().version})")
    pod_id, ctr, shell, sleeper = _oom_container(env, handler, {"memory.oom.group": "1"})
    container_dir = cgroups.cgroup_dir(_cgroup_of(env, ctr), "memory")
    assert (container_dir / "memory.oom.group").read_text().strip() == "1"
    pod_dir = container_dir.parent
    before = _oom_kills(pod_dir)

    _release_the_allocator(env, ctr)
    st = wait_exited(env, ctr, timeout=60)
    assert (st.reason, st.exit_code) == ("OOMKilled", 128 + 9)
    assert dead(shell) and dead(sleeper)
    assert b"allocator gone" not in log_text(st.log_path)  # the shell died with its child, not after it
    # Three processes killed: the allocator, the bystander and the shell (memory.events counts each).
    assert _oom_kills(pod_dir) - before >= 3


@pytest.mark.parametrize("handler", ["native"], indirect=True)
def test_without_memory_oom_group_only_the_allocator_dies(env, handler):
    """What the test above rules out: without memory.oom.group the kernel kills one process, the
    largest, and the container goes on."""
    _, ctr, shell, sleeper = _oom_container(env, handler, {})
    container_dir = cgroups.cgroup_dir(_cgroup_of(env, ctr), "memory")
    _release_the_allocator(env, ctr)
    log_path = status(env, ctr).log_path
    wait_for(lambda: b"allocator gone" in log_text(log_path), timeout=60, what="the shell to see its child killed")
    assert status(env, ctr).state == api.ContainerState.CONTAINER_RUNNING
    assert not dead(shell) and not dead(sleeper)
    assert _oom_kills(container_dir) == 1


# A runtime that logs as runc does: to the file of its --log option, else to its stderr, which during
# `create` is the container's. It refuses a bundle that asks it to, after logging why.
CHATTY_RUNTIME = """#!/bin/sh
log= bundle= previous=
for arg in "$@"; do
    case "$previous" in --log) log=$arg ;; --bundle) bundle=$arg ;; esac
    previous=$arg
done
if [ -n "$bundle" ]; then
    line='level=warning msg="a warning of the runtime itself"'
    if [ -n "$log" ]; then echo "$line" >> "$log"; else echo "$line" >&2; fi
    if grep -q refuse-this-bundle "$bundle/config.json"; then
        line='level=error msg="the runtime refused the bundle"'
        if [ -n "$log" ]; then echo "$line" >> "$log"; else echo "$line" >&2; fi
        exit 1
    fi
fi
exec {runc} "$@"
"""


@pytest.fixture(scope="module")
def chatty(registry, busybox_image, tmp_path_factory):
    """A daemon with the "chatty" handler: runc behind CHATTY_RUNTIME."""
    if problem := runc_problem():
        pytest.skip(problem)
    wrapper = tmp_path_factory.mktemp("chatty") / "chatty-runtime"
    wrapper.write_text(CHATTY_RUNTIME.format(runc=RUNC))
    wrapper.chmod(0o755)
    with daemon_with_busybox(registry, busybox_image, tmp_path_factory.mktemp("regconf"),
                             "--runtimes", f"chatty:{wrapper}") as d:
        yield d


def test_the_runtimes_own_log_stays_out_of_the_container_log(chatty):
    _, ctr = run_container(chatty, "chatty", ["/bin/sh", "-c", "echo out; echo err >&2"])
    st = wait_exited(chatty, ctr)
    assert (st.exit_code, st.reason) == (0, "Completed")
    assert sorted(log_records(st.log_path)) == [("stderr", "F", b"err"), ("stdout", "F", b"out")]


def test_a_runtime_failure_comes_back_with_its_log(chatty):
    pod_id, pod = run_pod(chatty, "chatty")
    with pytest.raises(grpc.RpcError) as info:  # at create, or at start where the runtime's create waits for it
        start(chatty, create(chatty, pod_id, pod, ["/bin/echo", "refuse-this-bundle"]))
    assert "the runtime refused the bundle" in info.value.details()
