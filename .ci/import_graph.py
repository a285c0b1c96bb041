"""Print onnxslim's import graph between layers (top-level modules and subpackages), function-local imports included."""
import ast, pathlib, sys, collections
root = pathlib.Path(sys.argv[1] if len(sys.argv) > 1 else "onnxslim")
def layer(mod):
    parts = mod.split(".")
    return parts[1] if len(parts) > 1 else parts[0]
edges = collections.defaultdict(set)
for path in root.rglob("*.py"):
    rel = path.relative_to(root.parent).with_suffix("")
    mod = ".".join(rel.parts)
    if mod.endswith(".__init__"): mod = mod[:-9]; pkg = mod
    else: pkg = mod.rsplit(".", 1)[0]
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        targets = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = pkg.split(".")
                base = base[: len(base) - node.level + 1]
                m = ".".join(base + ([node.module] if node.module else []))
            else:
                m = node.module or ""
            targets = [m]
        for t in targets:
            if t.startswith("onnxslim.") and layer(t) != layer(mod):
                edges[layer(mod)].add((layer(t), mod))
for src in sorted(edges):
    dsts = collections.defaultdict(list)
    for d, m in edges[src]: dsts[d].append(m)
    print(f"{src} -> " + ", ".join(f"{d}" for d in sorted(dsts)))
