"""WSRPN-VL training: WSRPN (Gaussian soft-ROI weakly supervised detection) plus the text branch of seed 000,
all three phases in one run, phase by epoch (models/vl_losses.py LossWeightScheduler).

Commands (run from the repository root):
    # tiny CPU default: phantoms, tiny-hub DenseNet + frozen tiny-hub BERT, all three phases (docs/wsrpn_vl.md)
    python train_wsrpn_vl.py --out runs/wsrpn_vl/tiny
    # the same without the text branch (plain WSRPN, the reference design)
    python train_wsrpn_vl.py --out runs/wsrpn_vl/tiny-off model.use_vl_branch=false
    # continue an interrupted run exactly; or stop after a phase (1, 2, 3)
    python train_wsrpn_vl.py --resume runs/wsrpn_vl/tiny/last.pt --out runs/wsrpn_vl/tiny
    python train_wsrpn_vl.py --phase 1 --out runs/wsrpn_vl/p1
    # paper scale, one GPU: NIH ChestX-ray14 (WSRPN protocol), DenseNet-121 + Bio_ClinicalBERT (edit data.root)
    python train_wsrpn_vl.py --config configs/wsrpn_vl.yaml
    # MIMIC-CXR reports as captions, evaluated on the NIH boxes (edit data.root and data.eval_root)
    python train_wsrpn_vl.py --config configs/wsrpn_vl.yaml data.dataset=mimic data.caption=report
    # evaluation (RoDeO, AP@IoU, loc-acc, bootstrap, Gaussian scale/entropy, vision-text similarity, PNGs)
    python evaluate.py runs/wsrpn_vl/tiny/best.pt --split test --bootstrap 250 --visualize 8
    # the text-branch comparison: text off vs on, three seeds each, mean +- std (docs/wsrpn_vl.md)
    python train_wsrpn_vl.py --compare 3 --jobs 2 --out runs/wsrpn_vl/compare     # --jobs: runs at once

Phases (seed 000 "Three-Phase Training Schedule"; epochs are 0-based):
    1  epoch < loss.warmup_epochs: detection only, L = L_detection (the mean of the five WSRPN terms)
    2  adds 0.5 * L_contrastive + 0.5 * L_consistency (text branch)
    3  epoch >= loss.gaussian_start_epoch: adds entropy_weight * L_gaussian_entropy + scale_weight * L_gaussian_scale
Each batch holds train.batch_size images x train.n_views augmented views (reference: 64 x 2 = 128), views of
one image next to each other. Writes config.yaml, log.jsonl (every step: phase, each weight and loss term, lr,
grad-norm, s/step), last.pt, best.pt (by eval.select_metric on validation: mAP over IoU 0.1-0.7 as the
reference; the tiny config selects by RoDeO total, see docs/wsrpn_vl.md) and metrics.json (test, from best.pt).
"""
# ----------------------------------------------------------------------------------------------------------
# imports
import json
import time
from pathlib import Path
from types import SimpleNamespace

import torch
import torch.nn.functional as F
from tqdm import tqdm

import training
from data.captions import DetectionCaptionDataset
from data.loader import batches_per_epoch, epoch_loader
from data.transforms import build_transform
from metrics.summary import mean_std
from models.vl_encoder import TextEncoder, WsrpnVL
from models.vl_losses import ContrastiveVLLoss, LossWeightScheduler, gaussian_entropy, gaussian_scale, vl_consistency
from models.wsrpn import WSRPN, WsrpnConfig, extract_boxes

SYSTEM = "wsrpn_vl"
WSRPN_FIELDS = set(WsrpnConfig.__dataclass_fields__) - {"num_classes"}


# ----------------------------------------------------------------------------------------------------------
# data

def build_dataset(cfg, split):
    """DetectionCaptionDataset of split train | val | test (val/test: images with >= 1 box only)."""
    d = cfg.data
    evaluation = split != "train"
    if d.dataset == "phantom":
        from data.phantom import phantom_split
        count = {"train": d.train_samples, "val": d.val_samples, "test": d.test_samples}[split]
        return DetectionCaptionDataset(phantom_split(split, count, d.image_size, cache_dir=d.get("phantom_cache_dir")), d.classes, "phantom", d.caption,
                                       boxes_only=evaluation, cache=True, progress=f"phantoms {split}")
    transform = build_transform(False, d.image_size, mean=(0.0,) * 3, std=(1.0,) * 3, resize="stretch")
    if d.dataset == "nih" or (d.dataset == "mimic" and evaluation):
        from data.nih import NihDataset
        root = d.root if d.dataset == "nih" else d.eval_root
        base = NihDataset(root, split=split, transform=transform, split_mode="wsrpn", split_file=d.split_file or None,
                          boxes_only=evaluation, on_error=d.on_error)
        return DetectionCaptionDataset(base, d.classes, "nih", "labels" if d.dataset == "mimic" else d.caption,
                                       boxes_only=evaluation)
    if d.dataset == "mimic":
        from data.mimic_cxr import MimicCxrDataset
        base = MimicCxrDataset(d.root, split="train", transform=transform, on_error=d.on_error)
        return DetectionCaptionDataset(base, d.classes, "chexpert", d.caption,
                                       max_report_sentences=d.max_report_sentences)
    raise training.ConfigError(f"data.dataset must be phantom, nih or mimic, got {d.dataset!r}")


def augment_views(images, n_views):
    """Reference augmentation, per view: brightness and contrast x U(0.8, 1.2) with p = 0.5, Gaussian blur
    (kernel 3, sigma U(0.1, 3)) with p = 0.5; no flip, no affine. images: (B, 3, H, W) -> (B * V, 3, H, W),
    the views of one image adjacent. Uses the global torch RNG (restored on resume)."""
    x = images.repeat_interleave(n_views, dim=0)  # (BV, 3, H, W)
    N = x.shape[0]
    jitter = torch.rand(N, 1, 1, 1) < 0.5  # (BV, 1, 1, 1)
    contrast = torch.where(jitter, torch.empty(N, 1, 1, 1).uniform_(0.8, 1.2), torch.ones(N, 1, 1, 1))
    brightness = torch.where(jitter, torch.empty(N, 1, 1, 1).uniform_(0.8, 1.2), torch.ones(N, 1, 1, 1))
    mean = x.mean(dim=(1, 2, 3), keepdim=True)  # (BV, 1, 1, 1)
    x = (((x - mean) * contrast.to(x) + mean) * brightness.to(x)).clamp(0, 1)
    sigma = torch.empty(N).uniform_(0.1, 3.0)  # (BV,)
    blur = torch.rand(N) < 0.5  # (BV,)
    taps = torch.exp(-torch.tensor([1.0, 0.0, 1.0])[None] / (2 * sigma[:, None] ** 2))  # (BV, 3)
    taps = torch.where(blur[:, None], taps / taps.sum(-1, keepdim=True), torch.tensor([0.0, 1.0, 0.0]))
    kernel = (taps[:, :, None] * taps[:, None, :]).to(x)  # (BV, 3, 3)
    kernel = kernel.repeat_interleave(3, dim=0)[:, None]  # (BV * 3, 1, 3, 3)
    H, W = x.shape[-2:]
    x = F.conv2d(F.pad(x.reshape(1, N * 3, H, W), (1, 1, 1, 1), mode="replicate"), kernel, groups=N * 3)
    return x.reshape(N, 3, H, W)


# ----------------------------------------------------------------------------------------------------------
# model

def build_model(cfg, text_dim):
    wsrpn_config = WsrpnConfig(num_classes=len(cfg.data.classes) + 1,
                               **{k: v for k, v in cfg.model.items() if k in WSRPN_FIELDS})
    return WsrpnVL(WSRPN(wsrpn_config), text_dim=text_dim, shared_dim=cfg.model.vl_shared_dim)


def build_text_encoder(cfg):
    m = cfg.model
    return TextEncoder(m.vl_text_model, max_length=m.text_max_length, freeze=m.vl_freeze_text_encoder,
                       pretrained=m.pretrained)


def trainable_patterns(cfg):
    patterns = ["wsrpn.*"]
    if cfg.model.use_vl_branch:
        patterns.append("shared_projection.*")
    return patterns


def build_scheduler(cfg):
    s = cfg.loss
    return LossWeightScheduler(s.warmup_epochs, s.gaussian_start_epoch, s.contrastive_weight, s.consistency_weight,
                               s.entropy_weight, s.scale_weight, cfg.model.use_vl_branch, s.gaussian_without_text)


def loss_terms(model, out, labels, captions, weights, cfg, text_encoder, contrastive_loss):
    """-> dict of named terms (only those with a nonzero weight are computed) and the vision-text similarity."""
    terms = model.wsrpn.detection_losses(out, labels)
    stats = {}
    if weights["contrastive"] > 0 or weights["consistency"] > 0:
        text_emb = model.shared_projection.text(text_encoder(captions).to(out["vision_emb"].device))  # (N, S)
        caption_ids = {c: i for i, c in enumerate(dict.fromkeys(captions))}
        groups = torch.tensor([caption_ids[c] for c in captions], device=text_emb.device)  # (N,) same caption, same id
        terms["contrastive"] = contrastive_loss(out["vision_emb"], text_emb, groups)
        terms["consistency"] = vl_consistency(out["vision_emb"], text_emb, cfg.loss.consistency_temperature)
        stats["vision_text_similarity"] = (out["vision_emb"] * text_emb).sum(-1).mean().item()
    if weights["gaussian_entropy"] > 0 or weights["gaussian_scale"] > 0:
        objectness = 1 - out["roi_probs"][..., -1]  # (N, K)
        terms["gaussian_entropy"] = gaussian_entropy(out["gaussian_maps"], objectness)
        terms["gaussian_scale"] = gaussian_scale(out["sigma"], objectness)
    return terms, stats


# ----------------------------------------------------------------------------------------------------------
# evaluation (also used by evaluate.py through evaluate_checkpoint)

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


def visualize(dataset, predictions, gt_boxes, gt_labels, names, out_dir, count):
    """PNGs of the first `count` images: boxes against the ground truth, and the Gaussian maps (draw_prediction)."""
    for i in range(min(count, len(predictions))):
        sample = dataset[i]
        draw_prediction(sample["image"], sample["id"], predictions[i], names, out_dir, gt_boxes[i], gt_labels[i])


def load_user_images(path, size):
    """A file or a folder of PNG/JPEG -> (ids, (N, 3, size, size) in [0, 1])."""
    from PIL import Image
    path = Path(path)
    files = sorted(p for p in (path.iterdir() if path.is_dir() else [path])
                   if p.suffix.lower() in (".png", ".jpg", ".jpeg"))
    if not files:
        raise FileNotFoundError(f"--images {path}: no .png/.jpg/.jpeg file found")
    tensors = []
    for f in files:
        grey = Image.open(f).convert("L").resize((size, size), Image.BILINEAR)
        tensors.append(torch.tensor(list(grey.getdata()), dtype=torch.float32).reshape(1, size, size) / 255)
    return [f.stem for f in files], torch.stack(tensors).expand(-1, 3, -1, -1)


def evaluate_checkpoint(checkpoint, args, text_encoder=None):
    """The evaluate.py contract: checkpoint dict + args (split, bootstrap, visualize, images, out_dir, device)
    -> flat dict of floats. With args.images: boxes on user images (predictions.json + PNGs), returns counts."""
    cfg = training.Config.wrap(checkpoint["config"])
    device = torch.device(args.device if args.device not in (None, "auto") else
                          ("cuda" if torch.cuda.is_available() else "cpu"))
    _, ctx, _, _ = training.setup_device(device.type, cfg.train.dtype if device.type == "cuda" else "float32")
    text_encoder = text_encoder or build_text_encoder(cfg).to(device)
    model = build_model(cfg, text_encoder.hidden_size).to(device)
    model.load_state_dict(checkpoint["model"])
    names = list(cfg.data.classes)
    out_dir = Path(args.out_dir)
    if args.images:
        ids, images = load_user_images(args.images, cfg.data.image_size)
        predictions = list(predict(model, images.split(32), cfg.eval.box_threshold, device, ctx))
        records = {}
        for image_id, image, p in zip(ids, images, predictions):
            records[image_id] = [{"box_xyxy_fraction": box.tolist(), "class": names[int(label)], "score": float(s)}
                                 for box, label, s in zip(p["boxes"], p["labels"], p["scores"])]
            draw_prediction(image, image_id, p, names, out_dir)
        (out_dir / "predictions.json").write_text(json.dumps(records, indent=1))
        return {"images": float(len(ids)), "boxes_per_image": sum(map(len, records.values())) / len(ids)}
    dataset = build_dataset(cfg, args.split)
    use_text = text_encoder if cfg.model.use_vl_branch else None
    metrics, predictions, gt_boxes, gt_labels = evaluate_detection(model, dataset, cfg, device, ctx, use_text, True,
                                                                   args.bootstrap, keep_predictions=True)
    if args.visualize:
        visualize(dataset, predictions, gt_boxes, gt_labels, names, out_dir, args.visualize)
    return metrics


# ----------------------------------------------------------------------------------------------------------
# the text-branch comparison: WSRPN (text branch off) vs WSRPN-VL (on), several seeds, mean +- std

COMPARE_KEYS = ["rodeo/total", "rodeo/loc", "rodeo/shape", "rodeo/cls", "ap@0.3", "ap@0.5", "map",
                "gaussian/scale", "gaussian/area", "gaussian/entropy", "vision_text/sim_correct",
                "vision_text/sim_gap", "boxes_per_image"]


COMPARE_ARMS = [("WSRPN (text off)", ["model.use_vl_branch=false"]),
                ("WSRPN + phase-3 Gaussian terms (text off)", ["model.use_vl_branch=false",
                                                               "loss.gaussian_without_text=true"]),
                ("WSRPN-VL (text on)", ["model.use_vl_branch=true"])]


def compare(argv, seeds, out_dir, jobs=1):
    """Runs main() for each arm of COMPARE_ARMS x seeds 0..seeds-1 (same other arguments) and writes
    comparison.json and comparison.md (mean +- sample std over seeds of each test metric) in out_dir.
    A run directory that already holds metrics.json is reused, so an interrupted comparison continues.
    jobs > 1 runs that many at once, each as its own `python train_wsrpn_vl.py` process (output in
    <run>/stdout.log); the runs are the same as sequential ones (each sets its own seed and threads)."""
    out_dir = Path(out_dir)
    plan = [(index, seed, out_dir / f"arm{index}-seed{seed}", overrides)
            for index, (_, overrides) in enumerate(COMPARE_ARMS) for seed in range(seeds)]
    todo = [(run_dir, argv + ["--out", str(run_dir), *overrides, f"seed={seed}"])
            for _, seed, run_dir, overrides in plan if not (run_dir / "metrics.json").exists()]
    if jobs <= 1:
        for _, run_argv in todo:
            main(run_argv)
    else:
        script = str(Path(__file__).resolve())
        training.run_processes([(f"compare: {run_dir.name}", [script, *run_argv], run_dir / "stdout.log")
                                for run_dir, run_argv in todo], jobs)
    table = {}
    for index, (arm, _) in enumerate(COMPARE_ARMS):
        runs = []
        for seed in range(seeds):
            run_dir = out_dir / f"arm{index}-seed{seed}"
            if not (run_dir / "metrics.json").exists():
                raise RuntimeError(f"compare: {run_dir} has no metrics.json (see {run_dir / 'stdout.log'})")
            runs.append(json.loads((run_dir / "metrics.json").read_text()))
        table[arm] = {k: [r[k] for r in runs if k in r] for k in COMPARE_KEYS}
    lines = ["| metric | " + " | ".join(table) + " |", "|---|" + "---|" * len(table)]
    for key in COMPARE_KEYS:
        cells = []
        for arm in table:
            cells.append(mean_std(table[arm][key]))
        lines.append(f"| {key} | " + " | ".join(cells) + " |")
    (out_dir / "comparison.json").write_text(json.dumps(table, indent=1))
    (out_dir / "comparison.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return table


# ----------------------------------------------------------------------------------------------------------
# main

def main(argv=None):
    # --- config
    parser = training.base_argparser(SYSTEM, __doc__)
    parser.add_argument("--phase", default="all", choices=["all", "1", "2", "3"],
                        help="stop after this phase (default: run all three)")
    parser.add_argument("--compare", type=int, default=0, metavar="SEEDS",
                        help="run text branch off and on, SEEDS seeds each, into --out; print mean +- std")
    parser.add_argument("--jobs", type=int, default=1, help="with --compare: runs at once (separate processes)")
    args = parser.parse_args(argv)
    if args.compare:
        if not args.out:
            parser.error("--compare needs --out DIR")
        rest = ["--config", args.config, *args.overrides]
        return compare(rest, args.compare, args.out, args.jobs)
    cfg = training.load_config(args.config, args.overrides)
    if cfg.get("system") != SYSTEM:
        raise training.ConfigError(f"{args.config}: expected system: {SYSTEM}, got {cfg.get('system')!r}")
    out_dir = training.make_out_dir(args.out, SYSTEM, f"phase{args.phase}")
    training.save_config(cfg, out_dir)
    t = cfg.train

    # --- device, seed, AMP
    if t.cpu_threads > 0:
        torch.set_num_threads(t.cpu_threads)
    training.seed_everything(cfg.seed)
    device, ctx, scaler, dtype = training.setup_device(t.device, t.dtype)
    print(f"device {device}, dtype {dtype}")

    # --- data
    train_set, val_set = build_dataset(cfg, "train"), build_dataset(cfg, "val")
    print(f"train {len(train_set)} images, val {len(val_set)} images with boxes; classes {cfg.data.classes}")
    steps_per_epoch = batches_per_epoch(train_set, t.batch_size)
    if steps_per_epoch == 0:
        raise training.ConfigError(f"train.batch_size {t.batch_size} is larger than the {len(train_set)} train images")
    total_steps = steps_per_epoch * t.epochs

    # --- model (the frozen text encoder lives outside it, so checkpoints do not copy it)
    text_encoder = build_text_encoder(cfg).to(device)
    model = build_model(cfg, text_encoder.hidden_size).to(device)
    scheduler = build_scheduler(cfg)
    contrastive_loss = ContrastiveVLLoss(cfg.loss.contrastive_temperature)

    # --- freezing, optimizer (AdamW; reference: constant lr 1.5e-4, weight decay 1e-6)
    trainable = training.set_trainable(model, trainable_patterns(cfg))
    roi_branch = ["wsrpn.roi_tokens", "wsrpn.roi_attention.*", "wsrpn.gaussian_predictor.*", "wsrpn.soft_roi_pool.*"]
    optimizer = training.build_optimizer(model, t.lr, t.weight_decay, no_weight_decay=model.no_weight_decay(),
                                         lr_scales={pattern: t.roi_lr_scale for pattern in roi_branch})

    # --- resume
    step, start_epoch, start_batch, best_metric = 0, 0, 0, float("-inf")
    if args.resume:
        ckpt = training.load_checkpoint(args.resume, model, optimizer, scaler)
        step, start_epoch, start_batch = ckpt["step"], ckpt["epoch"], ckpt.get("batch_in_epoch", 0)
        best_metric = ckpt["best_metric"]
        print(f"resumed {args.resume}: step {step}, epoch {start_epoch}, batch {start_batch}")
    logger = training.RunLogger(out_dir)

    def save(path, epoch, batch_in_epoch):
        training.save_checkpoint(path, model, optimizer, scaler, step, epoch, scheduler.phase(epoch), best_metric, cfg,
                                 tokenizer=text_encoder.tokenizer, batch_in_epoch=batch_in_epoch)

    def validate(epoch):
        nonlocal best_metric
        metrics = evaluate_detection(model, val_set, cfg, device, ctx, text_encoder,
                                     rodeo_too=cfg.eval.select_metric != "map")
        logger.log(step=step, epoch=epoch, phase=scheduler.phase(epoch), **{f"val/{k}": v for k, v in metrics.items()})
        if metrics[cfg.eval.select_metric] > best_metric:
            best_metric = metrics[cfg.eval.select_metric]
            save(out_dir / "best.pt", epoch + 1, 0)
        model.train()

    # --- loop
    stop_after = None if args.phase == "all" else int(args.phase)
    finished = False
    for epoch in range(start_epoch, t.epochs):
        weights = scheduler.weights(epoch)
        if stop_after is not None and weights["phase"] > stop_after:
            break
        model.train()
        loader = epoch_loader(train_set, t.batch_size, cfg.seed, epoch, start_batch=start_batch,
                              num_workers=cfg.data.num_workers)
        progress = tqdm(loader, desc=f"epoch {epoch} phase {weights['phase']}", initial=start_batch,
                        total=steps_per_epoch, leave=False)
        ready = time.perf_counter()
        for batch_index, batch in enumerate(progress, start=start_batch):
            started = time.perf_counter()  # data_s: waiting for this batch; s_per_step: the step itself
            lr = training.get_lr(step, t.lr, t.warmup_steps, total_steps, t.min_lr)
            training.set_lr(optimizer, lr)
            images = augment_views(batch["image"], t.n_views).to(device)  # (B * V, 3, H, W)
            labels = batch["labels"].repeat_interleave(t.n_views, dim=0).to(device)  # (B * V, C)
            captions = [c for c in batch["caption"] for _ in range(t.n_views)]
            with ctx:
                out = model(images)
                terms, stats = loss_terms(model, out, labels, captions, weights, cfg, text_encoder, contrastive_loss)
            loss = sum(weights[k] * terms[k] for k in ("detection", "contrastive", "consistency", "gaussian_entropy",
                                                       "gaussian_scale") if k in terms)
            training.check_finite({"loss": loss, **terms}, step)
            scaler.scale(loss).backward()
            scaler.unscale_(optimizer)
            grad_norm = torch.nn.utils.clip_grad_norm_(trainable, t.grad_clip)
            if not scaler.is_enabled():  # fp16 skips inf steps itself; otherwise a NaN gradient stops the run
                training.check_finite({"grad_norm": grad_norm, **terms}, step)
            scaler.step(optimizer)
            scaler.update()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            logger.log(echo=step % t.log_interval == 0, step=step, epoch=epoch, phase=weights["phase"],
                       **{f"weight/{k}": v for k, v in weights.items() if k != "phase"},
                       loss=loss.item(), **{k: v.item() for k, v in terms.items()}, **stats,
                       sigma_mean=out["sigma"].mean().item(), lr=lr, grad_norm=grad_norm.item(),
                       s_per_step=time.perf_counter() - started, data_s=started - ready)
            if t.max_steps and step >= t.max_steps:
                finished = True
                save(out_dir / "last.pt", epoch, batch_index + 1)
                break
            ready = time.perf_counter()
        start_batch = 0
        if finished:
            break
        save(out_dir / "last.pt", epoch + 1, 0)
        if (epoch + 1) % t.val_every_epochs == 0 or epoch + 1 == t.epochs:
            validate(epoch)

    # --- final test evaluation of best.pt (last.pt if no validation ran) into metrics.json
    best = out_dir / "best.pt" if (out_dir / "best.pt").exists() else out_dir / "last.pt"
    if cfg.eval.final_test and best.exists():
        eval_args = SimpleNamespace(checkpoint=str(best), split="test", bootstrap=cfg.eval.bootstrap,
                                    visualize=cfg.eval.visualize, images=None, out_dir=str(out_dir / "test"),
                                    device=str(device))
        Path(eval_args.out_dir).mkdir(parents=True, exist_ok=True)
        metrics = evaluate_checkpoint(torch.load(best, map_location="cpu", weights_only=False), eval_args,
                                      text_encoder=text_encoder)
        training.atomic_write_bytes(out_dir / "metrics.json", json.dumps(metrics, indent=1).encode())
        print("test:", " | ".join(f"{k} {v:.4f}" for k, v in metrics.items() if "/" not in k or k.count("/") == 1))
    return out_dir


if __name__ == "__main__":
    main()
