"""crio-fast as a systemd service: sd_notify messages, journald logs, the shipped unit, install-service, check."""

from __future__ import annotations

import configparser
import logging
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from crio_fast.check import Status, check_service
from crio_fast.cli import build_parser
from crio_fast.config import DEFAULT_CONFIG_DIR, DEFAULT_CONFIG_PATH, defaults_with_flags, render_config
from crio_fast.systemd import (
    JournalFormatter,
    UNIT_NAME,
    UnitState,
    install_service,
    logging_to_journal,
    notify,
    render_unit,
    unit_template,
)


@pytest.fixture
def notify_socket(tmp_path: Path):
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(tmp_path / "notify"))
        sock.settimeout(5)
        yield sock


def test_notify_sends_one_datagram_to_the_notify_socket(notify_socket: socket.socket) -> None:
    assert notify("READY=1\nSTATUS=serving", {"NOTIFY_SOCKET": notify_socket.getsockname()})
    assert notify_socket.recv(4096) == b"READY=1\nSTATUS=serving"


def test_notify_reaches_an_abstract_socket() -> None:
    name = f"crio-fast-test-{os.getpid()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        sock.settimeout(5)
        assert notify("STOPPING=1", {"NOTIFY_SOCKET": "@" + name})
        assert sock.recv(4096) == b"STOPPING=1"


def test_notify_without_a_service_manager_sends_nothing(tmp_path: Path) -> None:
    assert not notify("READY=1", {})
    # A socket that went away costs a warning, never the daemon.
    assert not notify("READY=1", {"NOTIFY_SOCKET": str(tmp_path / "gone")})


def test_journal_stream_is_recognised_only_for_the_stream_it_names(tmp_path: Path) -> None:
    with open(tmp_path / "stderr", "w") as stream, open(tmp_path / "other", "w") as other:
        st = os.fstat(stream.fileno())
        named = {"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"}
        assert logging_to_journal(named, stream.fileno())
        # Inherited by a process whose stderr went elsewhere: not the journal.
        assert not logging_to_journal(named, other.fileno())
        assert not logging_to_journal({}, stream.fileno())
        assert not logging_to_journal({"JOURNAL_STREAM": "junk"}, stream.fileno())


def test_journal_lines_carry_a_priority_and_no_timestamp() -> None:
    record = logging.LogRecord("crio_fast.daemon", logging.WARNING, __file__, 1, "two\nlines", None, None)
    assert JournalFormatter().format(record) == "<4>WARNING crio_fast.daemon: two\n<4>lines"
    record.levelno, record.levelname = logging.INFO, "INFO"
    assert JournalFormatter().format(record).startswith("<6>INFO ")


def parse_unit(text: str) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(interpolation=None, strict=True)
    parser.optionxform = str  # systemd keys are case-sensitive
    parser.read_string(text)
    return parser


def test_shipped_unit_runs_the_daemon_as_a_node_service() -> None:
    unit = parse_unit(unit_template())
    service = unit["Service"]
    assert service["Type"] == "notify"
    assert service["NotifyAccess"] == "main"
    assert service["Delegate"] == "yes"
    # Pod monitors and containers must survive `systemctl restart`.
    assert service["KillMode"] == "process"
    assert service["LimitNOFILE"] == "1048576"
    assert service["TasksMax"] == "infinity"
    assert service["Restart"] == "on-failure"
    assert service["OOMScoreAdjust"] == "-999"
    assert service["ExecReload"] == "/bin/kill -HUP $MAINPID"
    assert unit["Install"]["WantedBy"] == "multi-user.target"
    assert "kubelet.service" in unit["Unit"]["Before"]


def test_rendered_unit_names_the_installation() -> None:
    unit = parse_unit(render_unit("/opt/crio-fast/bin/crio-fast --log-level debug"))
    assert unit["Service"]["ExecStart"] == "/opt/crio-fast/bin/crio-fast --log-level debug"
    assert unit["Service"]["KillMode"] == "process"


def test_install_service_writes_the_unit_and_keeps_an_existing_config(tmp_path: Path) -> None:
    done = install_service(tmp_path, "/x/crio-fast", "# defaults\n", DEFAULT_CONFIG_PATH, DEFAULT_CONFIG_DIR)
    unit = tmp_path / "etc/systemd/system" / UNIT_NAME
    config = tmp_path / DEFAULT_CONFIG_PATH.lstrip("/")
    assert [(d.path, d.written) for d in done] == [
        (unit, True), (config, True), (tmp_path / DEFAULT_CONFIG_DIR.lstrip("/"), True)]
    assert config.read_text() == "# defaults\n"
    assert not any((tmp_path / DEFAULT_CONFIG_DIR.lstrip("/")).iterdir())
    config.write_text("# the operator's own\n")
    unit.write_text("an older unit\n")
    done = install_service(tmp_path, "/y/crio-fast", "# defaults\n", DEFAULT_CONFIG_PATH, DEFAULT_CONFIG_DIR)
    assert [d.written for d in done] == [True, False, False]
    assert config.read_text() == "# the operator's own\n"
    assert parse_unit(unit.read_text())["Service"]["ExecStart"] == "/y/crio-fast"
    assert not list(unit.parent.glob(".*partial"))


def test_install_service_command_into_a_prefix(tmp_path: Path) -> None:
    """The CLI end to end, into a staging root: no systemctl, nothing written outside it."""
    result = subprocess.run([sys.executable, "-m", "crio_fast", "--log-level", "debug", "install-service",
                             "--prefix", str(tmp_path), "--exec-start", "/usr/local/bin/crio-fast"],
                            capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert result.returncode == 0, result.stderr
    unit = tmp_path / "etc/systemd/system" / UNIT_NAME
    assert f"wrote {unit}" in result.stdout
    assert parse_unit(unit.read_text())["Service"]["ExecStart"] == "/usr/local/bin/crio-fast"
    # The default configuration is what `crio-fast config` prints on a fresh node, with the flags given.
    config = (tmp_path / DEFAULT_CONFIG_PATH.lstrip("/")).read_text()
    expected, _ = defaults_with_flags(build_parser().parse_args(["--log-level", "debug", "install-service"]))
    assert config == render_config(expected)
    assert 'log_level = "debug"' in config
    assert (tmp_path / DEFAULT_CONFIG_DIR.lstrip("/")).is_dir()


@pytest.mark.parametrize(("state", "status", "words"), [
    (UnitState("loaded", "active", "running", "enabled", ""), Status.OK, "active (running), enabled"),
    (UnitState("not-found", "inactive", "dead", "", ""), Status.WARN, "not installed"),
    (UnitState("loaded", "failed", "failed", "enabled", ""), Status.WARN, "failed"),
    (UnitState("loaded", "inactive", "dead", "disabled", ""), Status.WARN, "inactive (dead), disabled"),
    (None, Status.WARN, "could not be asked"),
])
def test_check_reports_the_unit_state(state: UnitState | None, status: Status, words: str) -> None:
    finding = check_service(state)
    assert finding.status is status
    assert words in finding.detail
    assert UNIT_NAME in finding.part


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="needs systemd-analyze (Debian: systemd)")
def test_systemd_accepts_every_key_of_the_unit(tmp_path: Path) -> None:
    unit = tmp_path / UNIT_NAME
    unit.write_text(render_unit(sys.executable))
    result = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=60,
                            stdin=subprocess.DEVNULL)
    # An unknown or misspelt key is only a warning to systemd: any output at all fails here.
    assert (result.returncode, result.stdout + result.stderr) == (0, "")
