"""The daemon over its real unix socket with the real gRPC transport."""

from __future__ import annotations

import json
import os
import resource
import signal
import socket
import stat
import subprocess
import time

import grpc
import pytest

from crio_fast.api import api_pb2 as api
from crio_fast.config.schema import NetworkSection
from crio_fast.version import __version__
from tests.support import cgroups
from tests.support.daemon import Daemon, make_dirs, remove_dirs, run_cli
from tests.support.network import pool_entries
from tests.support.pods import wait_for

DEFAULT_POOL_SIZE = NetworkSection().netns_pool_size


def mounts_under(directory) -> list[str]:
    with open("/proc/self/mountinfo") as f:
        points = [line.split()[4] for line in f]
    return [p for p in points if p.startswith(f"{directory}/")]

pytestmark = pytest.mark.integration

CONFLIST = {
    "cniVersion": "1.0.0",
    "name": "testnet",
    "plugins": [{"type": "loopback"}],
}


def test_version_over_unix_socket(daemon):
    v = daemon.client.version()
    assert v.runtime_name == "crio-fast"
    assert v.runtime_api_version == "v1"
    assert v.runtime_version.startswith(__version__)
    assert v.version


def test_status_conditions_and_network_ready_follows_config(daemon):
    conditions = {c.type: c for c in daemon.client.status().status.conditions}
    assert conditions["RuntimeReady"].status is True
    assert conditions["NetworkReady"].status is False
    assert conditions["NetworkReady"].reason == "NetworkPluginNotReady"
    assert str(daemon.dirs.network_dir) in conditions["NetworkReady"].message

    # A valid config appearing makes the network ready without a restart.
    (daemon.dirs.network_dir / "10-test.conflist").write_text(json.dumps(CONFLIST))
    conditions = {c.type: c for c in daemon.client.status().status.conditions}
    assert conditions["NetworkReady"].status is True

    # An invalid one alone does not.
    (daemon.dirs.network_dir / "10-test.conflist").write_text("{not json")
    conditions = {c.type: c for c in daemon.client.status().status.conditions}
    assert conditions["NetworkReady"].status is False
    assert "10-test.conflist" in conditions["NetworkReady"].message


def test_status_verbose_reports_config(daemon):
    status = daemon.client.status(verbose=True)
    info = json.loads(status.info["config"])
    assert info["crio.root"] == str(daemon.dirs.root)
    assert info["api.listen"] == str(daemon.dirs.socket)
    assert [h.name for h in status.runtime_handlers] == ["", "native"]  # "": the default, as CRI names it
    assert "config" not in daemon.client.status(verbose=False).info


def test_runtime_config_reports_the_cgroup_driver(daemon):
    expected = {"cgroupfs": api.CgroupDriver.CGROUPFS, "systemd": api.CgroupDriver.SYSTEMD}[cgroups.driver()]
    assert daemon.client.runtime_config().linux.cgroup_driver == expected


def test_update_runtime_config_accepts_pod_cidr(daemon):
    req = api.UpdateRuntimeConfigRequest(
        runtime_config=api.RuntimeConfig(network_config=api.NetworkConfig(pod_cidr="10.88.0.0/16"))
    )
    daemon.client.runtime.UpdateRuntimeConfig(req, timeout=5)


def test_unimplemented_rpc_names_itself_and_daemon_stays_up(daemon):
    with pytest.raises(grpc.RpcError) as err:
        daemon.client.runtime.CheckpointContainer(api.CheckpointContainerRequest(container_id="x"), timeout=5)
    assert err.value.code() == grpc.StatusCode.UNIMPLEMENTED
    assert "CheckpointContainer" in err.value.details()
    # Server-streaming RPCs answer the same way.
    with pytest.raises(grpc.RpcError) as err:
        list(daemon.client.runtime.StreamContainers(api.StreamContainersRequest(), timeout=5))
    assert err.value.code() == grpc.StatusCode.UNIMPLEMENTED
    assert daemon.client.version().runtime_name == "crio-fast"


def test_socket_mode_is_0660(daemon):
    assert stat.S_IMODE(os.stat(daemon.dirs.socket).st_mode) == 0o660


def test_stale_socket_is_replaced(daemon_dirs):
    daemon_dirs.runroot.mkdir(parents=True)
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(daemon_dirs.socket))
    stale.close()  # the file stays, nobody listens: what a crashed daemon leaves
    assert stat.S_ISSOCK(os.lstat(daemon_dirs.socket).st_mode)
    d = Daemon(daemon_dirs).start()
    try:
        assert d.client.version().runtime_name == "crio-fast"
    finally:
        assert d.stop() == 0


def test_live_socket_is_refused(daemon):
    # A second daemon with its own run root but the same socket path.
    other = make_dirs()
    try:
        other.runroot.mkdir(parents=True)
        result = run_cli(other, "--listen", str(daemon.dirs.socket))
        assert result.returncode != 0
        assert "already listening" in result.stderr
        assert daemon.client.version().runtime_name == "crio-fast"
        # The refused daemon made nothing that outlives it (its network namespace pool included).
        assert mounts_under(other.base) == []
    finally:
        remove_dirs(other)


def test_second_daemon_on_same_runroot_is_refused(daemon):
    wait_for(lambda: len(pool_entries(daemon.dirs.runroot)) == DEFAULT_POOL_SIZE, what="the first daemon's pool")
    pool = pool_entries(daemon.dirs.runroot)
    result = run_cli(daemon.dirs, "--listen", str(daemon.dirs.base / "other.sock"))
    assert result.returncode != 0
    assert "crio-fast.lock" in result.stderr
    assert not (daemon.dirs.base / "other.sock").exists()
    # The refused daemon left the running one's network namespaces alone.
    assert pool_entries(daemon.dirs.runroot) == pool
    assert set(pool) <= set(mounts_under(daemon.dirs.runroot))


def test_non_socket_in_the_way_is_refused(daemon_dirs):
    daemon_dirs.runroot.mkdir(parents=True)
    daemon_dirs.socket.write_text("precious")
    result = run_cli(daemon_dirs)
    assert result.returncode != 0
    assert "not a socket" in result.stderr
    assert daemon_dirs.socket.read_text() == "precious"


def test_sigterm_shuts_down_cleanly(daemon_dirs):
    d = Daemon(daemon_dirs).start()
    assert d.client.version().runtime_name == "crio-fast"
    assert d.stop() == 0
    assert not daemon_dirs.socket.exists()
    # The instance lock was released: a new daemon starts on the same dirs.
    d2 = Daemon(daemon_dirs).start()
    assert d2.stop() == 0


def test_sigint_shuts_down_cleanly(daemon_dirs):
    d = Daemon(daemon_dirs).start()
    d.proc.send_signal(signal.SIGINT)
    assert d.proc.wait(20) == 0
    assert not daemon_dirs.socket.exists()


def test_sighup_reloads_safe_keys_and_keeps_serving(daemon):
    (daemon.dirs.config_dir / "50-reload.conf").write_text(
        '[crio.runtime]\nlog_level = "debug"\npids_limit = 77\n[crio.metrics]\nmetrics_port = 9191\n'
    )
    daemon.proc.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 10
    while "runtime.pids_limit" not in daemon.log() and time.monotonic() < deadline:
        time.sleep(0.05)
    log = daemon.log()
    assert "reloaded runtime.pids_limit = 77" in log
    assert "metrics.metrics_port changed" in log and "after a restart" in log
    info = json.loads(daemon.client.status(verbose=True).info["config"])
    assert info["runtime.pids_limit"] == 77
    assert info["metrics.metrics_port"] != 9191


def test_sighup_with_broken_config_keeps_running_config(daemon):
    (daemon.dirs.config_dir / "50-bad.conf").write_text("[crio.runtime]\npids_limit = 'many'\n")
    daemon.proc.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 10
    while "reload refused" not in daemon.log() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert "50-bad.conf" in daemon.log()
    assert daemon.client.version().runtime_name == "crio-fast"


def test_bad_config_prevents_start(daemon_dirs):
    daemon_dirs.config.write_text("[crio.api]\ngrpc_max_send_msg_size = 'huge'\n")
    result = run_cli(daemon_dirs)
    assert result.returncode != 0
    assert str(daemon_dirs.config) in result.stderr
    assert "crio.api.grpc_max_send_msg_size" in result.stderr
    assert not daemon_dirs.socket.exists()


def test_unknown_key_warns_and_starts(daemon_dirs):
    daemon_dirs.config.write_text("[crio.runtime]\nno_such_key = 1\n")
    d = Daemon(daemon_dirs).start()
    try:
        assert "crio.runtime.no_such_key" in d.log()
        assert str(daemon_dirs.config) in d.log()
    finally:
        assert d.stop() == 0


def test_config_subcommand_prints_effective_toml(daemon_dirs):
    (daemon_dirs.config_dir / "10-a.conf").write_text("[crio.runtime]\npids_limit = 1234\n")
    result = run_cli(daemon_dirs, "config")
    assert result.returncode == 0, result.stderr
    import tomllib

    parsed = tomllib.loads(result.stdout)
    assert parsed["crio"]["root"] == str(daemon_dirs.root)
    assert parsed["crio"]["runtime"]["pids_limit"] == 1234
    assert "#" in result.stdout  # commented, like `crio config`


def test_version_subcommand():
    import sys

    result = subprocess.run([sys.executable, "-m", "crio_fast", "version"], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0
    assert __version__ in result.stdout


def test_open_files_soft_limit_raised_to_the_hard_one(daemon_dirs):
    """About two descriptors per pod: a daemon started with the usual soft 1024 raises it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard <= 1024:
        pytest.skip(f"the hard open files limit is {hard}: nothing to raise to")
    resource.setrlimit(resource.RLIMIT_NOFILE, (1024, hard))  # the daemon inherits it
    try:
        d = Daemon(daemon_dirs).start()
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    try:
        limits = open(f"/proc/{d.proc.pid}/limits").read().splitlines()
        started_soft, started_hard = next(line for line in limits if line.startswith("Max open files")).split()[3:5]
        assert started_soft == started_hard != "1024"
    finally:
        assert d.stop() == 0
