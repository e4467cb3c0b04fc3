"""The package's import graph follows the data flow: checkpoint -> export -> bundle -> simulator or Lava -> report.

Every ``import`` in every module counts, also the ones inside functions (they run too), and the rules hold
for what a module reaches through others, not only for its own lines.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# folder -> package (pyproject's package-dir)
PACKAGES = {"spkdiff": "spkdiff", "train": "spkdiff.train", "export": "spkdiff.export",
            "neuromorphic": "spkdiff.neuromorphic", "simulator": "spkdiff.simulator"}
# The commands: the only modules that may reach every layer.
APP = ("spkdiff.cli", "spkdiff.__main__", "spkdiff.demo", "spkdiff.backends", "spkdiff.sample_command",
       "spkdiff.reconstruct_command", "spkdiff.eval.command")


def _modules() -> dict[str, Path]:
    out = {}
    for folder, package in PACKAGES.items():
        for path in (ROOT / folder).rglob("*.py"):
            parts = [p for p in path.relative_to(ROOT / folder).with_suffix("").parts if p != "__init__"]
            out[".".join([package, *parts])] = path
    return out


MODULES = _modules()


def _resolve(name: str) -> str | None:
    """The module an import names (``from spkdiff.x import y`` may name module ``spkdiff.x.y``)."""
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def _imports(module: str, path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        names: Iterable[str] = ()
        if isinstance(node, ast.Import):
            names = (a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parent + ([node.module] if node.module else []))
            names = [f"{base}.{a.name}" for a in node.names] + [base]
        for name in names:
            if name.startswith("spkdiff"):
                target = _resolve(name)
                if target and target != module:
                    found.add(target)
    return found


GRAPH = {m: _imports(m, p) for m, p in MODULES.items()}


def _reach(module: str) -> set[str]:
    seen: set[str] = set()
    todo = [module]
    while todo:
        for nxt in GRAPH[todo.pop()]:
            if nxt not in seen:
                seen.add(nxt)
                todo.append(nxt)
    return seen


def _layer(module: str) -> str:
    parts = module.split(".")
    if module in APP or module.startswith("spkdiff.eval.command"):
        return "app"
    return parts[1] if len(parts) > 1 and parts[1] in ("train", "export", "neuromorphic", "simulator") else "core"


RULES = [  # (layer, layers it must not reach)
    ("simulator", {"train", "export", "app"}),
    ("neuromorphic", {"train", "export", "app"}),
    ("train", {"simulator", "neuromorphic", "export", "app"}),
    ("export", {"app"}),
    ("core", {"train", "export", "simulator", "neuromorphic", "app"}),
]


@pytest.mark.parametrize(("layer", "forbidden"), RULES, ids=[r[0] for r in RULES])
def test_layer_reaches_no_forbidden_layer(layer: str, forbidden: set[str]) -> None:
    bad = sorted(f"{m} -> {t}" for m in GRAPH if _layer(m) == layer for t in _reach(m) if _layer(t) in forbidden)
    assert not bad, "\n".join(bad)


def _imports_lava_library(path: Path) -> bool:
    """Whether the module imports the lava-nc library itself (``import lava...`` / ``from lava... import``)."""
    for node in ast.walk(ast.parse(path.read_text())):
        names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
            [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level else []
        if any(n == "lava" or n.startswith("lava.") for n in names):
            return True
    return False


def test_lava_is_reached_from_the_commands_not_through_the_simulator() -> None:
    # lava_compat is the package's import hook (it imports nothing from Lava); the backend is the rest
    lava = {m for m in MODULES if m.startswith("spkdiff.neuromorphic.lava_")} - {"spkdiff.neuromorphic.lava_compat"}
    bad = sorted(f"{m} -> {t}" for m in GRAPH if _layer(m) == "simulator" for t in _reach(m) & lava)
    assert not bad, "\n".join(bad)
    # the Lava library is imported by the backend's modules only, so nothing else can reach Lava around them
    outside = sorted(m for m, path in MODULES.items() if m not in lava and _imports_lava_library(path))
    assert not outside, f"modules outside the Lava backend that import lava: {outside}"
    # and the backend is entered from the commands: the CLI's dispatch imports it, no other layer does
    entries = sorted(m for m in GRAPH if m not in lava and GRAPH[m] & lava)
    assert entries and all(_layer(m) == "app" for m in entries), entries


def test_no_import_cycles() -> None:
    cycles = sorted(m for m in GRAPH if m in _reach(m))
    assert not cycles, f"modules on an import cycle: {cycles}"


def test_the_checker_sees_lazy_and_relative_imports() -> None:
    """The rules above are only as good as the graph: it must hold imports inside functions and relative ones."""
    assert "spkdiff.simulator.generate" in GRAPH["spkdiff.backends"]  # inside a function
    assert "spkdiff.simulator.engine" in GRAPH["spkdiff.simulator.generate"]  # from .engine import ...
    assert _layer("spkdiff.backends") == "app" and _layer("spkdiff.generation") == "core"
