"""exec and attach: the Kubernetes remote command protocols over SPDY and WebSocket.

SPDY (client-go's remotecommand): the client opens one stream per channel,
named by the ``streamType`` header: error, stdin, stdout, stderr, and resize
(v3 and v4, with a tty). Once the streams the cached CRI request calls for are
all there, the backend runs. When it returns, stdout/stderr are finished (FIN),
the status goes on the error stream, and the connection is closed; the client
waits for its output streams to end, then reads the error stream to its end.

Status on the error stream: v4 writes a metav1.Status as JSON (exit codes in
details.causes with reason ExitCode); v1 to v3 write nothing on success and the
plain error message otherwise.

WebSocket (the kubelet's wsstream): channels 0 stdin, 1 stdout, 2 stderr,
3 error, 4 resize; v4/v5 write the JSON status, older protocols plain text.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from crio_fast.streaming.backend import StreamingBackend, TerminalSize
from crio_fast.streaming.spdy import SpdySession, SpdyStream
from crio_fast.streaming.websocket import (
    BASE64_CHANNEL_PROTOCOL,
    CHANNEL_PROTOCOL,
    V4_BASE64_CHANNEL_PROTOCOL,
    V4_CHANNEL_PROTOCOL,
    V5_CHANNEL_PROTOCOL,
    WebSocketChannels,
)

log = logging.getLogger(__name__)

STREAM_PROTOCOL_V1 = "channel.k8s.io"
STREAM_PROTOCOL_V2 = "v2.channel.k8s.io"
STREAM_PROTOCOL_V3 = "v3.channel.k8s.io"
STREAM_PROTOCOL_V4 = "v4.channel.k8s.io"
# The server's preference order; the client's order decides among these (as in apimachinery).
SPDY_PROTOCOLS = [STREAM_PROTOCOL_V4, STREAM_PROTOCOL_V3, STREAM_PROTOCOL_V2, STREAM_PROTOCOL_V1]
# "" is a client that names no subprotocol: plain binary channels, as the kubelet allows.
WEBSOCKET_PROTOCOLS = [
    V5_CHANNEL_PROTOCOL,
    V4_CHANNEL_PROTOCOL,
    V4_BASE64_CHANNEL_PROTOCOL,
    BASE64_CHANNEL_PROTOCOL,
    CHANNEL_PROTOCOL,
    "",
]
_JSON_STATUS_WEBSOCKET = {V5_CHANNEL_PROTOCOL, V4_CHANNEL_PROTOCOL, V4_BASE64_CHANNEL_PROTOCOL}

STREAM_TYPE_HEADER = "streamtype"
STREAM_ERROR = "error"
STREAM_STDIN = "stdin"
STREAM_STDOUT = "stdout"
STREAM_STDERR = "stderr"
STREAM_RESIZE = "resize"

WS_STDIN, WS_STDOUT, WS_STDERR, WS_ERROR, WS_RESIZE = range(5)

# A resize message is a tiny JSON object; anything this long is garbage.
MAX_RESIZE_BUFFER = 64 * 1024


# ---------------------------------------------------------------- status


def success_status() -> dict[str, Any]:
    return {"metadata": {}, "status": "Success"}


def exit_code_status(exit_code: int) -> dict[str, Any]:
    """What the kubelet reports for a command that exited non-zero (client-go turns it into the exit code)."""
    return {
        "metadata": {},
        "status": "Failure",
        "message": f"command terminated with non-zero exit code: command terminated with exit code {exit_code}",
        "reason": "NonZeroExitCode",
        "details": {"causes": [{"reason": "ExitCode", "message": str(exit_code)}]},
    }


def internal_error_status(message: str) -> dict[str, Any]:
    return {
        "metadata": {},
        "status": "Failure",
        "message": f"Internal error occurred: {message}",
        "reason": "InternalError",
        "details": {"causes": [{"message": message}]},
        "code": 500,
    }


def encode_status(status: dict[str, Any], json_status: bool) -> bytes:
    """v4+: the Status JSON. Older protocols: nothing on success, else the message text."""
    if json_status:
        return json.dumps(status, separators=(",", ":")).encode()
    if status.get("status") == "Success":
        return b""
    return str(status.get("message", "")).encode()


def _normalise_exit_code(code: int) -> int:
    # asyncio reports death by signal N as -N; shells report it as 128+N.
    return 128 - code if code < 0 else code


# ---------------------------------------------------------------- session IO


@dataclass(eq=False)
class SessionIO:
    """RemoteCommandIO for one session; write functions are None for channels not requested."""

    tty: bool
    stdin: asyncio.StreamReader | None
    resizes: asyncio.Queue[TerminalSize] | None
    _stdout: Callable[[bytes], Awaitable[None]] | None = None
    _stderr: Callable[[bytes], Awaitable[None]] | None = None

    async def write_stdout(self, data: bytes) -> None:
        if self._stdout is not None and data:
            await self._stdout(data)

    async def write_stderr(self, data: bytes) -> None:
        if self._stderr is not None and data:
            await self._stderr(data)


async def pump_resizes(source: asyncio.StreamReader, queue: asyncio.Queue[TerminalSize]) -> None:
    """Decode a stream of JSON objects {"Width": W, "Height": H} (Go field names, any case)."""
    decoder = json.JSONDecoder()
    buffer = ""
    while True:
        chunk = await source.read(4096)
        if not chunk:
            return
        buffer += chunk.decode("utf-8", "replace")
        while True:
            buffer = buffer.lstrip()
            if not buffer:
                break
            try:
                value, end = decoder.raw_decode(buffer)
            except json.JSONDecodeError:
                if len(buffer) > MAX_RESIZE_BUFFER:
                    log.info("resize stream: dropping %d undecodable bytes", len(buffer))
                    buffer = ""
                break
            buffer = buffer[end:]
            if isinstance(value, dict):
                fields = {str(key).lower(): item for key, item in value.items()}
                width, height = fields.get("width"), fields.get("height")
                if isinstance(width, int) and isinstance(height, int) and 0 <= width < 65536 and 0 <= height < 65536:
                    queue.put_nowait(TerminalSize(width=width, height=height))


async def run_backend(
    kind: str, request: Any, backend: StreamingBackend, io: SessionIO, client_gone: asyncio.Event
) -> dict[str, Any] | None:
    """Run exec/attach; the status to report, or None when the client went away first (backend cancelled)."""
    if kind == "exec":
        call = backend.exec(request, io)
    else:
        call = backend.attach(request, io)
    task = asyncio.ensure_future(call)
    gone = asyncio.ensure_future(client_gone.wait())
    try:
        await asyncio.wait({task, gone}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        gone.cancel()
        if not task.done():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
    if task.cancelled():
        return None
    error = task.exception()
    if error is not None:
        if isinstance(error, ConnectionError) and client_gone.is_set():
            return None
        what = "error executing command in container" if kind == "exec" else "error attaching to container"
        log.info("%s: %s", what, error)
        return internal_error_status(f"{what}: {error}")
    if kind == "exec":
        result = task.result()
        if not isinstance(result, int):
            return internal_error_status(f"error executing command in container: no exit code (got {result!r})")
        code = _normalise_exit_code(result)
        return success_status() if code == 0 else exit_code_status(code)
    return success_status()


def _wants(request: Any) -> tuple[bool, bool, bool, bool]:
    """(stdin, stdout, stderr, tty) from the cached CRI request; no stderr with a tty, as the kubelet does."""
    tty = bool(request.tty)
    return bool(request.stdin), bool(request.stdout), bool(request.stderr) and not tty, tty


# ---------------------------------------------------------------- SPDY


class RemoteCommandOverSpdy:
    """Collects the client's streams for one SPDY exec/attach connection and runs the session."""

    def __init__(
        self,
        session_factory: Callable[[Callable[[SpdyStream], None]], SpdySession],
        protocol: str,
        kind: str,
        request: Any,
        backend: StreamingBackend,
        stream_creation_timeout: float,
    ) -> None:
        self.protocol = protocol
        self.kind = kind
        self.request = request
        self.backend = backend
        self.stream_creation_timeout = stream_creation_timeout
        self.streams: dict[str, SpdyStream] = {}
        self._all_streams: list[SpdyStream] = []
        self._complete = asyncio.Event()
        stdin, stdout, stderr, tty = _wants(request)
        self._expected = {STREAM_ERROR}
        if stdin:
            self._expected.add(STREAM_STDIN)
        if stdout:
            self._expected.add(STREAM_STDOUT)
        if stderr:
            self._expected.add(STREAM_STDERR)
        if tty and protocol in (STREAM_PROTOCOL_V3, STREAM_PROTOCOL_V4):
            self._expected.add(STREAM_RESIZE)
        self.session = session_factory(self._on_stream)

    def _on_stream(self, stream: SpdyStream) -> None:
        stream_type = (stream.header(STREAM_TYPE_HEADER) or "").lower()
        # Accept every stream (the client waits for each reply before opening the next) and sort
        # out the unexpected ones afterwards, like the kubelet.
        stream.reply()
        self._all_streams.append(stream)
        if stream_type not in self._expected or stream_type in self.streams:
            log.info("remotecommand: unexpected stream type %r", stream_type)
            stream.discard_input()
            return
        self.streams[stream_type] = stream
        if len(self.streams) == len(self._expected):
            self._complete.set()

    async def serve(self) -> None:
        reader_task = asyncio.ensure_future(self.session.run())
        try:
            waiter = asyncio.ensure_future(self._complete.wait())
            await asyncio.wait({waiter, reader_task}, timeout=self.stream_creation_timeout,
                               return_when=asyncio.FIRST_COMPLETED)
            waiter.cancel()
            if self.session.closed:
                return
            if not self._complete.is_set():
                await self._fail("timed out waiting for client to create streams")
                return
            await self._run()
        finally:
            self.session.abort()
            reader_task.cancel()
            await asyncio.gather(reader_task, return_exceptions=True)

    async def _fail(self, message: str) -> None:
        error = self.streams.get(STREAM_ERROR)
        if error is not None:
            try:
                await error.write(encode_status(internal_error_status(message),
                                                self.protocol == STREAM_PROTOCOL_V4))
                await error.close()
            except ConnectionError:
                pass
        await self.session.close()

    async def _run(self) -> None:
        stdin, stdout, stderr, tty = _wants(self.request)
        resizes: asyncio.Queue[TerminalSize] | None = asyncio.Queue() if tty else None
        resize_task = None
        resize_stream = self.streams.get(STREAM_RESIZE)
        if resize_stream is not None and resizes is not None:
            resize_task = asyncio.ensure_future(pump_resizes(resize_stream.reader, resizes))
        stdout_stream = self.streams.get(STREAM_STDOUT)
        stderr_stream = self.streams.get(STREAM_STDERR)
        stdin_stream = self.streams.get(STREAM_STDIN)
        # The client never writes on these; if it does anyway, drop it rather than stall the connection.
        for stream in (self.streams[STREAM_ERROR], stdout_stream, stderr_stream):
            if stream is not None:
                stream.discard_input()
        io = SessionIO(
            tty=tty,
            stdin=stdin_stream.reader if stdin_stream is not None else None,
            resizes=resizes,
            _stdout=stdout_stream.write if stdout_stream is not None else None,
            _stderr=stderr_stream.write if stderr_stream is not None else None,
        )
        try:
            status = await run_backend(self.kind, self.request, self.backend, io, self.session.done)
        finally:
            if resize_task is not None:
                resize_task.cancel()
        if status is None or self.session.closed:
            return
        try:
            for stream in (stdout_stream, stderr_stream):
                if stream is not None:
                    await stream.close()
            error = self.streams[STREAM_ERROR]
            payload = encode_status(status, self.protocol == STREAM_PROTOCOL_V4)
            if payload:
                await error.write(payload)
            await error.close()
            # The v2+ client waits for the server to close stdin too; drop whatever stdin is still in flight.
            for stream in self._all_streams:
                stream.discard_input()
                await stream.close()
        except ConnectionError:
            return
        await self.session.close()


# ---------------------------------------------------------------- WebSocket


async def serve_remote_command_websocket(
    channels: WebSocketChannels, kind: str, request: Any, backend: StreamingBackend
) -> None:
    """One exec/attach session over the channel WebSocket protocols."""
    stdin, stdout, stderr, tty = _wants(request)
    reader_task = asyncio.ensure_future(channels.run())
    resize_task = None
    try:
        # Tell the client the session is set up: an empty message on the lowest writable channel.
        first = WS_STDOUT if stdout else WS_STDERR if stderr else WS_ERROR
        await channels.write(first, b"")
        resizes: asyncio.Queue[TerminalSize] | None = asyncio.Queue() if tty else None
        if resizes is not None:
            resize_task = asyncio.ensure_future(pump_resizes(channels.readers[WS_RESIZE], resizes))
        else:
            channels.discard_input(WS_RESIZE)
        if not stdin:
            channels.discard_input(WS_STDIN)

        def writer(channel: int) -> Callable[[bytes], Awaitable[None]]:
            async def write(data: bytes) -> None:
                await channels.write(channel, data)

            return write

        io = SessionIO(
            tty=tty,
            stdin=channels.readers[WS_STDIN] if stdin else None,
            resizes=resizes,
            _stdout=writer(WS_STDOUT) if stdout else None,
            _stderr=writer(WS_STDERR) if stderr else None,
        )
        status = await run_backend(kind, request, backend, io, channels.done)
        if status is None or channels.closed:
            return
        payload = encode_status(status, channels.protocol in _JSON_STATUS_WEBSOCKET)
        if payload:
            await channels.write(WS_ERROR, payload)
        channels.discard_input(WS_STDIN)
        await channels.close()
    except ConnectionError:
        return
    finally:
        if resize_task is not None:
            resize_task.cancel()
        channels.abort()
        reader_task.cancel()
        await asyncio.gather(reader_task, return_exceptions=True)
