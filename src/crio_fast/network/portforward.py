"""TCP connections into a pod's network namespace, for PortForward.

A socket belongs to the network namespace of the thread that created it, for
its whole life. So a short-lived thread enters the pod's namespace with
setns(2) (which affects only the calling thread), creates the socket, and
ends; the connect and all traffic then run on the event loop like any other
socket. Nothing runs in the pod and no helper process is spawned.
"""

from __future__ import annotations

import asyncio
import ctypes
import errno
import os
import socket
import threading

CLONE_NEWNET = 0x40000000

_libc = ctypes.CDLL(None, use_errno=True)

# Where a pod's port is reached from inside its namespace: IPv4 loopback, then IPv6.
LOOPBACK_ADDRESSES = (("127.0.0.1", socket.AF_INET), ("::1", socket.AF_INET6))


def _setns(fd: int, nstype: int) -> None:
    if _libc.setns(fd, nstype) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"setns: {os.strerror(err)}")


def socket_in_netns(netns_path: str, family: int) -> socket.socket:
    """A new non-blocking TCP socket of ``family`` in the network namespace at ``netns_path``."""
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
            sock = socket.socket(family, socket.SOCK_STREAM)
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


async def connect_pod_port(netns_path: str | None, port: int, timeout: float = 10.0,
                           ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """Connect to ``port`` on the loopback of the pod's network namespace.

    ``netns_path`` None means the host's namespace (a host-network pod). IPv4
    is tried first, then IPv6, as a server may listen on either. Raises
    ConnectionRefusedError (or another OSError) naming the port.
    """
    if not 0 < port < 65536:
        raise ValueError(f"port {port} is out of range")
    loop = asyncio.get_running_loop()
    failures = []
    for address, family in LOOPBACK_ADDRESSES:
        if netns_path:
            sock = socket_in_netns(netns_path, family)  # a thread start and join: about 0.1 ms
        else:
            sock = socket.socket(family, socket.SOCK_STREAM)
            sock.setblocking(False)
        try:
            await asyncio.wait_for(loop.sock_connect(sock, (address, port)), timeout)
        except (OSError, asyncio.TimeoutError) as exc:
            sock.close()
            reason = os.strerror(exc.errno) if isinstance(exc, OSError) and exc.errno else "timed out"
            failures.append(f"{address}: {reason}")
            continue
        return await asyncio.open_connection(sock=sock)
    raise ConnectionRefusedError(errno.ECONNREFUSED, f"connecting to port {port} in the pod: {'; '.join(failures)}")
