"""Pid namespace modes through the daemon's CRI socket: POD (shareProcessNamespace, the pod monitor's init
as pid 1, no pause container), TARGET (joining another container's), CONTAINER, on the native handler and
on runc/crun.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from pathlib import Path

import grpc
import psutil
import pytest

from crio_fast.api import api_pb2 as api
from tests.support.daemon import Daemon
from tests.support.oci_runtimes import configure_oci_runtimes, crun_problem, runc_problem
from tests.support.pods import daemon_with_busybox, exec_sync, remove_all_pods, status, wait_for_command

pytestmark = pytest.mark.integration

POD_INIT_CMDLINE = b"crio-fast-pod-init\0"
_numbers = iter(range(1_000_000))


@pytest.fixture(scope="module")
def env(registry, busybox_image, tmp_path_factory):
    configure = None if runc_problem() else configure_oci_runtimes
    with daemon_with_busybox(registry, busybox_image, tmp_path_factory.mktemp("regconf"),
                             configure=configure) as d:
        d.has_runc = configure is not None
        yield d


@pytest.fixture(params=["native", "runc", "crun"])
def handler(request, env):
    if request.param != "native" and not env.has_runc:
        pytest.skip(runc_problem())
    if request.param == "crun" and (problem := crun_problem()):
        pytest.skip(problem)
    try:
        yield request.param
    finally:
        remove_all_pods(env)


def run_pod(d: Daemon, pid_mode: int | None, handler: str = "native") -> tuple[str, api.PodSandboxConfig]:
    n = next(_numbers)
    config = api.PodSandboxConfig(
        metadata=api.PodSandboxMetadata(name=f"ppod{n}", namespace="pidns", uid=f"puid-{n}", attempt=0),
        hostname=f"ppod{n}", log_directory=str(d.dirs.log_dir / f"ppod{n}"),
    )
    if pid_mode is not None:
        config.linux.security_context.namespace_options.pid = pid_mode
    request = api.RunPodSandboxRequest(config=config, runtime_handler="" if handler == "native" else handler)
    return d.client.runtime.RunPodSandbox(request, timeout=30).pod_sandbox_id, config


def create(d: Daemon, pod_id: str, pod: api.PodSandboxConfig, command: list[str], pid_mode: int,
           target_id: str = "") -> str:
    config = api.ContainerConfig(metadata=api.ContainerMetadata(name=f"c{next(_numbers)}"),
                                 image=api.ImageSpec(image=d.image), command=command, log_path="ctr.log")
    config.linux.security_context.namespace_options.pid = pid_mode
    config.linux.security_context.namespace_options.target_id = target_id
    request = api.CreateContainerRequest(pod_sandbox_id=pod_id, config=config, sandbox_config=pod)
    return d.client.runtime.CreateContainer(request, timeout=30).container_id


def run(d: Daemon, pod_id: str, pod: api.PodSandboxConfig, command: list[str], pid_mode: int,
        target_id: str = "") -> str:
    ctr = create(d, pod_id, pod, command, pid_mode, target_id)
    d.client.runtime.StartContainer(api.StartContainerRequest(container_id=ctr), timeout=30)
    wait_for_command(d, ctr, command)
    return ctr


def sh(d: Daemon, ctr: str, script: str) -> str:
    r = exec_sync(d, ctr, ["/bin/sh", "-c", script])
    assert r.exit_code == 0, r.stderr
    return r.stdout.decode()


def monitor_pid(d: Daemon, pod_id: str) -> int:
    return int((d.dirs.runroot / "pods" / pod_id / "monitor.pid").read_text())


def pod_init(d: Daemon, pod_id: str) -> psutil.Process:
    inits = [p for p in psutil.Process(monitor_pid(d, pod_id)).children()
             if Path(f"/proc/{p.pid}/cmdline").read_bytes() == POD_INIT_CMDLINE]
    assert len(inits) == 1, inits
    return inits[0]


def pod_status_pid_mode(d: Daemon, pod_id: str) -> int:
    request = api.PodSandboxStatusRequest(pod_sandbox_id=pod_id)
    return d.client.runtime.PodSandboxStatus(request, timeout=10).status.linux.namespaces.options.pid


def test_pod_mode_shares_one_namespace_whose_pid_1_is_the_pod_init(cri, handler):
    pod_id, pod = run_pod(cri, api.NamespaceMode.POD, handler)
    assert pod_status_pid_mode(cri, pod_id) == api.NamespaceMode.POD
    init = pod_init(cri, pod_id)
    pod_dir = cri.dirs.runroot / "pods" / pod_id
    assert os.stat(pod_dir / "ns" / "pid").st_ino == os.stat(f"/proc/{init.pid}/ns/pid").st_ino

    first = run(cri, pod_id, pod, ["/bin/sleep", "1001"], api.NamespaceMode.POD)
    second = run(cri, pod_id, pod, ["/bin/sleep", "1002"], api.NamespaceMode.POD)
    # What critest "runtime should support PodPID" checks: pid 1 is not the container's command.
    assert sh(cri, first, "cat /proc/1/cmdline").encode() == POD_INIT_CMDLINE
    # Each container sees the other's process.
    for ctr, other in ((first, "1002"), (second, "1001")):
        assert f"sleep {other}" in sh(cri, ctr, "cat /proc/[0-9]*/cmdline | tr '\\0' ' '; echo")
    if handler == "native":
        # The pod's own namespace, not the host's and not one per container.
        assert len({os.readlink(f"/proc/{p.pid}/ns/pid") for p in init.children()} | {
            os.readlink(f"/proc/{init.pid}/ns/pid")}) == 1
    assert os.readlink(f"/proc/{init.pid}/ns/pid") != os.readlink("/proc/self/ns/pid")


def test_pod_init_reaps_orphans(cri):
    pod_id, pod = run_pod(cri, api.NamespaceMode.POD)
    ctr = run(cri, pod_id, pod, ["/bin/sh", "-c", "while true; do (sleep 0.05 &); sleep 0.1; done"],
              api.NamespaceMode.POD)
    # Each backgrounded sleep is orphaned at once (its subshell exits) and re-parented to the pod init.
    time.sleep(0.8)
    init = pod_init(cri, pod_id)

    def zombies() -> set[tuple[str, int]]:
        """Zombie pids inside (ps) and among the init's children; one that exited a moment ago is
        one, until the init reaps it: only those still there a little later count."""
        listing = sh(cri, ctr, "ps -o pid,ppid,stat,comm")
        found = {("inside", int(r[0])) for r in (line.split() for line in listing.splitlines()[1:])
                 if r[2].startswith("Z")}
        for child in init.children():
            with contextlib.suppress(psutil.NoSuchProcess):
                if child.status() == psutil.STATUS_ZOMBIE:
                    found.add(("host", child.pid))
        return found

    first = zombies()
    time.sleep(0.3)
    assert not first & zombies(), "zombies the pod init did not reap"


def test_stop_and_remove_of_a_pod_mode_pod_leave_nothing(cri):
    pod_id, pod = run_pod(cri, api.NamespaceMode.POD)
    ctr = run(cri, pod_id, pod, ["/bin/sleep", "1000"], api.NamespaceMode.POD)
    init = pod_init(cri, pod_id)
    monitor = psutil.Process(monitor_pid(cri, pod_id))
    pod_dir = cri.dirs.runroot / "pods" / pod_id
    assert str(pod_dir / "ns" / "pid") in Path("/proc/self/mountinfo").read_text()
    cri.client.runtime.StopPodSandbox(api.StopPodSandboxRequest(pod_sandbox_id=pod_id), timeout=30)
    assert status(cri, ctr).state == api.ContainerState.CONTAINER_EXITED
    assert not init.is_running() or init.status() == psutil.STATUS_ZOMBIE
    assert str(pod_dir) not in Path("/proc/self/mountinfo").read_text()
    cri.client.runtime.RemovePodSandbox(api.RemovePodSandboxRequest(pod_sandbox_id=pod_id), timeout=30)
    assert not monitor.is_running() or monitor.status() == psutil.STATUS_ZOMBIE
    assert not pod_dir.exists()


def test_container_mode_keeps_a_namespace_per_container(cri):
    pod_id, pod = run_pod(cri, api.NamespaceMode.CONTAINER)
    assert pod_status_pid_mode(cri, pod_id) == api.NamespaceMode.CONTAINER
    assert not (cri.dirs.runroot / "pods" / pod_id / "ns" / "pid").exists()
    ctr = run(cri, pod_id, pod, ["/bin/sleep", "1000"], api.NamespaceMode.CONTAINER)
    assert sh(cri, ctr, "cat /proc/1/cmdline | tr '\\0' ' '").strip() == "/bin/sleep 1000"


def test_configs_without_namespace_options_share_the_pods_namespace(cri):
    # POD is proto3's zero value: a pod and a container that say nothing (crictl's and critest's
    # configs; the kubelet always says) get the pod's pid namespace, as with containerd and CRI-O.
    # So the container's command is not pid 1, and SIGTERM stops it (pid 1 would ignore it).
    pod_id, pod = run_pod(cri, None)
    assert not pod.linux.security_context.HasField("namespace_options")
    assert pod_status_pid_mode(cri, pod_id) == api.NamespaceMode.POD
    assert (cri.dirs.runroot / "pods" / pod_id / "ns" / "pid").exists()
    config = api.ContainerConfig(metadata=api.ContainerMetadata(name="plain"), image=api.ImageSpec(image=cri.image),
                                 command=["/bin/sleep", "1000"], log_path="plain.log")
    ctr = cri.client.runtime.CreateContainer(
        api.CreateContainerRequest(pod_sandbox_id=pod_id, config=config, sandbox_config=pod), timeout=30).container_id
    cri.client.runtime.StartContainer(api.StartContainerRequest(container_id=ctr), timeout=30)
    assert sh(cri, ctr, "cat /proc/1/cmdline").encode() == POD_INIT_CMDLINE
    started = time.monotonic()
    cri.client.runtime.StopContainer(api.StopContainerRequest(container_id=ctr, timeout=30), timeout=60)
    assert time.monotonic() - started < 10  # SIGTERM, not the 30 s timeout and SIGKILL
    st = cri.client.runtime.ContainerStatus(api.ContainerStatusRequest(container_id=ctr), timeout=30).status
    assert (st.state, st.exit_code) == (api.ContainerState.CONTAINER_EXITED, 128 + 15)


def test_target_mode_joins_the_target_containers_namespace(cri, handler):
    pod_id, pod = run_pod(cri, api.NamespaceMode.CONTAINER, handler)
    target = run(cri, pod_id, pod, ["/bin/sleep", "1003"], api.NamespaceMode.CONTAINER)
    debug = run(cri, pod_id, pod, ["/bin/sleep", "1004"], api.NamespaceMode.TARGET, target_id=target)
    assert sh(cri, debug, "cat /proc/1/cmdline | tr '\\0' ' '").strip() == "/bin/sleep 1003"
    assert "sleep 1004" in sh(cri, target, "cat /proc/[0-9]*/cmdline | tr '\\0' ' '; echo")
    if handler != "native":
        spec = json.loads((cri.dirs.runroot / "containers" / debug / "config.json").read_text())
        (pid_ns,) = [ns for ns in spec["linux"]["namespaces"] if ns["type"] == "pid"]
        assert pid_ns["path"].startswith("/proc/") and pid_ns["path"].endswith("/ns/pid")


def test_target_mode_errors(cri):
    pod_id, pod = run_pod(cri, api.NamespaceMode.CONTAINER)
    other_pod_id, other_pod = run_pod(cri, api.NamespaceMode.CONTAINER)
    elsewhere = run(cri, other_pod_id, other_pod, ["/bin/sleep", "1000"], api.NamespaceMode.CONTAINER)
    created = create(cri, pod_id, pod, ["/bin/sleep", "1000"], api.NamespaceMode.CONTAINER)
    cases = [
        ("", grpc.StatusCode.INVALID_ARGUMENT, "target_id"),
        ("no-such-container", grpc.StatusCode.NOT_FOUND, "not found"),
        (elsewhere, grpc.StatusCode.INVALID_ARGUMENT, "another pod"),
        (created, grpc.StatusCode.FAILED_PRECONDITION, "not running"),
    ]
    for target_id, code, text in cases:
        with pytest.raises(grpc.RpcError) as info:
            create(cri, pod_id, pod, ["/bin/true"], api.NamespaceMode.TARGET, target_id=target_id)
        assert info.value.code() == code, (target_id, info.value.details())
        assert text in info.value.details(), (target_id, info.value.details())


def test_killed_monitor_takes_its_pod_init_and_the_namespace_along(cri):
    """The pod init dies with its monitor (and with it every process of the pod's namespace); the daemon, a
    child subreaper, reaps it with the monitor when the pod is stopped: no zombie is left."""
    import signal

    pod_id, pod = run_pod(cri, api.NamespaceMode.POD)
    ctr = run(cri, pod_id, pod, ["/bin/sleep", "1000"], api.NamespaceMode.POD)
    init = pod_init(cri, pod_id)
    os.kill(monitor_pid(cri, pod_id), signal.SIGKILL)
    # The init dies at once but, as its namespace's init, waits for every process of the namespace to be
    # reaped: the container's init, re-parented to the daemon, is reaped when the pod is stopped.
    cri.client.runtime.StopPodSandbox(api.StopPodSandboxRequest(pod_sandbox_id=pod_id), timeout=30)
    assert status(cri, ctr).state == api.ContainerState.CONTAINER_EXITED
    cri.client.runtime.RemovePodSandbox(api.RemovePodSandboxRequest(pod_sandbox_id=pod_id), timeout=30)
    assert not psutil.pid_exists(init.pid)
    zombies = [c.pid for c in psutil.Process(cri.proc.pid).children() if c.status() == psutil.STATUS_ZOMBIE]
    assert zombies == []
