"""Packed classification rows (`data.pack_examples`, the fine-tuning default): several examples per
row, apart by segment ids and restarted positions, give every example the logits, loss and
gradient it gets alone in a row, on far fewer tokens; each example is scored once and training
steps hold the same examples as unpacked ones."""
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxlm.config import ModelConfig
from jaxlm.data.classification import (classification_dataset, classification_eval_batches,
                                       first_fit_decreasing)
from jaxlm.data.local import DataReport
from jaxlm.data.sources import ListSource, SourceOptions, Spec
from jaxlm.data.tokenizer import SPECIAL_TOKENS, TextTokenizer
from jaxlm.models import build_model
from jaxlm.tasks.losses import classification_loss
from tokenizers import Tokenizer, models, pre_tokenizers

N = 60
WORDS = len(SPECIAL_TOKENS)  # word w{i} has id i + WORDS


def word_tokenizer(n_words: int = 400) -> TextTokenizer:
    """Words w0..w{n-1}: a token id says which word (and so which example) it is."""
    vocab = {t: i for i, t in enumerate(SPECIAL_TOKENS)}
    vocab.update({f"w{i}": len(vocab) + i for i in range(n_words)})
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return TextTokenizer(tok)


def examples(n: int = N) -> ListSource:
    """Example i repeats word w{i}, (i * 7) % 19 + 1 times; its label is i % 3."""
    texts = [" ".join([f"w{i}"] * ((i * 7) % 19 + 1)) for i in range(n)]
    spec = Spec("text", "synthetic", None, SourceOptions(), "synthetic")
    return ListSource(spec, "train", texts, [i % 3 for i in range(n)], ["a", "b", "c"],
                      DataReport("synthetic"))


def packed_examples(batch: dict) -> list[tuple[int, int, int]]:
    """(example, row, slot) of every weighted slot, checking the slot's segment: one example's
    tokens, contiguous, positions 0..n-1, its label."""
    out = []
    for r, k in zip(*np.nonzero(batch["weights"])):
        at = np.nonzero(batch["segment_ids"][r] == k + 1)[0]
        assert len(at) and (np.diff(at) == 1).all()
        assert (batch["positions"][r, at] == np.arange(len(at))).all()
        words = batch["inputs"][r, at][1:-1] - WORDS  # [CLS] words [SEP]
        assert len(set(words.tolist())) == 1
        i = int(words[0])
        assert len(words) == (i * 7) % 19 + 1 and batch["labels"][r, k] == i % 3
        out.append((i, int(r), int(k)))
    return out


def test_first_fit_decreasing_fills_rows_longest_first():
    assert first_fit_decreasing([3, 9, 4, 6, 2], 10) == [[1], [3, 2], [0, 4]]
    assert first_fit_decreasing([1, 1, 1, 1], 10, slots=3) == [[0, 1, 2], [3]]
    assert first_fit_decreasing([], 10) == []


def test_packed_evaluation_scores_every_example_once_on_fewer_tokens():
    src, tok = examples(), word_tokenizer()
    kw = dict(seq_len=32, global_batch=16)
    flat = classification_eval_batches(src, tok, **kw)
    packed = classification_eval_batches(src, tok, pack=True, row_multiple=4, **kw)
    assert len(packed) == len(flat) == 4
    seen = [e for b in packed for e in packed_examples(b)]
    assert sorted(i for i, _, _ in seen) == list(range(N))
    # batch s holds examples 16s..16s+15, as the unpacked one does
    for s, b in enumerate(packed):
        assert {i for i, _, _ in packed_examples(b)} == set(range(16 * s, min(16 * s + 16, N)))
        assert b["inputs"].shape[0] % 4 == 0 and b["labels"].shape == b["weights"].shape
    assert sum(b["inputs"].size for b in packed) < 0.7 * sum(b["inputs"].size for b in flat)
    # two hosts: their rows together are the one-host batch
    halves = [classification_eval_batches(src, tok, pack=True, row_multiple=4, process_index=h,
                                          process_count=2, **kw) for h in range(2)]
    for s, b in enumerate(packed):
        for key in b:
            assert np.array_equal(np.concatenate([halves[0][s][key], halves[1][s][key]]), b[key])


def test_packed_training_steps_hold_the_unpacked_steps_examples_and_resume_exactly():
    src, tok = examples(), word_tokenizer()
    kw = dict(seq_len=32, global_batch=12, num_steps=40, seed=5)
    flat = list(iter(classification_dataset(src, tok, **kw)))
    ds = classification_dataset(src, tok, pack=True, row_multiple=2, **kw)
    packed = list(iter(ds))
    for f, p in zip(flat, packed):
        words = f["inputs"][:, 1] - WORDS
        assert sorted(i for i, _, _ in packed_examples(p)) == sorted(words.tolist())
    shapes = {b["inputs"].shape for b in packed}
    assert len(shapes) <= 4 and all(r % 2 == 0 and r < 12 for r, _ in shapes)
    it = iter(ds)
    for _ in range(7):
        next(it)
    state = json.loads(json.dumps(it.get_state()))
    fresh = iter(ds)
    fresh.set_state(state)
    for b, expected in zip([next(fresh) for _ in range(20)], packed[7:27]):
        assert all(np.array_equal(b[k], expected[k]) for k in expected)


@pytest.mark.parametrize("family,pooling,pooler", [("bert", "first", True),
                                                   ("bert", "mean", False),
                                                   ("gpt2", "last", False)])
def test_packed_rows_give_each_example_its_own_logits_loss_and_gradient(family, pooling, pooler):
    src, tok = examples(24), word_tokenizer()
    cfg = ModelConfig(family=family, vocab_size=tok.vocab_size, num_layers=2, d_model=32,
                      num_heads=4, max_len=32, dropout=0.0)
    model = build_model(cfg, "classification", seed=1, num_labels=3, pooling=pooling,
                        pooler=pooler)
    graphdef, params = nnx.split(model)
    flat = classification_eval_batches(src, tok, seq_len=32, global_batch=24)[0]
    packed = classification_eval_batches(src, tok, seq_len=32, global_batch=24, pack=True)[0]
    assert packed["inputs"].shape[0] < 12  # 24 examples in under half the rows

    def loss_and_grads(batch):
        def f(p):
            return classification_loss(nnx.merge(graphdef, p), batch, None)
        return jax.value_and_grad(f, has_aux=True)(params)

    (loss_a, aux_a), grads_a = loss_and_grads({k: jnp.asarray(v) for k, v in flat.items()})
    (loss_b, aux_b), grads_b = loss_and_grads({k: jnp.asarray(v) for k, v in packed.items()})
    assert float(aux_a["weight"]) == float(aux_b["weight"]) == 24
    np.testing.assert_allclose(float(loss_b), float(loss_a), rtol=1e-5)
    assert float(aux_a["accuracy"]) == float(aux_b["accuracy"])
    for a, b in zip(jax.tree.leaves(grads_a), jax.tree.leaves(grads_b)):
        np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-4, atol=1e-6)
    # per example: slot (r, k) of the packed batch is the unpacked row of its example
    logits_flat = np.asarray(model(jnp.asarray(flat["inputs"]),
                                   segment_ids_BxT=jnp.asarray(flat["segment_ids"])))
    logits_packed = np.asarray(model(jnp.asarray(packed["inputs"]),
                                     segment_ids_BxT=jnp.asarray(packed["segment_ids"]),
                                     positions_BxT=jnp.asarray(packed["positions"]),
                                     examples_per_row=packed["labels"].shape[1]))
    for i, r, k in packed_examples(packed):
        np.testing.assert_allclose(logits_packed[r, k], logits_flat[i], atol=2e-6)


def test_length_buckets_or_pack_examples_false_keep_one_example_per_row(tmp_path):
    from jaxlm.config import Config
    from jaxlm.tasks import ClassificationTask

    src, tok = examples(), word_tokenizer()
    task = ClassificationTask(["a", "b", "c"])
    for overrides, packed in (({}, True), ({"pack_examples": False}, False),
                              ({"length_buckets": [8, 32]}, False)):
        cfg = Config()
        cfg.data.seq_len, cfg.train.batch_size = 32, 16
        for k, v in overrides.items():
            setattr(cfg.data, k, v)
        batch = task.eval_batches(cfg, tok, src)[0]
        assert batch["labels"].ndim == (2 if packed else 1)


def _sst_subset(tmp_path, data_dir):
    root = tmp_path / "sst"
    root.mkdir()
    for name, n in (("train.txt", 400), ("dev.txt", 100), ("test.txt", 100)):
        lines = (data_dir / "sst2" / name).read_text().splitlines()[:n]
        (root / name).write_text("\n".join(lines) + "\n")
    return root


def _tiny_run(root, **train):
    from jaxlm.config import config_from_dict

    return config_from_dict({
        "model": {"family": "bert", "num_layers": 2, "d_model": 32, "num_heads": 2,
                  "max_len": 64},
        "mesh": {"num_devices": 1},
        "data": {"train": f"labeled:{root}", "seq_len": 64,
                 "tokenizer": {"kind": "wordpiece", "vocab_size": 600}},
        "optim": {"lr": 3e-3, "warmup_steps": 0, "schedule": "constant"},
        "train": {"task": "classification", "steps": 24, "batch_size": 16, "eval_every": 12,
                  "log_every": 4, "checkpoint_every": 24, **train}})


def test_packed_rows_split_over_data_parallel_devices_and_micro_batches(tmp_path, data_dir):
    """On a 2-device data-parallel mesh with 2 micro-batches (row counts padded to multiples of
    4), the first step's loss and gradient norm equal the one-device, one-micro-batch run's."""
    from jaxlm.train.finetune import finetune

    root = _sst_subset(tmp_path, data_dir)
    firsts = []
    for name, mesh, accum in (("one", 1, 1), ("dp2", 2, 2)):
        cfg = _tiny_run(root, steps=2, log_every=1, eval_every=2, checkpoint_every=2,
                        grad_accum=accum)
        cfg.mesh.num_devices = mesh
        cfg.model.dropout = 0.0
        summary = finetune(cfg, str(tmp_path / name), show_progress=False)
        assert summary["validation"]["n"] == 100
        rows = [json.loads(line) for line in (tmp_path / name / "metrics.jsonl").open()]
        firsts.append(next(r for r in rows if r["split"] == "train" and r["step"] == 1))
    # the same examples in other rows (padded to 4) and matmul shapes: float32 rounding only
    np.testing.assert_allclose(firsts[1]["loss"], firsts[0]["loss"], rtol=5e-5)
    np.testing.assert_allclose(firsts[1]["grad_norm"], firsts[0]["grad_norm"], rtol=2e-4)


def test_packed_fine_tuning_learns_and_logs_the_tokens_it_computed(tmp_path, data_dir):
    """A packed run end to end: it learns, its validation and test reports score every example
    once, and its throughput counts the token positions its packed steps computed (fewer than
    batch x seq_len), so MFU is not inflated by the padding packing removed."""
    from jaxlm.data.sources import open_source
    from jaxlm.data.tokenizer import load_tokenizer
    from jaxlm.train.finetune import finetune

    root = _sst_subset(tmp_path, data_dir)
    cfg = _tiny_run(root)
    summary = finetune(cfg, str(tmp_path / "run"), show_progress=False)
    assert summary["validation"]["n"] == 100 and summary["test"]["n"] == 100
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").open()]
    train = [r for r in rows if r["split"] == "train"]
    assert train[-1]["loss"] < train[0]["loss"]
    # each logged throughput: the token positions of the steps since the last log, per step
    tok = TextTokenizer(load_tokenizer(tmp_path / "run" / "tokenizer.json"))
    batches = list(iter(classification_dataset(
        open_source(f"labeled:{root}"), tok, seq_len=64, global_batch=16, num_steps=24, seed=0,
        pack=True)))
    sizes = [b["inputs"].size for b in batches]
    assert max(sizes) < 16 * 64  # packed: fewer positions than batch x seq_len
    since = 1  # the first step's time is compile time, left out
    for r in train:
        if "tokens_per_s" in r:
            window = sizes[since:r["step"]]
            np.testing.assert_allclose(r["tokens_per_s"] * r["step_time_s"], np.mean(window),
                                       rtol=1e-9)
            since = r["step"]
    # prediction packs its texts too and gives them back in their order, as unpacked rows do
    from jaxlm.inference import predict_proba
    from jaxlm.run import load_run

    run = load_run(tmp_path / "run")
    texts = [line.split(" ", 1)[1] for line in (root / "test.txt").read_text().splitlines()[:40]]
    packed = predict_proba(run, texts, batch_size=16)
    run.cfg.data.pack_examples = False
    flat = predict_proba(run, texts, batch_size=16)
    np.testing.assert_allclose(packed, flat, atol=1e-5)
    run.cfg.data.pack_examples = True
    alone = np.concatenate([predict_proba(run, [t]) for t in texts[:6]])
    np.testing.assert_allclose(packed[:6], alone, atol=1e-5)  # each text's own row, in order
