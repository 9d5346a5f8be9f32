"""The layers import downward only, and no module imports itself round a circle (DESIGN.md,
"Rules of the house").

Every .py file under the packages below is parsed (nothing is imported) and each import
statement, wherever it stands (module level, inside a function, under TYPE_CHECKING), becomes
an edge between two of our modules:

- `import a.b.c` is an edge to `a.b.c` (or its longest prefix that is one of our modules);
- `from a.b import c` is an edge to `a.b.c` if that is a module, else to `a.b`; relative
  imports are resolved against the importing module's package first.

So a submodule that imports a sibling (`from .layer import MoE`) depends on the sibling, not
on the package `__init__` that re-exports it, and a package's `__init__` re-exporting its
submodules is no circle with them. Importing `pkg.sub` also runs `pkg/__init__.py`, but that
is not counted as an edge.

Rules (top-level package -> the top-level packages it may import besides itself):
`hw` -> nothing of ours; `rtl` -> `hw`; `sim` -> `hw`, `rtl`; `models` -> `gpu_kernels`;
`gpu_kernels` -> nothing of ours; `host` -> `hw`, `models`, `rtl`, `gpu_kernels`, and `sim`
only from the RTL backend (`host.runtime.rtl`); `scripts` -> anything but `tests`; `tests` ->
anything. Nothing outside `tests` imports `tests`, and no test module (`test_*.py`) imports
another: what tests share lives in the package it belongs to. No circles between modules.
"""

from __future__ import annotations

import ast
import functools
import re
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("hw", "rtl", "sim", "models", "host", "gpu_kernels", "scripts", "tests")

#: top-level package -> the other top-level packages it may import
ALLOWED: dict[str, frozenset[str]] = {
    "hw": frozenset(),
    "rtl": frozenset({"hw"}),
    "sim": frozenset({"hw", "rtl"}),
    "models": frozenset({"gpu_kernels"}),
    "gpu_kernels": frozenset(),
    "host": frozenset({"hw", "models", "rtl", "gpu_kernels", "sim"}),  # sim: see SIM_IMPORTERS
    "scripts": frozenset(set(PACKAGES) - {"scripts", "tests"}),
    "tests": frozenset(set(PACKAGES) - {"tests"}),
}
#: the only part of `host` that may import `sim` (the RTL backend builds and runs simulations)
SIM_IMPORTERS = "host.runtime.rtl"


@dataclass(frozen=True)
class Edge:
    importer: str  # dotted module names
    imported: str
    path: str  # the importing file, relative to the repository root
    line: int

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.importer} imports {self.imported}"


def find_modules(root: Path = ROOT) -> dict[str, Path]:
    """Dotted module name -> file, for every .py under PACKAGES (a package is its __init__)."""
    modules = {}
    for package in PACKAGES:
        for path in sorted((root / package).rglob("*.py")):
            parts = list(path.relative_to(root).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            modules[".".join(parts)] = path
    return modules


def _ours(name: str) -> bool:
    return name.split(".")[0] in PACKAGES


def _resolve(name: str, modules: dict[str, Path]) -> str | None:
    """The longest prefix of `name` that is one of our modules."""
    while name and name not in modules:
        name = name.rpartition(".")[0]
    return name or None


def _imported_names(node: ast.Import | ast.ImportFrom, module: str, is_package: bool,
                    modules: dict[str, Path]) -> list[str]:
    """Absolute names of what `node` imports: modules, or the module a name comes from."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    if node.level:
        package = module.split(".") if is_package else module.split(".")[:-1]
        base = package[: len(package) - (node.level - 1)]
        source = ".".join(base + ([node.module] if node.module else []))
    else:
        source = node.module or ""
    names = []
    for alias in node.names:
        sub = f"{source}.{alias.name}"
        names.append(sub if sub in modules else source)
    return names


def import_graph(root: Path = ROOT) -> tuple[dict[str, Path], list[Edge], list[Edge]]:
    """(modules, edges between two of our modules, imports of ours that name no module)."""
    modules = find_modules(root)
    edges: list[Edge] = []
    unresolved: list[Edge] = []
    for module, path in modules.items():
        rel = path.relative_to(root).as_posix()
        tree = ast.parse(path.read_text(), filename=rel)
        for node in ast.walk(tree):
            if not isinstance(node, (ast.Import, ast.ImportFrom)):
                continue
            for name in _imported_names(node, module, path.name == "__init__.py", modules):
                if not _ours(name):
                    continue
                target = _resolve(name, modules)
                if target != name:  # `from a.b import c` where neither a.b.c nor a.b exists
                    unresolved.append(Edge(module, name, rel, node.lineno))
                if target and target != module:
                    edges.append(Edge(module, target, rel, node.lineno))
    return modules, edges, unresolved


def layer_violations(edges: list[Edge]) -> list[str]:
    """Each edge that breaks the layer rules, with the rule it breaks."""
    out = []
    for e in edges:
        src, dst = e.importer.split(".")[0], e.imported.split(".")[0]
        if src == dst:
            continue
        if dst == "tests":
            out.append(f"{e}: nothing outside tests imports tests; move what is shared into "
                       "the package it belongs to")
        elif dst not in ALLOWED[src]:
            allowed = ", ".join(sorted(ALLOWED[src])) or "nothing of ours"
            out.append(f"{e}: {src} may import only {allowed}")
        elif src == "host" and dst == "sim" and not (
                e.importer == SIM_IMPORTERS or e.importer.startswith(SIM_IMPORTERS + ".")):
            out.append(f"{e}: host imports sim only inside the RTL backend ({SIM_IMPORTERS})")
    return out


_TEST_MODULE = re.compile(r"(^|\.)test_[^.]*$")


def imports_between_test_modules(edges: list[Edge]) -> list[str]:
    return [f"{e}: a test module imports another test module; move what they share into the "
            "package it belongs to" for e in edges
            if _TEST_MODULE.search(e.importer) and _TEST_MODULE.search(e.imported)]


def strongly_connected(nodes: list[str], edges: list[Edge]) -> list[list[str]]:
    """Tarjan's strongly connected components with more than one module, iteratively."""
    succ: dict[str, list[str]] = defaultdict(list)
    for e in edges:
        succ[e.importer].append(e.imported)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components = []
    for start in nodes:
        if start in index:
            continue
        work = [(start, iter(succ[start]))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            v, children = work[-1]
            w = next(children, None)
            if w is not None:
                if w not in index:
                    index[w] = low[w] = len(index)
                    stack.append(w)
                    on_stack.add(w)
                    work.append((w, iter(succ[w])))
                elif w in on_stack:
                    low[v] = min(low[v], index[w])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[v])
            if low[v] == index[v]:
                component = []
                while True:
                    w = stack.pop()
                    on_stack.discard(w)
                    component.append(w)
                    if w == v:
                        break
                if len(component) > 1:
                    components.append(sorted(component))
    return components


def one_cycle(component: list[str], edges: list[Edge]) -> list[Edge]:
    """A shortest circle through the component's first module, as the edges that make it."""
    members = set(component)
    succ: dict[str, list[Edge]] = defaultdict(list)
    for e in edges:
        if e.importer in members and e.imported in members:
            succ[e.importer].append(e)
    start = component[0]
    came: dict[str, Edge] = {}
    frontier = [start]
    while frontier:
        following = []
        for v in frontier:
            for e in succ[v]:
                if e.imported == start:
                    path = [e]
                    while path[0].importer != start:
                        path.insert(0, came[path[0].importer])
                    return path
                if e.imported not in came:
                    came[e.imported] = e
                    following.append(e.imported)
        frontier = following
    raise AssertionError(f"no circle through {start} in {component}")  # not a component


def cycle_violations(modules: dict[str, Path], edges: list[Edge]) -> list[str]:
    out = []
    for component in strongly_connected(sorted(modules), edges):
        steps = "\n    ".join(str(e) for e in one_cycle(component, edges))
        names = ", ".join(component[:6]) + (", ..." if len(component) > 6 else "")
        out.append(f"circle among {len(component)} modules ({names}), for one:\n    {steps}")
    return out


@functools.cache
def _repo_graph() -> tuple[dict[str, Path], list[Edge], list[Edge]]:
    return import_graph(ROOT)


def _fail(title: str, problems: list[str]) -> str:
    return f"{title} ({len(problems)}):\n  " + "\n  ".join(problems)


def test_layers_import_downward_only():
    _, edges, _ = _repo_graph()
    problems = layer_violations(edges)
    assert not problems, _fail("imports against the layer rules of DESIGN.md", problems)


def test_no_test_module_imports_another():
    _, edges, _ = _repo_graph()
    problems = imports_between_test_modules(edges)
    assert not problems, _fail("test modules importing test modules", problems)


def test_no_circles_between_modules():
    modules, edges, _ = _repo_graph()
    problems = cycle_violations(modules, edges)
    assert not problems, _fail("import circles", problems)


def test_every_import_of_ours_names_a_module():
    # a renamed or moved module leaves imports behind that only fail when they run (lazy
    # imports inside functions); the graph above would count them against a parent instead
    _, _, unresolved = _repo_graph()
    problems = [f"{e}, which is no module of ours" for e in unresolved]
    assert not problems, _fail("imports of modules that do not exist", problems)


# -- the checks themselves, on made-up graphs -------------------------------------------------

def _edges(*pairs: str) -> list[Edge]:
    return [Edge(*pair.split(" -> "), "x.py", 1) for pair in pairs]


def test_the_rules_catch_upward_imports_and_allow_downward_ones():
    bad = layer_violations(_edges("hw.perf -> host.compiler", "models.gpt2 -> host.runtime",
                                  "host.serving.app -> sim.runner", "scripts.bench -> tests.x",
                                  "sim.runner -> host.runtime.rtl"))
    assert [b.split(": ")[1] for b in bad] == [
        "hw.perf imports host.compiler", "models.gpt2 imports host.runtime",
        "host.serving.app imports sim.runner", "scripts.bench imports tests.x",
        "sim.runner imports host.runtime.rtl"]
    assert not layer_violations(_edges("host.runtime.rtl.cluster -> sim.runner",
                                       "host.runtime.rtl -> sim.core.top",
                                       "sim.runner -> rtl.build", "rtl.build -> hw.isa",
                                       "tests.host.x -> sim.runner", "scripts.bench -> host.cli",
                                       "models.gpt2 -> gpu_kernels"))
    assert layer_violations(_edges("host.runtime.rtlx -> sim.runner"))  # a prefix is not enough


def test_circles_are_found_and_named():
    edges = _edges("a.x -> a.y", "a.y -> a.z", "a.z -> a.x", "a.z -> b.w", "b.w -> b.v")
    assert strongly_connected(["a.x", "a.y", "a.z", "b.w", "b.v"], edges) == [
        ["a.x", "a.y", "a.z"]]
    [message] = cycle_violations(dict.fromkeys(["a.x", "a.y", "a.z", "b.w", "b.v"]), edges)
    assert "a.x imports a.y" in message
    assert "a.y imports a.z" in message
    assert "a.z imports a.x" in message
    assert "b.w" not in message


def test_from_package_import_resolves_to_the_submodule(tmp_path):
    # pkg/__init__ re-exports pkg.sub; pkg.sub imports pkg.util as `from . import util` and
    # `from pkg.util import f`: edges to pkg.util, none to pkg, so no circle
    pkg = tmp_path / "host" / "pkg"
    pkg.mkdir(parents=True)
    (tmp_path / "host" / "__init__.py").write_text("")
    (pkg / "__init__.py").write_text("from .sub import g\nfrom . import util\n")
    (pkg / "sub.py").write_text("from . import util\nfrom host.pkg.util import f\n\n"
                                "def g():\n    from .util import f\n    return f\n")
    (pkg / "util.py").write_text("import host.pkg.gone\nfrom .. import pkg\n\ndef f(): ...\n")
    modules, edges, unresolved = import_graph(tmp_path)
    assert sorted((e.importer, e.imported, e.line) for e in edges) == [
        ("host.pkg", "host.pkg.sub", 1), ("host.pkg", "host.pkg.util", 2),
        ("host.pkg.sub", "host.pkg.util", 1), ("host.pkg.sub", "host.pkg.util", 2),
        ("host.pkg.sub", "host.pkg.util", 5), ("host.pkg.util", "host.pkg", 1),
        ("host.pkg.util", "host.pkg", 2)]
    assert [(e.imported, e.line) for e in unresolved] == [("host.pkg.gone", 1)]
    # util -> pkg (the package) -> sub -> util is a real circle: importing util first runs pkg
    [circle] = cycle_violations(modules, edges)
    assert circle.startswith("circle among 3 modules (host.pkg, host.pkg.sub, host.pkg.util)")
