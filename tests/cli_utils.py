"""Helpers shared by the CLI and reliability tests: run the CLI in-process, poison a batch."""
from __future__ import annotations

import io
from contextlib import redirect_stderr, redirect_stdout

import numpy as np

import jaxlm.train.fit as fit_mod
import jaxlm.train.trainer as trainer_mod
from jaxlm.cli import main


def run_cli(argv: list[str]) -> tuple[int, str]:
    """(exit code, stderr) of `jaxlm ARGV` run in this process (stdout discarded)."""
    err = io.StringIO()
    with redirect_stderr(err), redirect_stdout(io.StringIO()):
        try:
            code = main(argv)
        except SystemExit as e:  # argparse usage errors
            code = e.code
    return code, err.getvalue()


def poison_step(monkeypatch, bad_step: int) -> None:
    """Make the loop's `bad_step`-th batch carry a NaN weight (a host-side fault). The loop runs
    one step per call (train.steps_per_call's auto value pinned to 1), so that the batch of a
    call is that step's; tests/test_steps_per_call.py poisons a step inside a call."""
    monkeypatch.setattr(fit_mod, "AUTO_STEPS_PER_CALL", 1)
    calls = {"n": 0}
    real = trainer_mod.put_batch

    def put(batch, sharding):
        calls["n"] += 1
        if calls["n"] == bad_step:
            batch = {**batch, "weights": batch["weights"].copy()}
            batch["weights"][0, 0] = np.nan
        return real(batch, sharding)

    monkeypatch.setattr(trainer_mod, "put_batch", put)
