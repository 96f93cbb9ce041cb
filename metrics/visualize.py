"""PNG figures a person can read, with pillow only (matplotlib is not a project package).

- draw_boxes: ground-truth boxes (green, dashed) and predicted boxes (red, with their class name) over the
  image, a legend line on top.
- heatmap_overlay: the heatmap resized (bilinear) to the image, coloured with a perceptual blue-to-yellow
  ramp (viridis-like stops), blended at 50 %, a title, and a colour bar with 5 labelled ticks giving the
  heatmap's own value range (no silent normalization: the bar says what the colours mean).
- attention_grid: one panel per query map (Q, h, w) in a grid with the query name above each panel;
  ONE shared colour scale across panels (so panels are comparable) and one colour bar.
Images: torch (3, H, W) / (1, H, W) / (H, W) or numpy (H, W, 3) / (H, W); values in [0, 1] are shown as
they are, any other range is min-max scaled for display. Small images are upscaled (nearest) so the
shorter side is at least 256 px. Boxes are xyxy in image pixels. Every function returns the path it wrote.
"""
import functools
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

# viridis-like colour stops (perceptually ordered dark blue -> teal -> green -> yellow)
_STOPS = np.array([[68, 1, 84], [59, 82, 139], [33, 145, 140], [94, 201, 98], [253, 231, 37]], dtype=np.float64)
MIN_SIDE = 256


@functools.lru_cache(maxsize=None)   # one font object per size, not one per label
def _font(size=14):
    try:
        return ImageFont.load_default(size=size)
    except TypeError:                       # pillow < 10.1: fixed bitmap font
        return ImageFont.load_default()


def _numpy(x):
    if hasattr(x, "detach"):
        x = x.detach().cpu().float().numpy()
    return np.asarray(x, dtype=np.float64)


def _rgb(image):
    """image in any accepted layout -> (H, W, 3) uint8."""
    image = _numpy(image)
    if image.ndim == 3 and image.shape[0] in (1, 3) and image.shape[-1] not in (1, 3):
        image = image.transpose(1, 2, 0)                          # (C, H, W) -> (H, W, C)
    if image.ndim == 3 and image.shape[-1] == 1:
        image = image[..., 0]
    if image.ndim == 2:
        image = np.repeat(image[..., None], 3, -1)
    if image.ndim != 3 or image.shape[-1] != 3:
        raise ValueError(f"image: expected (3, H, W), (H, W, 3) or (H, W), got shape {image.shape}")
    low, high = image.min(), image.max()
    if low < 0 or high > 1:
        image = (image - low) / (high - low) if high > low else np.zeros_like(image)
    return (image * 255).round().clip(0, 255).astype(np.uint8)


def _scale_factor(height, width):
    return max(1, int(np.ceil(MIN_SIDE / min(height, width))))


def colorize(values, low, high):
    """(H, W) values -> (H, W, 3) uint8 through the colour ramp over [low, high]."""
    t = np.clip((values - low) / (high - low), 0, 1) if high > low else np.zeros_like(values)
    position = t * (len(_STOPS) - 1)
    index = np.minimum(position.astype(int), len(_STOPS) - 2)
    fraction = (position - index)[..., None]
    return (_STOPS[index] * (1 - fraction) + _STOPS[index + 1] * fraction).round().astype(np.uint8)


def _resize_map(heatmap, height, width):
    heatmap = _numpy(heatmap)
    if heatmap.ndim == 3 and heatmap.shape[0] == 1:
        heatmap = heatmap[0]
    if heatmap.ndim != 2:
        raise ValueError(f"heatmap: expected (h, w), got shape {heatmap.shape}")
    if heatmap.shape == (height, width):
        return heatmap
    as_image = Image.fromarray(heatmap.astype(np.float32), mode="F")
    return np.asarray(as_image.resize((width, height), Image.BILINEAR), dtype=np.float64)


def _colorbar(height, low, high, font, label=""):
    """A vertical bar with 5 ticks labelled low..high; the canvas is as wide as the widest tick label."""
    bar_width = 16
    ticks = []
    for k in range(5):
        value = high - (high - low) * k / 4
        value = 0.0 if abs(value) < 1e-6 * max(abs(high), abs(low), 1e-30) else value   # no "1.5e-10" ticks
        ticks.append((10 + round((height - 21) * k / 4), f"{value:.3g}"))
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    text_width = max(measure.textbbox((0, 0), text, font=font)[2] for _, text in ticks)
    canvas = Image.new("RGB", (max(78, 10 + bar_width + text_width + 4), height), "white")
    ramp = np.linspace(high, low, max(height - 20, 2))[:, None].repeat(bar_width, 1)
    canvas.paste(Image.fromarray(colorize(ramp, low, high)), (4, 10))
    draw = ImageDraw.Draw(canvas)
    for y, text in ticks:
        draw.line([(4 + bar_width, y), (8 + bar_width, y)], fill="black")
        draw.text((10 + bar_width, y - 7), text, fill="black", font=font)
    if label:
        draw.text((2, 0), label, fill="black", font=font)
    return canvas


def _titled(panel, title, font, height=22):
    """Title line above the panel; the canvas widens when the title is wider than the panel."""
    text_width = ImageDraw.Draw(panel).textbbox((0, 0), title, font=font)[2] + 8
    out = Image.new("RGB", (max(panel.width, text_width), panel.height + height), "white")
    out.paste(panel, (0, height))
    ImageDraw.Draw(out).text((4, 3), title, fill="black", font=font)
    return out


def _save(figure, path):
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.save(path)
    return path


def _dashed_rectangle(draw, box, colour, width, dash=6):
    x0, y0, x1, y1 = box
    for a, b, horizontal, fixed in ((x0, x1, True, y0), (x0, x1, True, y1), (y0, y1, False, x0), (y0, y1, False, x1)):
        position = a
        while position < b:
            end = min(position + dash, b)
            points = [(position, fixed), (end, fixed)] if horizontal else [(fixed, position), (fixed, end)]
            draw.line(points, fill=colour, width=width)
            position += 2 * dash


def draw_boxes(image, pred_boxes, gt_boxes, names, path, title=None, gt_names=None):
    """Predicted boxes (red, labelled with `names`) and ground-truth boxes (green, dashed) over the image."""
    rgb = _rgb(image)
    height, width = rgb.shape[:2]
    factor = _scale_factor(height, width)
    picture = Image.fromarray(rgb).resize((width * factor, height * factor), Image.NEAREST)
    draw, font = ImageDraw.Draw(picture), _font(13)
    as_rows = lambda boxes: [] if boxes is None else [_numpy(b).reshape(-1) for b in boxes] if isinstance(  # noqa: E731
        boxes, (list, tuple)) else list(_numpy(boxes).reshape(-1, 4))
    gt_rows, pred_rows = as_rows(gt_boxes), as_rows(pred_boxes)
    names = list(names) if names is not None else [""] * len(pred_rows)
    gt_names = list(gt_names) if gt_names is not None else [""] * len(gt_rows)
    for label, given in (("names", names), ("gt_names", gt_names)):
        wrong = [i for i, name in enumerate(given) if not isinstance(name, str)]
        if wrong:
            raise ValueError(f"draw_boxes: {label}[{wrong[0]}] is a {type(given[wrong[0]]).__name__}, expected a "
                             f"class-name str (one per box)")
    def label(x, y, name, fill, text_colour):
        """A filled label at (x, y), moved inside the picture when the box is near (or past) an edge."""
        left, top, right, bottom = draw.textbbox((0, 0), name, font=font)
        x = min(max(x, 0), max(picture.width - (right - left) - 2, 0))
        y = min(max(y, 0), max(picture.height - (bottom - top) - 4, 0))
        text_box = draw.textbbox((x, y), name, font=font)
        draw.rectangle([text_box[0] - 1, text_box[1] - 1, text_box[2] + 1, text_box[3] + 1], fill=fill)
        draw.text((x, y), name, fill=text_colour, font=font)

    for box, name in zip(gt_rows, gt_names):
        scaled = [float(v) * factor for v in box]
        _dashed_rectangle(draw, scaled, (40, 220, 60), 3)
        if name:
            label(scaled[0] + 3, scaled[3] - 16, name, (40, 220, 60), "black")
    for box, name in zip(pred_rows, names):
        scaled = [float(v) * factor for v in box]
        draw.rectangle(scaled, outline=(235, 40, 40), width=2)
        if name:
            label(scaled[0] + 2, scaled[1] + 2, name, (235, 40, 40), "white")
    legend = f"green dashed: truth ({len(gt_rows)}), red: predicted ({len(pred_rows)})"
    figure = _titled(picture, legend, font)
    if title:
        figure = _titled(figure, title, _font(14))
    return _save(figure, path)


def heatmap_overlay(image, heatmap, path, title, colorbar=True, alpha=0.5):
    """The heatmap resized to the image, coloured and blended, with a title and a colour bar."""
    rgb = _rgb(image)
    height, width = rgb.shape[:2]
    values = _resize_map(heatmap, height, width)
    if not np.isfinite(values).all():
        raise ValueError(f"heatmap for {path}: holds NaN or inf")
    low, high = float(values.min()), float(values.max())
    blended = (rgb * (1 - alpha) + colorize(values, low, high) * alpha).round().astype(np.uint8)
    factor = _scale_factor(height, width)
    panel = Image.fromarray(blended).resize((width * factor, height * factor), Image.NEAREST)
    if colorbar:
        bar = _colorbar(panel.height, low, high, _font(12))
        joined = Image.new("RGB", (panel.width + bar.width, panel.height), "white")
        joined.paste(panel, (0, 0))
        joined.paste(bar, (panel.width, 0))
        panel = joined
    return _save(_titled(panel, title, _font(14)), path)


def attention_grid(image, maps, names, path, columns=5, alpha=0.5, title=None):
    """maps (Q, h, w), one panel per query named by `names`, one shared colour scale and bar."""
    rgb = _rgb(image)
    maps = _numpy(maps)
    if maps.ndim != 3 or len(maps) != len(names):
        raise ValueError(f"attention_grid: expected maps (Q, h, w) with Q = {len(names)} names, got {maps.shape}")
    height, width = rgb.shape[:2]
    resized = np.stack([_resize_map(m, height, width) for m in maps])            # (Q, H, W)
    low, high = float(resized.min()), float(resized.max())
    factor = max(1, int(np.ceil(160 / min(height, width))))
    font = _font(12)
    panels = []
    for values, name in zip(resized, names):
        blended = (rgb * (1 - alpha) + colorize(values, low, high) * alpha).round().astype(np.uint8)
        panel = Image.fromarray(blended).resize((width * factor, height * factor), Image.NEAREST)
        panels.append(_titled(panel, str(name)[:28], font, height=18))
    columns = min(columns, len(panels))
    rows = -(-len(panels) // columns)
    cell_w, cell_h = panels[0].width + 4, panels[0].height + 4
    grid = Image.new("RGB", (columns * cell_w, rows * cell_h), "white")
    for k, panel in enumerate(panels):
        grid.paste(panel, ((k % columns) * cell_w, (k // columns) * cell_h))
    bar = _colorbar(min(grid.height, max(200, cell_h)), low, high, font)
    figure = Image.new("RGB", (grid.width + bar.width, grid.height), "white")
    figure.paste(grid, (0, 0))
    figure.paste(bar, (grid.width, 0))
    return _save(_titled(figure, title or f"attention per query (shared scale {low:.3g}..{high:.3g})", _font(14)),
                 path)
