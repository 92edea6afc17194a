"""port-forward over SPDY (portforward.k8s.io) and WebSocket.

SPDY: each forwarded connection is a pair of streams sharing a ``requestID``
header, one with ``streamType: error`` and one with ``streamType: data``, both
naming the ``port``. When both are there the backend connects to the port in
the pod; bytes are copied both ways until both directions ended (the client's
FIN half-closes the TCP write side; TCP EOF sends FIN on the data stream).
Failures are reported as text on the error stream, which is then finished.

WebSocket: the ports come from the ``port`` query parameters (else from the
CRI request); port i uses channel 2i for data and 2i+1 for errors, and the
first message on each of these channels is the port as 2 bytes little-endian.
"""

from __future__ import annotations

import asyncio
import logging
import struct
from collections.abc import Callable
from typing import Any

from crio_fast.streaming.backend import StreamingBackend
from crio_fast.streaming.spdy import (
    RST_CANCEL,
    SpdySession,
    SpdyStream,
    StreamClosed,
    copy_stream_to_writer,
)
from crio_fast.streaming.websocket import (
    V4_BASE64_CHANNEL_PROTOCOL,
    V4_CHANNEL_PROTOCOL,
    WebSocketChannels,
)

log = logging.getLogger(__name__)

PORT_FORWARD_PROTOCOL_V1 = "portforward.k8s.io"
SPDY_PROTOCOLS = [PORT_FORWARD_PROTOCOL_V1]
WEBSOCKET_PROTOCOLS = [V4_CHANNEL_PROTOCOL, V4_BASE64_CHANNEL_PROTOCOL, PORT_FORWARD_PROTOCOL_V1, ""]

STREAM_TYPE_HEADER = "streamtype"
PORT_HEADER = "port"
REQUEST_ID_HEADER = "requestid"
STREAM_ERROR = "error"
STREAM_DATA = "data"


def parse_port(text: str | None) -> int:
    """A port header/query value as the kubelet validates it; ValueError with its message."""
    if not text:
        raise ValueError(f'"{PORT_HEADER}" header is required')
    if not text.isascii() or not text.isdigit() or int(text) > 65535:
        raise ValueError(f'unable to parse "{text}" as a port')
    port = int(text)
    if port < 1:
        raise ValueError(f'port "{text}" must be > 0')
    return port


async def _tcp_to(write: Callable[[bytes], Any], tcp_reader: asyncio.StreamReader) -> None:
    await copy_stream_to_writer(tcp_reader, write)


async def _to_tcp(source: asyncio.StreamReader, tcp_writer: asyncio.StreamWriter) -> None:
    while True:
        data = await source.read(256 * 1024)
        if not data:
            break
        tcp_writer.write(data)
        await tcp_writer.drain()
    if tcp_writer.can_write_eof() and not tcp_writer.is_closing():
        tcp_writer.write_eof()


def _forward_error(port: int, pod_sandbox_id: str, error: BaseException) -> str:
    # The kubelet's wording (the CRI server passes the sandbox ID as the pod name and no uid).
    return f"error forwarding port {port} to pod {pod_sandbox_id}, uid : {error}"


class _Pair:
    def __init__(self, request_id: str) -> None:
        self.request_id = request_id
        self.data: SpdyStream | None = None
        self.error: SpdyStream | None = None
        self.complete = asyncio.Event()


class PortForwardOverSpdy:
    def __init__(
        self,
        session_factory: Callable[[Callable[[SpdyStream], None]], SpdySession],
        pod_sandbox_id: str,
        backend: StreamingBackend,
        stream_creation_timeout: float,
    ) -> None:
        self.pod_sandbox_id = pod_sandbox_id
        self.backend = backend
        self.stream_creation_timeout = stream_creation_timeout
        self._pairs: dict[str, _Pair] = {}
        self._tasks: set[asyncio.Task] = set()
        self.session = session_factory(self._on_stream)

    def _on_stream(self, stream: SpdyStream) -> None:
        stream_type = stream.header(STREAM_TYPE_HEADER)
        try:
            parse_port(stream.header(PORT_HEADER))
            if not stream_type:
                raise ValueError(f'"{STREAM_TYPE_HEADER}" header is required')
            if stream_type not in (STREAM_ERROR, STREAM_DATA):
                raise ValueError(f'invalid stream type "{stream_type}"')
        except ValueError as exc:
            log.info("port-forward: refusing stream %d: %s", stream.stream_id, exc)
            stream.send_reset(RST_CANCEL)
            return
        stream.reply()
        request_id = stream.header(REQUEST_ID_HEADER)
        if request_id is None:
            # Clients before requestID existed: the error stream is opened right before the data stream.
            request_id = str(stream.stream_id - 2 if stream_type == STREAM_DATA else stream.stream_id)
        pair = self._pairs.get(request_id)
        if pair is None:
            pair = self._pairs[request_id] = _Pair(request_id)
            self._spawn(self._serve_pair(pair))
        if getattr(pair, stream_type) is not None:
            log.info("port-forward: request %s has two %s streams", request_id, stream_type)
            stream.send_reset(RST_CANCEL)
            return
        setattr(pair, stream_type, stream)
        if pair.data is not None and pair.error is not None:
            pair.complete.set()

    def _spawn(self, coroutine) -> None:
        task = asyncio.ensure_future(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def serve(self) -> None:
        try:
            await self.session.run()
        finally:
            self.session.abort()
            tasks = list(self._tasks)
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _serve_pair(self, pair: _Pair) -> None:
        try:
            try:
                await asyncio.wait_for(pair.complete.wait(), self.stream_creation_timeout)
            except asyncio.TimeoutError:
                await self._report(pair, "timed out waiting for streams")
                for stream in (pair.data, pair.error):
                    if stream is not None:
                        stream.send_reset(RST_CANCEL)
                return
            assert pair.data is not None and pair.error is not None
            port = parse_port(pair.data.header(PORT_HEADER))
            pair.error.discard_input()
            try:
                await self._forward(pair.data, port)
            except (asyncio.CancelledError, StreamClosed):
                raise
            except Exception as exc:  # noqa: BLE001 - every backend failure is reported to the client
                message = _forward_error(port, self.pod_sandbox_id, exc)
                log.info("port-forward: %s", message)
                await self._report(pair, message)
            for stream in (pair.data, pair.error):
                await stream.close()
        except StreamClosed:
            pass
        finally:
            self._pairs.pop(pair.request_id, None)

    async def _report(self, pair: _Pair, message: str) -> None:
        if pair.error is not None:
            try:
                await pair.error.write(message.encode())
                await pair.error.close()
            except StreamClosed:
                pass

    async def _forward(self, data: SpdyStream, port: int) -> None:
        tcp_reader, tcp_writer = await self.backend.port_forward(self.pod_sandbox_id, port)

        async def outbound() -> None:
            await _tcp_to(data.write, tcp_reader)
            await data.close()  # TCP EOF: FIN on the data stream

        try:
            tasks = [asyncio.ensure_future(_to_tcp(data.reader, tcp_writer)), asyncio.ensure_future(outbound())]
            try:
                # Done when both directions ended, or as soon as one fails (reset stream, TCP error).
                await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
            finally:
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
                data.discard_input()
            for task in tasks:
                error = None if task.cancelled() else task.exception()
                # A reset data stream is the client hanging up, not an error to report.
                if error is not None and not isinstance(error, StreamClosed):
                    raise error
        finally:
            tcp_writer.close()


async def serve_port_forward_websocket(
    channels: WebSocketChannels, pod_sandbox_id: str, ports: list[int], backend: StreamingBackend
) -> None:
    reader_task = asyncio.ensure_future(channels.run())
    try:
        for index, port in enumerate(ports):
            prefix = struct.pack("<H", port)
            await channels.write(2 * index, prefix)
            await channels.write(2 * index + 1, prefix)
            channels.discard_input(2 * index + 1)
        forwards = [
            asyncio.ensure_future(_forward_websocket(channels, index, pod_sandbox_id, port, backend))
            for index, port in enumerate(ports)
        ]
        try:
            await asyncio.gather(*forwards)
        finally:
            for task in forwards:
                task.cancel()
            await asyncio.gather(*forwards, return_exceptions=True)
        await channels.close()
    except ConnectionError:
        return
    finally:
        channels.abort()
        reader_task.cancel()
        await asyncio.gather(reader_task, return_exceptions=True)


async def _forward_websocket(
    channels: WebSocketChannels, index: int, pod_sandbox_id: str, port: int, backend: StreamingBackend
) -> None:
    data_channel = 2 * index

    async def write(data: bytes) -> None:
        await channels.write(data_channel, data)

    try:
        tcp_reader, tcp_writer = await backend.port_forward(pod_sandbox_id, port)
    except Exception as exc:  # noqa: BLE001 - reported to the client on the error channel
        await channels.write(data_channel + 1, _forward_error(port, pod_sandbox_id, exc).encode())
        return
    try:
        inbound = asyncio.ensure_future(_to_tcp(channels.readers[data_channel], tcp_writer))
        try:
            # The WebSocket protocols cannot half-close from the client (before v5), so the
            # forward ends when the pod side does.
            await _tcp_to(write, tcp_reader)
        finally:
            inbound.cancel()
            await asyncio.gather(inbound, return_exceptions=True)
            channels.discard_input(data_channel)
    except (ConnectionError, OSError) as exc:
        if not channels.closed:
            await channels.write(data_channel + 1, _forward_error(port, pod_sandbox_id, exc).encode())
    finally:
        tcp_writer.close()
