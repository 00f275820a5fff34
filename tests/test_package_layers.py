"""The packages import one another in one direction (issue 36): no circle between packages,
not even through an import inside a function, and core/ (the loop, the phases, the monitors,
the protocols) reads nothing of runs/, which owns a run's files."""

import ast

from conftest import ROOT

PACKAGE = ROOT / "pokedex_trainer"


def _package_imports() -> dict[str, dict[str, set[str]]]:
    """{package: {package it imports: {importing modules}}}; a module at the top of the
    package (config.py, networks.py ...) is a package of its own."""
    edges: dict[str, dict[str, set[str]]] = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(ROOT).with_suffix("").parts
        source = parts[1]
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module] if node.module != "pokedex_trainer" else \
                    [f"pokedex_trainer.{alias.name}" for alias in node.names]
            elif isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            else:
                continue
            for name in names:
                pieces = name.split(".")
                if pieces[0] == "pokedex_trainer" and len(pieces) > 1 and pieces[1] != source:
                    edges.setdefault(source, {}).setdefault(pieces[1], set()).add(
                        ".".join(parts))
    return edges


def _a_circle(edges: dict) -> list[str] | None:
    """One circle of the graph (a list of packages, the first repeated last), or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node):
        state[node] = 1
        path.append(node)
        for target in sorted(edges.get(node, {})):
            if state.get(target) == 1:
                return path[path.index(target):] + [target]
            if target not in state:
                found = visit(target)
                if found:
                    return found
        state[node] = 2
        path.pop()
        return None

    for start in sorted(edges):
        if start not in state:
            found = visit(start)
            if found:
                return found
    return None


def test_no_circle_between_packages():
    edges = _package_imports()
    assert "runs" in edges["cli"] and "core" in edges["runs"]  # the walk sees real imports
    circle = _a_circle(edges)
    detail = "" if circle is None else "; ".join(
        f"{a} -> {b} ({', '.join(sorted(edges[a][b]))})" for a, b in zip(circle, circle[1:]))
    assert circle is None, f"packages import each other in a circle: {detail}"


def test_the_circle_finder_finds_a_circle():
    assert _a_circle({"a": {"b": set()}, "b": {"c": set()}, "c": {"a": set()}}) == \
        ["a", "b", "c", "a"]
    assert _a_circle({"a": {"b": set()}, "b": {"c": set()}}) is None


def test_core_reads_nothing_of_runs():
    assert "runs" not in _package_imports().get("core", {})
