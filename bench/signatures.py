"""What the signature policy adds to a pull, side by side.

    sudo python bench/signatures.py [--rounds 20] [--lookaside file|http]

Two daemons on one registry and one image: one with no signature policy, one
whose policy requires a GPG signature by a known key for the registry
(signedBy, simple signing, signatures in a lookaside read over file:// or
HTTP on 127.0.0.1). Rounds alternate between the daemons; each round makes
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

from harness import bench_node

from crio_fast.api import api_pb2 as api
from tests.support.daemon import Daemon, make_dirs, remove_dirs
from tests.support.registries_conf import write_registries_conf
from tests.support.signing import GpgSigner, LookasideServer, gnupg_missing, publish, simple_signing_payload

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

    names = ("no policy", "signedBy (GPG)")
    cold: dict[str, list[float]] = {n: [] for n in names}
    warm_tag: dict[str, list[float]] = {n: [] for n in names}
    warm_digest: dict[str, list[float]] = {n: [] for n in names}
    with bench_node(args.dir, pull=False) as (plain, pushed), tempfile.TemporaryDirectory(prefix="cf-sig-") as tmp:
        work = Path(tmp)
        signer = GpgSigner("Bench")
        server = None
        dirs = make_dirs(args.dir)
        signed = None
        try:
            lookaside = work / "lookaside"
            lookaside.mkdir()
            publish(lookaside, pushed.reference, pushed.repo_digest,
                    [signer.sign(simple_signing_payload(pushed.repo_digest, pushed.reference))])
            if args.lookaside == "http":
                server = LookasideServer(lookaside)
                url = server.url
            else:
                url = lookaside.as_uri()
            registries_d = work / "registries.d"
            registries_d.mkdir()
            (registries_d / "default.yaml").write_text(f"default-docker:\n  lookaside: {url}\n")
            policy = work / "policy.json"
            key = base64.b64encode(signer.public_key()).decode()
            policy.write_text(json.dumps({
                "default": [{"type": "reject"}],
                "transports": {"docker": {pushed.registry: [
                    {"type": "signedBy", "keyType": "GPGKeys", "keyData": key}]}},
            }))
            conf = write_registries_conf(work / "registries.conf", [pushed.registry])
            signed = Daemon(dirs, "--registries-conf", str(conf), "--log-level", "warn",
                            "--signature-policy", str(policy), "--registries-d", str(registries_d)).start()
            daemons = {names[0]: plain, names[1]: signed}
            for d in daemons.values():  # warm-up: the first pull of each daemon pays for imports and sessions
                pull(d, pushed.reference)
            for round_number in range(args.rounds):
                order = list(daemons.items()) if round_number % 2 == 0 else list(reversed(daemons.items()))
                for name, d in order:
                    d.client.image.RemoveImage(api.RemoveImageRequest(image=api.ImageSpec(image=pushed.reference)),
                                               timeout=60)
                    cold[name].append(pull(d, pushed.reference))
                    warm_tag[name] += [pull(d, pushed.reference) for _ in range(WARM_PULLS)]
                    warm_digest[name] += [pull(d, pushed.digest_reference) for _ in range(WARM_PULLS)]
        finally:
            try:
                if signed is not None:
                    signed.stop()
            finally:
                remove_dirs(dirs)
                if server is not None:
                    server.close()
                signer.close()

    print(f"Pull of a busybox image, {args.rounds} interleaved rounds, lookaside over {args.lookaside}, p50 in ms\n")
    print(f"| pull | {names[0]} | {names[1]} | added | ratio |\n|---|---:|---:|---:|---:|")
    for label, samples in (("cold", cold), ("warm by tag", warm_tag), ("warm by digest", warm_digest)):
        base, policy_p50 = (statistics.median(samples[n]) * 1000 for n in names)
        print(f"| {label} | {base:.2f} | {policy_p50:.2f} | {policy_p50 - base:+.2f} | {policy_p50 / base:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
