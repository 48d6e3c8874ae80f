"""The shape of the package: no import circle, the bottom layer imports nothing above
it, the front ends are imported by nobody below them, a plugin needs one module, and
only the runtime executes a graph. Read from the source (ast), nothing is imported."""

from __future__ import annotations

import ast
from pathlib import Path

import localmoa

ROOT = Path(localmoa.__file__).parent
#: Modules that import no other localmoa module but each other.
BOTTOM = {"localmoa.types", "localmoa.spec_types", "localmoa.errors", "localmoa.constants",
          "localmoa.registry"}
#: Front ends: what the user drives. Nothing below them imports them.
FRONTS = ("localmoa.cli", "localmoa.serve", "localmoa.eval", "localmoa.__main__")


def _modules() -> dict[str, Path]:
    found = {}
    for path in ROOT.rglob("*.py"):
        parts = path.relative_to(ROOT.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found[name] = path
    return found


MODULES = _modules()


def _target(module: str, node: ast.ImportFrom, alias: str) -> str:
    if node.level:
        base = module.split(".")
        if MODULES[module].name != "__init__.py":
            base = base[:-1]
        base = base[:len(base) - node.level + 1]
        base_name = ".".join(base + ([node.module] if node.module else []))
    else:
        base_name = node.module or ""
    candidate = f"{base_name}.{alias}"
    return candidate if candidate in MODULES else base_name


def _imports(module: str) -> set[str]:
    """Every localmoa module ``module`` imports: at module level, in functions and
    under TYPE_CHECKING alike."""
    names: list[str] = []
    for node in ast.walk(ast.parse(MODULES[module].read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            names += [_target(module, node, alias.name) for alias in node.names]
    found = set()
    for name in names:
        while name and name not in MODULES:
            name = name.rpartition(".")[0]
        if name and name != module:
            found.add(name)
    return found


GRAPH = {module: _imports(module) for module in MODULES}


def _circles() -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    circles = []
    for root in sorted(GRAPH):
        if root in index:
            continue
        work = [(root, iter(sorted(GRAPH[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        while work:
            node, edges = work[-1]
            step = next(edges, None)
            if step is not None:
                if step not in index:
                    index[step] = low[step] = len(index)
                    stack.append(step)
                    work.append((step, iter(sorted(GRAPH[step]))))
                elif step in stack:
                    low[node] = min(low[node], index[step])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    circles.append(sorted(component))
    return circles


def test_the_graph_is_read() -> None:
    """The reader sees the edges it must (else the next tests prove nothing)."""
    assert "localmoa.runtime" in GRAPH["localmoa.cli.run"]
    assert "localmoa.types" in GRAPH["localmoa.backends.base"]
    assert "localmoa.backends.llamacpp.spec" in GRAPH["localmoa.backends.llamacpp.sources"]
    assert len(MODULES) > 80


def test_no_import_circle() -> None:
    assert _circles() == []


def test_the_circle_finder_finds_one() -> None:
    GRAPH["localmoa.types"].add("localmoa.cli.run")
    try:
        assert _circles()
    finally:
        GRAPH["localmoa.types"].discard("localmoa.cli.run")


def test_the_bottom_layer_imports_nothing_above_it() -> None:
    for module in BOTTOM:
        assert GRAPH[module] <= BOTTOM, module


def test_nothing_below_the_front_ends_imports_them() -> None:
    for module, imports in GRAPH.items():
        if module.startswith(FRONTS):
            continue
        assert not {name for name in imports if name.startswith(FRONTS)}, module


def test_a_plugin_imports_one_localmoa_module() -> None:
    plugin = Path(__file__).parent / "plugins" / "localmoa-echo" / "localmoa_echo"
    tree = ast.parse((plugin / "__init__.py").read_text(encoding="utf-8"))
    used = {node.module for node in ast.walk(tree)
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("localmoa")}
    used |= {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import)
             for alias in node.names if alias.name.startswith("localmoa")}
    assert used == {"localmoa.plugin"}


def test_only_the_runtime_executes_a_graph() -> None:
    """execute_jobs and preflight are called from the runtime alone (the engine's own
    execute_plan wraps execute_jobs for the engine's tests)."""
    for module, path in MODULES.items():
        if module in {"localmoa.runtime", "localmoa.preflight"} or module.startswith(
                "localmoa.engine"):
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Call):
                called = node.func.id if isinstance(node.func, ast.Name) else None
                assert called not in {"execute_jobs", "execute_plan", "preflight"}, module


def test_no_function_is_over_80_lines() -> None:
    long = []
    for module, path in MODULES.items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                size = (node.end_lineno or node.lineno) - node.lineno + 1
                if size > 80:
                    long.append(f"{module}.{node.name}: {size}")
    assert long == []


def test_the_environment_is_read_in_constants_only() -> None:
    """os.environ, os.getenv and os.putenv appear in constants.py alone."""
    readers = []
    for module, path in MODULES.items():
        if module == "localmoa.constants":
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            attribute = isinstance(node, ast.Attribute) and node.attr in {
                "environ", "getenv", "environb"}
            imported = isinstance(node, ast.ImportFrom) and node.module == "os" and any(
                alias.name in {"environ", "getenv"} for alias in node.names)
            if attribute or imported:
                readers.append(f"{module}:{node.lineno}")
    assert readers == []
