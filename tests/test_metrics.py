"""Metrics against values computed by hand."""
import numpy as np
import pytest

from jaxlm.metrics import classification_report, confusion_matrix, format_report


def test_metrics_match_hand_computed_values_with_a_never_predicted_class():
    # 3 classes; class 2 is never predicted.
    labels = [0, 0, 0, 1, 1, 2, 2]
    preds = [0, 0, 1, 1, 1, 0, 1]
    r = classification_report(labels, preds, 3, ["neg", "pos", "other"])
    assert r["confusion_matrix"] == [[2, 1, 0], [0, 2, 0], [1, 1, 0]]
    assert r["accuracy"] == pytest.approx(4 / 7)
    # class 0: tp 2, predicted 3, true 3 -> P 2/3, R 2/3, F1 2/3
    # class 1: tp 2, predicted 4, true 2 -> P 1/2, R 1, F1 2/3
    # class 2: tp 0, predicted 0, true 2 -> P 0 (not NaN), R 0, F1 0
    pc = r["per_class"]
    assert pc["neg"]["precision"] == pytest.approx(2 / 3) and pc["neg"]["recall"] == pytest.approx(2 / 3)
    assert pc["pos"]["precision"] == pytest.approx(0.5) and pc["pos"]["recall"] == pytest.approx(1.0)
    assert pc["pos"]["f1"] == pytest.approx(2 / 3)
    assert pc["other"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 2}
    assert r["macro_precision"] == pytest.approx((2 / 3 + 0.5 + 0) / 3)
    assert r["macro_recall"] == pytest.approx((2 / 3 + 1 + 0) / 3)
    assert r["macro_f1"] == pytest.approx((2 / 3 + 2 / 3 + 0) / 3)
    text = format_report(r)
    assert "other" in text and "confusion matrix" in text


def test_confusion_matrix_counts_every_example():
    rng = np.random.default_rng(0)
    y, p = rng.integers(0, 4, 100), rng.integers(0, 4, 100)
    cm = confusion_matrix(y, p, 4)
    assert cm.sum() == 100 and np.trace(cm) == int((y == p).sum())
