"""metrics/visualize.py: the PNGs exist, are upscaled, show the boxes where they are, and carry a colour bar
whose ends are the ramp's end colours. Run: python -m pytest -q tests/test_metrics_visualize.py"""
import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from metrics.visualize import _STOPS, attention_grid, colorize, draw_boxes, heatmap_overlay


def test_draw_boxes_places_red_and_green(tmp_path):
    image = torch.full((3, 64, 64), 0.5)
    path = draw_boxes(image, [torch.tensor([8.0, 8.0, 40.0, 40.0])], np.array([[20.0, 20.0, 60.0, 60.0]]),
                      ["nodule"], tmp_path / "sub" / "boxes.png", title="case 1")
    picture = np.asarray(Image.open(path).convert("RGB")).astype(int)
    top = picture.shape[0] - 256                                   # title lines above the 4x upscaled image
    assert picture.shape[1] >= 256 and top > 0
    # predicted box left edge: x = 8 * 4 = 32 on the upscaled image, a red pixel halfway down the box
    red = picture[top + 24 * 4, 32]
    assert red[0] > 200 and red[1] < 80
    # ground-truth box right edge at x = 60 * 4 = 240 (dashed: some pixels along the edge are green)
    column = picture[top + 20 * 4: top + 60 * 4, 239]
    assert ((column[:, 1] > 180) & (column[:, 0] < 100)).any()


def test_heatmap_overlay_has_colour_bar_and_title(tmp_path):
    heatmap = np.zeros((8, 8))
    heatmap[2, 5] = 3.0
    path = heatmap_overlay(np.zeros((64, 64)), heatmap, tmp_path / "heat.png", "a title", colorbar=True)
    picture = np.asarray(Image.open(path).convert("RGB")).astype(int)
    assert picture.shape[1] > 256 + 60                              # image + colour bar
    bar = picture[:, 256 + 4 + 8]                                  # a column through the bar
    assert (np.abs(bar - _STOPS[-1]).sum(1) < 6).any()              # top of the bar = highest colour
    assert (np.abs(bar - _STOPS[0]).sum(1) < 6).any()
    with pytest.raises(ValueError, match="NaN"):
        heatmap_overlay(np.zeros((8, 8)), np.full((8, 8), np.nan), tmp_path / "bad.png", "x")


def test_attention_grid_panels(tmp_path):
    maps = np.random.default_rng(0).random((7, 4, 4))
    path = attention_grid(torch.rand(64, 64), maps, [f"query {i}" for i in range(7)], tmp_path / "grid.png", columns=4)
    picture = Image.open(path)
    assert picture.width > 4 * 160 and picture.height > 2 * 160      # 4 columns x 2 rows of >=160 px panels
    with pytest.raises(ValueError, match="names"):
        attention_grid(np.zeros((8, 8)), maps, ["only one"], tmp_path / "bad.png")


def test_colorize_ends():
    colours = colorize(np.array([[0.0, 1.0]]), 0.0, 1.0)
    assert colours[0, 0].tolist() == _STOPS[0].tolist() and colours[0, 1].tolist() == _STOPS[-1].tolist()


def test_draw_boxes_names_must_be_strings(tmp_path):
    with pytest.raises(ValueError, match=r"names\[0\] is a Tensor"):
        draw_boxes(np.zeros((8, 8)), [torch.tensor([1.0, 1.0, 4.0, 4.0])], None, [torch.tensor([1.0, 1.0, 4.0, 4.0])],
                   tmp_path / "x.png")


def test_colour_bar_is_as_wide_as_its_longest_tick_label():
    from metrics.visualize import _colorbar, _font
    font = _font(14)
    bar = np.asarray(_colorbar(200, -2.11e-5, 2.11e-5, font).convert("L")).astype(int)
    text_width = ImageDraw.Draw(Image.new("RGB", (1, 1))).textbbox((0, 0), "-2.11e-05", font=font)[2]
    assert bar.shape[1] >= 10 + 16 + text_width
    assert (bar[:, -2:] == 255).all()                       # nothing drawn up to the edge: no label cut off


def test_box_label_near_the_right_edge_stays_inside_the_picture(tmp_path):
    name = "enlarged cardiomediastinum"
    path = draw_boxes(np.full((64, 64), 0.5), [np.array([54.0, 30.0, 63.0, 40.0])], None, [name], tmp_path / "edge.png")
    picture = np.asarray(Image.open(path).convert("RGB")).astype(int)
    label_rows = picture[-256 + 30 * 4: -256 + 30 * 4 + 14]       # the rows of the label, just under the box top
    red_fill = (label_rows[..., 0] > 200) & (label_rows[..., 1] < 80) & (label_rows[..., 2] < 80)
    columns = np.where(red_fill.any(0))[0]
    assert columns.min() < 54 * 4 - 60               # moved left of the box so the whole name fits
    assert columns.max() < picture.shape[1]
