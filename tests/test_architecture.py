"""The shape of the code: which modules may touch DuckDB, module sizes, no import cycles.

Read from the source with ``ast``, function-level imports included, so a lazy import that
closes a cycle counts as one."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("engine", "web")
# The storage layer and the user-SQL sandbox; nothing else imports duckdb.
DUCKDB_MODULES = {"engine.store.database", "engine.store.parquet", "engine.sandbox"}
MAX_MODULE_LINES = 700
MAX_CATALOG_LINES = 400


def _modules() -> dict[str, Path]:
    out = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            if "_bundled" in path.parts:
                continue
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            out[".".join(parts)] = path
    return out


MODULES = _modules()


def _imports(name: str, path: Path) -> set[str]:
    """The project modules ``name`` imports, at any depth of its code."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            subs = [f"{base}.{a.name}" for a in node.names]
            # ``from package import module`` needs the module (its package's __init__ runs
            # first, as for any import); a name defined in the package needs its __init__.
            targets = subs + ([base] if not all(t in MODULES for t in subs) else [])
        else:
            continue
        found.update(t for t in targets if t in MODULES and t != name)
    return found


GRAPH = {name: _imports(name, path) for name, path in MODULES.items()}


def _third_party(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
            names.add(node.module.split(".")[0])
    return names


def _relative_imports(name: str, path: Path) -> list[str]:
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.level:
            parts = package.split(".")
            anchor = parts[: len(parts) - node.level + 1]
            out.append(".".join([*anchor, node.module] if node.module else anchor))
    return out


@pytest.mark.parametrize("name", sorted(MODULES))
def test_relative_imports_name_project_modules(name):
    # A lazy import inside a function fails only when it runs: check them all here.
    missing = [m for m in _relative_imports(name, MODULES[name]) if m not in MODULES]
    assert missing == []


def test_the_module_walk_sees_the_project():
    assert {"engine.catalog", "engine.store.database", "web.app", "engine.learn.branches"} <= set(MODULES)
    assert "engine.store.tables" in GRAPH["engine.catalog"]


def test_only_the_storage_layer_and_the_sandbox_import_duckdb():
    users = {name for name, path in MODULES.items() if "duckdb" in _third_party(path)}
    assert users == DUCKDB_MODULES


def test_nothing_else_holds_the_raw_connection():
    # Store.con is for the storage layer, the sandbox and tests; the rest reads through the
    # store's methods and writes through the Transaction of Store.write.
    users = set()
    for name, path in MODULES.items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Attribute) and node.attr in ("con", "_con"):
                users.add(name)
    assert users <= DUCKDB_MODULES


@pytest.mark.parametrize("name", sorted(MODULES))
def test_modules_stay_readable_in_one_sitting(name):
    lines = len(MODULES[name].read_text(encoding="utf-8").splitlines())
    assert lines <= MAX_MODULE_LINES, f"{name} has {lines} lines; split it by job"


def test_catalog_is_a_facade():
    tree = ast.parse(MODULES["engine.catalog"].read_text(encoding="utf-8"))
    (cls,) = [n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "Catalog"]
    assert cls.end_lineno - cls.lineno + 1 <= MAX_CATALOG_LINES


def test_no_import_cycles():
    # Tarjan's strongly connected components: every one must be a single module.
    index, low, stack, on_stack, cycles = {}, {}, [], set(), []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in GRAPH[v]:
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
                cycles.append(sorted(component))

    for v in sorted(GRAPH):
        if v not in index:
            visit(v)
    assert cycles == []
