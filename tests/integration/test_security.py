"""Security context, resources, sysctls and devices of containers, end to end, on every runtime handler.

Each behaviour runs on the native handler and on the external OCI runtimes (runc, crun) driven by the pod
monitor: the same CRI request must give the same container whichever handler runs it.
"""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import time
from pathlib import Path

import grpc
import pytest

from crio_fast.api import api_pb2 as api
from crio_fast.container import apparmor
from tests.support import cgroups
from tests.support.daemon import Daemon, DaemonDirs
from tests.support.oci_runtimes import HANDLERS, configure_oci_runtimes, handler_problem
from tests.support.images import TESTER_EXTRA_GID, TESTER_GID, TESTER_UID
from tests.support.pods import (
    create,
    daemon_with_busybox,
    kubelet_pod_linux,
    log_text,
    run_pod as run_plain_pod,
    start,
)
from tests.support.streamclient import exec_over_spdy
from tests.support.timing import SLOWDOWN, command_limit

pytestmark = pytest.mark.integration

PIDS_LIMIT = 24
# Node defaults every pod gets (unless it sets the key itself): one IPC, one network sysctl.
DEFAULT_SYSCTLS = {"kernel.msgmnb": "32768", "net.ipv4.ip_default_ttl": "63"}


@pytest.fixture(scope="module")
def env(registry, busybox_image, tmp_path_factory):
    """One daemon (pids_limit, a default ulimit, default sysctls, runc and crun) with busybox pulled."""
    def configure(dirs: DaemonDirs) -> list[str]:
        default_sysctls = ", ".join(f'"{k}={v}"' for k, v in DEFAULT_SYSCTLS.items())
        dirs.config.write_text(f'[crio.runtime]\ndefault_ulimits = ["nofile=1024:2048"]\n'
                               f'default_sysctls = [{default_sysctls}]\n')
        return ["--pids-limit", str(PIDS_LIMIT), *configure_oci_runtimes(dirs)]

    with daemon_with_busybox(registry, busybox_image, tmp_path_factory.mktemp("regconf"), configure=configure) as d:
        yield d


@pytest.fixture(params=HANDLERS)
def handler(request) -> str:
    """The runtime handler the test's pods run on: every behaviour here holds on all three."""
    if problem := handler_problem(request.param):
        pytest.skip(problem)
    return request.param


_counter = iter(range(1_000_000))


@pytest.fixture
def pod(env, handler):
    """A factory of running pods on the test's handler; every pod made is removed after the test."""
    pods: list[str] = []

    def make_pod(sysctls: dict[str, str] | None = None, seccomp: api.SecurityProfile | None = None,
                 host_network: bool = False) -> tuple[str, api.PodSandboxConfig]:
        n = next(_counter)
        config = api.PodSandboxConfig(
            metadata=api.PodSandboxMetadata(name=f"sec{n}", namespace="test", uid=f"sec-{n}"),
            hostname=f"sec{n}", log_directory=str(env.dirs.log_dir / f"sec{n}"), linux=kubelet_pod_linux(),
        )
        config.linux.sysctls.update(sysctls or {})
        if seccomp is not None:
            config.linux.security_context.seccomp.CopyFrom(seccomp)
        if host_network:
            config.linux.security_context.namespace_options.network = api.NamespaceMode.NODE
        request = api.RunPodSandboxRequest(config=config, runtime_handler=handler)
        pod_id = env.client.runtime.RunPodSandbox(request, timeout=30).pod_sandbox_id
        pods.append(pod_id)
        return pod_id, config

    try:
        yield make_pod
    finally:
        for pod_id in pods:
            env.client.runtime.StopPodSandbox(api.StopPodSandboxRequest(pod_sandbox_id=pod_id), timeout=60)
            env.client.runtime.RemovePodSandbox(api.RemovePodSandboxRequest(pod_sandbox_id=pod_id), timeout=60)


def run(d: Daemon, pod_id: str, pod_config: api.PodSandboxConfig, configure=None,
        command: list[str] | None = None) -> str:
    """Create and start a long-running busybox container; ``configure`` edits its ContainerConfig."""
    ctr = create(d, pod_id, pod_config, command or ["sleep", "3600"], configure=configure)
    start(d, ctr)
    return ctr


def sh(d: Daemon, ctr: str, script: str, timeout: int | None = None) -> api.ExecSyncResponse:
    timeout = command_limit(timeout, 15)
    return d.client.runtime.ExecSync(api.ExecSyncRequest(container_id=ctr, cmd=["sh", "-c", script], timeout=timeout),
                                     timeout=timeout + 10)


def init_status(d: Daemon, ctr: str) -> dict[str, str]:
    """/proc/1/status of the container (the process started by StartContainer, not an exec)."""
    out = sh(d, ctr, "cat /proc/1/status").stdout.decode()
    return dict(line.split(":\t", 1) for line in out.splitlines() if ":\t" in line)


def container_status(d: Daemon, ctr: str) -> api.ContainerStatus:
    return d.client.runtime.ContainerStatus(api.ContainerStatusRequest(container_id=ctr), timeout=10).status


def cgroup_dir(d: Daemon, ctr: str, controller: str) -> Path:
    info = d.client.runtime.ContainerStatus(api.ContainerStatusRequest(container_id=ctr, verbose=True), timeout=10)
    return cgroups.cgroup_dir(json.loads(info.info["info"])["cgroup"], controller)


def test_user_group_and_supplemental_groups(env, pod):
    pod_id, pod_config = pod()

    def configure(c):
        sc = c.linux.security_context
        sc.run_as_user.value = 1234
        sc.run_as_group.value = 2345
        sc.supplemental_groups.extend([3456, 4567])

    ctr = run(env, pod_id, pod_config, configure)
    status = init_status(env, ctr)
    assert status["Uid"].split()[:2] == ["1234", "1234"]
    assert status["Gid"].split()[:2] == ["2345", "2345"]
    assert sorted(status["Groups"].split()) == ["2345", "3456", "4567"]  # the primary gid among them
    assert int(status["CapEff"], 16) == 0  # non-root, nothing added: no effective capabilities
    user = container_status(env, ctr).user.linux
    assert (user.uid, user.gid, list(user.supplemental_groups)) == (1234, 2345, [2345, 3456, 4567])


def test_runtime_advertises_the_supplemental_groups_policy(env):
    status = env.client.runtime.Status(api.StatusRequest(), timeout=10)
    assert status.HasField("features") and status.features.supplemental_groups_policy


# The test image's tester (uid and gid 1000) is a member of testextra (1001) in its /etc/group.
@pytest.mark.parametrize("policy, groups", [
    (api.SupplementalGroupsPolicy.Merge, [TESTER_GID, TESTER_EXTRA_GID, 1234]),
    (api.SupplementalGroupsPolicy.Strict, [TESTER_GID, 1234]),
], ids=["Merge", "Strict"])
def test_supplemental_groups_policy_is_what_the_init_its_execs_and_the_status_have(env, pod, policy, groups):
    """critest's two SupplementalGroupsPolicy specs, and the init's own credentials besides."""
    pod_id, pod_config = pod()

    def configure(c):
        sc = c.linux.security_context
        sc.run_as_user.value = TESTER_UID
        sc.supplemental_groups.append(1234)
        sc.supplemental_groups_policy = policy

    ctr = run(env, pod_id, pod_config, configure, command=["sh", "-c", "id -G; exec sleep 3600"])
    user = container_status(env, ctr).user
    assert user == api.ContainerUser(linux=api.LinuxContainerUser(
        uid=TESTER_UID, gid=TESTER_GID, supplemental_groups=groups))
    expected = " ".join(map(str, groups)) + "\n"
    log = Path(pod_config.log_directory, "ctr.log")
    deadline = time.monotonic() + 10 * SLOWDOWN
    while not log_text(str(log)) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert log_text(str(log)).decode() == expected
    assert sh(env, ctr, "id -G").stdout.decode() == expected
    status = init_status(env, ctr)
    assert status["Uid"].split() == [str(TESTER_UID)] * 4 and status["Gid"].split() == [str(TESTER_GID)] * 4
    assert status["Groups"].split() == [str(g) for g in groups]


def test_the_status_reports_the_image_user_and_root(env, pod):
    """Without run_as_user, the user the image names (here tester by name, through run_as_username)
    or root: the status says who the init is, before it is started too."""
    pod_id, pod_config = pod()
    ctr = create(env, pod_id, pod_config, ["sleep", "3600"],
                 configure=lambda c: setattr(c.linux.security_context, "run_as_username", "tester"))
    user = container_status(env, ctr).user.linux
    assert (user.uid, user.gid, list(user.supplemental_groups)) == (TESTER_UID, TESTER_GID,
                                                                    [TESTER_GID, TESTER_EXTRA_GID])
    root = run(env, pod_id, pod_config)
    user = container_status(env, root).user.linux
    assert (user.uid, user.gid, list(user.supplemental_groups)) == (0, 0, [0])
    assert init_status(env, root)["Groups"].split() == ["0"]


def test_run_as_username_uses_image_passwd_and_groups(env, pod):
    pod_id, pod_config = pod()
    ctr = run(env, pod_id, pod_config, lambda c: setattr(c.linux.security_context, "run_as_username", "nobody"))
    out = sh(env, ctr, "id -u; id -g").stdout.decode().split()
    assert out == ["65534", "65534"]


def test_capabilities_add_drop_and_all(env, pod):
    pod_id, pod_config = pod()

    def only_net_admin(c):
        caps = c.linux.security_context.capabilities
        caps.drop_capabilities.append("ALL")
        caps.add_capabilities.append("NET_ADMIN")

    ctr = run(env, pod_id, pod_config, only_net_admin)
    status = init_status(env, ctr)
    assert int(status["CapEff"], 16) == 1 << 12
    assert int(status["CapBnd"], 16) == 1 << 12
    default_ctr = run(env, pod_id, pod_config)
    default_status = init_status(env, default_ctr)
    assert int(default_status["CapEff"], 16) & (1 << 0)  # CAP_CHOWN is a default
    assert not int(default_status["CapBnd"], 16) & (1 << 21)  # CAP_SYS_ADMIN is not


def test_non_root_gets_added_capabilities_as_ambient(env, pod):
    pod_id, pod_config = pod()

    def configure(c):
        c.linux.security_context.run_as_user.value = 1000
        c.linux.security_context.capabilities.add_capabilities.append("NET_BIND_SERVICE")

    status = init_status(env, run(env, pod_id, pod_config, configure))
    assert int(status["CapEff"], 16) == 1 << 10
    assert int(status["CapAmb"], 16) == 1 << 10


def test_readonly_rootfs_refuses_writes(env, pod):
    pod_id, pod_config = pod()
    ctr = run(env, pod_id, pod_config, lambda c: setattr(c.linux.security_context, "readonly_rootfs", True))
    result = sh(env, ctr, "touch /newfile")
    assert result.exit_code != 0
    assert b"Read-only file system" in result.stderr


def test_runtime_default_seccomp_blocks_unshare(env, pod):
    pod_id, pod_config = pod()

    def configure(c):
        c.linux.security_context.seccomp.profile_type = api.SecurityProfile.RuntimeDefault

    ctr = run(env, pod_id, pod_config, configure)
    assert int(init_status(env, ctr)["Seccomp"]) == 2
    result = sh(env, ctr, "unshare -n true")
    assert result.exit_code != 0
    assert b"Operation not permitted" in result.stderr
    assert sh(env, ctr, "echo ok").stdout == b"ok\n"  # ordinary work still runs
    assert sh(env, ctr, "exec grep Seccomp: /proc/self/status").stdout.split() == [b"Seccomp:", b"2"]  # execs too


def test_unconfined_seccomp_and_pod_default(env, pod):
    pod_id, pod_config = pod()
    ctr = run(env, pod_id, pod_config,
              lambda c: setattr(c.linux.security_context.seccomp, "profile_type", api.SecurityProfile.Unconfined))
    assert int(init_status(env, ctr)["Seccomp"]) == 0
    assert int(init_status(env, run(env, pod_id, pod_config))["Seccomp"]) == 2  # nothing asked: RuntimeDefault
    unconfined_pod_id, unconfined_pod = pod(seccomp=api.SecurityProfile(profile_type=api.SecurityProfile.Unconfined))
    from_pod = run(env, unconfined_pod_id, unconfined_pod)
    assert int(init_status(env, from_pod)["Seccomp"]) == 0


def test_empty_seccomp_is_unconfined_when_configured(registry, busybox_image, tmp_path):
    """seccomp_use_default_when_empty = false: the CRI's own reading of "no profile"."""
    with daemon_with_busybox(registry, busybox_image, tmp_path, "--no-seccomp-use-default-when-empty") as d:
        pod_id, pod_config = run_plain_pod(d)
        assert int(init_status(d, run(d, pod_id, pod_config))["Seccomp"]) == 0
        default = run(d, pod_id, pod_config, lambda c: c.linux.security_context.seccomp.SetInParent())
        assert int(init_status(d, default)["Seccomp"]) == 2  # RuntimeDefault asked for explicitly


def test_localhost_seccomp_profile(env, pod, tmp_path):
    profile = tmp_path / "no-mkdir.json"
    profile.write_text(json.dumps({
        "defaultAction": "SCMP_ACT_ALLOW",
        "syscalls": [{"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO", "errnoRet": 13}],
    }))
    pod_id, pod_config = pod()

    def configure(c):
        c.linux.security_context.seccomp.profile_type = api.SecurityProfile.Localhost
        c.linux.security_context.seccomp.localhost_ref = str(profile)

    ctr = run(env, pod_id, pod_config, configure)
    result = sh(env, ctr, "mkdir /tmp/x")
    assert result.exit_code != 0
    assert b"Permission denied" in result.stderr
    assert sh(env, ctr, "touch /tmp/y && echo ok").stdout == b"ok\n"


APPARMOR_ON = apparmor.host_enabled()
needs_apparmor = pytest.mark.skipif(not APPARMOR_ON, reason="AppArmor is not enabled on this host")
# Allows everything but writes to /tmp/aa-denied*: enough to see it enforced.
TEST_PROFILE = "crio-fast-test-deny-write"


@pytest.fixture(scope="module")
def apparmor_test_profile(tmp_path_factory):
    """TEST_PROFILE loaded with apparmor_parser for the module's tests, removed after them."""
    if not APPARMOR_ON:
        pytest.skip("AppArmor is not enabled on this host")
    parser = apparmor.find_parser()
    if parser is None:
        pytest.skip("apparmor_parser is not installed (Debian/Ubuntu: the apparmor package)")
    path = tmp_path_factory.mktemp("apparmor") / TEST_PROFILE
    abi = "abi <abi/3.0>,\n" if Path(apparmor.POLICY_DIR, "abi", "3.0").exists() else ""
    path.write_text(f"""{abi}
profile {TEST_PROFILE} flags=(attach_disconnected,mediate_deleted) {{
  file,
  network,
  capability,
  signal,
  ptrace,
  umount,
  deny /tmp/aa-denied* w,
}}
""")
    subprocess.run([parser, "-r", "-K", str(path)], check=True, capture_output=True, text=True)
    try:
        yield TEST_PROFILE
    finally:
        subprocess.run([parser, "-R", str(path)], check=False, capture_output=True)


def attr_current(d: Daemon, ctr: str, pid: str = "1") -> str:
    """The AppArmor label of a process in the container, read from inside it."""
    result = sh(d, ctr, f"cat /proc/{pid}/attr/current")
    assert result.exit_code == 0, result.stderr
    return result.stdout.decode().strip("\0\n ")


def verbose_info(d: Daemon, ctr: str) -> dict:
    info = d.client.runtime.ContainerStatus(api.ContainerStatusRequest(container_id=ctr, verbose=True), timeout=10)
    return json.loads(info.info["info"])


def streaming_exec(d: Daemon, ctr: str, cmd: list[str]) -> tuple[bytes, bytes]:
    """stdout and stderr of ``cmd`` run through Exec and the streaming server (the exec helper, whatever
    the handler)."""
    url = d.client.runtime.Exec(api.ExecRequest(container_id=ctr, cmd=cmd, stdout=True, stderr=True),
                                timeout=10).url
    stdout, stderr, _ = asyncio.run(exec_over_spdy(url))
    return stdout, stderr


@pytest.mark.skipif(APPARMOR_ON, reason="AppArmor is enabled on this host: the apparmor tests below run instead")
def test_apparmor_profile_refused_when_apparmor_is_off(env, pod):
    pod_id, pod_config = pod()

    def configure(c):
        c.linux.security_context.apparmor.profile_type = api.SecurityProfile.Localhost
        c.linux.security_context.apparmor.localhost_ref = "my-profile"

    with pytest.raises(grpc.RpcError) as info:
        run(env, pod_id, pod_config, configure)
    assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "AppArmor is not enabled" in info.value.details()
    # The runtime default is "none" there: a container that names no profile runs, unconfined.
    assert verbose_info(env, run(env, pod_id, pod_config))["apparmorProfile"] == "unconfined"


def test_apparmor_status_reports_the_default_profile(env):
    response = env.client.runtime.Status(api.StatusRequest(verbose=True), timeout=10)
    described = json.loads(response.info["apparmor"])
    assert described["enabled"] is APPARMOR_ON
    ready = next(c for c in response.status.conditions if c.type == "RuntimeReady")
    assert ready.status, ready.message
    if APPARMOR_ON:
        assert described == {"enabled": True, "defaultProfile": "crio-fast-default", "problem": None}
        assert "crio-fast-default" in apparmor.loaded_profiles()  # loaded by the daemon at its start


@needs_apparmor
def test_apparmor_localhost_profile_is_enforced_on_the_container_and_its_execs(env, pod, apparmor_test_profile):
    pod_id, pod_config = pod()

    def configure(c):
        c.linux.security_context.apparmor.profile_type = api.SecurityProfile.Localhost
        c.linux.security_context.apparmor.localhost_ref = apparmor_test_profile

    ctr = run(env, pod_id, pod_config, configure,
              command=["sh", "-c", "echo x > /tmp/aa-denied-init; echo init-write=$?; exec sleep 3600"])
    label = f"{apparmor_test_profile} (enforce)"
    assert attr_current(env, ctr) == label  # the container's own process
    assert attr_current(env, ctr, "self") == label  # an ExecSync
    denied = sh(env, ctr, "echo x > /tmp/aa-denied")
    assert denied.exit_code != 0 and b"Permission denied" in denied.stderr, denied
    assert sh(env, ctr, "echo x > /tmp/allowed && echo ok").stdout == b"ok\n"
    stdout, stderr = streaming_exec(env, ctr, ["sh", "-c", "cat /proc/self/attr/current; echo x > /tmp/aa-denied2"])
    assert stdout.strip(b"\0\n") == label.encode() and b"Permission denied" in stderr, (stdout, stderr)
    log = Path(container_status(env, ctr).log_path)
    deadline = time.monotonic() + 10
    while b"init-write=" not in log.read_bytes() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert b"init-write=1" in log.read_bytes()  # refused to the init too
    assert verbose_info(env, ctr)["apparmorProfile"] == apparmor_test_profile
    # The deprecated field names it too.
    legacy = run(env, pod_id, pod_config,
                 lambda c: setattr(c.linux.security_context, "apparmor_profile", f"localhost/{apparmor_test_profile}"))
    assert attr_current(env, legacy) == label


@needs_apparmor
def test_apparmor_runtime_default_unconfined_and_privileged(env, pod):
    """Nothing asked or RuntimeDefault: the daemon's default profile, which denies mounts (with
    CAP_SYS_ADMIN and no seccomp filter, only AppArmor stands in the way); Unconfined and privileged: none."""
    pod_id, pod_config = pod()

    def mount_powers(kind):
        def configure(c):
            sc = c.linux.security_context
            sc.capabilities.add_capabilities.append("SYS_ADMIN")
            sc.seccomp.profile_type = api.SecurityProfile.Unconfined
            if kind is not None:
                sc.apparmor.profile_type = kind
                sc.apparmor.SetInParent()
        return configure

    mount = "mkdir -p /tmp/m && mount -t tmpfs t /tmp/m && echo mounted"
    for kind in (None, api.SecurityProfile.RuntimeDefault):
        ctr = run(env, pod_id, pod_config, mount_powers(kind))
        assert attr_current(env, ctr) == "crio-fast-default (enforce)"
        assert attr_current(env, ctr, "self") == "crio-fast-default (enforce)"
        assert streaming_exec(env, ctr, ["cat", "/proc/self/attr/current"])[0].strip(b"\0\n") == \
            b"crio-fast-default (enforce)"
        refused = sh(env, ctr, mount)
        assert refused.exit_code != 0 and b"Permission denied" in refused.stderr, refused
        assert verbose_info(env, ctr)["apparmorProfile"] == "crio-fast-default"
    # Unconfined is written as a profile, as CRI-O does: the container drops the runtime's own label.
    unconfined = run(env, pod_id, pod_config, mount_powers(api.SecurityProfile.Unconfined))
    assert attr_current(env, unconfined) == "unconfined"
    assert attr_current(env, unconfined, "self") == "unconfined"
    assert sh(env, unconfined, mount).stdout == b"mounted\n"
    assert verbose_info(env, unconfined)["apparmorProfile"] == "unconfined"
    # Privileged: no profile of ours. The init keeps what it starts with: unconfined, or under runc and
    # crun their own label where the distribution ships one (Debian 13: "runc (unconfined)").
    privileged = run(env, pod_id, pod_config, lambda c: setattr(c.linux.security_context, "privileged", True))
    label = attr_current(env, privileged)
    assert label == "unconfined" or label.endswith(" (unconfined)"), label
    assert verbose_info(env, privileged)["apparmorProfile"] == "unconfined"


@needs_apparmor
def test_apparmor_default_profile_follows_a_sighup_reload(env, pod, apparmor_test_profile):
    """[crio.runtime] apparmor_profile changed and SIGHUP: containers created after it get the new
    default; changed back, the built-in one again."""
    pod_id, pod_config = pod()
    override = env.dirs.config_dir / "50-apparmor-default.conf"

    def reload_with(text: str | None, expected: str) -> None:
        if text is None:
            override.unlink(missing_ok=True)
        else:
            override.write_text(text)
        mark = env.log().count("reloaded runtime.apparmor_profile")
        env.proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 10 * SLOWDOWN
        while env.log().count("reloaded runtime.apparmor_profile") == mark and time.monotonic() < deadline:
            time.sleep(0.05)
        assert f"reloaded runtime.apparmor_profile = {expected!r}" in env.log()

    try:
        reload_with(f'[crio.runtime]\napparmor_profile = "{apparmor_test_profile}"\n', apparmor_test_profile)
        assert attr_current(env, run(env, pod_id, pod_config)) == f"{apparmor_test_profile} (enforce)"
    finally:
        reload_with(None, apparmor.BUILTIN_DEFAULT)
    assert attr_current(env, run(env, pod_id, pod_config)) == f"{apparmor.BUILTIN_DEFAULT} (enforce)"


@needs_apparmor
def test_apparmor_unknown_localhost_profile_is_refused(env, pod):
    pod_id, pod_config = pod()

    def structured(c):
        c.linux.security_context.apparmor.profile_type = api.SecurityProfile.Localhost
        c.linux.security_context.apparmor.localhost_ref = "crio-fast-no-such-profile"

    def legacy(c):
        c.linux.security_context.apparmor_profile = "localhost/crio-fast-no-such-profile"

    for configure in (structured, legacy):
        with pytest.raises(grpc.RpcError) as info:
            create(env, pod_id, pod_config, ["sleep", "3600"], configure=configure)
        assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "'crio-fast-no-such-profile' is not loaded" in info.value.details()


def test_a_localhost_seccomp_profile_confines_all_but_privileged_containers(env, pod, tmp_path):
    """A Localhost profile denying sethostname: it stops a container holding CAP_SYS_ADMIN, and a privileged
    container, which runs without seccomp whatever profile it names, sets its (pod's) host name."""
    profile = tmp_path / "deny-sethostname.json"
    profile.write_text(json.dumps({"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [
        {"names": ["sethostname"], "action": "SCMP_ACT_ERRNO", "errnoRet": 1}]}))

    def with_profile(privileged: bool):
        def configure(config: api.ContainerConfig) -> None:
            sc = config.linux.security_context
            sc.seccomp.profile_type = api.SecurityProfile.Localhost
            sc.seccomp.localhost_ref = str(profile)
            sc.capabilities.add_capabilities.append("SYS_ADMIN")
            sc.privileged = privileged
        return configure

    pod_id, pod_config = pod()
    confined = run(env, pod_id, pod_config, with_profile(False))
    result = sh(env, confined, "hostname confined-name && echo set; grep ^Seccomp: /proc/self/status")
    assert b"set" not in result.stdout.split() and b"Seccomp:\t2" in result.stdout, (result.stdout, result.stderr)
    privileged = run(env, pod_id, pod_config, with_profile(True))
    result = sh(env, privileged, "hostname privileged-name && hostname; grep ^Seccomp: /proc/self/status")
    assert result.stdout.split() == [b"privileged-name", b"Seccomp:", b"0"], (result.stdout, result.stderr)


def test_no_seccomp_profile_named_follows_seccomp_use_default_when_empty(env, pod):
    """Neither the container nor the pod names a profile: RuntimeDefault while the setting is true (the
    default), unconfined once a SIGHUP reload sets it false; a named RuntimeDefault applies either way."""
    pod_id, pod_config = pod()

    def seccomp_mode(configure=None) -> bytes:
        ctr = run(env, pod_id, pod_config, configure)
        return sh(env, ctr, "grep ^Seccomp: /proc/self/status").stdout.split()[-1]

    def runtime_default(config: api.ContainerConfig) -> None:
        config.linux.security_context.seccomp.profile_type = api.SecurityProfile.RuntimeDefault
        config.linux.security_context.seccomp.SetInParent()

    assert seccomp_mode() == b"2"
    override = env.dirs.config_dir / "50-seccomp-empty.conf"

    def reload_with(text: str | None, expected: bool) -> None:
        if text is None:
            override.unlink(missing_ok=True)
        else:
            override.write_text(text)
        key = "reloaded runtime.seccomp_use_default_when_empty"
        mark = env.log().count(key)
        env.proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 10 * SLOWDOWN
        while env.log().count(key) == mark and time.monotonic() < deadline:
            time.sleep(0.05)
        assert f"{key} = {expected!r}" in env.log()

    try:
        reload_with("[crio.runtime]\nseccomp_use_default_when_empty = false\n", False)
        assert seccomp_mode() == b"0"
        assert seccomp_mode(runtime_default) == b"2"
    finally:
        reload_with(None, True)
    assert seccomp_mode() == b"2"


def test_privileged_container_sees_host_devices(env, pod):
    pod_id, pod_config = pod()
    ctr = run(env, pod_id, pod_config, lambda c: setattr(c.linux.security_context, "privileged", True))
    assert sh(env, ctr, "test -c /dev/kmsg && echo yes").stdout == b"yes\n"
    status = init_status(env, ctr)
    assert int(status["CapEff"], 16) == int(status["CapBnd"], 16) != 0
    assert int(status["Seccomp"]) == 0
    unprivileged = run(env, pod_id, pod_config)
    assert sh(env, unprivileged, "test -e /dev/kmsg").exit_code != 0


def test_requested_device_is_created_and_allowed(env, pod):
    pod_id, pod_config = pod()
    ctr = run(env, pod_id, pod_config, lambda c: c.devices.append(
        api.Device(host_path="/dev/kmsg", container_path="/dev/mykmsg", permissions="w")))
    # Writing to the kernel log needs no capability: only the device rule lets the write through.
    marker = f"crio-fast-test-{ctr[:12]}"
    assert sh(env, ctr, f"test -c /dev/mykmsg && echo {marker} > /dev/mykmsg && echo yes").stdout == b"yes\n"
    if cgroups.layout().hierarchy_of("devices") is None:
        return  # cgroup2 has no list to read: its eBPF filter has tests of its own (test_device_filter.py)
    rules = (cgroup_dir(env, ctr, "devices") / "devices.list").read_text().split("\n")
    assert "c 1:11 w" in rules
    assert "a *:* rwm" not in rules


def memory_limit_and_quota(memory: Path, cpu: Path) -> tuple[int, int]:
    """A cgroup's memory limit and CPU quota (its period must be 100 ms), from its v1 or v2 files."""
    if cgroups.is_v2("memory"):
        memory_limit = int((memory / "memory.max").read_text())
    else:
        memory_limit = int((memory / "memory.limit_in_bytes").read_text())
    if cgroups.is_v2("cpu"):
        quota, period = (cpu / "cpu.max").read_text().split()
        assert period == "100000"
    else:
        quota = (cpu / "cpu.cfs_quota_us").read_text()
    return memory_limit, int(quota)


def test_memory_cpu_limits_and_live_update(env, pod):
    pod_id, pod_config = pod()
    resources = api.LinuxContainerResources(memory_limit_in_bytes=64 << 20, cpu_period=100000, cpu_quota=50000)
    ctr = run(env, pod_id, pod_config, lambda c: c.linux.resources.CopyFrom(resources))

    def limits() -> tuple[int, int]:
        return memory_limit_and_quota(cgroup_dir(env, ctr, "memory"), cgroup_dir(env, ctr, "cpu"))

    assert limits() == (64 << 20, 50000)
    env.client.runtime.UpdateContainerResources(api.UpdateContainerResourcesRequest(
        container_id=ctr, linux=api.LinuxContainerResources(memory_limit_in_bytes=96 << 20, cpu_period=100000,
                                                            cpu_quota=20000)), timeout=10)
    assert limits() == (96 << 20, 20000)


def test_pod_resources_live_update(env, pod):
    """UpdatePodSandboxResources: the pod cgroup gets the containers' sum plus the overhead, as the kubelet
    sizes it; a pod that is gone is NotFound, a stopped one FailedPrecondition."""
    pod_id, pod_config = pod()
    ctr = run(env, pod_id, pod_config, lambda c: c.linux.resources.CopyFrom(
        api.LinuxContainerResources(memory_limit_in_bytes=64 << 20, cpu_period=100000, cpu_quota=50000)))
    memory, cpu = cgroup_dir(env, ctr, "memory").parent, cgroup_dir(env, ctr, "cpu").parent

    def pod_limits() -> tuple[int, int]:
        return memory_limit_and_quota(memory, cpu)

    def update(memory_limit: int, quota: int, pod: str = pod_id) -> None:
        env.client.runtime.UpdatePodSandboxResources(api.UpdatePodSandboxResourcesRequest(
            pod_sandbox_id=pod,
            resources=api.LinuxContainerResources(memory_limit_in_bytes=memory_limit, cpu_period=100000,
                                                  cpu_quota=quota),
            # The overhead in another period: counted in the containers' one.
            overhead=api.LinuxContainerResources(memory_limit_in_bytes=16 << 20, cpu_period=50000, cpu_quota=5000)),
            timeout=10)

    update(128 << 20, 100000)
    assert pod_limits() == (144 << 20, 110000)
    update(96 << 20, 60000)
    assert pod_limits() == (112 << 20, 70000)
    assert sh(env, ctr, "echo alive").stdout == b"alive\n"
    with pytest.raises(grpc.RpcError) as err:
        update(96 << 20, 60000, pod="0" * 64)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    env.client.runtime.StopPodSandbox(api.StopPodSandboxRequest(pod_sandbox_id=pod_id), timeout=60)
    with pytest.raises(grpc.RpcError) as err:
        update(96 << 20, 60000)
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION


def test_pids_limit_and_default_ulimits(env, pod, handler):
    pod_id, pod_config = pod()
    ctr = run(env, pod_id, pod_config)
    assert int((cgroup_dir(env, ctr, "pids") / "pids.max").read_text()) == PIDS_LIMIT
    nofile = next(line for line in sh(env, ctr, "cat /proc/1/limits").stdout.decode().splitlines()
                  if line.startswith("Max open files"))
    assert nofile.split()[3:5] == ["1024", "2048"]  # the container's own process
    if handler != "runc":
        # Debian's runc 1.1.5 (built with Go 1.19) sets an exec's limits before its own Go runtime raises the
        # soft open-files limit to the hard one, so a runc exec gets 2048:2048 (fixed in later runc releases).
        assert sh(env, ctr, "ulimit -n; ulimit -Hn").stdout.split() == [b"1024", b"2048"]  # and an exec
    # The sleepers get their own stdio: a foreground `runc exec` copies the command's output through pipes of
    # its own and returns only at end of file, which processes left running would postpone for their lifetime.
    result = sh(env, ctr, f"for i in $(seq {PIDS_LIMIT + 10}); do sleep 100 </dev/null >/dev/null 2>&1 & done;"
                " echo done", timeout=20)
    assert b"can't fork" in result.stderr or b"Resource temporarily unavailable" in result.stderr
    sh(env, ctr, "pkill sleep; true")


def test_the_containers_own_cgroup_files_are_visible_and_read_only(env, pod, handler):
    """/sys/fs/cgroup inside shows the container's own cgroups (v1: a tmpfs with one bind per
    hierarchy, each of the container's cgroup), and they cannot be written."""
    pod_id, pod_config = pod()
    ctr = run(env, pod_id, pod_config)
    v1 = Path("/sys/fs/cgroup/pids/cgroup.procs").exists()
    pids_max = "/sys/fs/cgroup/pids/pids.max" if v1 else "/sys/fs/cgroup/pids.max"
    result = sh(env, ctr, f"cat {pids_max}; echo 5 > {pids_max} && echo wrote; true")
    assert result.stdout.decode().split() == [str(PIDS_LIMIT)]
    assert b"Read-only file system" in result.stderr, result.stderr
    if v1 and handler == "native":
        # The tmpfs holding the binds is read-only too (Debian's runc 1.1.5 leaves it writable).
        result = sh(env, ctr, "mkdir /sys/fs/cgroup/new && echo made; ls /sys/fs/cgroup/memory | wc -l")
        assert b"Read-only file system" in result.stderr and b"made" not in result.stdout
        assert int(result.stdout) > 10  # the memory cgroup's files, not an empty directory


def test_a_read_only_volume_leaves_the_mounts_under_its_source_writable(env, pod, tmp_path):
    """CRI's readonly without recursive_read_only: the volume's own mount is read-only, the mounts under its
    source come along (rbind) as they are, writable, as an OCI runtime's "rbind,ro" leaves them."""
    volume = tmp_path / "volume"
    (volume / "sub").mkdir(parents=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "sub-of-volume", str(volume / "sub")], check=True)
    try:
        pod_id, pod_config = pod()

        def configure(config: api.ContainerConfig) -> None:
            config.mounts.add(container_path="/vol", host_path=str(volume), readonly=True)

        ctr = run(env, pod_id, pod_config, configure=configure)
        result = sh(env, ctr, "echo x > /vol/top && echo wrote-top; echo y > /vol/sub/file && echo wrote-sub; true")
        assert result.stdout.split() == [b"wrote-sub"], (result.stdout, result.stderr)
        assert b"Read-only file system" in result.stderr
        assert (volume / "sub" / "file").read_text() == "y\n"
    finally:
        subprocess.run(["umount", "-l", str(volume / "sub")], check=False)


def handler_features(d: Daemon, handler: str) -> api.RuntimeHandlerFeatures:
    status = d.client.runtime.Status(api.StatusRequest(), timeout=10)
    [entry] = [h for h in status.runtime_handlers if h.name == handler]
    return entry.features


def test_a_recursive_read_only_volume_makes_the_mounts_under_it_read_only(env, pod, handler, tmp_path):
    """CRI's recursive_read_only: the tmpfs under the volume's source is read-only in the container too, while
    it stays writable on the host; ContainerStatus says so. A handler whose runtime cannot do it (crun before
    1.9 lists no "rro") says so in its features and refuses the mount rather than run it writable."""
    volume = tmp_path / "volume"
    (volume / "sub").mkdir(parents=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "sub-of-volume", str(volume / "sub")], check=True)
    try:
        pod_id, pod_config = pod()

        def configure(config: api.ContainerConfig) -> None:
            config.mounts.add(container_path="/vol", host_path=str(volume), readonly=True, recursive_read_only=True)

        if not handler_features(env, handler).recursive_read_only_mounts:
            with pytest.raises(grpc.RpcError) as info:
                run(env, pod_id, pod_config, configure=configure)
            assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION, info.value.details()
            return
        ctr = run(env, pod_id, pod_config, configure=configure)
        result = sh(env, ctr, "echo x > /vol/top && echo wrote-top; echo y > /vol/sub/file && echo wrote-sub; true")
        assert result.stdout == b"", (result.stdout, result.stderr)
        assert result.stderr.count(b"Read-only file system") == 2, result.stderr
        (volume / "sub" / "host-file").write_text("the host still writes\n")
        [mount] = container_status(env, ctr).mounts
        assert mount.readonly and mount.recursive_read_only
    finally:
        subprocess.run(["umount", "-l", str(volume / "sub")], check=False)


def test_recursive_read_only_needs_readonly_and_private_propagation(env, pod, handler, tmp_path):
    pod_id, pod_config = pod()
    for readonly, propagation in ((False, api.MountPropagation.PROPAGATION_PRIVATE),
                                  (True, api.MountPropagation.PROPAGATION_HOST_TO_CONTAINER),
                                  (True, api.MountPropagation.PROPAGATION_BIDIRECTIONAL)):
        def configure(config: api.ContainerConfig) -> None:
            config.mounts.add(container_path="/vol", host_path=str(tmp_path), readonly=readonly,
                              recursive_read_only=True, propagation=propagation)

        with pytest.raises(grpc.RpcError) as info:
            create(env, pod_id, pod_config, ["sleep", "3600"], configure=configure)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT, (readonly, propagation)
        assert "recursive_read_only needs" in info.value.details()


def test_handlers_advertise_recursive_read_only_mounts(env):
    status = env.client.runtime.Status(api.StatusRequest(), timeout=10)
    features = {h.name: h.features.recursive_read_only_mounts for h in status.runtime_handlers}
    assert features["native"] is True
    assert features["runc"] is True  # Debian's runc 1.1.5 lists "rro" in `runc features`


def test_namespaced_sysctl_applied_and_node_sysctl_refused(env, pod):
    pod_id, pod_config = pod({"kernel.shm_rmid_forced": "1", "net.ipv4.ip_unprivileged_port_start": "80"})
    ctr = run(env, pod_id, pod_config)
    assert sh(env, ctr, "cat /proc/sys/kernel/shm_rmid_forced").stdout == b"1\n"
    assert sh(env, ctr, "cat /proc/sys/net/ipv4/ip_unprivileged_port_start").stdout == b"80\n"
    with pytest.raises(grpc.RpcError) as info:
        pod({"kernel.panic": "5"})
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "kernel.panic" in info.value.details()


def test_memory_hog_is_oom_killed(env, pod):
    pod_id, pod_config = pod()
    limit = 32 << 20
    # tail's line buffer grows until the cgroup's limit is hit: /dev/zero never gives it a newline.
    ctr = run(env, pod_id, pod_config, lambda c: c.linux.resources.CopyFrom(
        api.LinuxContainerResources(memory_limit_in_bytes=limit)), command=["tail", "/dev/zero"])
    deadline = time.monotonic() + 20
    while (st := container_status(env, ctr)).state != api.ContainerState.CONTAINER_EXITED:
        assert time.monotonic() < deadline, "the memory hog outlived its limit"
        time.sleep(0.05)
    assert st.reason == "OOMKilled"
    assert st.exit_code == 128 + 9


def test_cpu_quota_throttles(env, pod):
    pod_id, pod_config = pod()
    resources = api.LinuxContainerResources(cpu_period=100000, cpu_quota=10000)  # a tenth of one CPU
    ctr = run(env, pod_id, pod_config, lambda c: c.linux.resources.CopyFrom(resources),
              command=["sh", "-c", "while :; do :; done"])
    cpu = cgroup_dir(env, ctr, "cpu")

    def used_ns() -> int:
        if cgroups.is_v2("cpu"):
            stat = dict(line.split() for line in (cpu / "cpu.stat").read_text().splitlines())
            return int(stat["usage_usec"]) * 1000
        return int((cgroup_dir(env, ctr, "cpuacct") / "cpuacct.usage").read_text())

    first = used_ns()
    time.sleep(1.0)
    used = used_ns() - first
    stat = dict(line.split() for line in (cpu / "cpu.stat").read_text().splitlines())
    assert int(stat["nr_throttled"]) > 0
    assert used < 0.3e9  # a busy loop would use the whole second without the quota


def test_default_sysctls_apply_and_pod_sysctls_win(env, pod):
    pod_id, pod_config = pod()
    ctr = run(env, pod_id, pod_config)
    for key, value in DEFAULT_SYSCTLS.items():
        assert sh(env, ctr, f"cat /proc/sys/{key.replace('.', '/')}").stdout.decode().split() == value.split()
    own_pod_id, own_pod = pod({"kernel.msgmnb": "20000"})
    own = run(env, own_pod_id, own_pod)
    assert sh(env, own, "cat /proc/sys/kernel/msgmnb").stdout == b"20000\n"
    assert sh(env, own, "cat /proc/sys/net/ipv4/ip_default_ttl").stdout == b"63\n"


def test_default_network_sysctl_is_skipped_for_a_host_network_pod(env, pod):
    host_ttl = Path("/proc/sys/net/ipv4/ip_default_ttl").read_text()
    pod_id, pod_config = pod(host_network=True)
    ctr = run(env, pod_id, pod_config)
    assert sh(env, ctr, "cat /proc/sys/net/ipv4/ip_default_ttl").stdout.decode() == host_ttl
    assert sh(env, ctr, "cat /proc/sys/kernel/msgmnb").stdout == b"32768\n"  # its own IPC namespace still gets it
    assert Path("/proc/sys/net/ipv4/ip_default_ttl").read_text() == host_ttl  # the node is untouched
