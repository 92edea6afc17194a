"""Signatures for tests: GPG simple signing made with Debian's gnupg and lookaside stores to serve it;
sigstore (cosign) signatures made with cryptography and pushed to a registry as attachments.

A :class:`GpgSigner` owns a private GNUPGHOME with one ed25519 key (no
passphrase); :meth:`GpgSigner.close` stops the gpg-agent that key generation
started and removes the directory. A :class:`LookasideServer` serves a
directory over HTTP on 127.0.0.1 from a thread.
"""

from __future__ import annotations

import base64
import datetime
import functools
import hashlib
import http.server
import json
import shutil
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from crio_fast.image.lookaside import signature_url
from crio_fast.image.reference import parse_reference
from tests.support.images import RegistryPusher


def gnupg_missing() -> str:
    """Why signatures cannot be made here, or ""."""
    for tool in ("gpg", "gpgv", "gpgconf"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (Debian packages gnupg and gpgv; scripts/install-deps --test)"
    return ""


class GpgSigner:
    def __init__(self, name: str = "Test Signer") -> None:
        self.home = Path(tempfile.mkdtemp(prefix="gpg-", dir="/tmp"))
        self.home.chmod(0o700)
        try:
            self._gpg("--quick-gen-key", f"{name} <signer@example.test>", "ed25519", "sign", "never")
            listing = self._gpg("--list-keys", "--with-colons").decode()
            self.fingerprint = next(line.split(":")[9] for line in listing.splitlines() if line.startswith("fpr:"))
        except BaseException:
            self.close()
            raise

    def _gpg(self, *args: str, data: bytes | None = None) -> bytes:
        result = subprocess.run(
            ["gpg", "--homedir", str(self.home), "--batch", "--quiet", "--pinentry-mode", "loopback",
             "--passphrase", "", *args],
            input=data, capture_output=True, timeout=60, check=False,
        )
        if result.returncode != 0:
            raise RuntimeError(f"gpg {' '.join(args)} failed: {result.stderr.decode(errors='replace')}")
        return result.stdout

    def public_key(self, armor: bool = False) -> bytes:
        return self._gpg("--export", *(["--armor"] if armor else []), self.fingerprint)

    def sign(self, payload: bytes) -> bytes:
        """A binary OpenPGP signed message holding ``payload``."""
        return self._gpg("--local-user", self.fingerprint, "--sign", data=payload)

    def close(self) -> None:
        subprocess.run(["gpgconf", "--homedir", str(self.home), "--kill", "gpg-agent"],
                       capture_output=True, timeout=30, check=False)
        shutil.rmtree(self.home, ignore_errors=True)


def simple_signing_payload(manifest_digest: str, docker_reference: str) -> bytes:
    return json.dumps({
        "critical": {"type": "atomic container signature",
                     "image": {"docker-manifest-digest": manifest_digest},
                     "identity": {"docker-reference": docker_reference}},
        "optional": {"creator": "crio-fast tests"},
    }).encode()


def publish(lookaside: Path, image: str, manifest_digest: str, signatures: list[bytes]) -> None:
    """Store ``signatures`` of ``image``'s manifest in the lookaside directory, replacing any there."""
    ref = parse_reference(image)
    for index in range(1, 100):
        path = Path(signature_url(lookaside.as_uri(), ref, manifest_digest, index).removeprefix("file://"))
        if index <= len(signatures):
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(signatures[index - 1])
        elif path.exists():
            path.unlink()
        else:
            break


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


class LookasideServer:
    """``directory`` served over HTTP on 127.0.0.1; ``url`` is its base, ``requests`` counts GETs."""

    def __init__(self, directory: Path) -> None:
        server = self

        class Handler(_QuietHandler):
            def do_GET(self) -> None:
                server.requests += 1
                super().do_GET()

        self.requests = 0
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0),
                                                     functools.partial(Handler, directory=str(directory)))
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, name="lookaside", daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(10)


# -- sigstore (cosign) --------------------------------------------------------
# Keys, a Fulcio-like CA and a Rekor-like log key made with cryptography, and cosign's attachment layout
# pushed to a real registry: the signatures of manifest sha256:HEX are layers of the manifest tagged
# sha256-HEX.sig in the image's repository.

COSIGN_SIGNATURE_MEDIA_TYPE = "application/vnd.dev.cosign.simplesigning.v1+json"
FULCIO_ISSUER_V1 = "1.3.6.1.4.1.57264.1.1"
FULCIO_ISSUER_V2 = "1.3.6.1.4.1.57264.1.8"


def cosign_payload(manifest_digest: str, docker_reference: str) -> bytes:
    return json.dumps({
        "critical": {"identity": {"docker-reference": docker_reference},
                     "image": {"docker-manifest-digest": manifest_digest},
                     "type": "cosign container image signature"},
        "optional": None,
    }).encode()


def _pem_public_key(key) -> bytes:

    return key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


class CosignKey:
    """An ECDSA P-256 key pair, as `cosign generate-key-pair` makes."""

    def __init__(self) -> None:

        self.private = ec.generate_private_key(ec.SECP256R1())

    def public_pem(self) -> bytes:
        return _pem_public_key(self.private)

    def sign(self, payload: bytes) -> bytes:

        return self.private.sign(payload, ec.ECDSA(hashes.SHA256()))


@dataclass
class AttachedSignature:
    """One layer of a cosign attachment manifest."""

    payload: bytes
    signature: bytes  # raw; base64-encoded into the annotation
    certificate: bytes = b""
    chain: bytes = b""
    bundle: bytes = b""

    def annotations(self) -> dict[str, str]:
        annotations = {"dev.cosignproject.cosign/signature": base64.b64encode(self.signature).decode()}
        for key, value in (("dev.sigstore.cosign/certificate", self.certificate),
                           ("dev.sigstore.cosign/chain", self.chain), ("dev.sigstore.cosign/bundle", self.bundle)):
            if value:
                annotations[key] = value.decode()
        return annotations


class TestFulcio:
    """A root CA and an intermediate, issuing short-lived code-signing certificates for an email and an
    OIDC issuer, as Fulcio does."""

    __test__ = False  # not a pytest class

    def __init__(self, name: str = "Test Fulcio") -> None:

        self.root_key = ec.generate_private_key(ec.SECP384R1())
        self.root = self._ca(f"{name} root", self.root_key, self.root_key, None)
        self.intermediate_key = ec.generate_private_key(ec.SECP384R1())
        self.intermediate = self._ca(f"{name} intermediate", self.intermediate_key, self.root_key, self.root)

    @staticmethod
    def _ca(name: str, key, signing_key, issuer):

        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        now = datetime.datetime.now(datetime.timezone.utc)
        builder = (x509.CertificateBuilder().subject_name(subject)
                   .issuer_name(issuer.subject if issuer is not None else subject)
                   .public_key(key.public_key()).serial_number(x509.random_serial_number())
                   .not_valid_before(now - datetime.timedelta(days=365)).not_valid_after(now + datetime.timedelta(days=365))
                   .add_extension(x509.BasicConstraints(ca=True, path_length=None if issuer is None else 0), critical=True)
                   .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True))
        if issuer is not None:
            builder = builder.add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CODE_SIGNING]), critical=False)
        return builder.sign(signing_key, hashes.SHA384())

    def root_pem(self) -> bytes:

        return self.root.public_bytes(serialization.Encoding.PEM)

    def chain_pem(self) -> bytes:
        """The chain annotation: the intermediate, then the root."""

        return (self.intermediate.public_bytes(serialization.Encoding.PEM)
                + self.root.public_bytes(serialization.Encoding.PEM))

    def issue(self, email: str, oidc_issuer: str, *, at: datetime.datetime | None = None,
              lifetime: datetime.timedelta = datetime.timedelta(minutes=10), issuer_extension: str = FULCIO_ISSUER_V2,
              code_signing: bool = True, extra_critical: str = "", by=None):
        """(leaf PEM, its private key) valid from ``at`` (now) for ``lifetime``, issued by the intermediate or
        ``by`` (a (certificate, key) pair); ``extra_critical`` adds a critical extension of that OID."""

        key = ec.generate_private_key(ec.SECP256R1())
        start = at or datetime.datetime.now(datetime.timezone.utc)
        encoded = oidc_issuer.encode()
        # The newer extension is a DER UTF8String (short-form length here), the legacy one the raw string.
        value = (bytes([0x0C, len(encoded)]) + encoded) if issuer_extension == FULCIO_ISSUER_V2 else encoded
        usage = ExtendedKeyUsageOID.CODE_SIGNING if code_signing else ExtendedKeyUsageOID.SERVER_AUTH
        issuer, issuer_key = by or (self.intermediate, self.intermediate_key)
        builder = (x509.CertificateBuilder().subject_name(x509.Name([]))
                   .issuer_name(issuer.subject).public_key(key.public_key())
                   .serial_number(x509.random_serial_number())
                   .not_valid_before(start).not_valid_after(start + lifetime)
                   .add_extension(x509.SubjectAlternativeName([x509.RFC822Name(email)]), critical=True)
                   .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
                   .add_extension(x509.UnrecognizedExtension(x509.ObjectIdentifier(issuer_extension), value),
                                  critical=False))
        if extra_critical:
            builder = builder.add_extension(
                x509.UnrecognizedExtension(x509.ObjectIdentifier(extra_critical), b"\x05\x00"), critical=True)
        cert = builder.sign(issuer_key, hashes.SHA256())
        return cert.public_bytes(serialization.Encoding.PEM), key


class TestRekor:
    """A transparency log's signing key: SETs (signed entry timestamps) over hashedrekord entries."""

    __test__ = False

    def __init__(self) -> None:

        self.key = ec.generate_private_key(ec.SECP256R1())
        self.log_index = 0

    def public_pem(self) -> bytes:
        return _pem_public_key(self.key)

    @staticmethod
    def hashedrekord(signature: bytes, signer_pem: bytes, payload: bytes) -> bytes:

        return json.dumps({"apiVersion": "0.0.1", "kind": "hashedrekord", "spec": {
            "data": {"hash": {"algorithm": "sha256", "value": hashlib.sha256(payload).hexdigest()}},
            "signature": {"content": base64.b64encode(signature).decode(),
                          "publicKey": {"content": base64.b64encode(signer_pem).decode()}}}}).encode()

    def bundle(self, body: bytes, *, integrated_time: int | None = None, signing_key=None) -> bytes:
        """The SET for an entry ``body``, as cosign's dev.sigstore.cosign/bundle annotation holds it."""


        self.log_index += 1
        der = self.key.public_key().public_bytes(serialization.Encoding.DER,
                                                 serialization.PublicFormat.SubjectPublicKeyInfo)
        entry = {"body": base64.b64encode(body).decode(),
                 "integratedTime": int(time.time()) if integrated_time is None else integrated_time,
                 "logIndex": self.log_index, "logID": hashlib.sha256(der).hexdigest()}
        # Signed over the canonical form (RFC 8785): sorted keys, no whitespace; only ASCII and integers here.
        canonical = json.dumps(entry, sort_keys=True, separators=(",", ":")).encode()
        signed = (signing_key or self.key).sign(canonical, ec.ECDSA(hashes.SHA256()))
        # Delivered with whitespace and in another key order: verification must canonicalize.
        return json.dumps({"SignedEntryTimestamp": base64.b64encode(signed).decode(),
                           "Payload": dict(reversed(list(entry.items())))}, indent=1).encode()


def sign_cosign(key: CosignKey, manifest_digest: str, reference: str, *, rekor: TestRekor | None = None,
                payload: bytes | None = None) -> AttachedSignature:
    """A key-based signature (with a Rekor SET when ``rekor`` is given)."""
    payload = payload if payload is not None else cosign_payload(manifest_digest, reference)
    signature = key.sign(payload)
    bundle = rekor.bundle(TestRekor.hashedrekord(signature, key.public_pem(), payload)) if rekor else b""
    return AttachedSignature(payload, signature, bundle=bundle)


def sign_keyless(fulcio: TestFulcio, rekor: TestRekor, manifest_digest: str, reference: str, *,
                 email: str, oidc_issuer: str, chain: bytes | None = None, **issue: object) -> AttachedSignature:
    """A keyless signature: a fresh Fulcio certificate, logged in Rekor; ``chain`` replaces the usual one."""
    payload = cosign_payload(manifest_digest, reference)
    certificate, key = fulcio.issue(email, oidc_issuer, **issue)

    signature = key.sign(payload, ec.ECDSA(hashes.SHA256()))
    bundle = rekor.bundle(TestRekor.hashedrekord(signature, certificate, payload))
    return AttachedSignature(payload, signature, certificate, fulcio.chain_pem() if chain is None else chain, bundle)


def attachment_manifest(signatures: list[AttachedSignature]) -> tuple[bytes, bytes, list[bytes]]:
    """(manifest, config, payload blobs) of a cosign attachment holding ``signatures``."""

    def digest(data: bytes) -> str:
        return "sha256:" + hashlib.sha256(data).hexdigest()

    config = json.dumps({"architecture": "", "os": "", "config": {},
                         "rootfs": {"type": "layers", "diff_ids": [digest(s.payload) for s in signatures]}}).encode()
    manifest = json.dumps({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": digest(config),
                   "size": len(config)},
        "layers": [{"mediaType": COSIGN_SIGNATURE_MEDIA_TYPE, "digest": digest(s.payload), "size": len(s.payload),
                    "annotations": s.annotations()} for s in signatures],
    }).encode()
    return manifest, config, [s.payload for s in signatures]


def publish_sigstore(registry, repository: str, manifest_digest: str, signatures: list[AttachedSignature]) -> None:
    """Push ``signatures`` of ``manifest_digest`` to ``registry`` (a RegistryServer) as cosign does; none at all
    deletes the attachment."""
    tag = manifest_digest.replace(":", "-", 1) + ".sig"
    pusher = RegistryPusher(registry.url, registry.auth)
    if not signatures:
        status, headers, _ = pusher.request("HEAD", f"/v2/{repository}/manifests/{tag}", repository,
                                            headers={"Accept": "application/vnd.oci.image.manifest.v1+json"})
        if status == 200:
            registry.delete_manifest(repository, headers["Docker-Content-Digest"])
        return
    manifest, config, blobs = attachment_manifest(signatures)
    for blob in blobs + [config]:
        pusher.push_blob(repository, blob)
    pusher.push_manifest(repository, tag, manifest, "application/vnd.oci.image.manifest.v1+json")
