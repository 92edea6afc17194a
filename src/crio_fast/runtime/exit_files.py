"""Exit files: ``<exits dir>/<container id>``, written by a pod monitor when a container exits
(through a rename, so a file is always whole), or by the daemon for an exit it saw itself. See
docs/monitor.md, "Exit files".
"""

from __future__ import annotations

import errno
import os
from dataclasses import dataclass
from pathlib import Path

from crio_fast.runtime.monitor import MonitorError


@dataclass
class ExitInfo:
    exit_code: int
    signal: int
    pid: int
    started_at: int
    finished_at: int
    oom_killed: bool


def read_exit_file(path: str | os.PathLike[str]) -> ExitInfo | None:
    """Parse an exit file written by a monitor; None if there is none (yet)."""
    try:
        text = Path(path).read_text()
    except FileNotFoundError:
        return None
    values: dict[str, int] = {}
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep:
            values[key] = int(value)
    try:
        return ExitInfo(exit_code=values["exit_code"], signal=values["signal"], pid=values["pid"],
                        started_at=values["started_at"], finished_at=values["finished_at"],
                        oom_killed=bool(values["oom_killed"]))
    except KeyError as e:
        raise MonitorError(f"exit file {path} lacks {e.args[0]}", errno.EINVAL) from None


def write_exit_file(path: str | os.PathLike[str], info: ExitInfo) -> None:
    """Write an exit file in the monitor's format, atomically (for an exit the
    daemon observed itself because the pod's monitor was gone)."""
    target = Path(path)
    temporary = target.with_name(f".{target.name}.tmp")
    temporary.write_text(
        f"exit_code={info.exit_code}\nsignal={info.signal}\npid={info.pid}\nstarted_at={info.started_at}\n"
        f"finished_at={info.finished_at}\noom_killed={int(info.oom_killed)}\n"
    )
    os.replace(temporary, target)
