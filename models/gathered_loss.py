"""Symmetric InfoNCE over the global batch when training runs as several processes (DDP under torchrun).

A contrastive loss takes its negatives from the batch, so a rank that scored only its own B rows would see
B - 1 negatives instead of the W * B - 1 of one process holding the whole batch. Here each rank gathers the
embeddings of every rank and scores its own rows against all of them (open_clip's "local loss" with
gathered features, research/contrastive_vl.md §4):

    rows of rank r: i = r*B .. r*B + B - 1 of the global batch (data/loader.py shards it in rank order)
    loss_r = ( CE(s * a_r b_all^T, i) + CE(s * b_r a_all^T, i) ) / 2

- `gather_rows` is torch.distributed.nn.functional.all_gather: its backward sends each rank the sum of the
  gradients every rank computed for its rows, so a rank's embeddings get the gradient of all W losses.
- DDP averages the parameter gradients over ranks: (1/W) sum_r d loss_r / d theta, which for equal B is the
  gradient of the single-process loss over the W * B batch; the mean of loss_r over ranks is that loss.
- Without a process group `gather_rows` is the identity and the loss is the single-process one.
- Call it on every rank at the same time (it is a collective); evaluation on one rank uses the plain loss.

Shape letters: B rows per rank, W ranks, E embedding dim.
"""
import torch
import torch.distributed as dist
import torch.nn.functional as F


def _distributed():
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def gather_rows(x):
    """x (B, E) -> (W * B, E): every rank's rows in rank order; gradients flow back to the rank that owns them."""
    if not _distributed():
        return x
    from torch.distributed.nn.functional import all_gather
    return torch.cat(all_gather(x), dim=0)                                        # (W * B, E)


def info_nce_all_ranks(a, b, logit_scale):
    """a, b (B, E) unit norm, row i of a pairs with row i of b; logit_scale () exponentiated -> scalar.
    The two directions are averaged, as open_clip's ClipLoss (and models/patch_ib_losses.info_nce) do."""
    B = a.shape[0]
    offset = dist.get_rank() * B if _distributed() else 0
    all_a, all_b = gather_rows(a), gather_rows(b)                                 # (W * B, E) each
    logits_a = logit_scale * a @ all_b.T                                          # (B, W * B)
    logits_b = logit_scale * b @ all_a.T                                          # (B, W * B)
    targets = torch.arange(offset, offset + B, device=a.device)                   # (B,)
    return 0.5 * (F.cross_entropy(logits_a, targets) + F.cross_entropy(logits_b, targets))
