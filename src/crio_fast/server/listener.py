"""The daemon's unix socket and single-instance lock.

The socket's parent directories are created; a stale socket left by a crashed
daemon is replaced; a socket some live process still answers on is refused,
and so is a path that is not a socket at all (we never delete a user's file).
"""

from __future__ import annotations

import errno
import fcntl
import os
import socket
import stat
from pathlib import Path

SOCKET_MODE = 0o660


class ListenError(Exception):
    pass


def _socket_is_live(path: str) -> bool:
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(1.0)
    try:
        probe.connect(path)
    except (ConnectionRefusedError, FileNotFoundError):
        return False
    except OSError as exc:
        if exc.errno in (errno.ECONNREFUSED, errno.ENOENT):
            return False
        raise
    finally:
        probe.close()
    return True


def prepare_socket_path(path: str) -> None:
    """Make ``path`` free for a new listening socket, or raise ListenError."""
    if not os.path.isabs(path):
        raise ListenError(f"listen socket path {path!r} must be absolute")
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise ListenError(f"{path} exists and is not a socket; refusing to replace it")
    if _socket_is_live(path):
        raise ListenError(f"another server is already listening on {path}")
    os.unlink(path)


def finish_socket(path: str) -> None:
    """Set the socket's permissions once the server has bound it."""
    os.chmod(path, SOCKET_MODE)


def remove_socket(path: str) -> None:
    try:
        if stat.S_ISSOCK(os.lstat(path).st_mode):
            os.unlink(path)
    except FileNotFoundError:
        pass


class InstanceLock:
    """An flock on a file in the run root: one daemon per run root."""

    def __init__(self, runroot: str) -> None:
        self.path = os.path.join(runroot, "crio-fast.lock")
        self._fd = -1

    def acquire(self) -> None:
        Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise ListenError(f"another crio-fast daemon holds {self.path}") from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd

    def release(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
