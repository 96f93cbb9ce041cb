"""Evaluation of Patch-IB-CXR: `evaluate(model, dataset, cfg, device, ctx, prefix, visualize, out_dir)` and
`predict_user_images(...)`, called by train_patch_ib.evaluate_checkpoint (evaluate.py and the run's final test).

Keys (flat floats, prefix "<split>/"):
- t2i/R@1,5,10 and i2t/R@1,5,10 (+ mean/median rank) of the GLOBAL embeddings (metrics.retrieval, in blocks
  of 256 queries: the N x N similarity matrix is never held), with
  t2i/chance_R@1 and retrieval/groups; for the variants with a mask (C-E) also masked/t2i/R@K and
  masked/i2t/R@K: the same protocol with the MASKED image embedding (what the bottleneck lets through).
- zeroshot/auroc/<label> for the 14 CheXpert labels, zeroshot/auroc/mean (over labels with both classes in
  the split) and zeroshot/labels_scored; zeroshot/prompt_cosine/mean = mean cosine between the prompt
  embeddings of two different labels (near 1: the text tower barely tells the 14 prompts apart).
- C-E: mask/sparsity = mean z over patches and images (1 = keep everything; the L_sparse value);
  mask/fraction_above_0.5; on phantoms mask/energy_in_boxes = share of the mask z (nearest-upsampled to
  the image) inside the finding boxes (metrics.localization.energy_in_boxes, images with a box),
  mask/energy_in_boxes_weights = the same for the patch weights the masked embedding really uses (D: soft
  top-K m * z, E: the hard k-hot), and mask/energy_in_boxes_uniform = a constant map's value (the mean box
  area share): a mask that does not localize scores this; mask/box_patch_auroc = mean per-image AUROC of z
  separating the patches whose centre is in a finding box from the others (0.5 = chance; scale-free, so it
  sees a ranking even in a nearly constant mask).

Duplicate rule (printed with the numbers): one image and one report per sample; reports with the SAME text
(whitespace- and case-normalized) form one group, and a retrieved candidate counts as correct when it is in
the query's group (research §5 convention 1 + deduplicated texts). Ties count against the query.
Zero-shot (seed 004 "Classification Performance"): one prompt per label as the seed writes it,
"A chest x-ray showing <label>" with the label name lowercased (PROMPT; "No Finding" gives "A chest x-ray
showing no finding"); the score of an image for a label is the cosine of the two embeddings, and AUROC is
computed per label over the split's images. Labels are positive-only (the seed's rule): an image counts as
positive for a label iff its CheXpert value is 1; uncertain (-1), negative (0) and blank count as negative.
User images get the same cosines and, per label, sigmoid(logit_scale x cosine - mean over the 14 labels)
as a relative score (not a calibrated probability).
PNGs (--visualize N, first N samples): mask_<i>.png (z over the image, truth boxes drawn green) and
word_attention_<i>.png (the local head's attention of up to 10 report words over the patches, one scale).
User images (--images): per image the zero-shot scores of the 14 labels, mean z, and the 3 closest
reports of the configured split (predictions.json), mask and word-attention PNGs (words of the closest
report); returned metrics: images/count, images/mask_sparsity. --bootstrap is not used (printed).
Shape letters: N samples, E embed, P patches, C labels, Q shown words.
"""
import contextlib
import json
from pathlib import Path

import numpy as np
import torch

from data.labels import CHEXPERT_LABELS
from data.loader import epoch_loader

PROMPT = "A chest x-ray showing {}"      # seed 004: "A chest x-ray showing [PATHOLOGY]"
LABEL_RULE = "positive iff the CheXpert value is 1; uncertain (-1), negative and blank count as negative"
DUPLICATE_RULE = ("identical report texts (case/whitespace normalized) form one group; a hit = any candidate "
                  "of the query's group; ties count against the query")
SKIP_WORDS = {"findings", "impression", "the", "a", "an", "is", "are", "and", "of", "in", "at", "on", "to", "with",
              "there", "seen", "as"}       # not shown in the word-attention PNG


def prompts(labels=CHEXPERT_LABELS):
    return [PROMPT.format(n.lower()) for n in labels]


def report_groups(reports):
    ids = {}
    return np.array([ids.setdefault(" ".join(r.lower().split()), len(ids)) for r in reports])


def run_model(model, images, reports, device, use_local=True, use_ib=True):
    ids, attention_mask, word_mask = getattr(model, "module", model).tokenize(reports)   # DDP: its .module
    return model(images.to(device), ids.to(device), attention_mask.to(device), word_mask.to(device),
                 use_local=use_local, use_ib=use_ib)


@torch.no_grad()
def embed_dataset(model, dataset, batch_size, device, ctx=contextlib.nullcontext(), num_workers=0):
    """-> dict: image, text, masked (N, E) (masked only with a mask), z, weights (N, P), reports, labels (N, C),
    boxes (list of (M, 4), phantoms only)"""
    model.eval()
    out = {"image": [], "text": [], "masked": [], "z": [], "weights": [], "reports": [], "labels": [], "boxes": []}
    for batch in epoch_loader(dataset, batch_size, 0, 0, shuffle=False, drop_last=False, num_workers=num_workers):
        with ctx:
            result = run_model(model, batch["image"], batch["report"], device, use_local=False, use_ib=True)
        out["image"].append(result["image_embed"].float().cpu())
        out["text"].append(result["text_embed"].float().cpu())
        if "z" in result:
            out["masked"].append(result["masked_embed"].float().cpu())
            out["z"].append(result["z"].float().cpu())
            out["weights"].append(result["patch_weights"].float().cpu())
        out["reports"] += list(batch["report"])
        out["labels"].append(torch.as_tensor(batch["labels"]))
        if "boxes" in batch:
            out["boxes"] += [np.asarray(b, dtype=np.float32).reshape(-1, 4) for b in batch["boxes"]]
    return {k: torch.cat(v) if v and isinstance(v[0], torch.Tensor) else (v or None) for k, v in out.items()}


@torch.no_grad()
def prompt_embeddings(model, device):
    """-> (C, E) unit embeddings of the seed's prompts, one per label"""
    ids, attention_mask, _ = model.tokenize(prompts())
    _, prompt_embed = model.encode_text(ids.to(device), attention_mask.to(device))      # (C, E)
    return prompt_embed.float().cpu()                                                  # (C, E)


@torch.no_grad()
def zero_shot_scores(model, image_embed, device):
    """image_embed (N, E) -> cosine with each label's prompt (N, C): the zero-shot score"""
    return image_embed.float() @ prompt_embeddings(model, device).T                    # (N, C)


def mask_maps(model, z, size):
    """z (N, P) -> (N, H, W) nearest-upsampled patch masks"""
    grid = z.float().view(len(z), 1, model.grid, model.grid)                           # (N, 1, h, w)
    return torch.nn.functional.interpolate(grid, size=size, mode="nearest")[:, 0]     # (N, H, W)


def box_energy(model, z, boxes, size):
    """z (N, P), boxes list of (M, 4) -> energy of the upsampled z inside the boxes (images with a box)."""
    from metrics.localization import energy_in_boxes
    keep = [i for i, b in enumerate(boxes) if len(b)]
    if not keep:
        return float("nan")
    return float(energy_in_boxes(mask_maps(model, z[keep], size).numpy(), [boxes[i] for i in keep]))


def box_patch_auroc(model, z, boxes, size):
    """Mean over images of the AUROC of z (P,) separating patches whose centre lies in a finding box from the
    others (images with patches on both sides); 0.5 = no localization, threshold- and scale-free."""
    from metrics.classification import auroc
    from metrics.localization import box_masks
    height, width = size
    rows = ((np.arange(model.grid) + 0.5) * height / model.grid).astype(int)          # patch-centre pixels
    cols = ((np.arange(model.grid) + 0.5) * width / model.grid).astype(int)
    values = []
    for scores, image_boxes in zip(z.numpy(), boxes):
        if not len(image_boxes):
            continue
        inside = box_masks([image_boxes], height, width)[0][np.ix_(rows, cols)].reshape(-1)   # (P,)
        if 0 < inside.sum() < len(inside):
            values.append(float(auroc(scores, inside)[0]))
    return float(np.mean(values)) if values else float("nan")


def evaluate(model, dataset, cfg, device, ctx, prefix, visualize=0, out_dir=None, bootstrap=0):
    """-> flat dict of floats (keys in the module docstring); bootstrap: not used here (printed)."""
    if bootstrap:
        print("patch_ib: --bootstrap is not used (no confidence intervals for retrieval / zero-shot here)")
    from metrics.classification import auroc
    from metrics.retrieval import retrieval_metrics_from_embeddings
    e = embed_dataset(model, dataset, cfg.train.batch_size, device, ctx, num_workers=cfg.data.num_workers)
    groups = report_groups(e["reports"])
    chance = float(np.mean([(groups == g).mean() for g in groups]))
    retrieval = retrieval_metrics_from_embeddings(e["image"], e["text"], groups, groups)   # (N, N) never built
    metrics = {prefix + k: v for k, v in retrieval.items()}
    metrics.update({prefix + "t2i/chance_R@1": chance, prefix + "retrieval/groups": float(len(set(groups)))})
    print(f"retrieval duplicate rule: {DUPLICATE_RULE} ({len(set(groups))} groups / {len(groups)} reports, "
          f"chance R@1 {chance:.4f})")
    if e["masked"] is not None:
        masked = retrieval_metrics_from_embeddings(e["masked"], e["text"], groups, groups)
        metrics.update({f"{prefix}masked/{k}": v for k, v in masked.items() if "/R@" in k})
    per_label = auroc(zero_shot_scores(model, e["image"], device).numpy(), e["labels"].numpy())
    for name, value in zip(CHEXPERT_LABELS, per_label):
        metrics[f"{prefix}zeroshot/auroc/{name}"] = float(value)
    metrics[prefix + "zeroshot/auroc/mean"] = float(np.nanmean(per_label)) if np.isfinite(per_label).any() \
        else float("nan")
    metrics[prefix + "zeroshot/labels_scored"] = float(np.isfinite(per_label).sum())
    print(f"zero-shot: prompts '{PROMPT.format('<label>')}', score = cosine; labels {LABEL_RULE}")
    embedded = prompt_embeddings(model, device)                                        # (C, E)
    cosine = embedded @ embedded.T                                                     # (C, C)
    off_diagonal = ~torch.eye(len(cosine), dtype=torch.bool)
    metrics[prefix + "zeroshot/prompt_cosine/mean"] = float(cosine[off_diagonal].mean())
    if e["z"] is not None:
        metrics[prefix + "mask/sparsity"] = float(e["z"].mean())
        metrics[prefix + "mask/fraction_above_0.5"] = float((e["z"] > 0.5).float().mean())
        if e["boxes"] is not None:
            size = tuple(next(s for s in map(dataset.__getitem__, range(len(dataset))) if s is not None)
                         ["image"].shape[-2:])   # the first sample that loads (data.on_error=skip leaves some out)
            metrics[prefix + "mask/energy_in_boxes"] = box_energy(model, e["z"], e["boxes"], size)
            metrics[prefix + "mask/energy_in_boxes_weights"] = box_energy(model, e["weights"], e["boxes"], size)
            metrics[prefix + "mask/energy_in_boxes_uniform"] = box_energy(model, torch.ones_like(e["z"]),
                                                                          e["boxes"], size)
            metrics[prefix + "mask/box_patch_auroc"] = box_patch_auroc(model, e["z"], e["boxes"], size)
    if visualize and out_dir is not None:
        for i in range(min(visualize, len(dataset))):
            sample = dataset[i]
            if sample is None:     # left out under data.on_error=skip
                continue
            save_figures(model, sample["image"], sample["report"], sample.get("boxes"), Path(out_dir), str(i), device)
    return metrics


# ----------------------------------------------------------------------------------------------------------
# figures

def draw_outlines(image, boxes, colour=(0.1, 1.0, 0.1)):
    """image (H, W, 3) float in [0, 1], boxes (M, 4) xyxy pixels -> copy with 1-px box outlines"""
    image = image.copy()
    height, width = image.shape[:2]
    for x0, y0, x1, y1 in np.asarray(boxes, dtype=np.float64).reshape(-1, 4):
        c0, r0 = int(np.clip(np.floor(x0), 0, width - 1)), int(np.clip(np.floor(y0), 0, height - 1))
        c1, r1 = int(np.clip(np.ceil(x1) - 1, 0, width - 1)), int(np.clip(np.ceil(y1) - 1, 0, height - 1))
        image[r0, c0:c1 + 1] = image[r1, c0:c1 + 1] = colour
        image[r0:r1 + 1, c0] = image[r0:r1 + 1, c1] = colour
    return image


def shown_words(model, ids, word_mask, limit=10):
    """-> up to `limit` report words as (piece positions, name): WordPiece "##" pieces are joined to their
    word (GLoRIA's agg_tokens), non-alphabetic words, headers and stop words left out"""
    tokenizer = model.text_tower.tokenizer
    tokenizer = getattr(tokenizer, "tokenizer", tokenizer)                  # open_clip HFTokenizer wraps HF's
    positions = word_mask.nonzero()[:, 0].tolist()
    words = []
    for position, piece in zip(positions, tokenizer.convert_ids_to_tokens(ids[positions].tolist())):
        if piece.startswith("##") and words:
            words[-1] = (words[-1][0] + [position], words[-1][1] + piece[2:])
        else:
            words.append(([position], piece))
    words = [(p, n) for p, n in words if n.isalpha() and n.lower() not in SKIP_WORDS]
    return words[:limit]


@torch.no_grad()
def save_figures(model, image, report, boxes, out_dir, name, device):
    """image (3, H, W) in [0, 1]; writes mask_<name>.png (C-E) and word_attention_<name>.png (B-E)"""
    from metrics.visualize import attention_grid, heatmap_overlay
    model.eval()
    out_dir.mkdir(parents=True, exist_ok=True)
    ids, attention_mask, word_mask = model.tokenize([report])
    out = model(image[None].to(device), ids.to(device), attention_mask.to(device), word_mask.to(device))
    picture = image.permute(1, 2, 0).float().cpu().numpy()                             # (H, W, 3)
    if boxes is not None and len(boxes):
        picture = draw_outlines(picture, boxes)
    if "z" in out:
        z = out["z"].float().cpu()
        heatmap_overlay(picture, mask_maps(model, z, picture.shape[:2])[0].numpy(), out_dir / f"mask_{name}.png",
                        title=f"patch mask z (mean {float(z.mean()):.2f}); green: finding boxes", colorbar=True)
    if "attention" in out:
        words = shown_words(model, ids[0], word_mask[0])
        if words:
            attention = out["attention"][0].float().cpu()                                # (L, P)
            maps = torch.stack([attention[p].mean(0) for p, _ in words]).view(len(words), model.grid, model.grid)
            attention_grid(picture, maps.numpy(), [n for _, n in words], out_dir / f"word_attention_{name}.png",
                           title="word-to-patch attention (local head; a word's pieces averaged), shared scale")


# ----------------------------------------------------------------------------------------------------------
# user images

@torch.no_grad()
def predict_user_images(model, cfg, images, reference, out_dir, device, ctx=contextlib.nullcontext()):
    """images: a file or folder of PNG/JPEG; reference: the split whose reports are retrieved."""
    from data.io import read_user_images
    from data.transforms import build_transform
    pairs, skipped = read_user_images(images)
    transform = build_transform(False, cfg.data.image_size, mean=(0, 0, 0), std=(1, 1, 1))
    e = embed_dataset(model, reference, cfg.train.batch_size, device, ctx, num_workers=cfg.data.num_workers)
    results, masks, out_dir = {}, [], Path(out_dir)
    model.eval()
    for file, pixels in pairs:
        image, _, _ = transform(pixels, None, None)                                    # (3, H, W)
        v, image_embed = model.encode_image(image[None].to(device))                    # (1, P, Dv), (1, E)
        cosine = zero_shot_scores(model, image_embed.float().cpu(), device)[0]          # (C,)
        logits = model.logit_scale.exp().float().cpu() * cosine
        relative = torch.sigmoid(logits - logits.mean())                              # (C,) not calibrated
        closest = (image_embed.float().cpu() @ e["text"].T)[0].topk(min(3, len(e["text"])))
        entry = {"zeroshot_cosine": dict(zip(CHEXPERT_LABELS, cosine.tolist())),
                 "zeroshot_relative": dict(zip(CHEXPERT_LABELS, relative.tolist())),
                 "closest_reports": [{"report": e["reports"][i], "cosine": float(s)}
                                     for s, i in zip(closest.values.tolist(), closest.indices.tolist())]}
        if model.switches["patch_ib"]:
            entry["mask_mean"] = float(model.patch_mask(v).mean())
            masks.append(entry["mask_mean"])
        results[file.name] = entry
        save_figures(model, image, entry["closest_reports"][0]["report"], None, out_dir, file.stem, device)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "predictions.json").write_text(json.dumps(results, indent=1))
    print(f"{len(pairs)} images: zero-shot scores, closest reports of the reference split and mask means "
          f"in {out_dir / 'predictions.json'}; PNGs beside it")
    metrics = {"images/count": float(len(pairs)), "images/skipped": float(len(skipped))}
    if masks:
        metrics["images/mask_sparsity"] = float(np.mean(masks))
    return metrics
