"""GPG simple-signing signatures made with Debian's gnupg, and lookaside stores to serve them.

A :class:`GpgSigner` owns a private GNUPGHOME with one ed25519 key (no
passphrase); :meth:`GpgSigner.close` stops the gpg-agent that key generation
started and removes the directory. A :class:`LookasideServer` serves a
directory over HTTP on 127.0.0.1 from a thread.
"""

from __future__ import annotations

import functools
import http.server
import json
import shutil
import subprocess
import tempfile
import threading
from pathlib import Path

from crio_fast.image.lookaside import signature_url
from crio_fast.image.reference import parse_reference


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
