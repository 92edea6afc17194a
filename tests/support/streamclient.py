"""Test clients for the streaming server, speaking what client-go speaks.

SPDY: upgrade with X-Stream-Protocol-Version, open the error stream first,
then stdin/stdout/stderr/resize (each waits for its SYN_REPLY, as client-go's
CreateStream does), copy, read the error stream to its end.
WebSocket: wsproto client with the channel framing.

The SPDY framing reuses crio_fast.streaming.spdy in client mode; the framing
itself is checked byte by byte in tests/unit/test_spdy.py.
"""

from __future__ import annotations

import asyncio
import base64
import json
import ssl
import struct
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from wsproto import ConnectionType, WSConnection
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Ping,
    RejectConnection,
    RejectData,
    Request,
    TextMessage,
)

from crio_fast.streaming.spdy import PrefixedReader, SpdySession, SpdyStream


class UpgradeRefused(Exception):
    def __init__(self, status: int, body: bytes) -> None:
        super().__init__(f"HTTP {status}: {body.decode(errors='replace').strip()}")
        self.status = status
        self.body = body


async def _open(url: str, tls: ssl.SSLContext | None):
    parts = urlsplit(url)
    host = parts.hostname or ""
    port = parts.port or (443 if parts.scheme == "https" else 80)
    if parts.scheme == "https" and tls is None:
        tls = ssl.create_default_context()
        tls.check_hostname = False
        tls.verify_mode = ssl.CERT_NONE
    reader, writer = await asyncio.open_connection(host, port, ssl=tls if parts.scheme == "https" else None)
    return parts, reader, writer


async def _read_response_head(reader: asyncio.StreamReader) -> tuple[int, dict[str, list[str]], bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers: dict[str, list[str]] = {}
    for line in lines[1:]:
        if ":" in line:
            name, value = line.split(":", 1)
            headers.setdefault(name.strip().lower(), []).append(value.strip())
    body = b""
    if status != 101:
        length = int((headers.get("content-length") or ["0"])[0])
        body = await reader.readexactly(length) if length else b""
    return status, headers, body


async def http_request(url: str, method: str = "GET", headers: list[tuple[str, str]] | None = None,
                       tls: ssl.SSLContext | None = None) -> tuple[int, dict[str, list[str]], bytes]:
    """A raw HTTP/1.1 request; the response status, headers and body (the connection is closed)."""
    parts, reader, writer = await _open(url, tls)
    try:
        target = parts.path + (f"?{parts.query}" if parts.query else "")
        lines = [f"{method} {target} HTTP/1.1", f"Host: {parts.netloc}"]
        lines += [f"{name}: {value}" for name, value in headers or []]
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode())
        return await _read_response_head(reader)
    finally:
        writer.close()


@dataclass
class SpdyClient:
    session: SpdySession
    protocol: str
    writer: asyncio.StreamWriter
    _run: asyncio.Task = field(repr=False, default=None)  # type: ignore[assignment]

    async def open_stream(self, headers: dict[str, str], timeout: float = 10.0) -> SpdyStream:
        stream = self.session.open_stream({name: [value] for name, value in headers.items()})
        await stream.wait_reply(timeout)
        return stream

    async def close(self) -> None:
        self.session.abort()
        self._run.cancel()
        await asyncio.gather(self._run, return_exceptions=True)


async def spdy_connect(url: str, protocols: list[str], tls: ssl.SSLContext | None = None) -> SpdyClient:
    parts, reader, writer = await _open(url, tls)
    lines = [f"POST {parts.path} HTTP/1.1", f"Host: {parts.netloc}", "Connection: Upgrade", "Upgrade: SPDY/3.1",
             "Content-Length: 0"]
    lines += [f"X-Stream-Protocol-Version: {protocol}" for protocol in protocols]
    writer.write(("\r\n".join(lines) + "\r\n\r\n").encode())
    status, headers, body = await _read_response_head(reader)
    if status != 101:
        writer.close()
        raise UpgradeRefused(status, body)
    session = SpdySession(PrefixedReader(b"", reader), writer, is_server=False)
    client = SpdyClient(session, (headers.get("x-stream-protocol-version") or [""])[0], writer)
    client._run = asyncio.ensure_future(session.run())
    return client


async def _read_all(stream: SpdyStream) -> bytes:
    chunks = []
    while True:
        data = await stream.reader.read(1 << 20)
        if not data:
            return b"".join(chunks)
        chunks.append(data)


async def exec_over_spdy(
    url: str,
    stdin: bytes | None = None,
    *,
    stdout: bool = True,
    stderr: bool = True,
    tty: bool = False,
    protocol: str = "v4.channel.k8s.io",
    resizes: list[tuple[int, int]] | None = None,
    tls: ssl.SSLContext | None = None,
    timeout: float = 60.0,
) -> tuple[bytes, bytes, bytes]:
    """Exec/attach like client-go: (stdout, stderr, error-stream bytes; the v4 Status JSON or v1-v3 text)."""
    client = await spdy_connect(url, [protocol], tls)
    try:
        return await asyncio.wait_for(
            _exec_streams(client, stdin, stdout, stderr and not tty, tty, resizes), timeout
        )
    finally:
        await client.close()


async def _exec_streams(client, stdin, want_stdout, want_stderr, tty, resizes):
    error = await client.open_stream({"streamType": "error"})
    stdin_stream = await client.open_stream({"streamType": "stdin"}) if stdin is not None else None
    stdout_stream = await client.open_stream({"streamType": "stdout"}) if want_stdout else None
    stderr_stream = await client.open_stream({"streamType": "stderr"}) if want_stderr else None
    resize_stream = None
    if tty and client.protocol in ("v3.channel.k8s.io", "v4.channel.k8s.io"):
        resize_stream = await client.open_stream({"streamType": "resize"})

    async def send_stdin():
        if stdin_stream is not None:
            await stdin_stream.write(stdin)
            await stdin_stream.close()

    async def send_resizes():
        if resize_stream is not None:
            for width, height in resizes or []:
                await resize_stream.write(json.dumps({"Width": width, "Height": height}).encode() + b"\n")

    async def read(stream):
        return await _read_all(stream) if stream is not None else b""

    results = await asyncio.gather(send_stdin(), send_resizes(), read(stdout_stream), read(stderr_stream))
    status = await _read_all(error)
    return results[2], results[3], status


@dataclass
class ForwardedConnection:
    data: SpdyStream
    error: SpdyStream

    async def send(self, payload: bytes, *, close: bool = True) -> None:
        await self.data.write(payload)
        if close:
            await self.data.close()

    async def receive_all(self) -> bytes:
        return await _read_all(self.data)

    async def error_text(self) -> bytes:
        return await _read_all(self.error)


class PortForwardClient:
    """One SPDY port-forward connection; connect() opens one forwarded TCP connection per call."""

    def __init__(self, client: SpdyClient) -> None:
        self.client = client
        self._next_request = 0

    @classmethod
    async def open(cls, url: str, tls: ssl.SSLContext | None = None) -> PortForwardClient:
        return cls(await spdy_connect(url, ["portforward.k8s.io"], tls))

    async def connect(self, port: int) -> ForwardedConnection:
        request_id = str(self._next_request)
        self._next_request += 1
        headers = {"streamType": "error", "port": str(port), "requestID": request_id}
        error = await self.client.open_stream(headers)
        await error.close()  # client-go never writes to the error stream
        data = await self.client.open_stream({**headers, "streamType": "data"})
        return ForwardedConnection(data, error)

    async def close(self) -> None:
        await self.client.close()


# ---------------------------------------------------------------- WebSocket


class WebSocketClient:
    """A channel.k8s.io-style client: send(channel, data), receive() -> (channel, data)."""

    def __init__(self, reader, writer, ws: WSConnection, protocol: str | None) -> None:
        self.reader = reader
        self.writer = writer
        self.ws = ws
        self.protocol = protocol or ""
        self._events: list = []
        self.closed = False
        self._text = ""
        self._binary = b""

    @classmethod
    async def connect(cls, url: str, protocols: list[str], tls: ssl.SSLContext | None = None) -> WebSocketClient:
        parts, reader, writer = await _open(url, tls)
        ws = WSConnection(ConnectionType.CLIENT)
        target = parts.path + (f"?{parts.query}" if parts.query else "")
        writer.write(ws.send(Request(host=parts.netloc, target=target, subprotocols=protocols)))
        await writer.drain()
        while True:
            data = await reader.read(65536)
            ws.receive_data(data or None)
            for event in ws.events():
                if isinstance(event, AcceptConnection):
                    return cls(reader, writer, ws, event.subprotocol)
                if isinstance(event, (RejectConnection, RejectData)):
                    writer.close()
                    raise UpgradeRefused(getattr(event, "status_code", 0), b"")
            if not data:
                raise ConnectionError("connection closed during the WebSocket handshake")

    @property
    def base64(self) -> bool:
        return self.protocol in ("base64.channel.k8s.io", "v4.base64.channel.k8s.io")

    async def send(self, channel: int, data: bytes) -> None:
        if self.base64:
            self.writer.write(self.ws.send(TextMessage(data=chr(48 + channel) + base64.b64encode(data).decode())))
        else:
            self.writer.write(self.ws.send(BytesMessage(data=bytes((channel,)) + data)))
        await self.writer.drain()

    async def close_channel(self, channel: int) -> None:
        """v5 close signal: channel 255 naming the channel we stop writing to."""
        self.writer.write(self.ws.send(BytesMessage(data=bytes((255, channel)))))
        await self.writer.drain()

    async def receive(self) -> tuple[int, bytes] | None:
        """The next message as (channel, data); None once the server closed."""
        while True:
            while self._events:
                event = self._events.pop(0)
                if isinstance(event, BytesMessage):
                    self._binary += bytes(event.data)
                    if event.message_finished:
                        message, self._binary = self._binary, b""
                        return message[0], message[1:]
                elif isinstance(event, TextMessage):
                    self._text += event.data
                    if event.message_finished:
                        message, self._text = self._text, ""
                        return ord(message[0]) - 48, base64.b64decode(message[1:])
                elif isinstance(event, Ping):
                    self.writer.write(self.ws.send(event.response()))
                elif isinstance(event, CloseConnection):
                    try:
                        self.writer.write(self.ws.send(event.response()))
                    except Exception:  # noqa: BLE001 - already closing
                        pass
                    self.closed = True
                    return None
            if self.closed:
                return None
            data = await self.reader.read(1 << 20)
            if not data:
                self.closed = True
                return None
            self.ws.receive_data(data)
            self._events.extend(self.ws.events())

    async def close(self) -> None:
        self.writer.close()


async def exec_over_websocket(
    url: str,
    stdin: bytes | None = None,
    *,
    protocol: str = "v5.channel.k8s.io",
    resizes: list[tuple[int, int]] | None = None,
    tls: ssl.SSLContext | None = None,
    timeout: float = 60.0,
) -> tuple[bytes, bytes, bytes, str]:
    """(stdout, stderr, error channel bytes, negotiated protocol). stdin is closed with the v5 close signal."""
    client = await WebSocketClient.connect(url, [protocol], tls)
    try:
        return await asyncio.wait_for(_ws_exec(client, stdin, resizes), timeout)
    finally:
        await client.close()


async def _ws_exec(client: WebSocketClient, stdin, resizes):
    outputs = {1: bytearray(), 2: bytearray(), 3: bytearray()}

    async def send():
        for width, height in resizes or []:
            await client.send(4, json.dumps({"Width": width, "Height": height}).encode())
        if stdin is not None:
            for start in range(0, len(stdin), 32768):
                await client.send(0, stdin[start : start + 32768])
            if client.protocol == "v5.channel.k8s.io":
                await client.close_channel(0)

    sender = asyncio.ensure_future(send())
    while True:
        message = await client.receive()
        if message is None:
            break
        channel, data = message
        if channel in outputs:
            outputs[channel] += data
    await sender
    return bytes(outputs[1]), bytes(outputs[2]), bytes(outputs[3]), client.protocol


async def port_forward_over_websocket(url: str, port: int, payload: bytes, tls: ssl.SSLContext | None = None,
                                      protocol: str = "v4.channel.k8s.io") -> tuple[bytes, bytes]:
    """One forwarded connection: send payload, collect data until the server closes -> (data, error)."""
    client = await WebSocketClient.connect(f"{url}?port={port}", [protocol], tls)
    try:
        received = {0: bytearray(), 1: bytearray()}
        prefixes = {0: False, 1: False}
        await client.send(0, payload)
        while True:
            message = await client.receive()
            if message is None:
                break
            channel, data = message
            if channel not in received:
                continue
            if not prefixes[channel]:
                assert struct.unpack("<H", data[:2])[0] == port, "first message must carry the port"
                prefixes[channel] = True
                data = data[2:]
            received[channel] += data
        return bytes(received[0]), bytes(received[1])
    finally:
        await client.close()
