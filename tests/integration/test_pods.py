"""Pods and containers on the native runtime, through the daemon's CRI socket."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import grpc
import psutil
import pytest

from crio_fast.api import api_pb2 as api
from tests.support import cgroups
from tests.support.daemon import Daemon, make_dirs, remove_dirs
from tests.support.registries_conf import write_registries_conf
from tests.support.network import mounts_outside_pool
from tests.support.images import LayerBuilder
from tests.support.pods import (daemon_with_busybox, kubelet_pod_linux, log_records, remove_all_pods, status,
                                 wait_exited, wait_for_command)
from tests.support.timing import command_limit, scaled

pytestmark = pytest.mark.integration

@pytest.fixture(scope="module")
def env(registry, busybox_image, tmp_path_factory):
    """One daemon for the module with busybox pulled; every pod removed after each test."""
    with daemon_with_busybox(registry, busybox_image, tmp_path_factory.mktemp("regconf")) as d:
        yield d


_counter = iter(range(1_000_000))


def pod_config(d: Daemon, **kw) -> api.PodSandboxConfig:
    n = next(_counter)
    config = api.PodSandboxConfig(
        metadata=api.PodSandboxMetadata(name=f"pod{n}", namespace="test", uid=f"uid-{n}", attempt=0),
        hostname=kw.pop("hostname", f"pod{n}"),
        log_directory=str(d.dirs.log_dir / f"pod{n}"),
        labels=kw.pop("labels", {}),
        linux=kubelet_pod_linux(),
    )
    network = kw.pop("host_network", False)
    if network:
        config.linux.security_context.namespace_options.network = api.NamespaceMode.NODE
    return config


def run_pod(d: Daemon, **kw) -> tuple[str, api.PodSandboxConfig]:
    config = pod_config(d, **kw)
    pod_id = d.client.runtime.RunPodSandbox(api.RunPodSandboxRequest(config=config), timeout=30).pod_sandbox_id
    return pod_id, config


def create(d: Daemon, pod_id: str, pod: api.PodSandboxConfig, command: list[str], **kw) -> str:
    config = api.ContainerConfig(
        metadata=api.ContainerMetadata(name=kw.pop("name", f"c{next(_counter)}")),
        image=api.ImageSpec(image=kw.pop("image", d.image)),
        command=command,
        log_path=kw.pop("log_path", "ctr.log"),
        working_dir=kw.pop("working_dir", ""),
        envs=[api.KeyValue(key=k, value=v.encode()) for k, v in kw.pop("env", {}).items()],
        mounts=kw.pop("mounts", []),
    )
    resources = kw.pop("resources", None)
    if resources is not None:
        config.linux.resources.CopyFrom(resources)
    if kw.pop("readonly_rootfs", False):
        config.linux.security_context.readonly_rootfs = True
    assert not kw, kw
    req = api.CreateContainerRequest(pod_sandbox_id=pod_id, config=config, sandbox_config=pod)
    return d.client.runtime.CreateContainer(req, timeout=30).container_id


def start(d: Daemon, ctr: str) -> None:
    d.client.runtime.StartContainer(api.StartContainerRequest(container_id=ctr), timeout=30)






def exec_sync(d: Daemon, ctr: str, cmd: list[str], timeout: int | None = None) -> api.ExecSyncResponse:
    timeout = command_limit(timeout, 10)
    return d.client.runtime.ExecSync(api.ExecSyncRequest(container_id=ctr, cmd=cmd, timeout=timeout), timeout=timeout + 10)




def run_to_exit(d: Daemon, command: list[str], **kw) -> tuple[api.ContainerStatus, str]:
    pod_id, pod = run_pod(d)
    ctr = create(d, pod_id, pod, command, **kw)
    start(d, ctr)
    return wait_exited(d, ctr), ctr


def test_lifecycle_logs_and_listing(cri):
    pod_id, pod = run_pod(cri, labels={"app": "web"})
    ctr = create(cri, pod_id, pod, ["/bin/sh", "-c", "echo out; echo err >&2; exec sleep 1000"], name="main")
    st = status(cri, ctr)
    assert st.state == api.ContainerState.CONTAINER_CREATED
    start(cri, ctr)
    st = status(cri, ctr)
    assert st.state == api.ContainerState.CONTAINER_RUNNING
    assert st.started_at >= st.created_at > 0
    assert st.metadata.name == "main"
    assert st.log_path == os.path.join(pod.log_directory, "ctr.log")
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and len(Path(st.log_path).read_bytes().splitlines()) < 2:
        time.sleep(0.05)
    assert sorted(log_records(st.log_path)) == [("stderr", "F", b"err"), ("stdout", "F", b"out")]

    pods = cri.client.runtime.ListPodSandbox(api.ListPodSandboxRequest(), timeout=10).items
    assert [p.id for p in pods] == [pod_id]
    flt = api.PodSandboxFilter(label_selector={"app": "db"})
    assert not cri.client.runtime.ListPodSandbox(api.ListPodSandboxRequest(filter=flt), timeout=10).items
    running = api.ContainerFilter(state=api.ContainerStateValue(state=api.ContainerState.CONTAINER_RUNNING))
    listed = cri.client.runtime.ListContainers(api.ListContainersRequest(filter=running), timeout=10).containers
    assert [c.id for c in listed] == [ctr]
    assert listed[0].pod_sandbox_id == pod_id

    pst = cri.client.runtime.PodSandboxStatus(api.PodSandboxStatusRequest(pod_sandbox_id=pod_id), timeout=10).status
    assert pst.state == api.PodSandboxState.SANDBOX_READY
    assert pst.metadata.name == pod.metadata.name and pst.labels["app"] == "web"

    # sleep is PID 1 of its namespace: the kernel drops SIGTERM for it, so the
    # stop escalates to SIGKILL after the timeout.
    cri.client.runtime.StopContainer(api.StopContainerRequest(container_id=ctr, timeout=1), timeout=30)
    st = status(cri, ctr)
    assert st.state == api.ContainerState.CONTAINER_EXITED
    assert st.exit_code == 128 + signal.SIGKILL


def test_exit_codes_and_reasons(cri):
    st, _ = run_to_exit(cri, ["/bin/sh", "-c", "exit 3"])
    assert (st.exit_code, st.reason) == (3, "Error")
    assert st.finished_at >= st.started_at
    st, _ = run_to_exit(cri, ["/bin/true"])
    assert (st.exit_code, st.reason) == (0, "Completed")


def test_memory_limit_oom_killed(cri):
    resources = api.LinuxContainerResources(memory_limit_in_bytes=32 * 1024 * 1024)
    # busybox tail keeps a line that never ends: it grows until the limit kills it.
    st, _ = run_to_exit(cri, ["/bin/tail", "/dev/zero"], resources=resources)
    assert st.reason == "OOMKilled"
    assert st.exit_code == 128 + signal.SIGKILL


def test_namespaces_are_the_pods(cri):
    pod_id, pod = run_pod(cri, hostname="my-pod")
    ctr = create(cri, pod_id, pod, ["/bin/sleep", "1000"])
    start(cri, ctr)
    wait_for_command(cri, ctr, ["/bin/sleep", "1000"])
    hostname, pid1 = exec_sync(cri, ctr, ["/bin/sh", "-c", "hostname; cat /proc/1/cmdline | tr '\\0' ' '"]
                               ).stdout.decode().splitlines()
    assert hostname == "my-pod"
    assert pid1.strip() == "/bin/sleep 1000"  # its own PID namespace: sleep is PID 1
    info = cri.client.runtime.ContainerStatus(api.ContainerStatusRequest(container_id=ctr, verbose=True), timeout=5).info
    pid = json.loads(info["info"])["pid"]
    for ns in ("net", "ipc", "uts", "pid", "mnt"):
        assert os.readlink(f"/proc/{pid}/ns/{ns}") != os.readlink(f"/proc/self/ns/{ns}"), ns
    # Two containers of one pod share its network, IPC and UTS namespaces.
    other = create(cri, pod_id, pod, ["/bin/sleep", "1000"])
    start(cri, other)
    r = exec_sync(cri, other, ["/bin/hostname"])
    assert r.stdout.decode().strip() == "my-pod"
    # The pod's files are bound onto /etc paths a layer of the daemon's provides: nothing of /etc is
    # copied up into the container's writable layer for them (the busybox image has none of the three).
    r = exec_sync(cri, other, ["/bin/cat", "/etc/hostname", "/etc/hosts", "/etc/resolv.conf"])
    assert r.exit_code == 0 and r.stdout.decode().startswith("my-pod\n")
    assert not (cri.dirs.root / "containers" / other / "upper" / "etc").exists()


def test_host_network_pod_sees_node(cri):
    pod_id, pod = run_pod(cri, host_network=True)
    ctr = create(cri, pod_id, pod, ["/bin/sleep", "1000"])
    start(cri, ctr)
    r = exec_sync(cri, ctr, ["/bin/sh", "-c", "readlink /proc/self/ns/net; hostname"])
    net, hostname = r.stdout.decode().split()
    assert net == os.readlink("/proc/self/ns/net")
    assert hostname == os.uname().nodename


def test_env_workdir_and_bind_mounts(cri, tmp_path):
    host = tmp_path / "shared"
    host.mkdir()
    (host / "in.txt").write_text("from host\n")
    ro = api.Mount(container_path="/ro", host_path=str(host), readonly=True)
    rw = api.Mount(container_path="/rw", host_path=str(host))
    pod_id, pod = run_pod(cri)
    ctr = create(cri, pod_id, pod, ["/bin/sleep", "1000"], env={"GREETING": "hi"}, working_dir="/tmp", mounts=[ro, rw])
    start(cri, ctr)
    r = exec_sync(cri, ctr, ["/bin/sh", "-c", "echo $GREETING; pwd; cat /ro/in.txt; echo x > /ro/no 2>/dev/null || echo ro-refused; echo y > /rw/out.txt"])
    assert r.stdout.decode().split("\n")[:4] == ["hi", "/tmp", "from host", "ro-refused"]
    assert (host / "out.txt").read_text() == "y\n"
    assert not (host / "no").exists()
    mounts = {m.container_path: m.readonly for m in status(cri, ctr).mounts}
    assert mounts == {"/ro": True, "/rw": False}


def _mount_points_under(path: Path) -> list[str]:
    with open("/proc/self/mountinfo") as f:
        return [line.split()[4] for line in f if line.split()[4].startswith(str(path))]


@pytest.mark.parametrize("propagation", ["bidirectional", "host_to_container", "private"])
def test_mount_propagation(cri, tmp_path, propagation):
    """A mount made on the host under the volume shows up in the container unless private;
    one made in the container shows up on the host only when bidirectional."""
    source = tmp_path / "vol"
    (source / "from-host").mkdir(parents=True)
    (source / "from-ctr").mkdir()
    (tmp_path / "flag").mkdir()
    (tmp_path / "flag" / "flagfile").write_text("x")
    mode = {"bidirectional": api.MountPropagation.PROPAGATION_BIDIRECTIONAL,
            "host_to_container": api.MountPropagation.PROPAGATION_HOST_TO_CONTAINER,
            "private": api.MountPropagation.PROPAGATION_PRIVATE}[propagation]
    subprocess.run(["mount", "--bind", str(source), str(source)], check=True)
    try:
        subprocess.run(["mount", "--make-rshared", str(source)], check=True)
        pod_id, pod = run_pod(cri)
        config = api.ContainerConfig(
            metadata=api.ContainerMetadata(name="propagation"), image=api.ImageSpec(image=cri.image),
            command=["/bin/sleep", "1000"],
            mounts=[api.Mount(container_path="/vol", host_path=str(source), propagation=mode)])
        config.linux.security_context.privileged = True  # to mount inside, as critest's propagation tests do
        ctr = cri.client.runtime.CreateContainer(
            api.CreateContainerRequest(pod_sandbox_id=pod_id, config=config, sandbox_config=pod), timeout=30).container_id
        start(cri, ctr)
        subprocess.run(["mount", "--bind", str(tmp_path / "flag"), str(source / "from-host")], check=True)
        seen = exec_sync(cri, ctr, ["/bin/ls", "/vol/from-host"]).stdout
        assert (seen == b"flagfile\n") == (propagation != "private"), seen
        mounted = exec_sync(cri, ctr, ["/bin/mount", "-t", "tmpfs", "ctr-tmpfs", "/vol/from-ctr"])
        assert mounted.exit_code == 0, mounted.stderr
        on_host = str(source / "from-ctr") in _mount_points_under(source)
        assert on_host == (propagation == "bidirectional")
        cri.client.runtime.StopPodSandbox(api.StopPodSandboxRequest(pod_sandbox_id=pod_id), timeout=30)
        cri.client.runtime.RemovePodSandbox(api.RemovePodSandboxRequest(pod_sandbox_id=pod_id), timeout=30)
    finally:
        for point in sorted(_mount_points_under(source), key=len, reverse=True):
            subprocess.run(["umount", "-l", point], check=False)


def test_readonly_rootfs(cri):
    st, ctr = run_to_exit(cri, ["/bin/sh", "-c", "echo x > /newfile"], readonly_rootfs=True)
    assert st.exit_code != 0
    assert b"Read-only file system" in Path(st.log_path).read_bytes()


def test_stop_grace_period(cri):
    pod_id, pod = run_pod(cri)
    polite = create(cri, pod_id, pod, ["/bin/sh", "-c", "trap 'exit 0' TERM; while true; do sleep 0.1; done"])
    stubborn = create(cri, pod_id, pod, ["/bin/sh", "-c", "trap '' TERM; while true; do sleep 0.1; done"])
    start(cri, polite)
    start(cri, stubborn)
    time.sleep(0.3)  # let the shells install their traps
    t0 = time.monotonic()
    cri.client.runtime.StopContainer(api.StopContainerRequest(container_id=polite, timeout=10), timeout=30)
    assert time.monotonic() - t0 < 5
    assert status(cri, polite).exit_code == 0
    t0 = time.monotonic()
    cri.client.runtime.StopContainer(api.StopContainerRequest(container_id=stubborn, timeout=1), timeout=30)
    elapsed = time.monotonic() - t0
    assert 0.9 < elapsed < 8
    assert status(cri, stubborn).exit_code == 128 + signal.SIGKILL


def test_a_stop_waiting_out_its_grace_period_holds_up_no_other_call(cri):
    """Each call has its own server thread: a StopContainer sitting out a 4 s grace period leaves
    status calls and a whole pod start-up to go ahead meanwhile."""
    pod_id, pod = run_pod(cri)
    stubborn = create(cri, pod_id, pod, ["/bin/sh", "-c", "trap '' TERM; while true; do sleep 0.1; done"])
    start(cri, stubborn)
    time.sleep(0.3)  # let the shell install its trap
    rt = cri.client.runtime
    stop = rt.StopContainer.future(api.StopContainerRequest(container_id=stubborn, timeout=4), timeout=30)
    time.sleep(0.5)
    t0 = time.monotonic()
    rt.Version(api.VersionRequest(), timeout=10)
    assert stubborn in [c.id for c in rt.ListContainers(api.ListContainersRequest(), timeout=10).containers]
    other_pod, other = run_pod(cri)
    started = create(cri, other_pod, other, ["/bin/sleep", "60"])
    start(cri, started)
    assert status(cri, started).state == api.ContainerState.CONTAINER_RUNNING
    elapsed = time.monotonic() - t0
    assert not stop.done(), "the stop should still be waiting for its grace period"
    assert elapsed < 2.5
    stop.result()
    assert status(cri, stubborn).exit_code == 128 + signal.SIGKILL


def test_long_line_is_split_into_partial_records(cri):
    st, _ = run_to_exit(cri, ["/bin/sh", "-c", "head -c 100000 /dev/zero | tr '\\0' a"])
    records = log_records(st.log_path)
    assert len(records) > 1
    assert all(stream == "stdout" for stream, _, _ in records)
    assert all(tag == "P" for _, tag, _ in records[:-1])
    assert b"".join(content for _, _, content in records) == b"a" * 100000


def test_exec_sync_output_exit_code_and_timeout(cri):
    pod_id, pod = run_pod(cri)
    ctr = create(cri, pod_id, pod, ["/bin/sleep", "1000"])
    start(cri, ctr)
    r = exec_sync(cri, ctr, ["/bin/sh", "-c", "echo out; echo err >&2; exit 7"])
    assert (r.stdout, r.stderr, r.exit_code) == (b"out\n", b"err\n", 7)
    r = exec_sync(cri, ctr, ["/no/such/binary"])
    assert r.exit_code == 127 and b"/no/such/binary" in r.stderr
    t0 = time.monotonic()
    with pytest.raises(grpc.RpcError) as err:
        exec_sync(cri, ctr, ["/bin/sleep", "30"], timeout=1)
    assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert time.monotonic() - t0 < 10
    # The timed-out process is gone; the container lives on.
    r = exec_sync(cri, ctr, ["/bin/sh", "-c", "ps -o comm | grep -c sleep"])
    assert r.stdout.strip() == b"1"


def test_errors_are_clear(cri):
    pod_id, pod = run_pod(cri)
    rt = cri.client.runtime
    with pytest.raises(grpc.RpcError) as err:
        create(cri, "0" * 64, pod, ["/bin/true"])
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.RpcError) as err:
        create(cri, pod_id, pod, ["/bin/true"], image="example.test/never/pulled:1")
    assert err.value.code() == grpc.StatusCode.NOT_FOUND and "pull it first" in err.value.details()
    with pytest.raises(grpc.RpcError) as err:
        rt.RunPodSandbox(api.RunPodSandboxRequest(config=pod), timeout=10)
    assert err.value.code() == grpc.StatusCode.ALREADY_EXISTS
    with pytest.raises(grpc.RpcError) as err:
        rt.RunPodSandbox(api.RunPodSandboxRequest(config=pod_config(cri), runtime_handler="nope"), timeout=10)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "native" in err.value.details()
    ctr = create(cri, pod_id, pod, ["/no/such/binary"])
    with pytest.raises(grpc.RpcError) as err:
        start(cri, ctr)
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "/no/such/binary" in err.value.details()
    with pytest.raises(grpc.RpcError) as err:
        exec_sync(cri, ctr, ["/bin/true"])
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    # Stopping or removing an unknown container or pod succeeds (CRI idempotence, which critest checks).
    rt.StopContainer(api.StopContainerRequest(container_id="f" * 64), timeout=10)
    rt.RemoveContainer(api.RemoveContainerRequest(container_id="f" * 64), timeout=10)
    rt.StopPodSandbox(api.StopPodSandboxRequest(pod_sandbox_id="f" * 64), timeout=10)
    rt.RemovePodSandbox(api.RemovePodSandboxRequest(pod_sandbox_id="f" * 64), timeout=10)
    with pytest.raises(grpc.RpcError) as err:
        status(cri, "f" * 64)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    assert cri.client.version().runtime_name == "crio-fast"


def test_an_image_a_container_runs_is_not_removed_until_the_container_is(cri, push_image):
    reference = push_image(extra_layers=[LayerBuilder().file("marker", "x")]).reference
    cri.client.image.PullImage(api.PullImageRequest(image=api.ImageSpec(image=reference)), timeout=60)
    pod_id, pod = run_pod(cri)
    ctr = create(cri, pod_id, pod, ["/bin/true"], image=reference)  # created only: in use all the same

    def remove_image() -> None:
        cri.client.image.RemoveImage(api.RemoveImageRequest(image=api.ImageSpec(image=reference)), timeout=30)

    with pytest.raises(grpc.RpcError) as err:
        remove_image()
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert ctr in err.value.details() and "runs it" in err.value.details(), err.value.details()
    cri.client.runtime.RemoveContainer(api.RemoveContainerRequest(container_id=ctr), timeout=30)
    remove_image()
    image = cri.client.image.ImageStatus(api.ImageStatusRequest(image=api.ImageSpec(image=reference)), timeout=10)
    assert not image.HasField("image")


def test_a_set_up_failing_after_create_answered_is_reported_by_start_and_status(cri):
    """CreateContainer answers before the monitor's child has finished its set-up; a set-up that
    then fails (here: the working directory cannot be made, /etc/passwd being a file) ends the
    container as StartError, with the child's own message, and removing it leaves nothing."""
    pod_id, pod = run_pod(cri)
    broken = create(cri, pod_id, pod, ["/bin/true"], working_dir="/etc/passwd/sub")
    deadline = time.monotonic() + 10
    while status(cri, broken).state == api.ContainerState.CONTAINER_CREATED and time.monotonic() < deadline:
        time.sleep(0.02)  # a status takes the outcome in once it is there, without a start
    st = status(cri, broken)
    assert st.state == api.ContainerState.CONTAINER_EXITED and st.reason == "StartError"
    assert "working directory" in st.message and "/etc/passwd/sub" in st.message
    with pytest.raises(grpc.RpcError) as err:
        start(cri, broken)
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION and "/etc/passwd/sub" in err.value.details()
    # Started straight away, the same failure is StartContainer's error.
    also_broken = create(cri, pod_id, pod, ["/bin/true"], working_dir="/etc/passwd/sub")
    with pytest.raises(grpc.RpcError) as err:
        start(cri, also_broken)
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION and "/etc/passwd/sub" in err.value.details()
    assert status(cri, also_broken).reason == "StartError"
    for ctr in (broken, also_broken):
        cri.client.runtime.RemoveContainer(api.RemoveContainerRequest(container_id=ctr), timeout=10)
    assert [o for o in _kernel_objects_of(cri, pod_id, [broken, also_broken]) if broken in o or also_broken in o] == []
    # The pod is fine: its next container runs.
    ctr = create(cri, pod_id, pod, ["/bin/sh", "-c", "exit 0"])
    start(cri, ctr)
    assert wait_exited(cri, ctr).exit_code == 0


def test_a_second_start_while_the_first_is_under_way_changes_nothing(cri):
    """Two StartContainer calls at once: one starts the container, the other is refused, and the
    refused one does not mark the running container as a failed start."""
    pod_id, pod = run_pod(cri)
    for attempt in range(5):
        ctr = create(cri, pod_id, pod, ["/bin/sleep", "1000"])
        outcomes = []
        threads = [threading.Thread(target=lambda: outcomes.append(_start_outcome(cri, ctr))) for _ in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert sorted(o is None for o in outcomes) == [False, True], outcomes
        refused = next(o for o in outcomes if o is not None)
        assert refused.code() == grpc.StatusCode.FAILED_PRECONDITION, refused.details()
        st = status(cri, ctr)
        assert (st.state, st.reason) == (api.ContainerState.CONTAINER_RUNNING, ""), (attempt, st.reason, st.message)


def _start_outcome(d: Daemon, ctr: str) -> grpc.RpcError | None:
    try:
        start(d, ctr)
    except grpc.RpcError as exc:
        return exc
    return None


@contextlib.contextmanager
def _unmakeable_pod_parent() -> Iterator[tuple[str, grpc.StatusCode, str]]:
    """A cgroup_parent the driver cannot make, the status RunPodSandbox answers with, a word of its message:
    a control file under cgroupfs; under systemd a masked slice (systemd will not start it)."""
    if cgroups.driver() == "cgroupfs":
        yield "/cgroup.procs", grpc.StatusCode.INVALID_ARGUMENT, "control file"
        return
    masked = f"cfmasked{uuid.uuid4().hex[:8]}.slice"
    subprocess.run(["systemctl", "mask", "--runtime", masked], check=True, capture_output=True, timeout=scaled(60))
    try:
        yield masked, grpc.StatusCode.FAILED_PRECONDITION, masked
    finally:
        subprocess.run(["systemctl", "unmask", "--runtime", masked], check=True, capture_output=True,
                       timeout=scaled(60))


def test_pod_whose_cgroup_cannot_be_made_leaves_nothing(cri):
    """The pod cgroup is made while the monitor starts; failing there stops the monitor and undoes it all."""
    config = pod_config(cri)
    with _unmakeable_pod_parent() as (parent, code, word), pytest.raises(grpc.RpcError) as err:
        config.linux.cgroup_parent = parent
        cri.client.runtime.RunPodSandbox(api.RunPodSandboxRequest(config=config), timeout=30)
    assert err.value.code() == code, err.value.details()
    assert "pod cgroup" in err.value.details() and word in err.value.details()
    assert not cri.client.runtime.ListPodSandbox(api.ListPodSandboxRequest(), timeout=10).items
    assert os.listdir(cri.dirs.runroot / "pods") == []
    assert mounts_outside_pool(cri.dirs.runroot) == []
    pods_dir = str(cri.dirs.runroot / "pods")
    monitors = [p for p in psutil.process_iter(["cmdline", "status"])
                if any(pods_dir in arg for arg in p.info["cmdline"] or []) and p.info["status"] != psutil.STATUS_ZOMBIE]
    assert monitors == []
    # The daemon is fine: the next pod starts.
    pod_id, _ = run_pod(cri)
    assert status_of_pod(cri, pod_id) == api.PodSandboxState.SANDBOX_READY


def status_of_pod(d: Daemon, pod_id: str) -> int:
    request = api.PodSandboxStatusRequest(pod_sandbox_id=pod_id)
    return d.client.runtime.PodSandboxStatus(request, timeout=10).status.state


def _kernel_objects_of(d: Daemon, pod_id: str, ctr_ids: list[str]) -> list[str]:
    found = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            if pod_id in line or any(c in line for c in ctr_ids):
                found.append(line.split()[4])
    found += cgroups.find_cgroups(pod_id, *ctr_ids)
    return found


def test_stop_and_remove_pod_leave_nothing(cri):
    pod_id, pod = run_pod(cri)
    ctrs = [create(cri, pod_id, pod, ["/bin/sleep", "1000"]) for _ in range(2)]
    for c in ctrs:
        start(cri, c)
    info = cri.client.runtime.PodSandboxStatus(api.PodSandboxStatusRequest(pod_sandbox_id=pod_id, verbose=True), timeout=10).info["info"]
    monitor_pid = json.loads(info)["pid"]
    assert psutil.pid_exists(monitor_pid)
    assert _kernel_objects_of(cri, pod_id, ctrs)
    cri.client.runtime.StopPodSandbox(api.StopPodSandboxRequest(pod_sandbox_id=pod_id), timeout=30)
    cri.client.runtime.StopPodSandbox(api.StopPodSandboxRequest(pod_sandbox_id=pod_id), timeout=30)  # idempotent
    for c in ctrs:
        assert status(cri, c).state == api.ContainerState.CONTAINER_EXITED
    pst = cri.client.runtime.PodSandboxStatus(api.PodSandboxStatusRequest(pod_sandbox_id=pod_id), timeout=10).status
    assert pst.state == api.PodSandboxState.SANDBOX_NOTREADY
    cri.client.runtime.RemovePodSandbox(api.RemovePodSandboxRequest(pod_sandbox_id=pod_id), timeout=30)
    assert _kernel_objects_of(cri, pod_id, ctrs) == []
    assert not psutil.pid_exists(monitor_pid) or psutil.Process(monitor_pid).status() == psutil.STATUS_ZOMBIE
    assert not (cri.dirs.runroot / "pods" / pod_id).exists()
    assert not cri.client.runtime.ListContainers(api.ListContainersRequest(), timeout=10).containers


def _adopted_by_or_gone(pid: int, parent: int) -> bool:
    try:
        return psutil.Process(pid).ppid() == parent
    except psutil.NoSuchProcess:
        return True  # already killed and reaped by its new parent


def test_killed_monitor_containers_are_stopped_and_reaped(cri):
    """A SIGKILLed monitor's containers are re-parented to the daemon (a child
    subreaper), which kills and reaps them as soon as it sees the monitor die
    (server/recovery.py), or at the latest when the pod is stopped; their exit
    is recorded, and removal does not wait on zombies."""
    pod_id, pod = run_pod(cri)
    ctr = create(cri, pod_id, pod, ["/bin/sleep", "1000"])
    start(cri, ctr)
    init_pid = json.loads(cri.client.runtime.ContainerStatus(
        api.ContainerStatusRequest(container_id=ctr, verbose=True), timeout=10).info["info"])["pid"]
    info = cri.client.runtime.PodSandboxStatus(api.PodSandboxStatusRequest(pod_sandbox_id=pod_id, verbose=True),
                                               timeout=10).info["info"]
    monitor_pid = json.loads(info)["pid"]
    os.kill(monitor_pid, signal.SIGKILL)
    deadline = time.monotonic() + 5
    while not _adopted_by_or_gone(init_pid, cri.proc.pid):
        assert time.monotonic() < deadline, "the container init was not re-parented to the daemon"
        time.sleep(0.01)
    started = time.monotonic()
    cri.client.runtime.StopPodSandbox(api.StopPodSandboxRequest(pod_sandbox_id=pod_id), timeout=30)
    st = status(cri, ctr)
    assert (st.state, st.exit_code) == (api.ContainerState.CONTAINER_EXITED, 128 + signal.SIGKILL)
    cri.client.runtime.RemovePodSandbox(api.RemovePodSandboxRequest(pod_sandbox_id=pod_id), timeout=30)
    assert time.monotonic() - started < 4, "stop+remove waited on unreaped processes"
    assert not psutil.pid_exists(init_pid) and not psutil.pid_exists(monitor_pid)
    zombies = [c.pid for c in psutil.Process(cri.proc.pid).children() if c.status() == psutil.STATUS_ZOMBIE]
    assert zombies == []
    assert _kernel_objects_of(cri, pod_id, [ctr]) == []


def test_default_pod_parent_stays_while_the_daemon_runs(registry, busybox_image, tmp_path):
    """Pods without a cgroup_parent go under the daemon's parent (/crio-fast, or crio_fast.slice under
    systemd): kept while the daemon runs (the next pod need not make it again), removed when the daemon
    stops and no pod uses it."""
    parent = cgroups.cgroup_dir(cgroups.default_parent(), "pids")
    with daemon_with_busybox(registry, busybox_image, tmp_path) as d:
        pod_id, _ = run_pod(d)
        pod_cgroup = cgroups.cgroup_dir(cgroups.default_pod_path(pod_id), "pids")
        assert pod_cgroup.parent == parent and pod_cgroup.is_dir()
        d.client.runtime.StopPodSandbox(api.StopPodSandboxRequest(pod_sandbox_id=pod_id), timeout=30)
        d.client.runtime.RemovePodSandbox(api.RemovePodSandboxRequest(pod_sandbox_id=pod_id), timeout=30)
        assert not pod_cgroup.exists()
        assert parent.is_dir()
    # Stopped: gone, unless pods of another daemon on this machine still live in it.
    assert not parent.exists() or any(p.is_dir() for p in parent.iterdir())


def test_daemon_killed_and_restarted_keeps_pods(registry, busybox_image, tmp_path):
    dirs = make_dirs()
    conf = write_registries_conf(tmp_path / "registries.conf", [registry.host])
    d = Daemon(dirs, "--registries-conf", str(conf)).start()
    try:
        d.client.image.PullImage(api.PullImageRequest(image=api.ImageSpec(image=busybox_image.reference)), timeout=60)
        d.image = busybox_image.reference
        pod_id, pod = run_pod(d)
        long_running = create(d, pod_id, pod, ["/bin/sleep", "1000"])
        short = create(d, pod_id, pod, ["/bin/sh", "-c", "sleep 1; exit 5"])
        # Created, never started: the daemon dies with its CREATE reply unread.
        waiting = create(d, pod_id, pod, ["/bin/sleep", "1000"])
        start(d, long_running)
        start(d, short)
        d.proc.send_signal(signal.SIGKILL)
        d.proc.wait(10)
        time.sleep(1.5)  # the short one exits while no daemon runs
        d = Daemon(dirs, "--registries-conf", str(conf)).start()
        d.image = busybox_image.reference
        assert [p.id for p in d.client.runtime.ListPodSandbox(api.ListPodSandboxRequest(), timeout=10).items] == [pod_id]
        assert status(d, long_running).state == api.ContainerState.CONTAINER_RUNNING
        st = status(d, short)
        assert (st.state, st.exit_code) == (api.ContainerState.CONTAINER_EXITED, 5)
        assert exec_sync(d, long_running, ["/bin/echo", "alive"]).stdout == b"alive\n"
        # The exec runs under the container's seccomp filter, found by the digest its record names.
        seccomp = exec_sync(d, long_running, ["/bin/grep", "Seccomp:", "/proc/self/status"]).stdout
        assert seccomp.split() == [b"Seccomp:", b"2"]
        # The new daemon learns the waiting container's pid from the monitor: exec finds its namespaces.
        assert status(d, waiting).state == api.ContainerState.CONTAINER_CREATED
        start(d, waiting)
        wait_for_command(d, waiting, ["/bin/sleep", "1000"])
        assert exec_sync(d, waiting, ["/bin/sh", "-c", "cat /proc/1/cmdline"]).stdout == b"/bin/sleep\x001000\x00"
        d.client.runtime.StopContainer(api.StopContainerRequest(container_id=long_running, timeout=1), timeout=30)
        assert status(d, long_running).state == api.ContainerState.CONTAINER_EXITED
    finally:
        try:
            if d.proc and d.proc.poll() is None:
                remove_all_pods(d)
            d.stop()
        finally:
            d.kill()
            remove_dirs(dirs)


def test_reopen_container_log_after_rotation(cri):
    pod_id, pod = run_pod(cri)
    ctr = create(cri, pod_id, pod, ["/bin/sh", "-c", "i=0; while true; do echo line$i; i=$((i+1)); sleep 0.05; done"])
    start(cri, ctr)
    log_path = Path(status(cri, ctr).log_path)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and b"line2" not in log_path.read_bytes():
        time.sleep(0.05)
    rotated = log_path.with_name(log_path.name + ".1")
    os.rename(log_path, rotated)  # what the kubelet's log rotation does
    cri.client.runtime.ReopenContainerLog(api.ReopenContainerLogRequest(container_id=ctr), timeout=10)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and not (log_path.exists() and log_path.read_bytes().count(b"\n") >= 2):
        time.sleep(0.05)
    new_lines = [content for _, _, content in log_records(str(log_path))]
    old_lines = [content for _, _, content in log_records(str(rotated))]
    assert new_lines and old_lines
    # The new file continues where the rotated one stopped: no line lost or doubled.
    last_old = int(old_lines[-1].removeprefix(b"line"))
    first_new = int(new_lines[0].removeprefix(b"line"))
    assert first_new == last_old + 1


def test_tty_container_logs_everything_as_stdout(cri):
    pod_id, pod = run_pod(cri)
    config = api.ContainerConfig(
        metadata=api.ContainerMetadata(name="tty"), image=api.ImageSpec(image=cri.image),
        command=["/bin/sh", "-c", "[ -t 1 ] && echo is-a-tty; echo to-stderr >&2"], log_path="tty.log", tty=True,
    )
    ctr = cri.client.runtime.CreateContainer(
        api.CreateContainerRequest(pod_sandbox_id=pod_id, config=config, sandbox_config=pod), timeout=30
    ).container_id
    start(cri, ctr)
    st = wait_exited(cri, ctr)
    assert st.exit_code == 0
    records = log_records(st.log_path)
    assert {stream for stream, _, _ in records} == {"stdout"}
    text = b"".join(content for _, _, content in records)
    assert b"is-a-tty" in text and b"to-stderr" in text
