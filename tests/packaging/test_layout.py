"""The layout's rules, checked from the code: sizes, one-way imports, no cycles, private names kept inside."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
ROOTS = {
    "edgetl_runtime": REPO / "runtime" / "src" / "edgetl_runtime",
    "edgetl_exporters": REPO / "exporters" / "src" / "edgetl_exporters",
    "edgetl": REPO / "edgetl",
}
# What each distribution may import of the others (and of the heavy libraries the runtime must not need).
FORBIDDEN = {
    "edgetl_runtime": ("edgetl_exporters", "edgetl", "torch", "timm", "onnx", "torchvision"),
    "edgetl_exporters": ("edgetl",),
    "edgetl": (),
}
MAX_MODULE_LINES = 400
MAX_LEARNER_LINES = 300


def _modules(dist: str) -> dict[str, Path]:
    root = ROOTS[dist]
    out = {}
    for path in sorted(root.rglob("*.py")):
        parts = path.relative_to(root).with_suffix("").parts
        name = ".".join((dist, *parts[:-1])) if parts[-1] == "__init__" else ".".join((dist, *parts))
        out[name] = path
    return out


def _imports(path: Path, module: str, *, top_level_only: bool) -> list[tuple[str, list[str], int]]:
    """(imported module, names, line) for each import; ``top_level_only`` skips function bodies and
    ``if TYPE_CHECKING`` blocks (the imports that run when the module is imported)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: list[tuple[str, list[str], int]] = []

    def visit(nodes: list[ast.stmt]) -> None:
        for node in nodes:
            if isinstance(node, ast.Import):
                found.extend((alias.name, [], node.lineno) for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                    base = f"{anchor}.{base}" if base else anchor
                found.append((base, [alias.name for alias in node.names], node.lineno))
            elif isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
                continue
            elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and top_level_only:
                continue
            for field in ("body", "orelse", "finalbody", "handlers"):
                inner = getattr(node, field, None)
                if isinstance(inner, list) and inner and isinstance(inner[0], (ast.stmt, ast.excepthandler)):
                    visit(inner)  # type: ignore[arg-type]

    visit(tree.body)
    return found


def _package_of(module: str) -> str:
    """``edgetl_runtime.state.store`` -> ``edgetl_runtime.state``; a flat module belongs to its distribution."""
    parts = module.split(".")
    return ".".join(parts[:2]) if len(parts) > 2 else parts[0]


@pytest.mark.parametrize("dist", sorted(ROOTS))
def test_no_distribution_imports_one_above_it(dist: str) -> None:
    bad = [
        f"{mod}:{line} imports {target}"
        for mod, path in _modules(dist).items()
        for target, _, line in _imports(path, mod, top_level_only=False)
        if target.split(".")[0] in FORBIDDEN[dist]
    ]
    assert not bad, bad


def test_runtime_modules_stay_small_and_the_learner_a_facade() -> None:
    sizes = {
        mod: len(path.read_text(encoding="utf-8").splitlines()) for mod, path in _modules("edgetl_runtime").items()
    }
    assert not {m: n for m, n in sizes.items() if n > MAX_MODULE_LINES}
    assert sizes["edgetl_runtime.learner"] <= MAX_LEARNER_LINES


@pytest.mark.parametrize("dist", sorted(ROOTS))
def test_no_private_name_is_imported_across_packages(dist: str) -> None:
    bad = []
    for mod, path in _modules(dist).items():
        for target, names, line in _imports(path, mod, top_level_only=False):
            private = [n for n in names if n.startswith("_") and not n.startswith("__")]
            if private and target.startswith(dist) and _package_of(target) != _package_of(mod):
                bad.append(f"{mod}:{line} imports {private} from {target}")
    assert not bad, bad


def test_runtime_import_graph_has_no_cycles() -> None:
    modules = _modules("edgetl_runtime")
    graph = {
        mod: {t for t, _, _ in _imports(path, mod, top_level_only=True) if t in modules and t != mod}
        for mod, path in modules.items()
    }
    # a package's __init__ importing its own submodules is how a package shows its face, not a cycle
    for mod, targets in graph.items():
        graph[mod] = {t for t in targets if not (modules[mod].name == "__init__.py" and t.startswith(mod + "."))}
    state: dict[str, int] = {}
    cycle: list[str] = []

    def visit(node: str, trail: list[str]) -> bool:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycle.extend([*trail[trail.index(nxt) :], nxt] if nxt in trail else [node, nxt])
                return True
            if state.get(nxt) is None and visit(nxt, [*trail, nxt]):
                return True
        state[node] = 2
        return False

    for mod in sorted(graph):
        if state.get(mod) is None and visit(mod, [mod]):
            break
    assert not cycle, " -> ".join(cycle)
