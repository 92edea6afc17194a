#!/usr/bin/env python3
"""Pods on a CNI bridge network with and without network namespaces made ahead, side by side.

    sudo python3 bench/netns_pool.py [--iterations 40] [--pool-size 4]
    sudo python3 bench/netns_pool.py --before OTHER/src [--pool-size 0]   # two builds, one pool size

Two daemons of this build, each on a bridge network of its own (bridge +
host-local, no masquerading, no default route: nothing leaves the machine):
one with ``[crio.network] netns_pool_size = 0`` (each pod's monitor makes its
network namespace in RunPodSandbox) and one with the pool. Every iteration
runs one pod with a container on each daemon, the order alternating, as
bench/podstart_ab.py does, so the machine's drifts land on both alike:

    RunPodSandbox -> CreateContainer -> StartContainer   (timed: "start-up")
    StopPodSandbox -> RemovePodSandbox

With --before (a directory with another build's crio_fast package, native
parts built: a src built in place as for bench/podstart_ab.py, or a venv's
site-packages) the two daemons are that build and this one, both with
--pool-size.

Pods are started one at a time, so the pool refills between them; a burst
larger than the pool finds it empty and its last pods make their own.
Prints the p50 of each phase for both and the ratio (pool / none): below 1
is faster. Nothing is asserted.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import bench_node  # noqa: E402
from podstart import PHASES, one_pod  # noqa: E402

from tests.support.network import (  # noqa: E402
    PLUGIN_DIR, existing_hostport_chains, remove_hostport_chains, remove_network, write_network,
)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--iterations", type=int, default=40)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--pool-size", type=int, default=4, help="the pool's size on the second daemon")
    parser.add_argument("--dir", default="/var/tmp", help="where the daemons' roots go (see podstart.py)")
    parser.add_argument("--before", help="another build's crio_fast parent directory: compare it with this one")
    args = parser.parse_args()
    # name -> (pool size, where the build's crio_fast is: None for the one this Python imports)
    sizes = ({"before": (args.pool_size, os.path.abspath(args.before)), "after": (args.pool_size, None)}
             if args.before else {"no pool": (0, None), f"pool of {args.pool_size}": (args.pool_size, None)})
    timings = {name: {phase: [] for phase in PHASES} for name in sizes}
    chains_before = existing_hostport_chains()
    with contextlib.ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="cf-bench-pool-")))
        nodes = {}
        for n, (name, (size, src)) in enumerate(sizes.items()):
            env = {**os.environ, "PYTHONPATH": src} if src else None
            d, pushed = stack.enter_context(bench_node(
                args.dir, daemon_args=("--cni-plugin-dir", PLUGIN_DIR), daemon_env=env,
                config_drop_in=f"[crio.network]\nnetns_pool_size = {size}\n"))
            network_tmp = tmp / str(n)
            network_tmp.mkdir()
            network = write_network(d.dirs.network_dir, network_tmp, with_portmap=False)
            stack.callback(remove_network, network)
            nodes[name] = (d, pushed)
        if not chains_before:
            stack.callback(remove_hostport_chains)
        for i in range(args.warmup):
            for d, pushed in nodes.values():
                one_pod(d, pushed.reference, "native", -1 - i, {phase: [] for phase in PHASES})
        for i in range(args.iterations):
            order = list(nodes) if i % 2 == 0 else list(reversed(nodes))
            for name in order:
                d, pushed = nodes[name]
                one_pod(d, pushed.reference, "native", i, timings[name])
    before, after = sizes
    print(f"Pods on a CNI bridge network (bridge + host-local), {args.iterations} each, two daemons interleaved "
          "(p50, milliseconds)\n")
    if args.before:
        print(f"before: {args.before}\nafter: this build\npool size of both: {args.pool_size}\n")
    print(f"| phase | {before} | {after} | {after} / {before} |")
    print("|---|---:|---:|---:|")
    for phase in PHASES:
        a, b = (statistics.median(timings[name][phase]) for name in sizes)
        print(f"| {phase} | {a:.2f} | {b:.2f} | {b / a:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
