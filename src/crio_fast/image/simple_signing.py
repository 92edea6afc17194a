"""GPG "simple signing": an OpenPGP signed message whose payload says which manifest it vouches for.

The payload is JSON::

    {"critical": {"type": "atomic container signature",
                  "image": {"docker-manifest-digest": "sha256:..."},
                  "identity": {"docker-reference": "host/repo:tag"}},
     "optional": {...}}

The OpenPGP part is Debian's ``gpgv``, run once per signature against a
keyring that holds only the policy's keys, in a private home directory made
for the call: no OpenPGP parsing here, and no user's or system's keys involved.
Only the ASCII armour of a key file is undone here (gpgv reads binary
keyrings only), which is base64, not OpenPGP.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
import shutil
import subprocess
import tempfile
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Sequence

from crio_fast.image.reference import is_digest

SIGNATURE_TYPE = "atomic container signature"
GPGV_TIMEOUT = 30.0
MAX_PAYLOAD_SIZE = 4 << 20
_ARMOR_BEGIN = b"-----BEGIN PGP "
# A gpgv run costs several ms, most of a warm pull: a signature verified against the same keys
# is taken from memory for a while. Bounded in time, as a key may expire; a key added, removed
# or revoked (in the keyring bytes) is another keyring, so another entry.
VERIFIED_CACHE_SIZE = 512
VERIFIED_CACHE_SECONDS = 600.0


class SignatureInvalid(Exception):
    """A signature that does not verify or says nothing usable; the message says why, briefly."""


class UnknownKey(SignatureInvalid):
    """A signature by a key the policy does not list."""


class VerifierUnavailable(Exception):
    """gpgv is missing or failed to run: the node cannot verify any signature."""


@dataclass(frozen=True)
class SignedClaim:
    """What a verified signature vouches for."""

    key_fingerprint: str
    manifest_digest: str
    docker_reference: str


def dearmor(key: bytes) -> bytes:
    """A key file's binary form: ASCII-armoured blocks decoded, binary ones as they are."""
    if _ARMOR_BEGIN not in key:
        return key
    out = []
    lines = key.splitlines()
    index = 0
    while index < len(lines):
        if not lines[index].startswith(_ARMOR_BEGIN):
            index += 1
            continue
        index += 1
        while index < len(lines) and lines[index].strip():  # armour headers, up to a blank line
            if b":" not in lines[index]:
                break  # no headers and no blank line: the body starts here
            index += 1
        body = []
        while index < len(lines) and not lines[index].startswith(b"-----END PGP "):
            line = lines[index].strip()
            if line.startswith(b"="):  # the CRC-24 line ends the body
                index += 1
                continue
            body.append(line)
            index += 1
        try:
            out.append(base64.b64decode(b"".join(body), validate=True))
        except (binascii.Error, ValueError) as exc:
            raise SignatureInvalid(f"a key is neither binary nor valid ASCII armour: {exc}") from exc
        index += 1
    return b"".join(out)


class _VerifiedSignatures:
    """Claims of signatures gpgv accepted, by the digests of the signature and of the keys."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._entries: OrderedDict[tuple[bytes, bytes], tuple[float, SignedClaim]] = OrderedDict()

    @staticmethod
    def key(signature: bytes, keys: Sequence[bytes]) -> tuple[bytes, bytes]:
        keyring = hashlib.sha256()
        for key in keys:
            keyring.update(hashlib.sha256(key).digest())
        return hashlib.sha256(signature).digest(), keyring.digest()

    def get(self, key: tuple[bytes, bytes]) -> SignedClaim | None:
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                return None
            if entry[0] < time.monotonic():
                del self._entries[key]
                return None
            self._entries.move_to_end(key)
            return entry[1]

    def put(self, key: tuple[bytes, bytes], claim: SignedClaim) -> None:
        with self._lock:
            self._entries[key] = (time.monotonic() + VERIFIED_CACHE_SECONDS, claim)
            self._entries.move_to_end(key)
            while len(self._entries) > VERIFIED_CACHE_SIZE:
                self._entries.popitem(last=False)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()


verified_signatures = _VerifiedSignatures()


def verify(signature: bytes, keys: Sequence[bytes], gpgv: str = "gpgv") -> SignedClaim:
    """The claim of ``signature`` if it is one valid OpenPGP signature by one of ``keys``."""
    cache_key = verified_signatures.key(signature, keys)
    claim = verified_signatures.get(cache_key)
    if claim is None:
        payload, fingerprint = _gpgv(signature, keys, gpgv)
        claim = SignedClaim(fingerprint, *parse_payload(payload))
        verified_signatures.put(cache_key, claim)
    return claim


def _gpgv(signature: bytes, keys: Sequence[bytes], gpgv: str) -> tuple[bytes, str]:
    home = tempfile.mkdtemp(prefix="crio-fast-gpgv-")
    try:
        keyring = os.path.join(home, "trusted.gpg")
        signed = os.path.join(home, "signature")
        output = os.path.join(home, "payload")
        with open(keyring, "wb") as f:
            for key in keys:
                f.write(dearmor(key))
        with open(signed, "wb") as f:
            f.write(signature)
        try:
            result = subprocess.run(
                [gpgv, "--homedir", home, "--keyring", keyring, "--status-fd", "1", "--output", output, signed],
                capture_output=True, timeout=GPGV_TIMEOUT, stdin=subprocess.DEVNULL, check=False,
                env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LC_ALL": "C"},
            )
        except FileNotFoundError as exc:
            raise VerifierUnavailable(f"{gpgv} is not installed (Debian package gpgv)") from exc
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise VerifierUnavailable(f"{gpgv} failed to run: {exc}") from exc
        status = _status_lines(result.stdout)
        valid = [words[1] for words in status if words[0] == "VALIDSIG" and len(words) > 1]
        if result.returncode == 0 and len(valid) == 1 and not any(w[0] in ("BADSIG", "ERRSIG") for w in status):
            # The primary key's fingerprint is the last field of VALIDSIG (the first is the signing subkey's).
            primary = next(w for w in status if w[0] == "VALIDSIG")[-1]
            with open(output, "rb") as f:
                payload = f.read(MAX_PAYLOAD_SIZE + 1)
            if len(payload) > MAX_PAYLOAD_SIZE:
                raise SignatureInvalid("the signed payload is too large")
            return payload, primary
        if any(w[0] == "NO_PUBKEY" for w in status):
            key = next(w[1] for w in status if w[0] == "NO_PUBKEY" and len(w) > 1)
            raise UnknownKey(f"signed by an unknown key {key}")
        if any(w[0] == "BADSIG" for w in status):
            raise SignatureInvalid("the signature does not verify (altered signature or payload)")
        if len(valid) > 1:
            raise SignatureInvalid("more than one signature in one signature file")
        said = " ".join(result.stderr.decode("utf-8", "replace").split())[-200:]
        raise SignatureInvalid(f"not a valid OpenPGP signature ({said or f'gpgv exit {result.returncode}'})")
    finally:
        shutil.rmtree(home, ignore_errors=True)


def _status_lines(stdout: bytes) -> list[list[str]]:
    lines = []
    for line in stdout.decode("utf-8", "replace").splitlines():
        if line.startswith("[GNUPG:] "):
            words = line[len("[GNUPG:] "):].split()
            if words:
                lines.append(words)
    return lines


def parse_payload(payload: bytes) -> tuple[str, str]:
    """(manifest digest, docker reference) of a simple-signing payload."""
    try:
        document = json.loads(payload)
    except (ValueError, UnicodeDecodeError) as exc:
        raise SignatureInvalid(f"the signed payload is not JSON: {exc}") from exc
    critical = document.get("critical") if isinstance(document, dict) else None
    if not isinstance(critical, dict):
        raise SignatureInvalid('the signed payload has no "critical" object')
    if critical.get("type") != SIGNATURE_TYPE:
        raise SignatureInvalid(f'the signed payload\'s type is {critical.get("type")!r}, not "{SIGNATURE_TYPE}"')
    image = critical.get("image")
    identity = critical.get("identity")
    digest = image.get("docker-manifest-digest") if isinstance(image, dict) else None
    reference = identity.get("docker-reference") if isinstance(identity, dict) else None
    if not isinstance(digest, str) or not is_digest(digest):
        raise SignatureInvalid("the signed payload names no valid docker-manifest-digest")
    if not isinstance(reference, str) or not reference:
        raise SignatureInvalid("the signed payload names no docker-reference")
    return digest, reference


__all__ = ["SignatureInvalid", "SignedClaim", "UnknownKey", "VerifierUnavailable", "dearmor", "parse_payload",
           "verify"]
