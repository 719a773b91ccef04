"""One-way layers: every import inside dynapose4d goes down (or sideways without a circle), never up.

The layers, lowest first (a module may import its own layer and the layers below it):

    core        dynapose4d.core: errors, io, images, cameras, rotations, precision, memory, seeding, structured
    components  gaussians, render, deform, priors, cape, data, export, evaluation: plain torch, no Lightning,
                no run folder
    stages      dynapose4d.stages (settings, base, logger and the stages): Lightning lives here
    pipeline    dynapose4d.pipeline: the run config, the run folder and its manifest, the runner, evaluate,
                experiments, showcase
    cli         argparse and the command handlers (cli, commands, __main__), and the benchmark script

The map below is the one place that says which module sits in which layer (longest dotted prefix wins; a
module the map does not name fails the test, so a new module must be placed). Imports are read with `ast`:
module-level ones and those inside functions alike (a function-local import does not make a circle go away),
`if TYPE_CHECKING:` ones included.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "dynapose4d"

LAYERS: tuple[str, ...] = ("core", "components", "stages", "pipeline", "cli")

#: dotted module prefix (relative to the package) -> layer. "" is the package's own __init__.
LAYER_MAP: dict[str, str] = {
    "": "core", "core": "core",
    "gaussians": "components", "render": "components", "deform": "components", "priors": "components",
    "cape": "components", "data": "components", "export": "components", "evaluation": "components",
    "stages": "stages",
    "pipeline": "pipeline",
    "cli": "cli", "commands": "cli", "__main__": "cli", "bench": "cli",
}


@dataclass(frozen=True)
class Edge:
    """`src` imports `dst` (both dotted module names) at `where` ("dynapose4d/x.py:12")."""

    src: str
    dst: str
    where: str

    def __str__(self) -> str:
        return f"{self.src} -> {self.dst} ({self.where})"


def package_modules(root: Path) -> dict[str, Path]:
    """{dotted name: file} of every module of the package in folder `root` (its name is the package name)."""
    mods = {}
    for path in sorted(root.rglob("*.py")):
        parts = list(path.relative_to(root.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        mods[".".join(parts)] = path
    return mods


def import_edges(root: Path) -> list[Edge]:
    """Every import of a package module by a package module, module-level or function-local (self-imports left
    out). `from a.b import c` is an edge to a.b.c when that is a module, else to a.b."""
    pkg = root.name
    mods = package_modules(root)
    edges: dict[Edge, None] = {}  # ordered set: `from a import b, c` gives one edge per target module
    for mod, path in mods.items():
        tree = ast.parse(path.read_text(), filename=str(path))
        here = mod if path.name == "__init__.py" else mod.rpartition(".")[0]
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = here.split(".")
                    base = base[:len(base) - node.level + 1]
                    src = ".".join(base + ([node.module] if node.module else []))
                else:
                    src = node.module or ""
                targets = [f"{src}.{a.name}" if f"{src}.{a.name}" in mods else src for a in node.names]
            else:
                continue
            for t in targets:
                if t != pkg and not t.startswith(pkg + "."):
                    continue
                while t not in mods:  # `import pkg.a.b.name` style: the deepest module named
                    t = t.rpartition(".")[0]
                if t != mod:
                    edges[Edge(mod, t, f"{path.relative_to(root.parent).as_posix()}:{node.lineno}")] = None
    return list(edges)


def layer_of(module: str, pkg: str, layer_map: dict[str, str]) -> str | None:
    """The layer of a dotted module name by the longest prefix in `layer_map` (None when none matches)."""
    if module == pkg:
        return layer_map.get("")
    parts = module[len(pkg) + 1:].split(".")
    for n in range(len(parts), 0, -1):
        key = ".".join(parts[:n])
        if key in layer_map:
            return layer_map[key]
    return None


def cycles(edges: list[Edge]) -> list[list[str]]:
    """The strongly connected components with more than one module (import circles), each sorted."""
    graph: dict[str, set[str]] = {}
    for e in edges:
        graph.setdefault(e.src, set()).add(e.dst)
        graph.setdefault(e.dst, set())
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:  # Tarjan
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return sorted(out)


def layer_violations(root: Path, layer_map: dict[str, str] = LAYER_MAP) -> list[str]:
    """One line per problem: a module in no layer, an import that goes to a higher layer, and every import
    edge that closes a circle (printed as `a -> b (file:line)`)."""
    pkg = root.name
    edges = import_edges(root)
    rank = {name: i for i, name in enumerate(LAYERS)}
    problems = []
    for mod in package_modules(root):
        if layer_of(mod, pkg, layer_map) is None:
            problems.append(f"{mod}: in no layer (add it to LAYER_MAP in tests/test_layers.py)")
    for e in edges:
        a, b = layer_of(e.src, pkg, layer_map), layer_of(e.dst, pkg, layer_map)
        if a is not None and b is not None and rank[b] > rank[a]:
            problems.append(f"upward ({a} -> {b}): {e}")
    for comp in cycles(edges):
        members = set(comp)
        problems.append("circle: " + ", ".join(comp))
        problems += [f"  in the circle: {e}" for e in sorted(edges, key=str) if e.src in members and e.dst in members]
    return problems


def function_local_imports(root: Path) -> int:
    """How many import statements of package modules sit inside functions (for the record; not a failure)."""
    pkg = root.name
    n = 0
    for path in package_modules(root).values():
        tree = ast.parse(path.read_text())
        seen: set[int] = set()
        for fn in ast.walk(tree):
            if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
                for node in ast.walk(fn):
                    if id(node) in seen:
                        continue
                    if isinstance(node, ast.ImportFrom) and (node.level or (node.module or "").startswith(pkg)):
                        seen.add(id(node))
                        n += 1
                    elif isinstance(node, ast.Import) and any(a.name.startswith(pkg) for a in node.names):
                        seen.add(id(node))
                        n += 1
    return n


# ------------------------------------------------------------------------------------------------ tests


def test_imports_go_one_way():
    problems = layer_violations(PACKAGE)
    assert not problems, "imports that break the layers (tests/test_layers.py docstring):\n" + "\n".join(problems)


def _write(root: Path, rel: str, text: str) -> None:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def test_checker_reports_circles_and_upward_imports(tmp_path):
    """A small package with a circle hidden in a function-local import, an upward import and a relative one:
    the checker names each offending edge with its file and line."""
    root = tmp_path / "toy"
    _write(root, "__init__.py", "")
    _write(root, "errors.py", "")
    _write(root, "gaussians/__init__.py", "from toy.gaussians.model import Model\n")
    _write(root, "gaussians/model.py", "from toy import errors\n\n\ndef f():\n    from toy.gaussians import Model\n")
    _write(root, "runner.py", "import toy.errors\n")
    _write(root, "render.py", "from .runner import x\n")  # a component reaching up into the pipeline
    _write(root, "cli.py", "from toy import runner\n")
    layer_map = {"": "core", "errors": "core", "gaussians": "components", "render": "components",
                 "runner": "pipeline", "cli": "cli"}
    problems = layer_violations(root, layer_map)
    assert "upward (components -> pipeline): toy.render -> toy.runner (toy/render.py:1)" in problems
    assert "circle: toy.gaussians, toy.gaussians.model" in problems
    assert "  in the circle: toy.gaussians.model -> toy.gaussians (toy/gaussians/model.py:5)" in problems
    assert "  in the circle: toy.gaussians -> toy.gaussians.model (toy/gaussians/__init__.py:1)" in problems
    assert len(problems) == 4, problems  # cli -> runner, runner -> errors, model -> errors go down: fine
    _write(root, "extra.py", "")
    assert "toy.extra: in no layer (add it to LAYER_MAP in tests/test_layers.py)" in layer_violations(root, layer_map)


def test_the_map_names_only_existing_modules():
    """A stale entry (a module moved or removed) would hide a new module of that name: every key must exist."""
    mods = package_modules(PACKAGE)
    names = {m[len("dynapose4d") + 1:] for m in mods}
    stale = [k for k in LAYER_MAP if k and not any(n == k or n.startswith(k + ".") for n in names)]
    assert not stale, f"LAYER_MAP keys with no module: {stale}"


def _copy_package(tmp_path: Path) -> Path:
    import shutil

    root = tmp_path / "dynapose4d"
    shutil.copytree(PACKAGE, root, ignore=shutil.ignore_patterns("__pycache__", "*.so", "assets", "configs"))
    return root


def _append_import(root: Path, rel: str, line: str) -> None:
    path = root / rel
    path.write_text(path.read_text() + f"\n\ndef _reintroduced():\n    {line}\n")


def test_the_real_package_fails_on_the_circles_it_once_had(tmp_path):
    """The package's own former circles, put back into a copy of it as function-local imports (the way they were
    hidden): runner <-> experiments, the run config -> the stages' logger -> the run config, the CAPE component
    -> the stages, deform's package <-> its checkpoint module. Each is reported; the copy without them is clean."""
    root = _copy_package(tmp_path)
    assert layer_violations(root) == []
    _append_import(root, "pipeline/runner.py", "from dynapose4d.pipeline import experiments")
    _append_import(root, "stages/logger.py", "from dynapose4d.pipeline import config")
    _append_import(root, "cape/finetune.py", "from dynapose4d.stages import train_cape")
    _append_import(root, "deform/model4d.py", "import dynapose4d.deform")
    problems = layer_violations(root)
    text = "\n".join(problems)
    assert any(p.startswith("circle:") and "dynapose4d.pipeline.experiments" in p and "dynapose4d.pipeline.runner" in p
               for p in problems), text
    assert "upward (stages -> pipeline): dynapose4d.stages.logger -> dynapose4d.pipeline.config" in text, text
    assert "upward (components -> stages): dynapose4d.cape.finetune -> dynapose4d.stages.train_cape" in text, text
    assert any(p.startswith("circle:") and "dynapose4d.deform.model4d" in p for p in problems), text


def test_the_run_config_and_the_components_load_without_lightning():
    """Lightning lives in the stages layer only: every component module, the stages' config files and the run
    config (pipeline/config.py) import without loading it (checked in a fresh interpreter)."""
    import os
    import subprocess
    import sys

    pkg = PACKAGE.name
    mods = [m for m in package_modules(PACKAGE) if layer_of(m, pkg, LAYER_MAP) == "components"
            or m.endswith(".config") and m.startswith((f"{pkg}.stages.", f"{pkg}.pipeline."))]
    code = ("import sys\n" + "".join(f"import {m}\n" for m in mods)
            + "print(sorted(m for m in sys.modules if m.split('.')[0] in ('lightning', 'pytorch_lightning')))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert len(mods) > 60 and f"{pkg}.pipeline.config" in mods and f"{pkg}.stages.dynamic.config" in mods
    assert out.stdout.strip() == "[]", f"Lightning loaded by a component or a config: {out.stdout[:300]}"
