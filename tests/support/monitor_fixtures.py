"""pytest fixtures and marks for the modules that drive pod monitors directly.

Registered as a plugin in tests/conftest.py; such a module sets
``pytestmark = MONITOR_TEST_MARKS``. Kept apart from monitor_harness.py,
which bench/ imports without pytest installed.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.monitor_harness import Harness, child_subreaper, private_harness
from tests.support.rootfs import build_busybox_rootfs, find_static_busybox

MONITOR_TEST_MARKS = [
    pytest.mark.integration,
    pytest.mark.skipif(find_static_busybox() is None, reason="needs Debian's busybox-static"),
]


@pytest.fixture(scope="module")
def reap_monitors() -> Iterator[None]:
    """This test process as a child subreaper, so the monitors it spawns are its to reap."""
    with child_subreaper() as ok:
        if not ok:
            pytest.skip("cannot become a child subreaper")
        yield


@pytest.fixture(scope="module")
def rootfs(tmp_path_factory: pytest.TempPathFactory, reap_monitors: None) -> Path:
    return build_busybox_rootfs(tmp_path_factory.mktemp("busybox") / "rootfs")


@pytest.fixture
def harness(rootfs: Path) -> Iterator[Harness]:
    with private_harness(rootfs) as h:
        yield h
