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
