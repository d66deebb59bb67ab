"""FLOPs per token for MFU: the PaLM count for full training, no vocabulary projection for a
classifier, and for LoRA no weight gradients for the frozen base (4 FLOPs per parameter instead
of 6) plus the adapters' own matmuls, counted from the step training builds."""
from pathlib import Path

import pytest

from jaxlm.config import load_config
from jaxlm.sharding import make_mesh, use_mesh
from jaxlm.tasks import ClassificationTask, task_for
from jaxlm.train.fit import build_task_steps, step_flops_per_token
from jaxlm.train.flops import flops_per_token, matmul_params

REPO = Path(__file__).resolve().parents[1]
L, D, V, T, FF = 2, 64, 512, 32, 256
MODEL = [f"model.num_layers={L}", f"model.d_model={D}", "model.num_heads=4", "model.max_len=32",
         f"model.vocab_size={V}", f"data.seq_len={T}", "mesh.num_devices=1"]
ATTENTION = 12 * L * T * D  # QK^T and AV: 12 x layers x T x heads x head_dim


def _flops(sets: list[str], task=None) -> float:
    cfg = load_config(REPO / "configs/shakespeare_char.yaml", MODEL + sets)
    task = task or task_for(cfg.train.task)()
    mesh = make_mesh(num_devices=1)
    with use_mesh(mesh, cfg.mesh.rules):
        steps = build_task_steps(cfg, task, cfg.model.resolved(), mesh)
    return step_flops_per_token(steps, task, cfg.model.resolved(), T)


def test_full_training_is_six_flops_per_matmul_parameter_plus_attention():
    # GPT-2: q, k, v, o (4 D^2) and the MLP (2 x D x 4D) per layer, and the tied LM head D x V
    m = L * (4 * D * D + 2 * D * 4 * D) + D * V
    cfg = load_config(REPO / "configs/shakespeare_char.yaml", MODEL).model.resolved()
    assert matmul_params(cfg) == m
    assert flops_per_token(cfg, T) == 6 * m + ATTENTION
    assert _flops([]) == 6 * m + ATTENTION  # the step pretraining builds
    assert flops_per_token(cfg, T, vocab_logits=False) == 6 * (m - D * V) + ATTENTION


@pytest.mark.parametrize("tied", [False, True])
def test_lora_counts_no_weight_gradients_for_the_frozen_base(tied):
    sets = ["model.family=llama", f"model.d_ff={FF}", f"model.tie_embeddings={tied}",
            "train.task=generative", "finetune.lora.rank=2", "finetune.lora.targets=[attention]"]
    base = L * (4 * D * D + 3 * D * FF) + D * V  # swiglu; the LM head (tied or not) is frozen
    adapters = L * 4 * (D * 2 + 2 * D)
    assert _flops(sets) == 4 * base + 6 * adapters + ATTENTION
    assert _flops(sets[:-2]) == 6 * base + ATTENTION  # without LoRA


def test_a_lora_classifier_has_no_vocabulary_projection():
    sets = ["model.family=bert", "train.task=classification", "finetune.lora.rank=2",
            "finetune.lora.targets=[attention]"]
    task = ClassificationTask(["neg", "pos"])
    base = L * (4 * D * D + 2 * D * 4 * D)
    adapters = L * 4 * (D * 2 + 2 * D)
    # (the classifier's D x 2 kernel is left out, as the module docstring says)
    assert _flops(sets, task) == 4 * base + 6 * adapters + ATTENTION
    assert _flops(sets[:-2], task) == 6 * base + ATTENTION
