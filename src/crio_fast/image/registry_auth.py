"""Answering a registry's WWW-Authenticate challenge: Basic, Bearer tokens, registry tokens.

The challenge comes from a ping of ``/v2/`` (or a later 401). ``Bearer``: a
token per scope (``repository:NAME:pull``) from the realm, by GET with Basic
credentials when there are some, or by an OAuth2 ``refresh_token`` POST when
there is an identity token; tokens are cached until shortly before
``expires_in``. ``Basic``: the credentials go with every request to the
registry host. A registry token is sent as the bearer as it is. Where the
credentials come from is :mod:`crio_fast.image.auth`'s business.
"""

from __future__ import annotations

import asyncio
import base64
import json
import re
import time
from dataclasses import dataclass
from typing import Mapping

import aiohttp
from yarl import URL

from crio_fast.image.auth import Credentials
from crio_fast.image.registry_errors import RegistryAuthError
from crio_fast.image.registry_http import (
    MAX_ERROR_BODY,
    RegistryTransport,
    Retryable,
    describe_exception,
    read_error_body,
    read_limited,
)

DEFAULT_TOKEN_LIFETIME = 60  # seconds, when the token server gives no expires_in (per the token spec)

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


def registry_challenge(header: str) -> Challenge | None:
    """The challenge of a WWW-Authenticate header we answer: Bearer over Basic, None for neither."""
    return _pick_challenge(parse_www_authenticate(header))


class RegistryAuthorizer:
    """The Authorization header for requests to one registry host, tokens cached per scope."""

    def __init__(self, host: str, credentials: Credentials | None, transport: RegistryTransport) -> None:
        self.host = host
        self.credentials = credentials
        self.challenge: Challenge | None = None  # learnt by the client's ping, replaced after a 401
        self._transport = transport
        self._tokens: dict[str, tuple[str, float]] = {}  # scope -> (token, monotonic expiry)
        self._token_lock = asyncio.Lock()

    def uses_static_credentials(self) -> bool:
        """Basic or a given registry token: asking again would send the same thing."""
        if self.credentials is not None and self.credentials.registry_token:
            return True
        return self.challenge is not None and self.challenge.scheme == "basic"

    def rechallenge(self, header: str, scope: str) -> bool:
        """After a 401: take its challenge and drop the scope's token; False when it has none we answer."""
        # The token may have expired or lacked the scope: learn the challenge again, drop the token.
        challenge = registry_challenge(header)
        if challenge is None:
            return False
        self.challenge = challenge
        self._tokens.pop(scope, None)
        return True

    def failure(self, registry_message: str, repository: str) -> RegistryAuthError:
        """The error for credentials that were missing or rejected, naming which kind."""
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

    def _error(self, detail: str, repository: str) -> RegistryAuthError:
        return RegistryAuthError(detail, host=self.host, repository=repository)

    async def authorization(self, scope: str, repository: str) -> str | None:
        """The Authorization header value for a request in ``scope``, or None to send none."""
        creds = self.credentials
        if creds is not None and creds.registry_token:
            return f"Bearer {creds.registry_token}"
        challenge = self.challenge
        if challenge is None:
            return None
        if challenge.scheme == "basic":
            if creds is None or not (creds.username or creds.password):
                return None  # the 401 that follows becomes a clear "no credentials" error
            pair = f"{creds.username}:{creds.password}".encode()
            return "Basic " + base64.b64encode(pair).decode("ascii")
        if challenge.scheme != "bearer":
            raise self._error(f"unsupported authentication scheme {challenge.scheme!r}", repository)
        cached = self._tokens.get(scope)
        if cached is not None and cached[1] > time.monotonic():
            return f"Bearer {cached[0]}"
        async with self._token_lock:
            cached = self._tokens.get(scope)
            if cached is not None and cached[1] > time.monotonic():
                return f"Bearer {cached[0]}"
            token, lifetime = await self._transport.with_retries(
                f"token for {scope}", repository, lambda: self._fetch_token(challenge, scope, repository)
            )
            # Renew a little before the server's deadline so a request never carries a dying token.
            self._tokens[scope] = (token, time.monotonic() + max(lifetime - 10, lifetime / 2))
            return f"Bearer {token}"

    async def _fetch_token(self, challenge: Challenge, scope: str, repository: str) -> tuple[str, float]:
        realm = challenge.params.get("realm")
        if not realm:
            raise self._error("Bearer challenge without a realm", repository)
        try:
            realm_url = URL(realm)
        except ValueError as exc:
            raise self._error(f"invalid token realm {realm!r}: {exc}", repository) from exc
        if realm_url.scheme not in ("http", "https") or not realm_url.host:
            raise self._error(f"invalid token realm {realm!r}", repository)
        service = challenge.params.get("service", "")
        creds = self.credentials
        if creds is not None and creds.identity_token:
            form = {"grant_type": "refresh_token", "refresh_token": creds.identity_token, "client_id": "crio-fast", "scope": scope}
            if service:
                form["service"] = service
            response = await self._transport.send("POST", realm_url, data=form)
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
        response = await self._transport.send("GET", realm_url.update_query(query), headers=headers)
        return await self._token_from_response(response, repository)

    async def _token_from_response(self, response: aiohttp.ClientResponse, repository: str) -> tuple[str, float]:
        try:
            if response.status in (401, 403):
                raise self.failure(await read_error_body(response), repository)
            if response.status != 200:
                body = await read_error_body(response)
                raise self._error(
                    f"token server {response.url.with_query(None)} answered HTTP {response.status}{': ' + body if body else ''}",
                    repository,
                )
            try:
                raw = await read_limited(response, MAX_ERROR_BODY)
            except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
                raise Retryable(f"reading token: {describe_exception(exc)}") from exc
        finally:
            response.release()
        try:
            document = json.loads(raw)
        except ValueError as exc:
            raise self._error(f"token server sent invalid JSON: {exc}", repository) from exc
        token = (document.get("token") or document.get("access_token")) if isinstance(document, dict) else None
        if not isinstance(token, str) or not token:
            raise self._error("token server response has no token", repository)
        lifetime = document.get("expires_in", DEFAULT_TOKEN_LIFETIME)
        if not isinstance(lifetime, (int, float)) or lifetime <= 0:
            lifetime = DEFAULT_TOKEN_LIFETIME
        return token, float(lifetime)


__all__ = ["Challenge", "RegistryAuthorizer", "parse_www_authenticate", "registry_challenge"]
