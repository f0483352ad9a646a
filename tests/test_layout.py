"""The package's layout is its architecture: layers import only downwards, and no module imports
itself back through others (function-level imports included).

Layers, low to high: ``kernels`` (compiled ops), ``io`` (images, RLE, label files), ``label``
(the labeling stages), ``models`` (trainable segmenters, the predictor), ``evaluate``,
``train``, ``view``; the top-level command modules (``unsam.predict`` ...) sit above all.
"""

from __future__ import annotations

import ast
from pathlib import Path

PKG = Path(__file__).resolve().parents[1] / "unsam"
LAYERS = ["kernels", "io", "label", "models", "evaluate", "train", "view"]


def _module(path: Path) -> str:
    rel = path.relative_to(PKG.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _imports() -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for path in sorted(PKG.rglob("*.py")):
        mod = _module(path)
        deps = out.setdefault(mod, set())
        pkg = mod if path.name == "__init__.py" else mod.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:  # relative
                    base = ".".join(pkg.split(".")[: len(pkg.split(".")) - node.level + 1] + ([base] if base else []))
                names = [base] + [f"{base}.{a.name}" for a in node.names]
            else:
                continue
            for n in names:
                if n.startswith("unsam"):
                    deps.add(n)
    modules = set(out)
    # Keep the longest prefix that is a module: "unsam.label.masks.COMPILED" -> "unsam.label.masks".
    resolved = {}
    for m, deps in out.items():
        r = set()
        for d in deps:
            parts = d.split(".")
            while parts and ".".join(parts) not in modules:
                parts.pop()
            if parts and ".".join(parts) != m:
                r.add(".".join(parts))
        resolved[m] = r
    return resolved


def _layer(mod: str) -> int:
    parts = mod.split(".")
    if len(parts) == 1:
        return -1  # unsam/__init__: the version only
    if parts[1] in LAYERS:
        return LAYERS.index(parts[1])
    if parts[1] == "_C":
        return 0
    return len(LAYERS)  # a top-level command module


def test_layers_import_only_downwards():
    bad = []
    for mod, deps in _imports().items():
        for d in deps:
            if _layer(d) > _layer(mod):
                bad.append(f"{mod} -> {d}")
    assert not bad, bad


def test_no_import_cycles():
    graph = _imports()
    # Package __init__ files re-export their children; an edge from a module to its own
    # package's __init__ (or the reverse) is that re-export, not a dependency.
    for mod, deps in graph.items():
        graph[mod] = {d for d in deps if not (mod.startswith(d + ".") or d.startswith(mod + "."))}
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> list[str] | None:
        state[m] = 1
        stack.append(m)
        for d in sorted(graph.get(m, ())):
            if state.get(d) == 1:
                return stack[stack.index(d) :] + [d]
            if d not in state:
                cyc = visit(d)
                if cyc:
                    return cyc
        stack.pop()
        state[m] = 2
        return None

    for m in sorted(graph):
        if m not in state:
            cycle = visit(m)
            assert cycle is None, " -> ".join(cycle)


def test_every_layer_is_a_package_and_the_commands_stay():
    for layer in LAYERS:
        assert (PKG / layer / "__init__.py").is_file(), layer
    for name in ("label", "evaluate", "train", "view"):
        assert (PKG / name / "__main__.py").is_file(), name
    for name in ("predict", "selftrain", "fuse", "export", "baselines"):
        text = (PKG / f"{name}.py").read_text()
        assert 'if __name__ == "__main__":' in text and text.count("\n") < 12, name  # a command name, no code
