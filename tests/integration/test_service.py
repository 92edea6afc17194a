"""crio-fast as a systemd service, with a real daemon.

The first test plays systemd's part itself (a NOTIFY_SOCKET and a JOURNAL_STREAM of its own) and runs
anywhere. The second needs systemd as PID 1 (the scripts/vm guests): it installs the unit, starts it,
runs a pod, restarts the unit and finds the container still running, listed and exec-able.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import grpc
import pytest

from crio_fast.api import api_pb2 as api
from crio_fast.client import CRIClient
from crio_fast.systemd import UNIT_NAME, systemd_booted, unit_state
from tests.support.daemon import Daemon, daemon_argv, make_dirs, remove_dirs
from tests.support.pods import create, exec_sync, remove_all_pods, run_pod, start, status
from tests.support.registries_conf import write_registries_conf
from tests.support.timing import scaled

pytestmark = pytest.mark.integration


def receive(sock: socket.socket, timeout: float) -> bytes:
    sock.settimeout(scaled(timeout))
    return sock.recv(4096)


def test_daemon_notifies_ready_once_serving_and_stopping_at_shutdown(tmp_path: Path) -> None:
    dirs = make_dirs()
    notify_path = dirs.base / "notify"
    stderr_path = tmp_path / "stderr"
    proc = None
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as notify_socket, open(stderr_path, "wb") as stderr:
        notify_socket.bind(str(notify_path))
        st = os.fstat(stderr.fileno())
        env = {**os.environ, "NOTIFY_SOCKET": str(notify_path), "JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"}
        try:
            proc = subprocess.Popen(daemon_argv(dirs), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                    stderr=stderr, env=env)
            try:
                ready = receive(notify_socket, 30)
            except TimeoutError:
                raise AssertionError(f"no READY=1 from the daemon:\n{stderr_path.read_text()}") from None
            assert ready.split(b"\n")[0] == b"READY=1", ready
            # At READY=1 the socket already serves: a call that does not wait for it succeeds at once.
            with CRIClient(str(dirs.socket)) as client:
                assert client.version().runtime_name == "crio-fast"
            assert proc.poll() is None
            proc.send_signal(signal.SIGTERM)
            assert receive(notify_socket, 30) == b"STOPPING=1"
            assert proc.wait(scaled(30)) == 0
        finally:
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait()
            remove_dirs(dirs)
    # journald stamps lines itself: no timestamp of ours, the level as a syslog priority.
    lines = stderr_path.read_text().splitlines()
    serving = [line for line in lines if "serving CRI v1 on" in line]
    assert serving and serving[0].startswith("<6>INFO crio_fast.daemon: crio-fast "), lines


class ServiceNode:
    """The pods.py helpers' view of a daemon run by systemd: its dirs, an image and a client."""

    def __init__(self, dirs, image: str) -> None:
        self.dirs = dirs
        self.image = image
        self._client: CRIClient | None = None

    @property
    def client(self) -> CRIClient:
        if self._client is None:
            self._client = CRIClient(str(self.dirs.socket))
        return self._client

    def reconnect(self) -> None:
        """A fresh channel: the old one may be backing off after the restart's disconnect."""
        if self._client is not None:
            self._client.close()
            self._client = None


def systemctl(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run(["systemctl", *args], capture_output=True, text=True, timeout=scaled(120),
                            stdin=subprocess.DEVNULL)
    assert not check or result.returncode == 0, f"systemctl {' '.join(args)}: {result.stderr}"
    return result


def unit_property(name: str) -> str:
    return systemctl("show", UNIT_NAME, f"--property={name}", "--value").stdout.strip()


def cgroup_of(pid: int) -> str:
    """A process's cgroup v2 path."""
    return Path(f"/proc/{pid}/cgroup").read_text().strip().removeprefix("0::")


@pytest.mark.skipif(not systemd_booted(), reason="systemd is not PID 1")
@pytest.mark.parametrize("driver", ["cgroupfs", "systemd"])
def test_unit_restart_keeps_a_running_container(registry, busybox_image, tmp_path: Path, driver: str) -> None:
    existing = unit_state()
    if existing is not None and existing.load_state == "loaded":
        pytest.skip(f"this machine already has a {UNIT_NAME}; the test installs its own and will not replace it")
    etc_existed = Path("/etc/crio-fast").exists()
    dirs = make_dirs()
    conf = write_registries_conf(tmp_path / "registries.conf", [registry.host])
    script = Path(sys.executable).parent / "crio-fast"
    # The unit runs this installation on the test's private dirs (the flags keep it off the node's own).
    exec_start = " ".join(daemon_argv(dirs, "--registries-conf", str(conf), "--cgroup-manager", driver,
                                      program=[str(script)]))
    node = ServiceNode(dirs, busybox_image.reference)
    pod_id = ""
    try:
        installed = subprocess.run([str(script), "install-service", "--exec-start", exec_start, "--now"],
                                   capture_output=True, text=True, timeout=scaled(180), stdin=subprocess.DEVNULL)
        assert installed.returncode == 0, installed.stdout + installed.stderr
        # Type=notify: `systemctl restart` returned once READY=1 came, so the socket serves now.
        assert node.client.version().runtime_name == "crio-fast"
        assert (unit_property("Type"), unit_property("KillMode"), unit_property("Delegate")) == (
            "notify", "process", "yes")
        assert unit_property("LimitNOFILE") == "1048576" and unit_property("OOMScoreAdjust") == "-999"
        checked = subprocess.run([*daemon_argv(dirs, program=[str(script)]), "check"], capture_output=True, text=True,
                                 timeout=scaled(60), stdin=subprocess.DEVNULL)
        assert f"OK       systemd unit {UNIT_NAME}: active (running), enabled" in checked.stdout, checked.stdout

        node.client.image.PullImage(api.PullImageRequest(image=api.ImageSpec(image=node.image)), timeout=120)
        pod_id, pod = run_pod(node)
        container_id = create(node, pod_id, pod, ["/bin/sleep", "1000"])
        start(node, container_id)
        first_pid = unit_property("MainPID")
        # Neither the container nor the pod's monitor is in the daemon's unit: a restart leaves them be.
        info = json.loads(node.client.runtime.ContainerStatus(
            api.ContainerStatusRequest(container_id=container_id, verbose=True), timeout=30).info["info"])
        monitor_pid = json.loads(node.client.runtime.PodSandboxStatus(
            api.PodSandboxStatusRequest(pod_sandbox_id=pod_id, verbose=True), timeout=30).info["info"])["pid"]
        service_cgroup = cgroup_of(int(first_pid))
        for pid in (info["pid"], monitor_pid):
            assert not cgroup_of(pid).startswith(service_cgroup + "/"), (pid, cgroup_of(pid))
        if driver == "systemd":  # the systemd driver's units: the pod's slice, its monitor's and container's scopes
            pod_slice = f"/crio_fast.slice/crio_fast-pod{pod_id}.slice"
            assert cgroup_of(info["pid"]) == f"{pod_slice}/crio-fast-{container_id}.scope"
            assert cgroup_of(monitor_pid) == f"{pod_slice}/crio-fast-monitor-{pod_id}.scope"

        systemctl("restart", UNIT_NAME)
        node.reconnect()
        assert unit_property("MainPID") not in ("0", first_pid)
        assert status(node, container_id).state == api.ContainerState.CONTAINER_RUNNING
        listed = node.client.runtime.ListContainers(api.ListContainersRequest(), timeout=30).containers
        assert [c.id for c in listed if c.state == api.ContainerState.CONTAINER_RUNNING] == [container_id]
        assert exec_sync(node, container_id, ["/bin/echo", "alive"]).stdout == b"alive\n"

        node.client.runtime.StopPodSandbox(api.StopPodSandboxRequest(pod_sandbox_id=pod_id), timeout=60)
        node.client.runtime.RemovePodSandbox(api.RemovePodSandboxRequest(pod_sandbox_id=pod_id), timeout=60)
        pod_id = ""
        assert not node.client.runtime.ListPodSandbox(api.ListPodSandboxRequest(), timeout=30).items
        node.reconnect()
        systemctl("stop", UNIT_NAME)
        assert unit_property("ActiveState") == "inactive"
        assert not dirs.socket.exists()
        with pytest.raises(grpc.RpcError):
            node.client.version()
    finally:
        node.reconnect()
        systemctl("stop", UNIT_NAME, check=False)
        systemctl("disable", UNIT_NAME, check=False)
        Path("/etc/systemd/system", UNIT_NAME).unlink(missing_ok=True)
        systemctl("daemon-reload", check=False)
        systemctl("reset-failed", UNIT_NAME, check=False)
        if not etc_existed:
            shutil.rmtree("/etc/crio-fast", ignore_errors=True)
        if pod_id:  # a failed run's pod (its monitor outlived the unit) goes with a daemon of the test's own
            cleaner = Daemon(dirs, "--registries-conf", str(conf), "--cgroup-manager", driver)
            try:
                remove_all_pods(cleaner.start())
                cleaner.stop()
            finally:
                cleaner.kill()
        remove_dirs(dirs)
