"""The systemd cgroup driver with systemd as PID 1 (the scripts/vm guests): pods are slices, containers
and monitors transient scopes, on the native handler and on runc and crun.

Checked through systemd itself (``systemctl``) and through the cgroup tree: the units while pods run and
none after they are removed, limits as unit properties and control files, live updates, OOM kills,
stats, a daemon restart with a running pod, and the parents a driver cannot take.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import uuid
from pathlib import Path

import grpc
import pytest

from crio_fast.api import api_pb2 as api
from crio_fast.cgroups.systemd_units import slice_path
from crio_fast.systemd import systemd_booted
from tests.support import cgroups
from tests.support.daemon import Daemon
from tests.support.oci_runtimes import HANDLERS, configure_oci_runtimes, crun_problem, runc_problem
from tests.support.pods import (daemon_with_busybox, exec_sync, kubelet_pod_linux, remove_all_pods, status,
                                wait_exited, wait_for, wait_for_command)
from tests.support.streamclient import exec_over_spdy
from tests.support.timing import scaled

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(not systemd_booted(), reason="systemd is not PID 1"),
    pytest.mark.skipif(not cgroups.is_v2("memory"), reason="the systemd cgroup driver needs cgroup v2"),
]

MEMORY_LIMIT = 64 << 20
CGROUP_ROOT = Path("/sys/fs/cgroup")


def systemctl(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run(["systemctl", *args], capture_output=True, text=True, timeout=scaled(60),
                            stdin=subprocess.DEVNULL)
    assert not check or result.returncode == 0, f"systemctl {' '.join(args)}: {result.stderr}"
    return result


def loaded_units(*patterns: str) -> dict[str, str]:
    """Loaded units matching ``patterns``: name -> active state."""
    out = systemctl("list-units", "--all", "--plain", "--no-legend", "--no-pager", *patterns).stdout
    return {fields[0]: fields[2] for fields in (line.split() for line in out.splitlines()) if len(fields) >= 3}


def unit_property(unit: str, name: str) -> str:
    return systemctl("show", unit, f"--property={name}", "--value").stdout.strip()


def systemd_daemon(registry, busybox_image, conf_dir: Path):
    """A daemon with the systemd driver, runc and crun, busybox pulled; everything removed after."""
    return daemon_with_busybox(registry, busybox_image, conf_dir, "--cgroup-manager", "systemd",
                               configure=configure_oci_runtimes)


@pytest.fixture(scope="module")
def env(registry, busybox_image, tmp_path_factory):
    with systemd_daemon(registry, busybox_image, tmp_path_factory.mktemp("systemd")) as d:
        yield d


@pytest.fixture(params=HANDLERS)
def handler(request, env):
    problem = {"runc": runc_problem, "crun": crun_problem}.get(request.param, lambda: None)()
    if problem:
        pytest.fail(problem)  # both are part of the guests: a missing one is a broken image
    try:
        yield request.param
    finally:
        remove_all_pods(env)


def pod_slice_name(qos: str = "besteffort") -> str:
    """A kubelet-shaped pod slice (the pod's uid with "_" for "-")."""
    return f"kubepods-{qos}-pod{str(uuid.uuid4()).replace('-', '_')}.slice"


def run_pod(d: Daemon, parent: str, handler: str = "native") -> tuple[str, api.PodSandboxConfig]:
    name = f"sd{uuid.uuid4().hex[:8]}"
    config = api.PodSandboxConfig(
        metadata=api.PodSandboxMetadata(name=name, namespace="systemd", uid=name),
        hostname=name, log_directory=str(d.dirs.log_dir / name), linux=kubelet_pod_linux())
    config.linux.cgroup_parent = parent
    request = api.RunPodSandboxRequest(config=config, runtime_handler=handler)
    return d.client.runtime.RunPodSandbox(request, timeout=60).pod_sandbox_id, config


def run_container(d: Daemon, pod_id: str, pod: api.PodSandboxConfig, command: list[str],
                  memory: int = MEMORY_LIMIT) -> str:
    config = api.ContainerConfig(metadata=api.ContainerMetadata(name=f"c{uuid.uuid4().hex[:8]}"),
                                 image=api.ImageSpec(image=d.image), command=command, log_path="ctr.log")
    config.linux.resources.memory_limit_in_bytes = memory
    config.linux.resources.cpu_period = 100_000
    config.linux.resources.cpu_quota = 50_000
    config.linux.resources.unified["memory.oom.group"] = "1"
    request = api.CreateContainerRequest(pod_sandbox_id=pod_id, config=config, sandbox_config=pod)
    ctr = d.client.runtime.CreateContainer(request, timeout=60).container_id
    d.client.runtime.StartContainer(api.StartContainerRequest(container_id=ctr), timeout=60)
    return ctr


def remove_pod(d: Daemon, pod_id: str) -> None:
    d.client.runtime.StopPodSandbox(api.StopPodSandboxRequest(pod_sandbox_id=pod_id), timeout=60)
    d.client.runtime.RemovePodSandbox(api.RemovePodSandboxRequest(pod_sandbox_id=pod_id), timeout=60)


def test_runtime_config_reports_the_systemd_driver(env):
    response = env.client.runtime.RuntimeConfig(api.RuntimeConfigRequest(), timeout=10)
    assert response.linux.cgroup_driver == api.CgroupDriver.SYSTEMD


def test_pods_are_slices_and_containers_scopes(env, handler):
    parent = pod_slice_name()
    pod_id, pod = run_pod(env, parent, handler)
    ctr = run_container(env, pod_id, pod, ["/bin/sleep", "3600"])
    pid = wait_for_command(env, ctr, ["/bin/sleep", "3600"])
    scope, monitor_scope = f"crio-fast-{ctr}.scope", f"crio-fast-monitor-{pod_id}.scope"
    units = loaded_units(parent, scope, monitor_scope)
    assert units == {parent: "active", scope: "active", monitor_scope: "active"}, units
    # The container's process is in its scope, the scope in the pod's slice, as systemd lays it out.
    container_cgroup = f"{slice_path(parent)}/{scope}"
    # crun too: not in a "container" cgroup below the scope (its default, turned off in the spec).
    assert Path(f"/proc/{pid}/cgroup").read_text().strip() == f"0::{container_cgroup}"
    # An interactive exec (the daemon's helper joins the scope's cgroup itself), on every handler.
    request = api.ExecRequest(container_id=ctr, cmd=["/bin/cat", "/proc/self/cgroup"], stdout=True, stderr=True)
    stdout, stderr, _ = asyncio.run(exec_over_spdy(env.client.runtime.Exec(request, timeout=10).url))
    assert stdout.strip() == b"0::/", stderr
    assert unit_property(scope, "Slice") == parent
    assert unit_property(scope, "Delegate") == "yes"
    monitor_pid = json.loads(env.client.runtime.PodSandboxStatus(
        api.PodSandboxStatusRequest(pod_sandbox_id=pod_id, verbose=True), timeout=10).info["info"])["pid"]
    assert Path(f"/proc/{monitor_pid}/cgroup").read_text().strip() == f"0::{slice_path(parent)}/{monitor_scope}"
    # Limits: the unit's properties (what systemd applies again on a reload) and the files.
    directory = CGROUP_ROOT / container_cgroup.lstrip("/")
    assert (directory / "memory.max").read_text().strip() == str(MEMORY_LIMIT)
    assert unit_property(scope, "MemoryMax") == str(MEMORY_LIMIT)
    assert (directory / "cpu.max").read_text().split() == ["50000", "100000"]
    assert unit_property(scope, "CPUQuotaPerSecUSec") == "500ms"
    assert (directory / "memory.oom.group").read_text().strip() == "1"  # no property: the file only
    # A live update reaches both.
    update = api.UpdateContainerResourcesRequest(container_id=ctr, linux=api.LinuxContainerResources(
        memory_limit_in_bytes=2 * MEMORY_LIMIT, cpu_period=100_000, cpu_quota=50_000))
    env.client.runtime.UpdateContainerResources(update, timeout=30)
    assert (directory / "memory.max").read_text().strip() == str(2 * MEMORY_LIMIT)
    assert unit_property(scope, "MemoryMax") == str(2 * MEMORY_LIMIT)
    # Stats read the scope's cgroup.
    stats = env.client.runtime.ContainerStats(api.ContainerStatsRequest(container_id=ctr), timeout=10).stats
    assert stats.memory.working_set_bytes.value > 0
    assert exec_sync(env, ctr, ["/bin/cat", "/proc/self/cgroup"]).stdout.strip() == b"0::/"  # its cgroup namespace
    remove_pod(env, pod_id)
    # Nothing is left: no unit (the slices started for the pod included), no cgroup.
    wait_for(lambda: not loaded_units(parent, scope, monitor_scope), timeout=scaled(10), what="the units to go")
    assert not (CGROUP_ROOT / slice_path(parent).lstrip("/")).exists()
    # kubepods-besteffort.slice was started for it (no kubelet here), and is stopped with it.
    wait_for(lambda: not loaded_units("kubepods-besteffort.slice"), timeout=scaled(10), what="the parent slice to go")


def test_a_slice_systemd_has_is_used_and_left_to_its_owner(env):
    parent = pod_slice_name("burstable")
    systemctl("start", parent)  # the kubelet's part: it makes the pod's slice before RunPodSandbox
    try:
        pod_id, pod = run_pod(env, parent)
        ctr = run_container(env, pod_id, pod, ["/bin/sleep", "3600"])
        pid = wait_for_command(env, ctr, ["/bin/sleep", "3600"])
        assert Path(f"/proc/{pid}/cgroup").read_text().strip() == f"0::{slice_path(parent)}/crio-fast-{ctr}.scope"
        remove_pod(env, pod_id)
        wait_for(lambda: not loaded_units(f"crio-fast-{ctr}.scope", f"crio-fast-monitor-{pod_id}.scope"),
                 timeout=scaled(10), what="the scopes to go")
        assert loaded_units(parent) == {parent: "active"}  # the kubelet's: it stays
    finally:
        systemctl("stop", parent, check=False)


def test_no_parent_gets_a_slice_of_its_own(env):
    pod_id, pod = run_pod(env, "")
    ctr = run_container(env, pod_id, pod, ["/bin/sleep", "3600"])
    pid = wait_for_command(env, ctr, ["/bin/sleep", "3600"])
    own = f"crio_fast-pod{pod_id}.slice"
    assert Path(f"/proc/{pid}/cgroup").read_text().strip() == f"0::/crio_fast.slice/{own}/crio-fast-{ctr}.scope"
    remove_pod(env, pod_id)
    wait_for(lambda: not loaded_units(own), timeout=scaled(10), what="the pod's slice to go")


@pytest.mark.parametrize("parent", ["/kubepods/besteffort/pod1234", "kubepods-besteffort-pod1234",
                                    "kubepods--besteffort.slice"])
def test_a_parent_that_is_no_slice_is_refused_with_the_fix(env, parent):
    with pytest.raises(grpc.RpcError) as refused:
        run_pod(env, parent)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "slice" in refused.value.details()
    assert not env.client.runtime.ListPodSandbox(api.ListPodSandboxRequest(), timeout=10).items


def test_an_oom_kill_in_a_scope(env, handler):
    pod_id, pod = run_pod(env, pod_slice_name(), handler)
    ctr = run_container(env, pod_id, pod, ["/bin/sh", "-c", "x=$(head -c 200000000 /dev/zero | tr '\\0' x)"],
                        memory=32 << 20)
    st = wait_exited(env, ctr, timeout=scaled(30))
    assert (st.exit_code, st.reason) == (137, "OOMKilled")
    remove_pod(env, pod_id)
    # A scope whose process was OOM-killed ends "failed"; it is collected all the same, whoever made it
    # (runc and crun make theirs, told the collect mode through the spec's annotations).
    wait_for(lambda: not loaded_units(f"crio-fast-{ctr}.scope"), timeout=scaled(10), what="the failed scope to go")


def test_units_outlive_a_daemon_restart(registry, busybox_image, tmp_path):
    with systemd_daemon(registry, busybox_image, tmp_path) as d:
        parent = pod_slice_name()
        pod_id, pod = run_pod(d, parent)
        ctr = run_container(d, pod_id, pod, ["/bin/sleep", "3600"])
        wait_for_command(d, ctr, ["/bin/sleep", "3600"])
        d.stop()
        scope = f"crio-fast-{ctr}.scope"
        assert loaded_units(scope) == {scope: "active"}  # no daemon: systemd keeps the container
        d.start()
        assert status(d, ctr).state == api.ContainerState.CONTAINER_RUNNING
        assert exec_sync(d, ctr, ["/bin/echo", "alive"]).stdout == b"alive\n"
        update = api.UpdateContainerResourcesRequest(container_id=ctr, linux=api.LinuxContainerResources(
            memory_limit_in_bytes=3 * MEMORY_LIMIT))
        d.client.runtime.UpdateContainerResources(update, timeout=30)
        assert unit_property(scope, "MemoryMax") == str(3 * MEMORY_LIMIT)
        remove_pod(d, pod_id)
        wait_for(lambda: not loaded_units(parent, scope, f"crio-fast-monitor-{pod_id}.scope"), timeout=scaled(10),
                 what="the units to go")


def test_check_asks_systemd(tmp_path):
    config = tmp_path / "crio.conf"
    config.write_text('[crio.runtime]\ncgroup_manager = "systemd"\n')
    result = subprocess.run([sys.executable, "-m", "crio_fast", "--config", str(config), "check"],
                            capture_output=True, text=True, timeout=scaled(60))
    line = next(line for line in result.stdout.splitlines() if "cgroup driver" in line)
    assert line.startswith("OK") and "systemd" in line, result.stdout
