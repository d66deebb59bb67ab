"""Pretraining on a corpus larger than memory: the main job's model on generated multi-gigabyte
text corpora, read through the token store (jaxlm.data.token_store).

    python benchmarks/large_corpus.py [--out runs/large_corpus] [--sizes 0.75,3] [--steps 300]
                                      [--keep]

For each size (in GB) it writes a corpus of Tiny Shakespeare lines drawn with a seeded RNG (so it
is not one text repeated), then runs `jaxlm pretrain --config configs/shakespeare_char.yaml` on
it as a subprocess (data.train=text:CORPUS, a short step count, validation on a small file drawn
the same way):

- run A, cold: streams the file to train the char tokenizer and tokenises it into the store;
- run B, warm: a new run with A's tokenizer, so it reuses the store (no tokenising);
- run C: B's command, SIGKILLed once a checkpoint past half-way is saved, then rerun to the end;
  its final train state must equal B's bit for bit (exact resume through the store);
- the input pipeline alone: the grain dataset `jaxlm pretrain` builds, iterated without the step,
  against the training run's tokens/s (target >= 10x);

and reports each run's wall time, the tokenising time jaxlm prints, and the peak resident memory
of the whole process (ru_maxrss from wait4; target < 2 GB whatever the corpus size). The corpus,
runs and token cache are deleted at the end unless --keep.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
CONFIG = REPO / "configs" / "shakespeare_char.yaml"


def make_corpus(path: Path, gigabytes: float, source: Path, seed: int = 0) -> float:
    """Write about `gigabytes` of lines drawn at random from `source`; seconds taken. An
    existing file of the right size is kept (--keep between invocations)."""
    target = int(gigabytes * 1e9)
    if path.is_file() and path.stat().st_size >= target:
        return 0.0
    t0 = time.perf_counter()
    lines = np.array(source.read_text(encoding="utf-8").splitlines(keepends=True), dtype=object)
    rng = np.random.default_rng(seed)
    written = 0
    tmp = path.with_suffix(".tmp")
    with tmp.open("w", encoding="utf-8") as f:
        while written < target:
            block = "".join(lines[rng.integers(0, len(lines), min(200_000, target // 30))])
            f.write(block)
            written += len(block.encode("utf-8"))
    tmp.replace(path)
    return time.perf_counter() - t0


def run_jaxlm(args: list[str], err: Path, kill_when=None) -> dict:
    """Run `jaxlm pretrain ARGS` to the end (or SIGKILL it once `kill_when()` holds): wall
    seconds, exit code and peak RSS (bytes) of the process."""
    cmd = [sys.executable, "-m", "jaxlm.cli", "pretrain", *args, "--quiet"]
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=1"}
    t0 = time.perf_counter()
    with err.open("w") as e:
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=e)
        killed = False
        if kill_when is not None:
            while proc.poll() is None and not kill_when():
                time.sleep(0.05)
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
                killed = True
        _, status, usage = os.wait4(proc.pid, 0)
    rc = os.waitstatus_to_exitcode(status)
    text = err.read_text()
    if rc != 0 and not killed:
        raise SystemExit(f"jaxlm failed ({rc}): {' '.join(cmd)}\n{text[-3000:]}")
    tokenised = [float(s) for s in re.findall(r"tokenised [\d,]+ tokens in ([\d.]+) s", text)]
    return {"wall_s": time.perf_counter() - t0, "rc": rc, "peak_rss": usage.ru_maxrss * 1024,
            "tokenise_s": sum(tokenised), "tokenised": bool(tokenised)}


def final_state(run_dir: Path, step: int) -> dict:
    """Every array of a run's checkpoint at `step`, as numpy."""
    import jax
    import orbax.checkpoint as ocp
    d = (run_dir / "checkpoints" / str(step) / "state").absolute()
    meta = ocp.PyTreeCheckpointHandler().metadata(d)
    target = jax.tree.map(lambda m: np.zeros((), np.float32), meta)
    restore = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), target)
    state = ocp.PyTreeCheckpointer().restore(d, args=ocp.args.PyTreeRestore(
        item=target, restore_args=restore))
    return {jax.tree_util.keystr(p): np.asarray(a)
            for p, a in jax.tree_util.tree_flatten_with_path(state)[0]}


def pipeline_tokens_per_s(sets: list[str], batches: int) -> tuple[float, float]:
    """Tokens/s of the training input pipeline alone (after its first batch), and the seconds
    from opening the sources (store reused) to the first batch."""
    from jaxlm.config import load_config
    from jaxlm.data.lm_data import lm_train_batches, load_lm_sources
    from jaxlm.data.tokenizer import TextTokenizer, load_tokenizer
    cfg = load_config(str(CONFIG), [s for s in sets if not s.startswith("train.steps=")]
                      + [f"train.steps={batches + 1}"])
    t_open = time.perf_counter()
    train, _ = load_lm_sources(cfg)
    tok = TextTokenizer(load_tokenizer(cfg.resolve_path(cfg.data.tokenizer.path)))
    it = iter(lm_train_batches(cfg, tok, train))
    first = next(it)
    t0 = time.perf_counter()
    open_s = t0 - t_open
    for _ in range(batches):
        next(it)
    return batches * first["inputs"].size / (time.perf_counter() - t0), open_s


def bench_size(gb: float, out: Path, steps: int, pipeline_batches: int, source: Path) -> dict:
    corpus = out / f"corpus_{gb:g}gb.txt"
    gen_s = make_corpus(corpus, gb, source)
    # validation on a small file drawn the same way (another seed): a held-out tenth of a
    # multi-gigabyte corpus would make the end-of-run evaluation of the whole split the cost
    val = out / "corpus_validation.txt"
    make_corpus(val, 2e-4, source, seed=1)
    cache, runs = out / "token_cache", out / f"runs_{gb:g}gb"
    shutil.rmtree(runs, ignore_errors=True)
    runs.mkdir(parents=True)
    from jaxlm.data.token_store import remove_store
    for d in cache.glob(corpus.stem + "-*"):  # run A starts cold: no store, no remembered scan
        remove_store(d)
    shutil.rmtree(cache / "scans", ignore_errors=True)
    every = max(1, steps // 6)
    sets = [f"data.train=text:{corpus}", f"data.validation=text:{val}",
            f"data.token_cache={cache}", f"train.steps={steps}",
            f"train.checkpoint_every={every}", "train.eval_batches=20",
            f"train.eval_every={steps}", f"train.log_every={every}",
            "train.async_checkpointing=false"]
    flags = lambda extra, run: ["--config", str(CONFIG), "--run", str(run),  # noqa: E731
                                *[x for s in sets + extra for x in ("--set", s)]]
    a = run_jaxlm(flags([], runs / "a"), runs / "a.err")
    tok = [f"data.tokenizer.path={runs / 'a' / 'tokenizer.json'}"]
    b = run_jaxlm(flags(tok, runs / "b"), runs / "b.err")
    ckpts = runs / "c" / "checkpoints"
    half = lambda: any(p.name.isdigit() and int(p.name) > steps // 2  # noqa: E731
                       for p in (ckpts.iterdir() if ckpts.is_dir() else []))
    c1 = run_jaxlm(flags(tok, runs / "c"), runs / "c1.err", kill_when=half)
    killed_at = max(int(p.name) for p in ckpts.iterdir() if p.name.isdigit())
    c2 = run_jaxlm(flags(tok, runs / "c"), runs / "c2.err")
    sb, sc = final_state(runs / "b", steps), final_state(runs / "c", steps)
    same = sb.keys() == sc.keys() and all(np.array_equal(sb[k], sc[k]) for k in sb)
    summary_b = json.loads((runs / "b" / "summary.json").read_text())
    summary_c = json.loads((runs / "c" / "summary.json").read_text())
    pipe, reuse_s = pipeline_tokens_per_s(sets + tok, pipeline_batches)
    step_tps = summary_b["tokens_per_s"]
    return {"gb": corpus.stat().st_size / 1e9, "generate_s": gen_s, "a": a, "b": b,
            "c1": c1, "c2": c2, "killed_at": killed_at, "resume_exact": same,
            "loss_b": summary_b["train"]["loss"], "loss_c": summary_c["train"]["loss"],
            "pipeline_tps": pipe, "reuse_s": reuse_s, "step_tps": step_tps,
            "ratio": pipe / step_tps,
            "store_gb": sum(f.stat().st_size for d in cache.glob(corpus.stem + "-*")
                            for f in d.iterdir()) / 1e9}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(REPO / "runs" / "large_corpus"))
    ap.add_argument("--sizes", default="0.75,3", help="corpus sizes in GB, comma-separated")
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--pipeline-batches", type=int, default=3000)
    ap.add_argument("--keep", action="store_true", help="keep the corpora, runs and token cache")
    ap.add_argument("--data", default=os.environ.get("JAXLM_DATA", str(REPO.parent / "shared" /
                                                                      "data")))
    args = ap.parse_args()
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    source = Path(args.data) / "tinyshakespeare" / "input.txt"
    results = []
    try:
        for gb in (float(s) for s in args.sizes.split(",")):
            r = bench_size(gb, out, args.steps, args.pipeline_batches, source)
            results.append(r)
            print(json.dumps(r), flush=True)
    finally:
        if not args.keep:
            for p in list(out.glob("corpus_*")) + list(out.glob("runs_*")) + [out / "token_cache"]:
                if p.is_dir():
                    shutil.rmtree(p, ignore_errors=True)
                else:
                    p.unlink(missing_ok=True)
    gib = 1 << 30
    print(f"\n{os.cpu_count()} CPUs, {args.steps} steps of configs/shakespeare_char.yaml per run")
    print("| corpus | store | tokenise (run A) | reuse: open to first batch | run A / B wall | "
          "peak RSS A / B / C killed / C resumed | pipeline alone | train | ratio | "
          "resume (killed at step) |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    ok = True
    for r in results:
        rss = [r[k]["peak_rss"] / gib for k in ("a", "b", "c1", "c2")]
        ok &= (max(rss) < 2 and r["ratio"] >= 10 and r["resume_exact"] and r["c1"]["rc"] == -9
               and not r["b"]["tokenised"])
        print(f"| {r['gb']:.2f} GB | {r['store_gb']:.2f} GB | {r['a']['tokenise_s']:.1f} s | "
              f"{r['reuse_s']:.2f} s | {r['a']['wall_s']:.0f} / {r['b']['wall_s']:.0f} s | "
              f"{' / '.join(f'{x:.2f}' for x in rss)} GiB | {r['pipeline_tps']:,.0f} tok/s | "
              f"{r['step_tps']:,.0f} tok/s | {r['ratio']:.0f}x | "
              f"{'exact' if r['resume_exact'] else 'DIFFERS'} ({r['killed_at']}) |")
    print(f"targets (peak RSS < 2 GiB, pipeline >= 10x, exact resume, store reused): "
          f"{'OK' if ok else 'NOT MET'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
