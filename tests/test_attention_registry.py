"""Pluggable attention: a function registered by name runs in place of the built-in kernels."""
import jax.numpy as jnp
import numpy as np
import pytest

from jaxlm.config import ModelConfig
from jaxlm.errors import ConfigError
from jaxlm.models import attention as A
from jaxlm.models import build_model

calls = []


@A.register_attention("test_counting_xla")
def counting_xla(q_BxTxHxK, k_BxSxGxK, v_BxSxGxK, *, causal, segment_ids_BxT, mask_Bx1xTxS,
                 **kwargs):
    calls.append((q_BxTxHxK.shape, k_BxSxGxK.shape, causal, segment_ids_BxT is not None,
                  mask_Bx1xTxS is not None))
    return A.xla_attention(q_BxTxHxK, k_BxSxGxK, v_BxSxGxK, causal=causal,
                           segment_ids_BxT=segment_ids_BxT, mask_Bx1xTxS=mask_Bx1xTxS)


def test_registered_attention_is_called_and_matches_the_builtin():
    base = dict(family="llama", vocab_size=32, num_layers=2, d_model=32, num_heads=4,
                num_kv_heads=2, max_len=16)
    model = build_model(ModelConfig(**base, attention_impl="test_counting_xla"), seed=1)
    ref = build_model(ModelConfig(**base, attention_impl="xla"), seed=1)
    toks = (jnp.arange(32).reshape(2, 16) * 7) % 32
    seg = jnp.array([[1] * 10 + [2] * 6, [1] * 12 + [0] * 4], jnp.int32)
    calls.clear()
    np.testing.assert_allclose(model(toks), ref(toks), atol=1e-6)
    np.testing.assert_allclose(model(toks, segment_ids_BxT=seg), ref(toks, segment_ids_BxT=seg),
                               atol=1e-6)
    # once per layer and call: query heads H=4, key/value heads G=2, head width K=8
    assert calls == [((2, 16, 4, 8), (2, 16, 2, 8), True, False, False)] * 2 + [
        ((2, 16, 4, 8), (2, 16, 2, 8), True, True, False)] * 2


def test_unknown_and_clashing_names():
    with pytest.raises(ConfigError, match="not one of auto, xla, blockwise, cudnn, splash.*"
                       "test_counting_xla.*register_attention"):
        ModelConfig(vocab_size=8, attention_impl="nope").resolved()
    with pytest.raises(ValueError, match="built-in"):
        A.register_attention("xla", counting_xla)
    with pytest.raises(ValueError, match="already registered"):
        A.register_attention("test_counting_xla", counting_xla)
    assert A.register_attention("test_counting_xla", counting_xla, overwrite=True) is counting_xla
    assert "test_counting_xla" in A.attention_names()
