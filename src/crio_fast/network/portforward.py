"""TCP connections into a pod's network namespace, for PortForward.

The socket is created inside the namespace (``netns.socket_in_netns``); the
connect and all traffic then run on the event loop like any other socket.
Nothing runs in the pod and no helper process is spawned.
"""

from __future__ import annotations

import asyncio
import errno
import os
import socket

from crio_fast.network.netns import socket_in_netns

# Where a pod's port is reached from inside its namespace: IPv4 loopback, then IPv6.
LOOPBACK_ADDRESSES = (("127.0.0.1", socket.AF_INET), ("::1", socket.AF_INET6))


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
