"""CheXQuery-MedVLM training (seed 001): chest X-ray report generation with condition and anatomical
queries, three phases as separate runs.

Commands (run from the repository root):
    # tiny CPU default: phase 1 then phase 2 on phantoms (run dir gets phase1/ and phase2/)
    python train_chexquery.py --out runs/chexquery/tiny
    # one phase at a time, each from the previous phase's best checkpoint (seed 001 §11)
    python train_chexquery.py --phase 1 --out runs/chexquery/p1
    python train_chexquery.py --phase 2 --resume runs/chexquery/p1/best.pt --out runs/chexquery/p2
    python train_chexquery.py --phase 3 --resume runs/chexquery/p2/best.pt --out runs/chexquery/p3   # optional
    # paper scale (edit data.root first): IU X-ray frontal images, 70/15/15 by patient
    python train_chexquery.py --config configs/chexquery.yaml --phase 1
    torchrun --nproc_per_node 4 train_chexquery.py --config configs/chexquery.yaml --phase 1   # 4 GPUs, same batches
    python train_chexquery.py --config configs/chexquery.yaml --phase 1 data.source=iu_xray_r2gen \
        data.annotation=/data/iu_xray/annotation.json data.root=/data/iu_xray/images      # R2Gen split
    # build the paper-size model without downloading and print the parameter table per phase
    python train_chexquery.py --config configs/chexquery.yaml --dry-run model.pretrained=false
    # ablation on phantoms: full / no BERT init / no auxiliary loss / no gated fusion, phases 1 + 2 each
    python train_chexquery.py --ablation runs/chexquery/ablation --seeds 0,1,2
    # evaluation (text metrics, BERTScore, CheXbert and rule-based clinical F1, template baselines, auxiliary
    # AUROC), generation for your own images, per-query cross-attention PNGs
    python evaluate.py runs/chexquery/tiny/phase2/best.pt --split test --images my_xrays/ --visualize 4
    # CheXbert labels of the dataset's reports for the auxiliary head (then data.labels_csv=labels.csv)
    python train_chexquery.py --config configs/chexquery.yaml --chexbert-labels labels.csv

Loss (seed 001 §7): loss = lambda_gen * generation + lambda_aux * auxiliary (models/chexquery.py), with
label smoothing from phase 2. Optimizer steps use gradient accumulation: `batch_size` micro-batches,
`effective_batch_size / batch_size` of them per step; micro-batches left over at an epoch's end are dropped. A run writes config.yaml, log.jsonl, last.pt,
best.pt (lowest validation generation loss) and metrics.json (test split of best.pt).
"""
# ----------------------------------------------------------------------------------------------------------
# imports
import argparse
import fnmatch
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

import evals.chexquery
import training
from evals import tables
from data.loader import batches_per_epoch, epoch_loader
from data.sample import DataError
from models.chexquery import ChexQuery, ChexQueryConfig, chexquery_losses
from models.text_decoder import encode_targets, prompt_prefix, word_dropout

SYSTEM = "chexquery"
# seed 001 §10.1: total / trainable parameters per component (paper scale)
SEED_PARAMETERS = {
    "vision_encoder": (86e6, 300e3), "condition_queries": (10.7e3, 10.7e3), "anatomical_queries": (4.6e3, 4.6e3),
    "cross_attention": (12e6, 12e6), "gated_fusion": (2e6, 2e6), "auxiliary_head": (300e3, 300e3),
    "text_decoder": (248e6, 1.5e6), "total": (350e6, 16e6),
}


# ----------------------------------------------------------------------------------------------------------
# phase freezing (seed 001 §6.1, §7.4): fnmatch patterns over parameter names; every other parameter is frozen

QUERY_MODULES = ["condition_queries.*", "anatomical_queries.*", "cross_attention.*", "gated_fusion.*"]
PHASE_TRAINABLE = {
    1: QUERY_MODULES + ["auxiliary_head.*"],                                          # encoders frozen
    2: QUERY_MODULES + ["auxiliary_head.*", "vision_encoder.*lora_*", "text_decoder.*lora_*"],   # + LoRA
    3: QUERY_MODULES + ["text_decoder.*lora_*"],                                      # vision fully frozen, aux off
}


def trainable_patterns(model, phase):
    """PHASE_TRAINABLE[phase], plus the decoder's input projection when it has one (decoder width != D): it is
    new, so it trains in every phase."""
    patterns = list(PHASE_TRAINABLE[phase])
    if any(True for _ in model.text_decoder.projection.parameters()):
        patterns.append("text_decoder.projection.*")
    return patterns


def frozen_sources(cfg):
    """Prefix -> pretrained source of the weights frozen in every phase (seed 001 §6.1: the SigLIP and Flan-T5
    bases; their LoRA adapters are trainable patterns and stay in checkpoints). None with model.pretrained=false:
    random weights have no source to rebuild them from."""
    if not cfg.model.pretrained:
        return {}
    return {"vision_encoder.model.": cfg.model.vision.name, "text_decoder.model.": cfg.model.decoder.name}


def every_phase_trainable(model):
    """The trainable patterns of all three phases: what is not among them is frozen in every phase."""
    return [pattern for phase in PHASE_TRAINABLE for pattern in trainable_patterns(model, phase)]


def parameter_table(model):
    """component -> {"total": params, phase: trainable params under trainable_patterns}; requires_grad unchanged."""
    table = {}
    for name, p in model.named_parameters():
        row = table.setdefault(name.split(".")[0], {"total": 0, 1: 0, 2: 0, 3: 0})
        row["total"] += p.numel()
        for phase in (1, 2, 3):
            if any(fnmatch.fnmatchcase(name, pattern) for pattern in trainable_patterns(model, phase)):
                row[phase] += p.numel()
    return table


# ----------------------------------------------------------------------------------------------------------
# config

def model_config(cfg):
    """cfg.model -> ChexQueryConfig; model.pretrained=false switches every pretrained load off."""
    m = cfg.model.to_dict() if hasattr(cfg.model, "to_dict") else dict(cfg.model)
    m["vision"], m["decoder"] = dict(m["vision"]), dict(m["decoder"])
    m["vision"]["pretrained"] = m["decoder"]["pretrained"] = bool(m["pretrained"])
    if not m["pretrained"] and m["condition_init"] == "bert":
        m["condition_init"] = "xavier"   # no text encoder without pretrained weights (weights come from a checkpoint)
    return ChexQueryConfig.from_dict(m)


def lr_scales(p):
    """Per-phase learning-rate multipliers of the LoRA adapters (1.0 = the phase's lr, as the seed); the
    decoder's cross-attention (EncDecAttention, which reads the visual tokens) can have its own."""
    return {"text_decoder.*EncDecAttention.*lora_*": float(p.decoder_cross_lora_lr_scale),
            "vision_encoder.*lora_*": float(p.vision_lora_lr_scale), "text_decoder.*lora_*": float(p.decoder_lora_lr_scale)}


def phase_settings(cfg, phase):
    p = cfg.phases[f"phase{phase}"]
    if p.effective_batch_size % p.batch_size:
        raise training.ConfigError(f"phases.phase{phase}: effective_batch_size {p.effective_batch_size} is not a "
                                   f"multiple of batch_size {p.batch_size}")
    return p, p.effective_batch_size // p.batch_size


# ----------------------------------------------------------------------------------------------------------
# data

def has_report_text(report):
    """False for a report whose findings and impression are both empty after cleaning (e.g. all XXXX)."""
    from data.reports import split_sections
    try:
        findings, impression = split_sections(report)
    except Exception:
        return bool(str(report).strip())
    return bool(findings.strip() or impression.strip())


def build_dataset(cfg, split, transform_train=None, check_images=False):
    """Phantoms or IU X-ray (Kaggle layout or R2Gen annotation) for split train | val | test. check_images: read
    every image now, whatever data.check_images says."""
    from data.transforms import build_transform
    d = cfg.data
    train = split == "train" and d.augment if transform_train is None else transform_train
    transform = build_transform(train, d.image_size)
    if d.source == "phantom":
        from data.phantom import phantom_split
        count = {"train": d.num_train, "val": d.num_val, "test": d.num_test}[split]
        dataset = phantom_split(split, count, d.image_size, transform=transform, cache=True,
                                cache_dir=d.get("phantom_cache_dir"))
        dataset.label_source = "phantom label vectors" if d.aux_labels == "dataset" else "rule labeler on the report"
        return dataset
    if d.source == "iu_xray":
        from data.iu_xray import IUXrayDataset
        if not d.root:
            raise training.ConfigError("data.source=iu_xray needs data.root (the folder with indiana_reports.csv)")
        dataset = IUXrayDataset(d.root, split, transform, frontal_only=True, labels_csv=d.labels_csv,
                                split_file=d.split_file or None, on_error=d.on_error,
                                check_images=d.check_images or check_images)
    elif d.source == "iu_xray_r2gen":
        from data.iu_xray import IUXrayR2GenDataset
        if not d.annotation or not d.root:
            raise training.ConfigError("data.source=iu_xray_r2gen needs data.annotation (annotation.json) and "
                                       "data.root (its image root)")
        dataset = IUXrayR2GenDataset(d.annotation, d.root, split, transform, official_split=d.r2gen_official_split,
                                     labels_csv=d.labels_csv, split_file=d.split_file or None, on_error=d.on_error,
                                     check_images=d.check_images or check_images)
    else:
        raise training.ConfigError(f"data.source must be phantom, iu_xray or iu_xray_r2gen, got {d.source!r}")
    kept = [r for r in dataset.records if has_report_text(r["report"])]
    dropped = len(dataset.records) - len(kept)
    if dropped:
        message = (f"{dropped} {split} image(s) whose report is empty after cleaning (e.g. only XXXX sentences), "
                   f"first: {next(r['where'] for r in dataset.records if not has_report_text(r['report']))}")
        if d.on_error == "stop":
            raise DataError(message + "; set data.on_error=skip to leave them out")
        print(f"[{SYSTEM}] skipped {message}")
    dataset.records = kept
    if not kept:
        raise DataError(f"{SYSTEM}: no {split} images with a report left in {d.root}")
    dataset.label_source = "CheXbert labels " + str(d.labels_csv) if d.labels_csv else "rule labeler (data/labeler.py)"
    return dataset


def aux_targets(batch, cfg):
    """(B, 14) {0, 1} auxiliary targets: dataset labels (CheXbert / phantom) or the rule labeler."""
    if cfg.data.source == "phantom" and cfg.data.aux_labels == "rule":
        from data.labeler import label_report, labels_to_vector
        labels = torch.from_numpy(np.stack([labels_to_vector(label_report(r)) for r in batch["report"]]))
    else:
        labels = batch["labels"].float()
    return torch.where(labels < 0, torch.full_like(labels, float(cfg.data.uncertain == "positive")), labels)


# ----------------------------------------------------------------------------------------------------------
# model

def build_model(cfg):
    return ChexQuery(model_config(cfg))


def load_tokenizer_for(cfg, checkpoint=None):
    """The decoder's tokenizer: from the checkpoint's files when it has them, else through load_hf."""
    if checkpoint is not None and checkpoint.get("tokenizer_files"):
        import tempfile
        from transformers import AutoTokenizer
        with tempfile.TemporaryDirectory(prefix="chexquery-tok-") as directory:   # loaded into memory, then removed
            return AutoTokenizer.from_pretrained(training.write_tokenizer_files(checkpoint["tokenizer_files"], directory))
    from models.text_decoder import TextDecoderConfig, load_tokenizer
    return load_tokenizer(TextDecoderConfig(**dict(cfg.model.decoder)))


def print_parameter_table(model, compare_seed=False):
    """Per component: total parameters and trainable parameters in each phase (+ seed §10.1 when asked)."""
    table = parameter_table(model)
    table["total"] = {k: sum(r[k] for r in table.values()) for k in ("total", 1, 2, 3)}
    header = f"{'component':<20} {'total':>13} {'phase 1':>12} {'phase 2':>12} {'phase 3':>12}"
    if compare_seed:
        header += f" {'seed total':>11} {'ratio':>6} {'seed train':>11} {'ratio p2':>8}"
    print(header)
    for name, row in table.items():
        line = f"{name:<20} {row['total']:>13,} {row[1]:>12,} {row[2]:>12,} {row[3]:>12,}"
        if compare_seed and name in SEED_PARAMETERS:
            seed_total, seed_train = SEED_PARAMETERS[name]
            line += f" {seed_total:>11,.0f} {row['total'] / seed_total:>6.2f} {seed_train:>11,.0f} {row[2] / seed_train:>8.2f}"
        print(line)
    return table


# ----------------------------------------------------------------------------------------------------------
# evaluation (evals/chexquery.py; evaluate.py calls evaluate_checkpoint, the run's final test too)

@torch.no_grad()
def validation_loss(model, dataset, cfg, tokenizer, device, ctx, phase):
    """Mean generation / auxiliary loss on a split (teacher forcing, no smoothing)."""
    p, _ = phase_settings(cfg, phase)
    model.eval()
    prompt = prompt_prefix(cfg.data.prompt_template)
    sums, count = {"generation": 0.0, "auxiliary": 0.0}, 0
    for batch in epoch_loader(dataset, cfg.eval.batch_size, cfg.train.seed, 0, shuffle=False, drop_last=False):
        ids, labels, mask = encode_targets(tokenizer, batch["report"], prompt, cfg.data.max_report_tokens,
                                           model.text_decoder.model.config.decoder_start_token_id)
        with ctx:
            out = model(batch["image"].to(device), ids.to(device), mask.to(device))
            terms = chexquery_losses(out, labels.to(device), aux_targets(batch, cfg).to(device), p.lambda_gen, p.lambda_aux)
        n = len(batch["report"])
        for k in sums:
            sums[k] += float(terms[k]) * n
        count += n
    return {f"val/{k}": v / max(count, 1) for k, v in sums.items()}


def train_reports_of(cfg):
    """The training split's reports (template baselines) and, on the R2Gen split, the file's own strings (its
    scoring protocol; else None), from one build of the training split."""
    dataset = build_dataset(cfg, "train", transform_train=False)
    if hasattr(dataset, "records"):
        raw = [r["raw_report"] for r in dataset.records] if cfg.data.source == "iu_xray_r2gen" else None
        return [r["report"] for r in dataset.records], raw
    from data.phantom import make_chest_phantom
    return [make_chest_phantom(dataset.seed, dataset.start_index + i, 64)["report"] for i in range(len(dataset))], None


def model_for_checkpoint(checkpoint, args):
    """-> (cfg, model holding the checkpoint's weights, in eval mode, device, ctx). A checkpoint holding every
    weight is built with random weights first (model.pretrained=false: nothing is downloaded); one without its
    frozen pretrained weights (checkpoint["frozen"]) is built from their sources, which load_weights checks
    against the stored fingerprints. The condition queries come from the checkpoint: no BERT either way."""
    overrides = ["model.condition_init=xavier"] if checkpoint.get("frozen") else ["model.pretrained=false"]
    return training.model_from_checkpoint(checkpoint, args, build_model, overrides=overrides)


def evaluate_checkpoint(checkpoint, args):
    """Loaded checkpoint dict + args (.split, .images, .visualize, .out_dir, .device) -> flat dict of floats."""
    cfg, model, device, ctx = model_for_checkpoint(checkpoint, args)
    tokenizer = load_tokenizer_for(cfg, checkpoint)
    out_dir = Path(getattr(args, "out_dir", None) or ".")
    if getattr(args, "images", None):
        return evals.chexquery.predict_user_images(model, cfg, args.images, out_dir, device, ctx, tokenizer=tokenizer)
    train_reports, raw_train_reports = train_reports_of(cfg)
    return evals.chexquery.evaluate(model, build_dataset(cfg, args.split), cfg, device, ctx, "",
                                    getattr(args, "visualize", 0), out_dir, getattr(args, "bootstrap", 0),
                                    tokenizer=tokenizer, targets_of=aux_targets, train_reports=train_reports,
                                    split=args.split, r2gen_train_reports=raw_train_reports)


# ----------------------------------------------------------------------------------------------------------
# one phase

TEST_LINE = ["bleu1", "bleu4", "rouge1", "rouge2", "rougeL", "meteor", "cider", "bertscore/f1", "chexbert/micro_f1",
             "chexbert/micro_f1_5", "clinical_rule/micro_f1", "r2gen/bleu4", "aux/auroc/macro", "eval_seconds"]


def micro_step(model, batch, scaler, ctx, cfg, p, accum, tokenizer, prompt, device, step, micro):
    """Forward and backward of micro-batch `micro` of optimizer step `step`: teacher-forced report tokens (word
    dropout when the phase asks), generation + auxiliary loss (seed 001 §6), loss / accum backward. `accum`
    micro-batches then training.optimizer_step make one train step. -> (out, loss terms)"""
    start_id = training.unwrap(model).text_decoder.model.config.decoder_start_token_id
    images = batch["image"].to(device)                                                    # (B, 3, H, W)
    ids, labels, mask = encode_targets(tokenizer, batch["report"], prompt, cfg.data.max_report_tokens, start_id)
    if p.word_dropout:  # one generator per micro-batch: a resumed run draws the same masks
        draw = torch.Generator().manual_seed(cfg.train.seed * 1_000_003 + step * 1_009 + micro)
        ids = word_dropout(ids, labels, p.word_dropout, tokenizer.unk_token_id, draw)
    with ctx:
        out = model(images, ids.to(device), mask.to(device))                             # logits (B, T, W)
        terms = chexquery_losses(out, labels.to(device), aux_targets(batch, cfg).to(device),
                                 p.lambda_gen, p.lambda_aux, p.label_smoothing)
    training.check_finite(terms, step)
    scaler.scale(terms["loss"] / accum).backward()
    return out, terms


def train_phase(cfg, phase, out_dir, resume=None, final_test=True):
    """Train phase 1, 2 or 3 into out_dir; returns the test metrics dict (or {} when stopped early)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    p, accum = phase_settings(cfg, phase)
    prompt = prompt_prefix(cfg.data.prompt_template)

    # device, seed, AMP
    if cfg.train.num_threads:
        torch.set_num_threads(cfg.train.num_threads)
    device, ctx, scaler, dtype = training.setup_device(cfg.train.device, cfg.train.dtype)
    training.seed_everything(cfg.train.seed)

    # data
    train_set, val_set = build_dataset(cfg, "train"), build_dataset(cfg, "val")
    steps_per_epoch = batches_per_epoch(train_set, p.batch_size) // accum
    if steps_per_epoch == 0:
        raise DataError(f"{len(train_set)} training images are fewer than one effective batch ({p.effective_batch_size})")
    total_steps = p.epochs * steps_per_epoch
    print(f"data: {len(train_set)} train / {len(val_set)} val images; auxiliary labels from {train_set.label_source}")
    if cfg.data.source != "phantom" and cfg.eval.final_test and final_test:   # the final test's images, read now:
        build_dataset(cfg, "test", check_images=True)                          # a bad one stops or is reported here
    plan, fresh_best = training.resume_rule(resume, out_dir, total_steps, phase=phase)   # another folder, finished
    if plan == "done":
        return tables.read_metrics(out_dir)
    training.save_config(cfg, out_dir)
    print(f"phase {phase}: {p.epochs} epochs x {steps_per_epoch} steps, micro-batch {p.batch_size} x {accum} "
          f"accumulation = effective batch {p.effective_batch_size}, lr {p.lr}, warmup {p.warmup_steps}, "
          f"label smoothing {p.label_smoothing}, lambda_gen {p.lambda_gen}, lambda_aux {p.lambda_aux}, "
          f"LoRA lr scale vision {p.vision_lora_lr_scale} / decoder {p.decoder_lora_lr_scale} / decoder "
          f"cross-attention {p.decoder_cross_lora_lr_scale}, word dropout {p.word_dropout}")

    # model
    model = build_model(cfg).to(device)
    tokenizer = load_tokenizer_for(cfg)

    # phase freezing (seed 001 §6.1): printed table of trainable / frozen parameters per module
    print(f"phase {phase} trainable patterns: {trainable_patterns(model, phase)}")
    trainable = training.set_trainable(model, trainable_patterns(model, phase))
    frozen = training.frozen_pretrained(model, frozen_sources(cfg), every_phase_trainable(model))  # not in checkpoints

    # optimizer + scaler
    optimizer = training.adamw(model, p.lr, cfg.train, device, lr_scales=lr_scales(p))
    ddp_model = training.step_module(model, device, cfg.train)   # train.compile / channels_last; torchrun: DDP

    # resume: same phase -> exact continuation; earlier phase -> its weights, a fresh optimizer at step 0
    step, best_metric = 0, float("inf")
    if resume:
        previous = torch.load(resume, map_location="cpu", weights_only=False)
        if previous.get("phase") == phase:
            checkpoint = training.load_checkpoint(resume, model, optimizer, scaler, config=cfg)
            step, best_metric = checkpoint["step"], float("inf") if fresh_best else checkpoint["best_metric"]
            print(f"resumed phase {phase} from {resume} at step {step}")
        elif isinstance(previous.get("phase"), int) and previous["phase"] < phase:
            training.load_weights(model, previous, resume)
            print(f"phase {phase} starts from the phase {previous['phase']} weights in {resume}")
        else:
            raise training.ConfigError(f"--resume {resume} is a phase {previous.get('phase')} checkpoint; phase {phase} "
                                       f"starts from an earlier phase's best.pt or continues its own last.pt")
    elif phase > 1:
        print(f"warning: phase {phase} without --resume starts from the pretrained weights, not from phase {phase - 1}")

    logger = training.RunLogger(out_dir, resume_step=step or None)   # a resume drops lines past its step

    def save(name):
        training.save_checkpoint(out_dir / name, model, optimizer, scaler, step, step // steps_per_epoch, phase,
                                 best_metric, cfg, tokenizer=tokenizer, frozen=frozen)

    # loop
    eval_interval = cfg.train.eval_interval or steps_per_epoch
    stop_at = min(total_steps, cfg.train.stop_after_steps or total_steps)
    progress = tqdm(total=stop_at, initial=step, desc=f"{SYSTEM} phase {phase}", dynamic_ncols=True, leave=False, disable=None)
    while step < stop_at:
        epoch, start = divmod(step, steps_per_epoch)
        micro, data_s, compute_s = 0, 0.0, 0.0  # summed over the micro-batches of one optimizer step
        ready = time.time()
        for batch in epoch_loader(train_set, p.batch_size, cfg.train.seed, epoch, start_batch=start * accum,
                                  num_workers=cfg.data.num_workers, rank=training.rank(),
                                  world_size=training.world_size()):
            fetched = time.time()  # data_s: waiting for batches; s_per_step: the step itself
            data_s += fetched - ready
            model.train()
            lr = training.get_lr(step, p.lr, p.warmup_steps, total_steps, cfg.train.min_lr)
            training.set_lr(optimizer, lr)
            with training.gradient_sync(ddp_model, sync=(micro + 1) % accum == 0):   # torchrun: all-reduce once a step
                out, terms = micro_step(ddp_model, batch, scaler, ctx, cfg, p, accum, tokenizer, prompt, device, step,
                                        micro)
            micro += 1
            if micro % accum:
                compute_s += time.time() - fetched
                ready = time.time()
                continue
            grad_norm = training.optimizer_step(optimizer, scaler, trainable, cfg.train.grad_clip, step)
            step += 1
            progress.update(1)
            compute_s += time.time() - fetched
            if step % cfg.train.log_interval == 0 or step == 1:
                logged = training.mean_over_ranks({**terms, "gate": out["gate"].float().mean()})   # over ranks
                logger.log(step=step, phase=phase, **logged, lr=lr, grad_norm=float(grad_norm),
                           s_per_step=compute_s, data_s=data_s)
            data_s = compute_s = 0.0
            if step % eval_interval == 0 or step == total_steps:
                metrics = training.run_on_main(validation_loss, model, val_set, cfg, tokenizer, device, ctx, phase)
                logger.log(step=step, phase=phase, **metrics)
                if metrics["val/generation"] < best_metric:
                    best_metric = metrics["val/generation"]
                    save("best.pt")
                save("last.pt")
            if step >= stop_at or step % steps_per_epoch == 0:
                break   # an epoch ends at its last full optimizer step: leftover micro-batches are not run
            ready = time.time()
    progress.close()
    if step % eval_interval and step != total_steps:
        save("last.pt")
    if not training.run_on_main((out_dir / "best.pt").exists):     # torchrun: every rank saves, or none
        save("best.pt")

    # cleanup: final test evaluation of best.pt (a finished phase only), on rank 0
    if step < total_steps or not (cfg.eval.final_test and final_test) or not training.is_main():
        return {}
    figures = out_dir / "figures"
    figures.mkdir(exist_ok=True)
    args = argparse.Namespace(checkpoint=str(out_dir / "best.pt"), split="test", bootstrap=0,
                              visualize=cfg.eval.visualize, images=None, out_dir=str(figures), device=cfg.train.device)
    t0 = time.time()
    try:
        checkpoint = torch.load(out_dir / "best.pt", map_location="cpu", weights_only=False)
        metrics = evaluate_checkpoint(checkpoint, args)
    except ModuleNotFoundError as error:
        if not str(error.name).startswith("metrics"):
            raise
        print(f"test evaluation skipped: {error} (metrics/ is not installed in this checkout)")
        return {}
    metrics["eval_seconds"] = time.time() - t0
    training.write_metrics(out_dir / "metrics.json", metrics, out_dir / "best.pt", checkpoint["step"])
    shown = [k for k in TEST_LINE if k in metrics]
    print("test: " + ", ".join(f"{k} {metrics[k]:.4f}" for k in shown) +
          f" (all {len(metrics)} values in {out_dir / 'metrics.json'})")
    return metrics


# ----------------------------------------------------------------------------------------------------------
# ablation (seed 001 §9: BERT-initialized condition queries, auxiliary loss, gated fusion), phases 1 + 2 each

ABLATIONS = {
    "full": [],
    "no_bert_init": ["model.condition_init=xavier"],
    "no_aux_loss": ["phases.phase1.lambda_aux=0.0", "phases.phase2.lambda_aux=0.0"],
    "no_gate": ["model.use_gate=false"],
}
ABLATION_COLUMNS = ["bleu1", "bleu4", "rougeL", "meteor", "cider", "chexbert/micro_f1", "clinical_rule/micro_f1",
                    "clinical_rule/macro_f1", "aux/auroc/macro"]


def run_ablation(args):
    """Train (or reuse: a run whose phase2/metrics.json exists is not retrained) every variant x seed into
    <root>/<variant>/seed<k>/, then write <root>/ablation.md (mean +- std over seeds) and ablation.json."""
    root = Path(args.ablation)
    variants = [v for v in args.variants.split(",") if v]
    unknown = [v for v in variants if v not in ABLATIONS]
    if unknown:
        raise training.ConfigError(f"--variants: unknown {unknown}; known: {', '.join(ABLATIONS)}")
    seeds = [int(x) for x in args.seeds.split(",") if x]

    def train_run(variant, seed, run):
        cfg = training.load_config(args.config, list(args.overrides) + ABLATIONS[variant] + [f"train.seed={seed}"])
        wall, cpu = time.time(), time.process_time()
        resume = None
        for phase in (1, 2):
            train_phase(cfg, phase, run / f"phase{phase}", resume, final_test=phase == 2)
            resume = run / f"phase{phase}" / "best.pt"
        (run / "time.json").write_text(json.dumps({"wall_s": time.time() - wall, "cpu_s": time.process_time() - cpu}))

    rows, _ = tables.collect_runs(variants, seeds, lambda variant, seed: root / variant / f"seed{seed}", train_run,
                                  done=("phase2/metrics.json",), read=lambda run: tables.read_metrics(run / "phase2"))
    baselines = rows[variants[-1]][-1] if rows else {}   # the templates score the same test references in every run
    body = [[variant, len(runs), *tables.mean_std_cells(runs, ABLATION_COLUMNS)] for variant, runs in rows.items()]
    for name in ("template_frequent", "template_normal"):
        body.append([f"{name} (constant)", "-"] + [f"{baselines[f'{name}/{k}']:.3f}" if f"{name}/{k}" in baselines
                                                  else "-" for k in ABLATION_COLUMNS])
    summary = {f"{variant}/{key}": tables.values_of(runs, key) for variant, runs in rows.items() for key in ABLATION_COLUMNS}
    tables.write_table(root / "ablation.md", tables.markdown(["variant", "seeds", *ABLATION_COLUMNS], body),
                       root / "ablation.json", summary)
    return summary


# ----------------------------------------------------------------------------------------------------------
# main

def main(argv=None):
    parser = training.base_argparser(SYSTEM, __doc__)
    parser.add_argument("--phase", default="1,2", help="1, 2, 3 or a comma list run in order (default 1,2: "
                        "phase 2 resumes from phase 1's best.pt; run dir gets phase<k>/ folders)")
    parser.add_argument("--dry-run", action="store_true", help="build the model, print the parameter table per "
                        "component and phase (with seed 001 §10.1), and exit")
    parser.add_argument("--ablation", default=None, metavar="DIR", help="train phases 1 + 2 of every --variants "
                        "x --seeds run under DIR (existing finished runs are reused) and write DIR/ablation.md")
    parser.add_argument("--variants", default=",".join(ABLATIONS), help=f"rows of --ablation ({', '.join(ABLATIONS)})")
    parser.add_argument("--seeds", default="0", help="seeds of --ablation, comma-separated (e.g. 0,1,2)")
    parser.add_argument("--chexbert-labels", default=None, metavar="CSV", help="label every study's report of the "
                        "config's dataset with CheXbert (eval.chexbert_checkpoint) into CSV, the file data.labels_csv "
                        "reads, and exit (GPU when there is one: train.device)")
    args = parser.parse_args(argv)
    cfg = training.load_config(args.config, args.overrides)
    if cfg.get("system") != SYSTEM:
        raise training.ConfigError(f"{args.config}: system is {cfg.get('system')!r}, expected {SYSTEM!r}")
    prompt_prefix(cfg.data.prompt_template)   # a template without {report} stops here, before any work
    try:
        phases = [int(x) for x in str(args.phase).split(",")]
    except ValueError:
        phases = []
    if not phases or any(x not in PHASE_TRAINABLE for x in phases):
        raise training.ConfigError(f"--phase must be 1, 2, 3 or a comma list of them, got {args.phase!r}")
    if args.ablation:
        return run_ablation(args)
    if args.chexbert_labels:
        from evals.chexbert_labels import label_dataset
        from hub.pretrained import PretrainedLoadError
        try:
            return label_dataset(cfg.data, args.chexbert_labels, cfg.eval.get("chexbert_checkpoint"),
                                 cfg.eval.get("chexbert_tokenizer"), device=cfg.train.device,
                                 batch_size=cfg.eval.batch_size)
        except (DataError, PretrainedLoadError) as error:
            print(f"train_chexquery.py --chexbert-labels: {error}", file=sys.stderr)
            raise SystemExit(2) from None
    if args.dry_run:
        t0 = time.time()
        model = build_model(cfg)
        print(f"built in {time.time() - t0:.1f} s")
        return print_parameter_table(model, compare_seed=True)
    if len(phases) == 1:
        out_dir = training.make_out_dir(args.out, SYSTEM, f"phase{phases[0]}", args.resume, args.overwrite)
        return train_phase(cfg, phases[0], out_dir, args.resume)
    root = training.make_out_dir(args.out, SYSTEM, "phases" + "".join(map(str, phases)), args.resume, args.overwrite)
    resume, metrics = args.resume, {}
    wall, cpu = time.time(), time.process_time()
    for phase in phases:
        metrics = train_phase(cfg, phase, root / f"phase{phase}", resume, final_test=phase == phases[-1])
        resume = root / f"phase{phase}" / "best.pt"
    timing = {"wall_s": time.time() - wall, "cpu_s": time.process_time() - cpu}   # CPU: all threads of this process
    if training.is_main():
        (root / "time.json").write_text(json.dumps(timing))
    print(f"phases {args.phase}: {timing['wall_s']:.0f} s wall, {timing['cpu_s']:.0f} s CPU (final test evaluation included)")
    return metrics


if __name__ == "__main__":
    training.run_cli(main, "train_chexquery.py")
