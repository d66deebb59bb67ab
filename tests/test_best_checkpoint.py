"""scripts/best_checkpoint.py: early stopping picks the kept checkpoint with the lowest val loss."""
import importlib.util
import json
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_best_kept_checkpoint_by_validation_loss(tmp_path):
    spec = importlib.util.spec_from_file_location("best_checkpoint",
                                                  REPO / "scripts/best_checkpoint.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    for step in (1000, 2000, 3000):
        (tmp_path / "checkpoints" / str(step)).mkdir(parents=True)
    rows = [{"step": 500, "split": "val", "loss": 4.9},  # best, but its checkpoint is gone
            {"step": 1000, "split": "val", "loss": 5.06}, {"step": 1000, "split": "train", "loss": 1.0},
            {"step": 2000, "split": "val", "loss": 5.20}, {"step": 3000, "split": "val", "loss": 5.36}]
    (tmp_path / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    assert mod.best_checkpoint(tmp_path) == tmp_path / "checkpoints" / "1000"
    # a damaged best checkpoint (its manifest names a file that is gone) is passed over
    (tmp_path / "checkpoints" / "1000" / "jaxlm_manifest.json").write_text(
        json.dumps({"version": 1, "files": {"state/data": [10, 0]}}))
    assert mod.best_checkpoint(tmp_path) == tmp_path / "checkpoints" / "2000"
