"""Where CRI logs go: a pod's log_directory, and each container's log file kept inside it.

A container's log_path comes with CreateContainer, relative to its pod's log_directory (the kubelet's
"<container>/<restart>.log"). The pod monitor opens the file, at the create and at every
ReopenContainerLog, with openat2 RESOLVE_BENEATH relative to the directory, so that neither ".." nor
a symlink, there now or planted later, leads out of it. Here, before the monitor is asked, the path is
checked the same way and the directories on its way are made one by one beneath the log directory.
"""

from __future__ import annotations

import errno
import os
import stat
from dataclasses import dataclass
from typing import NoReturn

from crio_fast.errors import Internal, InvalidArgument, shown
from crio_fast.files import open_beneath
from crio_fast.validation import check_log_path

# What a failure to reach a path says about the request rather than the host.
_REQUEST_ERRNOS = frozenset({errno.EXDEV, errno.ELOOP, errno.ENOTDIR, errno.EISDIR, errno.ENAMETOOLONG,
                             errno.EEXIST})


@dataclass(frozen=True)
class LogFile:
    """A container's log file: ``relative`` beneath ``directory``."""

    directory: str
    relative: str

    @property
    def path(self) -> str:
        return os.path.join(self.directory, self.relative)


def make_log_directory(path: str) -> None:
    """A pod's log directory and its parents."""
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as exc:
        _raise_for(exc, f"log_directory {shown(path)}")


def prepare_log_file(log_directory: str, log_path: str) -> LogFile | None:
    """The container's log file, None without a log directory or path. The directories on its way are
    made beneath the log directory; a path that leads out of it, or to anything but a regular file,
    is refused (InvalidArgument)."""
    if not (log_directory and log_path):
        return None
    check_log_path(log_path)
    relative = os.path.normpath(log_path)
    if relative == ".":
        raise InvalidArgument(f"log_path {shown(log_path)} names the log directory itself")
    make_log_directory(log_directory)
    what = f"log_path {shown(log_path)} in {shown(log_directory)}"
    try:
        dir_fd = os.open(log_directory, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as exc:
        _raise_for(exc, f"log_directory {shown(log_directory)}")
    try:
        parent = os.path.dirname(relative)
        if parent:
            _make_dirs_beneath(dir_fd, parent, what)
        try:
            fd = open_beneath(dir_fd, relative, os.O_PATH)
        except FileNotFoundError:
            return LogFile(log_directory, relative)  # the monitor creates it
        except OSError as exc:
            _raise_for(exc, what)
        try:
            mode = os.fstat(fd).st_mode
        finally:
            os.close(fd)
        if not stat.S_ISREG(mode):
            raise InvalidArgument(f"{what} exists and is not a regular file")
        return LogFile(log_directory, relative)
    finally:
        os.close(dir_fd)


def _make_dirs_beneath(dir_fd: int, parent: str, what: str) -> None:
    """mkdir each component of ``parent`` in the one before, each reached beneath ``dir_fd``."""
    current = dir_fd
    reached = ""
    try:
        for component in parent.split("/"):
            reached = os.path.join(reached, component)
            try:
                os.mkdir(component, 0o755, dir_fd=current)  # a symlink there is not followed: EEXIST
            except FileExistsError:
                pass
            following = open_beneath(dir_fd, reached, os.O_PATH | os.O_DIRECTORY)
            if current != dir_fd:
                os.close(current)
            current = following
    except OSError as exc:
        _raise_for(exc, what)
    finally:
        if current != dir_fd:
            os.close(current)


def _raise_for(exc: OSError, what: str) -> NoReturn:
    reason = exc.strerror or str(exc)
    if exc.errno in (errno.EXDEV, errno.ELOOP):
        reason = "it leads out of the log directory"
    if exc.errno in _REQUEST_ERRNOS:
        raise InvalidArgument(f"{what}: {reason}") from exc
    raise Internal(f"{what}: {reason}") from exc
