"""bench/ runs without pytest installed: the helpers it shares with the tests must not import it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
# The two modules that are pytest plugins; everything else in tests/support is bench's too.
PYTEST_PLUGINS = {"fixtures", "monitor_fixtures", "signing_fixtures"}

# pytest made unimportable, as in an environment with only the `bench` extra.
BLOCK_PYTEST = """
import sys
class NoPytest:
    def find_spec(self, name, path=None, target=None):
        if name == "pytest" or name.startswith(("pytest.", "_pytest")):
            raise ModuleNotFoundError(f"No module named {{name!r}} (blocked)")
sys.meta_path.insert(0, NoPytest())
sys.path[:0] = [{repo!r}, {bench!r}]
import importlib
for name in {modules!r}:
    importlib.import_module(name)
"""


def test_support_modules_and_bench_harness_import_without_pytest() -> None:
    modules = sorted(f"tests.support.{p.stem}" for p in (REPO / "tests" / "support").glob("*.py")
                     if p.stem != "__init__" and p.stem not in PYTEST_PLUGINS)
    modules.append("harness")  # bench/harness.py, as the bench scripts import it
    code = BLOCK_PYTEST.format(repo=str(REPO), bench=str(REPO / "bench"), modules=modules)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                            cwd=REPO / "bench")
    assert result.returncode == 0, result.stderr
