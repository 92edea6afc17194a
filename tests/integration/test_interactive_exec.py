"""Interactive exec (runtime/interactive.py) against real containers.

Each test starts a pod monitor and a container (`sleep`) through the monitor
harness, then runs commands in it with InteractiveExec over pipes or a
pseudo terminal on the container's devpts. Every test also checks that no
fd of ours was left open and no helper process is left over.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import re
import socket
import subprocess
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import psutil
import pytest

from crio_fast._native import monitor_path
from crio_fast.runtime import ExecPlan, exec_sync
from crio_fast.runtime.interactive import ExecOutcome, InteractiveExec
from tests.support.monitor_fixtures import MONITOR_TEST_MARKS
from tests.support.monitor_harness import ENV, Harness, private_harness

pytestmark = MONITOR_TEST_MARKS


class Container:
    """A running `sleep` container and a way to exec in it."""

    def __init__(self, harness: Harness) -> None:
        self.monitor = harness.spawn()
        self.pid = harness.start(self.monitor, "c", harness.plan("c", ["/bin/sleep", "1000"]))
        self.binary = str(monitor_path())

    def plan(self, argv: list[str], **fields: object) -> ExecPlan:
        return ExecPlan(target_pid=self.pid, argv=argv, env=list(ENV), cwd="/", **fields)

    async def start(self, argv: list[str], *, stdin: bool = False, stdout: bool = True, stderr: bool = True,
                    tty: bool = False, size: tuple[int, int] | None = None) -> InteractiveExec:
        return await InteractiveExec.start(self.binary, self.plan(argv), stdin=stdin, stdout=stdout, stderr=stderr,
                                           tty=tty, size=size)

    def processes(self) -> str:
        """The container's process list, by ExecSync."""
        return exec_sync(self.binary, self.plan(["ps", "-o", "args"]), timeout=10).stdout.decode()


@pytest.fixture
def container(rootfs: Path):
    fds_before = set(os.listdir("/proc/self/fd"))
    children_before = {child.pid for child in psutil.Process().children()}
    with private_harness(rootfs) as harness:
        yield Container(harness)
    # Left-over fds of ours (pipes, the terminal, pidfds) would show here.
    assert set(os.listdir("/proc/self/fd")) <= fds_before
    assert {child.pid for child in psutil.Process().children()} <= children_before


def run(body: Callable[[], Awaitable[object]]) -> object:
    return asyncio.run(asyncio.wait_for(body(), 30))


async def read_all(read: Callable[[], Awaitable[bytes]]) -> bytes:
    collected = bytearray()
    while chunk := await read():
        assert len(chunk) <= 65536
        collected += chunk
    return bytes(collected)


async def finish(process: InteractiveExec) -> ExecOutcome:
    outcome = await process.wait()
    await process.close()
    return outcome


def test_stdin_is_streamed_through_cat_to_stdout(container: Container) -> None:
    async def body() -> None:
        process = await container.start(["cat"], stdin=True)
        await process.write_stdin(b"hello\n")
        assert await process.read_stdout() == b"hello\n", "cat echoes each write before stdin is closed"
        await process.write_stdin(b"second")
        await process.close_stdin()
        assert await read_all(process.read_stdout) == b"second"
        assert await read_all(process.read_stderr) == b""
        assert await finish(process) == ExecOutcome(exit_code=0)

    run(body)


def test_fifty_megabytes_through_cat(container: Container) -> None:
    size = 50 * 1024 * 1024
    payload = os.urandom(1024 * 1024) * 50

    async def body() -> float:
        process = await container.start(["cat"], stdin=True, stderr=False)
        started = time.monotonic()

        async def feed() -> None:
            view = memoryview(payload)
            for offset in range(0, size, 256 * 1024):
                await process.write_stdin(view[offset:offset + 256 * 1024])
            await process.close_stdin()

        feeding = asyncio.ensure_future(feed())
        digest = hashlib.sha256()
        received = 0
        while chunk := await process.read_stdout():
            digest.update(chunk)
            received += len(chunk)
        await feeding
        elapsed = time.monotonic() - started
        assert received == size
        assert digest.hexdigest() == hashlib.sha256(payload).hexdigest()
        assert await finish(process) == ExecOutcome(exit_code=0)
        return elapsed

    elapsed = run(body)
    print(f"\n50 MiB stdin -> cat -> stdout: {elapsed:.3f} s, {size / elapsed / 1e6:.0f} MB/s")


def test_exit_code_and_separate_stderr(container: Container) -> None:
    async def body() -> None:
        process = await container.start(["/bin/sh", "-c", "echo out; echo err >&2; exit 7"])
        stdout, stderr = await asyncio.gather(read_all(process.read_stdout), read_all(process.read_stderr))
        assert (stdout, stderr) == (b"out\n", b"err\n")
        assert await finish(process) == ExecOutcome(exit_code=7)

    run(body)


def test_streams_not_requested_are_dev_null(container: Container) -> None:
    async def body() -> None:
        process = await container.start(["/bin/sh", "-c", "readlink /proc/self/fd/0 >&2; echo dropped"],
                                        stdout=False)
        assert await read_all(process.read_stderr) == b"/dev/null\n"
        assert await process.read_stdout() == b""
        with pytest.raises(ValueError):
            await process.write_stdin(b"x")
        assert await finish(process) == ExecOutcome(exit_code=0)

    run(body)


def test_missing_command_is_an_error_with_127(container: Container) -> None:
    async def body() -> None:
        process = await container.start(["/bin/nope"], stdin=True)
        outcome = await finish(process)
        assert outcome.exit_code == 127
        assert outcome.error == "exec: /bin/nope: No such file or directory"
        process = await container.start(["nope"], tty=True)
        assert await read_all(process.read_stdout) == b""
        outcome = await finish(process)
        assert outcome.exit_code == 127 and outcome.error is not None and "nope" in outcome.error

    run(body)


def test_tty_is_the_containers_pseudo_terminal(container: Container) -> None:
    async def body() -> None:
        process = await container.start(
            ["/bin/sh", "-c", "tty; test -t 0 && echo stdin-is-a-tty; echo to-stderr >&2"], tty=True, stdin=True)
        assert process.tty
        output = (await read_all(process.read_stdout)).decode()
        assert await process.read_stderr() == b""
        assert re.match(r"/dev/pts/\d+\r\nstdin-is-a-tty\r\nto-stderr\r\n$", output), output
        assert await finish(process) == ExecOutcome(exit_code=0)

    run(body)


def test_tty_size_and_resize(container: Container) -> None:
    async def body() -> None:
        script = "stty size; read line; stty size"
        process = await container.start(["/bin/sh", "-c", script], tty=True, stdin=True, size=(80, 25))
        first = b""
        while b"\n" not in first:
            first += await process.read_stdout()
        assert first == b"25 80\r\n"
        process.resize(100, 40)
        await process.write_stdin(b"go\n")
        rest = (await read_all(process.read_stdout)).decode()
        assert rest.endswith("40 100\r\n"), rest
        assert await finish(process) == ExecOutcome(exit_code=0)

    run(body)


def test_tty_close_stdin_sends_end_of_file(container: Container) -> None:
    async def body() -> None:
        process = await container.start(["cat"], tty=True, stdin=True)
        await process.write_stdin(b"typed\n")
        await process.close_stdin()
        output = await read_all(process.read_stdout)
        # The terminal echoes the input, then cat writes the line back.
        assert output == b"typed\r\ntyped\r\n"
        assert await finish(process) == ExecOutcome(exit_code=0)
        with pytest.raises(BrokenPipeError):
            await process.write_stdin(b"more")

    run(body)


def test_kill_ends_the_command_and_leaves_no_process(container: Container) -> None:
    async def body(tty: bool) -> None:
        process = await container.start(["/bin/sleep", "777"], tty=tty, stdin=True)
        deadline = time.monotonic() + 5
        while "sleep 777" not in container.processes():
            assert time.monotonic() < deadline, "the command never showed up in the container"
            await asyncio.sleep(0.02)
        helper = psutil.Process(process.pid)
        started = time.monotonic()
        await process.kill()
        await process.kill()  # idempotent
        assert time.monotonic() - started < 2, "the helper obeyed SIGTERM without the SIGKILL fallback"
        outcome = await finish(process)
        assert outcome == ExecOutcome(exit_code=137, signal=9)
        assert not helper.is_running(), "the helper was reaped"
        assert "sleep 777" not in container.processes()

    run(lambda: body(False))
    run(lambda: body(True))


def test_back_pressure_when_nobody_reads(container: Container) -> None:
    async def body() -> None:
        # The command never reads its stdin, so writes must wait once the
        # pipe is full instead of buffering without bound.
        process = await container.start(["/bin/sleep", "1000"], stdin=True)
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(process.write_stdin(b"x" * (8 << 20)), 0.5)
        await process.kill()
        await process.close()

    run(body)


def test_tty_belongs_to_the_commands_user(container: Container) -> None:
    async def body() -> None:
        process = await InteractiveExec.start(
            container.binary, container.plan(["/bin/sh", "-c", "id -u; stat -c %u $(tty)"], uid=1234, gid=1234),
            stdin=False, stdout=True, stderr=False, tty=True)
        assert (await read_all(process.read_stdout)).split() == [b"1234", b"1234"]
        assert await finish(process) == ExecOutcome(exit_code=0)

    run(body)


def test_helper_pairs_tty_with_the_console_fd(container: Container) -> None:
    no_console = exec_sync(container.binary, container.plan(["true"], tty=True), timeout=10)
    assert no_console.exit_code == 1 and no_console.error == "a TTY exec needs --console-fd"

    plan_read, plan_write = os.pipe()
    status_read, status_write = os.pipe()
    console = socket.socketpair()
    open_fds = {plan_read, plan_write, status_read, status_write}
    try:
        os.write(plan_write, container.plan(["true"]).encode())
        os.close(plan_write)  # EOF ends the plan
        open_fds.remove(plan_write)
        helper = subprocess.run(
            [container.binary, "exec", "--plan-fd", str(plan_read), "--status-fd", str(status_write),
             "--console-fd", str(console[1].fileno())],
            pass_fds=(plan_read, status_write, console[1].fileno()), capture_output=True, timeout=10)
        os.set_blocking(status_read, False)
        status = os.read(status_read, 4096)
    finally:
        for fd in open_fds:
            os.close(fd)
        for sock in console:
            sock.close()
    assert helper.returncode == 1
    assert status == b"error 22 --console-fd without TTY in the plan\n"
