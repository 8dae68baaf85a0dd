"""The house rules of the layout (DEVELOPERS.md, "Where things are"), checked on the source itself.

Imports anywhere in a file count, those inside functions included (that is where a
cycle hides). A failure names the file and the import, so the fix is to move code to
the room it belongs to, not to relax the rule.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
ROOMS = ("core", "data", "sources", "analysis", "run", "present")  # engine's rooms, in data-flow order
PACKAGES = ("engine", "kernels", "bench")
MAX_MODULE_LINES = 500
MAX_FUNCTION_LINES = 60  # every function body of engine/, kernels/, bench/ and cli.py


def function_limit(path: Path) -> int:
    return MAX_FUNCTION_LINES


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def project_files() -> dict[str, Path]:
    files = {module_name(p): p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py")}
    files["cli"] = ROOT / "cli.py"
    return files


FILES = project_files()


def imports_of(path: Path) -> set[str]:
    """Project modules imported by a file (a `from pkg import sub` of a submodule counts as that submodule)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [f"{node.module}.{alias.name}" if f"{node.module}.{alias.name}" in FILES else node.module
                     for alias in node.names]
        else:
            continue
        found |= {name for name in names if name in FILES}
    return found


GRAPH = {name: imports_of(path) for name, path in FILES.items()}


def room(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if parts[0] == "engine" and len(parts) > 2 else None


def test_every_engine_module_lives_in_a_room():
    loose = [m for m in FILES if m.startswith("engine.") and room(m) not in ROOMS and m not in {f"engine.{r}" for r in ROOMS}]
    assert not loose, f"modules outside engine's rooms {ROOMS}: {loose}"


def test_kernels_import_nothing_from_the_engine_or_the_benches():
    wrong = {m: sorted(i for i in deps if not i.startswith("kernels")) for m, deps in GRAPH.items() if m.startswith("kernels")}
    assert not {m: d for m, d in wrong.items() if d}, wrong


@pytest.mark.parametrize("module", sorted(m for m in FILES if room(m)))
def test_engine_imports_point_down_the_rooms(module):
    rank = ROOMS.index(room(module))
    upward = sorted(dep for dep in GRAPH[module] if dep.startswith("bench") or dep == "cli"
                    or (room(dep) is not None and ROOMS.index(room(dep)) > rank))
    assert not upward, f"{FILES[module].relative_to(ROOT)} ({room(module)}) imports from a later room: {upward}"


def test_the_import_graph_has_no_cycle():
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done

    def visit(module: str, path: list[str]) -> None:
        state[module] = 1
        for dep in sorted(GRAPH[module]):
            if state.get(dep) == 1:
                cycle = path[path.index(dep):] + [dep] if dep in path else [module, dep]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if dep not in state:
                visit(dep, path + [dep])
        state[module] = 2

    for module in sorted(GRAPH):
        if module not in state:
            visit(module, [module])


def test_modules_and_functions_stay_short():
    long_modules = [f"{p.relative_to(ROOT)} ({n} lines)" for p in FILES.values()
                    if (n := len(p.read_text().splitlines())) > MAX_MODULE_LINES]
    long_functions = []
    for path in FILES.values():
        limit = function_limit(path)
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno + 1 > limit:
                long_functions.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name} ({node.end_lineno - node.lineno + 1} "
                                      f"lines, limit {limit})")
    assert not long_modules, f"modules over {MAX_MODULE_LINES} lines: {long_modules}"
    assert not long_functions, f"functions over their limit: {long_functions}"


def test_the_package_never_imports_the_tests():
    """bench/ and engine/ are installed without tests/: an import of it works only in a checkout."""
    bad = []
    for path in FILES.values():
        for node in ast.walk(ast.parse(path.read_text())):
            modules = ([a.name for a in node.names] if isinstance(node, ast.Import) else
                       [node.module] if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module else [])
            bad += [f"{path.relative_to(ROOT)}:{node.lineno} imports {m}" for m in modules if m.split(".")[0] == "tests"]
    assert not bad, bad
