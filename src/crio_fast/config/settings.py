"""Declaring a configuration key: its TOML value kind, the checks a value must pass, and the
comment it gets in `crio-fast config`.

:func:`setting` makes the dataclass field for one key and records all three in the field's
metadata (the kind is taken from the default's type); :func:`keys_of` reads them back for the
loader and the renderer. The checks are plain functions from a value to the normalised value,
raising :class:`Invalid` with what was expected and what came. The sections themselves are in
``schema.py``.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import ipaddress
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from crio_fast import sysctls as sysctl_names
from crio_fast.config.durations import parse_duration

# Linux capabilities by number (include/uapi/linux/capability.h, up to 6.x).
LINUX_CAPABILITIES = (
    "CHOWN", "DAC_OVERRIDE", "DAC_READ_SEARCH", "FOWNER", "FSETID", "KILL", "SETGID", "SETUID",
    "SETPCAP", "LINUX_IMMUTABLE", "NET_BIND_SERVICE", "NET_BROADCAST", "NET_ADMIN", "NET_RAW",
    "IPC_LOCK", "IPC_OWNER", "SYS_MODULE", "SYS_RAWIO", "SYS_CHROOT", "SYS_PTRACE", "SYS_PACCT",
    "SYS_ADMIN", "SYS_BOOT", "SYS_NICE", "SYS_RESOURCE", "SYS_TIME", "SYS_TTY_CONFIG", "MKNOD",
    "LEASE", "AUDIT_WRITE", "AUDIT_CONTROL", "SETFCAP", "MAC_OVERRIDE", "MAC_ADMIN", "SYSLOG",
    "WAKE_ALARM", "BLOCK_SUSPEND", "AUDIT_READ", "PERFMON", "BPF", "CHECKPOINT_RESTORE",
)  # fmt: skip

# Resource names setrlimit(2) knows, as Docker and CRI-O spell them in "name=soft:hard".
ULIMIT_NAMES = (
    "as", "core", "cpu", "data", "fsize", "locks", "memlock", "msgqueue", "nice", "nofile",
    "nproc", "rss", "rtprio", "rttime", "sigpending", "stack",
)  # fmt: skip


# --------------------------------------------------------------------------
# Value kinds and checks
# --------------------------------------------------------------------------

STRING = "string"
BOOLEAN = "boolean"
INTEGER = "integer"
STRING_LIST = "array of strings"
STRING_MAP = "table of strings"

_ARTICLES = {STRING: "a string", BOOLEAN: "a boolean", INTEGER: "an integer",
             STRING_LIST: "an array of strings", STRING_MAP: "a table of strings"}  # fmt: skip


class Invalid(ValueError):
    """A value failed a check; the message says what was expected and what came."""


Check = Callable[[Any], Any]


def describe(value: Any) -> str:
    """A value as an error message shows it: its TOML type, then the value."""
    if isinstance(value, bool):
        return f"boolean {'true' if value else 'false'}"
    if isinstance(value, int):
        return f"integer {value}"
    if isinstance(value, float):
        return f"float {value!r}"
    if isinstance(value, str):
        return f"string {value!r}"
    if isinstance(value, list):
        text = repr(value)
        return f"array {text if len(text) <= 60 else text[:57] + '...'}"
    if isinstance(value, dict):
        return "table"
    isoformat = getattr(value, "isoformat", None)
    if isoformat is not None:
        return f"date-time {isoformat()}"
    return f"{type(value).__name__} {value!r}"


def check_kind(kind: str, value: Any) -> Any:
    """Type-check a TOML value strictly: a boolean is not an integer, a float never is one."""
    if kind == STRING:
        ok = isinstance(value, str)
    elif kind == BOOLEAN:
        ok = isinstance(value, bool)
    elif kind == INTEGER:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif kind == STRING_LIST:
        if not isinstance(value, list):
            raise Invalid(f"expected {_ARTICLES[kind]}, got {describe(value)}")
        for index, item in enumerate(value):
            if not isinstance(item, str):
                raise Invalid(f"expected {_ARTICLES[kind]}, got {describe(item)} as item {index + 1}")
        return list(value)
    elif kind == STRING_MAP:
        if not isinstance(value, dict):
            raise Invalid(f"expected {_ARTICLES[kind]}, got {describe(value)}")
        for key, item in value.items():
            if not isinstance(item, str):
                raise Invalid(f"expected {_ARTICLES[kind]}, got {describe(item)} for {key!r}")
        return dict(value)
    else:  # pragma: no cover - a declaration bug, not a user error
        raise AssertionError(f"unknown kind {kind}")
    if not ok:
        raise Invalid(f"expected {_ARTICLES[kind]}, got {describe(value)}")
    return value


def one_of(*choices: str) -> Check:
    def check(value: str) -> str:
        if value not in choices:
            raise Invalid(f"expected one of {', '.join(choices)}, got {value!r}")
        return value

    return check


def at_least(minimum: int, meaning: str = "") -> Check:
    def check(value: int) -> int:
        if value < minimum:
            raise Invalid(f"expected an integer >= {minimum}{meaning}, got {value}")
        return value

    return check


def in_range(low: int, high: int, what: str = "an integer") -> Check:
    def check(value: int) -> int:
        if not low <= value <= high:
            raise Invalid(f"expected {what} from {low} to {high}, got {value}")
        return value

    return check


def unlimited_or_positive(value: int) -> int:
    if value != -1 and value <= 0:
        raise Invalid(f"expected -1 (unlimited) or a positive integer, got {value}")
    return value


def apparmor_profile_name(value: str) -> str:
    """A profile name the launch plan and config.json can carry (as container/apparmor.py checks a
    container's own): not empty, no white space or control characters."""
    if not value or len(value) > 4000 or any(c.isspace() or not c.isprintable() for c in value):
        raise Invalid(f"expected an AppArmor profile name (no white space or control characters), got {value!r}")
    return value


def absolute_path(value: str) -> str:
    if not value.startswith("/"):
        raise Invalid(f"expected an absolute path, got {value!r}")
    return value


def optional_absolute_path(value: str) -> str:
    if value and not value.startswith("/"):
        raise Invalid(f'expected an absolute path or "" (unset), got {value!r}')
    return value


def duration(value: str) -> str:
    try:
        seconds = parse_duration(value)
    except ValueError:
        raise Invalid(f'expected a duration such as "30s", "4h" or "1h30m", got {value!r}') from None
    if seconds < 0:
        raise Invalid(f"expected a duration that is not negative, got {value!r}")
    return value


def optional_duration(value: str) -> str:
    return value if value == "" else duration(value)


def port_string(value: str) -> str:
    """CRI-O keeps stream_port as a string; "0" picks a free port."""
    if not value.isascii() or not value.isdigit() or not 0 <= int(value) <= 65535:
        raise Invalid(f'expected a port number from "0" (any free port) to "65535" as a string, got {value!r}')
    return value


_HOSTNAME = re.compile(
    r"(?=.{1,253}$)[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*"
)


def host(value: str) -> str:
    try:
        ipaddress.ip_address(value)
        return value
    except ValueError:
        pass
    if not _HOSTNAME.fullmatch(value):
        raise Invalid(f"expected an IP address or a host name, got {value!r}")
    return value


def capability_name(value: str) -> str:
    """Normalise "cap_net_raw" / "CAP_NET_RAW" / "NET_RAW" to "NET_RAW"."""
    name = value.strip().upper()
    if name.startswith("CAP_"):
        name = name[4:]
    if name not in LINUX_CAPABILITIES:
        raise Invalid(f"expected a Linux capability name such as NET_RAW or CAP_NET_RAW, got {value!r}")
    return name


_SYSCTL_KEY = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_./-]*")


def sysctl(value: str) -> str:
    key, sep, _ = value.partition("=")
    if not sep or not _SYSCTL_KEY.fullmatch(key):
        raise Invalid(f'expected "key=value" such as "net.ipv4.ping_group_range=0 2147483647", got {value!r}')
    return value


def namespaced_sysctl(value: str) -> str:
    """A default sysctl must be one a pod can hold in its own namespaces, or it could never be applied."""
    try:
        sysctl_names.parse_default(value)
    except ValueError as exc:
        raise Invalid(str(exc)) from None
    return value


def _rlimit_value(text: str) -> int:
    if text == "-1":
        return -1
    if not text.isascii() or not text.isdigit():
        raise ValueError(text)
    return int(text)


def ulimit(value: str) -> str:
    """ "name=soft[:hard]", -1 meaning unlimited, soft not above hard."""
    expected = 'expected "name=soft:hard" such as "nofile=1024:2048"'
    name, sep, limits = value.partition("=")
    if not sep:
        raise Invalid(f"{expected}, got {value!r}")
    if name not in ULIMIT_NAMES:
        raise Invalid(f"{expected} with a name from {', '.join(ULIMIT_NAMES)}, got {value!r}")
    soft_text, _, hard_text = limits.partition(":")
    try:
        soft = _rlimit_value(soft_text)
        hard = _rlimit_value(hard_text) if hard_text else soft
    except ValueError:
        raise Invalid(f"{expected} with non-negative integer limits (or -1 for unlimited), got {value!r}") from None
    if hard != -1 and (soft == -1 or soft > hard):
        raise Invalid(f"{expected} with the soft limit not above the hard one, got {value!r}")
    return value


_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def env_var(value: str) -> str:
    name, sep, _ = value.partition("=")
    if not sep or not _ENV_NAME.fullmatch(name):
        raise Invalid(f'expected "NAME=value", got {value!r}')
    return value


_CPUSET = re.compile(r"\d+(-\d+)?(,\d+(-\d+)?)*")


def cpuset(value: str) -> str:
    if value == "":
        return value
    if not _CPUSET.fullmatch(value):
        raise Invalid(f'expected a CPU list such as "0-1,3" or "" (unset), got {value!r}')
    for part in value.split(","):
        first, _, last = part.partition("-")
        if last and int(last) < int(first):
            raise Invalid(f"expected CPU ranges in increasing order, got {part!r} in {value!r}")
    return value


def not_empty(value: str) -> str:
    if value == "":
        raise Invalid('expected a non-empty string, got ""')
    return value


def monitor_cgroup_name(value: str) -> str:
    if value != "pod" and not (value.endswith(".slice") and len(value) > len(".slice")):
        raise Invalid(f'expected "pod" or a systemd slice name ending in ".slice", got {value!r}')
    return value


_RUNTIME_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


def runtime_name(value: str) -> str:
    """Runtime handler names become directory names and `--runtimes` fields."""
    if not _RUNTIME_NAME.fullmatch(value):
        raise Invalid(f"expected a runtime name of letters, digits, '.', '_' and '-', got {value!r}")
    return value


def each(check: Check) -> Check:
    """Apply ``check`` to every item of a list, naming the item that failed."""

    def check_items(values: list[str]) -> list[str]:
        result = []
        for index, item in enumerate(values):
            try:
                result.append(check(item))
            except Invalid as exc:
                raise Invalid(f"item {index + 1}: {exc}") from None
        return result

    return check_items


def each_value(check: Check) -> Check:
    def check_values(values: dict[str, str]) -> dict[str, str]:
        result = {}
        for key, item in values.items():
            try:
                result[key] = check(item)
            except Invalid as exc:
                raise Invalid(f"{key!r}: {exc}") from None
        return result

    return check_values


def unique(values: list[str]) -> list[str]:
    """Drop repeats, keeping first occurrences (after normalisation)."""
    return list(dict.fromkeys(values))


# --------------------------------------------------------------------------
# Declaring keys
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class KeyInfo:
    """What the loader and the renderer know about one key."""

    name: str
    kind: str
    doc: str
    checks: tuple[Check, ...]
    default: Any

    def validate(self, value: Any) -> Any:
        """The value, type-checked and normalised; Invalid otherwise."""
        value = check_kind(self.kind, value)
        for check in self.checks:
            value = check(value)
        return value


def _kind_of(default: Any) -> str:
    if isinstance(default, bool):
        return BOOLEAN
    if isinstance(default, int):
        return INTEGER
    if isinstance(default, str):
        return STRING
    if isinstance(default, list):
        return STRING_LIST
    if isinstance(default, dict):
        return STRING_MAP
    raise TypeError(f"no TOML kind for default {default!r}")


def setting(default: Any, doc: str, *checks: Check) -> Any:
    """A dataclass field for one TOML key (its name is the attribute's name)."""
    metadata = {"kind": _kind_of(default), "doc": doc, "checks": checks}
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: copy.deepcopy(default), metadata=metadata)
    return field(default=default, metadata=metadata)


@functools.cache
def keys_of(cls: type) -> dict[str, KeyInfo]:
    """The TOML keys a section dataclass declares, in declaration order."""
    infos = {}
    for f in dataclasses.fields(cls):
        if "kind" not in f.metadata:
            continue
        default = f.default_factory() if f.default is dataclasses.MISSING else f.default  # type: ignore[misc]
        infos[f.name] = KeyInfo(f.name, f.metadata["kind"], f.metadata["doc"], f.metadata["checks"], default)
    return infos
