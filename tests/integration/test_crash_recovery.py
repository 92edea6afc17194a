"""A daemon that dies in the middle of a call leaves nothing a restarted daemon cannot remove.

Deterministic: CRIO_FAST_TEST_CRASH_AT (crio_fast/crashpoints.py) makes the daemon exit at each
step of RunPodSandbox, CreateContainer, StartContainer, StopPodSandbox and RemovePodSandbox in
turn, for native containers and runc's. After each crash a daemon restarted on the same root and
run root lists what it should, and once every listed pod is stopped and removed nothing of the pods
is left on the node (``leftovers``): no process, mount (namespace pins, shm, the pod dir's
self-bind, image volumes, a bundle's rootfs), cgroup in any hierarchy, network namespace, veth,
IPAM reservation, CNI cache entry, runtime state or file.
Randomized: bursts of pods started at once, the daemon SIGKILLed part-way, restarted, everything
removed, checked the same way. And a pod whose monitor is SIGKILLed is not ready at once, its
containers are killed and reaped, and its removal leaves nothing.

Every case runs on one node of the module: one root with busybox pulled, one run root, one CNI
bridge network (written into the network dir or taken out of it per case), runc configured, and a
cgroup parent that stands for the kubelet's pod cgroups.
"""

from __future__ import annotations

import json
import os
import random
import secrets
import signal
import sqlite3
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import grpc
import psutil
import pytest

from crio_fast.api import api_pb2 as api
from crio_fast.cgroups import CgroupManager
from crio_fast.crashpoints import CRASH_EXIT_CODE, ENVIRONMENT_VARIABLE, STEPS
from tests.support import cgroups
from tests.support.daemon import Daemon, DaemonDirs, make_dirs, remove_dirs
from tests.support.fixtures import write_registries_conf
from tests.support.oci_runtimes import RUNC, runc_problem
from tests.support.network import (PLUGIN_DIR, BridgeNetwork, bridge_ports, netns_cookie, netns_pool_dir, pool_entries,
                                   remove_network, write_network)
from tests.support.pods import kubelet_container_linux, kubelet_pod_linux, wait_for
from tests.support.timing import scaled

pytestmark = [pytest.mark.integration, pytest.mark.skipif(
    not os.path.exists(f"{PLUGIN_DIR}/bridge"), reason="containernetworking-plugins is not installed"
)]

_numbers = iter(range(1_000_000))


@dataclass
class Node:
    dirs: DaemonDirs
    registries_conf: Path
    image: str
    network: BridgeNetwork
    conflist: str  # the network's configuration, written back when a case wants the network
    kubelet: cgroups.KubeletParents  # the "kubelet's" pod cgroups
    cgroup_manager: CgroupManager = field(default_factory=CgroupManager)
    token: str = field(default_factory=lambda: secrets.token_hex(4))

    def daemon(self, crash_at: str | None = None) -> Daemon:
        env = {k: v for k, v in os.environ.items() if k != ENVIRONMENT_VARIABLE}
        if crash_at is not None:
            env[ENVIRONMENT_VARIABLE] = crash_at
        return Daemon(self.dirs, "--registries-conf", str(self.registries_conf), "--cni-plugin-dir", PLUGIN_DIR,
                      "--runtimes", f"runc:{RUNC}", env=env).start()

    def use_network(self, on: bool) -> None:
        if on:
            self.network.conflist.write_text(self.conflist)
        else:
            self.network.conflist.unlink(missing_ok=True)

    def kubelet_pod_cgroup(self, n: int) -> str:
        """A pod cgroup as the kubelet makes it before RunPodSandbox: the cgroup_parent to send."""
        return self.kubelet.make(f"pod{n}")


@pytest.fixture(scope="module")
def node(registry, busybox_image, tmp_path_factory) -> Iterator[Node]:
    tmp = tmp_path_factory.mktemp("crash")
    dirs = make_dirs()
    network = write_network(dirs.network_dir, tmp)
    kubelet = cgroups.KubeletParents(f"cfcrash{secrets.token_hex(4)}")
    n = Node(dirs, write_registries_conf(tmp / "registries.conf", [registry.host]), busybox_image.reference,
             network, network.conflist.read_text(), kubelet)
    try:
        d = n.daemon()
        try:
            d.client.image.PullImage(api.PullImageRequest(image=api.ImageSpec(image=n.image)), timeout=60)
        finally:
            d.stop()
        yield n
    finally:
        try:
            d = n.daemon()
            try:
                remove_all(d)
            finally:
                d.stop()
        finally:
            remove_network(network)
            kubelet.remove()
            remove_dirs(dirs)


# -- CRI steps -------------------------------------------------------------------


def pod_config(node: Node, kubelet_cgroup: bool) -> api.PodSandboxConfig:
    number = next(_numbers)
    config = api.PodSandboxConfig(
        metadata=api.PodSandboxMetadata(name=f"crash{number}", namespace="crash", uid=f"crash-{number}"),
        hostname=f"crash{number}", log_directory=str(node.dirs.log_dir / f"crash{number}"), linux=kubelet_pod_linux(),
    )
    if kubelet_cgroup:
        config.linux.cgroup_parent = node.kubelet_pod_cgroup(number)
    return config


def run_pod(d: Daemon, config: api.PodSandboxConfig, handler: str = "") -> str:
    request = api.RunPodSandboxRequest(config=config, runtime_handler=handler)
    return d.client.runtime.RunPodSandbox(request, timeout=60).pod_sandbox_id


def create(d: Daemon, node: Node, pod_id: str, pod: api.PodSandboxConfig) -> str:
    config = api.ContainerConfig(
        metadata=api.ContainerMetadata(name=f"c{next(_numbers)}"), image=api.ImageSpec(image=node.image),
        # The token names the container's processes, to look for them afterwards.
        command=["/bin/sh", "-c", f"sleep 100000; : {node.token}"], log_path="c.log",
        linux=kubelet_container_linux(),
        # An image volume: a host mount under the run root from the start of the create on.
        mounts=[api.Mount(container_path="/volume", image=api.ImageSpec(image=node.image), readonly=True)],
    )
    request = api.CreateContainerRequest(pod_sandbox_id=pod_id, config=config, sandbox_config=pod)
    return d.client.runtime.CreateContainer(request, timeout=60).container_id


def start(d: Daemon, container_id: str) -> None:
    d.client.runtime.StartContainer(api.StartContainerRequest(container_id=container_id), timeout=60)


def pods(d: Daemon) -> list[api.PodSandbox]:
    return list(d.client.runtime.ListPodSandbox(api.ListPodSandboxRequest(), timeout=30).items)


def containers(d: Daemon) -> list[api.Container]:
    return list(d.client.runtime.ListContainers(api.ListContainersRequest(), timeout=30).containers)


def remove_all(d: Daemon) -> None:
    """What `crictl rmp -af` does: Stop and Remove every listed pod."""
    for pod in pods(d):
        d.client.runtime.StopPodSandbox(api.StopPodSandboxRequest(pod_sandbox_id=pod.id), timeout=60)
        d.client.runtime.RemovePodSandbox(api.RemovePodSandboxRequest(pod_sandbox_id=pod.id), timeout=60)


def expect_crash(d: Daemon, call) -> None:
    with pytest.raises(grpc.RpcError):
        call()
    assert d.proc is not None
    assert d.proc.wait(scaled(30)) == CRASH_EXIT_CODE, d.log()[-3000:]
    d.kill()


# -- what the node holds ---------------------------------------------------------


@dataclass
class Begun:
    """What the crashed daemon had begun: the ids in its database and the pod dirs in its run root, and
    the network namespaces its pods' monitors held."""

    pods: dict[str, str]  # id -> cgroup path
    containers: set[str]
    netns: dict[int, int] = field(default_factory=dict)  # nsfs inode number -> cookie


def netns_inode(path: str) -> int | None:
    try:
        return os.stat(path).st_ino
    except OSError:
        return None


def begun(node: Node, daemon_killed: bool = False) -> Begun:
    db = sqlite3.connect(f"file:{node.dirs.root / 'state' / 'state.db'}?mode=ro", uri=True)
    try:
        pod_rows = db.execute("SELECT id, record FROM pods").fetchall()
        container_ids = {row[0] for row in db.execute("SELECT id FROM containers")}
    finally:
        db.close()
    found = {pod_id: json.loads(body)["cgroup_path"] for pod_id, body in pod_rows}
    for name in os.listdir(node.dirs.runroot / "pods"):
        found.setdefault(name, "")
    # The pods' network namespaces: pinned in the pod dir, or held by a monitor still setting its pod up.
    own = netns_inode("/proc/self/ns/net")
    holders = [str(node.dirs.runroot / "pods" / pod_id / "ns" / "net") for pod_id in found]
    # A killed daemon's pool of namespaces made ahead: the next start destroys them (a live daemon keeps its own).
    if daemon_killed:
        holders += pool_entries(node.dirs.runroot)
    holders += [f"/proc/{proc.pid}/ns/net" for proc in psutil.process_iter(["cmdline"])
                if str(node.dirs.runroot) in " ".join(proc.info["cmdline"] or [])]
    netns = {}
    for path in holders:
        if (inode := netns_inode(path)) not in (None, own) and (cookie := netns_cookie(path)) is not None:
            netns[inode] = cookie
    return Begun(found, container_ids, netns)


def _cgroup_dirs_under(top: str, depth: int = 4) -> Iterator[str]:
    base = top.count("/")
    for current, dirs, _ in os.walk(top):
        for name in dirs:
            yield os.path.join(current, name)
        if current.count("/") - base >= depth:
            dirs[:] = []


def leftover_cgroups(node: Node, seen: Begun) -> list[str]:
    """In every hierarchy, under the daemon's default parent and the "kubelet's": any cgroup named
    after a pod or container begun, and anything crio-fast made in the kubelet's pod cgroups."""
    ids = [*seen.pods, *seen.containers]
    found = []
    for root in cgroups.hierarchy_roots():
        for name in _cgroup_dirs_under(str(root) + cgroups.default_parent()):
            if any(i in os.path.basename(name) for i in ids):
                found.append(f"cgroup {name}")
        kubelet = str(root) + node.kubelet.root
        for pod_cgroup in _listdir(kubelet):
            found += [f"cgroup {kubelet}/{pod_cgroup}/{name}" for name in _listdir(f"{kubelet}/{pod_cgroup}")
                      if os.path.isdir(f"{kubelet}/{pod_cgroup}/{name}")]
    return found


def leftover_netns(d: Daemon | None, seen: Begun) -> list[str]:
    """A network namespace of a pod begun that something still holds: a mount of it, a process in it or
    with it open. Its inode number is only a hint (the kernel gives it to a new namespace once this one
    is freed): the cookie decides."""
    if not seen.netns:
        return []
    names = {f"net:[{inode}]": cookie for inode, cookie in seen.netns.items()}
    found = []
    with open("/proc/self/mountinfo") as f:
        mounts = [(line.split()[3], line.split()[4]) for line in f]
    found += [f"netns mount {point}" for name, point in mounts
              if name in names and netns_cookie(point) == names[name]]
    for pid in psutil.pids():
        holds = [f"/proc/{pid}/ns/net"]
        try:
            holds += [f"/proc/{pid}/fd/{fd}" for fd in os.listdir(f"/proc/{pid}/fd")]
        except OSError:
            continue
        for link in holds:
            try:
                target = os.readlink(link)
            except OSError:
                continue
            if target in names and netns_cookie(link) == names[target]:
                found.append(f"netns {target} held by process {pid} ({link})")
    return found


def _listdir(directory: str) -> list[str]:
    try:
        return os.listdir(directory)
    except OSError:
        return []


def leftovers(node: Node, d: Daemon | None, seen: Begun) -> list[str]:
    """Everything of the pods ``seen`` (and of any other pod of this node) still on the node."""
    found: list[str] = []
    runroot, root = str(node.dirs.runroot), str(node.dirs.root)
    daemon_pid = d.proc.pid if d is not None and d.proc is not None else -1
    ids = [*seen.pods, *seen.containers]
    for proc in psutil.process_iter(["cmdline", "status"]):
        if proc.pid in (daemon_pid, os.getpid()) or proc.info["status"] == psutil.STATUS_ZOMBIE:
            continue
        cmdline = " ".join(proc.info["cmdline"] or [])
        try:
            # A pod init names itself anew, a container runs what it likes: their cgroups tell whose they are.
            cgroup = Path(f"/proc/{proc.pid}/cgroup").read_text()
        except OSError:
            continue
        if runroot in cmdline or node.token in cmdline or node.kubelet.root in cgroup or any(i in cgroup for i in ids):
            found.append(f"process {proc.pid}: {cmdline[:200]}")
    # A live daemon's own pool of network namespaces is not a leftover (a killed one's is, by its cookies).
    pool = str(netns_pool_dir(node.dirs.runroot)) if daemon_pid != -1 else None
    with open("/proc/self/mountinfo") as f:
        found += [f"mount {point}" for point in (line.split()[4] for line in f)
                  if (runroot in point or point.startswith(root + "/"))
                  and not (pool is not None and (point == pool or point.startswith(pool + "/")))]
    for pod_id, cgroup_path in seen.pods.items():
        for path in {cgroups.default_pod_path(pod_id), cgroup_path} - {""}:
            for directory in node.cgroup_manager.paths(path).hierarchy_dirs.values():
                if os.path.isdir(directory) and not path.startswith(node.kubelet.root):
                    found.append(f"cgroup {directory}")
    found += leftover_cgroups(node, seen)
    found += [f"cgroup {c}" for c in cgroups.find_cgroups(*seen.containers, depth=4)] if seen.containers else []
    found += leftover_netns(d, seen)
    found += [f"veth {port}" for port in bridge_ports(node.network.bridge)]
    found += [f"IPAM reservation {address}" for address in node.network.allocations()]
    for directory, allowed in ((node.dirs.runroot / "pods", set()), (node.dirs.runroot / "cni" / "results", set()),
                               (node.dirs.root / "containers", set()), (node.dirs.runroot / "containers", {".rootfs"}),
                               (node.dirs.runroot / "exits", set()), (node.dirs.runroot / "runtimes" / "runc", set())):
        if directory.exists():
            found += [f"file {directory / name}" for name in os.listdir(directory) if name not in allowed]
    found += [f"file {path}" for path in (node.dirs.runroot / "mount-targets").glob(".*")]
    return sorted(set(found))


def assert_nothing_left(node: Node, d: Daemon | None, seen: Begun) -> None:
    # A killed process takes a moment to leave its cgroup; what a removal leaves stays.
    deadline = time.monotonic() + scaled(5)
    while (found := leftovers(node, d, seen)) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert found == []


# -- crashes at every step -----------------------------------------------------------


def crash_cases() -> list:
    cases = [pytest.param("runpod", step, True, False, "", id=f"runpod:{step}-cni") for step in
             range(1, STEPS["runpod"] + 1)]
    # Without a network the CNI steps are not reached: the daemon answers instead of crashing.
    cases += [pytest.param("runpod", step, False, True, "", id=f"runpod:{step}-kubelet-cgroup")
              for step in range(1, STEPS["runpod"] + 1) if step not in (7, 8, 9)]
    cases += [pytest.param(op, step, True, True, "", id=f"{op}:{step}")
              for op in ("createctr", "startctr", "stoppod", "removepod") for step in range(1, STEPS[op] + 1)]
    # runc's containers: a bundle whose rootfs is mounted on the host, the runtime's state. Steps 2-4 of a
    # create are the native handler's.
    runc = pytest.mark.skipif(runc_problem() is not None, reason=str(runc_problem()))
    cases += [pytest.param(op, step, True, True, "runc", id=f"{op}:{step}-runc", marks=runc)
              for op in ("createctr", "startctr", "stoppod", "removepod") for step in range(1, STEPS[op] + 1)
              if not (op == "createctr" and step in (2, 3, 4))]
    return cases


@pytest.mark.timeout(180)
@pytest.mark.parametrize("operation,step,cni,kubelet_cgroup,handler", crash_cases())
def test_a_crash_at_any_step_leaves_nothing_a_restart_and_remove_all_cannot_clean(
        node: Node, operation: str, step: int, cni: bool, kubelet_cgroup: bool, handler: str) -> None:
    node.use_network(cni)
    d = node.daemon(crash_at=f"{operation}:{step}")
    try:
        config = pod_config(node, kubelet_cgroup)
        if operation == "runpod":
            expect_crash(d, lambda: run_pod(d, config, handler))
        else:
            pod_id = run_pod(d, config, handler)
            if operation == "createctr":
                expect_crash(d, lambda: create(d, node, pod_id, config))
            else:
                first = create(d, node, pod_id, config)
                if operation == "startctr":
                    expect_crash(d, lambda: start(d, first))
                else:
                    second = create(d, node, pod_id, config)
                    start(d, first)
                    start(d, second)
                    request = (api.StopPodSandboxRequest if operation == "stoppod"
                               else api.RemovePodSandboxRequest)(pod_sandbox_id=pod_id)
                    call = (d.client.runtime.StopPodSandbox if operation == "stoppod"
                            else d.client.runtime.RemovePodSandbox)
                    expect_crash(d, lambda: call(request, timeout=60))
    finally:
        d.kill()
    seen = begun(node, daemon_killed=True)
    d = node.daemon()
    try:
        listed_pods, listed_containers = pods(d), containers(d)
        if operation == "runpod":
            # Only a pod whose record was saved ready is the daemon's; the kubelet never had its id.
            assert [p.state for p in listed_pods] == ([api.SANDBOX_READY] if step == STEPS["runpod"] else [])
        else:
            assert len(listed_pods) == 1
        if operation == "createctr":
            assert listed_pods[0].state == api.SANDBOX_READY
            assert [c.state for c in listed_containers] == (
                [api.CONTAINER_CREATED] if step == STEPS["createctr"] else [])
        elif operation == "startctr":
            # No running container is lost: a START that got through shows.
            assert [c.state for c in listed_containers] == [api.CONTAINER_CREATED if step == 1 else
                                                            api.CONTAINER_RUNNING]
        elif operation in ("stoppod", "removepod"):
            assert api.CONTAINER_RUNNING not in [c.state for c in listed_containers]
        remove_all(d)
        assert pods(d) == [] and containers(d) == []
        assert_nothing_left(node, d, seen)
    finally:
        d.stop()


# -- a monitor killed ------------------------------------------------------------------


def monitor_pid(d: Daemon, pod_id: str) -> int:
    response = d.client.runtime.PodSandboxStatus(api.PodSandboxStatusRequest(pod_sandbox_id=pod_id, verbose=True),
                                                 timeout=10)
    return json.loads(response.info["info"])["pid"]


def container_pid(d: Daemon, container_id: str) -> int:
    response = d.client.runtime.ContainerStatus(api.ContainerStatusRequest(container_id=container_id, verbose=True),
                                                timeout=10)
    return json.loads(response.info["info"])["pid"]


def pod_state(d: Daemon, pod_id: str) -> int:
    return d.client.runtime.PodSandboxStatus(api.PodSandboxStatusRequest(pod_sandbox_id=pod_id),
                                             timeout=10).status.state


def container_status(d: Daemon, container_id: str) -> api.ContainerStatus:
    return d.client.runtime.ContainerStatus(api.ContainerStatusRequest(container_id=container_id),
                                            timeout=10).status


def processes_in_cgroup_of(container_id: str) -> list[int]:
    found = []
    for pid in psutil.pids():
        try:
            if container_id in Path(f"/proc/{pid}/cgroup").read_text():
                found.append(pid)
        except OSError:
            continue
    return found


def reaped(pid: int) -> bool:
    return not psutil.pid_exists(pid)


def dead(pid: int) -> bool:
    """Exited; a zombie too (re-parented to PID 1 once its daemon died, it is reaped by whatever PID 1 is)."""
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def test_a_killed_monitor_makes_its_pod_not_ready_and_its_containers_are_killed_and_reaped(node: Node) -> None:
    node.use_network(True)
    d = node.daemon()
    try:
        config = pod_config(node, kubelet_cgroup=True)
        pod_id = run_pod(d, config)
        ctrs = [create(d, node, pod_id, config) for _ in range(2)]
        start(d, ctrs[0])  # the other stays created, its CREATE reply unread: the daemon knows no pid of it
        init = container_pid(d, ctrs[0])
        # The child set up, waiting for a START; CreateContainer answers before it has joined its cgroup.
        waiting = wait_for(lambda: processes_in_cgroup_of(ctrs[1]), timeout=scaled(10),
                           what="the created container's child in its cgroup")
        assert waiting and node.network.allocations()
        seen = begun(node)
        os.kill(monitor_pid(d, pod_id), signal.SIGKILL)
        # Nobody calls Stop: the daemon notices by itself.
        wait_for(lambda: pod_state(d, pod_id) == api.SANDBOX_NOTREADY, timeout=scaled(10),
                 what="the pod to be not ready")
        for pid in [init, *waiting]:
            wait_for(lambda: reaped(pid), timeout=scaled(10), what=f"process {pid} to be killed and reaped")
        status = container_status(d, ctrs[0])
        assert (status.state, status.exit_code) == (api.CONTAINER_EXITED, 128 + signal.SIGKILL)
        assert container_status(d, ctrs[1]).state != api.CONTAINER_RUNNING
        zombies = [child.pid for child in psutil.Process(d.proc.pid).children()
                   if child.status() == psutil.STATUS_ZOMBIE]
        assert zombies == []
        remove_all(d)
        assert_nothing_left(node, d, seen)
    finally:
        d.stop()


def test_a_monitor_killed_while_the_daemon_is_down_is_found_at_restart(node: Node) -> None:
    node.use_network(True)
    d = node.daemon()
    try:
        config = pod_config(node, kubelet_cgroup=False)
        pod_id = run_pod(d, config)
        ctr = create(d, node, pod_id, config)
        start(d, ctr)
        init, monitor = container_pid(d, ctr), monitor_pid(d, pod_id)
        seen = begun(node)
    finally:
        d.proc.send_signal(signal.SIGKILL)
        d.kill()
    os.kill(monitor, signal.SIGKILL)
    d = node.daemon()
    try:
        assert pod_state(d, pod_id) == api.SANDBOX_NOTREADY
        assert container_status(d, ctr).state != api.CONTAINER_RUNNING
        wait_for(lambda: dead(init), timeout=scaled(10), what="the container's init to be killed")
        remove_all(d)
        assert_nothing_left(node, d, seen)
    finally:
        d.stop()


def test_a_pod_of_no_record_left_by_an_older_build_is_torn_down_at_start(node: Node) -> None:
    """Builds that saved a pod's record only once it was ready left pods no CRI call could reach."""
    node.use_network(True)
    d = node.daemon()
    try:
        config = pod_config(node, kubelet_cgroup=True)
        pod_id = run_pod(d, config)
        start(d, create(d, node, pod_id, config))
        seen = begun(node)
    finally:
        d.proc.send_signal(signal.SIGKILL)
        d.kill()
    db = sqlite3.connect(node.dirs.root / "state" / "state.db")
    db.execute("DELETE FROM pods")
    db.execute("DELETE FROM containers")
    db.commit()
    db.close()
    d = node.daemon()
    try:
        assert pods(d) == []
        assert_nothing_left(node, d, seen)
    finally:
        d.stop()


# -- SIGKILL in the middle of bursts ----------------------------------------------------


def burst(d: Daemon, node: Node, count: int, rng: random.Random) -> list[threading.Thread]:
    """``count`` pods at once, each RunPodSandbox -> CreateContainer -> StartContainer; errors (the
    daemon is killed under them) end a pod's sequence."""

    def one() -> None:
        try:
            config = pod_config(node, kubelet_cgroup=rng.random() < 0.5)
            pod_id = run_pod(d, config)
            start(d, create(d, node, pod_id, config))
        except grpc.RpcError:
            pass

    threads = [threading.Thread(target=one) for _ in range(count)]
    for thread in threads:
        thread.start()
    return threads


@pytest.mark.timeout(120)
def test_sigkill_in_the_middle_of_bursts_leaves_nothing_after_restart_and_remove_all(node: Node) -> None:
    node.use_network(True)
    rng = random.Random()
    seed = rng.randrange(1 << 30)
    rng.seed(seed)
    budget = time.monotonic() + 45
    rounds = 0
    while rounds < 2 or (time.monotonic() < budget and rounds < 8):
        d = node.daemon()
        threads = burst(d, node, 10, rng)
        time.sleep(rng.uniform(0.1, 0.9))
        d.proc.send_signal(signal.SIGKILL)
        d.kill()
        for thread in threads:
            thread.join(60)
        seen = begun(node, daemon_killed=True)
        d = node.daemon()
        try:
            # No running container is lost: every container process still up is one listed running.
            running = {container_pid(d, c.id) for c in containers(d) if c.state == api.CONTAINER_RUNNING}
            alive = {p.pid for p in psutil.process_iter(["cmdline", "status"])
                     if node.token in " ".join(p.info["cmdline"] or []) and p.info["status"] != psutil.STATUS_ZOMBIE}
            assert alive <= running, f"seed {seed}"
            remove_all(d)
            assert pods(d) == [], f"seed {seed}"
            assert_nothing_left(node, d, seen)
        finally:
            d.stop()
        rounds += 1
