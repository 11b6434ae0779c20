"""The engine's shape, checked from its source: no Streamlit, no arrow back from a part to one that
uses it (no import cycle between sub-packages or modules), pure primitives, and a CLI no one imports."""
from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

ENGINE = Path(__file__).resolve().parents[1] / "memopt_core"


def _imports(path: Path) -> set[str]:
    """Every module ``path`` imports (at any depth of the file), as dotted names."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


def _module_name(path: Path) -> str:
    parts = path.relative_to(ENGINE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(p): _imports(p) for p in sorted(ENGINE.rglob("*.py"))}


def _part(module: str) -> str:
    """The sub-package (or top-level module) a dotted name belongs to: 'compression', 'config', ..."""
    return module.split(".")[1] if module.count(".") else module


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of ``graph`` as a path, or None (depth-first search with colours)."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        stack.pop()
        state[node] = 2
        return None

    return next((c for node in sorted(graph) if node not in state and (c := visit(node))), None)


def _engine_edges(level) -> dict[str, set[str]]:
    graph: dict[str, set[str]] = defaultdict(set)
    for module, imported in MODULES.items():
        for name in imported:
            target = max((m for m in MODULES if name == m or name.startswith(m + ".")), key=len, default=None)
            if target is not None and level(target) != level(module) and target != "memopt_core":
                graph[level(module)].add(level(target))
    return graph


def test_the_engine_never_imports_streamlit_or_the_dashboard():
    offenders = {m: sorted(n for n in names if n.split(".")[0] in ("streamlit", "ui", "pages"))
                 for m, names in MODULES.items()}
    assert {m: n for m, n in offenders.items() if n} == {}


def test_no_import_cycle_between_sub_packages():
    assert _cycle(_engine_edges(_part)) is None


def test_no_import_cycle_between_modules():
    assert _cycle(_engine_edges(lambda module: module)) is None


def test_primitives_are_pure_tensor_code():
    allowed = {"memopt_core.config", "memopt_core.errors"}
    for module, imported in MODULES.items():
        if _part(module) == "primitives":
            engine = {n for n in imported if n.startswith("memopt_core.") and not n.startswith("memopt_core.primitives")}
            assert {n.rsplit(".", 1)[0] if n.rsplit(".", 1)[0] in allowed else n for n in engine} <= allowed, module


def test_only_the_entry_point_imports_the_cli():
    users = {m for m, names in MODULES.items() if _part(m) != "cli" and any(_part(n) == "cli" for n in names
                                                                            if n.startswith("memopt_core."))}
    assert users == {"memopt_core.__main__"}


def test_the_cycle_finder_finds_cycles():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None
