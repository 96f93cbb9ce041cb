"""Data loaders that make a resumed run see exactly the batches the uninterrupted run would have seen.

Two things decide a batch: the order of indices and the random augmentation of each sample.
- Order: `EpochSampler` draws a permutation from (seed, epoch) alone and can start part-way through an
  epoch (`start_batch`), so a run resumed at optimizer step s continues with batch s of that epoch.
- Augmentation: `SeededDataset` runs each `__getitem__` under a torch RNG seeded from
  (seed, epoch, index), inside `torch.random.fork_rng` so the caller's RNG stream is untouched. The
  result does not depend on which worker loads the sample, or on how many came before it.
  Transforms must therefore draw their randomness from torch (as data/transforms.py does).
The DataLoader gets its own generator, so creating it does not consume the global torch RNG either.

Several processes (torchrun): `batch_size` stays the GLOBAL batch. Every rank draws the same permutation and
cuts it into the same global batches; rank r of W takes the r-th of W equal slices of each (batch_size / W
samples). So W ranks together see exactly the batches one process sees, in the same order (rank order =
sample order within a batch), and `start_batch` counts global batches: a resume is exact for any W. A
last global batch that is not full is dropped (drop_last is required), so every rank takes the same number
of steps. Evaluation loaders (drop_last=False) are not sharded: they run on one process.
"""
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from data.sample import collate


class SeededDataset(Dataset):
    """Wraps a dataset; sample i of epoch e is always augmented the same way."""

    def __init__(self, dataset, seed):
        self.dataset, self.seed, self.epoch = dataset, seed, 0

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, index):
        with torch.random.fork_rng(devices=[]):  # the CPU generator only: transforms run on the CPU
            # not torch.manual_seed: it would also reseed CUDA (outside the fork) and costs ~0.4 ms a call
            torch.random.default_generator.manual_seed(hash((self.seed, self.epoch, index)) & 0x7FFF_FFFF_FFFF_FFFF)
            return self.dataset[index]

    def __getattr__(self, name):  # label_names, box_classes, ... of the wrapped dataset
        if name == "dataset":
            raise AttributeError(name)
        return getattr(self.dataset, name)


class EpochLoader(DataLoader):
    """torch's DataLoader; after a complete pass it prints the dataset's `skip_summary()` if it has one: ONE line
    with the count and the JSON list of the records that failed to load under data.on_error=skip (data/io.py
    RecordDataset), however many there were and whichever worker met them."""

    def __iter__(self):
        yield from super().__iter__()
        summary = getattr(self.dataset, "skip_summary", None)
        line = summary() if summary is not None else ""
        if line:
            print(line)


class EpochSampler(Sampler):
    """Indices of one epoch: a permutation seeded by (seed, epoch), or 0..n-1; skips `start` of them. With
    world_size W > 1, the indices of rank `rank`: its slice of every full global batch of `batch_size`."""

    def __init__(self, n, seed, epoch, shuffle=True, start=0, batch_size=None, rank=0, world_size=1):
        self.n, self.seed, self.epoch, self.shuffle, self.start = n, seed, epoch, shuffle, start
        self.batch_size, self.rank, self.world_size = batch_size, rank, world_size
        if world_size > 1 and (batch_size is None or batch_size % world_size):
            raise ValueError(f"batch_size {batch_size} must be a multiple of the {world_size} processes")

    def indices(self):
        if not self.shuffle:
            return list(range(self.n))
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        return torch.randperm(self.n, generator=g).tolist()

    def __iter__(self):
        order = self.indices()[self.start:]
        if self.world_size == 1:
            return iter(order)
        per_rank = self.batch_size // self.world_size
        full = len(order) - len(order) % self.batch_size
        return iter([i for first in range(0, full, self.batch_size)
                     for i in order[first + self.rank * per_rank:first + (self.rank + 1) * per_rank]])

    def __len__(self):
        remaining = max(0, self.n - self.start)
        if self.world_size == 1:
            return remaining
        return remaining // self.batch_size * (self.batch_size // self.world_size)


def epoch_loader(dataset, batch_size, seed, epoch, shuffle=True, start_batch=0, num_workers=0,
                 drop_last=True, pin_memory=False, collate_fn=collate, rank=0, world_size=1):
    """A DataLoader for one epoch, starting at global batch `start_batch` (for resume). rank / world_size
    (training.rank(), training.world_size() under torchrun): this rank's batch_size / world_size slice of each
    global batch."""
    if isinstance(dataset, SeededDataset):
        dataset.epoch = epoch
    if world_size > 1 and not drop_last:
        raise ValueError("a loader sharded over processes drops the last partial batch (drop_last=True)")
    sampler = EpochSampler(len(dataset), seed, epoch, shuffle, start=start_batch * batch_size, batch_size=batch_size,
                           rank=rank, world_size=world_size)
    return EpochLoader(dataset, batch_size=batch_size // world_size, sampler=sampler, num_workers=num_workers,
                       collate_fn=collate_fn, drop_last=drop_last, pin_memory=pin_memory,
                       generator=torch.Generator().manual_seed(seed + epoch),
                       persistent_workers=False)


def table_batches(table, batch_size, seed, epoch, shuffle=True, start_batch=0, drop_last=True, rank=0,
                  world_size=1):
    """The batches of epoch_loader (same order, same resume point, same sharding) over an in-memory table
    instead of a dataset: table = {key: (N, ...) tensor or list of N}. No DataLoader and no per-sample dicts, one
    gather per key (nanoGPT's get_batch), for data that is already tensors, e.g. cached backbone features."""
    if world_size > 1 and not drop_last:
        raise ValueError("batches sharded over processes drop the last partial batch (drop_last=True)")
    n = len(next(iter(table.values())))
    order = torch.tensor(list(EpochSampler(n, seed, epoch, shuffle, start=start_batch * batch_size,
                                           batch_size=batch_size, rank=rank, world_size=world_size)), dtype=torch.long)
    per_rank = batch_size // world_size
    stop = len(order) - len(order) % per_rank if drop_last else len(order)
    for first in range(0, stop, per_rank):
        rows = order[first:first + per_rank]
        yield {key: value[rows] if isinstance(value, torch.Tensor) else [value[i] for i in rows.tolist()]
               for key, value in table.items()}


def batches_per_epoch(dataset, batch_size, drop_last=True):
    n = len(dataset)
    return n // batch_size if drop_last else -(-n // batch_size)
