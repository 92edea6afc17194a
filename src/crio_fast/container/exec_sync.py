"""ExecSync in a running container, bounded: natively through the monitor binary's exec helper, or with an
OCI runtime's ``exec``.

Bounded in time and in memory (issue 25; the class of CVE-2022-1708): the command is killed with what
it started when its timeout passes or the call it serves ends (``timeout`` 0: only the call's end), and
of its stdout and stderr the first ``output_limit`` bytes each are kept; the reply's stderr says what was
dropped, as CRI-O's and containerd's do.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from crio_fast.config.schema import RuntimeHandler
from crio_fast.container import oci
from crio_fast.errors import DeadlineExceeded, FailedPrecondition, shown
from crio_fast.runtime import exec_helper
from crio_fast.runtime.call_end import CallEnd
from crio_fast.runtime.capture import dropped_note
from crio_fast.runtime.monitor import MonitorError
from crio_fast.runtime.plan import ExecPlan
from crio_fast.state.records import ContainerRecord


def run(record: ContainerRecord, cmd: list[str], timeout: int, call: CallEnd | None, *,
        handler: RuntimeHandler | None, monitor_path: str, native_plan: Callable[[], ExecPlan],
        output_limit: int) -> tuple[int, bytes, bytes]:
    """(exit code, stdout, stderr) of ``cmd`` in ``record``'s container: with ``handler``'s ``exec`` when it
    is an OCI runtime's, else natively with ``native_plan()``."""
    command_timeout = float(timeout) if timeout > 0 else None
    try:
        if handler is not None:
            result = oci.exec_sync(handler, monitor_path, Path(record.bundle), record.id, cmd, command_timeout,
                                   call=call, output_limit=output_limit)
        else:
            result = exec_helper.exec_sync(monitor_path, native_plan(), command_timeout, call=call,
                                           output_limit=output_limit)
    except TimeoutError as exc:  # an OSError too: before the runtime's failures
        raise DeadlineExceeded(f"command {shown(cmd[0])} timed out after {timeout}s") from exc
    except MonitorError as exc:
        raise FailedPrecondition(f"exec in {record.id}: {exc}") from exc
    except OSError as exc:
        if handler is None:
            raise  # the daemon's own exec helper failed to start: a bug or a broken install
        raise FailedPrecondition(f"exec in {record.id} with {handler.runtime_path}: {exc}") from exc
    stderr = result.stderr
    if result.error:
        stderr += (result.error + "\n").encode()
    stderr += dropped_note("stdout", output_limit, result.stdout_dropped)
    stderr += dropped_note("stderr", output_limit, result.stderr_dropped)
    return result.exit_code, result.stdout, stderr
