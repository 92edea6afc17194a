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
import hashlib
import os
import re
from dataclasses import dataclass
from typing import Sequence

import aiohttp

from crio_fast.errors import FailedPrecondition, InvalidArgument, Unavailable, cut, shown
from crio_fast.image.lookaside import LookasideUnavailable, RegistriesD, RegistriesDError, read_signatures
from crio_fast.image.policy import (
    InsecureAcceptAnything,
    KeySource,
    Policy,
    PolicyError,
    Reject,
    SignedBy,
    SigstoreSigned,
    needs_signatures,
)
from crio_fast.image.reference import ImageReference, parse_reference
from crio_fast.image.simple_signing import SignatureInvalid, VerifierUnavailable, verify

MARKER = "SignatureValidationFailed"
MAX_KEY_FILE_SIZE = 1 << 20
_REASON_LIMIT = 600
# A Kubernetes namespace is a DNS label: it names a file in signature_policy_dir and nothing else.
_NAMESPACE_RE = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")


class SignatureValidationFailed(FailedPrecondition):
    """An image the signature policy refuses."""

    def __init__(self, image: ImageReference, scope: str, reason: str) -> None:
        super().__init__(f"{MARKER}: image {image} refused by the signature policy ({scope}): {cut(reason, _REASON_LIMIT)}")


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
                  registries_d: str, session: aiohttp.ClientSession | None = None) -> None:
    """Accept ``ref`` (whose top-level manifest is ``manifest_raw``) or raise SignatureValidationFailed.

    ``manifest_digest`` is the digest signatures are looked up by: the manifest the reference names
    (a multi-platform image's index, whose digest covers every platform's manifest)."""
    if policy is None:
        return
    scoped = policy.for_image(ref)
    signatures: list[bytes] | None = None
    for requirement in scoped.requirements:
        if isinstance(requirement, InsecureAcceptAnything):
            continue
        if isinstance(requirement, Reject):
            raise SignatureValidationFailed(ref, scoped.scope, "rejected by policy (requirement \"reject\")")
        if isinstance(requirement, SigstoreSigned):
            raise SignatureValidationFailed(ref, scoped.scope, "requirement \"sigstoreSigned\": sigstore signatures"
                                                               " are not verified yet")
        assert isinstance(requirement, SignedBy)
        if signatures is None:
            signatures = await _signatures(ref, manifest_digest, registries_d, session, scoped.scope)
        keys = _keys(requirement.keys, ref, scoped.scope)
        await _one_signature_holds(requirement, keys, signatures, ref, manifest_raw, manifest_digest, scoped.scope)


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


async def _signatures(ref: ImageReference, manifest_digest: str, registries_d: str,
                      session: aiohttp.ClientSession | None, scope: str) -> list[bytes]:
    loop = asyncio.get_running_loop()
    try:
        config = await loop.run_in_executor(None, RegistriesD.load, registries_d)
    except RegistriesDError as exc:
        raise FailedPrecondition(str(exc)) from exc
    base = config.lookaside_for(ref)
    if not base:
        raise SignatureValidationFailed(ref, scope, "no signature (registries.d names no lookaside for this image)")
    try:
        signatures = await read_signatures(base, ref, manifest_digest, session)
    except LookasideUnavailable as exc:
        raise Unavailable(f"reading signatures of {ref}: {exc}") from exc
    if not signatures:
        raise SignatureValidationFailed(ref, scope, f"no signature for manifest {manifest_digest} at {base}")
    return signatures


def _keys(source: KeySource, ref: ImageReference, scope: str) -> list[bytes]:
    keys = list(source.data)
    for path in source.paths:
        try:
            with open(path, "rb") as f:
                keys.append(f.read(MAX_KEY_FILE_SIZE))
        except OSError as exc:
            raise SignatureValidationFailed(ref, scope, f"key file {path}: {exc.strerror or exc}") from exc
    return keys


def _digest_of(raw: bytes, algorithm: str) -> str:
    return f"{algorithm}:{hashlib.new(algorithm, raw).hexdigest()}"


async def _one_signature_holds(requirement: SignedBy, keys: Sequence[bytes], signatures: Sequence[bytes],
                               ref: ImageReference, manifest_raw: bytes, manifest_digest: str, scope: str) -> None:
    loop = asyncio.get_running_loop()
    reasons: list[str] = []
    for number, signature in enumerate(signatures, 1):
        try:
            claim = await loop.run_in_executor(None, verify, signature, keys)
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
        if not requirement.signed_identity.matches(ref, claim.docker_reference):
            reasons.append(f"signature {number}: identity mismatch: it names {claim.docker_reference!r}")
            continue
        return
    raise SignatureValidationFailed(ref, scope, "; ".join(reasons))


__all__ = [
    "MARKER",
    "SignaturePolicies",
    "SignatureValidationFailed",
    "decide_without_signatures",
    "enforce",
    "enforce_import",
    "needs_network",
]
