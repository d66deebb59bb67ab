"""Generative fine-tuning loss parity with PyTorch transformers: on tiny random GPT-2 and Llama
(GQA) checkpoints imported into jaxlm, the target-only loss (`token_loss` on the rows of
`jaxlm.data.generative.rows_of`) equals transformers' loss with the prompt labelled -100, within
1e-5, on a padded batch (one example per row) and on a packed batch (several examples per row).

transformers' eager/sdpa attention cannot keep packed examples apart, so the packed reference is
every example run alone (no padding), its per-token cross-entropy summed over the target
positions and divided by the total count: equality shows packing leaks nothing between examples.
Negative controls (prompt scored too, the weights shifted by one, attention across packed
examples) each move the loss by more than 1e-3, so the comparisons would catch those mistakes.

The checkpoints use initializer_range 0.2 (transformers' default 0.02 gives near-uniform logits, so
every token costs about log V and a wrong mask changes the mean by little).
"""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from flax import nnx

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from hf_utils import save_tiny, tiny_tokenizer  # noqa: E402

from jaxlm.data.generative import encode_pairs, pack_epoch, rows_of  # noqa: E402
from jaxlm.data.records import open_records  # noqa: E402
from jaxlm.data.sources import parse_spec  # noqa: E402
from jaxlm.data.templates import Templates  # noqa: E402
from jaxlm.loading import load_model  # noqa: E402
from jaxlm.tasks.losses import token_loss  # noqa: E402

TOL = 1e-5  # max abs difference of the mean loss (float32)
CONTROL = 1e-3  # how far a wrong mask must move it
SEQ_LEN = 64  # = the tiny checkpoints' max_position_embeddings
RECORDS = [  # (input, output): prompts and targets of different lengths
    ("Speak, speak.", "All: Resolved."),
    ("First Citizen: Before we proceed any further, hear me speak.", "Speak."),
    ("All", "You are all resolved rather to die than to famish?"),
    ("Caius Marcius is chief enemy to the people.", "Resolved. resolved."),
    ("hear me", "First, you know"),
]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """(folder with tok/tokenizer.json, its vocabulary size, the records as a RecordSource)."""
    root = tmp_path_factory.mktemp("generative")
    tok = tiny_tokenizer(root / "tok")
    (root / "train.jsonl").write_text("".join(
        json.dumps({"input": p, "output": t}) + "\n" for p, t in RECORDS))
    return root, tok.vocab_size, open_records(parse_spec(f"jsonl:{root / 'train.jsonl'}"),
                                              "train")


@pytest.fixture(scope="module", params=["gpt2", "llama"])
def setup(request, data):
    """(kind, transformers model, jaxlm model, Pairs encoded with the imported tokenizer)."""
    root, vocab_size, source = data
    kind = request.param
    d = root / kind
    shutil.copytree(root / "tok", d)
    hf = save_tiny(kind, d, vocab_size=vocab_size + 3, initializer_range=0.2)
    run = load_model(d)
    if kind == "llama":
        assert run.model_cfg.num_kv_heads < run.model_cfg.num_heads  # grouped-query attention
    pairs = encode_pairs(source, run.tokenizer, Templates(), seq_len=SEQ_LEN)
    assert len(pairs) == len(RECORDS)
    assert len(set(pairs.prompt_lens)) == len(pairs)  # prompts of different lengths
    assert len({pairs.target_len(i) for i in range(len(pairs))}) > 2  # targets too
    end = run.tokenizer.sep_id
    assert all(int(x[-1]) == end for x in pairs.ids)
    return kind, hf, run.model, pairs


@nnx.jit
def _token_loss(model, batch):
    return token_loss(model, batch, None)


def jax_mean(model, batch) -> tuple[float, float]:
    """(jaxlm's mean loss, the scored-token count) of a batch."""
    loss_sum, aux = _token_loss(model, batch)
    return float(loss_sum) / float(aux["weight"]), float(aux["weight"])


def n_targets(pairs) -> int:
    return sum(pairs.target_len(i) for i in range(len(pairs)))


def padded(pairs) -> dict:
    """One example per row (plus a padding row), longer than the longest example."""
    length = max(len(x) - 1 for x in pairs.ids) + 3
    return rows_of(pairs, [[i] for i in range(len(pairs))] + [[-1]], length)


def packed(pairs) -> tuple[dict, list[list[int]]]:
    """The examples packed first-fit into SEQ_LEN rows, as in training."""
    lengths = np.array([len(x) - 1 for x in pairs.ids])
    groups = pack_epoch(lengths, np.arange(len(pairs)), SEQ_LEN)
    assert len(groups) < len(pairs) and max(map(len, groups)) > 1  # rows hold several examples
    return rows_of(pairs, groups, SEQ_LEN), groups


def hf_padded_loss(hf, pairs) -> float:
    """transformers' loss on the right-padded full ids, prompt and padding labelled -100."""
    T = max(len(x) for x in pairs.ids)
    ids = np.zeros((len(pairs), T), np.int64)
    mask, labels = np.zeros_like(ids), np.full_like(ids, -100)
    for i, x in enumerate(pairs.ids):
        p = pairs.prompt_lens[i]
        ids[i, :len(x)], mask[i, :len(x)], labels[i, p:len(x)] = x, 1, x[p:]
    with torch.no_grad():
        out = hf(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask),
                 labels=torch.tensor(labels))
    return float(out.loss)


def hf_alone_loss(hf, pairs, score_prompt: bool = False) -> float:
    """Per-token cross-entropy of every example run alone through transformers, summed over its
    target tokens (every next token with score_prompt) and divided by the total count."""
    total, count = 0.0, 0
    for i, x in enumerate(pairs.ids):
        with torch.no_grad():
            logits = hf(input_ids=torch.tensor(x[None].astype(np.int64))).logits[0]
        logp = torch.log_softmax(logits.double(), -1).numpy()
        ce = -logp[np.arange(len(x) - 1), x[1:]]  # ce[j]: predicting x[j + 1]
        first = 0 if score_prompt else pairs.prompt_lens[i] - 1
        total += float(ce[first:].sum())
        count += len(ce) - first
    return total / count


def test_padded_batch_loss_equals_transformers_with_prompt_ignored(setup):
    kind, hf, model, pairs = setup
    batch = padded(pairs)
    for r, x in enumerate(pairs.ids):  # the row layout: weights exactly on target + end token
        p, scored = pairs.prompt_lens[r], batch["weights"][r] > 0
        assert scored.sum() == pairs.target_len(r)
        np.testing.assert_array_equal(batch["targets"][r][scored], x[p:])
    assert batch["weights"][-1].sum() == 0
    got, weight = jax_mean(model, batch)
    assert weight == n_targets(pairs)
    want = hf_padded_loss(hf, pairs)
    print(f"{kind} padded: jaxlm {got:.7f} transformers {want:.7f} |diff| {abs(got - want):.2e}")
    assert abs(got - want) <= TOL


def test_packed_batch_loss_equals_each_example_alone_in_transformers(setup):
    kind, hf, model, pairs = setup
    batch, groups = packed(pairs)
    assert batch["segment_ids"].max() > 1
    got, weight = jax_mean(model, batch)
    assert weight == n_targets(pairs)
    want = hf_alone_loss(hf, pairs)
    got_padded = jax_mean(model, padded(pairs))[0]
    print(f"{kind} packed {groups}: jaxlm {got:.7f} transformers alone {want:.7f} "
          f"|diff| {abs(got - want):.2e}; vs jaxlm padded {abs(got - got_padded):.2e}")
    assert abs(got - want) <= TOL
    assert abs(got - got_padded) <= TOL
    assert abs(hf_padded_loss(hf, pairs) - want) <= TOL  # the two references agree too


def test_wrong_masks_move_the_loss(setup):
    """Controls: each plausible mistake changes the loss by more than 1e-3, so the parity tests
    above would catch it."""
    kind, hf, model, pairs = setup
    want = hf_padded_loss(hf, pairs)
    batch = padded(pairs)
    real = (batch["segment_ids"] > 0).astype(np.float32)
    # the prompt scored too: jaxlm then equals transformers with every label kept
    all_scored = jax_mean(model, dict(batch, weights=real))[0]
    assert abs(all_scored - hf_alone_loss(hf, pairs, score_prompt=True)) <= TOL
    # the weights one position late: the first target token unscored, one padding scored
    late = jax_mean(model, dict(batch, weights=np.roll(batch["weights"], 1, axis=1)))[0]
    # packed rows with one segment id: attention crosses examples (positions still restart)
    rows, _ = packed(pairs)
    leaky = jax_mean(model, dict(rows, segment_ids=(rows["segment_ids"] > 0).astype(np.int32)))[0]
    diffs = {"prompt scored": abs(all_scored - want), "weights shifted": abs(late - want),
             "packed without segments": abs(leaky - want)}
    print(f"{kind} controls: " + ", ".join(f"{k} {v:.2e}" for k, v in diffs.items()))
    assert min(diffs.values()) > CONTROL
