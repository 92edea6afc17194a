"""The configuration layer: files, drop-ins, flags, validation and rendering.

Every test reads files it writes under tmp_path; the host's /etc/crio-fast is
never read (config_path and config_dir are always given).
"""

from __future__ import annotations

import argparse
import dataclasses
import re
import tomllib
from pathlib import Path

import pytest

from crio_fast.config import (
    LINUX_CAPABILITIES,
    Config,
    ConfigError,
    RuntimeHandler,
    add_config_flags,
    load_config,
    parse_duration,
    render_config,
)
from crio_fast.config import loader as config_loader


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="crio-fast-test")
    add_config_flags(p)
    return p


def load(
    tmp_path: Path, main: str | None = "", drop_ins: dict[str, str] | None = None, argv: list[str] | None = None
) -> tuple[Config, list[str]]:
    """Write the main file (unless None) and drop-ins under tmp_path and load them with ``argv``."""
    main_path = tmp_path / "crio.conf"
    if main is not None:
        main_path.write_text(main)
    drop_in_dir = tmp_path / "crio.conf.d"
    if drop_ins is not None:
        drop_in_dir.mkdir(exist_ok=True)
        for name, text in drop_ins.items():
            (drop_in_dir / name).write_text(text)
    args = parser().parse_args(argv or [])
    return load_config(args, config_path=str(main_path), config_dir=str(drop_in_dir))


def load_error(
    tmp_path: Path, main: str | None = "", drop_ins: dict[str, str] | None = None, argv: list[str] | None = None
) -> str:
    with pytest.raises(ConfigError) as info:
        load(tmp_path, main, drop_ins, argv)
    return str(info.value)


# --------------------------------------------------------------------------
# Defaults and precedence
# --------------------------------------------------------------------------


def test_empty_file_gives_the_documented_defaults(tmp_path: Path) -> None:
    config, warnings = load(tmp_path)
    assert warnings == []
    assert config == Config()
    assert config.sources == [str(tmp_path / "crio.conf")]
    assert config.crio.root == "/var/lib/crio-fast"
    assert config.crio.runroot == "/run/crio-fast"
    assert config.crio.version_file == "/var/run/crio-fast/version"
    assert config.crio.clean_shutdown_file == "/var/lib/crio-fast/clean.shutdown"
    assert config.crio.internal_wipe is True
    assert config.api.listen == "/run/crio-fast/crio.sock"
    assert config.api.stream_port == "0"
    assert config.api.grpc_max_send_msg_size == config.api.grpc_max_recv_msg_size == 83886080
    assert config.runtime.default_runtime == "native"
    assert list(config.runtime.runtimes) == ["native"]
    native = config.runtime.runtimes["native"]
    assert (native.runtime_type, native.runtime_path, native.runtime_root) == (
        "native",
        "",
        "/run/crio-fast/runtimes/native",
    )
    assert config.runtime.default_capabilities == [
        "CHOWN", "DAC_OVERRIDE", "FSETID", "FOWNER", "SETGID", "SETUID", "SETPCAP", "NET_BIND_SERVICE", "KILL",
    ]  # fmt: skip
    assert config.runtime.pids_limit == -1
    assert config.runtime.container_exits_dir == "/run/crio-fast/exits"
    assert config.runtime.namespaces_dir == "/run/crio-fast/ns"
    assert config.image.pause_image == ""
    assert config.image.pull_progress_timeout == "0s"
    assert config.network.plugin_dirs == ["/opt/cni/bin/", "/usr/lib/cni/"]
    assert config.network.plugin_timeout == 60
    assert config.network.netns_pool_size == 4
    assert config.metrics.metrics_port == 9090
    assert config.stats.stats_collection_period == 0
    assert config.runtime_handler_names() == ["native"]


def test_precedence_defaults_file_drop_ins_flags_for_one_key(tmp_path: Path) -> None:
    # Built-in default.
    config, _ = load(tmp_path)
    assert config.runtime.pids_limit == -1
    # Main file beats the default.
    main = "[crio.runtime]\npids_limit = 100\n"
    config, _ = load(tmp_path, main)
    assert config.runtime.pids_limit == 100
    # A drop-in beats the main file; "9.conf" sorts after "10.conf" (lexical, not numeric), so it wins.
    drop_ins = {"9.conf": "[crio.runtime]\npids_limit = 900\n", "10.conf": "[crio.runtime]\npids_limit = 1000\n"}
    config, _ = load(tmp_path, main, drop_ins)
    assert config.runtime.pids_limit == 900
    assert config.sources == [
        str(tmp_path / "crio.conf"),
        str(tmp_path / "crio.conf.d" / "10.conf"),
        str(tmp_path / "crio.conf.d" / "9.conf"),
    ]
    # A flag beats everything.
    config, _ = load(tmp_path, main, drop_ins, ["--pids-limit", "5"])
    assert config.runtime.pids_limit == 5


def test_layers_merge_key_by_key_and_lists_are_replaced(tmp_path: Path) -> None:
    main = (
        '[crio.runtime]\nlog_level = "debug"\ndefault_sysctls = ["kernel.msgmax=1", "kernel.msgmnb=2"]\n[crio.api]\nstream_port = "1234"\n'
    )
    drop_ins = {"50-sysctls.conf": '[crio.runtime]\ndefault_sysctls = ["kernel.sem=3"]\n'}
    config, _ = load(tmp_path, main, drop_ins, ["--stream-address", "::1"])
    assert config.runtime.log_level == "debug"  # only in the main file
    assert config.runtime.default_sysctls == ["kernel.sem=3"]  # drop-in's list replaces, not appends
    assert config.api.stream_port == "1234"
    assert config.api.stream_address == "::1"


def test_drop_in_dir_reads_only_conf_files(tmp_path: Path) -> None:
    drop_ins = {
        "01-good.conf": '[crio.runtime]\nlog_level = "warn"\n',
        "02-ignored.conf.bak": "this is not toml",
        "README": "not toml either",
    }
    (tmp_path / "crio.conf.d").mkdir()
    (tmp_path / "crio.conf.d" / "03-dir.conf").mkdir()
    config, warnings = load(tmp_path, "", drop_ins)
    assert config.runtime.log_level == "warn"
    assert config.sources == [str(tmp_path / "crio.conf"), str(tmp_path / "crio.conf.d" / "01-good.conf")]
    assert warnings == []


def test_missing_drop_in_dir_is_fine(tmp_path: Path) -> None:
    config, warnings = load_config(config_path=_write(tmp_path / "c.conf", ""), config_dir=str(tmp_path / "absent"))
    assert config == Config() and warnings == []


def test_missing_default_main_file_is_fine_and_present_one_is_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    default_path = tmp_path / "default-crio.conf"
    monkeypatch.setattr(config_loader, "DEFAULT_CONFIG_PATH", str(default_path))
    monkeypatch.setattr(config_loader, "DEFAULT_CONFIG_DIR", str(tmp_path / "default-crio.conf.d"))
    config, _ = load_config(None)
    assert config == Config() and config.sources == []
    default_path.write_text('[crio.runtime]\nlog_level = "trace"\n')
    config, _ = load_config(parser().parse_args([]))
    assert config.runtime.log_level == "trace"
    assert config.sources == [str(default_path)]


def test_explicit_paths_override_args(tmp_path: Path) -> None:
    from_args = _write(tmp_path / "args.conf", '[crio.runtime]\nlog_level = "error"\n')
    explicit = _write(tmp_path / "explicit.conf", '[crio.runtime]\nlog_level = "debug"\n')
    args = parser().parse_args(["--config", from_args, "--config-dir", str(tmp_path / "none")])
    assert load_config(args)[0].runtime.log_level == "error"
    assert load_config(args, config_path=explicit)[0].runtime.log_level == "debug"


def test_runtimes_merge_across_files(tmp_path: Path) -> None:
    main = '[crio.runtime.runtimes.runc]\nruntime_path = "/usr/sbin/runc"\n'
    drop_ins = {
        "runc-root.conf": '[crio.runtime.runtimes.runc]\nruntime_root = "/run/other-runc"\n',
        "default.conf": '[crio.runtime]\ndefault_runtime = "runc"\n',
    }
    config, _ = load(tmp_path, main, drop_ins)
    runc = config.runtime_handler("runc")
    assert (runc.runtime_type, runc.runtime_path, runc.runtime_root) == ("oci", "/usr/sbin/runc", "/run/other-runc")
    assert config.runtime.default_handler is runc
    assert config.runtime_handler_names() == ["runc", "native"]


def test_run_state_paths_follow_runroot_unless_set(tmp_path: Path) -> None:
    run = tmp_path / "run"
    argv = ["--root", str(tmp_path / "root"), "--runroot", str(run), "--runtimes", "runc:/usr/sbin/runc"]
    config, _ = load(tmp_path, '[crio.runtime]\nnamespaces_dir = "/srv/ns"\n', None, argv)
    assert config.runtime.container_exits_dir == str(run / "exits")
    assert config.runtime.container_attach_socket_dir == str(run / "attach")
    assert config.runtime.namespaces_dir == "/srv/ns"
    assert config.crio.version_file == str(run / "version")
    assert config.crio.clean_shutdown_file == str(tmp_path / "root" / "clean.shutdown")
    assert config.runtime.runtimes["native"].runtime_root == str(run / "runtimes" / "native")
    assert config.runtime.runtimes["runc"].runtime_root == str(run / "runtimes" / "runc")


def test_config_is_frozen_but_replaceable(tmp_path: Path) -> None:
    config, _ = load(tmp_path)
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.runtime.log_level = "debug"  # type: ignore[misc]
    changed = dataclasses.replace(config, runtime=dataclasses.replace(config.runtime, log_level="debug"))
    assert changed.runtime.log_level == "debug" and changed != config


# --------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------


def _write(path: Path, text: str) -> str:
    path.write_text(text)
    return str(path)


def test_malformed_toml_names_file_and_position(tmp_path: Path) -> None:
    message = load_error(tmp_path, '[crio]\nroot = "/x"\nrunroot = \n')
    assert message.startswith(f"{tmp_path / 'crio.conf'}: malformed TOML")
    assert "line 3" in message


def test_malformed_drop_in_is_named(tmp_path: Path) -> None:
    message = load_error(tmp_path, "", {"20-broken.conf": "[crio.api\n"})
    assert str(tmp_path / "crio.conf.d" / "20-broken.conf") in message
    assert "malformed TOML" in message and "line 1" in message


def test_invalid_utf8_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "crio.conf"
    path.write_bytes(b'[crio]\nroot = "/\xff"\n')
    with pytest.raises(ConfigError, match="not valid UTF-8"):
        load_config(config_path=str(path), config_dir=str(tmp_path / "none"))


@pytest.mark.parametrize(
    ("toml", "expected"),
    [
        (
            '[crio.api]\ngrpc_max_send_msg_size = "12"',
            "crio.api.grpc_max_send_msg_size: expected an integer, got string '12'",
        ),
        ("[crio.runtime]\npids_limit = true", "crio.runtime.pids_limit: expected an integer, got boolean true"),
        ("[crio]\ninternal_wipe = 1", "crio.internal_wipe: expected a boolean, got integer 1"),
        ("[crio.network]\nplugin_timeout = 1.5", "crio.network.plugin_timeout: expected an integer, got float 1.5"),
        ("[crio]\nroot = 5", "crio.root: expected a string, got integer 5"),
        ("[crio.api]\nstream_port = 10010", "crio.api.stream_port: expected a string, got integer 10010"),
        (
            '[crio.runtime]\ndefault_sysctls = ["kernel.msgmax=1", 3]',
            "crio.runtime.default_sysctls: expected an array of strings, got integer 3 as item 2",
        ),
        (
            '[crio.runtime]\nhooks_dir = "/etc/hooks"',
            "crio.runtime.hooks_dir: expected an array of strings, got string '/etc/hooks'",
        ),
        (
            "[crio.runtime.runtimes.native]\nplatform_runtime_paths = { x = 1 }",
            "platform_runtime_paths: expected a table of strings, got integer 1",
        ),
        ("[crio]\napi = 3", "crio.api: expected a table, got integer 3"),
        ("crio = 3", "crio: expected a table, got integer 3"),
        (
            "[crio.image]\npull_progress_timeout = 1970-01-01T00:00:00Z",
            "crio.image.pull_progress_timeout: expected a string, got date-time",
        ),
    ],
)
def test_wrong_types_are_errors(tmp_path: Path, toml: str, expected: str) -> None:
    message = load_error(tmp_path, toml + "\n")
    assert message.startswith(str(tmp_path / "crio.conf") + ": ")
    assert expected in message


@pytest.mark.parametrize(
    ("toml", "expected"),
    [
        (
            '[crio.runtime]\ncgroup_manager = "upstart"',
            "crio.runtime.cgroup_manager: expected one of cgroupfs, systemd, got 'upstart'",
        ),
        ('[crio.runtime]\nlog_level = "loud"', "crio.runtime.log_level: expected one of fatal, panic"),
        (
            '[crio.image]\nimage_volumes = "copy"',
            "crio.image.image_volumes: expected one of mkdir, bind, ignore, got 'copy'",
        ),
        (
            '[crio.runtime.runtimes.x]\nruntime_type = "vm"\nruntime_path = "/x"',
            "crio.runtime.runtimes.x.runtime_type: expected one of native, oci, got 'vm'",
        ),
        (
            "[crio.metrics]\nmetrics_port = 0",
            "crio.metrics.metrics_port: expected a port number from 1 to 65535, got 0",
        ),
        (
            "[crio.metrics]\nmetrics_port = 65536",
            "crio.metrics.metrics_port: expected a port number from 1 to 65535, got 65536",
        ),
        ('[crio.api]\nstream_port = "70000"', "crio.api.stream_port: expected a port number"),
        ('[crio.api]\nstream_port = "-1"', "crio.api.stream_port: expected a port number"),
        (
            '[crio.api]\nstream_idle_timeout = "4 hours"',
            'crio.api.stream_idle_timeout: expected a duration such as "30s"',
        ),
        ('[crio.image]\npull_progress_timeout = ""', "crio.image.pull_progress_timeout: expected a duration"),
        (
            '[crio.image]\npull_progress_timeout = "-5s"',
            "crio.image.pull_progress_timeout: expected a duration that is not negative",
        ),
        ('[crio]\nroot = "var/lib/crio-fast"', "crio.root: expected an absolute path, got 'var/lib/crio-fast'"),
        ('[crio.api]\nlisten = ""', "crio.api.listen: expected an absolute path, got ''"),
        ('[crio.network]\nnetwork_dir = "net.d"', "crio.network.network_dir: expected an absolute path, got 'net.d'"),
        (
            '[crio.network]\nplugin_dirs = ["/opt/cni/bin", "cni"]',
            "crio.network.plugin_dirs: item 2: expected an absolute path, got 'cni'",
        ),
        ('[crio.api]\nstream_tls_cert = "cert.pem"', 'crio.api.stream_tls_cert: expected an absolute path or ""'),
        (
            '[crio.runtime]\ndefault_capabilities = ["CHOWN", "CAP_FLY"]',
            "crio.runtime.default_capabilities: item 2: expected a Linux capability name",
        ),
        (
            '[crio.runtime]\ndefault_ulimits = ["nofile=2048:1024"]',
            'crio.runtime.default_ulimits: item 1: expected "name=soft:hard"',
        ),
        ('[crio.runtime]\ndefault_ulimits = ["files=1:2"]', "crio.runtime.default_ulimits: item 1:"),
        ('[crio.runtime]\ndefault_sysctls = ["novalue"]', 'crio.runtime.default_sysctls: item 1: expected "key=value"'),
        (
            '[crio.runtime]\ndefault_sysctls = ["net.ipv4.ip_forward=1", "kernel.panic=5"]',
            "crio.runtime.default_sysctls: item 2: sysctl 'kernel.panic' is not namespaced",
        ),
        ('[crio.runtime]\nmonitor_env = ["1X=2"]', 'crio.runtime.monitor_env: item 1: expected "NAME=value"'),
        (
            '[crio.runtime]\ninfra_ctr_cpuset = "3-1"',
            "crio.runtime.infra_ctr_cpuset: expected CPU ranges in increasing order",
        ),
        (
            "[crio.runtime]\nlog_size_max = 0",
            "crio.runtime.log_size_max: expected -1 (unlimited) or a positive integer, got 0",
        ),
        ("[crio.runtime]\npids_limit = -2", "crio.runtime.pids_limit: expected an integer >= -1, got -2"),
        ("[crio.network]\nnetns_pool_size = -1", "crio.network.netns_pool_size: expected an integer >= 0, got -1"),
        (
            "[crio.image]\nmax_parallel_layer_pulls = 0",
            "crio.image.max_parallel_layer_pulls: expected an integer >= 1, got 0",
        ),
        (
            '[crio.metrics]\nmetrics_host = "bad host"',
            "crio.metrics.metrics_host: expected an IP address or a host name",
        ),
        (
            '[crio.runtime.runtimes."bad/name"]\nruntime_path = "/x"',
            "crio.runtime.runtimes.bad/name: expected a runtime name",
        ),
    ],
)
def test_impossible_values_are_errors(tmp_path: Path, toml: str, expected: str) -> None:
    message = load_error(tmp_path, toml + "\n")
    assert message.startswith(str(tmp_path / "crio.conf") + ": ")
    assert expected in message


def test_default_runtime_must_be_configured(tmp_path: Path) -> None:
    message = load_error(tmp_path, "", {"x.conf": '[crio.runtime]\ndefault_runtime = "kata"\n'})
    assert message == (
        f"{tmp_path / 'crio.conf.d' / 'x.conf'}: crio.runtime.default_runtime:"
        " expected the name of a configured runtime (native), got 'kata'"
    )


def test_oci_runtime_needs_a_runtime_path(tmp_path: Path) -> None:
    message = load_error(tmp_path, '[crio.runtime.runtimes.runc]\nruntime_type = "oci"\n')
    assert f"{tmp_path / 'crio.conf'}: crio.runtime.runtimes.runc.runtime_path:" in message
    assert "absolute path of the runtime binary" in message
    message = load_error(tmp_path, '[crio.runtime.runtimes.runc]\nruntime_path = "runc"\n')
    assert "crio.runtime.runtimes.runc.runtime_path: expected an absolute path" in message


def test_runtime_path_need_not_exist_at_load_time(tmp_path: Path) -> None:
    missing = str(tmp_path / "no-such-runtime")
    config, _ = load(tmp_path, f'[crio.runtime.runtimes.ghost]\nruntime_path = "{missing}"\n')
    assert config.runtime_handler("ghost").runtime_path == missing


def test_native_runtime_takes_no_path(tmp_path: Path) -> None:
    message = load_error(tmp_path, '[crio.runtime.runtimes.native]\nruntime_path = "/usr/sbin/runc"\n')
    assert 'crio.runtime.runtimes.native.runtime_path: expected "" for a native runtime' in message


def test_cross_key_rules(tmp_path: Path) -> None:
    message = load_error(
        tmp_path, '[crio.runtime]\nmonitor_cgroup = "system.slice"\n[crio.api]\nstream_enable_tls = true\n'
    )
    assert 'crio.runtime.monitor_cgroup: expected "pod" with cgroup_manager "cgroupfs"' in message
    assert "crio.api.stream_tls_cert: expected a file when stream_enable_tls is true" in message
    assert "crio.api.stream_tls_key: expected a file when stream_enable_tls is true" in message
    config, _ = load(tmp_path, '[crio.runtime]\nmonitor_cgroup = "system.slice"\ncgroup_manager = "systemd"\n')
    assert config.runtime.monitor_cgroup == "system.slice"


def test_all_errors_of_a_file_are_reported_one_per_line(tmp_path: Path) -> None:
    main = '[crio]\nroot = "rel"\n[crio.api]\ngrpc_max_recv_msg_size = "x"\n[crio.metrics]\nmetrics_port = 99999\n'
    message = load_error(tmp_path, main, {"z.conf": '[crio.runtime]\ncgroup_manager = "none"\n'})
    lines = message.splitlines()
    assert len(lines) == 4
    assert lines[0].startswith(f"{tmp_path / 'crio.conf'}: crio.root:")
    assert lines[1].startswith(f"{tmp_path / 'crio.conf'}: crio.api.grpc_max_recv_msg_size:")
    assert lines[2].startswith(f"{tmp_path / 'crio.conf'}: crio.metrics.metrics_port:")
    assert lines[3].startswith(f"{tmp_path / 'crio.conf.d' / 'z.conf'}: crio.runtime.cgroup_manager:")


def test_missing_explicit_config_file_is_an_error(tmp_path: Path) -> None:
    missing = tmp_path / "nope.conf"
    with pytest.raises(
        ConfigError, match=re.escape(f"{missing}: cannot read the configuration file: No such file or directory")
    ):
        load_config(config_path=str(missing), config_dir=str(tmp_path / "none"))
    args = parser().parse_args(["-c", str(missing), "-d", str(tmp_path / "none")])
    with pytest.raises(ConfigError, match="No such file or directory"):
        load_config(args)


def test_directory_as_config_file_is_an_error(tmp_path: Path) -> None:
    # Root reads any file whatever its mode, so an unreadable "file" is made with a directory.
    with pytest.raises(ConfigError, match=re.escape(f"{tmp_path}: cannot read the configuration file: Is a directory")):
        load_config(config_path=str(tmp_path), config_dir=str(tmp_path / "none"))


def test_file_as_drop_in_dir_is_an_error(tmp_path: Path) -> None:
    not_a_dir = _write(tmp_path / "file", "")
    with pytest.raises(
        ConfigError, match=re.escape(f"{not_a_dir}: cannot read the drop-in directory: Not a directory")
    ):
        load_config(config_path=_write(tmp_path / "c.conf", ""), config_dir=not_a_dir)


# --------------------------------------------------------------------------
# Warnings
# --------------------------------------------------------------------------


def test_unknown_keys_and_tables_are_warnings(tmp_path: Path) -> None:
    main = (
        '[crio]\nstorage_driver = "overlay"\n'
        "[crio.runtime]\nconmon_env = []\n"
        '[crio.runtime.runtimes.native]\nruntime_engine = "x"\n'
        "[crio.tracing]\nenable_tracing = true\n"
        "[other]\n"
    )
    config, warnings = load(tmp_path, main, {"d.conf": "top_level = 1\n"})
    assert config == Config()
    path, drop_in = tmp_path / "crio.conf", tmp_path / "crio.conf.d" / "d.conf"
    assert warnings[0] == f"{path}: unknown key crio.storage_driver (ignored)"
    assert warnings[1].startswith(f"{path}: unknown key crio.runtime.conmon_env (ignored): conmon_env is not supported")
    assert warnings[2] == f"{path}: unknown key crio.runtime.runtimes.native.runtime_engine (ignored)"
    assert warnings[3] == f"{path}: unknown table crio.tracing (ignored)"
    assert warnings[4] == f"{path}: unknown table other (ignored)"
    assert warnings[5] == f"{drop_in}: unknown key top_level (ignored)"
    assert len(warnings) == 6


def test_pause_settings_warn(tmp_path: Path) -> None:
    _, warnings = load(
        tmp_path, '[crio.image]\npause_image = "registry.k8s.io/pause:3.9"\n[crio.runtime]\ndrop_infra_ctr = false\n'
    )
    assert any("crio.image.pause_image" in w and "no pause container" in w for w in warnings)
    assert any("crio.runtime.drop_infra_ctr" in w and "no effect" in w for w in warnings)


def test_capabilities_are_normalised(tmp_path: Path) -> None:
    config, _ = load(
        tmp_path, '[crio.runtime]\ndefault_capabilities = ["cap_net_raw", "CAP_SYS_ADMIN", "Chown", "CHOWN"]\n'
    )
    assert config.runtime.default_capabilities == ["NET_RAW", "SYS_ADMIN", "CHOWN"]
    assert len(LINUX_CAPABILITIES) == 41 and LINUX_CAPABILITIES[40] == "CHECKPOINT_RESTORE"


# --------------------------------------------------------------------------
# Flags
# --------------------------------------------------------------------------


def test_flags_default_to_none() -> None:
    args = parser().parse_args([])
    assert all(value is None for value in vars(args).values())


def test_boolean_flag_does_not_swallow_a_subcommand() -> None:
    p = parser()
    p.add_subparsers(dest="command").add_parser("config")
    args = p.parse_args(["--enable-metrics", "config"])
    assert args.enable_metrics is True and args.command == "config"


@pytest.mark.parametrize(
    ("argv", "attribute", "expected"),
    [
        (["-r", "/srv/root"], "crio.root", "/srv/root"),
        (["--runroot", "/srv/run"], "crio.runroot", "/srv/run"),
        (["--log-dir", "/srv/logs"], "crio.log_dir", "/srv/logs"),
        (["--listen", "/srv/run/crio.sock"], "api.listen", "/srv/run/crio.sock"),
        (["--stream-address", "0.0.0.0"], "api.stream_address", "0.0.0.0"),
        (["--stream-port", "10010"], "api.stream_port", "10010"),
        (["--stream-idle-timeout", "1h30m"], "api.stream_idle_timeout", "1h30m"),
        (["--grpc-max-send-msg-size", "1024"], "api.grpc_max_send_msg_size", 1024),
        (["--grpc-max-recv-msg-size", "2048"], "api.grpc_max_recv_msg_size", 2048),
        (["-l", "debug"], "runtime.log_level", "debug"),
        (["--cgroup-manager", "systemd"], "runtime.cgroup_manager", "systemd"),
        (["--pids-limit", "0"], "runtime.pids_limit", 0),
        (["--log-size-max", "65536"], "runtime.log_size_max", 65536),
        (["--default-capabilities", "chown, cap_kill"], "runtime.default_capabilities", ["CHOWN", "KILL"]),
        (["--default-capabilities", ""], "runtime.default_capabilities", []),
        (
            ["--default-sysctls", "net.ipv4.ip_forward=1,kernel.msgmax=8192"],
            "runtime.default_sysctls",
            ["net.ipv4.ip_forward=1", "kernel.msgmax=8192"],
        ),
        (["--ctr-stop-timeout", "10"], "runtime.ctr_stop_timeout", 10),
        (["--registries-conf", "/srv/registries.conf"], "image.registries_conf", "/srv/registries.conf"),
        (["--global-auth-file", "/srv/auth.json"], "image.global_auth_file", "/srv/auth.json"),
        (["--signature-policy", "/srv/policy.json"], "image.signature_policy", "/srv/policy.json"),
        (["--signature-policy-dir", "/srv/policies"], "image.signature_policy_dir", "/srv/policies"),
        (["--registries-d", "/srv/registries.d"], "image.registries_d", "/srv/registries.d"),
        (["--cni-config-dir", "/srv/net.d"], "network.network_dir", "/srv/net.d"),
        (["--cni-plugin-dir", "/srv/a", "--cni-plugin-dir", "/srv/b"], "network.plugin_dirs", ["/srv/a", "/srv/b"]),
        (["--cni-default-network", "podnet"], "network.cni_default_network", "podnet"),
        (["--enable-metrics"], "metrics.enable_metrics", True),
        (["--no-enable-metrics"], "metrics.enable_metrics", False),
        (["--metrics-host", "::1"], "metrics.metrics_host", "::1"),
        (["--metrics-port", "9537"], "metrics.metrics_port", 9537),
    ],
)
def test_each_flag_sets_its_key_over_the_file(
    tmp_path: Path, argv: list[str], attribute: str, expected: object
) -> None:
    section, key = attribute.split(".")
    # The file sets a different value for every key the flags touch, so the flag must win over it.
    main = (
        '[crio]\nroot = "/f/root"\nrunroot = "/f/run"\nlog_dir = "/f/logs"\n'
        '[crio.api]\nlisten = "/f/sock"\nstream_address = "10.0.0.1"\nstream_port = "1"\nstream_idle_timeout = "1s"\n'
        "grpc_max_send_msg_size = 1\ngrpc_max_recv_msg_size = 1\n"
        '[crio.runtime]\nlog_level = "error"\ncgroup_manager = "cgroupfs"\npids_limit = 7\nlog_size_max = 8192\n'
        'default_capabilities = ["SYS_ADMIN"]\ndefault_sysctls = ["net.ipv4.ip_forward=0"]\nctr_stop_timeout = 1\n'
        '[crio.image]\nregistries_conf = "/f/r"\nglobal_auth_file = "/f/a"\nsignature_policy = "/f/p"\n'
        '[crio.network]\nnetwork_dir = "/f/net"\nplugin_dirs = ["/f/bin"]\ncni_default_network = "filenet"\n'
        f"[crio.metrics]\nenable_metrics = {'false' if expected is True else 'true'}\n"
        'metrics_host = "10.0.0.2"\nmetrics_port = 1\n'
    )
    config, _ = load(tmp_path, main, None, argv)
    assert getattr(getattr(config, section), key) == expected


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (
            ["--metrics-port", "70000"],
            "command line: --metrics-port (crio.metrics.metrics_port):"
            " expected a port number from 1 to 65535, got 70000",
        ),
        (
            ["--pids-limit", "lots"],
            "command line: --pids-limit (crio.runtime.pids_limit): expected an integer, got 'lots'",
        ),
        (
            ["--cgroup-manager", "upstart"],
            "command line: --cgroup-manager (crio.runtime.cgroup_manager): expected one of cgroupfs, systemd",
        ),
        (
            ["--cni-config-dir", "net.d"],
            "command line: --cni-config-dir (crio.network.network_dir): expected an absolute path, got 'net.d'",
        ),
        (
            ["--cni-plugin-dir", "bin"],
            "command line: --cni-plugin-dir (crio.network.plugin_dirs): item 1: expected an absolute path",
        ),
        (
            ["--stream-idle-timeout", "soon"],
            "command line: --stream-idle-timeout (crio.api.stream_idle_timeout): expected a duration",
        ),
        (
            ["--default-capabilities", "CHOWN,FLY"],
            "command line: --default-capabilities (crio.runtime.default_capabilities): item 2:",
        ),
        (["--log-level", "chatty"], "command line: --log-level (crio.runtime.log_level): expected one of"),
        (["--root", "relative"], "command line: --root (crio.root): expected an absolute path"),
        (
            ["--default-runtime", "kata"],
            "command line: --default-runtime (crio.runtime.default_runtime): expected the name of a configured runtime",
        ),
    ],
)
def test_flags_are_validated(tmp_path: Path, argv: list[str], expected: str) -> None:
    message = load_error(tmp_path, "", None, argv)
    assert message.startswith(expected), message


def test_runtimes_flag_adds_oci_runtimes(tmp_path: Path) -> None:
    runroot = tmp_path / "run"
    argv = ["--runroot", str(runroot), "--runtimes", "runc:/usr/sbin/runc"]
    argv += ["--runtimes", "crun:/usr/bin/crun:/srv/crun", "--default-runtime", "crun"]
    config, _ = load(tmp_path, "", None, argv)
    assert config.runtime_handler_names() == ["crun", "native", "runc"]
    runc, crun = config.runtime_handler("runc"), config.runtime_handler("crun")
    assert runc == RuntimeHandler(
        runtime_path="/usr/sbin/runc", runtime_type="oci", runtime_root=str(runroot / "runtimes" / "runc")
    )
    assert (crun.runtime_type, crun.runtime_path, crun.runtime_root) == ("oci", "/usr/bin/crun", "/srv/crun")
    assert config.runtime.default_runtime == "crun"


def test_runtimes_flag_overrides_file_runtime_key_by_key(tmp_path: Path) -> None:
    main = '[crio.runtime.runtimes.runc]\nruntime_path = "/old/runc"\nhide_cgroup2_mount = true\n'
    config, _ = load(tmp_path, main, None, ["--runtimes", "runc:/new/runc"])
    runc = config.runtime_handler("runc")
    assert runc.runtime_path == "/new/runc" and runc.hide_cgroup2_mount is True


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("runc", "command line: --runtimes: expected NAME:PATH or NAME:PATH:ROOT, got 'runc'"),
        ("runc:/a:/b:/c", "command line: --runtimes: expected NAME:PATH or NAME:PATH:ROOT"),
        (":/usr/sbin/runc", "command line: --runtimes: expected NAME:PATH"),
        ("runc:runc", "command line: --runtimes (crio.runtime.runtimes.runc.runtime_path): expected an absolute path"),
        (
            "runc:/usr/sbin/runc:root",
            "command line: --runtimes (crio.runtime.runtimes.runc.runtime_root): expected an absolute path",
        ),
        ("r c:/usr/sbin/runc", "command line: --runtimes (crio.runtime.runtimes.r c): expected a runtime name"),
    ],
)
def test_runtimes_flag_is_validated(tmp_path: Path, value: str, expected: str) -> None:
    assert load_error(tmp_path, "", None, ["--runtimes", value]).startswith(expected)


# --------------------------------------------------------------------------
# Rendering
# --------------------------------------------------------------------------

BUSY_CONFIG = """
[crio]
root = "/srv/crio \\"root\\""
internal_wipe = false
[crio.api]
stream_idle_timeout = "4h"
stream_port = "10010"
[crio.runtime]
default_runtime = "runc"
default_ulimits = ["nofile=1024:2048", "core=-1"]
default_sysctls = ["net.ipv4.ping_group_range=0 2147483647"]
hooks_dir = ["/usr/share/containers/oci/hooks.d"]
monitor_env = ["PATH=/bin", "LANG=C.UTF-8", "NOTE=\\u00e9t\\u00e9 \\\\ tab\\t"]
infra_ctr_cpuset = "0-1,3"
[crio.runtime.runtimes.runc]
runtime_path = "/usr/sbin/runc"
allowed_annotations = ["io.kubernetes.cri-o.Devices"]
platform_runtime_paths = { "linux/amd64" = "/usr/sbin/runc-amd64", "linux/arm64" = "/usr/sbin/runc-arm64" }
[crio.runtime.runtimes."kata.v2"]
runtime_path = "/usr/bin/kata"
privileged_without_host_devices = true
[crio.image]
insecure_registries = ["127.0.0.1:5000"]
max_parallel_layer_pulls = 8
[crio.network]
plugin_dirs = []
[crio.stats]
stats_collection_period = 10
"""


@pytest.mark.parametrize("only_changed", [False, True])
def test_render_round_trips(tmp_path: Path, only_changed: bool) -> None:
    argv = [
        "--runroot",
        str(tmp_path / "run"),
        "--runtimes",
        "crun:/usr/bin/crun",
        "--enable-metrics",
        "--metrics-port",
        "9537",
    ]
    config, _ = load(tmp_path, BUSY_CONFIG, {"x.conf": '[crio.runtime]\ndefault_capabilities = ["NET_RAW"]\n'}, argv)
    text = render_config(config, only_changed=only_changed)
    rendered = tmp_path / "rendered" / "crio.conf"
    rendered.parent.mkdir()
    rendered.write_text(text)
    again, warnings = load_config(config_path=str(rendered), config_dir=str(tmp_path / "none"))
    assert warnings == []
    assert again == config
    assert again.runtime.runtimes["runc"].platform_runtime_paths["linux/arm64"] == "/usr/sbin/runc-arm64"


def _keys_and_the_line_above(text: str) -> list[tuple[str, str]]:
    lines = text.splitlines()
    pairs = []
    for index, line in enumerate(lines):
        if re.match(r"^[A-Za-z0-9_\"]+ = ", line):
            pairs.append((line.split(" = ")[0], lines[index - 1]))
    return pairs


def test_render_comments_every_key(tmp_path: Path) -> None:
    config, _ = load(tmp_path, BUSY_CONFIG)
    text = render_config(config)
    pairs = _keys_and_the_line_above(text)
    # Every key of every table is present (7 sections' keys plus 3 runtimes' keys) and has a comment right above.
    assert len(pairs) == 6 + 10 + 28 + 12 + 5 + 5 + 1 + 3 * 9
    for key, above in pairs:
        assert above.startswith("# "), f"{key} has no comment above it"
    assert "no pause" in text.lower()
    # Keys that differ from their default name the default.
    assert '# Default: "/var/lib/crio-fast"' in text
    assert "\nnetns_pool_size = 4\n" in text and "made ahead" in text
    tomllib.loads(text)


def test_render_only_changed(tmp_path: Path) -> None:
    config, _ = load(tmp_path)
    text = render_config(config, only_changed=True)
    assert tomllib.loads(text) == {}
    config, _ = load(tmp_path, '[crio.runtime]\nlog_level = "debug"\n', None, ["--runtimes", "runc:/usr/sbin/runc"])
    document = tomllib.loads(render_config(config, only_changed=True))
    assert document == {
        "crio": {
            "runtime": {
                "log_level": "debug",
                "runtimes": {"runc": {"runtime_path": "/usr/sbin/runc", "runtime_type": "oci"}},
            }
        }
    }


def test_crio_fast_config_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from crio_fast.cli import main

    conf = _write(tmp_path / "crio.conf", '[crio.runtime]\nlog_level = "debug"\n')
    assert main(["--config", conf, "--config-dir", str(tmp_path / "none"), "--pids-limit", "42", "config"]) == 0
    document = tomllib.loads(capsys.readouterr().out)
    assert document["crio"]["runtime"]["log_level"] == "debug"
    assert document["crio"]["runtime"]["pids_limit"] == 42
    assert main(["--config", conf, "--config-dir", str(tmp_path / "none"), "--pids-limit", "x", "config"]) == 1
    assert "--pids-limit" in capsys.readouterr().err


# --------------------------------------------------------------------------
# Durations
# --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("0", 0.0), ("0s", 0.0), ("15s", 15.0), ("30m", 1800.0), ("4h", 14400.0), ("1h30m", 5400.0),
        ("250ms", 0.25), ("1.5h", 5400.0), (".5s", 0.5), ("1us", 1e-6), ("1\u00b5s", 1e-6), ("100ns", 1e-7),
        ("2h45m30.5s", 9930.5), ("-1m", -60.0), ("+3s", 3.0),
    ],
)  # fmt: skip
def test_parse_duration(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize(
    "text", ["", "1", "s", "4 hours", "1h 30m", "1d", "h1", ".s", "1.2.3s", "-", "10S", "3000000h"]
)
def test_parse_duration_rejects_garbage(text: str) -> None:
    with pytest.raises(ValueError):
        parse_duration(text)


def test_netns_pool_size_zero_disables_the_pool(tmp_path: Path) -> None:
    config, warnings = load(tmp_path, "[crio.network]\nnetns_pool_size = 0\n")
    assert warnings == [] and config.network.netns_pool_size == 0
    assert "\nnetns_pool_size = 0\n" in render_config(config, only_changed=True)
