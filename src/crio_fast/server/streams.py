"""The engine side of Exec, Attach and PortForward.

The CRI RPCs validate a request and hand back a URL of the streaming server
(``crio_fast.streaming``); when a client connects there, the server calls this
backend with the cached request and the client's streams:

- exec: the native exec helper joins the container (any runtime handler: it
  enters the namespaces and cgroups of the container's init directly), with
  pipes or a pseudo terminal allocated inside the container;
- attach: a connection to the pod monitor, which holds the container's stdio;
- port-forward: a TCP connection made from inside the pod's network namespace.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Awaitable, Callable

from crio_fast.api import api_pb2 as pb
from crio_fast.container.manager import ContainerManager
from crio_fast.errors import FailedPrecondition, InvalidArgument
from crio_fast.network.portforward import connect_pod_port
from crio_fast.runtime.attach import AttachStream
from crio_fast.runtime.interactive import InteractiveExec
from crio_fast.runtime.monitor import MonitorError
from crio_fast.sandbox.manager import SandboxManager
from crio_fast.state.records import CTR_RUNNING, POD_READY, decode_container_config
from crio_fast.streaming.backend import RemoteCommandIO
from crio_fast.validation import check_command

log = logging.getLogger("crio_fast.streams")

# After an exec'd command exits, how long its output may still drain: a
# background process it left behind can hold stdout open for ever.
OUTPUT_DRAIN_SECONDS = 2.0


class EngineStreamingBackend:
    """StreamingBackend over the container and sandbox managers."""

    def __init__(self, containers: ContainerManager, sandboxes: SandboxManager, monitor_path: str) -> None:
        self.containers = containers
        self.sandboxes = sandboxes
        self.monitor_path = monitor_path

    # -- validation at RPC time -------------------------------------------

    # The streaming server checks the shape of a request (ids, stdio flags)
    # when it hands out the URL; these check what only the engine knows.

    def check_exec(self, request: pb.ExecRequest) -> None:
        check_command(request.cmd, "cmd")
        if request.container_id:
            self._running_container(request.container_id)

    def check_attach(self, request: pb.AttachRequest) -> None:
        if request.container_id:
            self._running_container(request.container_id)

    def check_port_forward(self, request: pb.PortForwardRequest) -> None:
        if not request.pod_sandbox_id:
            return
        for port in request.port:
            if not 0 < port < 65536:
                raise InvalidArgument(f"PortForward: port {port} is out of range")
        self._ready_pod(request.pod_sandbox_id)

    def _running_container(self, container_id: str):
        record = self.containers.get(container_id)
        self.containers.refresh(record)
        if record.state != CTR_RUNNING:
            raise FailedPrecondition(f"container {record.id} is {record.state}, not running")
        return record

    def _ready_pod(self, pod_id: str):
        record = self.sandboxes.get(pod_id)
        if record.state != POD_READY:
            raise FailedPrecondition(f"pod sandbox {record.id} is not ready")
        return record

    # -- StreamingBackend --------------------------------------------------

    async def exec(self, request: pb.ExecRequest, io: RemoteCommandIO) -> int:
        plan = await asyncio.to_thread(self.containers.streaming_exec_plan, request.container_id, list(request.cmd))
        plan.tty = request.tty
        process = await InteractiveExec.start(
            self.monitor_path, plan, stdin=io.stdin is not None, stdout=request.stdout,
            stderr=request.stderr and not request.tty, tty=request.tty,
        )
        outputs = [asyncio.create_task(_pump(process.read_stdout, io.write_stdout))]
        if request.stderr and not request.tty:
            outputs.append(asyncio.create_task(_pump(process.read_stderr, io.write_stderr)))
        inputs = []
        if io.stdin is not None:
            inputs.append(asyncio.create_task(_feed(io.stdin, process.write_stdin, process.close_stdin)))
        if io.resizes is not None:
            inputs.append(asyncio.create_task(_resize(io.resizes, process.resize)))
        try:
            outcome = await process.wait()
            _, pending = await asyncio.wait(outputs, timeout=OUTPUT_DRAIN_SECONDS)
            if pending:
                log.info("exec in %s: output still open %.0fs after the command exited; closing it",
                         request.container_id[:12], OUTPUT_DRAIN_SECONDS)
        except BaseException:
            await process.kill()
            raise
        finally:
            for task in (*outputs, *inputs):
                task.cancel()
            await asyncio.gather(*outputs, *inputs, return_exceptions=True)
            await process.close()
        if outcome.error:
            # The command never ran (not found, not executable): say why where the user looks.
            message = f"{outcome.error}\r\n" if request.tty else f"{outcome.error}\n"
            await (io.write_stdout if request.tty else io.write_stderr)(message.encode())
        return outcome.exit_code

    async def attach(self, request: pb.AttachRequest, io: RemoteCommandIO) -> None:
        record = await asyncio.to_thread(self._running_container, request.container_id)
        pod = self.sandboxes.get(record.pod_id)
        stdin_once = decode_container_config(record.config).stdin_once
        try:
            stream = await AttachStream.open(pod.pod_dir, record.id, stdin=io.stdin is not None)
        except MonitorError as exc:
            raise FailedPrecondition(f"attach to {record.id}: {exc}") from exc
        close_stdin_after = stdin_once and io.stdin is not None and stream.has_stdin
        helpers = []
        if io.stdin is not None and stream.has_stdin:
            helpers.append(asyncio.create_task(
                _feed(io.stdin, stream.write_stdin, stream.close_stdin if stdin_once else _nothing)))
        if io.resizes is not None:
            helpers.append(asyncio.create_task(_resize(io.resizes, stream.resize)))
        try:
            while True:
                item = await stream.read()
                if item is None or item[0] == "exit":
                    break
                kind, data = item
                await (io.write_stderr if kind == "stderr" else io.write_stdout)(data)
        finally:
            for task in helpers:
                task.cancel()
            await asyncio.gather(*helpers, return_exceptions=True)
            if close_stdin_after:
                # stdin_once: the container's stdin ends with the first attach session.
                with contextlib.suppress(MonitorError, OSError):
                    await stream.close_stdin()
            await stream.close()

    async def port_forward(self, pod_sandbox_id: str, port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        pod = self._ready_pod(pod_sandbox_id)
        netns = pod.ns_paths.get("net") if pod.namespaces.get("net") == "new" else None
        try:
            return await connect_pod_port(netns, port)
        except OSError as exc:
            raise FailedPrecondition(f"port-forward to pod {pod.id[:12]} port {port}: {exc}") from exc


async def _nothing() -> None:
    return None


async def _pump(read: Callable[[], Awaitable[bytes]], write: Callable[[bytes], Awaitable[None]]) -> None:
    while data := await read():
        await write(data)


async def _feed(source: asyncio.StreamReader, write: Callable[[bytes], Awaitable[None]],
                close: Callable[[], Awaitable[None]]) -> None:
    while data := await source.read(65536):
        await write(data)
    await close()


async def _resize(sizes: asyncio.Queue, apply: Callable[[int, int], object]) -> None:
    while True:
        size = await sizes.get()
        result = apply(size.width, size.height)
        if asyncio.iscoroutine(result):
            await result

