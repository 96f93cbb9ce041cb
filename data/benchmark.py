"""Does data loading keep up with tiny training? Phantom speed and loader throughput, side by side.

    python -m data.benchmark                 # ~1 minute on 2 cores; prints a markdown table

Measured in one run, on this machine:
1. phantom generation, one process, images/s at 128 and 224 px (no transform);
2. the training DataLoader (phantoms, batch 16, 128 px, the seeded wrapper, collate) with 0 and 2 workers,
   with 0 workers from the dataset's in-memory cache (ChestPhantomDataset(cache=True), epochs >= 2), and
   with 2 workers from its disk cache (ChestPhantomDataset(cache_dir=...), filled by a first pass);
3. a reference tiny training step at the same batch: a ViT of the tiny-hub size (128 px, patch 16,
   width 128, 4 blocks) forward + backward + AdamW step, on one fixed batch and then fed by the
   2-worker loaders (if the two rates agree, loading does not limit training).
The ratio (loader samples/s) / (training samples/s) is the figure that matters: >= 10 means loading
never limits the tiny runs. Both sides compete for the same 2 cores, as they do in a real run.
"""
import argparse
import tempfile
import time

import torch
from torch import nn

from data.loader import SeededDataset, epoch_loader
from data.phantom import ChestPhantomDataset, make_chest_phantom


def phantom_rate(size, seconds):
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        make_chest_phantom(seed=7, index=n, size=size)
        n += 1
    return n / (time.perf_counter() - start)


def loader_rate(dataset, batch_size, workers, batches):
    loader = epoch_loader(dataset, batch_size, seed=0, epoch=0, num_workers=workers)
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


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seconds", type=float, default=5.0, help="time per phantom-speed measurement")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--size", type=int, default=128, help="image size for the loader and training rows")
    args = p.parse_args()
    torch.set_num_threads(2)

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
