"""Sockets inside a pod's network namespace, made by the daemon without a helper process.

A socket belongs to the network namespace of the thread that created it, for
its whole life. So a short-lived thread enters the namespace with setns(2)
(which affects only the calling thread), creates the socket and ends;
everything else runs on the caller's thread or the event loop.
"""

from __future__ import annotations

import ctypes
import os
import socket
import threading

CLONE_NEWNET = 0x40000000

_libc = ctypes.CDLL(None, use_errno=True)


def _setns(fd: int, nstype: int) -> None:
    if _libc.setns(fd, nstype) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"setns: {os.strerror(err)}")


def socket_in_netns(netns_path: str, family: int, kind: int = socket.SOCK_STREAM) -> socket.socket:
    """A new non-blocking socket of ``family`` in the network namespace at ``netns_path``."""
    outcome: list[socket.socket | BaseException] = []

    def create() -> None:
        try:
            target = os.open(netns_path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError as exc:
            outcome.append(exc)
            return
        try:
            _setns(target, CLONE_NEWNET)
            # This thread ends right after; it never goes back to the host
            # namespace, so a failure there cannot leak into other work.
            sock = socket.socket(family, kind)
            sock.setblocking(False)
            outcome.append(sock)
        except BaseException as exc:  # reported to the caller
            outcome.append(exc)
        finally:
            os.close(target)

    worker = threading.Thread(target=create, name="netns-socket", daemon=True)
    worker.start()
    worker.join()
    result = outcome[0]
    if isinstance(result, BaseException):
        raise result
    return result
