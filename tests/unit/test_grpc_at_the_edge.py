"""gRPC stays at the edge: only server/ and client/ import it."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "src" / "crio_fast"
# server/ and client/ speak gRPC; api/ holds the stubs generated from the CRI proto.
EDGE = ("server", "client", "api")
# The generated service stubs import grpc themselves.
GRPC_MODULES = ("grpc", "crio_fast.api.api_pb2_grpc")


def _is_grpc(module: str) -> bool:
    return any(module == name or module.startswith(name + ".") for name in GRPC_MODULES)


def grpc_imports(source: str, package: str = "crio_fast") -> list[str]:
    """Names of the gRPC modules ``source`` (a module of ``package``) imports, wherever the statement is."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [alias.name for alias in node.names if _is_grpc(alias.name)]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: "from ..api import x" in crio_fast.stats is crio_fast.api
                parent = package.split(".")[:len(package.split(".")) - node.level + 1]
                module = ".".join([*parent, *([node.module] if node.module else [])])
            else:
                module = node.module or ""
            if _is_grpc(module):
                found.append(module)
            else:  # a module of a package: from crio_fast.api import api_pb2_grpc
                found += [f"{module}.{alias.name}" for alias in node.names if _is_grpc(f"{module}.{alias.name}")]
    return found


def test_grpc_imports_are_found():
    assert grpc_imports("import grpc") == ["grpc"]
    assert grpc_imports("import os, grpc.aio as aio") == ["grpc.aio"]
    assert grpc_imports("def f():\n    from grpc import StatusCode\n") == ["grpc"]
    assert grpc_imports("from crio_fast.api import api_pb2, api_pb2_grpc") == ["crio_fast.api.api_pb2_grpc"]
    assert grpc_imports("from ..api import api_pb2_grpc", "crio_fast.stats") == ["crio_fast.api.api_pb2_grpc"]
    assert grpc_imports("from . import api_pb2_grpc", "crio_fast.stats") == []
    assert grpc_imports("import grpcio_tools\nfrom crio_fast.api import api_pb2\nimport crio_fast.errors") == []


def test_only_the_edge_imports_grpc():
    modules = sorted(PACKAGE.rglob("*.py"))
    assert PACKAGE / "errors.py" in modules
    offenders = {}
    for path in modules:
        relative = path.relative_to(PACKAGE)
        if relative.parts[0] in EDGE:
            continue
        package = ".".join(["crio_fast", *relative.parent.parts])
        imported = grpc_imports(path.read_text(), package)
        if imported:
            offenders[str(relative)] = imported
    assert not offenders, f"gRPC imported outside {', '.join(EDGE)}: {offenders}"
