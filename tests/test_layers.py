"""Dependencies point one way: app -> tabs -> medlab, medlab never imports gradio, and no
module imports itself back through a chain, counting the imports made inside functions
(the lazy ones that keep start-up light are exactly where circles hid).

The import graph is read from the source with `ast` (nothing is imported), so the test also
sees imports on code paths no other test runs."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("app", "tabs", "medlab")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    found = {"app": ROOT / "app.py"}
    for package in PACKAGES[1:]:
        for path in (ROOT / package).rglob("*.py"):
            found[_module_name(path)] = path
    return found


def _imports(path: Path, name: str, known: set[str]) -> set[str]:
    """Project modules `name` imports anywhere in its file (top level or inside functions)."""
    is_package = path.name == "__init__.py"
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = name.split(".") if is_package else name.split(".")[:-1]
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            targets = [f"{base}.{a.name}" for a in node.names] + [base]
        for target in targets:
            # the longest known module the import names (a `from m import f` names m)
            while target and target not in known:
                target = target.rpartition(".")[0]
            if target and target != name:
                out.add(target)
    return out


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    known = set(modules)
    graph = {}
    for name, path in modules.items():
        # importing a.b.c runs a and a.b first: those edges are not the module's own choice
        graph[name] = {t for t in _imports(path, name, known) if not name.startswith(t + ".")}
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
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


def test_cycle_finder_finds_a_planted_circle() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert _cycles(graph) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_relative_and_lazy_imports_are_seen() -> None:
    graph = _graph()
    # loaders imports the cache at top level; app imports tabs modules lazily (importlib by
    # name is not an import statement) but tabs.common directly.
    assert "medlab.core.cache" in graph["medlab.core.loaders"]
    assert "tabs.common" in graph["app"]
    # zerogpu imports loaders inside a function: a lazy import is still an edge
    assert "medlab.core.loaders" in graph["medlab.core.zerogpu"]


def test_no_import_circles() -> None:
    cycles = _cycles(_graph())
    assert not cycles, "import circles (each line: modules that import each other): " + "; ".join(
        " <-> ".join(c) for c in cycles)


def test_dependencies_point_one_way() -> None:
    graph = _graph()
    wrong = []
    for name, targets in graph.items():
        layer = name.split(".")[0]
        for target in targets:
            other = target.split(".")[0]
            if layer == "medlab" and other in ("tabs", "app"):
                wrong.append(f"{name} -> {target}")
            if layer == "tabs" and other == "app":
                wrong.append(f"{name} -> {target}")
    assert not wrong, "imports against the layering app -> tabs -> medlab: " + ", ".join(sorted(wrong))


def test_engine_never_imports_gradio() -> None:
    offenders = []
    for path in (ROOT / "medlab").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else (
                [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            if any(n == "gradio" or n.startswith("gradio.") for n in names):
                offenders.append(str(path.relative_to(ROOT)))
    assert not offenders, f"medlab imports gradio in: {sorted(set(offenders))}"


# Inside medlab: core is the base, io uses core, the task layers use both but not each other,
# and layers above the tasks (the classroom) may use any task. medlab/__init__ and the
# `python -m medlab` command sit above all of them. A new subpackage fails the test until it
# is placed here on purpose.
ENGINE_RANK = {"core": 0, "io": 1, "vision": 2, "generation": 2, "retrieval": 2, "classroom": 3}
ENGINE_TOP = {"medlab", "medlab.__main__"}


def _engine_layer(module: str) -> str | None:
    parts = module.split(".")
    if parts[0] != "medlab" or module in ENGINE_TOP:
        return None
    return parts[1]


def test_engine_layers_point_down() -> None:
    wrong = []
    for name, targets in _graph().items():
        layer = _engine_layer(name)
        if layer is None:
            continue
        assert layer in ENGINE_RANK, f"{name}: place the medlab subpackage {layer!r} in ENGINE_RANK"
        for target in targets:
            other = _engine_layer(target)
            if other is None and target.startswith("medlab"):
                wrong.append(f"{name} -> {target}")
            elif other not in (None, layer) and ENGINE_RANK.get(other, 99) >= ENGINE_RANK[layer]:
                wrong.append(f"{name} -> {target}")
    assert not wrong, "medlab layers importing sideways or up (core <- io <- tasks <- classroom): " + ", ".join(sorted(wrong))
