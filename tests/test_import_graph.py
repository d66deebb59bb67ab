"""jaxlm's imports point one way: no cycle between its parts, and evaluation, prediction,
generation, run directories and model loading never import the training package.

Every `import` is read with `ast`, at module level and inside functions alike (a lazy import is
still a dependency). A *part* is a subpackage (`jaxlm.train`, `jaxlm.data`, ...) or a top-level
module (`jaxlm.run`, `jaxlm.config`, ...); `jaxlm` itself (its `__init__`, the public facade) is a
part too. Imports between modules of one subpackage are that subpackage's own business.
"""
import ast
import os
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1] / "jaxlm"

# Must not reach jaxlm.train, however indirectly.
INFERENCE_SIDE = ["jaxlm.evaluation", "jaxlm.inference", "jaxlm.generate", "jaxlm.generation",
                  "jaxlm.run", "jaxlm.loading", "jaxlm.checkpoint", "jaxlm.params",
                  "jaxlm.interop", "jaxlm.run_info"]


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PKG.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(PKG.rglob("*.py"))}


def _is_type_checking(node: ast.If) -> bool:
    t = node.test
    return (isinstance(t, ast.Name) and t.id == "TYPE_CHECKING") or (
        isinstance(t, ast.Attribute) and t.attr == "TYPE_CHECKING")


def _imports(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The jaxlm modules `name` imports anywhere in its file (`if TYPE_CHECKING:` blocks aside),
    with the packages each import runs (importing jaxlm.a.b runs jaxlm/a/__init__.py)."""
    tree = ast.parse(path.read_text(), str(path))
    skip = {id(n) for node in ast.walk(tree) if isinstance(node, ast.If) and _is_type_checking(node)
            for n in ast.walk(node)}
    is_pkg = path.name == "__init__.py"
    found: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from . import x, from ..a import b
                here = name.split(".") if is_pkg else name.split(".")[:-1]
                here = here[:len(here) - (node.level - 1)]
                base = ".".join(here + ([base] if base else []))
            for a in node.names:  # `from jaxlm.a import b`: b may be a module
                sub = f"{base}.{a.name}"
                found.add(sub if sub in modules else base)
    out = set()
    for mod in found:
        if mod == "jaxlm":  # a name from the public facade
            out.add(mod)
        elif mod.startswith("jaxlm."):
            parts = mod.split(".")
            out.update(".".join(parts[:i]) for i in range(2, len(parts) + 1))
    return {m for m in out if m in modules and m != name}


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imports(name, path, modules) for name, path in modules.items()}


def _part(module: str) -> str:
    return ".".join(module.split(".")[:2])


def test_the_graph_sees_the_imports_it_must_see():
    """Guards the parser: known edges, lazy (function-level) ones included."""
    g = _graph()
    assert "jaxlm.run" in g["jaxlm.loading"]
    assert "jaxlm.config" in g["jaxlm.run"]
    assert "jaxlm.checkpoint" in g["jaxlm.run"]  # imported inside Run's methods
    assert "jaxlm.loading" in g["jaxlm.train.init_from"]  # inside load_pretrained
    assert len(g) > 60


def test_no_import_cycle_between_parts():
    edges: dict[str, set[str]] = defaultdict(set)
    for module, deps in _graph().items():
        for dep in deps:
            if _part(dep) != _part(module):
                edges[_part(module)].add(_part(dep))
    # depth-first search; a back edge is a cycle, reported as the chain of parts
    state: dict[str, int] = {}
    cycles = []

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(edges[node]):
            if state.get(nxt) == 1:
                cycles.append(" -> ".join(stack[stack.index(nxt):] + [node, nxt])
                              if nxt in stack else f"{node} -> {nxt}")
            elif nxt not in state:
                visit(nxt, stack + [node])
        state[node] = 2

    for node in sorted(edges):
        if node not in state:
            visit(node, [])
    assert not cycles, "import cycles between jaxlm's parts:\n" + "\n".join(cycles)


@pytest.mark.parametrize("start", INFERENCE_SIDE)
def test_inference_side_never_imports_the_training_package(start):
    g = _graph()
    roots = [m for m in g if m == start or m.startswith(start + ".")]
    assert roots, start
    seen, todo, via = set(roots), list(roots), {}
    while todo:
        m = todo.pop()
        for dep in g[m]:
            if dep not in seen:
                seen.add(dep)
                via[dep] = m
                todo.append(dep)
    bad = sorted(m for m in seen if m == "jaxlm.train" or m.startswith("jaxlm.train."))
    if bad:
        chain, m = [bad[0]], bad[0]
        while m in via:
            m = via[m]
            chain.append(m)
        pytest.fail(f"{start} imports the training package: {' <- '.join(chain)}")


def test_loading_a_run_and_generating_import_no_training_code_at_run_time():
    code = ("import sys\n"
            "import jaxlm.run, jaxlm.loading, jaxlm.generate, jaxlm.inference, jaxlm.evaluation\n"
            "bad = sorted(m for m in sys.modules if m.startswith('jaxlm.train'))\n"
            "assert not bad, bad\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=300, env={**os.environ, "JAX_PLATFORMS": "cpu"},
                         cwd=PKG.parent)
    assert out.returncode == 0, out.stderr[-2000:]
