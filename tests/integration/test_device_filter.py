"""The cgroup v2 eBPF device filter on a real kernel, directly and through the daemon (native handler).

The host may be hybrid (v1 hierarchies plus a cgroup2 mount): the kernel runs the device programs of a
process's cgroup2 cgroup whatever v1 says, and the v1 devices cgroup in addition. To see the eBPF filter
alone decide, the daemon tests open the container's v1 devices cgroup up again (``a`` into devices.allow),
as on a pure v2 host where it does not exist.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from crio_fast.api import api_pb2 as api
from crio_fast.cgroups import discover_layout
from crio_fast.cgroups.devices_bpf import (
    DeviceFilterCache,
    attach_program,
    attached_program_ids,
    compile_filter,
    container_rules,
    load_program,
)
from crio_fast.cgroups.errors import CgroupError
from tests.support.daemon import Daemon
from tests.support.pods import create, daemon_with_busybox, start
from tests.support.timing import command_limit

pytestmark = pytest.mark.integration

LAYOUT = discover_layout()
needs_cgroup2 = pytest.mark.skipif(LAYOUT.unified is None, reason="no cgroup2 hierarchy is mounted")


@pytest.fixture
def scratch_cgroup2():
    """An empty cgroup2 directory below this process's own, removed after the test."""
    unified = LAYOUT.unified
    directory = Path(unified.directory(unified.own_path or "/"), f"crio-fast-devtest-{os.getpid()}")
    directory.mkdir()
    try:
        yield directory
    finally:
        directory.rmdir()


def open_in_cgroup(cgroup_dir: Path, paths_and_flags: list[tuple[str, int]]) -> list[str]:
    """In a forked child placed in ``cgroup_dir``, open each path; "ok" or the errno name per path."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - child
        try:
            os.close(read_end)
            (cgroup_dir / "cgroup.procs").write_text(str(os.getpid()))
            results = []
            for path, flags in paths_and_flags:
                try:
                    os.close(os.open(path, flags | os.O_CLOEXEC | os.O_NONBLOCK))
                    results.append("ok")
                except OSError as exc:
                    results.append(os.strerror(exc.errno))
            os.write(write_end, json.dumps(results).encode())
        finally:
            os._exit(0)
    os.close(write_end)
    try:
        with os.fdopen(read_end, "rb") as f:
            data = f.read()
    finally:
        os.waitpid(pid, 0)
    return json.loads(data)


@needs_cgroup2
def test_attached_program_is_enforced_for_processes_of_the_cgroup(scratch_cgroup2):
    program_fd = load_program(compile_filter(container_rules(["c 1:3 rwm", "c 1:9 r"])))
    try:
        attach_program(str(scratch_cgroup2), program_fd)
    finally:
        os.close(program_fd)  # the attachment holds its own reference
    assert len(attached_program_ids(str(scratch_cgroup2))) == 1
    results = open_in_cgroup(scratch_cgroup2, [
        ("/dev/null", os.O_RDWR), ("/dev/zero", os.O_RDONLY), ("/dev/urandom", os.O_RDONLY),
        ("/dev/urandom", os.O_WRONLY),
    ])
    assert results == ["ok", "Operation not permitted", "ok", "Operation not permitted"]
    # This process, outside the cgroup, is not restricted.
    os.close(os.open("/dev/zero", os.O_RDONLY))


@needs_cgroup2
def test_cache_reuses_one_program_per_rule_set(scratch_cgroup2):
    cache = DeviceFilterCache(capacity=1)
    second = scratch_cgroup2 / "second"
    second.mkdir()
    try:
        cache.attach(str(scratch_cgroup2), container_rules(["c 1:3 rwm"]))
        cache.attach(str(second), container_rules(["c 1:3 rwm"]))
        assert attached_program_ids(str(scratch_cgroup2)) == attached_program_ids(str(second))
        # A different set evicts the first program; the cgroups it is attached to keep it.
        cache.attach(str(second), container_rules(["c 1:5 rwm"]))
        assert len(set(attached_program_ids(str(second)))) == 2
        assert open_in_cgroup(scratch_cgroup2, [("/dev/null", os.O_RDONLY)]) == ["ok"]
    finally:
        cache.close()
        second.rmdir()


def test_load_failure_reports_the_verifier_log():
    no_exit = compile_filter(container_rules([]))[:-8]  # drop the final exit: the verifier refuses it
    with pytest.raises(CgroupError, match=r"loading the cgroup device filter: .*verifier log:"):
        load_program(no_exit)


def test_attach_to_a_missing_cgroup_names_it():
    with pytest.raises(CgroupError, match=r"opening cgroup /nonexistent-cgroup: No such file or directory"):
        attach_program("/nonexistent-cgroup", -1)


# -- through the daemon ------------------------------------------------------------------------

# A requested device outside the defaults whose open needs no capability and does nothing by itself.
REQUESTED_DEVICE = "/dev/fuse"


@pytest.fixture(scope="module")
def env(registry, busybox_image, tmp_path_factory):
    if LAYOUT.unified is None:
        pytest.skip("no cgroup2 hierarchy is mounted")
    if not os.path.exists(REQUESTED_DEVICE) or not os.path.exists("/dev/loop-control"):
        pytest.skip(f"{REQUESTED_DEVICE} and /dev/loop-control are needed as sample devices")
    with daemon_with_busybox(registry, busybox_image, tmp_path_factory.mktemp("regconf")) as d:
        yield d


@pytest.fixture
def pod(env):
    config = api.PodSandboxConfig(metadata=api.PodSandboxMetadata(name="devfilter", namespace="test", uid="devfilter"),
                                  hostname="devfilter")
    pod_id = env.client.runtime.RunPodSandbox(api.RunPodSandboxRequest(config=config), timeout=30).pod_sandbox_id
    try:
        yield pod_id, config
    finally:
        env.client.runtime.StopPodSandbox(api.StopPodSandboxRequest(pod_sandbox_id=pod_id), timeout=60)
        env.client.runtime.RemovePodSandbox(api.RemovePodSandboxRequest(pod_sandbox_id=pod_id), timeout=60)


def start_container(d: Daemon, pod_id: str, pod_config: api.PodSandboxConfig, name: str, configure=None) -> str:
    """A running `sleep` with CAP_MKNOD (to make device nodes it should not be able to open)."""
    def with_mknod(config: api.ContainerConfig) -> None:
        config.linux.security_context.capabilities.add_capabilities.append("MKNOD")
        if configure:
            configure(config)

    ctr = create(d, pod_id, pod_config, ["sleep", "3600"], name=name, configure=with_mknod)
    start(d, ctr)
    return ctr


def sh(d: Daemon, ctr: str, script: str) -> str:
    """stdout + stderr of the script."""
    timeout = command_limit(None, 10)
    response = d.client.runtime.ExecSync(api.ExecSyncRequest(container_id=ctr, cmd=["sh", "-c", script], timeout=timeout),
                                         timeout=timeout + 10)
    return (response.stdout + response.stderr).decode()


def container_cgroup(d: Daemon, ctr: str) -> str:
    info = d.client.runtime.ContainerStatus(api.ContainerStatusRequest(container_id=ctr, verbose=True), timeout=10)
    return json.loads(info.info["info"])["cgroup"]


def open_v1_devices_cgroup(cgroup: str) -> None:
    """Allow every device in the container's v1 devices cgroup, so only the eBPF filter restricts it."""
    devices = LAYOUT.hierarchy_of("devices")
    if devices is None or devices.version != 1:
        return
    directory = Path(devices.directory(cgroup))
    (directory / "devices.allow").write_text("a")
    assert "a *:* rwm" in (directory / "devices.list").read_text()


# Opens of device nodes, each in a subshell (a failed redirection ends the shell that tried it); a failure
# prints busybox sh's "can't open ...: <errno text>".
# The made node is loop-control (10:237), a device no container is given and whose open needs no
# capability (unlike kmsg or mem, which would fail with EPERM for a reason of their own).
PROBE = ("mknod /dev/made c 10 237 && echo made; "
         "(exec 3</dev/made) && echo read-made; "
         "(exec 4>/dev/null) && echo write-null; "
         "(exec 5</dev/zero) && echo read-zero; ")


def test_container_devices_are_limited_by_the_ebpf_filter(env, pod):
    pod_id, pod_config = pod
    ctr = start_container(env, pod_id, pod_config, "limited", lambda c: c.devices.append(
        api.Device(host_path=REQUESTED_DEVICE, container_path="/dev/readonly-fuse", permissions="r")))
    cgroup = container_cgroup(env, ctr)
    open_v1_devices_cgroup(cgroup)

    out = sh(env, ctr, PROBE + "(exec 6</dev/readonly-fuse) && echo read-requested; "
                               "(exec 7>/dev/readonly-fuse) && echo write-requested; true")
    assert "made" in out.split()  # mknod of anything is allowed (as runc does), opening it is not
    assert "read-made" not in out and "Operation not permitted" in out
    assert "write-null" in out and "read-zero" in out
    assert "read-requested" in out and "write-requested" not in out
    assert out.count("Operation not permitted") == 2, out
    assert len(attached_program_ids(LAYOUT.unified.directory(cgroup))) == 1


def test_containers_with_the_same_devices_share_one_program(env, pod):
    pod_id, pod_config = pod
    first = start_container(env, pod_id, pod_config, "first")
    second = start_container(env, pod_id, pod_config, "second")
    first_ids = attached_program_ids(LAYOUT.unified.directory(container_cgroup(env, first)))
    assert len(first_ids) == 1
    assert attached_program_ids(LAYOUT.unified.directory(container_cgroup(env, second))) == first_ids


def test_privileged_container_gets_no_filter(env, pod):
    pod_id, pod_config = pod
    ctr = start_container(env, pod_id, pod_config, "privileged",
                          lambda c: setattr(c.linux.security_context, "privileged", True))
    assert attached_program_ids(LAYOUT.unified.directory(container_cgroup(env, ctr))) == []
    out = sh(env, ctr, PROBE)
    assert "read-made" in out and "Operation not permitted" not in out, out
