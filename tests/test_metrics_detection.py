"""metrics/detection.py and metrics/assignment.py: RoDeO on hand-computed cases (README example, images without
predictions, a class with no match), the assignment and RoDeO matching against scipy / scikit-learn, AP@IoU
against bes-dev's mean_average_precision package (the code WSRPN calls), localization accuracy by hand, bootstrap.
Reference packages are test-only (requirements-dev.txt); a test is skipped when its package is missing.
Run: python -m pytest -q tests/test_metrics_detection.py"""
import math
import warnings

import numpy as np
import pytest
import torch

from metrics.assignment import linear_sum_assignment
from metrics.detection import ap_at_iou, bootstrap, localization_accuracy, rodeo


def xyxy(rows):
    rows = np.asarray(rows, dtype=float)
    return np.c_[rows[:, :2], rows[:, :2] + rows[:, 2:4]]


def test_rodeo_readme_example():
    # FeliMe/RoDeO README: 3 predictions, 2 targets, 2 classes (x, y, w, h, cls)
    pred = np.array([[0.1, 0.1, 0.2, 0.1, 0], [0.0, 0.3, 0.1, 0.1, 1], [0.2, 0.2, 0.1, 0.1, 0]])
    target = np.array([[0.0, 0.0, 0.1, 0.1, 0], [0.0, 0.2, 0.1, 0.1, 1]])
    out = rodeo([xyxy(pred)], [pred[:, 4]], [xyxy(target)], [target[:, 4]], ["a", "b"])
    assert round(out["rodeo/loc"], 4) == 0.2017
    assert round(out["rodeo/shape"], 4) == 0.5
    assert round(out["rodeo/cls"], 4) == 0.6667
    assert round(out["rodeo/total"], 4) == 0.3547
    # by hand: class b pair is offset by one target height -> 2^-1; weight 1 matched / (1 + 0 + 0)
    assert out["rodeo/loc/b"] == pytest.approx(0.5) and out["rodeo/shape/b"] == pytest.approx(1.0)


def test_rodeo_image_without_predictions_adds_misses():
    box = np.array([[0.1, 0.1, 0.3, 0.3]])
    # image 0: perfect box of class 0; image 1: a class-1 target and no prediction (shape (0, 4))
    out = rodeo([box, np.zeros((0, 4))], [np.array([0]), np.zeros(0)],
                [box, np.array([[0.5, 0.5, 0.7, 0.8]])], [np.array([0]), np.array([1])], ["a", "b"])
    assert out["rodeo/missed"] == 1 and out["rodeo/matched"] == 1
    assert out["rodeo/loc"] == pytest.approx(0.5) and out["rodeo/shape"] == pytest.approx(0.5)
    # matched one-hot pair [1,0] vs [1,0]: MCC of two equal non-constant vectors = 1 -> weighted 0.5
    assert out["rodeo/cls"] == pytest.approx(0.5)
    assert out["rodeo/total"] == pytest.approx(3 / (3 / (0.5 + 1e-6)))
    # class b: no matched pair, one miss -> 0 (documented; the official code raises here)
    assert out["rodeo/total/b"] == 0.0 and out["rodeo/loc/b"] == 0.0
    # torch inputs and shape-(0,) empties are accepted
    again = rodeo([torch.tensor(box), torch.zeros(0)], [torch.tensor([0]), torch.zeros(0)],
                  [torch.tensor(box), torch.tensor([[0.5, 0.5, 0.7, 0.8]])], [torch.tensor([0]), torch.tensor([1])],
                  ["a", "b"])
    assert again["rodeo/total"] == pytest.approx(out["rodeo/total"])


def test_rodeo_no_predictions_at_all_and_class_without_boxes():
    gt = [np.array([[0.1, 0.1, 0.2, 0.2]])]
    out = rodeo([np.zeros((0, 4))], [np.zeros(0)], gt, [np.array([0])], ["a", "b", "c"])
    assert out["rodeo/total"] == 0.0 and out["rodeo/total/c"] == 0.0          # official worst-value rule
    out = rodeo(gt, [np.array([0])], gt, [np.array([0])], ["a", "b", "c"])
    assert out["rodeo/total/a"] == pytest.approx(3 / (3 / (1 + 1e-6)))       # perfect
    assert math.isnan(out["rodeo/total/c"])                                   # class with no box at all


def test_rodeo_wrong_class_on_perfect_box():
    box = np.array([[0.1, 0.1, 0.4, 0.5]])
    out = rodeo([box, box], [np.array([1]), np.array([0])], [box, box], [np.array([0]), np.array([1])], ["a", "b"])
    assert out["rodeo/loc"] == pytest.approx(1.0) and out["rodeo/shape"] == pytest.approx(1.0)
    assert out["rodeo/cls"] == 0.0 and out["rodeo/total"] < 1e-5


def test_assignment_equals_scipy():
    optimize = pytest.importorskip("scipy.optimize")
    rng = np.random.default_rng(0)
    for i in range(600):
        rows, cols = rng.integers(1, 8, 2)
        cost = rng.integers(-2, 2, (rows, cols)).astype(float) if i % 2 else rng.random((rows, cols))
        ours, ref = linear_sum_assignment(cost), optimize.linear_sum_assignment(cost)
        assert np.array_equal(ours[0], ref[0]) and np.array_equal(ours[1], ref[1])


def _reference_rodeo(preds, targets, num_classes):
    """RoDeO's definition written box by box with scipy matching and sklearn MCC (no per-class part)."""
    from scipy.optimize import linear_sum_assignment as lsa
    from sklearn.metrics import matthews_corrcoef

    def giou(a, b):
        inter = max(0, min(a[2], b[2]) - max(a[0], b[0])) * max(0, min(a[3], b[3]) - max(a[1], b[1]))
        area = lambda z: (z[2] - z[0]) * (z[3] - z[1])  # noqa: E731
        union = area(a) + area(b) - inter
        hull = (max(a[2], b[2]) - min(a[0], b[0])) * (max(a[3], b[3]) - min(a[1], b[1]))
        return inter / union - (hull - union) / hull
    image_p = np.zeros((len(preds), num_classes))
    image_t = np.zeros((len(preds), num_classes))
    for i, (p, t) in enumerate(zip(preds, targets)):
        image_p[i, [int(r[4]) for r in p]] = 1
        image_t[i, [int(r[4]) for r in t]] = 1
    weight = max(0, matthews_corrcoef(image_p.ravel(), image_t.ravel()))
    pairs, unmatched = [], 0
    for p, t in zip(preds, targets):
        if len(p) and len(t):
            cost = np.array([[-giou(a, b) - weight * (a[4] == b[4]) for b in t] for a in p])
            r, c = lsa(cost)
            pairs += [(p[i], t[j]) for i, j in zip(r, c)]
            unmatched += len(p) + len(t) - 2 * len(r)
        else:
            unmatched += len(p) + len(t)
    w = len(pairs) / (len(pairs) + unmatched)
    loc, shape = [], []
    for a, b in pairs:
        tw, th = b[2] - b[0], b[3] - b[1]
        dx = ((a[0] + a[2]) / 2 - (b[0] + b[2]) / 2) / tw
        dy = ((a[1] + a[3]) / 2 - (b[1] + b[3]) / 2) / th
        loc.append(2 ** -(dx * dx + dy * dy))
        pw, ph = a[2] - a[0], a[3] - a[1]
        inter = min(pw, tw) * min(ph, th)
        shape.append(inter / (pw * ph + tw * th - inter))
    one_p = np.eye(num_classes)[[int(a[4]) for a, _ in pairs]].ravel()
    one_t = np.eye(num_classes)[[int(b[4]) for _, b in pairs]].ravel()
    cls = max(0, matthews_corrcoef(one_p, one_t))
    return w * np.mean(loc), w * np.mean(shape), w * cls


def test_rodeo_matches_reference_on_random_sets():
    pytest.importorskip("scipy.optimize")
    pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(1)
    for trial in range(60):
        preds, targets = [], []
        for _ in range(int(rng.integers(1, 6))):
            def boxes(m):
                xy, wh = rng.random((m, 2)) * 0.7, rng.random((m, 2)) * 0.3 + 0.01
                return np.c_[xy, xy + wh, rng.integers(0, 3, m)]
            preds.append(boxes(int(rng.integers(0, 4))))
            targets.append(boxes(int(rng.integers(1, 4))))
        if sum(len(p) for p in preds) == 0:
            continue
        out = rodeo([p[:, :4] for p in preds], [p[:, 4] for p in preds], [t[:, :4] for t in targets],
                    [t[:, 4] for t in targets], ["a", "b", "c"])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            loc, shape, cls = _reference_rodeo(preds, targets, 3)
        assert out["rodeo/loc"] == pytest.approx(loc, abs=1e-12)
        assert out["rodeo/shape"] == pytest.approx(shape, abs=1e-12)
        assert out["rodeo/cls"] == pytest.approx(cls, abs=1e-12)


def test_ap_at_iou_matches_bes_dev():
    mean_average_precision = pytest.importorskip("mean_average_precision")
    rng = np.random.default_rng(0)
    names = ["a", "b", "c"]
    for trial in range(40):
        pb, ps, pl, gb, gl = [], [], [], [], []
        reference = mean_average_precision.MeanAveragePrecision2d(3)
        for _ in range(int(rng.integers(1, 7))):
            g, k = int(rng.integers(0, 3)), int(rng.integers(0, 4))
            xy, wh = rng.random((g, 2)) * 0.7, rng.random((g, 2)) * 0.3 + 0.02
            g_box = np.c_[xy, xy + wh]
            xy, wh = rng.random((k, 2)) * 0.7, rng.random((k, 2)) * 0.3 + 0.02
            p_box = np.c_[xy, xy + wh]
            near = min(k, g)
            p_box[:near] = g_box[:near] + rng.normal(0, 0.02, (near, 4))       # near a target
            p_box = np.c_[np.minimum(p_box[:, :2], p_box[:, 2:]), np.maximum(p_box[:, :2], p_box[:, 2:])]
            g_cls, p_cls, p_s = rng.integers(0, 3, g), rng.integers(0, 3, k), rng.random(k)
            pb.append(p_box), ps.append(p_s), pl.append(p_cls), gb.append(g_box), gl.append(g_cls)
            reference.add(np.c_[p_box * 224, p_cls, p_s], np.c_[g_box * 224, g_cls, np.zeros((g, 2))])
        thresholds = (0.1, 0.3, 0.5, 0.7)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ref = reference.value(iou_thresholds=list(thresholds), mpolicy="soft",
                                  recall_thresholds=np.arange(0.0, 1.01, 0.01))
        ours = ap_at_iou(pb, ps, pl, gb, gl, names, thresholds)
        for t in thresholds:
            for c, name in enumerate(names):
                assert ours[f"ap@{t}/{name}"] == pytest.approx(float(ref[t][c]["ap"]), abs=1e-6)  # bes-dev: float32
        assert ours["map"] == pytest.approx(float(ref["mAP"]), abs=1e-6)


def test_ap_hand_computed_continuous():
    gt = [np.array([[0.0, 0.0, 0.5, 0.5]]), np.array([[0.0, 0.0, 0.5, 0.5]])]
    # image 0: the exact box (conf 0.9) and a duplicate (conf 0.8); image 1: a far box (conf 0.7)
    preds = [np.array([[0.0, 0.0, 0.5, 0.5], [0.0, 0.0, 0.5, 0.5]]), np.array([[0.6, 0.6, 0.9, 0.9]])]
    out = ap_at_iou(preds, [np.array([0.9, 0.8]), np.array([0.7])], [np.array([0, 0]), np.array([0])], gt,
                    [np.array([0]), np.array([0])], ["a", "b"], iou_thresholds=(0.5,), pixel_size=None)
    # ranked: TP (P 1, R .5), FP duplicate (P .5), FP (P 1/3); recall never reaches > .5
    # -> points r = 0..0.5 (51 points) have max precision 1, the other 50 have 0; class b (no GT) is 0
    assert out["ap@0.5/a"] == pytest.approx(51 / 101) and out["ap@0.5/b"] == 0.0
    assert out["map"] == pytest.approx(51 / 202)


def test_localization_accuracy_by_hand():
    box = np.array([[0.0, 0.0, 0.4, 0.4]])
    half = np.array([[0.0, 0.0, 0.4, 0.2]])                           # IoU 0.5 with box
    preds = [half, np.zeros((0, 4)), box]
    pred_labels = [np.array([0]), np.zeros(0), np.array([1])]
    gts = [box, np.zeros((0, 4)), np.zeros((0, 4))]
    gt_labels = [np.array([0]), np.zeros(0), np.zeros(0)]
    out = localization_accuracy(preds, [np.ones(1), np.zeros(0), np.ones(1)], pred_labels, gts, gt_labels,
                                ["a", "b"], iou_thresholds=(0.3, 0.5))
    # class a: image 0 TP at 0.3 (IoU .5 > .3) -> (1 + 2 TN) / 3; at 0.5 (strict) FP 1 + FN 1 -> 2 / 4
    assert out["loc_acc@0.3/a"] == pytest.approx(1.0) and out["loc_acc@0.5/a"] == pytest.approx(0.5)
    # class b: images 0, 1 TN, image 2 one FP -> 2/3 at both thresholds
    assert out["loc_acc@0.3/b"] == pytest.approx(2 / 3)
    assert out["loc_acc@0.3"] == pytest.approx((1 + 2 / 3) / 2)


def test_bootstrap_statistics():
    values = np.arange(10.0)
    out = bootstrap(lambda idx: {"mean": values[idx].mean()}, 10, num_samples=200, seed=2147483647)
    generator = torch.Generator().manual_seed(2147483647)
    samples = np.array([values[torch.randint(10, size=(10,), generator=generator).numpy()].mean() for _ in range(200)])
    assert out["mean/mean"] == pytest.approx(samples.mean()) and out["mean/std"] == pytest.approx(samples.std())
    assert out["mean/ci_low"] == pytest.approx(np.quantile(samples, 0.025))
    assert out["mean/ci_low"] < 4.5 < out["mean/ci_high"]


def test_bad_boxes_are_clear_errors():
    with pytest.raises(ValueError, match=r"gt_boxes\[0\].*zero width"):
        rodeo([np.zeros((1, 4))], [np.array([0])], [np.zeros((1, 4))], [np.array([0])], ["a", "b"])
    with pytest.raises(ValueError, match=r"pred_labels\[0\]"):
        rodeo([np.array([[0, 0, .1, .1]])], [np.array([5])], [np.array([[0, 0, .1, .1]])], [np.array([0])], ["a", "b"])
