"""Command-line options that say how to read a dataset (shared by `data` and `train-tokenizer`)."""
from __future__ import annotations

import argparse

from jaxlm.data.sources import SourceOptions


def add_source_args(p: argparse.ArgumentParser) -> None:
    """Add the options that say how to read a dataset (encoding, fields, labels, ...)."""
    g = p.add_argument_group("reading the data (also settable per spec: SPEC?encoding=...)")
    g.add_argument("--encoding", default="utf-8", help="text encoding of local files, e.g. "
                   "iso-8859-1 (default utf-8)")
    g.add_argument("--documents", choices=("file", "blank_line", "line"), default="file",
                   help="plain text: one document per file, per blank-line block, or per line")
    g.add_argument("--text-field", default="", help="tsv/csv/jsonl/TFDS field holding the text")
    g.add_argument("--label-field", default="", help="tsv/csv/jsonl/TFDS field holding the label")
    g.add_argument("--labels", default="", help="declared label set, comma-separated (default: "
                   "the labels found in the train split)")
    g.add_argument("--on-invalid", choices=("report", "error"), default="report",
                   help="empty lines, missing or undeclared labels: count and skip, or stop")
    g.add_argument("--tfds-data-dir", default="", help="TFDS data_dir (default: $TFDS_DATA_DIR, "
                   "else ~/tensorflow_datasets)")


def source_options(args: argparse.Namespace) -> SourceOptions:
    """SourceOptions from the parsed command-line options."""
    return SourceOptions(encoding=args.encoding, data_dir=args.tfds_data_dir,
                         documents=args.documents, text_field=args.text_field,
                         label_field=args.label_field,
                         labels=[x for x in args.labels.split(",") if x],
                         on_invalid=args.on_invalid)


def resolve(spec: str) -> str:
    """Expand {data_root} ($JAXLM_DATA, else ../shared/data) in a spec."""
    from jaxlm.config import Config

    return Config().resolve_path(spec)
