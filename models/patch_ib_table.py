"""The seed-004 ablation table (models A-E), measured with evaluate.py, run by

    python train_patch_ib.py --table TABLE.md --out DIR [--seeds 0,1,2] [--variants A,B,C,D,E] [overrides]

Each (variant, seed) trains into DIR/<variant>-s<seed> with `model.variant=<V> train.seed=<s>
eval.visualize=0` added after the caller's overrides; a finished run (best.pt and metrics.json present) is
reused, so an interrupted table resumes. Every run, new or reused, is then measured by
`python evaluate.py DIR/<V>-s<s>/best.pt --split test` (evaluate.main, which rewrites metrics.json beside
the checkpoint), and the markdown table holds mean ± sample std (n - 1) over seeds. The phantom data are
the same for every seed; the seed changes the heads' initialization, dropout and batch order.
"""
import math
import os
import time
from pathlib import Path

import numpy as np

import training
from metrics.summary import mean_std

COLUMNS = [("t2i/R@1", "t2i R@1"), ("t2i/R@10", "t2i R@10"), ("i2t/R@1", "i2t R@1"), ("i2t/R@10", "i2t R@10"),
           ("masked/t2i/R@1", "masked t2i R@1"), ("zeroshot/auroc/mean", "zero-shot mean AUROC"),
           ("mask/sparsity", "mask sparsity (mean z)"), ("mask/energy_in_boxes", "energy in boxes (z)"),
           ("mask/energy_in_boxes_weights", "energy in boxes (weights used)"),
           ("mask/box_patch_auroc", "box-patch AUROC of z")]
SWITCHES = {"A": "global CLIP", "B": "+ local align", "C": "+ Patch-IB (soft mask)", "D": "+ soft top-K",
            "E": "+ hard token drop"}


def run_table(args, train):
    """Train / reuse every (variant, seed), measure each best.pt with evaluate.py, write args.table."""
    import evaluate
    out = Path(args.out or "runs/patch_ib/table")
    load_start, start = os.getloadavg()[0], time.time()
    results, seconds = {}, []
    for variant in args.variants:
        for seed in args.seeds:
            run_dir = out / f"{variant}-s{seed}"
            if not ((run_dir / "best.pt").is_file() and (run_dir / "metrics.json").is_file()):
                cfg = training.load_config(args.config, list(args.overrides) + [
                    f"model.variant={variant}", f"train.seed={seed}", "eval.visualize=0"])
                begin = time.time()
                train(cfg, run_dir)
                seconds.append(time.time() - begin)
            metrics = evaluate.main([str(run_dir / "best.pt"), "--split", "test", "--device", "cpu"])
            results.setdefault(variant, []).append(metrics)
            print(f"table: {variant} seed {seed}: test/t2i/R@1 {metrics['test/t2i/R@1']:.4f}")
    cfg = training.load_config(args.config, list(args.overrides))
    steps = " + ".join(f"{name} {spec['steps']}" for name, spec in cfg.phases.items())
    runs = [m for v in args.variants for m in results[v]]
    uniform = [m["test/mask/energy_in_boxes_uniform"] for m in runs if "test/mask/energy_in_boxes_uniform" in m]
    lines = [
        f"Test split of the phantoms ({cfg.data.num_test} image-report pairs, chance t2i R@1 "
        f"{runs[0]['test/t2i/chance_R@1']:.4f}), best.pt of each run measured with evaluate.py; mean ± sample "
        f"std over seeds {', '.join(map(str, args.seeds))}. Steps {steps}, {cfg.data.num_train} training "
        f"pairs at {cfg.data.image_size} px, batch {cfg.train.batch_size}."
        + (f" A constant mask's energy in boxes (mean box-area share) is {uniform[0]:.3f}." if uniform else ""),
        f"Command: `python train_patch_ib.py --table {args.table} --out {out}"
        f"{' --seeds ' + ','.join(map(str, args.seeds)) if list(args.seeds) != [0, 1, 2] else ''}"
        f"{' --variants ' + ','.join(args.variants) if list(args.variants) != list('ABCDE') else ''}"
        f"{' ' + ' '.join(args.overrides) if args.overrides else ''}`",
        (f"Wall time per new run {np.mean(seconds):.0f} s (mean of {len(seconds)}, training + its final test "
         f"evaluation); " if seconds else "All runs reused; ")
        + f"table {time.time() - start:.0f} s in all; load average {load_start:.1f} at the start, "
          f"{os.getloadavg()[0]:.1f} at the end (2-core CPU, one torch thread per run).",
        "",
        "| model | switches | seeds | " + " | ".join(name for _, name in COLUMNS) + " |",
        "| --- | --- | --- | " + " | ".join("---" for _ in COLUMNS) + " |"]
    means = {}
    for variant in args.variants:
        seeds = results[variant]
        cells = [mean_std([m.get(f"test/{key}", math.nan) for m in seeds], missing="—") for key, _ in COLUMNS]
        means[variant] = {key: float(np.nanmean([m.get(f"test/{key}", math.nan) for m in seeds]))
                          if any(f"test/{key}" in m for m in seeds) else math.nan for key, _ in COLUMNS}
        lines.append(f"| {variant} | {SWITCHES.get(variant, '')} | {len(seeds)} | " + " | ".join(cells) + " |")
    Path(args.table).parent.mkdir(parents=True, exist_ok=True)
    Path(args.table).write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return means
