"""The Kubernetes "channel" WebSocket framing, on top of wsproto.

Every message carries one channel: binary protocols prefix the payload with
the channel number as a byte; the base64 protocols send text messages whose
first character is the channel as an ASCII digit and whose rest is base64.
v5.channel.k8s.io adds a close signal: channel 255 with one byte naming the
channel the sender will not write to again (a half close, e.g. of stdin).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import logging
from collections.abc import Callable

from wsproto.connection import Connection, ConnectionState, ConnectionType
from wsproto.events import BytesMessage, CloseConnection, Ping, TextMessage
from wsproto.utilities import ProtocolError as WsProtocolError

from crio_fast.streaming.spdy import MAX_SEND_DATA, STREAM_BUFFER_LIMIT, _ReaderFlow

log = logging.getLogger(__name__)

CLOSE_SIGNAL_CHANNEL = 255
# Text (base64) messages are only decodable whole; refuse to buffer more than this.
MAX_TEXT_MESSAGE = 4 * 1024 * 1024
READ_CHUNK = 256 * 1024

CHANNEL_PROTOCOL = "channel.k8s.io"
BASE64_CHANNEL_PROTOCOL = "base64.channel.k8s.io"
V4_CHANNEL_PROTOCOL = "v4.channel.k8s.io"
V4_BASE64_CHANNEL_PROTOCOL = "v4.base64.channel.k8s.io"
V5_CHANNEL_PROTOCOL = "v5.channel.k8s.io"


def is_base64_protocol(protocol: str) -> bool:
    return protocol in (BASE64_CHANNEL_PROTOCOL, V4_BASE64_CHANNEL_PROTOCOL)


class WebSocketChannels:
    """A server-side WebSocket connection demultiplexed into numbered channels.

    readable: channel numbers the client may write; each gets an
    asyncio.StreamReader in `readers` (data for other channels is dropped, as
    the kubelet does).
    """

    def __init__(
        self,
        reader,
        writer: asyncio.StreamWriter,
        *,
        protocol: str,
        readable: list[int],
        trailing_data: bytes = b"",
        on_activity: Callable[[], None] | None = None,
    ) -> None:
        self._reader = reader
        self._writer = writer
        self.protocol = protocol
        self._base64 = is_base64_protocol(protocol)
        self._close_signals = protocol == V5_CHANNEL_PROTOCOL
        self._ws = Connection(ConnectionType.SERVER, trailing_data=trailing_data)
        self._on_activity = on_activity or (lambda: None)
        self.readers: dict[int, asyncio.StreamReader] = {}
        self._flows: dict[int, _ReaderFlow] = {}
        for channel in readable:
            stream_reader = asyncio.StreamReader(limit=STREAM_BUFFER_LIMIT // 2)
            flow = _ReaderFlow()
            stream_reader.set_transport(flow)  # type: ignore[arg-type]  # only pause/resume are used
            self.readers[channel] = stream_reader
            self._flows[channel] = flow
        self._discarding: set[int] = set()
        self._ended: set[int] = set()  # channels whose reader got EOF
        self._partial_channel: int | None = None
        self._text_buffer: list[str] = []
        self._text_size = 0
        self.closed = False
        self.done = asyncio.Event()
        self._pending_trailing = bool(trailing_data)

    # -- sending

    def _encode(self, channel: int, data: bytes | memoryview) -> bytes | str:
        if self._base64:
            return chr(ord("0") + channel) + base64.b64encode(data).decode("ascii")
        return bytes((channel,)) + bytes(data)

    async def write(self, channel: int, data: bytes | bytearray | memoryview) -> None:
        """Send data on a channel (empty data sends one empty message), waiting for the socket to drain."""
        view = memoryview(data)
        start = 0
        while True:
            chunk = view[start : start + MAX_SEND_DATA]
            self._send_message(self._encode(channel, chunk))
            await self._drain()
            start += MAX_SEND_DATA
            if start >= len(view):
                return

    def _send_message(self, payload: bytes | str) -> None:
        if self.closed or self._writer.is_closing() or self._ws.state is not ConnectionState.OPEN:
            raise ConnectionResetError("the WebSocket connection is closed")
        event = TextMessage(data=payload) if isinstance(payload, str) else BytesMessage(data=payload)
        self._writer.write(self._ws.send(event))
        self._on_activity()

    async def _drain(self) -> None:
        try:
            await self._writer.drain()
        except (ConnectionError, RuntimeError) as exc:
            self._mark_closed()
            raise ConnectionResetError(f"the WebSocket connection is gone: {exc}") from None

    def discard_input(self, channel: int) -> None:
        self._discarding.add(channel)
        flow = self._flows.get(channel)
        if flow is not None:
            flow.resume_reading()

    async def close(self, code: int = 1000, reason: str = "", *, linger: float = 2.0) -> None:
        """Send a close frame and wait (up to linger) for the client's answer."""
        if self.closed:
            return
        try:
            if self._ws.state is ConnectionState.OPEN:
                self._writer.write(self._ws.send(CloseConnection(code=code, reason=reason)))
                await asyncio.wait_for(self._writer.drain(), linger)
            await asyncio.wait_for(self.done.wait(), linger)
        except (ConnectionError, RuntimeError, asyncio.TimeoutError, WsProtocolError):
            pass
        finally:
            self._mark_closed()

    def abort(self) -> None:
        self._mark_closed()

    def _mark_closed(self) -> None:
        if self.closed:
            return
        self.closed = True
        for channel in self.readers:
            self._end_channel(channel)
            self._flows[channel].resume_reading()
        self._writer.close()
        self.done.set()

    def _end_channel(self, channel: int) -> None:
        if channel in self.readers and channel not in self._ended:
            self._ended.add(channel)
            self.readers[channel].feed_eof()

    # -- receiving

    async def run(self) -> None:
        """Read until the client closes; protocol errors close with 1002."""
        try:
            if self._pending_trailing:
                self._pending_trailing = False
                await self._handle_events()
            while not self.closed:
                data = await self._reader.read(READ_CHUNK)
                if not data:
                    self._ws.receive_data(None)
                    await self._handle_events()
                    return
                self._on_activity()
                self._ws.receive_data(data)
                if await self._handle_events():
                    return
        except WsProtocolError as exc:
            log.info("websocket: closing connection after protocol error: %s", exc)
            try:
                if self._ws.state is ConnectionState.OPEN:
                    self._writer.write(self._ws.send(CloseConnection(code=1002, reason="protocol error")))
                    await asyncio.wait_for(self._writer.drain(), 1.0)
            except (ConnectionError, RuntimeError, asyncio.TimeoutError, WsProtocolError):
                pass
        except (ConnectionError, OSError) as exc:
            log.debug("websocket: connection error: %s", exc)
        finally:
            self._mark_closed()

    async def _handle_events(self) -> bool:
        """Process buffered events; True once the connection is closing."""
        for event in self._ws.events():
            if isinstance(event, BytesMessage):
                await self._binary_fragment(bytes(event.data), event.message_finished)
            elif isinstance(event, TextMessage):
                await self._text_fragment(event.data, event.message_finished)
            elif isinstance(event, Ping):
                self._writer.write(self._ws.send(event.response()))
            elif isinstance(event, CloseConnection):
                if self._ws.state is ConnectionState.REMOTE_CLOSING:
                    self._writer.write(self._ws.send(event.response()))
                return True
        return False

    async def _binary_fragment(self, data: bytes, finished: bool) -> None:
        if self._partial_channel is None:
            if not data:
                return
            channel, data = data[0], data[1:]
        else:
            channel = self._partial_channel
        self._partial_channel = None if finished else channel
        await self._deliver(channel, data, finished)

    async def _text_fragment(self, text: str, finished: bool) -> None:
        self._text_size += len(text)
        if self._text_size > MAX_TEXT_MESSAGE:
            raise WsProtocolError(f"text message larger than {MAX_TEXT_MESSAGE} bytes")
        self._text_buffer.append(text)
        if not finished:
            return
        message = "".join(self._text_buffer)
        self._text_buffer.clear()
        self._text_size = 0
        if not message:
            return
        channel = ord(message[0]) - ord("0")
        if not self._base64:
            # The binary protocols carry no text; the kubelet ignores such messages too.
            return
        try:
            data = base64.b64decode(message[1:], validate=True)
        except (binascii.Error, ValueError):
            raise WsProtocolError("text message is not valid base64") from None
        await self._deliver(channel, data, True)

    async def _deliver(self, channel: int, data: bytes, finished: bool) -> None:
        if channel == CLOSE_SIGNAL_CHANNEL and self._close_signals:
            if data:
                self._end_channel(data[0])
            return
        stream_reader = self.readers.get(channel)
        if stream_reader is None or channel in self._discarding or channel in self._ended or not data:
            return
        stream_reader.feed_data(data)
        flow = self._flows[channel]
        if not flow.resumed.is_set():
            await flow.resumed.wait()
