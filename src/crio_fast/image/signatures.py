"""The signature policy at pull time: which policy applies, and whether an image meets it.

The node's policy ([crio.image] signature_policy) is loaded when the daemon
starts and on SIGHUP; a pod's Kubernetes namespace may have its own in
``signature_policy_dir/<namespace>.json``, read at each pull, the node's policy
standing in when there is none. No policy at all accepts every image.

An image is checked once its manifest is known and before any layer is
fetched: every requirement of its scope must hold. A refusal is
:class:`SignatureValidationFailed`, whose message carries CRI-O's
"SignatureValidationFailed" marker, names the image and the scope, and says
why.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import os
import re
from dataclasses import dataclass
from typing import Callable, Sequence, TypeVar

import aiohttp

from crio_fast.errors import CriReason, FailedPrecondition, InvalidArgument, Unavailable, cut, shown
from crio_fast.image.lookaside import LookasideUnavailable, RegistriesD, RegistriesDError, read_signatures
from crio_fast.image.policy import (
    InsecureAcceptAnything,
    KeySource,
    Policy,
    PolicyError,
    Reject,
    SignedBy,
    SignedIdentity,
    SigstoreSigned,
    needs_signatures,
)
from crio_fast.image.reference import ImageReference, parse_reference
from crio_fast.image.registry_client import RegistryClient
from crio_fast.image.registry_errors import BlobUnknown, DigestMismatch, InvalidManifest, RegistryAuthError, RegistryError
from crio_fast.image.simple_signing import SignatureInvalid, SignedClaim, VerifierUnavailable
from crio_fast.image.simple_signing import verify as verify_gpg
from crio_fast.image.sigstore import SigstoreSignature, SigstoreTrust, TrustInvalid, load_trust, read_attachments
from crio_fast.image.sigstore import verify as verify_sigstore

MARKER = "SignatureValidationFailed"
MAX_KEY_FILE_SIZE = 1 << 20
_REASON_LIMIT = 600
# A Kubernetes namespace is a DNS label: it names a file in signature_policy_dir and nothing else.
_NAMESPACE_RE = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")
_Signature = TypeVar("_Signature", bytes, SigstoreSignature)


class SignatureValidationFailed(CriReason):
    """An image the signature policy refuses (cri-api's ErrSignatureValidationFailed)."""

    def __init__(self, image: ImageReference, scope: str, reason: str) -> None:
        super().__init__(f"{MARKER}: image {image} refused by the signature policy ({scope}): {cut(reason, _REASON_LIMIT)}")


@dataclass(frozen=True)
class Attachments:
    """Where an image's sigstore attachments are read: the endpoint that served the image (a mirror,
    maybe), through its open client, and the repository there."""

    client: RegistryClient
    repository: str


@dataclass(frozen=True)
class SignaturePolicies:
    """The node's policy (None: accept everything) and the directory of per-namespace ones."""

    node: Policy | None = None
    namespace_dir: str = ""

    @classmethod
    def load(cls, signature_policy: str, namespace_dir: str) -> "SignaturePolicies":
        """Raises :class:`PolicyError` for a node policy that cannot be used."""
        return cls(Policy.load(signature_policy) if signature_policy else None, namespace_dir)

    def for_namespace(self, namespace: str) -> Policy | None:
        """The policy for a pod of ``namespace`` ("" for a pull that names no pod)."""
        if not namespace or not self.namespace_dir:
            return self.node
        if not _NAMESPACE_RE.fullmatch(namespace):
            raise InvalidArgument(f"PullImage: pod namespace {shown(namespace)} is not a valid Kubernetes namespace")
        path = os.path.join(self.namespace_dir, f"{namespace}.json")
        if not os.path.exists(path):
            return self.node
        try:
            return Policy.load(path)
        except PolicyError as exc:
            raise FailedPrecondition(str(exc)) from exc


def needs_network(policy: Policy | None, ref: ImageReference) -> bool:
    """Whether deciding about ``ref`` takes its signatures (else the policy alone decides)."""
    return policy is not None and any(needs_signatures(r) for r in policy.for_image(ref).requirements)


def decide_without_signatures(policy: Policy | None, ref: ImageReference) -> None:
    """For a policy that needs no signatures for ``ref``: accept or raise."""
    if policy is None:
        return
    scoped = policy.for_image(ref)
    for requirement in scoped.requirements:
        if isinstance(requirement, Reject):
            raise SignatureValidationFailed(ref, scoped.scope, "rejected by policy (requirement \"reject\")")


async def enforce(policy: Policy | None, ref: ImageReference, manifest_raw: bytes, manifest_digest: str, *,
                  registries_d: str, session: aiohttp.ClientSession | None = None,
                  attachments: Attachments | None = None) -> None:
    """Accept ``ref`` (whose top-level manifest is ``manifest_raw``) or raise SignatureValidationFailed.

    ``manifest_digest`` is the digest signatures are looked up by: the manifest the reference names
    (a multi-platform image's index, whose digest covers every platform's manifest). ``attachments`` is
    where sigstore signatures are read, when registries.d says to; None for an image not from a registry."""
    if policy is None:
        return
    scoped = policy.for_image(ref)
    lookup = _SignatureLookup(ref, manifest_digest, registries_d, scoped.scope)
    for requirement in scoped.requirements:
        if isinstance(requirement, InsecureAcceptAnything):
            continue
        if isinstance(requirement, Reject):
            raise SignatureValidationFailed(ref, scoped.scope, "rejected by policy (requirement \"reject\")")
        if isinstance(requirement, SigstoreSigned):
            trust = _sigstore_trust(requirement, ref, scoped.scope)
            attached = await lookup.attached(attachments)
            await _one_signature_holds(requirement.signed_identity, functools.partial(verify_sigstore, trust=trust), attached,
                                       ref, manifest_raw, manifest_digest, scoped.scope)
            continue
        assert isinstance(requirement, SignedBy)
        signatures = await lookup.lookaside(session)
        keys = _keys(requirement.keys, ref, scoped.scope)
        await _one_signature_holds(requirement.signed_identity, functools.partial(verify_gpg, keys=keys), signatures,
                                   ref, manifest_raw, manifest_digest, scoped.scope)


async def enforce_import(policy: Policy | None, names: Sequence[str], manifest_raw: bytes | None, *,
                         registries_d: str) -> None:
    """An image loaded from an archive, to be named ``names``: each name must be one under which the policy
    accepts this manifest, as if pulled by it. A docker-archive (``manifest_raw`` None) has no manifest a
    signature could cover; an untagged image has no name to look signatures up by: either passes only where
    the policy needs no signature."""
    if policy is None:
        return
    if not names:
        if any(isinstance(r, Reject) or needs_signatures(r) for r in policy.default):
            raise FailedPrecondition(f"{MARKER}: an image without a name is refused by the signature policy"
                                     " (default): name it (--tag) to have it checked under that name")
        return
    for name in names:
        ref = parse_reference(name)
        if manifest_raw is None:
            if needs_network(policy, ref):
                raise SignatureValidationFailed(ref, policy.for_image(ref).scope, "a docker-archive has no"
                                                " manifest a signature could cover")
            decide_without_signatures(policy, ref)
            continue
        digest = "sha256:" + hashlib.sha256(manifest_raw).hexdigest()
        await enforce(policy, ref.with_digest(None) if ref.tag else ref, manifest_raw, digest,
                      registries_d=registries_d)


class _SignatureLookup:
    """An image's signatures, each source read at most once per check (a scope may need both)."""

    def __init__(self, ref: ImageReference, manifest_digest: str, registries_d: str, scope: str) -> None:
        self.ref, self.manifest_digest, self.registries_d, self.scope = ref, manifest_digest, registries_d, scope
        self._config: RegistriesD | None = None
        self._lookaside: list[bytes] | None = None
        self._attached: list[SigstoreSignature] | None = None

    def refuse(self, reason: str) -> SignatureValidationFailed:
        return SignatureValidationFailed(self.ref, self.scope, reason)

    async def config(self) -> RegistriesD:
        if self._config is None:
            loop = asyncio.get_running_loop()
            try:
                self._config = await loop.run_in_executor(None, RegistriesD.load, self.registries_d)
            except RegistriesDError as exc:
                raise FailedPrecondition(str(exc)) from exc
        return self._config

    async def lookaside(self, session: aiohttp.ClientSession | None) -> list[bytes]:
        if self._lookaside is None:
            base = (await self.config()).lookaside_for(self.ref)
            if not base:
                raise self.refuse("no signature (registries.d names no lookaside for this image)")
            try:
                signatures = await read_signatures(base, self.ref, self.manifest_digest, session)
            except LookasideUnavailable as exc:
                raise Unavailable(f"reading signatures of {self.ref}: {exc}") from exc
            if not signatures:
                raise self.refuse(f"no signature for manifest {self.manifest_digest} at {base}")
            self._lookaside = signatures
        return self._lookaside

    async def attached(self, attachments: Attachments | None) -> list[SigstoreSignature]:
        if self._attached is None:
            if attachments is None:
                raise self.refuse("no sigstore signature (an image not pulled from a registry has no attachments)")
            if not (await self.config()).uses_sigstore_attachments(self.ref):
                raise self.refuse("no sigstore signature (registries.d does not set use-sigstore-attachments for"
                                  " this image)")
            try:
                signatures = await read_attachments(attachments.client, attachments.repository, self.manifest_digest)
            except SignatureInvalid as exc:
                raise self.refuse(f"sigstore signatures unusable: {exc}") from exc
            except (RegistryAuthError, BlobUnknown, DigestMismatch, InvalidManifest) as exc:
                # The attachment is there but is not what it claims, or may not be read: no usable signature.
                raise self.refuse(f"sigstore signatures unusable: {exc}") from exc
            except RegistryError as exc:
                raise Unavailable(f"reading sigstore signatures of {self.ref}: {exc}") from exc
            if not signatures:
                raise self.refuse(f"no sigstore signature for manifest {self.manifest_digest} in"
                                  f" {attachments.client.host}/{attachments.repository}")
            self._attached = signatures
        return self._attached


def _keys(source: KeySource, ref: ImageReference, scope: str) -> list[bytes]:
    return [*source.data, *(_read_key_file(path, ref, scope) for path in source.paths)]


def _read_key_file(path: str, ref: ImageReference, scope: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read(MAX_KEY_FILE_SIZE)
    except OSError as exc:
        raise SignatureValidationFailed(ref, scope, f"key file {path}: {exc.strerror or exc}") from exc


def _sigstore_trust(requirement: SigstoreSigned, ref: ImageReference, scope: str) -> SigstoreTrust:
    fulcio = requirement.fulcio
    ca = None
    if fulcio is not None:
        ca = _read_key_file(fulcio.ca_path, ref, scope) if fulcio.ca_path else fulcio.ca_data
    rekor = None
    if requirement.rekor_public_key_path:
        rekor = _read_key_file(requirement.rekor_public_key_path, ref, scope)
    elif requirement.rekor_public_key_data:
        rekor = requirement.rekor_public_key_data
    try:
        return load_trust(_keys(requirement.keys, ref, scope), ca, fulcio.oidc_issuer if fulcio else "",
                          fulcio.subject_email if fulcio else "", rekor)
    except TrustInvalid as exc:
        raise SignatureValidationFailed(ref, scope, f"requirement \"sigstoreSigned\": {exc}") from exc


def _digest_of(raw: bytes, algorithm: str) -> str:
    return f"{algorithm}:{hashlib.new(algorithm, raw).hexdigest()}"


async def _one_signature_holds(signed_identity: SignedIdentity, verify: Callable[[_Signature], SignedClaim],
                               signatures: Sequence[_Signature], ref: ImageReference, manifest_raw: bytes,
                               manifest_digest: str, scope: str) -> None:
    loop = asyncio.get_running_loop()
    reasons: list[str] = []
    for number, signature in enumerate(signatures, 1):
        try:
            claim = await loop.run_in_executor(None, verify, signature)
        except SignatureInvalid as exc:
            reasons.append(f"signature {number}: {exc}")
            continue
        except VerifierUnavailable as exc:
            raise FailedPrecondition(f"cannot verify signatures of {ref}: {exc}") from exc
        algorithm = claim.manifest_digest.split(":", 1)[0]
        if _digest_of(manifest_raw, algorithm) != claim.manifest_digest:
            reasons.append(f"signature {number}: digest mismatch: it is for manifest {claim.manifest_digest},"
                           f" not {manifest_digest}")
            continue
        if not signed_identity.matches(ref, claim.docker_reference):
            reasons.append(f"signature {number}: identity mismatch: it names {claim.docker_reference!r}")
            continue
        return
    raise SignatureValidationFailed(ref, scope, "; ".join(reasons))


__all__ = [
    "MARKER",
    "Attachments",
    "SignaturePolicies",
    "SignatureValidationFailed",
    "decide_without_signatures",
    "enforce",
    "enforce_import",
    "needs_network",
]
