"""Small helpers to run pods and busybox containers on a test daemon over CRI."""

from __future__ import annotations

import itertools
import json
import re
import socket
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

from crio_fast.api import api_pb2 as api
from tests.support.daemon import Daemon, DaemonDirs, make_dirs, remove_dirs
from tests.support.registries_conf import write_registries_conf
from tests.support.timing import command_limit

_numbers = itertools.count(1)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def daemon_with_busybox(registry, busybox_image, conf_dir: Path, *extra_args: str,
                        configure: Callable[[DaemonDirs], list[str]] | None = None) -> Iterator[Daemon]:
    """A daemon with busybox pulled; every pod stopped and removed, the daemon stopped, its dirs gone.

    ``configure`` may write configuration into the daemon's dirs before it starts and returns
    more daemon arguments (e.g. tests.support.oci_runtimes.configure_oci_runtimes).
    """
    dirs = make_dirs()
    try:
        conf = write_registries_conf(conf_dir / "registries.conf", [registry.host])
        more_args = configure(dirs) if configure is not None else []
        d = Daemon(dirs, "--registries-conf", str(conf), *extra_args, *more_args).start()
    except BaseException:
        remove_dirs(dirs)  # a daemon that did not come up leaves nothing either
        raise
    try:
        d.client.image.PullImage(api.PullImageRequest(image=api.ImageSpec(image=busybox_image.reference)), timeout=60)
        d.image = busybox_image.reference
        yield d
    finally:
        try:
            remove_all_pods(d)
            d.stop()
        finally:
            d.kill()
            remove_dirs(dirs)


def kubelet_pod_linux() -> api.LinuxPodSandboxConfig:
    """What the kubelet sends for a pod without shareProcessNamespace: a pid namespace per container.
    Left out, the mode is POD (proto3's zero value): one pid namespace for the whole pod, as with
    containerd and CRI-O."""
    return api.LinuxPodSandboxConfig(security_context=api.LinuxSandboxSecurityContext(
        namespace_options=api.NamespaceOption(pid=api.NamespaceMode.CONTAINER)))


def kubelet_container_linux() -> api.LinuxContainerConfig:
    """The container-level side of kubelet_pod_linux."""
    return api.LinuxContainerConfig(security_context=api.LinuxContainerSecurityContext(
        namespace_options=api.NamespaceOption(pid=api.NamespaceMode.CONTAINER)))


def remove_all_pods(d: Daemon) -> None:
    for pod in d.client.runtime.ListPodSandbox(api.ListPodSandboxRequest(), timeout=30).items:
        d.client.runtime.StopPodSandbox(api.StopPodSandboxRequest(pod_sandbox_id=pod.id), timeout=60)
        d.client.runtime.RemovePodSandbox(api.RemovePodSandboxRequest(pod_sandbox_id=pod.id), timeout=60)


def run_pod(d: Daemon, labels: dict[str, str] | None = None) -> tuple[str, api.PodSandboxConfig]:
    n = next(_numbers)
    config = api.PodSandboxConfig(
        metadata=api.PodSandboxMetadata(name=f"spod{n}", namespace="stats", uid=f"suid-{n}", attempt=0),
        hostname=f"spod{n}", log_directory=str(d.dirs.log_dir / f"spod{n}"), labels=labels or {},
        linux=kubelet_pod_linux(),
    )
    pod_id = d.client.runtime.RunPodSandbox(api.RunPodSandboxRequest(config=config), timeout=30).pod_sandbox_id
    return pod_id, config


def create(d: Daemon, pod_id: str, pod: api.PodSandboxConfig, command: list[str], name: str = "",
           labels: dict[str, str] | None = None, annotations: dict[str, str] | None = None,
           configure: Callable[[api.ContainerConfig], None] | None = None) -> str:
    """CreateContainer of the daemon's busybox image; ``configure`` edits the ContainerConfig first."""
    config = api.ContainerConfig(
        metadata=api.ContainerMetadata(name=name or f"c{next(_numbers)}"), image=api.ImageSpec(image=d.image),
        command=command, log_path="ctr.log", labels=labels or {}, annotations=annotations or {},
    )
    if configure is not None:
        configure(config)
    request = api.CreateContainerRequest(pod_sandbox_id=pod_id, config=config, sandbox_config=pod)
    return d.client.runtime.CreateContainer(request, timeout=30).container_id


def start(d: Daemon, container_id: str) -> None:
    d.client.runtime.StartContainer(api.StartContainerRequest(container_id=container_id), timeout=30)


def wait_for_command(d: Daemon, container_id: str, command: list[str], timeout: float = 10.0) -> int:
    """Wait until the container's process runs ``command``; its host pid.

    StartContainer returns before the container's execve (runc's and crun's start do too): until
    then the process is the runtime's, and /proc/1/cmdline in the container is not the command."""
    request = api.ContainerStatusRequest(container_id=container_id, verbose=True)
    pid = json.loads(d.client.runtime.ContainerStatus(request, timeout=10).info["info"])["pid"]
    expected = b"".join(arg.encode() + b"\0" for arg in command)

    def runs_command() -> bool:
        try:
            return Path(f"/proc/{pid}/cmdline").read_bytes() == expected
        except OSError:
            return False
    wait_for(runs_command, timeout, what=f"container {container_id[:12]} to run {command}")
    return pid


def run_container(d: Daemon, command: list[str], **kw) -> tuple[str, str]:
    """A new pod with one started container; (pod id, container id)."""
    pod_id, pod = run_pod(d)
    container_id = create(d, pod_id, pod, command, **kw)
    start(d, container_id)
    return pod_id, container_id


def exec_sync(d: Daemon, container_id: str, cmd: list[str], timeout: int | None = None) -> api.ExecSyncResponse:
    timeout = command_limit(timeout, 20)
    response = d.client.runtime.ExecSync(api.ExecSyncRequest(container_id=container_id, cmd=cmd, timeout=timeout),
                                         timeout=timeout + 10)
    assert response.exit_code == 0, response.stderr
    return response


def wait_for(predicate, timeout: float = 10.0, interval: float = 0.05, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def status(d: Daemon, container_id: str) -> api.ContainerStatus:
    return d.client.runtime.ContainerStatus(api.ContainerStatusRequest(container_id=container_id), timeout=10).status


def wait_exited(d: Daemon, container_id: str, timeout: float = 20) -> api.ContainerStatus:
    deadline = time.monotonic() + timeout
    while (st := status(d, container_id)).state != api.ContainerState.CONTAINER_EXITED:
        assert time.monotonic() < deadline, f"container still {api.ContainerState.Name(st.state)}"
        time.sleep(0.02)
    return st


# One CRI log record: timestamp, stream, P(artial) or F(ull), content.
LOG_LINE = re.compile(rb"^(\S+) (stdout|stderr) ([PF]) (.*)$")


def log_records(path: str) -> list[tuple[str, str, bytes]]:
    """(stream, tag, content) of every line of a CRI log file; fails on a malformed line."""
    out = []
    for line in Path(path).read_bytes().split(b"\n")[:-1]:
        m = LOG_LINE.match(line)
        assert m, line[:200]
        out.append((m.group(2).decode(), m.group(3).decode(), m.group(4)))
    return out


def log_text(path: str, stream: str = "stdout") -> bytes:
    """What the container wrote to ``stream``, its partial records joined as a CRI reader joins them
    (how output was split into records depends on the timing of its writes)."""
    return b"".join(content + (b"\n" if tag == "F" else b"")
                    for record_stream, tag, content in log_records(path) if record_stream == stream)
