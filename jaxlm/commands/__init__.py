"""CLI subcommands; see `jaxlm.cli`."""
import argparse


def add_config_args(p: argparse.ArgumentParser, required: bool = True) -> None:
    """--config / --set / --run-dir / --overwrite, shared by training commands."""
    p.add_argument("--config", required=required, help="YAML experiment file (see configs/)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set train.steps=100 (repeatable)")
    p.add_argument("--run-dir", help="where the run lives (default: runs/<name>); rerunning on "
                   "the same directory resumes it")
    p.add_argument("--overwrite", action="store_true",
                   help="discard an existing run in --run-dir instead of refusing")
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
