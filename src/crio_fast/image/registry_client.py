"""A client for the OCI distribution API (Docker Registry HTTP API v2) of one registry endpoint.

What it adds to :mod:`~crio_fast.image.registry_http` (sending, retries)
and :mod:`~crio_fast.image.registry_auth` (the Authorization header):

* **Scheme.** https with certificate verification, unless the endpoint is
  ``insecure``: then https *without* verification is tried first and plain
  http is the fallback when that connection fails (what containers/image
  does), and the scheme that worked is kept for the client's lifetime. A
  ping of ``/v2/`` decides it and learns the auth challenge; what a ping
  learnt is shared by clients for :data:`PING_CACHE_SECONDS`, so that a
  warm pull costs one manifest request.
* **Auth failures.** A 401 after authenticating is retried once with a
  fresh token, then is a :class:`RegistryAuthError`.
* **Redirects** (storage backends) are followed by hand so that the
  Authorization header is never sent to another host.
* **Manifests** are fetched with every supported media type accepted,
  size-limited and digest-checked when asked for by digest.
* **Blobs** are streamed; a stream is retried only until its first chunk
  has been handed out, after that a failure is raised.
* **Errors** are :class:`~crio_fast.image.registry_errors.RegistryError`
  subclasses whose messages always start with "host/repository".
"""

from __future__ import annotations

import asyncio
import time
from typing import AsyncIterator, Mapping

import aiohttp
from yarl import URL

from crio_fast.image.auth import Credentials
from crio_fast.image.manifest import MANIFEST_ACCEPT, MAX_MANIFEST_SIZE, Manifest, compute_digest
from crio_fast.image.reference import DEFAULT_REGISTRY, InvalidReference, is_valid_repository, is_valid_tag, parse_digest
from crio_fast.image.registries import Endpoint
from crio_fast.image.registry_auth import Challenge, RegistryAuthorizer, registry_challenge
from crio_fast.image.registry_errors import (
    BlobUnknown,
    DigestMismatch,
    InvalidManifest,
    ManifestUnknown,
    RegistryAuthError,
    RegistryError,
    RegistryUnavailable,
)
from crio_fast.image.registry_http import (
    BLOB_CHUNK_SIZE,
    BodyTooLarge,
    RegistryTransport,
    Retryable,
    describe_exception,
    read_error_body,
    read_limited,
)

MAX_REDIRECTS = 10
DOCKER_HUB_HOST = "registry-1.docker.io"  # docker.io names the registry; this is where its API lives
_REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})

# What a ping learned per (host, verify TLS): scheme, auth challenge, when.
PING_CACHE_SECONDS = 60.0
_PING_CACHE: dict[tuple[str, bool], tuple[str | None, Challenge | None, float]] = {}


class RegistryClient:
    """Talks to one registry endpoint for any number of repositories."""

    def __init__(
        self,
        endpoint: Endpoint,
        credentials: Credentials | None = None,
        *,
        session: aiohttp.ClientSession | None = None,
        connect_timeout: float = 30.0,
        read_timeout: float = 60.0,
        retries: int = 3,
        backoff: float = 0.5,
        max_backoff: float = 8.0,
    ) -> None:
        self.endpoint = endpoint
        self.credentials = credentials if credentials else None
        self.host = endpoint.location  # as named in references and messages
        self._connect_host = DOCKER_HUB_HOST if endpoint.location == DEFAULT_REGISTRY else endpoint.location
        self._transport = RegistryTransport(
            self.host,
            session,
            connect_timeout=connect_timeout,
            read_timeout=read_timeout,
            retries=retries,
            backoff=backoff,
            max_backoff=max_backoff,
        )
        self._auth = RegistryAuthorizer(self.host, self.credentials, self._transport)
        self.scheme: str | None = None  # decided by the first ping
        self._verify_tls = not endpoint.insecure
        self._ready_lock = asyncio.Lock()

    # -- lifecycle --

    async def __aenter__(self) -> "RegistryClient":
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def close(self) -> None:
        """Close the HTTP session if this client created it or was handed it by :meth:`take_session`."""
        await self._transport.close()

    def take_session(self) -> None:
        """Close the session passed in on :meth:`close` too (resolve() hands its private one over this way)."""
        self._transport.owns_session = True

    def _ssl(self) -> bool | None:
        return None if self._verify_tls else False

    def _base(self) -> URL:
        return URL.build(scheme=self.scheme or "https", authority=self._connect_host)

    def _error(self, cls: type[RegistryError], detail: str, repository: str = "") -> RegistryError:
        return cls(detail, host=self.host, repository=repository)

    # -- one request to the registry, with redirects and auth --

    async def _registry_request(
        self, method: str, path: str, repository: str, *, headers: Mapping[str, str] | None = None
    ) -> aiohttp.ClientResponse:
        """A request to the registry that follows redirects and authenticates; 2xx/4xx returned to the caller."""
        await self._ensure_ready(repository)
        scope = f"repository:{repository}:pull"
        url = self._base().with_path(path, encoded=True)
        reauthenticated = False
        for _ in range(MAX_REDIRECTS + 2):
            on_registry = url.origin() == self._base().origin()
            request_headers = dict(headers or {})
            if on_registry:
                authorization = await self._auth.authorization(scope, repository)
                if authorization:
                    request_headers["Authorization"] = authorization
            # TLS verification off applies to the insecure registry only, never to where it redirects.
            response = await self._transport.send(
                method, url, headers=request_headers, ssl=self._ssl() if on_registry else None
            )
            if response.status in _REDIRECT_STATUSES:
                location = response.headers.get("Location")
                response.release()
                if not location:
                    raise self._error(RegistryError, f"HTTP {response.status} redirect without a Location", repository)
                url = url.join(URL(location, encoded=True))
                continue
            if response.status == 401 and on_registry:
                header = response.headers.get("WWW-Authenticate", "")
                body = await read_error_body(response)
                # Asking again is worth it once, and only when it could send something different.
                if reauthenticated or self._auth.uses_static_credentials() or not self._auth.rechallenge(header, scope):
                    raise self._auth.failure(body, repository)
                reauthenticated = True
                continue
            return response
        raise self._error(RegistryError, f"more than {MAX_REDIRECTS} redirects for {path}", repository)

    # -- ping: scheme and challenge --

    async def _ensure_ready(self, repository: str) -> None:
        if self.scheme is not None:
            return
        async with self._ready_lock:
            if self.scheme is None:
                key = (self._connect_host, self._verify_tls)
                known = _PING_CACHE.get(key)
                if known is not None and time.monotonic() - known[2] < PING_CACHE_SECONDS:
                    # A warm pull should cost one manifest request, not a scheme probe and a ping first.
                    self.scheme, self._auth.challenge = known[0], known[1]
                    return
                await self._ping(repository)
                _PING_CACHE[key] = (self.scheme, self._auth.challenge, time.monotonic())

    async def _ping(self, repository: str) -> None:
        """GET /v2/: decide the scheme, learn the auth challenge."""
        schemes = ["https"] if self._verify_tls else ["https", "http"]
        failures = []
        for scheme in schemes:
            url = URL.build(scheme=scheme, authority=self._connect_host, path="/v2/")
            ssl = None if scheme == "http" else self._ssl()
            probing = scheme != schemes[-1]
            try:
                if probing:
                    response = await self._transport.send("GET", url, ssl=ssl)  # one try: fall back at once
                else:
                    response = await self._transport.with_retries(
                        f"GET {url}", repository, lambda url=url, ssl=ssl: self._transport.send("GET", url, ssl=ssl)
                    )
            except Retryable as exc:
                failures.append(exc.reason)
                continue
            except RegistryUnavailable as exc:
                failures.append(exc.detail)
                break
            try:
                if response.status == 401:
                    self._auth.challenge = registry_challenge(response.headers.get("WWW-Authenticate", ""))
                elif 200 <= response.status < 300:
                    self._auth.challenge = None
                else:
                    body = await read_error_body(response)
                    raise self._error(
                        RegistryError,
                        f"GET {url} answered HTTP {response.status}"
                        f"{': ' + body if body else ''}; is this a registry speaking the v2 API?",
                        repository,
                    )
            finally:
                response.release()
            self.scheme = scheme
            return
        raise self._error(RegistryUnavailable, "cannot reach the registry: " + "; ".join(failures), repository)

    # -- API --

    async def ping(self) -> None:
        """Check the registry answers the v2 API (and learn scheme and auth); idempotent."""
        await self._ensure_ready("")

    async def get_manifest(self, repository: str, reference: str) -> Manifest:
        """The manifest or index ``repository:reference`` (a tag or a digest), digest-checked when by digest."""
        self._check_repository(repository)
        by_digest = ":" in reference
        if by_digest:
            try:
                algorithm, _ = parse_digest(reference)
            except InvalidReference as exc:
                raise self._error(RegistryError, str(exc), repository) from exc
        elif is_valid_tag(reference):
            algorithm = "sha256"
        else:
            raise self._error(RegistryError, f"invalid tag {reference!r}", repository)
        path = f"/v2/{repository}/manifests/{reference}"
        what = f"manifest {reference}"

        async def attempt() -> tuple[bytes, str]:
            response = await self._registry_request("GET", path, repository, headers={"Accept": MANIFEST_ACCEPT})
            try:
                if response.status != 200:
                    await self._raise_for_status(response, what, repository, ManifestUnknown)
                length = response.content_length
                if length is not None and length > MAX_MANIFEST_SIZE:
                    raise self._error(
                        InvalidManifest, f"{what} is {length} bytes, more than the {MAX_MANIFEST_SIZE} allowed", repository
                    )
                try:
                    raw = await read_limited(response, MAX_MANIFEST_SIZE)
                except BodyTooLarge as exc:
                    raise self._error(InvalidManifest, f"{what} is larger than {MAX_MANIFEST_SIZE} bytes", repository) from exc
                except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
                    raise Retryable(f"reading {what}: {describe_exception(exc)}") from exc
                return raw, response.headers.get("Content-Type", "")
            finally:
                response.release()

        raw, content_type = await self._transport.with_retries(f"GET {what}", repository, attempt)
        digest = compute_digest(raw, algorithm)
        mismatch = by_digest and digest != reference
        try:
            # Parsed before the digest check: a schema 1 manifest (whose digest covers a
            # stripped signature) must be reported as unsupported, not as corrupt.
            manifest = Manifest.parse(raw, content_type, digest, host=self.host, repository=repository)
        except InvalidManifest:
            if not mismatch:
                raise
            manifest = None
        if mismatch or manifest is None:
            raise self._error(DigestMismatch, f"manifest requested as {reference} has digest {digest}", repository)
        return manifest

    def _check_repository(self, repository: str) -> None:
        if not is_valid_repository(repository):
            raise self._error(RegistryError, f"invalid repository name {repository!r}", repository)

    async def _open_blob_response(self, repository: str, digest: str) -> aiohttp.ClientResponse:
        response = await self._registry_request("GET", f"/v2/{repository}/blobs/{digest}", repository)
        if response.status != 200:
            try:
                await self._raise_for_status(response, f"blob {digest}", repository, BlobUnknown)
            finally:
                response.release()
        return response

    async def open_blob(self, repository: str, digest: str) -> AsyncIterator[bytes]:
        """Stream a blob in chunks of up to 256 KiB, unverified (the caller hashes).

        Transient failures are retried until the first chunk is out; later
        ones raise :class:`RegistryUnavailable`. Use as ``async for chunk in
        client.open_blob(...)``; closing the iterator early closes the response.
        """
        self._check_repository(repository)
        try:
            parse_digest(digest)
        except InvalidReference as exc:
            raise self._error(RegistryError, str(exc), repository) from exc

        async def first_chunk() -> tuple[aiohttp.ClientResponse, bytes]:
            response = await self._open_blob_response(repository, digest)
            try:
                return response, await response.content.read(BLOB_CHUNK_SIZE)
            except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
                response.close()
                raise Retryable(f"reading blob {digest}: {describe_exception(exc)}") from exc
            except BaseException:
                response.close()
                raise

        response, chunk = await self._transport.with_retries(f"GET blob {digest}", repository, first_chunk)
        received = 0
        finished = False
        try:
            while chunk:
                received += len(chunk)
                yield chunk
                try:
                    chunk = await response.content.read(BLOB_CHUNK_SIZE)
                except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
                    raise self._error(
                        RegistryUnavailable, f"blob {digest} broke off after {received} bytes: {describe_exception(exc)}", repository
                    ) from exc
            finished = True
        finally:
            if finished:
                response.release()
            else:
                response.close()  # a half-read body must not go back to the connection pool

    async def get_blob_bytes(self, repository: str, digest: str, max_size: int) -> bytes:
        """A small blob (e.g. an image config) in memory, its digest verified."""
        self._check_repository(repository)
        try:
            algorithm, _ = parse_digest(digest)
        except InvalidReference as exc:
            raise self._error(RegistryError, str(exc), repository) from exc

        async def attempt() -> bytes:
            response = await self._open_blob_response(repository, digest)
            try:
                length = response.content_length
                if length is not None and length > max_size:
                    raise self._error(RegistryError, f"blob {digest} is {length} bytes, more than the {max_size} allowed", repository)
                try:
                    return await read_limited(response, max_size)
                except BodyTooLarge as exc:
                    raise self._error(RegistryError, f"blob {digest} is larger than {max_size} bytes", repository) from exc
                except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
                    raise Retryable(f"reading blob {digest}: {describe_exception(exc)}") from exc
            finally:
                response.release()

        data = await self._transport.with_retries(f"GET blob {digest}", repository, attempt)
        actual = compute_digest(data, algorithm)
        if actual != digest:
            raise self._error(DigestMismatch, f"blob requested as {digest} has digest {actual}", repository)
        return data

    async def _raise_for_status(
        self, response: aiohttp.ClientResponse, what: str, repository: str, not_found: type[RegistryError]
    ) -> None:
        body = await read_error_body(response)
        said = f": {body}" if body else ""
        if response.status == 404:
            raise self._error(not_found, f"{what} not found{said}", repository)
        if response.status in (401, 403):
            raise self._error(RegistryAuthError, f"{what}: access denied (HTTP {response.status}){said}", repository)
        raise self._error(RegistryError, f"{what}: HTTP {response.status}{said}", repository)


__all__ = ["DOCKER_HUB_HOST", "PING_CACHE_SECONDS", "RegistryClient"]
