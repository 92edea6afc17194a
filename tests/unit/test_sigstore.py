"""Sigstore (cosign) signatures without a registry: payloads, public keys, Fulcio certificates, Rekor SETs,
canonical JSON, registries.d's use-sigstore-attachments, and the policy's verdict when none can be read."""

from __future__ import annotations

import asyncio
import base64
import datetime
import hashlib
import json
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa

from crio_fast.image.lookaside import RegistriesD, RegistriesDError
from crio_fast.image.policy import Policy
from crio_fast.image.reference import parse_reference
from crio_fast.image.signatures import SignatureValidationFailed, enforce
from crio_fast.image.simple_signing import SignatureInvalid, UnknownKey
from crio_fast.image.sigstore import (
    SigstoreSignature,
    TrustInvalid,
    attachment_tag,
    canonical_json,
    load_trust,
    parse_payload,
    verify,
)
from tests.support.signing import (
    FULCIO_ISSUER_V1,
    AttachedSignature,
    CosignKey,
    TestFulcio,
    TestRekor,
    cosign_payload,
    sign_cosign,
    sign_keyless,
)

MANIFEST = b'{"schemaVersion": 2, "layers": []}'
DIGEST = "sha256:" + hashlib.sha256(MANIFEST).hexdigest()
IMAGE = "registry.test:5000/team/app:v1"
ISSUER = "https://oidc.example.test"
EMAIL = "builder@example.test"


@pytest.fixture(scope="module")
def key() -> CosignKey:
    return CosignKey()


def untrusted(attached: AttachedSignature) -> SigstoreSignature:
    """What read_attachments would hand over for ``attached``."""
    annotations = attached.annotations()
    return SigstoreSignature(attached.payload, annotations["dev.cosignproject.cosign/signature"],
                             attached.certificate, attached.chain, attached.bundle)


def keyless_trust(fulcio: TestFulcio, rekor: TestRekor, *, issuer: str = ISSUER, email: str = EMAIL):
    return load_trust([], fulcio.root_pem(), issuer, email, rekor.public_pem())


def key_trust(*keys: bytes, rekor: TestRekor | None = None):
    return load_trust(list(keys), None, "", "", rekor.public_pem() if rekor else None)


def invalid(signature: AttachedSignature, trust) -> str:
    with pytest.raises(SignatureInvalid) as caught:
        verify(untrusted(signature), trust)
    return str(caught.value)


# -- payloads -------------------------------------------------------------------


def test_payload_is_read_strictly():
    assert parse_payload(cosign_payload(DIGEST, IMAGE)) == (DIGEST, IMAGE)
    good = json.loads(cosign_payload(DIGEST, IMAGE))
    assert parse_payload(json.dumps({**good, "optional": {"creator": "x", "anything": 1}}).encode()) == (DIGEST, IMAGE)

    def refused(document: object, expect: str) -> None:
        with pytest.raises(SignatureInvalid, match=expect):
            parse_payload(json.dumps(document).encode() if not isinstance(document, bytes) else document)

    critical = good["critical"]
    refused({**good, "critical": {**critical, "type": "atomic container signature"}}, "unrecognized signature type")
    refused({**good, "critical": {**critical, "extra": 1}}, "critical has fields")
    refused({"critical": critical}, "payload has fields")
    refused({**good, "critical": {**critical, "image": {"docker-manifest-digest": "sha256:short"}}}, "invalid docker")
    refused({**good, "critical": {**critical, "identity": {"docker-reference": 5}}}, "must be strings")
    refused(b'{"critical": {}, "critical": {}, "optional": null}', "appears twice")
    refused(b"not json", "not valid JSON")


def test_attachment_tag_is_cosigns():
    assert attachment_tag(DIGEST) == f"sha256-{DIGEST.split(':')[1]}.sig"


# -- canonical JSON -------------------------------------------------------------


def test_canonical_json_is_rfc8785():
    assert canonical_json({"b": [1, True, None], "a": {"d": "x", "c": 2}}) == b'{"a":{"c":2,"d":"x"},"b":[1,true,null]}'
    # Keys sort by UTF-16 code units: a character outside the BMP (a surrogate pair, 0xD83D...) before U+FFFF.
    assert canonical_json({"\uffff": 1, "\U0001f600": 2}) == '{"\U0001f600":2,"\uffff":1}'.encode()
    # Non-ASCII stays as UTF-8; only quotes, backslashes and control characters are escaped.
    assert canonical_json(["é\"\\\n\x01"]) == '["é\\"\\\\\\n\\u0001"]'.encode()
    # Numbers as ECMAScript prints them; what JSON numbers cannot hold exactly is an error.
    numbers = [100.0, 1e21, 1e20, 1e-7, 0.000001, 123.456, -0.5, 0.0, 2**53 - 1]
    assert canonical_json(numbers) == b"[100,1e+21,100000000000000000000,1e-7,0.000001,123.456,-0.5,0," \
                                      b"9007199254740991]"
    for bad in (float("nan"), 10**30):
        with pytest.raises(ValueError):
            canonical_json(bad)


# -- public keys ----------------------------------------------------------------


def test_key_signature_verifies_and_says_what_it_vouches_for(key):
    claim = verify(untrusted(sign_cosign(key, DIGEST, IMAGE)), key_trust(key.public_pem()))
    assert (claim.manifest_digest, claim.docker_reference) == (DIGEST, IMAGE)


def test_wrong_key_is_an_unknown_key_and_any_listed_key_will_do(key):
    stranger = CosignKey()
    signature = sign_cosign(stranger, DIGEST, IMAGE)
    with pytest.raises(UnknownKey, match="unknown key"):
        verify(untrusted(signature), key_trust(key.public_pem()))
    verify(untrusted(signature), key_trust(key.public_pem(), stranger.public_pem()))


def test_tampered_payload_or_signature_does_not_verify(key):
    signature = sign_cosign(key, DIGEST, IMAGE)
    tampered = AttachedSignature(cosign_payload(DIGEST, "registry.test:5000/team/evil:v1"), signature.signature)
    assert "unknown key" in invalid(tampered, key_trust(key.public_pem()))
    flipped = bytearray(signature.signature)
    flipped[-1] ^= 0x01
    assert "unknown key" in invalid(AttachedSignature(signature.payload, bytes(flipped)), key_trust(key.public_pem()))
    broken = SigstoreSignature(signature.payload, "not base64!")
    with pytest.raises(SignatureInvalid, match="not base64"):
        verify(broken, key_trust(key.public_pem()))


def test_rsa_and_ed25519_keys_are_accepted():
    payload = cosign_payload(DIGEST, IMAGE)
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ed_key = ed25519.Ed25519PrivateKey.generate()
    for private, signature in ((rsa_key, rsa_key.sign(payload, padding.PKCS1v15(), hashes.SHA256())),
                               (ed_key, ed_key.sign(payload))):
        pem = private.public_key().public_bytes(serialization.Encoding.PEM,
                                                serialization.PublicFormat.SubjectPublicKeyInfo)
        assert verify(untrusted(AttachedSignature(payload, signature)), key_trust(pem)).manifest_digest == DIGEST


def test_unusable_policy_keys_are_named():
    with pytest.raises(TrustInvalid, match="public key 2 is not a PEM public key"):
        load_trust([CosignKey().public_pem(), b"garbage"], None, "", "", None)
    with pytest.raises(TrustInvalid, match="Fulcio CA"):
        load_trust([], b"garbage", ISSUER, EMAIL, None)
    rsa_pem = rsa.generate_private_key(public_exponent=65537, key_size=2048).public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    with pytest.raises(TrustInvalid, match="Rekor public key must be an ECDSA"):
        load_trust([rsa_pem], None, "", "", rsa_pem)


# -- Rekor SETs -----------------------------------------------------------------


def test_key_signature_with_rekor_needs_a_matching_set(key, rekor):
    trust = key_trust(key.public_pem(), rekor=rekor)
    verify(untrusted(sign_cosign(key, DIGEST, IMAGE, rekor=rekor)), trust)
    assert "no Rekor SET" in invalid(sign_cosign(key, DIGEST, IMAGE), trust)
    assert "not signed by the policy's Rekor key" in invalid(sign_cosign(key, DIGEST, IMAGE, rekor=TestRekor()), trust)


def test_set_must_record_this_signature_key_and_payload(key, rekor):
    trust = key_trust(key.public_pem(), rekor=rekor)
    good = sign_cosign(key, DIGEST, IMAGE)
    other = sign_cosign(key, "sha256:" + "0" * 64, IMAGE)
    cases = {
        "another signature": TestRekor.hashedrekord(other.signature, key.public_pem(), good.payload),
        "another payload": TestRekor.hashedrekord(good.signature, key.public_pem(), other.payload),
        "another key or certificate": TestRekor.hashedrekord(good.signature, CosignKey().public_pem(), good.payload),
    }
    for expect, body in cases.items():
        attached = AttachedSignature(good.payload, good.signature, bundle=rekor.bundle(body))
        assert f"Rekor SET does not match: it records {expect}" in invalid(attached, trust)
    rekord = json.dumps({"apiVersion": "0.0.1", "kind": "rekord", "spec": {}}).encode()
    assert "not a hashedrekord" in invalid(AttachedSignature(good.payload, good.signature, bundle=rekor.bundle(rekord)),
                                           trust)


def test_set_payload_altered_after_signing_is_refused(key, rekor):
    signature = sign_cosign(key, DIGEST, IMAGE, rekor=rekor)
    bundle = json.loads(signature.bundle)
    bundle["Payload"]["integratedTime"] += 1
    altered = AttachedSignature(signature.payload, signature.signature, bundle=json.dumps(bundle).encode())
    assert "Rekor SET invalid" in invalid(altered, key_trust(key.public_pem(), rekor=rekor))
    bundle["Unexpected"] = 1
    extra = AttachedSignature(signature.payload, signature.signature, bundle=json.dumps(bundle).encode())
    assert "Rekor SET has fields" in invalid(extra, key_trust(key.public_pem(), rekor=rekor))


# -- Fulcio ---------------------------------------------------------------------


def test_keyless_signature_verifies_with_either_issuer_extension(fulcio, rekor):
    trust = keyless_trust(fulcio, rekor)
    for extension in ("1.3.6.1.4.1.57264.1.8", FULCIO_ISSUER_V1):
        attached = sign_keyless(fulcio, rekor, DIGEST, IMAGE, email=EMAIL, oidc_issuer=ISSUER,
                                issuer_extension=extension)
        claim = verify(untrusted(attached), trust)
        assert (claim.manifest_digest, claim.docker_reference) == (DIGEST, IMAGE)


def test_keyless_wrong_email_or_issuer_is_refused(fulcio, rekor):
    attached = sign_keyless(fulcio, rekor, DIGEST, IMAGE, email=EMAIL, oidc_issuer=ISSUER)
    assert "wrong email" in invalid(attached, keyless_trust(fulcio, rekor, email="someone@example.test"))
    assert "wrong OIDC issuer" in invalid(attached, keyless_trust(fulcio, rekor, issuer="https://other.test"))


def test_keyless_certificate_must_chain_to_the_policy_ca(fulcio, rekor):
    attached = sign_keyless(fulcio, rekor, DIGEST, IMAGE, email=EMAIL, oidc_issuer=ISSUER)
    assert "not chained" in invalid(attached, keyless_trust(TestFulcio("Other"), rekor))
    # Without the intermediate the leaf reaches no root; a chain's own root is not trusted either.
    no_chain = AttachedSignature(attached.payload, attached.signature, attached.certificate, b"", attached.bundle)
    assert "not chained" in invalid(no_chain, keyless_trust(fulcio, rekor))
    other = TestFulcio("Impostor")
    forged = sign_keyless(other, rekor, DIGEST, IMAGE, email=EMAIL, oidc_issuer=ISSUER)
    assert "not chained" in invalid(forged, keyless_trust(fulcio, rekor))
    # Several CAs in the policy: any one will do.
    both = load_trust([], other.root_pem() + fulcio.root_pem(), ISSUER, EMAIL, rekor.public_pem())
    verify(untrusted(forged), both)
    verify(untrusted(attached), both)


def test_keyless_certificate_must_be_valid_at_the_rekor_time_and_for_code_signing(fulcio, rekor):
    trust = keyless_trust(fulcio, rekor)
    an_hour_ago = datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(hours=1)
    expired = sign_keyless(fulcio, rekor, DIGEST, IMAGE, email=EMAIL, oidc_issuer=ISSUER, at=an_hour_ago)
    assert "not valid at the Rekor time" in invalid(expired, trust)
    server = sign_keyless(fulcio, rekor, DIGEST, IMAGE, email=EMAIL, oidc_issuer=ISSUER, code_signing=False)
    assert "code signing" in invalid(server, trust)


def test_keyless_path_length_and_unknown_critical_extensions_are_refused(fulcio, rekor):
    trust = keyless_trust(fulcio, rekor)
    unknown = sign_keyless(fulcio, rekor, DIGEST, IMAGE, email=EMAIL, oidc_issuer=ISSUER,
                           extra_critical="1.3.6.1.4.1.99999.1")
    assert "critical extension" in invalid(unknown, trust)
    # The intermediate may sign no CA (path length 0): a CA it signed cannot vouch for a leaf.
    sub_key = ec.generate_private_key(ec.SECP256R1())
    sub = TestFulcio._ca("sub", sub_key, fulcio.intermediate_key, fulcio.intermediate)
    chain = sub.public_bytes(serialization.Encoding.PEM) + fulcio.chain_pem()
    too_deep = sign_keyless(fulcio, rekor, DIGEST, IMAGE, email=EMAIL, oidc_issuer=ISSUER, chain=chain,
                            by=(sub, sub_key))
    assert "not chained" in invalid(too_deep, trust)
    # The same leaf chains when the sub-CA is a direct child of a trusted root.
    direct = TestFulcio._ca("direct", sub_key, fulcio.root_key, fulcio.root)
    ok = sign_keyless(fulcio, rekor, DIGEST, IMAGE, email=EMAIL, oidc_issuer=ISSUER,
                      chain=direct.public_bytes(serialization.Encoding.PEM) + fulcio.root_pem(), by=(direct, sub_key))
    verify(untrusted(ok), trust)


def test_keyless_needs_certificate_and_set_and_a_signature_by_the_certificate(fulcio, rekor):
    trust = keyless_trust(fulcio, rekor)
    attached = sign_keyless(fulcio, rekor, DIGEST, IMAGE, email=EMAIL, oidc_issuer=ISSUER)
    assert "no Rekor SET" in invalid(AttachedSignature(attached.payload, attached.signature, attached.certificate,
                                                       attached.chain), trust)
    assert "no certificate" in invalid(AttachedSignature(attached.payload, attached.signature,
                                                         bundle=attached.bundle), trust)
    # A certificate logged together with a signature its key did not make.
    certificate, _ = fulcio.issue(EMAIL, ISSUER)
    stranger = CosignKey()
    signature = stranger.sign(attached.payload)
    bundle = rekor.bundle(TestRekor.hashedrekord(signature, certificate, attached.payload))
    mismatched = AttachedSignature(attached.payload, signature, certificate, fulcio.chain_pem(), bundle)
    assert "bad signature" in invalid(mismatched, trust)


# -- registries.d and the verdict -------------------------------------------------


def write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def test_use_sigstore_attachments_most_specific_scope_that_says_so(tmp_path):
    write(tmp_path / "a.yaml", "default-docker:\n  use-sigstore-attachments: true\n"
                               "docker:\n  registry.test:5000/team:\n    use-sigstore-attachments: false\n"
                               "  registry.test:5000/team/app:\n    lookaside: file:///sigs\n")
    config = RegistriesD.load(str(tmp_path))
    # team/app's section says nothing about attachments: team's does.
    assert not config.uses_sigstore_attachments(parse_reference(IMAGE))
    assert config.lookaside_for(parse_reference(IMAGE)) == "file:///sigs"
    assert config.uses_sigstore_attachments(parse_reference("registry.test:5000/other/app:v1"))
    assert not RegistriesD.load("").uses_sigstore_attachments(parse_reference(IMAGE))
    write(tmp_path / "bad" / "b.yaml", "default-docker:\n  use-sigstore-attachments: 'yes'\n")
    with pytest.raises(RegistriesDError, match="use-sigstore-attachments must be true or false"):
        RegistriesD.load(str(tmp_path / "bad"))


def sigstore_policy(tmp_path: Path, key: CosignKey) -> Policy:
    path = tmp_path / "policy.json"
    path.write_text(json.dumps({"default": [{"type": "reject"}], "transports": {"docker": {
        "registry.test:5000/team": [{"type": "sigstoreSigned",
                                     "keyData": base64.b64encode(key.public_pem()).decode()}]}}}))
    return Policy.load(str(path))


def test_without_attachments_a_sigstore_requirement_refuses(tmp_path, key):
    policy = sigstore_policy(tmp_path, key)
    registries_d = tmp_path / "registries.d"
    write(registries_d / "a.yaml", "default-docker:\n  use-sigstore-attachments: true\n")
    # An imported image: no registry to read attachments from.
    with pytest.raises(SignatureValidationFailed, match="not pulled from a registry"):
        asyncio.run(enforce(policy, parse_reference(IMAGE), MANIFEST, DIGEST, registries_d=str(registries_d)))


def test_unusable_policy_key_refuses_naming_the_requirement(tmp_path):
    path = tmp_path / "policy.json"
    path.write_text(json.dumps({"default": [{"type": "sigstoreSigned",
                                             "keyData": base64.b64encode(b"not a key").decode()}]}))
    with pytest.raises(SignatureValidationFailed, match='"sigstoreSigned": public key 1 is not a PEM public key'):
        asyncio.run(enforce(Policy.load(str(path)), parse_reference(IMAGE), MANIFEST, DIGEST, registries_d=""))
    path.write_text(json.dumps({"default": [{"type": "sigstoreSigned", "keyPath": str(tmp_path / "none.pub")}]}))
    with pytest.raises(SignatureValidationFailed, match="none.pub"):
        asyncio.run(enforce(Policy.load(str(path)), parse_reference(IMAGE), MANIFEST, DIGEST, registries_d=""))


def test_ecdsa_p384_keys_verify_with_sha256():
    private = ec.generate_private_key(ec.SECP384R1())
    payload = cosign_payload(DIGEST, IMAGE)
    pem = private.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    signature = private.sign(payload, ec.ECDSA(hashes.SHA256()))
    verify(untrusted(AttachedSignature(payload, signature)), key_trust(pem))


def test_payload_cache_is_bounded_in_bytes_and_keeps_the_most_recently_used():
    from crio_fast.image.sigstore import _PayloadCache

    cache = _PayloadCache(max_bytes=10)
    cache.put("a", b"1234")
    cache.put("b", b"5678")
    assert cache.get("a") == b"1234"  # now the most recently used
    cache.put("c", b"90ab")  # 12 bytes: the least recently used goes
    assert (cache.get("a"), cache.get("b"), cache.get("c")) == (b"1234", None, b"90ab")
    cache.put("huge", b"x" * 11)  # larger than the whole cache: not kept, nothing evicted for it
    assert (cache.get("huge"), cache.get("a"), cache.get("c")) == (None, b"1234", b"90ab")

