"""Losses of Concept CAM: seed 002 §5a/§5b (stage 1), SoftTriple on concept vectors (stage 2), disease BCE (stage 3).

    pos_weight_from_labels(labels, cap)            N_neg / N_pos per class, capped; 1 where a class has no positive
    boxes_to_grid_masks(boxes, box_concepts, ...)  union of each concept's boxes rasterized on the h x w grid
    bbox_guided_concept_loss(cams, concepts_gt, inside_mask, has_box, pos_weight)
        -> {"classification_loss", "localization_loss", "L_inside", "L_outside"}; the train script combines
           loss = alpha * classification_loss + beta * localization_loss (seed 002 §5b; beta = 0 is §5a)
    soft_triple_loss(concept_vectors, prototypes, present, la, gamma, margin) -> {"softtriple_loss"}
    disease_loss(disease_logits, targets, pos_weight) -> {"disease_loss"}

Design choices:
- classification_loss is BCEWithLogits(pos_weight) of the max-pooled CAMs against the concept labels, mean
  over all B*K entries. pos_weight = N_neg / N_pos from the TRAINING labels, capped at `cap` (VinDr's rare
  concepts have < 100 positives among 15,000 images, ratios > 500); classes with no positive get 1.
- Localization follows seed 002 §5b literally, per (image, concept) pair that is present AND has a box:
      L_inside  = mean_hw relu(-cam * inside_mask)     (negative CAM values inside the box)
      L_outside = mean_hw relu( cam * outside_mask)    (positive CAM values outside), outside = 1 - inside
  the mean is over all h*w cells (as the seed writes it), then averaged over the selected pairs; zero (with a
  gradient path) when a batch has no such pair. Absent concepts and present concepts without boxes only get
  the classification term.
- Margin (research brief §5 option (a)): with m > 0 the terms are mean relu(m - cam) over inside cells and
  mean relu(cam + m) over outside cells. m = 0 is the seed's formula exactly; it has a degenerate minimum
  at cam = 0 everywhere (both terms vanish), and with a large beta the tiny runs collapsed the CAMs there
  (all concept probabilities 0.50; docs/concept_cam.md). loss.localization_margin sets m.
- A grid cell is inside a box when the box covers at least `min_fraction` of the cell's area (0 = any
  overlap); a box smaller than that threshold still marks the cell of its largest overlap, so no box vanishes.
- SoftTriple (Qian et al. 2019): for the concept vector x = v'^k of a present concept k, class scores
  S_c = sum_m softmax_m(x.w_c^m / gamma) (x.w_c^m) over all K concepts' prototypes, and
  loss = CE(la * (S - margin * onehot(k)), k). Vectors and prototypes are unit length (cosine). The centre
  regularizer of the SoftTriple paper is left out (M is small here; see docs/concept_cam.md).

Shape letters: B batch, K concepts, M prototypes per concept, E projector width, h x w grid, N boxes, C diseases.
"""
import torch
import torch.nn.functional as F


def pos_weight_from_labels(labels, cap):
    """labels: (N, K) 0/1 training labels -> (K,) float: N_neg / N_pos, at most `cap`, 1 where N_pos = 0."""
    labels = torch.as_tensor(labels, dtype=torch.float32)
    positives = labels.sum(0)                                                 # (K,)
    negatives = labels.shape[0] - positives                                   # (K,)
    ratio = negatives / positives.clamp(min=1)
    return torch.where(positives > 0, ratio.clamp(max=cap), torch.ones_like(ratio))


def boxes_to_grid_masks(boxes, box_concepts, num_concepts, image_size, grid_size, min_fraction=0.0):
    """boxes: (N, 4) xyxy input pixels; box_concepts: (N,) concept indices -> inside_mask (K, h, w) float
    (union over a concept's boxes) and has_box (K,) bool. image_size (H, W), grid_size (h, w)."""
    H, W = image_size
    h, w = grid_size
    inside_mask = torch.zeros(num_concepts, h, w)                             # (K, h, w)
    has_box = torch.zeros(num_concepts, dtype=torch.bool)                     # (K,)
    boxes = torch.as_tensor(boxes, dtype=torch.float32).reshape(-1, 4)        # (N, 4)
    cell_h, cell_w = H / h, W / w
    y0 = torch.arange(h) * cell_h                                             # (h,) cell top edges
    x0 = torch.arange(w) * cell_w                                             # (w,)
    for box, k in zip(boxes, torch.as_tensor(box_concepts).reshape(-1).tolist()):
        x1, y1, x2, y2 = box.tolist()
        overlap_y = ((torch.minimum(y0 + cell_h, torch.tensor(y2)) - torch.maximum(y0, torch.tensor(y1)))
                     .clamp(min=0) / cell_h)                                  # (h,)
        overlap_x = ((torch.minimum(x0 + cell_w, torch.tensor(x2)) - torch.maximum(x0, torch.tensor(x1)))
                     .clamp(min=0) / cell_w)                                  # (w,)
        fraction = overlap_y[:, None] * overlap_x[None, :]                    # (h, w) area fraction per cell
        if fraction.max() <= 0:
            continue  # a degenerate box (zero area) marks nothing
        cells = (fraction > 0) if min_fraction <= 0 else (fraction >= min_fraction)
        if not cells.any():
            cells = fraction == fraction.max()
        inside_mask[k] = torch.maximum(inside_mask[k], cells.float())
        has_box[k] = True
    return inside_mask, has_box


def bbox_guided_concept_loss(cams, concepts_gt, inside_mask, has_box, pos_weight, margin=0.0):
    """seed 002 §5b BBoxGuidedConceptLoss, unweighted terms.

    cams: (B, K, h, w); concepts_gt: (B, K) 0/1; inside_mask: (B, K, h, w); has_box: (B, K) bool;
    pos_weight: (K,); margin m >= 0 (0 = the seed). Returns a dict of named terms (scalars)."""
    concept_logits = cams.amax(dim=(2, 3))                                    # (B, K) global max pooling
    classification_loss = F.binary_cross_entropy_with_logits(concept_logits, concepts_gt.float(),
                                                             pos_weight=pos_weight)
    selected = has_box & (concepts_gt > 0.5)                                  # (B, K) present with a box
    outside_mask = 1.0 - inside_mask                                          # (B, K, h, w)
    L_inside_each = (F.relu(margin - cams) * inside_mask).mean(dim=(2, 3))    # (B, K)
    L_outside_each = (F.relu(cams + margin) * outside_mask).mean(dim=(2, 3))  # (B, K)
    count = selected.sum()
    if count > 0:
        L_inside = L_inside_each[selected].mean()
        L_outside = L_outside_each[selected].mean()
    else:  # keeps the graph (and DDP) happy with an exact zero
        L_inside = L_outside = (cams * 0).sum()
    localization_loss = L_inside + L_outside
    return {"classification_loss": classification_loss, "localization_loss": localization_loss,
            "L_inside": L_inside.detach(), "L_outside": L_outside.detach()}


def soft_triple_loss(concept_vectors, prototypes, present, la=20.0, gamma=0.1, margin=0.01):
    """concept_vectors: (B, K, E) unit; prototypes: (K, M, E) unit; present: (B, K) bool/0-1.
    Each present (image, concept k) pair is one sample of class k. -> {"softtriple_loss"}."""
    present = present > 0.5
    x = concept_vectors[present]                                              # (S, E) S present pairs
    target = present.nonzero()[:, 1]                                          # (S,) concept index
    if x.shape[0] == 0:
        return {"softtriple_loss": (concept_vectors * 0).sum() + (prototypes * 0).sum()}
    similarity = torch.einsum("se,kme->skm", x, prototypes)                  # (S, K, M)
    assignment = (similarity / gamma).softmax(dim=-1)                         # (S, K, M) soft prototype choice
    class_scores = (assignment * similarity).sum(dim=-1)                      # (S, K) S_c
    logits = la * (class_scores - margin * F.one_hot(target, prototypes.shape[0]))  # (S, K)
    return {"softtriple_loss": F.cross_entropy(logits, target)}


def disease_loss(disease_logits, targets, pos_weight=None):
    """disease_logits, targets: (B, C) -> {"disease_loss"}: BCEWithLogits (multi-label VinDr global labels)."""
    return {"disease_loss": F.binary_cross_entropy_with_logits(disease_logits, targets.float(), pos_weight=pos_weight)}
