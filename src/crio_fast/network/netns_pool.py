"""Network namespaces made ahead of the pods that join them.

Without one, a pod on a CNI network waits for its monitor to make its
network namespace before the CNI ADD can start. With a namespace made ahead
the ADD starts at once, beside the monitor's start (sandbox/manager.py), and
the namespace's creation (the unshare, `lo` up, the pin: about 0.5 ms alone,
more while the kernel tears other namespaces down) leaves the request. The
pool keeps up to ``[crio.network] netns_pool_size`` namespaces ready under
``<runroot>/netns-pool/``, each with ``lo`` up and pinned by an nsfs bind
mount (made by ``crio-fast-monitor make-netns``, a private mount below like a
pod dir's own pins). A pod's monitor joins one (``--net PATH``) and pins it in
its pod dir as if it had made it; the pool's pin is then dropped. Making new
ones and dropping used pins happen on the pool's own thread, never in a
request. An empty pool is no error: the monitor makes the namespace, as
without a pool.

The daemon owns the directory alone (one daemon per run root): whatever is in
it at ``start`` was left by a daemon that was killed, and is destroyed then.
So ``start`` comes only once the run root's instance lock is held: a second
daemon refused there must not touch the first one's pool.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import os
import secrets
import shutil
import subprocess
import threading
from pathlib import Path

from crio_fast.runtime import mounts

log = logging.getLogger("crio_fast.network")

POOL_DIR_NAME = "netns-pool"
# A failed refill is tried again after this many seconds, doubling up to the maximum.
RETRY_SECONDS = 1.0
MAX_RETRY_SECONDS = 60.0
MAKE_TIMEOUT_SECONDS = 30.0


class NetnsPool:
    """Up to ``size`` network namespaces made ahead (0: none, every pod's monitor makes its own)."""

    def __init__(self, runroot: str, size: int, monitor_path: str) -> None:
        self.directory = Path(runroot) / POOL_DIR_NAME
        self.size = size
        self.monitor_path = monitor_path
        self._ready: collections.deque[str] = collections.deque()
        self._used: list[str] = []  # pins of namespaces handed out, to drop
        self._closing = False
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None
        self._started = False

    def start(self) -> None:
        """Destroy what a killed daemon's pool left, then fill the pool (in the background)."""
        self._started = True
        destroy_pool_dir(self.directory)
        if self.size > 0:
            try:
                self.directory.mkdir(mode=0o700, parents=True)
                mounts.bind_private_self(str(self.directory))
            except OSError as exc:
                # Pods still start, each making its own namespace, as with a size of 0.
                log.error("network namespace pool: %s; pods make their own network namespaces", exc)
                destroy_pool_dir(self.directory)
                self.size = 0
                return
            self._thread = threading.Thread(target=self._refill_loop, name="netns-pool", daemon=True)
            self._thread.start()

    def take(self) -> str | None:
        """The path of a ready namespace, now the caller's to join; None when the pool is empty. Give it
        back with ``used`` once joined (or not)."""
        with self._cond:
            if not self._ready:
                return None
            path = self._ready.popleft()
            self._cond.notify()
            return path

    def used(self, path: str) -> None:
        """Drop the pool's pin of a namespace ``take`` handed out (in the background): a pod that
        joined it holds it by its own pin."""
        with self._cond:
            if self._closing:
                _destroy(path)
                return
            self._used.append(path)
            self._cond.notify()

    def ready_count(self) -> int:
        with self._cond:
            return len(self._ready)

    def close(self) -> None:
        """Destroy every namespace the pool holds (at daemon shutdown); nothing if it never started."""
        if not self._started:
            return
        with self._cond:
            self._closing = True
            self._cond.notify()
        if self._thread is not None:
            self._thread.join(MAKE_TIMEOUT_SECONDS + 5)
        with self._cond:
            left = list(self._ready) + self._used
            self._ready.clear()
            self._used.clear()
        for path in left:
            _destroy(path)
        destroy_pool_dir(self.directory)

    def _refill_loop(self) -> None:
        retry = RETRY_SECONDS
        while True:
            with self._cond:
                while not self._closing and not self._used and len(self._ready) >= self.size:
                    self._cond.wait()
                if self._closing:
                    return
                used, self._used = self._used, []
                wanted = self.size - len(self._ready)
            for path in used:
                _destroy(path)
            if wanted <= 0:
                continue
            made = self._make(wanted)
            with self._cond:
                if self._closing:
                    for path in made:
                        _destroy(path)
                    return
                self._ready.extend(made)
                if made:
                    retry = RETRY_SECONDS
                    continue
                # The helper failed: wait before the next try rather than spin (close ends the wait).
                self._cond.wait(retry)
                retry = min(retry * 2, MAX_RETRY_SECONDS)

    def _make(self, count: int) -> list[str]:
        """``count`` new namespaces (fewer, or none, if the helper fails: the reason is logged)."""
        paths = [str(self.directory / secrets.token_hex(8)) for _ in range(count)]
        try:
            result = subprocess.run([self.monitor_path, "make-netns", *paths], stdin=subprocess.DEVNULL,
                                    stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                    timeout=MAKE_TIMEOUT_SECONDS, check=False)
            failure = result.stderr.decode(errors="replace").strip() if result.returncode != 0 else ""
        except (OSError, subprocess.TimeoutExpired) as exc:
            failure = str(exc)
        if not failure:
            return paths
        log.error("network namespace pool: %s", failure)
        made = [p for p in paths if _is_pinned(p)]
        for path in set(paths) - set(made):
            _destroy(path)
        return made


def _is_pinned(path: str) -> bool:
    try:
        return mounts.mount_id(path) != mounts.mount_id(os.path.dirname(path))
    except OSError:
        return False


def _destroy(path: str) -> None:
    """Drop a pool pin: its namespace goes with the last pin or process holding it."""
    try:
        mounts.detach_stacked(path)
    except OSError as exc:
        log.warning("network namespace pool: %s", exc)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


def destroy_pool_dir(directory: Path) -> None:
    """Every pin under the pool's directory, its own bind and the directory itself: what a pool leaves,
    at shutdown or after a daemon was killed."""
    if not directory.exists():
        return
    detached = mounts.detach_all_under(str(directory))
    if len(detached) > 1:  # the directory's own bind besides
        log.info("network namespace pool: destroyed %d namespaces left in %s", len(detached) - 1, directory)
    shutil.rmtree(directory, ignore_errors=True)
