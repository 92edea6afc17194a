"""Hand-made tar bytes for tests: exact headers, including invalid and hostile ones.

Python's tarfile refuses to write most of what these build (bad checksums,
names with '..', base-256 fields where octal fits, truncated streams), so the
512-byte headers are assembled field by field here.
"""

from __future__ import annotations

BLOCK = 512
POSIX_MAGIC = b"ustar\x0000"
GNU_MAGIC = b"ustar  \x00"


def octal(value: int, width: int) -> bytes:
    """NUL-terminated zero-padded octal, as ustar writes numeric fields."""
    digits = format(value, "o").encode()
    if len(digits) > width - 1:
        raise ValueError(f"{value} does not fit in {width} octal bytes")
    return digits.rjust(width - 1, b"0") + b"\0"


def base256(value: int, width: int) -> bytes:
    """GNU base-256: two's complement big-endian with the high bit of byte 0 set."""
    raw = (value % (1 << (8 * width))).to_bytes(width, "big")
    if value >= 0:
        if raw[0] & 0x80:
            raise ValueError(f"{value} does not fit in {width} base-256 bytes")
        return bytes([raw[0] | 0x80]) + raw[1:]
    return raw  # negative numbers already start with 0xff


def _field(value: int | bytes, width: int) -> bytes:
    if isinstance(value, bytes):
        if len(value) > width:
            raise ValueError(f"{value!r} is longer than {width} bytes")
        return value.ljust(width, b"\0")
    return octal(value, width)


def _encode(name: str | bytes) -> bytes:
    return name.encode() if isinstance(name, str) else name


def header(
    name: str | bytes,
    *,
    typeflag: bytes = b"0",
    size: int | bytes = 0,
    mode: int | bytes = 0o644,
    uid: int | bytes = 0,
    gid: int | bytes = 0,
    mtime: int | bytes = 0,
    linkname: str | bytes = b"",
    magic: bytes = POSIX_MAGIC,
    prefix: str | bytes = b"",
    devmajor: int | bytes = 0,
    devminor: int | bytes = 0,
    checksum: int | None = None,
) -> bytes:
    """One 512-byte header; numeric fields take an int (octal) or raw bytes
    (e.g. from ``base256``). ``checksum`` overrides the computed one."""
    block = bytearray(BLOCK)
    block[0:100] = _field(_encode(name), 100)
    block[100:108] = _field(mode, 8)
    block[108:116] = _field(uid, 8)
    block[116:124] = _field(gid, 8)
    block[124:136] = _field(size, 12)
    block[136:148] = _field(mtime, 12)
    block[156:157] = typeflag
    block[157:257] = _field(_encode(linkname), 100)
    block[257:265] = magic
    block[329:337] = _field(devmajor, 8)
    block[337:345] = _field(devminor, 8)
    block[345:500] = _field(_encode(prefix), 155)
    block[148:156] = b" " * 8
    total = sum(block) if checksum is None else checksum
    block[148:156] = format(total, "06o").encode() + b"\0 "
    return bytes(block)


def padding(length: int) -> bytes:
    return b"\0" * (-length % BLOCK)


def member(name: str | bytes, data: bytes = b"", **fields) -> bytes:
    """Header plus content plus padding. ``size`` defaults to len(data)."""
    fields.setdefault("size", len(data))
    return header(name, **fields) + data + padding(len(data))


def directory(name: str | bytes, **fields) -> bytes:
    fields.setdefault("mode", 0o755)
    return member(name, typeflag=b"5", **fields)


def symlink(name: str | bytes, target: str | bytes, **fields) -> bytes:
    return member(name, typeflag=b"2", linkname=target, **fields)


def hardlink(name: str | bytes, target: str | bytes, **fields) -> bytes:
    return member(name, typeflag=b"1", linkname=target, **fields)


def pax_record(key: str, value: str | bytes) -> bytes:
    """One "LENGTH KEY=VALUE\\n" record; LENGTH counts itself."""
    body = b" " + key.encode() + b"=" + _encode(value) + b"\n"
    length = len(body) + 1
    while len(str(length)) + len(body) != length:
        length += 1
    return str(length).encode() + body


def pax_header(records: list[tuple[str, str | bytes]], *, global_header: bool = False) -> bytes:
    data = b"".join(pax_record(key, value) for key, value in records)
    return member("PaxHeader/entry", data, typeflag=b"g" if global_header else b"x")


def gnu_long_name(name: str | bytes, *, for_link: bool = False) -> bytes:
    data = _encode(name) + b"\0"
    return member("././@LongLink", data, typeflag=b"K" if for_link else b"L", magic=GNU_MAGIC)


def end_of_archive() -> bytes:
    return b"\0" * (2 * BLOCK)


def archive(*members: bytes) -> bytes:
    return b"".join(members) + end_of_archive()
