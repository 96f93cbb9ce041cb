"""Clinical efficacy (CE) of generated reports: labels of the generated and of the reference report compared.

Two labelers, reported under their own key prefixes:
- `chexbert_metrics(pred_classes, ref_classes)` -> chexbert/...: CheXbert's class matrices (models/chexbert.py
  labels both sides; 0 blank, 1 positive, 2 negative, 3 uncertain) made binary by `chexbert_binary`.
  This is "CheXbert F1" when the classes come from the published weights (at tiny scale: tiny-hub/chexbert).
- `clinical_metrics(predictions, references)` -> clinical_rule/...: the rule-based labeler (data/labeler.py;
  1 positive, 0 negative, -1 uncertain, None not mentioned) on both report texts. NOT CheXbert.
Label vectors are the 14 CheXpert observations in CHEXPERT_LABELS order (No Finding included).

The uncertain rule (`uncertain`, stored as <prefix>uncertain_as_positive 1.0 / 0.0 and printed):
- "positive": positive OR uncertain -> 1, everything else 0. f1chexbert's "rrg" mode (the CheXbert F1 of
  report-generation papers; f1chexbert 0.0.2 get_label: class 1 -> 1, class 3 -> 1, 2 and blank -> 0);
- "negative": only positive -> 1 (PromptMRG / MRG_RL: uncertain counts as absent).
Numbers (scikit-learn's definitions, zero_division = 0, checked in tests/test_metrics_text.py):
- <prefix>micro_{precision,recall,f1}: pooled TP/FP/FN over the 14 labels ("micro avg" of
  classification_report); <prefix>macro_{precision,recall,f1}: mean of the per-label values over all 14;
- <prefix>micro_{precision,recall,f1}_5: micro over the 5 competition labels (Atelectasis, Cardiomegaly,
  Consolidation, Edema, Pleural Effusion), f1chexbert's second report;
- <prefix>example_{precision,recall,f1}: per report over its 14 labels, then the mean over reports
  ("samples avg"; a report with no positive on either side scores 0, as sklearn);
- <prefix>f1/<label>: per label.
"""
import numpy as np

from data.labels import CHEXBERT_CLASSES, CHEXPERT_COMPETITION, CHEXPERT_LABELS

UNCERTAIN_RULES = {"positive": "ones", "negative": "zeros"}    # -> data.labeler.labels_to_vector's names
CHEXBERT_POSITIVE, CHEXBERT_UNCERTAIN = CHEXBERT_CLASSES.index("positive"), CHEXBERT_CLASSES.index("uncertain")


def check_uncertain(uncertain):
    if uncertain not in UNCERTAIN_RULES:
        raise ValueError(f"uncertain={uncertain!r}: expected one of {sorted(UNCERTAIN_RULES)}")


def report_labels(reports, uncertain="positive"):
    """list of report str -> (N, 14) {0, 1} int array (rule labeler, uncertain mapped)."""
    from data.labeler import label_report, labels_to_vector
    check_uncertain(uncertain)
    rows = []
    for i, report in enumerate(reports):
        if report is None:
            report = ""
        if not isinstance(report, str):
            raise TypeError(f"report {i}: expected a str, got {type(report).__name__}")
        rows.append(labels_to_vector(label_report(report), uncertain=UNCERTAIN_RULES[uncertain]))
    return np.stack(rows).astype(np.int64) if rows else np.zeros((0, len(CHEXPERT_LABELS)), dtype=np.int64)


def _prf(tp, fp, fn):
    precision = np.divide(tp, tp + fp, out=np.zeros_like(tp, dtype=np.float64), where=(tp + fp) > 0)
    recall = np.divide(tp, tp + fn, out=np.zeros_like(tp, dtype=np.float64), where=(tp + fn) > 0)
    f1 = np.divide(2 * tp, 2 * tp + fp + fn, out=np.zeros_like(tp, dtype=np.float64), where=(2 * tp + fp + fn) > 0)
    return precision, recall, f1


def ce_scores(predicted, reference, prefix="clinical_rule/"):
    """(N, 14) {0,1} predicted and reference label matrices -> the flat dict described above."""
    predicted, reference = np.asarray(predicted).astype(bool), np.asarray(reference).astype(bool)
    tp = (predicted & reference).sum(0).astype(np.float64)        # (14,)
    fp = (predicted & ~reference).sum(0).astype(np.float64)
    fn = (~predicted & reference).sum(0).astype(np.float64)
    out = {}
    p, r, f = _prf(tp.sum(), fp.sum(), fn.sum())
    out.update({f"{prefix}micro_precision": float(p), f"{prefix}micro_recall": float(r), f"{prefix}micro_f1": float(f)})
    p, r, f = _prf(tp, fp, fn)
    out.update({f"{prefix}macro_precision": float(p.mean()), f"{prefix}macro_recall": float(r.mean()),
                f"{prefix}macro_f1": float(f.mean())})
    for name, value in zip(CHEXPERT_LABELS, f):
        out[f"{prefix}f1/{name}"] = float(value)
    five = [CHEXPERT_LABELS.index(name) for name in CHEXPERT_COMPETITION]
    p, r, f = _prf(tp[five].sum(), fp[five].sum(), fn[five].sum())
    out.update({f"{prefix}micro_precision_5": float(p), f"{prefix}micro_recall_5": float(r),
                f"{prefix}micro_f1_5": float(f)})
    tp_e = (predicted & reference).sum(1).astype(np.float64)     # (N,)
    fp_e = (predicted & ~reference).sum(1).astype(np.float64)
    fn_e = (~predicted & reference).sum(1).astype(np.float64)
    p, r, f = _prf(tp_e, fp_e, fn_e)
    out.update({f"{prefix}example_precision": float(p.mean()), f"{prefix}example_recall": float(r.mean()),
                f"{prefix}example_f1": float(f.mean())})
    return out


def clinical_metrics(predictions, references, uncertain="positive", verbose=True, prefix="clinical_rule/"):
    """Generated and reference reports -> rule-based CE metrics (flat dict of floats, keys with `prefix`)."""
    if len(predictions) != len(references):
        raise ValueError(f"clinical_metrics: {len(predictions)} predictions but {len(references)} references")
    if not predictions:
        raise ValueError("clinical_metrics: no reports")
    out = ce_scores(report_labels(predictions, uncertain), report_labels(references, uncertain), prefix)
    out[f"{prefix}uncertain_as_positive"] = float(uncertain == "positive")
    if verbose:
        print(f"[metrics.clinical] rule-based labeler (data/labeler.py), uncertain -> {uncertain}: "
              f"{summary_line(out, prefix)}")
    return out


def chexbert_binary(classes, uncertain="positive"):
    """(N, 14) CheXbert classes (0 blank, 1 positive, 2 negative, 3 uncertain) -> (N, 14) {0, 1} int array:
    1 for positive, and for uncertain when uncertain="positive"; blank and negative -> 0."""
    check_uncertain(uncertain)
    classes = np.asarray(classes)
    if classes.ndim != 2 or classes.shape[1] != len(CHEXPERT_LABELS):
        raise ValueError(f"chexbert_binary: expected (N, {len(CHEXPERT_LABELS)}) classes, got shape {classes.shape}")
    if classes.size and not np.isin(classes, range(len(CHEXBERT_CLASSES))).all():
        raise ValueError(f"chexbert_binary: classes must be 0..3 ({', '.join(CHEXBERT_CLASSES)}), got "
                         f"{sorted(set(np.unique(classes).tolist()) - set(range(len(CHEXBERT_CLASSES))))}")
    positive = classes == CHEXBERT_POSITIVE
    if uncertain == "positive":
        positive |= classes == CHEXBERT_UNCERTAIN
    return positive.astype(np.int64)


def chexbert_metrics(pred_classes, ref_classes, uncertain="positive", verbose=False, prefix="chexbert/"):
    """CheXbert classes of the generated and the reference reports ((N, 14) each, CHEXPERT_LABELS order, e.g.
    models.chexbert.CheXbert.label) -> chexbert/... CE metrics and chexbert/uncertain_as_positive."""
    pred_classes, ref_classes = np.asarray(pred_classes), np.asarray(ref_classes)
    if pred_classes.shape != ref_classes.shape:
        raise ValueError(f"chexbert_metrics: predicted classes {pred_classes.shape} but reference {ref_classes.shape}")
    if not len(pred_classes):
        raise ValueError("chexbert_metrics: no reports")
    out = ce_scores(chexbert_binary(pred_classes, uncertain), chexbert_binary(ref_classes, uncertain), prefix)
    out[f"{prefix}uncertain_as_positive"] = float(uncertain == "positive")
    if verbose:
        print(f"[metrics.clinical] CheXbert labels, uncertain -> {uncertain}: {summary_line(out, prefix)}")
    return out


def summary_line(out, prefix):
    return (f"micro-F1 {out[prefix + 'micro_f1']:.4f}, macro-F1 {out[prefix + 'macro_f1']:.4f}, "
            f"micro-F1-5 {out[prefix + 'micro_f1_5']:.4f}, example-F1 {out[prefix + 'example_f1']:.4f}")
