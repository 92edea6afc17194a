"""Errors that cross layers and map onto gRPC status codes.

Managers raise these; the server turns each into the status named by
``code`` with the message as the status details. Anything else that escapes a
handler is a bug and becomes INTERNAL (the daemon keeps serving).
"""

from __future__ import annotations

import grpc


class CrioError(Exception):
    """Base of errors a CRI client should see verbatim."""

    code: grpc.StatusCode = grpc.StatusCode.UNKNOWN


class InvalidArgument(CrioError):
    code = grpc.StatusCode.INVALID_ARGUMENT


class NotFound(CrioError):
    code = grpc.StatusCode.NOT_FOUND


class AlreadyExists(CrioError):
    code = grpc.StatusCode.ALREADY_EXISTS


class FailedPrecondition(CrioError):
    code = grpc.StatusCode.FAILED_PRECONDITION


class DeadlineExceeded(CrioError):
    code = grpc.StatusCode.DEADLINE_EXCEEDED


class PermissionDenied(CrioError):
    code = grpc.StatusCode.PERMISSION_DENIED


class Unavailable(CrioError):
    code = grpc.StatusCode.UNAVAILABLE


class ResourceExhausted(CrioError):
    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class Internal(CrioError):
    code = grpc.StatusCode.INTERNAL
