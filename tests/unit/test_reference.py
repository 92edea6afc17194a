"""Image reference parsing and normalization (distribution/reference semantics)."""

from __future__ import annotations

import pytest

from crio_fast.image.reference import (
    ImageReference,
    InvalidReference,
    is_digest,
    is_short_name,
    parse_digest,
    parse_reference,
)

SHA = "sha256:" + "a" * 64
SHA512 = "sha512:" + "b" * 128

VALID = [
    # input, registry, repository, tag, digest, str(), familiar
    ("busybox", "docker.io", "library/busybox", "latest", None, "docker.io/library/busybox:latest", "busybox:latest"),
    ("busybox:1.36", "docker.io", "library/busybox", "1.36", None, "docker.io/library/busybox:1.36", "busybox:1.36"),
    ("user/img", "docker.io", "user/img", "latest", None, "docker.io/user/img:latest", "user/img:latest"),
    ("docker.io/busybox", "docker.io", "library/busybox", "latest", None, "docker.io/library/busybox:latest", "busybox:latest"),
    ("index.docker.io/library/busybox:x", "docker.io", "library/busybox", "x", None, "docker.io/library/busybox:x", "busybox:x"),
    ("quay.io/ns/sub/name:v1.2-rc_3", "quay.io", "ns/sub/name", "v1.2-rc_3", None, "quay.io/ns/sub/name:v1.2-rc_3", "quay.io/ns/sub/name:v1.2-rc_3"),
    ("host:5000/ns/name:tag", "host:5000", "ns/name", "tag", None, "host:5000/ns/name:tag", "host:5000/ns/name:tag"),
    ("host:5000/name", "host:5000", "name", "latest", None, "host:5000/name:latest", "host:5000/name:latest"),
    ("localhost/x", "localhost", "x", "latest", None, "localhost/x:latest", "localhost/x:latest"),
    ("localhost:5000/a/b", "localhost:5000", "a/b", "latest", None, "localhost:5000/a/b:latest", "localhost:5000/a/b:latest"),
    ("127.0.0.1:5000/a", "127.0.0.1:5000", "a", "latest", None, "127.0.0.1:5000/a:latest", "127.0.0.1:5000/a:latest"),
    ("[::1]:5000/a", "[::1]:5000", "a", "latest", None, "[::1]:5000/a:latest", "[::1]:5000/a:latest"),
    (f"busybox@{SHA}", "docker.io", "library/busybox", None, SHA, f"docker.io/library/busybox@{SHA}", f"busybox@{SHA}"),
    (f"busybox:1.36@{SHA}", "docker.io", "library/busybox", "1.36", SHA, f"docker.io/library/busybox:1.36@{SHA}", f"busybox:1.36@{SHA}"),
    (f"h.io/a@{SHA512}", "h.io", "a", None, SHA512, f"h.io/a@{SHA512}", f"h.io/a@{SHA512}"),
    ("a__b/c--d.e_f", "docker.io", "a__b/c--d.e_f", "latest", None, "docker.io/a__b/c--d.e_f:latest", "a__b/c--d.e_f:latest"),
    ("Example.COM/x", "Example.COM", "x", "latest", None, "Example.COM/x:latest", "Example.COM/x:latest"),
    ("docker.io/library/a/b", "docker.io", "library/a/b", "latest", None, "docker.io/library/a/b:latest", "library/a/b:latest"),
    ("x:" + "t" * 128, "docker.io", "library/x", "t" * 128, None, "docker.io/library/x:" + "t" * 128, "x:" + "t" * 128),
]


@pytest.mark.parametrize("text,registry,repository,tag,digest,full,familiar", VALID)
def test_valid_references_normalize(text, registry, repository, tag, digest, full, familiar):
    ref = parse_reference(text)
    assert ref == ImageReference(registry, repository, tag, digest)
    assert str(ref) == full
    assert ref.familiar == familiar
    assert ref.name == f"{registry}/{repository}"
    # The normalized form parses back to the same reference.
    assert parse_reference(str(ref)) == ref


INVALID = [
    ("", "empty"),
    ("Busybox", "lowercase"),
    ("docker.io/Library/busybox", "lowercase"),
    ("busybox:", "tag"),
    ("busybox:-x", "tag"),
    ("busybox:" + "t" * 129, "tag"),
    ("busybox@sha256:abc", "sha256 needs 64"),
    ("busybox@md5:" + "a" * 32, "unsupported algorithm"),
    ("busybox@sha256:" + "A" * 64, "lower-case hex"),
    ("busybox@" + "a" * 64, "ALGORITHM:HEX"),
    ("a" * 64, "image ID"),
    ("host:port/x", "invalid registry"),
    ("-host.io/x", "invalid registry"),
    ("host.io/", "empty"),
    ("host.io//x", "may hold only"),
    ("a/b_", "may hold only"),
    ("a/_b", "may hold only"),
    ("a/b..c", "may hold only"),
    ("with space", "whitespace"),
    ("h.io/" + "a" * 260, "longer than 255"),
    ("localhost:99999/x", "port from 1 to 65535"),
    ("localhost:0/x", "port from 1 to 65535"),
    ("x" * (1 << 20), "longer than 1024"),
]


@pytest.mark.parametrize("text,message", INVALID)
def test_invalid_references_are_rejected_with_reason(text, message):
    with pytest.raises(InvalidReference) as info:
        parse_reference(text)
    assert message in str(info.value)
    assert isinstance(info.value, ValueError)


@pytest.mark.parametrize(
    "text,short",
    [
        ("busybox", True),
        ("busybox:1", True),
        ("user/img", True),
        (f"library/busybox@{SHA}", True),
        ("docker.io/busybox", False),
        ("localhost/x", False),
        ("host:5000/x", False),
        ("quay.io/a/b:c", False),
    ],
)
def test_is_short_name(text, short):
    assert is_short_name(text) is short


def test_default_tag_can_be_suppressed():
    assert parse_reference("quay.io/a", default_tag=None).tag is None
    assert parse_reference("quay.io/a:1", default_tag=None).tag == "1"


def test_with_registry_keeps_tag_and_digest():
    ref = parse_reference(f"quay.io/ns/app:1@{SHA}")
    moved = ref.with_registry("mirror.local:5000")
    assert str(moved) == f"mirror.local:5000/ns/app:1@{SHA}"
    assert str(ref.with_registry("m.io", "other/app")) == f"m.io/other/app:1@{SHA}"
    with pytest.raises(InvalidReference):
        ref.with_registry("bad host")
    with pytest.raises(InvalidReference):
        ref.with_registry("m.io", "Upper")


def test_digest_helpers():
    assert parse_digest(SHA) == ("sha256", "a" * 64)
    assert parse_digest(SHA512) == ("sha512", "b" * 128)
    assert is_digest(SHA)
    for bad in ("sha256:" + "a" * 63, "sha512:" + "a" * 64, "sha1:" + "a" * 40, "a" * 64, "sha256:" + "g" * 64, ""):
        assert not is_digest(bad), bad


def test_a_registry_port_in_range_is_kept():
    assert parse_reference("localhost:65535/x").registry == "localhost:65535"


def test_a_huge_reference_is_quoted_cut_short():
    with pytest.raises(InvalidReference) as info:
        parse_reference("x" * (1 << 20))
    assert len(str(info.value)) < 400
