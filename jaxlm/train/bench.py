"""`jaxlm bench`: what a config's train step costs on this machine, without data or a run dir.

Compiles the real train step (`jaxlm.train.fit.build_task_steps`, the path training takes: the
task's model, loss and optimizer, with LoRA adapters when a fine-tuning task asks) for the
config's mesh and batch, as training calls it (train.steps_per_call steps per call), then reports
the per-device memory of the compiled step (`compiled.memory_analysis()`: arguments = parameters
+ optimizer state + batch, outputs, temporaries), and unless compile-only, times steps on random
tokens: step time, tokens/s and MFU against a peak that is measured (an n x n matmul of the
compute dtype on one device) or given.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxlm.config import Config, ModelConfig
from jaxlm.data.lm_pipeline import to_lm_batch
from jaxlm.errors import ConfigError
from jaxlm.models.layers import attention_impl, compute_dtype_name
from jaxlm.sharding import make_mesh, use_mesh
from jaxlm.tasks import task_for
from jaxlm.train.flops import count_params, measure_peak_flops
from jaxlm.checkpoint import abstract_with_shardings
from jaxlm.train.steps import CompiledSteps, put_batch
from jaxlm.train.trainer import InFlight, stack_batches


@dataclass
class BenchResult:
    """Everything `jaxlm bench` prints (bytes are per device)."""

    params: int
    trainable_params: int  # what gets gradients and optimizer state (fewer with LoRA)
    devices: int
    mesh: dict[str, int]
    dtype: str
    attention: str
    remat: str
    steps_per_call: int
    tokens_per_step: int
    flops_per_step: float
    compile_s: float
    memory: dict[str, int]
    shardings: dict[str, str] = field(default_factory=dict)
    step_s: float | None = None
    tokens_per_s: float | None = None
    peak_flops_per_device: float | None = None
    peak_source: str = ""
    mfu: float | None = None
    losses: list[float] = field(default_factory=list)


_NO_CLASSIFICATION = ("jaxlm bench times language-model steps on random tokens (train.task causal, "
                      "masked or generative); a classifier's head needs the labels of its data. "
                      "Time a classification run's steps with jaxlm finetune instead (its log "
                      "reports tokens/s and MFU).")


def bench_model_config(cfg: Config) -> ModelConfig:
    """The resolved model config; the vocabulary must be known without a tokenizer."""
    m = cfg.model
    vocab = m.vocab_size or cfg.data.tokenizer.vocab_size
    if vocab <= 0:
        raise ConfigError("jaxlm bench runs without data, so it needs the vocabulary size: set "
                          "model.vocab_size (or data.tokenizer.vocab_size), e.g. --set "
                          "model.vocab_size=32000.", culprit="model.vocab_size")
    import dataclasses
    return dataclasses.replace(m, vocab_size=vocab).resolved()


def random_lm_batch(cfg: Config, vocab: int, seed: int = 0) -> dict[str, np.ndarray]:
    """A random language-model batch shaped like the pipeline's rows for this process.

    Benchmarks time steps on it so that no data has to be read or tokenised first.
    """
    if cfg.train.task == "classification":
        raise ConfigError(_NO_CLASSIFICATION, culprit="train.task")
    B, T = cfg.train.batch_size // jax.process_count(), cfg.data.seq_len
    rng = np.random.default_rng(seed + jax.process_index())
    return to_lm_batch(rng.integers(0, vocab, (B, T + 1)))


def memory_stats(compiled: Any) -> dict[str, int]:
    """Per-device bytes of a compiled step (arguments, outputs, temporaries, aliasing, code)."""
    m = compiled.memory_analysis()
    if m is None:
        return {}
    keys = ("argument_size_in_bytes", "output_size_in_bytes", "temp_size_in_bytes",
            "alias_size_in_bytes", "generated_code_size_in_bytes")
    out = {k.replace("_size_in_bytes", ""): int(getattr(m, k, 0) or 0) for k in keys}
    # donated state is aliased to the output: peak is about arguments + temporaries + new outputs
    out["total"] = out["argument"] + out["output"] - out["alias"] + out["temp"]
    return out


def sharding_summary(steps: CompiledSteps, limit: int = 0) -> dict[str, str]:
    """Parameter path -> PartitionSpec, as the logical rules placed them."""
    flat = jax.tree_util.tree_flatten_with_path(steps.state_sharding.params)[0]
    out = {}
    for path, sh in flat:
        name = "/".join(str(getattr(p, "key", getattr(p, "idx", p))) for p in path)
        out[name] = str(sh.spec)
    return dict(list(out.items())[:limit]) if limit else out


def build_steps(cfg: Config, mesh=None) -> tuple[CompiledSteps, ModelConfig, Any]:
    """The jitted steps of the config on its mesh, as training builds them (the task's model,
    loss and optimizer; LoRA adapters when a fine-tuning task's finetune.lora asks)."""
    if cfg.train.task == "classification":
        raise ConfigError(_NO_CLASSIFICATION, culprit="train.task")
    mcfg = bench_model_config(cfg)
    mesh = mesh or make_mesh(cfg.mesh.data, cfg.mesh.fsdp, cfg.mesh.tensor,
                             num_devices=cfg.mesh.num_devices)
    from jaxlm.train.fit import build_task_steps, check_batch, check_lora
    check_batch(cfg, mesh)
    task = task_for(cfg.train.task)()
    check_lora(cfg, task, mcfg)
    with use_mesh(mesh, cfg.mesh.rules):
        steps = build_task_steps(cfg, task, mcfg, mesh)
    return steps, mcfg, mesh


def bench_steps_per_call(cfg: Config) -> int:
    """The steps per call `jaxlm pretrain` makes for `cfg` (`jaxlm.train.fit.steps_per_call`)."""
    from jaxlm.tasks import task_for
    from jaxlm.train.fit import steps_per_call
    return steps_per_call(cfg, task_for(cfg.train.task)())


def lower_and_compile(cfg: Config, steps: CompiledSteps, mesh, per_call: int = 1) -> Any:
    """Compile the train step (`per_call` > 1: `train_many` over that many stacked batches)
    from abstract state and batch (nothing is allocated)."""
    state = abstract_with_shardings(steps.abstract_state, steps.state_sharding)
    B, T = cfg.train.batch_size, cfg.data.seq_len
    lead = (per_call,) if per_call > 1 else ()
    spec = (steps.stacked_sharding if per_call > 1 else steps.batch_sharding).spec
    batch = {k: jax.ShapeDtypeStruct((*lead, B, T), dt, sharding=jax.sharding.NamedSharding(
        mesh, jax.sharding.PartitionSpec(*spec, None)))
        for k, dt in (("inputs", jnp.int32), ("targets", jnp.int32), ("weights", jnp.float32))}
    with use_mesh(mesh, cfg.mesh.rules):
        if per_call > 1:
            count = jax.ShapeDtypeStruct((), jnp.int32, sharding=jax.sharding.NamedSharding(
                mesh, jax.sharding.PartitionSpec()))
            return steps.train_many.lower(state, batch, count).compile()
        return steps.train.lower(state, batch).compile()


def bench(cfg: Config, *, steps: int = 10, warmup: int = 2, compile_only: bool = False,
          peak_tflops: float | None = None) -> BenchResult:
    """Compile (and unless compile_only, time) the config's train step; see the module docstring."""
    from jaxlm.train.fit import step_flops_per_token
    jsteps, mcfg, mesh = build_steps(cfg)
    per_call = bench_steps_per_call(cfg)
    t0 = time.perf_counter()
    compiled = lower_and_compile(cfg, jsteps, mesh, per_call)
    compile_s = time.perf_counter() - t0
    B, T = cfg.train.batch_size, cfg.data.seq_len
    flops = step_flops_per_token(jsteps, task_for(cfg.train.task)(), mcfg, T)
    params = jsteps.abstract_state.params
    n_params = count_params(params)
    trained = count_params(jsteps.layout.split(params)[0])  # (everything without LoRA)
    res = BenchResult(
        params=n_params, trainable_params=trained, devices=mesh.size, mesh=dict(mesh.shape),
        dtype=compute_dtype_name(mcfg), attention=attention_impl(mcfg), remat=mcfg.remat,
        steps_per_call=per_call, tokens_per_step=B * T,
        flops_per_step=flops * B * T,
        compile_s=compile_s, memory=memory_stats(compiled), shardings=sharding_summary(jsteps))
    if compile_only:
        return res
    with use_mesh(mesh, cfg.mesh.rules):
        state = jsteps.init()
        host = random_lm_batch(cfg, mcfg.vocab_size)
        if per_call > 1:  # calls of per_call steps, as the trainer makes them
            batch = put_batch(stack_batches([host] * per_call, per_call),
                              jsteps.stacked_sharding)
            count = np.int32(per_call)

            def call(s):
                s, m = compiled(s, batch, count)
                return s, m, {k: v[per_call - 1] for k, v in m.items()}
        else:
            batch = put_batch(host, jsteps.batch_sharding)

            def call(s):
                s, m = compiled(s, batch)
                return s, m, m
        calls = -(-steps // per_call)  # whole calls: at least `steps` steps
        for _ in range(max(-(-warmup // per_call), 1)):
            state, _, last = call(state)
            res.losses.append(float(last["loss"]))
        t0 = time.perf_counter()
        in_flight = InFlight()  # the trainer's bounded queue (see jaxlm.train.trainer)
        for _ in range(calls):
            state, metrics, last = call(state)
            in_flight.add(metrics)
        res.losses.append(float(last["loss"]))  # blocks until the last step is done
        res.step_s = (time.perf_counter() - t0) / (calls * per_call)
    res.tokens_per_s = res.tokens_per_step / res.step_s
    if peak_tflops:
        res.peak_flops_per_device, res.peak_source = peak_tflops * 1e12, "given"
    else:
        res.peak_flops_per_device = measure_peak_flops(res.dtype)
        res.peak_source = f"measured ({res.dtype} matmul, 1 device)"
    res.mfu = res.flops_per_step / res.step_s / (res.peak_flops_per_device * mesh.size)
    return res


def format_result(r: BenchResult, show_shardings: int = 8) -> str:
    """A human-readable report."""
    gib = 2.0 ** 30
    mesh = " x ".join(f"{k}={v}" for k, v in r.mesh.items())
    trained = ("" if r.trainable_params == r.params else
               f" ({r.trainable_params / 1e6:,.3f}M trained: LoRA adapters and heads)")
    lines = [f"model: {r.params / 1e6:,.1f}M parameters{trained}, compute {r.dtype}, attention "
             f"{r.attention}, remat {r.remat}",
             f"mesh: {mesh} ({r.devices} devices); {r.tokens_per_step:,} tokens/step, "
             f"{r.flops_per_step / 1e9:,.1f} GFLOP/step, {r.steps_per_call} steps per call",
             f"compile: {r.compile_s:.1f}s"]
    if r.memory:
        m = r.memory
        lines.append(f"memory per device: arguments {m['argument'] / gib:.3f} GiB (parameters + "
                     f"optimizer state + batch), outputs {m['output'] / gib:.3f} GiB (aliased "
                     f"{m['alias'] / gib:.3f}), temporaries {m['temp'] / gib:.3f} GiB, peak about "
                     f"{m['total'] / gib:.3f} GiB")
    for name, spec in list(r.shardings.items())[:show_shardings]:
        lines.append(f"  sharding {name}: {spec}")
    if r.step_s is not None:
        lines.append(f"step: {r.step_s * 1e3:,.1f} ms, {r.tokens_per_s:,.0f} tokens/s, "
                     f"{r.flops_per_step / r.step_s / r.devices / 1e12:,.3f} TFLOP/s per device")
        lines.append(f"MFU: {r.mfu:.1%} of {r.peak_flops_per_device / 1e12:,.3f} TFLOP/s per "
                     f"device ({r.peak_source})")
        lines.append(f"losses: first {r.losses[0]:.4f}, last {r.losses[-1]:.4f}")
    return "\n".join(lines)
