"""VideoAttentionCLIP training (seed 003): video <-> clinician-attention alignment plus diagnosis.

Commands (run from the repository root):
    # tiny CPU default: phantom videos with informative gaze, full method B3 (~20-40 s on 2 cores)
    python train_video_clip.py --out runs/video_clip/tiny
    # the seed's example commands, same overrides (seed 003 "Example Commands")
    python train_video_clip.py model.map_guided=false loss.clip_weight=1.0 model.lambda_token=0                 # B1
    python train_video_clip.py model.map_guided=true model.map_guided_type=spatiotemporal loss.clip_weight=0 model.lambda_token=0    # B2
    python train_video_clip.py model.map_guided=true model.map_guided_type=spatiotemporal loss.clip_weight=1.0 model.lambda_token=0  # B3
    python train_video_clip.py model.map_guided=true model.map_guided_type=spatiotemporal loss.clip_weight=1.0 model.lambda_token=0.1 # B4
    python train_video_clip.py model.map_guided=true model.map_guided_type=channel                               # C1 (the seed's gate)
    python train_video_clip.py model.map_guided=true model.map_guided_type=channel_attended                      # C1b
    python train_video_clip.py model.map_guided=true model.map_guided_type=weighted_pool                         # C2
    python train_video_clip.py model.map_guided=true model.map_guided_type=spatiotemporal model.map_guided_sigmoid_gate=true   # C3
    # other backbones (map_gate path when map-guided): model.clip_backbone=2dcnn | cnn_lstm, with
    # model.map_guided_type=channel (the seed's global-average summary) or grid (4 x 4 grid summary)
    # the whole ablation table (B0-B4, C1-C3 with D1/D2 metrics), 3 seeds each, mean +- std, markdown
    # (--rows C1,C1b: only those rows):
    python train_video_clip.py --table /tmp/video_clip_table.md --out /tmp/video_clip_table
    python train_video_clip.py --table /tmp/video_clip_table_q0.md --out /tmp/video_clip_table_q0 data.gaze_informativeness=0.0
    # resume an interrupted run exactly
    python train_video_clip.py --resume runs/video_clip/tiny/last.pt --out runs/video_clip/tiny
    # paper scale, one GPU: edit data.root / data.class_names in configs/video_clip.yaml first
    python train_video_clip.py --config configs/video_clip.yaml
    torchrun --nproc_per_node 4 train_video_clip.py --config configs/video_clip.yaml   # 4 GPUs, same global batch
    # evaluation: accuracy, macro F1, D1 retrieval, D2 alignment statistics, PNG strips
    python evaluate.py runs/video_clip/tiny/best.pt --split test --visualize 8

Loss (seed 003 ablation table): loss = L_CE + loss.clip_weight * L_CLIP + model.lambda_token * L_token
(models/clip_align_losses.py). The run writes config.yaml, log.jsonl, last.pt, best.pt (by validation
accuracy) and metrics.json (test split, keys test/accuracy, test/f1_macro, test/retrieval_r1_v2a, ...,
test/align_sim_gap, test/align_sim_corr).
"""
# ----------------------------------------------------------------------------------------------------------
# imports
import argparse
import os
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

import evals.video_clip
import training
from evals import tables
from data.loader import batches_per_epoch, epoch_loader
from models.clip_align import ClipAlignConfig, VideoAttentionCLIP
from models.clip_align_losses import video_clip_losses

SYSTEM = "video_clip"
VALIDATION_METRIC = "accuracy"


# ----------------------------------------------------------------------------------------------------------
# freezing (seed 003): one stage, trained end to end from scratch; nothing is frozen

TRAINABLE = ["*"]   # fnmatch patterns over parameter names


# ----------------------------------------------------------------------------------------------------------
# data

def build_dataset(cfg, split, root=None, check_images=False):
    """Phantom videos or the real folder format (data/video.py) for split train | val | test. check_images: every
    video and attention map of the folder split is read now (data.on_error says what a bad one does)."""
    d = cfg.data
    if d.source == "phantom" and root is None:
        from data.phantom_video import PhantomVideoDataset
        count = {"train": d.num_train, "val": d.num_val, "test": d.num_test}[split]
        return PhantomVideoDataset(count, split, d.num_frames, d.image_size, cfg.model.model_class_num,
                                   d.gaze_informativeness, num_distractors=d.num_distractors,
                                   distractor_contrast=d.distractor_contrast)
    if d.source in ("folder", "phantom"):
        from data.video import VideoFolderDataset
        root = root or d.root
        if not root:
            raise training.ConfigError("data.source=folder needs data.root (the folder holding videos.csv)")
        if len(d.class_names) != cfg.model.model_class_num:
            raise training.ConfigError(f"data.class_names has {len(d.class_names)} names but model.model_class_num "
                                       f"is {cfg.model.model_class_num}")
        return VideoFolderDataset(root, split, d.class_names, d.num_frames, d.image_size, d.attn_normalize,
                                  on_error=d.get("on_error", "stop"), check_images=check_images)
    raise training.ConfigError(f"data.source must be 'phantom' or 'folder', got {d.source!r}")


def build_model(cfg):
    """The model of cfg.model; a model key the chosen model cannot use is one ConfigError line, not a traceback."""
    try:
        config = ClipAlignConfig.from_dict(dict(cfg.model)).validate()
    except ValueError as error:
        raise training.ConfigError(str(error)) from None
    return VideoAttentionCLIP(config)


# ----------------------------------------------------------------------------------------------------------
# evaluation (evals/video_clip.py; evaluate.py calls evaluate_checkpoint, the run's validation and final test too)

def evaluate_checkpoint(checkpoint, args):
    """Loaded checkpoint dict + args (.split, .visualize, .images, .out_dir, .device) -> flat dict of floats.

    args.images: a folder in the data/video.py format to evaluate instead of the configured data (its
    rows of args.split). args.bootstrap > 0: that many resamples of the clips for accuracy and macro F1
    (keys <split>/accuracy/mean, .../std, .../ci_low, .../ci_high); retrieval is not bootstrapped, since a
    resample repeats clips and breaks the 1:1 diagonal protocol.
    """
    cfg, model, device, ctx = training.model_from_checkpoint(checkpoint, args, build_model)
    dataset = build_dataset(cfg, args.split, root=getattr(args, "images", None))
    return evals.video_clip.evaluate(model, dataset, cfg, device, ctx, f"{args.split}/", getattr(args, "visualize", 0),
                                     getattr(args, "out_dir", None), getattr(args, "bootstrap", 0))


# ----------------------------------------------------------------------------------------------------------
# one run

def train_step(model, batch, optimizer, scaler, trainable, ctx, cfg, device, step):
    """One optimizer step: forward under autocast, cross-entropy + CLIP alignment (+ token-level) terms, backward,
    clip, step, then the logit scale clamped to [0, ln 100] as open_clip does. -> (out, terms, gradient norm)"""
    video = batch["video"].to(device)                                     # (B, 3, T, H, W)
    attn_map = batch["attn_map"].to(device)                               # (B, A, T, H, W)
    labels = batch["label"].to(device)                                    # (B,)
    with ctx:
        out = model(video, attn_map)
        terms = video_clip_losses(out, labels, cfg.loss.clip_weight, cfg.model.lambda_token,
                                  all_ranks=training.world_size() > 1)          # torchrun: L_CLIP over all ranks
    training.check_finite(terms, step)
    scaler.scale(terms["loss"]).backward()
    grad_norm = training.optimizer_step(optimizer, scaler, trainable, cfg.train.grad_clip, step)
    training.unwrap(model).clamp_logit_scale()
    return out, terms, grad_norm


def train(cfg, out_dir, resume=None):
    """Train one configuration into out_dir; returns the test metrics dict."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)

    # device, seed, AMP
    if cfg.train.num_threads:
        torch.set_num_threads(cfg.train.num_threads)
    device, ctx, scaler, dtype = training.setup_device(cfg.train.device, cfg.train.dtype)
    training.seed_everything(cfg.train.seed)

    # data
    train_set, val_set = build_dataset(cfg, "train"), build_dataset(cfg, "val")
    steps_per_epoch = batches_per_epoch(train_set, cfg.train.batch_size)
    total_steps = cfg.train.steps
    print(f"data: {len(train_set)} train / {len(val_set)} val clips, classes {list(train_set.class_names)}")
    if cfg.data.source != "phantom":   # the final test's videos are read now: a bad one stops (or is reported) here
        build_dataset(cfg, "test", check_images=True)
    plan, fresh_best = training.resume_rule(resume, out_dir, total_steps)   # another folder, a finished run
    if plan == "done":
        return tables.read_metrics(out_dir)
    training.save_config(cfg, out_dir)

    # model (one phase: everything trains)
    model = build_model(cfg).to(device)
    trainable = training.set_trainable(model, TRAINABLE)

    # optimizer + scaler
    optimizer = training.adamw(model, cfg.train.lr, cfg.train, device)
    ddp_model = training.step_module(model, device, cfg.train)   # train.compile / channels_last; torchrun: DDP

    # resume
    step, best_metric = 0, float("-inf")
    if resume:
        checkpoint = training.load_checkpoint(resume, model, optimizer, scaler, config=cfg)
        step, best_metric = checkpoint["step"], float("-inf") if fresh_best else checkpoint["best_metric"]
        print(f"resumed from {resume} at step {step} (best val {VALIDATION_METRIC} {best_metric:.4f})")

    logger = training.RunLogger(out_dir, resume_step=step or None)   # a resume drops lines past its step

    def save(name):
        training.save_checkpoint(out_dir / name, model, optimizer, scaler, step, step // steps_per_epoch, "train",
                                 best_metric, cfg)

    # loop
    stop_at = min(total_steps, cfg.train.stop_after_steps or total_steps)
    progress = tqdm(total=stop_at, initial=step, desc=SYSTEM, dynamic_ncols=True, leave=False, disable=None)
    while step < stop_at:
        epoch, start_batch = divmod(step, steps_per_epoch)
        ready = time.time()
        for batch in epoch_loader(train_set, cfg.train.batch_size, cfg.train.seed, epoch, start_batch=start_batch,
                                  num_workers=cfg.data.num_workers, rank=training.rank(),
                                  world_size=training.world_size()):
            t0 = time.time()  # data_s: waiting for this batch; s_per_step: the step itself
            model.train()
            lr = training.get_lr(step, cfg.train.lr, cfg.train.warmup_steps, total_steps, cfg.train.min_lr)
            training.set_lr(optimizer, lr)
            out, terms, grad_norm = train_step(ddp_model, batch, optimizer, scaler, trainable, ctx, cfg, device, step)
            step += 1
            progress.update(1)
            if step % cfg.train.log_interval == 0 or step == 1:
                logger.log(step=step, **training.mean_over_ranks(terms), logit_scale=float(out["logit_scale"].detach()),
                           lr=lr, grad_norm=float(grad_norm), s_per_step=time.time() - t0, data_s=t0 - ready)
            if step % cfg.train.eval_interval == 0 or step == total_steps:
                metrics = training.run_on_main(evals.video_clip.evaluate, model, val_set, cfg, device, ctx, "val/")
                logger.log(step=step, **metrics)
                if metrics[f"val/{VALIDATION_METRIC}"] > best_metric:
                    best_metric = metrics[f"val/{VALIDATION_METRIC}"]
                    save("best.pt")
                save("last.pt")
            if step >= stop_at:
                break
            ready = time.time()
    progress.close()
    if step % cfg.train.eval_interval and step != total_steps:
        save("last.pt")

    # cleanup: final test evaluation of best.pt (the finished run only), on rank 0
    if step < total_steps or not training.is_main():
        return {}
    best = out_dir / "best.pt"
    figures = out_dir / "figures"
    figures.mkdir(exist_ok=True)
    args = argparse.Namespace(checkpoint=str(best), split="test", bootstrap=0, visualize=cfg.eval.visualize,
                              images=None, out_dir=str(figures), device=cfg.train.device)
    checkpoint = torch.load(best, map_location="cpu", weights_only=False)
    metrics = evaluate_checkpoint(checkpoint, args)
    training.write_metrics(out_dir / "metrics.json", metrics, best, checkpoint["step"])
    print("test: " + ", ".join(f"{k} {v:.4f}" for k, v in metrics.items()))
    return metrics


# ----------------------------------------------------------------------------------------------------------
# the seed-003 experiment table (B1-B4, C1-C3, with the D1/D2 test metrics), mean ± std over seeds
# Rows beyond the seed: B0 (cross-entropy only, no map, no CLIP) as the reference the B rows add modules to.
# C3's sigmoid arm has exactly B3's switches, so the table shows B3 once and C3 as the linear-gate arm.
# C1 is the seed's channel gate as written (MLP over the map's global average); C1b the project's variant whose
# MLP reads the map-weighted average of the video tokens (models/clip_align_encoders.py).

ROWS = [  # (id, method, switches)
    ("B0", "reference: CE only", ["model.map_guided=false", "loss.clip_weight=0", "model.lambda_token=0"]),
    ("B1", "CLIP alignment only", ["model.map_guided=false", "loss.clip_weight=1.0", "model.lambda_token=0"]),
    ("B2", "map-guided pooling only", ["model.map_guided=true", "model.map_guided_type=spatiotemporal",
                                       "loss.clip_weight=0", "model.lambda_token=0"]),
    ("B3", "full method (= C3 sigmoid gate)", ["model.map_guided=true", "model.map_guided_type=spatiotemporal",
                                               "loss.clip_weight=1.0", "model.lambda_token=0"]),
    ("B4", "+ token-level loss", ["model.map_guided=true", "model.map_guided_type=spatiotemporal",
                                  "loss.clip_weight=1.0", "model.lambda_token=0.1"]),
    ("C1", "channel gating (the seed's encoder)", ["model.map_guided=true", "model.map_guided_type=channel"]),
    ("C1b", "channel gate from the attended tokens", ["model.map_guided=true",
                                                      "model.map_guided_type=channel_attended"]),
    ("C2", "weighted pooling", ["model.map_guided=true", "model.map_guided_type=weighted_pool"]),
    ("C3", "linear gate (sigmoid arm = B3)", ["model.map_guided=true", "model.map_guided_type=spatiotemporal",
                                              "model.map_guided_sigmoid_gate=false"]),
]
COLUMNS = [("accuracy", "Acc"), ("f1_macro", "macro F1"),
           ("retrieval_r1_v2a", "R@1 v2a"), ("retrieval_r5_v2a", "R@5 v2a"),
           ("retrieval_r1_a2v", "R@1 a2v"), ("retrieval_r5_a2v", "R@5 a2v"),
           ("align_sim_gap", "D2 sim gap"), ("align_sim_corr", "D2 corr"),
           ("saliency_on_evidence", "saliency on evidence")]


def run_table(args):
    """Each (row, seed) trains into OUT/<row>-s<seed> with the row's switches after the caller's overrides (a run
    with metrics.json is reused); args.table gets mean ± sample std over seeds. -> {row: {column key: mean}}."""
    out = Path(args.out or "runs/video_clip/table")
    unknown = sorted(set(args.rows or []) - {row_id for row_id, _, _ in ROWS})
    if unknown:
        raise training.ConfigError(f"--rows: unknown row(s) {unknown}; rows are {[row_id for row_id, _, _ in ROWS]}")
    rows = [row for row in ROWS if not args.rows or row[0] in args.rows]
    switches_of = {row_id: switches for row_id, _, switches in rows}

    def train_run(row_id, seed, run_dir):
        train(training.load_config(args.config, list(args.overrides) + switches_of[row_id] +
                                   [f"train.seed={seed}", "eval.visualize=0"]), run_dir)

    results, seconds = tables.collect_runs(list(switches_of), args.seeds, lambda r, s: out / f"{r}-s{s}", train_run)
    cfg = training.load_config(args.config, list(args.overrides))
    keys = [f"test/{key}" for key, _ in COLUMNS]
    lines = [f"Test split of the phantoms ({cfg.data.num_test} clips), mean ± sample std over seeds "
             f"{', '.join(map(str, args.seeds))}; gaze_informativeness = {cfg.data.gaze_informativeness}; "
             f"{cfg.train.steps} steps, {cfg.data.num_train} training clips, {cfg.model.model_class_num} classes.",
             f"Command: `python train_video_clip.py --table {args.table} --out {out}"
             f"{' --seeds ' + ' '.join(map(str, args.seeds)) if list(args.seeds) != [0, 1, 2] else ''}"
             f"{' --rows ' + ','.join(args.rows) if args.rows else ''}"
             f"{' ' + ' '.join(args.overrides) if args.overrides else ''}`",
             (f"Wall time per run {np.mean(seconds):.0f} s (mean of {len(seconds)} new runs); load average "
              f"{os.getloadavg()[0]:.1f} at the end." if seconds else "All runs reused from earlier."),
             ""]
    lines += tables.markdown(["ID", "Method", "Key switches"] + [name for _, name in COLUMNS],
                             [[row_id, method, " ".join("`" + s + "`" for s in switches),
                               *tables.mean_std_cells(results[row_id], keys)] for row_id, method, switches in rows])
    tables.write_table(args.table, lines)
    return {row_id: tables.column_means(results[row_id], [key for key, _ in COLUMNS], "test/")
            for row_id in switches_of}


# ----------------------------------------------------------------------------------------------------------
# main

def main(argv=None):
    parser = training.base_argparser(SYSTEM, __doc__)
    parser.add_argument("--table", default=None, metavar="TABLE.md",
                        help="run the seed-003 ablation table (B0-B4, C1-C3) over --seeds into --out/<row>-s<seed> "
                             "and write mean +- std as markdown to TABLE.md")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="seeds of --table")
    parser.add_argument("--rows", type=lambda text: text.split(","), default=None, metavar="ID,ID",
                        help="only these rows of --table, comma-separated (e.g. C1,C1b); default: all")
    args = parser.parse_args(argv)
    cfg = training.load_config(args.config, args.overrides)
    if cfg.get("system") != SYSTEM:
        raise training.ConfigError(f"{args.config}: system is {cfg.get('system')!r}, expected {SYSTEM!r}")
    if not args.resume:
        build_model(cfg)                  # a wrong model.* combination stops before any data is read
    if args.table:
        return run_table(args)
    return train(cfg, training.make_out_dir(args.out, SYSTEM, "train", args.resume, args.overwrite), args.resume)


if __name__ == "__main__":
    training.run_cli(main, "train_video_clip.py")
