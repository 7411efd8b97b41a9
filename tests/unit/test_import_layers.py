"""The project's packages form layers, and imports point down only (README, "Layers").

Every `import` and `from ... import` in the packages is read with `ast`, including imports inside functions, so a
lazy import cannot hide an upward dependency. A package may import itself and any package in a lower layer; never a
package of its own layer or one above. Module-level import circles inside a package fail too.
"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

# Lowest first. Packages on one line are siblings: neither may import the other.
LAYERS: list[tuple[str, ...]] = [
    ("python_backends",),  # what tritonserver imports: serving steps, context, cloud link, model runtime
    ("client", "engines"),  # a user's program: clients, stream client, launcher | model checkpoints and ONNX export
    ("evaluation",),  # the replay benchmark's data, scoring and reports
    ("training",),  # training the default checkpoints on the benchmark's train split
    ("load_tests",),  # benchmarks, locust, evaluation driver
    ("spotvlm",),  # the command line, the demo and the engine build
]
LAYER_OF = {package: level for level, packages in enumerate(LAYERS) for package in packages}


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {
        _module_name(path): path
        for package in LAYER_OF
        for path in sorted((ROOT / package).rglob("*.py"))
        if "__pycache__" not in path.parts
    }


def _imports(module: str, path: Path, top_level_only: bool = False) -> set[str]:
    """Project modules that `module` imports (absolute names)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    nodes = tree.body if top_level_only else ast.walk(tree)
    found: set[str] = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                prefix = ".".join(base + ([node.module] if node.module else []))
            else:
                prefix = node.module or ""
            # `from pkg import mod` imports pkg.mod where that is a module.
            names = [prefix] + [f"{prefix}.{alias.name}" for alias in node.names]
        else:
            continue
        found.update(name for name in names if name.split(".")[0] in LAYER_OF)
    return found


MODULES = _modules()


def test_every_package_is_in_a_layer():
    top_level = {p.name for p in ROOT.iterdir() if (p / "__init__.py").is_file() and p.name != "tests"}
    assert top_level == set(LAYER_OF), "a new top-level package needs a place in LAYERS (and in the README)"


@pytest.mark.parametrize("module", sorted(MODULES))
def test_imports_point_down(module: str):
    own = module.split(".")[0]
    upward = sorted(
        name
        for name in _imports(module, MODULES[module])
        if name.split(".")[0] != own and LAYER_OF[name.split(".")[0]] >= LAYER_OF[own]
    )
    assert not upward, f"{module} ({own}, layer {LAYER_OF[own]}) imports a package at or above its layer: {upward}"


def test_no_import_circles():
    graph: dict[str, set[str]] = defaultdict(set)
    for module, path in MODULES.items():
        graph[module] = {name for name in _imports(module, path) if name in MODULES} - {module}
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    circles: list[list[str]] = []

    def visit(node: str, trail: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                circles.append(trail[trail.index(nxt) :] + [nxt] if nxt in trail else [node, nxt])
            elif nxt not in state:
                visit(nxt, trail + [nxt])
        state[node] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    # A package's __init__ importing its own modules is not a circle worth failing on.
    circles = [c for c in circles if not any(MODULES[m].name == "__init__.py" for m in c)]
    assert not circles, "import circles: " + "; ".join(" -> ".join(c) for c in circles)
