"""Records with named fields: what generative fine-tuning reads (a template picks the fields).

The same dataset specs as for the other tasks (`jsonl:`, `tsv:`, `csv:`, `labeled:`, `tfds:`,
`hfds:`), read as whole records instead of one text and one label: a JSON object, a row under its
header, a `LABEL TEXT` line as {"label", "text"}, a TFDS or Hugging Face example with its text
features decoded and class labels written as their names. Values are kept as text (numbers as
written, nested values as JSON), so a template such as "{question}" formats any of them.
"""
from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

from jaxlm.data import local
from jaxlm.data.local import DataReport
from jaxlm.data.sources import Source, Spec, _local_file, tfds_builder
from jaxlm.errors import DataError

Record = dict[str, str]


class RecordSource(Source):
    """One split of records (random access); `where(i)` says where record i came from."""

    label_names = None

    def __init__(self, spec: Spec, split: str, records: Any, places: Any, report: DataReport):
        self.spec, self.split, self.report = spec, split, report
        self._records, self._places = records, places

    def __len__(self) -> int:
        return len(self._records)

    def __getitem__(self, i: int) -> Record:
        return self._records[int(i)]

    def where(self, i: int) -> str:
        """'file:line' (local files) or 'spec [split] #i' (TFDS) of record i."""
        return self._places[int(i)] if self._places is not None else f"{self.name} #{int(i)}"

    def fields(self) -> list[str]:
        """The field names of the first record (what a template may name)."""
        return list(self[0]) if len(self) else []


def as_text(value: Any) -> str:
    """A field value as template text: strings as they are, bytes decoded, the rest as JSON."""
    if isinstance(value, str):
        return value
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    if hasattr(value, "tolist"):  # numpy scalars and arrays from TFDS
        value = value.tolist()
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)


def _jsonl(path: Path, encoding: str) -> tuple[list[Record], list[str]]:
    records, places = [], []
    for n, line in enumerate(local.read_text(path, encoding, "data file").splitlines(), 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(f"{path}:{n} is not valid JSON ({e.msg} at column {e.colno}). A JSONL "
                            "file holds one JSON object per line.", culprit=f"{path}:{n}") from None
        if not isinstance(obj, dict):
            raise DataError(f"{path}:{n} holds a JSON {type(obj).__name__}, not an object with "
                            "named fields.", culprit=f"{path}:{n}")
        records.append({str(k): as_text(v) for k, v in obj.items() if v is not None})
        places.append(f"{path}:{n}")
    return records, places


def _delimited(path: Path, encoding: str, delimiter: str) -> tuple[list[Record], list[str]]:
    rows = csv.reader(io.StringIO(local.read_text(path, encoding, "data file")),
                      delimiter=delimiter)
    header = [h.strip() for h in next(rows, [])]
    if not header:
        raise DataError(f"{path} is empty; it needs a header row naming its columns.",
                        culprit=str(path))
    records, places = [], []
    for n, row in enumerate(rows, 2):
        if not any(c.strip() for c in row):
            continue
        records.append({h: v for h, v in zip(header, row)})  # a short row lacks its last fields
        places.append(f"{path}:{n}")
    return records, places


def _labeled(path: Path, encoding: str) -> tuple[list[Record], list[str]]:
    report = DataReport(str(path))
    out = local.read_labeled(path, encoding, report)
    return ([{"label": label or "", "text": text} for text, label, _ in out],
            [where for _, _, where in out])


class _TfdsRecords:
    """TFDS examples as records, read on access."""

    def __init__(self, data_source: Any, features: Any):
        self.ds, self.features = data_source, features

    def __len__(self) -> int:
        return len(self.ds)

    def __getitem__(self, i: int) -> Record:
        out = {}
        for key, value in self.ds[int(i)].items():
            feature = self.features.get(key) if hasattr(self.features, "get") else None
            if feature is not None and hasattr(feature, "int2str") and not hasattr(value, "__len__"):
                value = feature.int2str(int(value))
            out[key] = as_text(value)
        return out


def open_records(spec: Spec, split: str) -> RecordSource:
    """One split of a dataset spec as records (see the module docstring)."""
    report = DataReport(spec.text)
    if spec.kind == "tfds":
        import tensorflow_datasets as tfds

        from jaxlm.data.sources import open_tfds
        builder = tfds_builder(spec)
        open_tfds(spec, split)  # the split and readability checks, with their messages
        ds = tfds.data_source(spec.target, split=split, data_dir=spec.options.tfds_data_dir(),
                              download=False, try_gcs=False)
        return RecordSource(spec, split, _TfdsRecords(ds, builder.info.features), None, report)
    if spec.kind == "hfds":
        from jaxlm.data import hf_datasets
        return RecordSource(spec, split, hf_datasets.open_records(spec, split), None, report)
    if spec.kind == "text":
        raise DataError(f"'{spec.text}' is plain text, without named fields. Generative "
                        "fine-tuning reads records: give a jsonl:, tsv:, csv:, labeled:, tfds: or "
                        "hfds: spec whose fields the templates name.", culprit=spec.text)
    path = _local_file(spec, split)
    enc = spec.options.encoding
    if spec.kind == "jsonl":
        records, places = _jsonl(path, enc)
    elif spec.kind in ("tsv", "csv"):
        records, places = _delimited(path, enc, "\t" if spec.kind == "tsv" else ",")
    else:
        records, places = _labeled(path, enc)
    if not records:
        raise DataError(f"{path} holds no records.", culprit=str(path))
    return RecordSource(spec, split, records, places, report)


class _Slice:
    """Records [start, stop) of another sequence, without copying."""

    def __init__(self, base: Any, start: int, stop: int):
        self.base, self.start, self.stop = base, start, stop

    def __len__(self) -> int:
        return self.stop - self.start

    def __getitem__(self, i: int) -> Any:
        return self.base[self.start + int(i)]


def holdout_records(train: RecordSource, fraction: float) -> tuple[RecordSource, RecordSource]:
    """(train, validation): the last `fraction` of the records held out for validation."""
    n = len(train)
    n_val = max(1, int(round(n * fraction)))
    if n_val >= n:
        raise DataError(f"{train.name} has {n} records: too few to hold out data.val_fraction="
                        f"{fraction} for validation. Give data.validation.",
                        culprit="data.validation")
    cut = n - n_val

    def part(start: int, stop: int, split: str) -> RecordSource:
        places = None if train._places is None else _Slice(train._places, start, stop)
        if places is None:
            return _OffsetSource(train, start, stop, split)
        return RecordSource(train.spec, split, _Slice(train._records, start, stop), places,
                            train.report)

    return part(0, cut, "train"), part(cut, n, "validation")


class _OffsetSource(RecordSource):
    """A slice of a TFDS record source, naming records by their index in the whole split."""

    def __init__(self, base: RecordSource, start: int, stop: int, split: str):
        super().__init__(base.spec, split, _Slice(base._records, start, stop), None, base.report)
        self.base, self.offset = base, start

    def where(self, i: int) -> str:
        return self.base.where(self.offset + int(i))
