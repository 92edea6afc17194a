"""crio_fast.runtime.wire against the C side: monitor.h's numbers, and the TLV encoding."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from crio_fast.runtime import wire

CHECKOUT = Path(__file__).resolve().parents[2]
MONITOR_DIR = CHECKOUT / "src" / "crio_fast" / "_native" / "monitor"

# What monitor.h declares that never crosses to Python: the monitor's own limits and defaults, the
# sync messages between the monitor and its child, and enums the C code uses internally. Anything
# else it declares must have a twin in wire.py, so a number added on one side fails here.
NOT_ON_THE_WIRE_DEFINES = {"ERROR_MESSAGE_MAX", "PLAN_CAP_SETS", "LOG_LINE_MAX_DEFAULT"}
NOT_ON_THE_WIRE_ENUMS = {"cap_set", "fs_param_answer", "log_stream"}
# server.h is the monitor's internals but for this one, the values of FIELD_STATE.
SERVER_H_WIRE_ENUMS = {"container_status"}


def _without_comments(source: str) -> str:
    return re.sub(r"//[^\n]*", "", re.sub(r"/\*.*?\*/", " ", source, flags=re.S))


def _evaluate(expression: str, known: dict[str, int] | None = None) -> int:
    """A C integer constant expression of the kind the headers use: numbers, (), <<, |, and the
    names of constants defined before it (``known``)."""
    known = known or {}
    tokens = re.findall(r"0[xX][0-9a-fA-F]+[uUlL]*|\d+[uUlL]*|<<|[|()]|\w+|\S", expression)
    if not tokens or not all(re.fullmatch(r"0[xX][0-9a-fA-F]+[uUlL]*|\d+[uUlL]*|<<|[|()]", token) or token in known
                             for token in tokens):
        raise ValueError(f"not a constant expression this test knows: {expression!r}")
    python = " ".join(str(known[token]) if token in known else token.rstrip("uUlL") for token in tokens)
    return int(eval(python, {"__builtins__": {}}))  # numbers and operators only, checked above


def _enums(source: str) -> dict[str | None, dict[str, int]]:
    """Every enum of a C source: its tag (None when anonymous) -> {constant: value}."""
    enums: dict[str | None, dict[str, int]] = {}
    anonymous = 0
    for tag, body in re.findall(r"\benum\s+(\w+)?\s*\{(.*?)\}", _without_comments(source), re.S):
        values: dict[str, int] = {}
        next_value = 0
        for item in filter(None, (part.strip() for part in body.split(","))):
            name, _, expression = (piece.strip() for piece in item.partition("="))
            next_value = _evaluate(expression) if expression else next_value
            values[name] = next_value
            next_value += 1
        if not tag:
            anonymous += 1
        enums[tag or f"anonymous enum {anonymous}"] = values
    return enums


def _numeric_defines(source: str) -> dict[str, int]:
    defines = {}
    definition = re.compile(r"^[ \t]*#[ \t]*define[ \t]+(\w+)[ \t]+([^\n]+)$", re.M)
    for name, expression in definition.findall(_without_comments(source).replace("\\\n", " ")):
        try:
            defines[name] = _evaluate(expression, defines)
        except ValueError:
            pass  # strings, characters, function-like macros
    return defines


def c_wire_constants() -> dict[str, int]:
    """The numbers of monitor.h (and server.h's FIELD_STATE values) that Python must know."""
    header = (MONITOR_DIR / "monitor.h").read_text()
    constants = {name: value for name, value in _numeric_defines(header).items()
                 if name not in NOT_ON_THE_WIRE_DEFINES}
    for tag, values in _enums(header).items():
        if tag not in NOT_ON_THE_WIRE_ENUMS:
            constants.update(values)
    server_enums = _enums((MONITOR_DIR / "server.h").read_text())
    for tag in SERVER_H_WIRE_ENUMS:
        constants.update(server_enums[tag])
    return constants


def python_wire_constants() -> dict[str, int]:
    """wire.py's numbers under their C names."""
    constants = {name: value for name, value in vars(wire).items()
                 if name.isupper() and not name.startswith("_") and type(value) is int}
    constants.update({f"MOUNT_OP_{kind.name}": kind.value for kind in wire.MountKind})
    return constants


def differences(c_side: dict[str, int], python_side: dict[str, int]) -> list[str]:
    found = []
    if only_in_c := sorted(c_side.keys() - python_side.keys()):
        found.append(f"in the C headers, missing from wire.py: {only_in_c}")
    if only_in_python := sorted(python_side.keys() - c_side.keys()):
        found.append(f"in wire.py, not in the C headers: {only_in_python}")
    if differing := {name: (c_side[name], python_side[name]) for name in sorted(c_side.keys() & python_side.keys())
                     if c_side[name] != python_side[name]}:
        found.append(f"values differ (C, Python): {differing}")
    return found


def test_every_number_of_monitor_h_has_its_twin_in_wire_py():
    c_side = c_wire_constants()
    assert len(c_side) > 100  # the parser found the header's enums, not nothing
    assert differences(c_side, python_wire_constants()) == []


def test_the_header_check_notices_a_drift(monkeypatch: pytest.MonkeyPatch):
    """A value moved on one side, a number on one side only: the comparison names them (the test's own
    parser could otherwise go blind unnoticed)."""
    c_side = c_wire_constants()
    argv = wire.PLAN_ARGV
    monkeypatch.setattr(wire, "PLAN_ARGV", argv + 100)
    monkeypatch.setattr(wire, "FIELD_UNHEARD_OF", 99, raising=False)
    found = differences(c_side, python_wire_constants())
    assert any(f"'PLAN_ARGV': ({argv}, {argv + 100})" in line for line in found), found
    assert any("not in the C headers: ['FIELD_UNHEARD_OF']" in line for line in found), found
    c_side["FIELD_ONLY_IN_C"] = 28
    assert "in the C headers, missing from wire.py: ['FIELD_ONLY_IN_C']" in differences(
        c_side, python_wire_constants())


def test_the_header_parser_reads_what_the_header_says():
    header = """
        #define A_FLAG 0x8000u
        #define A_SIZE (4u << 20)
        #define BOTH (A_FLAG | 1u)
        #define NOT_A_NUMBER "0.1.0"
        #define UNKNOWN_NAME (NOWHERE | 1u)
        enum first { ONE = 1, /* a comment, with a comma */ TWO, FIVE = 5 };
        enum { X = 1, Y = 2 };
        enum { Z };
    """
    assert _numeric_defines(header) == {"A_FLAG": 0x8000, "A_SIZE": 4 << 20, "BOTH": 0x8001}
    assert _enums(header) == {"first": {"ONE": 1, "TWO": 2, "FIVE": 5}, "anonymous enum 1": {"X": 1, "Y": 2},
                              "anonymous enum 2": {"Z": 0}}


# -- TLV and messages ------------------------------------------------------------------------------


def test_tlv_round_trip():
    inner = wire.TLVWriter()
    inner.string(wire.KV_KEY, "net.ipv4.ip_forward")
    writer = wire.TLVWriter()
    writer.u32(wire.PLAN_UID, 1000)
    writer.i32(wire.PLAN_OOM_SCORE_ADJ, -999)
    writer.u64(wire.PLAN_CAP_BOUNDING, 1 << 40)
    writer.boolean(wire.PLAN_TTY, True)
    writer.u32_array(wire.PLAN_ADDITIONAL_GIDS, [1, 2])
    writer.string(wire.PLAN_ENV, "A=\udcff")  # not UTF-8: the byte passes through
    writer.nested(wire.PLAN_SYSCTL, inner)
    fields = wire.parse_tlv(writer.getvalue())
    assert fields == [
        (wire.PLAN_UID, b"\xe8\x03\0\0"),
        (wire.PLAN_OOM_SCORE_ADJ, (-999).to_bytes(4, "little", signed=True)),
        (wire.PLAN_CAP_BOUNDING, (1 << 40).to_bytes(8, "little")),
        (wire.PLAN_TTY, b"\1\0\0\0"),
        (wire.PLAN_ADDITIONAL_GIDS, b"\1\0\0\0\2\0\0\0"),
        (wire.PLAN_ENV, b"A=\xff\0"),
        (wire.PLAN_SYSCTL, inner.getvalue()),
    ]
    by_tag = wire.parse_tlv_by_tag(writer.getvalue())
    assert wire.decode_u32(by_tag[wire.PLAN_UID][0]) == 1000
    assert wire.decode_i32(by_tag[wire.PLAN_OOM_SCORE_ADJ][0]) == -999
    assert wire.decode_u64(by_tag[wire.PLAN_CAP_BOUNDING][0]) == 1 << 40
    assert wire.decode_bool(by_tag[wire.PLAN_TTY][0]) is True
    assert wire.decode_string(wire.parse_tlv(by_tag[wire.PLAN_SYSCTL][0])[0][1]) == "net.ipv4.ip_forward"
    assert wire.decode_string(b"no terminator") == "no terminator"


def test_tlv_refuses_what_is_malformed():
    with pytest.raises(ValueError, match="NUL byte"):
        wire.TLVWriter().string(wire.PLAN_ARGV, "a\0b")
    field = wire.TLVWriter()
    field.u32(wire.PLAN_UID, 0)
    with pytest.raises(ValueError, match="truncated"):
        wire.parse_tlv(field.getvalue()[:3])
    with pytest.raises(ValueError, match="claims 4 bytes, 3 remain"):
        wire.parse_tlv(field.getvalue()[:-1])


def test_message_header():
    fields = wire.TLVWriter()
    fields.string(wire.FIELD_CONTAINER_ID, "c")
    message = wire.encode_message(wire.REQUEST_STATE, 7, fields)
    assert wire.decode_message_header(message) == wire.MessageHeader(
        version=wire.MONITOR_PROTOCOL, type=wire.REQUEST_STATE, request_id=7, length=len(message))
    assert wire.parse_tlv(message[wire.MESSAGE_HEADER_SIZE:]) == [(wire.FIELD_CONTAINER_ID, b"c\0")]


def test_plan_chunks():
    assert wire.encode_plan_chunk(b"abc") == b"\3\0\0\0abc"
    assert wire.END_OF_PLAN_CHUNKS == b"\0\0\0\0"


def test_tty_size_is_columns_and_rows_in_one_u32():
    assert wire.tty_size(80, 25) == 80 | 25 << 16
    # The same two u16 as an ATTACH_RESIZE payload, so the monitor reads both alike.
    assert wire.tty_size(100, 40).to_bytes(4, "little") == wire.encode_resize(100, 40)


def test_an_exec_plan_carries_its_terminal_size_only_with_a_terminal():
    from crio_fast.runtime.plan import ExecPlan

    def sizes(plan: ExecPlan) -> list[int]:
        return [wire.decode_u32(v) for tag, v in wire.parse_tlv(plan.encode()) if tag == wire.PLAN_TTY_SIZE]

    assert sizes(ExecPlan(target_pid=1, argv=["sh"], namespaces=[], tty=True, tty_size=(80, 25))) == [80 | 25 << 16]
    assert sizes(ExecPlan(target_pid=1, argv=["sh"], namespaces=[], tty=True)) == []
    assert sizes(ExecPlan(target_pid=1, argv=["sh"], namespaces=[], tty=False, tty_size=(80, 25))) == []
