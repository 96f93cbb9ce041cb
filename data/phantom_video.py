"""Phantom clinical videos with clinician gaze maps, for VideoAttentionCLIP (seed 003).

    PhantomVideoDataset(num_samples, split="train", num_frames=8, image_size=32, num_classes=3,
                        gaze_informativeness=0.8, ...) -> sample dicts (keys below)
    write_video_folder(datasets_by_split, root, video_format="frames"|"npy", attn_format="npy"|"png")
        writes the real folder format of data/video.py, so the real reader is tested on phantoms
    python -m data.phantom_video --preview /tmp/video_phantom.png

A phantom is a grey, speckled, slowly panning "ultrasound-like" clip with 1 + `num_distractors` bright
objects. The class is the SHAPE of one object, the evidence (target); the distractors have random shapes
(any class) and are fainter (`distractor_contrast` < `evidence_contrast`), so the video alone does define
the class ("the brightest object's shape") but a model has to find that object among look-alikes.

Gaze (research/contrastive_vl.md §6 recipe, scaled down): each frame has `fixations_per_frame` fixations,
each a Gaussian splat (sigma = `gaze_sigma` x frame size) around a point that is
- with probability `gaze_informativeness` (the knob): on the evidence,
- otherwise: on an object chosen uniformly among ALL objects (evidence included) with probability 0.7, or
  at a uniformly random point with probability 0.3.
So gaze_informativeness = 0 gives gaze that is independent of which object is the evidence (and of the
class): uninformative. Fixations dwell for 2 frames and follow the object as it moves. Each frame's map is
normalized to max 1 (`attn_normalize: frame_max` of data/video.py).

Sample keys: video (3, T, H, W) float32 in [0, 1] (grey copied to 3 channels), attn_map (1, T, H, W)
float32, label () int64, evidence_mask (1, T, H, W) float32 (1 inside the evidence object, phantom only),
id "phantom-video-<split>-<index>", subject "<split>-s<index // videos_per_subject>".
Deterministic per (seed of the split, index); splits have disjoint seeds and therefore disjoint subjects.
"""
import argparse
import csv
from pathlib import Path

import numpy as np
import torch
from PIL import Image

PHANTOM_VIDEO_CLASSES = ("solid", "hollow", "cross", "bar")   # shapes of the evidence object
SPLIT_SEEDS = {"train": 0, "val": 1, "test": 2}


def _shape_mask(shape, yy, xx, cy, cx, radius, angle):
    """Signed soft mask in [0, 1] of one object; yy, xx (H, W) pixel grids."""
    dy, dx = yy - cy, xx - cx
    r = np.sqrt(dy ** 2 + dx ** 2)
    if shape == "solid":
        inside = radius - r
    elif shape == "hollow":                                 # ring, dark centre
        inside = 0.35 * radius - np.abs(r - 0.75 * radius)
    else:
        c, s = np.cos(angle), np.sin(angle)
        u, v = c * dx + s * dy, -s * dx + c * dy            # rotated coordinates
        half_w = 0.3 * radius
        if shape == "bar":
            inside = np.minimum(half_w - np.abs(v), radius * 1.1 - np.abs(u))
        else:                                               # cross
            arm1 = np.minimum(half_w - np.abs(v), radius - np.abs(u))
            arm2 = np.minimum(half_w - np.abs(u), radius - np.abs(v))
            inside = np.maximum(arm1, arm2)
    return np.clip(inside + 0.5, 0.0, 1.0)                  # ~1 px soft edge


def make_video_phantom(seed, index, num_frames=8, image_size=32, num_classes=3, gaze_informativeness=0.8,
                       num_distractors=2, evidence_contrast=1.0, distractor_contrast=0.7, noise=0.08,
                       fixations_per_frame=2, gaze_sigma=0.08):
    """-> dict of numpy arrays: video (T, H, W), attn_map (T, H, W), evidence_mask (T, H, W), label int."""
    if not 2 <= num_classes <= len(PHANTOM_VIDEO_CLASSES):
        raise ValueError(f"num_classes must be in 2..{len(PHANTOM_VIDEO_CLASSES)}, got {num_classes}")
    if not 0.0 <= gaze_informativeness <= 1.0:
        raise ValueError(f"gaze_informativeness must be in [0, 1], got {gaze_informativeness}")
    rng = np.random.default_rng([seed, index])
    T, S = num_frames, image_size
    label = int(rng.integers(num_classes))
    yy, xx = np.mgrid[0:S, 0:S].astype(np.float32)
    n_obj = 1 + num_distractors
    radius = S * rng.uniform(0.13, 0.17, n_obj)
    shapes = [PHANTOM_VIDEO_CLASSES[label]] + [PHANTOM_VIDEO_CLASSES[i] for i in rng.integers(num_classes, size=num_distractors)]
    contrast = np.array([evidence_contrast] + [distractor_contrast] * num_distractors) * rng.uniform(0.9, 1.1, n_obj)
    angles = rng.uniform(0, np.pi, n_obj)
    # object centres that do not overlap, then a shared slow pan plus a small own drift per object
    centres = []
    while len(centres) < n_obj:
        c = rng.uniform(0.22 * S, 0.78 * S, 2)
        if all(np.hypot(*(c - o)) > 0.3 * S for o in centres) or rng.random() < 0.02:
            centres.append(c)
    centres = np.array(centres)                                                  # (n_obj, 2) y, x
    pan = rng.normal(0, 0.015 * S, 2)
    drift = rng.normal(0, 0.01 * S, (n_obj, 2))
    t = np.arange(T)[:, None, None]
    path = centres[None] + t * (pan[None, None] + drift[None])                   # (T, n_obj, 2)

    base = 0.25 + 0.1 * rng.random()
    video = np.empty((T, S, S), np.float32)
    evidence = np.empty((T, S, S), np.float32)
    speckle = rng.normal(0, 1, (T, S, S)).astype(np.float32)
    for f in range(T):
        frame = np.full((S, S), base, np.float32)
        for k in range(n_obj):
            m = _shape_mask(shapes[k], yy, xx, path[f, k, 0], path[f, k, 1], radius[k], angles[k])
            frame += 0.6 * contrast[k] * m * (1 + 0.05 * np.sin(f + k))
            if k == 0:
                evidence[f] = m > 0.5
        video[f] = frame + noise * speckle[f]
    video = np.clip(video, 0, 1)

    # gaze: fixations dwell 2 frames; each picks a target as the module docstring says
    attn = np.zeros((T, S, S), np.float32)
    sigma = gaze_sigma * S
    for start in range(0, T, 2):
        for _ in range(fixations_per_frame):
            u = rng.random()
            if u < gaze_informativeness:
                target = 0
            elif rng.random() < 0.7:
                target = int(rng.integers(n_obj))
            else:
                target = -1
            point = rng.uniform(0.1 * S, 0.9 * S, 2)
            jitter = rng.normal(0, 0.03 * S, 2)
            for f in range(start, min(start + 2, T)):
                cy, cx = (path[f, target] + jitter) if target >= 0 else point
                attn[f] += np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * sigma ** 2))
    attn /= np.maximum(attn.max(axis=(1, 2), keepdims=True), 1e-8)
    return {"video": video, "attn_map": attn, "evidence_mask": evidence, "label": label}


class PhantomVideoDataset(torch.utils.data.Dataset):
    """Phantom clips with gaze maps (module docstring); generated once and kept in memory (small)."""

    def __init__(self, num_samples, split="train", num_frames=8, image_size=32, num_classes=3,
                 gaze_informativeness=0.8, videos_per_subject=2, seed_offset=0, **phantom_kw):
        if split not in SPLIT_SEEDS:
            raise ValueError(f"split must be one of {sorted(SPLIT_SEEDS)}, got {split!r}")
        self.split, self.num_classes = split, num_classes
        self.class_names = list(PHANTOM_VIDEO_CLASSES[:num_classes])
        self.videos_per_subject = videos_per_subject
        seed = SPLIT_SEEDS[split] + 1000 * seed_offset
        self.items = [make_video_phantom(seed, i, num_frames, image_size, num_classes, gaze_informativeness,
                                         **phantom_kw) for i in range(num_samples)]

    def __len__(self):
        return len(self.items)

    def __getitem__(self, index):
        item = self.items[index]
        video = torch.from_numpy(item["video"])[None]                            # (1, T, H, W)
        return {"video": video.expand(3, -1, -1, -1).clone(),                     # (3, T, H, W)
                "attn_map": torch.from_numpy(item["attn_map"])[None],             # (1, T, H, W)
                "evidence_mask": torch.from_numpy(item["evidence_mask"])[None],   # (1, T, H, W)
                "label": torch.tensor(item["label"], dtype=torch.long),
                "id": f"phantom-video-{self.split}-{index:05d}",
                "subject": f"{self.split}-s{index // self.videos_per_subject:05d}"}


def write_video_folder(datasets, root, video_format="frames", attn_format="npy"):
    """Write {split: dataset} in data/video.py's real folder format under `root`; returns the CSV path.

    video_format: "frames" (videos/<id>/0000.png ...) or "npy" (videos/<id>.npy, (T, H, W) uint8);
    attn_format: "npy" (attention/<id>.npy, (T, H, W) float32) or "png" (attention/<id>/0000.png ...).
    """
    root = Path(root)
    (root / "videos").mkdir(parents=True, exist_ok=True)
    (root / "attention").mkdir(parents=True, exist_ok=True)
    rows = []
    for split, dataset in datasets.items():
        for i in range(len(dataset)):
            s = dataset[i]
            vid = s["id"]
            frames = (s["video"][0].numpy() * 255).round().astype(np.uint8)        # (T, H, W)
            attn = s["attn_map"][0].numpy()                                       # (T, H, W)
            if video_format == "npy":
                np.save(root / "videos" / f"{vid}.npy", frames)
            else:
                (root / "videos" / vid).mkdir(exist_ok=True)
                for f, frame in enumerate(frames):
                    Image.fromarray(frame).save(root / "videos" / vid / f"{f:04d}.png")
            if attn_format == "npy":
                np.save(root / "attention" / f"{vid}.npy", attn.astype(np.float32))
            else:
                (root / "attention" / vid).mkdir(exist_ok=True)
                for f, frame in enumerate(attn):
                    Image.fromarray((frame * 255).round().astype(np.uint8)).save(root / "attention" / vid / f"{f:04d}.png")
            rows.append((vid, dataset.class_names[int(s["label"])], s["subject"], split))
    csv_path = root / "videos.csv"
    with open(csv_path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["id", "label", "subject", "split"])
        writer.writerows(rows)
    return csv_path


def _preview(path, n=6, **kw):
    """One row per phantom: frames 0, T/2, T-1 and the gaze map of the same frames (heat in red)."""
    ds = PhantomVideoDataset(n, **kw)
    tiles = []
    for i in range(n):
        s = ds[i]
        T = s["video"].shape[1]
        row = []
        for f in (0, T // 2, T - 1):
            grey = (s["video"][0, f].numpy() * 255).astype(np.uint8)
            heat = s["attn_map"][0, f].numpy()
            rgb = np.stack([grey] * 3, -1).astype(np.float32)
            rgb[..., 0] = np.clip(rgb[..., 0] * (1 - heat) + 255 * heat, 0, 255)
            row += [np.stack([grey] * 3, -1), rgb.astype(np.uint8)]
        tiles.append(np.concatenate(row, 1))
    grid = np.concatenate(tiles, 0)
    Image.fromarray(grid).resize((grid.shape[1] * 4, grid.shape[0] * 4), Image.NEAREST).save(path)
    print(f"wrote {path}: rows = phantoms ({', '.join(ds.class_names[int(ds[i]['label'])] for i in range(n))}); "
          "columns = frame 0, its gaze, frame T/2, its gaze, frame T-1, its gaze")


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--preview", required=True, help="PNG path")
    p.add_argument("--n", type=int, default=6)
    p.add_argument("--gaze-informativeness", type=float, default=0.8)
    a = p.parse_args()
    _preview(a.preview, a.n, gaze_informativeness=a.gaze_informativeness)
