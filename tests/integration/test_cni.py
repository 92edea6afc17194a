"""Pod networking through real CNI plugins (Debian's containernetworking-plugins).

Every test writes its own conflist into the daemon's private network dir: a
bridge with a unique name, a subnet of its own from 10.250.x.0/24, host-local
IPAM with its data under the test's temp dir, no masquerading and no default
route, so nothing leaves the machine. Teardown removes the pods, the bridge
and every iptables rule the plugins left, whatever the test did.
"""

from __future__ import annotations

import contextlib
import fcntl
import ipaddress
import os
import re
import subprocess
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Iterator

import grpc
import psutil
import pytest

from crio_fast.api import api_pb2 as api
from tests.support import cgroups
from tests.support.daemon import Daemon, make_dirs, remove_dirs
from tests.support.pods import daemon_with_busybox
from tests.support.network import (
    PLUGIN_DIR, BridgeNetwork, bridge_ports, existing_hostport_chains, free_port, iptables_nat, link_exists,
    mounts_outside_pool, netns_cookie, netns_pool_dir, pool_entries, remove_hostport_chains, remove_network, write_network,
)
from tests.support.timing import command_limit, scaled

_pod_numbers = iter(range(1_000_000))

pytestmark = [pytest.mark.integration, pytest.mark.skipif(
    not os.path.exists(f"{PLUGIN_DIR}/bridge"), reason="containernetworking-plugins is not installed"
)]


def teardown_network(d: Daemon | None, network: BridgeNetwork) -> None:
    try:
        if d is not None and d.proc is not None and d.proc.poll() is None:
            remove_all_pods(d)
    finally:
        remove_network(network)


def remove_all_pods(d: Daemon) -> None:
    for pod in d.client.runtime.ListPodSandbox(api.ListPodSandboxRequest(), timeout=30).items:
        d.client.runtime.StopPodSandbox(api.StopPodSandboxRequest(pod_sandbox_id=pod.id), timeout=60)
        d.client.runtime.RemovePodSandbox(api.RemovePodSandboxRequest(pod_sandbox_id=pod.id), timeout=60)


@pytest.fixture(scope="module")
def hostport_chains_guard() -> Iterator[None]:
    """portmap creates shared top-level chains once; drop them at the end if this module made them."""
    before = existing_hostport_chains()
    try:
        yield
    finally:
        if not before:
            remove_hostport_chains()


@pytest.fixture(scope="module")
def env(registry, busybox_image, tmp_path_factory, hostport_chains_guard):
    conf_dir = tmp_path_factory.mktemp("regconf")
    with daemon_with_busybox(registry, busybox_image, conf_dir, "--cni-plugin-dir", PLUGIN_DIR) as d:
        yield d


@pytest.fixture
def net(env: Daemon, tmp_path: Path) -> Iterator[BridgeNetwork]:
    network = write_network(env.dirs.network_dir, tmp_path)
    try:
        yield network
    finally:
        teardown_network(env, network)


def pod_config(d: Daemon, port_mappings: list[api.PortMapping] | None = None) -> api.PodSandboxConfig:
    n = next(_pod_numbers)
    return api.PodSandboxConfig(
        metadata=api.PodSandboxMetadata(name=f"net{n}", namespace="cni-test", uid=f"uid-net-{n}", attempt=0),
        hostname=f"net{n}",
        log_directory=str(d.dirs.log_dir / f"net{n}"),
        port_mappings=port_mappings or [],
    )


def run_pod(d: Daemon, **kw) -> tuple[str, api.PodSandboxConfig]:
    config = pod_config(d, **kw)
    pod_id = d.client.runtime.RunPodSandbox(api.RunPodSandboxRequest(config=config), timeout=60).pod_sandbox_id
    return pod_id, config


def pod_status(d: Daemon, pod_id: str) -> api.PodSandboxStatus:
    return d.client.runtime.PodSandboxStatus(api.PodSandboxStatusRequest(pod_sandbox_id=pod_id), timeout=10).status


def start_container(d: Daemon, pod_id: str, pod: api.PodSandboxConfig, command: list[str]) -> str:
    config = api.ContainerConfig(
        metadata=api.ContainerMetadata(name=f"c{next(_pod_numbers)}"),
        image=api.ImageSpec(image=d.image), command=command, log_path="ctr.log",
    )
    req = api.CreateContainerRequest(pod_sandbox_id=pod_id, config=config, sandbox_config=pod)
    ctr = d.client.runtime.CreateContainer(req, timeout=30).container_id
    d.client.runtime.StartContainer(api.StartContainerRequest(container_id=ctr), timeout=30)
    return ctr


def exec_sync(d: Daemon, ctr: str, cmd: list[str], timeout: int | None = None) -> api.ExecSyncResponse:
    timeout = command_limit(timeout, 10)
    request = api.ExecSyncRequest(container_id=ctr, cmd=cmd, timeout=timeout)
    return d.client.runtime.ExecSync(request, timeout=timeout + 5)


def http_server(d: Daemon, pod_id: str, pod: api.PodSandboxConfig, port: int, body: str) -> str:
    """busybox httpd serving ``body`` as /index.html on ``port``."""
    script = f"mkdir -p /www && echo {body} > /www/index.html && exec httpd -f -p {port} -h /www"
    return start_container(d, pod_id, pod, ["sh", "-c", script])


def fetch(url: str, timeout: float = 10.0) -> str:
    """GET with retries until the server is up (httpd takes a moment to listen)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                return response.read().decode().strip()
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def test_two_pods_reach_each_other_over_tcp(env: Daemon, net: BridgeNetwork) -> None:
    server_id, server_pod = run_pod(env)
    client_id, client_pod = run_pod(env)
    server_ip = pod_status(env, server_id).network.ip
    client_ip = pod_status(env, client_id).network.ip
    assert ipaddress.IPv4Address(server_ip) in net.subnet
    assert ipaddress.IPv4Address(client_ip) in net.subnet
    assert server_ip != client_ip
    assert sorted(net.allocations()) == sorted([server_ip, client_ip])

    # busybox nc: the server answers each connection with one line; the client prints what it got.
    start_container(env, server_id, server_pod,
                    ["sh", "-c", "while true; do echo hello-from-server | nc -l -p 5000; done"])
    client = start_container(env, client_id, client_pod, ["sleep", "60"])
    addresses = exec_sync(env, client, ["ip", "-o", "-4", "addr", "show"]).stdout.decode()
    assert re.search(rf"eth0\s+inet {re.escape(client_ip)}/24", addresses), addresses
    assert re.search(r"lo\s+inet 127\.0\.0\.1/8", addresses), addresses  # the pod monitor brought lo up
    routes = exec_sync(env, client, ["ip", "route"]).stdout.decode()
    assert "default" not in routes, routes

    deadline = time.monotonic() + 10
    while True:
        result = exec_sync(env, client, ["sh", "-c", f"nc -w 2 {server_ip} 5000 </dev/null"])
        if result.stdout or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert result.exit_code == 0, result.stderr
    assert result.stdout.decode().strip() == "hello-from-server"


def test_host_port_reachable_from_localhost_and_bridge_ip(env: Daemon, net: BridgeNetwork) -> None:
    host_port = free_port()
    pod_id, pod = run_pod(env, port_mappings=[api.PortMapping(
        protocol=api.Protocol.TCP, container_port=8080, host_port=host_port)])
    http_server(env, pod_id, pod, 8080, "hello-via-hostport")
    assert fetch(f"http://127.0.0.1:{host_port}/index.html") == "hello-via-hostport"
    assert fetch(f"http://{net.gateway}:{host_port}/index.html") == "hello-via-hostport"
    assert pod_id in iptables_nat()  # portmap's DNAT rule names the pod


def test_stop_and_remove_leave_nothing_behind(env: Daemon, net: BridgeNetwork) -> None:
    pod_id, _ = run_pod(env, port_mappings=[api.PortMapping(container_port=80, host_port=free_port())])
    ip = pod_status(env, pod_id).network.ip
    veths = bridge_ports(net.bridge)
    assert len(veths) == 1
    assert net.allocations() == [ip]
    assert pod_id in iptables_nat()
    cache_dir = env.dirs.runroot / "cni" / "results"
    assert any(pod_id in name for name in os.listdir(cache_dir))
    pod_dir = env.dirs.runroot / "pods" / pod_id
    assert pod_dir.is_dir()

    env.client.runtime.StopPodSandbox(api.StopPodSandboxRequest(pod_sandbox_id=pod_id), timeout=30)
    assert not link_exists(veths[0])
    assert net.allocations() == []
    nat = iptables_nat()
    assert pod_id not in nat
    assert not re.search(r"^:CNI-DN-", nat, re.MULTILINE), nat
    assert "crio-fast" not in nat
    assert not any(pod_id in name for name in os.listdir(cache_dir))
    status = pod_status(env, pod_id)
    assert status.state == api.PodSandboxState.SANDBOX_NOTREADY
    assert status.network.ip == ""

    # A second stop finds nothing to undo and succeeds.
    env.client.runtime.StopPodSandbox(api.StopPodSandboxRequest(pod_sandbox_id=pod_id), timeout=30)
    env.client.runtime.RemovePodSandbox(api.RemovePodSandboxRequest(pod_sandbox_id=pod_id), timeout=30)
    assert not pod_dir.exists()
    assert pod_id not in Path("/proc/self/mountinfo").read_text()  # the netns bind mount is gone


def test_del_after_daemon_restart_uses_cached_result(env: Daemon, net: BridgeNetwork) -> None:
    pod_id, _ = run_pod(env, port_mappings=[api.PortMapping(container_port=80, host_port=free_port())])
    assert len(bridge_ports(net.bridge)) == 1
    env.stop()
    # The configuration changes while the daemon is down: DEL must still undo the original ADD.
    net.conflist.unlink()
    env.start()
    env.client.runtime.StopPodSandbox(api.StopPodSandboxRequest(pod_sandbox_id=pod_id), timeout=30)
    assert bridge_ports(net.bridge) == []
    assert net.allocations() == []
    assert pod_id not in iptables_nat()


def test_twenty_concurrent_pods_get_distinct_ips(env: Daemon, net: BridgeNetwork) -> None:
    with ThreadPoolExecutor(max_workers=20) as pool:
        pods = list(pool.map(lambda _: run_pod(env)[0], range(20)))
    ips = [pod_status(env, pod_id).network.ip for pod_id in pods]
    assert len(set(ips)) == 20, ips
    assert all(ipaddress.IPv4Address(ip) in net.subnet for ip in ips)
    assert sorted(net.allocations()) == sorted(ips)
    assert len(bridge_ports(net.bridge)) == 20


def test_host_network_pod_skips_cni(env: Daemon, net: BridgeNetwork) -> None:
    config = pod_config(env)
    config.linux.security_context.namespace_options.network = api.NamespaceMode.NODE
    pod_id = env.client.runtime.RunPodSandbox(api.RunPodSandboxRequest(config=config), timeout=30).pod_sandbox_id
    assert pod_status(env, pod_id).network.ip == ""
    assert net.allocations() == []
    assert not link_exists(net.bridge)


BROKEN_PLUGIN = """#!/bin/sh
# A CNI plugin that refuses every ADD with a CNI error object and accepts everything else.
cat >/dev/null
if [ "$CNI_COMMAND" = ADD ]; then
  printf '{"cniVersion":"1.0.0","code":11,"msg":"cf-broken refuses pod %s","details":"test plugin"}' "$CNI_CONTAINERID"
  exit 1
fi
exit 0
"""


def test_failing_plugin_fails_run_and_leaves_nothing(
    tmp_path: Path, hostport_chains_guard
) -> None:
    plugin_dir = tmp_path / "plugins"
    plugin_dir.mkdir()
    (plugin_dir / "cf-broken").write_text(BROKEN_PLUGIN)
    (plugin_dir / "cf-broken").chmod(0o755)
    dirs = make_dirs()
    d = Daemon(dirs, "--cni-plugin-dir", str(plugin_dir), "--cni-plugin-dir", PLUGIN_DIR)
    # The bridge runs first and succeeds: the failure comes after it has done its part.
    network = write_network(dirs.network_dir, tmp_path, extra_plugins=[{"type": "cf-broken"}])
    try:
        d.start()
        with pytest.raises(grpc.RpcError) as failure:
            run_pod(d)
        assert "CNI plugin cf-broken failed (ADD): cf-broken refuses pod" in failure.value.details()
        assert "test plugin" in failure.value.details()
        assert d.client.runtime.ListPodSandbox(api.ListPodSandboxRequest(), timeout=10).items == []
        assert os.listdir(dirs.runroot / "pods") == []
        assert bridge_ports(network.bridge) == []
        assert network.allocations() == []
        results = dirs.runroot / "cni" / "results"
        assert not results.exists() or os.listdir(results) == []
        assert mounts_outside_pool(dirs.runroot) == []
    finally:
        try:
            teardown_network(d, network)
            d.stop()
        finally:
            d.kill()
            remove_dirs(dirs)


# -- network namespaces made ahead (crio_fast.network.netns_pool) -----------------------------------------

NS_GET_USERNS = 0xB701  # _IO(0xb7, 0x1): the user namespace that owns a namespace


def wait_for_pool(runroot: Path, size: int, timeout: float = 20.0) -> list[str]:
    deadline = time.monotonic() + scaled(timeout)
    while len(entries := pool_entries(runroot)) != size:
        assert time.monotonic() < deadline, f"the pool holds {entries}, not {size} namespaces"
        time.sleep(0.05)
    return entries


def lo_is_up(netns: Path | str) -> bool:
    line = subprocess.run(["nsenter", f"--net={netns}", "ip", "-o", "link", "show", "lo"],
                          capture_output=True, text=True, check=True).stdout
    return "<LOOPBACK,UP" in line


def pool_daemon(tmp_path: Path, size: int) -> Daemon:
    dirs = make_dirs()
    (dirs.config_dir / "10-pool.conf").write_text(f"[crio.network]\nnetns_pool_size = {size}\n")
    return Daemon(dirs, "--cni-plugin-dir", PLUGIN_DIR)


def test_a_pod_joins_a_namespace_made_ahead_and_the_pool_refills(env: Daemon, net: BridgeNetwork) -> None:
    before = wait_for_pool(env.dirs.runroot, 4)
    inodes = {os.stat(path).st_ino: path for path in before}
    assert all(lo_is_up(path) for path in before)
    pod_id, pod = run_pod(env)
    pod_netns = env.dirs.runroot / "pods" / pod_id / "ns" / "net"
    taken = inodes.get(os.stat(pod_netns).st_ino)
    assert taken is not None, "the pod made its own network namespace"
    # The pool's pin is dropped (the pod holds the namespace by its own) and a new namespace takes its place.
    after = wait_for_pool(env.dirs.runroot, 4)
    assert taken not in after and len(set(after) - set(before)) == 1
    assert lo_is_up(pod_netns)
    ip = pod_status(env, pod_id).network.ip
    assert ipaddress.IPv4Address(ip) in net.subnet
    http_server(env, pod_id, pod, 8080, "hello-from-a-pooled-netns")
    assert fetch(f"http://{ip}:8080/index.html") == "hello-from-a-pooled-netns"  # from the host, over the bridge


def test_pool_size_zero_makes_each_namespace_in_the_request(tmp_path: Path, hostport_chains_guard) -> None:
    d = pool_daemon(tmp_path, 0)
    network = write_network(d.dirs.network_dir, tmp_path)
    try:
        d.start()
        pod_id, _ = run_pod(d)
        assert not netns_pool_dir(d.dirs.runroot).exists()
        pod_netns = d.dirs.runroot / "pods" / pod_id / "ns" / "net"
        assert lo_is_up(pod_netns)
        assert ipaddress.IPv4Address(pod_status(d, pod_id).network.ip) in network.subnet
        assert len(bridge_ports(network.bridge)) == 1
    finally:
        try:
            teardown_network(d, network)
            d.stop()
        finally:
            d.kill()
            remove_dirs(d.dirs)


def pinned_cookies(paths: list[str]) -> dict[str, int]:
    return {path: cookie for path in paths if (cookie := netns_cookie(path)) is not None}


def holders_of(cookies: set[int]) -> list[str]:
    """Mounts and processes (their namespace or an open fd) that hold a network namespace of these cookies."""
    found = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            point = line.split()[4]
            if line.split()[3].startswith("net:[") and netns_cookie(point) in cookies:
                found.append(f"mount {point}")
    for pid in psutil.pids():
        links = [f"/proc/{pid}/ns/net"]
        with contextlib.suppress(OSError):
            links += [f"/proc/{pid}/fd/{fd}" for fd in os.listdir(f"/proc/{pid}/fd")]
        for link in links:
            with contextlib.suppress(OSError):
                if os.readlink(link).startswith("net:[") and netns_cookie(link) in cookies:
                    found.append(f"process {pid} ({link})")
    return found


def test_daemon_stop_destroys_the_pool_and_pods_leave_nothing(tmp_path: Path, hostport_chains_guard) -> None:
    d = pool_daemon(tmp_path, 3)
    network = write_network(d.dirs.network_dir, tmp_path)
    try:
        d.start()
        cookies = pinned_cookies(wait_for_pool(d.dirs.runroot, 3))
        assert len(cookies) == 3
        pod_id, _ = run_pod(d)
        veth = bridge_ports(network.bridge)
        assert len(veth) == 1
        d.client.runtime.StopPodSandbox(api.StopPodSandboxRequest(pod_sandbox_id=pod_id), timeout=30)
        d.client.runtime.RemovePodSandbox(api.RemovePodSandboxRequest(pod_sandbox_id=pod_id), timeout=30)
        assert not link_exists(veth[0]) and network.allocations() == []
        assert pod_id not in iptables_nat()
        remaining = pinned_cookies(wait_for_pool(d.dirs.runroot, 3))
        assert d.stop() == 0
        assert not netns_pool_dir(d.dirs.runroot).exists()
        assert str(d.dirs.runroot) not in Path("/proc/self/mountinfo").read_text()
        assert holders_of(set(cookies.values()) | set(remaining.values())) == []
    finally:
        try:
            teardown_network(d, network)
            d.stop()
        finally:
            d.kill()
            remove_dirs(d.dirs)


def test_a_killed_daemons_pool_is_destroyed_at_its_next_start(tmp_path: Path) -> None:
    d = pool_daemon(tmp_path, 2)
    try:
        d.start()
        old = pinned_cookies(wait_for_pool(d.dirs.runroot, 2))
        d.kill()  # SIGKILL: no shutdown
        assert holders_of(set(old.values())) != []  # still pinned under the run root
        d.start()
        new = pinned_cookies(wait_for_pool(d.dirs.runroot, 2))
        assert holders_of(set(old.values())) == []
        assert not set(new) & set(old) and len(new) == 2
        assert d.stop() == 0
        assert holders_of(set(new.values())) == []
    finally:
        d.kill()
        remove_dirs(d.dirs)


def test_a_pod_in_a_user_namespace_makes_its_own_network_namespace(env: Daemon, net: BridgeNetwork) -> None:
    status = env.client.runtime.Status(api.StatusRequest(), timeout=10)
    if not {h.name: h.features for h in status.runtime_handlers}["native"].user_namespaces:
        pytest.skip("this node's kernel gives pods no user namespaces (see `crio-fast check`)")
    pool_inodes = {os.stat(path).st_ino for path in wait_for_pool(env.dirs.runroot, 4)}
    config = pod_config(env)
    config.linux.security_context.namespace_options.userns_options.CopyFrom(api.UserNamespace(
        mode=api.NamespaceMode.POD, uids=[api.IDMapping(container_id=0, host_id=200000, length=65536)],
        gids=[api.IDMapping(container_id=0, host_id=200000, length=65536)]))
    pod_id = env.client.runtime.RunPodSandbox(api.RunPodSandboxRequest(config=config), timeout=60).pod_sandbox_id
    ns_dir = env.dirs.runroot / "pods" / pod_id / "ns"
    assert os.stat(ns_dir / "net").st_ino not in pool_inodes
    assert len(pool_entries(env.dirs.runroot)) == 4  # nothing was taken
    # Its network namespace is owned by its user namespace (so its root has CAP_NET_ADMIN over it).
    fd = os.open(ns_dir / "net", os.O_RDONLY)
    try:
        owner = fcntl.ioctl(fd, NS_GET_USERNS)
        try:
            assert os.fstat(owner).st_ino == os.stat(ns_dir / "user").st_ino
        finally:
            os.close(owner)
    finally:
        os.close(fd)
    assert lo_is_up(ns_dir / "net")
    ip = pod_status(env, pod_id).network.ip
    assert ipaddress.IPv4Address(ip) in net.subnet
    http_server(env, pod_id, config, 8080, "hello-from-a-user-namespace")
    assert fetch(f"http://{ip}:8080/index.html") == "hello-from-a-user-namespace"


def test_a_start_that_fails_beside_its_add_leaves_no_network_behind(env: Daemon, net: BridgeNetwork) -> None:
    """With a namespace made ahead the ADD runs beside the monitor's start and the cgroups: a pod cgroup that
    cannot be made fails the start, and what the ADD did is undone (veth, address, rules, cache entry)."""
    if cgroups.driver() != "cgroupfs":
        pytest.skip("a pod parent that cannot be made is a control file only under the cgroupfs driver")
    wait_for_pool(env.dirs.runroot, 4)
    config = pod_config(env)
    config.linux.cgroup_parent = "/cgroup.procs"
    with pytest.raises(grpc.RpcError) as failure:
        env.client.runtime.RunPodSandbox(api.RunPodSandboxRequest(config=config), timeout=60)
    assert failure.value.code() == grpc.StatusCode.INVALID_ARGUMENT, failure.value.details()
    assert "pod cgroup" in failure.value.details()
    assert env.client.runtime.ListPodSandbox(api.ListPodSandboxRequest(), timeout=10).items == []
    assert os.listdir(env.dirs.runroot / "pods") == []
    assert bridge_ports(net.bridge) == [] and net.allocations() == []
    assert "cni-test" not in iptables_nat()
    results = env.dirs.runroot / "cni" / "results"
    assert not results.exists() or os.listdir(results) == []
    assert mounts_outside_pool(env.dirs.runroot) == []
    wait_for_pool(env.dirs.runroot, 4)
