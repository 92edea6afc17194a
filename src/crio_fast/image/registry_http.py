"""HTTP exchanges with one registry host: session, timeouts, retries, bodies.

Nothing here knows about auth, redirects or the distribution API's paths;
it is what every request to a registry or its token server needs:

* Requests say ``Accept-Encoding: identity`` so that what arrives is
  exactly the bytes the digests cover; a session made here also has
  ``auto_decompress=False`` (pass one configured the same way).
* 5xx, 429, dropped connections and timeouts are :class:`Retryable`: the
  caller's attempt is run again by :meth:`RegistryTransport.with_retries`,
  up to ``retries`` times with exponential backoff, honouring a
  ``Retry-After`` of up to :data:`MAX_RETRY_AFTER` seconds. Other answers
  go back to the caller as they are.
* Bodies are read with a size limit, and an error body is reduced to the
  registry's own words (its ``{"errors": [...]}`` messages) for our messages.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any, Awaitable, Callable, Mapping, TypeVar

import aiohttp
from yarl import URL

from crio_fast.image.registry_errors import RegistryUnavailable
from crio_fast.version import __version__

MAX_ERROR_BODY = 64 << 10
BLOB_CHUNK_SIZE = 256 << 10
MAX_RETRY_AFTER = 10.0  # longer server-requested pauses are capped: a pull should fail over, not stall
USER_AGENT = f"crio-fast/{__version__}"

T = TypeVar("T")


class Retryable(Exception):
    """A transient failure inside one attempt; the retry loop decides what follows."""

    def __init__(self, reason: str, retry_after: float | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retry_after = retry_after


def describe_exception(exc: BaseException) -> str:
    """An aiohttp/timeout exception as a message fragment (a bare TimeoutError has no text)."""
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


class BodyTooLarge(Exception):
    """A response body longer than the reader's limit."""


async def read_limited(response: aiohttp.ClientResponse, limit: int) -> bytes:
    """The whole body, or :class:`BodyTooLarge` as soon as it passes ``limit`` bytes."""
    parts = []
    total = 0
    while True:
        chunk = await response.content.read(min(BLOB_CHUNK_SIZE, limit + 1 - total))
        if not chunk:
            return b"".join(parts)
        total += len(chunk)
        if total > limit:
            raise BodyTooLarge()
        parts.append(chunk)


async def read_error_body(response: aiohttp.ClientResponse) -> str:
    """The registry's error text: messages of {"errors": [...]} when it sent that, else a short body."""
    try:
        raw = await read_limited(response, MAX_ERROR_BODY)
    except (BodyTooLarge, aiohttp.ClientError, asyncio.TimeoutError):
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



class RegistryTransport:
    """Sends requests to one registry host (and its token server) and retries transient failures."""

    def __init__(
        self,
        host: str,
        session: aiohttp.ClientSession | None = None,
        *,
        connect_timeout: float = 30.0,
        read_timeout: float = 60.0,
        retries: int = 3,
        backoff: float = 0.5,
        max_backoff: float = 8.0,
    ) -> None:
        self.host = host  # as named in references and messages
        self._session = session
        self.owns_session = session is None  # close() closes only a session this side made or was handed
        self._timeout = aiohttp.ClientTimeout(
            total=None, connect=connect_timeout, sock_connect=connect_timeout, sock_read=read_timeout
        )
        self.retries = max(1, retries)
        self.backoff = backoff
        self.max_backoff = max_backoff

    async def close(self) -> None:
        """Close the HTTP session if this transport owns it."""
        if self.owns_session and self._session is not None and not self._session.closed:
            await self._session.close()

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(auto_decompress=False)
            self.owns_session = True
        return self._session

    async def with_retries(self, what: str, repository: str, attempt: Callable[[], Awaitable[T]]) -> T:
        """Run ``attempt`` until it does not raise :class:`Retryable`, at most ``retries`` times."""
        last = ""
        for number in range(1, self.retries + 1):
            try:
                return await attempt()
            except Retryable as exc:
                last = exc.reason
                if number == self.retries:
                    break
                delay = min(self.max_backoff, self.backoff * (2 ** (number - 1)))
                if exc.retry_after is not None:
                    delay = min(MAX_RETRY_AFTER, max(delay, exc.retry_after))
                await asyncio.sleep(delay)
        raise RegistryUnavailable(
            f"{what}: failed after {self.retries} attempts: {last}", host=self.host, repository=repository
        )

    async def send(
        self,
        method: str,
        url: URL,
        *,
        headers: Mapping[str, str] | None = None,
        data: Any = None,
        ssl: bool | None = None,
    ) -> aiohttp.ClientResponse:
        """One request, redirects not followed; transient failures raise :class:`Retryable`."""
        all_headers = {"User-Agent": USER_AGENT, "Accept-Encoding": "identity", **(headers or {})}
        try:
            response = await self._http().request(
                method, url, headers=all_headers, data=data, allow_redirects=False, timeout=self._timeout, ssl=ssl
            )
        except (aiohttp.ClientConnectionError, asyncio.TimeoutError) as exc:
            raise Retryable(f"{method} {url.with_query(None)}: {describe_exception(exc)}") from exc
        if response.status == 429 or response.status >= 500:
            retry_after = _retry_after_seconds(response.headers.get("Retry-After"))
            reason = f"{method} {url.with_query(None)}: HTTP {response.status} {response.reason or ''}".rstrip()
            response.release()
            raise Retryable(reason, retry_after)
        return response


__all__ = [
    "BLOB_CHUNK_SIZE",
    "MAX_ERROR_BODY",
    "BodyTooLarge",
    "RegistryTransport",
    "Retryable",
    "describe_exception",
    "read_error_body",
    "read_limited",
]
