"""Greedy generation on imported Hugging Face GPT-2 (learned positions) and Llama (RoPE, GQA)
checkpoints equals transformers' own `generate`, for a batch of prompts of different lengths."""
from __future__ import annotations

import shutil

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from hf_utils import TEXTS, save_tiny, tiny_tokenizer  # noqa: E402

from jaxlm.generate import Generator  # noqa: E402
from jaxlm.loading import load_model  # noqa: E402


@pytest.mark.parametrize("kind", ["gpt2", "llama"])
def test_batched_greedy_generation_equals_transformers(kind, tmp_path):
    tok = tiny_tokenizer(tmp_path / "tok")
    d = tmp_path / kind
    shutil.copytree(tmp_path / "tok", d)
    hf = save_tiny(kind, d, vocab_size=tok.vocab_size)
    prompts = [tok.encode(t) for t in TEXTS]
    assert len({len(p) for p in prompts}) > 2  # different lengths: left padding is exercised
    n = 24
    expected = []
    with torch.inference_mode():
        for p in prompts:  # one at a time, unpadded: the reference
            ids = torch.tensor([p])
            out = hf.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n,
                              min_new_tokens=n, do_sample=False, pad_token_id=0,
                              eos_token_id=None)
            expected.append(out[0, len(p):].tolist())
    model = load_model(d).model
    got = Generator(model, tok).generate_ids(prompts, max_new_tokens=n, temperature=0.0)
    assert got == expected
