"""pytest fixtures: real registries on 127.0.0.1, test images, registries.conf.

Loaded by tests/conftest.py (``pytest_plugins = ["tests.support.fixtures"]``).
Registries are session-scoped (one process each for the whole run) and live
under pytest's temporary directory; they are stopped at session end whatever
the tests did.
"""

from __future__ import annotations

import itertools
import secrets
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

from tests.support.images import PushedImage, push_image as _push_image
from tests.support.registries_conf import write_registries_conf
from tests.support.registry import RegistryServer

AUTH_USERNAME = "tester"

_repository_numbers = itertools.count(1)


@pytest.fixture(scope="session")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RegistryServer]:
    """A registry without authentication."""
    server = RegistryServer(tmp_path_factory.mktemp("registry"))
    try:
        server.start()
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def auth_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RegistryServer]:
    """A registry with htpasswd (Basic) auth: ``.username`` / ``.password``."""
    server = RegistryServer(
        tmp_path_factory.mktemp("auth-registry"), username=AUTH_USERNAME, password=secrets.token_urlsafe(12)
    )
    try:
        server.start()
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def busybox_image(registry: RegistryServer) -> PushedImage:
    """test/busybox:latest on ``registry``: the busybox base layer, gzip, OCI media types."""
    return _push_image(registry, "test/busybox", "latest", compression="gzip")


@pytest.fixture
def push_image(registry: RegistryServer) -> Callable[..., PushedImage]:
    """Factory: ``push_image(repository=None, tag="latest", registry=None, **options)``.

    Pushes to the plain ``registry`` unless another server is given; without a
    repository name a unique "test/img-N" is used. Other options are those of
    :func:`tests.support.images.push_image` (compression, media, extra_layers,
    multi_arch, base, cmd, entrypoint, env, user, ...).
    """

    def push(repository: str | None = None, tag: str = "latest", registry: Any = None, **options: Any) -> PushedImage:
        target = registry if registry is not None else default_registry
        name = repository or f"test/img-{next(_repository_numbers)}"
        return _push_image(target, name, tag, **options)

    default_registry = registry
    return push


@pytest.fixture
def registries_conf(tmp_path: Path, registry: RegistryServer, request: pytest.FixtureRequest) -> Path:
    """registries.conf in tmp_path: the test registries insecure, ``registry`` the search registry.

    The auth registry is included when the test also uses ``auth_registry``
    (so it is not started for tests that do not need it).
    """
    hosts = [registry.host]
    if "auth_registry" in request.fixturenames:
        hosts.append(request.getfixturevalue("auth_registry").host)
    return write_registries_conf(tmp_path / "registries.conf", hosts)
