"""Sigstore (cosign) signatures: read from the registry as attachments, and verified.

Attachments are cosign's layout: the signatures of manifest ``sha256:HEX`` of
a repository are the layers of the image manifest tagged ``sha256-HEX.sig``
in that same repository. A layer of media type
``application/vnd.dev.cosign.simplesigning.v1+json`` is one signature: the
blob is the payload, the annotation ``dev.cosignproject.cosign/signature``
its base64 signature; keyless ones add the Fulcio leaf certificate, its chain
and the Rekor SET (signed entry timestamp) as annotations too.

The payload is cosign's simple signing JSON (``critical.type`` "cosign
container image signature", ``critical.image.docker-manifest-digest``,
``critical.identity.docker-reference``). A signature is verified as
containers/image does it:

* with public keys: one of the policy's keys (ECDSA with SHA-256, RSA
  PKCS#1 v1.5 with SHA-256, or Ed25519) verifies the signature over the
  payload bytes; with a Rekor key in the policy too, the SET must verify;
* with Fulcio: the Rekor SET is signed by the policy's Rekor key and its
  hashedrekord entry records this signature, this certificate and the
  payload's SHA-256; the certificate chains to one of the policy's CAs at the
  SET's time, allows code signing, names the policy's OIDC issuer and has
  the policy's email among its SAN emails; its key verifies the signature.

What the payload then claims (digest and identity) is checked by the caller,
:mod:`crio_fast.image.signatures`, as for GPG signatures.
"""

from __future__ import annotations

import base64
import binascii
import datetime
import hashlib
import json
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Sequence, Union

import rfc8785
from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, ExtensionOID

from crio_fast.image.manifest import Descriptor
from crio_fast.image.reference import InvalidReference, parse_digest
from crio_fast.image.registry_client import RegistryClient
from crio_fast.image.registry_errors import ManifestUnknown, UnsupportedManifest
from crio_fast.image.simple_signing import SignatureInvalid, SignedClaim, UnknownKey

SIGNATURE_MEDIA_TYPE = "application/vnd.dev.cosign.simplesigning.v1+json"
SIGNATURE_ANNOTATION = "dev.cosignproject.cosign/signature"
CERTIFICATE_ANNOTATION = "dev.sigstore.cosign/certificate"
CHAIN_ANNOTATION = "dev.sigstore.cosign/chain"
BUNDLE_ANNOTATION = "dev.sigstore.cosign/bundle"
SIGNATURE_TYPE = "cosign container image signature"
# Fulcio's OIDC issuer extensions: the legacy one holds the raw string, its successor a DER UTF8String.
OIDC_ISSUER_V1 = x509.ObjectIdentifier("1.3.6.1.4.1.57264.1.1")
OIDC_ISSUER_V2 = x509.ObjectIdentifier("1.3.6.1.4.1.57264.1.8")
HASHEDREKORD_API_VERSION = "0.0.1"
MAX_PAYLOAD_SIZE = 4 << 20
# Far more than any image carries (a payload is under a kilobyte): bounds what one attachment can make a
# pull fetch and hold.
MAX_ATTACHED_SIGNATURES = 64
MAX_ATTACHED_BYTES = 16 << 20
_MAX_CHAIN_DEPTH = 8

PublicKey = Union[ec.EllipticCurvePublicKey, rsa.RSAPublicKey, ed25519.Ed25519PublicKey]


class TrustInvalid(ValueError):
    """A key, CA or Rekor key the policy names that cannot be used; the message says which."""


@dataclass(frozen=True)
class SigstoreSignature:
    """One attached signature, untrusted: the payload and the annotations that vouch for it."""

    payload: bytes
    signature: str  # base64, as annotated
    certificate: bytes = b""  # PEM leaf (keyless)
    chain: bytes = b""  # PEM intermediates, then the root
    bundle: bytes = b""  # the Rekor SET, JSON


@dataclass(frozen=True)
class FulcioTrust:
    roots: tuple[x509.Certificate, ...]
    oidc_issuer: str
    subject_email: str


@dataclass(frozen=True)
class SigstoreTrust:
    """What a sigstoreSigned requirement trusts, loaded: public keys or Fulcio, and maybe a Rekor key."""

    public_keys: tuple[PublicKey, ...] = ()
    fulcio: FulcioTrust | None = None
    rekor_key: ec.EllipticCurvePublicKey | None = None


# -- loading the policy's trust -------------------------------------------------


def load_public_key(pem: bytes, what: str) -> PublicKey:
    try:
        key = serialization.load_pem_public_key(pem)
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise TrustInvalid(f"{what} is not a PEM public key") from exc
    if not isinstance(key, (ec.EllipticCurvePublicKey, rsa.RSAPublicKey, ed25519.Ed25519PublicKey)):
        raise TrustInvalid(f"{what}: only ECDSA, RSA and Ed25519 keys are supported")
    return key


def load_trust(public_keys: Sequence[bytes], ca: bytes | None, oidc_issuer: str, subject_email: str,
               rekor_key: bytes | None) -> SigstoreTrust:
    """The trust a requirement names, from PEM bytes; ``ca`` None means no Fulcio."""
    keys = tuple(load_public_key(k, f"public key {n}") for n, k in enumerate(public_keys, 1))
    fulcio = None
    if ca is not None:
        try:
            roots = tuple(x509.load_pem_x509_certificates(ca))
        except ValueError as exc:
            raise TrustInvalid("the Fulcio CA is not PEM certificates") from exc
        fulcio = FulcioTrust(roots, oidc_issuer, subject_email)
    rekor = None
    if rekor_key is not None:
        loaded = load_public_key(rekor_key, "the Rekor public key")
        if not isinstance(loaded, ec.EllipticCurvePublicKey):
            raise TrustInvalid("the Rekor public key must be an ECDSA key")
        rekor = loaded
    return SigstoreTrust(keys, fulcio, rekor)


# -- verification ---------------------------------------------------------------


def verify(signature: SigstoreSignature, trust: SigstoreTrust) -> SignedClaim:
    """What ``signature`` vouches for, once it verifies under ``trust``; else SignatureInvalid."""
    try:
        raw_signature = base64.b64decode(signature.signature, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise SignatureInvalid("the signature annotation is not base64") from exc
    if trust.fulcio is not None:
        if trust.rekor_key is None:
            raise SignatureInvalid("Fulcio trust needs a Rekor public key")
        if not signature.bundle:
            raise SignatureInvalid("no Rekor SET (annotation dev.sigstore.cosign/bundle)")
        if not signature.certificate:
            raise SignatureInvalid("no certificate (annotation dev.sigstore.cosign/certificate)")
        integrated = verify_rekor_set(trust.rekor_key, signature.bundle, _pem_body(signature.certificate, "certificate"),
                                      raw_signature, signature.payload)
        key = verify_fulcio_certificate(trust.fulcio, signature.certificate, signature.chain, integrated)
        if not _signed_with(key, raw_signature, signature.payload):
            raise SignatureInvalid("bad signature: the certificate's key does not verify it")
        fingerprint = "certificate " + _key_fingerprint(key)
    else:
        key = next((k for k in trust.public_keys if _signed_with(k, raw_signature, signature.payload)), None)
        if key is None:
            raise UnknownKey("signed by an unknown key, or the payload or signature was altered:"
                             " no key the policy trusts verifies it")
        if trust.rekor_key is not None:
            if not signature.bundle:
                raise SignatureInvalid("no Rekor SET (annotation dev.sigstore.cosign/bundle)")
            key_der = key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
            verify_rekor_set(trust.rekor_key, signature.bundle, key_der, raw_signature, signature.payload)
        fingerprint = _key_fingerprint(key)
    digest, reference = parse_payload(signature.payload)
    return SignedClaim(fingerprint, digest, reference)


def _key_fingerprint(key: PublicKey) -> str:
    der = key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return "sha256:" + hashlib.sha256(der).hexdigest()[:16]


def _signed_with(key: PublicKey, signature: bytes, payload: bytes) -> bool:
    try:
        if isinstance(key, ec.EllipticCurvePublicKey):
            key.verify(signature, payload, ec.ECDSA(hashes.SHA256()))
        elif isinstance(key, rsa.RSAPublicKey):
            key.verify(signature, payload, padding.PKCS1v15(), hashes.SHA256())
        else:
            key.verify(signature, payload)
    except (InvalidSignature, ValueError):
        return False
    return True


def parse_payload(payload: bytes) -> tuple[str, str]:
    """(manifest digest, docker reference) of a cosign simple signing payload; strict, as containers/image."""
    if len(payload) > MAX_PAYLOAD_SIZE:
        raise SignatureInvalid(f"payload larger than {MAX_PAYLOAD_SIZE} bytes")
    try:
        document = json.loads(payload, object_pairs_hook=_no_duplicates)
    except (ValueError, RecursionError) as exc:
        raise SignatureInvalid(f"payload is not valid JSON: {exc}") from exc
    document = _exact_fields(document, {"critical", "optional"}, "payload")
    optional = document["optional"]
    if optional is not None and not isinstance(optional, dict):
        raise SignatureInvalid("payload: optional must be an object or null")
    critical = _exact_fields(document["critical"], {"type", "image", "identity"}, "payload critical")
    if critical["type"] != SIGNATURE_TYPE:
        raise SignatureInvalid(f"payload: unrecognized signature type {critical['type']!r}")
    image = _exact_fields(critical["image"], {"docker-manifest-digest"}, "payload critical.image")
    identity = _exact_fields(critical["identity"], {"docker-reference"}, "payload critical.identity")
    digest, reference = image["docker-manifest-digest"], identity["docker-reference"]
    if not isinstance(digest, str) or not isinstance(reference, str):
        raise SignatureInvalid("payload: docker-manifest-digest and docker-reference must be strings")
    try:
        parse_digest(digest)
    except InvalidReference as exc:
        raise SignatureInvalid(f"payload: invalid docker-manifest-digest {digest!r}") from exc
    return digest, reference


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise SignatureInvalid(f"field {key!r} appears twice")
        result[key] = value
    return result


def _exact_fields(value: Any, fields: set[str], where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise SignatureInvalid(f"{where} is not a JSON object")
    if set(value) != fields:
        raise SignatureInvalid(f"{where} has fields {sorted(value)}, not {sorted(fields)}")
    return value


# -- Rekor SET ------------------------------------------------------------------


def verify_rekor_set(rekor_key: ec.EllipticCurvePublicKey, bundle: bytes, key_or_cert_der: bytes,
                     signature: bytes, payload: bytes) -> datetime.datetime:
    """When Rekor logged this signature, once the SET verifies and its entry matches; else SignatureInvalid.

    ``key_or_cert_der`` is what the entry must record as the signer: the DER of the public key or certificate."""
    try:
        document = json.loads(bundle, object_pairs_hook=_no_duplicates)
    except (ValueError, RecursionError) as exc:
        raise SignatureInvalid(f"Rekor SET is not valid JSON: {exc}") from exc
    document = _exact_fields(document, {"SignedEntryTimestamp", "Payload"}, "Rekor SET")
    try:
        timestamp = base64.b64decode(document["SignedEntryTimestamp"], validate=True)
    except (binascii.Error, ValueError, TypeError) as exc:
        raise SignatureInvalid("Rekor SET: SignedEntryTimestamp is not base64") from exc
    try:
        canonical = canonical_json(document["Payload"])
    except (ValueError, RecursionError) as exc:
        raise SignatureInvalid(f"Rekor SET: payload cannot be canonicalized: {exc}") from exc
    try:
        rekor_key.verify(timestamp, canonical, ec.ECDSA(hashes.SHA256()))
    except InvalidSignature:
        raise SignatureInvalid("Rekor SET invalid: not signed by the policy's Rekor key") from None
    # Read back from the bytes that were verified, not from what was delivered.
    entry = _exact_fields(json.loads(canonical), {"body", "integratedTime", "logIndex", "logID"}, "Rekor SET payload")
    integrated = entry["integratedTime"]
    if not isinstance(integrated, int) or isinstance(integrated, bool):
        raise SignatureInvalid("Rekor SET: integratedTime is not an integer")
    _match_hashedrekord(entry["body"], key_or_cert_der, signature, payload)
    try:
        return datetime.datetime.fromtimestamp(integrated, datetime.timezone.utc)
    except (OverflowError, OSError, ValueError) as exc:
        raise SignatureInvalid(f"Rekor SET: integratedTime {integrated} is out of range") from exc


def _match_hashedrekord(body: Any, key_or_cert_der: bytes, signature: bytes, payload: bytes) -> None:
    if not isinstance(body, str):
        raise SignatureInvalid("Rekor SET: body is not a string")
    try:
        entry = json.loads(base64.b64decode(body, validate=True))
    except (binascii.Error, ValueError, RecursionError) as exc:
        raise SignatureInvalid("Rekor SET: body is not base64 JSON") from exc
    if not isinstance(entry, dict) or entry.get("kind") != "hashedrekord":
        raise SignatureInvalid("Rekor SET: the entry is not a hashedrekord")
    if entry.get("apiVersion") != HASHEDREKORD_API_VERSION:
        raise SignatureInvalid(f"Rekor SET: unsupported hashedrekord version {entry.get('apiVersion')!r}")
    spec = entry.get("spec")
    recorded_signature = spec.get("signature") if isinstance(spec, dict) else None
    data = spec.get("data") if isinstance(spec, dict) else None
    if not isinstance(recorded_signature, dict) or not isinstance(data, dict):
        raise SignatureInvalid("Rekor SET: hashedrekord lacks signature or data")
    recorded_key = recorded_signature.get("publicKey")
    content = recorded_key.get("content") if isinstance(recorded_key, dict) else None
    try:
        recorded_pem = base64.b64decode(content or "", validate=True)
        recorded_content = base64.b64decode(recorded_signature.get("content") or "", validate=True)
    except (binascii.Error, ValueError, TypeError) as exc:
        raise SignatureInvalid("Rekor SET: hashedrekord signature fields are not base64") from exc
    if _pem_body(recorded_pem, "the hashedrekord's publicKey") != key_or_cert_der:
        raise SignatureInvalid("Rekor SET does not match: it records another key or certificate")
    if recorded_content != signature:
        raise SignatureInvalid("Rekor SET does not match: it records another signature")
    digest = data.get("hash")
    if not isinstance(digest, dict) or digest.get("algorithm") != "sha256" or not isinstance(digest.get("value"), str):
        raise SignatureInvalid("Rekor SET: hashedrekord data.hash must be a sha256 value")
    if digest["value"].lower() != hashlib.sha256(payload).hexdigest():
        raise SignatureInvalid("Rekor SET does not match: it records another payload")


def _pem_body(pem: bytes, what: str) -> bytes:
    """The DER inside exactly one PEM block (its type and headers are not compared, as in containers/image)."""
    text = pem.decode("ascii", errors="replace").strip()
    lines = text.splitlines()
    if len(lines) < 2 or not lines[0].startswith("-----BEGIN ") or not lines[-1].startswith("-----END "):
        raise SignatureInvalid(f"{what} is not one PEM block")
    if any(line.startswith("-----") for line in lines[1:-1]):
        raise SignatureInvalid(f"{what} holds more than one PEM block")
    body = "".join(line.strip() for line in lines[1:-1] if ":" not in line)
    try:
        return base64.b64decode(body, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise SignatureInvalid(f"{what} is not valid PEM") from exc


def canonical_json(value: Any) -> bytes:
    """RFC 8785 (JCS) canonical form, which Rekor signs its entries' timestamps over."""
    return rfc8785.dumps(value)


# -- Fulcio ---------------------------------------------------------------------


def verify_fulcio_certificate(trust: FulcioTrust, leaf_pem: bytes, chain_pem: bytes,
                              at: datetime.datetime) -> PublicKey:
    """The leaf's public key, once it chains to a trusted CA at ``at`` and names the wanted issuer and email."""
    try:
        leaves = x509.load_pem_x509_certificates(leaf_pem)
    except ValueError as exc:
        raise SignatureInvalid("the certificate annotation is not a PEM certificate") from exc
    if len(leaves) != 1:
        raise SignatureInvalid(f"the certificate annotation holds {len(leaves)} certificates, not one")
    leaf = leaves[0]
    intermediates: list[x509.Certificate] = []
    if chain_pem:
        try:
            chain = x509.load_pem_x509_certificates(chain_pem)
        except ValueError as exc:
            raise SignatureInvalid("the chain annotation is not PEM certificates") from exc
        # Its last certificate is the root, which only the policy may supply.
        intermediates = chain[:-1]
    try:
        _check_chain(leaf, intermediates, trust.roots, at)
        issuer = oidc_issuer(leaf)
        if issuer != trust.oidc_issuer:
            raise SignatureInvalid(f"wrong OIDC issuer: the certificate names {issuer!r}, not {trust.oidc_issuer!r}")
        emails = subject_emails(leaf)
        if trust.subject_email not in emails:
            raise SignatureInvalid(f"wrong email: the certificate is for {emails}, not {trust.subject_email!r}")
        key = leaf.public_key()
    except (ValueError, UnsupportedAlgorithm) as exc:
        # cryptography parses extensions and keys when first asked for them.
        raise SignatureInvalid(f"malformed certificate: {exc}") from exc
    if not isinstance(key, (ec.EllipticCurvePublicKey, rsa.RSAPublicKey, ed25519.Ed25519PublicKey)):
        raise SignatureInvalid("the certificate's key is not ECDSA, RSA or Ed25519")
    return key


def _valid_at(cert: x509.Certificate, at: datetime.datetime) -> bool:
    return cert.not_valid_before_utc <= at <= cert.not_valid_after_utc


# Critical extensions checked here; a certificate with any other critical one is refused, as Go's verifier
# does (name constraints included: they are not enforced here, so a CA that has them is not trusted).
_HANDLED_CRITICAL = frozenset({
    ExtensionOID.BASIC_CONSTRAINTS, ExtensionOID.KEY_USAGE, ExtensionOID.EXTENDED_KEY_USAGE,
    ExtensionOID.SUBJECT_ALTERNATIVE_NAME, ExtensionOID.SUBJECT_KEY_IDENTIFIER, ExtensionOID.AUTHORITY_KEY_IDENTIFIER,
})


def _critical_extensions_handled(cert: x509.Certificate) -> bool:
    return all(not e.critical or e.oid in _HANDLED_CRITICAL for e in cert.extensions)


def _can_issue(cert: x509.Certificate, intermediates_below: int) -> bool:
    """Whether ``cert`` is a CA that may sign a path with ``intermediates_below`` CAs under it."""
    try:
        constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        return False
    if not constraints.ca:
        return False
    if constraints.path_length is not None and intermediates_below > constraints.path_length:
        return False
    if not _critical_extensions_handled(cert):
        return False
    try:
        usage = cert.extensions.get_extension_for_class(x509.KeyUsage).value
    except x509.ExtensionNotFound:
        return True
    return usage.key_cert_sign


def _allows_code_signing(cert: x509.Certificate) -> bool:
    """An extended key usage, where present, must allow code signing (anywhere on the path, as Go checks)."""
    try:
        usages = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except x509.ExtensionNotFound:
        return True
    return ExtendedKeyUsageOID.CODE_SIGNING in usages or ExtendedKeyUsageOID.ANY_EXTENDED_KEY_USAGE in usages


def _issued_by(cert: x509.Certificate, issuer: x509.Certificate) -> bool:
    try:
        cert.verify_directly_issued_by(issuer)
    except (ValueError, TypeError, InvalidSignature, UnsupportedAlgorithm):
        return False
    return True


def _check_chain(leaf: x509.Certificate, intermediates: Sequence[x509.Certificate],
                 roots: Sequence[x509.Certificate], at: datetime.datetime) -> None:
    if not _valid_at(leaf, at):
        raise SignatureInvalid(f"certificate not valid at the Rekor time {at:%Y-%m-%dT%H:%M:%SZ} (valid"
                               f" {leaf.not_valid_before_utc:%Y-%m-%dT%H:%M:%SZ} to"
                               f" {leaf.not_valid_after_utc:%Y-%m-%dT%H:%M:%SZ})")
    if not _allows_code_signing(leaf):
        raise SignatureInvalid("certificate not chained: it does not allow code signing")
    if not _critical_extensions_handled(leaf):
        raise SignatureInvalid("certificate not chained: it has a critical extension that is not understood")

    def usable_issuer(candidate: x509.Certificate, cert: x509.Certificate, depth: int) -> bool:
        return (_can_issue(candidate, depth) and _valid_at(candidate, at) and _allows_code_signing(candidate)
                and _issued_by(cert, candidate))

    def reaches_root(cert: x509.Certificate, depth: int, seen: tuple[bytes, ...]) -> bool:
        """``depth``: how many intermediates lie between ``cert`` (included, when it is one) and the leaf."""
        if any(usable_issuer(root, cert, depth) for root in roots):
            return True
        if depth >= _MAX_CHAIN_DEPTH:
            return False
        for candidate in intermediates:
            fingerprint = candidate.fingerprint(hashes.SHA256())
            if fingerprint not in seen and usable_issuer(candidate, cert, depth):
                if reaches_root(candidate, depth + 1, seen + (fingerprint,)):
                    return True
        return False

    if not reaches_root(leaf, 0, ()):
        raise SignatureInvalid("certificate not chained to the policy's Fulcio CA (at the Rekor time)")


def oidc_issuer(cert: x509.Certificate) -> str:
    """The OIDC issuer Fulcio recorded in ``cert``; the newer extension wins when both are there."""
    for oid, is_der in ((OIDC_ISSUER_V2, True), (OIDC_ISSUER_V1, False)):
        try:
            extension = cert.extensions.get_extension_for_oid(oid)
        except x509.ExtensionNotFound:
            continue
        raw = extension.value.value if isinstance(extension.value, x509.UnrecognizedExtension) else b""
        if is_der:
            return _der_utf8_string(raw)
        return raw.decode("utf-8", errors="replace")
    raise SignatureInvalid("wrong OIDC issuer: the certificate records none")


def _der_utf8_string(raw: bytes) -> str:
    # Tag 0x0c, then a DER length (short form, or long form of one or two bytes).
    if len(raw) < 2 or raw[0] != 0x0C:
        raise SignatureInvalid("the certificate's OIDC issuer extension is not a UTF8String")
    length, start = raw[1], 2
    if length & 0x80:
        size = length & 0x7F
        if size not in (1, 2) or len(raw) < 2 + size:
            raise SignatureInvalid("the certificate's OIDC issuer extension has a bad length")
        length, start = int.from_bytes(raw[2:2 + size], "big"), 2 + size
    if len(raw) != start + length:
        raise SignatureInvalid("the certificate's OIDC issuer extension has a bad length")
    try:
        return raw[start:].decode("utf-8")
    except UnicodeDecodeError as exc:
        raise SignatureInvalid("the certificate's OIDC issuer is not UTF-8") from exc


def subject_emails(cert: x509.Certificate) -> list[str]:
    try:
        names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    return list(names.get_values_for_type(x509.RFC822Name))


# -- attachments ----------------------------------------------------------------


def attachment_tag(manifest_digest: str) -> str:
    """The tag cosign stores the signatures of ``manifest_digest`` under."""
    algorithm, hex_part = parse_digest(manifest_digest)
    return f"{algorithm}-{hex_part}.sig"


async def read_attachments(client: RegistryClient, repository: str, manifest_digest: str) -> list[SigstoreSignature]:
    """The signatures attached to ``manifest_digest`` in ``repository``; [] when there is none.

    Registry errors other than a missing tag propagate (RegistryError)."""
    try:
        manifest = await client.get_manifest(repository, attachment_tag(manifest_digest))
    except ManifestUnknown:
        return []
    except UnsupportedManifest as exc:
        raise SignatureInvalid(f"the signature attachment {attachment_tag(manifest_digest)} is not an image"
                               f" manifest: {exc}") from exc
    if manifest.is_index:
        raise SignatureInvalid(f"the signature attachment {attachment_tag(manifest_digest)} is an index")
    layers = [layer for layer in manifest.layers if layer.media_type == SIGNATURE_MEDIA_TYPE][:MAX_ATTACHED_SIGNATURES]
    if sum(layer.size for layer in layers) > MAX_ATTACHED_BYTES:
        raise SignatureInvalid(f"the signature attachment {attachment_tag(manifest_digest)} holds more than"
                               f" {MAX_ATTACHED_BYTES} bytes of payloads")
    return [await _read_signature(client, repository, layer) for layer in layers]


class _PayloadCache:
    """Payload blobs by digest, the most recently used kept. A blob is content-addressed: the bytes
    read once are the bytes of every later pull, so a warm pull costs the attachment's manifest only
    (which is asked each time: signatures may have been added or removed)."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._size = 0
        self._blobs: OrderedDict[str, bytes] = OrderedDict()

    def get(self, digest: str) -> bytes | None:
        blob = self._blobs.get(digest)
        if blob is not None:
            self._blobs.move_to_end(digest)
        return blob

    def put(self, digest: str, blob: bytes) -> None:
        if digest in self._blobs or len(blob) > self.max_bytes:
            return
        self._blobs[digest] = blob
        self._size += len(blob)
        while self._size > self.max_bytes:
            self._size -= len(self._blobs.popitem(last=False)[1])


# Payloads are a few hundred bytes each (one JSON claim): this holds thousands.
payload_cache = _PayloadCache(4 << 20)


async def _read_signature(client: RegistryClient, repository: str, layer: Descriptor) -> SigstoreSignature:
    if layer.size > MAX_PAYLOAD_SIZE:
        raise SignatureInvalid(f"signature payload {layer.digest} is {layer.size} bytes, more than"
                               f" {MAX_PAYLOAD_SIZE}")
    payload = payload_cache.get(layer.digest)
    if payload is None:
        payload = await client.get_blob_bytes(repository, layer.digest, MAX_PAYLOAD_SIZE)  # digest-checked there
        if len(payload) == layer.size:
            payload_cache.put(layer.digest, payload)
    if len(payload) != layer.size:
        raise SignatureInvalid(f"signature payload {layer.digest} is {len(payload)} bytes, its descriptor says"
                               f" {layer.size}")
    annotations = layer.annotations

    def text(key: str) -> str:
        value = annotations.get(key, "")
        return value if isinstance(value, str) else ""

    return SigstoreSignature(payload, text(SIGNATURE_ANNOTATION), text(CERTIFICATE_ANNOTATION).encode(),
                             text(CHAIN_ANNOTATION).encode(), text(BUNDLE_ANNOTATION).encode())


__all__ = [
    "SIGNATURE_MEDIA_TYPE",
    "FulcioTrust",
    "SigstoreSignature",
    "SigstoreTrust",
    "TrustInvalid",
    "attachment_tag",
    "canonical_json",
    "load_public_key",
    "load_trust",
    "oidc_issuer",
    "parse_payload",
    "read_attachments",
    "subject_emails",
    "verify",
    "verify_fulcio_certificate",
    "verify_rekor_set",
]
