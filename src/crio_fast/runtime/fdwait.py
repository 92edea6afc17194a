"""Waiting on file descriptors with poll(2): select(2) takes none above FD_SETSIZE (1023), and a
dense node's daemon holds about two per pod (the monitor's pidfd and socket)."""

from __future__ import annotations

import math
import select
from typing import Iterable, Protocol, Union


class _HasFileno(Protocol):
    def fileno(self) -> int: ...


FileLike = Union[int, _HasFileno]

# What select(2) would report readable: data, end of file, a hang-up or an error (the read says which).
_READABLE = select.POLLIN | select.POLLHUP | select.POLLERR
# Writable, or the reader is gone (the write then raises BrokenPipeError, as after select).
_WRITABLE = select.POLLOUT | select.POLLHUP | select.POLLERR


def _fd(f: FileLike) -> int:
    return f if isinstance(f, int) else f.fileno()


def _milliseconds(timeout: float | None) -> int | None:
    """poll's timeout: None blocks; a fraction of a millisecond rounds up, so a short wait is no busy loop."""
    return None if timeout is None else max(0, math.ceil(timeout * 1000))


def wait_readable(f: FileLike, timeout: float | None) -> bool:
    """Whether ``f`` turned readable within ``timeout`` seconds (0: just look; None: wait)."""
    poller = select.poll()
    poller.register(_fd(f), select.POLLIN)
    return bool(poller.poll(_milliseconds(timeout)))


def wait(readers: Iterable[int], writers: Iterable[int], timeout: float | None) -> tuple[list[int], list[int]]:
    """The descriptors of ``readers`` that are readable and of ``writers`` that are writable, waiting up to
    ``timeout`` seconds for one (None: no limit); like select(2) for any descriptor number."""
    poller = select.poll()
    interest: dict[int, int] = {}
    for fd in readers:
        interest[fd] = interest.get(fd, 0) | select.POLLIN
    for fd in writers:
        interest[fd] = interest.get(fd, 0) | select.POLLOUT
    for fd, mask in interest.items():
        poller.register(fd, mask)
    readable, writable = [], []
    for fd, events in poller.poll(_milliseconds(timeout)):
        if interest[fd] & select.POLLIN and events & _READABLE:
            readable.append(fd)
        if interest[fd] & select.POLLOUT and events & _WRITABLE:
            writable.append(fd)
    return readable, writable
