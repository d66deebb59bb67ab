"""Write the unlabelled pretraining corpus for the fine-tuning experiments.

Contents (one sentence a line; each line is one document, `data.documents: line`):
  - the SST sentences of the SST-5 train and dev splits (a superset of SST-2's, with the neutral
    sentences), labels removed;
  - the TREC training questions, labels removed.
Tiny Shakespeare is left out by default (`--shakespeare` adds it): on a 2-core CPU the pretraining
budget is a few million tokens, and spending half of it on Elizabethan verse buys the movie-review
and question classifiers less than more passes over in-domain sentences.
No sentence of any test split (SST-2, SST-5, TREC) is included: any train/dev line whose text also
occurs in a test file is dropped, and the script prints how many were.

Usage: python scripts/make_pretrain_corpus.py [--data ../shared/data] [--out runs/corpus/pretrain.txt]
       [--shakespeare]
"""
from __future__ import annotations

import argparse
import os
import random
from pathlib import Path


def texts(path: Path, encoding: str = "utf-8") -> list[str]:
    lines = path.read_bytes().decode(encoding).splitlines()
    return [line.split(" ", 1)[1].strip() for line in lines if " " in line.strip()]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=os.environ.get("JAXLM_DATA", "../shared/data"))
    ap.add_argument("--out", default="runs/corpus/pretrain.txt")
    ap.add_argument("--shakespeare", action="store_true", help="append Tiny Shakespeare's lines")
    args = ap.parse_args()
    data = Path(args.data)
    test = set()
    for f in ("sst2/test.txt", "sst5/test.txt", "trec/test.txt"):
        test.update(texts(data / f, "iso-8859-1" if f.startswith("trec") else "utf-8"))
    lines, dropped = [], 0
    for files, enc in ((("sst5/train.txt", "sst5/dev.txt"), "utf-8"), (("trec/train.txt",), "iso-8859-1")):
        for f in files:
            for t in texts(data / f, enc):
                if t in test:
                    dropped += 1
                else:
                    lines.append(t)
    if args.shakespeare:
        shakespeare = (data / "tinyshakespeare/input.txt").read_text().splitlines()
        lines += [line for line in shakespeare if line.strip()]
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    random.Random(0).shuffle(lines)  # the last val_fraction of lines (validation) mixes all sources
    out.write_text("\n".join(lines) + "\n")
    print(f"wrote {out}: {out.stat().st_size / 1e6:.2f} MB, {len(lines):,} "
          f"lines; dropped {dropped} train/dev lines that also occur in a test split")


if __name__ == "__main__":
    main()
