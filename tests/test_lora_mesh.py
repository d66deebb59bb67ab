"""LoRA under the trainer's other settings: a 2x2x2 mesh (adapters sharded by the logical
rules like their layer) matches one device, and mixed precision with gradient accumulation trains
the adapters (and the LM head with train_lm_head) only."""
import jax
import numpy as np


def _flat(tree) -> dict:
    return {tuple(str(getattr(k, "key", getattr(k, "idx", k))) for k in p): np.asarray(v)
            for p, v in jax.tree_util.tree_leaves_with_path(tree)}


def _train_lora(mesh_shape, dtype="float32", grad_accum=1, n_steps=3):
    from jaxlm.config import LoRAConfig, ModelConfig, OptimConfig
    from jaxlm.models import build_model
    from jaxlm.models.lora import apply_lora, trainable
    from jaxlm.sharding import make_mesh, use_mesh
    from jaxlm.tasks import token_loss
    from jaxlm.train.optim import build_optimizer
    from jaxlm.train.steps import compile_steps, put_batch

    cfg = ModelConfig(family="llama", vocab_size=64, num_layers=2, d_model=32, num_heads=4,
                      num_kv_heads=2, max_len=32, dtype=dtype, tie_embeddings=False)
    lora = LoRAConfig(rank=4, targets=["attention", "mlp"], train_lm_head=True)
    tx, lr = build_optimizer(OptimConfig(lr=1e-2, warmup_steps=0, schedule="constant"), 10)
    mesh = make_mesh(*mesh_shape, devices=jax.devices()[:int(np.prod(mesh_shape))])
    rng = np.random.default_rng(0)
    batch = {"inputs": rng.integers(0, 64, (8, 16)).astype(np.int32),
             "targets": rng.integers(0, 64, (8, 16)).astype(np.int32),
             "weights": np.ones((8, 16), np.float32)}
    with use_mesh(mesh):
        steps = compile_steps(lambda: apply_lora(build_model(cfg, "causal"), lora), tx,
                              token_loss, lr, mesh, grad_accum=grad_accum,
                              trainable=trainable(lora))
        state = steps.init()
        before = jax.tree.map(np.asarray, state.params)
        losses = []
        for _ in range(n_steps):
            state, m = steps.train(state, put_batch(batch, steps.batch_sharding))
            losses.append(float(m["loss"]))
    q = state.params["backbone"]["layers"][0]["attn"]["q_proj"]
    specs = (q["kernel"].sharding.spec, q["lora"]["lora_a"].sharding.spec,
             q["lora"]["lora_b"].sharding.spec)
    return losses, before, jax.tree.map(np.asarray, state.params), specs


def _changed(before, after) -> set:
    a, b = _flat(before), _flat(after)
    return {k for k in a if not np.array_equal(a[k], b[k])}


def test_lora_on_a_sharded_mesh_matches_one_device_and_trains_only_adapters_and_lm_head():
    losses1, before1, after1, _ = _train_lora((1, 1, 1))
    losses8, before8, after8, specs = _train_lora((2, 2, 2), grad_accum=2)
    P = jax.sharding.PartitionSpec
    # adapters sharded by the rules like their layer (kernel [embed, heads]), rank replicated
    assert specs == (P("fsdp", "tensor"), P("fsdp", None), P(None, "tensor"))
    np.testing.assert_allclose(losses1, losses8, atol=1e-5)
    assert losses1[-1] < losses1[0]
    changed = _changed(before1, after1)
    assert changed == {k for k in _flat(before1) if "lora_b" in k or "lora_a" in k
                       or k[0] == "lm_head"}
    assert _changed(before8, after8) == changed
    diffs = [np.abs(_flat(after1)[k] - _flat(after8)[k]).max() for k in changed]
    assert max(diffs) <= 1e-5


def test_lora_with_mixed_precision_and_grad_accum_keeps_the_base_frozen():
    losses, before, after, _ = _train_lora((1, 1, 1), dtype="bfloat16", grad_accum=2,
                                           n_steps=6)
    assert losses[-1] < losses[0] - 0.1, losses
    changed = _changed(before, after)
    assert changed and all("lora" in k or k[0] == "lm_head" for k in changed)
    assert {str(v.dtype) for v in _flat(after).values()} == {"float32"}  # params stay float32


def test_adapter_dropout_acts_only_inside_a_train_step_and_is_seeded():
    import jax.numpy as jnp
    from flax import nnx

    from jaxlm.config import LoRAConfig, ModelConfig
    from jaxlm.models import build_model
    from jaxlm.models.lora import LoRALinear, adapter_dropout, apply_lora

    cfg = ModelConfig(family="llama", vocab_size=64, num_layers=1, d_model=32, num_heads=4,
                      max_len=16)
    model = apply_lora(build_model(cfg, "causal"), LoRAConfig(rank=4, dropout=0.5))
    for _, node in nnx.iter_graph(model):
        if isinstance(node, LoRALinear):
            node.lora.lora_b.set_value(jnp.ones_like(node.lora.lora_b[...]) * 0.1)
    tokens = jnp.arange(16).reshape(2, 8)
    plain = np.asarray(model(tokens))
    assert np.array_equal(plain, np.asarray(model(tokens)))
    with adapter_dropout(jax.random.key(0)):
        dropped = np.asarray(model(tokens))
        again = np.asarray(model(tokens))
    with adapter_dropout(jax.random.key(1)):
        other = np.asarray(model(tokens))
    assert np.abs(dropped - plain).max() > 1e-3 and np.array_equal(dropped, again)
    assert np.abs(other - dropped).max() > 1e-3
