"""Experiment trackers: a short real pretraining logs to W&B (offline) and MLflow (a local store),
and what each logged, read back with its own reader, equals metrics.jsonl and summary.json; a
resumed run logs into the same tracker runs without a step twice; bad setups fail at start-up
with a one-paragraph error (exit 2) and a tracker failing mid-run only warns."""
from __future__ import annotations

import json
import struct
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from cli_utils import run_cli  # noqa: E402

pytest.importorskip("wandb")
pytest.importorskip("mlflow")

REPO = Path(__file__).resolve().parents[1]
ALL = "logging.trackers=[tensorboard,jsonl,wandb,mlflow]"


@pytest.fixture
def offline(tmp_path, monkeypatch):
    """W&B offline and quiet, its global folders in tmp; no MLflow server from the environment."""
    for key, value in {"WANDB_MODE": "offline", "WANDB_SILENT": "true",
                       "WANDB_DIR": tmp_path / "wandb_home", "WANDB_CACHE_DIR": tmp_path / "wc",
                       "WANDB_CONFIG_DIR": tmp_path / "wcfg", "WANDB_DATA_DIR": tmp_path / "wd",
                       "MLFLOW_ALLOW_FILE_STORE": "true"}.items():
        monkeypatch.setenv(key, str(value))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("WANDB_API_KEY", raising=False)


def overrides(corpus: Path, *extra: str) -> list[str]:
    """A six-step run of the main job's config on a small corpus."""
    return [f"data.train=text:{corpus}", "train.steps=6", "train.eval_every=3", "train.log_every=2",
            "train.checkpoint_every=3", "train.eval_batches=2", "mesh.num_devices=1", *extra]


def pretrain_args(corpus: Path, run: Path, *extra: str) -> list[str]:
    args = ["pretrain", "--config", str(REPO / "configs/shakespeare_char.yaml"), "--run", str(run),
            "--quiet"]
    for s in overrides(corpus, *extra):
        args += ["--set", s]
    return args


def jsonl(run: Path) -> dict[tuple[str, int], dict]:
    """metrics.jsonl as {(split, step): record} (a step logged twice: its first record)."""
    out: dict = {}
    for line in (run / "metrics.jsonl").read_text().splitlines():
        r = json.loads(line)
        out.setdefault((r.pop("split"), r.pop("step")), r)
    return out


# --- W&B: the offline transaction log, read with wandb's own protobuf records -------------------
def wandb_records(path: Path):
    """The records of a `.wandb` file: a LevelDB-style log (7-byte header, 32 KiB blocks of
    chunks with a 7-byte header each: crc32, length, type FULL/FIRST/MIDDLE/LAST) of
    `wandb_internal_pb2.Record` messages."""
    from wandb.proto import wandb_internal_pb2 as pb
    data = path.read_bytes()
    assert data[:4] == b":W&B", "not a W&B transaction log"
    pos, block, buf = 7, 32768, b""
    while pos + 7 <= len(data):
        left = block - pos % block
        if left < 7:
            pos += left
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        if kind == 0:  # zero padding at a block's end
            pos += left
            continue
        chunk, pos = data[pos + 7:pos + 7 + length], pos + 7 + length
        buf = chunk if kind in (1, 2) else buf + chunk
        if kind in (1, 4):
            record = pb.Record()
            record.ParseFromString(buf)
            yield record


def _item_key(item) -> str:
    return item.key or ".".join(item.nested_key)


def read_wandb(files: list[Path]) -> dict:
    """History per step, config, summary, run ids and names of the W&B run files `files`."""
    out: dict = {"history": {}, "config": {}, "summary": {}, "ids": set(), "names": set()}
    for f in files:
        for r in wandb_records(f):
            kind = r.WhichOneof("record_type")
            if kind == "run":
                out["ids"].add(r.run.run_id)
                out["names"].add(r.run.display_name)
                for item in r.run.config.update:
                    out["config"][_item_key(item)] = json.loads(item.value_json)
            elif kind == "config":
                for item in r.config.update:
                    out["config"][_item_key(item)] = json.loads(item.value_json)
            elif kind == "history":
                row = {_item_key(i): json.loads(i.value_json) for i in r.history.item}
                out["history"].setdefault(row["_step"], []).append(row)
            elif kind == "summary":
                for item in r.summary.update:
                    out["summary"][_item_key(item)] = json.loads(item.value_json)
    return out


def wandb_files(run: Path) -> list[Path]:
    return sorted((run / "trackers" / "wandb").glob("offline-run-*/run-*.wandb"))


def mlflow_client(run: Path):
    from mlflow import MlflowClient
    state = json.loads((run / "trackers" / "state.json").read_text())
    return MlflowClient(state["mlflow"]["uri"]), state["mlflow"]["run_id"]


def history(client, run_id: str, key: str) -> list[tuple[int, float]]:
    return sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))


def test_a_short_run_logs_to_wandb_offline_and_mlflow(offline, tiny_corpus, tmp_path):
    run = tmp_path / "run"
    code, err = run_cli(pretrain_args(tiny_corpus, run, ALL))
    assert code == 0, err
    logged, summary = jsonl(run), json.loads((run / "summary.json").read_text())
    train_steps = sorted(s for split, s in logged if split == "train")
    assert train_steps == [2, 4, 6] and sorted(s for sp, s in logged if sp == "val") == [3, 6]
    assert list((run / "tensorboard").glob("events.out.tfevents.*"))

    # MLflow: metrics per step equal metrics.jsonl; the config as params; summary.json
    client, run_id = mlflow_client(run)
    info = client.get_run(run_id)
    assert info.info.status == "FINISHED" and info.info.run_name == "run"
    for split, key in [("train", "loss"), ("train", "grad_norm"), ("train", "tokens_per_s"),
                       ("val", "loss"), ("val", "accuracy")]:
        # (a log inside the first call, which holds the compile, has no throughput)
        want = sorted((step, r[key]) for (sp, step), r in logged.items()
                      if sp == split and key in r)
        assert want and history(client, run_id, f"{split}/{key}") == want, (split, key)
    params = info.data.params
    assert params["train.steps"] == "6" and params["model.d_model"] == "128"
    assert params["data.train"] == f"text:{tiny_corpus}" and params["optim.name"] == "adamw"
    import mlflow.artifacts
    assert mlflow.artifacts.load_dict(info.info.artifact_uri + "/summary.json") == summary
    assert info.data.metrics["summary/val/loss"] == summary["val"]["loss"]

    # W&B (offline): the same metrics, config and summary in its transaction log
    (wb_file,) = wandb_files(run)
    wb = read_wandb([wb_file])
    assert wb["names"] == {"run"} and len(wb["ids"]) == 1
    state = json.loads((run / "trackers" / "state.json").read_text())
    assert wb["ids"] == {state["wandb"]["id"]}
    for (split, step), record in logged.items():
        rows = wb["history"][step]
        for key, value in record.items():
            assert any(row.get(f"{split}/{key}") == value for row in rows), (split, step, key)
    assert wb["config"]["train.steps"] == 6 and wb["config"]["model.family"] == "gpt2"
    assert wb["summary"]["summary/step"] == 6
    assert wb["summary"]["summary/val/loss"] == summary["val"]["loss"]
    assert wb["summary"]["summary/tokens_per_s"] == summary["tokens_per_s"]


def test_a_resumed_run_logs_into_the_same_tracker_runs_without_a_step_twice(
        offline, tiny_corpus, tmp_path):
    from jaxlm import pretrain
    from jaxlm.config import load_config
    from jaxlm.train.trainer import stop_at

    run = tmp_path / "run"
    cfg = load_config(REPO / "configs/shakespeare_char.yaml", overrides(tiny_corpus, ALL))
    # cut short after step 5: the checkpoint is step 3, metrics are logged through step 4
    pretrain(cfg, str(run), show_progress=False, hooks=[stop_at(5)])
    first = json.loads((run / "trackers" / "state.json").read_text())
    summary = pretrain(cfg, str(run), show_progress=False)
    assert summary["resumed_from"] == 3 and summary["step"] == 6
    assert json.loads((run / "trackers" / "state.json").read_text()) == first

    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if r["split"] == "train"] == [2, 4, 4, 6]  # jsonl keeps both
    logged = jsonl(run)
    client, run_id = mlflow_client(run)
    assert run_id == first["mlflow"]["run_id"]
    assert len(client.search_runs([client.get_run(run_id).info.experiment_id])) == 1
    want = [(s, logged[("train", s)]["loss"]) for s in (2, 4, 6)]
    assert history(client, run_id, "train/loss") == want  # step 4 once: the first value
    assert [s for s, _ in history(client, run_id, "val/loss")] == [3, 6]

    files = wandb_files(run)
    assert len(files) == 2  # W&B offline: one folder per invocation, one run id
    wb = read_wandb(files)
    assert wb["ids"] == {first["wandb"]["id"]}
    assert sorted(s for s, rows in wb["history"].items()
                  if any("train/loss" in r for r in rows)) == [2, 4, 6]
    assert sum("train/loss" in r for r in wb["history"][4]) == 1


def _refused(args: list[str], *words: str, run: Path) -> str:
    t0 = time.perf_counter()
    code, err = run_cli(args)
    assert code == 2, err
    assert time.perf_counter() - t0 < 60
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    for w in words:
        assert w in err, (w, err)
    assert not (run / "checkpoints").exists() and not (run / "metrics.jsonl").exists()
    return err


def test_an_unknown_tracker_is_refused_with_the_closest_name(offline, tiny_corpus, tmp_path):
    run = tmp_path / "run"
    _refused(pretrain_args(tiny_corpus, run, "logging.trackers=[tensorboard,wandbb]"),
             "logging.trackers", "'wandbb'", "Did you mean 'wandb'", run=run)
    _refused(pretrain_args(tiny_corpus, run, "logging.wandb.mode=offlin"),
             "logging.wandb.mode", "Did you mean 'offline'", run=run)


@pytest.mark.parametrize("module", ["wandb", "mlflow"])
def test_a_missing_package_is_named_with_the_install_command(module, offline, tiny_corpus,
                                                             tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, module, None)  # `import module` now raises ImportError
    run = tmp_path / "run"
    _refused(pretrain_args(tiny_corpus, run, ALL), f"'{module}'", "pip install 'jaxlm[trackers]'",
             run=run)


def test_an_unreachable_mlflow_server_fails_fast_before_training(offline, tiny_corpus, tmp_path):
    run = tmp_path / "run"
    _refused(pretrain_args(tiny_corpus, run, "logging.trackers=[mlflow]",
                           "logging.mlflow.tracking_uri=http://127.0.0.1:9"),
             "http://127.0.0.1:9", "does not answer", "logging.mlflow.tracking_uri", run=run)


def test_wandb_online_without_a_login_says_how_to_go_offline(offline, tiny_corpus, tmp_path,
                                                             monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))  # no ~/.netrc with a key
    monkeypatch.setenv("NETRC", str(tmp_path / "home" / ".netrc"))
    run = tmp_path / "run"
    _refused(pretrain_args(tiny_corpus, run, "logging.trackers=[wandb]",
                           "logging.wandb.mode=online"),
             "wandb login", "WANDB_API_KEY", "logging.wandb.mode=offline", run=run)


def test_a_tracker_failing_mid_run_warns_once_and_training_goes_on(offline, tiny_corpus,
                                                                   tmp_path, monkeypatch):
    from jaxlm.train import trackers

    calls = {"n": 0}
    real = trackers.MlflowTracker.log_metrics

    def flaky(self, step, metrics):
        calls["n"] += 1
        if calls["n"] >= 2:
            raise ConnectionError("network is unreachable")
        real(self, step, metrics)

    monkeypatch.setattr(trackers.MlflowTracker, "log_metrics", flaky)
    run = tmp_path / "run"
    code, err = run_cli(pretrain_args(tiny_corpus, run, "logging.trackers=[mlflow]"))
    assert code == 0, err
    assert err.count("the mlflow tracker failed (ConnectionError") == 1, err
    assert calls["n"] == 2  # switched off after the failure
    assert [s for sp, s in jsonl(run) if sp == "train"] == [2, 4, 6]  # always written
    assert not (run / "tensorboard").exists()  # not in logging.trackers: off
    assert json.loads((run / "summary.json").read_text())["step"] == 6
    client, run_id = mlflow_client(run)
    assert [s for s, _ in history(client, run_id, "train/loss")] == [2]


def test_tensorboard_does_not_import_torch():
    """tensorboardX imports PyTorch when it is installed (slow, hundreds of MB); jaxlm's
    TensorBoard logging must not pull it in, and torch must still import normally after."""
    import subprocess
    import sys
    code = ("import sys, tempfile, pathlib\n"
            "from jaxlm.config import load_config\n"
            "from jaxlm.train.trackers import TensorBoardTracker, check_trackers\n"
            "check_trackers(load_config('configs/shakespeare_char.yaml').logging)\n"
            "t = TensorBoardTracker(pathlib.Path(tempfile.mkdtemp()))\n"
            "t.log_metrics(1, {'train/loss': 1.0}); t.close()\n"
            "assert 'torch' not in sys.modules, 'torch was imported'\n"
            "import torch\n"
            "print('ok', torch.__version__)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=Path(__file__).resolve().parents[1])
    assert out.returncode == 0 and out.stdout.startswith("ok"), out.stderr
