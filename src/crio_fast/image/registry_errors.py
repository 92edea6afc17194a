"""What can go wrong talking to a registry, as exception classes.

Every message starts with "host/repository: " so that a failed pull names
the place that failed without the caller adding it (mirrors make "which
registry?" a real question). The image manager turns the class into the
daemon's kind of error (an auth failure becomes "permission denied", a
missing image "not found", an unsupported manifest "failed precondition",
the rest "unavailable"), so the class says what kind of failure it was and
the message says the rest.
"""

from __future__ import annotations

from crio_fast.image.reference import ImageReference
from crio_fast.image.registries import Endpoint


class RegistryError(Exception):
    """Base of registry failures; the message starts with "host/repository: "."""

    def __init__(self, detail: str, *, host: str = "", repository: str = "") -> None:
        self.detail = detail
        self.host = host
        self.repository = repository
        # Filled by resolve() when every endpoint failed: each one's own failure.
        self.failures: list[tuple[Endpoint, ImageReference, RegistryError]] = []
        where = f"{host}/{repository}" if host and repository else host or repository
        super().__init__(f"{where}: {detail}" if where else detail)


class RegistryAuthError(RegistryError):
    """Authentication needed and missing, or credentials/tokens rejected."""


class RegistryNotFound(RegistryError):
    """404: the repository, tag, manifest or blob does not exist there."""


class ManifestUnknown(RegistryNotFound):
    pass


class BlobUnknown(RegistryNotFound):
    pass


class UnsupportedManifest(RegistryError):
    """A manifest we will not pull (schema 1, unknown media type, not an image)."""


class InvalidManifest(RegistryError):
    """A manifest that is not well-formed JSON of the type it claims."""


class DigestMismatch(RegistryError):
    """Content whose digest differs from the one it was requested by."""


class NoMatchingPlatform(RegistryError):
    """An index with no manifest for this node's platform."""


class RegistryUnavailable(RegistryError):
    """Network failures, timeouts or server errors that outlasted the retries."""


__all__ = [
    "BlobUnknown",
    "DigestMismatch",
    "InvalidManifest",
    "ManifestUnknown",
    "NoMatchingPlatform",
    "RegistryAuthError",
    "RegistryError",
    "RegistryNotFound",
    "RegistryUnavailable",
    "UnsupportedManifest",
]
