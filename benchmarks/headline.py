"""The headline table: each job users run, measured whole as they run it, side by side with what
they would run instead, on this machine, in one command (issue 19).

Jobs (benchmarks/headline_jobs.py):
  a. `jaxlm pretrain --config configs/shakespeare_char.yaml` vs nanoGPT's train.py protocol
     (benchmarks/nanogpt_reference.py); quality: final validation loss, every validation token;
  b. `jaxlm finetune --config configs/minilm_sst2.yaml` vs the `transformers` reference
     (benchmarks/minilm_sst2_torch_reference.py --seeds 0); quality: test accuracy;
  c. `jaxlm generate` (main job's run, greedy) vs `transformers` `generate` on the same weights
     (`jaxlm export`); quality: token agreement of the two outputs;
  d. the train step, float32 and bf16, vs PyTorch (benchmarks/train_step_vs_torch.py), with MFU
     against the measured matmul peak of each dtype.

Jobs a-c run as subprocesses, `--pairs` times each, jaxlm and peer alternating (jaxlm first in
even pairs, the peer first in odd ones). Wall: from just before the spawn to the exit (nanoGPT's
side: to the end of its loop, as train.py ends there; its full-validation score, computed only so
the two losses compare, comes after its clock stops). Peak memory: the kernel's peak resident set
of each process (os.wait4). Medians over the pairs. Every process starts with empty caches
(a fresh $XDG_CACHE_HOME and jaxlm token cache) unless --warm-caches. The table (markdown) is
printed and written next to the JSON, which holds every raw measurement.

Run it on a quiet machine: PyTorch's OpenMP threads busy-wait by default (nanoGPT's train.py
leaves that as it is), and on a loaded machine that slows the peers many times over; the table
warns when the load average was high. `--env OMP_WAIT_POLICY=PASSIVE` (given to both sides, and
printed with the table) takes that out when the machine cannot be quiet.

    .venv/bin/python benchmarks/headline.py [--jobs a,b,c,d] [--pairs 2]
        [--out runs/headline/headline.json]
    .venv/bin/python benchmarks/headline.py --quick --jobs a --pairs 1   # tests the harness only
"""
from __future__ import annotations

import argparse
import datetime as dt
import importlib.metadata as md
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from statistics import median
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from headline_jobs import (REPO, SIDES, Context, GenerateJob, Job, MainJob,  # noqa: E402
                           MiniLMJob, StepJob, spread, child_env, log_tail,
                           run_measured)

PAIR_JOBS = {"a": MainJob, "b": MiniLMJob, "c": GenerateJob}
PACKAGES = ("jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "grain", "tokenizers", "numpy",
            "torch", "transformers")


def machine() -> dict[str, Any]:
    """CPU model, cores and memory: figures only compare within one machine."""
    cpuinfo = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    model = next((ln.split(":", 1)[1].strip() for ln in cpuinfo.splitlines()
                  if ln.startswith("model name")), platform.processor() or "unknown")
    flags = next((ln.split(":", 1)[1].split() for ln in cpuinfo.splitlines()
                  if ln.startswith("flags")), [])
    meminfo = Path("/proc/meminfo").read_text() if Path("/proc/meminfo").exists() else ""
    mem_kib = next((int(ln.split()[1]) for ln in meminfo.splitlines()
                    if ln.startswith("MemTotal")), 0)
    return {"cpu": model, "cores": os.cpu_count(), "usable_cores": len(os.sched_getaffinity(0)),
            "memory_gib": round(mem_kib / 2**20, 1), "amx": any(f.startswith("amx") for f in flags),
            "avx512_bf16": "avx512_bf16" in flags, "kernel": platform.release(),
            "hostname": platform.node()}


def versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            out[name] = md.version(name)
        except md.PackageNotFoundError:
            out[name] = "-"

    def git(*args: str) -> str:
        r = subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True)
        return r.stdout.strip()

    dirty = git("status", "--porcelain", "--untracked-files=no")
    out["jaxlm"] = git("rev-parse", "--short", "HEAD") + (" + uncommitted changes" if dirty else "")
    return out


def run_pairs(job: Job, pairs: int, env_for, log=print, warmup: bool = False) -> dict[str, Any]:
    """`pairs` alternating jaxlm/peer runs of one job (after one unmeasured run of each side
    with `warmup`, to fill shared caches); every raw measurement."""
    setup = job.setup(env_for(f"{job.key}_setup"))  # may retitle the job (quick mode)
    record: dict[str, Any] = {"title": job.title, "peer_title": job.peer_title, "setup": setup,
                              "pairs": [], "warmup": {}}
    for side in SIDES if warmup else ():
        m = run_measured(job.command(side, "warmup"), job.dir / f"{side}_warmup.log",
                         env_for(f"{job.key}_{side}_warmup"))
        record["warmup"][side] = m
        job.cleanup(side, "warmup")
        log(f"  job {job.key} warm-up {side}: rc {m['rc']}, wall {m['wall_s']:.1f}s", flush=True)
    for i in range(pairs):
        order = SIDES if i % 2 == 0 else SIDES[::-1]
        pair: dict[str, Any] = {"order": list(order)}
        for side in order:
            tag = f"{i}"
            measured = run_measured(job.command(side, tag), job.dir / f"{side}_{tag}.log",
                                    env_for(f"{job.key}_{side}_{tag}"))
            if measured["rc"] != 0:
                raise RuntimeError(f"job {job.key} {side} (pair {i + 1}) failed, rc "
                                   f"{measured['rc']}: {' '.join(measured['cmd'])}\n"
                                   f"{log_tail(measured['log'])}")
            pair[side] = {**measured, **job.read(side, tag, measured)}
            job.cleanup(side, tag)
            log(f"  job {job.key} pair {i + 1}/{pairs} {side}: wall {pair[side]['job_s']:.1f}s, "
                f"peak RSS {measured['peak_rss_mib']:.0f} MiB, quality "
                f"{pair[side]['quality']:.4f}", flush=True)
        pair["compare"] = job.compare(pair["jaxlm"], pair["peer"])
        record["pairs"].append(pair)
    ps = record["pairs"]
    med = {s: {"job_s": median([p[s]["job_s"] for p in ps]),
               "peak_rss_mib": median([p[s]["peak_rss_mib"] for p in ps]),
               "quality": median([p[s]["quality"] for p in ps])} for s in SIDES}
    record["median"] = med
    record["speed_ratio"] = med["peer"]["job_s"] / med["jaxlm"]["job_s"]
    record["memory_ratio"] = med["jaxlm"]["peak_rss_mib"] / med["peer"]["peak_rss_mib"]
    record["quality_cells"] = list(job.quality_cells(ps))
    for p in ps:  # token lists are long; the agreement is kept
        for s in SIDES:
            p[s].pop("ids", None)
    return record


HEADER = ("| job | jaxlm | peer | time: jaxlm | time: peer | speed (peer / jaxlm) | "
          "peak RSS: jaxlm | peak RSS: peer | memory (jaxlm / peer) | quality: jaxlm | "
          "quality: peer |\n|---|---|---|---:|---:|---:|---:|---:|---:|---|---|")


def table(report: dict[str, Any]) -> str:
    """The markdown block for the README: context lines, the table, how to read it."""
    m, v, jobs = report["machine"], report["versions"], report["jobs"]
    lines = []
    if report["quick"]:
        lines += ["**QUICK MODE: shortened jobs to test the harness. NOT THE HEADLINE.**", ""]
    lines += [f"Machine: {m['cpu']}, {m['usable_cores']} cores, {m['memory_gib']} GiB "
              f"(AMX: {'yes' if m['amx'] else 'no'}); load average {report['load_start'][0]:.1f} "
              f"at start, {report['load_end'][0]:.1f} at end; {report['started']} UTC, "
              f"{report['elapsed_s'] / 60:.0f} min.",
              "Versions: " + ", ".join(f"{k} {x}" for k, x in v.items()) + "."]
    if report.get("env"):
        lines.append("Environment of every job, both sides: " + ", ".join(
            f"`{e}`" for e in report["env"]) + ".")
    load = max(report["load_start"][0], report["load_end"][0])
    if load > 0.75 * m["usable_cores"]:
        lines.append(f"**Warning: the machine was busy (load average up to {load:.1f} on "
                     f"{m['usable_cores']} cores): these timings are not a headline.**")
    lines += ["", HEADER]
    for key, r in jobs.items():
        if key == "d":
            for dtype, row in r["rows"].items():
                lines.append(
                    f"| {r['title']}, {dtype} | jaxlm | {r['peer_title']} | "
                    f"{row['jaxlm_tokens_per_s']:,.0f} tok/s | {row['torch_tokens_per_s']:,.0f} "
                    f"tok/s | **{row['ratio']:.2f}×** | | | | MFU {row['jaxlm_mfu']:.1%} | "
                    f"MFU {row['torch_mfu']:.1%} (peak {row['peak_gflops']:,.0f} GFLOP/s, "
                    f"{dtype}) |")
            continue
        def cell(side: str, what: str, fmt: str, unit: str) -> str:
            return spread([p[side][what] for p in r["pairs"]], fmt) + f" {unit}"

        qj, qp = r["quality_cells"]
        cells = [r["title"], "jaxlm", r["peer_title"], cell("jaxlm", "job_s", ".1f", "s"),
                 cell("peer", "job_s", ".1f", "s"), f"**{r['speed_ratio']:.2f}×**",
                 cell("jaxlm", "peak_rss_mib", ",.0f", "MiB"),
                 cell("peer", "peak_rss_mib", ",.0f", "MiB"), f"**{r['memory_ratio']:.2f}×**",
                 qj, qp]
        lines.append("| " + " | ".join(cells) + " |")
    notes = []
    if set(jobs) - {"d"}:
        notes.append(
            f"Whole processes as a user runs them, {report['pairs']} pair(s), jaxlm and the peer "
            "alternating (jaxlm first in odd pairs, the peer first in even ones); medians, ranges "
            "in brackets. Time: from the spawn to the exit"
            + (" (nanoGPT: to the end of its training loop, where train.py ends; the "
               "full-validation loss shown is scored after its clock stops)" if "a" in jobs
               else "")
            + ". Peak RSS: the kernel's peak resident set of each process (`os.wait4`). "
            "Speed > 1: jaxlm faster; memory < 1: jaxlm smaller. Caches: "
            + ("shared between runs (a user's rerun)." if report["warm_caches"] else
               "every process starts with empty ones."))
    if "d" in jobs:
        notes.append("Train step: one run of `benchmarks/train_step_vs_torch.py` (medians of its "
                     "alternating rounds); MFU against the matmul peak of the dtype measured by "
                     "jax in every round.")
    notes.append(f"Raw measurements: `{report['out']}` (`.venv/bin/python benchmarks/headline.py "
                 + " ".join(report["argv"]) + "`).")
    lines += ["", " ".join(notes)]
    return "\n".join(lines)


def parse_args(argv: list[str]) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--jobs", default="a,b,c,d", help="comma-separated subset of a,b,c,d")
    ap.add_argument("--pairs", type=int, default=2, help="alternating runs of each side (a-c)")
    ap.add_argument("--out", default="runs/headline/headline.json")
    ap.add_argument("--work", help="folder for the runs (default: a temporary one, removed "
                    "unless a job failed)")
    ap.add_argument("--new-tokens", type=int, default=500, help="job c: tokens to generate")
    ap.add_argument("--prompt", default="ROMEO:", help="job c's prompt")
    ap.add_argument("--step-rounds", type=int, default=5, help="job d: measured rounds")
    ap.add_argument("--warm-caches", action="store_true",
                    help="let the processes share one cache folder and run each side once, "
                         "unmeasured, before the pairs (a user's rerun); default: each process "
                         "starts with empty caches")
    ap.add_argument("--quick", action="store_true",
                    help="shortened jobs (a: --quick-steps on 64 kB of text; b: 4 steps; c: 50 "
                         "tokens; d: 1 round): to test the harness, never the headline")
    ap.add_argument("--quick-steps", type=int, default=20)
    ap.add_argument("--env", action="append", default=[], metavar="KEY=VALUE",
                    help="set in every job's environment, both sides (repeatable), e.g. "
                         "OMP_WAIT_POLICY=PASSIVE: on a busy machine PyTorch's OpenMP threads "
                         "spin-wait and the peers slow down many times; printed with the table")
    args = ap.parse_args(argv)
    if any("=" not in e for e in args.env):
        ap.error("--env takes KEY=VALUE")
    args.job_list = [j.strip() for j in args.jobs.split(",") if j.strip()]
    if not args.job_list or set(args.job_list) - {"a", "b", "c", "d"}:
        ap.error(f"--jobs takes a subset of a,b,c,d, got {args.jobs!r}")
    if args.pairs < 1:
        ap.error("--pairs must be at least 1")
    return args


def run_jobs(args: argparse.Namespace, ctx: Context, report: dict[str, Any]) -> list[str]:
    """Each job in turn, into report["jobs"]; a failed job is recorded and the rest still run.
    Returns the failed jobs' keys."""
    def env_for(name: str) -> dict[str, str]:
        env = child_env(ctx.work / ("cache" if args.warm_caches else f"caches/{name}"))
        env.update(e.split("=", 1) for e in args.env)
        return env

    failed = []
    for key in args.job_list:
        try:
            if key == "d":
                job = StepJob(ctx)
                print(f"job d: {' '.join(job.command())}", flush=True)
                report["jobs"]["d"] = {"title": job.title, "peer_title": job.peer_title,
                                       **job.run(env_for("d"))}
                continue
            job = PAIR_JOBS[key](ctx)
            print(f"job {key}: {job.title}", flush=True)
            report["jobs"][key] = run_pairs(job, args.pairs, env_for, warmup=args.warm_caches)
        except Exception as e:  # noqa: BLE001 (one broken job must not lose the others)
            print(f"job {key} FAILED: {e}", file=sys.stderr, flush=True)
            report.setdefault("errors", {})[key] = str(e)
            failed.append(key)
    return failed


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    jaxlm_exe = Path(sys.executable).with_name("jaxlm")
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="headline_"))
    ctx = Context(python=sys.executable, jaxlm=str(jaxlm_exe if jaxlm_exe.exists() else "jaxlm"),
                  work=work.resolve(), quick=args.quick, quick_steps=args.quick_steps,
                  new_tokens=50 if args.quick else args.new_tokens, prompt=args.prompt,
                  step_rounds=args.step_rounds)
    out = Path(args.out)
    report: dict[str, Any] = {
        "what": "benchmarks/headline.py", "quick": args.quick, "argv": argv, "out": str(out),
        "pairs": args.pairs, "warm_caches": args.warm_caches, "env": args.env,
        "machine": machine(),
        "versions": versions(), "load_start": os.getloadavg(),
        "started": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M"), "jobs": {}}
    if args.quick:
        print("QUICK MODE: shortened jobs, to test the harness; not the headline", flush=True)
    t0 = time.time()
    failed = run_jobs(args, ctx, report)
    report["load_end"] = os.getloadavg()
    report["elapsed_s"] = time.time() - t0
    text = table(report) if report["jobs"] else "(no job finished)"
    report["table_markdown"] = text
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2, default=str) + "\n")
    out.with_suffix(".md").write_text(text + "\n")
    print()
    print(text)
    print(f"\nwrote {out} and {out.with_suffix('.md')}")
    if failed:
        print(f"FAILED jobs: {', '.join(failed)}; their logs are in {work}", file=sys.stderr)
        return 1
    if not args.work:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
