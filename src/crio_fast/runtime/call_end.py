"""The end of the call some work serves: its deadline, and word when the client goes away.

Work that runs as long as a client lets it (ExecSync's command) must stop when the call does, or it
outlives the caller: a command left running, its output still gathered for nobody. The server makes a
``CallEnd`` per call from the gRPC context (server/base.py ``call_end``) and the managers hand it down;
this module knows nothing of gRPC.
"""

from __future__ import annotations

import os
import threading
import time
from typing import NoReturn

from crio_fast.errors import Cancelled, DeadlineExceeded

# A deadline further off than this is none (gRPC reports "no deadline" as about 2**63 seconds).
_NO_DEADLINE_BEYOND = 10 * 365 * 24 * 3600.0


class CallEnd:
    """The call's deadline (``time.monotonic()`` seconds, None for none), and a descriptor that becomes
    readable once ``end`` is called (the client cancelled, the deadline passed, the call is over), to
    wait on beside the work's own descriptors."""

    def __init__(self, remaining: float | None = None) -> None:
        self.deadline = (None if remaining is None or remaining > _NO_DEADLINE_BEYOND
                         else time.monotonic() + max(0.0, remaining))
        self._lock = threading.Lock()
        self._ended = False
        self._fd = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)

    def end(self) -> None:
        """The call is over; from any thread, any number of times, before or after ``close``."""
        with self._lock:
            if self._ended:
                return
            self._ended = True
            if self._fd >= 0:
                os.eventfd_write(self._fd, 1)

    @property
    def ended(self) -> bool:
        return self._ended or (self.deadline is not None and time.monotonic() >= self.deadline)

    def fileno(self) -> int:
        return self._fd

    def limit(self, timeout: float | None) -> float | None:
        """The earlier of the call's deadline and ``timeout`` seconds from now (None: no limit)."""
        own = None if timeout is None else time.monotonic() + timeout
        if self.deadline is None or own is None:
            return own if self.deadline is None else self.deadline
        return min(own, self.deadline)

    def raise_ended(self, what: str) -> NoReturn:
        """Raise the error for ``what`` stopped because the call ended."""
        if self.deadline is not None and time.monotonic() >= self.deadline:
            raise DeadlineExceeded(f"{what}: stopped, the call's deadline has passed")
        raise Cancelled(f"{what}: stopped, the call was cancelled")

    def close(self) -> None:
        with self._lock:
            self._ended = True
            if self._fd >= 0:
                os.close(self._fd)
                self._fd = -1

    def __enter__(self) -> "CallEnd":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
