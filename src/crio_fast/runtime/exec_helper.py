"""ExecSync through the monitor binary's exec mode (``crio-fast-monitor exec``).

The helper joins a running container's namespaces and cgroups and runs one
command as the container's own process runs (credentials, capabilities,
seccomp, AppArmor), from an ``ExecPlan`` it reads on a pipe. ``exec_sync``
feeds it, collects the command's output and reads how it ended from the
helper's status pipe. Streaming Exec uses the same helper (runtime/interactive.py).
See docs/monitor.md, "Exec helper".
"""

from __future__ import annotations

import os
import select
import signal as signal_module
import subprocess
import time
from dataclasses import dataclass

from crio_fast.runtime import wire
from crio_fast.runtime.plan import ExecPlan


@dataclass
class ExecResult:
    exit_code: int
    stdout: bytes
    stderr: bytes
    signal: int = 0
    # Set when the command never ran (not found, cannot execute, container
    # gone; exit_code is then 126/127/1) or the helper did not say how it ended.
    error: str | None = None


def exec_sync(monitor_path: str, plan: ExecPlan, timeout: float, stdin: bytes = b"") -> ExecResult:
    """Run `plan` inside a container and collect its output.

    The helper (`crio-fast-monitor exec`) reports on a status pipe whether the
    command ran ("exit N" / "signal N") or never could ("error ERRNO MSG"),
    which is how its own failure is told apart from the command's exit code.
    On timeout the helper is sent SIGTERM, on which it SIGKILLs the command
    and reaps it (its process group is SIGKILLed if it does not exit within
    two seconds), and TimeoutError is raised.
    """
    plan_bytes = plan.encode()
    plan_read, plan_write = os.pipe()
    status_read, status_write = os.pipe()
    try:
        process = subprocess.Popen(
            [monitor_path, "exec", "--plan-fd", str(plan_read), "--status-fd", str(status_write)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            pass_fds=(plan_read, status_write), start_new_session=True,
        )
    except BaseException:
        for fd in (plan_read, plan_write, status_read, status_write):
            os.close(fd)
        raise
    os.close(plan_read)
    os.close(status_write)
    try:
        return _run_exec(process, plan_bytes, plan_write, status_read, timeout, stdin)
    finally:
        os.close(status_read)
        for stream in (process.stdin, process.stdout, process.stderr):
            if stream is not None and not stream.closed:
                stream.close()
        if process.poll() is None:
            _stop_helper(process)


def _stop_helper(process: subprocess.Popen, grace: float = 2.0) -> None:
    # SIGTERM: the helper kills the command and reaps it itself (see exec.c);
    # the group SIGKILL is the fallback for a helper that does not react.
    process.send_signal(signal_module.SIGTERM)
    try:
        process.wait(grace)
    except subprocess.TimeoutExpired:
        _kill_group(process.pid)
        process.wait()


def _kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal_module.SIGKILL)
    except ProcessLookupError:
        pass


def _run_exec(process: subprocess.Popen, plan_bytes: bytes, plan_write: int, status_read: int, timeout: float,
              stdin: bytes) -> ExecResult:
    assert process.stdin and process.stdout and process.stderr
    deadline = time.monotonic() + timeout
    pidfd = os.pidfd_open(process.pid)
    # Pending input per fd (closed once written, so the reader sees EOF) and
    # output per fd (dropped from the poll set at EOF).
    pending_input = {plan_write: memoryview(plan_bytes), process.stdin.fileno(): memoryview(stdin)}
    closers = {plan_write: lambda: os.close(plan_write), process.stdin.fileno(): process.stdin.close}
    output = {process.stdout.fileno(): bytearray(), process.stderr.fileno(): bytearray(), status_read: bytearray()}
    open_outputs = set(output)
    for fd in (*pending_input, *output):
        os.set_blocking(fd, False)
    try:
        helper_exited = False
        while not helper_exited:
            for fd in [fd for fd, data in pending_input.items() if not data]:
                closers.pop(fd)()
                del pending_input[fd]
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                _stop_helper(process)
                raise TimeoutError(f"exec {plan_argv_for_message(plan_bytes)} timed out after {timeout}s")
            readable, writable, _ = select.select([*open_outputs, pidfd], list(pending_input), [], remaining)
            for fd in writable:
                try:
                    written = os.write(fd, pending_input[fd][:65536])
                    pending_input[fd] = pending_input[fd][written:]
                except BrokenPipeError:
                    pending_input[fd] = memoryview(b"")  # the reader is gone; stop feeding it
            for fd in readable:
                if fd == pidfd:
                    helper_exited = True
                elif not _read_available(fd, output[fd]):
                    open_outputs.discard(fd)
        # The helper has exited, so the command has too: what it wrote is in
        # the pipes. Do not wait for EOF (a background child may hold them).
        for fd in open_outputs:
            _read_available(fd, output[fd])
        process.wait()
    finally:
        os.close(pidfd)
        for close in closers.values():
            close()
    outcome = wire.parse_exec_status(bytes(output[status_read]).decode(errors="replace"), process.returncode)
    return ExecResult(exit_code=outcome.exit_code, stdout=bytes(output[process.stdout.fileno()]),
                      stderr=bytes(output[process.stderr.fileno()]), signal=outcome.signal, error=outcome.error)


def plan_argv_for_message(plan_bytes: bytes) -> str:
    """The command of an encoded plan, for error messages."""
    args = [wire.decode_string(value) for tag, value in wire.parse_tlv(plan_bytes) if tag == wire.PLAN_ARGV]
    return " ".join(args) if args else "(no command)"


def _read_available(fd: int, into: bytearray) -> bool:
    """Read what is there without blocking; False at EOF."""
    while True:
        try:
            chunk = os.read(fd, 65536)
        except BlockingIOError:
            return True
        if not chunk:
            return False
        into += chunk
