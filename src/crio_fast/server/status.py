"""Which gRPC status a domain error reaches the CRI client with.

The layers below the server raise :mod:`crio_fast.errors` exceptions (or
their own subclasses of them) and know nothing of gRPC; this table is the one
place that turns an exception class into a status code. An error's status is
that of the first class in its MRO that the table names, so a subclass of
NotFound is NOT_FOUND without an entry of its own.
"""

from __future__ import annotations

from typing import Mapping

import grpc

from crio_fast.cgroups.errors import CgroupError, CgroupRefusedError, CgroupValidationError
from crio_fast.errors import (
    AlreadyExists,
    Cancelled,
    CrioError,
    CriReason,
    DeadlineExceeded,
    FailedPrecondition,
    Internal,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
    Unavailable,
    UnreachableRegistry,
)
from crio_fast.network.cni import CniError

STATUS_OF_ERROR: Mapping[type[CrioError], grpc.StatusCode] = {
    CrioError: grpc.StatusCode.UNKNOWN,
    InvalidArgument: grpc.StatusCode.INVALID_ARGUMENT,
    NotFound: grpc.StatusCode.NOT_FOUND,
    AlreadyExists: grpc.StatusCode.ALREADY_EXISTS,
    FailedPrecondition: grpc.StatusCode.FAILED_PRECONDITION,
    DeadlineExceeded: grpc.StatusCode.DEADLINE_EXCEEDED,
    Cancelled: grpc.StatusCode.CANCELLED,
    PermissionDenied: grpc.StatusCode.PERMISSION_DENIED,
    Unavailable: grpc.StatusCode.UNAVAILABLE,
    ResourceExhausted: grpc.StatusCode.RESOURCE_EXHAUSTED,
    Internal: grpc.StatusCode.INTERNAL,
    CriReason: grpc.StatusCode.UNKNOWN,
    UnreachableRegistry: grpc.StatusCode.UNKNOWN,
    # A failing cgroup is the host's fault. CgroupError is not made an Internal
    # subclass instead: code that catches Internal (stop_all_in_pod) would then
    # swallow cgroup failures too.
    CgroupError: grpc.StatusCode.INTERNAL,
    # Both a CgroupError and an InvalidArgument; the MRO would find CgroupError first.
    CgroupValidationError: grpc.StatusCode.INVALID_ARGUMENT,
    CgroupRefusedError: grpc.StatusCode.FAILED_PRECONDITION,
    # A plugin's failure means nothing more specific to the runtime: UNKNOWN, as in CRI-O.
    CniError: grpc.StatusCode.UNKNOWN,
}


def status_of(error: CrioError) -> grpc.StatusCode:
    """The gRPC status ``error`` is reported with."""
    return status_of_class(type(error))


def status_of_class(error_class: type[CrioError]) -> grpc.StatusCode:
    for cls in error_class.__mro__:
        status = STATUS_OF_ERROR.get(cls)
        if status is not None:
            return status
    raise TypeError(f"{error_class.__name__} is not a CrioError")
