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
Shapes: I images, T texts. Inputs are numpy arrays or torch tensors; group ids may be ints or strings.
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
