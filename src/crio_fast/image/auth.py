"""Registry credentials: from a CRI AuthConfig or from an auth file.

Auth files are containers-auth.json(5) / docker config.json::

    {"auths": {"registry.example.com/team": {"auth": "base64(user:pass)"},
               "https://index.docker.io/v1/": {"auth": "...", "identitytoken": "..."}}}

Keys may be a registry host or a registry/repository path; the most specific
key that is the image's registry or a '/'-bounded prefix of registry/repository
wins. Keys as docker writes them ("https://host/v1/") are normalized first.

File lookup: an explicit path, else $REGISTRY_AUTH_FILE, else
$XDG_RUNTIME_DIR/containers/auth.json and then $DOCKER_CONFIG/config.json
(default ~/.docker/config.json), the first file with a matching entry winning.
A missing file means no credentials; an unreadable or malformed one is an
:class:`AuthFileError`, since silently pulling anonymously would hide the
mistake behind a confusing "unauthorized" later. Credential helpers
(credsStore / credHelpers) are not supported.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from crio_fast.image.reference import DEFAULT_REGISTRY, ImageReference

REGISTRY_AUTH_FILE_ENV = "REGISTRY_AUTH_FILE"
# Docker Hub's names in docker-written auth files; all mean docker.io.
_DOCKER_HUB_ALIASES = frozenset({"index.docker.io", "registry-1.docker.io", "docker.io"})


class AuthFileError(ValueError):
    """An auth file exists but cannot be read or is malformed."""


@dataclass(frozen=True)
class Credentials:
    """What to authenticate with; empty strings mean "not given"."""

    username: str = ""
    password: str = ""
    identity_token: str = ""  # OAuth2 refresh token (docker login with an identity provider)
    registry_token: str = ""  # a bearer token to send as it is

    def __bool__(self) -> bool:
        return bool(self.username or self.password or self.identity_token or self.registry_token)

    def __repr__(self) -> str:
        # Never let secrets reach logs through a repr.
        kinds = [k for k in ("password", "identity_token", "registry_token") if getattr(self, k)]
        return f"Credentials(username={self.username!r}, has={kinds})"


def decode_basic_auth(encoded: str, where: str) -> tuple[str, str]:
    """Split base64("user:password") into (user, password)."""
    try:
        decoded = base64.b64decode(encoded.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError) as exc:
        raise AuthFileError(f"{where}: 'auth' is not base64 of UTF-8 'user:password': {exc}") from exc
    username, sep, password = decoded.partition(":")
    if not sep:
        raise AuthFileError(f"{where}: 'auth' decodes to a value without ':' between user and password")
    return username, password


def credentials_from_auth_config(
    *,
    username: str = "",
    password: str = "",
    auth: str = "",
    server_address: str = "",  # unused: the image reference decides the registry
    identity_token: str = "",
    registry_token: str = "",
) -> Credentials | None:
    """Credentials from the fields of a CRI AuthConfig; None when all are empty.

    ``auth`` (base64 "user:pass") is used only when username/password are not given.
    """
    if auth and not (username or password):
        try:
            username, password = decode_basic_auth(auth, "AuthConfig")
        except AuthFileError as exc:
            raise ValueError(str(exc)) from exc
    creds = Credentials(username, password, identity_token, registry_token)
    return creds if creds else None


# The name the CRI image service uses.
credentials_from_cri = credentials_from_auth_config


def normalize_auth_key(key: str) -> str:
    """"https://index.docker.io/v1/" -> "docker.io"; "http://host:5000/ns/" -> "host:5000/ns"."""
    for scheme in ("https://", "http://"):
        if key.startswith(scheme):
            key = key[len(scheme) :]
            break
    key = key.rstrip("/")
    for api_suffix in ("/v1", "/v2"):
        if key.endswith(api_suffix):
            key = key[: -len(api_suffix)]
    host, sep, path = key.partition("/")
    if host in _DOCKER_HUB_ALIASES:
        host = DEFAULT_REGISTRY
    return host + sep + path


def default_auth_files() -> list[Path]:
    """Files consulted, in order, when no explicit path is given."""
    env = os.environ.get(REGISTRY_AUTH_FILE_ENV)
    if env:
        return [Path(env)]
    files = []
    runtime_dir = os.environ.get("XDG_RUNTIME_DIR")
    if runtime_dir:
        files.append(Path(runtime_dir) / "containers" / "auth.json")
    docker_dir = os.environ.get("DOCKER_CONFIG")
    files.append(Path(docker_dir) / "config.json" if docker_dir else Path.home() / ".docker" / "config.json")
    return files


def _read_auths(path: Path) -> dict[str, Any] | None:
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise AuthFileError(f"reading auth file {path}: {exc.strerror or exc}") from exc
    try:
        document = json.loads(raw)
    except ValueError as exc:
        raise AuthFileError(f"auth file {path} is not valid JSON: {exc}") from exc
    if not isinstance(document, dict):
        raise AuthFileError(f"auth file {path}: top level must be a JSON object")
    auths = document.get("auths", {})
    if not isinstance(auths, dict):
        raise AuthFileError(f"auth file {path}: 'auths' must be a JSON object")
    return auths


def _entry_credentials(entry: Any, where: str) -> Credentials | None:
    if not isinstance(entry, dict):
        raise AuthFileError(f"{where} must be a JSON object")
    username = entry.get("username", "") or ""
    password = entry.get("password", "") or ""
    if entry.get("auth"):
        username, password = decode_basic_auth(str(entry["auth"]), where)
    identity_token = entry.get("identitytoken", "") or ""
    registry_token = entry.get("registrytoken", "") or ""
    creds = Credentials(str(username), str(password), str(identity_token), str(registry_token))
    return creds if creds else None


def lookup_auths(auths: dict[str, Any], image: str, source: str) -> Credentials | None:
    """The most specific entry of an "auths" object for "registry/repository"."""
    best_key_length = -1
    best: Credentials | None = None
    for raw_key, entry in auths.items():
        key = normalize_auth_key(raw_key)
        if not key:
            continue
        if image == key or image.startswith(key + "/"):
            if len(key) > best_key_length:
                creds = _entry_credentials(entry, f"auth file {source}: entry {raw_key!r}")
                if creds is not None:
                    best_key_length, best = len(key), creds
    return best


def load_auth_file(image: str | ImageReference, path: str | os.PathLike[str] | None = None) -> Credentials | None:
    """Credentials for ``image`` ("registry/repository" or a reference) from the auth file(s)."""
    if isinstance(image, ImageReference):
        name = image.name
    else:
        name = image.split("@", 1)[0]
        head, slash, last = name.rpartition("/")
        if slash and ":" in last:  # a tag; a ':' before the last '/' is a port
            name = head + slash + last.split(":", 1)[0]
        name = normalize_auth_key(name)
    files = [Path(path)] if path else default_auth_files()
    for file in files:
        auths = _read_auths(file)
        if auths is None:
            continue
        creds = lookup_auths(auths, name, str(file))
        if creds is not None:
            return creds
    return None


__all__ = [
    "AuthFileError",
    "Credentials",
    "credentials_from_auth_config",
    "credentials_from_cri",
    "default_auth_files",
    "load_auth_file",
    "lookup_auths",
    "normalize_auth_key",
]
