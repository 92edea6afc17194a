"""`crio-fast check` on this node: what is there reads OK (exit 0), and
configurations that point at missing parts read MISSING with a hint (exit 1)."""

from __future__ import annotations

import dataclasses
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from crio_fast import _native
from crio_fast.check import (
    RECOMMENDED_INOTIFY_INSTANCES,
    Status,
    check_idmapped_overlay,
    check_inotify,
    check_namespaces,
    check_overlay_lower_dirs,
    check_overlayfs,
    overlay_layer_limit,
)
from crio_fast.config.schema import Config, RuntimeHandler
from tests.support.daemon import run_cli

pytestmark = pytest.mark.integration

LINE = re.compile(r"^(OK|MISSING|WARN) +([^:]+): (.*)$")


def findings(stdout: str) -> dict[str, tuple[str, str]]:
    """part -> (status, detail) from the command's output."""
    found = {}
    for line in stdout.splitlines():
        m = LINE.match(line)
        if m:
            found[m.group(2)] = (m.group(1), m.group(3))
    return found


def test_check_passes_on_this_node(daemon_dirs) -> None:
    result = run_cli(daemon_dirs, "check")
    assert result.returncode == 0, result.stdout + result.stderr
    found = findings(result.stdout)
    for part in ("overlayfs", "pid namespace", "net namespace", "ipc namespace", "uts namespace", "mnt namespace",
                 "user namespace", "cgroup namespace", "cgroups", "pod monitor", "CNI plugin loopback",
                 "CNI plugin bridge", "CNI plugin host-local", "CNI plugin portmap", "runtime native",
                 "socket directory"):
        assert found[part][0] == "OK", (part, result.stdout)
    assert re.match(r"(v1|v2|hybrid) layout", found["cgroups"][1]), found["cgroups"]
    assert found["pod monitor"][1].endswith("--check: ok")
    # What the pod monitor's own probe finds decides the line.
    probe = subprocess.run([str(_native.monitor_path()), "--probe-fs-param", "overlay", "lowerdir+", "/"],
                           capture_output=True, text=True, timeout=10, check=False)
    if probe.returncode == 0:
        assert found["overlay lower dirs"][0] == "OK", result.stdout
    else:
        assert found["overlay lower dirs"][0] == "WARN" and "Linux 6.8" in found["overlay lower dirs"][1]
    assert str(daemon_dirs.runroot) in found["socket directory"][1]
    assert "All required parts are there" in result.stdout
    # What the monitor's probe finds decides the line (before Linux 5.19, or on a root whose filesystem
    # refuses ID-mapped mounts, it is a WARN).
    probe = subprocess.run([str(_native.monitor_path()), "--probe-idmap-overlay", str(daemon_dirs.base)],
                           capture_output=True, text=True, timeout=10, check=False)
    assert found["user namespaces"][0] == ("OK" if probe.returncode == 0 else "WARN"), result.stdout
    assert "hostUsers: false" in found["user namespaces"][1]
    limit = int(Path("/proc/sys/fs/inotify/max_user_instances").read_text())
    assert found["inotify instances"] == (
        "OK" if limit >= RECOMMENDED_INOTIFY_INSTANCES else "WARN", found["inotify instances"][1])
    assert f"max_user_instances is {limit}" in found["inotify instances"][1]


def test_user_namespaces_finding_says_what_the_node_lacks(tmp_path: Path) -> None:
    script = tmp_path / "monitor"
    script.write_text("#!/bin/sh\n[ \"$1\" = --probe-idmap-overlay ] || exit 99\n"
                      "echo 'refused: ID-map /x: Invalid argument'\nexit 1\n")
    script.chmod(0o755)
    config = Config()
    config = dataclasses.replace(config, runtime=dataclasses.replace(config.runtime, monitor_path=str(script)))
    finding = check_idmapped_overlay(config)
    assert finding.status is Status.WARN
    assert "ID-map /x: Invalid argument" in finding.detail and "refused" in finding.detail
    assert "Linux 5.19" in finding.hint


def test_user_namespaces_finding_names_a_run_root_closed_to_oci_runtimes(tmp_path: Path) -> None:
    # pytest's tmp_path is under a 0700 directory: closed to the pods' roots, as runc and crun need it open.
    script = tmp_path / "monitor"
    script.write_text("#!/bin/sh\necho 'ok: an overlay takes an ID-mapped lower layer on /x'\n")
    script.chmod(0o755)
    config = Config()
    runtimes = {**config.runtime.runtimes, "runc": RuntimeHandler(runtime_type="oci", runtime_path="/usr/sbin/runc")}
    config = dataclasses.replace(
        config, crio=dataclasses.replace(config.crio, runroot=str(tmp_path / "run")),
        runtime=dataclasses.replace(config.runtime, monitor_path=str(script), runtimes=runtimes))
    finding = check_idmapped_overlay(config)
    assert finding.status is Status.WARN, finding
    assert "runc refuse pods with hostUsers: false" in finding.detail and finding.hint.startswith("chmod o+x ")


def test_check_runs_configured_runtimes(daemon_dirs) -> None:
    runc = shutil.which("runc")
    assert runc, "runc is installed by scripts/install-deps"
    result = run_cli(daemon_dirs, "--runtimes", f"runc:{runc}", "--runtimes", "ghost:/nonexistent/ghost-runtime",
                     "check")
    assert result.returncode == 1, result.stdout
    found = findings(result.stdout)
    assert found["runtime runc"][0] == "OK" and "runc version" in found["runtime runc"][1], found["runtime runc"]
    assert found["runtime ghost"] == ("MISSING", "runtime_path /nonexistent/ghost-runtime does not exist")
    assert "hint: install ghost or fix [crio.runtime.runtimes.ghost] runtime_path" in result.stdout
    assert "external runtimes" not in found  # one is configured, so no "none configured" warning


def test_check_reports_missing_cni_plugins_and_unusable_socket_dir(daemon_dirs, tmp_path: Path) -> None:
    empty_plugins = tmp_path / "no-plugins"
    empty_plugins.mkdir()
    not_a_dir = tmp_path / "a-file"
    not_a_dir.write_text("")
    result = run_cli(daemon_dirs, "--cni-plugin-dir", str(empty_plugins), "--listen",
                     str(not_a_dir / "sub" / "crio.sock"), "check")
    assert result.returncode == 1, result.stdout
    found = findings(result.stdout)
    assert found["CNI plugin loopback"] == ("MISSING", f"not found in {empty_plugins}")
    for optional in ("bridge", "host-local", "portmap"):
        assert found[f"CNI plugin {optional}"][0] == "WARN", result.stdout
    assert "containernetworking-plugins" in result.stdout
    assert found["socket directory"][0] == "MISSING" and str(not_a_dir) in found["socket directory"][1]
    assert "2 required part(s) missing" in result.stdout
    # What is there still reads OK.
    assert found["overlayfs"][0] == "OK" and found["pod monitor"][0] == "OK"


def test_missing_kernel_features_are_named_with_a_hint(tmp_path: Path) -> None:
    # A kernel without overlayfs and without net/user namespaces cannot be
    # booted here, so these read what such a kernel's /proc would hold.
    proc = tmp_path / "proc"
    (proc / "self" / "ns").mkdir(parents=True)
    (proc / "filesystems").write_text("nodev\tsysfs\nnodev\tproc\n\text4\n")
    for kind in ("pid", "ipc", "uts", "mnt", "cgroup"):
        os.symlink(f"{kind}:[4026531836]", proc / "self" / "ns" / kind)

    modules = tmp_path / "modules"
    modules.mkdir()
    (modules / "modules.dep").write_text("kernel/fs/ext4/ext4.ko.xz: kernel/fs/jbd2/jbd2.ko.xz\n")
    overlay = check_overlayfs(str(proc), str(modules))
    assert overlay.status is Status.MISSING and "modprobe overlay" in overlay.hint
    # Not loaded yet but shipped as a module: the first overlay mount loads it.
    (modules / "modules.dep").write_text("kernel/fs/overlayfs/overlay.ko.xz:\n")
    overlay = check_overlayfs(str(proc), str(modules))
    assert overlay.status is Status.OK and "kernel/fs/overlayfs/overlay.ko.xz" in overlay.detail
    by_kind = {f.part.split()[0]: f for f in check_namespaces(str(proc))}
    assert by_kind["net"].status is Status.MISSING and "CONFIG_NET_NS" in by_kind["net"].hint
    assert by_kind["user"].status is Status.WARN
    assert by_kind["pid"].status is Status.OK

    (proc / "filesystems").write_text("nodev\tsysfs\nnodev\toverlay\n")
    assert check_overlayfs(str(proc)).status is Status.OK


def test_inotify_finding_asks_for_room_for_a_monitor_per_pod(tmp_path: Path) -> None:
    limits = tmp_path / "sys" / "fs" / "inotify"
    limits.mkdir(parents=True)
    (limits / "max_user_instances").write_text("128\n")
    low = check_inotify(str(tmp_path))
    assert low.status is Status.WARN and "past about 128 pods" in low.detail
    assert "fs.inotify.max_user_instances = 8192" in low.hint and "/etc/sysctl.d" in low.hint
    (limits / "max_user_instances").write_text("8192\n")
    assert check_inotify(str(tmp_path)).status is Status.OK
    (limits / "max_user_instances").unlink()
    assert check_inotify(str(tmp_path)).status is Status.WARN


def fake_monitor(tmp_path: Path, line: str, status: int) -> Config:
    script = tmp_path / "fake-monitor"
    script.write_text(f"#!/bin/sh\n[ \"$1 $2 $3 $4\" = \"--probe-fs-param overlay lowerdir+ /\" ] || exit 99\n"
                      f"echo '{line}'\nexit {status}\n")
    script.chmod(0o755)
    config = Config()
    return dataclasses.replace(config, runtime=dataclasses.replace(config.runtime, monitor_path=str(script)))


def test_overlay_lower_dirs_finding_says_when_the_kernel_is_too_old(tmp_path: Path) -> None:
    # What the monitor's probe prints on 6.1 (no overlay parser), on 6.5-6.7 and on 6.8+.
    config = fake_monitor(tmp_path, "no-parser: overlay takes even the unknown parameter crio-fast-no-such-parameter",
                          1)
    finding = check_overlay_lower_dirs(config)
    limit = overlay_layer_limit(config.crio.root, config.crio.runroot)
    assert 30 <= limit <= 40, "about 36 with the default root and runroot"
    assert finding.status is Status.WARN
    assert finding.detail.startswith("the kernel is too old for overlay lowerdir+ (Linux 6.8)")
    assert f"more than about {limit} layers cannot run here" in finding.detail
    assert finding.detail.endswith("(probe: no-parser)") and "Linux 6.8" in finding.hint
    finding = check_overlay_lower_dirs(fake_monitor(tmp_path, "refused: overlay refuses lowerdir+=/: EINVAL", 1))
    assert finding.status is Status.WARN and "too old" in finding.detail
    finding = check_overlay_lower_dirs(fake_monitor(tmp_path, "no-fsopen: fsopen overlay: Operation not permitted", 1))
    assert finding.status is Status.WARN and finding.detail.startswith("fsopen cannot be used")
    finding = check_overlay_lower_dirs(fake_monitor(tmp_path, "error: fsconfig overlay: Too many open files", 2))
    assert finding.status is Status.WARN and finding.detail.startswith("cannot tell whether overlayfs takes lowerdir+")
    finding = check_overlay_lower_dirs(fake_monitor(tmp_path, "taken: overlay takes lowerdir+", 0))
    assert finding.status is Status.OK and "any number of layers" in finding.detail
    # A longer root leaves room for fewer layers.
    assert overlay_layer_limit("/" + "r" * 100, config.crio.runroot) < limit


def test_the_daemons_self_check_names_what_the_monitor_misses(tmp_path: Path, monkeypatch) -> None:
    """RuntimeReady's reason: the monitor prints its `missing:` lines on stdout, not stderr."""
    from crio_fast.server import engine

    script = tmp_path / "old-kernel-monitor"
    script.write_text("#!/bin/sh\necho 'missing: mount_setattr (Linux 5.12): Function not implemented'\nexit 1\n")
    script.chmod(0o755)
    monkeypatch.setattr(engine._native, "monitor_path", lambda: script)
    assert engine.check_monitor() == (
        False, "monitor self check failed (1): missing: mount_setattr (Linux 5.12): Function not implemented")
