"""Gaze points -> attention-map volumes for the video folder format of data/video.py (seed 003 attention maps).

    maps, dropped = gaze_to_attention(points, num_frames, height, width, sigma)   points (P, 3) rows (x, y, t)
    python -m data.gaze GAZE.csv --video videos/<id>.mp4 --out attention/<id>.npy [--fps 30] [--sigma 4]
    python -m data.gaze GAZE.csv --frames 120 --size 480 640 --out attention/<id>.npy

Design choices:
- A gaze point (x, y, t) is a position in pixels of the video frame, origin at the top-left pixel's centre,
  x to the right (column), y down (row), and a time t: a frame index (fps not given) or seconds (the frame
  is floor(t * fps)). Fixations with a duration are one point each with the duration as `weights`.
- Each point adds weight * exp(-((col - x)^2 + (row - y)^2) / (2 sigma^2)) to its own frame: an isotropic
  Gaussian of standard deviation `sigma` pixels, not truncated, one frame long. A frame without gaze is all
  zeros. The dataset normalizes each frame afterwards (data.attn_normalize), so the peak height does not matter.
- Default width: sigma = width / 30 pixels (DEFAULT_SIGMA_FRACTION), about 1 degree of visual angle when the
  frame spans about 30 degrees of the viewer's field, the usual size of a foveal fixation blob. Pass --sigma
  in pixels for a known viewing geometry.
- Points outside the frame or outside [0, num_frames) frames are dropped and counted, never clipped onto an edge.

Shape letters: P gaze points, T frames, H x W frame size.
"""
import argparse
import csv
from pathlib import Path

import numpy as np

DEFAULT_SIGMA_FRACTION = 1 / 30   # sigma in pixels = frame width * this, when --sigma is not given


def gaze_to_attention(points, num_frames, height, width, sigma=None, fps=None, weights=None):
    """points (P, 3) rows (x, y, t) as in the module docstring -> (maps float32 (T, H, W), number dropped)."""
    points = np.asarray(points, dtype=np.float64).reshape(-1, 3)                 # (P, 3)
    weights = np.ones(len(points)) if weights is None else np.asarray(weights, dtype=np.float64)   # (P,)
    if weights.shape != (len(points),) or (weights < 0).any():
        raise ValueError(f"weights must be {len(points)} non-negative values, got shape {weights.shape}")
    if not np.isfinite(points).all():
        raise ValueError("gaze points hold NaN or inf; drop those samples (blinks, lost tracking) first")
    sigma = width * DEFAULT_SIGMA_FRACTION if sigma is None else float(sigma)
    if sigma <= 0:
        raise ValueError(f"sigma must be > 0 pixels, got {sigma}")
    x, y, t = points.T                                                           # (P,) each
    frame = np.floor(t * fps if fps else t).astype(np.int64)                     # (P,)
    inside = (frame >= 0) & (frame < num_frames) & (x > -0.5) & (x < width - 0.5) & (y > -0.5) & (y < height - 0.5)
    maps = np.zeros((num_frames, height, width), dtype=np.float64)               # (T, H, W)
    cols, rows = np.arange(width), np.arange(height)
    for px, py, f, w in zip(x[inside], y[inside], frame[inside], weights[inside]):
        gx = np.exp(-((cols - px) ** 2) / (2 * sigma ** 2))                      # (W,)
        gy = np.exp(-((rows - py) ** 2) / (2 * sigma ** 2))                      # (H,)
        maps[f] += w * gy[:, None] * gx[None, :]                                 # (H, W) separable Gaussian
    return maps.astype(np.float32), int((~inside).sum())


def read_gaze_csv(path):
    """CSV with header columns x, y, t (and optionally weight) -> (points (P, 3), weights (P,) or None)."""
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    if not rows or not {"x", "y", "t"} <= set(rows[0]):
        raise ValueError(f"{path}: expected a header with columns x,y,t (optional: weight)")
    try:
        points = np.array([[float(r["x"]), float(r["y"]), float(r["t"])] for r in rows])
        weights = np.array([float(r["weight"]) for r in rows]) if "weight" in rows[0] else None
    except (TypeError, ValueError) as error:
        raise ValueError(f"{path}: a value is not a number ({error})") from None
    return points, weights


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m data.gaze", description=__doc__.split("\n\n")[0])
    parser.add_argument("gaze_csv", help="CSV with columns x,y,t[,weight] (pixels; frame index, or seconds with --fps)")
    parser.add_argument("--out", required=True, help="attention/<id>.npy to write, (T, H, W) float32")
    parser.add_argument("--video", default=None, help="take T, H, W from this video (frame folder, .npy or .mp4)")
    parser.add_argument("--frames", type=int, default=None, help="T, when --video is not given")
    parser.add_argument("--size", type=int, nargs=2, default=None, metavar=("H", "W"), help="frame size, without --video")
    parser.add_argument("--fps", type=float, default=None, help="t is in seconds at this frame rate (default: t = frame)")
    parser.add_argument("--sigma", type=float, default=None, help="Gaussian std in pixels (default: width / 30)")
    args = parser.parse_args(argv)
    if args.video:
        from data.video import video_shape
        num_frames, height, width = video_shape(args.video)
    elif args.frames and args.size:
        num_frames, (height, width) = args.frames, args.size
    else:
        parser.error("give --video, or --frames and --size")
    points, weights = read_gaze_csv(args.gaze_csv)
    maps, dropped = gaze_to_attention(points, num_frames, height, width, args.sigma, args.fps, weights)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    np.save(args.out, maps)
    sigma = width * DEFAULT_SIGMA_FRACTION if args.sigma is None else args.sigma
    print(f"{args.out}: {num_frames} x {height} x {width} maps from {len(points) - dropped} gaze points "
          f"(sigma {sigma:.2f} px); {dropped} outside the frame or the clip dropped; "
          f"{int((maps.reshape(num_frames, -1).max(1) == 0).sum())} frames without gaze")


if __name__ == "__main__":
    main()
