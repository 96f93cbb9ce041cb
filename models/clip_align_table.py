"""The seed-003 experiment table (B1-B4, C1-C3, with the D1/D2 test metrics), run by
`python train_video_clip.py --table TABLE.md --out DIR [--seeds 0 1 2] [overrides]`.

Each row is a list of the seed's switches added after the caller's overrides; each (row, seed) trains into
DIR/<row>-s<seed> (a finished run, i.e. one with metrics.json, is reused, so an interrupted table resumes)
and the markdown table holds mean +- sample std (n - 1) over seeds of the test metrics.
Rows beyond the seed: B0 (cross-entropy only, no map, no CLIP) as the reference the B rows add modules to.
C3's sigmoid arm has exactly B3's switches, so the table shows B3 once and C3 as the linear-gate arm.
"""
import json
import math
import os
import time
from pathlib import Path

import numpy as np

import training
from metrics.summary import mean_std

ROWS = [  # (id, method, switches)
    ("B0", "reference: CE only", ["model.map_guided=false", "loss.clip_weight=0", "model.lambda_token=0"]),
    ("B1", "CLIP alignment only", ["model.map_guided=false", "loss.clip_weight=1.0", "model.lambda_token=0"]),
    ("B2", "map-guided pooling only", ["model.map_guided=true", "model.map_guided_type=spatiotemporal",
                                       "loss.clip_weight=0", "model.lambda_token=0"]),
    ("B3", "full method (= C3 sigmoid gate)", ["model.map_guided=true", "model.map_guided_type=spatiotemporal",
                                               "loss.clip_weight=1.0", "model.lambda_token=0"]),
    ("B4", "+ token-level loss", ["model.map_guided=true", "model.map_guided_type=spatiotemporal",
                                  "loss.clip_weight=1.0", "model.lambda_token=0.1"]),
    ("C1", "channel gating", ["model.map_guided=true", "model.map_guided_type=channel"]),
    ("C2", "weighted pooling", ["model.map_guided=true", "model.map_guided_type=weighted_pool"]),
    ("C3", "linear gate (sigmoid arm = B3)", ["model.map_guided=true", "model.map_guided_type=spatiotemporal",
                                              "model.map_guided_sigmoid_gate=false"]),
]
COLUMNS = [("accuracy", "Acc"), ("f1_macro", "macro F1"),
           ("retrieval_r1_v2a", "R@1 v2a"), ("retrieval_r5_v2a", "R@5 v2a"),
           ("retrieval_r1_a2v", "R@1 a2v"), ("retrieval_r5_a2v", "R@5 a2v"),
           ("align_sim_gap", "D2 sim gap"), ("align_sim_corr", "D2 corr"),
           ("saliency_on_evidence", "saliency on evidence")]


def _nanmean(values):
    v = [x for x in values if x is not None and not math.isnan(x)]
    return float(np.mean(v)) if v else math.nan


def run_table(args, train):
    """Train every (row, seed), then write the markdown table to args.table; returns the per-row means."""
    out = Path(args.out or "runs/video_clip/table")
    results, seconds = {}, []
    for row_id, _, switches in ROWS:
        for seed in args.seeds:
            run_dir = out / f"{row_id}-s{seed}"
            if (run_dir / "metrics.json").is_file():
                metrics = json.loads((run_dir / "metrics.json").read_text())
            else:
                cfg = training.load_config(args.config, list(args.overrides) + switches +
                                           [f"train.seed={seed}", "eval.visualize=0"])
                start = time.time()
                metrics = train(cfg, run_dir)
                seconds.append(time.time() - start)
            results.setdefault(row_id, []).append(metrics)
            print(f"table: {row_id} seed {seed}: test/accuracy {metrics['test/accuracy']:.3f}")
    cfg = training.load_config(args.config, list(args.overrides))
    lines = [f"Test split of the phantoms ({cfg.data.num_test} clips), mean ± sample std over seeds "
             f"{', '.join(map(str, args.seeds))}; gaze_informativeness = {cfg.data.gaze_informativeness}; "
             f"{cfg.train.steps} steps, {cfg.data.num_train} training clips, {cfg.model.model_class_num} classes.",
             f"Command: `python train_video_clip.py --table {args.table} --out {out}"
             f"{' --seeds ' + ' '.join(map(str, args.seeds)) if list(args.seeds) != [0, 1, 2] else ''}"
             f"{' ' + ' '.join(args.overrides) if args.overrides else ''}`",
             (f"Wall time per run {np.mean(seconds):.0f} s (mean of {len(seconds)} new runs); load average "
              f"{os.getloadavg()[0]:.1f} at the end." if seconds else "All runs reused from earlier."),
             "",
             "| ID | Method | Key switches | " + " | ".join(name for _, name in COLUMNS) + " |",
             "| --- | --- | --- | " + " | ".join("---" for _ in COLUMNS) + " |"]
    means = {}
    for row_id, method, switches in ROWS:
        runs = results[row_id]
        cells = [mean_std([m.get(f"test/{key}", math.nan) for m in runs]) for key, _ in COLUMNS]
        means[row_id] = {key: _nanmean([m.get(f"test/{key}", math.nan) for m in runs]) for key, _ in COLUMNS}
        lines.append(f"| {row_id} | {method} | {' '.join('`' + s + '`' for s in switches)} | " + " | ".join(cells) + " |")
    Path(args.table).write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return means
