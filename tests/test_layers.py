"""The package's layers: a module imports only from its own layer or those below it, and
no two packages import each other, directly or round a loop.

Data flows one way: config -> storage, cluster helpers, checkpoint format, tracking, metrics
-> data -> models -> objectives -> train -> eval, feature extraction -> tune -> the
workflows' glue (cli, preflight) and what sits beside the library (the demo corpus, media
writing and benchmark helpers). A new module gets a line here.
"""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "avray"
LAYERS = [
    ("avray.config",),
    (
        "avray.storage",
        "avray.lock",
        "avray.cluster",
        "avray.checkpoint",
        "avray.tracking",
        "avray.metrics",
        "avray.console",
    ),
    ("avray.data",),
    ("avray.models",),
    ("avray.objectives",),
    ("avray.train",),
    ("avray.eval", "avray.extract"),
    ("avray.tune",),
    ("avray.cli", "avray.preflight", "avray.demo"),
]


def _layer(module: str) -> int:
    for level, members in enumerate(LAYERS):
        if any(module == m or module.startswith(m + ".") for m in members):
            return level
    raise AssertionError(f"{module} has no layer in tests/test_layers.py: add it to LAYERS")


def _modules() -> dict[str, Path]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def _imports(path: Path) -> set[str]:
    """The avray modules ``path`` imports, at the top or inside functions."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module == "avray":  # from avray import console
                names.update(f"avray.{alias.name}" for alias in node.names)
            else:
                names.add(node.module)
    return {name for name in names if name == "avray" or name.startswith("avray.")}


def _edges() -> dict[str, set[str]]:
    modules = _modules()

    def resolve(name: str) -> str:
        while name not in modules:
            name = name.rsplit(".", 1)[0]
        return name

    return {module: {resolve(name) for name in _imports(path)} - {module} for module, path in modules.items()}


def test_no_module_imports_from_a_layer_above_its_own():
    upward = sorted(
        f"{source} -> {target}"
        for source, targets in _edges().items()
        for target in targets
        if _layer(target) > _layer(source)
    )
    assert not upward, "imports against the layer order:\n" + "\n".join(upward)


def _package(module: str) -> str:
    return ".".join(module.split(".")[:2])


def test_no_import_cycles_between_packages():
    packages: dict[str, set[str]] = {}
    for source, targets in _edges().items():
        packages.setdefault(_package(source), set()).update(_package(t) for t in targets)
    edges = {source: targets - {source} for source, targets in packages.items()}
    state: dict[str, str] = {}
    cycles = []

    def visit(node: str, path: list[str]) -> None:
        state[node] = "open"
        for target in sorted(edges.get(node, ())):
            if state.get(target) == "open":
                cycles.append(" -> ".join(path[path.index(target) :] + [target]))
            elif target not in state:
                visit(target, path + [target])
        state[node] = "done"

    for package in sorted(edges):
        if package not in state:
            visit(package, [package])
    assert not cycles, "import cycles:\n" + "\n".join(cycles)
