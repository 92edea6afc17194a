"""What the signature policy adds to a pull, side by side.

    sudo python bench/signatures.py [--rounds 20] [--lookaside file|http]

Three daemons on one registry and one image: one with no signature policy,
one whose policy requires a GPG signature by a known key for the registry
(signedBy, simple signing, signatures in a lookaside read over file:// or
HTTP on 127.0.0.1), and one that requires a sigstore signature by a known key
(sigstoreSigned, a cosign attachment in the registry). Rounds rotate the
daemons' order; each round makes
a cold pull (the image removed first), warm pulls by tag (a manifest round
trip, and with the policy a signature read and a gpgv run each time) and warm
pulls by digest (the image present: no network; with the policy, an
acceptance by the same policy is remembered). Medians in ms and the added
cost; nothing is asserted.
"""

from __future__ import annotations

import argparse
import base64
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import harness  # noqa: F401  (puts the checkout on sys.path)

from crio_fast.api import api_pb2 as api
from tests.support.daemon import Daemon, make_dirs, remove_dirs
from tests.support.images import push_image
from tests.support.registries_conf import write_registries_conf
from tests.support.registry import RegistryServer
from tests.support.signing import (
    CosignKey,
    GpgSigner,
    LookasideServer,
    gnupg_missing,
    publish,
    publish_sigstore,
    sign_cosign,
    simple_signing_payload,
)

WARM_PULLS = 5


def pull(d: Daemon, ref: str) -> float:
    t = time.perf_counter()
    d.client.image.PullImage(api.PullImageRequest(image=api.ImageSpec(image=ref)), timeout=120)
    return time.perf_counter() - t


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--lookaside", choices=("file", "http"), default="file")
    parser.add_argument("--dir", default="/run", help="where the daemons' roots go")
    args = parser.parse_args()
    if gnupg_missing():
        print(f"cannot sign: {gnupg_missing()}", file=sys.stderr)
        return 1

    names = ("no policy", "signedBy (GPG)", "sigstoreSigned (key)")
    cold: dict[str, list[float]] = {n: [] for n in names}
    warm_tag: dict[str, list[float]] = {n: [] for n in names}
    warm_digest: dict[str, list[float]] = {n: [] for n in names}
    with tempfile.TemporaryDirectory(prefix="cf-sig-") as tmp:
        work = Path(tmp)
        registry = RegistryServer(work / "registry")
        signer = None
        server = None
        daemons: dict[str, Daemon] = {}
        all_dirs = []
        try:
            registry.start()
            signer = GpgSigner("Bench")
            pushed = push_image(registry, "bench/busybox", "latest")
            lookaside = work / "lookaside"
            lookaside.mkdir()
            publish(lookaside, pushed.reference, pushed.repo_digest,
                    [signer.sign(simple_signing_payload(pushed.repo_digest, pushed.reference))])
            cosign = CosignKey()
            publish_sigstore(registry, pushed.repository, pushed.repo_digest,
                             [sign_cosign(cosign, pushed.repo_digest, pushed.reference)])
            if args.lookaside == "http":
                server = LookasideServer(lookaside)
                url = server.url
            else:
                url = lookaside.as_uri()
            registries_d = work / "registries.d"
            registries_d.mkdir()
            (registries_d / "default.yaml").write_text(
                f"default-docker:\n  lookaside: {url}\n  use-sigstore-attachments: true\n")
            conf = write_registries_conf(work / "registries.conf", [registry.host])
            requirements = {
                names[1]: {"type": "signedBy", "keyType": "GPGKeys",
                           "keyData": base64.b64encode(signer.public_key()).decode()},
                names[2]: {"type": "sigstoreSigned", "keyData": base64.b64encode(cosign.public_pem()).decode()},
            }
            for name in names:
                dirs = make_dirs(args.dir)
                all_dirs.append(dirs)
                policy_args: list[str] = []
                if name in requirements:
                    policy = work / f"policy-{len(all_dirs)}.json"
                    policy.write_text(json.dumps({"default": [{"type": "reject"}],
                                                  "transports": {"docker": {registry.host: [requirements[name]]}}}))
                    policy_args = ["--signature-policy", str(policy), "--registries-d", str(registries_d)]
                daemons[name] = Daemon(dirs, "--registries-conf", str(conf), "--log-level", "warn",
                                       *policy_args).start()
            for d in daemons.values():  # warm-up: the first pull of each daemon pays for imports and sessions
                pull(d, pushed.reference)
            order = list(daemons.items())
            for _ in range(args.rounds):
                order = order[1:] + order[:1]
                for name, d in order:
                    d.client.image.RemoveImage(api.RemoveImageRequest(image=api.ImageSpec(image=pushed.reference)),
                                               timeout=60)
                    cold[name].append(pull(d, pushed.reference))
                    warm_tag[name] += [pull(d, pushed.reference) for _ in range(WARM_PULLS)]
                    warm_digest[name] += [pull(d, pushed.digest_reference) for _ in range(WARM_PULLS)]
        finally:
            for d in daemons.values():
                d.stop()
            for dirs in all_dirs:
                remove_dirs(dirs)
            if server is not None:
                server.close()
            if signer is not None:
                signer.close()
            registry.stop()

    print(f"Pull of a busybox image, {args.rounds} interleaved rounds, lookaside over {args.lookaside}, p50 in ms\n")
    print("| pull | " + " | ".join(names) + " | added: GPG | added: sigstore |\n|---|" + "---:|" * (len(names) + 2))
    for label, samples in (("cold", cold), ("warm by tag", warm_tag), ("warm by digest", warm_digest)):
        p50 = [statistics.median(samples[n]) * 1000 for n in names]
        print(f"| {label} | " + " | ".join(f"{v:.2f}" for v in p50)
              + "".join(f" | {v - p50[0]:+.2f} ({v / p50[0]:.2f}x)" for v in p50[1:]) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
