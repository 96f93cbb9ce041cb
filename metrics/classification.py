"""Multi-label classification metrics: AUROC (ties handled), average precision, F1 at a threshold, accuracy.

Definitions (each agrees with scikit-learn to 1e-9; tests/test_metrics_classification.py checks it):
- `auroc`: per class the Mann-Whitney statistic with average ranks, (sum of positive ranks - P(P+1)/2) / (P*N),
  i.e. a tied positive/negative pair counts 1/2. This is exactly the trapezoidal area under the ROC curve
  that `sklearn.metrics.roc_auc_score` computes. A class whose labels are all 0 or all 1 gets NaN.
- `macro_auroc`: mean over the classes that have both labels (NaN when none has).
- `average_precision`: sum over distinct score thresholds (ties form one step) of
  (R_n - R_{n-1}) * P_n, as `sklearn.metrics.average_precision_score` (no interpolation). NaN for a class
  without positives (sklearn warns and returns 0 there; we refuse to invent a number).
- `f1_at_threshold`: prediction = prob >= threshold. micro = F1 of the pooled TP/FP/FN; macro = mean of the
  per-class F1 over ALL classes, a class with TP + FP + FN = 0 scoring `zero_division` (0, sklearn's
  default), as `sklearn.metrics.f1_score(average="macro")`.
- `accuracy`: 1-D -> fraction of equal entries; 2-D -> fraction of rows equal in every column (subset
  accuracy, as `sklearn.metrics.accuracy_score`).
Shapes: N samples, C classes; scores and labels are (N, C) numpy arrays or torch tensors ((N,) is one
class). Labels must be 0/1 (bool or numbers); anything else is an error naming the class.
"""
import numpy as np


def _as_numpy(x, name):
    if hasattr(x, "detach"):
        x = x.detach().float().cpu().numpy() if x.dtype.is_floating_point else x.detach().cpu().numpy()
    x = np.asarray(x)
    if x.dtype == object:
        raise TypeError(f"{name}: expected a numeric array, got an object array")
    return x


def _scores_labels(scores, labels):
    """-> scores (N, C) float64, labels (N, C) bool, after shape and value checks."""
    scores = _as_numpy(scores, "scores").astype(np.float64)
    labels = _as_numpy(labels, "labels")
    if scores.ndim == 1:
        scores = scores[:, None]
    if labels.ndim == 1:
        labels = labels[:, None]
    if scores.shape != labels.shape or scores.ndim != 2:
        raise ValueError(f"scores {scores.shape} and labels {labels.shape}: expected the same (N, C) shape")
    bad = ~((labels == 0) | (labels == 1))
    if bad.any():
        row, col = np.argwhere(bad)[0]
        raise ValueError(f"labels[{row}, {col}] = {labels[row, col].item()!r}: expected 0 or 1 "
                         "(map uncertain / missing labels before scoring)")
    if not np.isfinite(scores).all():
        row, col = np.argwhere(~np.isfinite(scores))[0]
        raise ValueError(f"scores[{row}, {col}] = {scores[row, col]}: expected a finite number")
    return scores, labels.astype(bool)


def _average_ranks(values):
    """(N,) -> (N,) 1-based ranks, tied values get the mean of their ranks."""
    order = np.argsort(values, kind="mergesort")
    sorted_values = values[order]
    starts = np.r_[True, sorted_values[1:] != sorted_values[:-1]]
    group = np.cumsum(starts) - 1                                 # (N,) tie-group id in sorted order
    first = np.flatnonzero(starts)                                # (G,) first sorted position of a group
    last = np.r_[first[1:], len(values)] - 1                      # (G,)
    ranks = np.empty(len(values))
    ranks[order] = (first + last)[group] / 2.0 + 1.0
    return ranks


def auroc(scores, labels):
    """(N, C), (N, C) -> (C,) AUROC per class, NaN for a class lacking positives or negatives."""
    scores, labels = _scores_labels(scores, labels)
    out = np.full(scores.shape[1], np.nan)
    for c in range(scores.shape[1]):
        positives = int(labels[:, c].sum())
        negatives = len(labels) - positives
        if positives == 0 or negatives == 0:
            continue
        ranks = _average_ranks(scores[:, c])
        out[c] = (ranks[labels[:, c]].sum() - positives * (positives + 1) / 2.0) / (positives * negatives)
    return out


def macro_auroc(scores, labels):
    """Mean AUROC over the classes that have both labels (NaN when no class has)."""
    per_class = auroc(scores, labels)
    return float(np.nanmean(per_class)) if np.isfinite(per_class).any() else float("nan")


def average_precision(scores, labels):
    """(N, C), (N, C) -> (C,) average precision (sklearn's step sum), NaN for a class without positives."""
    scores, labels = _scores_labels(scores, labels)
    out = np.full(scores.shape[1], np.nan)
    for c in range(scores.shape[1]):
        positives = int(labels[:, c].sum())
        if positives == 0:
            continue
        order = np.argsort(-scores[:, c], kind="mergesort")
        s, y = scores[order, c], labels[order, c]
        last_of_tie = np.r_[s[1:] != s[:-1], True]                # threshold steps at distinct scores
        tp = np.cumsum(y)[last_of_tie]
        predicted = (np.arange(1, len(s) + 1))[last_of_tie]
        precision, recall = tp / predicted, tp / positives
        out[c] = float(np.sum(np.diff(np.r_[0.0, recall]) * precision))
    return out


def f1_at_threshold(probs, labels, threshold=0.5, zero_division=0.0):
    """(N, C) probabilities -> {"micro", "macro", "micro_precision", "micro_recall"} at prob >= threshold."""
    probs, labels = _scores_labels(probs, labels)
    predicted = probs >= threshold
    tp = (predicted & labels).sum(0).astype(np.float64)            # (C,)
    fp = (predicted & ~labels).sum(0).astype(np.float64)
    fn = (~predicted & labels).sum(0).astype(np.float64)
    denominator = 2 * tp + fp + fn
    per_class = np.where(denominator > 0, 2 * tp / np.maximum(denominator, 1), zero_division)
    total = 2 * tp.sum() + fp.sum() + fn.sum()
    micro = 2 * tp.sum() / total if total > 0 else zero_division
    return {"micro": float(micro), "macro": float(per_class.mean()),
            "micro_precision": float(tp.sum() / (tp.sum() + fp.sum())) if tp.sum() + fp.sum() else zero_division,
            "micro_recall": float(tp.sum() / (tp.sum() + fn.sum())) if tp.sum() + fn.sum() else zero_division}


def accuracy(predictions, targets):
    """Fraction of equal entries (1-D) or of rows equal in every column (2-D)."""
    predictions, targets = _as_numpy(predictions, "predictions"), _as_numpy(targets, "targets")
    if predictions.shape != targets.shape:
        raise ValueError(f"predictions {predictions.shape} and targets {targets.shape}: expected the same shape")
    if predictions.size == 0:
        raise ValueError("accuracy: no samples")
    equal = predictions == targets
    return float(equal.reshape(len(equal), -1).all(1).mean())


def classification_metrics(scores, labels, names, prefix="", threshold=0.5):
    """-> {prefix+"auroc/<name>", prefix+"auroc/macro", prefix+"ap/<name>", prefix+"ap/macro",
    prefix+"f1/macro", prefix+"f1/micro"}; per-class entries are NaN where undefined."""
    scores_np, labels_np = _scores_labels(scores, labels)
    if len(names) != scores_np.shape[1]:
        raise ValueError(f"names: {len(names)} given for {scores_np.shape[1]} classes")
    per_auroc, per_ap = auroc(scores_np, labels_np), average_precision(scores_np, labels_np)
    out = {}
    for name, a, p in zip(names, per_auroc, per_ap):
        out[f"{prefix}auroc/{name}"] = float(a)
        out[f"{prefix}ap/{name}"] = float(p)
    out[f"{prefix}auroc/macro"] = float(np.nanmean(per_auroc)) if np.isfinite(per_auroc).any() else float("nan")
    out[f"{prefix}ap/macro"] = float(np.nanmean(per_ap)) if np.isfinite(per_ap).any() else float("nan")
    f1 = f1_at_threshold(scores_np, labels_np, threshold)
    out[f"{prefix}f1/macro"], out[f"{prefix}f1/micro"] = f1["macro"], f1["micro"]
    return out
