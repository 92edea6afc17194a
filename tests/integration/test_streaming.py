"""Exec, Attach and PortForward end to end: CRI RPC -> URL -> the daemon's streaming
server -> real containers, with test clients that speak what client-go speaks
(SPDY/3.1 and WebSocket)."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import re
import time

import grpc
import pytest

from crio_fast.api import api_pb2 as api
from tests.support.oci_runtimes import configure_oci_runtimes, handler_problem
from tests.support.pods import (
    daemon_with_busybox, kubelet_pod_linux, run_container, run_pod, start, status, wait_exited, wait_for,
    wait_for_command,
)
from tests.support.streamclient import (
    PortForwardClient,
    UpgradeRefused,
    exec_over_spdy,
    exec_over_websocket,
    port_forward_over_websocket,
)

pytestmark = pytest.mark.integration

HTTP_PORT = 8080
PAGE = b"hello from the pod\n"


@pytest.fixture(scope="module")
def cri(registry, busybox_image, tmp_path_factory):
    with daemon_with_busybox(registry, busybox_image, tmp_path_factory.mktemp("streaming")) as d:
        yield d


@pytest.fixture(scope="module")
def sleeper(cri):
    container_id = run_container(cri, ["/bin/sleep", "3600"])[1]
    wait_for_command(cri, container_id, ["/bin/sleep", "3600"])
    return container_id


def exec_url(d, container_id: str, cmd: list[str], *, stdin=False, stdout=True, stderr=True, tty=False) -> str:
    request = api.ExecRequest(container_id=container_id, cmd=cmd, stdin=stdin, stdout=stdout, stderr=stderr, tty=tty)
    url = d.client.runtime.Exec(request, timeout=10).url
    assert url.startswith("http://127.0.0.1:") and "/exec/" in url, url
    return url


def attach_url(d, container_id: str, *, stdin=False, stdout=True, stderr=True, tty=False) -> str:
    request = api.AttachRequest(container_id=container_id, stdin=stdin, stdout=stdout, stderr=stderr, tty=tty)
    return d.client.runtime.Attach(request, timeout=10).url


def exit_code_of(status_json: bytes) -> int:
    st = json.loads(status_json)
    if st["status"] == "Success":
        return 0
    assert st["reason"] == "NonZeroExitCode", st
    return int(next(c["message"] for c in st["details"]["causes"] if c["reason"] == "ExitCode"))


def run(coro):
    return asyncio.run(coro)


def create_with(d, pod_id: str, pod: api.PodSandboxConfig, command: list[str], **fields) -> str:
    config = api.ContainerConfig(metadata=api.ContainerMetadata(name=f"s{time.monotonic_ns()}"),
                                 image=api.ImageSpec(image=d.image), command=command, log_path="ctr.log", **fields)
    request = api.CreateContainerRequest(pod_sandbox_id=pod_id, config=config, sandbox_config=pod)
    container_id = d.client.runtime.CreateContainer(request, timeout=30).container_id
    start(d, container_id)
    return container_id


# -- Exec -----------------------------------------------------------------------


def test_exec_exit_code_and_separate_streams(cri, sleeper):
    url = exec_url(cri, sleeper, ["sh", "-c", "echo out; echo err >&2; exit 7"])
    stdout, stderr, st = run(exec_over_spdy(url))
    assert (stdout, stderr, exit_code_of(st)) == (b"out\n", b"err\n", 7)
    url = exec_url(cri, sleeper, ["/bin/true"])
    assert exit_code_of(run(exec_over_spdy(url))[2]) == 0


def test_exec_runs_inside_the_container(cri, sleeper):
    url = exec_url(cri, sleeper, ["sh", "-c", "hostname; cat /proc/1/cmdline | tr '\\0' ' '"])
    stdout, _, st = run(exec_over_spdy(url))
    assert exit_code_of(st) == 0
    assert stdout.split(b"\n")[1].strip() == b"/bin/sleep 3600", stdout


def test_exec_stdin_50_megabytes_round_trip(cri, sleeper):
    payload = os.urandom(50 * 1024 * 1024)
    url = exec_url(cri, sleeper, ["cat"], stdin=True, stderr=False)
    started = time.monotonic()
    stdout, _, st = run(exec_over_spdy(url, payload, stderr=False, timeout=120))
    seconds = time.monotonic() - started
    print(f"\n50 MiB through exec stdin -> cat -> stdout over SPDY: {seconds:.2f}s ({50 / seconds:.0f} MiB/s)")
    assert exit_code_of(st) == 0
    assert len(stdout) == len(payload)
    assert hashlib.sha256(stdout).digest() == hashlib.sha256(payload).digest()


def test_exec_tty_is_the_containers_terminal_and_resizes(cri, sleeper):
    url = exec_url(cri, sleeper, ["sh", "-c", "tty; sleep 0.5; stty size"], tty=True, stderr=False)
    stdout, stderr, st = run(exec_over_spdy(url, tty=True, stderr=False, resizes=[(132, 43)]))
    assert exit_code_of(st) == 0 and stderr == b""
    lines = stdout.decode().split("\r\n")
    assert re.fullmatch(r"/dev/pts/\d+", lines[0]), stdout
    assert lines[1] == "43 132", stdout


def test_exec_missing_command_reports_why(cri, sleeper):
    url = exec_url(cri, sleeper, ["/bin/nope"])
    _, stderr, st = run(exec_over_spdy(url))
    assert exit_code_of(st) == 127
    assert b"/bin/nope" in stderr and b"No such file" in stderr, stderr


@pytest.mark.parametrize("protocol", ["v5.channel.k8s.io", "v4.channel.k8s.io", "v4.base64.channel.k8s.io"])
def test_exec_over_websocket(cri, sleeper, protocol):
    stdin = b"over websocket\n" if protocol == "v5.channel.k8s.io" else None  # only v5 can close stdin
    cmd = ["cat"] if stdin else ["sh", "-c", "echo over websocket; exit 4"]
    url = exec_url(cri, sleeper, cmd, stdin=stdin is not None)
    stdout, _, error, negotiated = run(exec_over_websocket(url, stdin, protocol=protocol))
    assert negotiated == protocol
    assert stdout == b"over websocket\n"
    assert exit_code_of(error) == (0 if stdin else 4)


def test_exec_client_hangup_kills_the_command(cri, sleeper):
    url = exec_url(cri, sleeper, ["sh", "-c", "exec sleep 1234"])

    async def hang_up():
        with pytest.raises(asyncio.TimeoutError):
            await exec_over_spdy(url, timeout=1.0)

    run(hang_up())
    out = cri.client.runtime.ExecSync(api.ExecSyncRequest(container_id=sleeper, cmd=["ps", "-o", "args"], timeout=10),
                                      timeout=20).stdout
    wait_for(lambda: b"sleep 1234" not in cri.client.runtime.ExecSync(
        api.ExecSyncRequest(container_id=sleeper, cmd=["ps", "-o", "args"], timeout=10), timeout=20).stdout,
        what="the exec'd sleep to be killed")
    assert b"sleep 3600" in out


def test_exec_token_is_single_use(cri, sleeper):
    url = exec_url(cri, sleeper, ["/bin/true"])
    assert exit_code_of(run(exec_over_spdy(url))[2]) == 0
    with pytest.raises(UpgradeRefused) as refused:
        run(exec_over_spdy(url))
    assert refused.value.status == 404


def test_exec_and_attach_errors(cri, sleeper):
    rt = cri.client.runtime
    bad = [
        (rt.Exec, api.ExecRequest(container_id="nope", cmd=["true"], stdout=True), grpc.StatusCode.NOT_FOUND),
        (rt.Exec, api.ExecRequest(container_id=sleeper, cmd=[], stdout=True), grpc.StatusCode.INVALID_ARGUMENT),
        (rt.Exec, api.ExecRequest(container_id=sleeper, cmd=["sh"], tty=True, stdout=True, stderr=True),
         grpc.StatusCode.INVALID_ARGUMENT),
        (rt.Exec, api.ExecRequest(container_id=sleeper, cmd=["sh"]), grpc.StatusCode.INVALID_ARGUMENT),
        (rt.Attach, api.AttachRequest(container_id="nope", stdout=True), grpc.StatusCode.NOT_FOUND),
        (rt.PortForward, api.PortForwardRequest(pod_sandbox_id="nope", port=[80]), grpc.StatusCode.NOT_FOUND),
    ]
    for call, request, code in bad:
        with pytest.raises(grpc.RpcError) as err:
            call(request, timeout=10)
        assert err.value.code() == code, (request, err.value.details())
        assert err.value.details()
    pod_id, exited = run_container(cri, ["/bin/true"])
    wait_exited(cri, exited)
    with pytest.raises(grpc.RpcError) as err:
        rt.Exec(api.ExecRequest(container_id=exited, cmd=["true"], stdout=True), timeout=10)
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION and "not running" in err.value.details()


# -- Attach ---------------------------------------------------------------------


def test_attach_stdin_once_echoes_and_ends_the_container(cri):
    pod_id, pod = run_pod(cri)
    ctr = create_with(cri, pod_id, pod, ["cat"], stdin=True, stdin_once=True)
    url = attach_url(cri, ctr, stdin=True)
    stdout, _, st = run(exec_over_spdy(url, b"attached input\n"))
    assert stdout == b"attached input\n"
    assert exit_code_of(st) == 0
    # stdin_once: the end of the first attach closed the container's stdin, so cat finished.
    assert wait_exited(cri, ctr).exit_code == 0


def test_attach_tty_shell_with_resize(cri):
    pod_id, pod = run_pod(cri)
    ctr = create_with(cri, pod_id, pod, ["sh"], stdin=True, tty=True)
    url = attach_url(cri, ctr, stdin=True, tty=True, stderr=False)
    script = b"sleep 0.3; stty size; echo done-$((6*7)); exit 5\n"
    stdout, _, st = run(exec_over_spdy(url, script, tty=True, stderr=False, resizes=[(101, 37)]))
    assert b"37 101" in stdout and b"done-42" in stdout, stdout
    assert wait_exited(cri, ctr).exit_code == 5


def test_two_attachers_and_detach_leaves_it_running(cri):
    pod_id, pod = run_pod(cri)
    ctr = create_with(cri, pod_id, pod, ["sh", "-c", "i=0; while true; do i=$((i+1)); echo tick $i; sleep 0.05; done"])

    async def two_attachers():
        results = await asyncio.gather(
            *(exec_over_spdy(attach_url(cri, ctr), timeout=1.0) for _ in range(2)), return_exceptions=True)
        return results

    # Each attach session is cut by its client after a second (the container never exits).
    results = run(two_attachers())
    assert all(isinstance(r, asyncio.TimeoutError) for r in results), results

    async def read_some():
        from tests.support.streamclient import spdy_connect
        client = await spdy_connect(attach_url(cri, ctr), ["v4.channel.k8s.io"])
        try:
            await client.open_stream({"streamType": "error"})
            out = await client.open_stream({"streamType": "stdout"})
            await client.open_stream({"streamType": "stderr"})
            data = b""
            while data.count(b"\n") < 5:
                data += await asyncio.wait_for(out.reader.read(4096), 5)
            return data
        finally:
            await client.close()

    async def both():
        return await asyncio.wait_for(asyncio.gather(read_some(), read_some()), 20)

    first, second = run(both())
    assert b"tick" in first and b"tick" in second
    assert status(cri, ctr).state == api.ContainerState.CONTAINER_RUNNING


# -- PortForward ----------------------------------------------------------------


@pytest.fixture(scope="module")
def web_pod(cri):
    pod_id, pod = run_pod(cri)
    create_with(cri, pod_id, pod, ["sh", "-c", f"mkdir -p /www && printf '{PAGE.decode().strip()}\\n' > /www/index.html"
                                              f" && exec /bin/httpd -f -p 127.0.0.1:{HTTP_PORT} -h /www"])
    wait_for(lambda: cri.client.runtime.ExecSync(api.ExecSyncRequest(
        container_id=cri.client.runtime.ListContainers(api.ListContainersRequest(
            filter=api.ContainerFilter(pod_sandbox_id=pod_id)), timeout=10).containers[0].id,
        cmd=["sh", "-c", f"netstat -ltn | grep -q :{HTTP_PORT}"], timeout=5), timeout=15).exit_code == 0,
        what="httpd to listen")
    return pod_id


def http_get(host: str = "localhost") -> bytes:
    return f"GET /index.html HTTP/1.0\r\nHost: {host}\r\n\r\n".encode()


def test_port_forward_ten_concurrent_connections(cri, web_pod):
    url = cri.client.runtime.PortForward(api.PortForwardRequest(pod_sandbox_id=web_pod, port=[HTTP_PORT]),
                                         timeout=10).url
    assert "/portforward/" in url

    async def fetch_all():
        client = await PortForwardClient.open(url)
        try:
            async def one():
                conn = await client.connect(HTTP_PORT)
                await conn.send(http_get())
                return await conn.receive_all()
            return await asyncio.wait_for(asyncio.gather(*(one() for _ in range(10))), 30)
        finally:
            await client.close()

    responses = run(fetch_all())
    assert len(responses) == 10
    for response in responses:
        assert response.startswith(b"HTTP/1.") and b" 200 " in response.split(b"\r\n")[0], response[:200]
        assert response.endswith(PAGE), response[-200:]


def test_port_forward_over_websocket_and_refused_port(cri, web_pod):
    url = cri.client.runtime.PortForward(api.PortForwardRequest(pod_sandbox_id=web_pod, port=[HTTP_PORT]),
                                         timeout=10).url
    data, error = run(port_forward_over_websocket(url, HTTP_PORT, http_get()))
    assert data.endswith(PAGE) and error == b"", (data[:200], error)

    url = cri.client.runtime.PortForward(api.PortForwardRequest(pod_sandbox_id=web_pod, port=[HTTP_PORT + 1]),
                                         timeout=10).url

    async def refused():
        client = await PortForwardClient.open(url)
        try:
            conn = await client.connect(HTTP_PORT + 1)
            return await asyncio.wait_for(conn.error_text(), 10)
        finally:
            await client.close()

    message = run(refused())
    assert str(HTTP_PORT + 1).encode() in message and b"refused" in message.lower(), message


# -- External OCI handlers: the same streams, containers made by runc/crun -------


@pytest.fixture(scope="module")
def oci_cri(registry, busybox_image, tmp_path_factory):
    with daemon_with_busybox(registry, busybox_image, tmp_path_factory.mktemp("streaming-oci"),
                             configure=configure_oci_runtimes) as d:
        yield d


@pytest.mark.parametrize("handler", ["runc", "crun"])
def test_exec_and_attach_on_oci_handlers(oci_cri, handler):
    problem = handler_problem(handler)
    if problem:
        pytest.fail(problem)  # both run on the project's machines: a missing one is a broken setup
    d = oci_cri
    config = api.PodSandboxConfig(
        metadata=api.PodSandboxMetadata(name=f"oci-{handler}", namespace="streaming", uid=f"oci-{handler}"),
        log_directory=str(d.dirs.log_dir / f"oci-{handler}"), linux=kubelet_pod_linux())
    pod_id = d.client.runtime.RunPodSandbox(api.RunPodSandboxRequest(config=config, runtime_handler=handler),
                                            timeout=60).pod_sandbox_id
    sleeper = create_with(d, pod_id, config, ["/bin/sleep", "3600"])
    wait_for_command(d, sleeper, ["/bin/sleep", "3600"])
    url = exec_url(d, sleeper, ["sh", "-c", "tty; cat /proc/1/cmdline | tr '\\0' ' '"], tty=True, stderr=False)
    stdout, _, st = run(exec_over_spdy(url, tty=True, stderr=False))
    lines = stdout.decode().split("\r\n")
    assert exit_code_of(st) == 0 and re.fullmatch(r"/dev/pts/\d+", lines[0]), stdout
    assert lines[1].strip() == "/bin/sleep 3600", stdout

    catter = create_with(d, pod_id, config, ["cat"], stdin=True, stdin_once=True)
    stdout, _, st = run(exec_over_spdy(attach_url(d, catter, stdin=True), b"through the monitor\n"))
    assert stdout == b"through the monitor\n" and exit_code_of(st) == 0
    assert wait_exited(d, catter).exit_code == 0
