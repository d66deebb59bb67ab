"""Scoring generations: BLEU / ROUGE against references (perplexity is `jaxlm.evaluation`'s).

BLEU comes from `sacrebleu` (corpus BLEU, its default 13a tokenisation) and ROUGE from Google's
`rouge-score` (F1 of ROUGE-1/2/L with stemming, averaged over pairs): the reference
implementations, so the numbers compare with published ones.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence


from jaxlm.errors import DataError

ROUGE_TYPES = ("rouge1", "rouge2", "rougeL")


def read_lines(path: str | Path, what: str, encoding: str = "utf-8") -> list[str]:
    """Non-empty lines of a text file (one prompt or reference per line), trailing newline off."""
    p = Path(path)
    if not p.is_file():
        raise DataError(f"The {what} '{p}' does not exist. Pass a text file with one entry per "
                        "line.", culprit=str(p))
    try:
        lines = p.read_text(encoding=encoding).splitlines()
    except UnicodeDecodeError as e:
        raise DataError(f"The {what} '{p}' is not valid {encoding} (byte {e.start}). Save it as "
                        "UTF-8.", culprit=str(p)) from None
    lines = [line for line in lines if line.strip()]
    if not lines:
        raise DataError(f"The {what} '{p}' has no non-empty lines.", culprit=str(p))
    return lines


def bleu_rouge(predictions: Sequence[str], references: Sequence[str]) -> dict[str, float]:
    """Corpus BLEU (0-100) and mean ROUGE-1/2/L F1 (0-100) of predictions against references."""
    try:
        import sacrebleu
        from rouge_score import rouge_scorer
    except ImportError as e:
        raise DataError(f"Scoring needs sacrebleu and rouge-score ({e}). Install them with "
                        "`pip install 'jaxlm[eval]'`.", culprit="references") from None
    if len(predictions) != len(references):
        raise DataError(f"{len(predictions)} generations but {len(references)} references: the "
                        "reference file needs exactly one line per prompt, in the same order.",
                        culprit="references")
    bleu = sacrebleu.corpus_bleu(list(predictions), [list(references)])
    scorer = rouge_scorer.RougeScorer(list(ROUGE_TYPES), use_stemmer=True)
    sums = dict.fromkeys(ROUGE_TYPES, 0.0)
    for pred, ref in zip(predictions, references):
        scores = scorer.score(ref, pred)  # (target, prediction)
        for k in ROUGE_TYPES:
            sums[k] += scores[k].fmeasure
    n = max(len(predictions), 1)
    return {"bleu": float(bleu.score), **{k: 100.0 * v / n for k, v in sums.items()}}


def normalize(text: str) -> str:
    """Text compared for exact match: surrounding whitespace off, inner runs of it as one space."""
    return " ".join(text.split())


def generation_report(predictions: Sequence[str], references: Sequence[str],
                      labels: Sequence[str] | None = None) -> dict:
    """Exact match (fraction), BLEU and ROUGE-1/2/L (0-100) of generations; when the references
    are a closed set of `labels`, also accuracy, macro-F1 and the per-label report, with any
    generation outside the set counted as a wrong prediction."""
    from jaxlm.metrics import classification_report

    preds, refs = [normalize(p) for p in predictions], [normalize(r) for r in references]
    n = max(len(refs), 1)
    report = {"exact_match": sum(p == r for p, r in zip(preds, refs)) / n,
              **bleu_rouge(preds, refs), "examples": len(refs)}
    if labels:
        names = [normalize(x) for x in labels]
        index = {name: i for i, name in enumerate(names)}
        other = len(names)  # any generation that is not a label
        cls = classification_report([index[r] for r in refs],
                                    [index.get(p, other) for p in preds], other + 1,
                                    names + ["(other)"])
        macro = [cls["per_class"][name]["f1"] for name in names]
        report.update(accuracy=cls["accuracy"], macro_f1=sum(macro) / len(macro),
                      per_class={k: v for k, v in cls["per_class"].items()},
                      confusion_matrix=cls["confusion_matrix"], class_names=cls["class_names"],
                      outside_labels=sum(1 for p in preds if p not in index))
    return report
