"""Output throughput of an attach stream (run as root).

Usage::

    python bench/attach_throughput.py [--megabytes N] [--rounds R] [--attachers A]

In a fresh directory under /tmp (removed at the end), with a busybox-static
rootfs: a container waits for a line on stdin, then writes N MiB (default 50)
of `yes` output (37-byte lines) or of /dev/zero (no newline: every 16 KiB chunk
is one partial log record), then exits; its CRI log is on tmpfs (/dev/shm). A attachers (default 1) read through
AttachStream until the exit packet; reported: MiB/s from the go line to the
exit packet, and, for comparison, the same container with no attacher (CRI
log only), median of R rounds (default 3).
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from crio_fast.runtime import read_exit_file  # noqa: E402
from crio_fast.runtime.attach import AttachStream  # noqa: E402
from tests.support.monitor_harness import child_subreaper, private_harness  # noqa: E402
from tests.support.rootfs import build_busybox_rootfs  # noqa: E402

# dd with 64 KiB blocks: busybox `head -c` itself only manages about 130 MiB/s here.
SOURCES = {
    "yes": "yes 0123456789abcdefghijklmnopqrstuvwxyz | dd bs=65536 count={blocks} iflag=fullblock 2>/dev/null",
    "zero": "dd if=/dev/zero bs=65536 count={blocks} 2>/dev/null",
}


async def run_once(harness, monitor, log_dir: Path, name: str, source: str, size: int, attachers: int) -> float:
    script = "read go; " + SOURCES[source].format(blocks=size // 65536)
    # The CRI log on tmpfs: on this VM's disk, writeback caps any run at about 100 MiB/s.
    log_path = log_dir / f"{name}.log"
    monitor.create(name, harness.plan(name, ["/bin/sh", "-c", script], stdin=True), str(log_path))
    monitor.start(name)
    streams = [await AttachStream.open(monitor.pod_dir, name, stdin=True) for _ in range(max(attachers, 1))]
    readers = streams[:attachers]

    async def drain(stream: AttachStream) -> int:
        total = 0
        while (item := await stream.read()) is not None:
            if item[0] != "exit":
                total += len(item[1])
        return total

    started = time.perf_counter()
    await streams[0].write_stdin(b"go\n")
    if readers:
        totals = await asyncio.gather(*(drain(s) for s in readers))
        assert all(t == size for t in totals), (totals, size)
    else:
        await streams[0].close()
        while read_exit_file(harness.exits / name) is None:
            await asyncio.sleep(0.001)
    elapsed = time.perf_counter() - started
    for s in streams:
        await s.close()
    monitor.remove(name)
    log_path.unlink()
    return size / elapsed / (1 << 20)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--megabytes", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--attachers", type=int, default=1)
    args = parser.parse_args()
    size = args.megabytes << 20
    rootfs_dir = Path(tempfile.mkdtemp(prefix="cfa-rootfs-", dir="/tmp"))
    log_dir = Path(tempfile.mkdtemp(prefix="cfa-logs-", dir="/dev/shm"))
    try:
        with child_subreaper(), private_harness(build_busybox_rootfs(rootfs_dir / "rootfs")) as harness:
            measure(harness, log_dir, args, size)
    finally:
        shutil.rmtree(rootfs_dir, ignore_errors=True)
        shutil.rmtree(log_dir, ignore_errors=True)


def measure(harness, log_dir: Path, args: argparse.Namespace, size: int) -> None:
    monitor = harness.spawn()
    n = 0
    for source in SOURCES:
        for attachers in (0, args.attachers):
            rates = []
            for _ in range(args.rounds):
                n += 1
                rates.append(asyncio.run(run_once(harness, monitor, log_dir, f"c{n}", source, size, attachers)))
            label = f"{attachers} attacher(s)" if attachers else "log only"
            print(f"{source:5} {args.megabytes} MiB, {label:14}: {statistics.median(rates):7.1f} MiB/s "
                  f"(rounds: {', '.join(f'{r:.0f}' for r in rates)})")


if __name__ == "__main__":
    main()
