"""The package's layout, enforced: every import (at the top of a module or inside a function) points to the same
floor or a lower one, and no set of modules imports itself round a circle (docs/architecture.md#floors)."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

import taskvec

SRC = Path(taskvec.__file__).parent

FLOORS: list[tuple[str, list[str]]] = [
    ("base", ["errors", "stats", "version", "artifacts"]),
    ("engine", ["models", "tasks", "prompts", "hooks", "intervene", "sweep", "vectors", "scoring", "batching",
                "unembed", "distributed", "runs", "experiment", "figures"]),
    ("methods", ["analysis.heads", "analysis.saliency", "analysis.demix", "analysis.geometry", "analysis.subspaces",
                 "analysis.probes", "analysis.dpca", "analysis.dpca_c8", "analysis.function_vectors", "analysis.local_heads",
                 "scratch.model", "scratch.layouts", "scratch.tasks", "scratch.objective", "scratch.passes"]),
    ("claims", ["claims", "method_table"]),
    ("experiments", ["study", "task_run", "study_function_vectors", "study_tables", "study_states", "analysis.runners",
                     "analysis.tables", "scratch.train", "scratch.evaluate", "scratch.comparison"]),
    ("report", ["report"]),
    ("registry", ["kinds"]),
    ("faces", ["cli", "cli_errors", "analysis.cli", "scratch.cli", "__main__", "analysis", "scratch", ""]),
]
"""Floors, lowest first: a module's floor is that of the longest name listed that is the module or a package
above it (``""``: the package's front door, ``taskvec/__init__.py``)."""


def module_names() -> dict[str, Path]:
    out = {}
    for path in SRC.rglob("*.py"):
        parts = path.relative_to(SRC).with_suffix("").parts
        name = ".".join(p for p in parts if p != "__init__")
        out[name] = path
    return out


def floor_of(name: str) -> int:
    best, floor = -1, None
    for i, (_, names) in enumerate(FLOORS):
        for prefix in names:
            if (name == prefix or name.startswith(prefix + ".") or prefix == "") and len(prefix) > best:
                best, floor = len(prefix), i
    assert floor is not None, f"taskvec.{name} is on no floor: add it to FLOORS in tests/test_layout.py"
    return floor


def imports_of(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The taskvec modules ``name`` imports anywhere in its file (``from taskvec.x import y`` counts as
    ``taskvec.x.y`` when that is a module)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        targets = []
        if isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = package.split(".") if package else []
                up = up[:len(up) - node.level + 1]
                base = "taskvec." + ".".join([*up, base] if base else up)
            targets = [f"{base}.{a.name}" for a in node.names] + [base]
        elif isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        for t in targets:
            short = t.removeprefix("taskvec").removeprefix(".")
            if (t == "taskvec" or t.startswith("taskvec.")) and short in modules and short != name:
                found.add(short)
    return found


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    modules = module_names()
    return {name: imports_of(name, path, modules) for name, path in modules.items()}


def test_every_module_is_on_a_floor(graph):
    for name in graph:
        floor_of(name)


def test_imports_point_down_or_across(graph):
    upward = [f"taskvec.{a} ({FLOORS[floor_of(a)][0]}) imports taskvec.{b} ({FLOORS[floor_of(b)][0]})"
              for a, targets in graph.items() for b in targets if floor_of(b) > floor_of(a)]
    assert not upward, "imports that point up a floor:\n" + "\n".join(sorted(upward))


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in graph:
        if v not in index:
            visit(v)
    return out


def test_no_import_circle(graph):
    assert not cycles(graph), f"modules that import each other round a circle: {cycles(graph)}"


def test_the_walker_sees_imports_inside_functions_and_catches_a_circle(tmp_path):
    """The checks can fail: an import inside a function is seen, a circle is found, an upward import is named."""
    code = tmp_path / "study.py"
    code.write_text("import taskvec.errors\n\ndef f():\n    from taskvec.report import local_global\n"
                    "    from taskvec.kinds import write_report\n")
    modules = module_names()
    assert imports_of("study", code, modules) == {"errors", "report", "report.local_global", "kinds"}
    fake = {"study": {"report.local_global"}, "report.local_global": {"study"}, "errors": set()}
    assert cycles(fake) == [["report.local_global", "study"]]
    assert floor_of("study") < floor_of("report.local_global") < floor_of("kinds") < floor_of("cli")


def test_only_the_registry_and_the_faces_import_reports(graph):
    importers = sorted(a for a, targets in graph.items() for b in targets
                       if b.split(".")[0] == "report" and a.split(".")[0] != "report")
    assert all(floor_of(a) >= floor_of("kinds") for a in importers), importers
