"""A client for the OCI distribution API (Docker Registry HTTP API v2), on aiohttp.

What it does, in the order a pull needs it:

* **Transport.** https with certificate verification, unless the endpoint is
  ``insecure``: then https *without* verification is tried first and plain
  http is the fallback when that connection fails (what containers/image
  does), and the scheme that worked is kept for the client's lifetime.
  Requests say ``Accept-Encoding: identity`` so that what arrives is exactly
  the bytes the digests cover; a session made here also has
  ``auto_decompress=False`` (pass one configured the same way).
* **Auth.** A ping of ``/v2/`` learns the challenge. ``Bearer``: a token per
  scope (``repository:NAME:pull``) from the realm, by GET with Basic
  credentials when there are some, or by an OAuth2 ``refresh_token`` POST
  when there is an identity token; tokens are cached until shortly before
  ``expires_in``. ``Basic``: the credentials go with every request to the
  registry host. A registry token is sent as the bearer as it is. A 401 after
  authenticating is retried once with a fresh token, then is a
  :class:`RegistryAuthError`.
* **Retries.** Manifest, blob and token GETs are tried up to ``retries`` times
  with exponential backoff on 5xx, 429 (honouring a short ``Retry-After``),
  dropped connections and timeouts. A blob stream is retried only until its
  first chunk has been handed out; after that a failure is raised.
* **Redirects** (storage backends) are followed by hand so that the
  Authorization header is never sent to another host.
* **Errors** are :class:`RegistryError` subclasses whose messages always start
  with "host/repository".
"""

from __future__ import annotations

import asyncio
import base64
import json
import re
import time
from dataclasses import dataclass
from typing import Any, AsyncIterator, Awaitable, Callable, Mapping, TypeVar

import aiohttp
from yarl import URL

from crio_fast.image.auth import Credentials
from crio_fast.image.manifest import MANIFEST_ACCEPT, MAX_MANIFEST_SIZE, Descriptor, Manifest, Platform, compute_digest
from crio_fast.image.platforms import select_platform
from crio_fast.image.reference import (
    DEFAULT_REGISTRY,
    ImageReference,
    InvalidReference,
    is_valid_repository,
    is_valid_tag,
    parse_digest,
)
from crio_fast.image.registries import Endpoint, RegistriesConfig
from crio_fast.image.registry_errors import (
    BlobUnknown,
    DigestMismatch,
    InvalidManifest,
    ManifestUnknown,
    RegistryAuthError,
    RegistryError,
    RegistryUnavailable,
    UnsupportedManifest,
)
from crio_fast.version import __version__

MAX_ERROR_BODY = 64 << 10
BLOB_CHUNK_SIZE = 256 << 10
MAX_REDIRECTS = 10
MAX_RETRY_AFTER = 10.0  # longer server-requested pauses are capped: a pull should fail over, not stall
DEFAULT_TOKEN_LIFETIME = 60  # seconds, when the token server gives no expires_in (per the token spec)
DOCKER_HUB_HOST = "registry-1.docker.io"  # docker.io names the registry; this is where its API lives
USER_AGENT = f"crio-fast/{__version__}"
_REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})

T = TypeVar("T")


class _Retryable(Exception):
    """A transient failure inside one attempt; the retry loop decides what follows."""

    def __init__(self, reason: str, retry_after: float | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retry_after = retry_after


# -- WWW-Authenticate ------------------------------------------------------------------

_CHALLENGE_TOKEN = re.compile(r'\s*([!#$%&\'*+\-.^_`|~0-9A-Za-z]+)\s*')
_CHALLENGE_PARAM = re.compile(r'\s*([!#$%&\'*+\-.^_`|~0-9A-Za-z]+)\s*=\s*("((?:[^"\\]|\\.)*)"|[^,\s]*)\s*')


@dataclass(frozen=True)
class Challenge:
    scheme: str  # lower-case: "bearer", "basic"
    params: Mapping[str, str]


def parse_www_authenticate(header: str) -> list[Challenge]:
    """Challenges of a WWW-Authenticate header (RFC 7235), scheme names lower-cased."""
    challenges: list[Challenge] = []
    pos = 0
    current: tuple[str, dict[str, str]] | None = None
    while pos < len(header):
        if header[pos] in ", ":
            pos += 1
            continue
        param = _CHALLENGE_PARAM.match(header, pos)
        if param and current is not None:
            value = param.group(3) if param.group(3) is not None else param.group(2)
            current[1][param.group(1).lower()] = re.sub(r"\\(.)", r"\1", value)
            pos = param.end()
            continue
        token = _CHALLENGE_TOKEN.match(header, pos)
        if not token:
            break  # malformed remainder: keep what was understood
        if current is not None:
            challenges.append(Challenge(current[0], current[1]))
        current = (token.group(1).lower(), {})
        pos = token.end()
    if current is not None:
        challenges.append(Challenge(current[0], current[1]))
    return challenges


def _pick_challenge(challenges: list[Challenge]) -> Challenge | None:
    for scheme in ("bearer", "basic"):
        for challenge in challenges:
            if challenge.scheme == scheme:
                return challenge
    return None


# -- the client ----------------------------------------------------------------------


def _describe(exc: BaseException) -> str:
    if isinstance(exc, asyncio.TimeoutError):
        return "timed out"
    text = str(exc) or type(exc).__name__
    return f"{type(exc).__name__}: {text}" if type(exc).__name__ not in text else text


def _retry_after_seconds(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None  # an HTTP date: use our own backoff


# What a ping learned per (host, verify TLS): scheme, auth challenge, when.
PING_CACHE_SECONDS = 60.0
_PING_CACHE: dict[tuple[str, bool], tuple[str | None, "Challenge | None", float]] = {}


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
        self._session = session
        self._owns_session = session is None
        self._timeout = aiohttp.ClientTimeout(
            total=None, connect=connect_timeout, sock_connect=connect_timeout, sock_read=read_timeout
        )
        self.retries = max(1, retries)
        self.backoff = backoff
        self.max_backoff = max_backoff
        self.scheme: str | None = None  # decided by the first ping
        self._verify_tls = not endpoint.insecure
        self._challenge: Challenge | None = None
        self._tokens: dict[str, tuple[str, float]] = {}  # scope -> (token, monotonic expiry)
        self._ready_lock = asyncio.Lock()
        self._token_lock = asyncio.Lock()

    # -- lifecycle --

    async def __aenter__(self) -> "RegistryClient":
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def close(self) -> None:
        """Close the HTTP session if this client created it."""
        if self._owns_session and self._session is not None and not self._session.closed:
            await self._session.close()

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(auto_decompress=False)
            self._owns_session = True
        return self._session

    def _ssl(self) -> bool | None:
        return None if self._verify_tls else False

    def _base(self) -> URL:
        return URL.build(scheme=self.scheme or "https", authority=self._connect_host)

    def _error(self, cls: type[RegistryError], detail: str, repository: str = "") -> RegistryError:
        return cls(detail, host=self.host, repository=repository)

    # -- retries --

    async def _with_retries(self, what: str, repository: str, attempt: Callable[[], Awaitable[T]]) -> T:
        last = ""
        for number in range(1, self.retries + 1):
            try:
                return await attempt()
            except _Retryable as exc:
                last = exc.reason
                if number == self.retries:
                    break
                delay = min(self.max_backoff, self.backoff * (2 ** (number - 1)))
                if exc.retry_after is not None:
                    delay = min(MAX_RETRY_AFTER, max(delay, exc.retry_after))
                await asyncio.sleep(delay)
        raise self._error(RegistryUnavailable, f"{what}: failed after {self.retries} attempts: {last}", repository)

    # -- one HTTP exchange, with redirects and auth --

    async def _send(
        self,
        method: str,
        url: URL,
        *,
        headers: Mapping[str, str] | None = None,
        data: Any = None,
        ssl: bool | None = None,
    ) -> aiohttp.ClientResponse:
        all_headers = {"User-Agent": USER_AGENT, "Accept-Encoding": "identity", **(headers or {})}
        try:
            response = await self._http().request(
                method, url, headers=all_headers, data=data, allow_redirects=False, timeout=self._timeout, ssl=ssl
            )
        except (aiohttp.ClientConnectionError, asyncio.TimeoutError) as exc:
            raise _Retryable(f"{method} {url.with_query(None)}: {_describe(exc)}") from exc
        if response.status == 429 or response.status >= 500:
            retry_after = _retry_after_seconds(response.headers.get("Retry-After"))
            reason = f"{method} {url.with_query(None)}: HTTP {response.status} {response.reason or ''}".rstrip()
            response.release()
            raise _Retryable(reason, retry_after)
        return response

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
                authorization = await self._authorization(scope, repository)
                if authorization:
                    request_headers["Authorization"] = authorization
            # TLS verification off applies to the insecure registry only, never to where it redirects.
            response = await self._send(
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
                body = await _read_error_body(response)
                if reauthenticated or self._uses_static_credentials():
                    raise self._auth_failure(body, repository)
                reauthenticated = True
                # The token may have expired or lacked the scope: learn the challenge again, drop the token.
                challenge = _pick_challenge(parse_www_authenticate(header))
                if challenge is None:
                    raise self._auth_failure(body, repository)
                self._challenge = challenge
                self._tokens.pop(scope, None)
                continue
            return response
        raise self._error(RegistryError, f"more than {MAX_REDIRECTS} redirects for {path}", repository)

    def _uses_static_credentials(self) -> bool:
        """Basic or a given registry token: asking again would send the same thing."""
        if self.credentials is not None and self.credentials.registry_token:
            return True
        return self._challenge is not None and self._challenge.scheme == "basic"

    def _auth_failure(self, registry_message: str, repository: str) -> RegistryAuthError:
        said = f" (registry said: {registry_message})" if registry_message else ""
        if self.credentials is None:
            detail = f"authentication required and no credentials are configured for {self.host}{said}"
        elif self.credentials.registry_token:
            detail = f"the registry token was rejected{said}"
        elif self.credentials.identity_token and not self.credentials.password:
            detail = f"the identity token was rejected{said}"
        else:
            detail = f"credentials for user {self.credentials.username!r} were rejected{said}"
        return RegistryAuthError(detail, host=self.host, repository=repository)

    # -- ping and auth --

    async def _ensure_ready(self, repository: str) -> None:
        if self.scheme is not None:
            return
        async with self._ready_lock:
            if self.scheme is None:
                key = (self._connect_host, self._verify_tls)
                known = _PING_CACHE.get(key)
                if known is not None and time.monotonic() - known[2] < PING_CACHE_SECONDS:
                    # A warm pull should cost one manifest request, not a scheme probe and a ping first.
                    self.scheme, self._challenge = known[0], known[1]
                    return
                await self._ping(repository)
                _PING_CACHE[key] = (self.scheme, self._challenge, time.monotonic())

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
                    response = await self._send("GET", url, ssl=ssl)  # one try: fall back at once
                else:
                    response = await self._with_retries(
                        f"GET {url}", repository, lambda url=url, ssl=ssl: self._send("GET", url, ssl=ssl)
                    )
            except _Retryable as exc:
                failures.append(exc.reason)
                continue
            except RegistryUnavailable as exc:
                failures.append(exc.detail)
                break
            try:
                if response.status == 401:
                    self._challenge = _pick_challenge(parse_www_authenticate(response.headers.get("WWW-Authenticate", "")))
                elif 200 <= response.status < 300:
                    self._challenge = None
                else:
                    body = await _read_error_body(response)
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

    async def _authorization(self, scope: str, repository: str) -> str | None:
        creds = self.credentials
        if creds is not None and creds.registry_token:
            return f"Bearer {creds.registry_token}"
        challenge = self._challenge
        if challenge is None:
            return None
        if challenge.scheme == "basic":
            if creds is None or not (creds.username or creds.password):
                return None  # the 401 that follows becomes a clear "no credentials" error
            pair = f"{creds.username}:{creds.password}".encode()
            return "Basic " + base64.b64encode(pair).decode("ascii")
        if challenge.scheme != "bearer":
            raise self._error(RegistryAuthError, f"unsupported authentication scheme {challenge.scheme!r}", repository)
        cached = self._tokens.get(scope)
        if cached is not None and cached[1] > time.monotonic():
            return f"Bearer {cached[0]}"
        async with self._token_lock:
            cached = self._tokens.get(scope)
            if cached is not None and cached[1] > time.monotonic():
                return f"Bearer {cached[0]}"
            token, lifetime = await self._with_retries(
                f"token for {scope}", repository, lambda: self._fetch_token(challenge, scope, repository)
            )
            # Renew a little before the server's deadline so a request never carries a dying token.
            self._tokens[scope] = (token, time.monotonic() + max(lifetime - 10, lifetime / 2))
            return f"Bearer {token}"

    async def _fetch_token(self, challenge: Challenge, scope: str, repository: str) -> tuple[str, float]:
        realm = challenge.params.get("realm")
        if not realm:
            raise self._error(RegistryAuthError, "Bearer challenge without a realm", repository)
        try:
            realm_url = URL(realm)
        except ValueError as exc:
            raise self._error(RegistryAuthError, f"invalid token realm {realm!r}: {exc}", repository) from exc
        if realm_url.scheme not in ("http", "https") or not realm_url.host:
            raise self._error(RegistryAuthError, f"invalid token realm {realm!r}", repository)
        service = challenge.params.get("service", "")
        creds = self.credentials
        if creds is not None and creds.identity_token:
            form = {"grant_type": "refresh_token", "refresh_token": creds.identity_token, "client_id": "crio-fast", "scope": scope}
            if service:
                form["service"] = service
            response = await self._send("POST", realm_url, data=form)
            # Token servers without OAuth2 POST support answer 404/405: use the GET flow.
            if response.status not in (404, 405):
                return await self._token_from_response(response, repository)
            response.release()
        query = {"scope": scope}
        if service:
            query["service"] = service
        headers = {}
        if creds is not None and creds.username:
            query["account"] = creds.username
            pair = f"{creds.username}:{creds.password}".encode()
            headers["Authorization"] = "Basic " + base64.b64encode(pair).decode("ascii")
        response = await self._send("GET", realm_url.update_query(query), headers=headers)
        return await self._token_from_response(response, repository)

    async def _token_from_response(self, response: aiohttp.ClientResponse, repository: str) -> tuple[str, float]:
        try:
            if response.status in (401, 403):
                raise self._auth_failure(await _read_error_body(response), repository)
            if response.status != 200:
                body = await _read_error_body(response)
                raise self._error(
                    RegistryAuthError,
                    f"token server {response.url.with_query(None)} answered HTTP {response.status}{': ' + body if body else ''}",
                    repository,
                )
            try:
                raw = await _read_limited(response, MAX_ERROR_BODY)
            except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
                raise _Retryable(f"reading token: {_describe(exc)}") from exc
        finally:
            response.release()
        try:
            document = json.loads(raw)
        except ValueError as exc:
            raise self._error(RegistryAuthError, f"token server sent invalid JSON: {exc}", repository) from exc
        token = (document.get("token") or document.get("access_token")) if isinstance(document, dict) else None
        if not isinstance(token, str) or not token:
            raise self._error(RegistryAuthError, "token server response has no token", repository)
        lifetime = document.get("expires_in", DEFAULT_TOKEN_LIFETIME)
        if not isinstance(lifetime, (int, float)) or lifetime <= 0:
            lifetime = DEFAULT_TOKEN_LIFETIME
        return token, float(lifetime)

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
                    raw = await _read_limited(response, MAX_MANIFEST_SIZE)
                except _TooLarge as exc:
                    raise self._error(InvalidManifest, f"{what} is larger than {MAX_MANIFEST_SIZE} bytes", repository) from exc
                except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
                    raise _Retryable(f"reading {what}: {_describe(exc)}") from exc
                return raw, response.headers.get("Content-Type", "")
            finally:
                response.release()

        raw, content_type = await self._with_retries(f"GET {what}", repository, attempt)
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
                raise _Retryable(f"reading blob {digest}: {_describe(exc)}") from exc
            except BaseException:
                response.close()
                raise

        response, chunk = await self._with_retries(f"GET blob {digest}", repository, first_chunk)
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
                        RegistryUnavailable, f"blob {digest} broke off after {received} bytes: {_describe(exc)}", repository
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
                    return await _read_limited(response, max_size)
                except _TooLarge as exc:
                    raise self._error(RegistryError, f"blob {digest} is larger than {max_size} bytes", repository) from exc
                except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
                    raise _Retryable(f"reading blob {digest}: {_describe(exc)}") from exc
            finally:
                response.release()

        data = await self._with_retries(f"GET blob {digest}", repository, attempt)
        actual = compute_digest(data, algorithm)
        if actual != digest:
            raise self._error(DigestMismatch, f"blob requested as {digest} has digest {actual}", repository)
        return data

    async def _raise_for_status(
        self, response: aiohttp.ClientResponse, what: str, repository: str, not_found: type[RegistryError]
    ) -> None:
        body = await _read_error_body(response)
        said = f": {body}" if body else ""
        if response.status == 404:
            raise self._error(not_found, f"{what} not found{said}", repository)
        if response.status in (401, 403):
            raise self._error(RegistryAuthError, f"{what}: access denied (HTTP {response.status}){said}", repository)
        raise self._error(RegistryError, f"{what}: HTTP {response.status}{said}", repository)


class _TooLarge(Exception):
    pass


async def _read_limited(response: aiohttp.ClientResponse, limit: int) -> bytes:
    parts = []
    total = 0
    while True:
        chunk = await response.content.read(min(BLOB_CHUNK_SIZE, limit + 1 - total))
        if not chunk:
            return b"".join(parts)
        total += len(chunk)
        if total > limit:
            raise _TooLarge()
        parts.append(chunk)


async def _read_error_body(response: aiohttp.ClientResponse) -> str:
    """The registry's error text: messages of {"errors": [...]} when it sent that, else a short body."""
    try:
        raw = await _read_limited(response, MAX_ERROR_BODY)
    except (_TooLarge, aiohttp.ClientError, asyncio.TimeoutError):
        return ""
    text = raw.decode("utf-8", "replace").strip()
    try:
        document = json.loads(text)
    except ValueError:
        return text[:300]
    errors = document.get("errors") if isinstance(document, dict) else None
    if isinstance(errors, list) and errors:
        parts = []
        for error in errors:
            if not isinstance(error, dict):
                continue
            code = error.get("code", "")
            message = error.get("message", "")
            detail = error.get("detail")
            part = f"{code}: {message}" if code and message else str(code or message)
            if detail:
                part += f" ({json.dumps(detail, sort_keys=True)})"
            parts.append(part)
        return "; ".join(parts)
    if isinstance(document, dict) and isinstance(document.get("details"), str):
        return document["details"]  # token servers
    return text[:300]


# -- resolving a reference over registries.conf ------------------------------------------------


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
                client._owns_session = True
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


__all__ = [
    "Challenge",
    "RegistryClient",
    "ResolvedImage",
    "parse_www_authenticate",
    "resolve",
]
