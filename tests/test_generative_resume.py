"""Kill -9 a real `jaxlm finetune` process training train.task: generative while it writes a
checkpoint (and, in the slow padded variant, once more between checkpoints), rerun the same
command, and check that the final train state and data position equal an uninterrupted run's bit
for bit, and so do the final reports (generations included): packed rows (first-fit packing
planned per epoch) and padded rows (one example per row, length buckets). The processes, the kills
and the comparison are tests/test_reliability_kill.py's."""
import json
import random
import signal
import time
from pathlib import Path

import pytest
import yaml

import test_reliability_kill as kill
from test_reliability_kill import jit_cache  # noqa: F401  (the module's shared compile cache)

STEPS = 100  # fewer than the pretraining test's: each relaunch also writes the final reports


class FinetuneRun(kill.Run):
    """`jaxlm finetune --config CFG --run DIR --quiet`, relaunched as often as needed."""

    def __init__(self, cfg: Path, run_dir: Path, cache: Path):
        super().__init__(cfg, run_dir, cache)
        self.cmd[self.cmd.index("pretrain")] = "finetune"

    def kill_while_training(self, rng: random.Random) -> None:
        """SIGKILL at a random moment just after the next checkpoint (between saves)."""
        self.start()
        before = max(self.steps(), default=0)
        assert self.wait_until(lambda: max(self.steps(), default=0) > before)
        time.sleep(rng.uniform(0.0, 0.1))
        self.proc.send_signal(signal.SIGKILL)
        rc, _ = self.finish()
        assert rc == -signal.SIGKILL


def _config(tmp_path: Path, packing: bool) -> Path:
    rng = random.Random(0)
    data = tmp_path / "data"
    data.mkdir()
    for split, n in (("train", 300), ("dev", 2), ("test", 2)):
        words = ["".join(rng.choice("abcdefghij") for _ in range(rng.randint(2, 9)))
                 for _ in range(n)]
        (data / f"{split}.jsonl").write_text("".join(
            json.dumps({"input": w, "output": w[::-1]}) + "\n" for w in words))
    cfg = {"name": "gen_kill", "model": {"family": "gpt2", "num_layers": 1, "d_model": 32,
                                         "num_heads": 2, "max_len": 32, "dropout": 0.1},
           "data": {"train": f"jsonl:{data}", "seq_len": 32, "tokenizer": {"kind": "char"}},
           "optim": {"lr": 3e-3, "warmup_steps": 10, "weight_decay": 0.1},
           "mesh": {"num_devices": 1},
           "train": {"task": "generative", "steps": STEPS, "batch_size": 4, "eval_every": 0,
                     "log_every": 5, "checkpoint_every": 5, "keep_checkpoints": 3,
                     "async_checkpointing": True},
           "generative": {"packing": packing, "max_new_tokens": 4}}
    path = tmp_path / "gen_kill.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_padded_stream_resumes_from_a_saved_position(tmp_path):
    """What the padded kill test below checks end to end, at the data level (fast): the
    iterator state a checkpoint stores resumes the padded stream (length buckets) exactly."""
    from jaxlm.data.generative import encode_pairs, train_dataset
    from jaxlm.data.records import open_records
    from jaxlm.data.sources import parse_spec
    from jaxlm.data.templates import Templates
    from jaxlm.data.tokenizer import TextTokenizer, train_tokenizer

    cfg = yaml.safe_load(_config(tmp_path, False).read_text())
    source = open_records(parse_spec(cfg["data"]["train"]), "train")
    tok = TextTokenizer(train_tokenizer((source[i]["input"] for i in range(len(source))), "char"))
    pairs = encode_pairs(source, tok, Templates(), seq_len=32)
    kw = dict(seq_len=32, global_batch=4, num_steps=STEPS, seed=0, packed=False)
    whole = list(iter(train_dataset(pairs, **kw)))
    assert len({b["inputs"].shape[1] for b in whole}) > 1  # several buckets
    it = iter(train_dataset(pairs, **kw))
    for _ in range(37):
        next(it)
    resumed = iter(train_dataset(pairs, **kw))
    resumed.set_state(json.loads(json.dumps(it.get_state())))  # as a checkpoint stores it
    for step, ref in enumerate(whole[37:], 37):
        got = next(resumed)
        assert got.keys() == ref.keys()
        for k in ref:
            assert (got[k] == ref[k]).all(), (step, k)


@pytest.mark.parametrize("packing", [
    True, pytest.param(False, marks=pytest.mark.slow)],  # padded: the data-level test above
    ids=["packed", "padded"])
def test_sigkill_mid_fine_tune_then_resume_equals_uninterrupted(tmp_path, jit_cache, packing,
                                                                monkeypatch):
    monkeypatch.setattr(kill, "STEPS", STEPS)  # the step whose checkpoint _final_state reads
    rng = random.Random(0)
    sources = kill._sources()
    cfg = _config(tmp_path, packing)
    ref = FinetuneRun(cfg, tmp_path / "reference", jit_cache)
    run = FinetuneRun(cfg, tmp_path / "interrupted", jit_cache)
    ref.start()  # compiles first (filling the cache), then runs beside the interrupted one
    assert any(run.kill_mid_save() for _ in range(3)), "no kill landed inside a save"
    torn = run.n  # the launch whose kill left a torn save behind
    if not packing:  # (the slow one) a second kill, between saves, after resuming from the first
        killed_at = max(run.steps())
        run.kill_while_training(rng)
        assert max(run.steps()) > killed_at  # the relaunch resumed and made progress
    run.start()
    rc, err = run.finish()
    assert rc == 0 and "Traceback" not in err, err
    # the next launch found the torn save and set it aside
    assert "unfinished checkpoint" in (tmp_path / f"interrupted.{torn + 1}.err").read_text()
    assert ref.finish()[0] == 0
    assert not run.tmp_dirs()
    kill._assert_same_final_state(ref, run, sources)
    # the same model: the same final reports, generations included
    summaries = [json.loads((r.dir / "summary.json").read_text()) for r in (ref, run)]
    assert summaries[0]["test"] == summaries[1]["test"]
    assert summaries[1]["resumed_from"] > 0
