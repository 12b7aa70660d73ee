"""The package keeps its layers: computed from the source, every import goes down or sideways, never up, and no module cycle.

The layers are those of docs/architecture.md; every module of the package is in its table.
"""

import ast
import os
import re

SRC = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "src")
PACKAGE = os.path.join(SRC, "trainprov")
DOC = os.path.join(os.path.dirname(SRC), "docs", "architecture.md")

#: a module's layer, by the longest matching prefix of its dotted name
LAYERS = {
    "trainprov.errors": 1, "trainprov.spec": 1, "trainprov.formatting": 1,
    "trainprov.store": 2,
    "trainprov.capture": 3, "trainprov.rules": 3,
    "trainprov.query": 4, "trainprov.analysis": 4, "trainprov.export": 4, "trainprov.lineage": 4,
    "trainprov.record": 4, "trainprov.rundiff": 4, "trainprov.display": 4, "trainprov.searches": 4, "trainprov.checking": 4, "trainprov.reproduce": 4, "trainprov.transfer": 4,
    "trainprov.runview": 4, "trainprov.provgraph": 4,
    "trainprov.integrations": 5, "trainprov.keras": 5, "trainprov.torch": 5, "trainprov.lightning": 5,
    "trainprov.transformers": 5, "trainprov.optuna": 5, "trainprov.keras_tuner": 5, "trainprov.importers": 5,
    "trainprov.cli": 6, "trainprov.ui": 6,
}


def modules() -> dict[str, str]:
    """Every module of the package: dotted name -> file."""
    found = {}
    for folder, _, files in os.walk(PACKAGE):
        for name in files:
            if name.endswith(".py"):
                path = os.path.join(folder, name)
                dotted = os.path.relpath(path, SRC)[:-3].replace(os.sep, ".")
                found[dotted.removesuffix(".__init__")] = path
    return found


def layer(module: str) -> int | None:
    """The layer of a module (None for the package's own __init__, which re-exports the public API)."""
    best = max((p for p in LAYERS if module == p or module.startswith(p + ".")), key=len, default=None)
    return LAYERS[best] if best else None


def imports(module: str, path: str, known: set[str]) -> set[str]:
    """The package's modules that a module imports, anywhere in it (inside functions too)."""
    package = module if path.endswith("__init__.py") else module.rsplit(".", 1)[0]
    out = set()
    tree = ast.parse(open(path, encoding="utf-8").read())
    # `if TYPE_CHECKING:` imports are for type hints only: they never run
    hints = {id(n) for block in ast.walk(tree) if isinstance(block, ast.If)
             and getattr(block.test, "id", getattr(block.test, "attr", None)) == "TYPE_CHECKING"
             for stmt in block.body for n in ast.walk(stmt)}
    for node in ast.walk(tree):
        if id(node) in hints:
            continue
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1] + ([base] if base else []))
            # `from . import x` imports the module x when there is one
            names = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]
        else:
            continue
        for name in names:
            while name and name not in known:
                name = name.rpartition(".")[0]
            if name and name != module:
                out.add(name)
    return out


def graph() -> dict[str, set[str]]:
    found = modules()
    known = set(found)
    return {m: imports(m, p, known) for m, p in found.items()}


def test_every_module_has_a_layer():
    assert [m for m in modules() if m != "trainprov" and layer(m) is None] == []


def test_no_module_imports_a_higher_layer():
    upward = [f"{m} (layer {layer(m)}) imports {d} (layer {layer(d)})"
              for m, deps in graph().items() for d in deps
              if m != "trainprov" and d != "trainprov" and layer(d) > layer(m)]
    assert upward == []


def test_there_is_no_import_cycle():
    edges = {m: {d for d in deps if d != "trainprov"} for m, deps in graph().items() if m != "trainprov"}
    # a package imports its own submodules to re-export them; a submodule importing its package back is the cycle
    index, low, stack, on, cycles, counter = {}, {}, [], set(), [], [0]

    def visit(v):  # Tarjan's strongly connected components
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in edges.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    assert cycles == []


def test_the_architecture_doc_lists_every_module():
    table = open(DOC, encoding="utf-8").read()
    listed = set(re.findall(r"^\| `(trainprov/[\w/]+\.py)` \|", table, re.M))
    files = {os.path.relpath(p, SRC).replace(os.sep, "/") for p in modules().values()}
    assert sorted(files - listed) == [], "modules missing from docs/architecture.md's table"
    assert sorted(listed - files) == [], "docs/architecture.md lists modules that do not exist"


def private_imports() -> list[str]:
    """Every `from <trainprov module> import _name` of one module from another (inside functions too)."""
    found = modules()
    known = set(found)
    out = []
    for module, path in sorted(found.items()):
        package = module if path.endswith("__init__.py") else module.rsplit(".", 1)[0]
        for node in ast.walk(ast.parse(open(path, encoding="utf-8").read())):
            if not isinstance(node, ast.ImportFrom):
                continue
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1] + ([base] if base else []))
            if base != "trainprov" and not base.startswith("trainprov."):
                continue
            for alias in node.names:
                name = alias.name
                if name.startswith("_") and not name.startswith("__") and f"{base}.{name}" not in known:
                    out.append(f"{module} imports {base}.{name}")
    return out


def test_no_module_imports_another_modules_private_names():
    assert private_imports() == []


#: words that only a SQL statement spells in capitals (the package writes SQL in capitals)
SQL_WORDS = re.compile(r"\b(SELECT|FROM|WHERE|JOIN|GROUP BY|ORDER BY|INSERT INTO|DELETE FROM)\b")


def sql_literals(path: str) -> list[str]:
    """The string literals of a module that spell SQL, f-strings included; an error message may quote an example."""
    tree = ast.parse(open(path, encoding="utf-8").read())
    quoted = {id(n) for call in ast.walk(tree) if isinstance(call, ast.Call)
              and (getattr(call.func, "id", "") or getattr(call.func, "attr", "")).endswith(("Error", "JSON"))
              for arg in call.args for n in ast.walk(arg)}
    found = []
    for node in ast.walk(tree):
        if id(node) in quoted:
            continue
        if isinstance(node, ast.JoinedStr):
            text = "".join(v.value if isinstance(v, ast.Constant) else "{}" for v in node.values)
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            text = node.value
        else:
            continue
        if SQL_WORDS.search(text):
            found.append(f"{os.path.relpath(path, SRC)}:{node.lineno}: {text[:60]!r}")
    return found


def test_the_dashboard_modules_hold_no_sql():
    """SQL is read-side code (query, analysis, runview, provgraph, ...): ui/ only shapes what they return."""
    ui = [p for m, p in modules().items() if m == "trainprov.ui" or m.startswith("trainprov.ui.")]
    assert ui and [hit for path in sorted(ui) for hit in sql_literals(path)] == []
