"""The package's layers hold: the engine and image I/O stand alone, and no ribsr_cli modules import each other
in a circle.

Checked statically from the source with `ast`, so the test sees every import, including ones inside
functions that a run would only reach on some path, and it needs no torch to run.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "ribsr_cli"
STANDALONE_LAYERS = ("engine", "imaging")  # usable from any program: no CLI toolkit, no command code
FORBIDDEN_IN_STANDALONE = ("typer", "rich", "click", "ribsr_cli.commands", "ribsr_cli.cli")


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def package_of(path: Path) -> str:
    """The package a relative import in `path` is relative to."""
    name = module_name(path)
    return name if path.name == "__init__.py" else name.rpartition(".")[0]


MODULES: dict[str, Path] = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def imported_names(node: ast.Import | ast.ImportFrom, path: Path) -> list[str]:
    """Absolute dotted names one import statement brings in: `from a.b import c` gives `a.b.c` when that is
    a module of the package, else `a.b` (c is then an attribute)."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    base = node.module or ""
    if node.level:
        anchor = package_of(path).split(".")
        anchor = anchor[: len(anchor) - (node.level - 1)]
        base = ".".join(anchor + ([base] if base else []))
    return [f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base for a in node.names]


def is_main_guard_or_type_checking(node: ast.If) -> bool:
    """`if __name__ == "__main__":` and `if TYPE_CHECKING:` blocks do not run when the module is imported."""
    test = ast.unparse(node.test)
    return test in ("TYPE_CHECKING", "typing.TYPE_CHECKING") or "__main__" in test


def import_time_imports(tree: ast.Module) -> Iterator[ast.Import | ast.ImportFrom]:
    """Imports that run when the module is imported: module level, also inside if/try/with, not in functions
    or classes' methods, not under a __main__ or TYPE_CHECKING guard."""
    stack: list[ast.AST] = list(tree.body)
    while stack:
        node = stack.pop()
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        elif isinstance(node, ast.If) and is_main_guard_or_type_checking(node):
            stack.extend(node.orelse)
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            continue
        else:
            stack.extend(ast.iter_child_nodes(node))


def parse(path: Path) -> ast.Module:
    return ast.parse(path.read_text(encoding="utf-8"), filename=str(path))


def import_graph() -> dict[str, set[str]]:
    """ribsr_cli module -> the ribsr_cli modules it imports when it is imported."""
    graph: dict[str, set[str]] = {}
    for name, path in MODULES.items():
        targets = set()
        for node in import_time_imports(parse(path)):
            for target in imported_names(node, path):
                while target and target not in MODULES:  # `import a.b.c` of an attribute: its module
                    target = target.rpartition(".")[0]
                if target.startswith("ribsr_cli") and target != name:
                    targets.add(target)
        graph[name] = targets
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


# --- the checker itself, on made-up sources -----------------------------------------------------------


def test_cycle_finder_finds_a_circle_and_nothing_else() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": set()}
    assert cycles(graph) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_import_time_imports_skip_functions_and_main_guard() -> None:
    tree = ast.parse("import a\ntry:\n    import b\nexcept ImportError:\n    pass\n"
                     "def f():\n    import c\nclass K:\n    import d\n"
                     "if __name__ == '__main__':\n    import e\nif TYPE_CHECKING:\n    import f\n")
    assert sorted(n.names[0].name for n in import_time_imports(tree)) == ["a", "b", "d"]


def test_relative_imports_resolve_to_package_modules() -> None:
    path = PACKAGE / "engine" / "network.py"
    node = ast.parse("from .kernels import attend\nfrom . import registry\nfrom .. import errors").body
    assert imported_names(node[0], path) == ["ribsr_cli.engine.kernels"]
    assert imported_names(node[1], path) == ["ribsr_cli.engine.registry"]
    assert imported_names(node[2], path) == ["ribsr_cli.errors"]


# --- the package -------------------------------------------------------------------------------------


@pytest.mark.parametrize("layer", STANDALONE_LAYERS)
def test_engine_and_imaging_never_import_the_cli(layer: str) -> None:
    """Any import anywhere in the file counts, also inside functions: the engine must run without the CLI."""
    offenders = []
    for path in sorted((PACKAGE / layer).rglob("*.py")):
        for node in ast.walk(parse(path)):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                for name in imported_names(node, path):
                    if any(name == bad or name.startswith(bad + ".") for bad in FORBIDDEN_IN_STANDALONE):
                        offenders.append(f"{path.relative_to(PACKAGE.parent)}:{node.lineno} imports {name}")
    assert not offenders, "\n".join(offenders)


def test_the_package_has_modules_in_every_layer() -> None:
    """Guards the two tests above and below against checking an empty or misnamed tree."""
    graph = import_graph()
    assert {"ribsr_cli.cli", "ribsr_cli.engine.network", "ribsr_cli.imaging.io"} <= set(graph)
    assert "ribsr_cli.errors" in graph["ribsr_cli.cli"]


def test_no_import_cycle_among_ribsr_cli_modules() -> None:
    found = cycles(import_graph())
    assert not found, "import cycles: " + "; ".join(" <-> ".join(c) for c in found)
