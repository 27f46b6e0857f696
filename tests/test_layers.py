"""The package's layers (docs/architecture.md): a module imports only from its own package or from
a lower layer, and no group of modules imports itself round in a cycle.

Imports are read from the source as text (`ast`), those inside functions included: a deferred
import of a GPU library's neighbour is still a dependency.
"""

import ast
import shutil
from pathlib import Path

import pytest

SOURCE = Path(__file__).resolve().parent.parent / "src" / "ftbench"

# Ground first. A package may import its own modules and any package of a lower layer; packages
# of one layer never import each other.
LAYERS = (
    ("errors",),
    ("ftbench", "files", "dtypes"),  # "ftbench": the package's own __init__ (its version)
    ("bench", "kernels"),
    ("gemm",),
    ("profiles",),
    ("autotune", "runtime"),
    ("modelbench", "validation"),  # validation: checks of the runtime, for tests and benchmarks
    ("reports",),
    ("cli",),
    ("__main__",),
)
LAYER_OF = {package: depth for depth, packages in enumerate(LAYERS) for package in packages}


def module_name(path: Path, root: Path) -> str:
    parts = ("ftbench", *path.relative_to(root).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path, root: Path) -> list[tuple[int, str]]:
    """(line, module) of every ftbench import in `path`, relative imports resolved."""
    name = module_name(path, root)
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            # `from ftbench.gemm import dispatch` imports the module ftbench.gemm.dispatch.
            found += [(node.lineno, f"{target}.{alias.name}") for alias in node.names]
    return [(line, target) for line, target in found if target.split(".")[0] == "ftbench"]


def package_of(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "ftbench"


def known_module(module: str, modules: set[str]) -> str | None:
    """The longest prefix of `module` that is a module of the tree (`a.b.name` -> `a.b`)."""
    parts = module.split(".")
    for end in range(len(parts), 0, -1):
        candidate = ".".join(parts[:end])
        if candidate in modules:
            return candidate
    return None


def layer_violations(root: Path) -> list[str]:
    """Every import of the tree under `root` that reaches up or across a layer."""
    problems = []
    modules = {module_name(path, root) for path in root.rglob("*.py")}
    for path in sorted(root.rglob("*.py")):
        source = package_of(module_name(path, root))
        for line, target in imports_of(path, root):
            imported = package_of(known_module(target, modules) or target)
            if imported == source:
                continue
            if imported not in LAYER_OF or source not in LAYER_OF:
                unknown = imported if imported not in LAYER_OF else source
                where = f"{path.relative_to(root)}:{line}"
                problems.append(f"{where}: package {unknown!r} has no layer")
            elif LAYER_OF[imported] >= LAYER_OF[source]:
                problems.append(
                    f"{path.relative_to(root)}:{line}: {source} (layer {LAYER_OF[source]}) imports "
                    f"{target} ({imported}, layer {LAYER_OF[imported]})"
                )
    return problems


def import_cycles(root: Path) -> list[list[str]]:
    """Groups of modules that import each other round (strongly connected components > 1)."""
    paths = {module_name(path, root): path for path in root.rglob("*.py")}
    graph = {
        module: {
            target
            for _, imported in imports_of(path, root)
            if (target := known_module(imported, set(paths))) not in (None, module)
        }
        for module, path in paths.items()
    }
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    cycles = []

    def visit(module: str) -> None:  # Tarjan's algorithm
        index[module] = low[module] = len(index)
        stack.append(module)
        for target in graph[module]:
            if target not in index:
                visit(target)
                low[module] = min(low[module], low[target])
            elif target in stack:
                low[module] = min(low[module], index[target])
        if low[module] == index[module]:
            component = []
            while True:
                member = stack.pop()
                component.append(member)
                if member == module:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for module in sorted(graph):
        if module not in index:
            visit(module)
    return cycles


def test_every_import_goes_down_a_layer():
    assert layer_violations(SOURCE) == []


def test_no_modules_import_each_other_round():
    assert import_cycles(SOURCE) == []


def test_every_package_has_a_layer():
    packages = {path.name for path in SOURCE.iterdir() if path.is_dir() and path.name[0] != "_"}
    modules = {path.stem for path in SOURCE.glob("*.py") if path.stem != "__init__"}
    assert (packages | modules) - set(LAYER_OF) == set()


@pytest.fixture
def tree_copy(tmp_path):
    copy = tmp_path / "ftbench"
    shutil.copytree(SOURCE, copy, ignore=shutil.ignore_patterns("__pycache__", "*.cu*"))
    return copy


def test_an_upward_import_is_reported(tree_copy):
    timer = tree_copy / "bench" / "timer.py"
    late_import = "\n\ndef _late():\n    from ftbench.runtime import model\n"
    timer.write_text(timer.read_text() + late_import)
    (violation,) = layer_violations(tree_copy)
    assert violation.startswith("bench/timer.py:")
    assert "bench (layer 2) imports ftbench.runtime.model (runtime, layer 5)" in violation


def test_an_import_across_one_layer_is_reported(tree_copy):
    sweep = tree_copy / "autotune" / "sweep.py"
    sweep.write_text(sweep.read_text() + "\nfrom ftbench.runtime.memory import footprint\n")
    (violation,) = layer_violations(tree_copy)
    assert "autotune (layer 5) imports ftbench.runtime.memory.footprint (runtime, layer 5)" in (
        violation
    )


def test_a_cycle_inside_a_package_is_reported(tree_copy):
    stats = tree_copy / "bench" / "stats.py"
    stats.write_text(stats.read_text() + "\nfrom ftbench.bench import timer\n")
    assert ["ftbench.bench.stats", "ftbench.bench.timer"] in import_cycles(tree_copy)
