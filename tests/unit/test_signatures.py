"""GPG simple signing with the real gpgv, registries.d, lookaside reads over file:// and HTTP, and the
policy's verdict on an image, without a daemon."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
from pathlib import Path

import pytest

from crio_fast.errors import FailedPrecondition, InvalidArgument, Unavailable
from crio_fast.image.lookaside import RegistriesD, RegistriesDError, read_signatures, signature_url
from crio_fast.image.policy import Policy
from crio_fast.image.reference import parse_reference
from crio_fast.image.signatures import SignaturePolicies, SignatureValidationFailed, enforce, enforce_import
from crio_fast.image.simple_signing import (
    SignatureInvalid,
    UnknownKey,
    VerifierUnavailable,
    dearmor,
    parse_payload,
    verified_signatures,
    verify,
)
from tests.support.signing import GpgSigner, LookasideServer, gnupg_missing, publish, simple_signing_payload

MANIFEST = b'{"schemaVersion": 2, "layers": []}'
DIGEST = "sha256:" + hashlib.sha256(MANIFEST).hexdigest()
OTHER_DIGEST = "sha256:" + "0" * 64
IMAGE = "registry.test:5000/team/app:v1"

needs_gnupg = pytest.mark.skipif(bool(gnupg_missing()), reason=gnupg_missing() or "gnupg present")


def sign(signer: GpgSigner, digest: str = DIGEST, identity: str = IMAGE) -> bytes:
    return signer.sign(simple_signing_payload(digest, identity))


# -- gpgv ---------------------------------------------------------------------


def test_verify_a_good_signature_with_binary_and_armoured_keys(signer):
    signature = sign(signer)
    for key in (signer.public_key(), signer.public_key(armor=True)):
        claim = verify(signature, [key])
        assert (claim.manifest_digest, claim.docker_reference) == (DIGEST, IMAGE)
        assert claim.key_fingerprint == signer.fingerprint


def test_a_verified_signature_is_remembered_for_the_same_keys_only(signer, stranger, tmp_path):
    verified_signatures.clear()
    signature = sign(signer)
    missing = str(tmp_path / "no-gpgv")  # a second gpgv run would fail: only memory can answer
    with pytest.raises(VerifierUnavailable):
        verify(signature, [signer.public_key()], gpgv=missing)
    first = verify(signature, [signer.public_key()])
    assert verify(signature, [signer.public_key()], gpgv=missing) == first
    # Another keyring (a key added, or another encoding of the key) is asked of gpgv again.
    with pytest.raises(VerifierUnavailable):
        verify(signature, [signer.public_key(), stranger.public_key()], gpgv=missing)
    with pytest.raises(VerifierUnavailable):
        verify(signature, [signer.public_key(armor=True)], gpgv=missing)
    # Refusals are not remembered: gpgv decides each time.
    altered = bytearray(signature)
    altered[len(altered) // 2] ^= 0xFF
    with pytest.raises(SignatureInvalid):
        verify(bytes(altered), [signer.public_key()])
    with pytest.raises(VerifierUnavailable):
        verify(bytes(altered), [signer.public_key()], gpgv=missing)


def test_dearmor_gives_the_binary_export(signer):
    assert dearmor(signer.public_key(armor=True)) == signer.public_key()


def test_verify_with_the_wrong_key_is_an_unknown_key(signer, stranger):
    with pytest.raises(UnknownKey, match="unknown key"):
        verify(sign(stranger), [signer.public_key()])
    # Any of several keys will do.
    assert verify(sign(stranger), [signer.public_key(), stranger.public_key()]).key_fingerprint == stranger.fingerprint


def test_altered_signature_is_refused(signer):
    signature = bytearray(sign(signer))
    signature[len(signature) // 2] ^= 0xFF
    with pytest.raises(SignatureInvalid):
        verify(bytes(signature), [signer.public_key()])
    with pytest.raises(SignatureInvalid):
        verify(b"not a signature at all", [signer.public_key()])


def test_payload_must_be_an_atomic_container_signature(signer):
    with pytest.raises(SignatureInvalid, match="not JSON"):
        verify(signer.sign(b"hello"), [signer.public_key()])
    wrong_type = json.dumps({"critical": {"type": "other", "image": {"docker-manifest-digest": DIGEST},
                                          "identity": {"docker-reference": IMAGE}}}).encode()
    with pytest.raises(SignatureInvalid, match="type"):
        parse_payload(wrong_type)
    with pytest.raises(SignatureInvalid, match="docker-manifest-digest"):
        parse_payload(simple_signing_payload("sha256:short", IMAGE))


# -- registries.d -------------------------------------------------------------


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_registries_d_most_specific_scope_and_default(tmp_path):
    write(tmp_path / "a.yaml", "default-docker:\n  lookaside: file:///sigs/default\n")
    write(tmp_path / "b.yaml", "docker:\n  registry.test:5000:\n    sigstore: https://host.test/legacy\n"
                               "  registry.test:5000/team:\n    lookaside: file:///sigs/team\n"
                               "    lookaside-staging: file:///staging\n"
                               "  registry.test:5000/team/quiet:\n    use-sigstore-attachments: true\n")
    write(tmp_path / "ignored.conf", "not: [yaml")
    config = RegistriesD.load(str(tmp_path))
    assert config.lookaside_for(parse_reference("registry.test:5000/team/app:v1")) == "file:///sigs/team"
    assert config.lookaside_for(parse_reference("registry.test:5000/other/app:v1")) == "https://host.test/legacy"
    assert config.lookaside_for(parse_reference("elsewhere.test/app:v1")) == "file:///sigs/default"
    # A section without a lookaside (here one that only turns sigstore attachments on) keeps the broader
    # scope's, as containers/image reads it.
    assert config.lookaside_for(parse_reference("registry.test:5000/team/quiet:v1")) == "file:///sigs/team"
    assert RegistriesD.load("").lookaside_for(parse_reference(IMAGE)) == ""
    assert RegistriesD.load(str(tmp_path / "missing")).lookaside_for(parse_reference(IMAGE)) == ""


@pytest.mark.parametrize("files,fragment", [
    ({"a.yaml": "default-docker:\n  lookaside: file:///a\n", "b.yaml": "default-docker:\n  lookaside: file:///b\n"},
     "default-docker is also set"),
    ({"a.yaml": "docker:\n  r.test:\n    lookaside: file:///a\n", "b.yaml": "docker:\n  r.test:\n    lookaside: file:///b\n"},
     "scope 'r.test' is also set"),
    ({"a.yaml": "docker:\n  r.test:\n    lookaside: ftp://x/\n"}, "file://, http:// or https://"),
    ({"a.yaml": "docker:\n  r.test:\n    lookaside: file://relative\n"}, "absolute path"),
    ({"a.yaml": "docker:\n  r.test:\n    lokaside: file:///a\n"}, "unknown key 'lokaside'"),
    ({"a.yaml": "docker: [1, 2]\n"}, "mapping of scopes"),
    ({"a.yaml": "docker:\n  r.test: {lookaside: [\n"}, "not valid YAML"),
])
def test_registries_d_errors_name_the_file(tmp_path, files, fragment):
    for name, text in files.items():
        write(tmp_path / name, text)
    with pytest.raises(RegistriesDError) as caught:
        RegistriesD.load(str(tmp_path))
    assert str(tmp_path) in str(caught.value) and fragment in str(caught.value)


def test_signature_url_layout():
    assert signature_url("https://s.test/sigs/", parse_reference("docker.io/library/busybox:1"), DIGEST, 2) == (
        f"https://s.test/sigs/library/busybox@sha256={DIGEST.split(':')[1]}/signature-2")


@pytest.mark.parametrize("over", ["file", "http"])
def test_read_signatures_until_one_is_missing(tmp_path, over):
    store = tmp_path / "sigs"
    publish(store, IMAGE, DIGEST, [b"one", b"two"])
    # A gap: signature-4 is never read because signature-3 is missing.
    path = Path(signature_url(store.as_uri(), parse_reference(IMAGE), DIGEST, 4).removeprefix("file://"))
    path.write_bytes(b"four")
    server = LookasideServer(store) if over == "http" else None
    try:
        base = server.url if server else store.as_uri()
        assert asyncio.run(read_signatures(base, parse_reference(IMAGE), DIGEST)) == [b"one", b"two"]
        assert asyncio.run(read_signatures(base, parse_reference(IMAGE), OTHER_DIGEST)) == []
    finally:
        if server:
            server.close()


# -- the verdict --------------------------------------------------------------


def policy_for(scope_requirements: list[dict], tmp_path: Path, default: list[dict] | None = None) -> Policy:
    path = tmp_path / "policy.json"
    path.write_text(json.dumps({"default": default or [{"type": "reject"}],
                                "transports": {"docker": {"registry.test:5000/team": scope_requirements}}}))
    return Policy.load(str(path))


def signed_by(signer: GpgSigner, identity: dict | None = None) -> dict:
    requirement = {"type": "signedBy", "keyType": "GPGKeys",
                   "keyData": base64.b64encode(signer.public_key()).decode()}
    if identity is not None:
        requirement["signedIdentity"] = identity
    return requirement


def check(policy: Policy, tmp_path: Path, image: str = IMAGE, manifest: bytes = MANIFEST) -> None:
    registries_d = tmp_path / "registries.d"
    write(registries_d / "sigs.yaml", f"default-docker:\n  lookaside: {(tmp_path / 'sigs').as_uri()}\n")
    digest = "sha256:" + hashlib.sha256(manifest).hexdigest()
    asyncio.run(enforce(policy, parse_reference(image), manifest, digest, registries_d=str(registries_d)))


def refused(policy: Policy, tmp_path: Path, image: str = IMAGE) -> str:
    with pytest.raises(SignatureValidationFailed) as caught:
        check(policy, tmp_path, image)
    message = str(caught.value)
    assert message.startswith("SignatureValidationFailed: image ")
    return message


def test_signed_image_is_accepted_and_unsigned_refused(signer, tmp_path):
    policy = policy_for([signed_by(signer)], tmp_path)
    message = refused(policy, tmp_path)
    assert IMAGE in message and "docker:registry.test:5000/team" in message and "no signature" in message
    publish(tmp_path / "sigs", IMAGE, DIGEST, [sign(signer)])
    check(policy, tmp_path)


def test_no_lookaside_configured_is_no_signature(signer, tmp_path):
    policy = policy_for([signed_by(signer)], tmp_path)
    with pytest.raises(SignatureValidationFailed, match="names no lookaside"):
        asyncio.run(enforce(policy, parse_reference(IMAGE), MANIFEST, DIGEST, registries_d=""))


def test_any_good_signature_of_several_will_do(signer, stranger, tmp_path):
    policy = policy_for([signed_by(signer)], tmp_path)
    publish(tmp_path / "sigs", IMAGE, DIGEST, [sign(stranger), sign(signer)])
    check(policy, tmp_path)
    publish(tmp_path / "sigs", IMAGE, DIGEST, [sign(stranger)])
    assert "unknown key" in refused(policy, tmp_path)


def test_signature_for_another_manifest_is_refused(signer, tmp_path):
    """A good signature of another image replayed under this image's digest."""
    policy = policy_for([signed_by(signer)], tmp_path)
    publish(tmp_path / "sigs", IMAGE, DIGEST, [sign(signer, digest=OTHER_DIGEST)])
    message = refused(policy, tmp_path)
    assert "digest mismatch" in message and OTHER_DIGEST in message


def test_identity_mismatch_is_refused(signer, tmp_path):
    policy = policy_for([signed_by(signer)], tmp_path)
    publish(tmp_path / "sigs", IMAGE, DIGEST, [sign(signer, identity="registry.test:5000/team/app:v2")])
    assert "identity mismatch" in refused(policy, tmp_path)


@pytest.mark.parametrize("identity,signed_as,image,accepted", [
    ({"type": "matchRepoDigestOrExact"}, "registry.test:5000/team/app:v1", IMAGE, True),
    ({"type": "matchRepoDigestOrExact"}, "registry.test:5000/team/app:v1", f"registry.test:5000/team/app@{DIGEST}", True),
    ({"type": "matchExact"}, "registry.test:5000/team/app:v1", f"registry.test:5000/team/app@{DIGEST}", False),
    ({"type": "matchRepository"}, "registry.test:5000/team/app:old", IMAGE, True),
    ({"type": "exactReference", "dockerReference": "vendor.test/app:1"}, "vendor.test/app:1", IMAGE, True),
    ({"type": "exactRepository", "dockerRepository": "vendor.test/app"}, "vendor.test/app:9", IMAGE, True),
    ({"type": "exactRepository", "dockerRepository": "vendor.test/app"}, "vendor.test/other:9", IMAGE, False),
    ({"type": "remapIdentity", "prefix": "registry.test:5000/team", "signedPrefix": "vendor.test/products"},
     "vendor.test/products/app:v1", IMAGE, True),
])
def test_each_signed_identity_mode(signer, tmp_path, identity, signed_as, image, accepted):
    policy = policy_for([signed_by(signer, identity)], tmp_path)
    publish(tmp_path / "sigs", image, DIGEST, [sign(signer, identity=signed_as)])
    if accepted:
        check(policy, tmp_path, image)
    else:
        assert "identity mismatch" in refused(policy, tmp_path, image)


def test_every_requirement_must_hold(signer, tmp_path):
    publish(tmp_path / "sigs", IMAGE, DIGEST, [sign(signer)])
    check(policy_for([{"type": "insecureAcceptAnything"}, signed_by(signer)], tmp_path), tmp_path)
    message = refused(policy_for([signed_by(signer), {"type": "reject"}], tmp_path), tmp_path)
    assert "rejected by policy" in message


def test_reject_and_accept_need_no_signatures(tmp_path):
    assert "rejected by policy" in refused(policy_for([{"type": "reject"}], tmp_path), tmp_path)
    check(policy_for([{"type": "insecureAcceptAnything"}], tmp_path), tmp_path)
    # The default applies outside the scope.
    assert "(default)" in refused(policy_for([{"type": "insecureAcceptAnything"}], tmp_path), tmp_path,
                                  "other.test/app:v1")


def test_unreadable_key_file_is_refused_with_its_name(tmp_path):
    missing = tmp_path / "nokey.gpg"
    policy = policy_for([{"type": "signedBy", "keyType": "GPGKeys", "keyPath": str(missing)}], tmp_path)
    publish(tmp_path / "sigs", IMAGE, DIGEST, [b"whatever"])
    assert str(missing) in refused(policy, tmp_path)


def test_namespace_policy_overrides_the_node_policy(tmp_path):
    node = tmp_path / "node.json"
    node.write_text(json.dumps({"default": [{"type": "insecureAcceptAnything"}]}))
    namespaces = tmp_path / "policies"
    write(namespaces / "strict.json", json.dumps({"default": [{"type": "reject"}]}))
    write(namespaces / "broken.json", "{")
    policies = SignaturePolicies.load(str(node), str(namespaces))
    assert policies.for_namespace("") is policies.node
    assert policies.for_namespace("other") is policies.node
    assert policies.for_namespace("strict").source == str(namespaces / "strict.json")
    with pytest.raises(FailedPrecondition, match="broken.json"):
        policies.for_namespace("broken")
    with pytest.raises(InvalidArgument, match="namespace"):
        policies.for_namespace("../etc")
    assert SignaturePolicies.load("", "").for_namespace("strict") is None


def test_import_without_a_name_or_a_manifest(signer, tmp_path):
    strict = policy_for([signed_by(signer)], tmp_path, default=[signed_by(signer)])
    with pytest.raises(FailedPrecondition, match="without a name"):
        asyncio.run(enforce_import(strict, [], MANIFEST, registries_d=""))
    with pytest.raises(SignatureValidationFailed, match="docker-archive"):
        asyncio.run(enforce_import(strict, [IMAGE], None, registries_d=""))
    relaxed = policy_for([{"type": "insecureAcceptAnything"}], tmp_path,
                         default=[{"type": "insecureAcceptAnything"}])
    asyncio.run(enforce_import(relaxed, [], None, registries_d=""))
    asyncio.run(enforce_import(relaxed, [IMAGE], None, registries_d=""))
    # Every name must pass: one refused name refuses the image.
    publish(tmp_path / "sigs", IMAGE, DIGEST, [sign(signer)])
    registries_d = tmp_path / "registries.d"
    write(registries_d / "sigs.yaml", f"default-docker:\n  lookaside: {(tmp_path / 'sigs').as_uri()}\n")
    asyncio.run(enforce_import(strict, [IMAGE], MANIFEST, registries_d=str(registries_d)))
    with pytest.raises(SignatureValidationFailed, match="no signature"):
        asyncio.run(enforce_import(strict, [IMAGE, "registry.test:5000/team/other:v1"], MANIFEST,
                                   registries_d=str(registries_d)))


def test_unusable_registries_d_or_unreachable_lookaside_fail_the_pull(signer, tmp_path):
    policy = policy_for([signed_by(signer)], tmp_path)
    broken = tmp_path / "broken.d"
    write(broken / "bad.yaml", "default-docker: [\n")
    with pytest.raises(FailedPrecondition, match="bad.yaml") as caught:
        asyncio.run(enforce(policy, parse_reference(IMAGE), MANIFEST, DIGEST, registries_d=str(broken)))
    assert not isinstance(caught.value, SignatureValidationFailed)
    # Nothing listens on port 1 of 127.0.0.1: a store that cannot be reached is UNAVAILABLE, not a verdict.
    closed = tmp_path / "closed.d"
    write(closed / "a.yaml", "default-docker:\n  lookaside: http://127.0.0.1:1/sigs\n")
    with pytest.raises(Unavailable, match="reading signatures"):
        asyncio.run(enforce(policy, parse_reference(IMAGE), MANIFEST, DIGEST, registries_d=str(closed)))
