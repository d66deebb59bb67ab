"""docs/python_api.md is executed: every ```python block, in order, in one namespace, so the
documented custom training loop (and what follows it) cannot drift from the code."""
import re
from pathlib import Path

import numpy as np

DOC = Path(__file__).resolve().parents[1] / "docs" / "python_api.md"


def python_blocks(text: str) -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", text, flags=re.S | re.M)


def test_python_api_doc_runs_and_trains(data_dir, capsys):
    blocks = python_blocks(DOC.read_text())
    assert len(blocks) >= 2
    loop = blocks[0]
    # the README's "20 lines": the loop after its imports
    body = [ln for ln in loop.splitlines() if ln.strip() and not ln.startswith(("import ", "from "))]
    assert len(body) <= 20
    ns: dict = {}
    for block in blocks:
        # the doc reads the data from ../shared/data (beside the repository): use the fixture's copy
        code = block.replace("../shared/data", str(data_dir))
        exec(compile(code, str(DOC), "exec"), ns)
    out = capsys.readouterr().out
    losses = [float(x) for x in re.findall(r"step \d+: loss ([\d.]+)", out)]
    assert len(losses) == 5
    # trained: from ~ln(vocab) (a uniform guess) to well below it, on 8 data-parallel devices
    assert ns["mesh"].shape["data"] == 8
    assert losses[0] > np.log(len(ns["vocab"])) - 0.3 and losses[-1] < 3.0
    held_out = float(re.search(r"held-out loss ([\d.]+)", out).group(1))
    assert held_out < 3.2
    generated = re.search(r"^ROMEO:(.*)", out, flags=re.M | re.S).group(1)
    assert len(ns["new_ids"]) == 60 and len(generated) >= 60
    _check_researcher_loop(ns)


def _check_researcher_loop(ns: dict) -> None:
    """The custom module / loss / attention section: trained through jaxlm.Trainer on a 2x2 mesh
    with gradient accumulation 2."""
    from jax.sharding import PartitionSpec as P

    assert dict(ns["mesh_2x2"].shape) == {"data": 1, "fsdp": 2, "tensor": 2}
    params = ns["my_state"].params
    # annotated ("embed", "vocab") the Flax way -> (fsdp, tensor) by jaxlm's rules
    assert params["out"]["kernel"].sharding.spec == P("fsdp", "tensor")
    assert len(params["out"]["kernel"].sharding.device_set) == 4
    # jaxlm's own parameters keep their logical sharding on the same mesh
    assert "tensor" in tuple(params["backbone"]["layers"][0]["mlp"]["up_proj"]["kernel"]
                             .sharding.spec)
    # the custom attention ran (traced once per layer, for each compiled function)
    assert ns["attention_calls"] and all(s[-2:] == (4, 16) for s in ns["attention_calls"])
    steps_logged = [step for step, _ in ns["logged"]]
    assert steps_logged == [20, 40, 60]
    first, last = ns["logged"][0][1], ns["logged"][-1][1]
    # the extra metric is logged (as a mean per target) with gradient accumulation 2
    for _, m in ns["logged"]:
        assert 0.0 < m["entropy"] <= np.log(64) + 1e-4 and "accuracy" in m
    assert last["loss"] < first["loss"] - 0.2 and last["entropy"] < first["entropy"]


def test_readme_python_examples_are_the_tested_ones():
    """A ```python block in README.md must be one of the blocks executed above (copy it from
    docs/python_api.md), so the README's example is tested too."""
    readme = DOC.parents[1] / "README.md"
    tested = python_blocks(DOC.read_text())
    for block in python_blocks(readme.read_text()):
        assert block in tested, ("README.md has a Python example that docs/python_api.md does not "
                                 "run; copy it from there:\n" + block[:200])
