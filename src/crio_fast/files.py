"""Files written so that a crash at any instant leaves the old content or the new, never a part; files
opened without leaving a directory."""

from __future__ import annotations

import ctypes
import errno
import os
import uuid
from pathlib import Path


def atomic_write(path: Path, data: bytes, mode: int = 0o644, *, durable: bool = True) -> None:
    """Write ``data`` to ``path`` so that readers see the old or the new file, never a part.

    ``durable`` adds an fsync before the rename, so that the new content also
    survives a machine crash; without it a daemon crash is still safe."""
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        if durable:
            os.fsync(fd)
    except BaseException:
        os.close(fd)
        os.unlink(tmp)
        raise
    os.close(fd)
    os.rename(tmp, path)


# openat2(2): the syscall's number is the same on every architecture; its flags from linux/openat2.h.
_SYS_OPENAT2 = 437
RESOLVE_NO_MAGICLINKS = 0x02
RESOLVE_BENEATH = 0x08
_OPENAT2_EAGAIN_ATTEMPTS = 16


class _OpenHow(ctypes.Structure):
    _fields_ = [("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64), ("resolve", ctypes.c_uint64)]


_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long


def open_beneath(dir_fd: int, path: str, flags: int, mode: int = 0) -> int:
    """openat2(``dir_fd``, ``path``, RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS): a descriptor of ``path``
    reached without leaving the directory, by ".." or by a symlink (EXDEV, ELOOP otherwise). OSError
    with the errno on failure."""
    how = _OpenHow(flags | os.O_CLOEXEC, mode, RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS)
    encoded = os.fsencode(path)
    for _ in range(_OPENAT2_EAGAIN_ATTEMPTS):  # EAGAIN: a rename raced ".."; the kernel asks for a retry
        fd = _libc.syscall(ctypes.c_long(_SYS_OPENAT2), ctypes.c_int(dir_fd), ctypes.c_char_p(encoded),
                           ctypes.byref(how), ctypes.c_size_t(ctypes.sizeof(how)))
        if fd >= 0:
            return int(fd)
        err = ctypes.get_errno()
        if err != errno.EAGAIN:
            break
    raise OSError(err, os.strerror(err), path)
