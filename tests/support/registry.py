"""A real registry for tests: Debian's `docker-registry` (distribution 2.8) on 127.0.0.1.

Each server gets a free port, its own storage under a directory the caller
owns, optional htpasswd (bcrypt, made with apache2-utils' `htpasswd -B`)
auth, and deletes enabled. It is stopped with SIGTERM (SIGKILL after a
timeout) by :meth:`RegistryServer.stop`; as a backstop the child also gets
SIGKILL when the process that started it dies (PR_SET_PDEATHSIG) and at
interpreter exit, so a failing or interrupted test run leaks no server.
"""

from __future__ import annotations

import atexit
import errno
import json
import os
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.request
from base64 import b64encode
from pathlib import Path

REGISTRY_BINARY = "docker-registry"
HTPASSWD_BINARY = "htpasswd"
_live_servers: set["RegistryServer"] = set()


def _kill_leftovers() -> None:
    for server in list(_live_servers):
        server.stop(timeout=2.0)


atexit.register(_kill_leftovers)


# The registry gets SIGKILL if the test process dies without cleaning up. util-linux's setpriv sets
# that up rather than a preexec_fn: with one, subprocess forks (no vfork), and the fork handlers of
# the gRPC event engine that a test process runs then abort the child now and then before its exec.
_DIE_WITH_PARENT = ["setpriv", "--pdeathsig", "KILL", "--"]


def free_port() -> int:
    """A port that was free a moment ago (the caller retries if someone takes it first)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def find_binary(name: str, package: str) -> str:
    path = shutil.which(name) or (f"/usr/bin/{name}" if os.access(f"/usr/bin/{name}", os.X_OK) else None)
    if path is None:
        raise RuntimeError(f"{name} not found: install the Debian package {package} (scripts/install-deps --test)")
    return path


def make_htpasswd(path: Path, username: str, password: str) -> None:
    result = subprocess.run(
        [find_binary(HTPASSWD_BINARY, "apache2-utils"), "-Bbn", username, password],
        capture_output=True,
        text=True,
        check=False,
        timeout=30,
    )
    if result.returncode != 0:
        raise RuntimeError(f"htpasswd failed (exit {result.returncode}): {result.stderr.strip()}")
    path.write_text(result.stdout)


class RegistryServer:
    """One docker-registry process. Use as a context manager or call start()/stop()."""

    def __init__(self, base_dir: Path, *, username: str | None = None, password: str | None = None) -> None:
        self.base_dir = Path(base_dir)
        self.storage_dir = self.base_dir / "storage"
        self.config_path = self.base_dir / "config.yml"
        self.log_path = self.base_dir / "registry.log"
        self.htpasswd_path = self.base_dir / "htpasswd"
        self.username = username
        self.password = password
        self.port = 0
        self.process: subprocess.Popen[bytes] | None = None

    # -- addresses --

    @property
    def host(self) -> str:
        """host:port, as it appears in image references."""
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.host}"

    @property
    def auth(self) -> tuple[str, str] | None:
        return (self.username, self.password or "") if self.username else None

    def reference(self, repository: str, tag: str = "latest") -> str:
        return f"{self.host}/{repository}:{tag}"

    # -- lifecycle --

    def __enter__(self) -> "RegistryServer":
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def _write_config(self) -> None:
        lines = [
            "version: 0.1",
            "log:",
            "  level: warn",
            "  accesslog:",  # tests count blob GETs in it
            "    disabled: false",
            "storage:",
            "  filesystem:",
            f"    rootdirectory: {json.dumps(str(self.storage_dir))}",
            "  delete:",
            "    enabled: true",
            "  maintenance:",
            "    uploadpurging:",
            "      enabled: false",
            "http:",
            f"  addr: 127.0.0.1:{self.port}",
        ]
        if self.username:
            make_htpasswd(self.htpasswd_path, self.username, self.password or "")
            lines += [
                "auth:",
                "  htpasswd:",
                "    realm: crio-fast-test",
                f"    path: {json.dumps(str(self.htpasswd_path))}",
            ]
        self.config_path.write_text("\n".join(lines) + "\n")

    def start(self, timeout: float = 20.0) -> None:
        binary = find_binary(REGISTRY_BINARY, "docker-registry")
        self.base_dir.mkdir(parents=True, exist_ok=True)
        self.storage_dir.mkdir(exist_ok=True)
        last_error = ""
        for _ in range(5):  # another process may grab the port between probe and bind
            self.port = free_port()
            self._write_config()
            with open(self.log_path, "ab") as log:
                self.process = subprocess.Popen(
                    [*_DIE_WITH_PARENT, binary, "serve", str(self.config_path)],
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    cwd=self.base_dir,
                )
            _live_servers.add(self)
            try:
                self._wait_ready(timeout)
                return
            except RuntimeError as exc:
                last_error = str(exc)
                self.stop()
                if "address already in use" not in last_error:
                    break
        raise RuntimeError(f"docker-registry did not start: {last_error}")

    def _wait_ready(self, timeout: float) -> None:
        assert self.process is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"exited with status {self.process.returncode}; log:\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(f"{self.url}/v2/", timeout=1.0):
                    return
            except urllib.error.HTTPError as exc:
                if exc.code == 401:  # up, and asking for credentials
                    return
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.05)
        raise RuntimeError(f"not answering on {self.url}/v2/ after {timeout}s; log:\n{self.log_tail()}")

    def stop(self, timeout: float = 10.0) -> None:
        process, self.process = self.process, None
        _live_servers.discard(self)
        if process is None or process.poll() is not None:
            return
        try:
            process.terminate()
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=timeout)
        except OSError as exc:
            if exc.errno != errno.ESRCH:
                raise

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError as exc:
            return f"(no log: {exc.strerror})"

    # -- small direct API helpers for tests --

    def auth_header(self) -> dict[str, str]:
        if not self.username:
            return {}
        token = b64encode(f"{self.username}:{self.password or ''}".encode()).decode()
        return {"Authorization": f"Basic {token}"}

    def delete_manifest(self, repository: str, digest: str) -> None:
        request = urllib.request.Request(
            f"{self.url}/v2/{repository}/manifests/{digest}", method="DELETE", headers=self.auth_header()
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            if response.status != 202:
                raise RuntimeError(f"DELETE manifest {digest}: HTTP {response.status}")


__all__ = ["RegistryServer", "free_port", "make_htpasswd"]
