"""Evaluation of VideoAttentionCLIP (seed 003 D1/D2 and classification), used by train_video_clip.py's
validation, its final test evaluation and evaluate.py (through `evaluate_checkpoint`).

    metrics = evaluate(model, dataset, cfg, device, ctx, "test/", visualize, out_dir, bootstrap)   -> flat dict
    pred = predict(model, loader, device, ctx)           -> dict of CPU tensors over the split
    metrics = video_clip_metrics(pred, prefix="test/")   -> flat dict of floats
    save_strips(model, dataset, n, out_dir, device, ctx, class_names)   -> PNG strips

Metric names (prefix + ...):
- accuracy, f1_macro (multi-class macro F1 = mean over classes of the one-vs-rest F1 of the argmax).
- D1: retrieval_r1_v2a, retrieval_r5_v2a (video -> attention), retrieval_r1_a2v, retrieval_r5_a2v,
  with the 1:1 diagonal protocol (research/contrastive_vl.md §4) over the whole split, cosine similarity,
  computed in blocks of 256 queries (metrics.retrieval.retrieval_metrics_from_embeddings): the (N, N)
  similarity matrix is never held.
- D2: align_sim_correct / align_sim_incorrect = mean alignment score s_i = cos(video_embed_i, attn_embed_i)
  over correctly / incorrectly classified clips, align_sim_gap = their difference, align_sim_corr = Pearson
  correlation of s_i with the 0/1 correctness (point-biserial). NaN when a group is empty. s_i is the
  diagonal of video_embed @ attn_embed.T taken blockwise (metrics.retrieval.matched_similarity).
- Bootstrap (--bootstrap): accuracy and f1_macro only, resampled over clips.
- Phantoms only (their evidence masks are known): attn_on_evidence = share of attention-map mass inside the
  evidence object, saliency_on_evidence = share of the map-guided token saliency (models/clip_align_losses
  token_saliency) inside it, evidence_area = the object's share of the token grid (the chance level of both).

Shape letters: B batch, N clips of the split (or tokens where said), E embedding dim, K classes.
"""
import math
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw

from data.loader import epoch_loader
from metrics.visualize import colorize
from models.clip_align_losses import token_saliency


@torch.no_grad()
def predict(model, loader, device, ctx):
    """-> logits (N, K), labels (N,), video_embed / attn_embed (N, E), and evidence shares on phantoms."""
    model.eval()
    out = defaultdict(list)
    for batch in loader:
        with ctx:
            result = model(batch["video"].to(device), batch["attn_map"].to(device))
        for key in ("logits", "video_embed", "attn_embed"):
            out[key].append(result[key].float().cpu())
        out["labels"].append(batch["label"])
        if "evidence_mask" in batch:
            attn = batch["attn_map"].sum(1)                                          # (B, T, H, W)
            mask = batch["evidence_mask"][:, 0]                                      # (B, T, H, W)
            out["attn_on_evidence"].append((attn * mask).flatten(1).sum(1) / attn.flatten(1).sum(1).clamp_min(1e-8))
            if "video_tokens" in result:
                saliency = token_saliency(result["video_tokens"].float()).cpu()     # (B, N tokens)
                grid = model.video_encoder.backbone.tokens(batch["video"][:1].to(device)).shape[2:]
                mask_grid = F.adaptive_avg_pool3d(mask[:, None], tuple(grid)).flatten(1)   # (B, N tokens)
                out["saliency_on_evidence"].append((saliency * mask_grid).sum(1))
                out["evidence_area"].append(mask_grid.mean(1))
    return {k: torch.cat(v) for k, v in out.items()}


def alignment_vs_correctness(align, correct):
    """align (N,) alignment scores, correct (N,) bool -> D2 statistics (seed 003 names without prefix)."""
    align, correct = np.asarray(align, dtype=np.float64), np.asarray(correct, dtype=bool)
    sim_correct = float(align[correct].mean()) if correct.any() else math.nan
    sim_incorrect = float(align[~correct].mean()) if (~correct).any() else math.nan
    if correct.all() or not correct.any() or align.std() == 0:
        corr = math.nan
    else:
        corr = float(np.corrcoef(align, correct.astype(np.float64))[0, 1])
    return {"align_sim_correct": sim_correct, "align_sim_incorrect": sim_incorrect,
            "align_sim_gap": sim_correct - sim_incorrect, "align_sim_corr": corr}


def classification_metrics(logits, labels):
    """logits (N, K), labels (N,) -> {"accuracy", "f1_macro"} of the argmax."""
    from metrics.classification import accuracy, f1_at_threshold
    K = logits.shape[1]
    predicted = logits.argmax(1)                                                     # (N,)
    return {"accuracy": float(accuracy(predicted, labels)),
            "f1_macro": float(f1_at_threshold(F.one_hot(predicted, K).float(), F.one_hot(labels, K).float(),
                                              0.5)["macro"])}


def video_clip_metrics(pred, prefix=""):
    """pred from `predict` -> flat dict of floats (names in the module docstring)."""
    from metrics.retrieval import matched_similarity, retrieval_metrics_from_embeddings
    logits, labels = pred["logits"], pred["labels"]
    predicted = logits.argmax(1)                                                     # (N,)
    metrics = classification_metrics(logits, labels)
    retrieval = retrieval_metrics_from_embeddings(pred["video_embed"], pred["attn_embed"], ks=(1, 5))
    for k in (1, 5):
        metrics[f"retrieval_r{k}_v2a"] = float(retrieval[f"i2t/R@{k}"])
        metrics[f"retrieval_r{k}_a2v"] = float(retrieval[f"t2i/R@{k}"])
    alignment = matched_similarity(pred["video_embed"], pred["attn_embed"])         # (N,) cosine
    metrics.update(alignment_vs_correctness(alignment, (predicted == labels).numpy()))
    for key in ("attn_on_evidence", "saliency_on_evidence", "evidence_area"):
        if key in pred:
            metrics[key] = float(pred[key].mean())
    return {prefix + k: v for k, v in metrics.items()}


def bootstrap_classification(pred, num_samples, prefix=""):
    """Bootstrap over clips (metrics.detection.bootstrap) of accuracy and macro F1 only."""
    from metrics.detection import bootstrap

    def metric_fn(indices):
        idx = torch.as_tensor(indices, dtype=torch.long)
        return classification_metrics(pred["logits"][idx], pred["labels"][idx])
    return {prefix + k: float(v) for k, v in bootstrap(metric_fn, len(pred["labels"]), num_samples).items()}


# ----------------------------------------------------------------------------------------------------------
# PNG strips: frames, attention map, learned gate (or token saliency), one column per frame

def _overlay(grey, heat, alpha=0.55):
    """grey (h, w) in [0, 1], heat (h, w) in [0, 1] -> (h, w, 3) uint8"""
    base = np.repeat((grey * 255)[..., None], 3, -1)
    return (base * (1 - alpha) + colorize(heat, 0.0, 1.0).astype(np.float32) * alpha).astype(np.uint8)


def _upsample(x, size):
    """x (T', h, w) -> (T, S, S) numpy, nearest in time, bilinear in space."""
    T, S = size
    x = F.interpolate(x[None, None].float(), size=(T, S, S), mode="trilinear", align_corners=False)
    return x[0, 0].numpy()


@torch.no_grad()
def save_strips(model, dataset, n, out_dir, device, ctx, class_names, zoom=4):
    """Write `n` PNGs: rows = frames, attention-map overlay, learned-gate overlay; colour bar; title."""
    model.eval()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(min(n, len(dataset))):
        s = dataset[i]
        if s is None:          # left out under data.on_error=skip
            continue
        with ctx:
            result = model(s["video"][None].to(device), s["attn_map"][None].to(device))
        probs = result["logits"].float().softmax(-1)[0].cpu()
        _, T, S, _ = s["video"].shape
        rows = [("frame", None), ("attention map", s["attn_map"].sum(0).numpy())]
        gate = result.get("video_gate")
        if gate is not None and gate.dim() == 5:                                    # (1, F or 1, T', H', W')
            rows.append(("learned gate (channel mean)", _upsample(gate[0].float().mean(0).cpu(), (T, S))))
        elif "video_tokens" in result:                                              # channel gate: saliency
            grid = model.video_encoder.backbone.tokens(s["video"][None].to(device)).shape[2:]
            sal = token_saliency(result["video_tokens"].float())[0].view(*grid).cpu()
            rows.append(("token saliency (channel gate)", _upsample(sal, (T, S))))
        tile, pad, bar_w, title_h, label_w = S * zoom, 4, 18, 30, 150
        width = label_w + T * (tile + pad) + bar_w + 70
        height = title_h + len(rows) * (tile + pad)
        canvas = Image.new("RGB", (width, height), "white")
        draw = ImageDraw.Draw(canvas)
        pred = int(probs.argmax())
        draw.text((4, 4), f"{s['id']}  true: {class_names[int(s['label'])]}  predicted: {class_names[pred]} "
                          f"(p={probs[pred]:.2f})", fill="black")
        draw.text((4, 16), "columns: frames 0..T-1; heat overlays scaled to [min, max] of each row (colour bar)",
                  fill="black")
        for r, (name, heat) in enumerate(rows):
            y = title_h + r * (tile + pad)
            draw.text((4, y + tile // 2 - 6), name, fill="black")
            lo, hi = (float(heat.min()), float(heat.max())) if heat is not None else (0.0, 1.0)
            for t in range(T):
                grey = s["video"][0, t].numpy()
                img = (np.repeat((grey * 255)[..., None], 3, -1).astype(np.uint8) if heat is None
                       else _overlay(grey, (heat[t] - lo) / max(hi - lo, 1e-8)))
                canvas.paste(Image.fromarray(img).resize((tile, tile), Image.NEAREST), (label_w + t * (tile + pad), y))
            if heat is not None:                                                    # colour bar with its range
                bar = colorize(np.linspace(1, 0, tile)[:, None].repeat(bar_w, 1), 0.0, 1.0)
                x = label_w + T * (tile + pad)
                canvas.paste(Image.fromarray(bar), (x, y))
                draw.text((x + bar_w + 3, y), f"{hi:.2f}", fill="black")
                draw.text((x + bar_w + 3, y + tile - 12), f"{lo:.2f}", fill="black")
        path = out_dir / f"strip_{i:03d}_{s['id']}.png"
        canvas.save(path)
        paths.append(path)
    return paths


def evaluate(model, dataset, cfg, device, ctx, prefix, visualize=0, out_dir=None, bootstrap=0):
    loader = epoch_loader(dataset, cfg.train.batch_size, cfg.train.seed, 0, shuffle=False, drop_last=False,
                          num_workers=cfg.data.num_workers)
    pred = predict(model, loader, device, ctx)
    metrics = video_clip_metrics(pred, prefix)
    if bootstrap:
        metrics.update(bootstrap_classification(pred, bootstrap, prefix))
    if visualize and out_dir is not None:
        save_strips(model, dataset, visualize, out_dir, device, ctx, list(dataset.class_names))
    return metrics
