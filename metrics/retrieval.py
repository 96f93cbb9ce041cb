"""Cross-modal retrieval (R@K both ways, mean / median rank) and alignment statistics (seed 003 D2).

Design choices:
- Group ids instead of the diagonal: a candidate is correct when its group id equals the query's. With
  image_groups = study ids and text_groups = the study of each (deduplicated) text, study-level positives
  and deduplicated report texts (CXR-CLIP, contrastive_vl.md §5) use the same code; without groups,
  image i and text i form the only correct pair (open_clip's 1:1 diagonal, contrastive_vl.md §4).
- Rank of a query = 1 + the number of INCORRECT candidates whose similarity is >= the best correct one
  (1-based, as open_clip reports mean / median rank). Ties with an incorrect candidate count against the
  query, so a collapsed model (all similarities equal) gets R@1 = 0, not 1. R@K = mean(rank <= K).
- A query that has no correct candidate (its group is absent on the other side) is left out and counted
  in "<dir>/queries_without_positive"; every mean is over the remaining queries.
- alignment_statistics: with a (N_images, N_texts) matrix, "correct" = same group (default diagonal), and
  sim_correct / sim_incorrect are mean similarities of correct / incorrect pairs, sim_gap their
  difference, sim_correlation the Pearson (point-biserial) correlation between similarity and the 0/1
  correctness over all pairs. With a 1-D (N,) vector of alignment scores and `groups` a boolean (N,)
  vector of classification correctness, the same four numbers are seed 003 D2 literally (mean alignment
  of correctly / incorrectly classified samples, gap, correlation). NaN where a side is empty.
- retrieval_metrics_from_embeddings: the same dict as retrieval_metrics(image_embed @ text_embed.T, ...)
  without the (I, T) matrix. Similarities are float32 blocks of that product (on the CPU, where the
  evaluations hold their embeddings): `chunk` image rows against all texts for i2t, all images against
  `chunk` text columns for t2i. Each block is reduced at once to the rank of each of its queries with
  _ranks' rule (ties count against the query; comparing the float32 values directly orders them as the
  float64 copies retrieval_metrics compares), so the largest intermediates are (chunk, T) and (I, chunk):
  memory O(N x chunk). Every block has the same shape: the last one starts at N - chunk, overlapping its
  predecessor, and only its new queries are kept. A remainder of a few rows would go to MKL's small-matrix
  or matrix-vector routines, whose float32 rounding differs from the full product's in the last bit and
  can reorder near-tied candidates; blocks of 16 rows or columns or more gave bit-identical entries (torch
  2.14 with MKL 2024.2, AVX512, 1 and 2 threads). With N <= chunk the block is the full product itself.
- matched_similarity: the diagonal of image_embed @ text_embed.T (the D2 alignment s_i) from (chunk, chunk)
  blocks of the product, by the same block rule.
Shapes: I images, T texts, E embedding width. Inputs are numpy arrays or torch tensors; group ids may be
ints or strings. torch is imported only by the two embedding functions (their products are torch's).
"""
import numpy as np


def _numpy(x):
    if hasattr(x, "detach"):
        x = x.detach().cpu()
        x = x.double().numpy() if x.dtype.is_floating_point else x.numpy()
    return np.asarray(x)


def _groups(groups, count, name):
    if groups is None:
        return np.arange(count)
    groups = _numpy(groups)
    if groups.shape != (count,):
        raise ValueError(f"{name}: expected {count} group ids (one per row/column of similarity), got shape "
                         f"{groups.shape}")
    return groups


def _ranks(similarity, query_groups, candidate_groups):
    """(Q, K) similarity -> (Q,) 1-based rank of the best correct candidate (0 where none is correct)."""
    correct = query_groups[:, None] == candidate_groups[None, :]                     # (Q, K)
    has_positive = correct.any(1)
    best_correct = np.where(correct, similarity, -np.inf).max(1)                     # (Q,)
    beaten = (~correct) & (similarity >= best_correct[:, None])                      # (Q, K)
    return np.where(has_positive, 1 + beaten.sum(1), 0)


def _summary(ranks, ks, prefix):
    valid = ranks[ranks > 0]
    out = {f"{prefix}/R@{k}": float((valid <= k).mean()) if len(valid) else float("nan") for k in ks}
    out[f"{prefix}/mean_rank"] = float(valid.mean()) if len(valid) else float("nan")
    out[f"{prefix}/median_rank"] = float(np.median(valid)) if len(valid) else float("nan")
    out[f"{prefix}/queries_without_positive"] = float((ranks == 0).sum())
    return out


def retrieval_metrics(similarity, image_groups=None, text_groups=None, ks=(1, 5, 10)):
    """similarity (I, T), higher = more similar -> {"i2t/R@k", "t2i/R@k", "<dir>/mean_rank", "<dir>/median_rank",
    "<dir>/queries_without_positive"}."""
    similarity = _numpy(similarity).astype(np.float64)
    if similarity.ndim != 2:
        raise ValueError(f"similarity: expected a (N_images, N_texts) matrix, got shape {similarity.shape}")
    if not np.isfinite(similarity).all():
        raise ValueError("similarity: holds NaN or inf")
    num_images, num_texts = similarity.shape
    if (image_groups is None) != (text_groups is None):
        raise ValueError("retrieval_metrics: give both image_groups and text_groups, or neither (the diagonal)")
    if image_groups is None and num_images != num_texts:
        raise ValueError(f"similarity {similarity.shape} is not square: give image_groups and text_groups")
    image_groups = _groups(image_groups, num_images, "image_groups")
    text_groups = _groups(text_groups, num_texts, "text_groups")
    out = _summary(_ranks(similarity, image_groups, text_groups), ks, "i2t")
    out.update(_summary(_ranks(similarity.T, text_groups, image_groups), ks, "t2i"))
    return out


def _float32(x, name):
    """-> (N, E) float32 CPU torch tensor: the blocks are torch products, as the evaluations' full one is."""
    import torch
    x = torch.as_tensor(x).detach().cpu().float()
    if x.ndim != 2:
        raise ValueError(f"{name}: expected an (N, E) matrix, got shape {tuple(x.shape)}")
    return x


def _group_codes(image_groups, text_groups):
    """(I,), (T,) ids -> (I,), (T,) int64 codes from one table: equal where the ids compare equal."""
    ids = {}
    image_codes = [ids.setdefault(g, len(ids)) for g in image_groups.tolist()]
    text_codes = [ids.setdefault(g, len(ids)) for g in text_groups.tolist()]
    return np.array(image_codes, dtype=np.int64), np.array(text_codes, dtype=np.int64)


def _blocks(count, chunk):
    """-> (start, stop, first_new) for blocks [start, stop) of min(chunk, count) rows each that cover
    0..count; rows start..start + first_new - 1 were covered by the previous block."""
    size = min(chunk, count)
    for first in range(0, count, max(size, 1)):
        start = min(first, count - size)
        yield start, start + size, first - start


def _block_ranks(similarity, correct, axis):
    """_ranks on a block with the candidates along `axis`: similarity (float32) and correct (bool) of the
    same shape -> rank of each query's best correct candidate (0 where none is correct)."""
    best_correct = np.max(similarity, axis=axis, where=correct, initial=-np.inf, keepdims=True)
    beaten = np.count_nonzero((similarity >= best_correct) > correct, axis=axis)   # incorrect and >= best
    return np.where(correct.any(axis), 1 + beaten, 0)


def _similarities_finite(image_embed, text_embed):
    """True when every entry of image_embed @ text_embed.T is finite, known without computing it: finite
    inputs, and |similarity| <= max norm x max norm (Cauchy-Schwarz, which bounds every partial sum too)
    far below the float32 maximum."""
    image_embed, text_embed = image_embed.numpy(), text_embed.numpy()
    if not (np.isfinite(image_embed).all() and np.isfinite(text_embed).all()):
        return False
    if not len(image_embed) or not len(text_embed):
        return True
    norms = [np.linalg.norm(x.astype(np.float64), axis=1).max() for x in (image_embed, text_embed)]
    return bool(norms[0] * norms[1] < 1e38)


def _check_finite(block, known_finite):
    if not known_finite and not (np.isfinite(block.max()) and np.isfinite(block.min())):
        raise ValueError("similarity: holds NaN or inf")
    return block


def retrieval_metrics_from_embeddings(image_embed, text_embed, image_groups=None, text_groups=None,
                                      ks=(1, 5, 10), chunk=256):
    """image_embed (I, E), text_embed (T, E) -> retrieval_metrics(image_embed @ text_embed.T, image_groups,
    text_groups, ks), the same keys and values, from float32 blocks of `chunk` queries against all
    candidates: memory O(max(I, T) x chunk), never (I, T). Keep chunk >= 16 (module docstring: smaller
    blocks round differently from the full product)."""
    image_embed, text_embed = _float32(image_embed, "image_embed"), _float32(text_embed, "text_embed")
    (num_images, width), (num_texts, text_width) = image_embed.shape, text_embed.shape
    if width != text_width:
        raise ValueError(f"image_embed {tuple(image_embed.shape)} and text_embed {tuple(text_embed.shape)}: "
                         f"embedding widths differ")
    if not isinstance(chunk, int) or chunk < 1:
        raise ValueError(f"chunk: expected a positive int, got {chunk!r}")
    if (image_groups is None) != (text_groups is None):
        raise ValueError("retrieval_metrics: give both image_groups and text_groups, or neither (the diagonal)")
    if image_groups is None and num_images != num_texts:
        raise ValueError(f"similarity ({num_images}, {num_texts}) is not square: give image_groups and text_groups")
    image_codes, text_codes = _group_codes(_groups(image_groups, num_images, "image_groups"),
                                           _groups(text_groups, num_texts, "text_groups"))
    known_finite = _similarities_finite(image_embed, text_embed)
    image_ranks = np.zeros(num_images, dtype=np.int64)
    for start, stop, first_new in _blocks(num_images, chunk):
        block = _check_finite((image_embed[start:stop] @ text_embed.T).numpy(), known_finite)   # (chunk, T)
        correct = image_codes[start:stop, None] == text_codes[None, :]                          # (chunk, T)
        image_ranks[start + first_new:stop] = _block_ranks(block, correct, axis=1)[first_new:]
    text_ranks = np.zeros(num_texts, dtype=np.int64)
    for start, stop, first_new in _blocks(num_texts, chunk):
        block = _check_finite((image_embed @ text_embed[start:stop].T).numpy(), known_finite)   # (I, chunk)
        correct = image_codes[:, None] == text_codes[None, start:stop]                          # (I, chunk)
        text_ranks[start + first_new:stop] = _block_ranks(block, correct, axis=0)[first_new:]
    out = _summary(image_ranks, ks, "i2t")
    out.update(_summary(text_ranks, ks, "t2i"))
    return out


def matched_similarity(image_embed, text_embed, chunk=256):
    """image_embed (N, E), text_embed (N, E) -> (N,) float32 numpy similarity of each pair i, the diagonal of
    image_embed @ text_embed.T taken from (chunk, chunk) blocks of that product (same block rule as above)."""
    image_embed, text_embed = _float32(image_embed, "image_embed"), _float32(text_embed, "text_embed")
    if image_embed.shape != text_embed.shape:
        raise ValueError(f"image_embed {tuple(image_embed.shape)} and text_embed {tuple(text_embed.shape)}: "
                         f"expected the same (N, E)")
    out = np.empty(len(image_embed), dtype=np.float32)                               # (N,)
    for start, stop, first_new in _blocks(len(image_embed), chunk):
        block = image_embed[start:stop] @ text_embed[start:stop].T                   # (chunk, chunk)
        out[start + first_new:stop] = block.diagonal()[first_new:].numpy()
    return out


def alignment_statistics(similarity, groups=None):
    """(I, T) similarity with optional shared group ids (correct = same group; default the diagonal), or
    (N,) alignment scores with groups = (N,) bool correctness -> {"sim_correct", "sim_incorrect", "sim_gap",
    "sim_correlation"}."""
    similarity = _numpy(similarity).astype(np.float64)
    if similarity.ndim == 1:
        if groups is None:
            raise ValueError("alignment_statistics: 1-D alignment scores need `groups` = (N,) bool correctness")
        correct = _numpy(groups)
        if correct.shape != similarity.shape or not np.isin(correct, (0, 1)).all():
            raise ValueError(f"groups: expected {similarity.shape} booleans (classification correct?), got "
                             f"shape {correct.shape}")
        values, correct = similarity, correct.astype(bool)
    elif similarity.ndim == 2:
        rows, cols = similarity.shape
        if groups is None:
            if rows != cols:
                raise ValueError(f"similarity {similarity.shape} is not square: give groups")
            correct = np.eye(rows, dtype=bool)
        else:
            groups = _numpy(groups)
            if rows != cols or groups.shape != (rows,):
                raise ValueError(f"groups: expected ({rows},) ids for a square similarity, got {groups.shape} "
                                 f"for {similarity.shape}")
            correct = groups[:, None] == groups[None, :]
        values, correct = similarity.ravel(), correct.ravel()
    else:
        raise ValueError(f"similarity: expected 1-D or 2-D, got shape {similarity.shape}")
    sim_correct = float(values[correct].mean()) if correct.any() else float("nan")
    sim_incorrect = float(values[~correct].mean()) if (~correct).any() else float("nan")
    if correct.all() or not correct.any() or values.std() == 0:
        correlation = float("nan")
    else:
        correlation = float(np.corrcoef(values, correct.astype(np.float64))[0, 1])
    return {"sim_correct": sim_correct, "sim_incorrect": sim_incorrect, "sim_gap": sim_correct - sim_incorrect,
            "sim_correlation": correlation}
