"""metrics/classification.py against scikit-learn (reference, requirements-dev.txt) on random and adversarial
cases, plus hand-computed values. Run: python -m pytest -q tests/test_metrics_classification.py"""
import numpy as np
import pytest
import torch

from metrics.classification import (accuracy, auroc, average_precision, classification_metrics, f1_at_threshold,
                                    macro_auroc)

sklearn_metrics = pytest.importorskip("sklearn.metrics")


def _cases(count=300, seed=0):
    """Random and adversarial (N, C) cases: heavy ties, integer scores, constant columns, one positive."""
    rng = np.random.default_rng(seed)
    for i in range(count):
        n, c = int(rng.integers(2, 60)), int(rng.integers(1, 5))
        kind = i % 6
        if kind == 0:
            scores = rng.random((n, c))
        elif kind == 1:
            scores = rng.integers(0, 3, (n, c)).astype(float)           # massive ties
        elif kind == 2:
            scores = np.round(rng.normal(size=(n, c)), 1)
        elif kind == 3:
            scores = np.ones((n, c)) * 0.5                               # all tied
        elif kind == 4:
            scores = rng.random((n, c)) * 1e-12                          # tiny differences
        else:
            scores = -rng.exponential(size=(n, c))
        labels = (rng.random((n, c)) < rng.uniform(0.05, 0.95)).astype(int)
        if i % 11 == 0:
            labels[:, 0] = 0
            labels[rng.integers(n), 0] = 1                               # exactly one positive
        if i % 13 == 0:
            labels[:, -1] = 1                                            # no negative
        yield scores, labels


def test_auroc_and_ap_match_sklearn():
    checked = 0
    for scores, labels in _cases():
        ours_auc, ours_ap = auroc(scores, labels), average_precision(scores, labels)
        for c in range(scores.shape[1]):
            y = labels[:, c]
            if 0 < y.sum() < len(y):
                assert abs(ours_auc[c] - sklearn_metrics.roc_auc_score(y, scores[:, c])) < 1e-9
                checked += 1
            else:
                assert np.isnan(ours_auc[c])
            if y.sum() > 0:
                assert abs(ours_ap[c] - sklearn_metrics.average_precision_score(y, scores[:, c])) < 1e-9
            else:
                assert np.isnan(ours_ap[c])
    assert checked > 300


def test_f1_and_accuracy_match_sklearn():
    rng = np.random.default_rng(1)
    for i in range(200):
        n, c = int(rng.integers(1, 40)), int(rng.integers(2, 6))  # (n, 1) is "binary" to sklearn
        probs = rng.random((n, c))
        labels = (rng.random((n, c)) < 0.3).astype(int)
        if i % 5 == 0:
            labels[:, 0] = 0
            probs[:, 0] = 0.1                                            # a class nobody has nor predicts
        ours = f1_at_threshold(probs, labels, 0.5)
        predicted = (probs >= 0.5).astype(int)
        assert abs(ours["micro"] - sklearn_metrics.f1_score(labels, predicted, average="micro", zero_division=0)) < 1e-9
        assert abs(ours["macro"] - sklearn_metrics.f1_score(labels, predicted, average="macro", zero_division=0)) < 1e-9
        assert abs(accuracy(predicted, labels) - sklearn_metrics.accuracy_score(labels, predicted)) < 1e-12
        flat_p, flat_t = predicted[:, 0], labels[:, 0]
        assert abs(accuracy(flat_p, flat_t) - sklearn_metrics.accuracy_score(flat_t, flat_p)) < 1e-12


def test_hand_computed_auroc_with_tie():
    # positives 0.8, 0.5; negatives 0.5, 0.1: pairs (0.8>0.5) (0.8>0.1) (0.5=0.5 -> 1/2) (0.5>0.1) -> 3.5/4
    scores = np.array([0.8, 0.5, 0.5, 0.1])
    labels = np.array([1, 1, 0, 0])
    assert auroc(scores, labels)[0] == pytest.approx(0.875)
    # AP: threshold 0.8 -> P 1 R .5; threshold 0.5 (tie, one step) -> P 2/3 R 1 -> .5*1 + .5*2/3
    assert average_precision(scores, labels)[0] == pytest.approx(0.5 + 1 / 3)


def test_macro_skips_single_label_classes_and_accepts_torch():
    scores = torch.tensor([[0.9, 0.2], [0.1, 0.3], [0.4, 0.8]])
    labels = torch.tensor([[1, 0], [0, 0], [1, 0]])
    assert macro_auroc(scores, labels) == pytest.approx(1.0)
    out = classification_metrics(scores, labels, ["a", "b"], prefix="x/")
    assert out["x/auroc/a"] == pytest.approx(1.0) and np.isnan(out["x/auroc/b"])
    assert out["x/auroc/macro"] == pytest.approx(1.0)
    assert {"x/ap/macro", "x/f1/macro", "x/f1/micro"} <= set(out)


def test_bad_labels_are_one_clear_error():
    with pytest.raises(ValueError, match=r"labels\[1, 0\] = -1"):
        auroc(np.zeros((2, 1)), np.array([[1], [-1]]))
    with pytest.raises(ValueError, match="same"):
        auroc(np.zeros((3, 2)), np.zeros((3, 1)))
