"""Where the train step of train_step_vs_torch.py's 13.8M GPT spends its time, on this machine.

Prints, for the chosen precision:
- the compile time, the median step time and, from getrusage, the page faults and kernel (system)
  CPU time per step and the peak resident memory
  (how the host-memory problem fixed by `jaxlm.host_memory` was found; run once with
  JAXLM_HOST_MALLOC=system to see it);
- a `jax.profiler` trace of --trace-steps steps summed per HLO fusion and grouped: matmul fusions
  (those containing a dot) against everything else, then the largest groups by fusion kind and
  JAX op name. Fusions can overlap in time on several threads, so the sum exceeds the wall time;
  read the shares, not the absolute numbers.

    .venv/bin/python benchmarks/profile_train_step.py [--dtype bfloat16] [--attention xla] [--top 25]
"""
from __future__ import annotations

import argparse
import collections
import glob
import gzip
import json
import os
import re
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))


def fusion_table(hlo_text: str) -> dict[str, tuple[bool, str]]:
    """Instruction name -> (its fused computation contains a dot, its JAX op name)."""
    has_dot, current = {}, None
    for line in hlo_text.splitlines():
        head = re.match(r"^%?([\w.\-]+) \(.*\{$", line)
        if head:
            current = head.group(1)
            has_dot[current] = False
        elif current and " dot(" in line:
            has_dot[current] = True
    table = {}
    for line in hlo_text.splitlines():
        m = re.match(r"\s*(?:ROOT )?%?([\w.\-]+) = \S+ \w+\(", line)
        if not m:
            continue
        calls = re.search(r"calls=%?([\w.\-]+)", line)
        op = re.search(r'op_name="([^"]*)"', line)
        table[m.group(1)] = (bool(calls and has_dot.get(calls.group(1))),
                             re.sub(r"^jit\([^)]*\)/", "", op.group(1)) if op else "")
    return table


def op_times(trace_dir: str, steps: int) -> dict[str, float]:
    """Milliseconds per step of every traced event, by name."""
    path = glob.glob(f"{trace_dir}/**/*.trace.json.gz", recursive=True)[0]
    totals: dict[str, float] = collections.Counter()
    for e in json.load(gzip.open(path))["traceEvents"]:
        if e.get("ph") == "X":
            totals[e["name"]] += e["dur"] / 1e3 / steps
    return totals


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dtype", choices=("float32", "bfloat16"), default="bfloat16")
    ap.add_argument("--steps", type=int, default=10, help="timed steps (after 5 warm-up steps)")
    ap.add_argument("--trace-steps", type=int, default=3)
    ap.add_argument("--top", type=int, default=25)
    ap.add_argument("--vocab", type=int, default=8000)
    ap.add_argument("--attention", default="auto", help="model.attention_impl (auto: blockwise "
                    "on CPU; xla: jax.nn.dot_product_attention, the default before session 3)")
    args = ap.parse_args()
    os.environ["JAX_PLATFORMS"] = "cpu"
    from jaxlm.host_memory import reuse_freed_host_memory
    reuse_freed_host_memory()  # before JAX starts its backend threads
    import jax

    from jaxlm.host_memory import applied
    from jaxlm.sharding import use_mesh
    from train_step_vs_torch import jaxlm_steps

    steps, state, b, _, mesh = jaxlm_steps(args.vocab, args.dtype, args.attention)
    with use_mesh(mesh):
        t0 = time.perf_counter()
        compiled = steps.train.lower(state, b).compile()
        compile_s = time.perf_counter() - t0
        for _ in range(5):
            state, m = steps.train(state, b)
        jax.block_until_ready(m)
        times, faults, sys_s = [], [], []
        for _ in range(args.steps):
            r0, t0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
            state, m = steps.train(state, b)
            jax.block_until_ready(m)
            r1 = resource.getrusage(resource.RUSAGE_SELF)
            times.append(time.perf_counter() - t0)
            faults.append(r1.ru_minflt - r0.ru_minflt)
            sys_s.append(r1.ru_stime - r0.ru_stime)
        temp = compiled.memory_analysis().temp_size_in_bytes
        print(f"{args.dtype}, attention {args.attention}: step {statistics.median(times) * 1e3:.1f} ms (median of "
              f"{args.steps}); page faults per step {statistics.median(faults):,.0f} "
              f"({statistics.median(faults) * 4096 / 1e6:.0f} MB); kernel time per step "
              f"{statistics.median(sys_s) * 1e3:.1f} ms; temporary buffer {temp / 1e6:.0f} MB; "
              f"host malloc: {'reuse' if applied() else 'system'}; "
              f"compile {compile_s:.1f} s; peak resident memory "
              f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6:.2f} GB")
        with tempfile.TemporaryDirectory() as trace_dir:
            jax.profiler.start_trace(trace_dir, create_perfetto_trace=True)
            for _ in range(args.trace_steps):
                state, m = steps.train(state, b)
                jax.block_until_ready(m)
            jax.profiler.stop_trace()
            per_event = op_times(trace_dir, args.trace_steps)
    table = fusion_table(compiled.as_text())
    kinds: dict[str, float] = collections.Counter()
    groups: dict[tuple[str, str], float] = collections.Counter()
    for name, ms in per_event.items():
        if name not in table:
            continue  # runtime events, not HLO instructions
        is_dot, op = table[name]
        kind = "matmul" if is_dot else re.sub(r"[._]?\d+$", "", name.split("_fusion")[0])
        kinds["matmul" if is_dot else "other"] += ms
        groups[(kind, op[:80])] += ms
    total = sum(kinds.values())
    print(f"profiled op time per step {total:.1f} ms: matmul fusions {kinds['matmul']:.1f} ms "
          f"({kinds['matmul'] / total:.0%}), everything else {kinds['other']:.1f} ms")
    for (kind, op), ms in groups.most_common(args.top):
        print(f"{ms:8.1f} ms  {kind:24s} {op}")


if __name__ == "__main__":
    main()
