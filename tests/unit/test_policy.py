"""containers-policy.json parsing, scope precedence and signed identities."""

from __future__ import annotations

import base64
import json

import pytest

from crio_fast.image.policy import (
    ExactReference,
    ExactRepository,
    InsecureAcceptAnything,
    MatchExact,
    MatchRepoDigestOrExact,
    MatchRepository,
    Policy,
    PolicyError,
    Reject,
    RemapIdentity,
    SignedBy,
    SigstoreSigned,
)
from crio_fast.image.reference import parse_reference

DIGEST = "sha256:" + "ab" * 32
OTHER_DIGEST = "sha256:" + "cd" * 32
KEY = base64.b64encode(b"key bytes").decode()
ACCEPT = [{"type": "insecureAcceptAnything"}]
REJECT = [{"type": "reject"}]


def parse(document: object, source: str = "/etc/test/policy.json") -> Policy:
    return Policy.parse(json.dumps(document).encode(), source)


def signed_by(**fields: object) -> dict:
    return {"type": "signedBy", "keyType": "GPGKeys", "keyData": KEY, **fields}


def with_docker(scopes: dict, default: list | None = None) -> dict:
    return {"default": default or REJECT, "transports": {"docker": scopes}}


def ref(text: str):
    return parse_reference(text)


# -- parsing ------------------------------------------------------------------


def test_minimal_policies():
    assert parse({"default": ACCEPT}).default == (InsecureAcceptAnything(),)
    assert parse({"default": REJECT}).for_image(ref("quay.io/a/b:1")).requirements == (Reject(),)


def test_signed_by_forms():
    policy = parse(with_docker({
        "a.io": [signed_by()],
        "b.io": [{"type": "signedBy", "keyType": "GPGKeys", "keyPath": "/k.gpg"}],
        "c.io": [{"type": "signedBy", "keyType": "GPGKeys", "keyPaths": ["/k1", "/k2"],
                  "signedIdentity": {"type": "matchExact"}}],
    }))
    a = policy.docker_scopes["a.io"][0]
    assert isinstance(a, SignedBy) and a.keys.data == (b"key bytes",)
    assert isinstance(a.signed_identity, MatchRepoDigestOrExact)  # the default
    assert policy.docker_scopes["b.io"][0].keys.paths == ("/k.gpg",)
    c = policy.docker_scopes["c.io"][0]
    assert c.keys.paths == ("/k1", "/k2") and isinstance(c.signed_identity, MatchExact)


def test_every_signed_identity_type_parses():
    identities = {
        "matchRepoDigestOrExact": ({}, MatchRepoDigestOrExact),
        "matchExact": ({}, MatchExact),
        "matchRepository": ({}, MatchRepository),
        "exactReference": ({"dockerReference": "quay.io/a/b:1"}, ExactReference),
        "exactRepository": ({"dockerRepository": "quay.io/a/b"}, ExactRepository),
        "remapIdentity": ({"prefix": "mirror.io/vendor", "signedPrefix": "vendor.io"}, RemapIdentity),
    }
    for kind, (extra, cls) in identities.items():
        policy = parse(with_docker({"q.io": [signed_by(signedIdentity={"type": kind, **extra})]}))
        assert isinstance(policy.docker_scopes["q.io"][0].signed_identity, cls), kind


def test_sigstore_signed_parses_fully():
    policy = parse(with_docker({
        "k.io": [{"type": "sigstoreSigned", "keyPath": "/cosign.pub"}],
        "d.io": [{"type": "sigstoreSigned", "keyDatas": [KEY, KEY], "signedIdentity": {"type": "matchRepository"}}],
        "f.io": [{"type": "sigstoreSigned",
                  "fulcio": {"caData": KEY, "oidcIssuer": "https://issuer", "subjectEmail": "a@b.c"},
                  "rekorPublicKeyPath": "/rekor.pub"}],
    }))
    assert policy.docker_scopes["k.io"][0].keys.paths == ("/cosign.pub",)
    assert policy.docker_scopes["d.io"][0].keys.data == (b"key bytes", b"key bytes")
    fulcio = policy.docker_scopes["f.io"][0]
    assert isinstance(fulcio, SigstoreSigned) and fulcio.fulcio.ca_data == b"key bytes"
    assert fulcio.fulcio.oidc_issuer == "https://issuer" and fulcio.rekor_public_key_path == "/rekor.pub"


def test_other_transports_are_checked_for_form_and_ignored():
    policy = parse({"default": REJECT, "transports": {"docker-daemon": {"": ACCEPT}, "oci": {"/x": ACCEPT}}})
    assert policy.docker_scopes == {}
    assert policy.for_image(ref("quay.io/a/b:1")).scope == "default"


MALFORMED = [
    # (document, fragments the message must hold besides the file name)
    ("not json", ["not valid JSON"]),
    ([], ["top level"]),
    ({}, ["default", "missing"]),
    ({"default": []}, ["default", "must not be empty"]),
    ({"default": ACCEPT, "extra": 1}, ["top level", '"extra"']),
    ({"default": [{"type": "nope"}]}, ["default requirement 1", '"type"', "nope"]),
    ({"default": [{}]}, ["default requirement 1", '"type" is missing']),
    ({"default": [{"type": "reject", "x": 1}]}, ["default requirement 1", '"x"']),
    ({"default": ACCEPT, "transports": {"nosuch": {}}}, ["transports.nosuch", "unknown transport"]),
    (with_docker({"quay.io/a": []}), ['scope "quay.io/a"', "must not be empty"]),
    (with_docker({"bad_host!": ACCEPT}), ['scope "bad_host!"', "host[:port]"]),
    (with_docker({"docker.io/busybox": ACCEPT}), ['scope "docker.io/busybox"', "docker.io/library/busybox"]),
    (with_docker({"*.a.io:5000": ACCEPT}), ['scope "*.a.io:5000"', "wildcard"]),
    (with_docker({"a.*.io": ACCEPT}), ['scope "a.*.io"']),
    (with_docker({"q.io": [{"type": "signedBy", "keyType": "GPGKeys"}]}), ['scope "q.io"', "signedBy", "keyPath"]),
    (with_docker({"q.io": [signed_by(keyPath="/k")]}), ['scope "q.io"', '"keyPath" and "keyData"']),
    (with_docker({"q.io": [signed_by(keyData="!!notbase64")]}), ['scope "q.io"', '"keyData"', "base64"]),
    (with_docker({"q.io": [signed_by(keyType="X509Certificates")]}), ['scope "q.io"', '"keyType"']),
    (with_docker({"q.io": [{"type": "signedBy", "keyData": KEY}]}), ['scope "q.io"', '"keyType" is missing']),
    (with_docker({"q.io": [{"type": "signedBy", "keyType": "GPGKeys", "keyPaths": []}]}),
     ['scope "q.io"', '"keyPaths"', "non-empty"]),
    (with_docker({"q.io": [signed_by(signedIdentity={"type": "exactReference"})]}),
     ['scope "q.io"', "signedIdentity", '"dockerReference" is missing']),
    (with_docker({"q.io": [signed_by(signedIdentity={"type": "exactReference", "dockerReference": "q.io/a"})]}),
     ['scope "q.io"', "dockerReference", "tag or digest"]),
    (with_docker({"q.io": [signed_by(signedIdentity={"type": "matchExact", "dockerReference": "q.io/a:1"})]}),
     ['scope "q.io"', "signedIdentity", '"dockerReference"']),
    (with_docker({"q.io": [signed_by(signedIdentity={"type": "remapIdentity", "prefix": "m.io/a:1",
                                                     "signedPrefix": "q.io"})]}),
     ['scope "q.io"', '"prefix"']),
    (with_docker({"q.io": [signed_by(signedIdentity={"type": "sameish"})]}), ['scope "q.io"', "sameish"]),
    (with_docker({"q.io": [{"type": "sigstoreSigned"}]}), ['scope "q.io"', "sigstoreSigned", '"fulcio"']),
    (with_docker({"q.io": [{"type": "sigstoreSigned", "keyPath": "/k",
                            "fulcio": {"caPath": "/ca", "oidcIssuer": "i", "subjectEmail": "e"},
                            "rekorPublicKeyPath": "/r"}]}),
     ['scope "q.io"', '"fulcio"', "cannot be combined"]),
    (with_docker({"q.io": [{"type": "sigstoreSigned",
                            "fulcio": {"caPath": "/ca", "oidcIssuer": "i", "subjectEmail": "e"}}]}),
     ['scope "q.io"', "rekorPublicKey"]),
    (with_docker({"q.io": [{"type": "sigstoreSigned", "rekorPublicKeyPath": "/r",
                            "fulcio": {"oidcIssuer": "i", "subjectEmail": "e"}}]}),
     ['scope "q.io"', "fulcio", '"caPath" and "caData"']),
    (with_docker({"q.io": [{"type": "sigstoreSigned", "rekorPublicKeyPath": "/r",
                            "fulcio": {"caPath": "/ca", "subjectEmail": "e"}}]}),
     ['scope "q.io"', "fulcio", '"oidcIssuer" is missing']),
    (with_docker({"q.io": [{"type": "sigstoreSigned", "keyPath": "/k", "fulcio2": {}}]}),
     ['scope "q.io"', '"fulcio2"']),
]


@pytest.mark.parametrize("document,fragments", MALFORMED, ids=[str(i) for i in range(len(MALFORMED))])
def test_malformed_policy_names_file_scope_and_field(document, fragments):
    raw = document.encode() if isinstance(document, str) else json.dumps(document).encode()
    with pytest.raises(PolicyError) as caught:
        Policy.parse(raw, "/etc/test/policy.json")
    message = str(caught.value)
    assert "/etc/test/policy.json" in message
    for fragment in fragments:
        assert fragment in message, (fragment, message)


def test_duplicate_field_is_an_error():
    raw = b'{"default": [{"type": "reject"}], "default": [{"type": "insecureAcceptAnything"}]}'
    with pytest.raises(PolicyError, match='"default" appears twice'):
        Policy.parse(raw, "/p.json")


def test_unreadable_file_names_it(tmp_path):
    with pytest.raises(PolicyError, match=str(tmp_path / "missing.json")):
        Policy.load(str(tmp_path / "missing.json"))


def test_digest_follows_the_bytes(tmp_path):
    path = tmp_path / "policy.json"
    path.write_text(json.dumps({"default": ACCEPT}))
    first = Policy.load(str(path))
    path.write_text(json.dumps({"default": REJECT}))
    assert Policy.load(str(path)).digest != first.digest


# -- scope precedence ---------------------------------------------------------


def scope_of(policy: Policy, image: str) -> str:
    return policy.for_image(parse_reference(image)).scope


def test_most_specific_scope_wins():
    policy = parse(with_docker({
        "": ACCEPT,
        "reg.io": ACCEPT,
        "reg.io:5000": ACCEPT,
        "reg.io/ns": ACCEPT,
        "reg.io/ns/sub": ACCEPT,
        "reg.io/ns/sub/repo": ACCEPT,
        "reg.io/ns/sub/repo:v1": ACCEPT,
        f"reg.io/ns/sub/repo@{DIGEST}": ACCEPT,
        "*.io": ACCEPT,
        "*.example.io": ACCEPT,
    }))
    assert scope_of(policy, "reg.io/ns/sub/repo:v1") == "docker:reg.io/ns/sub/repo:v1"
    assert scope_of(policy, f"reg.io/ns/sub/repo@{DIGEST}") == f"docker:reg.io/ns/sub/repo@{DIGEST}"
    assert scope_of(policy, "reg.io/ns/sub/repo:v2") == "docker:reg.io/ns/sub/repo"
    assert scope_of(policy, f"reg.io/ns/sub/repo@{OTHER_DIGEST}") == "docker:reg.io/ns/sub/repo"
    assert scope_of(policy, "reg.io/ns/sub/other:v1") == "docker:reg.io/ns/sub"
    assert scope_of(policy, "reg.io/ns/x:1") == "docker:reg.io/ns"
    assert scope_of(policy, "reg.io/nsx/x:1") == "docker:reg.io"  # a namespace is a whole path element
    assert scope_of(policy, "reg.io:5000/ns/x:1") == "docker:reg.io:5000"
    assert scope_of(policy, "reg.io:6000/ns/x:1") == "docker:*.io"  # the port-less host is not a parent
    assert scope_of(policy, "a.b.example.io/x:1") == "docker:*.example.io"
    assert scope_of(policy, "example.io/x:1") == "docker:*.io"
    assert scope_of(policy, "localhost:5000/x:1") == "docker (transport default)"


def test_default_when_no_docker_scope_matches():
    policy = parse(with_docker({"reg.io": ACCEPT}, default=REJECT))
    assert scope_of(policy, "other.io/x:1") == "default"
    assert policy.for_image(ref("other.io/x:1")).requirements == (Reject(),)


def test_docker_hub_short_names_match_their_expanded_scope():
    policy = parse(with_docker({"docker.io/library/busybox": ACCEPT}))
    assert scope_of(policy, "busybox") == "docker:docker.io/library/busybox"


# -- signed identities --------------------------------------------------------


def test_match_repo_digest_or_exact():
    identity = MatchRepoDigestOrExact()
    assert identity.matches(ref("q.io/a/b:1"), "q.io/a/b:1")
    assert not identity.matches(ref("q.io/a/b:1"), "q.io/a/b:2")
    assert not identity.matches(ref("q.io/a/b:1"), "q.io/a/b")  # a signature must name a tag or digest
    assert identity.matches(ref(f"q.io/a/b@{DIGEST}"), "q.io/a/b:any")
    assert identity.matches(ref(f"q.io/a/b@{DIGEST}"), f"q.io/a/b@{OTHER_DIGEST}")
    assert not identity.matches(ref(f"q.io/a/b@{DIGEST}"), "q.io/a/c:1")
    assert not identity.matches(ref("q.io/a/b:1"), "not a reference!")


def test_match_exact():
    identity = MatchExact()
    assert identity.matches(ref("q.io/a/b:1"), "q.io/a/b:1")
    assert not identity.matches(ref(f"q.io/a/b@{DIGEST}"), "q.io/a/b:1")
    assert identity.matches(ref(f"q.io/a/b@{DIGEST}"), f"q.io/a/b@{DIGEST}")
    assert not identity.matches(ref("q.io/a/b:1"), "q.io/a/b")
    # Docker Hub names are compared fully expanded.
    assert identity.matches(ref("busybox:1"), "docker.io/library/busybox:1")


def test_match_repository():
    identity = MatchRepository()
    assert identity.matches(ref("q.io/a/b:1"), "q.io/a/b:2")
    assert identity.matches(ref("q.io/a/b:1"), "q.io/a/b")
    assert not identity.matches(ref("q.io/a/b:1"), "q.io/a/c:1")


def test_exact_reference():
    identity = ExactReference("q.io/signed/name:v1")
    assert identity.matches(ref("mirror.io/whatever:2"), "q.io/signed/name:v1")
    assert not identity.matches(ref("mirror.io/whatever:2"), "q.io/signed/name:v2")
    assert not identity.matches(ref("q.io/signed/name:v1"), "q.io/signed/name")


def test_exact_repository():
    identity = ExactRepository("q.io/signed/name")
    assert identity.matches(ref("mirror.io/whatever:2"), "q.io/signed/name:v9")
    assert not identity.matches(ref("mirror.io/whatever:2"), "q.io/signed/other:v9")


def test_remap_identity():
    identity = RemapIdentity("mirror.io/vendor", "vendor.io/products")
    # Under the prefix: the image counts as vendor.io/products/..., matched as matchRepoDigestOrExact.
    assert identity.matches(ref("mirror.io/vendor/app:1"), "vendor.io/products/app:1")
    assert not identity.matches(ref("mirror.io/vendor/app:1"), "mirror.io/vendor/app:1")
    assert not identity.matches(ref("mirror.io/vendor/app:1"), "vendor.io/products/app:2")
    assert identity.matches(ref(f"mirror.io/vendor/app@{DIGEST}"), "vendor.io/products/app:1")
    # Not under the prefix (a whole path element): no remapping.
    assert identity.matches(ref("mirror.io/vendorx/app:1"), "mirror.io/vendorx/app:1")
    assert not identity.matches(ref("mirror.io/vendorx/app:1"), "vendor.io/products/x/app:1")
    # A host prefix is not a parent of the same host with a port.
    host = RemapIdentity("mirror.io", "vendor.io")
    assert host.matches(ref("mirror.io/app:1"), "vendor.io/app:1")
    assert host.matches(ref("mirror.io:5000/app:1"), "mirror.io:5000/app:1")
    # A repository prefix is followed by its tag.
    repo = RemapIdentity("mirror.io/vendor/app", "vendor.io/app")
    assert repo.matches(ref("mirror.io/vendor/app:1"), "vendor.io/app:1")
