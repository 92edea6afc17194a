"""The image manager: pulls, lookups, removal and usage, over the store.

A pull resolves the name through registries.conf (aliases, search
registries, mirrors), fetches the manifest, checks the image against the
signature policy (see :mod:`crio_fast.image.signatures`), fetches the
config, then streams every
missing layer from the HTTP response through the decompressor into the
native extractor (see :mod:`crio_fast.image.unpack`), several layers at once.
Concurrent pulls that need the same layer share one download. Nothing is
recorded until every layer verified.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any, Callable, Iterable

import aiohttp

from crio_fast.errors import (
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    Unavailable,
    UnreachableRegistry,
    shown,
)
from crio_fast.image.auth import AuthFileError, Credentials, load_auth_file
from crio_fast.image.ingest import LayerIngest, LayerVerificationError
from crio_fast.image.reference import ImageReference, InvalidReference, parse_reference
from crio_fast.image.registries import RegistriesConfError, RegistriesConfig, RegistryBlocked
from crio_fast.image.registry_client import RegistryClient
from crio_fast.image.registry_errors import (
    RegistryAuthError,
    RegistryError,
    RegistryNotFound,
    RegistryUnavailable,
    UnsupportedManifest,
)
from crio_fast.image.resolve import ResolvedImage, resolve
from crio_fast.image.signatures import (
    Attachments,
    SignaturePolicies,
    decide_without_signatures,
    enforce,
    needs_network,
)
from crio_fast.image.store import ImageRecord, ImageStore, LayerRecord, chain_ids

log = logging.getLogger("crio_fast.image")

MAX_CONFIG_SIZE = 8 << 20
_CONFIG_CACHE_SIZE = 256  # parsed image configs kept in memory (a few KiB each)
# Chunks go to the extractor thread in batches of about this size: one thread
# hand-off per MiB keeps per-chunk Python overhead negligible.
FEED_BATCH = 1 << 20


@dataclass
class ImageInfo:
    record: ImageRecord
    config: dict[str, Any]
    uid: int | None
    username: str


@dataclass
class FsUsage:
    timestamp_ns: int
    mountpoint: str
    used_bytes: int
    inodes_used: int


def user_of(config: dict[str, Any]) -> tuple[int | None, str]:
    """CRI's uid/username from the image config's User ("1000", "1000:1000", "app", "app:grp")."""
    user = (config.get("config") or {}).get("User") or ""
    name = user.split(":", 1)[0]
    if not name:
        return None, ""
    if name.isdigit():
        return int(name), ""
    return None, name


class ImageManager:
    def __init__(
        self,
        store: ImageStore,
        *,
        registries_conf: str | None = None,
        auth_file: str | None = None,
        max_parallel_layers: int = 3,
        signature_policies: SignaturePolicies | None = None,
        registries_d: str = "",
        insecure_registries: Iterable[str] = (),
    ) -> None:
        self.store = store
        self.registries_conf = registries_conf or None
        self.insecure_registries = tuple(insecure_registries)
        self.auth_file = auth_file or None
        self.max_parallel_layers = max(1, max_parallel_layers)
        self.signature_policies = signature_policies or SignaturePolicies()
        self.registries_d = registries_d
        # "name@digest" -> digest of the policy that last accepted it: an image already in the store
        # pulled again by digest needs no network unless the policy that applies has changed since.
        self._accepted_by: dict[str, str] = {}
        self._layer_jobs: dict[str, asyncio.Future[LayerRecord]] = {}
        self._session: aiohttp.ClientSession | None = None
        self._pool = ThreadPoolExecutor(max_workers=max(2, self.max_parallel_layers), thread_name_prefix="layer")
        # Called with (seconds, compressed bytes) for each layer fetched; set by the metrics endpoint.
        self.layer_observer: Callable[[float, int], None] | None = None
        self._configs: dict[str, dict[str, Any]] = {}  # parsed config blobs by digest, oldest first

    def reconfigure(self, *, registries_conf: str | None, auth_file: str | None, max_parallel_layers: int,
                    signature_policies: SignaturePolicies | None = None, registries_d: str | None = None,
                    insecure_registries: Iterable[str] = ()) -> None:
        self.registries_conf = registries_conf or None
        self.insecure_registries = tuple(insecure_registries)
        self.auth_file = auth_file or None
        self.max_parallel_layers = max(1, max_parallel_layers)
        if signature_policies is not None:
            self.signature_policies = signature_policies
        if registries_d is not None:
            self.registries_d = registries_d

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
        self._pool.shutdown(wait=False, cancel_futures=True)

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(auto_decompress=False)
        return self._session

    def _registries(self) -> RegistriesConfig:
        try:
            registries = RegistriesConfig.load(self.registries_conf)
        except (OSError, RegistriesConfError) as exc:
            raise FailedPrecondition(f"registries configuration: {exc}") from exc
        registries.insecure_registries = frozenset(self.insecure_registries)
        return registries

    # -- lookups -------------------------------------------------------------

    def _lookup(self, name: str) -> ImageRecord | None:
        record = self.store.find_image(name)
        if record is not None:
            return record
        # A short name means what a pull of it would fetch: its aliases and
        # search registries, in order; a full name its normalized form.
        try:
            refs = self._registries().candidates(name)
        except (InvalidReference, FailedPrecondition):
            return None
        try:
            # Last, Docker's own normalization (httpd -> docker.io/library/httpd:latest): the
            # kubelet and most clients pull by that name and may refer back by the short one.
            refs.append(parse_reference(name))
        except InvalidReference:
            pass
        for ref in refs:
            for candidate in (str(ref), f"{ref.name}@{ref.digest}" if ref.digest else ""):
                if candidate:
                    record = self.store.find_image(candidate)
                    if record is not None:
                        return record
        return None

    def _config(self, record: ImageRecord) -> dict[str, Any]:
        """The image's parsed config blob, shared: callers must not change it.

        Cached by digest (a blob never changes) because CreateContainer reads it every time."""
        config = self._configs.get(record.id)
        if config is not None:
            return config
        try:
            config = json.loads(self.store.get_blob(record.id))
        except (OSError, ValueError):
            return {}
        if len(self._configs) >= _CONFIG_CACHE_SIZE:
            self._configs.pop(next(iter(self._configs)), None)  # the oldest
        self._configs[record.id] = config
        return config

    def info(self, name: str) -> ImageInfo | None:
        record = self._lookup(name)
        if record is None:
            return None
        config = self._config(record)
        uid, username = user_of(config)
        return ImageInfo(record=record, config=config, uid=uid, username=username)

    def list(self, name_filter: str = "") -> list[ImageInfo]:
        if name_filter:
            info = self.info(name_filter)
            return [info] if info else []
        out = []
        for record in self.store.list_images():
            config = self._config(record)
            uid, username = user_of(config)
            out.append(ImageInfo(record=record, config=config, uid=uid, username=username))
        return out

    async def remove(self, name: str, unused: Callable[[ImageRecord], AbstractContextManager[Any]] | None = None,
                     ) -> None:
        """RemoveImage; ``unused(record)`` is held around the removal: it raises for an image in use and
        keeps it from coming into use meanwhile."""
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._pool, self._remove, name, unused)

    def _remove(self, name: str, unused: Callable[[ImageRecord], AbstractContextManager[Any]] | None) -> None:
        record = self._lookup(name)
        if record is None:
            return  # CRI: removing what is not there succeeds
        with unused(record) if unused is not None else contextlib.nullcontext():
            removed = self.store.remove_image(record.id)
        log.info("removed image %s (%s), %d layers freed", record.id, ", ".join(record.repo_tags) or "untagged", len(removed))

    async def fs_usage(self) -> FsUsage:
        loop = asyncio.get_running_loop()
        used, inodes = await loop.run_in_executor(self._pool, self.store.usage)
        return FsUsage(time.time_ns(), str(self.store.root), used, inodes)

    # -- pull ----------------------------------------------------------------

    async def pull(self, name: str, credentials: Credentials | None = None, namespace: str = "") -> ImageRecord:
        """Pull ``name`` for a pod of Kubernetes ``namespace`` ("" for none), whose signature policy applies."""
        policy = self.signature_policies.for_namespace(namespace)
        registries = self._registries()
        try:
            candidates = registries.candidates(name)
        except InvalidReference as exc:
            raise InvalidArgument(f"invalid image name {shown(name)}: {exc}") from exc
        if not candidates:
            raise InvalidArgument(f"short name {shown(name)} has no alias and no unqualified-search-registries are configured")

        # A digest reference already present needs no network at all.
        for ref in candidates:
            if ref.digest:
                record = self.store.find_image(f"{ref.name}@{ref.digest}")
                if record is not None and all(self.store.has_layer(c) for c in record.layers):
                    if not needs_network(policy, ref):
                        decide_without_signatures(policy, ref)
                        return record
                    if policy is not None and self._accepted_by.get(f"{ref.name}@{ref.digest}") == policy.digest:
                        return record

        errors: list[str] = []
        last: Exception | None = None
        for ref in candidates:
            try:
                resolved = await resolve(ref, registries, self._credentials_for(ref, credentials), session=self._http())
            except RegistryBlocked as exc:
                if len(candidates) == 1:
                    raise FailedPrecondition(str(exc)) from exc
                errors.append(str(exc))
                continue
            except UnsupportedManifest as exc:
                raise FailedPrecondition(str(exc)) from exc
            except RegistryError as exc:
                errors.append(str(exc))
                last = exc
                continue
            # Before the config or any layer is fetched: a refused image costs only its manifest.
            top = resolved.index if resolved.index is not None else resolved.manifest
            await enforce(policy, ref, top.raw, resolved.repo_digest, registries_d=self.registries_d,
                          session=self._http(),
                          attachments=Attachments(resolved.client, resolved.reference.repository))
            if policy is not None:
                self._accepted_by[f"{ref.name}@{resolved.repo_digest}"] = policy.digest
            return await self._pull_resolved(ref, resolved)
        message = f"pulling image {name}: " + "; ".join(errors)
        if isinstance(last, RegistryAuthError):
            raise PermissionDenied(message)
        if isinstance(last, RegistryNotFound):
            raise NotFound(message)
        if isinstance(last, RegistryUnavailable):
            raise UnreachableRegistry(message)
        raise Unavailable(message)

    def _credentials_for(self, ref: ImageReference, explicit: Credentials | None) -> Callable[[str], Credentials | None]:
        """Credentials per endpoint: the CRI request's go to the image's own registry
        only (never to a mirror on another host); otherwise the auth file decides."""

        def lookup(registry_and_repo: str) -> Credentials | None:
            if explicit is not None and registry_and_repo.split("/", 1)[0] == ref.registry:
                return explicit
            try:
                return load_auth_file(registry_and_repo, self.auth_file)
            except AuthFileError as exc:
                raise FailedPrecondition(f"auth file: {exc}") from exc

        return lookup

    async def _pull_resolved(self, ref: ImageReference, resolved: ResolvedImage) -> ImageRecord:
        client: RegistryClient = resolved.client
        repo = resolved.reference.repository
        config_digest = resolved.config.digest
        present = self.store.get_image(config_digest)
        if present is not None and all(self.store.has_layer(c) for c in present.layers):
            # Warm pull: the tag may have moved to this image; nothing to download.
            tags = [str(ref)] if ref.tag and not ref.digest else []
            return self.store.save_image(ImageRecord(
                id=config_digest, repo_tags=tags, repo_digests=[f"{ref.name}@{resolved.repo_digest}"],
                manifest_digest=present.manifest_digest, layers=present.layers, diff_ids=present.diff_ids,
                size=present.size,
            ))
        try:
            config_raw = await client.get_blob_bytes(repo, config_digest, MAX_CONFIG_SIZE)
        except RegistryError as exc:
            raise Unavailable(f"fetching config {config_digest} of {ref}: {exc}") from exc
        try:
            config = json.loads(config_raw)
            diff_ids = list(config["rootfs"]["diff_ids"])
        except (ValueError, KeyError, TypeError) as exc:
            raise FailedPrecondition(f"image config {config_digest} of {ref} is malformed: {exc}") from exc
        layers = resolved.layers
        if len(diff_ids) != len(layers):
            raise FailedPrecondition(
                f"image {ref}: manifest has {len(layers)} layers but the config lists {len(diff_ids)} diff_ids"
            )
        chains = chain_ids(diff_ids)
        semaphore = asyncio.Semaphore(self.max_parallel_layers)

        async def one(i: int) -> LayerRecord:
            if self.store.has_layer(chains[i]):
                return self.store.get_layer(chains[i])
            async with semaphore:
                return await self._shared_layer_job(
                    chains[i],
                    lambda: self._fetch_layer(client, repo, layers[i], chains[i], chains[i - 1] if i else "", diff_ids[i]),
                )

        started = time.monotonic()
        results = await asyncio.gather(*(one(i) for i in range(len(layers))), return_exceptions=True)
        failures = [r for r in results if isinstance(r, BaseException)]
        if failures:
            first = failures[0]
            if isinstance(first, LayerVerificationError):
                raise FailedPrecondition(f"pulling {ref}: {first}") from first
            if isinstance(first, RegistryError):
                raise Unavailable(f"pulling {ref}: {first}") from first
            raise first
        self.store.put_blob(config_digest, config_raw)
        self.store.put_blob(resolved.manifest_digest, resolved.manifest_raw)
        tags = [str(ref)] if ref.tag and not ref.digest else []
        record = ImageRecord(
            id=config_digest,
            repo_tags=tags,
            repo_digests=[f"{ref.name}@{resolved.repo_digest}"],
            manifest_digest=resolved.manifest_digest,
            layers=chains,
            diff_ids=diff_ids,
            size=len(config_raw) + sum(r.uncompressed_size for r in results if isinstance(r, LayerRecord)),
        )
        saved = self.store.save_image(record)
        log.info("pulled %s (%s) in %.0f ms", ref, config_digest, (time.monotonic() - started) * 1000)
        return saved

    async def _shared_layer_job(self, chain_id: str, start: Callable[[], Any]) -> LayerRecord:
        """One download per layer however many pulls want it at once."""
        job = self._layer_jobs.get(chain_id)
        if job is None:
            job = asyncio.ensure_future(start())
            self._layer_jobs[chain_id] = job
            job.add_done_callback(lambda _f: self._layer_jobs.pop(chain_id, None))
        return await asyncio.shield(job)

    async def _fetch_layer(
        self, client: RegistryClient, repo: str, descriptor: Any, chain_id: str, parent: str, diff_id: str
    ) -> LayerRecord:
        loop = asyncio.get_running_loop()
        started = time.monotonic()
        ingest = await loop.run_in_executor(
            self._pool,
            lambda: LayerIngest(
                self.store,
                chain_id=chain_id,
                parent_chain_id=parent,
                diff_id=diff_id,
                blob_digest=descriptor.digest,
                media_type=descriptor.media_type,
                source=f"{client.host}/{repo}",
            ),
        )
        try:
            batch: list[bytes] = []
            pending = 0
            async with contextlib.aclosing(client.open_blob(repo, descriptor.digest)) as chunks:
                async for chunk in chunks:
                    batch.append(chunk)
                    pending += len(chunk)
                    if pending >= FEED_BATCH:
                        data = b"".join(batch)
                        batch, pending = [], 0
                        await loop.run_in_executor(self._pool, ingest.feed, data)
            if batch:
                await loop.run_in_executor(self._pool, ingest.feed, b"".join(batch))
            layer = await loop.run_in_executor(self._pool, ingest.commit)
            if self.layer_observer is not None:
                self.layer_observer(time.monotonic() - started, int(getattr(descriptor, "size", 0) or 0))
            return layer
        except BaseException:
            await loop.run_in_executor(self._pool, ingest.abort)
            raise


def open_manager(root: str, **kwargs: Any) -> ImageManager:
    return ImageManager(ImageStore.open(root), **kwargs)


__all__ = ["ImageManager", "ImageInfo", "FsUsage", "open_manager", "user_of"]
