"""CLI subcommands; see `jaxlm.cli`.

One flag spelling per meaning across commands: `--run` (a run directory), `--out` (what a command
writes), `--checkpoint` (best, latest or a step number). Older spellings (`--run-dir`,
`--output`, `--step`, `export --to-hf`) still work, with a one-line notice on stderr (`add_flag`).
"""
import argparse
from typing import Any


class _Flag(argparse.Action):
    """Store a flag's value; an old spelling (`deprecated`) prints a notice first. Help lists
    only the current spelling (`jaxlm.cli`'s formatter hides the old ones)."""

    def __init__(self, option_strings: list[str], dest: str, deprecated: tuple[str, ...] = (),
                 **kw: Any):
        self.deprecated = tuple(deprecated)
        super().__init__(option_strings, dest, **kw)

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace,
                 values: Any, option_string: str | None = None) -> None:
        if option_string in self.deprecated:
            from jaxlm.config import deprecation_notice
            deprecation_notice(option_string, self.option_strings[0])
        setattr(namespace, self.dest, values)


def add_flag(p: argparse.ArgumentParser, flag: str, *old: str, **kw: Any) -> argparse.Action:
    """`p.add_argument(flag, **kw)` that also accepts the older spellings `old`, each with a
    one-line deprecation notice on stderr."""
    return p.add_argument(flag, *old, action=_Flag, deprecated=old, **kw)


def checkpoint_arg(text: str) -> str | int:
    """argparse type of --checkpoint: best, latest, or a step number."""
    return int(text) if text.isdigit() else text


def add_config_args(p: argparse.ArgumentParser, required: bool = True) -> None:
    """--config / --set / --run / --overwrite, shared by training commands."""
    p.add_argument("--config", required=required, help="YAML experiment file (see configs/)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set train.steps=100 (repeatable)")
    add_flag(p, "--run", "--run-dir", dest="run_dir", metavar="DIR", help="the run directory "
             "(default: runs/<name>); rerunning on the same directory resumes it")
    p.add_argument("--overwrite", action="store_true",
                   help="discard an existing run in --run instead of refusing")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1 (batch sizes, counts)."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}")
    return value


def add_generation_args(p: argparse.ArgumentParser, prefix: str = "") -> None:
    """--max-new-tokens / --temperature / --top-k / --top-p / --seed for commands that generate
    with a generative run's saved settings (unset: the run's own, greedy unless trained
    otherwise)."""
    p.add_argument("--max-new-tokens", type=positive_int, default=None, metavar="N",
                   help=f"{prefix}tokens to generate at most (default: the run's)")
    p.add_argument("--temperature", type=float, default=None, metavar="T",
                   help=f"{prefix}0 = greedy (default: the run's)")
    p.add_argument("--top-k", type=int, default=None, metavar="K", help="0 = off")
    p.add_argument("--top-p", type=float, default=None, metavar="P", help="1.0 = off")
    p.add_argument("--seed", type=int, default=None, metavar="S", help="sampling seed")


def generation_args(args: argparse.Namespace) -> dict[str, Any]:
    """The generation settings given on the command line (see `add_generation_args`)."""
    return {k: getattr(args, k) for k in ("max_new_tokens", "temperature", "top_k", "top_p",
                                          "seed") if getattr(args, k, None) is not None}


def tune_host_malloc(cfg: Any) -> bool:
    """Switch malloc to reuse freed memory (`jaxlm.host_memory`) when the `jaxlm` command
    allowed it and every train step has the same shapes: then XLA:CPU's step buffer is reused
    from step to step; with one arena only when the step's buffer may not fit a thread's heap
    (`step_buffer_estimate`). Steps of several shapes (a classifier's length buckets, unpacked
    generative rows) allocate buffers of several sizes, which fragment the heap and keep its
    peak resident well above a peer's (benchmarks/headline.py's MiniLM job), unless
    JAXLM_HOST_MALLOC=reuse asks for speed at that memory. Call it before JAX starts."""
    from jaxlm.host_memory import THREAD_HEAP_BYTES, requested, reuse_freed_host_memory
    task = cfg.train.task
    one_shape = (task not in ("classification", "generative")
                 or (task == "generative" and cfg.generative.packing))
    one_arena = step_buffer_estimate(cfg) > THREAD_HEAP_BYTES
    return ((one_shape or requested() == "reuse")
            and reuse_freed_host_memory(when_allowed=True, one_arena=one_arena))


def step_buffer_estimate(cfg: Any) -> int:
    """Bytes of XLA's temporary buffer for one train step of `cfg`, estimated from the config
    alone (JAX must not start before malloc is set): per token of a micro-batch, each layer's
    activations kept for the backward (about 6 d_model + 2 d_ff values and the attention weights
    of every head), the logits' few copies, in float32, with a margin. It errs high
    (benchmarks/host_malloc_arenas.py prints it against the buffer XLA assigned)."""
    m = cfg.model
    d_ff = m.d_ff or 4 * m.d_model
    vocab = m.vocab_size or cfg.data.tokenizer.vocab_size or 256  # char vocabularies are small
    tokens = -(-cfg.train.batch_size // cfg.train.grad_accum) * cfg.data.seq_len
    per_token = m.num_layers * (6 * m.d_model + 2 * d_ff + 2 * m.num_heads * cfg.data.seq_len)
    return int(2 * 4 * tokens * (per_token + 3 * vocab))
