"""The package's shape: dependencies point one way (no import cycles, at any level), and the leaves
(errors, runs, encoders, profiling, allocator) import nothing of ours."""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "nlptransfer"
LEAVES = [
    "nlptransfer.errors",
    "nlptransfer.runs",
    "nlptransfer.encoders",
    "nlptransfer.profiling",
    "nlptransfer.allocator",
]


def module_name(path: Path) -> str:
    name = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return name.removesuffix(".__init__")


def import_graph() -> dict[str, set[str]]:
    """Module -> the modules of ours it imports, at the top or inside a function alike."""
    modules = {module_name(path): path for path in PACKAGE.rglob("*.py")}
    graph = {name: set() for name in modules}
    for name, path in modules.items():
        for node in ast.walk(ast.parse(path.read_text())):
            targets = [node.module] if isinstance(node, ast.ImportFrom) and node.level == 0 else []
            targets += [alias.name for alias in node.names] if isinstance(node, ast.Import) else []
            graph[name] |= {t for t in targets if t and t in modules and t != name}
    return graph


def test_no_module_imports_one_that_imports_it_back():
    graph = import_graph()

    def reachable(start: str) -> set[str]:
        seen, stack = set(), [start]
        while stack:
            for target in graph[stack.pop()] - seen:
                seen.add(target)
                stack.append(target)
        return seen

    # the package's own __init__ re-exports everything: importing `nlptransfer` from inside it would be a cycle
    assert not [name for name, targets in graph.items() if "nlptransfer" in targets and name != "nlptransfer"]
    cycles = sorted((a, b) for a in graph for b in graph[a] if a != "nlptransfer" and a in reachable(b))
    assert not cycles, f"import cycles: {cycles}"


@pytest.mark.parametrize("leaf", LEAVES)
def test_leaves_import_nothing_of_ours(leaf):
    graph = import_graph()
    if leaf in graph:
        assert graph[leaf] == set(), f"{leaf} imports {sorted(graph[leaf])}"
