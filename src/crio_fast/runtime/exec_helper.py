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
import signal as signal_module
import subprocess
import time
from dataclasses import dataclass

from crio_fast.errors import cut
from crio_fast.runtime import fdwait, wire
from crio_fast.runtime.call_end import CallEnd
from crio_fast.runtime.capture import CappedOutput
from crio_fast.runtime.plan import ExecPlan


# What ExecSync keeps of each of stdout and stderr unless told otherwise (as CRI-O and containerd).
DEFAULT_OUTPUT_LIMIT = 16 << 20


@dataclass
class ExecResult:
    exit_code: int
    stdout: bytes
    stderr: bytes
    signal: int = 0
    # Set when the command never ran (not found, cannot execute, container
    # gone; exit_code is then 126/127/1) or the helper did not say how it ended.
    error: str | None = None
    # Bytes of each stream past the output limit, read and dropped.
    stdout_dropped: int = 0
    stderr_dropped: int = 0


def exec_sync(monitor_path: str, plan: ExecPlan, timeout: float | None, stdin: bytes = b"", *,
              call: CallEnd | None = None, output_limit: int = DEFAULT_OUTPUT_LIMIT) -> ExecResult:
    """Run `plan` inside a container and collect its output.

    The helper (`crio-fast-monitor exec`) reports on a status pipe whether the
    command ran ("exit N" / "signal N") or never could ("error ERRNO MSG"),
    which is how its own failure is told apart from the command's exit code.
    Of each of stdout and stderr the first ``output_limit`` bytes are kept, the
    rest is read and dropped. After ``timeout`` seconds (None: none), or when
    ``call`` ends first (the client cancelled, its deadline passed), the helper
    is sent SIGTERM, on which it SIGKILLs the command's process group and reaps
    the command (the helper's own process group is SIGKILLed if it does not exit
    within two seconds); then TimeoutError is raised, or the call's end
    (``CallEnd.raise_ended``).
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
        return _run_exec(process, plan_bytes, plan_write, status_read, timeout, stdin, call, output_limit)
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


def _run_exec(process: subprocess.Popen, plan_bytes: bytes, plan_write: int, status_read: int,
              timeout: float | None, stdin: bytes, call: CallEnd | None, output_limit: int) -> ExecResult:
    assert process.stdin and process.stdout and process.stderr
    deadline = call.limit(timeout) if call is not None else (
        None if timeout is None else time.monotonic() + timeout)
    pidfd = os.pidfd_open(process.pid)
    # Pending input per fd (closed once written, so the reader sees EOF) and
    # output per fd (dropped from the poll set at EOF).
    pending_input = {plan_write: memoryview(plan_bytes), process.stdin.fileno(): memoryview(stdin)}
    closers = {plan_write: lambda: os.close(plan_write), process.stdin.fileno(): process.stdin.close}
    stdout = CappedOutput(process.stdout.fileno(), output_limit)
    stderr = CappedOutput(process.stderr.fileno(), output_limit)
    status = bytearray()
    outputs = {stdout.fd: stdout.read_available, stderr.fd: stderr.read_available,
               status_read: lambda: _read_available(status_read, status)}
    open_outputs = set(outputs)
    for fd in (*pending_input, *outputs):
        os.set_blocking(fd, False)
    call_fds = [call.fileno()] if call is not None else []
    try:
        helper_exited = False
        while not helper_exited:
            for fd in [fd for fd, data in pending_input.items() if not data]:
                closers.pop(fd)()
                del pending_input[fd]
            remaining = None if deadline is None else deadline - time.monotonic()
            if (remaining is not None and remaining <= 0) or (call is not None and call.ended):
                _stop_helper(process)
                argv = plan_argv_for_message(plan_bytes)
                if call is not None and call.ended:
                    call.raise_ended(f"exec {argv}")
                raise TimeoutError(f"exec {argv} timed out after {timeout}s")
            readable, writable = fdwait.wait([*open_outputs, pidfd, *call_fds], list(pending_input), remaining)
            for fd in writable:
                try:
                    written = os.write(fd, pending_input[fd][:65536])
                    pending_input[fd] = pending_input[fd][written:]
                except BrokenPipeError:
                    pending_input[fd] = memoryview(b"")  # the reader is gone; stop feeding it
            for fd in readable:
                if fd == pidfd:
                    helper_exited = True
                elif fd in outputs and not outputs[fd]():
                    open_outputs.discard(fd)
        # The helper has exited, so the command has too: what it wrote is in
        # the pipes. Do not wait for EOF (a background child may hold them).
        for fd in open_outputs:
            outputs[fd]()
        process.wait()
        outcome = wire.parse_exec_status(bytes(status).decode(errors="replace"), process.returncode)
        return ExecResult(exit_code=outcome.exit_code, stdout=stdout.take(), stderr=stderr.take(),
                          signal=outcome.signal, error=outcome.error,
                          stdout_dropped=stdout.dropped, stderr_dropped=stderr.dropped)
    finally:
        os.close(pidfd)
        for close in closers.values():
            close()
        stdout.close()
        stderr.close()


def plan_argv_for_message(plan_bytes: bytes) -> str:
    """The command of an encoded plan, for error messages."""
    args = [wire.decode_string(value) for tag, value in wire.parse_tlv(plan_bytes) if tag == wire.PLAN_ARGV]
    return cut(" ".join(args)) if args else "(no command)"


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
