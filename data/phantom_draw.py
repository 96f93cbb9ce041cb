"""Chest phantom rendering: the thorax-coordinate anatomy and findings of data/phantom_anatomy.py drawn on
the pixel grid. Each part is computed only inside its own pixel window, for speed; each finding drawer
returns the box [x1, y1, x2, y2] (pixels) of what it drew.
"""
import functools
import math

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from data.labels import PHANTOM_FINDINGS
from data.phantom_anatomy import EDGE, SIGN, dome_height, heart_distance, lung_distance, lung_geometry, lung_wall


@functools.lru_cache(maxsize=8)
def _pixel_centers(size):
    return (np.arange(size, dtype=np.float32) + 0.5) / size  # (S,) normalized pixel centres


@functools.lru_cache(maxsize=8)
def _smooth_upsampler(size, cells=10):
    """(S, cells) Gaussian interpolation weights: texture (S, S) = M @ noise (cells, cells) @ M.T."""
    position = _pixel_centers(size) * cells - 0.5  # (S,) in cell units
    weights = np.exp(-0.5 * ((position[:, None] - np.arange(cells)[None, :]) / 0.8) ** 2)  # (S, cells)
    return (weights / weights.sum(1, keepdims=True)).astype(np.float32)


def _ramp(distance, edge):
    """Signed distance (inside > 0) -> soft inside-ness in [0, 1] over a band of width `edge`."""
    out = distance * (1.0 / edge)
    out += 0.5
    np.maximum(out, 0.0, out=out)
    return np.minimum(out, 1.0, out=out)


FULL = (slice(0, None), slice(0, None))


def _box_of(mask, window=FULL, name="finding"):
    """bool mask (h, w) inside `window` -> [x1, y1, x2, y2] pixels of the full image (pixel i = [i, i+1))."""
    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    if len(rows) == 0:
        raise RuntimeError(f"data/phantom_draw.py: the {name} drew no pixels (a generator bug)")
    top, left = window[0].start, window[1].start
    return [float(left + cols[0]), float(top + rows[0]), float(left + cols[-1] + 1), float(top + rows[-1] + 1)]


def _peak_box(values, window=FULL, name="finding", fraction=0.5):
    """Box of the pixels at or above `fraction` of the peak of a drawn finding."""
    peak = values.max()
    return _box_of(values >= fraction * peak if peak > 0 else values > 0, window, name)


def _floor(x, lungs):
    """Diaphragm height under thorax x (either dome)."""
    return np.where(x > 0.5, dome_height(x, lungs["left"]), dome_height(x, lungs["right"]))


class Canvas:
    """One rendering: thorax coordinates of every pixel, the density image, anatomy masks and line layers."""

    def __init__(self, anatomy, size):
        self.size = size
        angle, scale, (shift_x, shift_y) = anatomy["angle"], anatomy["scale"], anatomy["shift"]
        self.pose = (math.cos(angle), math.sin(angle), scale, shift_x, shift_y)
        cos, sin = self.pose[:2]
        centers = _pixel_centers(size)
        u, v = (centers - 0.5 - shift_x)[None, :], (centers - 0.5 - shift_y)[:, None]  # (1, S), (S, 1)
        self.x = 0.5 + (cos * u + sin * v) / scale  # (S, S) thorax x of each pixel
        self.y = 0.5 + (-sin * u + cos * v) / scale  # (S, S) thorax y of each pixel
        self.airway_lines, self.device_layer, self.vessel_keep = [], None, None

    def to_pixels(self, points):
        """(n, 2) thorax points -> (n, 2) pixel coordinates."""
        cos, sin, scale, shift_x, shift_y = self.pose
        dx, dy = points[:, 0] - 0.5, points[:, 1] - 0.5
        u = 0.5 + shift_x + scale * (cos * dx - sin * dy)
        v = 0.5 + shift_y + scale * (sin * dx + cos * dy)
        return np.stack([u, v], 1) * self.size

    def region(self, x0, y0, x1, y1):
        """Pixel (rows, cols) slices covering a thorax rectangle after the pose, clipped to the image."""
        cos, sin, scale, shift_x, shift_y = self.pose
        us, vs = [], []
        for x, y in ((x0, y0), (x1, y0), (x1, y1), (x0, y1)):  # plain floats: 4 points are faster than numpy
            us.append((0.5 + shift_x + scale * (cos * (x - 0.5) - sin * (y - 0.5))) * self.size)
            vs.append((0.5 + shift_y + scale * (sin * (x - 0.5) + cos * (y - 0.5))) * self.size)
        size = self.size
        return (slice(min(max(int(min(vs)) - 1, 0), size), min(max(int(max(vs)) + 2, 0), size)),
                slice(min(max(int(min(us)) - 1, 0), size), min(max(int(max(us)) + 2, 0), size)))

    def window(self, center, radius):
        return self.region(center[0] - radius, center[1] - radius, center[0] + radius, center[1] + radius)

    def keep_vessels(self, factor, window=FULL):
        """Multiply the lung markings by `factor` inside `window` (findings that hide them)."""
        if self.vessel_keep is None:
            self.vessel_keep = np.ones_like(self.density)
        self.vessel_keep[window] *= factor

    def line_layer(self, lines, blur):
        """Draw (points (n, 2), width, value) polylines at this size -> (S, S) float32 in [0, 1]."""
        layer = Image.new("L", (self.size, self.size), 0)
        draw = ImageDraw.Draw(layer)
        polylines = [np.asarray(points, np.float64) for points, _, _ in lines]
        pixels, start = self.to_pixels(np.concatenate(polylines)).tolist(), 0  # one transform for all points
        for points, (_, width, value) in zip(polylines, lines):
            draw.line([tuple(p) for p in pixels[start:start + len(points)]], fill=value,
                      width=max(1, int(round(width * self.size))), joint="curve")
            start += len(points)
        if blur * self.size >= 0.5:  # below half a pixel a blur changes nothing visible
            layer = layer.filter(ImageFilter.BoxBlur(blur * self.size))
        return np.asarray(layer, np.float32) * (1.0 / 255)

    def region_masks(self):
        """(6, S, S) bool in ANATOMY_REGIONS order (Left Lung = patient's left = image right)."""
        diaphragm = np.zeros(self.density.shape, bool)
        for side, lung in self.lungs.items():  # a band under each dome, as wide as the lung
            window = self.windows[side]
            x, y = self.x[window], self.y[window]
            dome = dome_height(x, lung)
            diaphragm[window] |= (y >= dome) & (y < dome + 0.035) & (self.walls[side][window] > 0)
        return np.stack([self.heart >= 0.5, self.lung["left"] >= 0.5, self.lung["right"] >= 0.5,
                         (self.mediastinum >= 0.5) & (self.y > 0.08), diaphragm, self.spine >= 0.5])

    def to_uint8(self, anatomy, rng):
        """Add line layers, map density to grey levels like film, add noise -> (S, S) uint8."""
        vessels = self.line_layer([(path, 0.0045, 255) for path in anatomy["vessels"]], blur=0.003)
        vessels *= self.lungs_all
        if self.vessel_keep is not None:
            vessels *= self.vessel_keep
        self.density += anatomy["vessel_gain"] * vessels
        carina = anatomy["carina_y"]
        airways = [([(0.5, -0.05), (0.5, carina)], 0.024, 255), ([(0.5, carina), (0.44, carina + 0.07)], 0.013, 255),
                   ([(0.5, carina), (0.565, carina + 0.06)], 0.012, 255)] + self.airway_lines
        self.density -= 0.09 * self.line_layer(airways, blur=0.004)
        if self.device_layer is not None:
            self.density += 0.6 * self.device_layer
        # grey = brightness + contrast * (1.05 * (1 - exp(-k * density)) - 0.05), k varies the film's gamma
        film = np.exp(np.maximum(self.density, 0.0) * -anatomy["film_speed"])
        high = 255.0 * (anatomy["brightness"] + anatomy["contrast"] * 1.0) + 0.5
        grey = film * (-255.0 * 1.05 * anatomy["contrast"])
        grey += high
        grey += rng.standard_normal(grey.shape, dtype=np.float32) * (255.0 * anatomy["noise"])
        np.maximum(grey, 0.0, out=grey)
        return np.minimum(grey, 255.0, out=grey).astype(np.uint8)


def render_anatomy(anatomy, findings, size):
    """The normal chest (with the anatomy changes of the findings, and rib/clavicle fractures) -> Canvas."""
    canvas = Canvas(anatomy, size)
    x, y = canvas.x, canvas.y
    lungs = {side: lung_geometry(anatomy, side) for side in ("right", "left")}
    # soft tissue: a rounded trunk, thinner towards its sides
    across = x - 0.5
    across *= 1.0 / anatomy["body_half_width"]
    across *= across
    down = (y - 0.62) * (1.0 / 0.66)
    down *= down
    down *= down
    body = _ramp(1.0 - across * across - down, 0.05)
    density = body * (0.46 - 0.10 * np.minimum(across, 1.0))
    density += 0.03
    # heart, clipped by the diaphragm
    (heart_x, heart_y), reach = anatomy["heart_center"], max(anatomy["heart_axes"]) + 0.01
    window = canvas.region(heart_x - reach, heart_y - reach, heart_x + reach, heart_y + reach)
    xw, yw = x[window], y[window]
    heart = np.zeros_like(density)
    heart[window] = _ramp(heart_distance(xw, yw, anatomy), EDGE) * _ramp(_floor(xw, lungs) + 0.015 - yw, EDGE)
    # mediastinum: a band with the aortic knob bulging to the patient's left (image right)
    half, knob = anatomy["mediastinum_half"], anatomy["aortic_knob"]
    window = canvas.region(0.5 - half - 0.01, -0.05, 0.5 + half + knob + 0.01, 0.85)
    xw, yw = x[window], y[window]
    bulge = knob * np.exp(-((yw - 0.29) / 0.035) ** 2)
    mediastinum = np.zeros_like(density)
    mediastinum[window] = (_ramp(np.minimum(xw - (0.5 - half - 0.004), 0.5 + half - xw + bulge), EDGE)
                           * _ramp(_floor(xw, lungs) - yw, EDGE) * (1.0 - heart[window]))
    # lungs
    canvas.windows, walls, lung = {}, {}, {}
    for side, geometry in lungs.items():
        reach = geometry["r"] + geometry["flare"] + 0.05
        bottom = geometry["dome"] + geometry["curvature"] * (geometry["r"] + geometry["flare"]) ** 2 + 0.02
        window = canvas.region(geometry["cx"] - reach, geometry["top"] - 0.05, geometry["cx"] + reach, bottom)
        xw, yw = x[window], y[window]
        walls[side], lung[side] = np.full_like(density, -1.0), np.zeros_like(density)
        walls[side][window] = lung_wall(xw, yw, geometry)
        lung[side][window] = (_ramp(np.minimum(walls[side][window], dome_height(xw, geometry) - yw), EDGE)
                              * (1.0 - heart[window]) * (1.0 - mediastinum[window]))
        canvas.windows[side] = window
    lungs_all = lung["right"] + lung["left"]
    field = _smooth_upsampler(size)
    texture = field @ anatomy["texture"][0] @ field.T  # (S, S) smooth noise
    density -= anatomy["lung_air"] * (1.0 + 0.07 * texture) * lungs_all
    density += 0.19 * heart + 0.13 * mediastinum
    for sign in (-1.0, 1.0):  # hila
        window = canvas.window((0.5 + sign * 0.1, 0.44), 0.15)
        density[window] += 0.07 * np.exp(-0.5 * (((x[window] - 0.5 - sign * 0.1) / 0.03) ** 2
                                                 + ((y[window] - 0.44) / 0.05) ** 2))
    # spine: vertebral bodies with darker disc spaces
    window = canvas.region(0.46, -0.05, 0.54, 1.05)
    spine = np.zeros_like(density)
    spine[window] = _ramp(0.032 - np.abs(x[window] - 0.5), EDGE) * body[window]
    phase = (y[window] - 0.02) / 0.052
    phase -= np.floor(phase)
    density[window] += 0.09 * spine[window] * (0.55 + 0.45 * _ramp(np.minimum(phase - 0.14, 0.97 - phase) * 0.052,
                                                                   EDGE))
    fracture = next((f for f in findings if f["name"] == "fracture"), None)
    right, left = canvas.windows["right"], canvas.windows["left"]
    canvas.thorax = (slice(min(right[0].start, left[0].start), max(right[0].stop, left[0].stop)),
                     slice(right[1].start, left[1].stop))
    window = canvas.thorax
    density[window] += _ribs(x[window], y[window], anatomy, np.maximum(walls["right"][window], walls["left"][window]),
                             fracture) * (1.0 - 0.6 * heart[window])
    window = canvas.region(0.19, anatomy["clavicle_y"] - 0.06, 0.81, anatomy["clavicle_y"] + 0.05)
    density[window] += 0.14 * _clavicles(x[window], y[window], anatomy, fracture)
    if anatomy["stomach_bubble"]:
        bubble_y = float(dome_height(0.63, lungs["left"])) + 0.045
        window = canvas.window((0.63, bubble_y), 0.08)
        density[window] -= 0.09 * np.exp(-0.5 * (((x[window] - 0.63) / 0.035) ** 2
                                                 + ((y[window] - bubble_y) / 0.022) ** 2))
    canvas.density, canvas.lungs, canvas.walls, canvas.lung, canvas.lungs_all = density, lungs, walls, lung, lungs_all
    canvas.heart, canvas.mediastinum, canvas.spine = heart, mediastinum, spine
    canvas.texture = field @ anatomy["texture"][1] @ field.T  # (S, S) a second smooth noise, for findings
    return canvas


RIB_WIDTH = 0.36  # fraction of the rib period covered by a posterior rib


def rib_centre_y(anatomy, distance, rib, sign):
    """Thorax y of the middle of posterior rib `rib` at `distance` from the midline."""
    return anatomy["rib_y0"] + (-0.35 * distance + 1.9 * distance ** 2) + anatomy["rib_spacing"] * (rib + RIB_WIDTH / 2)


def _ribs(x, y, anatomy, wall, fracture):
    """Posterior ribs (curved bands, brighter cortex) and faint anterior ribs -> density of the window."""
    offset, spacing = np.abs(x - 0.5), anatomy["rib_spacing"]
    phase = offset * (1.9 / spacing)
    phase -= 0.35 / spacing
    phase *= -offset
    phase += (y - anatomy["rib_y0"]) * (1.0 / spacing)  # (y - y0 - rib curve) / spacing
    gap = None
    if fracture is not None and fracture["detail"] == "rib":
        rib, distance, sign = fracture["params"]["rib"], fracture["params"]["distance"], SIGN[fracture["side"]]
        near = ((x - 0.5) * sign > 0) & (np.abs(phase - rib - RIB_WIDTH / 2) < 0.6)
        if fracture["size"] == "displaced":
            phase = phase + 0.3 * (near & (offset > distance) & (offset < distance + 0.07))
        gap = near & (np.abs(offset - distance) < 0.006)
    t = phase - np.floor(phase)
    band = _ramp(np.minimum(t, RIB_WIDTH - t) * spacing, EDGE) * (0.7 + 0.3 * np.abs(2 * t / RIB_WIDTH - 1))
    cage = _ramp(wall + 0.028, EDGE) * _ramp(offset - 0.03, EDGE) * _ramp(0.78 - y, 0.08)
    ribs = band * cage * ((phase > -0.5) & (phase < 10.5))
    if gap is not None:
        ribs[gap] = 0.0
    front = (y - anatomy["rib_y0"] - 0.03 + 0.5 * (offset - 0.34)) / (1.1 * spacing)
    t = front - np.floor(front)
    anterior = _ramp(np.minimum(t, RIB_WIDTH - t) * spacing, EDGE) * cage * _ramp(offset - 0.15, 0.03) * (front < 7)
    return 0.065 * ribs + 0.03 * anterior


def clavicle_y(anatomy, distance):
    along = distance - 0.03
    return anatomy["clavicle_y"] + 0.02 - 0.22 * along + 0.35 * along * along


def _clavicles(x, y, anatomy, fracture):
    """Two S-curved bars from the sternal notch to the shoulders -> (h, w) in [0, 1] of the window."""
    offset = np.abs(x - 0.5)
    centre = clavicle_y(anatomy, offset)
    gap = None
    if fracture is not None and fracture["detail"] == "clavicle":
        distance, same_side = fracture["params"]["distance"], (x - 0.5) * SIGN[fracture["side"]] > 0
        if fracture["size"] == "displaced":
            centre = centre + 0.012 * (same_side & (offset > distance))
        gap = same_side & (np.abs(offset - distance) < 0.006)
    bar = _ramp(0.012 - np.abs(y - centre), EDGE) * _ramp(offset - 0.03, EDGE) * _ramp(0.30 - offset, 0.01)
    if gap is not None:
        bar[gap] = 0.0
    return bar


# ------------------------------------------------------------------------------------------------------------
# findings drawn on the canvas; each returns its box [x1, y1, x2, y2] in pixels

def _draw_cardiomegaly(canvas, anatomy, finding):
    return _box_of(canvas.heart >= 0.5, name="heart")


def _draw_enlarged_cardiomediastinum(canvas, anatomy, finding):
    heart_top = anatomy["heart_center"][1] - 0.6 * anatomy["heart_axes"][1]
    superior = (canvas.mediastinum >= 0.5) & (canvas.y > 0.12) & (canvas.y < heart_top)
    return _box_of(superior, name="mediastinum")


def _draw_pleural_effusion(canvas, anatomy, finding):
    side = finding["side"]
    lung, window = canvas.lungs[side], canvas.windows[side]
    x, y = canvas.x[window], canvas.y[window]
    lateral = np.clip(((x - lung["cx"]) * lung["sign"] + lung["r"]) / (2 * lung["r"]), 0.0, 1.0)
    level = lung["dome"] - {"small": -0.035, "moderate": 0.06, "large": 0.19}[finding["size"]]
    fluid = canvas.lung[side][window] * _ramp(y - level + finding["params"]["meniscus"] * lateral ** 2, 0.01)
    canvas.density[window] += 0.30 * fluid
    canvas.keep_vessels(1.0 - fluid, window)
    return _peak_box(fluid, window, "pleural effusion", fraction=0.2)


def _draw_pneumothorax(canvas, anatomy, finding):
    side, (gap_y, gap_x) = finding["side"], finding["params"]["gap"]
    lung, window = canvas.lungs[side], canvas.windows[side]
    # the collapsed lung: lateral wall moved in by gap_x (0 for a small apical one), apex lowered by gap_y
    # (a new apex circle as wide as the walls where it joins them, so the pleural edge has no step)
    x, y = canvas.x[window], canvas.y[window]
    collapsed = dict(lung, r=lung["r"] - gap_x / 2, cx=lung["cx"] - lung["sign"] * gap_x / 2)
    centre_y = lung["top"] + lung["r"] + gap_y
    radius = float(lung_wall(collapsed["cx"], centre_y, collapsed))
    cap = radius - np.hypot(x - collapsed["cx"], y - centre_y)
    edge = np.minimum(lung_distance(x, y, collapsed), np.where(y < centre_y, cap, np.float32(1.0)))
    region, inside = canvas.lung[side][window], _ramp(edge, EDGE)
    lucent = region * (1.0 - inside)
    canvas.density[window] += region * (0.015 * inside + 0.10 * np.clip(1.0 - np.abs(edge) / 0.003, 0, 1))
    canvas.density[window] -= 0.10 * lucent
    canvas.keep_vessels(1.0 - lucent, window)
    return _peak_box(lucent, window, "pneumothorax")


def _draw_consolidation(canvas, anatomy, finding):
    p = finding["params"]
    window = canvas.window(p["center"], 2.2 * p["radius"])
    x, y = canvas.x[window], canvas.y[window]
    blobs = sum(np.exp(-0.5 * ((x - bx) ** 2 + (y - by) ** 2) / sigma ** 2) for bx, by, sigma in p["blobs"])
    patchy = 0.75 + 0.25 * canvas.texture[window] if finding["detail"] == "noninfectious" else \
        np.clip(0.55 + 0.45 * canvas.texture[window], 0.2, 1.0)
    opacity = 0.26 * np.minimum(blobs, 1.0) * patchy * canvas.lung[finding["side"]][window]
    box = _peak_box(opacity, window, "consolidation", fraction=0.4)
    if finding["detail"] == "cavitary":
        cavity = _ramp(0.3 * p["radius"] - np.hypot(x - p["center"][0], y - p["center"][1]), EDGE)
        opacity = opacity * (1.0 - cavity) - 0.05 * cavity
    canvas.density[window] += opacity
    canvas.airway_lines += [(points, 0.004, 255) for points in p["bronchogram"]]
    return box


def _draw_atelectasis(canvas, anatomy, finding):
    p = finding["params"]
    (cx, cy), (a, b), angle = p["center"], p["axes"], p["angle"]
    b = max(b, 1.0 / canvas.size)  # a linear band stays at least a pixel thick at 64 px
    window = canvas.window(p["center"], 1.3 * a)
    x, y = canvas.x[window] - cx, canvas.y[window] - cy
    along, across = x * math.cos(angle) + y * math.sin(angle), -x * math.sin(angle) + y * math.cos(angle)
    shape = _ramp((1.0 - (along / a) ** 2 - (across / b) ** 2) * 0.5 * b, EDGE)
    opacity = (0.26 if finding["detail"] == "linear" else 0.22) * shape * canvas.lung[finding["side"]][window]
    canvas.density[window] += opacity
    return _peak_box(opacity, window, "atelectasis")


def _draw_edema(canvas, anatomy, finding):
    k = {"mild": 0, "moderate": 1, "severe": 2}[finding["size"]]
    spread_x, spread_y = 0.07 + 0.015 * k, 0.10 + 0.02 * k
    window = canvas.thorax
    x, y = canvas.x[window], canvas.y[window]
    haze = sum(np.exp(-0.5 * (((x - 0.5 - s * 0.13) / spread_x) ** 2 + ((y - 0.46) / spread_y) ** 2))
               for s in (-1.0, 1.0))
    opacity = (0.12 + 0.05 * k) * (0.7 + 0.3 * canvas.texture[window]) * haze * canvas.lungs_all[window]
    canvas.density[window] += opacity
    canvas.keep_vessels(1.0 - 0.5 * np.minimum(haze, 1.0), window)
    return _peak_box(opacity, window, "edema", fraction=0.35)


def _draw_nodule(canvas, anatomy, finding):
    p = finding["params"]
    window = canvas.window(p["center"], 1.5 * p["radius"])
    distance = np.hypot(canvas.x[window] - p["center"][0], canvas.y[window] - p["center"][1])
    opacity = (0.26 if finding["detail"] == "mass" else 0.22) * _ramp(p["radius"] - distance, 0.7 * EDGE)
    canvas.density[window] += opacity
    return _peak_box(opacity, window, "nodule")


def _draw_fracture(canvas, anatomy, finding):
    p, sign = finding["params"], SIGN[finding["side"]]
    if finding["detail"] == "rib":
        point = (0.5 + sign * p["distance"], rib_centre_y(anatomy, p["distance"], p["rib"], sign))
    else:
        point = (0.5 + sign * p["distance"], clavicle_y(anatomy, p["distance"]))
    half = 0.03
    corners = canvas.to_pixels(np.array([[point[0] + dx, point[1] + dy] for dx in (-half, half) for dy in (-half, half)]))
    low, high = np.clip(corners.min(0), 0, canvas.size), np.clip(corners.max(0), 0, canvas.size)
    return [low[0], low[1], high[0], high[1]]


def _draw_support_device(canvas, anatomy, finding):
    kind, carina = finding["detail"], anatomy["carina_y"]
    (heart_x, heart_y), left_dome = anatomy["heart_center"], canvas.lungs["left"]
    if kind == "endotracheal tube":
        tip = carina - finding["params"]["tip_offset"]
        lines = [([(0.5, -0.05), (0.5, tip)], 0.013, 130), ([(0.5, -0.05), (0.5, tip)], 0.004, 255)]
    elif kind == "central venous catheter":
        lines = [([(0.40, -0.02), (0.425, 0.10), (0.455, 0.20), (0.47, carina + 0.02)], 0.006, 255)]
    elif kind == "pacemaker":
        lead = [(0.72, 0.18), (0.62, 0.155), (0.52, 0.20), (0.475, 0.33), (0.5, heart_y - 0.03)]
        lines = [(lead + [(heart_x + 0.05, heart_y + 0.06)], 0.004, 255), (lead + [(0.47, heart_y - 0.07)], 0.004, 255)]
    else:  # nasogastric tube
        below = float(dome_height(0.58, left_dome))
        lines = [([(0.5, -0.05), (0.505, 0.30), (0.515, 0.6), (0.56, below + 0.06), (0.63, below + 0.09)], 0.007, 255)]
    layer = canvas.line_layer(lines, blur=0)
    if kind == "pacemaker":  # the generator: a bright rounded box under the left clavicle (image right)
        image = Image.fromarray((layer * 255).astype(np.uint8))
        corners = canvas.to_pixels(np.array([[0.71, 0.14], [0.80, 0.14], [0.80, 0.20], [0.71, 0.20]]))
        ImageDraw.Draw(image).polygon([tuple(c) for c in corners], fill=235)
        layer = np.asarray(image, np.float32) * (1.0 / 255)
    canvas.device_layer = layer if canvas.device_layer is None else np.maximum(canvas.device_layer, layer)
    return _box_of(layer > 0.25, name=kind)


def _draw_emphysema(canvas, anatomy, finding):
    return _box_of((canvas.lung["right"] >= 0.5) | (canvas.lung["left"] >= 0.5), name="emphysema lungs")


def _draw_pleural_thickening(canvas, anatomy, finding):
    side = finding["side"]
    lung, window = canvas.lungs[side], canvas.windows[side]
    height = lung["dome"] - lung["top"]
    low, high = {"upper": (0.12, 0.38), "middle": (0.40, 0.64)}[finding["zone"]]
    y1, y2 = lung["top"] + low * height, lung["top"] + high * height
    wall, x, y = canvas.walls[side][window], canvas.x[window], canvas.y[window]
    band = (_ramp(wall, EDGE) * _ramp(finding["params"]["thickness"] - wall, EDGE)
            * _ramp((x - lung["cx"]) * lung["sign"], 0.02) * _ramp(y - y1, 0.02) * _ramp(y2 - y, 0.02))
    canvas.density[window] += 0.3 * band
    return _peak_box(band, window, "pleural thickening")


DRAWERS = {name: globals()["_draw_" + name.replace(" ", "_")] for name in PHANTOM_FINDINGS}


def draw_findings(canvas, anatomy, findings):
    """Draw every finding onto the canvas -> list of boxes (one per finding, in order)."""
    return [DRAWERS[finding["name"]](canvas, anatomy, finding) for finding in findings]
