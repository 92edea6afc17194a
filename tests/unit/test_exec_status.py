"""The exec helper's status line: what exec.c writes, and the one parser both callers read it with."""

from __future__ import annotations

import asyncio
import re
import stat
from pathlib import Path

import pytest

from crio_fast.runtime.interactive import InteractiveExec
from crio_fast.runtime.exec_helper import exec_sync
from crio_fast.runtime.plan import ExecPlan
from crio_fast.runtime.wire import CONSOLE_TERMINAL_TAG, ExecOutcome, parse_exec_status

EXEC_C = Path(__file__).resolve().parents[2] / "src" / "crio_fast" / "_native" / "monitor" / "exec.c"


def test_the_parser_reads_what_exec_c_writes():
    source = EXEC_C.read_text()
    formats = set(re.findall(r'snprintf\(line, sizeof\(line\), "([^"]*)"', source))
    assert formats == {"exit %d\\n", "signal %d\\n", "error %d %s\\n"}
    assert f"send_fd(console_fd, '{CONSOLE_TERMINAL_TAG.decode()}'" in source


@pytest.mark.parametrize(("line", "returncode", "outcome"), [
    ("exit 0\n", 0, ExecOutcome(exit_code=0)),
    ("exit 7\n", 7, ExecOutcome(exit_code=7)),
    ("signal 9\n", 137, ExecOutcome(exit_code=137, signal=9)),
    ("error 2 exec /nope: No such file or directory\n", 127,
     ExecOutcome(exit_code=127, error="exec /nope: No such file or directory")),
    ("error 13 exec /etc: Permission denied\n", 126, ExecOutcome(exit_code=126, error="exec /etc: Permission denied")),
    ("error 5 setns: Input/output error\n", 1, ExecOutcome(exit_code=1, error="setns: Input/output error")),
    # No line: the helper died before it could write one.
    ("", 1, ExecOutcome(exit_code=1, error="exec helper exited with 1 without reporting a status")),
    ("", 0, ExecOutcome(exit_code=1, error="exec helper exited with 0 without reporting a status")),
])
def test_status_lines(line: str, returncode: int, outcome: ExecOutcome):
    assert parse_exec_status(line, returncode) == outcome


@pytest.mark.parametrize("signal", [9, 15])
def test_a_helper_killed_by_a_signal_reports_the_kill(signal: int):
    """The case where ExecSync and the streaming Exec used to disagree: no status line and the helper
    killed (a group SIGKILL, the OOM killer in the container's cgroup). The command went with it, by its
    PR_SET_PDEATHSIG: 128+signal, as the helper itself reports a command's kill."""
    assert parse_exec_status("", -signal) == ExecOutcome(exit_code=128 + signal, signal=signal,
                                                         error=f"exec helper killed by signal {signal}")


HELPERS = {
    "exits": 'printf "exit 3\\n" >&"$status"; exit 3',
    "is killed": 'printf "signal 9\\n" >&"$status"; exit 137',
    "fails": 'printf "error 2 exec /nope: No such file or directory\\n" >&"$status"; exit 127',
    "dies without a word": "exit 1",
    "is killed without a word": "kill -9 $$",
}


@pytest.mark.parametrize("helper", HELPERS)
def test_exec_sync_and_interactive_exec_agree(helper: str, tmp_path: Path):
    """Both callers of the helper give the same outcome, whatever it reports."""
    script = tmp_path / "helper"
    script.write_text('#!/bin/sh\nwhile [ $# -gt 0 ]; do [ "$1" = --status-fd ] && status=$2; shift; done\n'
                      f"{HELPERS[helper]}\n")
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    plan = ExecPlan(target_pid=1, argv=["/bin/true"], namespaces=[])

    result = exec_sync(str(script), plan, timeout=30)

    async def interactive() -> ExecOutcome:
        process = await InteractiveExec.start(str(script), plan, stdin=False, stdout=True, stderr=True, tty=False)
        try:
            return await asyncio.wait_for(process.wait(), 30)
        finally:
            await process.close()

    outcome = asyncio.run(interactive())
    assert (result.exit_code, result.signal, result.error) == (outcome.exit_code, outcome.signal, outcome.error)
