"""Attention kernels: per-backend choice, clean fallback with a warning, the Pallas splash wrapper
(run in interpret mode on CPU) against the XLA path, and the mixed-precision `auto` dtype."""
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxlm.config import ModelConfig
from jaxlm.models import attention as A
from jaxlm.models import build_model
from jaxlm.models.layers import attention_impl, compute_dtype_name, dtypes
from jaxlm.sharding import make_mesh, use_mesh


def test_choice_per_backend():
    assert A.choose_impl("auto", jnp.bfloat16, "gpu") == "cudnn"
    assert A.choose_impl("auto", jnp.float32, "gpu") == "xla"  # cuDNN flash needs half precision
    assert A.choose_impl("auto", jnp.bfloat16, "tpu") == "splash"
    assert A.choose_impl("auto", jnp.float32, "cpu") == "blockwise"
    assert A.choose_impl("auto", jnp.bfloat16, "cpu") == "blockwise"
    assert A.choose_impl("xla", jnp.bfloat16, "gpu") == "xla"


@pytest.mark.parametrize("impl", ["cudnn", "splash"])
def test_kernel_asked_for_on_cpu_falls_back_to_xla_with_a_warning(impl):
    A._warned.clear()
    with pytest.warns(UserWarning, match=f"attention_impl={impl} needs a"):
        assert A.choose_impl(impl, jnp.bfloat16, "cpu") == "xla"
    cfg = ModelConfig(vocab_size=16, num_layers=1, d_model=16, num_heads=2, max_len=8,
                      attention_impl=impl)
    model = build_model(cfg)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = build_model(ModelConfig(**{**cfg.__dict__, "attention_impl": "xla"}))
        toks = jnp.arange(8)[None] % 16
        np.testing.assert_allclose(model(toks), ref(toks), atol=1e-6)


def test_auto_dtype_is_float32_on_cpu_and_mixed_precision_keeps_float32_params():
    cfg = ModelConfig(vocab_size=16, num_layers=1, d_model=16, num_heads=2, max_len=8, dtype="auto")
    assert compute_dtype_name(cfg) == "float32" and attention_impl(cfg.resolved()) == "blockwise"
    bf = ModelConfig(**{**cfg.__dict__, "dtype": "bfloat16"})
    assert dtypes(bf) == (jnp.bfloat16, jnp.float32)
    model = build_model(bf)
    params = jax.tree.leaves(nnx.state(model, nnx.Param))
    assert all(p.dtype == jnp.float32 for p in params)
    assert model(jnp.arange(8)[None] % 16).dtype == jnp.float32  # logits (and the loss) in f32


def _qkv(B=1, T=128, H=4, G=2, K=64):
    k = jax.random.split(jax.random.key(0), 3)
    return (jax.random.normal(k[0], (B, T, H, K)), jax.random.normal(k[1], (B, T, G, K)),
            jax.random.normal(k[2], (B, T, G, K)))


def test_splash_matches_xla_with_segments_and_grouped_heads():
    q, k, v = _qkv()
    seg = jnp.concatenate([jnp.ones((1, 70), jnp.int32), 2 * jnp.ones((1, 40), jnp.int32),
                           jnp.zeros((1, 18), jnp.int32)], 1)
    valid = (seg != 0)[:, :, None, None]

    def loss(impl):
        def f(q, k, v):
            out = A.attend(q, k, v, mask_Bx1xTxS=None, causal=True, segment_ids_BxT=seg,
                           impl=impl, interpret=True)
            return (jnp.where(valid, out, 0.0) ** 2).sum()
        return f

    (l1, g1), (l2, g2) = (jax.value_and_grad(loss(i), argnums=(0, 1, 2))(q, k, v)
                          for i in ("xla", "splash"))
    np.testing.assert_allclose(l1, l2, rtol=1e-5)
    for a, b in zip(g1, g2):
        np.testing.assert_allclose(a, b, atol=1e-4)


def test_splash_runs_per_device_under_a_sharded_mesh():
    q, k, v = _qkv(B=2, T=128, H=4, G=4)
    mesh = make_mesh(2, 1, 2, jax.devices()[:4])  # batch over data, heads over tensor
    ref = A.attend(q, k, v, mask_Bx1xTxS=None, causal=True, segment_ids_BxT=None, impl="xla")
    with use_mesh(mesh):
        out = jax.jit(lambda q, k, v: A.splash_attention(q, k, v, causal=True,
                                                         segment_ids_BxT=None,
                                                         interpret=True))(q, k, v)
    np.testing.assert_allclose(out, ref, atol=1e-5)


def test_splash_refuses_what_it_cannot_take():
    q, k, v = _qkv(T=96)
    assert "multiple of 128" in A.splash_unsupported(q, k, None)
    q, k, v = _qkv()
    assert "mask" in A.splash_unsupported(q, k, jnp.ones((1, 1, 128, 128), bool))
    assert A.splash_unsupported(q, k, None) is None
