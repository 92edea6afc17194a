"""The streaming server end to end on 127.0.0.1: real sockets, real subprocesses, real TCP servers.

The backend here runs commands on the host (asyncio subprocesses) and connects
port-forwards to a local TCP server; the protocols on the wire are the real ones.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import ssl
import subprocess
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import pytest

from crio_fast.api import api_pb2 as api
from crio_fast.config.schema import ApiSection
from crio_fast.errors import InvalidArgument, NotFound
from crio_fast.streaming import StreamServer, TerminalSize, build_stream_server
from crio_fast.streaming.spdy import GOAWAY, VERSION
from tests.support.streamclient import (
    PortForwardClient,
    UpgradeRefused,
    WebSocketClient,
    exec_over_spdy,
    exec_over_websocket,
    http_request,
    port_forward_over_websocket,
    spdy_connect,
)

pytestmark = pytest.mark.integration

SPDY_PROTOCOLS = ["v4.channel.k8s.io", "v3.channel.k8s.io", "v2.channel.k8s.io", "channel.k8s.io"]


@dataclass
class HostBackend:
    """Exec runs request.cmd on the host; attach echoes stdin and reports resizes; port-forward dials 127.0.0.1."""

    cancelled: list[str] = field(default_factory=list)
    processes: list[asyncio.subprocess.Process] = field(default_factory=list)

    async def exec(self, request, io) -> int:
        if request.cmd[0] == "fail":
            raise NotFound("no such container")
        proc = await asyncio.create_subprocess_exec(
            *request.cmd,
            stdin=asyncio.subprocess.PIPE if io.stdin is not None else asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        self.processes.append(proc)

        async def feed():
            if io.stdin is None:
                return
            try:
                while data := await io.stdin.read(256 * 1024):
                    proc.stdin.write(data)
                    await proc.stdin.drain()
            except (BrokenPipeError, ConnectionResetError):
                pass
            finally:
                proc.stdin.close()

        async def pump(source, write):
            while data := await source.read(256 * 1024):
                await write(data)

        # Stdin is fed on the side: a command that exits without reading it must not wait for the client.
        feeder = asyncio.ensure_future(feed())
        try:
            await asyncio.gather(pump(proc.stdout, io.write_stdout), pump(proc.stderr, io.write_stderr))
            return await proc.wait()
        except asyncio.CancelledError:
            self.cancelled.append(" ".join(request.cmd))
            proc.kill()
            await proc.wait()
            raise
        finally:
            feeder.cancel()

    async def attach(self, request, io) -> None:
        if io.tty:
            sizes = [await io.resizes.get() for _ in range(2)]
            await io.write_stdout(json.dumps([[s.width, s.height] for s in sizes]).encode())
            return
        while data := await io.stdin.read(65536):
            await io.write_stdout(data)
            await io.write_stderr(data.upper())

    async def port_forward(self, pod_sandbox_id, port):
        return await asyncio.open_connection("127.0.0.1", port)


@asynccontextmanager
async def running_server(backend=None, **kwargs):
    server = StreamServer(backend or HostBackend(), "127.0.0.1", 0, **kwargs)
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


@asynccontextmanager
async def echo_server(*, once: bool = False):
    """Echo until EOF (then close); with once=True answer the first line in upper case and close."""

    async def handle(reader, writer):
        try:
            if once:
                writer.write((await reader.readline()).upper())
            else:
                while data := await reader.read(65536):
                    writer.write(data)
                    await writer.drain()
            await writer.drain()
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()
        await server.wait_closed()


def exec_request(cmd, *, stdin=True, stdout=True, stderr=True, tty=False):
    return api.ExecRequest(container_id="c1", cmd=cmd, stdin=stdin, stdout=stdout, stderr=stderr, tty=tty)


def run(coroutine):
    return asyncio.run(asyncio.wait_for(coroutine, 50))


# ---------------------------------------------------------------- SPDY exec / attach


@pytest.mark.parametrize("protocol", SPDY_PROTOCOLS)
def test_spdy_exec_stdin_echo_every_version(protocol):
    async def main():
        async with running_server() as server:
            url = server.get_exec_url(exec_request(["cat"]))
            assert url.startswith(f"http://127.0.0.1:{server.port}/exec/")
            stdout, stderr, status = await exec_over_spdy(url, b"hello\n" * 1000, protocol=protocol)
            assert stdout == b"hello\n" * 1000
            assert stderr == b""
            if protocol == "v4.channel.k8s.io":
                assert json.loads(status) == {"metadata": {}, "status": "Success"}
            else:
                assert status == b""

    run(main())


@pytest.mark.parametrize("protocol", SPDY_PROTOCOLS)
def test_spdy_exec_exit_code_7(protocol):
    async def main():
        async with running_server() as server:
            url = server.get_exec_url(exec_request(["sh", "-c", "echo out; echo err >&2; exit 7"], stdin=False))
            stdout, stderr, status = await exec_over_spdy(url, None, protocol=protocol)
            assert (stdout, stderr) == (b"out\n", b"err\n")
            if protocol == "v4.channel.k8s.io":
                decoded = json.loads(status)
                assert decoded["status"] == "Failure" and decoded["reason"] == "NonZeroExitCode"
                assert decoded["details"]["causes"] == [{"reason": "ExitCode", "message": "7"}]
                assert decoded["message"] == (
                    "command terminated with non-zero exit code: command terminated with exit code 7"
                )
            else:
                assert status == b"command terminated with non-zero exit code: command terminated with exit code 7"

    run(main())


def test_spdy_exec_backend_error_is_an_internal_error_status():
    async def main():
        async with running_server() as server:
            _, _, status = await exec_over_spdy(server.get_exec_url(exec_request(["fail"], stdin=False)), None)
            decoded = json.loads(status)
            assert decoded["reason"] == "InternalError" and decoded["code"] == 500
            assert "error executing command in container: no such container" in decoded["message"]

    run(main())


def test_spdy_exec_50_mb_through_cat(capsys):
    payload = os.urandom(1024 * 1024) * 50

    async def main():
        async with running_server() as server:
            url = server.get_exec_url(exec_request(["cat"], stderr=False))
            started = time.monotonic()
            stdout, _, status = await exec_over_spdy(url, payload, stderr=False)
            elapsed = time.monotonic() - started
            assert len(stdout) == len(payload)
            assert hashlib.sha256(stdout).digest() == hashlib.sha256(payload).digest()
            assert json.loads(status)["status"] == "Success"
            return elapsed

    elapsed = run(main())
    with capsys.disabled():
        print(f"\nSPDY exec 50 MB stdin->cat->stdout: {elapsed:.2f}s, {50 / elapsed:.0f} MB/s")


@pytest.mark.parametrize("protocol", ["v4.channel.k8s.io", "v3.channel.k8s.io"])
def test_spdy_attach_tty_resizes_reach_the_backend(protocol):
    async def main():
        async with running_server() as server:
            request = api.AttachRequest(container_id="c1", stdin=False, stdout=True, stderr=False, tty=True)
            stdout, stderr, status = await exec_over_spdy(
                server.get_attach_url(request), None, tty=True, protocol=protocol, resizes=[(80, 24), (132, 50)]
            )
            assert json.loads(stdout) == [[80, 24], [132, 50]]
            assert stderr == b""

    run(main())


def test_spdy_attach_echo_with_stderr():
    async def main():
        async with running_server() as server:
            request = api.AttachRequest(container_id="c1", stdin=True, stdout=True, stderr=True)
            stdout, stderr, status = await exec_over_spdy(server.get_attach_url(request), b"abc")
            assert (stdout, stderr) == (b"abc", b"ABC")
            assert json.loads(status)["status"] == "Success"

    run(main())


def test_client_hangup_cancels_the_backend():
    backend = HostBackend()

    async def main():
        async with running_server(backend) as server:
            client = await spdy_connect(server.get_exec_url(exec_request(["sleep", "30"], stdin=False)),
                                        ["v4.channel.k8s.io"])
            for stream_type in ("error", "stdout", "stderr"):
                await client.open_stream({"streamType": stream_type})
            for _ in range(100):
                if backend.processes:
                    break
                await asyncio.sleep(0.02)
            await client.close()
            for _ in range(200):
                if backend.cancelled:
                    break
                await asyncio.sleep(0.02)
            assert backend.cancelled == ["sleep 30"]
            assert backend.processes[0].returncode is not None

    run(main())


def test_missing_streams_time_out():
    async def main():
        async with running_server(stream_creation_timeout=0.3) as server:
            client = await spdy_connect(server.get_exec_url(exec_request(["cat"])), ["v4.channel.k8s.io"])
            error = await client.open_stream({"streamType": "error"})
            message = await asyncio.wait_for(error.reader.read(), 5)
            assert b"timed out waiting for client to create streams" in message
            await client.close()

    run(main())


# ---------------------------------------------------------------- SPDY port-forward


def test_spdy_port_forward_10_concurrent_connections():
    async def main():
        async with running_server() as server, echo_server() as port:
            url = server.get_port_forward_url(api.PortForwardRequest(pod_sandbox_id="p1", port=[port]))
            client = await PortForwardClient.open(url)
            try:
                connections = [await client.connect(port) for _ in range(10)]
                payloads = [os.urandom(200_000 + i) for i in range(10)]

                async def one(connection, payload):
                    _, echoed = await asyncio.gather(connection.send(payload), connection.receive_all())
                    return echoed, await connection.error_text()

                results = await asyncio.gather(*(one(c, p) for c, p in zip(connections, payloads)))
                for (echoed, error), payload in zip(results, payloads):
                    assert echoed == payload
                    assert error == b""
            finally:
                await client.close()

    run(main())


def test_spdy_port_forward_refused_port_reports_on_error_stream():
    async def main():
        async with running_server() as server, echo_server() as port:
            pass  # the port is closed again: nothing listens there now
        async with running_server() as server:
            client = await PortForwardClient.open(
                server.get_port_forward_url(api.PortForwardRequest(pod_sandbox_id="p1", port=[port]))
            )
            try:
                connection = await client.connect(port)
                error = await asyncio.wait_for(connection.error_text(), 10)
                assert error.startswith(f"error forwarding port {port} to pod p1, uid : ".encode())
            finally:
                await client.close()

    run(main())


# ---------------------------------------------------------------- WebSocket


@pytest.mark.parametrize(
    "protocol",
    ["v5.channel.k8s.io", "v4.channel.k8s.io", "v4.base64.channel.k8s.io", "base64.channel.k8s.io", "channel.k8s.io"],
)
def test_websocket_exec_every_protocol(protocol):
    async def main():
        async with running_server() as server:
            url = server.get_exec_url(exec_request(["sh", "-c", "cat; echo err >&2; exit 7"]))
            payload = b"ws-data\n" * 10_000
            if protocol != "v5.channel.k8s.io":
                # Without the v5 close signal the client cannot end stdin: don't read it.
                url = server.get_exec_url(exec_request(["sh", "-c", "echo ws-data; echo err >&2; exit 7"]))
                payload = b"ws-data\n"
            stdout, stderr, error, negotiated = await exec_over_websocket(url, payload, protocol=protocol)
            assert negotiated == protocol
            assert stdout == payload and stderr == b"err\n"
            if protocol.startswith(("v4", "v5")):
                assert json.loads(error)["details"]["causes"] == [{"reason": "ExitCode", "message": "7"}]
            else:
                assert error.startswith(b"command terminated with non-zero exit code")

    run(main())


def test_websocket_first_message_is_empty_on_stdout():
    async def main():
        async with running_server() as server:
            client = await WebSocketClient.connect(
                server.get_exec_url(exec_request(["true"], stdin=False)), ["v4.channel.k8s.io"]
            )
            assert await client.receive() == (1, b"")
            await client.close()

    run(main())


def test_websocket_tty_resize():
    async def main():
        async with running_server() as server:
            request = api.AttachRequest(container_id="c1", stdout=True, tty=True)
            stdout, _, error, _ = await exec_over_websocket(
                server.get_attach_url(request), None, resizes=[(100, 30), (120, 40)]
            )
            assert json.loads(stdout) == [[100, 30], [120, 40]]
            assert json.loads(error) == {"metadata": {}, "status": "Success"}

    run(main())


def test_websocket_port_forward_10_concurrent_connections():
    async def main():
        async with running_server() as server, echo_server(once=True) as port:
            request = api.PortForwardRequest(pod_sandbox_id="p1", port=[port])
            results = await asyncio.gather(
                *(
                    port_forward_over_websocket(server.get_port_forward_url(request), port, f"line {i}\n".encode())
                    for i in range(10)
                )
            )
            assert results == [(f"LINE {i}\n".encode(), b"") for i in range(10)]

    run(main())


def test_websocket_port_forward_two_ports_and_a_refused_one():
    async def main():
        async with echo_server(once=True) as closed_port:
            pass  # nothing listens there any more
        async with running_server() as server, echo_server(once=True) as port:
            request = api.PortForwardRequest(pod_sandbox_id="p1", port=[port])
            url = server.get_port_forward_url(request)
            client = await WebSocketClient.connect(f"{url}?port={port}&port={closed_port}", ["v4.channel.k8s.io"])
            try:
                await client.send(0, b"first\n")
                received: dict[int, bytes] = {}
                while (message := await asyncio.wait_for(client.receive(), 10)) is not None:
                    channel, data = message
                    received[channel] = received.get(channel, b"") + data
                as_port = lambda p: p.to_bytes(2, "little")  # noqa: E731
                assert received[0] == as_port(port) + b"FIRST\n"
                assert received[1] == as_port(port)
                assert received[2] == as_port(closed_port)
                assert received[3].startswith(as_port(closed_port) + f"error forwarding port {closed_port}".encode())
            finally:
                await client.close()

    run(main())


# ---------------------------------------------------------------- HTTP, tokens, timeouts, TLS


def test_tokens_are_single_use_expire_and_are_bound_to_their_kind():
    async def main():
        async with running_server(token_ttl=0.3) as server:
            url = server.get_exec_url(exec_request(["cat"]))
            stdout, _, _ = await exec_over_spdy(url, b"x")
            assert stdout == b"x"
            with pytest.raises(UpgradeRefused) as reused:
                await exec_over_spdy(url, b"x")
            assert reused.value.status == 404
            expired = server.get_exec_url(exec_request(["cat"]))
            await asyncio.sleep(0.4)
            with pytest.raises(UpgradeRefused) as late:
                await exec_over_spdy(expired, b"x")
            assert late.value.status == 404
            wrong_kind = server.get_exec_url(exec_request(["cat"])).replace("/exec/", "/attach/")
            with pytest.raises(UpgradeRefused) as mismatched:
                await exec_over_spdy(wrong_kind, b"x")
            assert mismatched.value.status == 404
            with pytest.raises(UpgradeRefused) as unknown:
                await exec_over_spdy(f"{server.url}/exec/not-a-token", b"x")
            assert unknown.value.status == 404

    run(main())


def test_http_errors():
    async def main():
        async with running_server() as server:
            status, _, _ = await http_request(f"{server.url}/nothing/here")
            assert status == 404
            status, headers, _ = await http_request(server.get_exec_url(exec_request(["cat"])), method="DELETE")
            assert status == 405 and headers["allow"] == ["GET, POST"]
            status, _, body = await http_request(server.get_exec_url(exec_request(["cat"])))
            assert status == 400 and b"upgrade" in body
            status, headers, _ = await http_request(
                server.get_exec_url(exec_request(["cat"])),
                headers=[("Connection", "Upgrade"), ("Upgrade", "SPDY/3.1"), ("X-Stream-Protocol-Version", "v9")],
            )
            assert status == 403 and "v4.channel.k8s.io" in headers["x-accepted-stream-protocol-versions"]
            status, _, _ = await http_request(
                server.get_exec_url(exec_request(["cat"])),
                headers=[("Connection", "Upgrade"), ("Upgrade", "SPDY/3.1")],
            )
            assert status == 400

    run(main())


def test_garbage_does_not_kill_the_server():
    async def main():
        async with running_server() as server:
            # Garbage instead of HTTP.
            reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
            writer.write(b"\x00\xff garbage \r\n\r\n")
            assert (await reader.read(100)).startswith(b"HTTP/1.1 400")
            writer.close()
            # Garbage after a successful SPDY upgrade: the server answers GOAWAY and hangs up.
            url = server.get_exec_url(exec_request(["cat"]))
            reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
            path = url.split(str(server.port), 1)[1]
            writer.write(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: SPDY/3.1\r\n"
                         "X-Stream-Protocol-Version: v4.channel.k8s.io\r\n\r\n".encode())
            head = await reader.readuntil(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 101")
            # A SYN_STREAM whose header block is not zlib data.
            writer.write(bytes([0x80, VERSION, 0, 1, 0, 0, 0, 14]) + b"\x00\x00\x00\x01" + b"\x00" * 6 + b"junk")
            rest = await asyncio.wait_for(reader.read(), 5)
            assert rest[:4] == bytes([0x80, VERSION, 0, GOAWAY]) and rest[-4:] == b"\x00\x00\x00\x01"
            writer.close()
            # Still serving.
            stdout, _, _ = await exec_over_spdy(server.get_exec_url(exec_request(["cat"])), b"still alive")
            assert stdout == b"still alive"

    run(main())


def test_idle_timeout_closes_the_connection():
    async def main():
        async with running_server(idle_timeout=0.5) as server:
            client = await spdy_connect(server.get_exec_url(exec_request(["cat"])), ["v4.channel.k8s.io"])
            started = time.monotonic()
            await asyncio.wait_for(client.session.done.wait(), 5)
            assert 0.4 < time.monotonic() - started < 3
            await client.close()
            # An active session is not idle: 1 s of exec with traffic every 0.1 s.
            url = server.get_exec_url(exec_request(["sh", "-c", "for i in 1 2 3 4 5 6 7 8 9 10; do echo $i; sleep 0.1; done"],
                                                   stdin=False))
            stdout, _, status = await exec_over_spdy(url, None)
            assert stdout.split() == [str(i).encode() for i in range(1, 11)]
            assert json.loads(status)["status"] == "Success"

    run(main())


def test_stop_ends_live_sessions():
    backend = HostBackend()

    async def main():
        server = StreamServer(backend, "127.0.0.1", 0)
        await server.start()
        client = await spdy_connect(server.get_exec_url(exec_request(["sleep", "30"], stdin=False)),
                                    ["v4.channel.k8s.io"])
        for stream_type in ("error", "stdout", "stderr"):
            await client.open_stream({"streamType": stream_type})
        while not backend.processes:
            await asyncio.sleep(0.02)
        await server.stop()
        await asyncio.wait_for(client.session.done.wait(), 5)
        assert backend.cancelled == ["sleep 30"]
        await client.close()

    run(main())


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory):
    directory = tmp_path_factory.mktemp("tls")
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(cert),
         "-days", "1", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"],
        check=True, capture_output=True,
    )
    return cert, key


def test_tls_from_config_with_and_without_client_certificates(tls_files):
    cert, key = tls_files

    async def main():
        section = ApiSection(stream_address="127.0.0.1", stream_port="0", stream_enable_tls=True,
                             stream_tls_cert=str(cert), stream_tls_key=str(key), stream_idle_timeout="1m")
        server = build_stream_server(section, HostBackend())
        assert server.idle_timeout == 60
        await server.start()
        try:
            assert server.url.startswith("https://127.0.0.1:")
            trusting = ssl.create_default_context(cafile=str(cert))
            stdout, _, status = await exec_over_spdy(server.get_exec_url(exec_request(["cat"])), b"secret", tls=trusting)
            assert stdout == b"secret" and json.loads(status)["status"] == "Success"
            stdout, _, _, _ = await exec_over_websocket(server.get_exec_url(exec_request(["cat"])), b"ws", tls=trusting)
            assert stdout == b"ws"
        finally:
            await server.stop()

        # With a CA configured, a client without a certificate is refused at the TLS handshake.
        section = ApiSection(stream_address="127.0.0.1", stream_port="0", stream_enable_tls=True,
                             stream_tls_cert=str(cert), stream_tls_key=str(key), stream_tls_ca=str(cert))
        server = build_stream_server(section, HostBackend())
        await server.start()
        try:
            anonymous = ssl.create_default_context(cafile=str(cert))
            with pytest.raises((ssl.SSLError, ConnectionError, asyncio.IncompleteReadError)):
                await exec_over_spdy(server.get_exec_url(exec_request(["cat"])), b"x", tls=anonymous)
            with_cert = ssl.create_default_context(cafile=str(cert))
            with_cert.load_cert_chain(str(cert), str(key))
            stdout, _, _ = await exec_over_spdy(server.get_exec_url(exec_request(["cat"])), b"mtls", tls=with_cert)
            assert stdout == b"mtls"
        finally:
            await server.stop()

    run(main())


def test_ipv6_url_is_bracketed():
    async def main():
        server = StreamServer(HostBackend(), "::1", 0)
        await server.start()
        try:
            assert server.url == f"http://[::1]:{server.port}"
            stdout, _, _ = await exec_over_spdy(server.get_exec_url(exec_request(["cat"])), b"v6")
            assert stdout == b"v6"
        finally:
            await server.stop()

    run(main())


def test_requests_are_validated_like_the_kubelet_does():
    server = StreamServer(HostBackend(), "127.0.0.1", 0)
    with pytest.raises(InvalidArgument, match="tty and stderr"):
        server.get_exec_url(exec_request(["sh"], tty=True))
    with pytest.raises(InvalidArgument, match="one of stdin, stdout, or stderr"):
        server.get_attach_url(api.AttachRequest(container_id="c1"))
    with pytest.raises(InvalidArgument, match="cmd"):
        server.get_exec_url(exec_request([]))
    with pytest.raises(InvalidArgument, match="pod_sandbox_id"):
        server.get_port_forward_url(api.PortForwardRequest(port=[80]))
    assert TerminalSize(80, 24) == TerminalSize(width=80, height=24)
