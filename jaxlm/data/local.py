"""Readers for local files: plain text, `LABEL TEXT` lines, TSV/CSV with named columns, JSONL.

Each reader returns raw records `(text, label or None, where)`; `where` is `file:line`, so every
problem found later (an empty line, a missing or undeclared label) can be reported by location.
Problems found while reading go to a `DataReport`, which counts them (and skips the record) or
raises, per the `on_invalid` policy: nothing is dropped silently.
"""
from __future__ import annotations

import collections
import csv
import io
import json
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

from jaxlm.data.text import read_text, split_lines
from jaxlm.errors import DataError

Record = tuple[str, "str | None", str]  # (text, raw label, "file:line")


@dataclass
class DataReport:
    """Counts of skipped records by problem, with the first few locations of each."""

    what: str
    policy: str = "report"  # "report": count and skip; "error": raise at the first problem
    counts: collections.Counter = field(default_factory=collections.Counter)
    where: dict[str, list[str]] = field(default_factory=dict)

    def add(self, problem: str, where: str, fix: str = "") -> None:
        """Count (or, with policy error, raise on) one invalid record at `where`."""
        if self.policy == "error":
            raise DataError(
                f"{where}: {problem} in {self.what}. {fix + ' ' if fix else ''}Fix the file, or "
                "set "
                "data.on_invalid: report (spec option ?on_invalid=report) to skip such records "
                "and count them.", culprit=where)
        self.counts[problem] += 1
        self.where.setdefault(problem, [])
        if len(self.where[problem]) < 3:
            self.where[problem].append(where)

    @property
    def skipped(self) -> int:
        """How many records were skipped."""
        return sum(self.counts.values())

    def summary(self) -> str:
        """One line, empty when nothing was skipped."""
        if not self.counts:
            return ""
        parts = [f"{n} x {p} (e.g. {', '.join(self.where[p])})" for p, n in self.counts.items()]
        return (f"{self.what}: skipped {self.skipped} record(s): " + "; ".join(parts) +
                ". Set data.on_invalid: error to stop at the first one instead.")

    def warn(self) -> None:
        """Print the summary of skipped records to stderr, if any."""
        if self.counts:
            sys.stderr.write(f"jaxlm data: warning: {self.summary()}\n")


def _lines(path: Path, encoding: str) -> list[str]:
    return split_lines(read_text(path, encoding, "data file"))


def read_text_documents(path: Path, encoding: str, documents: str, report: DataReport
                        ) -> list[Record]:
    """Plain text: the whole file as one document, one per blank-line block, or one per line."""
    text = read_text(path, encoding, "data file")
    if documents == "file":
        if not text.strip():
            report.add("empty file", f"{path}:1")
            return []
        return [(text, None, f"{path}:1")]
    out: list[Record] = []
    if documents == "line":
        for n, line in enumerate(split_lines(text), 1):
            if line.strip():
                out.append((line, None, f"{path}:{n}"))
            else:
                report.add("empty line", f"{path}:{n}")
        return out
    # blank_line: a document is a run of non-blank lines
    block: list[str] = []
    start = 1
    for n, line in enumerate(split_lines(text) + [""], 1):
        if line.strip():
            if not block:
                start = n
            block.append(line)
        elif block:
            out.append(("\n".join(block), None, f"{path}:{start}"))
            block = []
    return out


def read_labeled(path: Path, encoding: str, report: DataReport) -> list[Record]:
    """`LABEL TEXT` lines (SST, TREC): the first whitespace-separated token is the label."""
    out: list[Record] = []
    for n, line in enumerate(_lines(path, encoding), 1):
        where = f"{path}:{n}"
        parts = line.strip().split(maxsplit=1)
        if not parts:
            report.add("empty line", where)
        elif len(parts) == 1:
            report.add("label without text", where, "Each line must be 'LABEL TEXT'.")
        else:
            out.append((parts[1], parts[0], where))
    return out


def pick_field(names: list[str], wanted: str, defaults: tuple[str, ...], what: str, path: Path,
          option: str, required: bool) -> str | None:
    """The field holding the text/label: the one asked for, else the first default present."""
    if wanted:
        if wanted not in names:
            raise DataError(f"{path} has no {what} field '{wanted}'; its fields are "
                            f"{', '.join(names)}. Set {option} to one of them.", culprit=wanted)
        return wanted
    for d in defaults:
        if d in names:
            return d
    if required:
        raise DataError(f"Cannot tell which field of {path} holds the {what} (fields: "
                        f"{', '.join(names)}). Set {option} (or the spec option "
                        f"?{option.split('.')[-1]}=NAME).", culprit=str(path))
    return None


TEXT_NAMES = ("text", "sentence", "content", "review", "document", "question")
LABEL_NAMES = ("label", "labels", "class", "category", "target")


def read_delimited(path: Path, encoding: str, delimiter: str, text_field: str, label_field: str,
                   report: DataReport) -> tuple[list[Record], bool]:
    """TSV/CSV with a header row; returns (records, has_labels)."""
    text = read_text(path, encoding, "data file")
    rows = csv.reader(io.StringIO(text), delimiter=delimiter)
    header = next(rows, None)
    if not header:
        raise DataError(f"{path} is empty; a {'TSV' if delimiter == chr(9) else 'CSV'} file needs "
                        "a header row naming its columns.", culprit=str(path))
    header = [h.strip() for h in header]
    tcol = pick_field(header, text_field, TEXT_NAMES, "text", path, "data.text_field", True)
    lcol = pick_field(header, label_field, LABEL_NAMES, "label", path, "data.label_field", False)
    ti, li = header.index(tcol), (header.index(lcol) if lcol else None)
    out: list[Record] = []
    for n, row in enumerate(rows, 2):
        where = f"{path}:{n}"
        if not any(c.strip() for c in row):
            report.add("empty line", where)
            continue
        if len(row) != len(header):
            report.add(f"row with {len(row)} fields (header has {len(header)})", where)
            continue
        label = row[li].strip() if li is not None else None
        if not row[ti].strip():
            report.add("empty text", where)
        elif li is not None and not label:
            report.add("missing label", where)
        else:
            out.append((row[ti], label, where))
    return out, lcol is not None


def read_jsonl(path: Path, encoding: str, text_field: str, label_field: str,
               report: DataReport) -> tuple[list[Record], bool]:
    """One JSON object per line; returns (records, has_labels)."""
    out: list[Record] = []
    tkey = lkey = None
    has_labels = False
    for n, line in enumerate(_lines(path, encoding), 1):
        where = f"{path}:{n}"
        if not line.strip():
            report.add("empty line", where)
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(f"{where} is not valid JSON ({e.msg} at column {e.colno}). A JSONL "
                            "file holds one JSON object per line.", culprit=where) from None
        if not isinstance(obj, dict):
            raise DataError(f"{where} holds a JSON {type(obj).__name__}, not an object with named "
                            "fields.", culprit=where)
        if tkey is None:  # fields are decided by the first record
            names = list(obj)
            tkey = pick_field(names, text_field, TEXT_NAMES, "text", path, "data.text_field", True)
            lkey = pick_field(names, label_field, LABEL_NAMES, "label", path, "data.label_field",
                              False)
            has_labels = lkey is not None
        text = obj.get(tkey)
        label = obj.get(lkey) if lkey else None
        if not isinstance(text, str) or not text.strip():
            report.add("missing or empty text", where)
        elif has_labels and (label is None or str(label).strip() == ""):
            report.add("missing label", where)
        else:
            out.append((text, None if label is None else str(label).strip(), where))
    return out, has_labels


def sort_labels(labels: set[str]) -> list[str]:
    """Integer-looking labels in numeric order (so '10' follows '9'), others alphabetically."""
    if all(re.fullmatch(r"-?\d+", x) for x in labels):
        return sorted(labels, key=int)
    return sorted(labels)


SPLIT_FILES = {  # split name -> file stems tried, in order, in a dataset directory
    "train": ("train",),
    "validation": ("validation", "valid", "dev", "val"),
    "test": ("test",),
}


def find_split_file(directory: Path, split: str, exts: tuple[str, ...]) -> Path | None:
    """The file of `split` in a dataset directory (e.g. dev.txt for validation), or None."""
    for stem in SPLIT_FILES.get(split, (split,)):
        for ext in exts:
            p = directory / f"{stem}{ext}"
            if p.is_file():
                return p
    return None
