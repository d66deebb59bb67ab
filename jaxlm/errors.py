"""User-facing errors: one paragraph that names the culprit and the fix, exit code 2."""
from __future__ import annotations


class JaxlmError(Exception):
    """A problem with something the user gave us (config, data, checkpoint, argument).

    The CLI prints the message alone (no traceback) and exits with `exit_code`.
    """

    exit_code = 2

    def __init__(self, message: str, *, culprit: str | None = None):
        super().__init__(message)
        self.culprit = culprit


class ConfigError(JaxlmError):
    """A config key or value is wrong."""


class DataError(JaxlmError):
    """A dataset spec or data file is wrong."""


class CheckpointError(JaxlmError):
    """A checkpoint or run directory is missing, corrupt or incompatible."""


class OutputError(JaxlmError):
    """Something the command computed could not be written: a read-only folder, a full disk, or
    a path below a regular file (see `jaxlm.atomic.writing`)."""


class TrainingStopped(Exception):
    """Training stopped early on purpose, after saving a checkpoint: a signal (preemption, Ctrl-C)
    or non-finite loss/gradients with `train.on_nonfinite: stop`.

    Not a usage error: the CLI prints the message (no traceback) and exits with `exit_code`:
    130 (SIGINT), 143 (SIGTERM), 3 (non-finite values). Rerunning the same command resumes.
    """

    def __init__(self, message: str, *, exit_code: int, step: int,
                 retry: tuple[str, ...] = ()):
        super().__init__(message)
        self.exit_code = exit_code
        self.step = step
        # extra command-line arguments for a rerun that should not stop the same way (NaN: a
        # lower learning rate); the CLI prints the whole command with them
        self.retry = tuple(retry)
