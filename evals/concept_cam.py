"""Evaluation of a Concept CAM checkpoint: classification, CAM localization, prototype maps, PNGs.

    evaluate(model, dataset, cfg, device, ctx, prefix, visualize, out_dir, bootstrap, stage=, concept_boxes=, source=)
        -> flat dict: concept/auroc/<concept>, concept/auroc/macro (+ ap, f1), disease/... (stage 3),
           prototype_concept/... (stage >= 2), loc/pointing_game, loc/iou_acc@T, loc/iobb_acc@T,
           loc/energy_in_boxes (CAMs), proto_loc/... (prototype similarity maps), each also per concept
    predict_user_images(model, folder_or_file, transform, ...) -> predictions.json + CAM PNGs

Design choices (research brief §5, "Recommended Stage-1 evaluation"):
- Localization is scored per concept on the images where the concept is present AND has boxes, against the
  union of its boxes, then averaged over concepts (macro). Maps are upsampled bilinearly from the h x w grid
  to the input size, so boxes stay in input pixels; the pointing-game tolerance is metrics' default.
- IoU / IoBB accuracy: the map is min-max normalized per image to [0, 1] and thresholded at
  eval.cam_threshold (0.5) by metrics.localization.map_to_boxes. Energy in boxes uses relu(map), so it is
  sum_inside relu(cam) / sum relu(cam), free of thresholds.
- Prototype similarity maps of a concept: the max over its M prototypes of the cosine-similarity map.
- Scores for AUROC: sigmoid(concept_logits); prototype concept scores are max over m of max over patches.
  metrics.classification takes probabilities, so F1 is at 0.5 on sigmoid outputs.
- PNGs (PIL, no matplotlib): one sheet per image, one tile per concept that is present or predicted
  (p > 0.5): the CAM in a blue-to-red colour map over the image, ground-truth boxes of that concept in
  white, the concept name with its probability as the title, and a colour bar of the normalized CAM.
"""
import json
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw

from data.labels import VINDR_CONCEPTS, VINDR_DISEASES
from data.loader import epoch_loader
from metrics.visualize import _font, colorize

IOU_THRESHOLDS = (0.1, 0.25, 0.5)


@torch.no_grad()
def collect(model, dataset, concept_boxes, source, stage, task_head, device, ctx, batch_size, keep_images):
    """Run the model over a dataset -> dict of numpy arrays / lists (CAMs kept on the grid)."""
    model.eval()
    out = defaultdict(list)
    loader = epoch_loader(dataset, batch_size, seed=0, epoch=0, shuffle=False, drop_last=False)
    for batch in loader:
        images = batch["image"].to(device)                                      # (B, 3, H, W)
        with ctx:
            result = model(images, stage=stage, task_head=task_head)
        out["concept_probs"].append(result["concept_logits"].float().sigmoid().cpu())
        out["cams"].append(result["cams"].float().cpu())                       # (B, K, h, w)
        if "concepts" in batch:
            out["concepts"].append(batch["concepts"])
        if "similarity_maps" in result:
            out["prototype_maps"].append(result["similarity_maps"].float().amax(2).cpu())  # (B, K, h, w)
            out["prototype_scores"].append(result["prototype_scores"].float().amax(-1).cpu())  # (B, K)
        if "disease_logits" in result:
            out["disease_probs"].append(result["disease_logits"].float().sigmoid().cpu())
            out["diseases"].append(batch["diseases"])
        for b in range(len(images)):
            out["boxes"].append(concept_boxes(batch, b, source))
            if len(out["images"]) < keep_images:
                out["images"].append(batch["image"][b])
    collected = {k: (torch.cat(v) if k != "images" and isinstance(v[0], torch.Tensor) else v) for k, v in out.items()}
    collected.setdefault("images", [])  # visualize = 0 keeps none
    collected["image_size"] = tuple(images.shape[-2:])
    return collected


def localization_scores(maps, present, boxes, image_size, threshold, prefix):
    """maps: (N, K, h, w) on the grid; present: (N, K) or None (every boxed concept); boxes: per image
    (boxes (M, 4), concept ids (M,)). -> {prefix + metric[/concept]} macro over concepts with boxes."""
    from metrics.localization import energy_in_boxes, iobb_accuracy, iou_accuracy, pointing_game
    per_metric = defaultdict(list)
    scores = {}
    for k, name in enumerate(VINDR_CONCEPTS):
        rows = [(i, b[c == k]) for i, (b, c) in enumerate(boxes)
                if (c == k).any() and (present is None or present[i, k] > 0.5)]
        if not rows:
            continue
        index = [i for i, _ in rows]
        grid = maps[index, k][:, None]                                          # (n, 1, h, w)
        upsampled = F.interpolate(grid, size=image_size, mode="bilinear", align_corners=False)[:, 0]  # (n, H, W)
        low = upsampled.flatten(1).amin(1)[:, None, None]
        high = upsampled.flatten(1).amax(1)[:, None, None]
        normalized = ((upsampled - low) / (high - low).clamp(min=1e-8)).numpy()  # (n, H, W) in [0, 1]
        gt = [b.numpy() for _, b in rows]
        values = {"pointing_game": pointing_game(upsampled.numpy(), gt),
                  "energy_in_boxes": energy_in_boxes(upsampled.clamp(min=0).numpy(), gt)}
        for t in IOU_THRESHOLDS:
            values[f"iou_acc@{t}"] = iou_accuracy(normalized, gt, iou_threshold=t, map_threshold=threshold)
            values[f"iobb_acc@{t}"] = iobb_accuracy(normalized, gt, iobb_threshold=t, map_threshold=threshold)
        for metric, value in values.items():
            scores[f"{prefix}{metric}/{name}"] = float(value)
            per_metric[metric].append(float(value))
        scores[f"{prefix}count/{name}"] = float(len(rows))
    for metric, values in per_metric.items():
        scores[f"{prefix}{metric}"] = float(np.nanmean(values))
    return scores


def evaluate(model, dataset, cfg, device, ctx, prefix="", visualize=0, out_dir=None, bootstrap=0, *, stage,
             concept_boxes, source, classification=True):
    """-> flat dict: concept (and prototype / disease) classification metrics, CAM localization (loc/...),
    bootstrap intervals of the concept macro-AUROC; CAM sheets for the first `visualize` images into out_dir.
    concept_boxes(batch, b, source) -> (boxes (M, 4), concept ids (M,)) of image b; stage: the checkpoint's."""
    from metrics.classification import classification_metrics
    threshold, task_head, keep = cfg.eval.cam_threshold, cfg.stage3.task_head, int(visualize or 0)
    c = collect(model, dataset, concept_boxes, source, stage, task_head, device, ctx, cfg.train.batch_size, keep)
    metrics = {}
    present = c.get("concepts")
    if classification:
        metrics.update(classification_metrics(c["concept_probs"], present, VINDR_CONCEPTS, prefix=prefix + "concept/"))
        if "prototype_scores" in c:
            metrics.update(classification_metrics(c["prototype_scores"], present, VINDR_CONCEPTS,
                                                  prefix=prefix + "prototype_concept/"))
        if stage >= 3 and "disease_probs" in c:
            metrics.update(classification_metrics(c["disease_probs"], c["diseases"], VINDR_DISEASES,
                                                  prefix=prefix + "disease/"))
    metrics.update(localization_scores(c["cams"], present, c["boxes"], c["image_size"], threshold, prefix + "loc/"))
    if "prototype_maps" in c:
        metrics.update(localization_scores(c["prototype_maps"], present, c["boxes"], c["image_size"], threshold,
                                           prefix + "proto_loc/"))
    if bootstrap and classification:
        from metrics.classification import macro_auroc
        from metrics.detection import bootstrap
        probs, labels = c["concept_probs"].numpy(), present.numpy()
        metrics.update(bootstrap(lambda idx: {prefix + "concept/auroc/macro": macro_auroc(probs[idx], labels[idx])},
                                 len(labels), num_samples=bootstrap, seed=0))
    for i in range(min(keep, len(c["images"]))):
        save_cam_sheet(c["images"][i], c["cams"][i], c["concept_probs"][i], c["boxes"][i],
                       None if present is None else present[i],
                       Path(out_dir) / f"{prefix.strip('/') or 'cams'}_{i:03d}.png",
                       c["prototype_maps"][i] if "prototype_maps" in c else None)
    return metrics


# ----------------------------------------------------------------------------------------------------------
# pictures

def overlay_tile(image, grid_map, boxes, lines, size=192):
    """image (3, H, W) normalized; grid_map (h, w) -> PIL tile: the map (min-max over this tile) over the
    image, the boxes in white, and a 2-line title above."""
    grey = image[0].numpy()
    grey = (grey - grey.min()) / max(grey.max() - grey.min(), 1e-8)
    H, W = grey.shape
    upsampled = F.interpolate(grid_map[None, None], size=(H, W), mode="bilinear", align_corners=False)[0, 0].numpy()
    normalized = (upsampled - upsampled.min()) / max(upsampled.max() - upsampled.min(), 1e-8)
    blend = 0.55 * np.repeat(grey[..., None] * 255, 3, -1) + 0.45 * colorize(normalized, 0.0, 1.0)
    tile = Image.fromarray(blend.astype(np.uint8)).resize((size, size), Image.BILINEAR)
    draw = ImageDraw.Draw(tile)
    scale = size / W
    for x1, y1, x2, y2 in boxes.tolist():
        draw.rectangle([x1 * scale, y1 * scale, x2 * scale - 1, y2 * scale - 1], outline=(0, 0, 0), width=4)
        draw.rectangle([x1 * scale, y1 * scale, x2 * scale - 1, y2 * scale - 1], outline=(255, 255, 255), width=2)
    header = TITLE_LINE * len(lines) + 4
    framed = Image.new("RGB", (size, size + header), (20, 20, 20))
    framed.paste(tile, (0, header))
    draw = ImageDraw.Draw(framed)
    for i, line in enumerate(lines):
        draw.text((3, 2 + i * TITLE_LINE), line, fill=(255, 255, 255), font=_font(12))
    return framed


TITLE_LINE = 15


def save_cam_sheet(image, cams, probs, boxes, present, path, prototype_maps=None, size=192):
    """One PNG: a tile per concept present or predicted (at most 8): the CAM row, and the prototype-similarity
    row below it when given; each tile has its concept, label, probability and the map's own value range."""
    box_xyxy, box_concepts = boxes
    shown = [k for k in range(len(VINDR_CONCEPTS)) if probs[k] > 0.5 or (present is not None and present[k] > 0.5)]
    shown = shown[:8] or [int(probs.argmax())]
    rows = [("CAM", cams)] + ([("proto sim", prototype_maps)] if prototype_maps is not None else [])
    bar, legend, header = 20, 2 * TITLE_LINE + 6, 2 * TITLE_LINE + 4
    width = max(len(shown) * (size + 4) + bar + 40, 720)
    sheet = Image.new("RGB", (width, len(rows) * (size + header + 4) + legend), (20, 20, 20))
    for r, (kind, maps) in enumerate(rows):
        for j, k in enumerate(shown):
            label = "unlabelled" if present is None else ("present" if present[k] > 0.5 else "absent")
            low, high = float(maps[k].min()), float(maps[k].max())
            lines = [f"{kind}: {VINDR_CONCEPTS[k]}",
                     f"{label}  p={float(probs[k]):.2f}  [{low:.2f}, {high:.2f}]"]
            sheet.paste(overlay_tile(image, maps[k], box_xyxy[box_concepts == k], lines, size),
                        (j * (size + 4), r * (size + header + 4)))
    # colour bar: each tile's map min-max normalized, 0 (its min, bottom) .. 1 (its max, top)
    draw = ImageDraw.Draw(sheet)
    x0, top, height = len(shown) * (size + 4) + 4, header, len(rows) * (size + header + 4) - header - 8
    sheet.paste(Image.fromarray(colorize(np.linspace(1, 0, height)[:, None].repeat(bar, 1), 0.0, 1.0)), (x0, top))
    draw.text((x0 + bar + 3, top - 2), "max", fill=(255, 255, 255), font=_font(12))
    draw.text((x0 + bar + 3, top + height - 12), "min", fill=(255, 255, 255), font=_font(12))
    y = sheet.height - legend + 3
    draw.text((3, y), "white boxes: the ground-truth boxes of the tile's concept; proto sim: max over the "
              "concept's prototypes of the cosine similarity", fill=(255, 255, 255), font=_font(12))
    draw.text((3, y + TITLE_LINE), "colours: each map scaled to its own [min, max] (values in the title); "
              "p = sigmoid(max CAM)", fill=(255, 255, 255), font=_font(12))
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    sheet.save(path)
    return path


@torch.no_grad()
def predict_user_images(model, images, transform, stage, task_head, out_dir, device, ctx):
    """Concept (and disease, stage 3) probabilities for a file or a folder of images, plus a CAM sheet each."""
    from data.io import read_user_images
    pairs, skipped = read_user_images(images)
    results, no_boxes = {}, (torch.zeros(0, 4), torch.zeros(0, dtype=torch.long))
    model.eval()
    for path, pixels in pairs:
        image, _, _ = transform(pixels, None, None)                              # (3, H, W)
        with ctx:
            out = model(image[None].to(device), stage=stage, task_head=task_head)
        probs = out["concept_logits"][0].float().sigmoid().cpu()
        results[path.name] = {"concepts": dict(zip(VINDR_CONCEPTS, probs.tolist()))}
        if "disease_logits" in out:
            results[path.name]["diseases"] = dict(zip(VINDR_DISEASES, out["disease_logits"][0].sigmoid().tolist()))
        save_cam_sheet(image, out["cams"][0].float().cpu(), probs, no_boxes, None, Path(out_dir) / f"{path.stem}_cams.png")
    (Path(out_dir) / "predictions.json").write_text(json.dumps(results, indent=1))
    return {"images/count": float(len(pairs)), "images/skipped": float(len(skipped))}
