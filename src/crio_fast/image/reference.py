"""Image references and digests, parsed the way the container ecosystem does.

The grammar is the one of distribution's ``reference`` package (what docker,
containerd and containers/image accept)::

    reference  := name [ ":" tag ] [ "@" digest ]
    name       := [ domain "/" ] path
    domain     := host [ ":" port ]          host: DNS name, IPv4, or [IPv6]
    path       := component ( "/" component )*
    component  := [a-z0-9]+ ( ( "." | "_" | "__" | "-"+ ) [a-z0-9]+ )*
    tag        := [A-Za-z0-9_][A-Za-z0-9_.-]{0,127}

Normalization follows docker: the first path element is a registry only when
it contains "." or ":" or is "localhost" (or has upper-case letters, which a
repository may not); otherwise the registry is docker.io, and a single-element
docker.io repository lives under "library/". A reference with neither tag nor
digest gets the tag "latest".
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace

from crio_fast.errors import shown

DEFAULT_REGISTRY = "docker.io"
DEFAULT_TAG = "latest"
# docker's historical spellings of Docker Hub, normalized to DEFAULT_REGISTRY.
_LEGACY_DEFAULT_REGISTRIES = frozenset({"index.docker.io", "registry-1.docker.io"})
_OFFICIAL_NAMESPACE = "library"
MAX_NAME_LENGTH = 255
# Longer than any name, tag and digest together: refused before it is parsed.
MAX_REFERENCE_LENGTH = 1024

_DOMAIN_COMPONENT = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_IPV6 = r"\[[a-fA-F0-9:]+\]"
_HOST = rf"(?:{_DOMAIN_COMPONENT}(?:\.{_DOMAIN_COMPONENT})*|{_IPV6})"
_DOMAIN_RE = re.compile(rf"{_HOST}(?::(?P<port>[0-9]+))?")
_PATH_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_PATH_RE = re.compile(rf"{_PATH_COMPONENT}(?:/{_PATH_COMPONENT})*")
_TAG_RE = re.compile(r"[\w][\w.-]{0,127}", re.ASCII)
_ANCHORED_HEX_ID = re.compile(r"[a-f0-9]{64}")

# Digest algorithms we can verify, with the length of their hex encoding.
DIGEST_HEX_LENGTHS = {"sha256": 64, "sha512": 128}
_DIGEST_HEX_RE = re.compile(r"[a-f0-9]+")


class InvalidReference(ValueError):
    """A string that is not a valid image reference or digest."""


def parse_digest(digest: str) -> tuple[str, str]:
    """Split "sha256:<hex>" into ("sha256", "<hex>"), validating algorithm and length."""
    algorithm, sep, hex_part = digest.partition(":")
    if not sep:
        raise InvalidReference(f"invalid digest {shown(digest)}: expected ALGORITHM:HEX")
    expected_length = DIGEST_HEX_LENGTHS.get(algorithm)
    if expected_length is None:
        supported = ", ".join(sorted(DIGEST_HEX_LENGTHS))
        raise InvalidReference(f"invalid digest {shown(digest)}: unsupported algorithm {shown(algorithm)} (supported: {supported})")
    if len(hex_part) != expected_length or not _DIGEST_HEX_RE.fullmatch(hex_part):
        raise InvalidReference(
            f"invalid digest {shown(digest)}: {algorithm} needs {expected_length} lower-case hex characters"
        )
    return algorithm, hex_part


def is_digest(value: str) -> bool:
    """True for a well-formed sha256/sha512 digest string."""
    try:
        parse_digest(value)
    except InvalidReference:
        return False
    return True


@dataclass(frozen=True)
class ImageReference:
    """A normalized, fully qualified image reference.

    ``tag`` and ``digest`` may both be set ("name:tag@sha256:..."); then the
    digest is what identifies the content and the tag is informational.
    """

    registry: str
    repository: str
    tag: str | None = None
    digest: str | None = None

    @property
    def name(self) -> str:
        """registry/repository, without tag or digest."""
        return f"{self.registry}/{self.repository}"

    def __str__(self) -> str:
        text = self.name
        if self.tag:
            text += f":{self.tag}"
        if self.digest:
            text += f"@{self.digest}"
        return text

    @property
    def familiar_name(self) -> str:
        """The name as docker prints it: docker.io and library/ dropped."""
        if self.registry != DEFAULT_REGISTRY:
            return self.name
        namespace, _, rest = self.repository.partition("/")
        if namespace == _OFFICIAL_NAMESPACE and rest and "/" not in rest:
            return rest
        return self.repository

    @property
    def familiar(self) -> str:
        """The short form docker prints: "busybox:latest", "user/img@sha256:...", "quay.io/x/y:1"."""
        text = self.familiar_name
        if self.tag:
            text += f":{self.tag}"
        if self.digest:
            text += f"@{self.digest}"
        return text

    def with_registry(self, registry: str, repository: str | None = None) -> "ImageReference":
        """The same tag/digest under another registry (and optionally another repository path)."""
        if not _valid_domain(registry):
            raise InvalidReference(f"invalid registry {shown(registry)}")
        new_repository = self.repository if repository is None else repository
        _check_path(new_repository, f"{registry}/{new_repository}")
        return replace(self, registry=registry, repository=new_repository)

    def with_tag(self, tag: str | None) -> "ImageReference":
        if tag is not None and not _TAG_RE.fullmatch(tag):
            raise InvalidReference(f"invalid tag {shown(tag)}")
        return replace(self, tag=tag)

    def with_digest(self, digest: str | None) -> "ImageReference":
        if digest is not None:
            parse_digest(digest)
        return replace(self, digest=digest)


def _split_domain(name: str) -> tuple[str | None, str]:
    """(explicit registry or None, remainder) for a name without tag/digest."""
    first, sep, rest = name.partition("/")
    if sep and ("." in first or ":" in first or first == "localhost" or first != first.lower()):
        return first, rest
    return None, name


def _check_path(path: str, whole: str) -> None:
    if not path:
        raise InvalidReference(f"invalid reference {shown(whole)}: repository name is empty")
    if not _PATH_RE.fullmatch(path):
        if _PATH_RE.fullmatch(path.lower()):
            raise InvalidReference(f"invalid reference {shown(whole)}: repository name must be lowercase")
        raise InvalidReference(
            f"invalid reference {shown(whole)}: repository {shown(path)} may hold only [a-z0-9] separated by '.', '_', '__', '-' or '/'"
        )


def _split_reference(text: str) -> tuple[str, str | None, str | None]:
    """(name, tag, digest) of a reference string, each part still unvalidated."""
    if not text:
        raise InvalidReference("invalid reference: empty string")
    if len(text) > MAX_REFERENCE_LENGTH:
        raise InvalidReference(f"invalid reference {shown(text)}: longer than {MAX_REFERENCE_LENGTH} characters")
    if any(c.isspace() for c in text):
        raise InvalidReference(f"invalid reference {shown(text)}: contains whitespace")
    name_and_tag, at, digest = text.partition("@")
    if at:
        parse_digest(digest)
    # A ':' after the last '/' starts the tag; one before it is a registry port.
    last_slash = name_and_tag.rfind("/")
    colon = name_and_tag.rfind(":")
    tag: str | None = None
    name = name_and_tag
    if colon > last_slash:
        name, tag = name_and_tag[:colon], name_and_tag[colon + 1 :]
        if not _TAG_RE.fullmatch(tag):
            raise InvalidReference(
                f"invalid reference {shown(text)}: tag {shown(tag)} must match [A-Za-z0-9_][A-Za-z0-9_.-]{{0,127}}"
            )
    return name, tag, digest if at else None


def is_valid_repository(path: str) -> bool:
    """True for a repository path such as "library/busybox" (lower-case components)."""
    return _PATH_RE.fullmatch(path) is not None


def is_valid_tag(tag: str) -> bool:
    return _TAG_RE.fullmatch(tag) is not None


def is_valid_registry(text: str) -> bool:
    """True for host[:port] as a reference's registry part (DNS name, IPv4 or [IPv6])."""
    return _valid_domain(text)


def _valid_domain(text: str) -> bool:
    match = _DOMAIN_RE.fullmatch(text)
    return match is not None and (match["port"] is None or 1 <= int(match["port"]) <= 65535)


def parse_reference(text: str, default_tag: str | None = DEFAULT_TAG) -> ImageReference:
    """Parse and normalize: "busybox" -> docker.io/library/busybox:latest.

    ``default_tag`` is the tag given to a reference with neither tag nor
    digest; None keeps such a reference bare (for names that are prefixes).
    """
    name, tag, digest = _split_reference(text)
    if _ANCHORED_HEX_ID.fullmatch(name):
        raise InvalidReference(
            f"invalid reference {shown(text)}: a 64-character hex string is an image ID, not a repository name"
        )
    registry, path = _split_domain(name)
    if registry is None:
        registry = DEFAULT_REGISTRY
    else:
        if not _valid_domain(registry):
            raise InvalidReference(f"invalid reference {shown(text)}: invalid registry {shown(registry)}"
                                   " (a host name or address, and a port from 1 to 65535)")
        if registry in _LEGACY_DEFAULT_REGISTRIES:
            registry = DEFAULT_REGISTRY
    _check_path(path, text)
    if registry == DEFAULT_REGISTRY and "/" not in path:
        path = f"{_OFFICIAL_NAMESPACE}/{path}"
    if len(registry) + 1 + len(path) > MAX_NAME_LENGTH:
        raise InvalidReference(f"invalid reference {shown(text)}: name longer than {MAX_NAME_LENGTH} characters")
    if tag is None and digest is None:
        tag = default_tag
    return ImageReference(registry=registry, repository=path, tag=tag, digest=digest)


def is_short_name(text: str) -> bool:
    """True when the reference names no registry (it then goes through registries.conf)."""
    name, _, _ = _split_reference(text)
    registry, _ = _split_domain(name)
    return registry is None


def split_short_name(text: str) -> tuple[str, str | None, str | None]:
    """(repository as written, tag, digest) of a short name, validated; for alias lookup."""
    name, tag, digest = _split_reference(text)
    registry, path = _split_domain(name)
    if registry is not None:
        raise InvalidReference(f"{shown(text)} is not a short name: it names the registry {shown(registry)}")
    _check_path(path, text)
    return path, tag, digest


__all__ = [
    "DEFAULT_REGISTRY",
    "DEFAULT_TAG",
    "DIGEST_HEX_LENGTHS",
    "ImageReference",
    "InvalidReference",
    "is_digest",
    "is_short_name",
    "is_valid_registry",
    "is_valid_repository",
    "is_valid_tag",
    "parse_digest",
    "parse_reference",
    "split_short_name",
]
