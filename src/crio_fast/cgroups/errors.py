"""Errors of the cgroups layer.

``CgroupError`` is what callers catch; it is a ``CrioError`` so that a request
that fails here reaches the CRI client with its message (as INTERNAL: a
read-only cgroupfs, a cgroup that will not empty). Requests that can never
succeed as asked (a systemd slice under the cgroupfs driver, a swap limit
below the memory limit, an unknown hugepage size) raise
``CgroupValidationError``, which is also an ``InvalidArgument``.
"""

from __future__ import annotations

from crio_fast.errors import CrioError, InvalidArgument


class CgroupError(CrioError):
    """A cgroup operation failed."""


class CgroupValidationError(CgroupError, InvalidArgument):
    """Cgroup settings that can never be applied as asked."""
