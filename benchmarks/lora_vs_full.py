"""LoRA against full fine-tuning on one config: trainable parameters, optimizer-state memory per
device, the compiled train step's memory (`memory_analysis()`), checkpoint size on disk and step
time, measured side by side in one process.

For each of the two settings (finetune.lora.rank 0 and the config's rank) it runs the trainer's
own setup (`jaxlm.train.fit.prepare` + `compile_task_steps`: the data, tokenizer, pretrained
checkpoint and model of `jaxlm finetune`) in a scratch run directory, compiles the train step on a
real training batch, times --steps steps after one warm-up, then writes a checkpoint of the trained
state as the trainer does (for LoRA also the frozen base, once per run): after training, so the
optimizer moments are not the zeros of step 0, which compress to nothing. Steps alternate between the two
settings for --rounds rounds (the machine may be shared: medians are printed).

    .venv/bin/python benchmarks/lora_vs_full.py --config configs/minilm_sst2_lora.yaml \\
        --init-from hf:DIR [--rounds 5] [--steps 3] [--out runs/minilm_sst2_lora/bench.json]
"""
from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import jax
import numpy as np


def _bytes_per_device(tree, shardings) -> int:
    """Bytes one device holds of `tree` (abstract arrays) laid out by `shardings`."""
    total = 0
    for a, s in zip(jax.tree.leaves(tree), jax.tree.leaves(shardings)):
        shape = s.shard_shape(a.shape) if a.shape else ()
        total += int(np.prod(shape)) * a.dtype.itemsize
    return total


def _du(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.exists() else 0


def _setting(cfg_path: str, init_from: str, rank: int, run_dir: Path) -> dict:
    from jaxlm.config import load_config
    from jaxlm.sharding import put_batch, use_mesh
    from jaxlm.train.fit import compile_task_steps, prepare
    from jaxlm.train.flops import count_params
    from jaxlm.train.frozen import save_frozen

    cfg = load_config(cfg_path, [f"finetune.init_from={init_from}",
                                 f"finetune.lora.rank={rank}"])
    s = prepare(cfg, str(run_dir), overwrite=True)
    with use_mesh(s.mesh, cfg.mesh.rules):
        steps = compile_task_steps(s)
        host = next(iter(s.task.train_batches(cfg, s.tokenizer, s.sources)))
        batch = put_batch(host, steps.batch_sharding)
        compiled = steps.train.lower(steps.init(), batch).compile()
        mem = compiled.memory_analysis()
        state = steps.init()
        if steps.layout.trained is not None:
            save_frozen(s.run.path, steps.layout, state)
        state, m = compiled(state, batch)
        float(m["loss"])
    trained = steps.layout.split(steps.abstract_state.params)[0]
    return {"compiled": compiled, "state": state, "batch": batch, "mesh": s.mesh,
            "rules": cfg.mesh.rules, "run": s.run, "layout": steps.layout, "report": {
                "lora_rank": rank, "params": count_params(steps.abstract_state.params),
                "trainable_params": count_params(trained),
                "opt_state_bytes_per_device": _bytes_per_device(
                    steps.abstract_state.opt_state, steps.state_sharding.opt_state),
                "step_argument_bytes": int(mem.argument_size_in_bytes),
                "step_temp_bytes": int(mem.temp_size_in_bytes),
                "step_output_bytes": int(mem.output_size_in_bytes),
                "base_bytes_once_per_run": _du(s.run.path / "base"),
                "step_s": []}}


def _checkpoint_bytes(x: dict) -> int:
    """Bytes on disk of one checkpoint of the (trained) state, as the trainer writes it."""
    ckpt = x["run"].checkpointer(keep=1, async_save=False)
    ckpt.save(1, x["layout"].to_checkpoint(x["state"]), {"iterator": None})
    ckpt.close()
    return _du(x["run"].checkpoints_dir / "1")


def _time(x: dict, n: int) -> float:
    from jaxlm.sharding import use_mesh

    with use_mesh(x["mesh"], x["rules"]):
        t0 = time.perf_counter()
        for _ in range(n):
            x["state"], m = x["compiled"](x["state"], x["batch"])
        float(m["loss"])
    return (time.perf_counter() - t0) / n


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", required=True)
    p.add_argument("--init-from", required=True)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--out", default="")
    args = p.parse_args()
    from jaxlm.config import load_config
    rank = load_config(args.config).finetune.lora.rank
    with tempfile.TemporaryDirectory() as tmp:
        runs = {name: _setting(args.config, args.init_from, r, Path(tmp) / name)
                for name, r in (("full", 0), ("lora", rank))}
        for _ in range(args.rounds):
            for x in runs.values():
                x["report"]["step_s"].append(_time(x, args.steps))
        for x in runs.values():
            x["report"]["checkpoint_bytes"] = _checkpoint_bytes(x)
    out = {}
    for name, x in runs.items():
        r = x["report"]
        r["step_s_median"] = statistics.median(r["step_s"])
        out[name] = r
        print(f"{name:>4}: trainable {r['trainable_params']:,} of {r['params']:,} params; "
              f"optimizer state {r['opt_state_bytes_per_device'] / 2**20:.1f} MiB/device; step "
              f"arguments {r['step_argument_bytes'] / 2**20:.1f} MiB, temporaries "
              f"{r['step_temp_bytes'] / 2**20:.1f} MiB; checkpoint "
              f"{r['checkpoint_bytes'] / 2**20:.1f} MiB (+ base "
              f"{r['base_bytes_once_per_run'] / 2**20:.1f} MiB once); step "
              f"{r['step_s_median']:.3f} s (median of {args.rounds} x {args.steps})")
    if args.out:
        Path(args.out).write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
