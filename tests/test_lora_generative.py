"""LoRA on generative fine-tuning (a Llama with its own LM head, train_lm_head): `jaxlm generate`
on the run (unmerged) and on its merged export write the same text, and the PEFT adapters
(`export --adapters-only`, the LM head as modules_to_save) give the run's logits in transformers."""
from __future__ import annotations

import copy
import io
import json
import random
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxlm.config import config_from_dict
from jaxlm.interop.convert import export_run
from jaxlm.models.lora import LoRALinear, merge_lora
from jaxlm.run import load_run
from jaxlm.train.finetune import finetune

from jaxlm.cli import main

CFG = {"name": "lora_gen",
       "model": {"family": "llama", "num_layers": 2, "d_model": 32, "num_heads": 4,
                 "num_kv_heads": 2, "max_len": 32, "tie_embeddings": False},
       "data": {"seq_len": 32, "tokenizer": {"kind": "char"}},
       "mesh": {"num_devices": 1},
       "optim": {"lr": 1e-2, "warmup_steps": 2},
       "train": {"task": "generative", "steps": 8, "batch_size": 8, "eval_every": 8,
                 "eval_batches": 1, "log_every": 4, "checkpoint_every": 8},
       "generative": {"prompt_template": "Word: {word}\n", "target_template": "{kind}"},
       "finetune": {"lora": {"rank": 4, "alpha": 8.0, "targets": ["attention", "mlp"],
                             "train_lm_head": True}}}


def make_records(n: int, seed: int) -> list[dict[str, str]]:
    """Random lowercase words and whether they start with a vowel."""
    rng = random.Random(seed)
    words = ["".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(3, 7)))
             for _ in range(n)]
    return [{"word": w, "kind": "vowel" if w[0] in "aeiou" else "consonant"} for w in words]


def write_jsonl(path: Path, records: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in records))


def run_cli(argv: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        code = main(argv)
    return code, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("lora_gen")
    for split, n, seed in (("train", 80, 0), ("dev", 8, 1), ("test", 8, 2)):
        write_jsonl(root / "data" / f"{split}.jsonl", make_records(n, seed))
    cfg = copy.deepcopy(CFG)
    cfg["data"]["train"] = f"jsonl:{root / 'data'}"
    summary = finetune(config_from_dict(cfg), str(root / "run"), show_progress=False)
    assert summary["trainable_params"] < summary["params"]
    return root / "run"


def test_generate_on_the_run_equals_generate_on_its_merged_export(run, tmp_path):
    out = tmp_path / "merged"
    assert run_cli(["export", "--run", str(run), "--out", str(out)])[0] == 0
    texts = []
    for source in (run, out):
        code, stdout, err = run_cli(["generate", "--run", str(source), "--prompt", "Word: abc\n",
                                     "--max-new-tokens", "8", "--temperature", "0",
                                     "--no-stream"])
        assert code == 0, err
        texts.append(stdout)
    assert texts[0] == texts[1] and texts[0].strip()


@pytest.fixture(scope="module")
def gpt2_run(tmp_path_factory) -> Path:
    """GPT-2 with q and v adapted but not k (c_attn fuses all three) and the MLP's Conv1D layers;
    the LM head is tied to the frozen embeddings."""
    root = tmp_path_factory.mktemp("lora_gen_gpt2")
    write_jsonl(root / "data" / "train.jsonl", make_records(80, 0))
    write_jsonl(root / "data" / "dev.jsonl", make_records(8, 1))
    cfg = copy.deepcopy(CFG)
    cfg["model"] = {"family": "gpt2", "num_layers": 2, "d_model": 32, "num_heads": 4,
                    "max_len": 32}
    cfg["data"]["train"] = f"jsonl:{root / 'data'}"
    cfg["finetune"]["lora"] = {"rank": 4, "alpha": 8.0, "targets": [
        "backbone.layers.*.attn.q_proj", "backbone.layers.*.attn.v_proj", "mlp"]}
    finetune(config_from_dict(cfg), str(root / "run"), show_progress=False)
    return root / "run"


def _peft_logits_match_the_run(run: Path, tmp_path: Path) -> dict:
    """PEFT's adapters (jaxlm export --adapters-only) on the Hugging Face base give the run's
    logits; returns the adapter config."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    loaded = load_run(run)
    tokens = np.array([[5, 9, 11, 3, 7, 2], [4, 4, 8, 1, 6, 10]], np.int32)
    want = np.asarray(loaded.model(jnp.asarray(tokens)))
    # the base as Hugging Face: the run's frozen weights (B = 0 makes the adapters vanish), with
    # an untrained LM head where one was trained, which PEFT replaces (modules_to_save)
    base_run = load_run(run)
    for _, node in nnx.iter_graph(base_run.model):
        if isinstance(node, LoRALinear):
            node.lora.lora_b.set_value(jnp.zeros_like(node.lora.lora_b[...]))
    if getattr(base_run.model.lm_head, "proj", None) is not None:  # not tied to the embeddings
        base_run.model.lm_head.proj.kernel.set_value(
            jnp.zeros_like(base_run.model.lm_head.proj.kernel[...]))
    export_run(type(base_run)(**{**base_run.__dict__, "model": merge_lora(base_run.model)}),
               tmp_path / "base")
    assert run_cli(["export", "--run", str(run), "--out", str(tmp_path / "adapters"),
                    "--adapters-only"])[0] == 0
    base = AutoModelForCausalLM.from_pretrained(tmp_path / "base")
    plain = base(input_ids=torch.tensor(tokens, dtype=torch.long)).logits.detach().numpy()
    assert np.abs(plain - want).max() > 1e-3  # the adapters matter
    peft = PeftModel.from_pretrained(base, tmp_path / "adapters").eval()
    with torch.no_grad():
        got = peft(input_ids=torch.tensor(tokens, dtype=torch.long)).logits.numpy()
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)
    return json.loads((tmp_path / "adapters" / "adapter_config.json").read_text())


def test_peft_adapters_on_the_base_give_the_runs_logits(run, tmp_path):
    assert isinstance(load_run(run).model.backbone.layers[0].mlp.up_proj, LoRALinear)
    config = _peft_logits_match_the_run(run, tmp_path)
    assert config["r"] == 4 and config["rank_pattern"] == {} and not config["fan_in_fan_out"]
    assert config["modules_to_save"] == ["lm_head"]


def test_gpt2_adapters_export_through_the_fused_c_attn(gpt2_run, tmp_path):
    config = _peft_logits_match_the_run(gpt2_run, tmp_path)
    # c_attn carries q's and v's rank-4 adapters as one rank-8 adapter, at the same scale
    c_attn = [m for m in config["target_modules"] if m.endswith("c_attn")]
    assert len(c_attn) == 2 and len(config["target_modules"]) == 6  # + c_fc, mlp.c_proj
    assert set(config["rank_pattern"].values()) == {8} and len(config["rank_pattern"]) == 2
    assert set(config["alpha_pattern"].values()) == {16.0}
    assert config["r"] == 4 and config["lora_alpha"] == 8.0 and config["fan_in_fan_out"]
    from safetensors.numpy import load_file
    tensors = load_file(tmp_path / "adapters" / "adapter_model.safetensors")
    B = tensors["base_model.model.transformer.h.0.attn.c_attn.lora_B.weight"]
    assert B.shape == (96, 8) and not B[32:64].any()  # k's rows: no adapter
