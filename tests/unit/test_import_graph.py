"""No import cycles in src/: not between Python modules (imports for type checking aside), not between
the native C files' own headers. A cycle means two layers each decide part of the other's job."""

from __future__ import annotations

import ast
import re
from pathlib import Path

SRC = Path(__file__).resolve().parents[2] / "src"
PACKAGE = SRC / "crio_fast"
NATIVE = PACKAGE / "_native"


def module_name(path: Path) -> str:
    parts = path.relative_to(SRC).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _type_checking_only(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def imported_modules(path: Path, modules: set[str]) -> set[str]:
    """The crio_fast modules ``path`` imports, at any depth of its code, outside ``if TYPE_CHECKING``."""
    this = module_name(path)
    package = this if path.name == "__init__.py" else this.rpartition(".")[0]
    found: set[str] = set()

    def resolve(name: str) -> str | None:
        """The module ``name`` is, or is an attribute of; None for one not in src/ (generated at build)."""
        if name in modules:
            return name
        parent = name.rpartition(".")[0]
        return parent if parent in modules else None

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _type_checking_only(node):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "crio_fast" and (target := resolve(alias.name)):
                    found.add(target)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                source = f"{base}.{node.module}" if node.module else base
            else:
                source = node.module or ""
            if source.split(".")[0] == "crio_fast":
                for alias in node.names:
                    # "from pkg import module" imports the module; "from module import name" the module.
                    target = resolve(f"{source}.{alias.name}")
                    if target:
                        found.add(target)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(ast.parse(path.read_text(), str(path)))
    found.discard(this)
    return found


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one member, or a member importing itself (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def connect(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph.get(node, ())):
            if target not in index:
                connect(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1 or node in graph.get(node, ()):
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            connect(node)
    return found


def python_graph() -> dict[str, set[str]]:
    files = [p for p in PACKAGE.rglob("*.py") if not p.name.endswith(("_pb2.py", "_pb2_grpc.py"))]
    modules = {module_name(p) for p in files}
    return {module_name(p): imported_modules(p, modules) for p in files}


def c_graph() -> dict[str, set[str]]:
    include = re.compile(r'^\s*#\s*include\s+"([^"]+)"', re.MULTILINE)
    files = [p for p in NATIVE.rglob("*") if p.suffix in (".c", ".h")]
    graph: dict[str, set[str]] = {}
    for path in files:
        name = str(path.relative_to(NATIVE))
        graph[name] = {str((path.parent / target).resolve().relative_to(NATIVE))
                       for target in include.findall(path.read_text(errors="replace"))
                       if (path.parent / target).exists()}
    return graph


def test_python_modules_import_no_cycle():
    graph = python_graph()
    assert len(graph) > 50 and graph["crio_fast.container.manager"], "the graph was not read"
    assert cycles(graph) == []


# Package -> packages it must not import: each layer uses the ones under it (docs/architecture.md, "Layers").
FORBIDDEN = {
    "sandbox": {"container", "server", "stats"},
    "runtime": {"container", "sandbox", "image", "server", "stats"},
    "image": {"container", "sandbox", "runtime", "server"},
    "state": {"container", "sandbox", "runtime", "image", "server"},
    "cgroups": {"container", "sandbox", "runtime", "image", "server"},
    "network": {"container", "sandbox", "image", "server"},
    "config": {"container", "sandbox", "runtime", "image", "server", "state"},
    "container": {"server"},
    "stats": {"server"},
}


def test_layers_import_only_downwards():
    def package(module: str) -> str:
        parts = module.split(".")
        return parts[1] if len(parts) > 1 else ""

    wrong = sorted((module, target) for module, targets in python_graph().items() for target in targets
                   if package(target) in FORBIDDEN.get(package(module), ()))
    assert wrong == []


def test_native_headers_include_no_cycle():
    graph = c_graph()
    assert any(graph.values()), "no includes read"
    assert cycles(graph) == []


def test_the_checker_sees_a_cycle(tmp_path):
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"a"}}) == [["a"]]
    assert cycles({"a": {"b"}, "b": set()}) == []
    # A deferred import inside a function is a dependency too; one under TYPE_CHECKING is not.
    (tmp_path / "m.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import crio_fast.x\n"
                                   "def f():\n    from crio_fast import y\n")
    global SRC
    saved, SRC = SRC, tmp_path
    try:
        assert imported_modules(tmp_path / "m.py", {"crio_fast.x", "crio_fast.y", "m"}) == {"crio_fast.y"}
    finally:
        SRC = saved
