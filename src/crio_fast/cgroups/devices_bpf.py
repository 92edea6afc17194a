"""The cgroup v2 device filter: an eBPF program of type BPF_PROG_TYPE_CGROUP_DEVICE.

cgroup v2 has no ``devices`` controller. The kernel instead runs every
BPF_CGROUP_DEVICE program attached to a process's cgroup (and, with
BPF_F_ALLOW_MULTI, to its ancestors) whenever the process creates (mknod) or
opens a device node; any program returning 0 makes the syscall fail with
EPERM. It does so whether or not v1 hierarchies are mounted too, so on a
hybrid host a program on the container's cgroup2 directory is enforced in
addition to the v1 devices cgroup.

The rule list has the v1 semantics (``devices.allow``/``devices.deny``):
rules are applied in order and the last one that matches a request decides.
The program tests them in reverse order and returns at the first match, which
is the same thing; a request no rule matches gets the default (deny).

Program shape, per request context ``struct bpf_cgroup_dev_ctx {u32
access_type; u32 major; u32 minor;}`` (access_type = access << 16 | type)::

    r2 = ctx->access_type & 0xffff      ; device type (1 block, 2 char)
    r3 = ctx->access_type >> 16         ; access bits (1 mknod, 2 read, 4 write)
    r4 = ctx->major
    r5 = ctx->minor
    ; one block per rule, last rule first; a failed test jumps to the next block
    if r2 != TYPE goto next             ; left out for type "a"
    r1 = r3 & ~ACCESS                   ; left out when ACCESS is rwm
    if r1 != 0 goto next                ;   (asked for more than the rule covers)
    if r4 != MAJOR goto next            ; left out for "*"
    if r5 != MINOR goto next            ; left out for "*"
    r0 = ALLOW ; exit
    next: ...
    r0 = DEFAULT ; exit

Loading goes through bpf(2) with ctypes (no library on PyPI does just this
without pulling in a compiler toolchain). A loaded program is kept per rule
set and attached to each container cgroup that needs it: most containers
share the default rules, so the verifier runs once per distinct set, not once
per container. The attachment holds its own reference; the cgroup's removal
detaches the program.
"""

from __future__ import annotations

import collections
import ctypes
import functools
import os
import platform
import struct
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from crio_fast.cgroups.errors import CgroupError, CgroupValidationError

# -- the kernel's constants (include/uapi/linux/bpf.h) ---------------------------------

BPF_PROG_LOAD = 5
BPF_PROG_ATTACH = 8
BPF_PROG_DETACH = 9
BPF_PROG_QUERY = 16
BPF_PROG_TYPE_CGROUP_DEVICE = 15
BPF_CGROUP_DEVICE = 6  # attach type
BPF_F_ALLOW_MULTI = 2

BPF_DEVCG_ACC_MKNOD = 1
BPF_DEVCG_ACC_READ = 2
BPF_DEVCG_ACC_WRITE = 4
BPF_DEVCG_DEV_BLOCK = 1
BPF_DEVCG_DEV_CHAR = 2

# Instruction classes, sizes, operations and sources.
_LDX, _ALU, _JMP, _ALU64 = 0x01, 0x04, 0x05, 0x07
_W, _MEM = 0x00, 0x60
_K, _X = 0x00, 0x08
_AND, _RSH, _MOV = 0x50, 0x70, 0xB0
_JA, _JNE, _EXIT = 0x00, 0x50, 0x90

_SYS_BPF = {"x86_64": 321, "aarch64": 280, "ppc64le": 361, "s390x": 351, "riscv64": 280}

_ACCESS_BITS = {"m": BPF_DEVCG_ACC_MKNOD, "r": BPF_DEVCG_ACC_READ, "w": BPF_DEVCG_ACC_WRITE}
_ALL_ACCESS = BPF_DEVCG_ACC_MKNOD | BPF_DEVCG_ACC_READ | BPF_DEVCG_ACC_WRITE
_TYPES = {"b": BPF_DEVCG_DEV_BLOCK, "c": BPF_DEVCG_DEV_CHAR}
PROGRAM_NAME = b"crio_fast_dev"  # what bpftool prog show lists (at most 15 bytes)
INSN_SIZE = 8
_VERIFIER_LOG_SIZE = 64 * 1024
# Loaded programs kept for reuse; a rule set past this many distinct ones is reloaded when met again.
_MAX_CACHED_PROGRAMS = 32


@dataclass(frozen=True)
class DeviceRule:
    """One v1-style rule: ``kind`` a (all), b or c; ``major``/``minor`` None for ``*``; ``access`` of r, w, m."""

    allow: bool
    kind: str
    major: int | None
    minor: int | None
    access: str

    @property
    def access_mask(self) -> int:
        return functools.reduce(lambda mask, ch: mask | _ACCESS_BITS[ch], self.access, 0)

    def matches(self, kind: str, major: int, minor: int, access: str) -> bool:
        """The same test the program makes (for callers and tests that want the answer in Python)."""
        if self.kind != "a" and self.kind != kind:
            return False
        if set(access) - set(self.access):
            return False
        return (self.major is None or self.major == major) and (self.minor is None or self.minor == minor)


def parse_rule(text: str, allow: bool = True) -> DeviceRule:
    """A rule as devices.allow/devices.deny take it: ``a``, ``c 1:5 rwm``, ``b *:* m``, ``c 136:* rw``."""
    fields = text.split()
    if fields == ["a"]:
        return DeviceRule(allow, "a", None, None, "rwm")
    if len(fields) != 3 or fields[0] not in ("a", "b", "c"):
        raise CgroupValidationError(f"device rule {text!r}: expected 'TYPE MAJOR:MINOR ACCESS' with TYPE a, b or c")
    kind, numbers, access = fields
    major_text, sep, minor_text = numbers.partition(":")
    if not sep:
        raise CgroupValidationError(f"device rule {text!r}: expected MAJOR:MINOR")
    if not access or set(access) - set("rwm"):
        raise CgroupValidationError(f"device rule {text!r}: access must be made of r, w, m")

    def number(part: str) -> int | None:
        if part == "*":
            return None
        if not part.isdigit() or int(part) > 0x7FFFFFFF:
            raise CgroupValidationError(f"device rule {text!r}: {part!r} is not a device number or '*'")
        return int(part)

    return DeviceRule(allow, kind, number(major_text), number(minor_text), "".join(sorted(set(access))))


def rules_allow(rules: Sequence[DeviceRule], kind: str, major: int, minor: int, access: str,
                default_allow: bool = False) -> bool:
    """Python statement of what the compiled program decides: the last matching rule wins."""
    for rule in reversed(rules):
        if rule.matches(kind, major, minor, access):
            return rule.allow
    return default_allow


# -- instruction generation -----------------------------------------------------------

def _insn(code: int, dst: int = 0, src: int = 0, off: int = 0, imm: int = 0) -> bytes:
    """struct bpf_insn: u8 code, u8 dst_reg:4 + src_reg:4 (dst in the low nibble), s16 off, s32 imm."""
    return struct.pack("<BBhi", code, (src << 4) | dst, off, imm)


def _rule_block(rule: DeviceRule) -> list[bytes]:
    """The block for one rule: tests that each jump past the block when they fail, then the verdict."""
    # Each test: instructions that prepare it, then the register and value a "not equal: skip" jump compares.
    tests: list[tuple[list[bytes], int, int]] = []
    if rule.kind != "a":
        tests.append(([], 2, _TYPES[rule.kind]))
    if rule.access_mask != _ALL_ACCESS:
        # r1 = the requested access bits the rule does not cover; any of them means no match.
        not_covered = [_insn(_ALU64 | _MOV | _X, dst=1, src=3),
                       _insn(_ALU | _AND | _K, dst=1, imm=~rule.access_mask & 0xFFFF)]
        tests.append((not_covered, 1, 0))
    if rule.major is not None:
        tests.append(([], 4, rule.major))
    if rule.minor is not None:
        tests.append(([], 5, rule.minor))
    verdict = [_insn(_ALU64 | _MOV | _K, dst=0, imm=1 if rule.allow else 0), _insn(_JMP | _EXIT)]

    remaining = sum(len(prepare) + 1 for prepare, _, _ in tests) + len(verdict)
    block: list[bytes] = []
    for prepare, register, value in tests:
        block += prepare
        remaining -= len(prepare) + 1
        # Offsets count from the next instruction: skip the rest of the block (later tests, the verdict).
        block.append(_insn(_JMP | _JNE | _K, dst=register, off=remaining, imm=value))
    return block + verdict


@functools.lru_cache(maxsize=64)
def _compile_cached(rules: tuple[DeviceRule, ...], default_allow: bool) -> bytes:
    program = [
        _insn(_LDX | _W | _MEM, dst=2, src=1, off=0),
        _insn(_ALU | _AND | _K, dst=2, imm=0xFFFF),
        _insn(_LDX | _W | _MEM, dst=3, src=1, off=0),
        _insn(_ALU | _RSH | _K, dst=3, imm=16),
        _insn(_LDX | _W | _MEM, dst=4, src=1, off=4),
        _insn(_LDX | _W | _MEM, dst=5, src=1, off=8),
    ]
    for rule in reversed(rules):
        program += _rule_block(rule)
        if rule.kind == "a" and rule.major is None and rule.minor is None and rule.access_mask == _ALL_ACCESS:
            # Matches every request: earlier rules and the default can never decide.
            return b"".join(program)
    program += [_insn(_ALU64 | _MOV | _K, dst=0, imm=1 if default_allow else 0), _insn(_JMP | _EXIT)]
    return b"".join(program)


def compile_filter(rules: Iterable[DeviceRule], default_allow: bool = False) -> bytes:
    """eBPF instructions (8 bytes each) deciding device access by ``rules``; cached per rule set."""
    return _compile_cached(tuple(rules), default_allow)


def container_rules(allow_rules: Iterable[str]) -> tuple[DeviceRule, ...]:
    """The v1 sequence ``deny a`` then ``allow`` each of ``allow_rules``, as rules for the filter."""
    return _container_rules_cached(tuple(allow_rules))


@functools.lru_cache(maxsize=64)
def _container_rules_cached(allow_rules: tuple[str, ...]) -> tuple[DeviceRule, ...]:
    # Cached: every CreateContainer asks for the same few sets, and parsing them costs ~100 us.
    return (DeviceRule(False, "a", None, None, "rwm"), *(parse_rule(r, allow=True) for r in allow_rules))


# -- bpf(2) ------------------------------------------------------------------------------

class _ProgLoadAttr(ctypes.Structure):
    _fields_ = [
        ("prog_type", ctypes.c_uint32),
        ("insn_cnt", ctypes.c_uint32),
        ("insns", ctypes.c_uint64),
        ("license", ctypes.c_uint64),
        ("log_level", ctypes.c_uint32),
        ("log_size", ctypes.c_uint32),
        ("log_buf", ctypes.c_uint64),
        ("kern_version", ctypes.c_uint32),
        ("prog_flags", ctypes.c_uint32),
        ("prog_name", ctypes.c_char * 16),
        ("prog_ifindex", ctypes.c_uint32),
        ("expected_attach_type", ctypes.c_uint32),
    ]


class _ProgAttachAttr(ctypes.Structure):
    _fields_ = [
        ("target_fd", ctypes.c_uint32),
        ("attach_bpf_fd", ctypes.c_uint32),
        ("attach_type", ctypes.c_uint32),
        ("attach_flags", ctypes.c_uint32),
        ("replace_bpf_fd", ctypes.c_uint32),
    ]


class _ProgQueryAttr(ctypes.Structure):
    _fields_ = [
        ("target_fd", ctypes.c_uint32),
        ("attach_type", ctypes.c_uint32),
        ("query_flags", ctypes.c_uint32),
        ("attach_flags", ctypes.c_uint32),
        ("prog_ids", ctypes.c_uint64),
        ("prog_cnt", ctypes.c_uint32),
        ("_pad", ctypes.c_uint32),
    ]


_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long


def _bpf(command: int, attr: ctypes.Structure) -> int:
    number = _SYS_BPF.get(platform.machine())
    if number is None:
        raise CgroupError(f"the bpf(2) syscall number is not known for {platform.machine()}")
    result = _libc.syscall(ctypes.c_long(number), ctypes.c_int(command), ctypes.byref(attr),
                           ctypes.c_uint(ctypes.sizeof(attr)))
    if result < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return int(result)


def load_program(instructions: bytes) -> int:
    """BPF_PROG_LOAD the program; returns its fd (close-on-exec). The verifier's log is in the error."""
    if not instructions or len(instructions) % INSN_SIZE:
        raise CgroupError(f"device filter: {len(instructions)} bytes is not a whole number of instructions")
    insns = ctypes.create_string_buffer(instructions, len(instructions))
    license_text = ctypes.create_string_buffer(b"GPL")
    attr = _ProgLoadAttr(prog_type=BPF_PROG_TYPE_CGROUP_DEVICE, insn_cnt=len(instructions) // INSN_SIZE,
                         insns=ctypes.addressof(insns), license=ctypes.addressof(license_text),
                         prog_name=PROGRAM_NAME)
    try:
        return _bpf(BPF_PROG_LOAD, attr)
    except OSError as first:
        # Load again with the verifier's log only on failure: logging slows every successful load.
        log = ctypes.create_string_buffer(_VERIFIER_LOG_SIZE)
        attr.log_level, attr.log_size, attr.log_buf = 1, _VERIFIER_LOG_SIZE, ctypes.addressof(log)
        try:
            fd = _bpf(BPF_PROG_LOAD, attr)
        except OSError as second:
            verifier = log.value.decode(errors="replace").strip()
            raise CgroupError(f"loading the cgroup device filter: {second.strerror}"
                              + (f"; verifier log:\n{verifier}" if verifier else "")) from second
        os.close(fd)  # a transient failure the second attempt did not see
        raise CgroupError(f"loading the cgroup device filter: {first.strerror}") from first


def _open_cgroup(cgroup_dir: str) -> int:
    try:
        return os.open(cgroup_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as exc:
        raise CgroupError(f"opening cgroup {cgroup_dir}: {exc.strerror}") from exc


def attach_program(cgroup_dir: str, program_fd: int) -> None:
    """BPF_PROG_ATTACH as BPF_CGROUP_DEVICE with BPF_F_ALLOW_MULTI (the parent's programs still apply)."""
    cgroup_fd = _open_cgroup(cgroup_dir)
    try:
        _bpf(BPF_PROG_ATTACH, _ProgAttachAttr(target_fd=cgroup_fd, attach_bpf_fd=program_fd,
                                              attach_type=BPF_CGROUP_DEVICE, attach_flags=BPF_F_ALLOW_MULTI))
    except OSError as exc:
        raise CgroupError(f"attaching the device filter to {cgroup_dir}: {exc.strerror}") from exc
    finally:
        os.close(cgroup_fd)


def attached_program_ids(cgroup_dir: str) -> list[int]:
    """Ids of the device programs attached to this cgroup itself (BPF_PROG_QUERY)."""
    cgroup_fd = _open_cgroup(cgroup_dir)
    try:
        ids = (ctypes.c_uint32 * 64)()
        attr = _ProgQueryAttr(target_fd=cgroup_fd, attach_type=BPF_CGROUP_DEVICE,
                              prog_ids=ctypes.addressof(ids), prog_cnt=len(ids))
        try:
            _bpf(BPF_PROG_QUERY, attr)
        except OSError as exc:
            raise CgroupError(f"querying the device programs of {cgroup_dir}: {exc.strerror}") from exc
        return list(ids[: attr.prog_cnt])
    finally:
        os.close(cgroup_fd)


class DeviceFilterCache:
    """Loaded programs by rule set, so a container with the same rules as an earlier one costs one attach.

    Thread-safe (CreateContainer runs on worker threads). The least recently used program is closed when
    more than ``capacity`` distinct sets are held; cgroups it is attached to keep it alive.
    """

    def __init__(self, capacity: int = _MAX_CACHED_PROGRAMS) -> None:
        self._capacity = capacity
        self._programs: collections.OrderedDict[tuple[DeviceRule, ...], int] = collections.OrderedDict()
        self._lock = threading.Lock()

    def _program_fd_locked(self, rules: tuple[DeviceRule, ...]) -> int:
        fd = self._programs.get(rules)
        if fd is not None:
            self._programs.move_to_end(rules)
            return fd
        fd = load_program(compile_filter(rules))
        self._programs[rules] = fd
        while len(self._programs) > self._capacity:
            _, old = self._programs.popitem(last=False)
            os.close(old)
        return fd

    def attach(self, cgroup_dir: str, rules: Sequence[DeviceRule]) -> None:
        """Restrict the processes of ``cgroup_dir`` (a cgroup2 directory) to what ``rules`` allow."""
        # Load and attach under one lock, so another thread's eviction cannot close the fd in between.
        with self._lock:
            attach_program(cgroup_dir, self._program_fd_locked(tuple(rules)))

    def close(self) -> None:
        with self._lock:
            for fd in self._programs.values():
                os.close(fd)
            self._programs.clear()

