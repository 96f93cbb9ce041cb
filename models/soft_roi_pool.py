"""Generalized separable Gaussian soft-ROI pooling of WSRPN (research/wsrpn_rodeo.md §1.3-1.4, details 2-4).

    patch_centres(H, W) -> (P, 2)                      (x, y) of each patch centre in [0, 1]
    separable_generalized_gaussian_pdf(centres, mu, sigma, beta) -> (B, K, P) maps, max-normalized to 1
    GaussianParameterPredictor(d_emb, d_hidden)        ROI token + reference patch -> mu (B, K, 2), sigma (B, K, 2)
    SoftRoiPool(d_emb, beta)                           patch features + (mu, sigma) -> ROI features, Gaussian maps

Design choices (as the WSRPN reference code does it, not as a textbook Gaussian):
- The kernel is exp(-(|x - mu_x| / sigma_x)^beta - (|y - mu_y| / sigma_y)^beta), beta = 2, with NO 1/2 factor
  and no pdf normalization; it is evaluated at the patch centres ((j + 0.5) / W, (i + 0.5) / H) and divided
  by its maximum over the grid (+1e-12), so the most covered patch has weight 1. A Gaussian far from every
  patch centre therefore gives an (almost) all-zero map, as in the reference.
- sigma is a box size, not a standard deviation: the box is mu +- sigma / 2 (the kernel is exp(-1/4) = 0.78
  at its edge). sigma = sigmoid(.) in (0, 1) of the image size; mu = reference patch centre +
  (sigmoid(.) - 0.5), not clamped (mu_parametrization "offset", the reference). Only the patch centres
  constrain a Gaussian, so a centre outside the image with a large sigma covers the same patches as a
  smaller one inside: on tiny phantom runs half the centres left the image while the maps' centroids sat
  near the findings. "logit" (our option) adds the offset in logit space, mu = sigmoid(logit(r) + z), which
  keeps the centre inside (0, 1) and starts it at the same reference point.
- ROI feature f_k = (1 / P) sum_p m_k(p) W_r LN(x_p): divided by the number of patches P = H*W, not by
  sum_p m_k(p) (a large ROI gets a larger feature). The caller passes DETACHED patch features, so no
  ROI-branch gradient reaches the backbone; gradients do reach mu and sigma through the maps.
- The predictor and the pool run in float32 (autocast off), as the reference forces.

Shape letters: B batch, K ROI tokens, P = H*W patches, D width.
"""
import torch
from torch import nn


def patch_centres(height, width, device=None):
    """-> (P, 2) patch centres (x, y) in [0, 1], row-major (p = i * W + j)."""
    ys = (torch.arange(height, device=device, dtype=torch.float32) + 0.5) / height  # (H,)
    xs = (torch.arange(width, device=device, dtype=torch.float32) + 0.5) / width  # (W,)
    grid_y, grid_x = torch.meshgrid(ys, xs, indexing="ij")  # (H, W) each
    return torch.stack([grid_x.reshape(-1), grid_y.reshape(-1)], dim=-1)  # (P, 2)


def separable_generalized_gaussian_pdf(centres, mu, sigma, beta=2.0):
    """Max-normalized separable generalized Gaussian at the patch centres.

    centres: (P, 2) (x, y); mu, sigma: (B, K, 2) (x, y) in image fractions -> maps (B, K, P) in [0, 1].
    """
    delta = (centres[None, None] - mu[:, :, None, :]).abs()  # (B, K, P, 2)
    log_kernel = -((delta / sigma[:, :, None, :]) ** beta).sum(-1)  # (B, K, P)
    kernel = log_kernel.exp()  # (B, K, P)
    return kernel / (kernel.amax(dim=-1, keepdim=True) + 1e-12)  # (B, K, P)


class GaussianParameterPredictor(nn.Module):
    """The reference's BBoxMLP: z = MLP(LN(t_k) + e_k) in R^4 -> mu = r_k + sigmoid(z_xy) - 0.5, sigma = sigmoid(z_wh)."""

    def __init__(self, d_emb, d_hidden, mu_parametrization="offset"):
        super().__init__()
        if mu_parametrization not in ("offset", "logit"):
            raise ValueError(f"model.mu_parametrization must be offset or logit, got {mu_parametrization!r}")
        self.mu_parametrization = mu_parametrization
        self.norm = nn.LayerNorm(d_emb)
        self.mlp = nn.Sequential(nn.Linear(d_emb, d_hidden), nn.ReLU(), nn.Linear(d_hidden, 4))

    def forward(self, roi_tokens, reference_pos_emb, reference_points):
        """roi_tokens, reference_pos_emb: (B, K, D); reference_points: (B, K, 2) -> mu, sigma (B, K, 2)."""
        with torch.autocast(roi_tokens.device.type, enabled=False):
            z = self.mlp(self.norm(roi_tokens.float()) + reference_pos_emb.float())  # (B, K, 4)
            if self.mu_parametrization == "offset":  # the reference: r + (-0.5, 0.5), may leave the image
                mu = reference_points.float() + torch.sigmoid(z[..., :2]) - 0.5  # (B, K, 2)
            else:  # "logit": the offset is added in logit space, so mu stays inside (0, 1)
                mu = torch.sigmoid(torch.logit(reference_points.float()) + z[..., :2])  # (B, K, 2)
            sigma = torch.sigmoid(z[..., 2:])  # (B, K, 2)
        return mu, sigma


class SoftRoiPool(nn.Module):
    """Patch features (B, P, D) and Gaussians (mu, sigma) -> ROI features (B, K, D) and maps (B, K, P)."""

    def __init__(self, d_emb, beta=2.0):
        super().__init__()
        self.beta = beta
        self.norm = nn.LayerNorm(d_emb)  # the reference's norm_before_roi_pool
        self.roi_feature_projector = nn.Linear(d_emb, d_emb)

    def forward(self, patch_features, mu, sigma, height, width):
        B, P, D = patch_features.shape
        assert P == height * width, f"SoftRoiPool: {P} patches but a {height}x{width} grid"
        with torch.autocast(patch_features.device.type, enabled=False):
            centres = patch_centres(height, width, patch_features.device)  # (P, 2)
            gaussian_maps = separable_generalized_gaussian_pdf(centres, mu.float(), sigma.float(), self.beta)  # (B, K, P)
            values = self.roi_feature_projector(self.norm(patch_features.float()))  # (B, P, D)
            roi_features = torch.einsum("bkp,bpd->bkd", gaussian_maps, values) / P  # (B, K, D)
        return roi_features, gaussian_maps
