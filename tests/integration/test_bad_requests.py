"""Bad requests: each is refused with the status CRI gives it (INVALID_ARGUMENT unless it names something that
is not there, or the node is not in the state it needs), with a short message, before anything is made; the
daemon serves on, and nothing is left behind, on the node or outside the daemon's directories.

Also: a container's log stays inside its pod's log directory (create and ReopenContainerLog), ExecSync's
output is bounded and its command ends with the call, and the cgroup parents a pod's creation made go
with the pod.
"""

from __future__ import annotations

import os
import secrets
import time
from pathlib import Path
from typing import Callable, Iterator

import grpc
import psutil
import pytest

from crio_fast.api import api_pb2 as api
from tests.support import cgroups
from tests.support.daemon import Daemon
from tests.support.network import PLUGIN_DIR, existing_hostport_chains, remove_hostport_chains, remove_network, write_network
from tests.support.oci_runtimes import configure_oci_runtimes, runc_problem
from tests.support.pods import daemon_with_busybox, kubelet_container_linux, kubelet_pod_linux, remove_all_pods, wait_for
from tests.support.timing import scaled

pytestmark = [pytest.mark.integration, pytest.mark.skipif(
    not os.path.exists(f"{PLUGIN_DIR}/bridge"), reason="containernetworking-plugins is not installed")]

MEGABYTE = "x" * (1 << 20)
# What a status message may come to: the daemon cuts it to 1 KiB, with a note of what was left out.
MESSAGE_MAX = 1100
UINT32_PAST = 2**32
INT64_MAX = 2**63 - 1
MAX_ARG_STRLEN = 32 * 4096
# A unique top-level cgroup for this module's pods, so its scan sees no other daemon's cgroups.
PARENTS = cgroups.KubeletParents(f"cfbad{secrets.token_hex(3)}")  # the pods' cgroup parents, made by the daemon
_numbers = iter(range(1_000_000))


@pytest.fixture(scope="module")
def env(registry, busybox_image, tmp_path_factory) -> Iterator[Daemon]:
    """One daemon with busybox, a CNI bridge network (so requests that would reach plugins do) and runc."""
    if problem := runc_problem():
        pytest.skip(problem)
    chains_before = existing_hostport_chains()
    with daemon_with_busybox(registry, busybox_image, tmp_path_factory.mktemp("regconf"),
                             "--cni-plugin-dir", PLUGIN_DIR, configure=configure_oci_runtimes) as d:
        network = write_network(d.dirs.network_dir, tmp_path_factory.mktemp("ipam"))
        try:
            yield d
        finally:
            remove_all_pods(d)
            remove_network(network)
            if not chains_before:
                remove_hostport_chains()


@pytest.fixture(scope="module")
def outside(tmp_path_factory) -> Path:
    """A directory outside the daemon's, where a request that escaped its dirs would leave something; it
    holds a file (target) such requests aim at."""
    directory = tmp_path_factory.mktemp("outside")
    (directory / "target").write_text("precious\n")
    return directory


def pod_config(d: Daemon, handler_hint: str = "bad") -> api.PodSandboxConfig:
    n = next(_numbers)
    config = api.PodSandboxConfig(
        metadata=api.PodSandboxMetadata(name=f"{handler_hint}{n}", namespace="bad", uid=f"bad-uid-{n}"),
        hostname=f"{handler_hint}{n}", log_directory=str(d.dirs.log_dir / f"{handler_hint}{n}"),
        linux=kubelet_pod_linux(),
    )
    config.linux.cgroup_parent = PARENTS.parent(f"pod{n}")
    return config


def run_pod(d: Daemon, handler: str = "") -> tuple[str, api.PodSandboxConfig]:
    config = pod_config(d, "ok")
    request = api.RunPodSandboxRequest(config=config, runtime_handler=handler)
    return d.client.runtime.RunPodSandbox(request, timeout=60).pod_sandbox_id, config


def container_config(d: Daemon, command: list[str] | None = None) -> api.ContainerConfig:
    return api.ContainerConfig(
        metadata=api.ContainerMetadata(name=f"c{next(_numbers)}"), image=api.ImageSpec(image=d.image),
        command=command or ["/bin/sleep", "3600"], log_path="c/0.log", linux=kubelet_container_linux())


def create(d: Daemon, pod_id: str, pod: api.PodSandboxConfig, config: api.ContainerConfig) -> str:
    request = api.CreateContainerRequest(pod_sandbox_id=pod_id, config=config, sandbox_config=pod)
    return d.client.runtime.CreateContainer(request, timeout=30).container_id


def start(d: Daemon, container_id: str) -> None:
    d.client.runtime.StartContainer(api.StartContainerRequest(container_id=container_id), timeout=30)


@pytest.fixture(scope="module")
def running(env: Daemon) -> tuple[str, api.PodSandboxConfig, str]:
    """A ready native pod with a running container, for the whole module: (pod id, pod config, container id)."""
    pod_id, pod = run_pod(env)
    container_id = create(env, pod_id, pod, container_config(env))
    start(env, container_id)
    return pod_id, pod, container_id


@pytest.fixture
def own_pods(env: Daemon, running) -> Iterator[None]:
    """For a test that runs pods of its own: they are removed after it (the shared one stays)."""
    try:
        yield
    finally:
        runtime = env.client.runtime
        for pod in runtime.ListPodSandbox(api.ListPodSandboxRequest(), timeout=30).items:
            if pod.id != running[0]:
                runtime.StopPodSandbox(api.StopPodSandboxRequest(pod_sandbox_id=pod.id), timeout=60)
                runtime.RemovePodSandbox(api.RemovePodSandboxRequest(pod_sandbox_id=pod.id), timeout=60)


# -- what "nothing left" means ---------------------------------------------------------------------------


def _listing(directory: Path) -> list[str]:
    if not directory.exists():
        return []
    return sorted(str(Path(root, name).relative_to(directory))
                  for root, dirs, files in os.walk(directory) for name in [*dirs, *files])


def _our_cgroups() -> list[str]:
    return sorted(path for root in cgroups.hierarchy_roots() for path in _listing(root / PARENTS.root.lstrip("/")))


# Node settings a refused request might have reached: those the bad requests name, and the host's names.
HOST_SYSCTLS = ("vm.swappiness", "net.ipv4.ip_forward", "kernel.hostname", "kernel.domainname")


def _host_sysctls() -> dict[str, str]:
    return {name: Path("/proc/sys", *name.split(".")).read_text() for name in HOST_SYSCTLS}


def state_of(d: Daemon, outside: Path) -> dict[str, object]:
    """What a refused request must not change."""
    runtime = d.client.runtime
    return {
        "pods": sorted(p.id for p in runtime.ListPodSandbox(api.ListPodSandboxRequest(), timeout=10).items),
        "containers": sorted(c.id for c in runtime.ListContainers(api.ListContainersRequest(), timeout=10).containers),
        "pod dirs": _listing(d.dirs.runroot / "pods"),
        "container dirs": _listing(d.dirs.root / "containers"),
        "bundles": _listing(d.dirs.runroot / "containers"),
        "logs": _listing(d.dirs.log_dir),
        # The cached ADD results, one file per attachment (the cache's directories are the node's: a refused
        # pod whose ADD ran beside its start, in a namespace made ahead, and was undone, may have made them).
        "cni results": _listing(d.dirs.runroot / "cni" / "results"),
        "cgroups": _our_cgroups(),
        "host sysctls": _host_sysctls(),
        "outside": {name: (outside / name).read_bytes() if (outside / name).is_file() else None
                    for name in _listing(outside)},
    }


def refused(d: Daemon, outside: Path, code: grpc.StatusCode, call: Callable[[], object]) -> str:
    """Run ``call``, a request that must fail with ``code``; the daemon serves on and nothing changed.
    Returns the status message."""
    before = state_of(d, outside)
    with pytest.raises(grpc.RpcError) as info:
        call()
    details = info.value.details() or ""
    assert info.value.code() == code, details[:2000]
    assert len(details) <= MESSAGE_MAX, f"{len(details)} characters: {details[:300]}..."
    assert d.proc is not None and d.proc.poll() is None, "the daemon died"
    assert d.client.version().runtime_name == "crio-fast"
    assert state_of(d, outside) == before
    return details


# -- RunPodSandbox ---------------------------------------------------------------------------------------


def _set(path: str, value: object) -> Callable[[api.PodSandboxConfig, Path], None]:
    def change(message, outside: Path) -> None:
        *parents, last = path.split(".")
        target = message
        for name in parents:
            target = getattr(target, name)
        setattr(target, last, value(outside) if callable(value) else value)
    return change


def _port(**fields: object) -> Callable[[api.PodSandboxConfig, Path], None]:
    def change(config: api.PodSandboxConfig, outside: Path) -> None:
        mapping = dict(protocol=api.Protocol.TCP, container_port=80, host_port=8080)
        mapping.update(fields)
        config.port_mappings.add(**mapping)
    return change


def _pod_groups(*groups: int) -> Callable[[api.PodSandboxConfig, Path], None]:
    def change(config: api.PodSandboxConfig, outside: Path) -> None:
        config.linux.security_context.supplemental_groups.extend(groups)
    return change


def _pod_id_value(field: str, value: int) -> Callable[[api.PodSandboxConfig, Path], None]:
    def change(config: api.PodSandboxConfig, outside: Path) -> None:
        getattr(config.linux.security_context, field).value = value
    return change


def _dns(field: str, value: str) -> Callable[[api.PodSandboxConfig, Path], None]:
    def change(config: api.PodSandboxConfig, outside: Path) -> None:
        getattr(config.dns_config, field).append(value)
    return change


def _sysctl(key: str, value: str) -> Callable[[api.PodSandboxConfig, Path], None]:
    def change(config: api.PodSandboxConfig, outside: Path) -> None:
        config.linux.sysctls[key] = value
    return change


BAD_PODS = {
    "name with a NUL byte (CNI_ARGS)": _set("metadata.name", "bad\0name"),
    "namespace with a NUL byte": _set("metadata.namespace", "bad\0ns"),
    "uid with a NUL byte": _set("metadata.uid", "bad\0uid"),
    "name of 1 MB": _set("metadata.name", MEGABYTE),
    "namespace of 1 MB": _set("metadata.namespace", MEGABYTE),
    "uid of 1 MB": _set("metadata.uid", MEGABYTE),
    "name adding a CNI argument": _set("metadata.name", "a;IgnoreUnknown=1"),
    "no name": _set("metadata.name", ""),
    "hostname with a NUL byte": _set("hostname", "bad\0host"),
    "hostname of 65 characters": _set("hostname", "h" * 65),
    "hostname of 1 MB": _set("hostname", MEGABYTE),
    "hostname that is no DNS name": _set("hostname", "under_score"),
    "log_directory with a NUL byte": _set("log_directory", "/tmp/bad\0logs"),
    "relative log_directory": _set("log_directory", "relative/logs"),
    "log_directory longer than PATH_MAX": _set("log_directory", "/" + "d" * 5000),
    "log_directory that is a file": _set("log_directory", lambda outside: str(outside / "target")),
    "log_directory under a file": _set("log_directory", lambda outside: str(outside / "target" / "logs")),
    "host_port 70000 (iptables)": _port(host_port=70000),
    "negative host_port": _port(host_port=-1),
    "container_port 70000": _port(container_port=70000),
    "container_port 0 with a host_port": _port(container_port=0),
    "unknown protocol": _port(protocol=7),
    "host_ip that is no address": _port(host_ip="not-an-ip"),
    "DNS server that is no address": _dns("servers", "dns.example"),
    "DNS search with a newline": _dns("searches", "example.com\nnameserver 10.9.9.9"),
    "DNS option with a NUL byte": _dns("options", "ndots:5\0"),
    "run_as_user 2^32": _pod_id_value("run_as_user", UINT32_PAST),
    "run_as_group 2^32": _pod_id_value("run_as_group", UINT32_PAST),
    "negative run_as_user": _pod_id_value("run_as_user", -1),
    "supplemental group 2^32": _pod_groups(UINT32_PAST),
    "negative supplemental group": _pod_groups(-5),
    "cgroup_parent 1000 levels deep": _set("linux.cgroup_parent", "/l" * 1000),
    "cgroup_parent 40 levels deep": _set("linux.cgroup_parent", f"/{PARENTS.top}" + "/l" * 39),
    "cgroup_parent of 1 MB": _set("linux.cgroup_parent", "/" + MEGABYTE),
    "cgroup_parent with ..": _set("linux.cgroup_parent", f"/{PARENTS.top}/../escape"),
    "cgroup_parent with a NUL byte": _set("linux.cgroup_parent", f"/{PARENTS.top}/a\0b"),
    "cgroup_parent component of 300 characters": _set("linux.cgroup_parent", f"/{PARENTS.top}/" + "c" * 300),
    "sysctl value with a NUL byte": _sysctl("net.ipv4.ip_forward", "1\0"),
    "sysctl of the node": _sysctl("vm.swappiness", "10"),
}


@pytest.mark.parametrize("change", BAD_PODS.values(), ids=BAD_PODS.keys())
def test_bad_pod_config_is_refused(env: Daemon, outside: Path, change) -> None:
    config = pod_config(env)
    change(config, outside)
    refused(env, outside, grpc.StatusCode.INVALID_ARGUMENT,
            lambda: env.client.runtime.RunPodSandbox(api.RunPodSandboxRequest(config=config), timeout=60))


@pytest.mark.parametrize("handler", ["no-such-handler", MEGABYTE, "bad\0handler"], ids=["unknown", "1 MB", "NUL"])
def test_bad_runtime_handler_is_refused(env: Daemon, outside: Path, handler: str) -> None:
    request = api.RunPodSandboxRequest(config=pod_config(env), runtime_handler=handler)
    refused(env, outside, grpc.StatusCode.INVALID_ARGUMENT,
            lambda: env.client.runtime.RunPodSandbox(request, timeout=60))


# -- CreateContainer -------------------------------------------------------------------------------------


def _ctr_set(path: str, value: object) -> Callable[[api.ContainerConfig, Path], None]:
    return _set(path, value)


def _ctr_list(path: str, *items: object) -> Callable[[api.ContainerConfig, Path], None]:
    def change(config: api.ContainerConfig, outside: Path) -> None:
        *parents, last = path.split(".")
        target = config
        for name in parents:
            target = getattr(target, name)
        field = getattr(target, last)
        del field[:]
        field.extend(item(outside) if callable(item) else item for item in items)
    return change


def _env(key: str, value: bytes = b"v") -> Callable[[api.ContainerConfig, Path], None]:
    def change(config: api.ContainerConfig, outside: Path) -> None:
        config.envs.add(key=key, value=value)
    return change


def _mount(container_path: str = "/mnt", host_path: Callable[[Path], str] | str = lambda outside: str(outside)
           ) -> Callable[[api.ContainerConfig, Path], None]:
    def change(config: api.ContainerConfig, outside: Path) -> None:
        config.mounts.add(container_path=container_path,
                          host_path=host_path(outside) if callable(host_path) else host_path, readonly=True)
    return change


def _image_volume(sub_path: str) -> Callable[[api.ContainerConfig, Path], None]:
    def change(config: api.ContainerConfig, outside: Path) -> None:
        config.mounts.add(container_path="/image", image=api.ImageSpec(image=config.image.image),
                          image_sub_path=sub_path, readonly=True)
    return change


def _device(container_path: str, host_path: str) -> Callable[[api.ContainerConfig, Path], None]:
    def change(config: api.ContainerConfig, outside: Path) -> None:
        config.devices.add(container_path=container_path, host_path=host_path, permissions="rwm")
    return change


def _ctr_id_value(field: str, value: int) -> Callable[[api.ContainerConfig, Path], None]:
    def change(config: api.ContainerConfig, outside: Path) -> None:
        sc = config.linux.security_context
        if field == "run_as_group":
            sc.run_as_user.value = 0
        getattr(sc, field).value = value
    return change


def _ctr_groups(*groups: int) -> Callable[[api.ContainerConfig, Path], None]:
    def change(config: api.ContainerConfig, outside: Path) -> None:
        config.linux.security_context.supplemental_groups.extend(groups)
    return change


def _oom_score_adj(value: int) -> Callable[[api.ContainerConfig, Path], None]:
    def change(config: api.ContainerConfig, outside: Path) -> None:
        config.linux.resources.oom_score_adj = value
    return change


BAD_CONTAINERS = {
    "name with a NUL byte": _ctr_set("metadata.name", "c\0name"),
    "name of 1 MB": _ctr_set("metadata.name", MEGABYTE),
    "no name": _ctr_set("metadata.name", ""),
    "image with a NUL byte": _ctr_set("image.image", "busy\0box"),
    "image name of 1 MB": _ctr_set("image.image", MEGABYTE),
    "command with a NUL byte": _ctr_list("command", "/bin/sh\0", "-c", "true"),
    "args with a NUL byte": _ctr_list("args", "a\0b"),
    "argument longer than MAX_ARG_STRLEN": _ctr_list("args", "a" * MAX_ARG_STRLEN),
    "working_dir with a NUL byte": _ctr_set("working_dir", "/tmp\0x"),
    "relative working_dir": _ctr_set("working_dir", "tmp"),
    "working_dir longer than PATH_MAX": _ctr_set("working_dir", "/" + "w" * 5000),
    "env key with a NUL byte": _env("KEY\0X"),
    "env key with =": _env("KEY=X"),
    "empty env key": _env(""),
    "env value with a NUL byte": _env("KEY", b"a\0b"),
    "env entry longer than MAX_ARG_STRLEN": _env("KEY", b"v" * MAX_ARG_STRLEN),
    "log_path with a NUL byte": _ctr_set("log_path", "c/0\0.log"),
    "absolute log_path": _ctr_set("log_path", lambda outside: str(outside / "abs.log")),
    "log_path with ..": _ctr_set("log_path", lambda outside: "../" * 40 + str(outside / "dots.log").lstrip("/")),
    "log_path ../ to a file that exists": _ctr_set("log_path", lambda outside: "../" * 40 + str(outside / "target").lstrip("/")),
    "log_path longer than PATH_MAX": _ctr_set("log_path", "l" * 5000),
    "log_path naming a directory": _ctr_set("log_path", "c/"),
    "mount container_path with a NUL byte": _mount(container_path="/mnt\0x"),
    "relative mount container_path": _mount(container_path="mnt"),
    "mount container_path longer than PATH_MAX": _mount(container_path="/" + "m" * 5000),
    "mount host_path with a NUL byte": _mount(host_path="/tmp\0x"),
    "relative mount host_path": _mount(host_path="tmp"),
    "mount host_path that does not exist": _mount(host_path=lambda outside: str(outside / "missing")),
    "image volume sub path with a NUL byte": _image_volume("bin\0x"),
    "image volume sub path longer than PATH_MAX": _image_volume("s" * 5000),
    "image volume sub path out of the image": _image_volume("../../.."),
    "device path with a NUL byte": _device("/dev/x\0", "/dev/null"),
    "masked path with a NUL byte": _ctr_list("linux.security_context.masked_paths", "/proc/kcore\0"),
    "relative masked path": _ctr_list("linux.security_context.masked_paths", "proc/kcore"),
    "run_as_user 2^32": _ctr_id_value("run_as_user", UINT32_PAST),
    "run_as_group 2^32": _ctr_id_value("run_as_group", UINT32_PAST),
    "negative run_as_user": _ctr_id_value("run_as_user", -1),
    "supplemental group 2^32": _ctr_groups(UINT32_PAST),
    "negative supplemental group": _ctr_groups(-5),
    "oom_score_adj 2^40": _oom_score_adj(2**40),
    "oom_score_adj -1001": _oom_score_adj(-1001),
}


@pytest.mark.parametrize("change", BAD_CONTAINERS.values(), ids=BAD_CONTAINERS.keys())
def test_bad_container_config_is_refused(env: Daemon, outside: Path, running, change) -> None:
    pod_id, pod, _ = running
    config = container_config(env)
    change(config, outside)
    refused(env, outside, grpc.StatusCode.INVALID_ARGUMENT, lambda: create(env, pod_id, pod, config))


@pytest.mark.parametrize(("pod_id", "code"), [
    ("a\0b", grpc.StatusCode.INVALID_ARGUMENT),
    (MEGABYTE, grpc.StatusCode.INVALID_ARGUMENT),
    ("", grpc.StatusCode.INVALID_ARGUMENT),
    ("0" * 64, grpc.StatusCode.NOT_FOUND),
], ids=["NUL", "1 MB", "empty", "unknown"])
def test_create_in_a_bad_pod_id_is_refused(env: Daemon, outside: Path, running, pod_id: str, code) -> None:
    _, pod, _ = running
    details = refused(env, outside, code, lambda: create(env, pod_id, pod, container_config(env)))
    assert len(details) < 400


def test_log_path_through_a_symlink_out_of_the_log_directory_is_refused(env: Daemon, outside: Path,
                                                                        running) -> None:
    pod_id, pod, _ = running
    link = Path(pod.log_directory, f"out-{next(_numbers)}")
    link.symlink_to(outside)
    for log_path in (f"{link.name}/target", f"{link.name}/new.log"):
        config = container_config(env)
        config.log_path = log_path
        details = refused(env, outside, grpc.StatusCode.INVALID_ARGUMENT, lambda: create(env, pod_id, pod, config))
        assert "leads out of the log directory" in details
    file_link = Path(pod.log_directory, f"file-{next(_numbers)}.log")
    file_link.symlink_to(outside / "target")
    config = container_config(env)
    config.log_path = file_link.name
    refused(env, outside, grpc.StatusCode.INVALID_ARGUMENT, lambda: create(env, pod_id, pod, config))
    assert (outside / "target").read_text() == "precious\n"


@pytest.mark.parametrize("handler", ["native", "runc"])
def test_reopen_log_does_not_follow_a_symlink_out(env: Daemon, outside: Path, own_pods, handler: str) -> None:
    """Rotated away and replaced by a symlink to a file outside: the reopen fails and writes nothing there;
    once the symlink is gone, the next reopen works."""
    pod_id, pod = run_pod(env, handler)
    config = container_config(env, ["/bin/sh", "-c", "while true; do echo tick; sleep 0.1; done"])
    container_id = create(env, pod_id, pod, config)
    start(env, container_id)
    log = Path(pod.log_directory, config.log_path)
    wait_for(lambda: log.exists() and b"tick" in log.read_bytes(), what="the container's first line")
    log.rename(log.with_name("0.log.rotated"))
    log.symlink_to(outside / "target")
    details = refused(env, outside, grpc.StatusCode.FAILED_PRECONDITION,
                      lambda: env.client.runtime.ReopenContainerLog(
                          api.ReopenContainerLogRequest(container_id=container_id), timeout=10))
    assert "leads out of the log directory" in details, details
    time.sleep(0.3)
    assert (outside / "target").read_text() == "precious\n"
    log.unlink()
    env.client.runtime.ReopenContainerLog(api.ReopenContainerLogRequest(container_id=container_id), timeout=10)
    wait_for(lambda: log.exists() and b"tick" in log.read_bytes(), what="a line in the reopened log")


def test_oci_create_with_a_log_path_out_is_refused(env: Daemon, outside: Path, own_pods) -> None:
    pod_id, pod = run_pod(env, "runc")
    link = Path(pod.log_directory, "out")
    link.symlink_to(outside)
    config = container_config(env)
    config.log_path = "out/oci.log"
    refused(env, outside, grpc.StatusCode.INVALID_ARGUMENT, lambda: create(env, pod_id, pod, config))


# -- ExecSync and the other calls ------------------------------------------------------------------------


@pytest.mark.parametrize(("cmd", "timeout", "code"), [
    (["/bin/echo", "a\0b"], 10, grpc.StatusCode.INVALID_ARGUMENT),
    (["/bin/true"], INT64_MAX, grpc.StatusCode.INVALID_ARGUMENT),
    (["/bin/true"], -1, grpc.StatusCode.INVALID_ARGUMENT),
    ([], 10, grpc.StatusCode.INVALID_ARGUMENT),
    (["/bin/echo", "a" * MAX_ARG_STRLEN], 10, grpc.StatusCode.INVALID_ARGUMENT),
], ids=["NUL in cmd", "timeout 2^63-1", "negative timeout", "no cmd", "argument past MAX_ARG_STRLEN"])
def test_bad_exec_sync_is_refused(env: Daemon, outside: Path, running, cmd, timeout, code) -> None:
    request = api.ExecSyncRequest(container_id=running[2], cmd=cmd, timeout=timeout)
    refused(env, outside, code, lambda: env.client.runtime.ExecSync(request, timeout=30))


BAD_IDS = {"NUL": "ab\0cd", "1 MB": MEGABYTE, "65 characters": "a" * 65}


@pytest.mark.parametrize("container_id", BAD_IDS.values(), ids=BAD_IDS.keys())
@pytest.mark.parametrize("rpc", ["ExecSync", "StartContainer", "StopContainer", "RemoveContainer", "ContainerStatus",
                                 "ReopenContainerLog", "ContainerStats", "UpdateContainerResources"])
def test_bad_container_id_is_refused(env: Daemon, outside: Path, rpc: str, container_id: str) -> None:
    request_class = {"ExecSync": api.ExecSyncRequest, "ContainerStats": api.ContainerStatsRequest,
                     "UpdateContainerResources": api.UpdateContainerResourcesRequest}.get(rpc) or getattr(
                         api, f"{rpc}Request")
    request = request_class(container_id=container_id)
    if rpc == "ExecSync":
        request.cmd.append("/bin/true")
    refused(env, outside, grpc.StatusCode.INVALID_ARGUMENT,
            lambda: getattr(env.client.runtime, rpc)(request, timeout=30))


@pytest.mark.parametrize("pod_id", BAD_IDS.values(), ids=BAD_IDS.keys())
@pytest.mark.parametrize("rpc", ["StopPodSandbox", "RemovePodSandbox", "PodSandboxStatus", "PodSandboxStats"])
def test_bad_pod_id_is_refused(env: Daemon, outside: Path, rpc: str, pod_id: str) -> None:
    request = getattr(api, f"{rpc}Request")(pod_sandbox_id=pod_id)
    refused(env, outside, grpc.StatusCode.INVALID_ARGUMENT,
            lambda: getattr(env.client.runtime, rpc)(request, timeout=30))


def test_unknown_ids_are_not_found_with_a_short_message(env: Daemon, outside: Path) -> None:
    unknown = "f" * 64
    details = refused(env, outside, grpc.StatusCode.NOT_FOUND, lambda: env.client.runtime.ContainerStatus(
        api.ContainerStatusRequest(container_id=unknown), timeout=10))
    assert unknown in details
    refused(env, outside, grpc.StatusCode.NOT_FOUND, lambda: env.client.runtime.ExecSync(
        api.ExecSyncRequest(container_id=unknown, cmd=["/bin/true"], timeout=5), timeout=10))


@pytest.mark.parametrize("image", ["127.0.0.1:99999/test/busybox:latest", "127.0.0.1:0/test/busybox:latest",
                                   "busy\0box", MEGABYTE, "docker.io/" + "a/" * 600 + "b"],
                         ids=["registry port 99999", "registry port 0", "NUL", "1 MB", "name of 1.2 kB"])
def test_bad_image_name_is_refused(env: Daemon, outside: Path, image: str) -> None:
    details = refused(env, outside, grpc.StatusCode.INVALID_ARGUMENT, lambda: env.client.image.PullImage(
        api.PullImageRequest(image=api.ImageSpec(image=image)), timeout=30))
    if "99999" in image:
        assert "port" in details


def test_bad_exec_and_port_forward_are_refused(env: Daemon, outside: Path, running) -> None:
    pod_id, _, container_id = running
    refused(env, outside, grpc.StatusCode.INVALID_ARGUMENT, lambda: env.client.runtime.Exec(
        api.ExecRequest(container_id=container_id, cmd=["/bin/sh\0"], stdout=True), timeout=10))
    refused(env, outside, grpc.StatusCode.INVALID_ARGUMENT, lambda: env.client.runtime.PortForward(
        api.PortForwardRequest(pod_sandbox_id=pod_id, port=[70000]), timeout=10))


def test_a_stop_timeout_past_any_clock_still_stops(env: Daemon, own_pods) -> None:
    """StopContainer's timeout is the pod's grace period, an int64 the kubelet passes on: 2^63-1 waits for
    the container to stop, it is no error."""
    pod_id, pod = run_pod(env)
    container_id = create(env, pod_id, pod, container_config(env, ["/bin/sh", "-c", "trap 'exit 0' TERM; "
                                                                   "while true; do sleep 0.1; done"]))
    start(env, container_id)
    time.sleep(0.3)  # the trap is set
    env.client.runtime.StopContainer(api.StopContainerRequest(container_id=container_id, timeout=INT64_MAX),
                                     timeout=30)
    status = env.client.runtime.ContainerStatus(api.ContainerStatusRequest(container_id=container_id),
                                                timeout=10).status
    assert status.state == api.ContainerState.CONTAINER_EXITED


# -- cgroup parents --------------------------------------------------------------------------------------


def _cgroup_exists(relative: str) -> list[Path]:
    return [root / relative.strip("/") for root in cgroups.hierarchy_roots() if (root / relative.strip("/")).is_dir()]


def test_cgroup_parents_a_pod_made_go_with_it(env: Daemon, own_pods) -> None:
    made = cgroups.KubeletParents(f"{PARENTS.top}made")
    config = pod_config(env)
    config.linux.cgroup_parent = made.parent("a", "b", "pod")
    try:
        pod_id = env.client.runtime.RunPodSandbox(api.RunPodSandboxRequest(config=config), timeout=60).pod_sandbox_id
        assert _cgroup_exists(made.path(config.linux.cgroup_parent))
        env.client.runtime.StopPodSandbox(api.StopPodSandboxRequest(pod_sandbox_id=pod_id), timeout=60)
        env.client.runtime.RemovePodSandbox(api.RemovePodSandboxRequest(pod_sandbox_id=pod_id), timeout=60)
        assert _cgroup_exists(made.root) == []
    finally:
        made.remove()


def test_cgroup_parents_go_with_the_last_pod_and_only_those_made(env: Daemon, own_pods) -> None:
    """Two pods under one parent crio-fast made: it stays while either is there. A parent that was there
    before (made by someone else) stays."""
    kept = cgroups.KubeletParents(f"{PARENTS.top}kept")
    try:
        kept.make()
        before = _cgroup_exists(kept.root)
        assert before
        configs = [pod_config(env), pod_config(env)]
        configs[0].linux.cgroup_parent = kept.parent("shared", "pod1")
        configs[1].linux.cgroup_parent = kept.parent("shared", "pod2")
        pod_ids = [env.client.runtime.RunPodSandbox(api.RunPodSandboxRequest(config=c), timeout=60).pod_sandbox_id
                   for c in configs]
        shared = kept.path(kept.parent("shared"))
        for pod_id in pod_ids:  # the first pod's creation made "shared"
            assert _cgroup_exists(shared)
            env.client.runtime.StopPodSandbox(api.StopPodSandboxRequest(pod_sandbox_id=pod_id), timeout=60)
            env.client.runtime.RemovePodSandbox(api.RemovePodSandboxRequest(pod_sandbox_id=pod_id), timeout=60)
        assert _cgroup_exists(shared) == []
        assert _cgroup_exists(kept.root) == before
    finally:
        kept.remove()


# -- ExecSync: bounded output, and a command that ends with the call -------------------------------------

OUTPUT_MAX = 16 << 20  # exec_sync_output_max's default
RSS_SLACK = 10 << 20


def _running(argv: list[str]) -> bool:
    for process in psutil.process_iter():
        try:
            if process.cmdline() == argv:
                return True
        except psutil.Error:
            pass  # gone, or a zombie
    return False


def _running_container(env: Daemon, handler: str) -> str:
    pod_id, pod = run_pod(env, handler)
    container_id = create(env, pod_id, pod, container_config(env))
    start(env, container_id)
    return container_id


def _exec_request(container_id: str, cmd: list[str], timeout: int) -> api.ExecSyncRequest:
    return api.ExecSyncRequest(container_id=container_id, cmd=cmd, timeout=timeout)


@pytest.mark.parametrize("handler", ["native", "runc"])
def test_exec_sync_of_endless_output_ends_at_the_clients_deadline(env: Daemon, own_pods, handler: str) -> None:
    """`yes` with timeout 0 under a 5 s deadline: the call ends in about 5 s, the command is gone, and the
    daemon's memory is back where it was."""
    container_id = _running_container(env, handler)
    # Whatever a first ExecSync brings into the daemon is there before the measurement.
    env.client.runtime.ExecSync(_exec_request(container_id, ["/bin/sh", "-c", "head -c 1000000 /dev/zero"], 10),
                                timeout=30)
    daemon = psutil.Process(env.proc.pid)
    before = daemon.memory_info().rss
    argv = ["yes", secrets.token_hex(4)]
    started = time.monotonic()
    with pytest.raises(grpc.RpcError) as info:
        env.client.runtime.ExecSync(_exec_request(container_id, argv, 0), timeout=5)
    elapsed = time.monotonic() - started
    assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert elapsed < scaled(5) + scaled(1.5)
    wait_for(lambda: not _running(argv), timeout=scaled(5), what="the command to be gone")
    wait_for(lambda: daemon.memory_info().rss <= before + RSS_SLACK, timeout=scaled(5),
             what=f"the daemon's RSS to come back to {before >> 20} MiB (+10): {daemon.memory_info().rss >> 20} MiB")
    print(f"{handler}: returned after {elapsed:.2f}s; daemon RSS {before / 2**20:.1f} MiB before, "
          f"{daemon.memory_info().rss / 2**20:.1f} MiB after")


@pytest.mark.parametrize("handler", ["native", "runc"])
def test_exec_sync_output_is_cut_and_the_reply_says_so(env: Daemon, own_pods, handler: str) -> None:
    container_id = _running_container(env, handler)
    daemon = psutil.Process(env.proc.pid)
    env.client.runtime.ExecSync(_exec_request(container_id, ["/bin/true"], 10), timeout=30)
    before = daemon.memory_info().rss
    size = OUTPUT_MAX + 222_784
    script = f"head -c {size} /dev/zero; head -c {size} /dev/zero >&2; echo done >&2"
    reply = env.client.runtime.ExecSync(_exec_request(container_id, ["/bin/sh", "-c", script], 60), timeout=90)
    assert reply.exit_code == 0
    assert reply.stdout == b"\0" * OUTPUT_MAX
    assert reply.stderr.startswith(b"\0" * OUTPUT_MAX)
    notes = reply.stderr[OUTPUT_MAX:].decode()
    assert f"stdout was cut at {OUTPUT_MAX} bytes; 222784 more bytes were dropped" in notes
    assert f"stderr was cut at {OUTPUT_MAX} bytes; 222789 more bytes were dropped" in notes
    del reply
    wait_for(lambda: daemon.memory_info().rss <= before + RSS_SLACK, timeout=scaled(5),
             what=f"the daemon's RSS to come back to {before >> 20} MiB (+10): {daemon.memory_info().rss >> 20} MiB")


@pytest.mark.parametrize("handler", ["native", "runc"])
def test_exec_sync_command_ends_when_the_client_cancels(env: Daemon, own_pods, handler: str) -> None:
    container_id = _running_container(env, handler)
    seconds = str(3600 + next(_numbers))
    argv = ["/bin/sh", "-c", f"sleep {seconds}; exit 0"]  # sh waits for sleep, its child
    call = env.client.runtime.ExecSync.future(_exec_request(container_id, argv, 0), timeout=120)
    wait_for(lambda: _running(["sleep", seconds]), timeout=scaled(10), what="the command to run")
    call.cancel()
    wait_for(lambda: not _running(argv) and not _running(["sleep", seconds]), timeout=scaled(5),
             what="the command and what it started to be gone")


@pytest.mark.parametrize("handler", ["native", "runc"])
def test_exec_sync_timeout_beyond_the_clients_deadline_ends_at_the_deadline(env: Daemon, own_pods,
                                                                            handler: str) -> None:
    container_id = _running_container(env, handler)
    argv = ["/bin/sleep", f"{3000 + next(_numbers)}"]
    started = time.monotonic()
    with pytest.raises(grpc.RpcError) as info:
        env.client.runtime.ExecSync(_exec_request(container_id, argv, 60), timeout=2)
    assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert time.monotonic() - started < scaled(2) + scaled(1.5)
    wait_for(lambda: not _running(argv), timeout=scaled(5), what="the command to be gone")
