"""A command's output gathered up to a limit: ExecSync's stdout and stderr.

A command may write without end (``yes``); what it writes past the limit is still read, so it neither
blocks on a full pipe nor keeps its caller waiting, but dropped without a copy (spliced to /dev/null).
What is kept lives in an anonymous mapping of its own, which goes back to the system when the capture
is closed: a heap buffer of that size would stay with the daemon after the call (glibc raises its mmap
threshold to the size of a freed mapping, so the next such buffer would come from the heap).
"""

from __future__ import annotations

import mmap
import os

# Bytes moved to /dev/null per splice once the limit is reached.
_DROP_CHUNK = 1 << 20


class CappedOutput:
    """Reads ``fd`` (non-blocking) keeping its first ``limit`` bytes; counts the rest in ``dropped``."""

    def __init__(self, fd: int, limit: int) -> None:
        self.fd = fd
        self.limit = max(0, limit)
        self.kept = 0
        self.dropped = 0
        self._buffer = mmap.mmap(-1, self.limit) if self.limit else None
        self._view = memoryview(self._buffer) if self._buffer is not None else None
        self._null = -1

    def read_available(self) -> bool:
        """Read what is there without blocking; False at end of file."""
        while True:
            try:
                if self._view is not None and self.kept < self.limit:
                    count = os.readv(self.fd, [self._view[self.kept:]])
                    self.kept += count
                else:
                    if self._null < 0:
                        self._null = os.open(os.devnull, os.O_WRONLY | os.O_CLOEXEC)
                    count = os.splice(self.fd, self._null, _DROP_CHUNK, flags=os.SPLICE_F_NONBLOCK)
                    self.dropped += count
            except BlockingIOError:
                return True
            if count == 0:
                return False

    def take(self) -> bytes:
        """The bytes kept."""
        if self._buffer is None:
            return b""
        return self._buffer[:self.kept]

    def close(self) -> None:
        """Give the buffer back (``take`` first); the fd stays open, it is the caller's."""
        if self._view is not None:
            self._view.release()
            self._view = None
        if self._buffer is not None:
            self._buffer.close()
            self._buffer = None
        if self._null >= 0:
            os.close(self._null)
            self._null = -1


def dropped_note(stream: str, limit: int, dropped: int) -> bytes:
    """What ExecSync's stderr says of output it dropped (nothing when none was)."""
    if not dropped:
        return b""
    return f"crio-fast: the command's {stream} was cut at {limit} bytes; {dropped} more bytes were dropped\n".encode()
