"""The package layout stays what ARCHITECTURE.md says: imports point down the layers, no cycles, no
reaching into another part's private names, and every third-party import is a declared dependency.

Imports are read from the source (every `import` statement, at module level or inside a function),
so a lazy import counts as much as a top-level one.
"""
from __future__ import annotations

import ast
import configparser
import importlib.metadata
import re
import sys
from pathlib import Path

import pytest

from tests.testlib import REPO

# The parts of trainer/, lowest first. A module may import its own part, or a part on a lower
# layer; never the same layer's other parts, never a higher one. The numbers are ARCHITECTURE.md's.
LAYERS: dict[str, int] = {
    "trainer.errors": 0, "trainer.faults": 0, "trainer.config": 0, "trainer.dist": 0,
    "trainer.visualize": 1, "trainer.optim": 1, "trainer.progress": 1, "trainer.preemption": 1,
    "trainer.run_dir": 1, "trainer.outputs": 1,
    "trainer.model": 2,
    "trainer.data": 3,
    "trainer.backends": 4,
    "trainer.checkpoint": 5,
    "trainer.step": 6, "trainer.evaluation": 6, "trainer.preflight": 6,
    "trainer.inference": 7,
    "trainer.tracking": 8,
    "trainer.bench": 9,
    "trainer.train": 10,
    "trainer.__main__": 11,
}
MAX_LINES = 420  # "no module over ~400 lines"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def part_of(module: str) -> str:
    """The part a trainer module belongs to: its sub-package, or the top-level module itself."""
    for part in sorted(LAYERS, key=len, reverse=True):
        if module == part or module.startswith(part + "."):
            return part
    raise AssertionError(f"{module} belongs to no part of LAYERS: add it there and to ARCHITECTURE.md")


def imports_of(path: Path) -> list[tuple[str, list[str], int]]:
    """(imported module, imported names, line) for every absolute or relative import in a file."""
    tree = ast.parse(path.read_text(), str(path))
    package = module_name(path) if path.name == "__init__.py" else module_name(path).rpartition(".")[0]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(alias.name, [], node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[:len(package.split(".")) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            names = [alias.name for alias in node.names]
            # `from trainer.data import transforms` imports the submodule trainer.data.transforms
            submodules = [name for name in names if (REPO / Path(*module.split("."), name + ".py")).exists()]
            if len(submodules) < len(names):
                found.append((module, [n for n in names if n not in submodules], node.lineno))
            found += [(f"{module}.{name}", [], node.lineno) for name in submodules]
    return found


def python_files(package: str) -> list[Path]:
    return sorted((REPO / package).rglob("*.py"))


def first_party_graph() -> dict[str, set[str]]:
    """trainer module -> the trainer modules it imports (an import of a package counts as its
    __init__, an import of a name that is a submodule counts as that submodule)."""
    modules = {module_name(path): path for path in python_files("trainer")}
    graph: dict[str, set[str]] = {}
    for module, path in modules.items():
        targets = set()
        for imported, _, _ in imports_of(path):
            if imported.split(".")[0] == "trainer" and imported in modules and imported != module:
                targets.add(imported)
        graph[module] = targets
    return graph


def test_every_trainer_module_belongs_to_a_part_and_imports_point_down():
    upward = []
    for path in python_files("trainer"):
        module = module_name(path)
        if module == "trainer":
            continue  # the package's own (empty) __init__
        own = part_of(module)
        for imported, _, line in imports_of(path):
            if not imported.startswith("trainer.") or imported == "trainer":
                continue
            other = part_of(imported)
            if other != own and LAYERS[other] >= LAYERS[own]:
                upward.append(f"{path.relative_to(REPO)}:{line}: {own} (layer {LAYERS[own]}) imports "
                              f"{imported} (layer {LAYERS[other]})")
    assert not upward, "imports that do not point down the layers:\n" + "\n".join(upward)


def test_no_import_cycles_between_trainer_modules():
    graph = first_party_graph()
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done
    path: list[str] = []
    cycles: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        path.append(node)
        for target in sorted(graph[node]):
            if state.get(target) == 1:
                cycles.append(" -> ".join(path[path.index(target):] + [target]))
            elif target not in state:
                visit(target)
        path.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node)
    assert not cycles, "import cycles:\n" + "\n".join(cycles)


def test_parts_do_not_import_each_others_private_names():
    reaching = []
    for package in ("trainer", "shards"):
        for path in python_files(package):
            own = module_name(path)
            for imported, names, line in imports_of(path):
                if imported.split(".")[0] not in ("trainer", "shards"):
                    continue
                same_part = package == "shards" and imported.startswith("shards") or (
                    package == "trainer" and imported.startswith("trainer.") and part_of(imported) == part_of(own))
                private = [n for n in names if n.startswith("_") and not n.startswith("__")]
                if private and not same_part:
                    reaching.append(f"{path.relative_to(REPO)}:{line}: {imported} {private}")
    assert not reaching, "private names imported across parts:\n" + "\n".join(reaching)


def test_shards_imports_neither_torch_nor_trainer():
    """Preprocessing runs on machines without torch: shards/ must not need it."""
    offending = [f"{path.relative_to(REPO)}:{line}: {imported}" for path in python_files("shards")
                 for imported, _, line in imports_of(path) if imported.split(".")[0] in ("torch", "trainer")]
    assert not offending, offending


def test_no_python_module_is_much_over_400_lines():
    long = [f"{path.relative_to(REPO)} ({count} lines)" for package in ("trainer", "shards", "tests")
            for path in python_files(package) if (count := path.read_text().count("\n")) > MAX_LINES]
    assert not long, long


def declared_distributions() -> set[str]:
    """install_requires and every extra of setup.cfg, normalised (PEP 503)."""
    config = configparser.ConfigParser()
    config.read(REPO / "setup.cfg")
    lines = config["options"]["install_requires"].splitlines()
    for extra in config["options.extras_require"].values():
        lines += extra.splitlines()
    return {normalise(re.split(r"[<>=!~;\[ ]", line.strip())[0]) for line in lines if line.strip()}


def normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def test_every_third_party_import_is_a_declared_dependency():
    distributions = importlib.metadata.packages_distributions()
    declared = declared_distributions()
    undeclared = []
    for package in ("trainer", "shards"):
        for path in python_files(package):
            for imported, _, line in imports_of(path):
                top = imported.split(".")[0]
                if not top or top in sys.stdlib_module_names or top in ("trainer", "shards"):
                    continue
                provided_by = {normalise(d) for d in distributions.get(top, [])}
                if not provided_by:
                    pytest.fail(f"{path.relative_to(REPO)}:{line}: {top} is not installed here, so its "
                                f"distribution cannot be checked against setup.cfg")
                if not provided_by & declared:
                    undeclared.append(f"{path.relative_to(REPO)}:{line}: {top} (from {sorted(provided_by)})")
    assert not undeclared, "imports whose distribution setup.cfg does not declare:\n" + "\n".join(undeclared)


def test_the_checks_catch_what_they_are_for(tmp_path):
    """The helpers above see a lazy import inside a function, a relative import and a submodule
    imported by name, so the tests cannot pass by not looking."""
    source = tmp_path / "probe.py"
    source.write_text("def f():\n    import pandas\n    from trainer.data import transforms\n")
    found = [(module, line) for module, _, line in imports_of_file_outside_repo(source)]
    assert ("pandas", 2) in found and ("trainer.data.transforms", 3) in found
    assert part_of("trainer.evaluation.cli") == "trainer.evaluation"
    assert LAYERS[part_of("trainer.train")] > LAYERS[part_of("trainer.tracking.registry")]


def imports_of_file_outside_repo(path: Path) -> list[tuple[str, list[str], int]]:
    """imports_of for a file outside the checkout (its package is taken to be trainer.data)."""
    probe = REPO / "trainer" / "data" / "_architecture_probe.py"
    probe.write_text(path.read_text())
    try:
        return imports_of(probe)
    finally:
        probe.unlink()
