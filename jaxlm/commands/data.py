"""`jaxlm data show SPEC`: split sizes, label set and a few decoded examples, what to run first
when something looks wrong. `jaxlm data build NAME --train FILE ...`: turn local files into a TFDS
dataset (array_record) that any later run reads as `tfds:NAME` with the same data dir."""
from __future__ import annotations

import argparse
import collections
import itertools

from jaxlm.commands.data_args import add_source_args, resolve, source_options


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register `jaxlm data` and its options on the subcommand parsers."""
    p = sub.add_parser("data", help="inspect datasets, or build a TFDS dataset from local files",
                       description=__doc__)
    dsub = p.add_subparsers(dest="data_command", metavar="{show,build}")
    show = dsub.add_parser("show", help="split sizes, labels and decoded examples of a dataset")
    show.add_argument("spec", metavar="SPEC", help="dataset spec, e.g. labeled:{data_root}/sst2")
    show.add_argument("--n", type=int, default=5, help="examples to print (default 5)")
    show.add_argument("--split", default="", help="split to show examples of (default train)")
    show.add_argument("--tokenizer", default="", help="tokenizer.json (or a run directory): also "
                      "show token counts and the decoded token ids")
    add_source_args(show)
    show.set_defaults(func=run_show)

    build = dsub.add_parser("build", help="build a TFDS dataset (array_record) from local files")
    build.add_argument("name", metavar="NAME", help="dataset name (snake_case), read back as "
                       "tfds:NAME")
    build.add_argument("--train", required=True, metavar="FILE")
    build.add_argument("--validation", metavar="FILE")
    build.add_argument("--test", metavar="FILE")
    build.add_argument("--data-dir", required=True, metavar="DIR",
                       help="TFDS data_dir to write into (pass the same as data.tfds_data_dir "
                       "or TFDS_DATA_DIR when reading)")
    build.add_argument("--format", default="labeled",
                       choices=("labeled", "text", "tsv", "csv", "jsonl"),
                       help="file format (default labeled: 'LABEL TEXT' lines)")
    build.add_argument("--overwrite", action="store_true", help="replace an existing build")
    add_source_args(build)
    build.set_defaults(func=run_build)
    p.set_defaults(func=lambda args: (p.print_help(), 2)[1])


def _fmt_splits(sizes: dict[str, int | None]) -> str:
    return " · ".join(f"{k} {v:,}" if v is not None else k for k, v in sizes.items())


def run_show(args: argparse.Namespace) -> int:
    """Run `jaxlm data show`; returns the exit code."""
    from jaxlm.data.sources import available_splits, open_source, parse_spec
    from jaxlm.data.tokenizer import TextTokenizer

    spec = parse_spec(resolve(args.spec), source_options(args))
    print(f"dataset: {spec.text}")
    names = available_splits(spec)
    train = None
    sizes: dict[str, int | None] = {}
    for split in ([spec.split] if spec.split else list(names)):
        src = open_source(spec, split, label_names=train.label_names if train else None)
        train = train or src
        sizes[split] = None if src.streamed else len(src)  # a stream's size is unknown
        if src.report.skipped:
            print(f"  {split}: {src.report.summary()}")
    print(f"splits: {_fmt_splits(sizes)}")
    split = args.split or (spec.split or ("train" if "train" in sizes else next(iter(sizes))))
    src = open_source(spec, split, label_names=train.label_names if train else None)
    if src.label_names is None:
        print("labels: none (an unlabeled text dataset)")
    else:
        counts = collections.Counter(src[i]["label"] for i in range(len(src)))
        shown = ", ".join(f"{n} ({counts.get(i, 0):,})" for i, n in enumerate(src.label_names))
        print(f"labels ({len(src.label_names)}, counts in {split}): {shown}")
    tok = TextTokenizer.load(args.tokenizer) if args.tokenizer else None
    examples = ([{"text": t, "label": -1} for t in itertools.islice(src.texts(), args.n)]
                if src.streamed else [src[i] for i in range(min(args.n, len(src)))])
    print(f"first {len(examples)} examples of {split}:")
    for i, ex in enumerate(examples):
        label = f" label {src.label_names[ex['label']]}" if src.label_names else ""
        text = ex["text"]
        short = text if len(text) <= 300 else text[:300] + f"... ({len(text):,} characters)"
        print(f"  [{i}]{label}: {short!r}")
        if tok is not None:
            ids = tok.encode(text)
            print(f"       {len(ids)} tokens {ids[:16]}{'...' if len(ids) > 16 else ''} -> "
                  f"{tok.decode(ids[:64])!r}")
    return 0


def run_build(args: argparse.Namespace) -> int:
    """Run `jaxlm data build`; returns the exit code."""
    from jaxlm.atomic import writing
    from jaxlm.data.tfds_build import build_dataset
    from jaxlm.run import check_output_path

    check_output_path(args.data_dir, "--data-dir", folder=True)
    files = {s: resolve(f) for s, f in (("train", args.train), ("validation", args.validation),
                                        ("test", args.test)) if f}
    with writing(args.data_dir, "the TFDS dataset"):
        sizes = build_dataset(args.name, files, args.data_dir, fmt=args.format,
                              options=source_options(args), overwrite=args.overwrite)
    print(f"built tfds:{args.name} in {args.data_dir}: {_fmt_splits(sizes)}")
    print(f"read it with: --set data.train=tfds:{args.name} --set data.tfds_data_dir="
          f"{args.data_dir}   (or TFDS_DATA_DIR={args.data_dir})")
    return 0
