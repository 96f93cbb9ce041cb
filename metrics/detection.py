"""Box-detection metrics as WSRPN reports them: RoDeO, AP@IoU, localization accuracy, bootstrap.

Inputs (every function): lists over images; pred_boxes[i] / gt_boxes[i] (N_i, 4) xyxy in fractions of the
image size (numpy or torch; (0,) or (0, 4) = no box), pred_labels[i] / gt_labels[i] (N_i,) class ids into
class_names, pred_scores[i] (N_i,) confidences. C classes, N images.

RoDeO (research/wsrpn_rodeo.md §9; the official FeliMe/RoDeO definition, re-derived, not copied):
- per image, Hungarian matching (metrics/assignment.py, same pairs as scipy) on cost
  -GIoU(pred, gt) - lambda * [class equal]; lambda = max(0, MCC) of the image-level multi-hot class vectors
  (predicted box classes vs target box classes, flattened over images x classes). No IoU threshold:
  min(M_pred, M_gt) pairs are always matched; the rest are over-predictions and misses.
- pooled over the data set with n_m matched pairs, n_o over-predictions, n_u misses:
  Wt(s) = s * n_m / (n_m + n_o + n_u) (unit weights w_matched = w_overpred = w_missed = 1);
  loc = Wt(mean 2^(-d^2)), d = distance of the centres in units of the target's (w, h);
  shape = Wt(mean IoU of the two boxes moved to the same upper-left corner);
  cls = Wt(max(0, MCC of the flattened one-hot classes of the matched pairs));
  total = 3 / sum(1 / (s + 1e-6)) over (loc, shape, cls) (the official eps).
- per class c: pairs whose TARGET class is c, unmatched predictions of class c, unmatched targets of class c.
- Edge cases, stated: no matched pair in the whole data set -> every RoDeO value is 0.0 (as the official
  code). A class with boxes but no matched pair -> its loc/shape/cls/total are 0.0 (the weight of its
  matched part is 0; the official code raises inside sklearn here). A class with no box at all -> NaN.
  An image without predictions only adds misses. MCC of two constant vectors is 0 (as sklearn).
AP@IoU (bes-dev MeanAveragePrecision2d as WSRPN calls it): per class, predictions of all images sorted by
  confidence (stable: ties keep image order); "soft" (COCO-like) matching: a prediction walks its image's
  same-class GT boxes by decreasing IoU, takes the first unmatched one with IoU > t (strict), and is a false
  positive once the IoU is <= t; precision = TP / (TP + FP), recall = TP / max(#GT, 1); AP = mean over the
  101 recall points 0, 0.01, ..., 1 of the max precision at recall >= r (0 when none). IoU uses bes-dev's
  inclusive-pixel convention ((x2 - x1 + 1) * (y2 - y1 + 1)) on boxes scaled to `pixel_size` (224, the
  resolution WSRPN evaluates at); pixel_size=None uses the plain continuous IoU. A class without GT boxes
  scores AP 0 and still counts in the mean, as in bes-dev. "map" = mean over thresholds and classes.
Localization accuracy (WSRPN PRAtIoUMetric): per class and image, if #pred_c or #GT_c is 0, TN += 1 when
  both are 0; else TP += #GT boxes whose best IoU (continuous) with a class-c prediction is > t. FP = #pred - TP,
  FN = #GT - TP summed over images (FP can go negative when one prediction covers two targets, as in the
  original); acc = (TP + TN) / (TP + TN + FP + FN), mean over classes.
bootstrap: images resampled with replacement by torch.randint under torch.Generator().manual_seed(seed)
  (WSRPN used seed 2147483647); mean, std (numpy, ddof 0), 2.5 / 97.5 % quantiles (numpy linear).
"""
import numpy as np

from metrics.assignment import linear_sum_assignment

IOU_THRESHOLDS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7)


def _array(x, columns=None, name="input"):
    if hasattr(x, "detach"):
        x = x.detach().cpu().double().numpy()
    x = np.asarray(x, dtype=np.float64)
    if columns is not None:
        if x.size == 0:
            return x.reshape(0, columns)
        if x.ndim != 2 or x.shape[1] != columns:
            raise ValueError(f"{name}: expected shape (N, {columns}), got {x.shape}")
    elif x.ndim != 1:
        x = x.reshape(-1)
    return x


def _image_lists(boxes, labels, name, scores=None):
    """-> list over images of (N_i, 4) boxes, (N_i,) int labels [, (N_i,) scores] after checks."""
    if len(boxes) != len(labels):
        raise ValueError(f"{name}: {len(boxes)} box arrays but {len(labels)} label arrays")
    out_boxes, out_labels, out_scores = [], [], []
    for i, (b, l) in enumerate(zip(boxes, labels)):
        b, l = _array(b, 4, f"{name}_boxes[{i}]"), _array(l).astype(np.int64)
        if len(b) != len(l):
            raise ValueError(f"{name}[{i}]: {len(b)} boxes but {len(l)} labels")
        if len(b) and ((b[:, 2] < b[:, 0]) | (b[:, 3] < b[:, 1])).any():
            raise ValueError(f"{name}_boxes[{i}]: expected xyxy with x2 >= x1 and y2 >= y1, got {b.tolist()}")
        out_boxes.append(b)
        out_labels.append(l)
        if scores is not None:
            s = _array(scores[i])
            if len(s) != len(b):
                raise ValueError(f"{name}_scores[{i}]: {len(s)} scores for {len(b)} boxes")
            out_scores.append(s)
    return (out_boxes, out_labels, out_scores) if scores is not None else (out_boxes, out_labels)


def _check_classes(labels, num_classes, name):
    for i, l in enumerate(labels):
        if len(l) and (l.min() < 0 or l.max() >= num_classes):
            raise ValueError(f"{name}_labels[{i}] = {l.tolist()}: expected class ids in [0, {num_classes})")


def matthews(a, b):
    """MCC of two binary vectors; 0 when either is constant (sklearn's convention)."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if len(a) == 0:
        return 0.0
    tp, tn = float((a * b).sum()), float(((1 - a) * (1 - b)).sum())
    fp, fn = float((a * (1 - b)).sum()), float(((1 - a) * b).sum())
    denominator = (tp + fp) * (tp + fn) * (tn + fp) * (tn + fn)
    return 0.0 if denominator == 0 else (tp * tn - fp * fn) / np.sqrt(denominator)


def _xywh(boxes):
    return np.concatenate([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], 1)


def _iou_matrix(a, b, plus_one=0.0):
    """(P, 4), (G, 4) xyxy -> (P, G) IoU; plus_one=1 is the inclusive-pixel convention."""
    width = np.clip(np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0]) + plus_one,
                    0, None)
    height = np.clip(np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1])
                     + plus_one, 0, None)
    inter = width * height
    area_a = (a[:, 2] - a[:, 0] + plus_one) * (a[:, 3] - a[:, 1] + plus_one)
    area_b = (b[:, 2] - b[:, 0] + plus_one) * (b[:, 3] - b[:, 1] + plus_one)
    union = area_a[:, None] + area_b[None, :] - inter
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)


def _giou_matrix(a, b):
    iou = _iou_matrix(a, b)
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    inter_w = np.clip(np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0]), 0, None)
    inter_h = np.clip(np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1]), 0, None)
    union = area_a[:, None] + area_b[None, :] - inter_w * inter_h
    enclosing = ((np.maximum(a[:, None, 2], b[None, :, 2]) - np.minimum(a[:, None, 0], b[None, :, 0]))
                 * (np.maximum(a[:, None, 3], b[None, :, 3]) - np.minimum(a[:, None, 1], b[None, :, 1])))
    with np.errstate(invalid="ignore", divide="ignore"):
        return iou - np.where(enclosing > 0, (enclosing - union) / np.where(enclosing > 0, enclosing, 1), 0.0)


# --- RoDeO -----------------------------------------------------------------------------------------------
def _rodeo_scores(matched_pred, matched_gt, matched_pred_cls, matched_gt_cls, n_over, n_missed, num_classes):
    """Matched pairs (n_m, 4) xywh + classes, counts of unmatched -> (loc, shape, cls)."""
    n_matched = len(matched_pred)
    total = n_matched + n_over + n_missed
    if total == 0:
        return float("nan"), float("nan"), float("nan")
    if n_matched == 0:
        return 0.0, 0.0, 0.0
    weight = n_matched / total
    size = matched_gt[:, 2:4]                                                    # (n_m, 2) target w, h
    centre_pred = (matched_pred[:, :2] + matched_pred[:, 2:4] / 2) / size
    centre_gt = (matched_gt[:, :2] + matched_gt[:, 2:4] / 2) / size
    distance2 = ((centre_pred - centre_gt) ** 2).sum(1)                          # (n_m,) squared distance
    loc = np.exp(-distance2 * np.log(2)).mean()
    inter = np.minimum(matched_pred[:, 2:4], matched_gt[:, 2:4]).prod(1)        # corners aligned
    union = matched_pred[:, 2:4].prod(1) + matched_gt[:, 2:4].prod(1) - inter
    shape = (inter / union).mean()
    one_hot_pred = np.eye(num_classes)[matched_pred_cls].ravel()
    one_hot_gt = np.eye(num_classes)[matched_gt_cls].ravel()
    cls = max(0.0, matthews(one_hot_pred, one_hot_gt))
    return float(loc * weight), float(shape * weight), float(cls * weight)


def _harmonic(values, eps=1e-6):
    return len(values) / sum(1.0 / (v + eps) for v in values)


def rodeo(pred_boxes, pred_labels, gt_boxes, gt_labels, class_names, class_weight_matching=None):
    """-> {"rodeo/total", "rodeo/loc", "rodeo/shape", "rodeo/cls", "rodeo/<same>/<class>", "rodeo/matched",
    "rodeo/overpredicted", "rodeo/missed"} (the last three are box counts)."""
    if len(pred_boxes) != len(gt_boxes):
        raise ValueError(f"rodeo: {len(pred_boxes)} prediction images but {len(gt_boxes)} target images")
    num_classes = len(class_names)
    if num_classes < 2:
        raise ValueError("rodeo: needs at least 2 classes (MCC is undefined with one)")
    pred_boxes, pred_labels = _image_lists(pred_boxes, pred_labels, "pred")
    gt_boxes, gt_labels = _image_lists(gt_boxes, gt_labels, "gt")
    _check_classes(pred_labels, num_classes, "pred")
    _check_classes(gt_labels, num_classes, "gt")
    for i, b in enumerate(gt_boxes):
        if len(b) and ((b[:, 2] <= b[:, 0]) | (b[:, 3] <= b[:, 1])).any():
            raise ValueError(f"gt_boxes[{i}]: a target box has zero width or height (RoDeO divides by it)")
    if class_weight_matching is None:
        image_pred = np.zeros((len(pred_labels), num_classes))
        image_gt = np.zeros((len(gt_labels), num_classes))
        for i, (p, g) in enumerate(zip(pred_labels, gt_labels)):
            image_pred[i, p] = 1
            image_gt[i, g] = 1
        class_weight_matching = max(0.0, matthews(image_pred.ravel(), image_gt.ravel()))
    pairs_pred, pairs_gt, pairs_pred_cls, pairs_gt_cls, over_cls, missed_cls = [], [], [], [], [], []
    for p_box, p_cls, g_box, g_cls in zip(pred_boxes, pred_labels, gt_boxes, gt_labels):
        if len(p_box) and len(g_box):
            cost = -_giou_matrix(p_box, g_box) - class_weight_matching * (p_cls[:, None] == g_cls[None, :])
            rows, cols = linear_sum_assignment(cost)
        else:
            rows = cols = np.zeros(0, dtype=np.int64)
        pairs_pred.append(_xywh(p_box[rows]))
        pairs_gt.append(_xywh(g_box[cols]))
        pairs_pred_cls.append(p_cls[rows])
        pairs_gt_cls.append(g_cls[cols])
        over_cls.append(np.delete(p_cls, rows))
        missed_cls.append(np.delete(g_cls, cols))
    pairs_pred, pairs_gt = np.concatenate(pairs_pred), np.concatenate(pairs_gt)
    pairs_pred_cls, pairs_gt_cls = np.concatenate(pairs_pred_cls), np.concatenate(pairs_gt_cls)
    over_cls, missed_cls = np.concatenate(over_cls), np.concatenate(missed_cls)
    out = {"rodeo/matched": float(len(pairs_pred)), "rodeo/overpredicted": float(len(over_cls)),
           "rodeo/missed": float(len(missed_cls))}
    if len(pairs_pred) == 0:                     # official: warning + worst value everywhere
        for suffix in [""] + [f"/{name}" for name in class_names]:
            for key in ("total", "loc", "shape", "cls"):
                out[f"rodeo/{key}{suffix}"] = 0.0
        return out
    loc, shape, cls = _rodeo_scores(pairs_pred, pairs_gt, pairs_pred_cls, pairs_gt_cls, len(over_cls),
                                    len(missed_cls), num_classes)
    out.update({"rodeo/loc": loc, "rodeo/shape": shape, "rodeo/cls": cls, "rodeo/total": _harmonic([loc, shape, cls])})
    for c, name in enumerate(class_names):
        keep = pairs_gt_cls == c
        loc, shape, cls = _rodeo_scores(pairs_pred[keep], pairs_gt[keep], pairs_pred_cls[keep], pairs_gt_cls[keep],
                                        int((over_cls == c).sum()), int((missed_cls == c).sum()), num_classes)
        total = float("nan") if np.isnan(loc) else (0.0 if not keep.any() else _harmonic([loc, shape, cls]))
        out.update({f"rodeo/loc/{name}": loc, f"rodeo/shape/{name}": shape, f"rodeo/cls/{name}": cls,
                    f"rodeo/total/{name}": total})
    return out


# --- AP@IoU (bes-dev soft matching, 101 recall points) --------------------------------------------------
def _average_precision_101(tp, fp, num_gt):
    tp, fp = np.cumsum(tp), np.cumsum(fp)
    recall = tp / max(float(num_gt), 1.0)
    precision = tp / np.maximum(tp + fp, np.finfo(np.float64).eps)
    total = 0.0
    for r in np.arange(0.0, 1.01, 0.01):          # the recall points exactly as WSRPN passes them
        above = recall >= r
        total += precision[above].max() if above.any() else 0.0
    return total / 101


def ap_at_iou(pred_boxes, pred_scores, pred_labels, gt_boxes, gt_labels, class_names,
              iou_thresholds=IOU_THRESHOLDS, pixel_size=224):
    """-> {"ap@<t>" (mean over classes), "ap@<t>/<class>", "map/<class>" (mean over t), "map"}."""
    if len(pred_boxes) != len(gt_boxes):
        raise ValueError(f"ap_at_iou: {len(pred_boxes)} prediction images but {len(gt_boxes)} target images")
    pred_boxes, pred_labels, pred_scores = _image_lists(pred_boxes, pred_labels, "pred", pred_scores)
    gt_boxes, gt_labels = _image_lists(gt_boxes, gt_labels, "gt")
    num_classes = len(class_names)
    _check_classes(pred_labels, num_classes, "pred")
    _check_classes(gt_labels, num_classes, "gt")
    scale, plus_one = (float(pixel_size), 1.0) if pixel_size else (1.0, 0.0)
    ap = np.zeros((len(iou_thresholds), num_classes))
    for c in range(num_classes):
        rows, num_gt = [], 0                     # one row per prediction: (image, confidence, ious (G,))
        for i, (p_box, p_cls, p_score, g_box, g_cls) in enumerate(zip(pred_boxes, pred_labels, pred_scores,
                                                                       gt_boxes, gt_labels)):
            gt_c = g_box[g_cls == c] * scale
            num_gt += len(gt_c)
            pred_c = p_box[p_cls == c] * scale
            ious = _iou_matrix(pred_c, gt_c, plus_one) if len(gt_c) else np.zeros((len(pred_c), 0))
            rows += [(i, s, iou) for s, iou in zip(p_score[p_cls == c], ious)]
        order = np.argsort([-s for _, s, _ in rows], kind="stable")
        for t_index, threshold in enumerate(iou_thresholds):
            tp, fp, matched = np.zeros(len(rows)), np.zeros(len(rows)), {}
            for d, r in enumerate(order):
                image, _, ious = rows[r]
                taken = matched.setdefault(image, set())
                hit = False
                for g in np.argsort(ious)[::-1]:
                    if ious[g] <= threshold:
                        break
                    if g not in taken:
                        taken.add(g)
                        hit = True
                        break
                tp[d], fp[d] = (1.0, 0.0) if hit else (0.0, 1.0)
            ap[t_index, c] = _average_precision_101(tp, fp, num_gt)
    out = {}
    for t_index, threshold in enumerate(iou_thresholds):
        out[f"ap@{threshold}"] = float(ap[t_index].mean())
        for c, name in enumerate(class_names):
            out[f"ap@{threshold}/{name}"] = float(ap[t_index, c])
    for c, name in enumerate(class_names):
        out[f"map/{name}"] = float(ap[:, c].mean())
    out["map"] = float(ap.mean())
    return out


# --- localization accuracy (WSRPN PRAtIoUMetric) ---------------------------------------------------------
def localization_accuracy(pred_boxes, pred_scores, pred_labels, gt_boxes, gt_labels, class_names,
                          iou_thresholds=IOU_THRESHOLDS):
    """-> {"loc_acc@<t>" (mean over classes), "loc_acc@<t>/<class>"}; pred_scores are not used (kept for
    one argument order across the detection metrics)."""
    pred_boxes, pred_labels = _image_lists(pred_boxes, pred_labels, "pred")
    gt_boxes, gt_labels = _image_lists(gt_boxes, gt_labels, "gt")
    num_classes, thresholds = len(class_names), np.asarray(iou_thresholds, dtype=np.float64)
    tp = np.zeros((num_classes, len(thresholds)))
    tn, n_gt, n_pred = np.zeros(num_classes), np.zeros(num_classes), np.zeros(num_classes)
    for c in range(num_classes):
        for p_box, p_cls, g_box, g_cls in zip(pred_boxes, pred_labels, gt_boxes, gt_labels):
            pred_c, gt_c = p_box[p_cls == c], g_box[g_cls == c]
            n_pred[c] += len(pred_c)
            n_gt[c] += len(gt_c)
            if len(pred_c) == 0 or len(gt_c) == 0:
                tn[c] += float(len(pred_c) == len(gt_c))
                continue
            best = _iou_matrix(pred_c, gt_c).max(0)                               # (G,) best pred per target
            tp[c] += (best[:, None] > thresholds[None, :]).sum(0)
    fp, fn = n_pred[:, None] - tp, n_gt[:, None] - tp
    with np.errstate(invalid="ignore", divide="ignore"):
        acc = (tp + tn[:, None]) / (tp + tn[:, None] + fp + fn)                    # (C, T)
    out = {}
    for t_index, threshold in enumerate(iou_thresholds):
        out[f"loc_acc@{threshold}"] = float(np.mean(acc[:, t_index]))
        for c, name in enumerate(class_names):
            out[f"loc_acc@{threshold}/{name}"] = float(acc[c, t_index])
    return out


# --- bootstrap over images ----------------------------------------------------------------------------------
def bootstrap(metric_fn, num_images, num_samples=250, seed=0):
    """metric_fn(indices: (num_images,) int64 numpy) -> dict of floats. -> {key + "/mean", "/std", "/ci_low",
    "/ci_high"} over `num_samples` resamples with replacement (NaN results are left out of that key)."""
    import torch
    from tqdm import tqdm
    if num_images < 1 or num_samples < 1:
        raise ValueError(f"bootstrap: need num_images >= 1 and num_samples >= 1, got {num_images}, {num_samples}")
    generator = torch.Generator().manual_seed(seed)
    values = {}
    for _ in tqdm(range(num_samples), desc="bootstrap", leave=False, disable=True if num_samples < 20 else None):
        indices = torch.randint(num_images, size=(num_images,), generator=generator).numpy()
        for key, value in metric_fn(indices).items():
            values.setdefault(key, []).append(float(value))
    out = {}
    for key, samples in values.items():
        samples = np.asarray(samples)
        samples = samples[np.isfinite(samples)]
        if len(samples) == 0:
            stats = (float("nan"),) * 4
        else:
            stats = (samples.mean(), samples.std(), np.quantile(samples, 0.025), np.quantile(samples, 0.975))
        for suffix, value in zip(("mean", "std", "ci_low", "ci_high"), stats):
            out[f"{key}/{suffix}"] = float(value)
    return out
