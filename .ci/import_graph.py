"""Print onnxslim's import graph between its layers (subpackages and top-level modules).

Function-local imports count like any other: ``python .ci/import_graph.py``.
"""

import ast
import collections
import pathlib
import sys


def layer(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else parts[0]


def imported_modules(path: pathlib.Path, package: str):
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                yield ".".join(base + ([node.module] if node.module else []))
            elif node.module:
                yield node.module


def main(root: pathlib.Path) -> None:
    edges = collections.defaultdict(set)
    for path in sorted(root.rglob("*.py")):
        module = ".".join(path.relative_to(root.parent).with_suffix("").parts)
        package = module[: -len(".__init__")] if module.endswith(".__init__") else module.rsplit(".", 1)[0]
        for target in imported_modules(path, package):
            if target.startswith(root.name + ".") and layer(target) != layer(module):
                edges[layer(module)].add(layer(target))
    for source in sorted(edges):
        print(f"{source} -> {', '.join(sorted(edges[source]))}")


if __name__ == "__main__":
    main(pathlib.Path(sys.argv[1] if len(sys.argv) > 1 else "onnxslim"))
