"""containers-policy.json(5): which images may be pulled, and whose signatures they need.

A policy names, per transport and scope, a list of requirements that must all
hold for an image. Only the ``docker`` transport matters to a CRI engine (the
kubelet pulls from registries); the scopes of other transports are checked for
form and otherwise ignored. For an image the most specific ``docker`` scope
wins: the image itself (``host/repo:tag`` or ``host/repo@digest``), its
repository, each parent namespace, its host[:port], then ``*.domain``
wildcards from the narrowest, then the transport's ``""`` scope, then
``default``.

Parsing is strict, as the format asks: an unknown, missing or ill-typed field
makes the whole file an error naming the file, the scope and the field. This
module decides only what the policy says; fetching and verifying signatures is
:mod:`crio_fast.image.signatures`.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
from dataclasses import dataclass
from typing import Any, Union

from crio_fast.image.reference import (
    ImageReference,
    InvalidReference,
    is_valid_registry,
    parse_reference,
)

DOCKER_TRANSPORT = "docker"
# Transports containers/image knows; a scope of any other is an error, as there.
KNOWN_TRANSPORTS = frozenset({
    "atomic", "containers-storage", "dir", "docker", "docker-archive", "docker-daemon", "oci", "oci-archive",
    "ostree", "sif", "tarball",
})
GPG_KEY_TYPE = "GPGKeys"
MAX_POLICY_SIZE = 4 << 20
_WILDCARD_RE = re.compile(r"\*\.(?:[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?)(?:\.[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?)*")


class PolicyError(ValueError):
    """A policy file that is unreadable or malformed; the message names the file, scope and field."""


# -- signed identities --------------------------------------------------------


def _signed_reference(text: str) -> ImageReference | None:
    """The identity a signature claims, or None when it is not a valid reference."""
    try:
        return parse_reference(text, default_tag=None)
    except InvalidReference:
        return None


def _is_name_only(ref: ImageReference) -> bool:
    return not ref.tag and not ref.digest


def _match_repo_digest_or_exact(image: ImageReference, signed: ImageReference) -> bool:
    if _is_name_only(signed):
        return False
    if image.tag:
        return str(signed) == str(image)
    if image.digest:
        # The manifest's digest is checked against the signature's separately: the repository is enough.
        return signed.name == image.name
    return False


@dataclass(frozen=True)
class MatchRepoDigestOrExact:
    """A tagged image needs a signature for that repository:tag; a digested one any of its repository."""

    def matches(self, image: ImageReference, signed_identity: str) -> bool:
        signed = _signed_reference(signed_identity)
        return signed is not None and _match_repo_digest_or_exact(image, signed)


@dataclass(frozen=True)
class MatchExact:
    """The signature names exactly the reference pulled (tag for tag, digest for digest)."""

    def matches(self, image: ImageReference, signed_identity: str) -> bool:
        signed = _signed_reference(signed_identity)
        if signed is None or _is_name_only(signed) or _is_name_only(image):
            return False
        return str(signed) == str(image)


@dataclass(frozen=True)
class MatchRepository:
    """The signature names the image's repository, whatever tag or digest."""

    def matches(self, image: ImageReference, signed_identity: str) -> bool:
        signed = _signed_reference(signed_identity)
        return signed is not None and signed.name == image.name


@dataclass(frozen=True)
class ExactReference:
    """The signature names exactly ``docker_reference``, whatever the image was pulled as."""

    docker_reference: str

    def matches(self, image: ImageReference, signed_identity: str) -> bool:
        signed = _signed_reference(signed_identity)
        wanted = _signed_reference(self.docker_reference)
        if signed is None or wanted is None or _is_name_only(signed) or _is_name_only(wanted):
            return False
        return str(signed) == str(wanted)


@dataclass(frozen=True)
class ExactRepository:
    """The signature names the repository ``docker_repository``, whatever tag or digest."""

    docker_repository: str

    def matches(self, image: ImageReference, signed_identity: str) -> bool:
        signed = _signed_reference(signed_identity)
        wanted = _signed_reference(self.docker_repository)
        return signed is not None and wanted is not None and signed.name == wanted.name


def _has_prefix(text: str, prefix: str) -> bool:
    """Whether ``prefix`` (a host[:port], namespace or repository) is a whole-element prefix of ``text``."""
    if text == prefix:
        return True
    if not text.startswith(prefix):
        return False
    following = text[len(prefix)]
    # After a bare host only a path may follow ("example.com" is not a parent of "example.com:5000");
    # after a repository also its tag or digest.
    return following == "/" or ("/" in prefix and following in ":@")


@dataclass(frozen=True)
class RemapIdentity:
    """Mirrors: an image under ``prefix`` is taken as the same under ``signed_prefix``, then matched
    as matchRepoDigestOrExact."""

    prefix: str
    signed_prefix: str

    def matches(self, image: ImageReference, signed_identity: str) -> bool:
        intended = image
        text = str(image)
        if _has_prefix(text, self.prefix):
            remapped = _signed_reference(self.signed_prefix + text[len(self.prefix):])
            if remapped is None:
                return False
            intended = remapped
        signed = _signed_reference(signed_identity)
        return signed is not None and _match_repo_digest_or_exact(intended, signed)


SignedIdentity = Union[MatchRepoDigestOrExact, MatchExact, MatchRepository, ExactReference, ExactRepository,
                       RemapIdentity]


# -- requirements -------------------------------------------------------------


@dataclass(frozen=True)
class InsecureAcceptAnything:
    """Any image, signed or not."""


@dataclass(frozen=True)
class Reject:
    """No image at all."""


@dataclass(frozen=True)
class KeySource:
    """Where a requirement's public keys are: files (read when an image is checked) or inline data."""

    paths: tuple[str, ...] = ()
    data: tuple[bytes, ...] = ()


@dataclass(frozen=True)
class SignedBy:
    """A GPG "simple signing" signature by one of the keys, for this manifest and a matching identity."""

    keys: KeySource
    signed_identity: SignedIdentity


@dataclass(frozen=True)
class Fulcio:
    ca_path: str
    ca_data: bytes
    oidc_issuer: str
    subject_email: str


@dataclass(frozen=True)
class SigstoreSigned:
    """A sigstore (cosign) signature by one of the keys, or by a Fulcio certificate logged in Rekor, for
    this manifest and a matching identity."""

    keys: KeySource
    fulcio: Fulcio | None
    rekor_public_key_path: str
    rekor_public_key_data: bytes
    signed_identity: SignedIdentity


Requirement = Union[InsecureAcceptAnything, Reject, SignedBy, SigstoreSigned]


def needs_signatures(requirement: Requirement) -> bool:
    return isinstance(requirement, (SignedBy, SigstoreSigned))


# -- the policy ---------------------------------------------------------------


@dataclass(frozen=True)
class ScopedRequirements:
    """The requirements that apply to one image, and the scope they come from (for messages)."""

    scope: str
    requirements: tuple[Requirement, ...]


@dataclass(frozen=True)
class Policy:
    source: str  # the file it was read from, for messages
    digest: str  # sha256 of the file's bytes: a changed file is another policy
    default: tuple[Requirement, ...]
    docker_scopes: dict[str, tuple[Requirement, ...]]

    @classmethod
    def load(cls, path: str) -> "Policy":
        try:
            with open(path, "rb") as f:
                raw = f.read(MAX_POLICY_SIZE + 1)
        except OSError as exc:
            raise PolicyError(f"signature policy {path}: {exc.strerror or exc}") from exc
        if len(raw) > MAX_POLICY_SIZE:
            raise PolicyError(f"signature policy {path}: larger than {MAX_POLICY_SIZE} bytes")
        return cls.parse(raw, path)

    @classmethod
    def parse(cls, raw: bytes, source: str) -> "Policy":
        return _Parser(source).policy(raw)

    def for_image(self, ref: ImageReference) -> ScopedRequirements:
        """The requirements of the most specific ``docker`` scope that matches ``ref``."""
        for scope in docker_scope_candidates(ref):
            requirements = self.docker_scopes.get(scope)
            if requirements is not None:
                return ScopedRequirements(f"docker:{scope}" if scope else "docker (transport default)", requirements)
        return ScopedRequirements("default", self.default)


def docker_namespaces(ref: ImageReference) -> list[str]:
    """What names ``ref`` as a scope, most specific first: the image itself, its repository, each
    namespace above it, its host[:port] (containers/image's PolicyConfigurationNamespaces, which
    registries.d's scopes use too)."""
    identity = f"{ref.name}@{ref.digest}" if ref.digest else str(ref)
    candidates = [identity, ref.name]
    path = ref.repository
    while "/" in path:
        path = path.rsplit("/", 1)[0]
        candidates.append(f"{ref.registry}/{path}")
    candidates.append(ref.registry)
    return candidates


def docker_scope_candidates(ref: ImageReference) -> list[str]:
    """The ``docker`` scopes that could name ``ref``, most specific first, ending with ``""``."""
    candidates = docker_namespaces(ref)
    host = ref.registry.rsplit(":", 1)[0] if not ref.registry.endswith("]") else ref.registry
    labels = host.split(".")
    for start in range(1, len(labels)):
        candidates.append("*." + ".".join(labels[start:]))
    candidates.append("")
    return candidates


def policy_digest(raw: bytes) -> str:
    return "sha256:" + hashlib.sha256(raw).hexdigest()


class _Parser:
    """Reads one policy file; every error names the file and where in it the problem is."""

    def __init__(self, source: str) -> None:
        self.source = source

    def fail(self, where: str, problem: str) -> PolicyError:
        return PolicyError(f"signature policy {self.source}: {where}: {problem}")

    def policy(self, raw: bytes) -> Policy:
        try:
            document = json.loads(raw, object_pairs_hook=self._no_duplicates)
        except PolicyError:
            raise
        except (ValueError, UnicodeDecodeError) as exc:
            raise PolicyError(f"signature policy {self.source}: not valid JSON: {exc}") from exc
        if not isinstance(document, dict):
            raise PolicyError(f"signature policy {self.source}: the top level must be a JSON object")
        self._only(document, {"default", "transports"}, "top level")
        if "default" not in document:
            raise self.fail("default", "missing (it applies to every image no scope names)")
        default = self.requirements(document["default"], "default")
        docker_scopes: dict[str, tuple[Requirement, ...]] = {}
        transports = document.get("transports", {})
        if not isinstance(transports, dict):
            raise self.fail("transports", "must be an object of transport names")
        for transport, scopes in transports.items():
            if transport not in KNOWN_TRANSPORTS:
                raise self.fail(f"transports.{transport}", "unknown transport")
            if not isinstance(scopes, dict):
                raise self.fail(f"transports.{transport}", "must be an object of scopes")
            for scope, requirements in scopes.items():
                where = f"transports.{transport} scope {json.dumps(scope)}"
                if transport == DOCKER_TRANSPORT:
                    self._docker_scope(scope, where)
                parsed = self.requirements(requirements, where)
                if transport == DOCKER_TRANSPORT:
                    docker_scopes[scope] = parsed
        return Policy(self.source, policy_digest(raw), default, docker_scopes)

    def _no_duplicates(self, pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        result: dict[str, Any] = {}
        for key, value in pairs:
            if key in result:
                raise PolicyError(f"signature policy {self.source}: field {json.dumps(key)} appears twice")
            result[key] = value
        return result

    def _only(self, obj: dict[str, Any], allowed: set[str], where: str) -> None:
        for key in obj:
            if key not in allowed:
                raise self.fail(where, f"unknown field {json.dumps(key)}")

    def _docker_scope(self, scope: str, where: str) -> None:
        if scope == "":
            return
        if scope.startswith("*"):
            if not _WILDCARD_RE.fullmatch(scope):
                raise self.fail(where, "a wildcard scope must be *.DOMAIN (no port, no path)")
            return
        if "/" not in scope:
            if not is_valid_registry(scope):
                raise self.fail(where, "not a host[:port], repository, namespace or image reference")
            return
        try:
            ref = parse_reference(scope, default_tag=None)
        except InvalidReference as exc:
            raise self.fail(where, f"not a valid scope: {exc}") from exc
        if str(ref) != scope:
            raise self.fail(where, f"must be written fully expanded, as {json.dumps(str(ref))}")

    def requirements(self, value: Any, where: str) -> tuple[Requirement, ...]:
        if not isinstance(value, list):
            raise self.fail(where, "must be a list of requirements")
        if not value:
            raise self.fail(where, "the list of requirements must not be empty")
        return tuple(self.requirement(item, f"{where} requirement {n}") for n, item in enumerate(value, 1))

    def requirement(self, item: Any, where: str) -> Requirement:
        if not isinstance(item, dict):
            raise self.fail(where, "must be an object")
        kind = item.get("type")
        if kind is None:
            raise self.fail(where, 'field "type" is missing')
        if kind == "insecureAcceptAnything":
            self._only(item, {"type"}, where)
            return InsecureAcceptAnything()
        if kind == "reject":
            self._only(item, {"type"}, where)
            return Reject()
        if kind == "signedBy":
            return self._signed_by(item, f"{where} (signedBy)")
        if kind == "sigstoreSigned":
            return self._sigstore_signed(item, f"{where} (sigstoreSigned)")
        raise self.fail(where, f"field \"type\": unknown requirement type {json.dumps(kind)}")

    def _string(self, obj: dict[str, Any], field: str, where: str, *, required: bool = False) -> str:
        value = obj.get(field)
        if value is None:
            if required:
                raise self.fail(where, f'field "{field}" is missing')
            return ""
        if not isinstance(value, str) or not value:
            raise self.fail(where, f'field "{field}" must be a non-empty string')
        return value

    def _base64(self, obj: dict[str, Any], field: str, where: str) -> bytes:
        text = self._string(obj, field, where)
        if not text:
            return b""
        try:
            return base64.b64decode(text, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise self.fail(where, f'field "{field}" is not valid base64') from exc

    def _keys(self, item: dict[str, Any], where: str, data_lists: bool, required: bool = True) -> KeySource:
        given = [f for f in ("keyPath", "keyPaths", "keyData", "keyDatas") if f in item]
        if not data_lists and "keyDatas" in given:
            raise self.fail(where, 'unknown field "keyDatas"')
        if len(given) > 1:
            raise self.fail(where, f"fields {' and '.join(json.dumps(f) for f in given)}: give exactly one")
        if not given:
            if required:
                raise self.fail(where, 'one of "keyPath", "keyPaths" or "keyData" is required')
            return KeySource()
        field = given[0]
        if field == "keyPath":
            return KeySource(paths=(self._string(item, field, where),))
        if field == "keyData":
            return KeySource(data=(self._base64(item, field, where),))
        values = item[field]
        if not isinstance(values, list) or not values:
            raise self.fail(where, f'field "{field}" must be a non-empty list')
        if field == "keyPaths":
            if not all(isinstance(v, str) and v for v in values):
                raise self.fail(where, 'field "keyPaths" must list non-empty strings')
            return KeySource(paths=tuple(values))
        decoded = []
        for value in values:
            try:
                decoded.append(base64.b64decode(value, validate=True))
            except (binascii.Error, ValueError, TypeError) as exc:
                raise self.fail(where, 'field "keyDatas" must list base64 strings') from exc
        return KeySource(data=tuple(decoded))

    def _signed_by(self, item: dict[str, Any], where: str) -> SignedBy:
        self._only(item, {"type", "keyType", "keyPath", "keyPaths", "keyData", "signedIdentity"}, where)
        key_type = self._string(item, "keyType", where, required=True)
        if key_type != GPG_KEY_TYPE:
            raise self.fail(where, f'field "keyType": {json.dumps(key_type)} is not supported (only "{GPG_KEY_TYPE}")')
        keys = self._keys(item, where, data_lists=False)
        return SignedBy(keys, self.signed_identity(item.get("signedIdentity"), f"{where} signedIdentity"))

    def _sigstore_signed(self, item: dict[str, Any], where: str) -> SigstoreSigned:
        self._only(item, {"type", "keyPath", "keyPaths", "keyData", "keyDatas", "fulcio", "rekorPublicKeyPath",
                          "rekorPublicKeyData", "signedIdentity"}, where)
        keys = self._keys(item, where, data_lists=True, required=False)
        fulcio = None
        if "fulcio" in item:
            if keys.paths or keys.data:
                raise self.fail(where, 'field "fulcio" cannot be combined with public keys: give one of them')
            fulcio = self._fulcio(item["fulcio"], f"{where} fulcio")
        elif not (keys.paths or keys.data):
            raise self.fail(where, 'one of "keyPath", "keyPaths", "keyData", "keyDatas" or "fulcio" is required')
        if "rekorPublicKeyPath" in item and "rekorPublicKeyData" in item:
            raise self.fail(where, 'fields "rekorPublicKeyPath" and "rekorPublicKeyData": give at most one')
        rekor_path = self._string(item, "rekorPublicKeyPath", where)
        rekor_data = self._base64(item, "rekorPublicKeyData", where)
        if fulcio is not None and not (rekor_path or rekor_data):
            raise self.fail(where, 'field "fulcio" needs "rekorPublicKeyPath" or "rekorPublicKeyData"')
        identity = self.signed_identity(item.get("signedIdentity"), f"{where} signedIdentity")
        return SigstoreSigned(keys, fulcio, rekor_path, rekor_data, identity)

    def _fulcio(self, value: Any, where: str) -> Fulcio:
        if not isinstance(value, dict):
            raise self.fail(where, "must be an object")
        self._only(value, {"caPath", "caData", "oidcIssuer", "subjectEmail"}, where)
        if ("caPath" in value) == ("caData" in value):
            raise self.fail(where, 'exactly one of "caPath" and "caData" is required')
        return Fulcio(
            ca_path=self._string(value, "caPath", where),
            ca_data=self._base64(value, "caData", where),
            oidc_issuer=self._string(value, "oidcIssuer", where, required=True),
            subject_email=self._string(value, "subjectEmail", where, required=True),
        )

    def signed_identity(self, value: Any, where: str) -> SignedIdentity:
        if value is None:
            return MatchRepoDigestOrExact()
        if not isinstance(value, dict):
            raise self.fail(where, "must be an object")
        kind = value.get("type")
        simple = {"matchRepoDigestOrExact": MatchRepoDigestOrExact, "matchExact": MatchExact,
                  "matchRepository": MatchRepository}
        if kind in simple:
            self._only(value, {"type"}, where)
            return simple[kind]()
        if kind == "exactReference":
            self._only(value, {"type", "dockerReference"}, where)
            text = self._string(value, "dockerReference", where, required=True)
            ref = _signed_reference(text)
            if ref is None or _is_name_only(ref):
                raise self.fail(where, 'field "dockerReference" must be a reference with a tag or digest')
            return ExactReference(text)
        if kind == "exactRepository":
            self._only(value, {"type", "dockerRepository"}, where)
            text = self._string(value, "dockerRepository", where, required=True)
            if _signed_reference(text) is None:
                raise self.fail(where, 'field "dockerRepository" is not a valid repository')
            return ExactRepository(text)
        if kind == "remapIdentity":
            self._only(value, {"type", "prefix", "signedPrefix"}, where)
            prefix = self._string(value, "prefix", where, required=True)
            signed_prefix = self._string(value, "signedPrefix", where, required=True)
            for field, text in (("prefix", prefix), ("signedPrefix", signed_prefix)):
                if not _valid_prefix(text):
                    raise self.fail(where, f'field "{field}": {json.dumps(text)} must be a host[:port], namespace or'
                                           " repository, fully expanded, without tag or digest")
            return RemapIdentity(prefix, signed_prefix)
        if kind is None:
            raise self.fail(where, 'field "type" is missing')
        raise self.fail(where, f'field "type": unknown signedIdentity type {json.dumps(kind)}')


def _valid_prefix(text: str) -> bool:
    if "/" not in text:
        return is_valid_registry(text)
    ref = _signed_reference(text)
    return ref is not None and _is_name_only(ref) and ref.name == text


__all__ = [
    "DOCKER_TRANSPORT",
    "ExactReference",
    "ExactRepository",
    "Fulcio",
    "InsecureAcceptAnything",
    "KeySource",
    "MatchExact",
    "MatchRepoDigestOrExact",
    "MatchRepository",
    "Policy",
    "PolicyError",
    "Reject",
    "RemapIdentity",
    "Requirement",
    "ScopedRequirements",
    "SignedBy",
    "SignedIdentity",
    "SigstoreSigned",
    "docker_scope_candidates",
    "needs_signatures",
    "policy_digest",
]
