"""Clinical efficacy (CE) of generated reports with the rule-based labeler (data/labeler.py).

Both the generated and the reference report are labelled with the SAME rule labeler; label vectors are
14 CheXpert observations in CHEXPERT_LABELS order (No Finding included), not mentioned -> 0, and the
uncertain (-1) label mapped by the `uncertain` parameter: "positive" (f1chexbert's "rrg" convention,
positive OR uncertain -> 1) or "negative" (PromptMRG / MRG_RL: only 1 counts). The rule is printed with
the result and stored as clinical/uncertain_as_positive (1.0 / 0.0).
Numbers (scikit-learn's definitions, zero_division = 0, checked in tests/test_metrics_text.py):
- clinical/micro_{precision,recall,f1}: pooled TP/FP/FN over the 14 labels ("micro avg" of
  classification_report); clinical/macro_{precision,recall,f1}: mean of the per-label values over all 14;
- clinical/micro_{precision,recall,f1}_5: micro over the 5 competition labels (Atelectasis, Cardiomegaly,
  Consolidation, Edema, Pleural Effusion);
- clinical/example_{precision,recall,f1}: per report over its 14 labels, then the mean over reports
  ("samples avg"; a report with no positive on either side scores 0, as sklearn);
- clinical/f1/<label>: per label.
Name: these are "rule-based CE" numbers, NOT CheXbert F1 (the CheXbert scorer needs its weights file and
a local bert-base-uncased; not implemented here, see docs/metrics.md).
"""
import numpy as np

from data.labels import CHEXPERT_COMPETITION, CHEXPERT_LABELS

UNCERTAIN_RULES = {"positive": "ones", "negative": "zeros"}


def report_labels(reports, uncertain="positive"):
    """list of report str -> (N, 14) {0, 1} int array (rule labeler, uncertain mapped)."""
    from data.labeler import label_report, labels_to_vector
    if uncertain not in UNCERTAIN_RULES:
        raise ValueError(f"uncertain={uncertain!r}: expected one of {sorted(UNCERTAIN_RULES)}")
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


def ce_scores(predicted, reference, prefix="clinical/"):
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


def clinical_metrics(predictions, references, uncertain="positive", verbose=True):
    """Generated and reference reports -> rule-based CE metrics (flat dict of floats)."""
    if len(predictions) != len(references):
        raise ValueError(f"clinical_metrics: {len(predictions)} predictions but {len(references)} references")
    if not predictions:
        raise ValueError("clinical_metrics: no reports")
    out = ce_scores(report_labels(predictions, uncertain), report_labels(references, uncertain))
    out["clinical/uncertain_as_positive"] = float(uncertain == "positive")
    if verbose:
        print(f"[metrics.clinical] rule-based labeler (data/labeler.py), uncertain -> {uncertain}: "
              f"micro-F1 {out['clinical/micro_f1']:.4f}, macro-F1 {out['clinical/macro_f1']:.4f}, "
              f"micro-F1-5 {out['clinical/micro_f1_5']:.4f}, example-F1 {out['clinical/example_f1']:.4f}")
    return out
