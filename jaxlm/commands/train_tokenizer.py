"""`jaxlm train-tokenizer`: train a tokenizer (char, byte-level BPE, WordPiece, Unigram) on the
train split of any dataset spec and save it as a Hugging Face tokenizer.json."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from jaxlm.commands.data_args import add_source_args, resolve, source_options


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register `jaxlm train-tokenizer` and its options on the subcommand parsers."""
    p = sub.add_parser("train-tokenizer", help="train a tokenizer on a dataset",
                       description=__doc__)
    p.add_argument("--data", required=True, metavar="SPEC",
                   help="dataset spec, e.g. text:{data_root}/tinyshakespeare/input.txt, "
                   "labeled:{data_root}/sst2, tfds:imdb_reviews")
    p.add_argument("--kind", required=True, choices=("bpe", "wordpiece", "unigram", "char"))
    p.add_argument("--vocab-size", type=int, default=0, help="target vocabulary size "
                   "(not used by char)")
    p.add_argument("--out", required=True, help="directory to write tokenizer.json into")
    p.add_argument("--split", default="train", help="split to train on (default train)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace a tokenizer.json already in --out")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    add_source_args(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Run `jaxlm train-tokenizer` with parsed arguments; returns the exit code."""
    from tqdm import tqdm

    from jaxlm.data.lm_data import tokenizer_texts
    from jaxlm.data.sources import parse_spec
    from jaxlm.data.text_stream import TextFileSource, open_text_stream
    from jaxlm.atomic import writing
    from jaxlm.data.tokenizer import TextTokenizer, train_tokenizer
    from jaxlm.errors import ConfigError
    from jaxlm.run import check_output_path

    check_output_path(args.out, "--out", folder=True)  # a run's tokenizer must match its model
    if (Path(args.out) / "tokenizer.json").exists() and not args.overwrite:
        raise ConfigError(f"'{Path(args.out) / 'tokenizer.json'}' already exists. Pass "
                          "--overwrite to replace it, or choose another --out.", culprit="--out")

    # a text file is streamed (never read whole); other kinds as open_source reads them
    src = open_text_stream(parse_spec(resolve(args.data), source_options(args)), args.split, None)
    if not src.streamed and len(src) == 0:  # a tokenizer of nothing: only special tokens
        raise ConfigError(f"--data {args.data} has no text to train on in its {args.split} split "
                          "(the file is empty, or every record was skipped: see the warnings "
                          "above). Point --data at the corpus to learn the vocabulary from.",
                          culprit="--data")
    texts = tqdm(tokenizer_texts(src), desc=f"reading {src.name}", unit=" texts",
                 disable=args.quiet, file=sys.stderr)
    tok = TextTokenizer(train_tokenizer(texts, args.kind, args.vocab_size,
                                        show_progress=not args.quiet))
    out = Path(args.out)
    with writing(out / "tokenizer.json", "the tokenizer"):
        out.mkdir(parents=True, exist_ok=True)
        tok.save(out / "tokenizer.json")
    in_order = src.streamed or isinstance(src, TextFileSource)
    sample = (next(src.texts(), "") if in_order else src[0]["text"])[:80]
    ids = tok.encode(sample)
    print(f"saved {out / 'tokenizer.json'}: {args.kind}, vocabulary {tok.vocab_size:,}, trained on "
          f"{'the streamed texts' if src.streamed else f'{len(src):,} texts'} of {src.name}")
    print(f"example: {sample!r} -> {len(ids)} tokens -> {tok.decode(ids)!r}")
    return 0
