"""The package layout: no import cycle between speechfuse's modules, counting imports inside functions
(imports under `if TYPE_CHECKING:` are never executed and are left out), the top level holds only the
groups of the data path and the bottom-level modules, and no test file imports another test file or conftest
(shared builders live in tests/helpers.py)."""
from __future__ import annotations

import ast
import re
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "speechfuse"
TESTS = Path(__file__).resolve().parent


def _module(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    files = {_module(p): p for p in PACKAGE.rglob("*.py")}
    edges: dict[str, set[str]] = {m: set() for m in files}
    for mod, path in files.items():
        package = mod if path.name == "__init__.py" else mod.rpartition(".")[0]
        tree = ast.parse(path.read_text())
        unexecuted = {id(n) for block in ast.walk(tree) if isinstance(block, ast.If)
                      and "TYPE_CHECKING" in ast.unparse(block.test) for n in ast.walk(block)}
        for node in ast.walk(tree):
            if id(node) in unexecuted:
                continue
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                    stem = ".".join(base + ([node.module] if node.module else []))
                else:
                    stem = node.module or ""
                targets = [stem] + [f"{stem}.{alias.name}" for alias in node.names]
            else:
                continue
            for target in targets:
                while target and target not in files:
                    target = target.rpartition(".")[0]
                if target and target != mod:
                    edges[mod].add(target)
    return edges


def strongly_connected(edges: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's algorithm, iterative; components of more than one module are import cycles."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles = []
    for root in edges:
        if root in index:
            continue
        work = [(root, iter(sorted(edges[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(edges[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    cycles.append(sorted(component))
    return cycles


def test_the_cycle_finder_finds_a_cycle():
    assert strongly_connected({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert strongly_connected({"a": {"b"}, "b": set()}) == []


def test_no_import_cycle_counting_function_local_imports():
    graph = import_graph()
    assert len(graph) > 40, "the graph should cover every module"
    assert strongly_connected(graph) == []


def test_top_level_reads_as_the_data_path():
    groups = {p.name for p in PACKAGE.iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    assert {"fusion", "tasks", "training", "experiments", "serving", "data", "cache", "cli"} <= groups
    flat = {p.stem for p in PACKAGE.glob("*.py") if p.stem != "__init__"}
    # the bottom layer (errors, io, registry, options, plugins), the config and its writer, the docs generator
    assert flat == {"errors", "io", "registry", "options", "plugins", "config", "init_config", "reference"}


# an import statement at the start of a line, also inside a script held in a string for a subprocess
_TEST_MODULE_IMPORT = re.compile(r"^[ \t]*(?:from|import)[ \t]+(test_\w+|conftest)\b", re.M)


def imports_of_test_modules(source: str) -> list[str]:
    """The test modules (test_*, conftest) that `source` imports, in order."""
    return _TEST_MODULE_IMPORT.findall(source)


def test_the_test_import_finder_finds_them():
    script = 'S = """\n    from test_cache import FakeUpstream\n"""\n'
    source = "import os\nfrom test_train import make_fsdd\ndef f():\n    import conftest\n" + script
    assert imports_of_test_modules(source) == ["test_train", "conftest", "test_cache"]
    assert imports_of_test_modules("from helpers import make_fsdd\nimport testing_tools\n# see test_train\n") == []


def test_no_test_file_imports_another_test_file():
    offenders = [f"{path.name} imports {name}" for path in sorted(TESTS.glob("*.py"))
                 for name in imports_of_test_modules(path.read_text())]
    assert offenders == [], "move shared builders to tests/helpers.py (fixtures to conftest.py)"
