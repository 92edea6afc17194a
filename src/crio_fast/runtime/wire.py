"""The wire formats shared with ``crio-fast-monitor``, on the Python side.

``_native/monitor/monitor.h`` is the contract (docs/monitor.md describes it);
every number here has the name it has there (``MountKind.X`` is
``MOUNT_OP_X``), so that tests/unit/test_wire.py can hold the two equal. It
holds:

- the control protocol: message header, request types, message fields,
  feature bits, container status values (the last from ``server.h``);
- attach stream packets;
- the launch plan: its tags, the nested tags, mount kinds, and the chunks of
  a plan that follows through the gate;
- TLV, the encoding of messages and plans: ``TLVWriter`` and ``parse_tlv``;
- the exec helper's status line (``parse_exec_status``) and console tag.

Plain module constants rather than enums for the tags: a plan encodes a few
hundred fields per container, and looking up an enum member costs several
times a module attribute.
"""

from __future__ import annotations

import enum
import struct
from collections.abc import Iterable
from dataclasses import dataclass
from typing import NamedTuple

# ------------------------------------------------------------------ versions

MONITOR_PROTOCOL = 1
PLAN_FORMAT_VERSION = 1

# ----------------------------------------------------------------------- TLV

# A field: u16 tag, u32 length, then the value; little-endian throughout.
_TLV_HEADER = struct.Struct("<HI")
TLV_HEADER_SIZE = _TLV_HEADER.size
_U32 = struct.Struct("<I")
_I32 = struct.Struct("<i")
_U64 = struct.Struct("<Q")


class TLVWriter:
    """Builds TLV fields: u16 tag, u32 length (little-endian), value."""

    def __init__(self) -> None:
        self._parts: list[bytes] = []

    def raw(self, tag: int, value: bytes) -> None:
        self._parts.append(_TLV_HEADER.pack(tag, len(value)))
        self._parts.append(value)

    def string(self, tag: int, value: str) -> None:
        # surrogateescape: bytes that are not UTF-8 (env values, paths) pass through unchanged.
        data = value.encode("utf-8", "surrogateescape")
        if b"\0" in data:
            raise ValueError(f"NUL byte in plan string {value!r}")
        # The monitor uses strings in place: they travel with their NUL.
        self.raw(tag, data + b"\0")

    def u32(self, tag: int, value: int) -> None:
        self.raw(tag, _U32.pack(value))

    def i32(self, tag: int, value: int) -> None:
        self.raw(tag, _I32.pack(value))

    def u64(self, tag: int, value: int) -> None:
        self.raw(tag, _U64.pack(value))

    def boolean(self, tag: int, value: bool) -> None:
        self.raw(tag, _U32.pack(1 if value else 0))

    def u32_array(self, tag: int, values: Iterable[int]) -> None:
        self.raw(tag, b"".join(_U32.pack(value) for value in values))

    def nested(self, tag: int, inner: "TLVWriter") -> None:
        self.raw(tag, inner.getvalue())

    def getvalue(self) -> bytes:
        return b"".join(self._parts)


def parse_tlv(data: bytes | memoryview) -> list[tuple[int, bytes]]:
    """Split TLV-encoded bytes into (tag, value) pairs; raises ValueError if malformed."""
    fields = []
    view = memoryview(data)
    offset = 0
    while offset < len(view):
        if len(view) - offset < _TLV_HEADER.size:
            raise ValueError("truncated TLV field header")
        tag, length = _TLV_HEADER.unpack_from(view, offset)
        offset += _TLV_HEADER.size
        if length > len(view) - offset:
            raise ValueError(f"TLV field {tag} claims {length} bytes, {len(view) - offset} remain")
        fields.append((tag, bytes(view[offset:offset + length])))
        offset += length
    return fields


def parse_tlv_by_tag(data: bytes | memoryview) -> dict[int, list[bytes]]:
    """``parse_tlv``, the values of each tag in order (fields may repeat)."""
    by_tag: dict[int, list[bytes]] = {}
    for tag, value in parse_tlv(data):
        by_tag.setdefault(tag, []).append(value)
    return by_tag


def decode_u32(value: bytes) -> int:
    return _U32.unpack(value)[0]


def decode_i32(value: bytes) -> int:
    return _I32.unpack(value)[0]


def decode_u64(value: bytes) -> int:
    return _U64.unpack(value)[0]


def decode_bool(value: bytes) -> bool:
    return bool(_U32.unpack(value)[0])


def decode_string(value: bytes) -> str:
    """A string field, its trailing NUL dropped (tolerated when missing); undecodable bytes replaced."""
    return value[:-1].decode(errors="replace") if value.endswith(b"\0") else value.decode(errors="replace")


# ---------------------------------------------------------- control protocol

# Header: u16 protocol version, u16 type, u32 request id, u32 total length
# (header included); TLV fields follow. One message per SOCK_SEQPACKET packet.
_MESSAGE_HEADER = struct.Struct("<HHII")
MESSAGE_HEADER_SIZE = _MESSAGE_HEADER.size
MESSAGE_MAX_SIZE = 4 << 20
MESSAGE_REPLY_FLAG = 0x8000  # a reply's type is its request's type with this bit set


class MessageHeader(NamedTuple):
    version: int
    type: int
    request_id: int
    length: int


def encode_message(message_type: int, request_id: int, fields: TLVWriter) -> bytes:
    body = fields.getvalue()
    return _MESSAGE_HEADER.pack(MONITOR_PROTOCOL, message_type, request_id, MESSAGE_HEADER_SIZE + len(body)) + body


def decode_message_header(data: bytes) -> MessageHeader:
    """The header of a message at least MESSAGE_HEADER_SIZE long (struct.error if shorter)."""
    return MessageHeader(*_MESSAGE_HEADER.unpack_from(data))


# Request types (enum request_type).
REQUEST_PING = 1
REQUEST_CREATE = 2
REQUEST_START = 3
REQUEST_KILL = 4
REQUEST_REOPEN_LOG = 5
REQUEST_STATE = 6
REQUEST_LIST = 7
REQUEST_REMOVE = 8
REQUEST_SHUTDOWN = 9
REQUEST_ATTACH = 10  # turns the connection into an attach stream

# Message fields (enum message_field).
FIELD_STATUS = 1  # u32: 0 or an errno value
FIELD_MESSAGE = 2  # string
FIELD_CONTAINER_ID = 3  # string
FIELD_PLAN = 4  # an encoded launch plan
FIELD_LOG_PATH = 5  # string
FIELD_SIGNAL = 6  # u32
FIELD_ALL = 7  # u32 bool: signal every process of the container
FIELD_PID = 8  # u32
FIELD_WARNING = 9  # string, repeated
FIELD_CONTAINER = 10  # nested container state, repeated in LIST
FIELD_STATE = 11  # u32: a CONTAINER_ status value
FIELD_EXIT_CODE = 12  # i32
FIELD_EXIT_SIGNAL = 13  # u32
FIELD_CREATED_AT = 14  # u64 unix ns
FIELD_STARTED_AT = 15  # u64 unix ns
FIELD_FINISHED_AT = 16  # u64 unix ns
FIELD_OOM_KILLED = 17  # u32 bool
FIELD_POD_ID = 18  # string
FIELD_VERSION = 19  # string
# CREATE of a container run by an external OCI runtime.
FIELD_OCI_RUNTIME = 20  # string: the runtime binary
FIELD_OCI_ROOT = 21  # string: its --root
FIELD_OCI_BUNDLE = 22  # string: the bundle dir with config.json
FIELD_OCI_HIDE_CGROUP2 = 23  # u32 bool
FIELD_STDIN = 24  # u32 bool; ATTACH request: this attacher sends input; reply: the container has a stdin
FIELD_TTY = 25  # u32 bool; ATTACH reply: the container has a terminal
FIELD_PLAN_FOLLOWS = 26  # u32 bool; CREATE: the plan is its head, the rest follows through the gate
FIELD_FEATURES = 27  # u32, PING reply: MONITOR_FEATURE_ bits
FIELD_LOG_DIR = 28  # string; CREATE: the log path is relative to it and opened beneath it
FIELD_OCI_GLOBAL_ARG = 29  # string, repeated; oci CREATE: an option of the runtime's, before its command
OCI_GLOBAL_ARGS_MAX = 4

# What a monitor can do beyond protocol 1 (FIELD_FEATURES). A monitor outlives the daemon that
# started it; a change to what a monitor must understand adds a bit here, and the daemon refuses
# requests that need it in a pod whose monitor lacks it (sandbox/manager.py, SandboxManager.monitor).
MONITOR_FEATURE_PLAN_FOLLOWS = 1  # CREATE may send the plan's head, the rest following through the gate
MONITOR_FEATURE_APPARMOR = 2  # plans may carry PLAN_APPARMOR_PROFILE
MONITOR_FEATURE_LOG_DIR = 4  # CREATE may carry FIELD_LOG_DIR
# Plans may join the pod's user namespace and ID-map the overlay's lower layers and binds with it.
MONITOR_FEATURE_USERNS = 8
MONITOR_FEATURE_REPORT_PID = 16  # plans may carry PLAN_REPORT_PID
# Every bit: what this build's monitor reports, and what this daemon's CREATE relies on.
MONITOR_FEATURES = (MONITOR_FEATURE_PLAN_FOLLOWS | MONITOR_FEATURE_APPARMOR | MONITOR_FEATURE_LOG_DIR
                    | MONITOR_FEATURE_USERNS | MONITOR_FEATURE_REPORT_PID)


def feature_names(bits: int) -> list[str]:
    """The names of the MONITOR_FEATURE_ bits set in ``bits`` (for messages)."""
    return [name.removeprefix("MONITOR_FEATURE_") for name, bit in globals().items()
            if name.startswith("MONITOR_FEATURE_") and bits & bit]


# Values of FIELD_STATE (enum container_status, server.h).
CONTAINER_CREATING = 0
CONTAINER_CREATED = 1
CONTAINER_RUNNING = 2
CONTAINER_EXITED = 3

# ------------------------------------------------------------ attach streams

# Packets of an attach stream: one byte kind, then the payload (enum
# attach_packet_kind); the numbers are the Kubernetes streaming channels.
ATTACH_STDIN = 0  # to the monitor: bytes for the container's stdin
ATTACH_STDOUT = 1  # from the monitor: output (all of it, with a tty)
ATTACH_STDERR = 2  # from the monitor
ATTACH_EXIT = 3  # from the monitor, last: the exit code in decimal ASCII
ATTACH_RESIZE = 4  # to the monitor: encode_resize's payload
ATTACH_CLOSE_STDIN = 5  # to the monitor: close the container's stdin

_RESIZE = struct.Struct("<HH")


def encode_resize(width: int, height: int) -> bytes:
    """The payload of an ATTACH_RESIZE packet: u16 columns, u16 rows."""
    return _RESIZE.pack(width, height)


def tty_size(width: int, height: int) -> int:
    """PLAN_TTY_SIZE's value: u16 columns | u16 rows << 16 (the layout of ATTACH_RESIZE's payload, read
    as one little-endian u32)."""
    return int.from_bytes(encode_resize(width, height), "little")


# --------------------------------------------------------------- launch plan

# Plan fields (enum plan_field).
PLAN_VERSION = 1
PLAN_NAMESPACE = 2  # nested: NS_
PLAN_CGROUP_PROCS = 3
PLAN_CGROUP_WRITE = 4  # nested: KV_ (the key is the path)
PLAN_OOM_COUNTER = 5
PLAN_ROOTFS = 6
PLAN_OVERLAY = 7  # nested: OVERLAY_
PLAN_MOUNT = 8  # nested: MOUNT_
PLAN_ROOTFS_READONLY = 9
PLAN_NO_PIVOT = 10
PLAN_ROOT_PROPAGATION = 11
PLAN_HOSTNAME = 12
PLAN_SYSCTL = 13  # nested: KV_ (the key is the name)
PLAN_RLIMIT = 14  # nested: RLIMIT_
PLAN_OOM_SCORE_ADJ = 15
PLAN_UID = 16
PLAN_GID = 17
PLAN_ADDITIONAL_GIDS = 18  # u32 array
PLAN_CAP_BOUNDING = 19
PLAN_CAP_EFFECTIVE = 20
PLAN_CAP_PERMITTED = 21
PLAN_CAP_INHERITABLE = 22
PLAN_CAP_AMBIENT = 23
PLAN_NO_NEW_PRIVS = 24
PLAN_SECCOMP = 25  # struct sock_filter array
PLAN_SECCOMP_FLAGS = 26
PLAN_CWD = 27
PLAN_ENV = 28
PLAN_ARGV = 29
PLAN_STDIN = 30
PLAN_TTY = 31
PLAN_LOG_LINE_MAX = 32
PLAN_TARGET_PID = 33
PLAN_UMASK = 34
PLAN_HOST_DIR = 35  # string, repeated: a host directory the child makes (0755) once cloned
PLAN_APPARMOR_PROFILE = 36  # string: the profile that confines the command from its execve
PLAN_TTY_SIZE = 37  # u32: columns | rows << 16, the terminal's size before the command runs
PLAN_REPORT_PID = 38  # u32 bool, head: the child writes one byte to the gate; its credentials carry its pid

# Tags inside the nested plan fields.
NS_TYPE = 1
NS_PATH = 2
KV_KEY = 1
KV_VALUE = 2
OVERLAY_LOWER = 1
OVERLAY_UPPER = 2
OVERLAY_WORK = 3
OVERLAY_TARGET = 4
OVERLAY_OPTION = 5
OVERLAY_IDMAP = 6  # bool: the lower dirs ID-mapped with the user namespace the plan joins
OVERLAY_UPPER_UID = 7  # u32: the upper dir's owner (host ids), the mapped root, so it may write in /
OVERLAY_UPPER_GID = 8  # u32
RLIMIT_RESOURCE = 1
RLIMIT_SOFT = 2
RLIMIT_HARD = 3
MOUNT_KIND = 1
MOUNT_SOURCE = 2
MOUNT_DESTINATION = 3
MOUNT_FSTYPE = 4
MOUNT_FLAGS = 5
MOUNT_DATA = 6
MOUNT_MODE = 7
MOUNT_MAJOR = 8
MOUNT_MINOR = 9
MOUNT_UID = 10
MOUNT_GID = 11
MOUNT_PROPAGATION = 12
# A BIND's attributes on every mount under its source too (CRI recursive_read_only); above the MS_* bits.
MOUNT_FLAG_RECURSIVE_ATTRIBUTES = 1 << 32
# A BIND ID-mapped with the user namespace the plan joins (CRI Mount uidMappings/gidMappings).
MOUNT_FLAG_IDMAP = 1 << 33


class MountKind(enum.IntEnum):
    """The value of MOUNT_KIND (enum mount_kind: MOUNT_OP_<name>)."""

    MOUNT = 1  # mount(2) a filesystem
    BIND = 2  # bind a host path
    MKNOD = 3  # create a device node (bind `source` from the host when mknod is refused)
    SYMLINK = 4  # symlink at destination pointing to `source`
    MKDIR = 5  # directory and parents
    MASK = 6  # /dev/null over a file, empty read-only tmpfs over a directory
    READONLY = 7  # make a path read-only (recursively with MS_REC)


def encode_plan_chunk(chunk: bytes) -> bytes:
    """A chunk of a plan that follows through the gate: u32 length, then the plan fields."""
    return _U32.pack(len(chunk)) + chunk


END_OF_PLAN_CHUNKS = encode_plan_chunk(b"")  # a chunk of length 0 ends the plan

# --------------------------------------------------------------- exec helper

# `crio-fast-monitor exec` sends the pty master on --console-fd as this one byte with SCM_RIGHTS.
CONSOLE_TERMINAL_TAG = b"T"


@dataclass(frozen=True)
class ExecOutcome:
    """How a command run by the exec helper ended."""

    exit_code: int  # the command's code; 128+signal when killed; 126/127/1 when it never ran
    error: str | None = None  # set when the command never ran, or the helper did not say how it ended
    signal: int = 0  # the signal that killed the command, 0 otherwise


def parse_exec_status(line: str, helper_returncode: int | None) -> ExecOutcome:
    """The outcome from the helper's status line and its own exit status (subprocess's returncode:
    negative for a signal).

    The helper writes exactly one of ``exit CODE``, ``signal NUMBER``, ``error ERRNO MESSAGE``
    (exec.c), and exits with CODE, 128+NUMBER or 126/127/1 to match. No line means the helper itself
    died before it could write one; killed by a signal, it took the command with it (the command's
    PR_SET_PDEATHSIG), so that is reported as the shell reports a kill: 128+signal.
    """
    kind, _, rest = line.strip().partition(" ")
    if kind == "exit":
        return ExecOutcome(exit_code=int(rest))
    if kind == "signal":
        return ExecOutcome(exit_code=128 + int(rest), signal=int(rest))
    code = helper_returncode if helper_returncode and helper_returncode > 0 else 1
    if kind == "error":
        return ExecOutcome(exit_code=code, error=rest.partition(" ")[2])
    if helper_returncode is not None and helper_returncode < 0:
        return ExecOutcome(exit_code=128 - helper_returncode, signal=-helper_returncode,
                           error=f"exec helper killed by signal {-helper_returncode}")
    return ExecOutcome(exit_code=code,
                       error=f"exec helper exited with {helper_returncode} without reporting a status")
