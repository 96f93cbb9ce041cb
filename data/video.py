"""Real clinical videos with clinician attention maps, in one documented folder format (seed 003 data).

    VideoFolderDataset(root, split, class_names, num_frames=16, image_size=112, attn_normalize="frame_max")
    normalize_attention(maps, mode) ; subject_splits(subjects, fractions, seed) ; video_shape(path) -> (T, H, W)

Folder format (write your data like this; data/phantom_video.py `write_video_folder` writes phantoms so):

    <root>/videos.csv            header `id,label,subject,split`, one row per video
                                 id: file stem below; label: a name from `data.class_names`;
                                 subject: patient/participant id; split: train | val | test, or empty to
                                 let subject_splits assign it (70/15/15 by subject, seeded)
    <root>/videos/<id>/          a frame folder: one image per frame (png/jpg/bmp/tif, any PIL mode),
                                 in file-name order (zero-pad the numbers: 0000.png, 0001.png, ...)
      or <root>/videos/<id>.npy  array (T, H, W) grey or (T, H, W, 3) RGB; uint8 0..255 or float in [0, 1];
                                 memory-mapped: only the sampled frames are read
      or <root>/videos/<id>.mp4  (or .avi, .mov, .mkv) decoded with PyAV (`pip install av`, an optional
                                 dependency; without it the error names the install command and the ffmpeg
                                 command `ffmpeg -i <id>.mp4 videos/<id>/%04d.png` that makes a frame folder)
    <root>/attention/<id>.npy    attention maps (T, H, W) or (T, A, H, W), non-negative, any scale
      or <root>/attention/<id>/  one grey PNG per video frame, same count and order as the frames

Rules checked when the dataset is built (each failure is one message naming the file or CSV row):
a missing video or attention map, an unknown label, a bad split name, a frame-count mismatch between a
video and its attention map, a subject that appears in two splits. videos.csv is read by data/io.py
`read_csv`: a row with too few or too many cells, a byte that is not UTF-8 and a repeated id (both lines
named), and a row whose video or attention map is missing or does not match, go through `on_error` (stop:
DataError; skip: the row is left out and counted in `policy.skipped`); an unknown label, a bad split name and a
subject in two splits always stop (they are a wrong data.class_names or a wrong split column, not one bad video).
A frame image or .npy that cannot be decoded (truncated, corrupt) is a DataError naming its path when the video
is loaded; under skip the video is left out of its batch instead and counted (data/io.py RecordDataset, whose
load-time policy this class shares), and `check_images=True` reads every video once when the dataset is built.
Maps may have another resolution than the frames (they are resized to the frame size). Gaze recordings
(x, y, t points) become attention/<id>.npy volumes with data/gaze.py (`python -m data.gaze`: one Gaussian
per point, of a stated width, on the frame the point's time falls in).

Sample: video (3, T, H, W) float32 in [0, 1] (grey copied to 3 channels), attn_map (A, T, H, W) float32
normalized by `attn_normalize` (frame_max: each frame's max = 1; frame_sum: each frame sums to 1; none),
label () int64, id, subject. T = num_frames frames sampled uniformly over the clip (the same indices for
video and map); H = W = image_size.
"""
import hashlib
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from data.io import IMAGE_ERRORS, RecordDataset, column_index, first_of_each, make_policy, read_csv
from data.sample import DataError

SPLITS = ("train", "val", "test")
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff"}
VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv")   # decoded with PyAV (optional dependency)
REQUIRED_COLUMNS = ("id", "label", "subject", "split")


def normalize_attention(maps, mode="frame_max"):
    """maps (A, T, H, W) non-negative -> same shape, normalized per frame."""
    if mode == "none":
        return maps
    if mode == "frame_max":
        return maps / maps.amax(dim=(0, 2, 3), keepdim=True).clamp_min(1e-8)
    if mode == "frame_sum":
        return maps / maps.sum(dim=(0, 2, 3), keepdim=True).clamp_min(1e-8)
    raise ValueError(f"data.attn_normalize must be frame_max, frame_sum or none, got {mode!r}")


def subject_splits(subjects, fractions=(0.7, 0.15, 0.15), seed=0):
    """{subject: split} from a seeded hash of the subject id, so a subject's videos share one split."""
    out = {}
    for s in sorted(set(subjects)):
        u = int(hashlib.sha1(f"{seed}:{s}".encode()).hexdigest()[:8], 16) / 0xFFFFFFFF
        out[s] = "train" if u < fractions[0] else "val" if u < fractions[0] + fractions[1] else "test"
    return out


def _frame_files(folder):
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)


def _locate(root, kind, vid):
    """-> (format, path) of videos/<id> or attention/<id>, or None."""
    base = root / kind
    if (base / vid).is_dir():
        return "frames", base / vid
    for suffix in (".npy",) + VIDEO_SUFFIXES:
        if (base / f"{vid}{suffix}").is_file():
            return ("npy" if suffix == ".npy" else "video"), base / f"{vid}{suffix}"
    return None


def _open_video(path):
    """PyAV container of a video file; DataError naming the install and conversion commands without PyAV."""
    try:
        import av
    except ImportError:
        raise DataError(f"{path}: decoding {path.suffix} videos needs PyAV (`pip install av`, an optional "
                        f"dependency). Or convert it to a frame folder: `ffmpeg -i {path} "
                        f"{path.with_suffix('')}/%04d.png` (then remove the {path.suffix} file)") from None
    try:
        return av.open(str(path))
    except (av.error.FFmpegError, OSError, ValueError) as error:
        raise DataError(f"cannot open video {path}: {error}") from None


def _decode_video(path, keep=None):
    """Video file -> uint8 numpy (n, H, W, 3) RGB of the frames whose index is in `keep` (all if None), in order;
    frames are decoded one after another up to the last kept one, and only the kept ones are stored."""
    import av
    frames, last = [], None if keep is None else max(keep)
    with _open_video(path) as container:
        try:
            for i, frame in enumerate(container.decode(video=0)):
                if keep is None or i in keep:
                    frames.append(frame.to_ndarray(format="rgb24"))            # (H, W, 3)
                if last is not None and i >= last:
                    break
        except (av.error.FFmpegError, ValueError) as error:
            raise DataError(f"cannot decode video {path} after {len(frames)} frames: {error}") from None
    if not frames:
        raise DataError(f"{path}: no video frames decoded")
    return np.stack(frames)


def _count_frames(fmt, path):
    if fmt == "frames":
        return len(_frame_files(path))
    if fmt == "npy":
        return int(_load_npy(path, mmap_mode="r").shape[0])
    with _open_video(path) as container:          # the container's frame count, else count by decoding
        if not container.streams.video:
            raise DataError(f"{path}: no video stream")
        counted = container.streams.video[0].frames
    return int(counted) if counted > 0 else len(_decode_video(path))


def _load_npy(path, mmap_mode=None):
    try:
        return np.load(path, mmap_mode=mmap_mode)
    except (OSError, ValueError, EOFError) as error:  # truncated file, bad header, pickled object
        raise DataError(f"cannot read array {path}: {error}; expected a .npy array") from None


def _load_frame(path):
    """One frame image -> numpy (H, W) or (H, W, C); DataError naming the file if truncated or corrupt."""
    try:
        with Image.open(path) as image:
            return np.asarray(image)
    except IMAGE_ERRORS as error:
        raise DataError(f"cannot read image {path}: {error}; expected a readable frame image") from None


def _read_frames(fmt, path, idx=None):
    """-> numpy (T, H, W, C) in the file's own value range and dtype: the frames at indices idx (all if None).
    Only those frames are read: frame files by index, .npy through a memory map, videos decoded up to the last."""
    if fmt == "frames":
        files = _frame_files(path)
        arrays = [_load_frame(files[i]) for i in (range(len(files)) if idx is None else idx)]
        shapes = {a.shape for a in arrays}
        if len(shapes) != 1:
            raise DataError(f"{path}: frames have different sizes {sorted(shapes)}")
        arr = np.stack(arrays)
    elif fmt == "npy":
        arr = _load_npy(path, mmap_mode="r")
        if idx is not None:
            arr = arr[np.asarray(idx)]                                 # copies only these frames
    else:
        decoded = _decode_video(path, None if idx is None else set(int(i) for i in idx))   # (n, H, W, 3)
        if idx is not None:   # repeated indices (a clip shorter than num_frames) map to the sorted unique ones
            unique = sorted(set(int(i) for i in idx))
            if len(decoded) != len(unique):
                raise DataError(f"{path}: decoded {len(decoded)} of the {len(unique)} frames asked for "
                                "(fewer frames than the container reports)")
            arr = decoded[[unique.index(int(i)) for i in idx]]
        else:
            arr = decoded
    if arr.ndim == 3:
        arr = arr[..., None]
    if arr.ndim != 4:
        raise DataError(f"{path}: expected (T, H, W) or (T, H, W, C) frames, got shape {arr.shape}")
    return arr


def video_shape(path):
    """A frame folder, .npy or video file -> (T, H, W) of its frames (reads the first frame only)."""
    path = Path(path)
    fmt = "frames" if path.is_dir() else "npy" if path.suffix == ".npy" else "video"
    frame = _read_frames(fmt, path, [0])                                        # (1, H, W, C)
    return _count_frames(fmt, path), frame.shape[1], frame.shape[2]


def _read_maps(fmt, path, idx=None):
    """-> float32 numpy (T, A, H, W) at frame indices idx (all if None): npy (T, H, W) or (T, A, H, W), memory-mapped;
    PNG frames must be grey."""
    if fmt == "frames":
        arr = _read_frames(fmt, path, idx)                                      # (T, H, W, C)
        if arr.shape[-1] != 1:
            raise DataError(f"{path}: attention PNGs must be single-channel (grey), got {arr.shape[-1]} channels")
        arr = arr.transpose(0, 3, 1, 2)
    else:
        arr = _load_npy(path, mmap_mode="r")
        if arr.ndim == 3:
            arr = arr[:, None]
        if arr.ndim != 4:
            raise DataError(f"{path}: expected an attention array (T, H, W) or (T, A, H, W), got shape {arr.shape}")
        if idx is not None:
            arr = arr[np.asarray(idx)]                                         # copies only these frames
    return np.asarray(arr, dtype=np.float32)


class VideoFolderDataset(RecordDataset):
    """One split of a folder in the format of the module docstring. on_error (data.on_error): stop | skip, for
    the rows of videos.csv and for videos that cannot be loaded; check_images: read every video and attention map
    once now, so those are found (and under skip left out) before training. A record is one video."""

    def __init__(self, root, split, class_names, num_frames=16, image_size=112, attn_normalize="frame_max",
                 split_seed=0, on_error="stop", check_images=False):
        self.root, self.split = Path(root), split
        self.class_names = list(class_names)
        self.num_frames, self.image_size, self.attn_normalize = num_frames, image_size, attn_normalize
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        csv_path = self.root / "videos.csv"
        if not csv_path.is_file():
            raise DataError(f"{csv_path}: not found; a video folder needs videos.csv with columns "
                            f"{','.join(REQUIRED_COLUMNS)} (data/video.py docstring)")
        policy = make_policy(on_error, "video folder")
        header, cells_of_rows = read_csv(csv_path, policy)
        col = column_index(header, REQUIRED_COLUMNS, csv_path)
        keyed = [(line, cells[col["id"]].strip(), (line, {c: cells[col[c]].strip() for c in REQUIRED_COLUMNS}))
                 for line, cells in cells_of_rows]
        rows = first_of_each(policy, csv_path, "id", keyed).values()  # a repeated id: one video counted twice
        auto = subject_splits([r["subject"] for _, r in rows], seed=split_seed)
        subject_split, records = {}, []
        for line, row in rows:
            where = f"{csv_path} row {line} (id {row['id']!r})"
            if row["label"] not in self.class_names:
                raise DataError(f"{where}: unknown label {row['label']!r}; expected one of {self.class_names} "
                                "(data.class_names)")
            row_split = row["split"].strip() or auto[row["subject"]]
            if row_split not in SPLITS:
                raise DataError(f"{where}: split {row['split']!r} is not one of {SPLITS} (or empty)")
            if subject_split.setdefault(row["subject"], row_split) != row_split:
                raise DataError(f"{where}: subject {row['subject']!r} is in split {row_split!r} and in "
                                f"{subject_split[row['subject']]!r}; splits must be by subject")
            if row_split != split:
                continue
            try:
                video, attn = self._files(row["id"], where)
            except DataError as error:
                policy(str(error))            # stop: raises; skip: this video is left out
                continue
            records.append({"id": row["id"], "label": self.class_names.index(row["label"]), "subject": row["subject"],
                            "patient_id": row["subject"], "video": video, "attn": attn, "image_path": video[1],
                            "where": where})
        if not records:
            raise DataError(f"{csv_path}: no videos in split {split!r}")
        super().__init__(records, None, policy, "video folder", check_images)

    def _files(self, vid, where):
        """-> ((format, path) of the video, (format, path) of its attention map), or DataError."""
        video = _locate(self.root, "videos", vid)
        if video is None:
            raise DataError(f"{where}: no video; looked for videos/{vid}/ (frames), videos/{vid}.npy and "
                            f"videos/{vid}.mp4 (.avi, .mov, .mkv) under {self.root}")
        attn = _locate(self.root, "attention", vid)
        if attn is None or attn[0] == "video":
            raise DataError(f"{where}: missing attention map; looked for attention/{vid}.npy and "
                            f"attention/{vid}/ (one PNG per frame) under {self.root}")
        n_video, n_attn = _count_frames(*video), _count_frames(*attn)
        if n_video == 0:
            raise DataError(f"{where}: {video[1]} has no frames")
        if n_video != n_attn:
            raise DataError(f"{where}: frame-count mismatch: video {video[1]} has {n_video} frames, "
                            f"attention map {attn[1]} has {n_attn}")
        return video, attn

    @property
    def items(self):
        """(id, label index, subject, (format, path) of the video, (format, path) of the map) per video."""
        return [(r["id"], r["label"], r["subject"], r["video"], r["attn"]) for r in self.records]

    def _image_ok(self, record):
        """check_images: the whole video and map load (RecordDataset checks one image and its boxes)."""
        try:
            self._sample(record)
            return True
        except DataError as error:
            self.policy(str(error))
            return False

    def _resize(self, x, mode):
        """x (C, T, h, w) -> (C, T, S, S)"""
        S = self.image_size
        if x.shape[-2:] == (S, S):
            return x
        kw = {"align_corners": False} if mode == "bilinear" else {}
        return F.interpolate(x.transpose(0, 1), size=(S, S), mode=mode, **kw).transpose(0, 1)

    def _sample(self, record):
        """One video -> the sample of the module docstring (RecordDataset.__getitem__ applies on_error)."""
        vid, label, subject = record["id"], record["label"], record["subject"]
        (vfmt, vpath), (afmt, apath) = record["video"], record["attn"]
        n_frames = _count_frames(vfmt, vpath)                                     # T0
        idx = np.linspace(0, n_frames - 1, self.num_frames).round().astype(int)  # (T,) same for video and map
        frames = _read_frames(vfmt, vpath, idx)                                   # (T, h, w, C)
        frames = frames.astype(np.float32) / 255.0 if frames.dtype == np.uint8 else frames.astype(np.float32)
        if frames.shape[-1] not in (1, 3, 4):
            raise DataError(f"{vpath}: expected 1 (grey) or 3 (RGB) channels, got {frames.shape[-1]}")
        maps = _read_maps(afmt, apath, idx)                                       # (T, A, h', w')
        if (maps < 0).any():
            raise DataError(f"{apath}: attention map has negative values (min {maps.min():.3g})")
        video = torch.from_numpy(np.ascontiguousarray(frames[..., :3])).permute(3, 0, 1, 2)   # (C, T, h, w)
        if video.shape[0] == 1:
            video = video.expand(3, -1, -1, -1)                                 # (3, T, h, w)
        attn = torch.from_numpy(np.ascontiguousarray(maps)).transpose(0, 1)     # (A, T, h', w')
        video = self._resize(video.float(), "bilinear").clamp(0, 1)              # (3, T, S, S)
        attn = normalize_attention(self._resize(attn, "area"), self.attn_normalize)   # (A, T, S, S)
        return {"video": video.contiguous(), "attn_map": attn.contiguous(),
                "label": torch.tensor(label, dtype=torch.long), "id": vid, "subject": subject}
