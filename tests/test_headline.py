"""benchmarks/headline.py, the harness of the headline table: its pieces fast (the peak-RSS
measurement of a child, nanoGPT's protocol on a tiny model, the alternation, medians and table on
stand-in jobs), and the whole harness in --quick mode on the main job (slow)."""
from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

import headline  # noqa: E402
import headline_jobs as hj  # noqa: E402


def test_run_measured_reports_the_childs_own_peak_rss_and_spawn_time(tmp_path: Path) -> None:
    big = ("import os; b = b'x' * (300 * 2**20); "
           f"print(os.environ['{hj.SPAWN_ENV}'])")  # bytes(...) * n writes every page
    m = hj.run_measured([sys.executable, "-c", big], tmp_path / "big.log")
    ballast = b"x" * (400 * 2**20)  # a large parent must not show in its child's peak
    small = hj.run_measured([sys.executable, "-c", "pass"], tmp_path / "small.log")
    del ballast
    assert m["rc"] == 0 and small["rc"] == 0
    assert m["peak_rss_mib"] >= 300 and small["peak_rss_mib"] < 100  # per child, not cumulative
    assert 0 < m["wall_s"] < 60
    assert float((tmp_path / "big.log").read_text().strip()) == m["spawn_time"]
    assert hj.run_measured([sys.executable, "-c", "raise SystemExit(3)"],
                           tmp_path / "fail.log")["rc"] == 3


def test_child_env_drops_fake_devices_and_isolates_caches(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("XLA_FLAGS", "--xla_force_host_platform_device_count=8 --xla_foo=1")
    env = hj.child_env(tmp_path / "c")
    assert env["XLA_FLAGS"] == "--xla_foo=1"
    assert env["XDG_CACHE_HOME"] == str(tmp_path / "c")
    assert env["JAXLM_TOKEN_CACHE"].startswith(str(tmp_path / "c"))


def test_nanogpt_reference_follows_train_py_on_a_tiny_model(tmp_path: Path,
                                                            tiny_corpus: Path) -> None:
    import torch

    import nanogpt_reference as ng

    out = tmp_path / "ng"
    args = ["--data", str(tiny_corpus), "--out_dir", str(out), "--n_layer=1", "--n_head=2",
            "--n_embd=16", "--block_size=16", "--batch_size=4", "--max_iters=6",
            "--lr_decay_iters=6", "--warmup_iters=2", "--eval_interval=3", "--eval_iters=2",
            "--log_interval=2"]
    assert ng.main(args) == 0
    r = json.loads((out / "report.json").read_text())
    text = tiny_corpus.read_text()
    cut = int(0.9 * len(text))
    assert (out / "data/train.bin").stat().st_size == 2 * cut  # uint16, first 90%
    assert (out / "data/val.bin").stat().st_size == 2 * (len(text) - cut)
    assert r["iters"] == 7  # iter 0..max_iters inclusive
    assert [e["iter"] for e in r["evals"]] == [0, 3, 6]  # including iter 0
    assert all({"train", "val"} <= set(e) for e in r["evals"])
    assert [x["iter"] for x in r["logs"]] == [0, 2, 4, 6]
    assert r["job_s"] > 0 and r["clock_from"] == "module"
    assert math.isfinite(r["full_val_loss"]) and r["full_val_loss"] < math.log(r["vocab_size"]) + 1
    ckpt = torch.load(out / "ckpt.pt", weights_only=False)
    assert {"model", "optimizer", "model_args", "iter_num", "best_val_loss", "config"} <= set(ckpt)
    assert ckpt["iter_num"] > 0
    assert torch.equal(ckpt["model"]["wte.weight"], ckpt["model"]["lm_head.weight"])  # tied
    a = ng.parse_args(["--max_iters=2000", "--lr_decay_iters=2000"])
    assert ng.get_lr(0, a) == pytest.approx(1e-3 / 101)  # train.py's (it + 1) / (warmup + 1)
    assert ng.get_lr(100, a) == pytest.approx(1e-3)
    assert ng.get_lr(2000, a) == pytest.approx(1e-4)


class _StandIn(hj.Job):
    """A job whose two sides are tiny Python processes with known quality and memory."""
    key, title, peer_title = "z", "stand-in", "stand-in peer"

    def command(self, side: str, tag: str) -> list[str]:
        mib = 200 if side == "jaxlm" else 100
        out = self.dir / f"{side}_{tag}.q"
        return [sys.executable, "-c", f"b = b'x' * ({mib} * 2**20); "
                f"open({str(out)!r}, 'w').write('{0.5 if side == 'jaxlm' else 0.25}')"]

    def read(self, side: str, tag: str, measured: dict) -> dict:
        return {"quality": float((self.dir / f"{side}_{tag}.q").read_text()),
                "job_s": measured["wall_s"]}

    def quality_cells(self, pairs: list[dict]) -> tuple[str, str]:
        return tuple(f"q {hj.spread([p[s]['quality'] for p in pairs], '.2f')}"
                     for s in hj.SIDES)


def test_pairs_alternate_and_the_table_has_every_number(tmp_path: Path) -> None:
    ctx = hj.Context(python=sys.executable, jaxlm="jaxlm", work=tmp_path)
    rec = headline.run_pairs(_StandIn(ctx), 2, lambda name: hj.child_env(None),
                             log=lambda *a, **k: None)
    assert [p["order"] for p in rec["pairs"]] == [["jaxlm", "peer"], ["peer", "jaxlm"]]
    assert rec["median"]["jaxlm"]["peak_rss_mib"] >= 200
    assert 1.2 < rec["memory_ratio"] < 2.5
    assert rec["speed_ratio"] > 0 and rec["quality_cells"] == ["q 0.50", "q 0.25"]
    report = {"quick": False, "machine": headline.machine(), "versions": {"jaxlm": "x"},
              "load_start": (1.0, 1.0, 1.0), "load_end": (1.0, 1.0, 1.0), "started": "now",
              "elapsed_s": 60.0, "pairs": 2, "warm_caches": False, "out": "o.json", "argv": [],
              "jobs": {"z": rec, "d": {"title": "train step", "peer_title": "PyTorch",
                                       "rows": hj.parse_step_table(STEP_OUTPUT)}}}
    text = headline.table(report)
    assert "QUICK" not in text and report["machine"]["cpu"] in text
    assert f"**{rec['speed_ratio']:.2f}×**" in text and "q 0.50 | q 0.25 |" in text
    assert "| 3,228 tok/s | 1,990 tok/s | **1.62×** |" in text and "MFU 54.6%" in text
    busy = headline.table({**report, "load_end": (99.0, 1.0, 1.0),
                           "env": ["OMP_WAIT_POLICY=PASSIVE"]})
    assert "machine was busy" in busy and "`OMP_WAIT_POLICY=PASSIVE`" in busy


STEP_OUTPUT = """\
precision   jaxlm tok/s  torch tok/s   ratio  jaxlm MFU  torch MFU  peak GFLOP/s
float32           3,228        1,990    1.62      58.8%      36.3%           495
bf16              5,904        5,242    1.13      54.6%      48.4%           960
(medians of 7 alternating rounds ...)
"""


def test_parse_step_table() -> None:
    rows = hj.parse_step_table(STEP_OUTPUT)
    assert set(rows) == {"float32", "bf16"}
    assert rows["bf16"]["jaxlm_tokens_per_s"] == 5904 and rows["bf16"]["ratio"] == 1.13
    assert rows["float32"]["torch_mfu"] == pytest.approx(0.363)
    assert rows["float32"]["peak_gflops"] == 495


@pytest.mark.slow
def test_quick_headline_of_the_main_job(tmp_path: Path) -> None:
    """The whole harness, --quick, job a, one pair: a table and a JSON with sane numbers."""
    out = tmp_path / "headline.json"
    m = hj.run_measured([sys.executable, str(REPO / "benchmarks/headline.py"), "--quick",
                         "--jobs", "a", "--pairs", "1", "--quick-steps", "10",
                         "--out", str(out)], tmp_path / "headline.log", hj.child_env(None))
    log = (tmp_path / "headline.log").read_text()
    assert m["rc"] == 0, log[-3000:]
    r = json.loads(out.read_text())
    assert r["quick"] and "NOT THE HEADLINE" in log
    pair = r["jobs"]["a"]["pairs"][0]
    for side in ("jaxlm", "peer"):
        assert pair[side]["job_s"] > 0 and pair[side]["peak_rss_mib"] > 50
        assert math.isfinite(pair[side]["quality"]) and 0 < pair[side]["quality"] < 5
    assert pair["peer"]["report"]["iters"] == 11
    md = out.with_suffix(".md").read_text()
    assert "| QUICK main job" in md and "val loss" in md
