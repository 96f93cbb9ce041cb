"""Benchmark: our BLEU+ROUGE-L+CIDEr-D against pycocoevalcap on phantom report pairs, and our AUROC / AP against
scikit-learn, side by side in one run, printing a markdown table of times and ratios (and the largest
difference of the values, which must be ~0).

    python -m metrics.benchmark                      # 3,000 report pairs, AUROC on 3,000 x 14, 3 repeats
    python -m metrics.benchmark --pairs 500 --repeats 1

Report pairs: phantom reports (data/phantom_anatomy + data/phantom_report, no image rendering), the
prediction of item i is the report of another phantom (a shifted seed), so scores are partial like a model's.
Both sides score the same seed-001-normalized strings; normalization time is reported on its own row.
Times are the best of --repeats runs (wall clock, time.perf_counter). Needs pycocoevalcap and scikit-learn
(requirements-dev.txt).
"""
import argparse
import contextlib
import io
import time

import numpy as np


def phantom_reports(count, seed=0):
    """count phantom report strings, fast (findings sampled, nothing drawn)."""
    from data.phantom_anatomy import sample_anatomy, sample_findings
    from data.phantom_report import write_report
    reports = []
    for index in range(count):
        anatomy = sample_anatomy(np.random.default_rng([seed, index, 0]))
        findings = sample_findings(np.random.default_rng([seed, index, 1]), anatomy, 0.3, None)
        public = [{key: f[key] for key in ("name", "side", "zone", "size", "detail", "extra")} for f in findings]
        reports.append(write_report(public, np.random.default_rng([seed, index, 3])))
    return reports


def best_time(function, repeats):
    times, result = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        result = function()
        times.append(time.perf_counter() - start)
    return min(times), result


def main(argv=None):
    parser = argparse.ArgumentParser(description="ours vs pycocoevalcap / scikit-learn timing")
    parser.add_argument("--pairs", type=int, default=3000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--classes", type=int, default=14)
    parser.add_argument("--meteor", action="store_true", help="include METEOR (Java jar) in the end-to-end row")
    args = parser.parse_args(argv)
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.rouge.rouge import Rouge
    from sklearn.metrics import average_precision_score, roc_auc_score

    from metrics.classification import auroc, average_precision
    from metrics.text import _normalize_cached, bleu, cider_d, normalize, rouge_l, text_metrics

    references = phantom_reports(args.pairs, seed=11)
    predictions = phantom_reports(args.pairs, seed=12)
    def normalize_all():
        _normalize_cached.cache_clear()                         # time the work, not the cache
        return [normalize(p) for p in predictions], [[normalize(r)] for r in references]
    normalize_time, (hyps, refs) = best_time(normalize_all, args.repeats)

    def end_to_end():
        _normalize_cached.cache_clear()
        return text_metrics(predictions, references, meteor=args.meteor)
    end_to_end_time, _ = best_time(end_to_end, args.repeats)
    gts = {i: r for i, r in enumerate(refs)}
    res = {i: [h] for i, h in enumerate(hyps)}
    rows = []

    def ours_text():
        return bleu(hyps, refs) + [rouge_l(hyps, refs)[0], cider_d(hyps, refs)[0]]

    def reference_text():
        with contextlib.redirect_stdout(io.StringIO()):        # Bleu prints its counts
            b = Bleu(4).compute_score(gts, res, verbose=0)[0]
        return list(b) + [Rouge().compute_score(gts, res)[0], Cider().compute_score(gts, res)[0]]
    for name, ours_fn, ref_fn in (
            ("BLEU-1..4", lambda: bleu(hyps, refs), lambda: list(Bleu(4).compute_score(gts, res, verbose=0)[0])),
            ("ROUGE-L", lambda: [rouge_l(hyps, refs)[0]], lambda: [Rouge().compute_score(gts, res)[0]]),
            ("CIDEr-D", lambda: [cider_d(hyps, refs)[0]], lambda: [Cider().compute_score(gts, res)[0]]),
            ("BLEU+ROUGE-L+CIDEr-D", ours_text, reference_text)):
        ours_time, ours_values = best_time(ours_fn, args.repeats)
        with contextlib.redirect_stdout(io.StringIO()):
            ref_time, ref_values = best_time(ref_fn, args.repeats)
        difference = max(abs(a - b) for a, b in zip(ours_values, ref_values))
        rows.append((f"{name} ({args.pairs} pairs)", "pycocoevalcap 1.2", ours_time, ref_time, difference))
    rng = np.random.default_rng(0)
    labels = (rng.random((args.pairs, args.classes)) < 0.2).astype(int)
    scores = np.round(rng.random((args.pairs, args.classes)) + labels * 0.3, 2)   # ties on purpose
    def sklearn_auroc():
        return [roc_auc_score(labels[:, c], scores[:, c]) for c in range(args.classes)]

    def sklearn_ap():
        return [average_precision_score(labels[:, c], scores[:, c]) for c in range(args.classes)]
    for name, ours_fn, ref_fn in (("AUROC per class", lambda: list(auroc(scores, labels)), sklearn_auroc),
                                  ("AP per class", lambda: list(average_precision(scores, labels)), sklearn_ap)):
        ours_time, ours_values = best_time(ours_fn, args.repeats)
        ref_time, ref_values = best_time(ref_fn, args.repeats)
        difference = max(abs(a - b) for a, b in zip(ours_values, ref_values))
        rows.append((f"{name} ({args.pairs} x {args.classes})", "scikit-learn", ours_time, ref_time, difference))
    print(f"normalization (seed 001 §8.4) of {2 * args.pairs} reports: {normalize_time:.3f} s (ours only; "
          "both sides then score the same strings)")
    print(f"text_metrics end to end on {args.pairs} pairs (normalization, BLEU, ROUGE-L, rouge-score ROUGE-L, "
          f"CIDEr-D{', METEOR jar' if args.meteor else ', no METEOR'}): {end_to_end_time:.3f} s\n")
    print("| metric | reference | ours (s) | reference (s) | reference / ours | max abs difference |")
    print("|---|---|---|---|---|---|")
    for name, reference, ours_time, ref_time, difference in rows:
        print(f"| {name} | {reference} | {ours_time:.3f} | {ref_time:.3f} | {ref_time / ours_time:.2f}x | "
              f"{difference:.1e} |")
    return rows


if __name__ == "__main__":
    main()
