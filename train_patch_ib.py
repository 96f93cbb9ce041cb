"""Patch-IB-CXR training (seed 004): image-report retrieval with global, local and patch-bottleneck alignment.

Commands (repository root):
    python train_patch_ib.py --out runs/patch_ib/tiny                      # tiny CPU default (variant C)
    python evaluate.py runs/patch_ib/tiny/best.pt --split test --visualize 4   # re-measure; PNGs in RUN/vis
    python evaluate.py runs/patch_ib/tiny/best.pt --images my_xrays/       # zero-shot, closest reports, mask
    python train_patch_ib.py model.variant=E --out runs/patch_ib/E         # models A-E of the seed's table
    python train_patch_ib.py --table runs/patch_ib/table.md --out runs/patch_ib/table   # A-E x 3 seeds
    python train_patch_ib.py --resume runs/patch_ib/tiny/last.pt --out runs/patch_ib/tiny
    python train_patch_ib.py --probe runs/patch_ib/tiny/best.pt            # box patches vs the rest (phantoms)
    python train_patch_ib.py --config configs/patch_ib.yaml                # paper scale (BiomedCLIP, open_clip)
    torchrun --nproc_per_node 4 train_patch_ib.py --config configs/patch_ib.yaml   # 4 GPUs, same global batch
    python -m data.mimic_master --root /data/mimic-cxr-jpg                 # build the master JSONL first

Staged training (seed 004 "Model Architecture & Progression"): the configured `phases` run one after the
other (global -> local -> bottleneck); each phase calls set_trainable (printed table), rebuilds the optimizer
and switches the local / bottleneck parts on. Loss = L_NCE-full + loss.local * L_local + loss.sparse *
L_sparse + loss.cons * L_cons + loss.nce_mask * L_NCE-mask (models/patch_ib_losses.py). Validation:
global InfoNCE over the whole val set (one N x N matrix); best.pt = the lowest WITHIN THE CURRENT PHASE, so
the final best.pt always comes from the last phase (an earlier one would hold an untrained mask head).
Writes config.yaml, log.jsonl, last.pt, best.pt and, after the last step, the test evaluation of best.pt
(evals/patch_ib.py, the same call as evaluate.py) into metrics.json and PNGs into vis/.
"""
# ----------------------------------------------------------------------------------------------------------
# imports
import argparse
import fnmatch
import os
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

import evals.patch_ib
import training
from evals import tables
from data.loader import batches_per_epoch, epoch_loader
from models.patch_ib import PatchIB, PatchIBConfig
from models.patch_ib_losses import info_nce, patch_ib_losses

SYSTEM = "patch_ib"


# ----------------------------------------------------------------------------------------------------------
# phase freezing (seed 004 "Model Architecture & Progression"): fnmatch patterns over parameter names, the rest
# frozen. Patterns that match no parameter of the variant (e.g. the mask head of A and B) are left out.

PHASE_TRAINABLE = {
    "global": ["*"],                         # both towers and heads, global InfoNCE
    "local": ["*"],                          # + the local word-patch alignment head
    "bottleneck": ["mask_head.*", "image_proj.*", "text_proj.*", "logit_scale", "word_proj.*", "patch_proj.*"],
}                                            # towers frozen: the mask head learns what to keep


def phase_patterns(model, phase):
    """PHASE_TRAINABLE[phase] without the patterns that match no parameter of the model's variant."""
    names = [n for n, _ in model.named_parameters()]
    return [p for p in PHASE_TRAINABLE[phase] if any(fnmatch.fnmatchcase(n, p) for n in names)]


# ----------------------------------------------------------------------------------------------------------
# data

def build_dataset(cfg, split, check_images=False):
    """Phantoms or the seed-004 master JSONL for split train | val | test; check_images: read every image now."""
    d = cfg.data
    if d.source == "phantom":
        from data.phantom import phantom_split
        n = {"train": d.num_train, "val": d.num_val, "test": d.num_test}[split]
        return phantom_split(split, n, d.image_size, cache_dir=d.get("phantom_cache_dir"),
                             cache=bool(d.get("cache")) and d.num_workers == 0)
    if d.source == "mimic_master":
        from data.mimic_cxr import MimicMasterDataset
        from data.transforms import build_transform
        if not d.master_jsonl or not d.image_root:
            raise training.ConfigError("data.source=mimic_master needs data.master_jsonl and data.image_root")
        return MimicMasterDataset(d.master_jsonl, d.image_root, split,
                                  transform=build_transform(split == "train", d.image_size, mean=(0, 0, 0), std=(1, 1, 1)),
                                  on_error=d.get("on_error", "stop"), check_images=check_images)
    raise training.ConfigError(f"data.source must be phantom or mimic_master, got {d.source!r}")


def build_model(cfg):
    return PatchIB(PatchIBConfig.from_dict(dict(cfg.model)))


def run_model(model, batch, device, use_local=True, use_ib=True):
    return evals.patch_ib.run_model(model, batch["image"], batch["report"], device, use_local, use_ib)


def train_step(model, batch, optimizer, scaler, trainable, ctx, cfg, phase, device, step):
    """One optimizer step of a phase: forward under autocast, the seed-004 loss terms, backward, clip, step.
    -> (model outputs, loss terms, gradient norm)"""
    with ctx:
        out = run_model(model, batch, device, phase.use_local, phase.use_ib)
        terms = patch_ib_losses(out, dict(cfg.loss), all_ranks=training.world_size() > 1)   # torchrun: gathered
    training.check_finite(terms, step)
    scaler.scale(terms["loss"]).backward()
    grad_norm = training.optimizer_step(optimizer, scaler, trainable, cfg.train.grad_clip, step)
    training.unwrap(model).clamp_logit_scale()
    return out, terms, grad_norm


def validation_loss(model, dataset, cfg, device, ctx):
    """global InfoNCE over the whole val set (one batch of N x N), the best.pt criterion"""
    e = evals.patch_ib.embed_dataset(model, dataset, cfg.train.batch_size, device, ctx, cfg.data.num_workers)
    return float(info_nce(e["image"], e["text"], model.logit_scale.exp().detach().float().cpu()))


def evaluate_checkpoint(checkpoint, args):
    """evaluate.py's entry: loaded checkpoint + args -> flat dict of floats (evals/patch_ib.py)."""
    cfg, model, device, ctx = training.model_from_checkpoint(checkpoint, args, build_model, dtype="float32")
    print(f"patch_ib: variant {cfg.model.variant}, checkpoint step {checkpoint.get('step')} "
          f"(phase {checkpoint.get('phase')})")
    dataset = build_dataset(cfg, args.split)
    if getattr(args, "images", None):
        return evals.patch_ib.predict_user_images(model, cfg, args.images, dataset, args.out_dir, device, ctx)
    return evals.patch_ib.evaluate(model, dataset, cfg, device, ctx, f"{args.split}/", getattr(args, "visualize", 0),
                                   getattr(args, "out_dir", None), getattr(args, "bootstrap", 0))


# ----------------------------------------------------------------------------------------------------------
# one run

def train(cfg, out_dir, resume=None):
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)

    start_time = time.time()
    # device, seed, AMP
    if cfg.train.num_threads:
        torch.set_num_threads(cfg.train.num_threads)
    device, ctx, scaler, _ = training.setup_device(cfg.train.device, cfg.train.dtype)
    training.seed_everything(cfg.train.seed)

    # data
    train_set, val_set = build_dataset(cfg, "train"), build_dataset(cfg, "val")
    steps_per_epoch = batches_per_epoch(train_set, cfg.train.batch_size)
    print(f"data: {len(train_set)} train / {len(val_set)} val image-report pairs")
    if cfg.data.source != "phantom":   # the final test's images are read now: a bad one stops (or is reported) here
        build_dataset(cfg, "test", check_images=True)

    # model
    model = build_model(cfg).to(device)
    phase_ends = []
    phases = [training.Config(name=name, **spec) for name, spec in cfg.phases.items()]
    for phase in phases:
        phase_ends.append((phase_ends[-1] if phase_ends else 0) + phase.steps)
    total_steps = phase_ends[-1]

    # resume
    plan, fresh_best = training.resume_rule(resume, out_dir, total_steps)   # another folder, a finished run
    if plan == "done":
        return tables.read_metrics(out_dir)
    training.save_config(cfg, out_dir)
    step, best_metric, resume_ckpt = 0, float("inf"), None
    if resume:
        resume_ckpt = training.load_checkpoint(resume, model, restore_rng=False, config=cfg)
        step, best_metric = resume_ckpt["step"], float("inf") if fresh_best else resume_ckpt["best_metric"]
        print(f"resumed from {resume} at step {step} (phase {resume_ckpt['phase']})")
    logger = training.RunLogger(out_dir, resume_step=step or None)   # a resume drops lines past its step
    stop_at = min(total_steps, cfg.train.stop_after_steps or total_steps)
    progress = tqdm(total=stop_at, initial=step, desc=SYSTEM, dynamic_ncols=True, leave=False, disable=None)

    resumed_phase = resume_ckpt["phase"] if resume_ckpt else None
    for index, phase in enumerate(phases):
        start = phase_ends[index] - phase.steps
        if step >= phase_ends[index]:
            continue
        # best.pt is the best checkpoint OF THE CURRENT PHASE: a later phase switches parts on (the mask
        # head trains only in `bottleneck`), so an earlier phase's checkpoint would hold untrained heads
        if phase.name != resumed_phase:
            best_metric = float("inf")
        resumed_phase = None
        # phase freezing (seed 004 staged training) + optimizer after freezing
        patterns = phase_patterns(model, phase.name)
        print(f"phase {phase.name}: steps {start}-{phase_ends[index]}, use_local={phase.use_local}, "
              f"use_ib={phase.use_ib}, trainable {patterns}")
        trainable = training.set_trainable(model, patterns)
        optimizer = training.adamw(model, phase.lr, cfg.train, device)
        # train.compile; torchrun: DDP rebuilt for each phase's freezing (heads a phase switches off get no gradient)
        ddp_model = training.step_module(model, device, cfg.train, find_unused_parameters=True)
        if resume_ckpt is not None:     # exact resume: RNG always, optimizer state within the same phase
            if resume_ckpt["phase"] == phase.name and resume_ckpt.get("optimizer"):
                optimizer.load_state_dict(resume_ckpt["optimizer"])
            training.set_rng_state(resume_ckpt["rng"])
            resume_ckpt = None

        def save(name):
            training.save_checkpoint(out_dir / name, model, optimizer, scaler, step, step // steps_per_epoch,
                                     phase.name, best_metric, cfg)

        while step < min(phase_ends[index], stop_at):
            epoch, start_batch = divmod(step, steps_per_epoch)
            ready = time.time()
            for batch in epoch_loader(train_set, cfg.train.batch_size, cfg.train.seed, epoch, start_batch=start_batch,
                                      num_workers=cfg.data.num_workers, rank=training.rank(),
                                      world_size=training.world_size()):
                t0 = time.time()  # data_s: waiting for this batch; s_per_step: the step itself
                model.train()
                lr = training.get_lr(step - start, phase.lr, cfg.train.warmup_steps, phase.steps, cfg.train.min_lr)
                training.set_lr(optimizer, lr)
                out, terms, grad_norm = train_step(ddp_model, batch, optimizer, scaler, trainable, ctx, cfg, phase,
                                                   device, step)
                step += 1
                progress.update(1)
                if step % cfg.train.log_interval == 0 or step == 1:
                    extra = {"mask_mean": out["z"].detach().mean()} if "z" in out else {}
                    logger.log(step=step, phase=phase.name, **training.mean_over_ranks({**terms, **extra}),
                               logit_scale=float(out["logit_scale"].detach()), lr=lr, grad_norm=float(grad_norm),
                               s_per_step=time.time() - t0, data_s=t0 - ready)
                if step % cfg.train.eval_interval == 0 or step == total_steps:
                    val = training.run_on_main(validation_loss, model, val_set, cfg, device, ctx)
                    logger.log(step=step, **{"val/nce_full": val})
                    if val < best_metric:
                        best_metric = val
                        save("best.pt")
                    save("last.pt")
                if step >= min(phase_ends[index], stop_at):
                    break
                ready = time.time()
        if step % cfg.train.eval_interval and step != total_steps:
            save("last.pt")
        if step >= stop_at:
            break
    progress.close()

    # cleanup: final test evaluation of best.pt (the same call as `python evaluate.py RUN/best.pt`), rank 0
    if step < total_steps or not training.is_main():
        return {}
    print(f"trained {total_steps} steps in {time.time() - start_time:.0f} s")
    args = argparse.Namespace(checkpoint=str(out_dir / "best.pt"), split="test", bootstrap=0,
                              visualize=cfg.eval.visualize, images=None, out_dir=str(out_dir / "vis"),
                              device=cfg.train.device)
    checkpoint = training.load_checkpoint(out_dir / "best.pt", restore_rng=False)
    metrics = evaluate_checkpoint(checkpoint, args)
    training.write_metrics(out_dir / "metrics.json", metrics, out_dir / "best.pt", checkpoint["step"])
    print(f"test metrics of {out_dir / 'best.pt'} (best val/nce_full {best_metric:.4f} of phase "
          f"{phases[-1].name}): t2i/R@1 {metrics['test/t2i/R@1']:.4f} (chance {metrics['test/t2i/chance_R@1']:.4f}), "
          f"i2t/R@1 {metrics['test/i2t/R@1']:.4f}, zero-shot mean AUROC {metrics['test/zeroshot/auroc/mean']:.3f}; "
          f"wrote {out_dir / 'metrics.json'}, PNGs in {out_dir / 'vis'}")
    return metrics


# ----------------------------------------------------------------------------------------------------------
# the seed-004 ablation table (models A-E), each best.pt measured with evaluate.py

TABLE_COLUMNS = [("t2i/R@1", "t2i R@1"), ("t2i/R@10", "t2i R@10"), ("i2t/R@1", "i2t R@1"), ("i2t/R@10", "i2t R@10"),
                 ("masked/t2i/R@1", "masked t2i R@1"), ("zeroshot/auroc/mean", "zero-shot mean AUROC"),
                 ("mask/sparsity", "mask sparsity (mean z)"), ("mask/energy_in_boxes", "energy in boxes (z)"),
                 ("mask/energy_in_boxes_weights", "energy in boxes (weights used)"),
                 ("mask/box_patch_auroc", "box-patch AUROC of z")]
VARIANT_SWITCHES = {"A": "global CLIP", "B": "+ local align", "C": "+ Patch-IB (soft mask)", "D": "+ soft top-K",
                    "E": "+ hard token drop"}


def run_table(args):
    """Each (variant, seed) trains into OUT/<variant>-s<seed> with `model.variant=<V> train.seed=<s>
    eval.visualize=0` after the caller's overrides (a run with best.pt and metrics.json is reused); every run,
    new or reused, is then measured by `python evaluate.py RUN/best.pt --split test` (which rewrites its
    metrics.json), and args.table gets mean ± sample std over seeds. The phantoms are the same for every seed;
    the seed changes the heads' initialization, dropout and batch order. -> {variant: {column key: mean}}."""
    import evaluate
    out = Path(args.out or "runs/patch_ib/table")
    load_start, start = os.getloadavg()[0], time.time()

    def train_run(variant, seed, run_dir):
        train(training.load_config(args.config, list(args.overrides) + [
            f"model.variant={variant}", f"train.seed={seed}", "eval.visualize=0"]), run_dir)

    def measure(run_dir):
        return evaluate.main([str(run_dir / "best.pt"), "--split", "test", "--device", "cpu"])

    results, seconds = tables.collect_runs(args.variants, args.seeds, lambda v, s: out / f"{v}-s{s}", train_run,
                                           done=("best.pt", "metrics.json"), read=measure)
    cfg = training.load_config(args.config, list(args.overrides))
    steps = " + ".join(f"{name} {spec['steps']}" for name, spec in cfg.phases.items())
    runs = [m for v in args.variants for m in results[v]]
    uniform = [m["test/mask/energy_in_boxes_uniform"] for m in runs if "test/mask/energy_in_boxes_uniform" in m]
    keys = [f"test/{key}" for key, _ in TABLE_COLUMNS]
    data = (f"the phantoms ({cfg.data.num_test} image-report pairs" if cfg.data.source == "phantom" else
            f"{cfg.data.master_jsonl} ({runs[0]['test/retrieval/groups']:.0f} report groups")
    training_pairs = f"{cfg.data.num_train} training pairs" if cfg.data.source == "phantom" else "training split"
    lines = [
        f"Test split of {data}, chance t2i R@1 "
        f"{runs[0]['test/t2i/chance_R@1']:.4f}), best.pt of each run measured with evaluate.py; mean ± sample "
        f"std over seeds {', '.join(map(str, args.seeds))}. Steps {steps}, {training_pairs} "
        f"at {cfg.data.image_size} px, batch {cfg.train.batch_size}, model.mask_apply={cfg.model.mask_apply}."
        + (f" A constant mask's energy in boxes (mean box-area share) is {uniform[0]:.3f}." if uniform else ""),
        f"Command: `python train_patch_ib.py --table {args.table} --out {out}"
        f"{' --seeds ' + ','.join(map(str, args.seeds)) if list(args.seeds) != [0, 1, 2] else ''}"
        f"{' --variants ' + ','.join(args.variants) if list(args.variants) != list('ABCDE') else ''}"
        f"{' ' + ' '.join(args.overrides) if args.overrides else ''}`",
        (f"Wall time per new run {np.mean(seconds):.0f} s (mean of {len(seconds)}, training + its final test "
         f"evaluation); " if seconds else "All runs reused; ")
        + f"table {time.time() - start:.0f} s in all; load average {load_start:.1f} at the start, "
          f"{os.getloadavg()[0]:.1f} at the end.",
        ""]
    lines += tables.markdown(["model", "switches", "seeds"] + [name for _, name in TABLE_COLUMNS],
                             [[v, VARIANT_SWITCHES.get(v, ""), len(results[v]), *tables.mean_std_cells(results[v], keys, "—")]
                              for v in args.variants])
    tables.write_table(args.table, lines)
    return {v: tables.column_means(results[v], [key for key, _ in TABLE_COLUMNS], "test/")
            for v in args.variants}


# ----------------------------------------------------------------------------------------------------------
# main

def main(argv=None):
    parser = training.base_argparser(SYSTEM, __doc__)
    parser.add_argument("--table", default=None, metavar="TABLE.md",
                        help="the seed's ablation table: train (or reuse) every --variants x --seeds run into "
                             "--out/<variant>-s<seed>, measure each best.pt with evaluate.py, write mean +- std")
    parser.add_argument("--seeds", default="0,1,2", help="seeds of --table, comma-separated")
    parser.add_argument("--variants", default="A,B,C,D,E", help="rows of --table, comma-separated")
    parser.add_argument("--probe", default=None, metavar="CHECKPOINT", help="the pooling and knock-out probes of "
                        "a checkpoint on phantoms (evals/patch_ib_probe.py): box patches vs the other patches")
    parser.add_argument("--probe-split", default="test", choices=("val", "test"))
    args = parser.parse_args(argv)
    if args.probe:
        from evals.patch_ib_probe import probe
        checkpoint = training.load_checkpoint(args.probe, restore_rng=False)
        cfg, model, _, _ = training.model_from_checkpoint(checkpoint, argparse.Namespace(device="cpu"), build_model)
        return probe(model, build_dataset(cfg, args.probe_split), args.probe, args.probe_split)
    args.seeds = [int(s) for s in args.seeds.split(",")]
    args.variants = args.variants.split(",")
    cfg = training.load_config(args.config, args.overrides)
    if cfg.get("system") != SYSTEM:
        raise training.ConfigError(f"{args.config}: system is {cfg.get('system')!r}, expected {SYSTEM!r}")
    if args.table:
        return run_table(args)
    return train(cfg, training.make_out_dir(args.out, SYSTEM, "train", args.resume, args.overwrite), args.resume)


if __name__ == "__main__":
    training.run_cli(main, "train_patch_ib.py")
