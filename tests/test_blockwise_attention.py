"""Blockwise attention (the CPU default): same values and gradients as jax.nn's XLA attention for
causal / bidirectional, grouped heads, packed segments with padding and lengths that are not a
multiple of the query block; bf16 no less accurate than XLA's bf16; sharded == unsharded."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxlm.config import ModelConfig
from jaxlm.models import attention as A
from jaxlm.models import blockwise_attention as BW
from jaxlm.models import build_model
from jaxlm.models.layers import attention_impl
from flax import nnx

from jaxlm.sharding import make_mesh, state_shardings, use_mesh


def _inputs(B=2, T=150, H=4, G=2, K=16, dtype=jnp.float32):
    keys = jax.random.split(jax.random.key(0), 4)
    shapes = [(B, T, H, K), (B, T, G, K), (B, T, G, K), (B, T, H, K)]
    q, k, v, w = (jax.random.normal(key, s).astype(dtype) for key, s in zip(keys, shapes))
    seg = jnp.array([[1] * 70 + [2] * 40 + [0] * (T - 110), [1] * T], jnp.int32)[:B]
    return q, k, v, w, seg


def _loss_and_grads(impl, q, k, v, w, seg, causal, compute_dtype=None):
    valid = (seg != 0)[:, :, None, None]

    def loss(q, k, v):
        if compute_dtype is not None:
            q, k, v = q.astype(compute_dtype), k.astype(compute_dtype), v.astype(compute_dtype)
        out = A.attend(q, k, v, mask_Bx1xTxS=None, causal=causal, segment_ids_BxT=seg, impl=impl)
        return jnp.where(valid, out.astype(jnp.float32) * w, 0.0).sum()

    return jax.value_and_grad(loss, argnums=(0, 1, 2))(q, k, v)


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("G", [4, 2, 1])
def test_blockwise_matches_xla_values_and_gradients(causal, G):
    q, k, v, w, seg = _inputs(G=G)
    assert len(BW.query_blocks(150, causal)) == (3 if causal else 1)  # 64 + 64 + 22
    (l1, g1), (l2, g2) = (_loss_and_grads(i, q, k, v, w, seg, causal) for i in ("xla", "blockwise"))
    np.testing.assert_allclose(l2, l1, rtol=1e-5)
    for a, b in zip(g1, g2):
        assert a.shape == b.shape
        np.testing.assert_allclose(b, a, atol=2e-5)


def test_blockwise_without_segments_and_padding_rows_stay_finite():
    q, k, v, w, _ = _inputs()
    out = BW.blockwise_attention(q, k, v, causal=True, segment_ids_BxT=None)
    ref = jax.nn.dot_product_attention(q, k, v, is_causal=True, implementation="xla")
    np.testing.assert_allclose(out, ref, atol=1e-5)
    only_pad = jnp.zeros((2, 150), jnp.int32)  # no query sees any key: finite, like XLA's
    assert bool(jnp.isfinite(BW.blockwise_attention(q, k, v, causal=True,
                                                    segment_ids_BxT=only_pad)).all())


def test_blockwise_bf16_is_as_accurate_as_xla_bf16():
    q, k, v, w, seg = _inputs(T=256, K=64)
    _, exact = _loss_and_grads("xla", q, k, v, w, seg, True)  # float32 reference
    for impl in ("xla", "blockwise"):
        _, g = _loss_and_grads(impl, q, k, v, w, seg, True, jnp.bfloat16)
        errs = [float(jnp.abs(a.astype(jnp.float32) - e).max() / jnp.abs(e).max())
                for a, e in zip(g, exact)]
        if impl == "xla":
            xla_errs = errs
    assert all(b <= 1.5 * x + 1e-3 for b, x in zip(errs, xla_errs)), (errs, xla_errs)
    assert max(errs) < 0.02


def test_causal_blockwise_needs_square_attention():
    q, k, v, _, _ = _inputs()
    with pytest.raises(ValueError, match="as many keys as queries"):
        BW.blockwise_attention(q, k[:, :100], v[:, :100], causal=True, segment_ids_BxT=None)


def test_cpu_model_uses_blockwise_and_matches_xla_model_sharded_and_not():
    base = dict(vocab_size=64, num_layers=2, d_model=32, num_heads=4, max_len=96)
    cfg = ModelConfig(**base)
    assert attention_impl(cfg.resolved()) == "blockwise"
    model, ref = build_model(cfg), build_model(ModelConfig(**base, attention_impl="xla"))
    toks = jax.random.randint(jax.random.key(1), (4, 96), 0, 64)
    seg = jnp.concatenate([jnp.ones((4, 50), jnp.int32), 2 * jnp.ones((4, 30), jnp.int32),
                           jnp.zeros((4, 16), jnp.int32)], 1)
    expected = ref(toks, segment_ids_BxT=seg)
    np.testing.assert_allclose(model(toks, segment_ids_BxT=seg), expected, atol=2e-5)
    mesh = make_mesh(2, 2, 2, jax.devices()[:8])
    graphdef, state = nnx.split(model)
    with use_mesh(mesh):
        state = jax.device_put(state, state_shardings(state, mesh))
        out = jax.jit(lambda st, t, s: nnx.merge(graphdef, st)(t, segment_ids_BxT=s))(
            state, toks, seg)
    np.testing.assert_allclose(out, expected, atol=2e-5)
