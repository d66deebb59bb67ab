"""Classification and language-model metrics computed on the host from predictions.

Precision/recall/F1 follow the usual (scikit-learn) convention: a class that is never predicted
has precision 0 (not NaN), a class absent from the labels has recall 0, and the macro average is
the unweighted mean over all declared classes.
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np


def confusion_matrix(labels: Sequence[int], preds: Sequence[int], num_classes: int) -> np.ndarray:
    """[true class, predicted class] counts."""
    cm = np.zeros((num_classes, num_classes), np.int64)
    np.add.at(cm, (np.asarray(labels, np.int64), np.asarray(preds, np.int64)), 1)
    return cm


def _safe_div(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.divide(a, b, out=np.zeros_like(a, dtype=np.float64), where=b > 0)


def classification_report(labels: Sequence[int], preds: Sequence[int], num_classes: int,
                          class_names: Sequence[str] | None = None,
                          loss: float | None = None) -> dict:
    """Accuracy, macro and per-class precision/recall/F1, and the confusion matrix."""
    cm = confusion_matrix(labels, preds, num_classes)
    tp = np.diag(cm).astype(np.float64)
    precision = _safe_div(tp, cm.sum(0).astype(np.float64))
    recall = _safe_div(tp, cm.sum(1).astype(np.float64))
    f1 = _safe_div(2 * precision * recall, precision + recall)
    names = list(class_names) if class_names else [str(i) for i in range(num_classes)]
    total = cm.sum()
    report = {
        "n": int(total),
        "accuracy": float(tp.sum() / total) if total else 0.0,
        "macro_precision": float(precision.mean()),
        "macro_recall": float(recall.mean()),
        "macro_f1": float(f1.mean()),
        "per_class": {n: {"precision": float(p), "recall": float(r), "f1": float(f),
                          "support": int(s)}
                      for n, p, r, f, s in zip(names, precision, recall, f1, cm.sum(1))},
        "confusion_matrix": cm.tolist(),
        "class_names": names,
    }
    if loss is not None:
        report["loss"] = float(loss)
    return report


def perplexity(mean_loss: float) -> float:
    """exp(mean loss), capped at exp(50) so a diverged run stays finite."""
    return float(math.exp(min(mean_loss, 50.0)))


def format_report(report: dict) -> str:
    """A plain-text table for the terminal: a classification report, a generation report
    (with its per-label table when the targets are labels), or a language model's loss."""
    if "exact_match" in report:
        return format_generation_report(report)
    if "per_class" not in report:
        return (f"loss {report['loss']:.4f}  perplexity {report['perplexity']:.3f}  "
                f"({report.get('tokens', 0):,} tokens)")
    lines = []
    if "loss" in report:
        lines.append(f"loss {report['loss']:.4f}")
    lines.append(f"accuracy {report['accuracy']:.4f}  macro P {report['macro_precision']:.4f}  "
                 f"R {report['macro_recall']:.4f}  F1 {report['macro_f1']:.4f}  (n={report['n']})")
    width = max(8, *(len(n) for n in report["class_names"]))
    lines.append(f"{'class':<{width}}  precision  recall     f1  support")
    for name, m in report["per_class"].items():
        lines.append(f"{name:<{width}}  {m['precision']:9.4f}  {m['recall']:6.4f}  {m['f1']:5.4f}"
                     f"  {m['support']:7d}")
    lines.append("confusion matrix (rows: true, columns: predicted)")
    for name, row in zip(report["class_names"], report["confusion_matrix"]):
        lines.append(f"{name:<{width}}  " + " ".join(f"{v:6d}" for v in row))
    return "\n".join(lines)


def format_generation_report(report: dict) -> str:
    """Loss on the targets, then the generation metrics; the label table when there is one."""
    lines = [f"target loss {report['loss']:.4f}  perplexity {report['perplexity']:.3f}  "
             f"token accuracy {report['token_accuracy']:.4f}  ({report['tokens']:,} tokens)",
             f"exact match {report['exact_match']:.4f}  BLEU {report['bleu']:.2f}  "
             f"ROUGE-1 {report['rouge1']:.2f}  ROUGE-2 {report['rouge2']:.2f}  "
             f"ROUGE-L {report['rougeL']:.2f}  (n={report['examples']})"]
    if "per_class" in report:
        lines.append(f"as labels: accuracy {report['accuracy']:.4f}  macro F1 "
                     f"{report['macro_f1']:.4f}  ({report['outside_labels']} outputs outside the "
                     "label set)")
        table = {"n": report["examples"], "accuracy": report["accuracy"],
                 "macro_precision": float("nan"), "macro_recall": float("nan"),
                 "macro_f1": report["macro_f1"], "per_class": report["per_class"],
                 "class_names": report["class_names"],
                 "confusion_matrix": report["confusion_matrix"]}
        lines.extend(format_report(table).splitlines()[1:])
    return "\n".join(lines)
