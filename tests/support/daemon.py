"""Start a real crio-fast daemon in a private root for a test.

Each daemon gets a fresh directory under /tmp (short, because unix socket
paths are limited to 107 bytes) holding its root, run root, config files and
socket. The process is stopped with SIGTERM (SIGKILL after a timeout) and the
directory removed, whatever the test did.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import grpc

from crio_fast.api import api_pb2_grpc
from crio_fast.client import CRIClient, wait_for_socket
from tests.support import cgroups
from tests.support.timing import SLOWDOWN, StretchedDeadlines, scaled


@dataclass
class DaemonDirs:
    base: Path
    root: Path = field(init=False)
    runroot: Path = field(init=False)
    config: Path = field(init=False)
    config_dir: Path = field(init=False)
    network_dir: Path = field(init=False)
    log_dir: Path = field(init=False)
    socket: Path = field(init=False)

    def __post_init__(self) -> None:
        self.root = self.base / "root"
        self.runroot = self.base / "run"
        self.config = self.base / "crio.conf"
        self.config_dir = self.base / "crio.conf.d"
        self.network_dir = self.base / "net.d"
        self.log_dir = self.base / "logs"
        self.socket = self.runroot / "crio.sock"


def make_dirs(parent: str = "/tmp") -> DaemonDirs:
    """Fresh daemon dirs under ``parent`` (benchmarks also mount a tmpfs on the run root)."""
    dirs = DaemonDirs(Path(tempfile.mkdtemp(prefix="cf-", dir=parent)))
    dirs.config_dir.mkdir()
    dirs.network_dir.mkdir()
    dirs.config.write_text("")
    return dirs


def daemon_argv(dirs: DaemonDirs, *extra: str, program: list[str] | None = None) -> list[str]:
    """The daemon's command line; ``program`` replaces `python -m crio_fast`
    (an installed `crio-fast` script, say). The session's cgroup driver is passed unless
    ``extra`` names one."""
    driver = [] if "--cgroup-manager" in extra else ["--cgroup-manager", cgroups.driver()]
    return [
        *(program or [sys.executable, "-m", "crio_fast"]),
        "--config", str(dirs.config),
        "--config-dir", str(dirs.config_dir),
        "--root", str(dirs.root),
        "--runroot", str(dirs.runroot),
        "--log-dir", str(dirs.log_dir),
        "--listen", str(dirs.socket),
        "--cni-config-dir", str(dirs.network_dir),
        *driver,
        *extra,
    ]


class Daemon:
    """A running daemon process plus a client connected to it."""

    def __init__(
        self, dirs: DaemonDirs, *extra_args: str, program: list[str] | None = None, env: dict[str, str] | None = None
    ) -> None:
        self.dirs = dirs
        self.extra_args = extra_args
        self.program = program
        self.env = env  # None inherits this process's environment
        self.proc: subprocess.Popen | None = None
        self.log_path = dirs.base / "daemon.log"
        self._client: CRIClient | None = None

    def start(self, timeout: float = 20.0) -> "Daemon":
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            daemon_argv(self.dirs, *self.extra_args, program=self.program),
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=self.env,
        )
        log.close()
        try:
            deadline = time.monotonic() + scaled(timeout)
            while not self.dirs.socket.exists():
                if self.proc.poll() is not None:
                    raise RuntimeError(f"daemon exited with {self.proc.returncode}:\n{self.log()}")
                if time.monotonic() > deadline:
                    raise TimeoutError(f"daemon did not create its socket:\n{self.log()}")
                time.sleep(0.02)
            wait_for_socket(str(self.dirs.socket), timeout=max(1.0, deadline - time.monotonic()))
        except BaseException:
            self.kill()
            raise
        return self

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    @property
    def client(self) -> CRIClient:
        if self._client is None:
            self._client = CRIClient(str(self.dirs.socket))
            if SLOWDOWN > 1:
                client = self._client
                client.channel = grpc.intercept_channel(client.channel, StretchedDeadlines())
                client.runtime = api_pb2_grpc.RuntimeServiceStub(client.channel)
                client.image = api_pb2_grpc.ImageServiceStub(client.channel)
        return self._client

    def _close_client(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    def stop(self, timeout: float = 20.0) -> int:
        """SIGTERM and wait; returns the exit code."""
        self._close_client()
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(scaled(timeout))
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                raise
        return self.proc.returncode

    def kill(self) -> None:
        self._close_client()
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def run_cli(dirs: DaemonDirs, *args: str, timeout: float = 30.0) -> subprocess.CompletedProcess:
    """Run `crio-fast` with the test dirs' flags and then ``args``."""
    return subprocess.run(
        daemon_argv(dirs) + list(args), capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL
    )


def remove_dirs(dirs: DaemonDirs) -> None:
    shutil.rmtree(dirs.base, ignore_errors=True)


__all__ = ["Daemon", "DaemonDirs", "make_dirs", "remove_dirs", "run_cli", "daemon_argv"]
