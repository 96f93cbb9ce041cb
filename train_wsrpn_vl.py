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
    # paper scale, one GPU (seed 000): MIMIC-CXR with report-derived statement captions, evaluated on the NIH
    # ChestX-ray14 boxes (WSRPN protocol); DenseNet-121 + Bio_ClinicalBERT (edit data.root and data.eval_root)
    python train_wsrpn_vl.py --config configs/wsrpn_vl.yaml
    # the same on 4 GPUs: the same global batch, 16 images per GPU (DenseNet batch norm: per-GPU statistics)
    torchrun --nproc_per_node 4 train_wsrpn_vl.py --config configs/wsrpn_vl.yaml
    # the WSRPN reference setting: NIH ChestX-ray14 train patients, label captions (no location)
    python train_wsrpn_vl.py --config configs/wsrpn_vl.yaml data.dataset=nih data.root=NIH data.caption=labels
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
import time
from pathlib import Path
from types import SimpleNamespace

import torch
import torch.nn.functional as F
from tqdm import tqdm

import evals.wsrpn_vl
import training
from evals import tables
from data.captions import DetectionCaptionDataset
from data.loader import batches_per_epoch, epoch_loader
from data.transforms import build_transform
from metrics.summary import mean_std
from models.vl_encoder import TextEncoder, WsrpnVL
from models.vl_losses import ContrastiveVLLoss, LossWeightScheduler, gaussian_entropy, gaussian_scale, vl_consistency
from models.wsrpn import WSRPN, WsrpnConfig

SYSTEM = "wsrpn_vl"
WSRPN_FIELDS = set(WsrpnConfig.__dataclass_fields__) - {"num_classes"}


# ----------------------------------------------------------------------------------------------------------
# freezing (seed 000): the same in all three phases (they differ in loss weights only, models/vl_losses.py).
# The text encoder (Bio_ClinicalBERT) is frozen and lives outside the model; fnmatch patterns, the rest frozen.

TRAINABLE = {"image side": ["wsrpn.*"], "text branch": ["shared_projection.*"]}   # text branch: model.use_vl_branch


def trainable_patterns(cfg):
    return TRAINABLE["image side"] + (TRAINABLE["text branch"] if cfg.model.use_vl_branch else [])


# ----------------------------------------------------------------------------------------------------------
# data

def build_dataset(cfg, split, check_images=False):
    """DetectionCaptionDataset of split train | val | test (val/test: images with >= 1 box only). check_images:
    NIH images are read now (data.on_error says what a bad one does)."""
    d = cfg.data
    evaluation = split != "train"
    needs = {"findings": ("phantom",), "report": ("phantom", "mimic"), "statements": ("phantom", "mimic")}
    if d.dataset in ("phantom", "nih", "mimic") and d.dataset not in needs.get(d.caption, (d.dataset,)):
        raise training.ConfigError(f"data.caption={d.caption} needs data.dataset in {needs[d.caption]} (NIH has "
                                   f"labels only: data.caption=labels), got data.dataset={d.dataset}")
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
                          boxes_only=evaluation, on_error=d.on_error, check_images=check_images)
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
    """The frozen caption encoder (seed 000: vl_freeze_text_encoder=true). It lives outside the model: the optimizer
    and the checkpoints never hold it, so fine-tuning it is refused rather than silently not done."""
    m = cfg.model
    if not m.vl_freeze_text_encoder:
        raise training.ConfigError("model.vl_freeze_text_encoder=false is not supported: the text encoder stays "
                                   "frozen outside the trained model (seed 000 freezes it); set it true")
    return TextEncoder(m.vl_text_model, max_length=m.text_max_length, freeze=True, pretrained=m.pretrained)


ROI_BRANCH = ["wsrpn.roi_tokens", "wsrpn.roi_attention.*", "wsrpn.gaussian_predictor.*", "wsrpn.soft_roi_pool.*"]


def build_optimizer(model, cfg, device):
    """AdamW over what trains (call after set_trainable); the ROI branch at lr * train.roi_lr_scale."""
    return training.adamw(model, cfg.train.lr, cfg.train, device,
                          lr_scales={pattern: cfg.train.roi_lr_scale for pattern in ROI_BRANCH})


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


def train_step(model, batch, optimizer, scaler, trainable, ctx, cfg, weights, text_encoder, contrastive_loss, device,
               step):
    """One optimizer step: n_views augmented views per image, forward under autocast, the phase's weighted loss
    terms, backward, clip, step (fp16's scaler skips inf steps itself). -> (out, loss, terms, stats, grad norm)"""
    n_views = cfg.train.n_views
    images = augment_views(batch["image"], n_views).to(device)                  # (B * V, 3, H, W)
    labels = batch["labels"].repeat_interleave(n_views, dim=0).to(device)       # (B * V, C)
    captions = [c for c in batch["caption"] for _ in range(n_views)]
    with ctx:
        out = model(images)
        terms, stats = loss_terms(training.unwrap(model), out, labels, captions, weights, cfg, text_encoder,
                                  contrastive_loss)
    loss = sum(weights[k] * terms[k] for k in ("detection", "contrastive", "consistency", "gaussian_entropy",
                                               "gaussian_scale") if k in terms)
    training.check_finite({"loss": loss, **terms}, step)
    scaler.scale(loss).backward()
    grad_norm = training.optimizer_step(optimizer, scaler, trainable, cfg.train.grad_clip, step)
    return out, loss, terms, stats, grad_norm


# ----------------------------------------------------------------------------------------------------------
# evaluation (evals/wsrpn_vl.py; evaluate.py calls evaluate_checkpoint, the run's final test too)

def evaluate_checkpoint(checkpoint, args, text_encoder=None):
    """The evaluate.py contract: checkpoint dict + args (split, bootstrap, visualize, images, out_dir, device)
    -> flat dict of floats. With args.images: boxes on user images (predictions.json + PNGs), returns counts."""
    cfg = training.apply_overrides(training.Config.wrap(checkpoint["config"]), list(getattr(args, "overrides", ())))
    device = torch.device(args.device if args.device not in (None, "auto") else
                          ("cuda" if torch.cuda.is_available() else "cpu"))
    _, ctx, _, _ = training.setup_device(device.type, cfg.train.dtype if device.type == "cuda" else "float32")
    text_encoder = text_encoder or build_text_encoder(cfg).to(device)
    model = build_model(cfg, text_encoder.hidden_size).to(device)
    training.load_weights(model, checkpoint, getattr(args, "checkpoint", None) or "checkpoint")
    if args.images:
        return evals.wsrpn_vl.predict_user_images(model, cfg, args.images, args.out_dir, device, ctx)
    use_text = text_encoder if cfg.model.use_vl_branch else None
    return evals.wsrpn_vl.evaluate(model, build_dataset(cfg, args.split), cfg, device, ctx, "", args.visualize,
                                   args.out_dir, args.bootstrap, text_encoder=use_text)


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
    arms = range(len(COMPARE_ARMS))

    def run_dir_of(index, seed):
        return out_dir / f"arm{index}-seed{seed}"

    def arm_argv(index, seed):
        last = run_dir_of(index, seed) / "last.pt"        # an interrupted arm continues where it stopped
        return argv + ["--out", str(run_dir_of(index, seed)), *(["--resume", str(last)] if last.exists() else []),
                       *COMPARE_ARMS[index][1], f"train.seed={seed}"]

    if jobs > 1:
        script = str(Path(__file__).resolve())
        training.run_processes([(f"compare: {run_dir_of(i, seed).name}", [script, *arm_argv(i, seed)],
                                 run_dir_of(i, seed) / "stdout.log") for i in arms for seed in range(seeds)
                                if not (run_dir_of(i, seed) / "metrics.json").exists()], jobs)

    def train_run(index, seed, run_dir):
        if jobs > 1:    # its process failed: the log says why
            raise RuntimeError(f"compare: {run_dir} has no metrics.json (see {run_dir / 'stdout.log'})")
        main(arm_argv(index, seed))

    results, _ = tables.collect_runs(arms, range(seeds), run_dir_of, train_run)
    table = {COMPARE_ARMS[i][0]: {k: [r[k] for r in results[i] if k in r] for k in COMPARE_KEYS} for i in arms}
    body = [[key, *(mean_std(table[arm][key]) for arm in table)] for key in COMPARE_KEYS]
    tables.write_table(out_dir / "comparison.md", tables.markdown(["metric", *table], body),
                       out_dir / "comparison.json", table)
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
    out_dir = training.make_out_dir(args.out, SYSTEM, f"phase{args.phase}", args.resume, args.overwrite)
    t = cfg.train

    # --- device, seed, AMP
    if t.num_threads > 0:
        torch.set_num_threads(t.num_threads)
    training.seed_everything(t.seed)
    device, ctx, scaler, dtype = training.setup_device(t.device, t.dtype)
    print(f"device {device}, dtype {dtype}")

    # --- data
    train_set, val_set = build_dataset(cfg, "train"), build_dataset(cfg, "val")
    print(f"train {len(train_set)} images, val {len(val_set)} images with boxes; classes {cfg.data.classes}")
    steps_per_epoch = batches_per_epoch(train_set, t.batch_size)
    if steps_per_epoch == 0:
        raise training.ConfigError(f"train.batch_size {t.batch_size} is larger than the {len(train_set)} train images")
    total_steps = steps_per_epoch * t.epochs
    if cfg.data.dataset != "phantom" and cfg.eval.final_test:   # the final test's NIH images are read now: a bad
        build_dataset(cfg, "test", check_images=True)            # one stops (or is reported) here, not after training
    plan, fresh_best = training.resume_rule(args.resume, out_dir, total_steps)   # another folder, a finished run
    if plan == "done":
        return out_dir
    training.save_config(cfg, out_dir)

    # --- model (the frozen text encoder lives outside it, so checkpoints do not copy it)
    text_encoder = build_text_encoder(cfg).to(device)
    model = build_model(cfg, text_encoder.hidden_size).to(device)
    scheduler = build_scheduler(cfg)
    contrastive_loss = ContrastiveVLLoss(cfg.loss.contrastive_temperature)

    # --- freezing, optimizer (AdamW; reference: constant lr 1.5e-4, weight decay 1e-6)
    trainable = training.set_trainable(model, trainable_patterns(cfg))
    optimizer = build_optimizer(model, cfg, device)

    # --- resume
    step, start_epoch, start_batch, best_metric, best_step = 0, 0, 0, float("-inf"), 0
    if args.resume:
        ckpt = training.load_checkpoint(args.resume, model, optimizer, scaler, config=cfg)
        step, start_epoch, start_batch = ckpt["step"], ckpt["epoch"], ckpt.get("batch_in_epoch", 0)
        best_metric, best_step = ckpt["best_metric"], ckpt.get("best_step", 0)
        print(f"resumed {args.resume}: step {step}, epoch {start_epoch}, batch {start_batch}")
        if fresh_best:   # another folder: its best.pt is the best of the validations made there
            best_metric = float("-inf")
    logger = training.RunLogger(out_dir, resume_step=step or None)   # a resume drops lines past its step

    def save(path, epoch, batch_in_epoch):
        training.save_checkpoint(path, model, optimizer, scaler, step, epoch, scheduler.phase(epoch), best_metric, cfg,
                                 tokenizer=text_encoder.tokenizer, batch_in_epoch=batch_in_epoch, best_step=best_step)

    last_phase_start = steps_per_epoch * cfg.loss.gaussian_start_epoch   # the first step of the last loss phase

    def validate(epoch, batch_in_epoch):
        """Validation; -> True when early stopping ends the run: train.early_stop_steps steps of the last loss
        phase without a better eval.select_metric (the reference: validation every 500 steps, stop after 10k)."""
        nonlocal best_metric, best_step
        metrics = training.run_on_main(evals.wsrpn_vl.evaluate_detection, model, val_set, cfg, device, ctx,
                                       text_encoder, rodeo_too=cfg.eval.select_metric != "map")
        logger.log(step=step, epoch=epoch, phase=scheduler.phase(epoch), **{f"val/{k}": v for k, v in metrics.items()})
        if metrics[cfg.eval.select_metric] > best_metric:
            best_metric, best_step = metrics[cfg.eval.select_metric], step
            save(out_dir / "best.pt", *((epoch + 1, 0) if batch_in_epoch == steps_per_epoch else (epoch, batch_in_epoch)))
        model.train()
        patience = t.early_stop_steps
        return bool(patience) and step > last_phase_start and step - max(best_step, last_phase_start) >= patience

    # --- loop
    stop_after = None if args.phase == "all" else int(args.phase)
    finished, early_stopped, ddp_model, ddp_text = False, False, None, None
    for epoch in range(start_epoch, t.epochs):
        weights = scheduler.weights(epoch)
        if stop_after is not None and weights["phase"] > stop_after:
            break
        # torchrun: DDP over the parameters this phase's loss reaches; phase 1 has no text-branch terms, so the
        # shared projection is frozen there (it gets no gradient in one process either)
        text_terms = cfg.model.use_vl_branch and (weights["contrastive"] > 0 or weights["consistency"] > 0)
        if training.world_size() > 1 and text_terms != ddp_text:
            patterns = TRAINABLE["image side"] + (TRAINABLE["text branch"] if text_terms else [])
            trainable = training.set_trainable(model, patterns)
            ddp_model, ddp_text = training.step_module(model, device, t), text_terms
        elif ddp_model is None:         # one process: the model with train.compile / channels_last
            ddp_model = training.step_module(model, device, t)
        model.train()
        loader = epoch_loader(train_set, t.batch_size, t.seed, epoch, start_batch=start_batch,
                              num_workers=cfg.data.num_workers, rank=training.rank(), world_size=training.world_size())
        progress = tqdm(loader, desc=f"epoch {epoch} phase {weights['phase']}", initial=start_batch,
                        total=steps_per_epoch, leave=False, disable=None)
        ready = time.perf_counter()
        for batch_index, batch in enumerate(progress, start=start_batch):
            started = time.perf_counter()  # data_s: waiting for this batch; s_per_step: the step itself
            lr = training.get_lr(step, t.lr, t.warmup_steps, total_steps, t.min_lr)
            training.set_lr(optimizer, lr)
            out, loss, terms, stats, grad_norm = train_step(ddp_model, batch, optimizer, scaler, trainable, ctx,
                                                            cfg, weights, text_encoder, contrastive_loss, device, step)
            step += 1
            logger.log(echo=step % t.log_interval == 0, step=step, epoch=epoch, phase=weights["phase"],
                       **{f"weight/{k}": v for k, v in weights.items() if k != "phase"},
                       **training.mean_over_ranks({"loss": loss, **terms, **stats, "sigma_mean": out["sigma"].mean()}),
                       lr=lr, grad_norm=grad_norm.item(),
                       s_per_step=time.perf_counter() - started, data_s=started - ready)
            if t.eval_interval and step % t.eval_interval == 0 and validate(epoch, batch_index + 1):
                early_stopped = True
                save(out_dir / "last.pt", epoch, batch_index + 1)
                print(f"early stop at step {step}: no better val {cfg.eval.select_metric} for {step - max(best_step, last_phase_start)} "
                      f"steps (train.early_stop_steps {t.early_stop_steps}; best {best_metric:.4f} at step {best_step})")
                break
            if t.stop_after_steps and step >= t.stop_after_steps:
                finished = True
                save(out_dir / "last.pt", epoch, batch_index + 1)
                break
            ready = time.perf_counter()
        start_batch = 0
        if finished or early_stopped:
            break
        save(out_dir / "last.pt", epoch + 1, 0)
        if (not t.eval_interval or (epoch + 1 == t.epochs and step % t.eval_interval)) and validate(epoch, steps_per_epoch):
            print(f"early stop after epoch {epoch}: no better val {cfg.eval.select_metric} for "
                  f"{step - max(best_step, last_phase_start)} steps (train.early_stop_steps {t.early_stop_steps})")
            break
    if finished and step < total_steps:   # stopped early (train.stop_after_steps): resume from last.pt, no test
        print(f"stopped at step {step} of {total_steps} (train.stop_after_steps); --resume {out_dir / 'last.pt'}")
        return out_dir

    # --- final test evaluation of best.pt (last.pt if no validation ran) into metrics.json, on rank 0
    if not training.is_main():
        return out_dir
    best = out_dir / "best.pt" if (out_dir / "best.pt").exists() else out_dir / "last.pt"
    if cfg.eval.final_test and best.exists():
        eval_args = SimpleNamespace(checkpoint=str(best), split="test", bootstrap=cfg.eval.bootstrap,
                                    visualize=cfg.eval.visualize, images=None, out_dir=str(out_dir / "test"),
                                    device=str(device))
        Path(eval_args.out_dir).mkdir(parents=True, exist_ok=True)
        checkpoint = torch.load(best, map_location="cpu", weights_only=False)
        metrics = evaluate_checkpoint(checkpoint, eval_args, text_encoder=text_encoder)
        training.write_metrics(out_dir / "metrics.json", metrics, best, checkpoint["step"])
        per_class = tuple("/" + name for name in cfg.data.classes)          # those stay in metrics.json only
        print("test:", " | ".join(f"{k} {v:.4f}" for k, v in metrics.items() if not k.endswith(per_class)))
    return out_dir


if __name__ == "__main__":
    training.run_cli(main, "train_wsrpn_vl.py")
