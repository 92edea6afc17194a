"""scripts/lib/python-env.sh: which Python environment the scripts install into and run from."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def chosen_python(**env: str) -> str:
    clean = {k: v for k, v in os.environ.items() if k not in ("PYTHON", "CRIO_FAST_VENV", "CRIO_FAST_LINK")}
    result = subprocess.run(["bash", "-c", ". scripts/lib/python-env.sh && crio_fast_python"], cwd=REPO,
                            env={**clean, **env}, capture_output=True, text=True, timeout=60, check=True)
    return result.stdout.strip()


@pytest.mark.skipif(sys.prefix == sys.base_prefix, reason="needs the tests to run in a venv")
def test_a_venv_interpreter_is_used_as_it_is() -> None:
    # scripts/vm's guests: PYTHON=/opt/venv/bin/python scripts/test --installed
    assert chosen_python(PYTHON=sys.executable, CRIO_FAST_VENV="/elsewhere") == sys.executable


def test_a_base_interpreter_gets_the_dedicated_venv(tmp_path: Path) -> None:
    base = str(Path(sys.base_prefix) / "bin" / "python3")
    assert chosen_python(PYTHON=base, CRIO_FAST_VENV=str(tmp_path / "venv")) == str(tmp_path / "venv/bin/python")
    assert chosen_python(PYTHON=base) == "/opt/crio-fast/bin/python"
