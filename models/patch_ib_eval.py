"""Evaluation of Patch-IB-CXR (evaluate.py dispatches here through train_patch_ib.evaluate_checkpoint).

Keys (flat floats, prefix "<split>/"): t2i/R@1,5,10 and i2t/R@1,5,10 (+ mean/median rank) from
metrics.retrieval; zeroshot/auroc/<label> and zeroshot/auroc/mean; mask/sparsity (mean z); on phantoms
mask/energy_in_boxes (share of the upsampled mask inside the finding boxes, metrics.localization).

Duplicate rule (printed with the numbers): one image and one report per sample; reports with the SAME text
(whitespace- and case-normalized) form one group, and a retrieved candidate counts as correct when it is in
the query's group (research §5 convention 1 + deduplicated texts). Chance R@1 is printed beside.
Zero-shot (CheXzero / CXR-CLIP binary protocol): per label a (positive, negative) prompt pair, softmax of
the scaled cosines over the pair, AUROC of the positive probability; the mean is over labels with both
classes present. "No Finding" uses a hand-written pair (NO_FINDING_PROMPTS).
PNGs: the patch mask z over the image, and the word-to-patch attention of the first report's words.
Shape letters: N samples, E embed, P patches, C labels.
"""
import contextlib
from pathlib import Path

import numpy as np
import torch

from data.labels import CHEXPERT_LABELS

NO_FINDING_PROMPTS = ("no acute cardiopulmonary abnormality", "acute cardiopulmonary abnormality")
DUPLICATE_RULE = "identical report texts (normalized) form one group; a hit = any candidate of the query's group"


def prompt_pairs(labels=CHEXPERT_LABELS):
    return [NO_FINDING_PROMPTS if n == "No Finding" else (n.lower(), f"no {n.lower()}") for n in labels]


def report_groups(reports):
    ids = {}
    return np.array([ids.setdefault(" ".join(r.lower().split()), len(ids)) for r in reports])


@torch.no_grad()
def zero_shot_scores(model, image_embed, device):
    """image_embed (N, E) -> positive probabilities (N, C)"""
    texts = [t for pair in prompt_pairs() for t in pair]
    ids, attention_mask, _ = model.tokenize(texts)
    _, prompt_embed = model.encode_text(ids.to(device), attention_mask.to(device))      # (2C, E)
    logits = model.logit_scale.exp().cpu() * image_embed @ prompt_embed.float().cpu().T  # (N, 2C)
    logits = logits.view(len(image_embed), -1, 2)                                      # (N, C, 2)
    return torch.softmax(logits, dim=-1)[..., 0]                                       # (N, C)


def evaluate_model(model, dataset, cfg, device, prefix, visualize=0, out_dir=None):
    from metrics.classification import auroc
    from metrics.retrieval import retrieval_metrics
    from train_patch_ib import embed_dataset
    image, text, z, reports, labels = embed_dataset(model, dataset, cfg, device, contextlib.nullcontext())
    groups = report_groups(reports)
    metrics = {prefix + k: float(v) for k, v in
               retrieval_metrics((image @ text.T).numpy(), groups, groups, ks=(1, 5, 10)).items()}
    chance = float(np.mean([(groups == g).mean() for g in groups]))
    metrics[prefix + "t2i/chance_R@1"] = chance
    print(f"retrieval duplicate rule: {DUPLICATE_RULE} ({len(set(groups))} groups / {len(groups)} reports, "
          f"chance R@1 {chance:.4f})")
    per_label = auroc(zero_shot_scores(model, image, device).numpy(), labels.numpy())
    for name, value in zip(CHEXPERT_LABELS, per_label):
        metrics[f"{prefix}zeroshot/auroc/{name}"] = float(value)
    metrics[prefix + "zeroshot/auroc/mean"] = float(np.nanmean(per_label))
    if z is not None:
        metrics[prefix + "mask/sparsity"] = float(z.mean())
        if "boxes" in dataset[0]:
            metrics[prefix + "mask/energy_in_boxes"] = energy(model, dataset, z)
    if visualize and out_dir is not None:
        save_figures(model, dataset, visualize, Path(out_dir), device)
    return metrics


def mask_maps(model, z, size):
    """z (N, P) -> (N, H, W) nearest-upsampled patch masks"""
    grid = z.view(len(z), 1, model.grid, model.grid)
    return torch.nn.functional.interpolate(grid, size=size, mode="nearest")[:, 0]


def energy(model, dataset, z):
    from metrics.localization import energy_in_boxes
    size = tuple(dataset[0]["image"].shape[-2:])
    keep = [i for i in range(len(dataset)) if len(dataset[i]["boxes"])]
    if not keep:
        return float("nan")
    maps = mask_maps(model, z[keep], size).numpy()
    return float(energy_in_boxes(maps, [np.asarray(dataset[i]["boxes"]) for i in keep]))


@torch.no_grad()
def save_figures(model, dataset, count, out_dir, device):
    from metrics.visualize import attention_grid, heatmap_overlay
    model.eval()
    for i in range(min(count, len(dataset))):
        sample = dataset[i]
        ids, attention_mask, word_mask = model.tokenize([sample["report"]])
        out = model(sample["image"][None].to(device), ids.to(device), attention_mask.to(device), word_mask.to(device))
        image = sample["image"].permute(1, 2, 0).numpy()
        size = image.shape[:2]
        if "z" in out:
            heatmap_overlay(image, mask_maps(model, out["z"].cpu(), size)[0].numpy(), out_dir / f"mask_{i}.png",
                            title=f"patch mask z (mean {float(out['z'].mean()):.2f})", colorbar=True)
        if "attention" in out:
            words = word_mask[0].nonzero()[:, 0][:8]
            names = model.text_tower.tokenizer.convert_ids_to_tokens(ids[0, words].tolist())
            maps = out["attention"][0, words].cpu().view(len(words), model.grid, model.grid).numpy()
            attention_grid(image, maps, names, out_dir / f"word_attention_{i}.png")


def evaluate_checkpoint(checkpoint, args):
    import training
    from train_patch_ib import build_dataset, build_model
    cfg = training.Config.wrap(checkpoint["config"])
    device, _, _, _ = training.setup_device(getattr(args, "device", None) or "auto", "float32")
    model = build_model(cfg)
    model.load_state_dict(checkpoint["model"])
    model.to(device).eval()
    if getattr(args, "images", None):
        raise NotImplementedError("patch_ib: --images (user images) is not implemented yet")
    return evaluate_model(model, build_dataset(cfg, args.split), cfg, device, f"{args.split}/",
                          getattr(args, "visualize", 0), getattr(args, "out_dir", None))
