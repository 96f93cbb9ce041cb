"""Data loaders that make a resumed run see exactly the batches the uninterrupted run would have seen.

Two things decide a batch: the order of indices and the random augmentation of each sample.
- Order: `EpochSampler` draws a permutation from (seed, epoch) alone and can start part-way through an
  epoch (`start_batch`), so a run resumed at optimizer step s continues with batch s of that epoch.
- Augmentation: `SeededDataset` runs each `__getitem__` under a torch RNG seeded from
  (seed, epoch, index), inside `torch.random.fork_rng` so the caller's RNG stream is untouched. The
  result does not depend on which worker loads the sample, or on how many came before it.
  Transforms must therefore draw their randomness from torch (as data/transforms.py does).
The DataLoader gets its own generator, so creating it does not consume the global torch RNG either.
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


class EpochSampler(Sampler):
    """Indices of one epoch: a permutation seeded by (seed, epoch), or 0..n-1; skips `start` of them."""

    def __init__(self, n, seed, epoch, shuffle=True, start=0):
        self.n, self.seed, self.epoch, self.shuffle, self.start = n, seed, epoch, shuffle, start

    def indices(self):
        if not self.shuffle:
            return list(range(self.n))
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        return torch.randperm(self.n, generator=g).tolist()

    def __iter__(self):
        return iter(self.indices()[self.start:])

    def __len__(self):
        return max(0, self.n - self.start)


def epoch_loader(dataset, batch_size, seed, epoch, shuffle=True, start_batch=0, num_workers=0,
                 drop_last=True, pin_memory=False, collate_fn=collate):
    """A DataLoader for one epoch, starting at batch `start_batch` (for resume)."""
    if isinstance(dataset, SeededDataset):
        dataset.epoch = epoch
    sampler = EpochSampler(len(dataset), seed, epoch, shuffle, start=start_batch * batch_size)
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=num_workers,
                      collate_fn=collate_fn, drop_last=drop_last, pin_memory=pin_memory,
                      generator=torch.Generator().manual_seed(seed + epoch),
                      persistent_workers=False)


def table_batches(table, batch_size, seed, epoch, shuffle=True, start_batch=0, drop_last=True):
    """The batches of epoch_loader (same order, same resume point) over an in-memory table instead of a
    dataset: table = {key: (N, ...) tensor or list of N}. No DataLoader and no per-sample dicts, one gather per
    key (nanoGPT's get_batch), for data that is already tensors, e.g. cached backbone features."""
    n = len(next(iter(table.values())))
    order = torch.tensor(list(EpochSampler(n, seed, epoch, shuffle, start=start_batch * batch_size)), dtype=torch.long)
    stop = len(order) - len(order) % batch_size if drop_last else len(order)
    for first in range(0, stop, batch_size):
        rows = order[first:first + batch_size]
        yield {key: value[rows] if isinstance(value, torch.Tensor) else [value[i] for i in rows.tolist()]
               for key, value in table.items()}


def batches_per_epoch(dataset, batch_size, drop_last=True):
    n = len(dataset)
    return n // batch_size if drop_last else -(-n // batch_size)
