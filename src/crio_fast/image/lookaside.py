"""Where an image's signatures are: containers-registries.d(5) and the lookaside layout.

registries.d is a directory of ``*.yaml`` files, merged; each may hold a
``default-docker`` section and a ``docker`` mapping from scope (host[:port],
namespace, repository, or an image with tag or digest) to a section. A
section's ``lookaside`` (older name ``sigstore``) is the base URL GPG
signatures are read from; ``lookaside-staging`` (``sigstore-staging``) is for
writing them and means nothing to a puller. ``use-sigstore-attachments`` says
whether sigstore signatures are read from the registry
(:mod:`crio_fast.image.sigstore`). Each setting comes from the most specific
section that gives it, ``default-docker`` last, as in containers/image: a
section that only turns attachments on keeps the lookaside of a broader one.
Attachments are off when no section says. A scope, or ``default-docker``,
given in two files is an error, as the format says.

Signatures of the manifest ``sha256:HEX`` of ``host/ns/repo`` are at
``BASE/ns/repo@sha256=HEX/signature-1``, ``signature-2``, ... up to the first
one missing. ``file://`` bases are read from disk, ``http(s)://`` ones over the
registry HTTP transport (its timeouts and retries).
"""

from __future__ import annotations

import asyncio
import os
from dataclasses import dataclass, field
from typing import Any, Mapping
from urllib.parse import unquote, urlsplit

import aiohttp
import yaml
from yarl import URL

from crio_fast.image.policy import docker_namespaces
from crio_fast.image.reference import ImageReference, parse_digest
from crio_fast.image.registry_errors import RegistryError
from crio_fast.image.registry_http import BodyTooLarge, RegistryTransport, Retryable, read_error_body, read_limited

MAX_SIGNATURE_SIZE = 4 << 20
# Far more than any image carries; bounds the walk over signature-N.
MAX_SIGNATURES = 64
_SECTION_KEYS = {"lookaside", "lookaside-staging", "sigstore", "sigstore-staging", "use-sigstore-attachments"}


class RegistriesDError(ValueError):
    """A registries.d file that cannot be read or says something invalid; the message names it."""


class LookasideUnavailable(Exception):
    """Signatures could not be read (a server error, an unreadable file); retrying may help."""


@dataclass(frozen=True)
class Section:
    """What registries.d says for one scope (or ``default-docker``)."""

    lookaside: str = ""
    use_sigstore_attachments: bool | None = None  # None: not said here


@dataclass(frozen=True)
class RegistriesD:
    directory: str = ""
    default: Section = Section()
    scopes: Mapping[str, Section] = field(default_factory=dict)

    @classmethod
    def load(cls, directory: str) -> "RegistriesD":
        """The merged configuration of ``directory``; an empty name or a missing directory configures nothing."""
        if not directory:
            return cls()
        try:
            names = sorted(n for n in os.listdir(directory) if n.endswith(".yaml"))
        except FileNotFoundError:
            return cls(directory)
        except OSError as exc:
            raise RegistriesDError(f"registries.d {directory}: {exc.strerror or exc}") from exc
        default: tuple[Section, str] | None = None  # (section, file)
        scopes: dict[str, tuple[Section, str]] = {}
        for name in names:
            path = os.path.join(directory, name)
            document = _read_yaml(path)
            if "default-docker" in document:
                if default is not None:
                    raise RegistriesDError(f"registries.d {path}: default-docker is also set in {default[1]}")
                default = (_section(document["default-docker"], path, "default-docker"), path)
            docker = document.get("docker") or {}
            if not isinstance(docker, dict):
                raise RegistriesDError(f"registries.d {path}: docker must be a mapping of scopes")
            for scope, section in docker.items():
                scope = str(scope)
                if scope in scopes:
                    raise RegistriesDError(f"registries.d {path}: scope {scope!r} is also set in {scopes[scope][1]}")
                scopes[scope] = (_section(section, path, f"docker scope {scope!r}"), path)
        return cls(directory, default[0] if default else Section(), {s: v[0] for s, v in scopes.items()})

    def _sections_for(self, ref: ImageReference) -> list[Section]:
        """The sections that name ``ref``, most specific first, ``default-docker`` last."""
        return [self.scopes[s] for s in docker_namespaces(ref) if s in self.scopes] + [self.default]

    def lookaside_for(self, ref: ImageReference) -> str:
        """The base URL of ``ref``'s GPG signatures, or "" when none is configured."""
        return next((section.lookaside for section in self._sections_for(ref) if section.lookaside), "")

    def uses_sigstore_attachments(self, ref: ImageReference) -> bool:
        """Whether ``ref``'s sigstore signatures are to be read from its registry."""
        for section in self._sections_for(ref):
            if section.use_sigstore_attachments is not None:
                return section.use_sigstore_attachments
        return False


def _read_yaml(path: str) -> dict[str, Any]:
    try:
        with open(path, "rb") as f:
            document = yaml.safe_load(f)
    except OSError as exc:
        raise RegistriesDError(f"registries.d {path}: {exc.strerror or exc}") from exc
    except yaml.YAMLError as exc:
        raise RegistriesDError(f"registries.d {path}: not valid YAML: {' '.join(str(exc).split())}") from exc
    if document is None:
        return {}
    if not isinstance(document, dict):
        raise RegistriesDError(f"registries.d {path}: the top level must be a mapping")
    return document


def _section(section: Any, path: str, where: str) -> Section:
    if section is None:
        return Section()
    if not isinstance(section, dict):
        raise RegistriesDError(f"registries.d {path}: {where} must be a mapping")
    for key in section:
        if key not in _SECTION_KEYS:
            raise RegistriesDError(f"registries.d {path}: {where}: unknown key {key!r}")
    attachments = section.get("use-sigstore-attachments")
    if attachments is not None and not isinstance(attachments, bool):
        raise RegistriesDError(f"registries.d {path}: {where}: use-sigstore-attachments must be true or false")
    return Section(_lookaside(section, path, where), attachments)


def _lookaside(section: dict[str, Any], path: str, where: str) -> str:
    url = section.get("lookaside") or section.get("sigstore") or ""
    if not isinstance(url, str):
        raise RegistriesDError(f"registries.d {path}: {where}: lookaside must be a URL")
    if url:
        parts = urlsplit(url)
        if parts.scheme not in ("file", "http", "https"):
            raise RegistriesDError(f"registries.d {path}: {where}: lookaside {url!r} must be a file://, http:// or"
                                   " https:// URL")
        if parts.scheme == "file" and not parts.path.startswith("/"):
            raise RegistriesDError(f"registries.d {path}: {where}: lookaside {url!r} needs an absolute path")
        if parts.scheme != "file" and not parts.netloc:
            raise RegistriesDError(f"registries.d {path}: {where}: lookaside {url!r} names no host")
    return url


def signature_url(base: str, ref: ImageReference, manifest_digest: str, index: int) -> str:
    """Where signature ``index`` (from 1) of the manifest ``manifest_digest`` of ``ref`` is."""
    algorithm, hex_part = parse_digest(manifest_digest)
    return f"{base.rstrip('/')}/{ref.repository}@{algorithm}={hex_part}/signature-{index}"


async def read_signatures(base: str, ref: ImageReference, manifest_digest: str,
                          session: aiohttp.ClientSession | None = None) -> list[bytes]:
    """Every signature stored for the manifest, in order; [] when there is none."""
    if urlsplit(base).scheme == "file":
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(None, _read_files, base, ref, manifest_digest)
    return await _read_http(base, ref, manifest_digest, session)


def _read_files(base: str, ref: ImageReference, manifest_digest: str) -> list[bytes]:
    signatures = []
    for index in range(1, MAX_SIGNATURES + 1):
        path = unquote(urlsplit(signature_url(base, ref, manifest_digest, index)).path)
        try:
            with open(path, "rb") as f:
                data = f.read(MAX_SIGNATURE_SIZE + 1)
        except FileNotFoundError:
            break
        except OSError as exc:
            raise LookasideUnavailable(f"reading signature {path}: {exc.strerror or exc}") from exc
        if len(data) > MAX_SIGNATURE_SIZE:
            raise LookasideUnavailable(f"signature {path} is larger than {MAX_SIGNATURE_SIZE} bytes")
        signatures.append(data)
    return signatures


async def _read_http(base: str, ref: ImageReference, manifest_digest: str,
                     session: aiohttp.ClientSession | None) -> list[bytes]:
    transport = RegistryTransport(URL(base).host or "", session)
    signatures: list[bytes] = []
    try:
        for index in range(1, MAX_SIGNATURES + 1):
            url = URL(signature_url(base, ref, manifest_digest, index), encoded=False)

            async def attempt(url: URL = url) -> bytes | None:
                response = await transport.send("GET", url)
                try:
                    if response.status == 404:
                        return None
                    if response.status != 200:
                        said = await read_error_body(response)
                        raise LookasideUnavailable(f"GET {url}: HTTP {response.status} {said}".rstrip())
                    try:
                        return await read_limited(response, MAX_SIGNATURE_SIZE)
                    except BodyTooLarge:
                        raise LookasideUnavailable(f"GET {url}: larger than {MAX_SIGNATURE_SIZE} bytes") from None
                    except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
                        raise Retryable(f"GET {url}: {exc}") from exc
                finally:
                    response.release()

            try:
                data = await transport.with_retries("reading signatures", ref.repository, attempt)
            except RegistryError as exc:
                raise LookasideUnavailable(str(exc)) from exc
            if data is None:
                break
            signatures.append(data)
    finally:
        await transport.close()
    return signatures


__all__ = ["LookasideUnavailable", "RegistriesD", "RegistriesDError", "Section", "read_signatures", "signature_url"]
