"""`jaxlm plot`, `jaxlm info` and `jaxlm runs` on real (tiny) pretrain and finetune runs, plus
the metrics-file edge cases (resumed runs, half-written lines) on hand-written run folders."""
import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from jaxlm.cli import main
from jaxlm.errors import CheckpointError, DataError
from jaxlm.run import Run
from jaxlm.run_info import find_runs, runs_table, series


@pytest.fixture(scope="module")
def runs_root(tmp_path_factory, data_dir):
    """root/pre: a 6-step causal pretraining run; root/sst2/ft: a 4-step SST-2 classifier
    fine-tuned from it (validation every 2 steps, best checkpoint kept, test evaluated)."""
    root = tmp_path_factory.mktemp("runs")
    sst = root / "data"
    sst.mkdir()
    for name, n in (("train.txt", 200), ("dev.txt", 48), ("test.txt", 48)):
        lines = (data_dir / "sst2" / name).read_text().splitlines()[:n]
        (sst / name).write_text("\n".join(lines) + "\n")
    corpus = root / "corpus.txt"
    corpus.write_text((data_dir / "tinyshakespeare" / "input.txt").read_text()[:20_000])
    model = "--set model.num_layers=2 --set model.d_model=32 --set model.num_heads=2"
    common = "--set mesh.num_devices=1 --set train.batch_size=8 --quiet"
    pre = (f"pretrain --config {_cfg(root, 'pre')} --run {root / 'pre'} {model} {common} "
           f"--set data.train=text:{corpus} --set model.max_len=64 --set data.seq_len=32 "
           "--set train.steps=6 --set train.log_every=2 --set train.eval_every=3 "
           "--set train.eval_batches=2 --set train.checkpoint_every=3")
    assert main(pre.split()) == 0
    ft = (f"finetune --config {_cfg(root, 'ft')} --run {root / 'sst2' / 'ft'} {common} "
          f"--init-from {root / 'pre'} --set data.train=labeled:{sst} --set data.seq_len=32 "
          "--set train.task=classification --set train.steps=4 --set train.log_every=1 "
          "--set train.eval_every=2 --set train.checkpoint_every=4 --set finetune.pooling=mean")
    assert main(ft.split()) == 0
    return root


def _cfg(root: Path, name: str) -> Path:
    path = root / f"{name}.yaml"
    path.write_text(yaml.safe_dump({"name": name}))
    return path


def test_info_describes_a_finetune_run(runs_root, capsys):
    ft = runs_root / "sst2" / "ft"
    info = Run(ft).describe()
    assert info["kind"] == "finetune" and info["task"] == "classification"
    assert info["status"] == "finished" and info["steps_done"] == 4 == info["steps_total"]
    assert info["checkpoints"] == [4]
    assert info["head"]["class_names"] == ["0", "1"]
    assert info["init_from"] == str(runs_root / "pre")
    summary = json.loads((ft / "summary.json").read_text())
    assert info["params"] == summary["params"] > 0
    # the kept best checkpoint is the better of the two validations (steps 2 and 4)
    vals = dict(zip(*series(Run(ft).metric_records(), "val", "accuracy")))
    assert set(vals) == {2, 4}
    assert info["best"]["kept"] and info["best"]["metric"] == "accuracy"
    assert info["best"]["value"] == max(vals.values())
    assert info["best"]["step"] == max(vals, key=lambda s: (vals[s], -s))
    assert info["final"]["test"]["n"] == 48
    assert 0.0 <= info["final"]["test"]["accuracy"] <= 1.0
    for name in ("config.yaml", "model.json", "tokenizer.json", "metrics.jsonl", "summary.json",
                 "tensorboard/", "checkpoints/", "best/"):
        assert name in info["files"]

    assert main(["info", str(ft)]) == 0
    out = capsys.readouterr().out
    assert "finetune (classification), finished" in out
    assert f"best val:    accuracy {info['best']['value']:.4g} at step {info['best']['step']} " \
           "(kept in best/)" in out
    assert "classes:     0, 1 (pooling mean)" in out
    assert main(["info", str(ft), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["steps_done"] == 4


def test_info_of_a_pretrain_run_counts_params_like_the_summary(runs_root):
    pre = runs_root / "pre"
    info = Run(pre).describe()
    assert info["kind"] == "pretrain" and info["status"] == "finished"
    assert info["checkpoints"] == [3, 6]
    assert info["model"]["family"] == "gpt2" and info["model"]["d_model"] == 32
    # without summary.json the count comes from model.json by abstract evaluation: the same number
    (pre / "summary.json").rename(pre / "summary.bak")
    try:
        counted = Run(pre).describe()
    finally:
        (pre / "summary.bak").rename(pre / "summary.json")
    assert counted["params"] == info["params"] > 0
    assert counted["status"] == "partial"
    best = info["best"]
    steps, losses = series(Run(pre).metric_records(), "val", "loss")
    assert steps == [3, 6] and best["value"] == min(losses) and not best["kept"]


def test_runs_lists_nested_runs_only(runs_root, capsys):
    assert find_runs(runs_root) == [runs_root / "pre", runs_root / "sst2" / "ft"]
    rows = {r["run"]: r for r in runs_table(runs_root)}
    assert set(rows) == {"pre", "sst2/ft"}
    assert rows["pre"]["steps"] == "6/6" and rows["sst2/ft"]["steps"] == "4/4"
    assert rows["sst2/ft"]["val"].startswith("accuracy ")
    assert rows["pre"]["val"].startswith("loss ")
    assert main(["runs", str(runs_root)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[:3] == ["run", "kind", "task"]
    assert [ln.split()[0] for ln in lines[1:]] == ["pre", "sst2/ft"]


def _png_shape(path: Path) -> tuple[int, ...]:
    import matplotlib.image as mpimg

    return mpimg.imread(path).shape


def test_plot_overlays_runs_and_adds_accuracy_for_classifiers(runs_root, tmp_path, capsys):
    both = tmp_path / "both.png"
    assert main(["plot", str(runs_root / "pre"), str(runs_root / "sst2" / "ft"),
                 "--out", str(both), "--labels", "pretrain,sst2", "--title", "t"]) == 0
    assert "wrote" in capsys.readouterr().out
    lm_only = tmp_path / "lm.png"
    assert main(["plot", str(runs_root / "pre"), "--out", str(lm_only), "--smooth", "2"]) == 0
    # 2x2 panels (loss, lr, throughput, accuracy) with a classifier; 1x3 without one
    h2, w2, _ = _png_shape(both)
    h1, w1, _ = _png_shape(lm_only)
    assert w2 / h2 == pytest.approx(5.2 * 2 / (3.6 * 2), rel=0.02)
    assert w1 / h1 == pytest.approx(5.2 * 3 / 3.6, rel=0.02)
    import matplotlib.image as mpimg
    img = np.asarray(mpimg.imread(both))
    assert img[..., :3].std() > 0.05  # curves were drawn, not a blank canvas


def _fake_run(path: Path, lines: list[str], steps: int = 100) -> Path:
    path.mkdir(parents=True)
    (path / "config.yaml").write_text(yaml.safe_dump({"name": path.name, "train": {
        "objective": "causal", "steps": steps}}))
    (path / "metrics.jsonl").write_text("\n".join(lines))
    return path


def test_resumed_and_half_written_metrics(tmp_path):
    rec = lambda step, split, **kw: json.dumps({"step": step, "split": split, **kw})  # noqa
    run = _fake_run(tmp_path / "r", [
        rec(10, "train", loss=3.0, lr=1e-3), rec(20, "train", loss=2.5, lr=1e-3),
        rec(20, "val", loss=2.6),
        rec(20, "train", loss=2.4, lr=1e-3),  # the resumed run repeats step 20: the last one wins
        rec(30, "train", loss=float("nan"), lr=1e-3),  # not finite: not plotted
        '{"step": 40, "split": "tra'])  # a run still writing
    records = Run(run).metric_records()
    assert [(r["step"], r["split"]) for r in records] == [(10, "train"), (20, "train"),
                                                           (20, "val"), (30, "train")]
    assert series(records, "train", "loss") == ([10, 20], [3.0, 2.4])
    info = Run(run).describe()
    assert info["status"] == "partial" and info["steps_done"] == 30
    assert info["best"] == {"metric": "loss", "value": 2.6, "step": 20, "kept": False}
    assert runs_table(tmp_path)[0]["steps"] == "30/100"


def test_bad_input_is_a_clear_error(tmp_path, capsys):
    with pytest.raises(CheckpointError, match="not a jaxlm run directory"):
        Run(tmp_path).describe()
    assert main(["info", str(tmp_path)]) == 2
    assert "is not a jaxlm run directory" in capsys.readouterr().err
    empty = _fake_run(tmp_path / "empty", [])
    with pytest.raises(DataError, match="has no metrics yet"):
        from jaxlm.plotting import plot_runs
        plot_runs([empty], tmp_path / "x.png")
    run = _fake_run(tmp_path / "one", [json.dumps({"step": 1, "split": "train", "loss": 1.0})])
    assert main(["plot", str(run), "--out", str(tmp_path / "y.png"), "--labels", "a,b"]) == 2
    assert "2 labels for 1 runs" in capsys.readouterr().err
    assert main(["runs", str(tmp_path / "missing")]) == 2


def test_in_process_run_raises_on_failure(runs_root, capsys):
    from jaxlm.cli import run

    run(f"info {runs_root / 'pre'}")
    assert "pretrain (causal), finished" in capsys.readouterr().out
    run(f"info --run {runs_root / 'pre'}")  # the flag every other command uses
    assert "pretrain (causal), finished" in capsys.readouterr().out
    two = ["info", str(runs_root / "pre"), "--run", str(runs_root / "sst2" / "ft")]
    for args in (["info"], two):  # no run directory, or two that differ
        with pytest.raises(RuntimeError, match="exit code 2"):
            run(args)
    assert "--run" in capsys.readouterr().err
    with pytest.raises(RuntimeError, match="exit code 2"):
        run(["info", str(runs_root / "missing")])
    with pytest.raises(RuntimeError, match="exit code 2"):
        run("plot")  # a usage error (argparse exits) is a failure too, not a dead kernel


def test_info_reads_a_run_given_by_a_relative_path(runs_root, capsys, monkeypatch):
    """`jaxlm info sst2/ft` from the runs folder: the model, best and final files are found
    (they were looked for under the path twice)."""
    monkeypatch.chdir(runs_root)
    assert main(["info", "sst2/ft", "--json"]) == 0
    rel = json.loads(capsys.readouterr().out)
    full = Run(runs_root / "sst2" / "ft").describe()
    assert rel["model"] == full["model"] and rel["model"]["d_model"] == 32
    assert rel["best"] == full["best"] and rel["best"]["kept"]
    assert rel["head"]["class_names"] == ["0", "1"]
