"""Finding an image over registries.conf: mirrors first, then the primary location.

For each endpoint registries.conf gives for a reference, fetch its manifest
(and, for an index, the entry for this node's platform) until one serves
it. The client that succeeded is handed back still open, so that the
config and layers come from the same endpoint, with the same session and
tokens, as the manifest that names them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping

import aiohttp

from crio_fast.image.auth import Credentials
from crio_fast.image.manifest import Descriptor, Manifest, Platform
from crio_fast.image.platforms import select_platform
from crio_fast.image.reference import ImageReference
from crio_fast.image.registries import Endpoint, RegistriesConfig
from crio_fast.image.registry_client import RegistryClient
from crio_fast.image.registry_errors import RegistryAuthError, RegistryError, UnsupportedManifest


@dataclass
class ResolvedImage:
    """Where an image was found and what it is made of (after platform selection)."""

    endpoint: Endpoint
    reference: ImageReference  # as used at that endpoint (mirrors rewrite it)
    client: RegistryClient  # still open: fetch the config and layers with it
    manifest: Manifest  # the image manifest actually used
    index: Manifest | None  # the index it was selected from, if any
    config: Descriptor
    layers: list[Descriptor]
    platform: Platform | None = None

    @property
    def manifest_digest(self) -> str:
        return self.manifest.digest

    @property
    def manifest_raw(self) -> bytes:
        return self.manifest.raw

    @property
    def index_digest(self) -> str | None:
        return self.index.digest if self.index is not None else None

    @property
    def repo_digest(self) -> str:
        """The digest a user pulls by to get this image: the index's if there was one."""
        return self.index.digest if self.index is not None else self.manifest.digest


async def _resolve_at(
    client: RegistryClient, endpoint: Endpoint, ref: ImageReference, wanted: Platform | None
) -> ResolvedImage:
    repository = ref.repository
    manifest = await client.get_manifest(repository, ref.digest or ref.tag or "latest")
    index = None
    chosen_platform = None
    if manifest.is_index:
        index = manifest
        entry = select_platform(
            index,
            wanted.os if wanted else "linux",
            wanted.architecture if wanted else None,
            wanted.variant if wanted else None,
            host=client.host,
            repository=repository,
        )
        chosen_platform = entry.platform
        manifest = await client.get_manifest(repository, entry.digest)
        if manifest.is_index:
            raise UnsupportedManifest(
                f"index {index.digest} points to another index {manifest.digest} for {chosen_platform}; nested indexes are not supported",
                host=client.host,
                repository=repository,
            )
    assert manifest.config is not None  # an image manifest always has one (Manifest.parse checks)
    return ResolvedImage(endpoint, ref, client, manifest, index, manifest.config, list(manifest.layers), chosen_platform)


async def resolve(
    ref: ImageReference,
    registries: RegistriesConfig,
    credentials_for: Callable[[str], Credentials | None],
    *,
    session: aiohttp.ClientSession | None = None,
    platform: Platform | None = None,
    client_options: Mapping[str, Any] | None = None,
) -> ResolvedImage:
    """Find ``ref`` at its mirrors, then its primary location; the first that serves it wins.

    ``credentials_for`` gets "registry/repository" as used at each endpoint.
    Raises :class:`~crio_fast.image.registries.RegistryBlocked` for a blocked
    registry. When every endpoint fails, the error is of the primary's
    failure class and its message lists each endpoint's failure (also in
    ``.failures``). Without ``session`` a private one is made and is closed by
    ``result.client.close()``.
    """
    pairs = registries.endpoints(ref)
    own_session = session is None
    if session is None:
        session = aiohttp.ClientSession(auto_decompress=False)
    failures: list[tuple[Endpoint, ImageReference, RegistryError]] = []
    try:
        for endpoint, endpoint_ref in pairs:
            try:
                credentials = credentials_for(endpoint_ref.name)
            except (ValueError, OSError) as exc:
                failures.append(
                    (endpoint, endpoint_ref, RegistryAuthError(
                        f"credentials: {exc}", host=endpoint.location, repository=endpoint_ref.repository
                    ))
                )
                continue
            client = RegistryClient(endpoint, credentials, session=session, **dict(client_options or {}))
            try:
                resolved = await _resolve_at(client, endpoint, endpoint_ref, platform)
            except RegistryError as exc:
                failures.append((endpoint, endpoint_ref, exc))
                continue
            if own_session:
                client.take_session()
                own_session = False  # handed over: the client closes it
            return resolved
    finally:
        if own_session:
            await session.close()
    if len(failures) == 1:
        failures[0][2].failures = failures
        raise failures[0][2]
    primary = failures[-1][2]
    listed = "; ".join(f"{'mirror' if e.is_mirror else 'primary'} {err}" for e, _, err in failures)
    combined = type(primary)(f"pulling {ref}: every endpoint failed: {listed}")
    combined.host, combined.repository, combined.failures = primary.host, primary.repository, failures
    raise combined


__all__ = ["ResolvedImage", "resolve"]
