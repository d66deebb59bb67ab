"""Dataset specs: one string names a dataset split, from TFDS or from local files.

    tfds:NAME[/CONFIG][:VERSION][:SPLIT]   e.g. tfds:imdb_reviews:test, tfds:glue/sst2:validation
    hfds:OWNER/NAME[/CONFIG][:SPLIT]   Hugging Face Hub, e.g. hfds:nyu-mll/glue/sst2:validation
    hfds:PATH[:SPLIT]   Parquet/Arrow/JSON(L)/CSV file, folder or glob; or a save_to_disk folder
    text:PATH       plain text (documents: file | blank_line | line)
    labeled:PATH    `LABEL TEXT` lines (SST, TREC)
    tsv:PATH, csv:PATH   a header row; text_field / label_field name the columns
    jsonl:PATH      one JSON object per line; text_field / label_field name the fields
    PATH            same as text:PATH

PATH is a file, or a directory holding train/dev(validation)/test files: `labeled:DIR:validation`
reads DIR/dev.txt. Options from the config (`data.encoding`, ...) can be overridden per spec with a
query string: `labeled:{data_root}/trec?encoding=iso-8859-1`, `hfds:DIR?text_field=sentence`.
`hfds:` also takes `?streaming=true` (an IterableDataset, for train-tokenizer and data show).

A source is random access (`len`, `src[i] -> {"text": str, "label": int}`) so grain can shuffle,
shard and checkpoint by index. TFDS datasets are read with `tfds.data_source` (array_record, no
TensorFlow), from `data_dir` = the option, else $TFDS_DATA_DIR, else TFDS's default. `hfds:` specs
are read memory-mapped through the optional `datasets` package (`jaxlm.data.hf_datasets`).
"""
from __future__ import annotations

import abc
import dataclasses
import json
import os
import re
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

from jaxlm.data import local
from jaxlm.data.local import DataReport
from jaxlm.errors import DataError

LOCAL_KINDS = ("text", "labeled", "tsv", "csv", "jsonl")
KINDS = ("tfds", "hfds") + LOCAL_KINDS
EXTS = {"text": (".txt", ""), "labeled": (".txt", ".tsv", ""), "tsv": (".tsv", ".txt"),
        "csv": (".csv",), "jsonl": (".jsonl", ".json")}
_SPLIT_RE = re.compile(r"^[A-Za-z_][\w]*(\[[^\]]*\])?(\+[A-Za-z_][\w]*(\[[^\]]*\])?)*$")
_VERSION_RE = re.compile(r"^\d+\.\d+\.\d+$")


@dataclass
class SourceOptions:
    """How to read a source; defaults come from the `data` config section."""

    encoding: str = "utf-8"
    data_dir: str = ""  # TFDS data_dir
    documents: str = "file"
    text_field: str = ""
    label_field: str = ""
    labels: list[str] = field(default_factory=list)
    on_invalid: str = "report"
    download: bool = False  # TFDS: download and prepare when missing (needs the internet)
    streaming: bool = False  # hfds: read an IterableDataset, in order only (no training)
    revision: str = ""  # hfds: the Hub revision (a commit pins the data a run resumes on)

    @classmethod
    def from_config(cls, data_cfg: Any) -> "SourceOptions":
        """The options set in a `data:` config section."""
        return cls(encoding=data_cfg.encoding, data_dir=data_cfg.tfds_data_dir,
                   documents=data_cfg.documents, text_field=data_cfg.text_field,
                   label_field=data_cfg.label_field, labels=[str(x) for x in data_cfg.labels],
                   on_invalid=data_cfg.on_invalid or "report")

    def tfds_data_dir(self) -> str | None:
        """The TFDS data_dir: the option, else $TFDS_DATA_DIR, else None (TFDS's default)."""
        return self.data_dir or os.environ.get("TFDS_DATA_DIR") or None


@dataclass
class Spec:
    """A parsed dataset spec."""

    kind: str
    target: str  # TFDS name (with /config, :version) or a local path
    split: str | None
    options: SourceOptions
    text: str  # the spec as written

    @property
    def path(self) -> Path:
        """The target as a local path."""
        return Path(self.target)


def parse_spec(spec: str, options: SourceOptions | None = None) -> Spec:
    """Parse `KIND:TARGET[:SPLIT][?key=value&...]`; see the module docstring."""
    text = spec.strip()
    opts = dataclasses.replace(options or SourceOptions())
    if not text:
        raise DataError("Empty dataset spec. Name a dataset, e.g. 'tfds:imdb_reviews' or "
                        "'labeled:{data_root}/sst2'.", culprit="spec")
    body, _, query = text.partition("?")
    if query:
        _apply_query(opts, query, text)
    kind, sep, target = body.partition(":")
    if not sep or kind not in KINDS:
        if sep and re.fullmatch(r"[a-z_]+", kind) and not Path(body).exists():
            raise DataError(f"Unknown dataset kind '{kind}' in '{text}'. Use one of "
                            f"{', '.join(k + ':' for k in KINDS)} (or a bare path for text).",
                            culprit=text)
        kind, target = "text", body
    split = None
    if kind == "tfds":
        name, _, rest = target.partition(":")
        if rest:
            version, _, after = rest.partition(":")
            if _VERSION_RE.match(version):
                name, rest = f"{name}:{version}", after
            split = rest or None
        target = name
        if not re.fullmatch(r"[a-z][a-z0-9_]*(/[\w.-]+)?(:[\d.]+)?", target):
            raise DataError(f"'{target}' in '{text}' is not a TFDS dataset name (snake_case, "
                            "optionally /CONFIG), e.g. tfds:imdb_reviews or tfds:glue/sst2.",
                            culprit=text)
    elif kind == "hfds":
        from jaxlm.data.hf_datasets import parse_target
        target, split = parse_target(target, text, _SPLIT_RE)
    elif ":" in target:
        head, _, tail = target.rpartition(":")
        if _SPLIT_RE.match(tail) and not Path(target).exists() and Path(head).exists():
            target, split = head, tail
    if split is not None and not _SPLIT_RE.match(split):
        raise DataError(f"'{split}' in '{text}' is not a split name (e.g. train, validation, "
                        "test, train[:10%]).", culprit=text)
    return Spec(kind, target, split, opts, text)


def _apply_query(opts: SourceOptions, query: str, spec: str) -> None:
    names = {f.name for f in dataclasses.fields(SourceOptions)}
    for key, value in urllib.parse.parse_qsl(query, keep_blank_values=True):
        if key not in names:
            raise DataError(f"Unknown option '{key}' in dataset spec '{spec}'. Options: "
                            f"{', '.join(sorted(names))}.", culprit=spec)
        if key == "labels":
            opts.labels = [x for x in value.split(",") if x]
        elif key in ("download", "streaming"):
            setattr(opts, key, value.lower() in ("1", "true", "yes"))
        else:
            setattr(opts, key, value)
    if opts.documents not in ("file", "blank_line", "line"):
        raise DataError(f"documents={opts.documents!r} in '{spec}' must be file, blank_line or "
                        "line.", culprit=spec)
    if opts.on_invalid not in ("report", "error"):
        raise DataError(f"on_invalid={opts.on_invalid!r} in '{spec}' must be report or error.",
                        culprit=spec)


# ---------------------------------------------------------------------------------------------
# Sources


class Source(abc.ABC):
    """One split of a dataset: random access to examples {"text": str, "label": int (or -1)}."""

    spec: Spec
    split: str
    label_names: list[str] | None  # None: an unlabeled (language-modelling) source
    report: DataReport
    streamed = False  # True: read in order by texts() only, no len or random access

    @abc.abstractmethod
    def __len__(self) -> int:
        """The number of examples."""

    @abc.abstractmethod
    def __getitem__(self, i: int) -> dict[str, Any]:
        """Example i: {"text": str, "label": int (-1 when unlabeled)}."""

    def texts(self) -> Iterator[str]:
        """Every example's text, in order."""
        for i in range(len(self)):
            yield self[i]["text"]

    @property
    def name(self) -> str:
        """A short name for messages: kind:target [split]."""
        return f"{self.spec.kind}:{self.spec.target} [{self.split}]"


class ListSource(Source):
    """Examples held in memory (local files)."""

    def __init__(self, spec: Spec, split: str, texts: list[str], labels: list[int] | None,
                 label_names: list[str] | None, report: DataReport, files: Sequence[Path] = ()):
        self.spec, self.split, self.label_names, self.report = spec, split, label_names, report
        self._texts, self._labels, self.files = texts, labels, list(files)

    def __len__(self) -> int:
        return len(self._texts)

    def __getitem__(self, i: int) -> dict[str, Any]:
        i = int(i)
        return {"text": self._texts[i], "label": self._labels[i] if self._labels else -1}

    def texts(self) -> Iterator[str]:
        """Every example's text, in order."""
        return iter(self._texts)


def _local_records(spec: Spec, path: Path, report: DataReport) -> tuple[list[local.Record], bool]:
    o = spec.options
    if spec.kind == "text":
        return local.read_text_documents(path, o.encoding, o.documents, report), False
    if spec.kind == "labeled":
        return local.read_labeled(path, o.encoding, report), True
    if spec.kind in ("tsv", "csv"):
        return local.read_delimited(path, o.encoding, "\t" if spec.kind == "tsv" else ",",
                                    o.text_field, o.label_field, report)
    return local.read_jsonl(path, o.encoding, o.text_field, o.label_field, report)


def _local_file(spec: Spec, split: str) -> Path:
    p = spec.path
    if p.is_dir():
        f = local.find_split_file(p, split, EXTS[spec.kind])
        if f is None:
            found = ", ".join(sorted(x.name for x in p.iterdir() if x.is_file())) or "nothing"
            stems = "/".join(local.SPLIT_FILES.get(split, (split,)))
            raise DataError(f"No '{split}' split in '{p}': expected a file named {stems} with "
                            f"extension {' or '.join(e or 'none' for e in EXTS[spec.kind])}; "
                            f"found {found}.", culprit=str(p))
        return f
    if not p.exists():
        raise DataError(f"The data file '{p}' does not exist. The default data location is "
                        "../shared/data next to the repository; set JAXLM_DATA or the config key "
                        "data_root to where your copy lives.", culprit=str(p))
    return p


def local_splits(spec: Spec) -> dict[str, Path]:
    """split -> file for a local spec (a single file is its own 'train' split)."""
    if not spec.path.is_dir():
        return {spec.split or "train": _local_file(spec, "train")}
    out = {}
    for split in local.SPLIT_FILES:
        f = local.find_split_file(spec.path, split, EXTS[spec.kind])
        if f is not None:
            out[split] = f
    return out


def _map_labels(records: list[local.Record], names: list[str], declared: bool,
                report: DataReport) -> tuple[list[str], list[int]]:
    index = {n: i for i, n in enumerate(names)}
    texts, labels = [], []
    for text, label, where in records:
        if label not in index:
            what = "declared label set" if declared else "label set of the train split"
            report.add(f"label '{label}' outside the {what}", where,
                       f"Labels are {', '.join(names)}; declare the full set with data.labels "
                       "(spec option ?labels=a,b,c) if this label is valid.")
            continue
        texts.append(text)
        labels.append(index[label])
    return texts, labels


def open_local(spec: Spec, split: str, label_names: list[str] | None = None) -> ListSource:
    """One split of a local dataset (text/labeled/tsv/csv/jsonl), labels mapped to `label_names`."""
    path = _local_file(spec, split)
    o = spec.options
    report = DataReport(f"{path}", o.on_invalid)
    records, labeled = _local_records(spec, path, report)
    if not labeled:
        return ListSource(spec, split, [r[0] for r in records], None, None, report, [path])
    declared = bool(o.labels)
    if declared:
        names = [str(x) for x in o.labels]
    elif label_names is not None:
        names = list(label_names)
    elif split != "train" and spec.path.is_dir() and local.find_split_file(
            spec.path, "train", EXTS[spec.kind]):
        names = open_local(spec, "train").label_names or []  # the train split fixes the set
    else:
        names = local.sort_labels({r[1] for r in records if r[1] is not None})
    texts, labels = _map_labels(records, names, declared or label_names is not None, report)
    return ListSource(spec, split, texts, labels, names, report, [path])


class TfdsSource(Source):
    """A TFDS split read through `tfds.data_source` (array_record files, no TensorFlow)."""

    def __init__(self, spec: Spec, split: str, data_source: Any, builder: Any):
        self.spec, self.split, self._ds, self.builder = spec, split, data_source, builder
        self.report = DataReport(spec.text, spec.options.on_invalid)
        feats = builder.info.features
        names = list(feats.keys())
        o = spec.options
        text_keys = [k for k in names if type(feats[k]).__name__ == "Text"]
        self.text_key = local.pick_field(names, o.text_field, ("text",) + tuple(text_keys),
                                    "text", Path(spec.target), "data.text_field", True)
        self.label_key = local.pick_field(names, o.label_field, ("label",), "label",
                                     Path(spec.target), "data.label_field", False)
        self.label_names = None
        if self.label_key is not None:
            lf = feats[self.label_key]
            if hasattr(lf, "names"):
                self.label_names = list(lf.names)
            elif hasattr(lf, "num_classes"):
                self.label_names = [str(i) for i in range(lf.num_classes)]
            else:
                raise DataError(f"The label feature '{self.label_key}' of {spec.text} is "
                                f"{type(lf).__name__}, not a ClassLabel. Choose another feature "
                                "with data.label_field.", culprit=spec.text)

    def __len__(self) -> int:
        return len(self._ds)

    def __getitem__(self, i: int) -> dict[str, Any]:
        ex = self._ds[int(i)]
        text = ex[self.text_key]
        if isinstance(text, bytes):
            text = text.decode("utf-8")
        label = int(ex[self.label_key]) if self.label_key is not None else -1
        return {"text": str(text), "label": label}


# The keys under which TFDS's metadata names a feature class that it imports by name: the
# FeatureConnector proto's field, as protobuf's JSON parser reads it (JSON name or field name),
# and "type" of the legacy {"type": CLASS, "content": ...} form of features.json
# (tensorflow_datasets/core/features/feature.py: from_json, from_proto, cls_from_name).
_CLASS_KEYS = ("pythonClassName", "python_class_name")


def _check_feature_classes(name: str, data_dir: str | None) -> None:
    """Refuse a prepared dataset whose metadata (features.json, dataset_info.json) names a feature
    class outside TFDS: TFDS would import that module by name, running code chosen by whoever
    wrote the data folder. The files are parsed as JSON (escapes decoded, every nested object and
    repeated key seen), never matched as text; one that is not JSON is refused too."""
    root = Path(data_dir or "~/tensorflow_datasets").expanduser() / name.split("/")[0].split(":")[0]
    if not root.is_dir():
        return
    for path in sorted(root.glob("**/features.json")) + sorted(root.glob("**/dataset_info.json")):
        for cls in _feature_classes(path):
            if not (isinstance(cls, str) and cls.startswith("tensorflow_datasets.")):
                raise DataError(
                    f"'{path}' names the feature class {cls!r}, which is not part of TFDS; reading "
                    "the dataset would import and run that module. jaxlm only reads datasets "
                    "whose features are TFDS's own: rebuild it (e.g. `jaxlm data build`) or "
                    "check where the folder came from.", culprit=str(path))


def _feature_classes(path: Path) -> list[Any]:
    """Every value TFDS could read as a feature class name in one metadata file."""
    found: list[Any] = []

    def pairs(items: list[tuple[str, Any]]) -> dict:
        keys = {k for k, _ in items}
        found.extend(v for k, v in items
                     if k in _CLASS_KEYS or (k == "type" and "content" in keys))
        return dict(items)

    try:
        json.loads(path.read_bytes().decode("utf-8"), object_pairs_hook=pairs)
    except OSError:
        return []  # unreadable: TFDS reports it itself, importing nothing
    except (ValueError, RecursionError) as e:  # not UTF-8, not JSON, absurdly nested
        raise DataError(f"'{path}' is not valid JSON ({str(e)[:200]}), so jaxlm cannot check which "
                        "feature classes it names and will not let TFDS read it. Rebuild the "
                        "dataset (e.g. `jaxlm data build`) or restore the file.",
                        culprit=str(path)) from None
    return found


def tfds_builder(spec: Spec) -> Any:
    """The TFDS builder of a spec, or a DataError naming the data_dir searched."""
    import tensorflow_datasets as tfds

    data_dir = spec.options.tfds_data_dir()
    _check_feature_classes(spec.target, data_dir)
    try:
        return tfds.builder(spec.target, data_dir=data_dir, try_gcs=False)
    except Exception as e:  # DatasetNotFoundError and friends
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise DataError(
            f"TFDS dataset '{spec.target}' was not found ({first}) in data_dir "
            f"'{data_dir or '~/tensorflow_datasets (TFDS default)'}'. Check the name, set "
            "data.tfds_data_dir (or TFDS_DATA_DIR) to where it was prepared, or build it from "
            "local files with `jaxlm data build NAME --train FILE ... --data-dir DIR`.",
            culprit=spec.text) from None


def open_tfds(spec: Spec, split: str) -> TfdsSource:
    """One split of a prepared TFDS dataset, read through `tfds.data_source`."""
    import tensorflow_datasets as tfds

    builder = tfds_builder(spec)
    splits = list(builder.info.splits.keys())
    base = re.split(r"[\[+]", split)[0]
    if splits and base not in splits:
        raise DataError(f"TFDS dataset '{spec.target}' has no split '{base}'; it has "
                        f"{', '.join(splits)}. Name one with {spec.kind}:{spec.target}:SPLIT.",
                        culprit=spec.text)
    try:
        ds = tfds.data_source(spec.target, split=split, data_dir=spec.options.tfds_data_dir(),
                              download=spec.options.download, try_gcs=False)
    except DataError:
        raise
    except Exception as e:
        raise DataError(
            f"Could not read TFDS split '{split}' of '{spec.target}' ({type(e).__name__}: "
            f"{str(e)[:300]}). If it is not prepared yet, prepare it in array_record format "
            "(tfds build --file_format=array_record, or spec option ?download=true where the "
            "internet is reachable), or point data.tfds_data_dir at a prepared copy.",
            culprit=spec.text) from None
    return TfdsSource(spec, split, ds, builder)


def open_source(spec: str | Spec, split: str | None = None,
                options: SourceOptions | None = None,
                label_names: list[str] | None = None) -> Source:
    """Open one split. The spec's own `:SPLIT` wins over `split`; the default split is train.

    label_names: the label set of the train split, so validation/test map labels identically.
    """
    s = spec if isinstance(spec, Spec) else parse_spec(spec, options)
    split = s.split or split or "train"
    if s.kind == "tfds":
        return open_tfds(s, split)
    if s.kind == "hfds":
        from jaxlm.data.hf_datasets import open_hfds
        return open_hfds(s, split, label_names)
    src = open_local(s, split, label_names)
    if s.options.on_invalid == "report":
        src.report.warn()
    return src


def split_order(split: str) -> tuple[int, str]:
    """Sort key: train, validation, test, then the rest by name."""
    return ({"train": 0, "validation": 1, "test": 2}.get(split, 3), split)


def available_splits(spec: str | Spec, options: SourceOptions | None = None
                     ) -> dict[str, int | None]:
    """split name -> number of examples (None when unknown without reading)."""
    s = spec if isinstance(spec, Spec) else parse_spec(spec, options)
    if s.kind == "tfds":
        info = tfds_builder(s).info
        return {k: info.splits[k].num_examples for k in sorted(info.splits.keys(), key=split_order)}
    if s.kind == "hfds":
        from jaxlm.data import hf_datasets
        return hf_datasets.available_splits(s)
    return {k: None for k in local_splits(s)}


def has_split(spec: str | Spec, split: str, options: SourceOptions | None = None) -> bool:
    """Whether a spec (without an explicit :SPLIT) has `split`."""
    s = spec if isinstance(spec, Spec) else parse_spec(spec, options)
    if s.split is not None:
        return False  # an explicit split pins the spec to one split
    if s.kind not in ("tfds", "hfds") and not s.path.is_dir():
        return False
    return split in available_splits(s)
