"""crio-fast under systemd: readiness notifications, journald-friendly logs, the unit file.

The notification protocol is a datagram of ``KEY=VALUE`` lines sent to the
unix socket named by ``$NOTIFY_SOCKET`` (sd_notify(3)); a few lines of the
socket module, so no libsystemd binding is needed. Nothing here fails when
systemd is absent: ``notify`` then sends nothing.
"""

from __future__ import annotations

import logging
import os
import shutil
import socket
import subprocess
import sys
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

UNIT_NAME = "crio-fast.service"
UNIT_DIR = "etc/systemd/system"  # relative to the root install_service writes under
DEFAULT_EXEC_START = "/usr/local/bin/crio-fast"
SYSTEMCTL_TIMEOUT_SECONDS = 30.0

log = logging.getLogger("crio_fast.systemd")


def notify(state: str, environ: dict[str, str] | None = None) -> bool:
    """Send ``state`` (e.g. "READY=1") to the service manager; False when there is none to tell."""
    address = (environ if environ is not None else os.environ).get("NOTIFY_SOCKET", "")
    if not address:
        return False
    if address.startswith("@"):  # an abstract socket: its name starts with a NUL byte
        address = "\0" + address[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.sendto(state.encode(), address)
    except OSError as exc:
        # The daemon serves either way; only the unit's state would lag.
        log.warning("cannot notify systemd at %s: %s", address.replace("\0", "@"), exc)
        return False
    return True


def logging_to_journal(environ: dict[str, str] | None = None, stream_fd: int | None = None) -> bool:
    """True when stderr is connected to journald (``$JOURNAL_STREAM`` names its device and inode),
    which stamps every line with its own time."""
    value = (environ if environ is not None else os.environ).get("JOURNAL_STREAM", "")
    device, _, inode = value.partition(":")
    if not (device.isdigit() and inode.isdigit()):
        return False
    try:
        st = os.fstat(stream_fd if stream_fd is not None else sys.stderr.fileno())
    except (OSError, ValueError):
        return False
    return (st.st_dev, st.st_ino) == (int(device), int(inode))


# Levels as journald reads them from a "<N>" line prefix (sd-daemon(3)).
SYSLOG_PRIORITIES = {logging.CRITICAL: 2, logging.ERROR: 3, logging.WARNING: 4, logging.INFO: 6, logging.DEBUG: 7}


class JournalFormatter(logging.Formatter):
    """No timestamp (journald adds its own) and the level as a syslog priority prefix."""

    def __init__(self) -> None:
        super().__init__("%(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        priority = next((p for level, p in sorted(SYSLOG_PRIORITIES.items(), reverse=True) if record.levelno >= level),
                        7)
        # Continuation lines of a traceback get the same priority, or journald logs them at the default one.
        return "\n".join(f"<{priority}>{line}" for line in super().format(record).split("\n"))


def log_formatter() -> logging.Formatter:
    """The daemon's log format: with timestamps on a terminal or file, without them into the journal."""
    if logging_to_journal():
        return JournalFormatter()
    return logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")


def systemd_booted() -> bool:
    """True when systemd is PID 1 (sd_booted(3)'s test)."""
    return os.path.isdir("/run/systemd/system")


def unit_template() -> str:
    """The unit file as shipped in the package."""
    return resources.files("crio_fast").joinpath("data", UNIT_NAME).read_text(encoding="utf-8")


def default_exec_start() -> str:
    """This installation's `crio-fast`: the script beside the running interpreter (the venv's), else the module."""
    script = Path(sys.executable).parent / "crio-fast"
    if script.is_file() and os.access(script, os.X_OK):
        return str(script)
    return f"{sys.executable} -m crio_fast"


def render_unit(exec_start: str) -> str:
    """The shipped unit with ExecStart naming ``exec_start``."""
    lines = unit_template().splitlines()
    replaced = [f"ExecStart={exec_start}" if line.startswith("ExecStart=") else line for line in lines]
    return "\n".join(replaced) + "\n"


@dataclass(frozen=True)
class InstalledFile:
    path: Path
    written: bool  # False: it was there already and kept


def install_service(root: Path, exec_start: str, default_config: str, config_path: str, config_dir: str
                    ) -> list[InstalledFile]:
    """Write the unit (always: an upgrade replaces it), the default configuration (only if absent) and the
    drop-in directory under ``root``."""
    unit = root / UNIT_DIR / UNIT_NAME
    config = root / config_path.lstrip("/")
    drop_ins = root / config_dir.lstrip("/")
    unit.parent.mkdir(parents=True, exist_ok=True)
    _write_atomically(unit, render_unit(exec_start), 0o644)
    done = [InstalledFile(unit, True)]
    config.parent.mkdir(parents=True, exist_ok=True)
    if os.path.lexists(config):
        done.append(InstalledFile(config, False))
    else:
        _write_atomically(config, default_config, 0o644)
        done.append(InstalledFile(config, True))
    existed = drop_ins.is_dir()
    drop_ins.mkdir(parents=True, exist_ok=True)
    done.append(InstalledFile(drop_ins, not existed))
    return done


def _write_atomically(path: Path, text: str, mode: int) -> None:
    partial = path.with_name(f".{path.name}.partial")
    partial.write_text(text, encoding="utf-8")
    partial.chmod(mode)
    os.replace(partial, path)


def systemctl(*args: str, timeout: float | None = SYSTEMCTL_TIMEOUT_SECONDS) -> subprocess.CompletedProcess:
    """``timeout`` None: for a start, which systemd bounds itself (TimeoutStartSec)."""
    return subprocess.run(["systemctl", *args], capture_output=True, text=True, stdin=subprocess.DEVNULL,
                          timeout=timeout, check=False)


@dataclass(frozen=True)
class UnitState:
    load_state: str  # loaded, not-found, ...
    active_state: str  # active, inactive, failed, activating, ...
    sub_state: str  # running, dead, ...
    unit_file_state: str  # enabled, disabled, ...
    exec_start: str


def unit_state(unit: str = UNIT_NAME) -> UnitState | None:
    """What systemd says of ``unit``; None when systemctl cannot be asked."""
    if shutil.which("systemctl") is None:
        return None
    try:
        result = systemctl("show", unit, "--property=LoadState,ActiveState,SubState,UnitFileState,ExecStart")
    except (OSError, subprocess.TimeoutExpired):
        return None
    if result.returncode != 0:
        return None
    values = dict(line.split("=", 1) for line in result.stdout.splitlines() if "=" in line)
    return UnitState(values.get("LoadState", ""), values.get("ActiveState", ""), values.get("SubState", ""),
                     values.get("UnitFileState", ""), values.get("ExecStart", ""))
