"""docs/cli.md is generated from the argparse parsers (scripts/gen_cli_docs.py): the committed
file must match, every command must be documented with an example, and every example must parse."""
import importlib.util
import shlex
from pathlib import Path

import pytest

from jaxlm.cli import COMMANDS, build_parser

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def gen():
    spec = importlib.util.spec_from_file_location("gen_cli_docs",
                                                  REPO / "scripts" / "gen_cli_docs.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_committed_cli_reference_is_up_to_date(gen):
    committed = (REPO / "docs" / "cli.md").read_text()
    assert committed == gen.render(), ("docs/cli.md is stale: run "
                                       "`.venv/bin/python scripts/gen_cli_docs.py` and commit it")
    assert gen.main(["--check"]) == 0


def test_every_command_and_option_is_documented(gen):
    text = gen.render()
    parser = build_parser()
    for name in COMMANDS:
        assert f"## jaxlm {name}" in text
        sub = parser._subparsers._group_actions[0].choices[name]
        for action in sub._actions:
            for flag in action.option_strings:
                if flag in getattr(action, "deprecated", ()):  # old spellings: one header line
                    assert flag in text.split("## Commands")[0], (name, flag)
                elif flag not in ("-h", "--help"):
                    assert f"`{flag}" in text or f", {flag}" in text, (name, flag)
    wanted = {n for n in COMMANDS if n != "data"} | {"data show", "data build"}
    missing = sorted(wanted - set(gen.EXAMPLES))
    assert not missing, (f"no example for {missing}: add one to EXAMPLES in "
                         "scripts/gen_cli_docs.py, then run it to regenerate docs/cli.md")


def test_every_example_parses(gen):
    parser = build_parser()
    for name, examples in gen.EXAMPLES.items():
        for example in examples:
            argv = shlex.split(example.rsplit("|", 1)[-1])  # `echo ... | jaxlm predict ...`
            assert argv[0] == "jaxlm" and " ".join(argv[1:]).startswith(name), example
            args = parser.parse_args(argv[1:])  # argparse exits on a wrong or missing option
            assert callable(args.func)
