"""SPDY/3.1 framing and sessions over asyncio streams.

Only what the Kubernetes streaming protocols need: a connection carries many
bidirectional streams opened with SYN_STREAM, answered with SYN_REPLY, ended by
a DATA frame with FLAG_FIN (half close) or RST_STREAM. Header blocks are zlib
compressed with the dictionary from the SPDY/3 specification; each direction of
a connection keeps one compression context for its whole life, so every header
block must be compressed and sent in order (we never await between the two).

Flow control is deliberately not implemented: the Go peer (moby/spdystream)
never sends WINDOW_UPDATE, so a sender honouring windows would stall after
64 KiB. We accept and ignore WINDOW_UPDATE and SETTINGS, as spdystream does.
Back-pressure instead comes from TCP: when a stream's reader falls behind, the
session stops reading the socket until it catches up.

Any protocol violation from the peer ends the connection with GOAWAY; nothing
the peer sends raises out of the session.
"""

from __future__ import annotations

import asyncio
import logging
import struct
import zlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

log = logging.getLogger(__name__)

VERSION = 3

# Frame types.
SYN_STREAM = 1
SYN_REPLY = 2
RST_STREAM = 3
SETTINGS = 4
PING = 6
GOAWAY = 7
HEADERS = 8
WINDOW_UPDATE = 9

FLAG_FIN = 0x01
FLAG_UNIDIRECTIONAL = 0x02

# RST_STREAM status codes.
RST_PROTOCOL_ERROR = 1
RST_INVALID_STREAM = 2
RST_REFUSED_STREAM = 3
RST_CANCEL = 5
RST_INTERNAL_ERROR = 6
RST_STREAM_IN_USE = 8
RST_STREAM_ALREADY_CLOSED = 9

# GOAWAY status codes.
GOAWAY_OK = 0
GOAWAY_PROTOCOL_ERROR = 1
GOAWAY_INTERNAL_ERROR = 2

# Largest DATA payload we send: big enough that a 50 MB copy is a few thousand
# frames, small enough that streams sharing a connection interleave fairly.
MAX_SEND_DATA = 32 * 1024
# Largest frame we accept. The protocol allows 16 MiB; the streaming clients
# send at most 32 KiB of data per frame and tiny control frames.
MAX_RECEIVE_FRAME = 1024 * 1024
# A decompressed header block larger than this is an attack, not a request.
MAX_HEADER_BLOCK = 256 * 1024
MAX_HEADER_PAIRS = 256
# A stream whose reader holds this much unread data pauses the socket reads.
STREAM_BUFFER_LIMIT = 512 * 1024


def _build_header_dictionary() -> bytes:
    """The zlib dictionary of SPDY/3 section 2.6.10.1: length-prefixed words, then a literal tail."""
    words = (
        "options head post put delete trace accept accept-charset accept-encoding accept-language"
        " accept-ranges age allow authorization cache-control connection content-base content-encoding"
        " content-language content-length content-location content-md5 content-range content-type date"
        " etag expect expires from host if-match if-modified-since if-none-match if-range"
        " if-unmodified-since last-modified location max-forwards pragma proxy-authenticate"
        " proxy-authorization range referer retry-after server te trailer transfer-encoding upgrade"
        " user-agent vary via warning www-authenticate method get status"
    ).split() + ["200 OK", "version", "HTTP/1.1", "url", "public", "set-cookie", "keep-alive", "origin"]
    tail = (
        "100101201202205206300302303304305306307402405406407408409410411412413414415416417502504505"
        "203 Non-Authoritative Information204 No Content301 Moved Permanently400 Bad Request"
        "401 Unauthorized403 Forbidden404 Not Found500 Internal Server Error501 Not Implemented"
        "503 Service UnavailableJan Feb Mar Apr May Jun Jul Aug Sept Oct Nov Dec 00:00:00"
        " Mon, Tue, Wed, Thu, Fri, Sat, Sun, GMTchunked,text/html,image/png,image/jpg,image/gif,"
        "application/xml,application/xhtml+xml,text/plain,text/javascript,publicprivatemax-age="
        "gzip,deflate,sdchcharset=utf-8charset=iso-8859-1,utf-,*,enq=0."
    )
    out = bytearray()
    for word in words:
        out += struct.pack(">I", len(word)) + word.encode("ascii")
    out += tail.encode("ascii")
    return bytes(out)


HEADER_DICTIONARY = _build_header_dictionary()

Headers = dict[str, list[str]]


class ProtocolError(Exception):
    """The peer broke the SPDY protocol; the connection must end."""


class StreamClosed(ConnectionError):
    """Writing to a stream that was reset, finished, or whose connection ended."""


class HeaderCompressor:
    """One direction's header compression context (a connection keeps it for life)."""

    def __init__(self) -> None:
        self._zlib = zlib.compressobj(9, zlib.DEFLATED, 15, 9, zlib.Z_DEFAULT_STRATEGY, HEADER_DICTIONARY)

    def compress(self, headers: Headers) -> bytes:
        return self._zlib.compress(encode_header_block(headers)) + self._zlib.flush(zlib.Z_SYNC_FLUSH)


class HeaderDecompressor:
    def __init__(self) -> None:
        self._zlib = zlib.decompressobj(15, HEADER_DICTIONARY)

    def decompress(self, data: bytes) -> Headers:
        try:
            block = self._zlib.decompress(data, MAX_HEADER_BLOCK + 1)
        except zlib.error as exc:
            raise ProtocolError(f"header block does not decompress: {exc}") from None
        if len(block) > MAX_HEADER_BLOCK or self._zlib.unconsumed_tail:
            raise ProtocolError(f"header block larger than {MAX_HEADER_BLOCK} bytes")
        return decode_header_block(block)


def encode_header_block(headers: Headers) -> bytes:
    """Name/value pairs; names are lower case, several values join with NUL."""
    parts = [struct.pack(">I", len(headers))]
    for name, values in headers.items():
        name_bytes = name.lower().encode("utf-8")
        value_bytes = "\0".join(values).encode("utf-8")
        parts.append(struct.pack(">I", len(name_bytes)))
        parts.append(name_bytes)
        parts.append(struct.pack(">I", len(value_bytes)))
        parts.append(value_bytes)
    return b"".join(parts)


def decode_header_block(block: bytes) -> Headers:
    view = memoryview(block)
    position = 0

    def take(count: int) -> bytes:
        nonlocal position
        if position + count > len(view):
            raise ProtocolError("truncated header block")
        chunk = view[position : position + count].tobytes()
        position += count
        return chunk

    (pair_count,) = struct.unpack(">I", take(4))
    if pair_count > MAX_HEADER_PAIRS:
        raise ProtocolError(f"header block with {pair_count} pairs (limit {MAX_HEADER_PAIRS})")
    headers: Headers = {}
    for _ in range(pair_count):
        (name_length,) = struct.unpack(">I", take(4))
        if name_length == 0:
            raise ProtocolError("empty header name")
        name = take(name_length).decode("utf-8", "replace").lower()
        (value_length,) = struct.unpack(">I", take(4))
        value = take(value_length).decode("utf-8", "replace")
        if name in headers:
            raise ProtocolError(f"duplicate header {name!r}")
        headers[name] = value.split("\0")
    if position != len(view):
        raise ProtocolError("trailing bytes after header block")
    return headers


def header_value(headers: Headers, name: str) -> str | None:
    values = headers.get(name.lower())
    return values[0] if values else None


# ---------------------------------------------------------------- serialising


def control_frame(frame_type: int, flags: int, payload: bytes) -> bytes:
    if len(payload) >= 1 << 24:
        raise ValueError("control frame payload too large")
    return struct.pack(">HHI", 0x8000 | VERSION, frame_type, (flags << 24) | len(payload)) + payload


def data_frame(stream_id: int, flags: int, data: bytes | memoryview) -> bytes:
    return struct.pack(">II", stream_id & 0x7FFFFFFF, (flags << 24) | len(data)) + data


def syn_stream_frame(compressor: HeaderCompressor, stream_id: int, headers: Headers, flags: int = 0) -> bytes:
    # Associated stream 0, priority 0, slot 0.
    payload = struct.pack(">IIH", stream_id, 0, 0) + compressor.compress(headers)
    return control_frame(SYN_STREAM, flags, payload)


def syn_reply_frame(compressor: HeaderCompressor, stream_id: int, headers: Headers, flags: int = 0) -> bytes:
    return control_frame(SYN_REPLY, flags, struct.pack(">I", stream_id) + compressor.compress(headers))


def rst_stream_frame(stream_id: int, status: int) -> bytes:
    return control_frame(RST_STREAM, 0, struct.pack(">II", stream_id, status))


def ping_frame(ping_id: int) -> bytes:
    return control_frame(PING, 0, struct.pack(">I", ping_id))


def goaway_frame(last_good_stream_id: int, status: int) -> bytes:
    return control_frame(GOAWAY, 0, struct.pack(">II", last_good_stream_id, status))


def settings_frame(entries: list[tuple[int, int, int]]) -> bytes:
    """entries: (flags, id, value)."""
    payload = struct.pack(">I", len(entries)) + b"".join(
        struct.pack(">II", (flags << 24) | setting_id, value) for flags, setting_id, value in entries
    )
    return control_frame(SETTINGS, 0, payload)


def window_update_frame(stream_id: int, delta: int) -> bytes:
    return control_frame(WINDOW_UPDATE, 0, struct.pack(">II", stream_id, delta))


# ---------------------------------------------------------------- sessions


class _ReaderFlow:
    """Lets asyncio.StreamReader's own buffer limit pause the session's socket reads.

    StreamReader calls pause_reading() when its buffer passes twice its limit and
    resume_reading() once the consumer drained it below the limit.
    """

    def __init__(self) -> None:
        self.resumed = asyncio.Event()
        self.resumed.set()

    def pause_reading(self) -> None:
        self.resumed.clear()

    def resume_reading(self) -> None:
        self.resumed.set()


@dataclass(eq=False)
class SpdyStream:
    session: SpdySession
    stream_id: int
    headers: Headers
    reader: asyncio.StreamReader
    reply_headers: Headers | None = None
    local_closed: bool = False
    remote_closed: bool = False
    reset: bool = False
    _flow: _ReaderFlow = field(default_factory=_ReaderFlow)
    _replied: asyncio.Event = field(default_factory=asyncio.Event)
    _discarding: bool = False

    def header(self, name: str) -> str | None:
        return header_value(self.headers, name)

    def reply(self, headers: Headers | None = None) -> None:
        """Accept a stream the peer opened (SYN_REPLY)."""
        self.session._send(syn_reply_frame(self.session._compressor, self.stream_id, headers or {}))

    async def wait_reply(self, timeout: float) -> Headers:
        """For streams we opened: wait for the peer's SYN_REPLY."""
        await asyncio.wait_for(self._replied.wait(), timeout)
        if self.reset or self.reply_headers is None:
            raise StreamClosed(f"stream {self.stream_id} was refused")
        return self.reply_headers

    async def write(self, data: bytes | bytearray | memoryview) -> None:
        """Send data in DATA frames, waiting for the socket to drain (back-pressure)."""
        view = memoryview(data)
        for start in range(0, len(view), MAX_SEND_DATA):
            self._check_writable()
            self.session._send(data_frame(self.stream_id, 0, view[start : start + MAX_SEND_DATA]))
            await self.session._drain()

    async def close(self) -> None:
        """Half close: a DATA frame with FIN. Idempotent; no-op on a reset stream."""
        if self.local_closed or self.reset or self.session.closed:
            self.local_closed = True
            return
        self.local_closed = True
        self.session._send(data_frame(self.stream_id, FLAG_FIN, b""))
        self.session._stream_maybe_done(self)
        await self.session._drain()

    def send_reset(self, status: int = RST_CANCEL) -> None:
        if self.reset or self.session.closed:
            return
        self.session._send(rst_stream_frame(self.stream_id, status))
        self.session._on_reset(self)

    def discard_input(self) -> None:
        """Nobody will read this stream any more: drop its data instead of pausing the connection."""
        self._discarding = True
        self._flow.resume_reading()

    def _check_writable(self) -> None:
        if self.reset:
            raise StreamClosed(f"stream {self.stream_id} was reset by the peer")
        if self.local_closed:
            raise StreamClosed(f"stream {self.stream_id} is closed for writing")
        if self.session.closed:
            raise StreamClosed("the connection is closed")


class SpdySession:
    """One SPDY/3.1 connection (server or client side).

    on_stream(stream) is called (synchronously, from the read loop) for every
    stream the peer opens; the owner replies to or resets it.
    """

    def __init__(
        self,
        reader,
        writer: asyncio.StreamWriter,
        *,
        is_server: bool,
        on_stream: Callable[[SpdyStream], None] | None = None,
        on_activity: Callable[[], None] | None = None,
    ) -> None:
        self._reader = reader
        self._writer = writer
        self.is_server = is_server
        self._on_stream = on_stream
        self._on_activity = on_activity or (lambda: None)
        self._compressor = HeaderCompressor()
        self._decompressor = HeaderDecompressor()
        self.streams: dict[int, SpdyStream] = {}
        self._last_peer_stream_id = 0
        self._next_stream_id = 2 if is_server else 1
        self.closed = False
        self.goaway_received = False
        self.done = asyncio.Event()
        self.error: str | None = None

    # -- sending

    def _send(self, frame: bytes) -> None:
        if self.closed or self._writer.is_closing():
            raise StreamClosed("the connection is closed")
        self._writer.write(frame)
        self._on_activity()

    async def _drain(self) -> None:
        try:
            await self._writer.drain()
        except (ConnectionError, RuntimeError) as exc:
            self._mark_closed()
            raise StreamClosed(f"the connection is gone: {exc}") from None

    def open_stream(self, headers: Headers, *, fin: bool = False) -> SpdyStream:
        """Open a stream (SYN_STREAM); use wait_reply() for the peer's answer."""
        stream_id = self._next_stream_id
        self._next_stream_id += 2
        stream = self._new_stream(stream_id, headers)
        stream.local_closed = fin
        self.streams[stream_id] = stream
        self._send(syn_stream_frame(self._compressor, stream_id, headers, FLAG_FIN if fin else 0))
        return stream

    async def ping(self, ping_id: int) -> None:
        self._send(ping_frame(ping_id))
        await self._drain()

    def send_goaway(self, status: int = GOAWAY_OK) -> None:
        if not self.closed and not self._writer.is_closing():
            self._send(goaway_frame(self._last_peer_stream_id, status))

    async def close(self, *, linger: float = 2.0) -> None:
        """GOAWAY, then half-close TCP and give the peer `linger` seconds to finish reading and hang up.

        Closing the socket while the peer still sends would make the kernel
        answer with RST, which can destroy data the peer has not read yet.
        """
        if self.closed:
            return
        try:
            self.send_goaway()
            await asyncio.wait_for(self._writer.drain(), linger)
            if self._writer.can_write_eof():
                self._writer.write_eof()
            await asyncio.wait_for(self.done.wait(), linger)
        except (ConnectionError, RuntimeError, StreamClosed, asyncio.TimeoutError):
            pass
        finally:
            self._mark_closed()

    def abort(self) -> None:
        self._mark_closed()

    def _mark_closed(self) -> None:
        if self.closed:
            return
        self.closed = True
        for stream in list(self.streams.values()):
            self._on_reset(stream)  # every stream ends as if the peer had reset it
        self._writer.close()
        self.done.set()

    # -- receiving

    def _new_stream(self, stream_id: int, headers: Headers) -> SpdyStream:
        reader = asyncio.StreamReader(limit=STREAM_BUFFER_LIMIT // 2)
        stream = SpdyStream(self, stream_id, headers, reader)
        reader.set_transport(stream._flow)  # type: ignore[arg-type]  # only pause/resume are used
        return stream

    async def run(self) -> None:
        """Read frames until the peer hangs up or breaks the protocol; then close everything."""
        try:
            while not self.closed:
                header = await self._reader.readexactly(8)
                self._on_activity()
                first, second = struct.unpack(">II", header)
                flags = second >> 24
                length = second & 0xFFFFFF
                if length > MAX_RECEIVE_FRAME:
                    raise ProtocolError(f"frame of {length} bytes (limit {MAX_RECEIVE_FRAME})")
                payload = await self._reader.readexactly(length) if length else b""
                if first & 0x80000000:
                    version = (first >> 16) & 0x7FFF
                    if version != VERSION:
                        raise ProtocolError(f"SPDY version {version} is not supported (only 3)")
                    await self._control(first & 0xFFFF, flags, payload)
                else:
                    await self._data(first & 0x7FFFFFFF, flags, payload)
        except asyncio.IncompleteReadError as exc:
            if exc.partial:
                self.error = "connection ended in the middle of a frame"
        except ProtocolError as exc:
            self.error = str(exc)
            log.info("spdy: closing connection after protocol error: %s", exc)
            try:
                self.send_goaway(GOAWAY_PROTOCOL_ERROR)
                await asyncio.wait_for(self._writer.drain(), 1.0)
            except (ConnectionError, RuntimeError, StreamClosed, asyncio.TimeoutError):
                pass
        except (ConnectionError, OSError, StreamClosed) as exc:
            self.error = f"connection error: {exc}"
        except Exception as exc:  # noqa: BLE001 - a bug in a stream handler ends this connection only
            log.exception("spdy: stream handling failed")
            self.error = f"internal error: {exc}"
        finally:
            self._mark_closed()

    async def _control(self, frame_type: int, flags: int, payload: bytes) -> None:
        if frame_type == SYN_STREAM:
            if len(payload) < 10:
                raise ProtocolError("short SYN_STREAM")
            stream_id = struct.unpack_from(">I", payload)[0] & 0x7FFFFFFF
            headers = self._decompressor.decompress(payload[10:])
            self._peer_stream(stream_id, headers, flags)
        elif frame_type == SYN_REPLY:
            if len(payload) < 4:
                raise ProtocolError("short SYN_REPLY")
            stream_id = struct.unpack_from(">I", payload)[0] & 0x7FFFFFFF
            headers = self._decompressor.decompress(payload[4:])
            stream = self.streams.get(stream_id)
            if stream is not None and stream.reply_headers is None:
                stream.reply_headers = headers
                stream._replied.set()
                if flags & FLAG_FIN:
                    self._remote_fin(stream)
        elif frame_type == RST_STREAM:
            if len(payload) != 8:
                raise ProtocolError("RST_STREAM must be 8 bytes")
            stream_id = struct.unpack_from(">I", payload)[0] & 0x7FFFFFFF
            stream = self.streams.get(stream_id)
            if stream is not None:
                self._on_reset(stream)
        elif frame_type == SETTINGS:
            if len(payload) < 4:
                raise ProtocolError("short SETTINGS")
            (count,) = struct.unpack_from(">I", payload)
            if len(payload) != 4 + 8 * count:
                raise ProtocolError("SETTINGS length does not match its entry count")
        elif frame_type == PING:
            if len(payload) != 4:
                raise ProtocolError("PING must be 4 bytes")
            (ping_id,) = struct.unpack(">I", payload)
            # Server-initiated pings are even, client-initiated odd: echo only the peer's.
            if (ping_id % 2 == 1) == self.is_server:
                self._send(ping_frame(ping_id))
        elif frame_type == GOAWAY:
            if len(payload) < 4:
                raise ProtocolError("short GOAWAY")
            self.goaway_received = True
        elif frame_type == HEADERS:
            if len(payload) < 4:
                raise ProtocolError("short HEADERS")
            # Decompress even though unused: the zlib context must see every block.
            self._decompressor.decompress(payload[4:])
        elif frame_type == WINDOW_UPDATE:
            if len(payload) != 8:
                raise ProtocolError("WINDOW_UPDATE must be 8 bytes")
        # Unknown control frame types are ignored, as the specification requires.

    def _peer_stream(self, stream_id: int, headers: Headers, flags: int) -> None:
        if stream_id == 0 or (stream_id % 2 == 1) != self.is_server:
            raise ProtocolError(f"peer opened stream {stream_id} with the wrong parity")
        if stream_id <= self._last_peer_stream_id:
            if stream_id in self.streams:
                self._send(rst_stream_frame(stream_id, RST_STREAM_IN_USE))
                return
            raise ProtocolError(f"stream id {stream_id} does not increase")
        self._last_peer_stream_id = stream_id
        if self.goaway_received or self._on_stream is None:
            self._send(rst_stream_frame(stream_id, RST_REFUSED_STREAM))
            return
        stream = self._new_stream(stream_id, headers)
        self.streams[stream_id] = stream
        if flags & FLAG_UNIDIRECTIONAL:
            stream.local_closed = True
        if flags & FLAG_FIN:
            self._remote_fin(stream)
        self._on_stream(stream)

    async def _data(self, stream_id: int, flags: int, payload: bytes) -> None:
        stream = self.streams.get(stream_id)
        if stream is None:
            # Data for a stream we already forgot (reset or finished): tell the peer, keep going.
            if stream_id != 0:
                self._send(rst_stream_frame(stream_id, RST_INVALID_STREAM))
            return
        if stream.remote_closed:
            self._send(rst_stream_frame(stream_id, RST_STREAM_ALREADY_CLOSED))
            self._on_reset(stream)
            return
        if payload and not stream._discarding:
            stream.reader.feed_data(payload)
        if flags & FLAG_FIN:
            self._remote_fin(stream)
        if not stream._flow.resumed.is_set():
            # The reader is behind: stop reading the socket until it catches up (TCP back-pressure).
            await stream._flow.resumed.wait()

    def _remote_fin(self, stream: SpdyStream) -> None:
        if not stream.remote_closed:
            stream.remote_closed = True
            stream.reader.feed_eof()
        self._stream_maybe_done(stream)

    def _on_reset(self, stream: SpdyStream) -> None:
        stream.reset = True
        stream.local_closed = True
        if not stream.remote_closed:
            stream.remote_closed = True
            stream.reader.feed_eof()
        stream._flow.resume_reading()
        stream._replied.set()
        self.streams.pop(stream.stream_id, None)

    def _stream_maybe_done(self, stream: SpdyStream) -> None:
        if stream.local_closed and stream.remote_closed:
            self.streams.pop(stream.stream_id, None)


class PrefixedReader:
    """A StreamReader stand-in that first returns bytes already read past the HTTP request."""

    def __init__(self, prefix: bytes, reader: asyncio.StreamReader) -> None:
        self._prefix = bytearray(prefix)
        self._reader = reader

    async def readexactly(self, count: int) -> bytes:
        if not self._prefix:
            return await self._reader.readexactly(count)
        if len(self._prefix) >= count:
            chunk = bytes(self._prefix[:count])
            del self._prefix[:count]
            return chunk
        head = bytes(self._prefix)
        self._prefix.clear()
        try:
            return head + await self._reader.readexactly(count - len(head))
        except asyncio.IncompleteReadError as exc:
            raise asyncio.IncompleteReadError(head + exc.partial, count) from None


async def copy_stream_to_writer(
    source: asyncio.StreamReader, write: Callable[[bytes], Awaitable[None]], chunk: int = MAX_SEND_DATA
) -> None:
    """Copy until EOF, awaiting each write (its back-pressure)."""
    while True:
        data = await source.read(chunk)
        if not data:
            return
        await write(data)
