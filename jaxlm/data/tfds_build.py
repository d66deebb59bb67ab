"""Turn local files into a real TFDS dataset (array_record), readable later as `tfds:NAME`.

The builder is a `tfds.core.GeneratorBasedBuilder` made for the files at hand. It is not
registered by name (no code import is needed to read it back): TFDS finds a prepared dataset in
`data_dir/NAME/VERSION/` from its `dataset_info.json` and `features.json` alone, so any later
process reads it with `tfds.data_source(NAME, data_dir=DIR)`, i.e. the spec `tfds:NAME`.
"""
from __future__ import annotations

import dataclasses
import re
import shutil
from pathlib import Path

from jaxlm.data.sources import (LOCAL_KINDS, Source, SourceOptions, Spec, open_source,
                                parse_spec, split_order)
from jaxlm.errors import DataError

VERSION = "1.0.0"


def _camel(name: str) -> str:
    return "".join(p.capitalize() for p in name.split("_")) or "Dataset"


def _check_name(name: str) -> None:
    import tensorflow_datasets as tfds

    if not re.fullmatch(r"[a-z][a-z0-9_]*", name):
        raise DataError(f"Dataset name '{name}' must be snake_case (lower-case letters, digits "
                        "and _ , starting with a letter), e.g. my_sst2.", culprit=name)
    try:
        tfds.builder_cls(name)
    except Exception:  # not a registered TFDS dataset: good
        return
    raise DataError(f"'{name}' is the name of a standard TFDS dataset; a local build under that "
                    f"name would be read with the standard builder's code. Choose another name, "
                    f"e.g. local_{name}.", culprit=name)


def make_builder_class(name: str, sources: dict[str, Source], label_names: list[str] | None,
                       description: str) -> type:
    """A GeneratorBasedBuilder subclass that writes `sources` (split -> Source) as-is, in order."""
    import tensorflow_datasets as tfds

    def _info(self):
        feats = {"text": tfds.features.Text()}
        if label_names is not None:
            feats["label"] = tfds.features.ClassLabel(names=label_names)
        return tfds.core.DatasetInfo(
            builder=self, description=description,
            features=tfds.features.FeaturesDict(feats),
            supervised_keys=("text", "label") if label_names is not None else None,
            disable_shuffling=True)  # keep file order: record i is example i of the file

    def _split_generators(self, dl_manager):
        del dl_manager
        return {split: self._generate_examples(split) for split in sources}

    def _generate_examples(self, split):
        src = sources[split]
        for i in range(len(src)):
            ex = src[i]
            out = {"text": ex["text"]}
            if label_names is not None:
                out["label"] = ex["label"]
            yield i, out

    attrs = {"name": name, "VERSION": tfds.core.Version(VERSION),
             "RELEASE_NOTES": {VERSION: "Built by `jaxlm data build` from local files."},
             "_info": _info, "_split_generators": _split_generators,
             "_generate_examples": _generate_examples, "__module__": __name__,
             "code_path": None}  # no code directory: nothing to look up (checksums, metadata)
    with tfds.core.registered.skip_registration():
        return type(_camel(name), (tfds.core.GeneratorBasedBuilder,), attrs)


def build_dataset(name: str, files: dict[str, str], data_dir: str | Path, *, fmt: str = "labeled",
                  options: SourceOptions | None = None, overwrite: bool = False) -> dict[str, int]:
    """Build TFDS dataset `name` in `data_dir` from split -> local file (or local spec).

    Returns split -> number of examples. The train split (if given) fixes the label set unless
    `options.labels` declares it.
    """
    import tensorflow_datasets as tfds

    _check_name(name)
    if fmt not in LOCAL_KINDS:
        raise DataError(f"--format {fmt} is not one of {', '.join(LOCAL_KINDS)}.", culprit=fmt)
    if not files:
        raise DataError("No files to build from: pass at least --train FILE.", culprit=name)
    opts = dataclasses.replace(options or SourceOptions())
    target = Path(data_dir) / name
    if target.exists():
        if not overwrite:
            raise DataError(f"'{target}' already exists. Pass --overwrite to rebuild it, or choose "
                            "another name or --data-dir.", culprit=str(target))
        shutil.rmtree(target)
    order = sorted(files, key=split_order)  # train first: it fixes the labels
    sources: dict[str, Source] = {}
    label_names = None
    for split in order:
        f = files[split]
        is_spec = f.split(":", 1)[0] in LOCAL_KINDS
        spec = parse_spec(f, opts) if is_spec else Spec(fmt, f, None, opts, f"{fmt}:{f}")
        src = open_source(spec, split, opts, label_names=label_names)
        if len(src) == 0:
            raise DataError(f"The {split} file '{f}' has no usable examples "
                            f"({src.report.summary() or 'it is empty'}).", culprit=f)
        if label_names is None:
            label_names = src.label_names
        sources[split] = src
    desc = "Local files: " + ", ".join(f"{s}={files[s]}" for s in order) + \
        f" (format {fmt}, encoding {opts.encoding})."
    cls = make_builder_class(name, sources, label_names, desc)
    builder = cls(data_dir=str(data_dir), file_format="array_record")
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
        try_download_gcs=False))
    return {s: builder.info.splits[s].num_examples for s in order}
