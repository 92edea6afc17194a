"""Signers the signature tests share: GPG keys (made with gnupg, skipped with the reason where it is
missing), a cosign key pair, and a test Fulcio CA and Rekor log. One of each per test module."""

from __future__ import annotations

from typing import Iterator

import pytest

from tests.support.signing import CosignKey, GpgSigner, TestFulcio, TestRekor, gnupg_missing


def _gpg_signer(name: str) -> Iterator[GpgSigner]:
    if gnupg_missing():
        pytest.skip(gnupg_missing())
    signer = GpgSigner(name)
    try:
        yield signer
    finally:
        signer.close()


@pytest.fixture(scope="module")
def signer() -> Iterator[GpgSigner]:
    """The key the tests' policies trust."""
    yield from _gpg_signer("Trusted")


@pytest.fixture(scope="module")
def stranger() -> Iterator[GpgSigner]:
    """A key no policy names."""
    yield from _gpg_signer("Stranger")


@pytest.fixture(scope="module")
def cosign_key() -> CosignKey:
    return CosignKey()


@pytest.fixture(scope="module")
def fulcio() -> TestFulcio:
    return TestFulcio()


@pytest.fixture(scope="module")
def rekor() -> TestRekor:
    return TestRekor()
