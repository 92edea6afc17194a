"""Two builds side by side: pod start-up of each, pods interleaved, in one run.

    sudo python bench/podstart_ab.py --before OTHER/src [--after src] [--iterations 60]

BEFORE and AFTER are the src directories of two checkouts, each with its
native parts built in place (``python setup.py build_ext --inplace``), e.g.
the commit before a change in a ``git worktree``. Each gets its own registry
and daemon (run through that PYTHONPATH); then every iteration starts and
tears down one pod on each daemon, the order alternating, so that the
machine's slow drifts (other jobs on shared vCPUs, ext4 after deletions)
land on both builds alike. Separate runs of one build, one after the other,
differ by more than most changes do on these VMs; interleaved, two daemons
of the *same* build come out within about 4 % of each other (run it with
--before and --after the same to see the noise floor of the day).

Prints the p50 of every phase for both builds and their ratio (after /
before): below 1 is faster. Nothing is asserted.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import sys
from pathlib import Path

from harness import bench_node
from podstart import PHASES, handler_config, one_pod


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--before", required=True, help="src directory of the build to compare against")
    parser.add_argument("--after", default=str(Path(__file__).resolve().parent.parent / "src"),
                        help="src directory of the build under test (default: this checkout's)")
    parser.add_argument("--iterations", type=int, default=60)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--handler", default="native", help="native, runc or crun (Debian's), as podstart.py")
    parser.add_argument("--dir", default="/var/tmp", help="where the daemons' roots go (see podstart.py)")
    args = parser.parse_args()
    builds = {"before": os.path.abspath(args.before), "after": os.path.abspath(args.after)}
    for name, src in builds.items():
        if not (Path(src) / "crio_fast" / "__init__.py").is_file():
            parser.error(f"--{name} {src}: not a src directory with crio_fast in it")
    timings = {name: {phase: [] for phase in PHASES} for name in builds}
    runtimes, drop_in = handler_config([args.handler], [])
    with contextlib.ExitStack() as stack:
        nodes = {}
        for name, src in builds.items():
            env = {**os.environ, "PYTHONPATH": src}
            nodes[name] = stack.enter_context(bench_node(args.dir, daemon_env=env, runtimes=tuple(runtimes),
                                                         config_drop_in=drop_in))
        for i in range(args.warmup):
            for d, pushed in nodes.values():
                one_pod(d, pushed.reference, args.handler, -1 - i, {phase: [] for phase in PHASES})
        for i in range(args.iterations):
            order = list(nodes) if i % 2 == 0 else list(reversed(nodes))
            for name in order:
                d, pushed = nodes[name]
                one_pod(d, pushed.reference, args.handler, i, timings[name])
    print(f"Pod start-up, two builds interleaved, {args.iterations} pods each, handler {args.handler} "
          "(p50, milliseconds)\n")
    print(f"before: {builds['before']}\nafter:  {builds['after']}\n")
    print("| phase | before | after | after / before |")
    print("|---|---:|---:|---:|")
    for phase in PHASES:
        before, after = (statistics.median(timings[name][phase]) for name in builds)
        print(f"| {phase} | {before:.2f} | {after:.2f} | {after / before:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
