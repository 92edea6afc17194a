"""Run the benchmark suite and write a report: `sudo python -m bench [--quick] [--out DIR]`.

Runs each benchmark script of this directory in turn (each starts its own
registry and daemon), collects their Markdown tables into DIR/results.md and
draws DIR/podstart.png (start-up latency distribution per handler) and
DIR/density.png (memory against pod count). Needs matplotlib for the plots
(`pip install matplotlib`); without it the tables are still written.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def run_script(name: str, args: list[str]) -> str:
    print(f"== {name} {' '.join(args)}", file=sys.stderr, flush=True)
    result = subprocess.run([sys.executable, str(HERE / name), *args], capture_output=True, text=True)
    if result.returncode != 0:
        return f"{name} failed (exit {result.returncode}):\n\n```\n{result.stderr[-2000:]}\n```\n"
    return result.stdout


def plot(out: Path) -> list[str]:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return ["(matplotlib is not installed: no plots)"]
    made = []
    podstart = out / "podstart.json"
    if podstart.exists():
        data = json.loads(podstart.read_text())
        fig, ax = plt.subplots(figsize=(7, 4))
        handlers = list(data)
        ax.boxplot([data[h]["start-up"] for h in handlers], tick_labels=handlers, showfliers=True)
        ax.set_ylabel("RunPodSandbox + CreateContainer + StartContainer (ms)")
        ax.set_title("Pod start-up latency per runtime handler")
        fig.tight_layout()
        fig.savefig(out / "podstart.png", dpi=100)
        made.append("![pod start-up](podstart.png)")
    density = out / "density.json"
    if density.exists():
        rows = json.loads(density.read_text())
        fig, ax = plt.subplots(figsize=(7, 4))
        pods = [r["pods"] for r in rows]
        ax.plot(pods, [r["daemon"] / 1024 for r in rows], marker="o", label="daemon")
        ax.plot(pods, [r["monitors"] / 1024 for r in rows], marker="o", label="all pod monitors")
        ax.plot(pods, [(r["daemon"] + r["monitors"]) / 1024 for r in rows], marker="o", label="total")
        ax.set_xlabel("pods")
        ax.set_ylabel("PSS (MiB)")
        ax.set_title("Memory against pod count")
        ax.legend()
        fig.tight_layout()
        fig.savefig(out / "density.png", dpi=100)
        made.append("![memory per pod](density.png)")
    return made


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="bench-results", help="results directory (created)")
    parser.add_argument("--quick", action="store_true", help="fewer iterations and smaller sizes")
    parser.add_argument("--handlers", default="native", help="runtime handlers for podstart (e.g. native,runc)")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    quick = args.quick
    sections = [
        ("Pod start-up", run_script("podstart.py", ["--iterations", "15" if quick else "50", "--handlers", args.handlers,
                                                    "--json", str(out / "podstart.json")])),
        ("Burst", run_script("burst.py", ["--sizes", "1,10" if quick else "1,10,50"])),
        ("CNI share of RunPodSandbox", run_script("cni.py", ["--pods", "5"] if quick else [])),
        ("Density", run_script("density.py", ["--sizes", "10,30" if quick else "10,100,250",
                                              "--json", str(out / "density.json")])),
        ("Stats for many containers", run_script("stats.py", ["--containers", "50", "--pods", "10"] if quick else [])),
        ("Pull", run_script("pull.py", ["--runs", "2" if quick else "5"] + (["--layer-mb", "10"] if quick else []))),
        ("Extraction", run_script("extract.py", ["--runs", "1" if quick else "5"])),
        ("Attach output", run_script("attach_throughput.py", ["--megabytes", "20" if quick else "100",
                                                              "--rounds", "1" if quick else "3"])),
    ]
    header = [
        "# crio-fast benchmark results",
        "",
        f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M UTC}; {platform.node()}; "
        f"{os.cpu_count()} CPUs; Linux {platform.release()}; Python {platform.python_version()}",
        "",
    ]
    body = []
    for title, text in sections:
        body += [f"## {title}", "", text.strip(), ""]
    body += plot(out)
    (out / "results.md").write_text("\n".join(header + body) + "\n")
    print(out / "results.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
