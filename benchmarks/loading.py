"""Does data loading keep up with tiny training? Phantom speed and loader throughput, side by side.

    python -m benchmarks.loading                 # ~1 minute on 2 cores; prints a markdown table

Measured in one run, on this machine:
1. phantom generation, one process, images/s at 128 and 224 px (no transform);
2. the training DataLoader (phantoms, batch 16, 128 px, the seeded wrapper, collate) with 0 and 2 workers,
   with 0 workers from the dataset's in-memory cache (ChestPhantomDataset(cache=True), epochs >= 2), and
   with 2 workers from its disk cache (ChestPhantomDataset(cache_dir=...), filled by a first pass), and
   the same with data.sample.collate(one_block=False) (a shared-memory block per key instead of per batch);
3. a reference tiny training step at the same batch: a ViT of the tiny-hub size (128 px, patch 16,
   width 128, 4 blocks) forward + backward + AdamW step, on one fixed batch and then fed by the
   2-worker loaders (if the two rates agree, loading does not limit training).
The ratio (loader samples/s) / (training samples/s) is the figure that matters: >= 10 means loading
never limits the tiny runs. Both sides compete for the same 2 cores, as they do in a real run.

    python -m benchmarks.loading --systems       # ~1.5 minutes more: the five tiny training runs themselves
                                             # (they load the tiny hub: built on first use, ~4 min)

4. for each root script, its own tiny step and its own training data, side by side: the script runs ~30
   steps of its cheapest phase (the one where loading has least time) on its tiny config in a child
   process; the median of the logged `s_per_step` (the step itself) gives its samples/s, and the logged
   `data_s` (time waiting for each batch) the share of that run spent waiting. The data rates are the
   script's own `build_dataset` at its batch size, measured in this process after a first epoch: with
   0 workers and the config's caching (the default), and with 2 workers (chest phantoms from the disk
   cache). Concept CAM stage 2 trains on a table of backbone features made once (no images, no
   DataLoader): its data rate is batch / median data_s of the run.
"""
import argparse
import functools
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

from data.loader import SeededDataset, epoch_loader
from data.phantom import ChestPhantomDataset, make_chest_phantom
from data.sample import collate


def phantom_rate(size, seconds):
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        make_chest_phantom(seed=7, index=n, size=size)
        n += 1
    return n / (time.perf_counter() - start)


def loader_rate(dataset, batch_size, workers, batches, collate_fn=collate):
    loader = epoch_loader(dataset, batch_size, seed=0, epoch=0, num_workers=workers, collate_fn=collate_fn)
    it = iter(loader)
    next(it)  # worker start-up is paid once per epoch; leave it out of the rate
    start = time.perf_counter()
    for _ in range(batches):
        next(it)
    return batches * batch_size / (time.perf_counter() - start)


def training_rate(batch_size, size, steps, loader=None):
    """Samples/s of the reference step on one fixed batch, or on batches drawn from `loader`."""
    import timm
    torch.manual_seed(0)
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=size, embed_dim=128,
                              depth=4, num_heads=4, num_classes=14)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    x, y = torch.rand(batch_size, 3, size, size), torch.rand(batch_size, 14).round()
    batches = iter(loader) if loader is not None else None
    for i in range(steps + 2):
        if i == 2:
            start = time.perf_counter()
        if batches is not None:
            x = next(batches)["image"]
            y = torch.rand(batch_size, 14).round()
        loss = nn.functional.binary_cross_entropy_with_logits(model(x), y)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    return steps * batch_size / (time.perf_counter() - start)


# (script, cheapest phase, samples per optimizer step, override that makes the training data small,
#  arguments of the timed child run). The cheapest phase: WSRPN phase 1 (no text encoder), Concept CAM
# stage 2 (heads on cached backbone features; stage 1 run first for its checkpoint), CheXQuery phase 1
# (decoder frozen; 2 micro-batches of 16 per step), Patch-IB phase "global", VideoAttentionCLIP (one phase).
SYSTEMS = [
    ("train_wsrpn_vl", "phase 1", 16, "data.train_samples",
     ["--phase", "1", "train.stop_after_steps=30", "train.log_interval=1", "eval.final_test=false", "data.val_samples=16"]),
    ("train_concept_cam", "stage 2", 16, "data.num_train",
     ["--stage", "2", "train.stop_after_steps=40", "train.log_interval=1", "data.num_val=16", "data.num_test=16",
      "stage2.epochs=10"]),
    ("train_chexquery", "phase 1", 32, "data.num_train",
     ["--phase", "1", "train.stop_after_steps=15", "train.log_interval=1", "eval.final_test=false", "data.num_val=16"]),
    ("train_patch_ib", "global", 32, "data.num_train",
     ["train.stop_after_steps=30", "train.log_interval=1", "data.num_val=16", "data.num_test=16"]),
    ("train_video_clip", "one phase", 32, "data.num_train",
     ["train.stop_after_steps=30", "train.log_interval=1", "data.num_val=16", "data.num_test=16"]),
]


def run_script(script, args, out_dir):
    """Run `python SCRIPT.py --out OUT_DIR ARGS` quietly; -> the rows of its log.jsonl that timed a step."""
    command = [sys.executable, f"{script}.py", "--out", str(out_dir), *args]
    result = subprocess.run(command, capture_output=True, text=True, check=False,
                            cwd=Path(__file__).resolve().parent.parent)
    if result.returncode:
        raise RuntimeError(f"{' '.join(command)} failed:\n{result.stdout[-2000:]}\n{result.stderr[-2000:]}")
    rows = [json.loads(line) for line in (Path(out_dir) / "log.jsonl").read_text().splitlines()]
    return [row for row in rows if "s_per_step" in row]


def system_rows(work_dir, batches=40):
    """Per root script: (name, step samples/s, its data samples/s at the default 0 workers, at 2 workers,
    share of the timed run spent waiting for data)."""
    import importlib

    import training
    rows = []
    for script, phase, per_step, size_key, args in SYSTEMS:
        out = Path(work_dir) / script
        if script == "train_concept_cam":  # stage 2 starts from a stage 1 checkpoint: one short stage 1 epoch
            run_script(script, ["--stage", "1", *args[2:], "train.stop_after_steps=0", "stage1.epochs=1",
                                f"{size_key}=64"], out / "stage1")
            args = ["--resume", str(out / "stage1" / "best.pt"), *args, f"{size_key}=64"]
        else:
            args = [*args, f"{size_key}=512"]
        timed = run_script(script, args, out / "timed")[3:]  # the first steps warm up
        step_s = statistics.median(row["s_per_step"] for row in timed)
        data_s = statistics.median(row["data_s"] for row in timed)
        waiting = sum(row["data_s"] for row in timed) / sum(row["data_s"] + row["s_per_step"] for row in timed)
        if script == "train_concept_cam":  # stage 2 reads its in-memory feature table (no DataLoader, no images)
            rows.append((f"{script}.py ({phase}), batch {per_step}", per_step / step_s, per_step / data_s, None,
                         waiting))
            continue

        module = importlib.import_module(script)
        batch = per_step if script != "train_chexquery" else 16  # CheXQuery phase 1: micro-batches of 16
        config = training.default_config_path(module.SYSTEM)
        size = f"{size_key}={batch * (batches + 1) * 3 // 2}"  # WSRPN leaves out healthy phantoms
        chest = "phantom_cache_dir" in training.load_config(config, []).data  # chest phantoms (not the videos)
        rates = []
        for workers in (0, 2):  # 0: the config's own caching, epochs >= 2; 2: the disk cache, filled first
            overrides = [size, f"data.num_workers={workers}"]
            if workers and chest:
                overrides.append(f"data.phantom_cache_dir={out / 'phantoms'}")
            dataset = module.build_dataset(training.load_config(config, overrides), "train")
            for i in range(len(dataset)):  # the first epoch: fills the caches
                dataset[i]
            rates.append(loader_rate(SeededDataset(dataset, seed=0), batch, workers,
                                     min(batches, len(dataset) // batch - 1)))
        rows.append((f"{script}.py ({phase}), batch {per_step}", per_step / step_s, *rates, waiting))
    return rows


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seconds", type=float, default=5.0, help="time per phantom-speed measurement")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--size", type=int, default=128, help="image size for the loader and training rows")
    p.add_argument("--systems", action="store_true", help="also time each root script's own step and data")
    args = p.parse_args()
    torch.set_num_threads(2)
    if args.systems:
        with tempfile.TemporaryDirectory(prefix="benchmark-systems-") as work_dir:
            system = system_rows(work_dir)
        print("| script (cheapest phase) | step samples/s | data, 0 workers (default) | x step | data, 2 workers "
              "| x step | timed run waiting for data |\n|---|---:|---:|---:|---:|---:|---:|")
        for name, step, zero, two, waiting in system:
            two_cells = f"{two:,.0f} | {two / step:.1f}" if two else "in-memory table | -"
            print(f"| {name} | {step:,.0f} | {zero:,.0f} | {zero / step:.1f} | {two_cells} | {waiting:.1%} |")
        print()

    rows = [(f"phantom generation {s} px, 1 process", phantom_rate(s, args.seconds)) for s in (128, 224)]
    data = SeededDataset(ChestPhantomDataset(4096, image_size=args.size, seed=0), seed=0)
    for workers in (0, 2):
        rows.append((f"DataLoader {args.size} px, batch {args.batch_size}, {workers} workers",
                     loader_rate(data, args.batch_size, workers, batches=40)))
    cached = ChestPhantomDataset(40 * args.batch_size + args.batch_size, image_size=args.size, seed=0, cache=True)
    for i in range(len(cached)):  # the first epoch fills the cache; later epochs read it
        cached[i]
    rows.append((f"DataLoader {args.size} px, batch {args.batch_size}, 0 workers, cache=True (epochs >= 2)",
                 loader_rate(SeededDataset(cached, seed=0), args.batch_size, 0, batches=40)))
    with tempfile.TemporaryDirectory(prefix="phantom-cache-") as cache_dir:
        on_disk = ChestPhantomDataset(len(cached), image_size=args.size, seed=0, cache_dir=cache_dir)
        start = time.perf_counter()
        for i in range(len(on_disk)):  # first epoch: generate and write
            on_disk[i]
        rows.append((f"phantom generation {args.size} px + disk-cache write, 1 process",
                     len(on_disk) / (time.perf_counter() - start)))
        rows.append((f"DataLoader {args.size} px, batch {args.batch_size}, 2 workers, cache_dir (epochs >= 2)",
                     loader_rate(SeededDataset(on_disk, seed=0), args.batch_size, 2, batches=40)))
        rows.append(("the same, one shared-memory block per key, not per batch (collate one_block=False)",
                     loader_rate(SeededDataset(on_disk, seed=0), args.batch_size, 2, batches=40,
                                 collate_fn=functools.partial(collate, one_block=False))))
        train = training_rate(args.batch_size, args.size, steps=20)
        fed_disk = training_rate(args.batch_size, args.size, steps=20, loader=epoch_loader(
            SeededDataset(on_disk, seed=0), args.batch_size, seed=0, epoch=1, num_workers=2))
    rows.append((f"tiny ViT train step {args.size} px, batch {args.batch_size}, fixed batch", train))
    fed = training_rate(args.batch_size, args.size, steps=20,
                        loader=epoch_loader(data, args.batch_size, seed=0, epoch=1, num_workers=2))
    rows.append(("the same step fed by the 2-worker DataLoader", fed))
    fed_cache = training_rate(args.batch_size, args.size, steps=20,
                              loader=epoch_loader(SeededDataset(cached, seed=0), args.batch_size, seed=0, epoch=1))
    rows.append(("the same step fed by the cached 0-worker DataLoader", fed_cache))
    rows.append(("the same step fed by the disk-cached 2-worker DataLoader", fed_disk))

    print("| what | samples/s | x training |\n|---|---:|---:|")
    for name, rate in rows:
        print(f"| {name} | {rate:,.0f} | {rate / train:.1f} |")


if __name__ == "__main__":
    main()
