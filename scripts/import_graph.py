"""The package's import graph, from the source (ast): its circles and its imports against the layers.

    python scripts/import_graph.py            # print import circles and layer violations; exit 1 if any

Every ``import`` counts, at module level or inside a function: a deferred import still ties the two
modules together. Import names map onto folders as pyproject.toml's ``[tool.setuptools] package-dir``
says (``medssr.components`` is ``components/``, ...). The layers, lowest first, are in ``LAYERS``; a
module may import its own layer and those below it, never one above.
"""

from __future__ import annotations

import ast
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ROOT_PACKAGE = "medssr"

# Lowest first. A module belongs to the first layer whose prefix it matches, most specific prefix first.
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    ("core", ("medssr",)),
    ("stage registry", ("medssr.stages",)),
    ("orchestration", ("medssr.components", "medssr.pipelines", "medssr.study")),
    ("serving", ("medssr.serving",)),
    ("cli", ("medssr.cli", "medssr.commands", "medssr.__main__")),
]
# The server a deployment runs and the orchestration that deploys it are side by side, neither above the other.
PEERS = {frozenset({"orchestration", "serving"})}


def package_dirs(repo: Path = REPO) -> dict[str, Path]:
    """Import package -> folder, from pyproject.toml."""
    config = tomllib.loads((repo / "pyproject.toml").read_text(encoding="utf-8"))
    mapping = config.get("tool", {}).get("setuptools", {}).get("package-dir", {}) or {ROOT_PACKAGE: ROOT_PACKAGE}
    return {name: repo / folder for name, folder in mapping.items()}


def modules(repo: Path = REPO) -> dict[str, Path]:
    """Every module of the package: import name -> file."""
    found: dict[str, Path] = {}
    dirs = package_dirs(repo)
    for package, folder in sorted(dirs.items(), key=lambda item: len(item[0])):
        for path in sorted(folder.rglob("*.py")):
            parts = path.relative_to(folder).with_suffix("").parts
            # a folder mapped to another import package belongs to that one
            if any((folder / Path(*parts[:i])).resolve() == other.resolve() for i in range(1, len(parts))
                   for name, other in dirs.items() if name != package):
                continue
            name = ".".join((package, *parts))
            found[name.removesuffix(".__init__")] = path
    return found


def layer(module: str) -> str:
    best, best_length = LAYERS[0][0], -1
    for name, prefixes in LAYERS:
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and len(prefix) > best_length:
                best, best_length = name, len(prefix)
    return best


def imports(name: str, path: Path, known: dict[str, Path]) -> Iterator[tuple[str, int]]:
    """The package modules ``name`` imports, with the line of each import."""
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base for alias in node.names]
        else:
            continue
        for target in targets:
            while target and target not in known:  # `import a.b.c` imports a.b.c; a name inside a module is that module
                target = target.rpartition(".")[0]
            if target and target != name and target.split(".")[0] == ROOT_PACKAGE:
                yield target, node.lineno


def graph(repo: Path = REPO) -> dict[str, dict[str, int]]:
    known = modules(repo)
    edges: dict[str, dict[str, int]] = {name: {} for name in known}
    for name, path in known.items():
        for target, line in imports(name, path, known):
            edges[name].setdefault(target, line)
    # importing a.b.c runs a/__init__ and a/b/__init__ first; those are not edges of interest here
    return edges


def circles(edges: dict[str, dict[str, int]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan), each sorted."""
    index, low, on_stack, stack, found, counter = {}, {}, set(), [], [], [0]

    def visit(node: str) -> None:
        index[node] = low[node] = counter[0]
        counter[0] += 1
        stack.append(node)
        on_stack.add(node)
        for target in edges.get(node, {}):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    sys.setrecursionlimit(10_000)
    for node in sorted(edges):
        if node not in index:
            visit(node)
    return sorted(found)


def upward(edges: dict[str, dict[str, int]]) -> list[tuple[str, str, int]]:
    """Imports from a lower layer into a higher one: (importer, imported, line)."""
    rank = {name: i for i, (name, _) in enumerate(LAYERS)}
    found = []
    for source, targets in edges.items():
        for target, line in targets.items():
            a, b = layer(source), layer(target)
            if rank[b] > rank[a] and frozenset({a, b}) not in PEERS:
                found.append((source, target, line))
    return sorted(found)


def main() -> int:
    edges = graph()
    problems = 0
    for component in circles(edges):
        problems += 1
        print("circle: " + " <-> ".join(component))
        for source in component:
            for target, line in edges[source].items():
                if target in component:
                    print(f"    {source} -> {target} (line {line})")
    known = modules()
    for source, target, line in upward(edges):
        problems += 1
        print(f"upward: {source} ({layer(source)}) imports {target} ({layer(target)}) at {known[source].relative_to(REPO)}:{line}")
    print(f"{len(edges)} modules, {sum(map(len, edges.values()))} imports, {problems} problems")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
