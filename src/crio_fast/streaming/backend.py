"""What the streaming server needs from the rest of the engine.

The server speaks the wire protocols (SPDY/3.1, WebSocket) and hands each
session to a backend that runs the command, attaches to the container or
connects to the pod's port. When the client goes away the server cancels the
backend coroutine (asyncio cancellation), so backends must clean up in
``finally`` blocks / on CancelledError.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Protocol

from crio_fast.api import api_pb2


@dataclass(frozen=True)
class TerminalSize:
    width: int
    height: int


class RemoteCommandIO(Protocol):
    """The client's side of one exec/attach session, built by the server."""

    tty: bool
    # None if the client sends no stdin; EOF when the client closes stdin.
    stdin: asyncio.StreamReader | None
    # None without a tty; otherwise every resize the client sends, in order.
    resizes: asyncio.Queue[TerminalSize] | None

    async def write_stdout(self, data: bytes) -> None:
        """Send to the client's stdout; waits while the client is slow; no-op if stdout was not requested."""

    async def write_stderr(self, data: bytes) -> None:
        """Send to the client's stderr (never requested with a tty); no-op if not requested."""


class StreamingBackend(Protocol):
    async def exec(self, request: api_pb2.ExecRequest, io: RemoteCommandIO) -> int:
        """Run request.cmd in the container; return its exit code.

        Raise crio_fast.errors.CrioError (or any Exception) for failures; the
        message is reported to the client on the error stream.
        """

    async def attach(self, request: api_pb2.AttachRequest, io: RemoteCommandIO) -> None:
        """Connect io to the container's stdio; return when the container exits."""

    async def port_forward(
        self, pod_sandbox_id: str, port: int
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        """A TCP connection to `port` in the pod's network namespace; raise for errors."""
