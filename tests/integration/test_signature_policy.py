"""The signature policy at PullImage: a real daemon, a real registry, real GPG and sigstore signatures.

GPG keys and signatures are made with Debian's gnupg in private homes; signatures are
published in a lookaside directory read over file:// or served over HTTP on 127.0.0.1.
Sigstore ones are made with cryptography (a test Fulcio CA and Rekor key for keyless
ones) and pushed to the registry as cosign attachments (``sha256-HEX.sig``).
"""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
from pathlib import Path

import grpc
import pytest

from crio_fast.api import api_pb2 as api
from tests.support.daemon import Daemon, make_dirs, remove_dirs, run_cli
from tests.support.pods import wait_for
from tests.support.signing import (
    AttachedSignature,
    CosignKey,
    GpgSigner,
    LookasideServer,
    TestFulcio,
    TestRekor,
    cosign_payload,
    publish,
    publish_sigstore,
    sign_cosign,
    sign_keyless,
    simple_signing_payload,
)

pytestmark = pytest.mark.integration


class Node:
    """Files a policy-enforcing daemon reads (policy, namespace policies, registries.d, lookaside)
    and the daemon itself, started on demand."""

    def __init__(self, base: Path, registries_conf: Path) -> None:
        self.policy = base / "policy.json"
        self.policy_dir = base / "policies"
        self.registries_d = base / "registries.d"
        self.lookaside = base / "lookaside"
        for directory in (self.policy_dir, self.registries_d, self.lookaside):
            directory.mkdir()
        self.registries_conf = registries_conf
        self.lookaside_at(self.lookaside.as_uri())
        self.daemon: Daemon | None = None
        self.dirs = make_dirs()

    def lookaside_at(self, url: str, *, sigstore_attachments: bool = False) -> None:
        (self.registries_d / "default.yaml").write_text(
            f"default-docker:\n  lookaside: {url}\n  use-sigstore-attachments: {str(sigstore_attachments).lower()}\n")

    def use_sigstore_attachments(self) -> None:
        self.lookaside_at(self.lookaside.as_uri(), sigstore_attachments=True)

    def write_policy(self, document: object, path: Path | None = None) -> None:
        (path or self.policy).write_text(document if isinstance(document, str) else json.dumps(document))

    def start(self) -> Daemon:
        self.daemon = Daemon(self.dirs, "--registries-conf", str(self.registries_conf),
                             "--signature-policy", str(self.policy),
                             "--signature-policy-dir", str(self.policy_dir),
                             "--registries-d", str(self.registries_d)).start()
        return self.daemon

    def reload(self, expect: str) -> None:
        """SIGHUP, and wait for one more log line holding ``expect``."""
        before = self.daemon.log().count(expect)
        self.daemon.proc.send_signal(signal.SIGHUP)
        wait_for(lambda: self.daemon.log().count(expect) > before, what=f"{expect!r} in the daemon's log")

    def close(self) -> None:
        try:
            if self.daemon is not None:
                try:
                    self.daemon.stop()
                finally:
                    self.daemon.kill()
        finally:
            remove_dirs(self.dirs)


@pytest.fixture
def node(tmp_path, registries_conf):
    n = Node(tmp_path, registries_conf)
    try:
        yield n
    finally:
        n.close()


def signed_by(signer: GpgSigner, **extra: object) -> dict:
    return {"type": "signedBy", "keyType": "GPGKeys", "keyData": base64.b64encode(signer.public_key()).decode(),
            **extra}


def only_signed(host: str, signer: GpgSigner) -> dict:
    """Everything refused but this registry's images, which need the signer's signature."""
    return {"default": [{"type": "reject"}], "transports": {"docker": {host: [signed_by(signer)]}}}


def sign_image(node: Node, pushed, signer: GpgSigner, *, digest: str | None = None,
               identity: str | None = None) -> None:
    signature = signer.sign(simple_signing_payload(digest or pushed.repo_digest, identity or pushed.reference))
    publish(node.lookaside, pushed.reference, pushed.repo_digest, [signature])


def pull(d: Daemon, image: str, namespace: str | None = None) -> str:
    request = api.PullImageRequest(image=api.ImageSpec(image=image))
    if namespace is not None:
        request.sandbox_config.metadata.namespace = namespace
        request.sandbox_config.metadata.name = "pod"
    return d.client.image.PullImage(request, timeout=60).image_ref


def refused(d: Daemon, image: str, namespace: str | None = None) -> str:
    with pytest.raises(grpc.RpcError) as caught:
        pull(d, image, namespace)
    # What the kubelet needs to give the pod the reason SignatureValidationFailed: an UNKNOWN status
    # (whose code it strips) with a message that starts with the name.
    assert caught.value.code() == grpc.StatusCode.UNKNOWN, caught.value.details()
    details = caught.value.details()
    assert details.startswith("SignatureValidationFailed: image "), details
    assert image.split("@")[0].split(":")[0] in details
    return details


def layers_in_store(root: Path) -> list[str]:
    layers = root / "images" / "layers"
    return os.listdir(layers) if layers.exists() else []


def test_signed_image_is_pulled_unsigned_refused_before_any_layer(node, signer, push_image, registry):
    node.write_policy(only_signed(registry.host, signer))
    d = node.start()
    pushed = push_image()
    details = refused(d, pushed.reference)
    assert f"docker:{registry.host}" in details and "no signature" in details
    assert layers_in_store(d.dirs.root) == []  # refused on its manifest alone
    assert not d.client.image.ImageStatus(api.ImageStatusRequest(image=api.ImageSpec(image=pushed.reference)),
                                          timeout=10).HasField("image")

    sign_image(node, pushed, signer)
    assert pull(d, pushed.reference) == pushed.config_digest
    assert pull(d, pushed.digest_reference) == pushed.config_digest


def test_signatures_served_over_http(node, signer, push_image, registry):
    server = LookasideServer(node.lookaside)
    try:
        node.lookaside_at(server.url + "/")
        node.write_policy(only_signed(registry.host, signer))
        d = node.start()
        pushed = push_image(multi_arch=True)  # signed as its index: the digest the tag names
        sign_image(node, pushed, signer)
        assert pull(d, pushed.reference) == pushed.config_digest
        assert server.requests >= 2  # signature-1, then the missing signature-2
        unsigned = push_image()
        assert "no signature" in refused(d, unsigned.reference)
    finally:
        server.close()


def test_wrong_key_is_refused(node, signer, stranger, push_image, registry):
    node.write_policy(only_signed(registry.host, signer))
    d = node.start()
    pushed = push_image()
    sign_image(node, pushed, stranger)
    assert "unknown key" in refused(d, pushed.reference)
    assert layers_in_store(d.dirs.root) == []


def test_replayed_and_tampered_signatures_are_refused(node, signer, push_image, registry):
    node.write_policy(only_signed(registry.host, signer))
    d = node.start()
    signed, target = push_image(cmd=["signed"]), push_image(cmd=["target"])
    assert signed.repo_digest != target.repo_digest
    # A genuine signature of another image, stored under the target's digest.
    genuine = signer.sign(simple_signing_payload(signed.repo_digest, target.reference))
    publish(node.lookaside, target.reference, target.repo_digest, [genuine])
    details = refused(d, target.reference)
    assert "digest mismatch" in details and signed.repo_digest in details
    # A signature of the target whose bytes were altered.
    tampered = bytearray(signer.sign(simple_signing_payload(target.repo_digest, target.reference)))
    tampered[len(tampered) // 2] ^= 0x01
    publish(node.lookaside, target.reference, target.repo_digest, [bytes(tampered)])
    assert "signature 1:" in refused(d, target.reference)
    assert layers_in_store(d.dirs.root) == []


def test_identity_mismatch_and_signed_identity_modes(node, signer, push_image, registry):
    pushed = push_image(tag="v1")
    other_tag = pushed.reference.rsplit(":", 1)[0] + ":v2"
    node.write_policy(only_signed(registry.host, signer))
    d = node.start()
    sign_image(node, pushed, signer, identity=other_tag)
    assert "identity mismatch" in refused(d, pushed.reference)
    # matchRepository accepts a signature of the same repository under another tag.
    repository = pushed.reference.rsplit(":", 1)[0]
    node.write_policy({"default": [{"type": "reject"}], "transports": {"docker": {
        repository: [signed_by(signer, signedIdentity={"type": "matchRepository"})]}}})
    node.reload("signature policy")
    assert pull(d, pushed.reference) == pushed.config_digest


def test_reject_and_insecure_accept_anything_scopes(node, push_image, registry):
    open_image, closed_image = push_image(repository="open/app"), push_image(repository="closed/app")
    node.write_policy({"default": [{"type": "insecureAcceptAnything"}], "transports": {"docker": {
        f"{registry.host}/closed": [{"type": "reject"}],
        f"{registry.host}/open/app": [{"type": "insecureAcceptAnything"}],
    }}})
    d = node.start()
    assert pull(d, open_image.reference) == open_image.config_digest
    details = refused(d, closed_image.reference)
    assert f"docker:{registry.host}/closed" in details and "rejected by policy" in details


def test_namespace_policy_overrides_the_node_policy(node, signer, push_image, registry):
    node.write_policy({"default": [{"type": "insecureAcceptAnything"}]})
    node.write_policy(only_signed(registry.host, signer), node.policy_dir / "secure.json")
    d = node.start()
    pushed = push_image()
    assert "no signature" in refused(d, pushed.reference, namespace="secure")
    assert pull(d, pushed.reference, namespace="relaxed") == pushed.config_digest
    assert pull(d, pushed.reference) == pushed.config_digest
    # Already in the store: the namespace's policy still decides.
    assert "no signature" in refused(d, pushed.reference, namespace="secure")
    sign_image(node, pushed, signer)
    assert pull(d, pushed.reference, namespace="secure") == pushed.config_digest


def test_policy_change_rechecks_images_already_pulled(node, signer, push_image, registry):
    node.write_policy(only_signed(registry.host, signer))
    d = node.start()
    pushed = push_image()
    sign_image(node, pushed, signer)
    assert pull(d, pushed.digest_reference) == pushed.config_digest
    publish(node.lookaside, pushed.reference, pushed.repo_digest, [])  # the signature withdrawn
    # The same policy accepted this image by digest: no need to ask again.
    assert pull(d, pushed.digest_reference) == pushed.config_digest
    # A changed policy (same rules, other bytes) checks again, and the signature is gone.
    node.write_policy(json.dumps(only_signed(registry.host, signer), indent=2))
    node.reload("signature policy")
    assert "no signature" in refused(d, pushed.digest_reference)
    assert "no signature" in refused(d, pushed.reference)
    # A policy that rejects needs no signature to refuse an image it holds.
    node.write_policy({"default": [{"type": "reject"}]})
    node.reload("signature policy")
    assert "rejected by policy" in refused(d, pushed.digest_reference)


def test_sighup_reloads_a_good_policy_and_keeps_it_over_a_malformed_one(node, push_image):
    node.write_policy({"default": [{"type": "reject"}]})
    d = node.start()
    pushed = push_image()
    assert "rejected by policy" in refused(d, pushed.reference)
    node.write_policy({"default": [{"type": "insecureAcceptAnything"}], "transports": {"docker": {"bad host": []}}})
    node.reload("signature policy not reloaded")
    assert 'scope "bad host"' in d.log()
    assert "rejected by policy" in refused(d, pushed.reference)  # the running policy stays
    node.write_policy({"default": [{"type": "insecureAcceptAnything"}]})
    node.reload(f"signature policy {node.policy} loaded")
    assert pull(d, pushed.reference) == pushed.config_digest


def test_malformed_policy_at_start_stops_the_daemon(node):
    node.write_policy({"default": [{"type": "signedBy", "keyType": "GPGKeys"}]})
    with pytest.raises(RuntimeError) as caught:
        node.start()
    message = str(caught.value)
    assert "daemon exited with 1" in message
    assert f"configuration error: signature policy {node.policy}" in message
    assert "default requirement 1" in message and "keyPath" in message


def check_line(stdout: str) -> tuple[str, str]:
    """(status, detail) of `crio-fast check`'s signature policy line."""
    line = next(line for line in stdout.splitlines() if " signature policy: " in line)
    status, _, detail = line.partition(" signature policy: ")
    return status.strip(), detail


def test_check_reports_the_policy(node, signer):
    node.write_policy(only_signed("registry.test", signer))
    flags = ["--signature-policy", str(node.policy), "--registries-d", str(node.registries_d)]
    result = run_cli(node.dirs, *flags, "check")
    assert check_line(result.stdout) == ("OK", f"{node.policy} (1 docker scopes)"), result.stdout
    node.write_policy({"default": []})
    result = run_cli(node.dirs, *flags, "check")
    status, detail = check_line(result.stdout)
    assert result.returncode == 1 and status == "MISSING" and "must not be empty" in detail, result.stdout


def oci_archive(path: Path, name: str, cmd: str):
    """An OCI layout tarball of a busybox image named ``name``; the built image."""
    from tests.support.images import build_image, busybox_layer, make_layer

    built = build_image([make_layer(busybox_layer(), "gzip", "oci")], cmd=[cmd])
    layout = path.with_suffix(".d")
    blobs = layout / "blobs" / "sha256"
    blobs.mkdir(parents=True)
    (layout / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
    for digest, data in [(built.digest, built.manifest), (built.config_digest, built.config)] + [
            (layer.digest, layer.blob) for layer in built.layers]:
        (blobs / digest.split(":")[1]).write_bytes(data)
    (layout / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": [{
        "mediaType": built.manifest_media_type, "digest": built.digest, "size": len(built.manifest),
        "annotations": {"org.opencontainers.image.ref.name": name}}]}))
    subprocess.run(["tar", "-C", str(layout), "-cf", str(path), "."], check=True)
    return built


def test_image_import_applies_the_policy_unless_bypassed(node, signer, tmp_path):
    node.write_policy(only_signed("example.test", signer))
    flags = ["--signature-policy", str(node.policy), "--registries-d", str(node.registries_d)]
    name = "example.test/imported/app:1"
    built = oci_archive(tmp_path / "app.tar", name, "signed-import")

    result = run_cli(node.dirs, *flags, "image", "import", str(tmp_path / "app.tar"))
    assert result.returncode == 1, result.stdout + result.stderr
    assert "SignatureValidationFailed" in result.stderr and "no signature" in result.stderr
    assert layers_in_store(node.dirs.root) == []

    publish(node.lookaside, name, built.digest, [signer.sign(simple_signing_payload(built.digest, name))])
    result = run_cli(node.dirs, *flags, "image", "import", str(tmp_path / "app.tar"))
    assert result.returncode == 0, result.stderr
    assert built.config_digest in result.stdout

    rejected = oci_archive(tmp_path / "other.tar", "elsewhere.test/app:1", "rejected-import")
    result = run_cli(node.dirs, *flags, "image", "import", str(tmp_path / "other.tar"))
    assert result.returncode == 1 and "rejected by policy" in result.stderr, result.stderr
    result = run_cli(node.dirs, *flags, "image", "import", "--skip-signature-policy", str(tmp_path / "other.tar"))
    assert result.returncode == 0 and rejected.config_digest in result.stdout, result.stderr


# -- sigstore -------------------------------------------------------------------

ISSUER = "https://oidc.example.test"
EMAIL = "release@example.test"


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def sigstore_key(key: CosignKey, **extra: object) -> dict:
    return {"type": "sigstoreSigned", "keyData": b64(key.public_pem()), **extra}


def sigstore_keyless(fulcio: TestFulcio, rekor: TestRekor, *, email: str = EMAIL, issuer: str = ISSUER) -> dict:
    return {"type": "sigstoreSigned", "rekorPublicKeyData": b64(rekor.public_pem()),
            "fulcio": {"caData": b64(fulcio.root_pem()), "oidcIssuer": issuer, "subjectEmail": email}}


def only(host: str, *requirements: dict) -> dict:
    return {"default": [{"type": "reject"}], "transports": {"docker": {host: list(requirements)}}}


def attach(registry, pushed, *signatures: AttachedSignature) -> None:
    publish_sigstore(registry, pushed.repository, pushed.repo_digest, list(signatures))


def test_sigstore_key_signed_image_is_pulled_unsigned_refused(node, cosign_key, push_image, registry):
    node.use_sigstore_attachments()
    node.write_policy(only(registry.host, sigstore_key(cosign_key)))
    d = node.start()
    pushed = push_image()
    details = refused(d, pushed.reference)
    assert "no sigstore signature" in details and pushed.repo_digest in details
    assert layers_in_store(d.dirs.root) == []

    attach(registry, pushed, sign_cosign(cosign_key, pushed.repo_digest, pushed.reference))
    assert pull(d, pushed.reference) == pushed.config_digest
    assert pull(d, pushed.digest_reference) == pushed.config_digest


def test_sigstore_attachments_only_where_registries_d_says(node, cosign_key, push_image, registry):
    node.write_policy(only(registry.host, sigstore_key(cosign_key)))
    d = node.start()
    pushed = push_image()
    attach(registry, pushed, sign_cosign(cosign_key, pushed.repo_digest, pushed.reference))
    assert "does not set use-sigstore-attachments" in refused(d, pushed.reference)
    # registries.d is read at each pull.
    node.use_sigstore_attachments()
    assert pull(d, pushed.reference) == pushed.config_digest


def test_sigstore_keyless_accepted_and_wrong_email_or_issuer_refused(node, fulcio, rekor, push_image, registry):
    node.use_sigstore_attachments()
    pushed = push_image(multi_arch=True)  # signed as its index: the digest the tag names
    attach(registry, pushed, sign_keyless(fulcio, rekor, pushed.repo_digest, pushed.reference, email=EMAIL,
                                          oidc_issuer=ISSUER))
    node.write_policy(only(registry.host, sigstore_keyless(fulcio, rekor, email="someone@example.test")))
    d = node.start()
    assert "wrong email" in refused(d, pushed.reference)
    node.write_policy(only(registry.host, sigstore_keyless(fulcio, rekor, issuer="https://other.test")))
    node.reload("signature policy")
    assert "wrong OIDC issuer" in refused(d, pushed.reference)
    node.write_policy(only(registry.host, sigstore_keyless(TestFulcio("Other"), rekor)))
    node.reload("signature policy")
    assert "not chained" in refused(d, pushed.reference)
    node.write_policy(only(registry.host, sigstore_keyless(fulcio, TestRekor())))
    node.reload("signature policy")
    assert "Rekor SET invalid" in refused(d, pushed.reference)
    assert layers_in_store(d.dirs.root) == []
    node.write_policy(only(registry.host, sigstore_keyless(fulcio, rekor)))
    node.reload("signature policy")
    assert pull(d, pushed.reference) == pushed.config_digest


def test_sigstore_wrong_key_tampered_payload_and_replay_are_refused(node, cosign_key, push_image, registry):
    node.use_sigstore_attachments()
    node.write_policy(only(registry.host, sigstore_key(cosign_key)))
    d = node.start()
    signed, target = push_image(cmd=["signed"]), push_image(cmd=["target"])
    attach(registry, target, sign_cosign(CosignKey(), target.repo_digest, target.reference))
    assert "unknown key" in refused(d, target.reference)
    # A genuine signature whose payload was replaced (the blob and its descriptor consistent).
    genuine = sign_cosign(cosign_key, target.repo_digest, target.reference)
    attach(registry, target, AttachedSignature(cosign_payload(target.repo_digest, signed.reference), genuine.signature))
    assert "altered" in refused(d, target.reference)
    # A genuine signature of another image, attached to the target.
    attach(registry, target, sign_cosign(cosign_key, signed.repo_digest, target.reference))
    details = refused(d, target.reference)
    assert "digest mismatch" in details and signed.repo_digest in details
    assert layers_in_store(d.dirs.root) == []
    # One good signature among bad ones is enough.
    attach(registry, target, sign_cosign(CosignKey(), target.repo_digest, target.reference), genuine)
    assert pull(d, target.reference) == target.config_digest


def test_sigstore_identity_mismatch_and_signed_identity(node, cosign_key, push_image, registry):
    node.use_sigstore_attachments()
    pushed = push_image(tag="v1")
    repository = pushed.reference.rsplit(":", 1)[0]
    attach(registry, pushed, sign_cosign(cosign_key, pushed.repo_digest, repository + ":v2"))
    node.write_policy(only(registry.host, sigstore_key(cosign_key)))
    d = node.start()
    assert "identity mismatch" in refused(d, pushed.reference)
    node.write_policy(only(repository, sigstore_key(cosign_key, signedIdentity={"type": "matchRepository"})))
    node.reload("signature policy")
    assert pull(d, pushed.reference) == pushed.config_digest


def test_signed_by_and_sigstore_signed_in_one_scope_both_must_hold(node, signer, cosign_key, push_image, registry):
    node.use_sigstore_attachments()
    node.write_policy(only(registry.host, signed_by(signer), sigstore_key(cosign_key)))
    d = node.start()
    pushed = push_image()
    attach(registry, pushed, sign_cosign(cosign_key, pushed.repo_digest, pushed.reference))
    assert "no signature for manifest" in refused(d, pushed.reference)  # the GPG one is missing
    attach(registry, pushed)
    sign_image(node, pushed, signer)
    assert "no sigstore signature" in refused(d, pushed.reference)
    attach(registry, pushed, sign_cosign(cosign_key, pushed.repo_digest, pushed.reference))
    assert pull(d, pushed.reference) == pushed.config_digest


def test_namespace_policy_requiring_sigstore(node, fulcio, rekor, push_image, registry):
    node.use_sigstore_attachments()
    node.write_policy({"default": [{"type": "insecureAcceptAnything"}]})
    node.write_policy(only(registry.host, sigstore_keyless(fulcio, rekor)), node.policy_dir / "secure.json")
    d = node.start()
    pushed = push_image()
    assert pull(d, pushed.reference, namespace="relaxed") == pushed.config_digest
    assert "no sigstore signature" in refused(d, pushed.reference, namespace="secure")
    attach(registry, pushed, sign_keyless(fulcio, rekor, pushed.repo_digest, pushed.reference, email=EMAIL,
                                          oidc_issuer=ISSUER))
    assert pull(d, pushed.reference, namespace="secure") == pushed.config_digest


def test_check_asks_for_gpgv_only_for_gpg_signatures(node, signer, cosign_key, tmp_path):
    from tests.support.daemon import daemon_argv

    no_tools = tmp_path / "empty-path"
    no_tools.mkdir()
    flags = ["--signature-policy", str(node.policy), "--registries-d", str(node.registries_d), "check"]

    def check_without_gpgv() -> tuple[str, str]:
        result = subprocess.run(daemon_argv(node.dirs) + flags, capture_output=True, text=True, timeout=60,
                                stdin=subprocess.DEVNULL, env={**os.environ, "PATH": str(no_tools)})
        return check_line(result.stdout)

    node.write_policy(only("registry.test", sigstore_key(cosign_key)))
    assert check_without_gpgv() == ("OK", f"{node.policy} (1 docker scopes)")
    node.write_policy(only("registry.test", signed_by(signer)))
    status, detail = check_without_gpgv()
    assert status == "MISSING" and "gpgv is not installed" in detail


def test_sigstore_attachments_come_from_the_mirror_that_served_the_image(node, cosign_key, push_image, registry,
                                                                         tmp_path):
    from tests.support.registry import RegistryServer

    mirror = RegistryServer(tmp_path / "mirror")
    mirror.start()
    try:
        pushed = push_image(repository="mirrored/signed")
        push_image(repository="mirrored/signed", registry=mirror)  # same build: same digests
        node.registries_conf.write_text(
            f'[[registry]]\nlocation = "{registry.host}"\ninsecure = true\n'
            f'[[registry.mirror]]\nlocation = "{mirror.host}"\ninsecure = true\n')
        node.use_sigstore_attachments()
        node.write_policy(only(registry.host, sigstore_key(cosign_key)))
        d = node.start()
        signature = sign_cosign(cosign_key, pushed.repo_digest, pushed.reference)
        attach(registry, pushed, signature)  # on the primary only: the mirror serves the image, without it
        details = refused(d, pushed.reference)
        assert f"no sigstore signature for manifest {pushed.repo_digest} in {mirror.host}/mirrored/signed" in details
        attach(mirror, pushed, signature)
        assert pull(d, pushed.reference) == pushed.config_digest
        assert f"GET /v2/mirrored/signed/manifests/{pushed.repo_digest.replace(':', '-')}.sig" in \
            mirror.log_path.read_text(errors="replace")
    finally:
        mirror.stop()


def test_sigstore_attachment_with_a_missing_payload_blob_is_refused(node, cosign_key, push_image, registry):
    import hashlib
    import urllib.request

    node.use_sigstore_attachments()
    node.write_policy(only(registry.host, sigstore_key(cosign_key)))
    d = node.start()
    pushed = push_image()
    signature = sign_cosign(cosign_key, pushed.repo_digest, pushed.reference)
    attach(registry, pushed, signature)
    payload_digest = "sha256:" + hashlib.sha256(signature.payload).hexdigest()
    request = urllib.request.Request(f"{registry.url}/v2/{pushed.repository}/blobs/{payload_digest}", method="DELETE")
    with urllib.request.urlopen(request, timeout=10) as response:
        assert response.status == 202
    details = refused(d, pushed.reference)
    assert "sigstore signatures unusable" in details and payload_digest in details
    assert layers_in_store(d.dirs.root) == []


def test_sigstore_warm_pull_reads_the_attachment_again_but_not_its_payloads(node, cosign_key, push_image, registry):
    import hashlib
    import urllib.request

    node.use_sigstore_attachments()
    node.write_policy(only(registry.host, sigstore_key(cosign_key)))
    d = node.start()
    pushed = push_image()
    signature = sign_cosign(cosign_key, pushed.repo_digest, pushed.reference)
    attach(registry, pushed, signature)
    assert pull(d, pushed.reference) == pushed.config_digest
    # The payload, content-addressed, is taken from memory once read: its blob gone, a pull still holds.
    payload_digest = "sha256:" + hashlib.sha256(signature.payload).hexdigest()
    request = urllib.request.Request(f"{registry.url}/v2/{pushed.repository}/blobs/{payload_digest}", method="DELETE")
    with urllib.request.urlopen(request, timeout=10) as response:
        assert response.status == 202
    assert pull(d, pushed.reference) == pushed.config_digest
    # The attachment itself is asked each time: signatures taken away refuse the next pull by tag.
    attach(registry, pushed)
    assert "no sigstore signature" in refused(d, pushed.reference)

