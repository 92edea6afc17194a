"""Noticing at once when a pod monitor process exits.

A monitor exits when its pod is stopped, and when it is killed (SIGKILL, the OOM killer): then its
pod is not ready any more and its containers, which outlive it, must be stopped. One thread waits
on an epoll set of pidfds, one per watched monitor, and hands the key of each monitor that exits to
a callback, in that thread. The callback tells a stop from a death by the pod's record.
"""

from __future__ import annotations

import logging
import os
import select
import threading
from typing import Callable

log = logging.getLogger("crio_fast.runtime")


class MonitorWatch:
    """pidfds in one epoll set, waited on by one thread started with the first watch."""

    def __init__(self, on_exit: Callable[[str], None]) -> None:
        self.on_exit = on_exit
        self._lock = threading.Lock()
        self._epoll: select.epoll | None = None
        self._wake_read = self._wake_write = -1
        self._thread: threading.Thread | None = None
        self._keys: dict[int, str] = {}  # pidfd -> key
        self._fds: dict[str, int] = {}  # key -> pidfd
        self._gone: list[str] = []  # keys of processes that had exited before they were watched
        self._closed = False

    def watch(self, key: str, pid: int) -> None:
        """Call ``on_exit(key)``, in the watch's thread, once process ``pid`` has exited (soon if it has
        already)."""
        try:
            pidfd = os.pidfd_open(pid)
        except ProcessLookupError:
            pidfd = -1
        with self._lock:
            if self._closed:
                if pidfd >= 0:
                    os.close(pidfd)
                return
            self._start_locked()
            assert self._epoll is not None
            if pidfd < 0:
                self._gone.append(key)
                os.write(self._wake_write, b"x")
                return
            old = self._fds.pop(key, None)
            if old is not None:  # a monitor watched again (reconnected): one pidfd per key
                self._drop_locked(old)
            self._keys[pidfd] = key
            self._fds[key] = pidfd
            self._epoll.register(pidfd, select.EPOLLIN)

    def unwatch(self, key: str) -> None:
        with self._lock:
            pidfd = self._fds.pop(key, None)
            if pidfd is not None:
                self._drop_locked(pidfd)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            thread = self._thread
            if self._wake_write >= 0:
                os.write(self._wake_write, b"x")
        if thread is not None:
            thread.join(timeout=5)
        with self._lock:
            for pidfd in list(self._keys):
                self._drop_locked(pidfd)
            self._fds.clear()
            for fd in (self._wake_read, self._wake_write):
                if fd >= 0:
                    os.close(fd)
            self._wake_read = self._wake_write = -1
            if self._epoll is not None:
                self._epoll.close()
                self._epoll = None

    def _start_locked(self) -> None:
        if self._thread is not None:
            return
        self._epoll = select.epoll()
        self._wake_read, self._wake_write = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
        self._epoll.register(self._wake_read, select.EPOLLIN)
        self._thread = threading.Thread(target=self._run, name="monitor-watch", daemon=True)
        self._thread.start()

    def _drop_locked(self, pidfd: int) -> None:
        self._keys.pop(pidfd, None)
        if self._epoll is not None:
            try:
                self._epoll.unregister(pidfd)
            except (OSError, ValueError):
                pass
        os.close(pidfd)

    def _run(self) -> None:
        epoll = self._epoll
        assert epoll is not None
        while True:
            try:
                events = epoll.poll()
            except InterruptedError:
                continue
            except (OSError, ValueError):
                return  # closed
            exited = []
            with self._lock:
                if self._closed:
                    return
                exited, self._gone = self._gone, []
                for fd, _mask in events:
                    if fd == self._wake_read:
                        try:
                            os.read(fd, 4096)
                        except BlockingIOError:
                            pass
                        continue
                    key = self._keys.get(fd)
                    if key is None:
                        continue
                    del self._fds[key]
                    self._drop_locked(fd)
                    exited.append(key)
            for key in exited:
                self._notify(key)

    def _notify(self, key: str) -> None:
        try:
            self.on_exit(key)
        except Exception:  # the watch must outlive a failed handler
            log.exception("handling the exit of monitor %s", key[:12])
