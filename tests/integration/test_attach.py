"""ATTACH: real pod monitors and containers, attach streams through AttachStream.

Uses the harness of test_monitor.py (private dir under /tmp, busybox rootfs,
every monitor shut down and every mount removed whatever the test did).
"""

from __future__ import annotations

import asyncio
import dataclasses
import errno
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest

from crio_fast.container import oci
from crio_fast.runtime import MonitorError
from crio_fast.runtime.monitor import OciRuntimeCall
from crio_fast.runtime.attach import AttachStream
from tests.support.monitor_fixtures import MONITOR_TEST_MARKS
from tests.support.monitor_harness import Harness
from tests.support.oci_runtimes import CRUN, RUNC, handler_problem

pytestmark = MONITOR_TEST_MARKS


TICKER = ["/bin/sh", "-c", "while true; do echo tick; sleep 0.1; done"]


class Received:
    """What one attacher has read so far."""

    def __init__(self) -> None:
        self.stdout = bytearray()
        self.stderr = bytearray()
        self.exit: bytes | None = None
        self.ended = False  # the monitor closed the stream


async def read_until(stream: AttachStream, done: Callable[[Received], bool], received: Received | None = None,
                     timeout: float = 5.0) -> Received:
    received = received or Received()
    deadline = time.monotonic() + timeout
    while not done(received):
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise AssertionError(f"timed out; stdout so far {bytes(received.stdout[-200:])!r}, "
                                 f"exit {received.exit!r}, ended {received.ended}")
        item = await asyncio.wait_for(stream.read(), remaining)
        if item is None:
            received.ended = True
            if not done(received):
                raise AssertionError(f"stream ended early; stdout {bytes(received.stdout[-200:])!r}")
            break
        kind, data = item
        if kind == "exit":
            received.exit = data
        else:
            getattr(received, kind).extend(data)
    return received


def ticks(count: int) -> Callable[[Received], bool]:
    return lambda r: r.stdout.count(b"tick\n") >= count


def pod_dir(monitor) -> Path:
    return Path(monitor.pod_dir)


def test_attacher_receives_output_and_the_log_still_has_it(harness: Harness) -> None:
    monitor = harness.spawn()
    harness.start(monitor, "c", harness.plan("c", TICKER))

    async def scenario() -> None:
        async with await AttachStream.open(pod_dir(monitor), "c", stdin=False) as stream:
            assert (stream.has_stdin, stream.tty) == (False, False)
            received = await read_until(stream, ticks(3))
            assert set(bytes(received.stdout).split(b"\n")) <= {b"tick", b""}

    asyncio.run(scenario())
    assert harness.output("c").count("tick\n") >= 3


def test_two_attachers_both_receive_and_detaching_leaves_the_container_running(harness: Harness) -> None:
    monitor = harness.spawn()
    harness.start(monitor, "c", harness.plan("c", TICKER))

    async def scenario() -> None:
        first = await AttachStream.open(pod_dir(monitor), "c", stdin=False)
        second = await AttachStream.open(pod_dir(monitor), "c", stdin=True)
        try:
            await asyncio.gather(read_until(first, ticks(2)), read_until(second, ticks(2)))
            await first.close()
            await read_until(second, ticks(3))  # the other attacher is unaffected
        finally:
            await first.close()
            await second.close()

    asyncio.run(scenario())
    time.sleep(0.3)
    state = monitor.state("c")
    assert state.status == "running", "detaching stops nothing"
    before = harness.output("c").count("tick\n")
    time.sleep(0.3)
    assert harness.output("c").count("tick\n") > before, "and the container keeps writing its log"


def test_stdin_reaches_the_container_and_close_stdin_ends_it(harness: Harness) -> None:
    monitor = harness.spawn()
    harness.start(monitor, "cat", harness.plan("cat", ["/bin/cat"], stdin=True))

    async def scenario() -> Received:
        async with await AttachStream.open(pod_dir(monitor), "cat", stdin=True) as stream:
            assert (stream.has_stdin, stream.tty) == (True, False)
            await stream.write_stdin(b"hello attach\n")
            received = await read_until(stream, lambda r: b"hello attach\n" in r.stdout)
            # 256 KiB: several packets, more than a pipe holds (no \r: the log reader would split there).
            big = (bytes(range(32, 127)) + b"\n") * 2731
            await stream.write_stdin(big + b"\n")
            received = await read_until(stream, lambda r: len(r.stdout) >= 13 + len(big) + 1, received)
            assert bytes(received.stdout) == b"hello attach\n" + big + b"\n"
            await stream.close_stdin()
            received = await read_until(stream, lambda r: r.ended, received)
            with pytest.raises(MonitorError) as closed:
                await stream.write_stdin(b"too late\n")
            assert closed.value.code == errno.EPIPE
            return received

    received = asyncio.run(scenario())
    assert received.exit == b"0", "cat exits 0 at end of input; the exit packet comes last"
    assert harness.wait_exit("cat").exit_code == 0
    assert "hello attach\n" in harness.output("cat")


def test_input_larger_than_the_pipe_is_delivered_after_the_client_hung_up(harness: Harness) -> None:
    stderr_path = harness.base / "monitor.stderr"
    monitor = harness.spawn(stderr_path=str(stderr_path))
    # Reads nothing for a while: the stdin pipe fills and the monitor holds the rest back.
    harness.start(monitor, "late", harness.plan("late", ["/bin/sh", "-c", "sleep 0.5; exec cat"], stdin=True))
    line = b"x" * 1023 + b"\n"

    async def scenario() -> None:
        stream = await AttachStream.open(pod_dir(monitor), "late", stdin=True)
        await stream.write_stdin(line * 400)  # 400 KiB: pipe, monitor and socket buffers all fill
        await stream.close()  # gone before cat has read most of it

    asyncio.run(scenario())
    # Counted in the raw log while the monitor writes it: a read can catch a record half written (a
    # write to a file is not atomic for readers), which the record parser rightly refuses.
    log = Path(harness.log_path("late"))
    deadline = time.monotonic() + 10
    while (arrived := log.read_bytes().count(b"\n")) < 400:
        assert time.monotonic() < deadline, (f"only {arrived} of 400 lines arrived; "
                                             f"monitor said {stderr_path.read_text()!r}")
        time.sleep(0.05)
    assert harness.output("late") == (line * 400).decode()
    assert monitor.state("late").status == "running", "detaching did not close cat's stdin"


def test_tty_resize_is_seen_by_stty(harness: Harness) -> None:
    monitor = harness.spawn()
    harness.start(monitor, "t", harness.plan("t", ["/bin/sh"], tty=True, stdin=True))

    async def scenario() -> Received:
        async with await AttachStream.open(pod_dir(monitor), "t", stdin=True) as stream:
            assert (stream.has_stdin, stream.tty) == (True, True)
            await stream.resize(123, 45)
            await stream.write_stdin(b"stty size\n")
            received = await read_until(stream, lambda r: b"45 123" in r.stdout)
            await stream.resize(80, 24)
            await stream.write_stdin(b"stty size; exit 3\n")
            return await read_until(stream, lambda r: r.ended, received)

    received = asyncio.run(scenario())
    assert b"24 80" in received.stdout
    assert received.exit == b"3"
    assert harness.wait_exit("t").exit_code == 3


def test_close_stdin_on_a_tty_sends_end_of_file(harness: Harness) -> None:
    monitor = harness.spawn()
    harness.start(monitor, "t", harness.plan("t", ["/bin/cat"], tty=True, stdin=True))

    async def scenario() -> Received:
        async with await AttachStream.open(pod_dir(monitor), "t", stdin=True) as stream:
            await stream.write_stdin(b"typed\n")
            received = await read_until(stream, lambda r: r.stdout.count(b"typed") >= 2)  # echo + cat
            await stream.close_stdin()
            return await read_until(stream, lambda r: r.ended, received)

    assert asyncio.run(scenario()).exit == b"0"


def test_attach_to_an_unknown_or_exited_container_fails(harness: Harness) -> None:
    monitor = harness.spawn()
    assert harness.run(monitor, "done", harness.plan("done", ["/bin/true"])).exit_code == 0

    async def attach(container_id: str) -> MonitorError:
        with pytest.raises(MonitorError) as caught:
            await AttachStream.open(pod_dir(monitor), container_id, stdin=False)
        return caught.value

    unknown = asyncio.run(attach("nope"))
    assert unknown.code == errno.ENOENT and "nope" in unknown.message
    exited = asyncio.run(attach("done"))
    assert exited.code == errno.ESRCH and "exited" in exited.message
    assert monitor.ping()["pid"] == monitor.pid, "the control socket still serves requests"


def test_a_slow_attacher_is_detached_and_stalls_nobody(harness: Harness) -> None:
    stderr_path = harness.base / "monitor.stderr"
    monitor = harness.spawn(stderr_path=str(stderr_path))
    # Waits for a line on stdin, so both attachers are there before the flood.
    script = "read go; yes 0123456789abcdef | head -c 6000000; echo END; sleep 100"
    harness.start(monitor, "flood", harness.plan("flood", ["/bin/sh", "-c", script], stdin=True))

    async def scenario() -> tuple[Received, Received]:
        slow = await AttachStream.open(pod_dir(monitor), "flood", stdin=False)
        fast = await AttachStream.open(pod_dir(monitor), "flood", stdin=True)
        try:
            await fast.write_stdin(b"go\n")
            fast_received = await read_until(fast, lambda r: r.stdout.endswith(b"END\n"), timeout=20)
            # The slow one never read: it was cut off; what reached its socket is still there, then the end.
            slow_received = await read_until(slow, lambda r: r.ended, timeout=5)
            return fast_received, slow_received
        finally:
            await slow.close()
            await fast.close()

    fast_received, slow_received = asyncio.run(scenario())
    assert len(fast_received.stdout) == 6000000 + 4
    assert slow_received.exit is None and 0 < len(slow_received.stdout) < 6000000
    assert "too slow" in stderr_path.read_text()
    assert harness.output("flood").endswith("END\n"), "the log got everything"
    assert monitor.state("flood").status == "running"


# ------------------------------------------------------- external OCI runtimes

RUNTIMES = {"runc": RUNC, "crun": CRUN}


@pytest.fixture(params=sorted(RUNTIMES))
def oci_runtime(request) -> str:
    problem = handler_problem(request.param)
    if problem:
        pytest.skip(problem)
    return request.param


def start_oci(harness: Harness, monitor, runtime: str, name: str, argv: list[str], **fields: object) -> None:
    """CREATE+START through runc/crun as the container manager does: rootfs mounted on the host, config.json."""
    plan = harness.plan(name, argv, **fields)
    bundle = harness.container_dir(name)
    oci.mount_rootfs(plan.overlay)  # unmounted by the harness's cleanup (everything under its dir)
    plan = dataclasses.replace(plan, overlay=None, rootfs=str(bundle / "rootfs"))
    spec = oci.build_spec(plan, rootfs=plan.rootfs, cgroups_path=f"/crio-fast-attach-{uuid.uuid4().hex[:12]}",
                          pod_namespaces=monitor.ns_paths)
    oci.write_bundle(bundle, spec)
    call = OciRuntimeCall(runtime_path=RUNTIMES[runtime], root=str(harness.base / f"{runtime}-root"),
                          bundle=str(bundle), hide_cgroup2_mount=runtime == "crun")
    # The monitor's SHUTDOWN in the harness's cleanup runs `delete --force` (state dir and cgroup).
    monitor.create(name, plan, harness.log_path(name), oci=call)
    monitor.start(name)


def test_oci_container_stdin_and_exit(harness: Harness, oci_runtime: str) -> None:
    monitor = harness.spawn()
    start_oci(harness, monitor, oci_runtime, "cat", ["/bin/cat"], stdin=True)

    async def scenario() -> Received:
        async with await AttachStream.open(pod_dir(monitor), "cat", stdin=True) as stream:
            assert (stream.has_stdin, stream.tty) == (True, False)
            await stream.write_stdin(b"through the runtime\n")
            received = await read_until(stream, lambda r: b"through the runtime\n" in r.stdout)
            await stream.close_stdin()
            return await read_until(stream, lambda r: r.ended, received)

    received = asyncio.run(scenario())
    assert received.exit == b"0"
    assert "through the runtime\n" in harness.output("cat")


def test_oci_container_tty_resize(harness: Harness, oci_runtime: str) -> None:
    monitor = harness.spawn()
    start_oci(harness, monitor, oci_runtime, "t", ["/bin/sh"], tty=True, stdin=True)

    async def scenario() -> Received:
        async with await AttachStream.open(pod_dir(monitor), "t", stdin=True) as stream:
            assert (stream.has_stdin, stream.tty) == (True, True)
            await stream.resize(101, 33)
            await stream.write_stdin(b"stty size; exit 4\n")
            return await read_until(stream, lambda r: r.ended)

    received = asyncio.run(scenario())
    assert b"33 101" in received.stdout and received.exit == b"4"
