"""Concept CAM training: seed 002 stage 1 (concept CAMs, optional box guidance), then CSR stages 2 and 3.

Commands (run from the repository root):
    # tiny CPU default: phantoms + tiny-hub MAE ViT, all three stages one after another (5 min 23 s on one
    # idle core; test concept macro-AUROC 0.87, disease 0.90 for seed 0: docs/concept_cam.md)
    python train_concept_cam.py --out runs/concept_cam/tiny
    # one stage at a time; a stage starts from the previous stage's checkpoint
    python train_concept_cam.py --stage 1 --out runs/concept_cam/s1
    python train_concept_cam.py --stage 2 --resume runs/concept_cam/s1/best.pt --out runs/concept_cam/s2
    python train_concept_cam.py --stage 3 --resume runs/concept_cam/s2/best.pt --out runs/concept_cam/s3
    # stage 1 without box guidance (seed 002 §5a), or the linear disease-head baseline
    python train_concept_cam.py --stage 1 loss.beta=0
    python train_concept_cam.py --stage 3 --resume runs/concept_cam/s2/best.pt stage3.task_head=linear
    # an interrupted stage continues exactly: --resume its own last.pt
    python train_concept_cam.py --stage 1 --resume runs/concept_cam/s1/last.pt --out runs/concept_cam/s1
    # paper scale, one GPU: VinDr-CXR + MedMAE ViT-B/16 (edit data.root and model.backbone first)
    python train_concept_cam.py --config configs/concept_cam.yaml --out runs/concept_cam/paper
    torchrun --nproc_per_node 4 train_concept_cam.py --config configs/concept_cam.yaml --out runs/concept_cam/paper4
    # evaluation of any stage's checkpoint (concept/disease AUROC, pointing game, IoU/IoBB, energy, PNGs)
    python evaluate.py runs/concept_cam/s3/best.pt --split test --visualize 8
    # the comparison table: stage 1 with / without box guidance, prototype vs linear disease head, 3 seeds
    python train_concept_cam.py --compare 3 --jobs 3 --out runs/concept_cam/compare

Stages (seed 002 "What gets updated"; research brief §4 CSR):
    1  backbone (lr * stage1.backbone_lr_scale, or frozen) + concept head;
       loss = alpha * classification_loss + beta * localization_loss (seed 002 §5b)
    2  projector + prototypes; backbone and concept head frozen; softtriple_loss on present concepts
    3  task head on prototype similarity scores (or the linear baseline head); everything else frozen;
       disease_loss = BCEWithLogits(pos_weight) over the 6 VinDr diseases
Each stage writes config.yaml, log.jsonl, last.pt, best.pt (by its validation metric) and metrics.json (test).
"""
# ----------------------------------------------------------------------------------------------------------
# imports
import argparse
import json
import os
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

import evals.concept_cam
import training
from evals import tables
from data.labels import NIH_BOX_CLASSES, VINDR_CONCEPTS
from data.loader import SeededDataset, batches_per_epoch, epoch_loader, table_batches
from data.phantom import DETAIL_TO_VINDR, PHANTOM_TO_VINDR, phantom_split
from data.transforms import build_transform
from metrics.summary import mean_std
from models.concept_cam import MEDMAE_MEAN, MEDMAE_STD, ConceptCAM, ConceptCamConfig, feature_map
from models.concept_losses import (bbox_guided_concept_loss, boxes_to_grid_masks, disease_loss,
                                   pos_weight_from_labels, soft_triple_loss)

SYSTEM = "concept_cam"
# NIH box classes -> VinDr concepts, for transfer evaluation of the CAMs (Pneumonia has no concept)
NIH_TO_VINDR = {"Atelectasis": "Atelectasis", "Cardiomegaly": "Cardiomegaly", "Effusion": "Pleural effusion",
                "Infiltration": "Infiltration", "Mass": "Nodule/Mass", "Nodule": "Nodule/Mass",
                "Pneumothorax": "Pneumothorax"}
STAGE_METRIC = {1: "concept/auroc/macro", 2: "prototype_concept/auroc/macro", 3: "disease/auroc/macro"}


# ----------------------------------------------------------------------------------------------------------
# stage freezing (seed 002 "What gets updated"): fnmatch patterns over parameter names; the rest is frozen

STAGE_TRAINABLE = {
    1: ["concept_head.*", "backbone.*"],     # backbone at lr * stage1.backbone_lr_scale (or frozen: freeze_backbone)
    2: ["projector.*", "prototypes"],        # backbone and concept head frozen
    3: {"prototype": ["task_head.*"], "linear": ["linear_task_head.*"]},   # stage3.task_head picks one
}


def trainable_patterns(stage, freeze_backbone=False, task_head="prototype"):
    if stage not in STAGE_TRAINABLE:
        raise ValueError(f"stage must be 1, 2 or 3, got {stage!r}")
    if stage == 3:
        return list(STAGE_TRAINABLE[3]["prototype" if task_head == "prototype" else "linear"])
    return [p for p in STAGE_TRAINABLE[stage] if not (freeze_backbone and p == "backbone.*")]


def frozen_sources(cfg):
    """Prefix -> pretrained source of the weights frozen in every stage: the backbone (model.backbone, a MedMAE
    file or tiny-hub/mae-vit) with stage1.freeze_backbone=true. Otherwise none: stage 1 trains the backbone, and
    stages 2-3 take it from the stage-1 checkpoint, a run's output rather than a named source, so it is stored."""
    return {"backbone.": cfg.model.backbone} if cfg.stage1.freeze_backbone else {}


def every_stage_trainable(cfg):
    """The trainable patterns of all three stages: what is not among them is frozen in every stage."""
    return [p for stage in STAGE_TRAINABLE
            for p in trainable_patterns(stage, cfg.stage1.freeze_backbone, cfg.stage3.task_head)]


# ----------------------------------------------------------------------------------------------------------
# data

def build_dataset(cfg, split, train=False, check_images=False):
    """phantom_split or VinDrDataset for split train | val | test, with the MedMAE-normalizing transform.
    check_images: VinDr images are read now (bad ones stop, or are left out under data.on_error=skip)."""
    d, size = cfg.data, cfg.model.image_size
    transform = build_transform(train and d.augment, size, mean=(MEDMAE_MEAN,) * 3, std=(MEDMAE_STD,) * 3,
                                resize="stretch")
    if d.dataset == "phantom":
        count = {"train": d.num_train, "val": d.num_val, "test": d.num_test}[split]
        return phantom_split(split, count, size, transform=transform, healthy_fraction=d.healthy_fraction,
                             cache=d.cache and d.num_workers == 0, cache_dir=d.get("phantom_cache_dir"))
    if d.dataset == "vindr":
        from data.vindr import VinDrDataset
        return VinDrDataset(d.root, split, transform, aggregation=d.aggregation, image_format=d.image_format,
                            val_fraction=d.val_fraction, split_file=d.split_file or None,
                            on_error=d.get("on_error", "stop"), check_images=check_images)
    raise training.ConfigError(f"data.dataset must be 'phantom' or 'vindr', got {d.dataset!r}")


def build_nih_dataset(cfg, check_images=False):
    from data.nih import NihDataset
    transform = build_transform(False, cfg.model.image_size, mean=(MEDMAE_MEAN,) * 3, std=(MEDMAE_STD,) * 3,
                                resize="stretch")
    return NihDataset(cfg.data.nih_root, split="test", transform=transform, boxes_only=True,
                      on_error=cfg.data.get("on_error", "stop"), check_images=check_images)


def concept_boxes(batch, b, source):
    """Sample b of a batch -> (boxes (N, 4) input px, concept indices (N,)). Phantom findings map to VinDr
    concepts by data.phantom.PHANTOM_TO_VINDR (+ DETAIL_TO_VINDR); VinDr box_labels already are concepts;
    NIH box classes map by NIH_TO_VINDR (others dropped)."""
    boxes, concepts = [], []
    if source == "phantom":
        for finding in batch["findings"][b]:
            names = PHANTOM_TO_VINDR[finding["name"]] + DETAIL_TO_VINDR.get((finding["name"], finding["detail"]), [])
            boxes += [finding["box"]] * len(names)
            concepts += [VINDR_CONCEPTS.index(n) for n in names]
    elif source == "vindr":
        boxes, concepts = batch["boxes"][b].tolist(), batch["box_labels"][b].tolist()
    elif source == "nih":
        for box, label in zip(batch["boxes"][b].tolist(), batch["box_labels"][b].tolist()):
            if NIH_BOX_CLASSES[label] in NIH_TO_VINDR:
                boxes.append(box)
                concepts.append(VINDR_CONCEPTS.index(NIH_TO_VINDR[NIH_BOX_CLASSES[label]]))
    return torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4), torch.tensor(concepts, dtype=torch.long)


def batch_box_masks(batch, source, num_concepts, image_size, grid_size, min_fraction):
    """-> inside_mask (B, K, h, w), has_box (B, K): each concept's boxes on the patch grid."""
    masks = [boxes_to_grid_masks(*concept_boxes(batch, b, source), num_concepts, image_size, grid_size,
                                 min_fraction) for b in range(len(batch["image"]))]
    return torch.stack([m for m, _ in masks]), torch.stack([h for _, h in masks])


def training_labels(dataset, key):
    """(N, K) labels of a dataset without loading images where the records hold them (VinDr)."""
    if hasattr(dataset, "records"):
        return torch.from_numpy(np.stack([r["extra"][key] for r in dataset.records])).float()
    return torch.stack([dataset[i][key] for i in tqdm(range(len(dataset)), desc=f"{key} labels", leave=False, disable=None)])


@torch.no_grad()
def feature_table(backbone, dataset, cfg, device, ctx):
    """Stages 2-3 with a frozen backbone: one pass over the training set -> {"features": (N, D, h, w) float32
    backbone feature maps, "concepts": (N, K), "diseases": (N, 6), "id": N strings}, in dataset order. The
    backbone runs in eval mode, as it does at validation (the tiny ViT has no dropout: the same either way)."""
    table = {"features": [], "concepts": [], "diseases": [], "id": []}
    was_training = backbone.training
    backbone.eval()
    loader = epoch_loader(dataset, cfg.train.batch_size, cfg.train.seed, 0, shuffle=False, drop_last=False,
                          num_workers=cfg.data.num_workers)
    for batch in tqdm(loader, desc="backbone features (frozen, computed once)", leave=False, disable=None):
        with ctx:
            table["features"].append(feature_map(backbone, batch["image"].to(device)).float().cpu())
        for key in ("concepts", "diseases", "id"):
            table[key].append(batch[key])
    backbone.train(was_training)
    return {key: torch.cat(value) if key != "id" else [i for ids in value for i in ids] for key, value in table.items()}


def build_model(cfg, pretrained=True):
    """ConceptCAM of cfg.model; the backbone weights load from model.backbone when `pretrained` and
    model.pretrained (false: random weights, nothing read)."""
    values = dict(cfg.model)
    use_pretrained = values.pop("pretrained", True)
    return ConceptCAM(ConceptCamConfig.from_dict(values), pretrained=pretrained and use_pretrained)


# ----------------------------------------------------------------------------------------------------------
# validation

CAM_COLLAPSED = 0.05   # val/cam_energy below this: every concept's max-over-grid CAM is ~0 (all p ~ 0.50)


@torch.no_grad()
def validate(model, loader, cfg, stage, pos_weight, grid, device, ctx):
    """One pass over the validation split -> {the stage's metric (STAGE_METRIC; stage 1: the seed's Concept AUC),
    val/loss (the stage's training loss on val, which the seed compares with the training loss for overfitting),
    val/cam_energy (mean |concept logit| = |max-over-grid CAM|; ~0 when the CAMs collapsed to zero)}."""
    from collections import defaultdict
    model.eval()
    out, total, count = defaultdict(list), 0.0, 0
    for batch in loader:
        with ctx:
            result, loss, _ = stage_loss(model, batch, cfg, stage, pos_weight, grid, device)
        count += len(batch["concepts"])
        total += float(loss) * len(batch["concepts"])
        out["concept_logits"].append(result["concept_logits"].float().cpu())
        out["concepts"].append(batch["concepts"])
        if "prototype_scores" in result:
            out["prototype_concept_scores"].append(result["prototype_scores"].amax(-1).float().cpu())
        if "disease_logits" in result:
            out["disease_logits"].append(result["disease_logits"].float().cpu())
            out["diseases"].append(batch["diseases"])
    predictions = {k: torch.cat(v) for k, v in out.items()}
    return {f"val/{STAGE_METRIC[stage]}": validation_metric(predictions, stage), "val/loss": total / max(count, 1),
            "val/cam_energy": float(predictions["concept_logits"].abs().mean())}


def validation_metric(predictions, stage):
    from metrics.classification import macro_auroc
    scores, labels = {1: ("concept_logits", "concepts"), 2: ("prototype_concept_scores", "concepts"),
                      3: ("disease_logits", "diseases")}[stage]
    return float(macro_auroc(predictions[scores], predictions[labels]))


# ----------------------------------------------------------------------------------------------------------
# one stage

def build_optimizer(model, cfg, stage, device):
    """AdamW over what the stage trains (call after set_trainable); stage 1's backbone at lr * backbone_lr_scale."""
    stage_cfg = cfg[f"stage{stage}"]
    return training.adamw(model, stage_cfg.lr, cfg.train, device,
                          lr_scales={"backbone.*": stage_cfg.backbone_lr_scale} if stage == 1 else None)


def stage_loss(model, batch, cfg, stage, pos_weight, grid, device):
    """Forward and the stage's loss (call under autocast). batch: images (stage 1, or 2-3 with augmentation) or
    the backbone's cached features (stages 2-3, train.cache_features). Stage 1: alpha * classification + beta *
    localization (seed 002 §5b); stage 2: SoftTriple on the concept vectors of present concepts; stage 3: the
    disease head's loss. -> (out, loss, terms)"""
    task_head = cfg.stage3.task_head
    concepts_gt = batch["concepts"].to(device)                                    # (B, K)
    if "features" not in batch:
        images = batch["image"].to(device)                                        # (B, 3, H, W)
        out = model(images, stage=stage, task_head=task_head)
    else:
        out = model(features=batch["features"].to(device), stage=stage, task_head=task_head)  # (B, D, h, w)
    if stage == 1:
        inside_mask, has_box = batch_box_masks(batch, cfg.data.dataset, len(VINDR_CONCEPTS), images.shape[-2:],
                                               grid, cfg.data.box_min_fraction)
        terms = bbox_guided_concept_loss(out["cams"].float(), concepts_gt, inside_mask.to(device),
                                         has_box.to(device), pos_weight, cfg.loss.localization_margin)
        loss = cfg.loss.alpha * terms["classification_loss"] + cfg.loss.beta * terms["localization_loss"]
    elif stage == 2:
        terms = soft_triple_loss(out["concept_vectors"].float(), out["prototypes_unit"].float(),
                                 concepts_gt, cfg.loss.softtriple_la, cfg.loss.softtriple_gamma,
                                 cfg.loss.softtriple_margin)
        loss = terms["softtriple_loss"]
    else:
        terms = disease_loss(out["disease_logits"].float(), batch["diseases"].to(device), pos_weight)
        loss = terms["disease_loss"]
    return out, loss, terms


def train_step(model, batch, optimizer, scaler, trainable, ctx, cfg, stage, pos_weight, grid, device, step):
    """One optimizer step of a stage: stage_loss under autocast, backward, clip, step.
    -> (out, loss, terms, gradient norm)"""
    with ctx:
        out, loss, terms = stage_loss(model, batch, cfg, stage, pos_weight, grid, device)
    training.check_finite({"loss": loss, **terms}, step)
    scaler.scale(loss).backward()
    grad_norm = training.optimizer_step(optimizer, scaler, trainable, cfg.train.grad_clip, step)
    return out, loss, terms, grad_norm


def stage_datasets(cfg):
    """{"train", "val"} datasets of cfg; runs of one process pass them to each stage, so the phantoms are
    generated (and cached) once, not once per stage. Real data: the final test's images (VinDr test, NIH boxes)
    are read here too, so a bad one stops (or is reported) before training rather than after it."""
    if cfg.data.dataset != "phantom":
        build_dataset(cfg, "test", check_images=True)
        if cfg.data.get("nih_root"):
            build_nih_dataset(cfg, check_images=True)
    return {"train": build_dataset(cfg, "train", train=True), "val": build_dataset(cfg, "val")}


def run_stage(cfg, stage, out_dir, resume=None, final_eval=True, datasets=None):
    """Train one stage into out_dir; returns the path of its best.pt. datasets: stage_datasets(cfg) (built
    here when None)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    print(f"=== concept_cam stage {stage} -> {out_dir}")
    if cfg.train.num_threads:
        torch.set_num_threads(cfg.train.num_threads)
    device, ctx, scaler, dtype = training.setup_device(cfg.train.device, cfg.train.dtype)
    training.seed_everything(cfg.train.seed)
    stage_cfg = cfg[f"stage{stage}"]
    task_head = cfg.stage3.task_head

    # data
    datasets = datasets or stage_datasets(cfg)
    train_set = datasets["train"]
    val_loader = epoch_loader(datasets["val"], cfg.train.batch_size, cfg.train.seed, 0, shuffle=False,
                              drop_last=False, num_workers=cfg.data.num_workers)
    train_set = SeededDataset(train_set, cfg.train.seed)
    steps_per_epoch = batches_per_epoch(train_set, cfg.train.batch_size)
    total_steps = stage_cfg.epochs * steps_per_epoch
    plan, fresh_best = training.resume_rule(resume, out_dir, total_steps, phase=stage)  # another folder, finished
    if plan == "done":
        return out_dir / "best.pt"
    training.save_config(cfg, out_dir)

    # model; a checkpoint of an EARLIER stage gives the starting weights, one of THIS stage resumes the run
    checkpoint = torch.load(resume, map_location="cpu", weights_only=False) if resume else None
    if checkpoint is None and stage > 1:
        raise training.ConfigError(f"stage {stage} starts from the stage {stage - 1} checkpoint: pass --resume "
                                   f"<stage {stage - 1} best.pt>")
    if checkpoint is not None and checkpoint["phase"] > stage:
        raise training.ConfigError(f"{resume} is a stage {checkpoint['phase']} checkpoint; stage {stage} can start "
                                   f"from stage {stage - 1} or resume stage {stage}")
    # else every weight is in the checkpoint; model.pretrained=false: random weights, nothing frozen by source
    pretrained = cfg.model.get("pretrained", True) and (checkpoint is None or bool(checkpoint.get("frozen")))
    model = build_model(cfg, pretrained=pretrained).to(device)
    frozen = training.frozen_pretrained(model, frozen_sources(cfg) if pretrained else {}, every_stage_trainable(cfg))
    if checkpoint is not None:
        training.load_weights(model, checkpoint, resume)
    grid = model.backbone.patch_embed.grid_size

    # freezing (printed), then the optimizer over what trains
    freeze_backbone = stage == 1 and stage_cfg.freeze_backbone
    print(f"stage {stage}: trainable = {trainable_patterns(stage, freeze_backbone, task_head)}")
    trainable = training.set_trainable(model, trainable_patterns(stage, freeze_backbone, task_head))
    optimizer = build_optimizer(model, cfg, stage, device)
    ddp_model = training.step_module(model, device, cfg.train)   # train.compile; torchrun: DDP of this stage

    # resume (same stage: optimizer, scaler, step, RNG)
    step, best_metric, best_step, collapsed, early_stopped = 0, float("-inf"), 0, 0, False
    if checkpoint is not None and checkpoint["phase"] == stage:
        training.load_checkpoint(resume, model, optimizer, scaler, config=cfg)
        step, best_metric = checkpoint["step"], float("-inf") if fresh_best else checkpoint["best_metric"]
        best_step = checkpoint.get("best_step", step)
        print(f"resumed stage {stage} at step {step} (best {best_metric:.4f})")
    del checkpoint

    logger = training.RunLogger(out_dir, resume_step=step or None)   # a resume drops lines past its step

    def save(name, epoch):
        training.save_checkpoint(out_dir / name, model, optimizer, scaler, step, epoch, stage, best_metric, cfg,
                                 frozen=frozen, best_step=best_step)

    # stages 2 and 3 leave the backbone frozen: without augmentation its feature map of an image never changes,
    # so it is computed once per training image before the loop and the stage trains the heads on that table
    # (train.cache_features): no image is loaded or transformed again (`python -m benchmarks.loading --systems`)
    table = None
    if stage > 1 and cfg.train.cache_features and not cfg.data.augment:
        table = feature_table(model.backbone, train_set, cfg, device, ctx)
    label_key = "concepts" if stage < 3 else "diseases"  # the table has the labels: no second pass over images
    labels = table[label_key] if table is not None else training_labels(datasets["train"], label_key)
    pos_weight = pos_weight_from_labels(labels, cfg.loss.pos_weight_cap).to(device)
    print(f"pos_weight ({label_key}, cap {cfg.loss.pos_weight_cap}): {[round(v, 1) for v in pos_weight.tolist()]}")

    # loop
    eval_interval = cfg.train.eval_interval or steps_per_epoch  # validation every N steps (0 = each epoch end)
    stop_at = cfg.train.stop_after_steps or total_steps
    progress = tqdm(total=total_steps, initial=step, desc=f"stage {stage}", dynamic_ncols=True, disable=None)
    while step < min(total_steps, stop_at):
        epoch, start_batch = divmod(step, steps_per_epoch)
        shard = {"rank": training.rank(), "world_size": training.world_size()}   # torchrun: this rank's slice
        loader = (table_batches(table, cfg.train.batch_size, cfg.train.seed, epoch, start_batch=start_batch, **shard)
                  if table is not None else
                  epoch_loader(train_set, cfg.train.batch_size, cfg.train.seed, epoch, start_batch=start_batch,
                               num_workers=cfg.data.num_workers, **shard))
        ready = time.time()
        for batch in loader:
            if step >= stop_at:
                break
            t0 = time.time()  # data_s: waiting for this batch; s_per_step: the step itself
            model.train()
            lr = training.get_lr(step, stage_cfg.lr, cfg.train.warmup_steps, total_steps, cfg.train.min_lr)
            training.set_lr(optimizer, lr)
            _, loss, terms, grad_norm = train_step(ddp_model, batch, optimizer, scaler, trainable, ctx, cfg, stage,
                                                     pos_weight, grid, device, step)
            step += 1
            progress.update(1)
            if step % cfg.train.log_interval == 0 or step == 1:
                logger.log(stage=stage, step=step, **training.mean_over_ranks({"loss": loss, **terms}),
                           lr=lr, grad_norm=float(grad_norm), s_per_step=time.time() - t0, data_s=t0 - ready)
            if step % eval_interval == 0 or step == total_steps:
                scores = training.run_on_main(validate, model, val_loader, cfg, stage, pos_weight, grid, device, ctx)
                metric = scores[f"val/{STAGE_METRIC[stage]}"]
                logger.log(stage=stage, step=step, epoch=round(step / steps_per_epoch, 3), **scores)
                if metric > best_metric:
                    best_metric, best_step = metric, step
                    save("best.pt", step // steps_per_epoch)
                save("last.pt", step // steps_per_epoch)
                collapsed = collapsed + 1 if scores["val/cam_energy"] < CAM_COLLAPSED else 0
                if stage == 1 and collapsed == cfg.train.collapse_evals:
                    print(f"warning: the concept CAMs collapsed to zero ({collapsed} validations with val/cam_energy "
                          f"{scores['val/cam_energy']:.4f} < {CAM_COLLAPSED}, every p ~ 0.5) under "
                          f"loss.localization_margin={cfg.loss.localization_margin}, loss.beta={cfg.loss.beta}: a "
                          f"margin of 0 has its minimum at cam = 0 everywhere; use a margin > 0 (1.0) or a smaller beta")
                patience = cfg.train.early_stop_steps
                if patience and step - best_step >= patience and step < total_steps:
                    print(f"early stop at step {step}: no better val {STAGE_METRIC[stage]} for {step - best_step} steps "
                          f"(train.early_stop_steps {patience}; best {best_metric:.4f} at step {best_step})")
                    early_stopped = True
                    break
            ready = time.time()
        if early_stopped:
            break
    progress.close()
    if step % eval_interval and step != total_steps and not early_stopped:  # stopped by train.stop_after_steps
        save("last.pt", step // steps_per_epoch)

    # final test evaluation of the best checkpoint
    best = out_dir / "best.pt"
    if final_eval and (step >= total_steps or early_stopped) and training.is_main():
        evaluate_run(best, out_dir, cfg.eval.visualize, cfg.train.device)
    return best


def evaluate_run(checkpoint_path, out_dir, visualize, device):
    figures = Path(out_dir) / "figures"
    figures.mkdir(exist_ok=True)
    args = argparse.Namespace(checkpoint=str(checkpoint_path), split="test", bootstrap=0, visualize=visualize,
                              images=None, out_dir=str(figures), device=device)
    checkpoint = torch.load(checkpoint_path, map_location="cpu", weights_only=False)
    metrics = evaluate_checkpoint(checkpoint, args)
    training.write_metrics(Path(out_dir) / "metrics.json", metrics, checkpoint_path, checkpoint["step"])
    print("test metrics: " + ", ".join(f"{k} {v:.4f}" for k, v in metrics.items() if k.count("/") <= 2
                                       and not any(name in k for name in VINDR_CONCEPTS)))
    return metrics


# ----------------------------------------------------------------------------------------------------------
# evaluation (evals/concept_cam.py; evaluate.py calls evaluate_checkpoint, the run's final test too)

def model_for_checkpoint(checkpoint, args):
    """-> (cfg, model holding the checkpoint's weights, in eval mode, device, ctx). Built with random weights
    first when the checkpoint holds every weight; from model.backbone when it leaves the frozen backbone out
    (checkpoint["frozen"]), which load_weights checks against the stored fingerprint."""
    pretrained = bool(checkpoint.get("frozen"))
    return training.model_from_checkpoint(checkpoint, args, lambda cfg: build_model(cfg, pretrained=pretrained))


def evaluate_checkpoint(checkpoint, args):
    """Loaded checkpoint dict + args (.split, .bootstrap, .visualize, .images, .out_dir, .device) -> flat dict."""
    cfg, model, device, ctx = model_for_checkpoint(checkpoint, args)
    stage, task_head = int(checkpoint["phase"]), cfg.stage3.task_head
    if getattr(args, "images", None):
        transform = build_transform(False, cfg.model.image_size, mean=(MEDMAE_MEAN,) * 3, std=(MEDMAE_STD,) * 3,
                                    resize="stretch")
        return evals.concept_cam.predict_user_images(model, args.images, transform, stage, task_head, args.out_dir,
                                                     device, ctx)
    visualize, bootstrap = getattr(args, "visualize", 0), getattr(args, "bootstrap", 0)
    metrics = evals.concept_cam.evaluate(model, build_dataset(cfg, args.split), cfg, device, ctx, "", visualize,
                                         args.out_dir, bootstrap, stage=stage, concept_boxes=concept_boxes,
                                         source=cfg.data.dataset)
    if cfg.data.get("nih_root"):
        metrics.update(evals.concept_cam.evaluate(model, build_nih_dataset(cfg), cfg, device, ctx, "nih/", visualize,
                                                  args.out_dir, bootstrap, stage=1, concept_boxes=concept_boxes,
                                                  source="nih", classification=False))
    return metrics


# ----------------------------------------------------------------------------------------------------------
# the comparison table: stage 1 with / without box guidance, stage 3 prototype vs linear head; seeds, mean +- std

STAGE1_KEYS = ["concept/auroc/macro", "loc/pointing_game", "loc/iou_acc@0.1", "loc/iou_acc@0.25", "loc/iobb_acc@0.25",
               "loc/energy_in_boxes"]
STAGE3_KEYS = ["disease/auroc/macro", "disease/ap/macro", "disease/f1/macro", "concept/auroc/macro"]


def compare_seed(config_path, overrides, seed, out_dir):
    """The stage folders of one seed (train.seed = seed) under out_dir/seed<seed>/:
        box/stage1 -> box/stage2 -> box/stage3 (prototype head), box/stage3_linear (linear head, from box/stage2),
        nobox/stage1 (loss.beta=0)
    A folder that holds metrics.json is reused; one with only last.pt continues from it. -> {arm: test metrics}.
    The embedded default's three stages are timed (wall and this process's CPU seconds) into timing.json."""
    root, extra = Path(out_dir) / f"seed{seed}", [f"train.seed={seed}"]

    shared = {}   # the five runs differ in loss / head switches only: one set of datasets

    def stage(folder, number, more, previous):
        if not (folder / "metrics.json").exists():
            cfg = training.load_config(config_path, overrides + extra + more)
            shared.setdefault("datasets", stage_datasets(cfg))
            run_stage(cfg, number, folder, folder / "last.pt" if (folder / "last.pt").exists() else previous,
                      datasets=shared["datasets"])
        return json.loads((folder / "metrics.json").read_text()), folder / "best.pt"

    fresh = not (root / "box" / "stage1").exists()   # timed only when all three stages run here from scratch
    wall, cpu = time.time(), time.process_time()
    box1, best1 = stage(root / "box" / "stage1", 1, [], None)
    _, best2 = stage(root / "box" / "stage2", 2, [], best1)
    prototype3, _ = stage(root / "box" / "stage3", 3, [], best2)
    if fresh:
        training.atomic_write_bytes(root / "timing.json", json.dumps(
            {"wall_s": time.time() - wall, "cpu_s": time.process_time() - cpu,
             "load_average": list(os.getloadavg())}).encode())
    linear3, _ = stage(root / "box" / "stage3_linear", 3, ["stage3.task_head=linear"], best2)
    nobox1, _ = stage(root / "nobox" / "stage1", 1, ["loss.beta=0"], None)
    return {"box": box1, "nobox": nobox1, "prototype": prototype3, "linear": linear3}


def compare(config_path, overrides, seeds, out_dir, jobs=1):
    """compare_seed for seeds 0..seeds-1, then comparison.md / comparison.json in out_dir: mean +- sample std
    over seeds of the test metrics. jobs > 1: that many seeds at once, each as its own process
    (`--compare-seed S`, output in out_dir/seed<S>.log); the runs are the same as sequential ones."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if jobs > 1:
        folders = ("box/stage1", "box/stage2", "box/stage3", "box/stage3_linear", "nobox/stage1")
        pending = [s for s in range(seeds) if not all((out_dir / f"seed{s}" / f / "metrics.json").exists()
                                                      for f in folders)]
        script = str(Path(__file__).resolve())
        training.run_processes([(f"compare: seed {seed}", [script, "--config", str(config_path), "--compare-seed",
                                                           str(seed), "--out", str(out_dir), *overrides],
                                 out_dir / f"seed{seed}.log") for seed in pending], jobs, stop_on_failure=True)
    per_seed = [compare_seed(config_path, overrides, seed, out_dir) for seed in range(seeds)]  # reused if done
    runs = {arm: [r[arm] for r in per_seed] for arm in per_seed[0]}
    timing = [json.loads(p.read_text()) for p in sorted(out_dir.glob("seed*/timing.json"))]

    def table(title, keys, arms):
        return tables.markdown([title, *(label for label, _ in arms)],
                               [[key, *(tables.mean_std_cells(runs[name], [key])[0] for _, name in arms)] for key in keys])

    n = f"n={seeds}"
    beta = training.load_config(config_path, overrides).loss.beta
    lines = table(f"stage 1 (test, {n})", STAGE1_KEYS, [(f"box guidance (beta={beta:g})", "box"),
                                                      ("no box guidance (beta=0)", "nobox")])
    lines += [""] + table(f"stage 3 (test, {n})", STAGE3_KEYS, [("prototype head (CSR)", "prototype"),
                                                              ("linear head on the backbone", "linear")])
    if timing:
        lines += ["", f"embedded default, all three stages: wall {mean_std([t['wall_s'] for t in timing])} s, "
                      f"CPU {mean_std([t['cpu_s'] for t in timing])} s (per seed, as timed when it ran)"]
    tables.write_table(out_dir / "comparison.md", lines, out_dir / "comparison.json", {"runs": runs, "timing": timing})
    return runs


# ----------------------------------------------------------------------------------------------------------
# main

def main(argv=None):
    parser = training.base_argparser(SYSTEM, __doc__)
    parser.add_argument("--stage", default="all", choices=["1", "2", "3", "all"],
                        help="stage to train; 'all' runs 1, 2, 3 into <out>/stage1..3, each from the previous best")
    parser.add_argument("--compare", type=int, default=0, metavar="SEEDS",
                        help="the comparison table (box guidance on/off, prototype vs linear head) over SEEDS seeds "
                             "into --out; finished stage folders are reused")
    parser.add_argument("--jobs", type=int, default=1, help="with --compare: seeds at once (separate processes)")
    parser.add_argument("--compare-seed", type=int, default=None, help=argparse.SUPPRESS)  # one seed of --jobs
    args = parser.parse_args(argv)
    cfg = training.load_config(args.config, args.overrides)
    if cfg.get("system") != SYSTEM:
        raise training.ConfigError(f"{args.config}: system is {cfg.get('system')!r}, expected {SYSTEM!r}")
    if args.compare or args.compare_seed is not None:
        if not args.out:
            parser.error("--compare needs --out DIR")
        if args.compare_seed is not None:
            return compare_seed(args.config, list(args.overrides), args.compare_seed, args.out)
        return compare(args.config, list(args.overrides), args.compare, args.out, args.jobs)
    if args.stage != "all":
        out_dir = training.make_out_dir(args.out, SYSTEM, f"stage{args.stage}", args.resume, args.overwrite)
        return run_stage(cfg, int(args.stage), out_dir, args.resume)
    out_dir = training.make_out_dir(args.out, SYSTEM, "all", args.resume, args.overwrite)
    previous, datasets = args.resume, stage_datasets(cfg)
    for stage in (1, 2, 3):
        previous = run_stage(cfg, stage, out_dir / f"stage{stage}", previous, datasets=datasets)
    return previous


if __name__ == "__main__":
    training.run_cli(main, "train_concept_cam.py")
