"""Evaluation of WSRPN-VL: boxes from the Gaussian ROIs scored against ground-truth boxes (docs/wsrpn_vl.md).

    metrics = evaluate(model, dataset, cfg, device, ctx, prefix, visualize, out_dir, bootstrap, text_encoder=None)
    metrics = predict_user_images(model, cfg, images, out_dir, device, ctx)    # predictions.json + PNGs
    evaluate_detection(...)     the metric computation alone (train_wsrpn_vl.py's validation calls it)

Keys: rodeo/total, rodeo/loc, rodeo/shape, rodeo/cls (RoDeO), ap@T and map (AP at IoU T), loc_acc@T,
gaussian/scale, gaussian/area, gaussian/entropy (over the ROIs that gave a box), boxes_per_image and, with the
text branch, vision_text/... (alignment of the ROI vision embedding with the caption's text embedding).
Boxes are compared in image fractions (xyxy / (W, H, W, H)).
"""
import json
from pathlib import Path

import torch
import torch.nn.functional as F

from data.loader import epoch_loader
from models.wsrpn import extract_boxes


@torch.no_grad()
def predict(model, images_batches, box_threshold, device, ctx):
    """Yield per image: boxes (M, 4) in image fractions, labels (M,), scores (M,), ROI index (M,), mu, sigma (K, 2),
    maps (K, H, W), vision embedding (S,)."""
    model.eval()
    for images in images_batches:
        with ctx:
            out = model(images.to(device))
        boxes, labels, scores, rois = extract_boxes(out["roi_probs"], out["mu"], out["sigma"], box_threshold,
                                                    return_indices=True)
        H, W = out["grid"]
        for b in range(images.shape[0]):
            yield {"boxes": boxes[b], "labels": labels[b], "scores": scores[b], "rois": rois[b],
                   "mu": out["mu"][b].float().cpu(), "sigma": out["sigma"][b].float().cpu(),
                   "maps": out["gaussian_maps"][b].float().cpu().reshape(-1, H, W),
                   "vision_emb": out["vision_emb"][b].float().cpu()}


def evaluate_detection(model, dataset, cfg, device, ctx, text_encoder=None, rodeo_too=True, bootstrap=0,
                       batch_size=32, keep_predictions=False):
    """Boxes on `dataset` (every image has >= 1 box) -> flat metric dict (see docs/wsrpn_vl.md)."""
    from metrics.detection import ap_at_iou, bootstrap as bootstrap_metric, localization_accuracy, rodeo
    from metrics.localization import map_entropy
    names = list(cfg.data.classes)
    loader = epoch_loader(dataset, batch_size, seed=0, epoch=0, shuffle=False, drop_last=False)
    gt_boxes, gt_labels, captions, predictions = [], [], [], []
    def batches():
        for batch in loader:
            for image, boxes, labels, caption in zip(batch["image"], batch["boxes"], batch["box_labels"], batch["caption"]):
                height, width = image.shape[-2:]
                gt_boxes.append(boxes / torch.tensor([width, height, width, height]))  # (N, 4) fractions
                gt_labels.append(labels)
                captions.append(caption)
            yield batch["image"]
    predictions = list(predict(model, batches(), cfg.eval.box_threshold, device, ctx))
    pred_boxes = [p["boxes"] for p in predictions]
    pred_labels = [p["labels"] for p in predictions]
    pred_scores = [p["scores"] for p in predictions]

    def detection_metrics(indices):
        pick = lambda values: [values[i] for i in indices]  # noqa: E731
        metrics = ap_at_iou(pick(pred_boxes), pick(pred_scores), pick(pred_labels), pick(gt_boxes), pick(gt_labels),
                            names)
        if rodeo_too:
            metrics.update(rodeo(pick(pred_boxes), pick(pred_labels), pick(gt_boxes), pick(gt_labels), names))
            metrics.update(localization_accuracy(pick(pred_boxes), pick(pred_scores), pick(pred_labels),
                                                 pick(gt_boxes), pick(gt_labels), names, iou_thresholds=(0.3, 0.5)))
        return metrics

    metrics = detection_metrics(range(len(predictions)))
    if bootstrap:
        keys = ("rodeo/total", "rodeo/loc", "rodeo/shape", "rodeo/cls", "ap@0.3", "ap@0.5", "map")
        metrics.update(bootstrap_metric(lambda idx: {k: v for k, v in detection_metrics(idx).items() if k in keys},
                                        len(predictions), num_samples=bootstrap, seed=0))
    # Gaussian statistics over the ROIs that gave a box
    sigmas = [p["sigma"][p["rois"]] for p in predictions if len(p["rois"])]
    maps = [p["maps"][p["rois"]] for p in predictions if len(p["rois"])]
    if sigmas:
        metrics["gaussian/scale"] = torch.cat(sigmas).mean().item()
        metrics["gaussian/area"] = torch.cat(sigmas).prod(-1).mean().item()
        metrics["gaussian/entropy"] = float(torch.as_tensor(map_entropy(torch.cat(maps))).float().mean())
    metrics["boxes_per_image"] = sum(len(b) for b in pred_boxes) / max(1, len(pred_boxes))
    if text_encoder is not None:
        from metrics.retrieval import alignment_statistics
        vision = torch.stack([p["vision_emb"] for p in predictions])  # (N, S)
        text_features = torch.cat([text_encoder(captions[i:i + 64]) for i in range(0, len(captions), 64)])
        text = model.shared_projection.text(text_features.to(device)).float().cpu()  # (N, S)
        caption_ids = {c: i for i, c in enumerate(dict.fromkeys(captions))}
        groups = torch.tensor([caption_ids[c] for c in captions])
        metrics.update({f"vision_text/{k}": float(v) for k, v in
                        alignment_statistics(vision @ text.t(), groups).items()})
    if keep_predictions:
        return metrics, predictions, gt_boxes, gt_labels
    return metrics


def draw_prediction(image, image_id, p, names, out_dir, gt_boxes=None, gt_labels=None):
    """Two PNGs for one image: `<id>_boxes.png` (predicted boxes in red named "class objectness", ground truth
    green dashed with class names, on a white margin (20 % of the side, 45 % on the right for the labels)
    because boxes are not clipped to the image, as in the reference) and `<id>_gaussians.png` (the Gaussian map of each ROI that gave a box, named
    by its box's class, on one shared colour scale with a colour bar; all K ROIs when none gave a box).
    image: (3, H, W) in [0, 1]; p: one item of predict(); gt_boxes: (N, 4) xyxy fractions, gt_labels: (N,)."""
    from metrics.visualize import attention_grid, draw_boxes
    out_dir = Path(out_dir)
    H, W = image.shape[-2:]
    margin = round(0.2 * min(H, W))  # and 0.45 on the right, where a box label starting near the edge ends
    canvas = F.pad(image, (margin, round(0.45 * W), margin, margin), value=1.0)  # (3, H + 2m, W + m + 0.45 W)
    scale, shift = torch.tensor([W, H, W, H]), torch.tensor([margin] * 4)
    pred_names = [f"{names[int(label)]} {float(score):.2f}" for label, score in zip(p["labels"], p["scores"])]
    gt_boxes = torch.zeros(0, 4) if gt_boxes is None else gt_boxes
    gt_names = [] if gt_labels is None else [names[int(label)] for label in gt_labels]
    counts = {name: gt_names.count(name) for name in dict.fromkeys(gt_names)}
    truth = ", ".join(f"{name} x{n}" if n > 1 else name for name, n in counts.items()) or "none given"
    draw_boxes(canvas, list(p["boxes"] * scale + shift), gt_boxes * scale + shift, pred_names,
               out_dir / f"{image_id}_boxes.png", title=f"{image_id}  truth: {truth}  (white: outside the image)",
               gt_names=gt_names)
    if len(p["rois"]):
        maps, map_names = p["maps"][p["rois"]], [f"ROI {int(k)}: {n}" for k, n in zip(p["rois"], pred_names)]
    else:
        maps, map_names = p["maps"], [f"ROI {k} (no box)" for k in range(len(p["maps"]))]
    maps = F.interpolate(maps[None], size=(H, W), mode="bilinear", align_corners=False)[0]  # (M, H, W)
    # 3 decimals: the maps are max-normalized to 1, and a minimum like 2e-05 made an unreadable tick label
    attention_grid(image, maps.clamp(0, 1).mul(1000).round().div(1000), map_names, out_dir / f"{image_id}_gaussians.png",
                   columns=min(5, len(maps)), title=f"{image_id}: Gaussian ROI maps (max-normalized, patch grid "
                                                    f"{p['maps'].shape[-2]}x{p['maps'].shape[-1]})")


def visualize_predictions(dataset, predictions, gt_boxes, gt_labels, names, out_dir, count):
    """PNGs of the first `count` images: boxes against the ground truth, and the Gaussian maps (draw_prediction).
    predictions follow the dataset's order without the samples that did not load (data.on_error=skip)."""
    samples = (s for s in map(dataset.__getitem__, range(len(dataset))) if s is not None)
    for i, sample in zip(range(min(count, len(predictions))), samples):
        draw_prediction(sample["image"], sample["id"], predictions[i], names, out_dir, gt_boxes[i], gt_labels[i])


def load_user_images(path, size):
    """A file or a folder of images -> (ids, (N, 3, size, size) in [0, 1]); unreadable files are reported and
    left out (data.io.read_user_images)."""
    from PIL import Image

    from data.io import read_user_images
    pairs, _ = read_user_images(path)
    tensors = []
    for _, grey in pairs:
        grey = grey.resize((size, size), Image.BILINEAR)
        tensors.append(torch.tensor(list(grey.getdata()), dtype=torch.float32).reshape(1, size, size) / 255)
    return [f.stem for f, _ in pairs], torch.stack(tensors).expand(-1, 3, -1, -1)


def predict_user_images(model, cfg, images, out_dir, device, ctx):
    """Boxes on a file or folder of PNG/JPEG: predictions.json and two PNGs per image in out_dir."""
    names, out_dir = list(cfg.data.classes), Path(out_dir)
    ids, pixels = load_user_images(images, cfg.data.image_size)
    predictions = list(predict(model, pixels.split(32), cfg.eval.box_threshold, device, ctx))
    records = {}
    for image_id, image, p in zip(ids, pixels, predictions):
        records[image_id] = [{"box_xyxy_fraction": box.tolist(), "class": names[int(label)], "score": float(s)}
                             for box, label, s in zip(p["boxes"], p["labels"], p["scores"])]
        draw_prediction(image, image_id, p, names, out_dir)
    (out_dir / "predictions.json").write_text(json.dumps(records, indent=1))
    return {"images": float(len(ids)), "boxes_per_image": sum(map(len, records.values())) / len(ids)}


def evaluate(model, dataset, cfg, device, ctx, prefix="", visualize=0, out_dir=None, bootstrap=0, text_encoder=None):
    """-> flat dict of floats (keys above, each with `prefix`); PNGs of the first `visualize` images into out_dir."""
    metrics, predictions, gt_boxes, gt_labels = evaluate_detection(model, dataset, cfg, device, ctx, text_encoder, True,
                                                                   bootstrap, keep_predictions=True)
    if visualize and out_dir is not None:
        visualize_predictions(dataset, predictions, gt_boxes, gt_labels, list(cfg.data.classes), out_dir, visualize)
    return {prefix + k: v for k, v in metrics.items()}
