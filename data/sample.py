"""The sample contract every dataset in data/ follows, the batch collate, and the bad-input policy.

A dataset's `__getitem__` returns a dict with these keys (a dataset leaves out what it does not have,
and says which keys it has in its docstring):

    key           type / shape          meaning
    image         (C, H, W) float32     after the dataset's transform; default 3 channels in [0, 1]
    labels        (L,) float32          over `dataset.label_names`: 1 positive, 0 negative or not mentioned,
                                        -1 uncertain (real CheXpert-labelled data only)
    report        str                   "Findings: ... | Impression: ..." (cleaned, data/reports.py)
    boxes         (N, 4) float32        x1, y1, x2, y2 in pixels of the returned image
    box_labels    (N,) int64            index into `dataset.box_classes`
    concepts      (22,) float32         VINDR_CONCEPTS (VinDr, phantoms)
    diseases      (6,) float32          VINDR_DISEASES (VinDr, phantoms); seed 002 calls these `targets`
    region_masks  (6, H, W) bool        ANATOMY_REGIONS (phantoms)
    id            str                   image id (file stem, dicom id, "phantom-<seed>-<index>")
    patient_id    str                   for patient-level splits
    view          str                   "PA", "AP", "LATERAL", ...

`collate` stacks tensors of equal shape and keeps everything else (strings, variable-length boxes,
lists of dicts) as a list, so a batch of B samples has `boxes` as a list of B (N_b, 4) tensors.
"""
import math

import torch


class DataError(ValueError):
    """Bad input in a dataset file: the message names the file, the row and what was expected."""


class ErrorPolicy:
    """What a dataset does with bad input: `stop` raises DataError, `skip` prints it once and counts it.

    Adapters call `policy(message)` for each bad file/row/image; with `skip` they then leave that item
    out. `policy.skipped` holds the messages, and `summary()` is printed after a dataset is indexed.
    """

    def __init__(self, mode="stop", name="dataset"):
        if mode not in ("stop", "skip"):
            raise ValueError(f"data.on_error must be 'stop' or 'skip', got {mode!r}")
        self.mode, self.name, self.skipped = mode, name, []

    def __call__(self, message):
        if self.mode == "stop":
            raise DataError(message)
        self.skipped.append(message)
        print(f"[{self.name}] skipped: {message}")

    def summary(self):
        return f"[{self.name}] skipped {len(self.skipped)} bad item(s)" if self.skipped else ""


def collate(samples, one_block=True):
    """list of sample dicts -> dict of batched values (tensors stacked where shapes agree, else lists).

    Inside a DataLoader worker (and one_block) every tensor of the batch is written into one shared-memory
    block (views at 64-byte aligned offsets), so the worker hands the main process one block per batch
    instead of one per key: each block costs the main process a socket round trip to receive (2 workers
    from the phantom disk cache: about 1.5x the samples/s; `python -m benchmarks.loading`, README)."""
    samples = [s for s in samples if s is not None]   # a record skipped by on_error=skip (data/io.RecordDataset)
    if not samples:
        raise DataError("every sample of this batch failed to load (data.on_error=skip); see the skipped lines above")
    plan = {}  # key -> ("stack" | "cat", values) or ("list", values)
    for key in samples[0]:
        values = [s[key] for s in samples]
        if isinstance(values[0], torch.Tensor) and all(v.shape == values[0].shape for v in values):
            plan[key] = ("stack", values)
        elif isinstance(values[0], torch.Tensor) and values[0].dim() >= 1 and all(
                isinstance(v, torch.Tensor) and v.dim() == values[0].dim() and v.shape[1:] == values[0].shape[1:]
                and v.dtype == values[0].dtype for v in values):
            plan[key] = ("cat", values)  # variable length (boxes (N_i, 4), box_labels (N_i,)): views of one tensor
        else:
            plan[key] = ("list", values)
    out = _shared_outputs(plan) if one_block and torch.utils.data.get_worker_info() is not None else {}
    batch = {}
    for key, (kind, values) in plan.items():
        if kind == "stack":
            batch[key] = torch.stack(values, out=out.get(key))
        elif kind == "cat":
            batch[key] = list(torch.cat(values, out=out.get(key)).split([len(v) for v in values]))
        else:
            batch[key] = values
    return batch


def _shared_outputs(plan, align=64):
    """key -> an empty output tensor for torch.stack / torch.cat, all views into one shared-memory block."""
    shapes = {}
    for key, (kind, values) in plan.items():
        if kind == "stack":
            shapes[key] = ((len(values), *values[0].shape), values[0].dtype)
        elif kind == "cat":
            shapes[key] = ((sum(len(v) for v in values), *values[0].shape[1:]), values[0].dtype)
    sizes = {key: math.prod(shape) * dtype.itemsize for key, (shape, dtype) in shapes.items()}
    starts, total = {}, 0
    for key, size in sizes.items():
        starts[key], total = total, total + -(-size // align) * align
    block = torch.empty(0, dtype=torch.uint8).set_(torch.UntypedStorage._new_shared(total))
    return {key: block[starts[key]:starts[key] + sizes[key]].view(dtype).view(shape)
            for key, (shape, dtype) in shapes.items()}
