"""Watch the exits dir with inotify so container exits are noticed at once.

The monitors write ``<exits dir>/<container id>`` through a rename (see
docs/monitor.md), so ``IN_MOVED_TO`` sees exactly the complete files. The
inotify fd is non-blocking and read from the daemon's event loop
(``add_reader``); each new exit file is handed to a callback with the
container id. A queue overflow (``IN_Q_OVERFLOW``) hands over ``None``:
"something may have been missed, look at everything".

A tiny ctypes binding: the three libc calls are all that is needed, and they
do not justify a dependency or a native module.
"""

from __future__ import annotations

import asyncio
import ctypes
import errno
import logging
import os
import struct
from typing import Callable

log = logging.getLogger("crio_fast.exitwatch")

IN_MOVED_TO = 0x00000080
IN_CLOSE_WRITE = 0x00000008
IN_Q_OVERFLOW = 0x00004000
IN_IGNORED = 0x00008000
IN_NONBLOCK = os.O_NONBLOCK
IN_CLOEXEC = os.O_CLOEXEC
_EVENT_HEADER = struct.Struct("iIII")  # wd, mask, cookie, len
_READ_SIZE = 64 * 1024

_libc = ctypes.CDLL(None, use_errno=True)
_libc.inotify_init1.argtypes = [ctypes.c_int]
_libc.inotify_add_watch.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32]


class ExitWatchError(OSError):
    pass


def parse_events(buffer: bytes) -> tuple[list[str], bool]:
    """File names of the events in ``buffer`` and whether the kernel queue overflowed."""
    names: list[str] = []
    overflow = False
    offset = 0
    while offset + _EVENT_HEADER.size <= len(buffer):
        _wd, mask, _cookie, length = _EVENT_HEADER.unpack_from(buffer, offset)
        offset += _EVENT_HEADER.size
        raw = buffer[offset:offset + length].rstrip(b"\0")
        offset += length
        if mask & IN_Q_OVERFLOW:
            overflow = True
        elif raw and not raw.startswith(b"."):  # ".<id>.tmp": a write still under way
            names.append(os.fsdecode(raw))
    return names, overflow


class ExitWatcher:
    """inotify on one directory, read on an asyncio loop."""

    def __init__(self, directory: str, on_exit: Callable[[str | None], None]) -> None:
        self.directory = directory
        self.on_exit = on_exit
        self._fd = -1
        self._loop: asyncio.AbstractEventLoop | None = None

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        fd = _libc.inotify_init1(IN_NONBLOCK | IN_CLOEXEC)
        if fd < 0:
            err = ctypes.get_errno()
            raise ExitWatchError(err, f"inotify_init1: {os.strerror(err)}")
        if _libc.inotify_add_watch(fd, os.fsencode(self.directory), IN_MOVED_TO | IN_CLOSE_WRITE) < 0:
            err = ctypes.get_errno()
            os.close(fd)
            raise ExitWatchError(err, f"inotify_add_watch {self.directory}: {os.strerror(err)}")
        self._fd = fd
        self._loop = loop
        loop.add_reader(fd, self._readable)

    def stop(self) -> None:
        if self._fd < 0:
            return
        if self._loop is not None and not self._loop.is_closed():
            self._loop.remove_reader(self._fd)
        os.close(self._fd)
        self._fd = -1

    def _readable(self) -> None:
        while True:
            try:
                buffer = os.read(self._fd, _READ_SIZE)
            except BlockingIOError:
                return
            except OSError as exc:
                if exc.errno == errno.EINTR:
                    continue
                log.error("reading inotify events of %s: %s; exits are noticed on the next status call only",
                          self.directory, os.strerror(exc.errno or 0))
                self.stop()
                return
            if not buffer:
                return
            names, overflow = parse_events(buffer)
            if overflow:
                self._deliver(None)
            for name in dict.fromkeys(names):  # IN_CLOSE_WRITE and IN_MOVED_TO of one file: once
                self._deliver(name)

    def _deliver(self, name: str | None) -> None:
        try:
            self.on_exit(name)
        except Exception:
            log.exception("handling exit file %s", name)
