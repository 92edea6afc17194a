"""Errors of the cgroups layer.

``CgroupError`` is what callers catch; it is a ``CrioError`` so that a request
that fails here reaches the CRI client with its message. Requests that can
never succeed as asked (a systemd slice under the cgroupfs driver, a swap
limit below the memory limit, an unknown hugepage size) raise
``CgroupValidationError``, which maps to INVALID_ARGUMENT; failures of the
host (a read-only cgroupfs, a cgroup that will not empty) stay INTERNAL.
"""

from __future__ import annotations

import grpc

from crio_fast.errors import CrioError, InvalidArgument


class CgroupError(CrioError):
    code = grpc.StatusCode.INTERNAL


class CgroupValidationError(CgroupError, InvalidArgument):
    code = grpc.StatusCode.INVALID_ARGUMENT
