"""Command-line flags, named as CRI-O names them, each setting one config key.

argparse only collects strings here (every default is None, so "not given"
is visible); converting and validating them is the loader's job, so that a
bad flag value is reported exactly like a bad file value, as a ConfigError.
"""

from __future__ import annotations

import argparse
import re
from dataclasses import dataclass
from typing import Any

from crio_fast.config.schema import DEFAULT_CONFIG_DIR, DEFAULT_CONFIG_PATH, SECTION_BY_ATTRIBUTE
from crio_fast.config.settings import BOOLEAN, INTEGER, STRING_LIST, Invalid, keys_of


@dataclass(frozen=True)
class FlagSpec:
    names: tuple[str, ...]  # long name first
    section: str  # attribute of Config
    key: str
    metavar: str = ""

    @property
    def dest(self) -> str:
        return self.names[0].lstrip("-").replace("-", "_")

    @property
    def dotted(self) -> str:
        return f"{SECTION_BY_ATTRIBUTE[self.section].dotted}.{self.key}"


FLAGS = (
    FlagSpec(("--root", "-r"), "crio", "root", "DIR"),
    FlagSpec(("--runroot",), "crio", "runroot", "DIR"),
    FlagSpec(("--log-dir",), "crio", "log_dir", "DIR"),
    FlagSpec(("--listen",), "api", "listen", "SOCKET"),
    FlagSpec(("--stream-address",), "api", "stream_address", "ADDRESS"),
    FlagSpec(("--stream-port",), "api", "stream_port", "PORT"),
    FlagSpec(("--stream-idle-timeout",), "api", "stream_idle_timeout", "DURATION"),
    FlagSpec(("--grpc-max-send-msg-size",), "api", "grpc_max_send_msg_size", "BYTES"),
    FlagSpec(("--grpc-max-recv-msg-size",), "api", "grpc_max_recv_msg_size", "BYTES"),
    FlagSpec(("--log-level", "-l"), "runtime", "log_level", "LEVEL"),
    FlagSpec(("--default-runtime",), "runtime", "default_runtime", "NAME"),
    FlagSpec(("--cgroup-manager",), "runtime", "cgroup_manager", "MANAGER"),
    FlagSpec(("--pids-limit",), "runtime", "pids_limit", "N"),
    FlagSpec(("--log-size-max",), "runtime", "log_size_max", "BYTES"),
    FlagSpec(("--default-capabilities",), "runtime", "default_capabilities", "CAP[,CAP...]"),
    FlagSpec(("--default-sysctls",), "runtime", "default_sysctls", "KEY=VALUE[,...]"),
    FlagSpec(("--ctr-stop-timeout",), "runtime", "ctr_stop_timeout", "SECONDS"),
    FlagSpec(("--seccomp-use-default-when-empty",), "runtime", "seccomp_use_default_when_empty"),
    FlagSpec(("--registries-conf",), "image", "registries_conf", "FILE"),
    FlagSpec(("--global-auth-file",), "image", "global_auth_file", "FILE"),
    FlagSpec(("--signature-policy",), "image", "signature_policy", "FILE"),
    FlagSpec(("--signature-policy-dir",), "image", "signature_policy_dir", "DIR"),
    FlagSpec(("--registries-d",), "image", "registries_d", "DIR"),
    FlagSpec(("--insecure-registry",), "image", "insecure_registries", "HOST[:PORT]"),
    FlagSpec(("--cni-config-dir",), "network", "network_dir", "DIR"),
    FlagSpec(("--cni-plugin-dir",), "network", "plugin_dirs", "DIR"),
    FlagSpec(("--cni-default-network",), "network", "cni_default_network", "NAME"),
    FlagSpec(("--enable-metrics",), "metrics", "enable_metrics"),
    FlagSpec(("--metrics-host",), "metrics", "metrics_host", "ADDRESS"),
    FlagSpec(("--metrics-port",), "metrics", "metrics_port", "PORT"),
)

RUNTIMES_FLAG = "--runtimes"
COMMAND_LINE = "command line"


@dataclass(frozen=True)
class FlagValue:
    """One flag as given, converted to its key's TOML kind but not yet validated."""

    flag: str
    section: str  # attribute of Config, or "runtimes" for --runtimes
    key: str
    value: Any
    runtime: str = ""  # for --runtimes: the handler name


def add_config_flags(parser: argparse.ArgumentParser) -> None:
    """Add every configuration flag to ``parser``; each one's default is None."""
    group = parser.add_argument_group("configuration", "Flags override the configuration files key by key.")
    group.add_argument(
        "--config",
        "-c",
        metavar="FILE",
        default=None,
        help=f"main configuration file; it must exist when given (default {DEFAULT_CONFIG_PATH}, which may be missing)",
    )
    group.add_argument(
        "--config-dir",
        "-d",
        metavar="DIR",
        default=None,
        help="drop-in directory: its *.conf files are read in lexical order after the main file"
        f" (default {DEFAULT_CONFIG_DIR})",
    )
    for spec in FLAGS:
        info = keys_of(SECTION_BY_ATTRIBUTE[spec.section].cls)[spec.key]
        help_text = f"{info.doc} ({spec.dotted})".replace("%", "%%")
        if info.kind == STRING_LIST:
            help_text += " Comma separated; may be repeated; replaces the configured list."
            group.add_argument(
                *spec.names, dest=spec.dest, metavar=spec.metavar, action="append", default=None, help=help_text
            )
        elif info.kind == BOOLEAN:
            # --flag / --no-flag: an optional value ("--flag true") would swallow a following subcommand.
            group.add_argument(
                *spec.names, dest=spec.dest, action=argparse.BooleanOptionalAction, default=None, help=help_text
            )
        else:
            group.add_argument(*spec.names, dest=spec.dest, metavar=spec.metavar, default=None, help=help_text)
    group.add_argument(
        RUNTIMES_FLAG,
        dest="runtimes",
        metavar="NAME:PATH[:ROOT]",
        action="append",
        default=None,
        help="add an OCI runtime handler NAME running the binary PATH with state in ROOT"
        " (default runroot/runtimes/NAME); may be repeated",
    )


_INTEGER = re.compile(r"[+-]?\d+")


def _convert(kind: str, raw: Any) -> Any:
    """A flag's string(s) as a value of the key's TOML kind (booleans arrive as bool already)."""
    if kind == STRING_LIST:
        items = raw if isinstance(raw, list) else [raw]
        return [part.strip() for item in items for part in item.split(",") if part.strip()]
    if kind == INTEGER:
        text = raw.strip()
        if not _INTEGER.fullmatch(text):
            raise Invalid(f"expected an integer, got {raw!r}")
        return int(text)
    return raw


def _runtime_values(raw: str) -> list[FlagValue]:
    parts = raw.split(":")
    if len(parts) not in (2, 3) or not parts[0] or not parts[1]:
        raise Invalid(f"expected NAME:PATH or NAME:PATH:ROOT, got {raw!r}")
    name = parts[0]
    values = [
        FlagValue(RUNTIMES_FLAG, "runtimes", "runtime_type", "oci", name),
        FlagValue(RUNTIMES_FLAG, "runtimes", "runtime_path", parts[1], name),
    ]
    if len(parts) == 3 and parts[2]:
        values.append(FlagValue(RUNTIMES_FLAG, "runtimes", "runtime_root", parts[2], name))
    return values


def collect_flag_values(args: argparse.Namespace | None) -> tuple[list[FlagValue], list[str]]:
    """The flags given in ``args`` as values, plus problems converting them."""
    values: list[FlagValue] = []
    problems: list[str] = []
    if args is None:
        return values, problems
    for spec in FLAGS:
        raw = getattr(args, spec.dest, None)
        if raw is None:
            continue
        flag = spec.names[0]
        info = keys_of(SECTION_BY_ATTRIBUTE[spec.section].cls)[spec.key]
        try:
            values.append(FlagValue(flag, spec.section, spec.key, _convert(info.kind, raw)))
        except Invalid as exc:
            problems.append(f"{COMMAND_LINE}: {flag} ({spec.dotted}): {exc}")
    for raw in getattr(args, "runtimes", None) or []:
        try:
            values.extend(_runtime_values(raw))
        except Invalid as exc:
            problems.append(f"{COMMAND_LINE}: {RUNTIMES_FLAG}: {exc}")
    return values, problems
