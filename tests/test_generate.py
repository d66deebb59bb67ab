"""KV-cache decoding and sampling: cached logits equal the full forward pass, and the decoding
loop's behaviour (determinism, batching, top-k, stop tokens, streaming, windows, mesh)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxlm.config import ModelConfig
from jaxlm.generate import Generator, generate_ids
from jaxlm.generation.decode import cached_logits, new_cache
from jaxlm.generation.sampling import Sampling, filter_top_k, filter_top_p, sample
from jaxlm.errors import ConfigError
from jaxlm.models import build_model
from jaxlm.sharding import make_mesh

FAMILIES = {
    "gpt2": dict(family="gpt2"),
    "llama_gqa": dict(family="llama", num_kv_heads=2),
}
PROMPTS = [[5, 9, 2, 33, 7, 1, 40], [12, 3], [8, 8, 21, 4, 17]]


def tiny(family: str, max_len: int = 64, seed: int = 0):
    cfg = ModelConfig(vocab_size=61, num_layers=2, d_model=32, num_heads=4, max_len=max_len,
                      init_std=0.3, **FAMILIES[family])
    return build_model(cfg, "causal", seed=seed)


N_NEW = 12  # one output length everywhere, so tests share compilations


@pytest.fixture(scope="module")
def model():
    return tiny("gpt2")


@pytest.fixture(scope="module", params=list(FAMILIES))
def each_model(request):
    return tiny(request.param)


@pytest.mark.parametrize("family", list(FAMILIES))
def test_cached_decoding_logits_equal_full_forward(family):
    model = tiny(family)
    cfg = model.backbone.cfg
    graphdef, params = nnx.split(model, nnx.Param)
    tokens = jax.random.randint(jax.random.key(1), (2, 14), 0, cfg.vocab_size)
    forward = jax.jit(lambda params, t: nnx.merge(graphdef, params)(t))
    full = forward(params, tokens)

    @jax.jit
    def step(params, tokens_BxT, cache, index, pad):
        return cached_logits(nnx.merge(graphdef, params), tokens_BxT, cache, index, pad,
                             last_only=False)
    # Row 0 as is; row 1 holds the first 10 tokens of row 1, left-padded by 4 slots.
    pad = jnp.array([0, 4])
    padded = tokens.at[1].set(jnp.concatenate([jnp.zeros(4, tokens.dtype), tokens[1, :10]]))
    cache = new_cache(cfg, 2, 14)
    logits, cache = step(params, padded[:, :6], cache, jnp.int32(0), pad)  # prefill 6 tokens
    steps = [logits]
    for i in range(6, 14):  # then one token at a time
        step_logits, cache = step(params, padded[:, i:i + 1], cache, jnp.int32(i), pad)
        steps.append(step_logits)
    got = jnp.concatenate(steps, axis=1)
    np.testing.assert_allclose(got[0], full[0], atol=1e-5, rtol=0)
    np.testing.assert_allclose(got[1, 4:], forward(params, tokens[1:, :10])[0], atol=1e-5, rtol=0)


def test_greedy_is_deterministic_and_top_k_1_equals_greedy(model):
    g = Generator(model)
    greedy = g.generate_ids(PROMPTS, max_new_tokens=N_NEW, temperature=0.0)
    assert greedy == g.generate_ids(PROMPTS, max_new_tokens=N_NEW, temperature=0.0)
    assert all(len(r) == 12 for r in greedy)
    top1 = g.generate_ids(PROMPTS, max_new_tokens=N_NEW, temperature=1.3, top_k=1, seed=7)
    assert top1 == greedy
    tiny_p = g.generate_ids(PROMPTS, max_new_tokens=N_NEW, temperature=1.0, top_p=1e-6, seed=3)
    assert tiny_p == greedy


def test_batched_generation_equals_one_by_one(each_model):
    g = Generator(each_model)
    batched = g.generate_ids(PROMPTS, max_new_tokens=N_NEW, temperature=0.0)
    single = [g.generate_ids([p], max_new_tokens=N_NEW, temperature=0.0)[0] for p in PROMPTS]
    assert batched == single
    # Uneven groups: the last group of 1 is padded to the batch size with finished dummy rows.
    grouped = Generator(each_model, batch_size=2).generate_ids(PROMPTS, max_new_tokens=N_NEW,
                                                               temperature=0.0)
    assert grouped == single


def test_sampling_is_seeded(model):
    g = Generator(model)
    a = g.generate_ids(PROMPTS, max_new_tokens=N_NEW, temperature=1.0, seed=1)
    assert a == g.generate_ids(PROMPTS, max_new_tokens=N_NEW, temperature=1.0, seed=1)
    assert a != g.generate_ids(PROMPTS, max_new_tokens=N_NEW, temperature=1.0, seed=2)


def test_stop_tokens_stop_each_row(model):
    g = Generator(model)
    greedy = g.generate_ids(PROMPTS, max_new_tokens=N_NEW, temperature=0.0)
    stop = greedy[0][3]
    out = g.generate_ids(PROMPTS, max_new_tokens=N_NEW, temperature=0.0, stop_ids=[stop])
    for full, cut in zip(greedy, out):
        expected = full[:full.index(stop)] if stop in full else full
        assert cut == expected
    assert len(out[0]) == greedy[0].index(stop)


def test_streaming_chunks_reuse_one_compilation(model):
    g = Generator(model)
    whole = g.generate_ids(PROMPTS, max_new_tokens=N_NEW, temperature=0.0)
    pieces: dict[int, list[list[int]]] = {}
    before = g.decoder.decode._cache_size()
    streamed = g.generate_ids(PROMPTS, max_new_tokens=N_NEW, temperature=0.0, chunk=3,
                              on_tokens=lambda row, ids: pieces.setdefault(row, []).append(ids))
    assert streamed == whole
    assert g.decoder.decode._cache_size() == before  # chunked calls reuse the compiled loop
    assert len(pieces[0]) == 4  # 12 tokens: the prefill's + 3, then 3, 3, 2
    assert [sum(p, []) for _, p in sorted(pieces.items())] == whole


def test_generation_past_the_context_runs_in_windows():
    model = tiny("gpt2", max_len=16)
    g = Generator(model)
    long = g.generate_ids([PROMPTS[0]], max_new_tokens=40, temperature=0.0)[0]
    assert len(long) == 40 and max(long) < model.backbone.cfg.vocab_size
    # the windows (the prompt's, then shorter contexts) fill the same 16 cache slots: their
    # decode loops share one compiled program (a prefill compiles per prompt length)
    assert g.decoder.decode._cache_size() == 1
    assert g.decoder.prefill._cache_size() == 2
    first_window = 16 - len(PROMPTS[0]) + 1  # the tokens that fit before the first refill
    short = g.generate_ids([PROMPTS[0]], max_new_tokens=first_window, temperature=0.0)[0]
    assert long[:first_window] == short


def test_generation_under_a_mesh_matches_one_device():
    model = tiny("llama_gqa")
    mesh = make_mesh(2, 2, 2, jax.devices()[:8])
    sharded = Generator(model, mesh=mesh)
    kernel = sharded.params["backbone"]["layers"][0]["mlp"]["up_proj"]["kernel"][...]
    assert len(kernel.sharding.device_set) == 8
    prompts = PROMPTS + [[3, 4]]  # 4 rows: the batch splits over data x fsdp
    expected = Generator(model).generate_ids(prompts, max_new_tokens=N_NEW, temperature=0.0)
    assert sharded.generate_ids(prompts, max_new_tokens=N_NEW, temperature=0.0) == expected


def test_top_k_and_top_p_filters():
    logits = jnp.log(jnp.array([[0.5, 0.2, 0.15, 0.1, 0.05]]))
    assert np.isfinite(filter_top_k(logits, 2)).tolist() == [[True, True, False, False, False]]
    # mass before each token: 0, .5, .7, .85, .95 -> p=0.7 keeps the first two, p=0.71 three
    assert np.isfinite(filter_top_p(logits, 0.7)).sum() == 2
    assert np.isfinite(filter_top_p(logits, 0.71)).sum() == 3
    assert np.isfinite(filter_top_p(logits, 1.0)).sum() == 5
    draws = jax.vmap(lambda k: sample(logits, k, Sampling(1.0, top_k=2)))(
        jax.random.split(jax.random.key(0), 2000))[:, 0]
    freq = np.bincount(np.asarray(draws), minlength=5) / 2000
    assert freq[2:].sum() == 0 and abs(freq[0] - 0.5 / 0.7) < 0.05


def test_bad_settings_are_reported(model):
    with pytest.raises(ConfigError, match="top_p"):
        Sampling(1.0, top_p=0.0)
    with pytest.raises(ConfigError, match="temperature"):
        Sampling(-1.0)
    with pytest.raises(ConfigError, match="empty"):
        generate_ids(model, [[]], max_new_tokens=3)
    with pytest.raises(ConfigError, match="vocabulary"):
        generate_ids(model, [[1000]], max_new_tokens=3)
    with pytest.raises(ConfigError, match="learned positions"):
        Generator(model, context_len=1000)
    with pytest.raises(ConfigError, match="causal"):
        Generator(build_model(model.backbone.cfg, "masked"))


def test_params_pair_is_accepted(model):
    graphdef, params = nnx.split(model, nnx.Param)
    a = generate_ids((graphdef, params), PROMPTS, max_new_tokens=N_NEW, temperature=0.0)
    assert a == generate_ids(model, PROMPTS, max_new_tokens=N_NEW, temperature=0.0)
