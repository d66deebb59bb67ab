"""The NaN stop's advice stays runnable however often it is followed: each suggested command halves
optim.lr, and halves optim.min_lr too once it would exceed the new rate, so the config check
`optim.min_lr <= optim.lr` never refuses the command it printed."""
import shlex

from jaxlm.cli import _rerun
from jaxlm.config import load_config
from jaxlm.train.hooks import NonfiniteWatch


def _sets(argv: list[str]) -> list[str]:
    return [argv[i + 1] for i, a in enumerate(argv) if a == "--set"]


def test_every_suggested_rerun_is_accepted_after_repeated_halvings():
    argv = ["pretrain", "--config", "c.yaml", "--set", "optim.lr=0.002", "--set",
            "optim.min_lr=0.0005", "--set", "train.steps=6"]
    lowered_min = 0
    for _ in range(6):  # lr: 1e-3, 5e-4, 2.5e-4 (min_lr 2.5e-4), 1.25e-4 (min_lr 1.25e-4), ...
        cfg = load_config(None, _sets(argv))
        stop = NonfiniteWatch(0, 0).stop("at step 3", 3, "runs/x/checkpoints", cfg.optim.lr,
                                        cfg.optim.min_lr)
        assert "--set optim.lr=" in str(stop)
        argv = _rerun(argv, stop.retry)
        sets = _sets(argv)
        assert sum(s.startswith("optim.lr=") for s in sets) == 1  # replaced, not appended twice
        assert sum(s.startswith("optim.min_lr=") for s in sets) == 1
        new = load_config(None, sets)  # the printed command passes the config checks
        assert new.optim.lr == cfg.optim.lr / 2 and new.optim.min_lr <= new.optim.lr
        if new.optim.min_lr < cfg.optim.min_lr:
            lowered_min += 1
            assert "optim.min_lr=" in str(stop)
            assert new.optim.min_lr == cfg.optim.min_lr / 2
        else:
            assert "optim.min_lr" not in str(stop)  # untouched while it fits
        assert "train.steps=6" in sets and shlex.join(argv)
    assert lowered_min == 4  # after the second halving every command lowered min_lr as well


def test_min_lr_in_the_config_file_is_lowered_too(tmp_path):
    """min_lr written in the YAML file (no --set to replace): the added --set still fits."""
    (tmp_path / "c.yaml").write_text("optim:\n  lr: 1.0e-3\n  min_lr: 1.0e-3\n")
    cfg = load_config(tmp_path / "c.yaml")
    stop = NonfiniteWatch(0, 0).stop("at step 3", 3, "ckpts", cfg.optim.lr, cfg.optim.min_lr)
    argv = _rerun(["pretrain", "--config", str(tmp_path / "c.yaml")], stop.retry)
    new = load_config(tmp_path / "c.yaml", _sets(argv))
    assert (new.optim.lr, new.optim.min_lr) == (5e-4, 5e-4)
