"""MFU of the 1B Llama train step on the GPU(s) of this machine, bf16, a few dozen steps.

Runs `jaxlm bench` (the real `compile_steps` train step, random tokens) on
configs/llama_1b_gpu.yaml, scaled to the devices present: FSDP over every GPU, --rows-per-gpu rows
of 2048 tokens per GPU. Prints per-device memory of the compiled step, step time, tokens/s and MFU
against both a measured bf16 matmul peak and the datasheet peak (--peak-tflops, default 989: H100 /
H200 SXM dense bf16). Needs jax with CUDA (pip install 'jaxlm[cuda]').

    python benchmarks/llama_1b_gpu_mfu.py [--steps 30] [--rows-per-gpu 16] [--layers 16]
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--rows-per-gpu", type=int, default=16, help="2048-token rows per GPU")
    ap.add_argument("--layers", type=int, default=16, help="fewer to fit a smaller GPU")
    ap.add_argument("--remat", default="dots_saveable")
    ap.add_argument("--peak-tflops", type=float, default=989.0, help="datasheet bf16 peak per GPU")
    ap.add_argument("--set", dest="overrides", action="append", default=[])
    ap.add_argument("--json", help="also write the result here")
    args = ap.parse_args(argv)

    import jax

    from jaxlm.config import load_config
    from jaxlm.train.bench import bench, format_result

    n = jax.device_count()
    print(f"devices: {n} x {jax.devices()[0].device_kind} ({jax.default_backend()})")
    cfg = load_config(REPO / "configs/llama_1b_gpu.yaml", [
        f"train.batch_size={args.rows_per_gpu * n}", f"model.num_layers={args.layers}",
        f"model.remat={args.remat}", "mesh.data=1", f"mesh.fsdp={n}", *args.overrides])
    measured = bench(cfg, steps=args.steps, warmup=args.warmup)
    print(format_result(measured))
    datasheet_mfu = measured.flops_per_step / measured.step_s / (args.peak_tflops * 1e12 * n)
    print(f"MFU against the datasheet peak ({args.peak_tflops:g} TFLOP/s per GPU): "
          f"{datasheet_mfu:.1%}")
    if args.json:
        out = {**dataclasses.asdict(measured), "datasheet_peak_tflops": args.peak_tflops,
               "datasheet_mfu": datasheet_mfu, "device_kind": jax.devices()[0].device_kind}
        Path(args.json).write_text(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
