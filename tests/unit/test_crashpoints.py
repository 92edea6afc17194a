"""The crash points tests crash the daemon at: one per step of each operation, numbered in order."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

from crio_fast import crashpoints

PACKAGE = Path(__file__).resolve().parents[2] / "src" / "crio_fast"


def points_in_source() -> dict[str, list[int]]:
    found: dict[str, list[int]] = defaultdict(list)
    for path in PACKAGE.rglob("*.py"):
        if path.name.endswith(("_pb2.py", "_pb2_grpc.py")):
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "crash_point":
                operation, step = (arg.value for arg in node.args)  # literals: a test names them
                found[operation].append(step)
    return found


def test_every_step_of_every_operation_is_one_point_in_the_code() -> None:
    found = points_in_source()
    assert sorted(found) == sorted(crashpoints.STEPS)
    for operation, count in crashpoints.STEPS.items():
        assert sorted(found[operation]) == list(range(1, count + 1)), operation


def test_the_docstring_lists_every_step() -> None:
    doc = crashpoints.__doc__ or ""
    for operation, count in crashpoints.STEPS.items():
        section = doc.split(f"\n{operation} (", 1)[1].split("\n", 1)[1]
        numbers = []
        for line in section.splitlines():
            first = line.split(maxsplit=1)[0] if line.strip() else ""
            if not line.startswith("  ") or not first.isdigit():
                break
            numbers.append(int(first))
        assert numbers == list(range(1, count + 1)), operation


def run_with(target: str | None, code: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != crashpoints.ENVIRONMENT_VARIABLE}
    if target is not None:
        env[crashpoints.ENVIRONMENT_VARIABLE] = target
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)


def test_the_named_step_exits_at_once_and_no_other_does() -> None:
    code = ("from crio_fast.crashpoints import crash_point\n"
            "crash_point('runpod', 2)\nprint('after 2', flush=True)\n"
            "crash_point('runpod', 3)\nprint('after 3', flush=True)\n")
    crashed = run_with("runpod:3", code)
    assert crashed.returncode == crashpoints.CRASH_EXIT_CODE
    assert crashed.stdout == "after 2\n" and "crashing at runpod:3" in crashed.stderr
    assert run_with(None, code).stdout == "after 2\nafter 3\n"
    assert run_with("createctr:3", code).returncode == 0
