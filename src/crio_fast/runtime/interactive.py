"""Interactive exec: a command in a running container with live streams.

The process side of CRI Exec (``crictl exec -it``): the daemon starts the
native helper (``crio-fast-monitor exec``, see docs/monitor.md "Exec helper")
and streams bytes between it and the client. Everything runs on the asyncio
loop with non-blocking fds: no thread per exec.

Streams:

- without a TTY, the command's fds 0-2 are pipes to us, or /dev/null for a
  stream that was not requested;
- with a TTY, the helper opens a pseudo terminal on the container's devpts and
  hands the master over the console socket (SCM_RIGHTS); the master carries
  both stdin and output, and there is no separate stderr.

The helper runs in a session of its own and is reaped through a pidfd with
``waitpid`` on its pid only: the daemon is a child subreaper, and a SIGCHLD
handler that reaps every child would steal statuses other code waits for.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import errno
import fcntl
import os
import signal
import socket
import struct
import subprocess
import termios

from crio_fast.runtime.plan import ExecPlan
from crio_fast.runtime.wire import CONSOLE_TERMINAL_TAG, ExecOutcome, parse_exec_status

# Reads hand out at most this much; a bigger pipe lets cat-like commands
# move data in fewer wake-ups (the kernel may refuse; then it stays 64 KiB).
READ_CHUNK = 65536
PIPE_SIZE = 1 << 20
# How long kill() lets the helper kill and reap the command before the group
# gets SIGKILL.
KILL_GRACE_SECONDS = 2.0
# After the helper exited, output still in flight (a pty's flip buffer is
# pushed to the master asynchronously) gets this long to show up; after that
# a stream counts as ended even if a background process still holds it.
DRAIN_AFTER_EXIT_SECONDS = 0.1


class InteractiveExec:
    """One running exec; create it with :meth:`start`.

    Each stream supports one reader (or writer) at a time. Always end with
    :meth:`close` (it kills the command if it still runs) so no fd is left
    open; the helper is reaped by the running loop as soon as it exits.
    """

    def __init__(self, process: subprocess.Popen, pidfd: int, status_read: int, *, stdin_fd: int | None,
                 stdout_fd: int | None, stderr_fd: int | None, terminal_fd: int | None) -> None:
        self._loop = asyncio.get_running_loop()
        self._process = process
        self._pidfd: int | None = pidfd
        self._status_read: int | None = status_read
        self._stdin_fd = stdin_fd
        self._stdout_fd = stdout_fd
        self._stderr_fd = stderr_fd
        self._terminal_fd = terminal_fd
        self._stdin_requested = stdin_fd is not None or terminal_fd is not None
        self._stdin_closed = not self._stdin_requested
        self._stdout_ended = False
        self._outcome: asyncio.Future[ExecOutcome] = self._loop.create_future()
        self._loop.add_reader(pidfd, self._on_helper_exit)

    @property
    def pid(self) -> int:
        """The helper's pid (also its process group and session)."""
        return self._process.pid

    @property
    def tty(self) -> bool:
        return self._terminal_fd is not None

    @classmethod
    async def start(cls, monitor_path: str, plan: ExecPlan, *, stdin: bool, stdout: bool, stderr: bool,
                    tty: bool, size: tuple[int, int] | None = None) -> InteractiveExec:
        """Start `plan` in its container.

        `size` is the terminal's (width, height), applied before the command
        can read it. A failure of the helper itself (namespaces gone, command
        not found) does not raise: it is reported by :meth:`wait`.
        """
        if plan.tty != tty or (tty and size is not None):
            plan = dataclasses.replace(plan, tty=tty, tty_size=size if tty else None)
        plan_bytes = plan.encode()
        ours: list[int] = []  # kept by us after the spawn
        theirs: list[int] = []  # given to the helper, closed here after the spawn
        console: socket.socket | None = None
        console_theirs: socket.socket | None = None
        try:
            plan_read, plan_write = os.pipe()
            theirs.append(plan_read)
            ours.append(plan_write)
            status_read, status_write = os.pipe()
            theirs.append(status_write)
            ours.append(status_read)
            pass_fds = [plan_read, status_write]
            argv = [monitor_path, "exec", "--plan-fd", str(plan_read), "--status-fd", str(status_write)]
            stdio: list[int] = []
            ends: list[int | None] = [None, None, None]
            if tty:
                console, console_theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
                pass_fds.append(console_theirs.fileno())
                argv += ["--console-fd", str(console_theirs.fileno())]
                null = os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)
                theirs.append(null)
                stdio = [null, null, null]
            else:
                for index, wanted in enumerate((stdin, stdout, stderr)):
                    if wanted:
                        read_end, write_end = os.pipe()
                        ours.append(write_end if index == 0 else read_end)
                        theirs.append(read_end if index == 0 else write_end)
                        stdio.append(read_end if index == 0 else write_end)
                        ends[index] = ours[-1]
                        _enlarge_pipe(read_end)
                    else:
                        null = os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)
                        theirs.append(null)
                        stdio.append(null)
            process = subprocess.Popen(argv, stdin=stdio[0], stdout=stdio[1], stderr=stdio[2], pass_fds=pass_fds,
                                       start_new_session=True)
        except BaseException:
            for fd in ours + theirs:
                os.close(fd)
            for sock in (console, console_theirs):
                if sock is not None:
                    sock.close()
            raise
        for fd in theirs:
            os.close(fd)
        if console_theirs is not None:
            console_theirs.close()
        try:
            pidfd = os.pidfd_open(process.pid)
        except BaseException:
            _kill_unwatched(process)
            for fd in ours:
                os.close(fd)
            if console is not None:
                console.close()
            raise
        for fd in ours:
            os.set_blocking(fd, False)
        self = cls(process, pidfd, status_read, stdin_fd=ends[0], stdout_fd=ends[1], stderr_fd=ends[2],
                   terminal_fd=None)
        try:
            try:
                await self._write_all(plan_write, memoryview(plan_bytes))
            except BrokenPipeError:
                pass  # the helper is gone before reading it: wait() says why
            finally:
                os.close(plan_write)
            if console is not None:
                self._terminal_fd = await self._receive_terminal(console)
                self._stdin_requested = stdin
                self._stdin_closed = self._terminal_fd is None or not stdin
        except BaseException:
            await self.close()
            raise
        finally:
            if console is not None:
                console.close()
        return self

    # ------------------------------------------------------------ streams

    async def write_stdin(self, data: bytes) -> None:
        """Write all of `data`, waiting while the pipe or terminal is full.

        Raises BrokenPipeError once the command can no longer read it (or
        after close_stdin), ValueError when stdin was not requested.
        """
        if not self._stdin_requested:
            raise ValueError("this exec has no stdin")
        fd = self._terminal_fd if self._terminal_fd is not None else self._stdin_fd
        if fd is None or self._stdin_closed:
            raise BrokenPipeError(errno.EPIPE, "stdin is closed")
        try:
            await self._write_all(fd, memoryview(data))
        except OSError as e:
            if e.errno == errno.EIO:  # a terminal whose every peer is closed
                raise BrokenPipeError(errno.EPIPE, "the terminal is closed") from e
            raise

    async def close_stdin(self) -> None:
        """End the command's input.

        A pipe is closed (the command reads EOF). A terminal stays open, as it
        carries the output too: like the kubelet and CRI-O, send the
        terminal's EOF character (VEOF, normally ^D), which a command reading
        in canonical mode at the start of a line sees as end of input.
        """
        if self._stdin_closed:
            return
        if self._terminal_fd is not None:
            eof = termios.tcgetattr(self._terminal_fd)[6][termios.VEOF]
            with contextlib.suppress(BrokenPipeError):
                await self.write_stdin(eof if isinstance(eof, bytes) else bytes([eof]))
            self._stdin_closed = True
            return
        self._stdin_closed = True
        if self._stdin_fd is not None:
            os.close(self._stdin_fd)
            self._stdin_fd = None

    async def read_stdout(self) -> bytes:
        """Up to 64 KiB of output (the terminal's, with a TTY); b"" at EOF."""
        if self._terminal_fd is not None:
            if self._stdout_ended:
                return b""
            data = await self._read(self._terminal_fd)
            if not data:
                # The master stays open for resize and writes until close().
                self._stdout_ended = True
            return data
        if self._stdout_fd is None:
            return b""
        data = await self._read(self._stdout_fd)
        if not data:
            os.close(self._stdout_fd)
            self._stdout_fd = None
        return data

    async def read_stderr(self) -> bytes:
        """Up to 64 KiB of the command's stderr; b"" at EOF, always b"" with a TTY."""
        if self._stderr_fd is None:
            return b""
        data = await self._read(self._stderr_fd)
        if not data:
            os.close(self._stderr_fd)
            self._stderr_fd = None
        return data

    def resize(self, width: int, height: int) -> None:
        """Set the terminal's size (columns, rows); the command gets SIGWINCH. No-op without a TTY."""
        if self._terminal_fd is None:
            return
        fcntl.ioctl(self._terminal_fd, termios.TIOCSWINSZ, struct.pack("HHHH", height, width, 0, 0))

    # ------------------------------------------------------------ lifetime

    async def wait(self) -> ExecOutcome:
        """Wait for the helper (and so the command) to end."""
        return await asyncio.shield(self._outcome)

    async def kill(self) -> None:
        """End the command now and reap the helper; safe to call any number of times.

        SIGTERM makes the helper SIGKILL the command and reap it (a command
        left in the container's pid namespace would hold up its init's exit);
        a helper that does not exit within two seconds gets its whole process
        group SIGKILLed.
        """
        if self._outcome.done():
            return
        with contextlib.suppress(ProcessLookupError):
            signal.pidfd_send_signal(self._pidfd, signal.SIGTERM)
        try:
            await asyncio.wait_for(asyncio.shield(self._outcome), KILL_GRACE_SECONDS)
        except asyncio.TimeoutError:
            # Not reaped yet, so the group id cannot have been reused.
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self._process.pid, signal.SIGKILL)
            await asyncio.shield(self._outcome)

    async def close(self) -> None:
        """Release every fd, killing the command first if it still runs; idempotent."""
        await self.kill()
        for name in ("_stdin_fd", "_stdout_fd", "_stderr_fd", "_terminal_fd"):
            fd = getattr(self, name)
            if fd is not None:
                setattr(self, name, None)
                os.close(fd)
        self._stdin_closed = True
        self._stdout_ended = True

    def _on_helper_exit(self) -> None:
        assert self._pidfd is not None and self._status_read is not None
        self._loop.remove_reader(self._pidfd)
        os.close(self._pidfd)
        self._pidfd = None
        self._process.wait()  # it has exited: waitpid on its pid returns at once
        status = bytearray()
        with contextlib.suppress(BlockingIOError):
            while chunk := os.read(self._status_read, 4096):
                status += chunk
        os.close(self._status_read)
        self._status_read = None
        if not self._outcome.done():
            self._outcome.set_result(parse_exec_status(status.decode(errors="replace"), self._process.returncode))

    # ------------------------------------------------------------ plumbing

    async def _read(self, fd: int) -> bytes:
        while True:
            try:
                return os.read(fd, READ_CHUNK)
            except BlockingIOError:
                pass
            except OSError as e:
                if e.errno == errno.EIO:  # a terminal after its last peer closed
                    return b""
                raise
            if self._outcome.done():
                # Anything the command wrote is in the pipe or on its way
                # (see DRAIN_AFTER_EXIT_SECONDS); do not wait for EOF that a
                # background process holding the stream could delay forever.
                if not await self._readable(fd, DRAIN_AFTER_EXIT_SECONDS):
                    return b""
            else:
                await self._readable(fd, None)

    async def _readable(self, fd: int, timeout: float | None) -> bool:
        """Wait until `fd` is readable (True), the helper exits or `timeout` passes (False)."""
        ready = self._loop.create_future()
        self._loop.add_reader(fd, _resolve, ready, True)
        waiters: list[asyncio.Future] = [ready]
        if not self._outcome.done():
            waiters.append(self._outcome)
        try:
            await asyncio.wait(waiters, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        finally:
            self._loop.remove_reader(fd)
        return ready.done()

    async def _write_all(self, fd: int, data: memoryview) -> None:
        while data:
            try:
                written = os.write(fd, data)
                data = data[written:]
                continue
            except BlockingIOError:
                pass
            ready = self._loop.create_future()
            self._loop.add_writer(fd, _resolve, ready, True)
            try:
                await ready
            finally:
                self._loop.remove_writer(fd)

    async def _receive_terminal(self, console: socket.socket) -> int | None:
        """The master from the console socket; None when the helper ended without sending one."""
        console.setblocking(False)
        while True:
            try:
                message, fds, _, _ = socket.recv_fds(console, 1, 1, socket.MSG_CMSG_CLOEXEC)
                break
            except BlockingIOError:
                ready = self._loop.create_future()
                self._loop.add_reader(console.fileno(), _resolve, ready, True)
                try:
                    await ready
                finally:
                    self._loop.remove_reader(console.fileno())
        if message != CONSOLE_TERMINAL_TAG or len(fds) != 1:
            for fd in fds:
                os.close(fd)
            return None
        os.set_blocking(fds[0], False)
        return fds[0]


def _resolve(future: asyncio.Future, value: object) -> None:
    if not future.done():
        future.set_result(value)


def _enlarge_pipe(fd: int) -> None:
    with contextlib.suppress(OSError):
        fcntl.fcntl(fd, fcntl.F_SETPIPE_SZ, PIPE_SIZE)


def _kill_unwatched(process: subprocess.Popen) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait()
