"""Hugging Face `datasets` as a jaxlm source: the `hfds:` dataset specs.

    hfds:OWNER/NAME[/CONFIG][:SPLIT]   a Hub dataset (online, or from datasets' cache offline)
    hfds:PATH[:SPLIT]                  a local Parquet / Arrow / JSON(L) / CSV file, a folder or
                                       glob of them (splits inferred from file names, as
                                       `load_dataset(folder)` does), or a `save_to_disk` folder

A split is read as a map-style `datasets.Dataset`: Arrow files memory-mapped from disk (the cache,
or the save_to_disk folder), never loaded into RAM, with random access so grain shuffles, shards
per host and resumes by index exactly as for the other sources. `?streaming=true` reads an
`IterableDataset` instead: in order, once, without downloading the whole dataset first. A stream
has no length and no random access, so it serves `jaxlm train-tokenizer` and `jaxlm data show`
only; training from a stream is refused (its position could not be restored exactly), with the
way to read it memory-mapped instead. `?revision=COMMIT` pins a Hub dataset, so a resumed run
reads the same rows even if the dataset changes on the Hub. `datasets` is an optional extra,
imported on first use.
"""
from __future__ import annotations

import glob
import os
import re
from pathlib import Path
from typing import Any, Iterator

from jaxlm.data import local
from jaxlm.data.local import DataReport
from jaxlm.data.sources import Source, Spec
from jaxlm.errors import DataError

INSTALL = "pip install 'jaxlm[datasets]'"
BUILDERS = {".parquet": "parquet", ".arrow": "arrow", ".json": "json", ".jsonl": "json",
            ".csv": "csv"}
_HUB_RE = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+){0,2}$")
_STREAM_SLICE_RE = re.compile(r"^(\w+)(?:\[(\d*):(\d*)\])?$")
_OFFLINE_FIX = ("To work offline, download it where the internet is reachable and save it "
                "(`datasets.load_dataset(NAME).save_to_disk(DIR)`, then hfds:DIR), or export its "
                "splits to Parquet files and point hfds: at them (hfds:DIR holding train.parquet, "
                "validation.parquet, ...).")


def _datasets(spec: Spec) -> Any:
    """The `datasets` module, or a DataError saying how to install it."""
    try:
        import datasets
    except ImportError:
        raise DataError(f"The dataset spec '{spec.text}' reads Hugging Face datasets, which needs "
                        f"the optional `datasets` package: install it with {INSTALL} (or pip "
                        "install datasets), or use a jsonl:/csv:/tfds: spec instead.",
                        culprit=spec.text) from None
    return datasets


# ---------------------------------------------------------------------------------------------
# Spec parsing (no `datasets` import: parse_spec must stay cheap)


def is_local(target: str) -> bool:
    """Whether an hfds target names local files rather than a Hub id."""
    return (Path(target).expanduser().exists() or any(c in target for c in "*?[")
            or target.startswith(("/", ".", "~")) or Path(target).suffix.lower() in BUILDERS)


def parse_target(target: str, text: str, split_re: re.Pattern) -> tuple[str, str | None]:
    """(target, split) of `hfds:TARGET[:SPLIT]`; a Hub id is checked for shape here."""
    split = None
    if ":" in target and not Path(target).exists():
        for i in [i for i, c in enumerate(target) if c == ":"]:  # leftmost: train[:10%] has ':'
            if i and split_re.match(target[i + 1:]):
                target, split = target[:i], target[i + 1:]
                break
    if not target:
        raise DataError(f"'{text}' names no dataset: write hfds:OWNER/NAME[/CONFIG][:SPLIT] for "
                        "a Hub dataset or hfds:PATH for local files.", culprit=text)
    if not is_local(target) and not _HUB_RE.match(target):
        raise DataError(f"'{target}' in '{text}' is neither an existing local path nor a Hugging "
                        "Face Hub id (OWNER/NAME, optionally /CONFIG), e.g. "
                        "hfds:stanfordnlp/imdb:test or hfds:nyu-mll/glue/sst2:validation.",
                        culprit=text)
    return target, split


def hub_parts(target: str) -> tuple[str, str | None]:
    """(repo id, config) of a Hub target: OWNER/NAME/CONFIG, OWNER/NAME, or a bare NAME."""
    parts = target.split("/")
    return ("/".join(parts[:2]), parts[2]) if len(parts) == 3 else (target, None)


# ---------------------------------------------------------------------------------------------
# Loading


def _is_saved(path: Path) -> bool:
    """Whether a folder was written by `save_to_disk` (a DatasetDict or one Dataset)."""
    return path.is_dir() and ((path / "dataset_dict.json").is_file()
                              or (path / "state.json").is_file())


def _builder(spec: Spec, files: list[str]) -> str:
    kinds = {BUILDERS.get(Path(f).suffix.lower()) for f in files}
    if None in kinds or len(kinds) != 1:
        raise DataError(f"'{spec.target}' in '{spec.text}' matches files of kinds jaxlm cannot "
                        f"read with one `datasets` builder ({', '.join(sorted(map(str, kinds)))}); "
                        f"use files ending in {', '.join(BUILDERS)}, all of one kind.",
                        culprit=spec.text)
    return kinds.pop()


def _no_path(spec: Spec) -> DataError:
    return DataError(f"The local path '{spec.target}' in '{spec.text}' does not exist (or the glob "
                     "matches no file). Point hfds: at a Parquet/Arrow/JSON(L)/CSV file, a folder "
                     "or glob of them, or a save_to_disk folder; a Hub dataset is written "
                     "OWNER/NAME without a leading / or ./.", culprit=spec.text)


def _load_local(ds: Any, spec: Spec) -> Any:
    path = Path(spec.target).expanduser()
    stream = spec.options.streaming
    if _is_saved(path):
        if stream:
            raise DataError(f"'{spec.text}' is a save_to_disk folder, which is already memory-"
                            "mapped from disk: drop ?streaming=true.", culprit=spec.text)
        return ds.load_from_disk(str(path))
    if path.is_dir():
        return ds.load_dataset(str(path), streaming=stream)
    files = sorted(glob.glob(os.path.expanduser(spec.target))) if not path.exists() else [
        str(path)]
    if not files:
        raise _no_path(spec)
    return ds.load_dataset(_builder(spec, files), data_files=files, streaming=stream)


def _load(spec: Spec) -> Any:
    """The whole dataset: a DatasetDict (or one Dataset), Iterable* when streaming."""
    ds = _datasets(spec)
    from datasets import exceptions as dx

    local_ = is_local(spec.target)
    if local_ and not glob.glob(os.path.expanduser(spec.target)):
        raise _no_path(spec)
    repo, config = hub_parts(spec.target)
    offline = ds.config.HF_DATASETS_OFFLINE or os.environ.get("HF_HUB_OFFLINE") == "1"
    try:
        if local_:
            return _load_local(ds, spec)
        return ds.load_dataset(repo, config, streaming=spec.options.streaming,
                               revision=spec.options.revision or None)
    except DataError:
        raise
    except (dx.DatasetNotFoundError, dx.DataFilesNotFoundError) as e:
        if local_:
            raise DataError(f"'{spec.target}' in '{spec.text}' holds no data files `datasets` can "
                            f"read ({_first(e)}). Put Parquet/Arrow/JSON(L)/CSV files there "
                            "(train.parquet, validation.parquet, ...), or name one file.",
                            culprit=spec.text) from None
        if offline:
            raise _offline(spec, repo, e) from None
        raise DataError(f"No Hugging Face dataset '{repo}' for '{spec.text}' ({_first(e)}). "
                        "Check the Hub id (OWNER/NAME) and that you have access, or point hfds: "
                        "at local files.", culprit=spec.text) from None
    except ConnectionError as e:
        raise _offline(spec, repo, e) from None
    except ValueError as e:
        if config is not None and "config" in str(e).lower():
            raise DataError(f"The Hub dataset '{repo}' has no config '{config}' ({_first(e)}). "
                            f"Write hfds:{repo}/CONFIG with one of its configs.",
                            culprit=spec.text) from None
        raise _unreadable(spec, e) from None
    except Exception as e:  # a corrupt file, a schema mismatch between files, ...
        if not local_ and any(re.search("Connect|Timeout|Offline", c.__name__)
                              for c in type(e).__mro__):  # httpx/requests network errors
            raise _offline(spec, repo, e) from None
        raise _unreadable(spec, e) from None


def _first(e: Exception) -> str:
    text = str(e).strip()
    return (text.splitlines()[0][:300] if text else type(e).__name__)


def _offline(spec: Spec, repo: str, e: Exception) -> DataError:
    return DataError(f"Cannot reach the Hugging Face Hub for '{repo}' in '{spec.text}' "
                     f"({_first(e)}): there is no network (or HF_DATASETS_OFFLINE / HF_HUB_OFFLINE "
                     f"is set) and it is not in the datasets cache. {_OFFLINE_FIX}",
                     culprit=spec.text)


def _unreadable(spec: Spec, e: Exception) -> DataError:
    fix = ("Check that the files are valid Parquet/Arrow/JSON(L)/CSV with the same columns."
           if is_local(spec.target) else "Check the Hub id, config and revision, or download "
           "the dataset elsewhere and point hfds: at a save_to_disk folder or Parquet files.")
    return DataError(f"Could not read '{spec.text}' with Hugging Face datasets "
                     f"({type(e).__name__}: {_first(e)}). {fix}", culprit=spec.text)


def _splits_of(loaded: Any) -> dict[str, Any]:
    """split -> dataset; a single saved Dataset is its own 'train' split."""
    return dict(loaded) if hasattr(loaded, "keys") else {"train": loaded}


def _unknown_split(spec: Spec, name: str, splits: dict[str, Any]) -> DataError:
    return DataError(f"'{spec.text}' has no split '{name}'; it has "
                     f"{', '.join(splits) or 'none'}. Name one with hfds:{spec.target}:SPLIT.",
                     culprit=spec.text)


def _select(ds: Any, spec: Spec, split: str, splits: dict[str, Any]) -> Any:
    """A split instruction (train, train[:10%], train+validation) as one memory-mapped Dataset."""
    for name in re.findall(r"(?:^|\+)(\w+)", split):
        if name not in splits:
            raise _unknown_split(spec, name, splits)
    if split in splits:
        return splits[split]
    sizes = {k: len(v) for k, v in splits.items()}
    try:
        parts = ds.ReadInstruction.from_spec(split).to_absolute(sizes)
    except (ValueError, AssertionError) as e:
        raise DataError(f"'{split}' in '{spec.text}' is not a split instruction datasets accepts "
                        f"({_first(e)}), e.g. train, train[:10%], train[100:200].",
                        culprit=spec.text) from None
    pieces = [splits[p.splitname].select(range(p.from_, p.to)) for p in parts]
    return pieces[0] if len(pieces) == 1 else ds.concatenate_datasets(pieces)


def _select_stream(spec: Spec, split: str, splits: dict[str, Any]) -> Any:
    m = _STREAM_SLICE_RE.match(split)
    if not m:
        raise DataError(f"'{split}' in '{spec.text}': a streamed split takes one name with an "
                        "optional absolute slice (train, train[:100000]); percentages and + need "
                        "the split's length, which a stream does not know.", culprit=spec.text)
    name, start, stop = m.groups()
    if name not in splits:
        raise _unknown_split(spec, name, splits)
    out = splits[name]
    if start:
        out = out.skip(int(start))
    if stop:
        out = out.take(int(stop) - int(start or 0))
    return out


def open_dataset(spec: Spec, split: str) -> tuple[Any, dict[str, Any]]:
    """(one split as a `datasets.Dataset` or, with ?streaming=true, an `IterableDataset`;
    every split by name)."""
    ds = _datasets(spec)
    splits = _splits_of(_load(spec))
    if spec.options.streaming:
        return _select_stream(spec, split, splits), splits
    return _select(ds, spec, split, splits), splits


def available_splits(spec: Spec) -> dict[str, int | None]:
    """split name -> number of examples (None for a stream)."""
    from jaxlm.data.sources import split_order

    splits = _splits_of(_load(spec))
    return {k: (None if spec.options.streaming else len(splits[k]))
            for k in sorted(splits, key=split_order)}


# ---------------------------------------------------------------------------------------------
# Sources


def _columns(ds: Any) -> dict[str, Any]:
    return dict(ds.features) if ds.features is not None else {}


class HfSource(Source):
    """One split of a `datasets.Dataset`, read on access from its memory-mapped Arrow files."""

    def __init__(self, spec: Spec, split: str, dataset: Any, label_names: list[str] | None):
        self.spec, self.split = spec, split
        self.report = DataReport(spec.text, spec.options.on_invalid)
        feats = _columns(dataset)
        names = list(feats)
        o, where = spec.options, Path(spec.text)
        strings = tuple(k for k, f in feats.items()
                        if getattr(f, "dtype", "") in ("string", "large_string"))
        self.text_key = local.pick_field(names, o.text_field, local.TEXT_NAMES + strings, "text",
                                         where, "data.text_field", True)
        self.label_key = local.pick_field(names, o.label_field, local.LABEL_NAMES, "label",
                                          where, "data.label_field", False)
        keys = [self.text_key] + ([self.label_key] if self.label_key else [])
        self._ds = dataset.select_columns(keys)  # a view: still the same memory-mapped files
        self._index: dict[str, int] | None = None
        self.label_names = None
        if self.label_key is not None:
            self._labels(feats[self.label_key], label_names)

    def _labels(self, feature: Any, given: list[str] | None) -> None:
        """Label names: a ClassLabel's own; else data.labels, the train split's, or the sorted
        values, every value checked against them up front (random access cannot skip rows)."""
        if hasattr(feature, "names"):
            self.label_names = list(feature.names)
            if given is not None and list(given) != self.label_names:
                raise DataError(f"The class labels of {self.spec.text} [{self.split}] are "
                                f"{', '.join(self.label_names)}, and the train split's are "
                                f"{', '.join(given)}: the label ids would not mean the same "
                                "classes. Use splits with one ClassLabel feature.",
                                culprit=self.spec.text)
            return
        if not hasattr(feature, "dtype"):
            raise DataError(f"The label column '{self.label_key}' of {self.spec.text} is "
                            f"{type(feature).__name__}, not a class label or a scalar. Choose "
                            "another column with data.label_field.", culprit=self.spec.text)
        values = {str(v).strip() for v in self._ds.unique(self.label_key) if v is not None}
        declared = [str(x) for x in self.spec.options.labels]
        names = declared or (list(given) if given is not None else local.sort_labels(values))
        unknown = sorted(values - set(names))
        if unknown:
            raise DataError(f"The label column '{self.label_key}' of {self.spec.text} "
                            f"[{self.split}] holds {', '.join(unknown[:5])}, outside the label set "
                            f"{', '.join(names)}. Declare the full set with data.labels (spec "
                            "option ?labels=a,b,c), or fix the data.", culprit=self.spec.text)
        self.label_names, self._index = names, {n: i for i, n in enumerate(names)}

    def __len__(self) -> int:
        return len(self._ds)

    def _example(self, row: dict[str, Any]) -> dict[str, Any]:
        text = row[self.text_key]
        text = "" if text is None else text.decode("utf-8") if isinstance(text, bytes) else text
        value = row[self.label_key] if self.label_key else None
        if value is None:
            label = -1
        elif self._index is None:
            label = int(value)  # a ClassLabel id (-1: no label, as in GLUE's test splits)
        else:
            label = self._index[str(value).strip()]
        return {"text": str(text), "label": label}

    def __getitem__(self, i: int) -> dict[str, Any]:
        return self._example(self._ds[int(i)])

    def texts(self) -> Iterator[str]:
        """Every text in order, read in Arrow batches (much faster than row by row)."""
        for batch in self._ds.iter(batch_size=1024):
            for t in batch[self.text_key]:
                yield "" if t is None else str(t)


class HfStreamSource(Source):
    """A streamed split: read in order only; no length or random access (see module docstring)."""

    label_names = None
    streamed = True

    def __init__(self, spec: Spec, split: str, stream: Any):
        self.spec, self.split, self._stream = spec, split, stream
        self.report = DataReport(spec.text, spec.options.on_invalid)
        names = list(_columns(stream)) if stream.features is not None else []
        self.text_key = local.pick_field(names, spec.options.text_field, local.TEXT_NAMES, "text",
                                         Path(spec.text), "data.text_field", True) if names \
            else (spec.options.text_field or "text")

    def _refuse(self) -> DataError:
        return DataError(
            f"'{self.spec.text}' is streamed (?streaming=true): its examples can only be read in "
            "order, so it has no length and no random access, which training and evaluation need "
            "to shuffle, shard across hosts and resume exactly from a checkpoint. Drop "
            "?streaming=true to read it memory-mapped from the datasets cache (it takes disk "
            "space, not memory), or save the part you need with save_to_disk / to_parquet and "
            "point hfds: at it. Streaming serves `jaxlm train-tokenizer` and `jaxlm data show`.",
            culprit=self.spec.text)

    def __len__(self) -> int:
        raise self._refuse()

    def __bool__(self) -> bool:
        """A source is truthy (`if train:`) without a length."""
        return True

    def __getitem__(self, i: int) -> dict[str, Any]:
        raise self._refuse()

    def texts(self) -> Iterator[str]:
        """Every text, in the stream's order."""
        for row in self._stream:
            if self.text_key not in row:
                raise DataError(f"{self.spec.text} has no text field '{self.text_key}'; its "
                                f"fields are {', '.join(row)}. Set data.text_field (spec option "
                                "?text_field=NAME).", culprit=self.text_key)
            t = row[self.text_key]
            yield "" if t is None else str(t)


def open_hfds(spec: Spec, split: str, label_names: list[str] | None = None) -> Source:
    """One split of an hfds: spec as a source (labels mapped to `label_names` when not a
    ClassLabel, so validation/test share the train split's label ids)."""
    data, splits = open_dataset(spec, split)
    if spec.options.streaming:
        return HfStreamSource(spec, split, data)
    if label_names is None and not spec.options.labels and split != "train" and "train" in splits:
        train = HfSource(spec, "train", splits["train"], None)  # the train split fixes the set
        label_names = train.label_names
    return HfSource(spec, split, data, label_names)


# ---------------------------------------------------------------------------------------------
# Records (generative fine-tuning)


class HfRecords:
    """A Dataset's rows as records: values as text, ClassLabel ids as their names."""

    def __init__(self, dataset: Any):
        self.ds, self.features = dataset, _columns(dataset)

    def __len__(self) -> int:
        return len(self.ds)

    def __getitem__(self, i: int) -> dict[str, str]:
        from jaxlm.data.records import as_text

        out = {}
        for key, value in self.ds[int(i)].items():
            if value is None:
                continue  # as a JSON null in jsonl: the field is absent
            feature = self.features.get(key)
            if hasattr(feature, "int2str") and isinstance(value, int) and value >= 0:
                value = feature.int2str(value)
            out[key] = as_text(value)
        return out


def open_records(spec: Spec, split: str) -> HfRecords:
    """One split of an hfds: spec as records (random access; streams are refused)."""
    data, _ = open_dataset(spec, split)
    if spec.options.streaming:
        raise HfStreamSource(spec, split, data)._refuse()
    return HfRecords(data)
