"""Pull throughput and warm-pull latency from a local registry.

    sudo python bench/pull.py [--layers 5] [--layer-mb 40] [--runs 5] [--compression gzip]

Pushes an image of several layers of varied files (text-like and random
content mixed, so that it compresses like real layers) to a private
docker-registry on 127.0.0.1, then through a private daemon:

* cold pull: PullImage with an empty store (the image is removed between
  runs; the store lives on a tmpfs by default so that deletions do not slow
  the next run's file creation), reported as MB/s of uncompressed content;
* warm pull: PullImage of the image already present (a manifest round trip to
  the registry, nothing downloaded), and of its digest reference (no network).

Medians of the runs; nothing is asserted.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import time

from harness import bench_node

from crio_fast.api import api_pb2 as api
from tests.support.images import LayerBuilder

WORDS = b"the quick brown fox jumps over lazy dog container layer image pod kernel namespace cgroup".split()


def varied_layer(index: int, size_mb: int) -> tuple[LayerBuilder, int]:
    rng = random.Random(index)
    builder = LayerBuilder().dir(f"data{index}")
    total = 0
    n = 0
    while total < size_mb * 1_000_000:
        size = rng.choice((2_000, 20_000, 200_000, 1_000_000))
        if rng.random() < 0.3:
            content = os.urandom(size)
        else:
            content = b" ".join(rng.choice(WORDS) for _ in range(size // 5))[:size]
        builder.file(f"data{index}/f{n}", content)
        total += len(content)
        n += 1
    return builder, total


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layers", type=int, default=5)
    parser.add_argument("--layer-mb", type=int, default=40)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--compression", default="gzip", choices=("gzip", "zstd", "none"))
    parser.add_argument("--dir", default="/run",
                        help="where the daemon's root and image store go (its run root is always a private tmpfs)")
    args = parser.parse_args()

    layers, content = [], 0
    for i in range(args.layers):
        builder, size = varied_layer(i, args.layer_mb)
        layers.append(builder)
        content += size
    with bench_node(args.dir, pull=False, compression=args.compression, extra_layers=layers) as (d, pushed):
        image = d.client.image

        def pull(ref: str) -> float:
            t = time.perf_counter()
            image.PullImage(api.PullImageRequest(image=api.ImageSpec(image=ref)), timeout=600)
            return time.perf_counter() - t

        cold, warm_tag, warm_digest = [], [], []
        for _ in range(args.runs):
            cold.append(pull(pushed.reference))
            warm_tag += [pull(pushed.reference) for _ in range(10)]
            warm_digest += [pull(pushed.digest_reference) for _ in range(10)]
            image.RemoveImage(api.RemoveImageRequest(image=api.ImageSpec(image=pushed.reference)), timeout=120)

    mb = content / 1e6
    print(f"Pull of {args.layers} layers x ~{args.layer_mb} MB ({args.compression}), {args.runs} runs, store under {args.dir}\n")
    print("| what | median | |\n|---|---:|---:|")
    print(f"| cold pull | {statistics.median(cold) * 1000:.0f} ms | {mb / statistics.median(cold):.0f} MB/s |")
    print(f"| warm pull by tag (manifest round trip) | {statistics.median(warm_tag) * 1000:.2f} ms | |")
    print(f"| warm pull by digest (no network) | {statistics.median(warm_digest) * 1000:.2f} ms | |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
