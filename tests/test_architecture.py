"""The package's import structure, read from the source with ``ast`` (no import is executed):

* no import cycle anywhere (every strongly connected component of the module graph is one module);
* no import from a lower layer to a higher one, in the layer order of docs/design.md.

Edges are every ``import`` / ``from ... import`` of a ``medprobe`` module at module level and inside functions
(an import deferred into a function is still a dependency); imports under ``if TYPE_CHECKING:`` are skipped
(annotations only). A registry stays complete without an upward edge by importing its built-in modules from
dotted-name strings (:class:`medprobe.registry.Registry`), which are not imports here.
"""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "medprobe"

# lowest first; a module may import its own layer and the layers below it
LAYERS: tuple[tuple[str, ...], ...] = (
    ("errors", "version", "utils", "schema", "registry", "numerics"),  # base: torch-free helpers every layer reads
    ("data",),
    ("audit",),  # pixel-level leakage audit of a dataset's splits (reads datasets only)
    ("preprocess",),
    ("encoders",),
    ("features",),
    ("heads",),
    ("registration",),  # pair heads (registered as heads) and their solvers: above heads, below metrics
    ("metrics",),
    ("results",),
    ("analysis",),
    ("report",),
    ("pipeline",),
    ("cli",),
    ("",),  # the package root (medprobe.run, re-exported constants): a facade nothing inside imports
)
RANK = {top: i for i, layer in enumerate(LAYERS) for top in layer}


def _modules() -> dict[str, tuple[Path, bool]]:
    out = {}
    for p in sorted(SRC.rglob("*.py")):
        parts = ["medprobe", *p.relative_to(SRC).with_suffix("").parts]
        is_pkg = parts[-1] == "__init__"
        out[".".join(parts[:-1] if is_pkg else parts)] = (p, is_pkg)
    return out


MODULES = _modules()


def _is_type_checking(node: ast.If) -> bool:
    t = node.test
    return (isinstance(t, ast.Name) and t.id == "TYPE_CHECKING") or (
        isinstance(t, ast.Attribute) and t.attr == "TYPE_CHECKING")


def _owner(name: str) -> str | None:
    """The medprobe module that ``name`` (a module or a module's attribute) lives in."""
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def imports_of(module: str) -> set[str]:
    """The medprobe modules ``module`` imports (module level and in functions; not under TYPE_CHECKING)."""
    path, is_pkg = MODULES[module]
    package = module if is_pkg else module.rpartition(".")[0]
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _is_type_checking(child):
                for c in child.orelse:
                    visit_one(c)
                continue
            visit_one(child)

    def visit_one(node: ast.AST) -> None:
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            subs = [f"{mod}.{a.name}" for a in node.names if f"{mod}.{a.name}" in MODULES]
            found.update(subs)
            if len(subs) < len(node.names):  # names defined in ``mod`` itself
                found.add(mod)
        visit(node)

    visit(ast.parse(path.read_text(encoding="utf-8")))
    return {o for o in (_owner(n) for n in found if n == "medprobe" or n.startswith("medprobe.")) if o and o != module}


GRAPH = {m: imports_of(m) for m in MODULES}


def _sccs(graph: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's strongly connected components (iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []
    counter = 0
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on.add(root)
        while work:
            v, it = work[-1]
            w = next(it, None)
            if w is not None:
                if w not in index:
                    index[w] = low[w] = counter
                    counter += 1
                    stack.append(w)
                    on.add(w)
                    work.append((w, iter(sorted(graph[w]))))
                elif w in on:
                    low[v] = min(low[v], index[w])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[v])
            if low[v] == index[v]:
                comp = []
                while True:
                    w = stack.pop()
                    on.discard(w)
                    comp.append(w)
                    if w == v:
                        break
                out.append(sorted(comp))
    return out


def _layer(module: str) -> str:
    return module.split(".")[1] if module.count(".") else ""


def test_the_graph_is_read() -> None:
    """The parser sees the edges that matter (a test of the test): module-level, in-function, relative-free."""
    assert "medprobe.errors" in GRAPH["medprobe.registry"]
    assert "medprobe.encoders.spec" in GRAPH["medprobe.encoders.base"]
    assert "medprobe.pipeline.run" in GRAPH["medprobe"]  # imported inside medprobe.run()
    assert "medprobe.heads.knn" not in GRAPH["medprobe.heads"]  # the registry imports built-ins from strings
    assert not GRAPH["medprobe.errors"]


def test_every_top_level_module_has_a_layer() -> None:
    assert sorted({_layer(m) for m in MODULES} - set(RANK)) == []


def test_no_import_cycle() -> None:
    cycles = [c for c in _sccs(GRAPH) if len(c) > 1]
    assert not cycles, "import cycles: " + "; ".join(" <-> ".join(c) for c in cycles)


def test_no_import_runs_up_the_layers() -> None:
    up = [f"{m} ({_layer(m) or 'root'}) imports {d} ({_layer(d) or 'root'})"
          for m, deps in sorted(GRAPH.items()) for d in sorted(deps) if RANK[_layer(d)] > RANK[_layer(m)]]
    assert not up, up


_GLOBAL_SEEDS = {"torch.manual_seed", "torch.random.manual_seed", "torch.cuda.manual_seed",
                 "torch.cuda.manual_seed_all", "np.random.seed", "numpy.random.seed", "random.seed",
                 "torch.random.default_generator.manual_seed"}


def bare_seeding(tree: ast.AST) -> list[int]:
    """Lines that seed a global random stream outside a ``with ...fork_rng(...)`` block."""
    out: list[int] = []

    def visit(node: ast.AST, forked: bool) -> None:
        if isinstance(node, ast.With):
            forked = forked or any(isinstance(i.context_expr, ast.Call)
                                   and ast.unparse(i.context_expr.func).endswith("fork_rng") for i in node.items)
        if isinstance(node, ast.Call) and ast.unparse(node.func) in _GLOBAL_SEEDS and not forked:
            out.append(node.lineno)
        for child in ast.iter_child_nodes(node):
            visit(child, forked)

    visit(tree, False)
    return out


def test_no_hidden_global_random_state() -> None:
    """Randomness goes through explicit generators or a seeded block whose state is restored
    (:func:`medprobe.utils.torch_seeded`, ``torch.random.fork_rng``): no bare global seeding in the package."""
    hits = [f"{p.relative_to(SRC)}:{line}" for p, _ in MODULES.values()
            for line in bare_seeding(ast.parse(p.read_text(encoding="utf-8")))]
    assert not hits, hits
    planted = ast.parse("import torch\ntorch.manual_seed(0)\nwith torch.random.fork_rng():\n    torch.manual_seed(1)\n")
    assert bare_seeding(planted) == [2]


def test_the_checks_catch_what_they_should() -> None:
    """A cycle and an upward import planted in a copy of the graph are found."""
    g = {k: set(v) for k, v in GRAPH.items()}
    g["medprobe.errors"].add("medprobe.utils")
    g["medprobe.utils"].add("medprobe.errors")
    assert ["medprobe.errors", "medprobe.utils"] in _sccs(g)
    assert RANK[_layer("medprobe.pipeline.run")] > RANK[_layer("medprobe.report.analyze")]
