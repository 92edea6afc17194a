"""Reading the configuration: defaults < main file < drop-ins < flags, key by key.

Every file is parsed and checked on its own, so each problem names the file
(or the flag) it came from. Problems are collected rather than raised one at
a time: a ConfigError lists all of them, one per line. Unknown keys and
tables are warnings, returned to the caller, because configurations written
for CRI-O or a newer crio-fast should still start.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import tomllib
from dataclasses import dataclass, field
from typing import Any

from crio_fast.config.flags import COMMAND_LINE, collect_flag_values
from crio_fast.config.schema import (
    DEFAULT_CONFIG_DIR,
    DEFAULT_CONFIG_PATH,
    DEFAULT_ROOT,
    DEFAULT_RUNROOT,
    NATIVE_RUNTIME,
    RUNTIMES_TABLE,
    SECTION_BY_ATTRIBUTE,
    SECTIONS,
    Config,
    RuntimeHandler,
    SectionInfo,
    derived_defaults,
)
from crio_fast.config.settings import Invalid, describe, keys_of, runtime_name

DROP_IN_SUFFIX = ".conf"
RUNTIMES_DOTTED = ".".join(RUNTIMES_TABLE)

# CRI-O keys that crio-fast deliberately does not take, with what to use instead.
UNSUPPORTED_CRIO_KEYS = {
    "crio.runtime.conmon": "crio-fast runs its own per-pod monitor; see crio.runtime.monitor_path",
    "crio.runtime.conmon_cgroup": "see crio.runtime.monitor_cgroup",
    "crio.runtime.conmon_env": "conmon_env is not supported; the per-pod monitor takes crio.runtime.monitor_env",
    "crio.image.pause_command": "crio-fast runs no pause container",
    "crio.image.pause_image_auth_file": "crio-fast runs no pause container",
}


class ConfigError(Exception):
    """The configuration cannot be used. ``problems`` holds one line per problem."""

    def __init__(self, problems: list[str] | str) -> None:
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        super().__init__("\n".join(self.problems))


@dataclass(frozen=True)
class Origin:
    """Where a value was set: a file, or a flag on the command line."""

    source: str
    flag: str = ""

    def where(self, dotted: str) -> str:
        if self.flag:
            return f"{COMMAND_LINE}: {self.flag} ({dotted})"
        return f"{self.source}: {dotted}"


@dataclass
class Layers:
    """Values set so far; a later setting of the same key replaces the earlier one."""

    values: dict[tuple[str, str], Any] = field(default_factory=dict)  # (section attribute, key) -> value
    runtimes: dict[str, dict[str, Any]] = field(default_factory=dict)  # handler name -> key -> value
    origins: dict[str, Origin] = field(default_factory=dict)  # dotted key (or runtime table) -> origin
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def set_key(self, section: SectionInfo, key: str, value: Any, origin: Origin) -> None:
        dotted = f"{section.dotted}.{key}"
        try:
            value = keys_of(section.cls)[key].validate(value)
        except Invalid as exc:
            self.problems.append(f"{origin.where(dotted)}: {exc}")
            return
        self.values[(section.attribute, key)] = value
        self.origins[dotted] = origin

    def set_runtime_key(self, name: str, key: str, value: Any, origin: Origin) -> None:
        dotted = f"{RUNTIMES_DOTTED}.{name}.{key}"
        try:
            value = keys_of(RuntimeHandler)[key].validate(value)
        except Invalid as exc:
            self.problems.append(f"{origin.where(dotted)}: {exc}")
            return
        self.runtimes.setdefault(name, {})[key] = value
        self.origins[dotted] = origin

    def add_runtime(self, name: str, origin: Origin) -> bool:
        table = f"{RUNTIMES_DOTTED}.{name}"
        try:
            runtime_name(name)
        except Invalid as exc:
            self.problems.append(f"{origin.where(table)}: {exc}")
            return False
        self.runtimes.setdefault(name, {})
        self.origins.setdefault(table, origin)
        return True


# --------------------------------------------------------------------------
# Files
# --------------------------------------------------------------------------


def _read_toml(path: str) -> dict[str, Any]:
    """Parse one file; ConfigError naming the file on any failure."""
    try:
        with open(path, "rb") as stream:
            data = stream.read()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the configuration file: {exc.strerror or exc}") from None
    try:
        return tomllib.loads(data.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not valid UTF-8 at byte {exc.start}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: malformed TOML: {exc}") from None


def _unknown(layers: Layers, source: str, dotted: str, value: Any) -> None:
    what = "table" if isinstance(value, dict) else "key"
    note = UNSUPPORTED_CRIO_KEYS.get(dotted)
    layers.warnings.append(f"{source}: unknown {what} {dotted} (ignored){': ' + note if note else ''}")


def _apply_section(layers: Layers, section: SectionInfo, table: dict[str, Any], source: str) -> None:
    origin = Origin(source)
    keys = keys_of(section.cls)
    subsections = {s.table[-1]: s for s in SECTIONS if s.table[:-1] == section.table}
    for key, value in table.items():
        dotted = f"{section.dotted}.{key}"
        if key in keys:
            layers.set_key(section, key, value, origin)
        elif key in subsections:
            if isinstance(value, dict):
                _apply_section(layers, subsections[key], value, source)
            else:
                layers.problems.append(f"{source}: {dotted}: expected a table, got {describe(value)}")
        elif section.table + (key,) == RUNTIMES_TABLE:
            _apply_runtimes(layers, value, source)
        else:
            _unknown(layers, source, dotted, value)


def _apply_runtimes(layers: Layers, runtimes: Any, source: str) -> None:
    origin = Origin(source)
    if not isinstance(runtimes, dict):
        layers.problems.append(
            f"{source}: {RUNTIMES_DOTTED}: expected a table of runtime tables, got {describe(runtimes)}"
        )
        return
    keys = keys_of(RuntimeHandler)
    for name, table in runtimes.items():
        dotted = f"{RUNTIMES_DOTTED}.{name}"
        if not isinstance(table, dict):
            layers.problems.append(f"{source}: {dotted}: expected a table, got {describe(table)}")
            continue
        if not layers.add_runtime(name, origin):
            continue
        for key, value in table.items():
            if key in keys:
                layers.set_runtime_key(name, key, value, origin)
            else:
                _unknown(layers, source, f"{dotted}.{key}", value)


def _apply_file(layers: Layers, path: str) -> bool:
    """Merge one file into ``layers``; False (problem recorded) if it could not be parsed."""
    try:
        document = _read_toml(path)
    except ConfigError as exc:
        layers.problems.extend(exc.problems)
        return False
    for key, value in document.items():
        if key == "crio":
            if isinstance(value, dict):
                _apply_section(layers, SECTION_BY_ATTRIBUTE["crio"], value, path)
            else:
                layers.problems.append(f"{path}: crio: expected a table, got {describe(value)}")
        else:
            _unknown(layers, path, key, value)
    return True


def _drop_in_files(directory: str) -> list[str]:
    """``*.conf`` files of the drop-in directory in lexical order; none if it does not exist."""
    try:
        entries = list(os.scandir(directory))
    except FileNotFoundError:
        return []
    except OSError as exc:
        raise ConfigError(f"{directory}: cannot read the drop-in directory: {exc.strerror or exc}") from None
    return sorted(entry.path for entry in entries if entry.name.endswith(DROP_IN_SUFFIX) and not entry.is_dir())


# --------------------------------------------------------------------------
# Flags
# --------------------------------------------------------------------------


def _apply_flags(layers: Layers, args: argparse.Namespace | None) -> None:
    values, problems = collect_flag_values(args)
    layers.problems.extend(problems)
    for item in values:
        origin = Origin(COMMAND_LINE, item.flag)
        if item.section == "runtimes":
            if layers.add_runtime(item.runtime, origin):
                layers.set_runtime_key(item.runtime, item.key, item.value, origin)
        else:
            layers.set_key(SECTION_BY_ATTRIBUTE[item.section], item.key, item.value, origin)


# --------------------------------------------------------------------------
# Building and cross-checking
# --------------------------------------------------------------------------


def _build(layers: Layers, sources: list[str]) -> Config:
    crio_values = {key: value for (attr, key), value in layers.values.items() if attr == "crio"}
    root = crio_values.get("root", DEFAULT_ROOT)
    runroot = crio_values.get("runroot", DEFAULT_RUNROOT)
    sections: dict[str, Any] = {}
    for section in SECTIONS:
        values = {key: value for (attr, key), value in layers.values.items() if attr == section.attribute}
        for (attr, key), value in derived_defaults(root, runroot).items():
            if attr == section.attribute:
                values.setdefault(key, value)
        if section.attribute == "runtime":
            runtimes = {NATIVE_RUNTIME: RuntimeHandler.defaults_for(NATIVE_RUNTIME, runroot)}
            for name, overrides in layers.runtimes.items():
                base = runtimes.get(name) or RuntimeHandler.defaults_for(name, runroot)
                runtimes[name] = dataclasses.replace(base, **overrides)
            values["runtimes"] = runtimes
        sections[section.attribute] = section.cls(**values)
    return Config(**sections, sources=sources)


def _origin(layers: Layers, *candidates: str) -> Origin:
    """Where the first of ``candidates`` (dotted keys or tables) that was set came from."""
    for dotted in candidates:
        if dotted in layers.origins:
            return layers.origins[dotted]
    return Origin("built-in default")


def _cross_check(config: Config, layers: Layers) -> None:
    """Rules that involve more than one key, checked on the merged result."""
    problems, warnings = layers.problems, layers.warnings
    runtime = config.runtime
    if runtime.default_runtime not in runtime.runtimes:
        dotted = "crio.runtime.default_runtime"
        problems.append(
            f"{_origin(layers, dotted).where(dotted)}: expected the name of a configured runtime"
            f" ({', '.join(runtime.runtimes)}), got {runtime.default_runtime!r}"
        )
    for name, handler in runtime.runtimes.items():
        table = f"{RUNTIMES_DOTTED}.{name}"
        dotted = f"{table}.runtime_path"
        where = _origin(layers, dotted, f"{table}.runtime_type", table).where(dotted)
        if handler.runtime_type == "oci" and not handler.runtime_path:
            problems.append(f'{where}: expected the absolute path of the runtime binary for an oci runtime, got ""')
        if handler.runtime_type == "native" and handler.runtime_path:
            problems.append(
                f'{where}: expected "" for a native runtime (it runs no external binary), got {handler.runtime_path!r}'
            )
    if runtime.monitor_cgroup != "pod" and runtime.cgroup_manager != "systemd":
        dotted = "crio.runtime.monitor_cgroup"
        problems.append(
            f'{_origin(layers, dotted).where(dotted)}: expected "pod" with cgroup_manager "{runtime.cgroup_manager}"'
            f' (slices need "systemd"), got {runtime.monitor_cgroup!r}'
        )
    if config.api.stream_enable_tls:
        for key in ("stream_tls_cert", "stream_tls_key"):
            if not getattr(config.api, key):
                dotted = f"crio.api.{key}"
                where = _origin(layers, dotted, "crio.api.stream_enable_tls").where(dotted)
                problems.append(f'{where}: expected a file when stream_enable_tls is true, got ""')
    if config.image.pause_image:
        dotted = "crio.image.pause_image"
        warnings.append(f"{_origin(layers, dotted).where(dotted)}: ignored: crio-fast runs no pause container")
    if not runtime.drop_infra_ctr:
        dotted = "crio.runtime.drop_infra_ctr"
        warnings.append(
            f"{_origin(layers, dotted).where(dotted)}: has no effect: crio-fast never runs an infra container"
        )


def load_config(
    args: argparse.Namespace | None = None,
    *,
    config_path: str | None = None,
    config_dir: str | None = None,
) -> tuple[Config, list[str]]:
    """The effective configuration and the warnings met on the way; ConfigError if unusable.

    ``config_path``/``config_dir`` win over ``args.config``/``args.config_dir``,
    which win over the default locations. A main file named explicitly must
    exist; the default one and any drop-in directory may be missing.
    """
    explicit_path = config_path if config_path is not None else getattr(args, "config", None)
    directory = config_dir if config_dir is not None else getattr(args, "config_dir", None)
    main_path = explicit_path if explicit_path is not None else DEFAULT_CONFIG_PATH
    directory = directory if directory is not None else DEFAULT_CONFIG_DIR

    layers = Layers()
    sources: list[str] = []
    if explicit_path is not None or os.path.lexists(main_path):
        if _apply_file(layers, main_path):
            sources.append(main_path)
    try:
        drop_ins = _drop_in_files(directory)
    except ConfigError as exc:
        layers.problems.extend(exc.problems)
        drop_ins = []
    for path in drop_ins:
        if _apply_file(layers, path):
            sources.append(path)
    _apply_flags(layers, args)

    if layers.problems:
        raise ConfigError(layers.problems)
    config = _build(layers, sources)
    _cross_check(config, layers)
    if layers.problems:
        raise ConfigError(layers.problems)
    return config, layers.warnings


def defaults_with_flags(args: argparse.Namespace | None = None) -> tuple[Config, list[str]]:
    """The built-in defaults with only the command-line flags applied, no file read: the configuration a
    fresh node gets (`crio-fast install-service` writes it); ConfigError if a flag is unusable."""
    layers = Layers()
    _apply_flags(layers, args)
    if layers.problems:
        raise ConfigError(layers.problems)
    config = _build(layers, [])
    _cross_check(config, layers)
    if layers.problems:
        raise ConfigError(layers.problems)
    return config, layers.warnings
