"""Weakly supervised localization of heatmaps (CAMs, ROI maps): pointing game, map -> boxes, IoU / IoBB
accuracy, energy inside boxes, map entropy and Gaussian ROI statistics (research/concept_cam_datasets.md §5).

Conventions (N maps of H x W pixels; boxes xyxy in map pixels, pixel (row i, column j) covers
[j, j+1) x [i, i+1), so a box (0, 0, W, H) is the whole map; inputs numpy or torch):
- pointing_game: the arg-max pixel (first in row-major order when tied) is a hit when its centre
  (j + 0.5, i + 0.5) lies within `tolerance` pixels (Euclidean distance to the box rectangle) of any GT box
  of the image. Default tolerance 15 px, the original protocol (Zhang et al. ECCV 2016); pass 0 for a
  strict hit. Images without a GT box are skipped; the result is hits / counted images (NaN if none).
  Per-class averaging is the caller's loop (one call per class).
- map_to_boxes: mode "minmax" scales the map to [0, 1] by its min and max (Wang et al. 2017 scale it to
  [0, 255]; thresholds 60/255 and 180/255 are THRESHOLDS_WANG), mode "max" keeps pixels >= threshold * max
  (a fraction of the max). Pixels >= threshold form the binary map; each 8-connected component gives its
  bounding box (x_min, y_min, x_max + 1, y_max + 1), largest component first. A constant map gives no box.
- iou_accuracy / iobb_accuracy: an image is correct when the best (predicted box, GT box) pair has
  IoU > t, resp. IoBB = intersection / area of the PREDICTED box > t (strict, as Wang et al.); fraction
  of images with >= 1 GT box. No predicted box = wrong.
- energy_in_boxes: sum of relu(map) over pixels whose centre lies inside the union of the image's boxes,
  divided by the sum of relu(map); mean over images with a box and a positive sum (threshold-free).
- map_entropy: Shannon entropy (nats) of relu(map) normalized to sum 1, per map; a uniform map gives
  log(H*W). roi_map_statistics adds mean/std of it and of Gaussian scales (sigma = box width/height in
  fractions of the image, WSRPN convention).
"""
import numpy as np

THRESHOLDS_WANG = (60 / 255, 180 / 255)
IOU_THRESHOLDS = (0.1, 0.25, 0.5)


def _maps(maps, name="maps"):
    if hasattr(maps, "detach"):
        maps = maps.detach().cpu().double().numpy()
    maps = np.asarray(maps, dtype=np.float64)
    if maps.ndim == 2:
        maps = maps[None]
    if maps.ndim != 3:
        raise ValueError(f"{name}: expected (N, H, W) or (H, W), got shape {maps.shape}")
    if not np.isfinite(maps).all():
        raise ValueError(f"{name}: holds NaN or inf")
    return maps


def _boxes(boxes, count):
    if len(boxes) != count:
        raise ValueError(f"boxes: {len(boxes)} box arrays for {count} maps")
    out = []
    for i, b in enumerate(boxes):
        if hasattr(b, "detach"):
            b = b.detach().cpu().double().numpy()
        b = np.asarray(b, dtype=np.float64)
        b = b.reshape(0, 4) if b.size == 0 else b
        if b.ndim != 2 or b.shape[1] != 4:
            raise ValueError(f"boxes[{i}]: expected (M, 4) xyxy, got shape {b.shape}")
        out.append(b)
    return out


def pointing_game(maps, boxes, tolerance=15.0):
    """maps (N, H, W), boxes list of (M_i, 4) xyxy in map pixels -> hit rate (NaN when no image has a box)."""
    maps = _maps(maps)
    boxes = _boxes(boxes, len(maps))
    hits, counted = 0, 0
    for heatmap, b in zip(maps, boxes):
        if len(b) == 0:
            continue
        row, col = np.unravel_index(np.argmax(heatmap), heatmap.shape)
        x, y = col + 0.5, row + 0.5
        dx = np.maximum(np.maximum(b[:, 0] - x, x - b[:, 2]), 0)
        dy = np.maximum(np.maximum(b[:, 1] - y, y - b[:, 3]), 0)
        hits += bool((np.hypot(dx, dy) <= tolerance).any())
        counted += 1
    return hits / counted if counted else float("nan")


def _components(mask):
    """(H, W) bool -> list of (x_min, y_min, x_max + 1, y_max + 1, area), 8-connectivity, by row runs."""
    parent = []

    def find(a):
        while parent[a] != a:
            parent[a] = parent[parent[a]]
            a = parent[a]
        return a
    runs, previous = [], []                                 # runs: (row, start, end_exclusive)
    for row in range(mask.shape[0]):
        line = np.r_[False, mask[row], False].astype(np.int8)
        edges = np.flatnonzero(np.diff(line))
        current = []
        for start, end in zip(edges[::2], edges[1::2]):
            index = len(runs)
            runs.append((row, start, end))
            parent.append(index)
            for other in previous:                          # 8-connected: column ranges touch diagonally
                _, o_start, o_end = runs[other]
                if o_start <= end and start <= o_end:
                    a, b = find(index), find(other)
                    if a != b:
                        parent[max(a, b)] = min(a, b)
            current.append(index)
        previous = current
    boxes = {}
    for index, (row, start, end) in enumerate(runs):
        root = find(index)
        x0, y0, x1, y1, area = boxes.get(root, (start, row, end, row + 1, 0))
        boxes[root] = (min(x0, start), min(y0, row), max(x1, end), max(y1, row + 1), area + end - start)
    return sorted(boxes.values(), key=lambda box: -box[4])


def map_to_boxes(heatmap, threshold, mode="minmax"):
    """heatmap (H, W) -> (M, 4) float xyxy pixel boxes of the connected components at `threshold`."""
    heatmap = _maps(heatmap, "heatmap")
    if len(heatmap) != 1:
        raise ValueError(f"heatmap: expected one (H, W) map, got {len(heatmap)}")
    heatmap = heatmap[0]
    low, high = heatmap.min(), heatmap.max()
    if mode == "minmax":
        if high <= low:
            return np.zeros((0, 4))
        mask = (heatmap - low) / (high - low) >= threshold
    elif mode == "max":
        if high <= 0:
            return np.zeros((0, 4))
        mask = heatmap >= threshold * high
    else:
        raise ValueError(f"map_to_boxes: mode {mode!r}, expected 'minmax' or 'max'")
    return np.array([c[:4] for c in _components(mask)], dtype=np.float64).reshape(-1, 4)


def _overlap(pred, gt):
    """(P, 4), (G, 4) -> intersection (P, G), pred area (P,), gt area (G,)."""
    width = np.clip(np.minimum(pred[:, None, 2], gt[None, :, 2]) - np.maximum(pred[:, None, 0], gt[None, :, 0]), 0, None)
    height = np.clip(np.minimum(pred[:, None, 3], gt[None, :, 3]) - np.maximum(pred[:, None, 1], gt[None, :, 1]), 0, None)
    return (width * height, (pred[:, 2] - pred[:, 0]) * (pred[:, 3] - pred[:, 1]),
            (gt[:, 2] - gt[:, 0]) * (gt[:, 3] - gt[:, 1]))


def _box_accuracy(maps, boxes, threshold, map_threshold, mode, kind):
    maps = _maps(maps)
    boxes = _boxes(boxes, len(maps))
    correct, counted = 0, 0
    for heatmap, gt in zip(maps, boxes):
        if len(gt) == 0:
            continue
        counted += 1
        pred = map_to_boxes(heatmap, map_threshold, mode)
        if len(pred) == 0:
            continue
        inter, pred_area, gt_area = _overlap(pred, gt)
        if kind == "iou":
            score = inter / (pred_area[:, None] + gt_area[None, :] - inter)
        else:
            score = inter / pred_area[:, None]
        correct += bool(score.max() > threshold)
    return correct / counted if counted else float("nan")


def iou_accuracy(maps, boxes, iou_threshold=0.5, map_threshold=THRESHOLDS_WANG[0], mode="minmax"):
    """Fraction of images (with a GT box) whose best CAM box has IoU > iou_threshold with a GT box."""
    return _box_accuracy(maps, boxes, iou_threshold, map_threshold, mode, "iou")


def iobb_accuracy(maps, boxes, iobb_threshold=0.25, map_threshold=THRESHOLDS_WANG[0], mode="minmax"):
    """Fraction of images whose best CAM box has intersection / predicted-box area > iobb_threshold."""
    return _box_accuracy(maps, boxes, iobb_threshold, map_threshold, mode, "iobb")


def box_masks(boxes, height, width):
    """list of (M_i, 4) pixel boxes -> (N, H, W) bool, True where the pixel centre is inside a box."""
    boxes = _boxes(boxes, len(boxes))
    y = np.arange(height)[:, None] + 0.5
    x = np.arange(width)[None, :] + 0.5
    out = np.zeros((len(boxes), height, width), dtype=bool)
    for i, b in enumerate(boxes):
        for x0, y0, x1, y1 in b:
            out[i] |= (x >= x0) & (x <= x1) & (y >= y0) & (y <= y1)
    return out


def energy_in_boxes(maps, boxes):
    """Mean over images of sum(relu(map) inside the boxes) / sum(relu(map)) (NaN when no image counts)."""
    maps = np.clip(_maps(maps), 0, None)
    inside = box_masks(_boxes(boxes, len(maps)), *maps.shape[1:])
    totals = maps.reshape(len(maps), -1).sum(1)
    keep = inside.reshape(len(maps), -1).any(1) & (totals > 0)
    if not keep.any():
        return float("nan")
    return float(((maps * inside).reshape(len(maps), -1).sum(1)[keep] / totals[keep]).mean())


def map_entropy(maps):
    """(N, H, W) -> (N,) entropy in nats of relu(map) / sum; NaN for an all-zero map."""
    maps = np.clip(_maps(maps), 0, None)
    maps = maps.reshape(len(maps), -1)                      # (N, H*W)
    totals = maps.sum(1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        p = maps / totals
        terms = np.where(p > 0, -p * np.log(np.where(p > 0, p, 1)), 0.0)
    return np.where(totals[:, 0] > 0, terms.sum(1), np.nan)


def roi_map_statistics(maps, sigma=None, prefix="gaussian/"):
    """ROI maps (K, H, W) [+ sigma (K, 2) Gaussian widths/heights in image fractions] -> {prefix+"entropy",
    "entropy_std", "entropy_normalized" (entropy / log(H*W)), "scale", "scale_std", "area"}."""
    maps = _maps(maps)
    entropy = map_entropy(maps)
    out = {f"{prefix}entropy": float(np.nanmean(entropy)), f"{prefix}entropy_std": float(np.nanstd(entropy)),
           f"{prefix}entropy_normalized": float(np.nanmean(entropy) / np.log(maps.shape[1] * maps.shape[2]))}
    if sigma is not None:
        sigma = _maps(np.asarray(sigma.detach().cpu() if hasattr(sigma, "detach") else sigma, dtype=np.float64)
                      .reshape(1, -1, 2), "sigma")[0]
        out.update({f"{prefix}scale": float(sigma.mean()), f"{prefix}scale_std": float(sigma.std()),
                    f"{prefix}area": float(sigma.prod(1).mean())})
    return out
