"""Helpers for the Hugging Face interop tests: tiny random transformers checkpoints, padded
batches, and jaxlm/transformers forward passes on them. torch and transformers are test-only
references; every test module importorskips them."""
from __future__ import annotations

from pathlib import Path

import numpy as np

SAMPLE = ("First Citizen: Before we proceed any further, hear me speak. All: Speak, speak. "
          "First Citizen: You are all resolved rather to die than to famish? All: Resolved. "
          "resolved. First Citizen: First, you know Caius Marcius is chief enemy to the people.")
TEXTS = ["You are all resolved rather to die than to famish?", "Speak, speak.",
         "First Citizen: Before we proceed any further, hear me speak.", "All"]
TOL = 1e-4  # max abs difference allowed in float32


def tiny_tokenizer(directory: Path):
    """A 300-token byte-level BPE trained on a few lines, saved as directory/tokenizer.json."""
    from jaxlm.data.tokenizer import TextTokenizer, train_tokenizer

    tok = train_tokenizer([SAMPLE] * 4, "bpe", vocab_size=300)
    directory.mkdir(parents=True, exist_ok=True)
    tok.save(str(directory / "tokenizer.json"))
    return TextTokenizer(tok)


def save_tiny(kind: str, directory: Path, *, vocab_size: int, seed: int = 0, **overrides):
    """A randomly initialised transformers model of `kind` saved with save_pretrained."""
    import torch
    import transformers as tf

    torch.manual_seed(seed)
    if kind.startswith("bert"):
        cfg = tf.BertConfig(vocab_size=vocab_size, hidden_size=32, num_hidden_layers=2,
                            num_attention_heads=4, intermediate_size=64,
                            max_position_embeddings=64, **overrides)
        cls = {"bert": tf.BertModel, "bert_mlm": tf.BertForMaskedLM,
               "bert_cls": tf.BertForSequenceClassification}[kind]
    elif kind == "gpt2":
        cfg = tf.GPT2Config(vocab_size=vocab_size, n_embd=32, n_layer=2, n_head=4, n_positions=64,
                            bos_token_id=None, eos_token_id=None, **overrides)
        cls = tf.GPT2LMHeadModel
    elif kind == "llama":
        overrides.setdefault("rope_parameters", {"rope_type": "default", "rope_theta": 5000.0})
        cfg = tf.LlamaConfig(vocab_size=vocab_size, hidden_size=32, intermediate_size=48,
                             num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                             max_position_embeddings=64, rms_norm_eps=1e-5,
                             bos_token_id=None, eos_token_id=None, **overrides)
        cls = tf.LlamaForCausalLM
    else:
        raise ValueError(kind)
    model = cls(cfg).eval()
    if kind.startswith("bert"):  # HF inits LayerNorm to (1, 0) and biases to 0: perturb them so
        with torch.no_grad():   # that a wrong mapping of any of them shows in the outputs
            for name, p in model.named_parameters():
                if "LayerNorm" in name or name.endswith("bias"):
                    p.add_(0.1 * torch.randn_like(p))
    elif kind == "llama":
        with torch.no_grad():
            for name, p in model.named_parameters():
                if "norm" in name:
                    p.add_(0.1 * torch.randn_like(p))
    model.save_pretrained(directory)
    return model


def padded_batch(tok, texts=TEXTS, add_special_tokens: bool = False):
    """(ids [B, T], mask [B, T]) right-padded with 0; mask 1 on real tokens."""
    ids = [e.ids for e in tok.tokenizer.encode_batch(list(texts),
                                                     add_special_tokens=add_special_tokens)]
    T = max(map(len, ids))
    inp = np.zeros((len(ids), T), np.int32)
    mask = np.zeros((len(ids), T), np.int32)
    for i, x in enumerate(ids):
        inp[i, :len(x)] = x
        mask[i, :len(x)] = 1
    assert mask.sum(1).min() < T, "the batch must contain padding"
    return inp, mask


def torch_forward(model, ids, mask, token_types=None):
    """(last hidden state, logits or None) of a transformers model, as numpy."""
    import torch

    kw = {"input_ids": torch.tensor(ids, dtype=torch.long),
          "attention_mask": torch.tensor(mask, dtype=torch.long)}
    if token_types is not None:
        kw["token_type_ids"] = torch.tensor(token_types, dtype=torch.long)
    with torch.no_grad():
        hidden = model.base_model(**kw).last_hidden_state.numpy()
        logits = model(**kw).logits.numpy() if model.base_model is not model else None
    return hidden, logits


def max_diff(a, b, mask=None) -> float:
    """Max abs difference, over positions where mask is 1 (all when mask is None)."""
    d = np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))
    if mask is not None:
        d = d[np.asarray(mask).astype(bool)]
    return float(d.max())
