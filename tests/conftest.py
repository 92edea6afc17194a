"""Shared fixtures. Every test runs against private directories under /tmp."""

from __future__ import annotations

import os

import pytest

pytest_plugins = ["tests.support.fixtures", "tests.support.monitor_fixtures", "tests.support.signing_fixtures"]

from tests.support.daemon import Daemon, DaemonDirs, make_dirs, remove_dirs


def pytest_collection_modifyitems(config, items):
    if os.geteuid() != 0:
        skip = pytest.mark.skip(reason="integration tests need root (namespaces, mounts, cgroups)")
        for item in items:
            if "integration" in item.keywords:
                item.add_marker(skip)
    from tests.support.timing import SLOWDOWN

    if SLOWDOWN > 1:  # pytest-timeout's limit, stretched as the tests' own deadlines are
        default = float(config.getini("timeout") or 0)
        for item in items:
            marker = item.get_closest_marker("timeout")
            seconds = float(marker.args[0]) if marker is not None and marker.args else default
            if seconds:
                item.add_marker(pytest.mark.timeout(seconds * SLOWDOWN), append=False)


@pytest.fixture
def cri(env):
    """The module's shared daemon (its ``env`` fixture); every pod is removed after each test."""
    # Imported here: at module level it would import tests.support.fixtures before pytest registers
    # it as a plugin, and its asserts would not be rewritten.
    from tests.support.pods import remove_all_pods

    try:
        yield env
    finally:
        remove_all_pods(env)


@pytest.fixture
def daemon_dirs():
    dirs = make_dirs()
    try:
        yield dirs
    finally:
        remove_dirs(dirs)


@pytest.fixture
def daemon(daemon_dirs: DaemonDirs):
    """A running daemon in private dirs, stopped (SIGTERM, then SIGKILL) after the test."""
    d = Daemon(daemon_dirs)
    d.start()
    try:
        yield d
    finally:
        try:
            d.stop()
        finally:
            d.kill()
