"""Errors of the cgroups layer.

``CgroupError`` is what callers catch; it is a ``CrioError`` so that a request
that fails here reaches the CRI client with its message (as INTERNAL: a
read-only cgroupfs, a cgroup that will not empty). Requests that can never
succeed as asked (a systemd slice under the cgroupfs driver, a swap limit
below the memory limit, an unknown hugepage size) raise
``CgroupValidationError``, which is also an ``InvalidArgument``. A unit systemd
will not start as the node is set up (a masked slice) is ``CgroupRefusedError``,
also a ``FailedPrecondition``.
"""

from __future__ import annotations

from crio_fast.errors import CrioError, FailedPrecondition, InvalidArgument


class CgroupError(CrioError):
    """A cgroup operation failed."""


class CgroupValidationError(CgroupError, InvalidArgument):
    """Cgroup settings that can never be applied as asked."""


class CgroupRefusedError(CgroupError, FailedPrecondition):
    """The node's cgroup manager refuses the cgroup as it is set up (systemd: a masked unit)."""
