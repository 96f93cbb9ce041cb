"""Real-video input of VideoAttentionCLIP (seed 003): .mp4 decoded with PyAV (a tiny mp4 written by PyAV here),
the message without PyAV, gaze points -> attention volumes (data/gaze.py) on synthetic gaze, .npy memory-mapped.
Run: python -m pytest -q tests/test_video_clip_real.py
"""
import csv
import sys

import numpy as np
import pytest
import torch

import data.video
from data.gaze import gaze_to_attention, main as gaze_main
from data.sample import DataError
from data.video import VideoFolderDataset, video_shape

T, H, W = 6, 24, 32


def _frames():
    """(T, H, W, 3) uint8: frame f is a flat grey 40 * f with a bright 8 x 8 square at column 2 + 4 f."""
    frames = np.zeros((T, H, W, 3), np.uint8)
    for f in range(T):
        frames[f] = 40 * f
        frames[f, 8:16, 2 + 4 * f:10 + 4 * f] = 250
    return frames


def _write_mp4(path, frames):
    av = pytest.importorskip("av")
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=10)
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        stream.options = {"qscale": "1"}                     # near-lossless, so pixel values can be compared
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def _folder(root, video_writer):
    """One test video 'v0' in the data/video.py format, its map from gaze at the square's centre."""
    (root / "videos").mkdir(parents=True)
    (root / "attention").mkdir()
    video_writer(root / "videos", _frames())
    gaze = [(6 + 4 * f, 12, f) for f in range(T)]                  # (x, y, t = frame): on the square
    maps, dropped = gaze_to_attention(gaze, T, H, W, sigma=2.0)
    np.save(root / "attention" / "v0.npy", maps)
    (root / "videos.csv").write_text("id,label,subject,split\nv0,b,s0,test\n")
    return maps


def test_mp4_is_decoded_sampled_and_matches_its_frames(tmp_path):
    maps = _folder(tmp_path, lambda d, frames: _write_mp4(d / "v0.mp4", frames))
    assert video_shape(tmp_path / "videos" / "v0.mp4") == (T, H, W)
    ds = VideoFolderDataset(tmp_path, "test", ["a", "b"], num_frames=4, image_size=16)
    s = ds[0]
    assert s["video"].shape == (3, 4, 16, 16) and s["attn_map"].shape == (1, 4, 16, 16) and int(s["label"]) == 1
    idx = np.linspace(0, T - 1, 4).round().astype(int)             # frames 0, 2, 3, 5
    ref = torch.from_numpy(_frames()[idx]).permute(3, 0, 1, 2).float() / 255   # (3, 4, H, W)
    ref = torch.nn.functional.interpolate(ref.transpose(0, 1), size=(16, 16), mode="bilinear",
                                          align_corners=False).transpose(0, 1)
    assert (s["video"] - ref).abs().mean() < 0.03                  # lossy codec: close, not equal
    # the attention peak follows the square, frame by frame, in video and map alike
    for t, f in enumerate(idx):
        peak = np.unravel_index(np.argmax(maps[f]), maps[f].shape)
        assert peak == (12, 6 + 4 * f)
        assert s["attn_map"][0, t].amax() == pytest.approx(1.0)    # frame_max normalization


def test_without_pyav_the_error_names_the_install_and_ffmpeg_commands(tmp_path, monkeypatch):
    _folder(tmp_path, lambda d, frames: _write_mp4(d / "v0.mp4", frames))
    monkeypatch.setitem(sys.modules, "av", None)                   # import av -> ImportError
    with pytest.raises(DataError, match=r"needs PyAV \(`pip install av`.*ffmpeg -i .*v0.mp4 .*%04d.png"):
        VideoFolderDataset(tmp_path, "test", ["a", "b"], num_frames=4)


def test_npy_clips_are_memory_mapped_and_only_sampled_frames_read(tmp_path, monkeypatch):
    _folder(tmp_path, lambda d, frames: np.save(d / "v0.npy", frames))
    calls = []
    real_load = np.load

    def spy(path, *args, **kwargs):
        calls.append(kwargs.get("mmap_mode"))
        return real_load(path, *args, **kwargs)

    monkeypatch.setattr(data.video.np, "load", spy)
    s = VideoFolderDataset(tmp_path, "test", ["a", "b"], num_frames=3, image_size=16)[0]
    assert calls and set(calls) == {"r"}                           # video and map: never read whole
    assert s["video"].shape == (3, 3, 16, 16)
    idx = np.linspace(0, T - 1, 3).round().astype(int)
    frames = data.video._read_frames("npy", tmp_path / "videos" / "v0.npy", idx)
    assert isinstance(frames, np.ndarray) and np.array_equal(frames, _frames()[idx])   # only those frames


def test_gaze_to_attention_on_synthetic_gaze(tmp_path):
    sigma = 3.0
    points = [(10, 5, 0.0), (20, 15, 0.25), (40, 5, 0.1), (5, 5, 0.9), (7, 7, -0.1)]   # x, y, t in seconds
    maps, dropped = gaze_to_attention(points, 4, H, W, sigma=sigma, fps=4, weights=[1, 2, 1, 1, 1])
    assert maps.shape == (4, H, W) and maps.dtype == np.float32
    assert dropped == 2                                            # x = 40 outside the frame; t < 0
    # frame 0 holds the point (10, 5); frame 1 (t = 0.25 s * 4 fps) the point (20, 15) with weight 2
    assert maps[0, 5, 10] == pytest.approx(1.0) and maps[1, 15, 20] == pytest.approx(2.0)
    # the stated width: one sigma away the value is exp(-1/2) of the peak, two sigma exp(-2)
    assert maps[0, 5, 13] == pytest.approx(np.exp(-0.5), rel=1e-5)
    assert maps[0, 11, 10] == pytest.approx(np.exp(-2.0), rel=1e-5)
    assert maps[2].max() == 0 and maps[3, 5, 5] == pytest.approx(1.0)   # none in frame 2; t = 0.9 s -> frame 3
    # default width: frame width / 30
    default, _ = gaze_to_attention([(16, 12, 0)], 1, H, W)
    assert default[0, 12, 16 + 1] == pytest.approx(np.exp(-0.5 * (30 / W) ** 2), rel=1e-5)
    with pytest.raises(ValueError, match="NaN"):
        gaze_to_attention([(np.nan, 1, 0)], 1, H, W)
    # the command line: CSV in, (T, H, W) .npy out, shape taken from a video
    np.save(tmp_path / "clip.npy", _frames())
    with open(tmp_path / "gaze.csv", "w", newline="") as f:
        csv.writer(f).writerows([("x", "y", "t"), (6, 12, 0), (10, 12, 1)])
    gaze_main([str(tmp_path / "gaze.csv"), "--video", str(tmp_path / "clip.npy"), "--sigma", "2",
               "--out", str(tmp_path / "attention" / "clip.npy")])
    written = np.load(tmp_path / "attention" / "clip.npy")
    assert written.shape == (T, H, W) and written[1, 12, 10] == pytest.approx(1.0) and written[2:].max() == 0


def test_prepare_copies_mp4_videos_and_the_prepared_folder_reads_the_same(tmp_path):
    from data.prepare import prepare
    raw, out = tmp_path / "raw", tmp_path / "prepared"
    raw.mkdir()
    _folder(raw, lambda d, frames: _write_mp4(d / "v0.mp4", frames))
    prepare("video", raw, out, size=16, workers=1, progress=False)
    assert (out / "videos" / "v0.mp4").read_bytes() == (raw / "videos" / "v0.mp4").read_bytes()
    a = VideoFolderDataset(raw, "test", ["a", "b"], num_frames=3, image_size=16)[0]
    b = VideoFolderDataset(out, "test", ["a", "b"], num_frames=3, image_size=16)[0]
    assert torch.equal(a["video"], b["video"]) and torch.equal(a["attn_map"], b["attn_map"])
