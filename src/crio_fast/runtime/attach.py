"""Attach to a running container's stdio through its pod monitor (asyncio).

An ATTACH request on the monitor's control socket (docs/monitor.md, "Attach
streams") turns that connection into an attach stream: the monitor sends
every chunk of the container's output (stdout, stderr; with a tty all is
stdout) and, after the container exited and its output was drained, an exit
packet; the client sends stdin data, "close stdin" and terminal resizes.
Several attachers may be attached at once; each gets all output produced
while it is attached. Closing the stream detaches without touching the
container.

    stream = await AttachStream.open(pod_dir, container_id, stdin=True)
    await stream.write_stdin(b"hello\\n")
    while (item := await stream.read()) is not None:
        kind, data = item  # "stdout" | "stderr" | "exit" (data: the exit code, b"0")
    await stream.close()

Policy (stdin_once, whether a stdin may be attached at all) is the caller's:
the monitor accepts input whenever the container was created with STDIN.
"""

from __future__ import annotations

import asyncio
import errno
import os
import socket
from pathlib import Path

from crio_fast.runtime import wire
from crio_fast.runtime.monitor import SOCKET_NAME, MonitorError, parse_reply

_OUTPUT_KINDS = {wire.ATTACH_STDOUT: "stdout", wire.ATTACH_STDERR: "stderr", wire.ATTACH_EXIT: "exit"}

# stdin is sent in packets of this size; the monitor accepts up to 64 KiB.
STDIN_PACKET_SIZE = 16384
# Larger than any packet the monitor sends (1 + its 16 KiB read buffer).
_RECEIVE_SIZE = 1 + 65536


class AttachStream:
    """One attach stream to one container; not safe for concurrent readers."""

    def __init__(self, sock: socket.socket, container_id: str, has_stdin: bool, tty: bool) -> None:
        self._socket = sock
        self.container_id = container_id
        self.has_stdin = has_stdin  # the container was created with a stdin
        self.tty = tty  # the container has a terminal: all output is "stdout"
        self._exited = False

    @classmethod
    async def open(cls, pod_dir: Path | str, container_id: str, *, stdin: bool,
                   timeout: float = 10.0) -> "AttachStream":
        """Attach; ``stdin``: this attacher will send input. Raises MonitorError (``code`` is an errno
        value: ENOENT no such container, ESRCH the container has exited, ...)."""
        loop = asyncio.get_running_loop()
        path = os.path.join(os.fspath(pod_dir), SOCKET_NAME)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
        sock.setblocking(False)
        try:
            try:
                await asyncio.wait_for(loop.sock_connect(sock, path), timeout)
            except OSError as e:
                raise MonitorError(f"connect to the pod monitor in {pod_dir}: {e.strerror}",
                                   e.errno or errno.EIO) from None
            fields = wire.TLVWriter()
            fields.string(wire.FIELD_CONTAINER_ID, container_id)
            fields.boolean(wire.FIELD_STDIN, stdin)
            await loop.sock_sendall(sock, wire.encode_message(wire.REQUEST_ATTACH, 1, fields))
            try:
                data = await asyncio.wait_for(loop.sock_recv(sock, _RECEIVE_SIZE), timeout)
            except TimeoutError:
                raise MonitorError(f"ATTACH: no reply from the pod monitor within {timeout}s",
                                   errno.ETIMEDOUT) from None
            if not data:
                raise MonitorError("ATTACH: the pod monitor closed the connection", errno.ECONNRESET)
            reply = parse_reply("ATTACH", wire.REQUEST_ATTACH, 1, data)
        except BaseException:
            sock.close()
            raise

        def flag(tag: int) -> bool:
            return wire.decode_bool(reply[tag][0]) if tag in reply else False

        return cls(sock, container_id, has_stdin=flag(wire.FIELD_STDIN), tty=flag(wire.FIELD_TTY))

    async def read(self) -> tuple[str, bytes] | None:
        """The next packet: ("stdout" | "stderr", data), ("exit", b"<exit code>"), or None once the
        monitor has closed the stream (after the exit packet, or when it detached a too slow reader)."""
        if self._socket.fileno() < 0:
            return None
        try:
            data = await asyncio.get_running_loop().sock_recv(self._socket, _RECEIVE_SIZE)
        except ConnectionResetError:
            return None
        if not data:
            return None
        kind = _OUTPUT_KINDS.get(data[0])
        if kind is None:
            raise MonitorError(f"attach stream of {self.container_id}: unknown packet kind {data[0]}", errno.EPROTO)
        if kind == "exit":
            self._exited = True
        return kind, data[1:]

    async def write_stdin(self, data: bytes) -> None:
        """Send input; waits while the container's stdin is full (the monitor then stops reading)."""
        view = memoryview(data)
        for offset in range(0, len(view), STDIN_PACKET_SIZE):
            await self._send(bytes((wire.ATTACH_STDIN,)) + view[offset:offset + STDIN_PACKET_SIZE])

    async def close_stdin(self) -> None:
        """Close the container's stdin (with a tty: its end-of-file character is sent)."""
        await self._send(bytes((wire.ATTACH_CLOSE_STDIN,)))

    async def resize(self, width: int, height: int) -> None:
        """Set the terminal size (columns, rows); ignored without a tty."""
        if not (0 <= width <= 0xFFFF and 0 <= height <= 0xFFFF):
            raise ValueError(f"terminal size {width}x{height} out of range")
        await self._send(bytes((wire.ATTACH_RESIZE,)) + wire.encode_resize(width, height))

    async def _send(self, packet: bytes) -> None:
        # One packet per send (SOCK_SEQPACKET): all of it or, while full, nothing.
        try:
            await asyncio.get_running_loop().sock_sendall(self._socket, packet)
        except (BrokenPipeError, ConnectionResetError) as e:
            raise MonitorError(f"attach stream of {self.container_id} closed by the pod monitor (the container "
                               f"exited, or this client was detached)", e.errno or errno.EPIPE) from None

    async def close(self) -> None:
        """Detach: the container keeps running, its stdin stays open."""
        self._socket.close()

    async def __aenter__(self) -> "AttachStream":
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
