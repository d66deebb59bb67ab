"""What several train steps per call (train.steps_per_call) buy a whole job: the same
`jaxlm pretrain` run with one step per call and with the auto value, alternating on the same
machine, each from an empty compilation cache, as its own process (wall time and peak resident
set through measure_child.py, as benchmarks/headline.py measures jobs). Prints each run, the
medians and the ratio (one step per call / several: > 1 means several per call is faster), and
the final validation losses, which must agree.

    .venv/bin/python benchmarks/steps_per_call.py [--config configs/shakespeare_char.yaml]
           [--pairs 2] [--per-call 0] [--set KEY=VALUE ...]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def run_job(config: str, per_call: int, sets: list[str], work: Path, tag: str) -> dict:
    """One whole `jaxlm pretrain` with train.steps_per_call=per_call: wall, peak RSS, summary."""
    run, out = work / f"run_{tag}", work / f"measure_{tag}.json"
    cmd = [str(REPO / ".venv/bin/jaxlm"), "pretrain", "--config", config, "--run", str(run),
           "--quiet", "--set", f"train.steps_per_call={per_call}"]
    for s in sets:
        cmd += ["--set", s]
    env = {**os.environ, "JAXLM_COMPILATION_CACHE": "off"}
    subprocess.run([sys.executable, "-S", str(REPO / "benchmarks/measure_child.py"), str(out),
                    *cmd], check=True, cwd=REPO, env=env, stdout=subprocess.DEVNULL)
    measured = json.loads(out.read_text())
    if measured["rc"] != 0:
        raise SystemExit(f"jaxlm pretrain failed (exit {measured['rc']}): {' '.join(cmd)}")
    summary = json.loads((run / "summary.json").read_text())
    val = summary.get("validation") or summary["val"]
    return {"wall_s": measured["wall_s"], "rss_mib": measured["peak_rss_mib"],
            "val_loss": val["loss"], "tokens_per_s": summary["tokens_per_s"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="configs/shakespeare_char.yaml")
    ap.add_argument("--pairs", type=int, default=2)
    ap.add_argument("--per-call", type=int, default=0,
                    help="the several-steps side's train.steps_per_call (0: auto)")
    ap.add_argument("--set", dest="sets", action="append", default=[])
    args = ap.parse_args()
    sides = {"one": 1, "several": args.per_call}
    results: dict[str, list[dict]] = {k: [] for k in sides}
    with tempfile.TemporaryDirectory(prefix="jaxlm_steps_per_call_") as tmp:
        for pair in range(args.pairs):
            for side, k in sides.items():
                r = run_job(args.config, k, args.sets, Path(tmp), f"{side}{pair}")
                results[side].append(r)
                print(f"pair {pair + 1} {side:8s} (steps_per_call={k or 'auto'}): "
                      f"{r['wall_s']:7.1f} s, {r['rss_mib']:5.0f} MiB, "
                      f"{r['tokens_per_s']:8,.0f} tok/s in the loop, val loss "
                      f"{r['val_loss']:.4f}", flush=True)
    med = {s: {k: statistics.median(r[k] for r in rs) for k in ("wall_s", "rss_mib")}
           for s, rs in results.items()}
    one, several = med["one"]["wall_s"], med["several"]["wall_s"]
    print(f"median wall: one step per call {one:.1f} s, several {several:.1f} s: "
          f"{one / several:.2f}x faster; peak RSS {med['one']['rss_mib']:.0f} / "
          f"{med['several']['rss_mib']:.0f} MiB")
    losses = {s: sorted({round(r["val_loss"], 4) for r in rs}) for s, rs in results.items()}
    print(f"final validation loss: one step per call {losses['one']}, several "
          f"{losses['several']}")


if __name__ == "__main__":
    main()
