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
