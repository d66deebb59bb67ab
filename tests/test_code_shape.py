"""The code keeps the shape the architecture asks for: short functions, short modules, a loop body
and a train step a reader can hold in mind (ARCHITECTURE.md; nanodo's train step as the model)."""
import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "jaxlm"


def _functions(path: Path):
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            yield node, node.end_lineno - node.lineno + 1


def _length(path: Path, name: str) -> int:
    return next(n for node, n in _functions(path) if node.name == name)


def test_no_function_is_longer_than_70_lines():
    long = [f"{p.relative_to(PACKAGE.parent)}:{node.lineno} {node.name} ({n} lines)"
            for p in sorted(PACKAGE.rglob("*.py")) for node, n in _functions(p) if n > 70]
    assert not long, "functions over 70 lines: " + ", ".join(long)


def test_no_module_is_longer_than_500_lines():
    long = [f"{p.relative_to(PACKAGE.parent)} ({n} lines)" for p in sorted(PACKAGE.rglob("*.py"))
            if (n := len(p.read_text().splitlines())) > 500]
    assert not long, "modules over 500 lines: " + ", ".join(long)


@pytest.mark.parametrize("module, function, limit", [
    ("train/trainer.py", "fit", 30),  # the loop
    ("train/steps.py", "train_step", 35),
])
def test_the_loop_and_the_train_step_are_short(module, function, limit):
    assert _length(PACKAGE / module, function) <= limit


def test_one_definition_per_concept():
    """Load a run, list its checkpoints, "is this a run directory", evaluate, perplexity: each
    defined once in the package."""
    names = {"load_run": 0, "checkpoint_steps": 0, "is_run_dir": 0, "evaluate_run": 0,
             "perplexity": 0, "evaluate_batches": 0, "evaluate_classifier": 0}
    for p in PACKAGE.rglob("*.py"):
        for node, _ in _functions(p):
            if node.name in names:
                names[node.name] += 1
    assert names == {"load_run": 1, "checkpoint_steps": 1, "is_run_dir": 1, "evaluate_run": 1,
                     "perplexity": 1, "evaluate_batches": 0, "evaluate_classifier": 0}
