"""Errors that cross layers, one class per kind of failure a CRI client can tell apart.

Managers raise these; the server reports each with a status chosen by its
class (server/status.py) and the message as the status details. Anything
else that escapes a handler is a bug and becomes INTERNAL (the daemon keeps
serving).
"""

from __future__ import annotations

# How much of a value from a request an error message quotes: enough to recognise it, never so much that
# the status outgrows gRPC's metadata limit (a client then sees RESOURCE_EXHAUSTED, not the error).
ECHO_LIMIT = 256
# The whole status message, in UTF-8 bytes: percent-encoded on the wire it stays far below gRPC's 8 KiB.
STATUS_MESSAGE_LIMIT = 1024


def cut(text: str, limit: int = ECHO_LIMIT) -> str:
    """``text`` cut to ``limit`` UTF-8 bytes, saying how much was left out."""
    encoded = text.encode("utf-8", "replace")
    if len(encoded) <= limit:
        return text
    kept = encoded[:limit].decode("utf-8", "ignore")
    return f"{kept}... ({len(encoded) - len(kept.encode())} more bytes)"


def shown(value: object, limit: int = ECHO_LIMIT) -> str:
    """A value from a request as an error message quotes it: its repr, cut to ``limit``."""
    return cut(repr(value), limit)


class CrioError(Exception):
    """Base of errors a CRI client should see verbatim; of no more specific kind, UNKNOWN."""


class InvalidArgument(CrioError):
    """The request can never succeed as asked."""


class NotFound(CrioError):
    """What the request names does not exist."""


class AlreadyExists(CrioError):
    """What the request would create exists."""


class FailedPrecondition(CrioError):
    """The system is not in the state the request needs (a container not running, an image not pulled)."""


class DeadlineExceeded(CrioError):
    """The work took longer than it was allowed."""


class PermissionDenied(CrioError):
    """The credentials the request relies on are refused (by a registry)."""


class Unavailable(CrioError):
    """A service the request needs cannot be reached now; retrying may help."""


class ResourceExhausted(CrioError):
    """A limit on some resource is reached."""


class Cancelled(CrioError):
    """The call ended before the work did: the client cancelled it or its deadline passed."""


class CriReason(CrioError):
    """A failure the CRI names (cri-api's errors: SignatureValidationFailed, RegistryUnavailable).

    The kubelet strips the code off an UNKNOWN status and matches the start of its message
    against these names to give the pod its waiting reason: such an error is UNKNOWN, and its
    message starts with the name."""


class UnreachableRegistry(CriReason):
    """No endpoint of an image's registry could be reached (cri-api's ErrRegistryUnavailable)."""

    def __init__(self, message: str) -> None:
        super().__init__(f"RegistryUnavailable: {message}")


class Internal(CrioError):
    """The daemon or the host failed in a way the client cannot fix."""
