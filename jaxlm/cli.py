"""The `jaxlm` command line: one subcommand per job.

Each subcommand lives in `jaxlm.commands.<name>` and exposes `add_parser(subparsers)`, which
registers its arguments and sets `func(args) -> int`. User errors (`JaxlmError`) are printed as one
paragraph, without a traceback, and exit with code 2. Training that stops on purpose after saving a
checkpoint (`TrainingStopped`) prints how to resume and exits with 143 (SIGTERM), 130 (SIGINT) or
3 (non-finite loss/gradients with train.on_nonfinite=stop).
"""
from __future__ import annotations

import argparse
import atexit
import copy
import importlib
import os
import shlex
import sys
import threading
from typing import NoReturn

from jaxlm.errors import JaxlmError, TrainingStopped

COMMANDS = ["pretrain", "finetune", "evaluate", "predict", "generate", "convert", "export",
            "train-tokenizer", "data", "plot", "info", "runs", "bench"]


class _Formatter(argparse.HelpFormatter):
    """Help lists each flag's current spelling only (older ones: `jaxlm.commands.add_flag`)."""

    def _format_action_invocation(self, action: argparse.Action) -> str:
        old = getattr(action, "deprecated", ())
        if old:
            action = copy.copy(action)
            action.option_strings = [s for s in action.option_strings if s not in old]
        return super()._format_action_invocation(action)


class _Parser(argparse.ArgumentParser):
    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", _Formatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> None:  # usage errors: exit 2 with a pointer to --help
        self.print_usage(sys.stderr)
        sys.stderr.write(f"jaxlm: error: {message}. Run '{self.prog} --help' for the options.\n")
        sys.exit(2)


# training commands (they restart with huge pages where the kernel waits to be asked)
TRAINING = ("pretrain", "finetune")
# commands that switch malloc as their config's train step needs (`commands.tune_host_malloc`)
SHAPE_AWARE_MALLOC = (*TRAINING, "bench")


def build_parser() -> argparse.ArgumentParser:
    """The `jaxlm` parser with every command in COMMANDS registered."""
    parser = _Parser(prog="jaxlm", description="Pretrain and fine-tune Transformer language "
                     "models in JAX/Flax, from one CPU to a TPU pod.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for name in COMMANDS:
        importlib.import_module(f"jaxlm.commands.{name.replace('-', '_')}").add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the command line (argv: default sys.argv[1:]); returns the exit code.

    As a program (argv None) it first tunes glibc malloc for XLA:CPU, before any command imports
    JAX (`jaxlm.host_memory`; a training command, on a kernel that gives huge pages only when
    asked, restarts itself once with glibc's huge-page tunable), and keeps compiled steps in a
    persistent cache for reruns (`jaxlm.compile_cache`); called with argv (tests, `run` in a
    notebook) it leaves the process's allocator and JAX's settings as they are."""
    if argv is None and _trains(sys.argv[1:]):
        from jaxlm.host_memory import restart_with_huge_pages
        restart_with_huge_pages()  # returns unless it restarts this process
    parser = build_parser()
    args = parser.parse_args(argv)
    if argv is None:
        from jaxlm.compile_cache import use_compilation_cache
        from jaxlm.host_memory import allow_reuse, reuse_freed_host_memory
        if getattr(args, "command", None) in SHAPE_AWARE_MALLOC:
            allow_reuse()  # the command decides from its config (commands.tune_host_malloc)
        else:  # a few executions, compilation first: thread arenas (jaxlm.host_memory)
            reuse_freed_host_memory(one_arena=False)
        use_compilation_cache()
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except JaxlmError as e:
        sys.stderr.write(f"jaxlm {args.command}: error: {e}\n")
        return e.exit_code
    except TrainingStopped as e:  # checkpoint saved; exit 130 (SIGINT), 143 (SIGTERM), 3 (NaN)
        again = shlex.join(["jaxlm", *_rerun(sys.argv[1:] if argv is None else argv, e.retry)])
        sys.stderr.write(f"jaxlm {args.command}: stopped: {e}\n  resume with: {again}\n")
        return e.exit_code
    except OSError as e:  # a write (or read) the command's own checks could not foresee
        from jaxlm.atomic import output_error
        sys.stderr.write(f"jaxlm {args.command}: error: "
                         f"{output_error(e, None, None)}\n")
        return 2
    except KeyboardInterrupt:
        sys.stderr.write("jaxlm: interrupted.\n")
        return 130


def _trains(argv: list[str]) -> bool:
    """Whether `argv` runs a training command (not only asks for its help): only a job of many
    steps gains more from huge pages than a restart costs."""
    return bool(argv) and argv[0] in TRAINING and not {"-h", "--help"} & set(argv)


def _rerun(argv: list[str], retry: tuple[str, ...]) -> list[str]:
    """`argv` with `retry` ("--set", "key=value", ...) in place of earlier --sets of those keys."""
    if len(retry) > 2 and not len(retry) % 2:
        for i in range(0, len(retry), 2):
            argv = _rerun(argv, retry[i:i + 2])[:-2]
        return [*argv, *retry]
    if len(retry) != 2 or retry[0] != "--set":
        return [*argv, *retry]
    key = retry[1].split("=", 1)[0] + "="
    out: list[str] = []
    for i, a in enumerate(argv):
        if (a.startswith("--set=" + key) or (a == "--set" and i + 1 < len(argv)
                                             and argv[i + 1].startswith(key))):
            continue
        if i and argv[i - 1] == "--set" and a.startswith(key):
            continue
        out.append(a)
    return [*out, *retry]


def run(command: str | list[str]) -> None:
    """Run one jaxlm command in this process, e.g. `run("info runs/shakespeare_char")`; raise
    RuntimeError when it fails (its message is already printed).

    For notebooks: the command shares the kernel's JAX runtime, so a TPU that the notebook already
    holds is used (a `!jaxlm` subprocess could not open it), and each command skips the import
    cost of a new process.
    """
    argv = shlex.split(command) if isinstance(command, str) else list(command)
    print("$ jaxlm " + shlex.join(argv), flush=True)
    try:
        code = main(argv)
    except SystemExit as e:  # argparse usage errors and --help
        code = e.code if isinstance(e.code, int) else 2
    if code:
        raise RuntimeError(f"`jaxlm {shlex.join(argv)}` failed with exit code {code}; its "
                           "message is printed above.")


def program() -> None:
    """The `jaxlm` program: `main()`, then `exit_without_teardown` with its exit code. A command
    that raises leaves through the usual path, with its traceback."""
    exit_without_teardown(main())


def exit_without_teardown(code: int) -> NoReturn:
    """Exit with `code` after the first two steps of the interpreter's own shutdown, not the
    rest.

    After a command, tearing down JAX's runtime and every imported module takes a noticeable
    part of a short job's wall time (benchmarks/startup_costs.py prints it), and it does nothing a
    finished command needs: so this does, in the interpreter's order, `threading._shutdown`
    (which stops idle thread-pool workers, then waits for the non-daemon threads) and the atexit
    handlers (JAX's distributed shutdown among them); then it flushes the output and exits. On
    an interpreter without `threading._shutdown` it exits the usual way."""
    shutdown_threads = getattr(threading, "_shutdown", None)
    if shutdown_threads is None:
        sys.exit(code)
    shutdown_threads()
    atexit._run_exitfuncs()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    program()
