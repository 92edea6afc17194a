"""Pods in user namespaces (Kubernetes' hostUsers: false), end to end on every runtime handler.

The kubelet sends NamespaceOption.userns_options with mode POD and one uid and one gid mapping; the pod's
monitor makes the user namespace with them, which owns the pod's network, IPC and UTS namespaces, and
every container of the pod joins it (native: the monitor's child, last; runc and crun: by path, from
config.json). The rootfs overlay's lower layers are ID-mapped mounts, so the image's files owned by the
node's root show as the container's root without a chown on the shared layers. These tests prove the
mapping from inside, and that the container's root has no privilege on the node.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
import tempfile
from pathlib import Path

import grpc
import pytest

from crio_fast.api import api_pb2 as api
from tests.support.daemon import DaemonDirs
from tests.support.oci_runtimes import HANDLERS, configure_oci_runtimes, handler_problem
from tests.support.pods import create, daemon_with_busybox, kubelet_container_linux, kubelet_pod_linux, start
from tests.support.streamclient import exec_over_spdy
from tests.support.timing import command_limit

pytestmark = pytest.mark.integration

HOST_ID = 200000  # the kubelet hands out ranges of 65536 at multiples of 65536
LENGTH = 65536
OVERFLOW_ID = 65534  # how an id without a mapping shows inside (/proc/sys/kernel/overflowuid)


def mapping(container_id: int = 0, host_id: int = HOST_ID, length: int = LENGTH) -> api.IDMapping:
    return api.IDMapping(container_id=container_id, host_id=host_id, length=length)


def userns_options(mode: int = api.NamespaceMode.POD, uids=None, gids=None) -> api.UserNamespace:
    default = [mapping()]
    return api.UserNamespace(mode=mode, uids=default if uids is None else uids,
                             gids=default if gids is None else gids)


def configure(dirs: DaemonDirs) -> list[str]:
    # runc and crun set a container up as the pod's root, who must reach its rootfs under the run root.
    os.chmod(dirs.base, 0o711)
    return configure_oci_runtimes(dirs)


@pytest.fixture(scope="module")
def env(registry, busybox_image, tmp_path_factory):
    with daemon_with_busybox(registry, busybox_image, tmp_path_factory.mktemp("regconf"), configure=configure) as d:
        # Where the kernel cannot (the monitor's probe says so: before Linux 5.19, or a root whose filesystem
        # refuses ID-mapped mounts), Status says so and the rest has nothing to test.
        status = d.client.runtime.Status(api.StatusRequest(), timeout=10)
        if not {h.name: h.features for h in status.runtime_handlers}["native"].user_namespaces:
            pytest.skip("this node's kernel gives pods no user namespaces (see `crio-fast check`)")
        yield d


@pytest.fixture(params=HANDLERS)
def handler(request) -> str:
    if problem := handler_problem(request.param):
        pytest.skip(problem)
    return request.param


_counter = iter(range(1_000_000))


@pytest.fixture
def pods(env):
    """Runs pods (as the kubelet would, with the given userns_options); every one is removed after the test."""
    made: list[str] = []

    def run_pod(options: api.UserNamespace | None, handler: str = "native", host_network: bool = False,
                pod_pid_namespace: bool = False) -> tuple[str, api.PodSandboxConfig]:
        n = next(_counter)
        config = api.PodSandboxConfig(
            metadata=api.PodSandboxMetadata(name=f"userns{n}", namespace="test", uid=f"userns-{n}"),
            hostname=f"userns{n}", log_directory=str(env.dirs.log_dir / f"userns{n}"), linux=kubelet_pod_linux())
        if options is not None:
            config.linux.security_context.namespace_options.userns_options.CopyFrom(options)
        if host_network:
            config.linux.security_context.namespace_options.network = api.NamespaceMode.NODE
        if pod_pid_namespace:  # shareProcessNamespace
            config.linux.security_context.namespace_options.pid = api.NamespaceMode.POD
        request = api.RunPodSandboxRequest(config=config, runtime_handler=handler)
        pod_id = env.client.runtime.RunPodSandbox(request, timeout=30).pod_sandbox_id
        made.append(pod_id)
        return pod_id, config

    try:
        yield run_pod
    finally:
        for pod_id in made:
            env.client.runtime.StopPodSandbox(api.StopPodSandboxRequest(pod_sandbox_id=pod_id), timeout=60)
            env.client.runtime.RemovePodSandbox(api.RemovePodSandboxRequest(pod_sandbox_id=pod_id), timeout=60)


def kubelet_container(pod_config: api.PodSandboxConfig):
    """A configure callback: the container-level namespace options as the kubelet sends them (the pod's)."""
    def configure(config: api.ContainerConfig) -> None:
        config.linux.CopyFrom(kubelet_container_linux())
        options = pod_config.linux.security_context.namespace_options
        if options.HasField("userns_options"):
            config.linux.security_context.namespace_options.userns_options.CopyFrom(options.userns_options)
    return configure


def sh(env, ctr: str, script: str) -> api.ExecSyncResponse:
    timeout = command_limit(None, 15)
    return env.client.runtime.ExecSync(api.ExecSyncRequest(container_id=ctr, cmd=["sh", "-c", script],
                                                           timeout=timeout), timeout=timeout + 10)


def ok(env, ctr: str, script: str) -> str:
    reply = sh(env, ctr, script)
    assert reply.exit_code == 0, (script, reply.stdout, reply.stderr)
    return reply.stdout.decode()


def container_pid(env, ctr: str) -> int:
    reply = env.client.runtime.ContainerStatus(api.ContainerStatusRequest(container_id=ctr, verbose=True), timeout=10)
    return int(json.loads(reply.info["info"])["pid"])


@pytest.fixture
def host_root_file():
    """A file of the node's root, mode 0644, in a directory of its own (removed after the test)."""
    directory = Path(tempfile.mkdtemp(prefix="crio-fast-userns-"))
    path = directory / "owned-by-host-root"
    path.write_text("host\n")
    os.chown(path, 0, 0)
    path.chmod(0o644)
    try:
        yield path
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def test_status_advertises_user_namespaces(env, handler):
    handlers = {h.name: h.features for h in env.client.runtime.Status(api.StatusRequest(), timeout=10).runtime_handlers}
    # This node's kernel (6.x) mounts overlays over ID-mapped layers, and the run root is open to the pods' roots.
    assert handlers[handler].user_namespaces


def test_a_pod_in_a_user_namespace(env, pods, handler, host_root_file):
    pod_id, pod_config = pods(userns_options(), handler=handler)
    configure = kubelet_container(pod_config)

    def with_volumes(config: api.ContainerConfig) -> None:
        configure(config)
        # Writable, but the file is the node's root's, 0644: the container's root is not that root.
        config.mounts.append(api.Mount(container_path="/plain/file", host_path=str(host_root_file)))

    ctr = create(env, pod_id, pod_config, ["sleep", "3600"], configure=with_volumes)
    start(env, ctr)

    # The mapping, as the container sees it (critest's check), and root inside.
    assert ok(env, ctr, "cat /proc/self/uid_map").split() == ["0", str(HOST_ID), str(LENGTH)]
    assert ok(env, ctr, "cat /proc/self/gid_map").split() == ["0", str(HOST_ID), str(LENGTH)]
    assert ok(env, ctr, "id -u; id -g").split() == ["0", "0"]
    # From the node: the container's init runs as the mapped ids, not as root.
    pid = container_pid(env, ctr)
    uid_line = next(line for line in Path(f"/proc/{pid}/status").read_text().splitlines() if line.startswith("Uid:"))
    assert uid_line.split()[1:] == [str(HOST_ID)] * 4
    assert Path(f"/proc/{pid}/ns/user").stat().st_ino != Path("/proc/self/ns/user").stat().st_ino

    # The image's files: root's show as root's (ID-mapped lower layers), tester's as tester's; nothing chowned.
    assert ok(env, ctr, "stat -c %u:%g /bin/busybox /etc/passwd /home/tester").split() == ["0:0", "0:0", "1000:1000"]
    # The container's root owns the writable layer: it writes in / and in the image's root-owned /etc.
    assert ok(env, ctr, "echo x > /new && echo y > /etc/new && stat -c %u:%g /new /etc/new").split() == ["0:0"] * 2

    # No privilege on the node: a file of the node's root, 0644, on a writable bind, cannot be written.
    assert ok(env, ctr, "stat -c %u /plain/file").strip() == str(OVERFLOW_ID)
    reply = sh(env, ctr, "echo intruder >> /plain/file")
    assert reply.exit_code != 0
    assert b"Permission denied" in reply.stderr or b"Operation not permitted" in reply.stderr
    assert host_root_file.read_text() == "host\n"

    # /proc, /sys, /dev, the pod's /dev/shm and mqueue work inside; /dev is the container's root's (its device
    # nodes too, natively: runc binds the node's, which stay the node's root's).
    ok(env, ctr, "test -r /proc/self/status && ls /sys/kernel >/dev/null && echo > /dev/null && test -c /dev/zero")
    assert ok(env, ctr, "stat -c %u:%g /dev && touch /dev/mine").split() == ["0:0"]
    if handler == "native":
        assert ok(env, ctr, "stat -c %u:%g /dev/null").split() == ["0:0"]
    ok(env, ctr, "echo shared > /dev/shm/x && cat /dev/shm/x && mount | grep -q ' /dev/mqueue '")


def test_an_idmapped_volume(env, pods, host_root_file):
    pod_id, pod_config = pods(userns_options())
    configure = kubelet_container(pod_config)

    def with_volume(config: api.ContainerConfig) -> None:
        configure(config)
        # ID-mapped as the pod is: the node's root shows as the container's root.
        config.mounts.append(api.Mount(container_path="/mapped", host_path=str(host_root_file.parent),
                                       uidMappings=[mapping()], gidMappings=[mapping()]))

    ctr = create(env, pod_id, pod_config, ["sleep", "3600"], configure=with_volume)
    start(env, ctr)
    assert ok(env, ctr, "stat -c %u:%g /mapped/owned-by-host-root").strip() == "0:0"
    ok(env, ctr, "echo mapped >> /mapped/owned-by-host-root")
    assert host_root_file.read_text() == "host\nmapped\n"
    assert host_root_file.stat().st_uid == 0  # written through the mapping, owner unchanged on disk


def test_an_idmapped_volume_needs_the_native_handler(env, pods, host_root_file):
    if problem := handler_problem("runc"):
        pytest.skip(problem)
    pod_id, pod_config = pods(userns_options(), handler="runc")
    configure = kubelet_container(pod_config)

    def with_volume(config: api.ContainerConfig) -> None:
        configure(config)
        config.mounts.append(api.Mount(container_path="/mapped", host_path=str(host_root_file.parent),
                                       uidMappings=[mapping()], gidMappings=[mapping()]))

    with pytest.raises(grpc.RpcError) as caught:
        create(env, pod_id, pod_config, ["true"], configure=with_volume)
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION, caught.value.details()


def test_the_pod_status_says_its_user_namespace(env, pods):
    pod_id, _ = pods(userns_options())
    status = env.client.runtime.PodSandboxStatus(api.PodSandboxStatusRequest(pod_sandbox_id=pod_id), timeout=10).status
    assert status.linux.namespaces.options.userns_options == userns_options()
    plain_id, _ = pods(None)
    request = api.PodSandboxStatusRequest(pod_sandbox_id=plain_id)
    status = env.client.runtime.PodSandboxStatus(request, timeout=10).status
    assert status.linux.namespaces.options.userns_options.mode == api.NamespaceMode.NODE


def test_a_second_container_joins_the_same_user_namespace(env, pods, handler):
    pod_id, pod_config = pods(userns_options(), handler=handler)
    first = create(env, pod_id, pod_config, ["sleep", "3600"], configure=kubelet_container(pod_config))
    second = create(env, pod_id, pod_config, ["sleep", "3600"], configure=kubelet_container(pod_config))
    start(env, first)
    start(env, second)
    inodes = {Path(f"/proc/{container_pid(env, c)}/ns/user").stat().st_ino for c in (first, second)}
    assert len(inodes) == 1
    assert ok(env, second, "cat /proc/self/uid_map").split() == ["0", str(HOST_ID), str(LENGTH)]


def test_a_pod_wide_pid_namespace_in_a_user_namespace(env, pods, handler):
    # The pod's pid namespace belongs to its user namespace: runc's init joins it after the user namespace.
    pod_id, pod_config = pods(userns_options(), handler=handler, pod_pid_namespace=True)
    configure = kubelet_container(pod_config)

    def pod_pid(config: api.ContainerConfig) -> None:
        configure(config)
        config.linux.security_context.namespace_options.pid = api.NamespaceMode.POD

    first = create(env, pod_id, pod_config, ["sleep", "3600"], configure=pod_pid)
    second = create(env, pod_id, pod_config, ["sleep", "3600"], configure=pod_pid)
    start(env, first)
    start(env, second)
    assert ok(env, second, "cat /proc/1/cmdline").strip("\0") == "crio-fast-pod-init"
    assert ok(env, second, "cat /proc/self/uid_map").split() == ["0", str(HOST_ID), str(LENGTH)]
    assert len(ok(env, second, "ls -d /proc/[0-9]*").split()) >= 3  # the init, both containers (and the ls)


def test_a_container_runs_as_its_user_inside_the_mapping(env, pods, handler):
    pod_id, pod_config = pods(userns_options(), handler=handler)
    configure = kubelet_container(pod_config)

    def as_tester(config: api.ContainerConfig) -> None:
        configure(config)
        config.linux.security_context.run_as_user.value = 1000

    ctr = create(env, pod_id, pod_config, ["sleep", "3600"], configure=as_tester)
    start(env, ctr)
    assert ok(env, ctr, "id -u").strip() == "1000"
    uid_line = next(line for line in Path(f"/proc/{container_pid(env, ctr)}/status").read_text().splitlines()
                    if line.startswith("Uid:"))
    assert uid_line.split()[1] == str(HOST_ID + 1000)


def test_what_the_set_up_makes_is_the_containers_roots(env, pods, handler, host_root_file):
    pod_id, pod_config = pods(userns_options(), handler=handler)
    configure = kubelet_container(pod_config)

    def with_new_paths(config: api.ContainerConfig) -> None:
        configure(config)
        config.working_dir = "/work/dir"  # not in the image: made by the set-up
        config.mounts.append(api.Mount(container_path="/made/for/file", host_path=str(host_root_file),
                                       readonly=True))

    ctr = create(env, pod_id, pod_config, ["sleep", "3600"], configure=with_new_paths)
    start(env, ctr)
    # As the container's root would have made them in its user namespace: its own, and it may write there.
    assert ok(env, ctr, "stat -c %u:%g /work /work/dir /made /made/for").split() == ["0:0"] * 4
    ok(env, ctr, "touch /work/dir/x /made/y")


def test_a_terminal_in_a_user_namespace(env, pods):
    pod_id, pod_config = pods(userns_options())
    configure = kubelet_container(pod_config)

    def with_tty(config: api.ContainerConfig) -> None:
        configure(config)
        config.tty = True

    ctr = create(env, pod_id, pod_config, ["sleep", "3600"], configure=with_tty)
    start(env, ctr)
    # The container's own terminal, on its devpts: its root's and the tty group's (5) inside.
    # (Once the init has exec'd: until then, between its setresuid and execve, it is not dumpable and its
    # /proc/1/fd is closed to everyone but the node's root.)
    assert ok(env, ctr, "for i in $(seq 100); do stat -L -c %u:%g /proc/1/fd/0 2>/dev/null && exit; sleep 0.05; "
                        "done; exit 1").strip() == "0:5"
    # An interactive exec's terminal (kubectl exec -it), opened by the exec helper in the user namespace.
    request = api.ExecRequest(container_id=ctr, cmd=["sh", "-c", "stat -L -c %u:%g /proc/self/fd/0"], stdout=True,
                              tty=True)
    url = env.client.runtime.Exec(request, timeout=10).url
    stdout, _, _ = asyncio.run(exec_over_spdy(url, stdout=True, stderr=False, tty=True))
    assert stdout.decode().split() == ["0:5"], stdout


def test_a_pod_on_the_nodes_network_in_a_user_namespace(env, pods):
    features = env.client.runtime.Status(api.StatusRequest(), timeout=10).features
    assert features.user_namespaces_host_network  # what the kubelet asks before it sends such a pod
    pod_id, pod_config = pods(userns_options(), host_network=True)
    configure = kubelet_container(pod_config)

    def with_net_admin(config: api.ContainerConfig) -> None:
        configure(config)
        config.linux.security_context.capabilities.add_capabilities.append("NET_ADMIN")

    ctr = create(env, pod_id, pod_config, ["sleep", "3600"], configure=with_net_admin)
    start(env, ctr)
    assert ok(env, ctr, "cat /proc/self/uid_map").split() == ["0", str(HOST_ID), str(LENGTH)]
    pid = container_pid(env, ctr)
    assert Path(f"/proc/{pid}/ns/net").stat().st_ino == Path("/proc/self/ns/net").stat().st_ino
    # CAP_NET_ADMIN in the pod's user namespace is nothing in the node's network namespace, which the
    # node's user namespace owns: a route cannot be added (TEST-NET-2, removed again should it be).
    route = "198.51.100.0/24"
    try:
        reply = sh(env, ctr, f"ip route add {route} dev lo")
        assert reply.exit_code != 0 and b"not permitted" in reply.stderr, reply
    finally:
        subprocess.run(["ip", "route", "del", route, "dev", "lo"], capture_output=True, check=False)


def test_mode_node_is_the_nodes_user_namespace(env, pods):
    pod_id, pod_config = pods(userns_options(api.NamespaceMode.NODE, [], []))
    ctr = create(env, pod_id, pod_config, ["sleep", "3600"], configure=kubelet_container(pod_config))
    start(env, ctr)
    assert ok(env, ctr, "cat /proc/self/uid_map").split() == Path("/proc/self/uid_map").read_text().split()


@pytest.mark.parametrize("options", [
    # critest v1.36's four rejections
    userns_options(uids=[mapping(0, 1000, 100000), mapping(0, 2000, 100000)],
                   gids=[mapping(0, 1000, 100000), mapping(0, 2000, 100000)]),
    userns_options(uids=[mapping(1, 1000, 100000)], gids=[mapping(1, 1000, 100000)]),
    userns_options(api.NamespaceMode.CONTAINER, [], []),
    userns_options(api.NamespaceMode.TARGET, [], []),
    # and more
    userns_options(uids=[]),
    userns_options(uids=[mapping(length=0)], gids=[mapping(length=0)]),
    userns_options(uids=[mapping(host_id=2**32 - 100)], gids=[mapping(host_id=2**32 - 100)]),
], ids=["two-mappings", "root-unmapped", "container", "target", "no-uid-mapping", "empty", "overflow"])
def test_bad_user_namespace_options_are_invalid_argument(env, pods, options):
    before = {p.id for p in env.client.runtime.ListPodSandbox(api.ListPodSandboxRequest(), timeout=10).items}
    with pytest.raises(grpc.RpcError) as caught:
        pods(options)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT, caught.value.details()
    after = {p.id for p in env.client.runtime.ListPodSandbox(api.ListPodSandboxRequest(), timeout=10).items}
    assert after == before


def test_a_volume_mapped_otherwise_than_the_pod_is_refused(env, pods, host_root_file):
    pod_id, pod_config = pods(userns_options())
    configure = kubelet_container(pod_config)

    def other_mapping(config: api.ContainerConfig) -> None:
        configure(config)
        config.mounts.append(api.Mount(container_path="/mapped", host_path=str(host_root_file.parent),
                                       uidMappings=[mapping(host_id=HOST_ID + LENGTH)],
                                       gidMappings=[mapping(host_id=HOST_ID + LENGTH)]))

    with pytest.raises(grpc.RpcError) as caught:
        create(env, pod_id, pod_config, ["true"], configure=other_mapping)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT, caught.value.details()


def test_a_daemon_restart_keeps_the_pods_user_namespace(env, pods):
    pod_id, pod_config = pods(userns_options())
    first = create(env, pod_id, pod_config, ["sleep", "3600"], configure=kubelet_container(pod_config))
    start(env, first)
    env.proc.send_signal(signal.SIGKILL)  # the monitors outlive the daemon
    env.proc.wait(10)
    env.start()
    # The running container still answers exec, and a new one joins the same user namespace.
    assert ok(env, first, "id -u").strip() == "0"
    second = create(env, pod_id, pod_config, ["sleep", "3600"], configure=kubelet_container(pod_config))
    start(env, second)
    inodes = {Path(f"/proc/{container_pid(env, c)}/ns/user").stat().st_ino for c in (first, second)}
    assert len(inodes) == 1
    assert ok(env, second, "cat /proc/self/uid_map").split() == ["0", str(HOST_ID), str(LENGTH)]


def test_the_pod_dir_is_left_clean(env, pods):
    pod_id, pod_config = pods(userns_options())
    pod_dir = Path(env.dirs.runroot) / "pods" / pod_id
    assert (pod_dir / "ns" / "user").exists()
    env.client.runtime.StopPodSandbox(api.StopPodSandboxRequest(pod_sandbox_id=pod_id), timeout=60)
    assert not (pod_dir / "ns").exists()
    mounts = Path("/proc/self/mountinfo").read_text()
    assert str(pod_dir) not in mounts
