"""Model behaviour: causality, segment/padding masks, families, heads, remat and dtypes."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxlm.config import ModelConfig
from jaxlm.models import build_model
from jaxlm.models.heads import pool


def tiny(family: str, **kw) -> ModelConfig:
    base = dict(family=family, vocab_size=50, num_layers=2, d_model=32, num_heads=4, max_len=32)
    if family == "llama":
        base["num_kv_heads"] = 2
    base.update(kw)
    return ModelConfig(**base)


def tokens(B=2, T=12, seed=0):
    return jnp.asarray(np.random.default_rng(seed).integers(1, 50, (B, T)), jnp.int32)


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_future_token_never_changes_earlier_logits(family):
    model = build_model(tiny(family))
    x = tokens()
    y = x.at[:, 7].set((x[:, 7] + 1) % 50)  # change token 7 only
    a, b = model(x), model(y)
    np.testing.assert_allclose(a[:, :7], b[:, :7], atol=1e-6)
    assert np.abs(np.asarray(a[:, 7:] - b[:, 7:])).max() > 1e-4  # and later logits do change


def test_bidirectional_bert_sees_the_future():
    model = build_model(tiny("bert"), "masked")
    x = tokens()
    y = x.at[:, 7].set((x[:, 7] + 1) % 50)
    assert np.abs(np.asarray(model(x)[:, :7] - model(y)[:, :7])).max() > 1e-4


@pytest.mark.parametrize("family", ["gpt2", "llama", "bert"])
def test_segments_do_not_see_each_other(family):
    """A packed row of two documents gives each document the logits it gets alone."""
    objective = "masked" if family == "bert" else "causal"
    model = build_model(tiny(family), objective)
    x = tokens(B=1, T=12)
    seg = jnp.asarray([[1] * 5 + [2] * 7], jnp.int32)
    pos = jnp.asarray([list(range(5)) + list(range(7))], jnp.int32)
    packed = model(x, segment_ids_BxT=seg, positions_BxT=pos)
    first, second = model(x[:, :5]), model(x[:, 5:])
    np.testing.assert_allclose(packed[:, :5], first, atol=1e-5)
    np.testing.assert_allclose(packed[:, 5:], second, atol=1e-5)


def test_padding_does_not_change_real_tokens():
    model = build_model(tiny("bert"), "classification", num_labels=3, pooling="mean")
    x = tokens(B=1, T=8)
    padded = jnp.concatenate([x, jnp.zeros((1, 4), jnp.int32)], axis=1)
    seg = jnp.asarray([[1] * 8 + [0] * 4], jnp.int32)
    np.testing.assert_allclose(model(padded, segment_ids_BxT=seg), model(x), atol=1e-5)


def test_pooling_modes():
    x = jnp.arange(2 * 4 * 3, dtype=jnp.float32).reshape(2, 4, 3)
    seg = jnp.asarray([[1, 1, 1, 0], [1, 1, 0, 0]])
    np.testing.assert_allclose(pool(x, seg, "first"), x[:, 0])
    np.testing.assert_allclose(pool(x, seg, "last"), jnp.stack([x[0, 2], x[1, 1]]))
    np.testing.assert_allclose(pool(x, seg, "mean"), jnp.stack([x[0, :3].mean(0), x[1, :2].mean(0)]))


def test_families_have_their_parts():
    llama = build_model(tiny("llama"))
    assert llama.backbone.embeddings.position is None  # RoPE, no learned positions
    assert llama.lm_head.proj is not None  # untied
    assert not hasattr(llama.backbone.layers[0].attn.q_proj, "bias") or \
        llama.backbone.layers[0].attn.q_proj.bias is None
    k = llama.backbone.layers[0].attn.k_proj.kernel[...]
    assert k.shape == (32, 2 * 8)  # grouped-query: 2 kv heads of width 8
    gpt2 = build_model(tiny("gpt2"))
    assert gpt2.lm_head.proj is None  # tied embeddings
    bert = build_model(tiny("bert"), "masked")
    assert bert.backbone.embeddings.token_type is not None and bert.backbone.final_norm is None


def _params(model):
    return nnx.state(model, nnx.Param)


@pytest.mark.parametrize("policy", ["full", "dots_saveable"])
def test_remat_gives_the_same_gradients(policy):
    x = tokens()
    grads = []
    for remat in ("none", policy):
        model = build_model(tiny("llama", remat=remat))
        graphdef, params = nnx.split(model, nnx.Param)
        g = jax.grad(lambda p: nnx.merge(graphdef, p)(x).sum())(params)
        grads.append(jax.tree.leaves(g))
    for a, b in zip(*grads):
        np.testing.assert_allclose(a, b, atol=1e-5)


def test_bfloat16_compute_keeps_float32_params_and_logits():
    model = build_model(tiny("llama", dtype="bfloat16"))
    logits = model(tokens())
    assert logits.dtype == jnp.float32
    assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(_params(model)))
    ref = build_model(tiny("llama"))(tokens())
    assert np.abs(np.asarray(logits - ref)).max() < 0.1  # same weights, bf16 rounding only


def test_dropout_is_deterministic_per_key_and_off_without_key():
    model = build_model(tiny("gpt2", dropout=0.3))
    x = tokens()
    k = jax.random.key(0)
    np.testing.assert_array_equal(model(x, dropout_rng=k), model(x, dropout_rng=k))
    assert np.abs(np.asarray(model(x, dropout_rng=k) - model(x))).max() > 1e-3
    np.testing.assert_array_equal(model(x), model(x))


@pytest.mark.parametrize("dims", [(512, 128), (128, 512), (128, 128), (70, 128)])
def test_weight_grad_equals_plain_contraction_for_narrowing_and_widening_layers(dims):
    """A narrowing layer (I > O: the MLP's down projection) takes the g^T x order; its gradient
    is the plain x^T g."""
    from jaxlm.models.mixed import _transpose_gradient_side, weight_grad
    i, o = dims
    kx, kg = jax.random.split(jax.random.key(1))
    x = jax.random.normal(kx, (12, 64, i))
    g = jax.random.normal(kg, (12, 64, o))
    assert _transpose_gradient_side(x.shape, g.shape) == (dims == (512, 128))
    got = jax.jit(weight_grad)(x, g)
    want = np.einsum("bti,bto->io", np.asarray(x, np.float64), np.asarray(g, np.float64))
    assert got.shape == (i, o)
    np.testing.assert_allclose(np.asarray(got), want, rtol=2e-5, atol=2e-4)


@pytest.mark.parametrize("shape", [(4, 16, 32), (8, 32)])  # [B, T, I] activations; pooled [B, I]
def test_bf16_mixed_matmul_gradients_match_float32(shape):
    """All three matmuls run on bf16 inputs (weight gradients too, on CPU as well), accumulate in
    float32 and return float32 weight gradients close to the float32 computation."""
    from jaxlm.models.mixed import mixed_matmul
    kx, kw, kg = jax.random.split(jax.random.key(0), 3)
    x = jax.random.normal(kx, shape)
    w = jax.random.normal(kw, (shape[-1], 24)) * 0.1
    g = jax.random.normal(kg, (*shape[:-1], 24))

    def grads(dtype):
        f = lambda x, w: (mixed_matmul(x.astype(dtype), w) * g).sum()
        return jax.grad(f, argnums=(0, 1))(x, w)

    (dx16, dw16), (dx32, dw32) = grads(jnp.bfloat16), grads(jnp.float32)
    assert dw16.dtype == jnp.float32
    for a, b in ((dx16, dx32), (dw16, dw32)):
        a, b = np.asarray(a, np.float32), np.asarray(b)
        assert np.abs(a - b).max() <= 2e-2 * np.abs(b).max(), np.abs(a - b).max()


def test_gelu_is_exact_gelu_and_its_backward_keeps_only_the_input():
    """`layers.gelu`: jax.nn.gelu's values, autodiff's gradient (to float32 rounding, at bf16
    too), and the backward pass holds less memory than autodiff's: only the input is kept."""
    from jaxlm.models.layers import gelu
    x = jnp.asarray(np.random.default_rng(0).normal(0, 3, (4096,)), jnp.float32)
    x = x.at[:4].set(jnp.asarray([-12.0, -0.0, 1e-8, 9.0]))
    np.testing.assert_array_equal(gelu(x), jax.nn.gelu(x, approximate=False))
    ours = jax.grad(lambda v: (gelu(v) * jnp.cos(v)).sum())(x)
    ref = jax.grad(lambda v: (jax.nn.gelu(v, approximate=False) * jnp.cos(v)).sum())(x)
    np.testing.assert_allclose(ours, ref, rtol=2e-6, atol=1e-7)
    xb = x.astype(jnp.bfloat16)
    gb = jax.grad(lambda v: gelu(v).astype(jnp.float32).sum())(xb)
    assert gb.dtype == jnp.bfloat16
    np.testing.assert_allclose(gb.astype(jnp.float32), jax.grad(
        lambda v: jax.nn.gelu(v, approximate=False).sum())(xb.astype(jnp.float32)), atol=1e-2)

    def mlp_grad(act):
        def loss(w1, w2, h):
            for _ in range(4):  # four layers' activations kept for the backward pass
                h = act(h @ w1) @ w2
            return h.sum()
        return jax.jit(jax.grad(loss, argnums=(0, 1)))

    w1, w2, h = jnp.ones((64, 256)) / 64, jnp.ones((256, 64)) / 256, jnp.ones((512, 64))
    temp = {name: fn.lower(w1, w2, h).compile().memory_analysis().temp_size_in_bytes
            for name, fn in (("ours", mlp_grad(gelu)),
                             ("autodiff", mlp_grad(lambda v: jax.nn.gelu(v, approximate=False))))}
    per_layer = 512 * 256 * 4  # one [tokens, d_ff] float32 buffer
    assert temp["ours"] <= temp["autodiff"] - 4 * per_layer, temp
