"""Host malloc settings for a small model's train step: glibc's defaults, jaxlm's reuse with
threads keeping their own arenas, and reuse from one arena (`jaxlm.host_memory`).

For the main job's model and batch (configs/shakespeare_char.yaml), each setting runs in its own
process, alternately, --rounds times: the time to the first finished step (init and train-step
compilation included), the median step time over --steps steps, page faults per step and peak
resident memory. Ratios are against one arena (what `jaxlm pretrain` used before it chose by
the step's size). Then, for the main job and the 13.8M GPT of train_step_vs_torch.py, the
temporary buffer XLA assigned to the step against `jaxlm.commands.step_buffer_estimate`, which
decides between the two reuse settings before JAX starts.

    .venv/bin/python benchmarks/host_malloc_arenas.py [--rounds 2] [--steps 200]
"""
from __future__ import annotations

import argparse
import statistics
from pathlib import Path

from measure_child import json_child

REPO = Path(__file__).resolve().parents[1]
SETTINGS = ("one arena", "thread arenas", "system")

CHILD = r"""
import json, os, resource, sys, time
setting, steps = sys.argv[1], int(sys.argv[2])
os.environ.pop("JAXLM_HOST_MALLOC", None)  # the setting under test, whatever the caller's
sys.path.insert(0, REPO)
from jaxlm.host_memory import reuse_freed_host_memory
if setting != "system":
    assert reuse_freed_host_memory(one_arena=setting == "one arena")
import dataclasses
import jax
jax.config.update("jax_enable_compilation_cache", False)
from jaxlm.config import load_config
from jaxlm.sharding import use_mesh
from jaxlm.train.bench import build_steps, random_lm_batch
from jaxlm.train.steps import put_batch
cfg = load_config(os.path.join(REPO, "configs/shakespeare_char.yaml"))
cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, vocab_size=65))
t0 = time.perf_counter()
compiled, model_cfg, mesh = build_steps(cfg)  # as `jaxlm pretrain` builds them
with use_mesh(mesh, cfg.mesh.rules):
    state = compiled.init()
    batch = put_batch(random_lm_batch(cfg, 65), compiled.batch_sharding)
    state, m = compiled.train(state, batch)
    jax.block_until_ready(state)
    first = time.perf_counter() - t0
    times = []
    faults0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(steps):
        t = time.perf_counter()
        state, m = compiled.train(state, batch)
        jax.block_until_ready(m["loss"])
        times.append(time.perf_counter() - t)
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults0
ru = resource.getrusage(resource.RUSAGE_SELF)
print(json.dumps({"first_step_s": first, "step_s": sorted(times)[len(times) // 2],
                  "faults_per_step": faults / steps, "peak_rss_mb": ru.ru_maxrss / 1024}))
"""

TEMP = r"""
import dataclasses, json, sys
sys.path.insert(0, REPO)
from jaxlm.commands import step_buffer_estimate
from jaxlm.config import config_from_dict, load_config
from jaxlm.train.bench import bench
sys.path.insert(0, REPO + "/benchmarks")
from train_step_vs_torch import jaxlm_config
out = {}
for name, cfg in (("main job", load_config(REPO + "/configs/shakespeare_char.yaml")),
                  ("13.8M GPT", config_from_dict(jaxlm_config(8000, "float32")))):
    estimate = step_buffer_estimate(cfg)  # from the config as written, as the command does
    if not cfg.model.vocab_size:  # the main job's character vocabulary
        cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, vocab_size=65))
    temp = bench(cfg, compile_only=True).memory["temp"]  # what XLA assigned, nothing run
    out[name] = {"xla_temp_mb": temp / 2**20, "estimate_mb": estimate / 2**20}
print(json.dumps(out))
"""


def child(code: str, *args: str) -> dict:
    """`code` (REPO: this repository) in a fresh CPU process: malloc is set before JAX starts."""
    return json_child(code.replace("REPO", repr(str(REPO))), *args)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--steps", type=int, default=200)
    args = ap.parse_args()
    runs: dict[str, list[dict]] = {s: [] for s in SETTINGS}
    for r in range(args.rounds):
        for s in SETTINGS:
            runs[s].append(child(CHILD, s, str(args.steps)))
            print(f"round {r + 1} {s}: {runs[s][-1]}", flush=True)
    med = {s: {k: statistics.median(x[k] for x in runs[s]) for k in runs[s][0]} for s in SETTINGS}
    base = med["one arena"]
    print(f"\nmain job's train step, medians of {args.rounds} processes each "
          f"({args.steps} steps):")
    print("| setting | first step (init + compile) | step | page faults / step | peak RSS |")
    print("|---|---|---|---|---|")
    for s in SETTINGS:
        m = med[s]
        print(f"| {s} | {m['first_step_s']:.2f} s ({base['first_step_s'] / m['first_step_s']:.2f}x)"
              f" | {m['step_s'] * 1e3:.1f} ms ({base['step_s'] / m['step_s']:.2f}x) | "
              f"{m['faults_per_step']:.0f} | {m['peak_rss_mb']:.0f} MB |")
    print("(ratios: one arena's time / the setting's; above 1 is faster)")
    temps = child(TEMP)
    print("\nthe step's temporary buffer: XLA's against the estimate that picks the setting")
    for name, t in temps.items():
        print(f"  {name}: XLA {t['xla_temp_mb']:.1f} MB, estimate {t['estimate_mb']:.1f} MB "
              f"(XLA / estimate {t['xla_temp_mb'] / t['estimate_mb']:.2f})")


if __name__ == "__main__":
    main()
