"""Credentials from CRI AuthConfig fields and from auth files."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest

from crio_fast.image.auth import (
    AuthFileError,
    Credentials,
    credentials_from_auth_config,
    load_auth_file,
    normalize_auth_key,
)
from crio_fast.image.reference import parse_reference


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def write_auths(path: Path, auths: dict) -> Path:
    path.write_text(json.dumps({"auths": auths}))
    return path


@pytest.fixture
def no_auth_env(monkeypatch, tmp_path):
    """Point every default location into tmp_path so the host's files are never read."""
    monkeypatch.delenv("REGISTRY_AUTH_FILE", raising=False)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path / "run"))
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path / "docker"))
    return tmp_path


# -- CRI AuthConfig -----------------------------------------------------------------------


def test_auth_config_username_password():
    assert credentials_from_auth_config(username="u", password="p", server_address="ignored") == Credentials("u", "p")


def test_auth_config_base64_auth_field_with_colon_in_password():
    creds = credentials_from_auth_config(auth=b64("user:pa:ss"))
    assert creds == Credentials("user", "pa:ss")


def test_auth_config_tokens_and_empty():
    assert credentials_from_auth_config(identity_token="refresh") == Credentials(identity_token="refresh")
    assert credentials_from_auth_config(registry_token="bearer") == Credentials(registry_token="bearer")
    assert credentials_from_auth_config() is None


def test_auth_config_bad_base64_is_rejected():
    with pytest.raises(ValueError, match="base64"):
        credentials_from_auth_config(auth="***")
    with pytest.raises(ValueError, match="without ':'"):
        credentials_from_auth_config(auth=b64("nocolon"))


def test_credentials_repr_hides_secrets():
    text = repr(Credentials("u", "s3cret", "idtok", "regtok"))
    assert "s3cret" not in text and "idtok" not in text and "regtok" not in text and "'u'" in text


# -- auth files ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "key,normalized",
    [
        ("https://index.docker.io/v1/", "docker.io"),
        ("registry-1.docker.io", "docker.io"),
        ("http://host:5000/", "host:5000"),
        ("https://quay.io/v2/", "quay.io"),
        ("quay.io/team/app", "quay.io/team/app"),
    ],
)
def test_auth_keys_normalize(key, normalized):
    assert normalize_auth_key(key) == normalized


def test_most_specific_key_wins(tmp_path, no_auth_env):
    path = write_auths(
        tmp_path / "auth.json",
        {
            "quay.io": {"auth": b64("host:h")},
            "quay.io/team": {"auth": b64("team:t")},
            "quay.io/team/app": {"auth": b64("app:a")},
            "https://index.docker.io/v1/": {"auth": b64("hub:x"), "identitytoken": "tok"},
        },
    )
    assert load_auth_file("quay.io/team/app", path) == Credentials("app", "a")
    assert load_auth_file("quay.io/team/other", path) == Credentials("team", "t")
    assert load_auth_file("quay.io/teamwork/app", path) == Credentials("host", "h")
    assert load_auth_file(parse_reference("quay.io/team/app:1"), path) == Credentials("app", "a")
    assert load_auth_file("quay.io/team/app:1", path) == Credentials("app", "a")
    assert load_auth_file("docker.io/library/busybox", path) == Credentials("hub", "x", identity_token="tok")
    assert load_auth_file("ghcr.io/x", path) is None


def test_registry_with_port_and_plain_fields(tmp_path, no_auth_env):
    path = write_auths(tmp_path / "auth.json", {"127.0.0.1:5000": {"username": "u", "password": "p"}})
    assert load_auth_file("127.0.0.1:5000/test/busybox", path) == Credentials("u", "p")
    assert load_auth_file("127.0.0.1:5001/test/busybox", path) is None


def test_missing_file_means_no_credentials(tmp_path, no_auth_env):
    assert load_auth_file("quay.io/a", tmp_path / "absent.json") is None
    assert load_auth_file("quay.io/a") is None


@pytest.mark.parametrize(
    "content,message",
    [
        ("{not json", "not valid JSON"),
        ("[]", "top level must be a JSON object"),
        ('{"auths": []}', "'auths' must be a JSON object"),
        ('{"auths": {"quay.io": {"auth": "%%%"}}}', "base64"),
        ('{"auths": {"quay.io": "x"}}', "must be a JSON object"),
    ],
)
def test_malformed_file_is_an_error_naming_it(tmp_path, no_auth_env, content, message):
    path = tmp_path / "auth.json"
    path.write_text(content)
    with pytest.raises(AuthFileError) as info:
        load_auth_file("quay.io/a", path)
    assert message in str(info.value) and str(path) in str(info.value)


def test_default_locations_in_order(tmp_path, no_auth_env, monkeypatch):
    docker_config = tmp_path / "docker" / "config.json"
    docker_config.parent.mkdir()
    write_auths(docker_config, {"quay.io": {"auth": b64("docker:d")}, "ghcr.io": {"auth": b64("docker:g")}})
    assert load_auth_file("quay.io/a") == Credentials("docker", "d")

    xdg = tmp_path / "run" / "containers" / "auth.json"
    xdg.parent.mkdir(parents=True)
    write_auths(xdg, {"quay.io": {"auth": b64("xdg:x")}})
    # The XDG file is consulted first; the docker file still answers what it lacks.
    assert load_auth_file("quay.io/a") == Credentials("xdg", "x")
    assert load_auth_file("ghcr.io/a") == Credentials("docker", "g")

    explicit = write_auths(tmp_path / "env.json", {"quay.io": {"auth": b64("env:e")}})
    monkeypatch.setenv("REGISTRY_AUTH_FILE", str(explicit))
    assert load_auth_file("quay.io/a") == Credentials("env", "e")
    assert load_auth_file("ghcr.io/a") is None  # REGISTRY_AUTH_FILE replaces the defaults


# -- WWW-Authenticate challenges (what the registry client authenticates by) ----------------


def test_parse_www_authenticate():
    from crio_fast.image.registry_auth import parse_www_authenticate

    (bearer,) = parse_www_authenticate(
        'Bearer realm="https://auth.example/token",service="registry.example",scope="repository:a/b:pull,push"'
    )
    assert bearer.scheme == "bearer"
    assert dict(bearer.params) == {
        "realm": "https://auth.example/token",
        "service": "registry.example",
        "scope": "repository:a/b:pull,push",
    }
    basic, second = parse_www_authenticate('Basic realm="say \\"hi\\"", Bearer realm=https://t.example/x, error=invalid_token')
    assert (basic.scheme, dict(basic.params)) == ("basic", {"realm": 'say "hi"'})
    assert (second.scheme, dict(second.params)) == ("bearer", {"realm": "https://t.example/x", "error": "invalid_token"})
    assert parse_www_authenticate("") == []
