"""The HTTP(S) streaming server behind the CRI Exec, Attach and PortForward RPCs.

An RPC caches its request under a random single-use token and returns
``http(s)://ADDR:PORT/{exec,attach,portforward}/TOKEN``. The client upgrades a
connection at that URL to SPDY/3.1 or WebSocket and speaks the Kubernetes
streaming protocols (see remotecommand.py and portforward.py).
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import secrets
import ssl
import threading
import time
from typing import Any
from urllib.parse import parse_qs, urlsplit

import h11
from wsproto.utilities import generate_accept_token

from crio_fast.api import api_pb2
from crio_fast.config.durations import parse_duration
from crio_fast.errors import InvalidArgument
from crio_fast.streaming import portforward, remotecommand
from crio_fast.streaming.backend import StreamingBackend
from crio_fast.streaming.spdy import PrefixedReader, SpdySession
from crio_fast.streaming.websocket import WebSocketChannels

log = logging.getLogger(__name__)

PROTOCOL_VERSION_HEADER = "x-stream-protocol-version"
ACCEPTED_PROTOCOL_VERSIONS_HEADER = "x-accepted-stream-protocol-versions"
SPDY_UPGRADE = "spdy/3.1"
# The request line and headers must arrive within this long, and fit in this much.
REQUEST_TIMEOUT = 30.0
MAX_REQUEST_BYTES = 64 * 1024
_KINDS = ("exec", "attach", "portforward")


class HttpError(Exception):
    def __init__(self, status: int, message: str, headers: list[tuple[str, str]] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or []


_REASONS = {400: "Bad Request", 403: "Forbidden", 404: "Not Found", 405: "Method Not Allowed",
            500: "Internal Server Error"}


def _error_response(error: HttpError) -> bytes:
    body = (error.message + "\n").encode()
    lines = [f"HTTP/1.1 {error.status} {_REASONS.get(error.status, 'Error')}",
             "Content-Type: text/plain; charset=utf-8",
             "X-Content-Type-Options: nosniff",
             f"Content-Length: {len(body)}",
             "Connection: close"]
    lines += [f"{name}: {value}" for name, value in error.headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def _switching_protocols(headers: list[tuple[str, str]]) -> bytes:
    lines = ["HTTP/1.1 101 Switching Protocols"] + [f"{name}: {value}" for name, value in headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def _comma_values(values: list[str]) -> list[str]:
    return [item.strip() for value in values for item in value.split(",") if item.strip()]


def _validate_stdio(request: Any) -> None:
    if not request.container_id:
        raise InvalidArgument("missing required container_id")
    if request.tty and request.stderr:
        # A terminal has one output stream; stdout and stderr cannot be told apart.
        raise InvalidArgument("tty and stderr cannot both be true")
    if not (request.stdin or request.stdout or request.stderr):
        raise InvalidArgument("one of stdin, stdout, or stderr must be set")


class _Activity:
    """Last time a connection moved a byte either way, for the idle timeout."""

    def __init__(self) -> None:
        self.last = time.monotonic()

    def touch(self) -> None:
        self.last = time.monotonic()


class StreamServer:
    def __init__(
        self,
        backend: StreamingBackend,
        address: str,
        port: int,
        *,
        tls: ssl.SSLContext | None = None,
        idle_timeout: float | None = None,
        token_ttl: float = 60.0,
        stream_creation_timeout: float = 30.0,
    ) -> None:
        self.backend = backend
        self.address = address
        self.port = port
        self.tls = tls
        self.idle_timeout = idle_timeout if idle_timeout and idle_timeout > 0 else None
        self.token_ttl = token_ttl
        self.stream_creation_timeout = stream_creation_timeout
        self._server: asyncio.base_events.Server | None = None
        self._tokens: dict[str, tuple[str, Any, float]] = {}
        # Tokens are issued by the CRI handlers' worker threads and redeemed on the loop.
        self._tokens_lock = threading.Lock()
        self._connections: set[asyncio.Task] = set()

    # -- lifecycle

    async def start(self) -> None:
        self._server = await asyncio.start_server(
            self._on_connection, self.address, self.port, ssl=self.tls, limit=MAX_REQUEST_BYTES
        )
        if self.port == 0:
            self.port = self._server.sockets[0].getsockname()[1]
        log.info("streaming server listening on %s", self.url)

    async def stop(self) -> None:
        """Stop listening, end every live connection and cancel the backend work it started."""
        if self._server is not None:
            self._server.close()
        tasks = list(self._connections)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None
        with self._tokens_lock:
            self._tokens.clear()

    @property
    def url(self) -> str:
        host = self.address
        try:
            if ipaddress.ip_address(host).version == 6:
                host = f"[{host}]"
        except ValueError:
            pass
        return f"{'https' if self.tls else 'http'}://{host}:{self.port}"

    # -- tokens

    def _insert(self, kind: str, request: Any) -> str:
        token = secrets.token_urlsafe(16)
        stored = type(request)()
        stored.CopyFrom(request)
        now = time.monotonic()
        with self._tokens_lock:
            for expired in [t for t, (_, _, expires) in self._tokens.items() if expires <= now]:
                del self._tokens[expired]
            self._tokens[token] = (kind, stored, now + self.token_ttl)
        return f"{self.url}/{kind}/{token}"

    def get_exec_url(self, request: api_pb2.ExecRequest) -> str:
        """Cache the request under a new token; InvalidArgument for requests the kubelet's server refuses too."""
        _validate_stdio(request)
        if not request.cmd:
            raise InvalidArgument("missing required cmd")
        return self._insert("exec", request)

    def get_attach_url(self, request: api_pb2.AttachRequest) -> str:
        _validate_stdio(request)
        return self._insert("attach", request)

    def get_port_forward_url(self, request: api_pb2.PortForwardRequest) -> str:
        if not request.pod_sandbox_id:
            raise InvalidArgument("missing required pod_sandbox_id")
        return self._insert("portforward", request)

    def _consume(self, kind: str, token: str) -> Any:
        with self._tokens_lock:
            entry = self._tokens.pop(token, None)
        if entry is None or entry[0] != kind or entry[2] <= time.monotonic():
            raise HttpError(404, "404 page not found")
        return entry[1]

    # -- connections

    async def _on_connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._connections.add(task)
        activity = _Activity()
        watchdog = asyncio.ensure_future(self._watch_idle(activity, writer)) if self.idle_timeout else None
        try:
            await self._serve(reader, writer, activity)
        except (ConnectionError, OSError, asyncio.IncompleteReadError, ssl.SSLError) as exc:
            log.debug("streaming connection ended: %s", exc)
        except asyncio.CancelledError:
            pass
        except Exception:  # noqa: BLE001 - one broken connection must not take the server down
            log.exception("streaming connection failed")
        finally:
            if watchdog is not None:
                watchdog.cancel()
            writer.close()
            self._connections.discard(task)

    async def _watch_idle(self, activity: _Activity, writer: asyncio.StreamWriter) -> None:
        assert self.idle_timeout is not None
        while True:
            remaining = activity.last + self.idle_timeout - time.monotonic()
            if remaining <= 0:
                log.info("closing streaming connection idle for %.1fs", self.idle_timeout)
                # Aborting the transport ends the session's read loop, which tears everything down.
                writer.transport.abort()
                return
            await asyncio.sleep(remaining)

    async def _read_request(self, reader: asyncio.StreamReader, activity: _Activity) -> tuple[h11.Request, bytes]:
        parser = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_REQUEST_BYTES)
        request: h11.Request | None = None
        body_size = 0
        # One deadline for the whole request, so a client trickling bytes cannot hold a connection forever.
        deadline = time.monotonic() + REQUEST_TIMEOUT
        while True:
            event = parser.next_event()
            if event is h11.NEED_DATA:
                data = await asyncio.wait_for(reader.read(65536), max(deadline - time.monotonic(), 0.001))
                activity.touch()
                parser.receive_data(data)
                if not data and request is None:
                    raise ConnectionResetError("client closed before sending a request")
                continue
            if isinstance(event, h11.Request):
                request = event
            elif isinstance(event, h11.Data):
                body_size += len(event.data)
                if body_size > MAX_REQUEST_BYTES:
                    raise HttpError(400, "request body too large")
            elif isinstance(event, h11.EndOfMessage) or event is h11.PAUSED:
                if request is None:
                    raise HttpError(400, "malformed request")
                if event is h11.PAUSED or parser.their_state is h11.MIGHT_SWITCH_PROTOCOL:
                    return request, parser.trailing_data[0]
                # Not an upgrade request: what is left belongs to nobody (no keep-alive here).
                return request, b""
            elif isinstance(event, h11.ConnectionClosed):
                raise ConnectionResetError("client closed the connection")

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, activity: _Activity) -> None:
        try:
            try:
                request, trailing = await self._read_request(reader, activity)
            except h11.RemoteProtocolError as exc:
                raise HttpError(400, f"malformed request: {exc}") from None
            except asyncio.TimeoutError:
                return
            await self._dispatch(request, trailing, reader, writer, activity)
        except HttpError as error:
            writer.write(_error_response(error))
            try:
                await asyncio.wait_for(writer.drain(), 5)
            except (asyncio.TimeoutError, ConnectionError):
                pass

    async def _dispatch(
        self,
        request: h11.Request,
        trailing: bytes,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        activity: _Activity,
    ) -> None:
        target = urlsplit(request.target.decode("latin-1"))
        parts = target.path.split("/")
        if len(parts) != 3 or parts[0] != "" or parts[1] not in _KINDS or not parts[2]:
            raise HttpError(404, "404 page not found")
        kind, token = parts[1], parts[2]
        if request.method not in (b"GET", b"POST"):
            raise HttpError(405, f"method {request.method.decode('latin-1')} is not allowed",
                            [("Allow", "GET, POST")])
        cri_request = self._consume(kind, token)
        headers: dict[str, list[str]] = {}
        for name, value in request.headers:
            headers.setdefault(name.decode("latin-1").lower(), []).append(value.decode("latin-1"))
        connection = {v.lower() for v in _comma_values(headers.get("connection", []))}
        upgrade = (headers.get("upgrade") or [""])[0].strip().lower()
        if "upgrade" not in connection or not upgrade:
            raise HttpError(400, "unable to upgrade: missing upgrade headers in request "
                                 "(expected Connection: Upgrade with Upgrade: SPDY/3.1 or websocket)")
        query = parse_qs(target.query)
        if upgrade == "websocket":
            await self._serve_websocket(kind, cri_request, headers, query, trailing, reader, writer, activity)
        elif upgrade == SPDY_UPGRADE:
            await self._serve_spdy(kind, cri_request, headers, trailing, reader, writer, activity)
        else:
            raise HttpError(400, f'unable to upgrade: upgrade header was "{upgrade}" instead of "SPDY/3.1"'
                                 ' or "websocket"')

    async def _serve_spdy(self, kind, cri_request, headers, trailing, reader, writer, activity) -> None:
        supported = portforward.SPDY_PROTOCOLS if kind == "portforward" else remotecommand.SPDY_PROTOCOLS
        offered = _comma_values(headers.get(PROTOCOL_VERSION_HEADER, []))
        if not offered:
            raise HttpError(400, "unable to upgrade: X-Stream-Protocol-Version is required")
        protocol = next((p for p in offered if p in supported), None)
        if protocol is None:
            raise HttpError(
                403,
                f"unable to upgrade: unable to negotiate protocol: client supports {offered}, server accepts {supported}",
                [("X-Accepted-Stream-Protocol-Versions", p) for p in supported],
            )
        writer.write(_switching_protocols(
            [("Connection", "Upgrade"), ("Upgrade", "SPDY/3.1"), ("X-Stream-Protocol-Version", protocol)]
        ))
        await writer.drain()
        activity.touch()
        spdy_reader = PrefixedReader(trailing, reader)

        def session_factory(on_stream) -> SpdySession:
            return SpdySession(spdy_reader, writer, is_server=True, on_stream=on_stream, on_activity=activity.touch)

        if kind == "portforward":
            handler: Any = portforward.PortForwardOverSpdy(
                session_factory, cri_request.pod_sandbox_id, self.backend, self.stream_creation_timeout
            )
        else:
            handler = remotecommand.RemoteCommandOverSpdy(
                session_factory, protocol, kind, cri_request, self.backend, self.stream_creation_timeout
            )
        await handler.serve()

    async def _serve_websocket(self, kind, cri_request, headers, query, trailing, reader, writer, activity) -> None:
        key = (headers.get("sec-websocket-key") or [""])[0].strip()
        version = (headers.get("sec-websocket-version") or [""])[0].strip()
        if not key or version != "13":
            raise HttpError(400, "unable to upgrade: a WebSocket request needs Sec-WebSocket-Key and "
                                 "Sec-WebSocket-Version: 13")
        supported = portforward.WEBSOCKET_PROTOCOLS if kind == "portforward" else remotecommand.WEBSOCKET_PROTOCOLS
        offered = _comma_values(headers.get("sec-websocket-protocol", [])) or [""]
        protocol = next((p for p in offered if p in supported), None)
        if protocol is None:
            raise HttpError(400, f"requested protocol(s) are not supported: {offered}; supports {supported}")
        ports: list[int] = []
        if kind == "portforward":
            try:
                ports = [portforward.parse_port(value) for value in query.get("port", [])]
            except ValueError as exc:
                raise HttpError(400, str(exc)) from None
            ports = ports or [int(p) for p in cri_request.port]
            if not ports:
                raise HttpError(400, 'query parameter "port" is required')
        response = [("Upgrade", "websocket"), ("Connection", "Upgrade"),
                    ("Sec-WebSocket-Accept", generate_accept_token(key.encode()).decode())]
        if protocol:
            response.append(("Sec-WebSocket-Protocol", protocol))
        writer.write(_switching_protocols(response))
        await writer.drain()
        activity.touch()
        if kind == "portforward":
            readable = [2 * index for index in range(len(ports))]
        else:
            readable = [remotecommand.WS_STDIN, remotecommand.WS_RESIZE]
        channels = WebSocketChannels(reader, writer, protocol=protocol, readable=readable,
                                     trailing_data=trailing, on_activity=activity.touch)
        if kind == "portforward":
            await portforward.serve_port_forward_websocket(channels, cri_request.pod_sandbox_id, ports, self.backend)
        else:
            await remotecommand.serve_remote_command_websocket(channels, kind, cri_request, self.backend)


def build_stream_server(api_config, backend: StreamingBackend, **kwargs: Any) -> StreamServer:
    """A StreamServer from the [crio.api] section (stream_address, stream_port, TLS, idle timeout)."""
    tls = None
    if api_config.stream_enable_tls:
        if not api_config.stream_tls_cert or not api_config.stream_tls_key:
            raise ValueError("stream_enable_tls needs stream_tls_cert and stream_tls_key")
        tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        tls.load_cert_chain(api_config.stream_tls_cert, api_config.stream_tls_key)
        if api_config.stream_tls_ca:
            tls.load_verify_locations(cafile=api_config.stream_tls_ca)
            tls.verify_mode = ssl.CERT_REQUIRED
    idle_timeout = parse_duration(api_config.stream_idle_timeout) if api_config.stream_idle_timeout else None
    return StreamServer(
        backend, api_config.stream_address, int(api_config.stream_port), tls=tls,
        idle_timeout=idle_timeout or None, **kwargs,
    )
