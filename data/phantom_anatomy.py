"""Chest phantom sampling: the normal anatomy (rng stream 0) and the findings (rng stream 1).

Everything here is in normalized thorax coordinates (x to the image's right, y down, both in [0, 1]);
data/phantom_draw.py puts it on the pixel grid and data/phantom.py ties the two together.
"""
import math

import numpy as np

from data.labels import PHANTOM_FINDINGS


EDGE = 0.004  # softness of shape edges, thorax units (about 1 px at 224)
SIGN = {"right": -1.0, "left": 1.0}  # patient's side -> direction on the image x axis
FINDING_WEIGHTS = {
    "cardiomegaly": 1.0, "enlarged cardiomediastinum": 0.7, "pleural effusion": 1.2, "pneumothorax": 0.8,
    "consolidation": 1.2, "atelectasis": 1.0, "edema": 0.7, "nodule": 1.0, "fracture": 0.8,
    "support device": 1.0, "emphysema": 0.6, "pleural thickening": 0.7,
}
FINDING_COUNT_PROBS = (0.45, 0.35, 0.20)  # 1, 2 or 3 findings in an abnormal image
SIZES = {
    "cardiomegaly": ("mild", "moderate", "severe"), "enlarged cardiomediastinum": ("mild", "moderate", "severe"),
    "pleural effusion": ("small", "moderate", "large"), "pneumothorax": ("small", "moderate", "large"),
    "consolidation": ("small", "moderate", "large"), "atelectasis": ("small", "moderate"),
    "edema": ("mild", "moderate", "severe"), "nodule": ("small", "moderate", "large"),
    "fracture": ("nondisplaced", "displaced"), "support device": ("n/a",),
    "emphysema": ("mild", "moderate", "severe"), "pleural thickening": ("mild", "moderate"),
}
ZONE_RANGES = {"upper": (0.14, 0.34), "middle": (0.40, 0.60), "lower": (0.66, 0.86)}  # fraction of lung height
ORDINALS = ["second", "third", "fourth", "fifth", "sixth", "seventh", "eighth", "ninth", "tenth", "eleventh"]
DEVICES = ("endotracheal tube", "central venous catheter", "pacemaker", "nasogastric tube")
MM_PER_UNIT = 350.0  # report millimetres per thorax unit


ANATOMY_RANGES = {  # uniform ranges of the normal anatomy, thorax units (x, y in [0, 1]) unless noted
    "angle": (-0.05, 0.05), "scale": (0.93, 1.03), "shift_x": (-0.02, 0.02), "shift_y": (-0.02, 0.02),  # pose
    "width": (0.95, 1.05), "body_half_width": (0.475, 0.525), "lung_top": (0.10, 0.135), "flare": (0.05, 0.08),
    "dome_right": (0.65, 0.68), "dome_left_drop": (0.01, 0.035), "dome_curvature": (2.6, 3.4),
    "heart_x": (0.545, 0.565), "heart_y": (0.575, 0.60), "heart_a": (0.145, 0.16), "heart_b": (0.115, 0.13),
    "heart_angle": (0.2, 0.4), "mediastinum_half": (0.040, 0.048), "aortic_knob": (0.014, 0.026),
    "rib_y0": (0.08, 0.10), "rib_spacing": (0.058, 0.066), "clavicle_y": (0.13, 0.16), "carina_y": (0.32, 0.35),
    "lung_air": (0.27, 0.31), "vessel_gain": (0.10, 0.14),  # densities
    "brightness": (-0.04, 0.04), "contrast": (0.92, 1.08), "film_speed": (1.8, 2.3), "noise": (0.008, 0.018),
    "stomach_bubble": (0.0, 1.0),
}


def sample_anatomy(rng):
    """rng -> dict of anatomy parameters of a normal chest (the findings then change some of them)."""
    draws = rng.random(len(ANATOMY_RANGES))  # one call: much faster than one per parameter
    anatomy = {name: low + (high - low) * float(u) for (name, (low, high)), u in zip(ANATOMY_RANGES.items(), draws)}
    anatomy.update(shift=(anatomy["shift_x"], anatomy["shift_y"]), lung_radius=0.14 * anatomy["width"],
                   lung_offset=0.19 * anatomy["width"], heart_center=(anatomy["heart_x"], anatomy["heart_y"]),
                   heart_axes=(anatomy["heart_a"], anatomy["heart_b"]), stomach_bubble=anatomy["stomach_bubble"] < 0.6,
                   texture=rng.standard_normal((2, 10, 10)).astype(np.float32), vessels=_sample_vessels(rng))
    return anatomy


def _sample_vessels(rng):
    """Lung markings: 6 branching vessels from each hilum -> (12, 6, 2) polylines in thorax coords.

    Each polyline runs hilum -> 3 segments out, with a twig drawn as a detour from the second joint."""
    sign = np.repeat([-1.0, 1.0], 6)[:, None]  # (12, 1) image side of each vessel
    directions = (np.tile(np.linspace(-1.25, 1.15, 6), 2) + rng.uniform(-0.1, 0.1, 12))[:, None] \
        + np.cumsum(rng.uniform(-0.2, 0.2, (12, 3)), 1)  # (12, 3) angle of each segment, 0 = lateral
    steps = rng.uniform(0.05, 0.075, (12, 3))
    joints = np.empty((12, 4, 2))
    joints[:, 0, 0], joints[:, 0, 1] = 0.5 + sign[:, 0] * 0.10, 0.44
    joints[:, 1:, 0] = joints[:, :1, 0] + np.cumsum(sign * steps * np.cos(directions), 1)
    joints[:, 1:, 1] = joints[:, :1, 1] + np.cumsum(steps * np.sin(directions), 1)
    twig = directions[:, 1] + rng.choice([-0.5, 0.5], 12)  # (12,)
    twig_end = joints[:, 2] + 0.06 * np.stack([sign[:, 0] * np.cos(twig), np.sin(twig)], 1)  # (12, 2)
    return np.concatenate([joints[:, :3], twig_end[:, None], joints[:, 2:]], 1)  # (12, 6, 2)


def lung_geometry(anatomy, side):
    """Parameters of one lung (side in the patient's frame) after the findings changed the anatomy."""
    sign = SIGN[side]
    dome = anatomy["dome_right"] + (anatomy["dome_left_drop"] if side == "left" else 0.0)
    return {"cx": 0.5 + sign * anatomy["lung_offset"], "top": anatomy["lung_top"], "r": anatomy["lung_radius"],
            "flare": anatomy["flare"], "dome": dome + anatomy.get(f"dome_raise_{side}", 0.0),
            "curvature": anatomy["dome_curvature"], "sign": sign}


def lung_wall(x, y, lung):
    """Signed distance (inside > 0) to the lung's apex circle and side walls, ignoring the diaphragm."""
    dy = y - (lung["top"] + lung["r"])
    cap = lung["r"] - np.hypot(x - lung["cx"], dy)
    spread = 1.0 - (1.0 - np.clip(dy / 0.45, 0.0, 1.0)) ** 2  # convex lateral walls
    walls = lung["r"] + lung["flare"] * spread - np.abs(x - lung["cx"])
    return np.where(dy < 0, cap, walls)


def dome_height(x, lung):
    """Thorax y of the diaphragm dome under x: steep laterally (costophrenic angle), flat medially."""
    lateral = (x - lung["cx"]) * lung["sign"]
    steepness = np.where(lateral > 0, np.float32(lung["curvature"]), np.float32(0.3 * lung["curvature"]))
    return lung["dome"] + steepness * (x - lung["cx"]) ** 2


def lung_distance(x, y, lung):
    """Signed distance-like (inside > 0) of one lung: apex, walls and diaphragm dome."""
    return np.minimum(lung_wall(x, y, lung), dome_height(x, lung) - y)


def heart_distance(x, y, anatomy):
    (cx, cy), (a, b), angle = anatomy["heart_center"], anatomy["heart_axes"], anatomy["heart_angle"]
    along = (x - cx) * math.cos(angle) + (y - cy) * math.sin(angle)
    across = -(x - cx) * math.sin(angle) + (y - cy) * math.cos(angle)
    return (1.0 - (along / a) ** 2 - (across / b) ** 2) * (0.5 * min(a, b))


def _inside_point(rng, anatomy, side, zone, margin, lateral=(-0.5, 0.8)):
    """A point of one lung zone at least `margin` inside the lung and outside the heart and mediastinum.

    32 candidates are drawn at once; the first that fits wins. If none fits (a large heart can cover the
    medial lung), 32 more are drawn across the whole lung width; then the one that fits best wins."""
    lung = lung_geometry(anatomy, side)
    low, high = ZONE_RANGES[zone]
    for lateral_range in (lateral, (-0.5, 0.9)):
        x = lung["cx"] + lung["sign"] * rng.uniform(*lateral_range, 32) * lung["r"]
        y = lung["top"] + rng.uniform(low, high, 32) * (lung["dome"] - lung["top"])
        score = np.minimum(np.minimum(lung_distance(x, y, lung), -heart_distance(x, y, anatomy)),
                           np.abs(x - 0.5) - anatomy["mediastinum_half"]) - margin
        if (score > 0).any():
            break
    best = int(np.argmax(score > 0)) if (score > 0).any() else int(np.argmax(score))
    return float(x[best]), float(y[best])


def sample_findings(rng, anatomy, healthy_fraction, names=None):
    """rng -> list of finding dicts (name, side, zone, size, detail, extra, params); changes `anatomy`."""
    healthy = rng.random() < healthy_fraction
    if names is None:
        if healthy:
            return []
        weights = np.array([FINDING_WEIGHTS[name] for name in PHANTOM_FINDINGS])
        count = rng.choice([1, 2, 3], p=FINDING_COUNT_PROBS)
        names = list(rng.choice(PHANTOM_FINDINGS, size=count, replace=False, p=weights / weights.sum()))
    names = sorted({str(name) for name in names}, key=PHANTOM_FINDINGS.index)  # effusion before pneumothorax: no same-side clash
    # anatomy changes first (they move the lungs and domes that placements depend on)
    sizes = {name: SIZES[name][rng.integers(len(SIZES[name]))] for name in names}
    level = {"mild": 0, "moderate": 1, "severe": 2}
    if "emphysema" in names:
        k = level[sizes["emphysema"]]
        anatomy.update(lung_radius=anatomy["lung_radius"] * (1.04 + 0.02 * k), lung_top=anatomy["lung_top"] - 0.01,
                       dome_right=anatomy["dome_right"] + 0.035 + 0.015 * k,
                       dome_curvature=anatomy["dome_curvature"] * (0.45 - 0.1 * k),
                       lung_air=anatomy["lung_air"] + 0.04 + 0.02 * k, vessel_gain=anatomy["vessel_gain"] * 0.55)
        anatomy["heart_axes"] = (anatomy["heart_axes"][0] * 0.9, anatomy["heart_axes"][1])
    if "cardiomegaly" in names:
        k = level[sizes["cardiomegaly"]]
        grow = (1.22 + 0.12 * k + rng.uniform(0, 0.05), 1.08 + 0.05 * k)
        (cx, cy), (a, b) = anatomy["heart_center"], anatomy["heart_axes"]
        anatomy["heart_axes"] = (a * grow[0], b * grow[1])
        anatomy["heart_center"] = (cx + 0.25 * a * (grow[0] - 1), cy - 0.5 * b * (grow[1] - 1))
    if "enlarged cardiomediastinum" in names:
        k = level[sizes["enlarged cardiomediastinum"]]
        anatomy["mediastinum_half"] *= 1.45 + 0.2 * k
        anatomy["aortic_knob"] *= 1.3 + 0.2 * k
    side_of = {name: ("right", "left")[rng.integers(2)] for name in names}
    if "atelectasis" in names and sizes["atelectasis"] != "small":  # segmental: volume loss lifts the dome
        anatomy[f"dome_raise_{side_of['atelectasis']}"] = -rng.uniform(0.025, 0.04)
    findings, effusion_sides = [], []
    for name in names:
        size, side = sizes[name], side_of[name]
        finding = {"name": name, "size": size, "detail": "", "extra": "", "params": {}}
        p = finding["params"]
        if name in ("cardiomegaly", "enlarged cardiomediastinum"):
            finding.update(side="midline", zone="cardiac" if name == "cardiomegaly" else "mediastinal")
        elif name == "pleural effusion":
            sides = ["right", "left"] if rng.random() < 0.25 else [side]
            for s in sides:
                s_size = size if s == sides[0] else SIZES[name][rng.integers(3)]
                findings.append({"name": name, "side": s, "zone": "basal", "size": s_size, "detail": "",
                                 "extra": "", "params": {"meniscus": rng.uniform(0.03, 0.06)}})
            effusion_sides = sides
            continue
        elif name == "pneumothorax":
            free = [s for s in ("right", "left") if s not in effusion_sides]
            if not free:
                continue
            side = free[rng.integers(len(free))]
            finding.update(side=side, zone="apical" if size == "small" else "apicolateral")
            gap_y, gap_x = {"small": (0.05, 0.0), "moderate": (0.09, 0.04), "large": (0.15, 0.07)}[size]
            p["gap"] = (gap_y * rng.uniform(0.85, 1.15), gap_x * rng.uniform(0.85, 1.15))
        elif name == "consolidation":
            zone = ("upper", "middle", "lower")[rng.integers(3)]
            detail = ("noninfectious", "infectious")[rng.integers(2)]
            if detail == "infectious" and zone == "upper" and rng.random() < 0.5:
                detail = "cavitary"
            radius = {"small": 0.035, "moderate": 0.05, "large": 0.07}[size] * rng.uniform(0.9, 1.1)
            center = _inside_point(rng, anatomy, side, zone, 0.3 * radius)
            blobs = [(center[0] + rng.uniform(-0.5, 0.5) * radius, center[1] + rng.uniform(-0.5, 0.5) * radius,
                      radius * rng.uniform(0.4, 0.6)) for _ in range(rng.integers(4, 7))]
            finding.update(side=side, zone=zone, detail=detail)
            p.update(center=center, radius=radius, blobs=blobs,
                     bronchogram=[_bronchogram(rng, center, radius) for _ in range(2)] if detail != "noninfectious"
                     and rng.random() < 0.6 else [])
        elif name == "atelectasis":
            detail = "linear" if size == "small" else "segmental"
            zone = ("middle", "lower")[rng.integers(2)] if detail == "linear" else "lower"
            if detail == "segmental":
                lung = lung_geometry(anatomy, side)  # basal, lateral enough to clear an enlarged heart
                lateral = np.array([0.3, 0.4, 0.5, 0.6, 0.7])
                x, y = lung["cx"] + lung["sign"] * lateral * lung["r"], np.full(5, lung["dome"] - 0.035)
                score = np.minimum(lung_distance(x, y, lung), -heart_distance(x, y, anatomy)) - 0.02
                best = int(np.argmax(score > 0)) if (score > 0).any() else int(np.argmax(score))
                p["center"] = (float(x[best]), float(y[best]))
                p["axes"], p["angle"] = (0.075, 0.05), 0.0
            else:
                p["center"] = _inside_point(rng, anatomy, side, zone, 0.07, lateral=(-0.2, 0.4))
                p["axes"], p["angle"] = (rng.uniform(0.055, 0.075), rng.uniform(0.007, 0.01)), rng.uniform(-0.3, 0.3)
            finding.update(side=side, zone=zone, detail=detail)
        elif name == "edema":
            finding.update(side="bilateral", zone="perihilar")
        elif name == "nodule":
            zone = ("upper", "middle", "lower")[rng.integers(3)]
            radius = {"small": (0.011, 0.016), "moderate": (0.018, 0.026), "large": (0.04, 0.055)}[size]
            radius = rng.uniform(*radius)
            p.update(radius=radius, center=_inside_point(rng, anatomy, side, zone, 1.3 * radius))
            finding.update(side=side, zone=zone, detail="mass" if size == "large" else "nodule",
                           extra=str(int(round(2 * radius * MM_PER_UNIT))))
        elif name == "fracture":
            detail = ("rib", "clavicle")[int(rng.random() < 0.3)]
            if detail == "rib":
                rib = int(rng.integers(2, 8))
                p.update(rib=rib, distance=rng.uniform(0.2, 0.29))
                y = anatomy["rib_y0"] + anatomy["rib_spacing"] * (rib + 0.21)
                zone = "upper" if y < 0.32 else "middle" if y < 0.48 else "lower"
                finding["extra"] = ORDINALS[rib]
            else:
                zone = "upper"
                p["distance"] = rng.uniform(0.12, 0.22)
            finding.update(side=side, zone=zone, detail=detail)
        elif name == "support device":
            kind = DEVICES[rng.integers(len(DEVICES))]
            finding.update(side={"central venous catheter": "right", "pacemaker": "left"}.get(kind, "midline"),
                           zone="chest wall" if kind == "pacemaker" else "mediastinal", detail=kind)
            p["tip_offset"] = rng.uniform(0.09, 0.14)
            finding["extra"] = str(int(round(p["tip_offset"] * MM_PER_UNIT)))
        elif name == "emphysema":
            finding.update(side="bilateral", zone="diffuse")
        elif name == "pleural thickening":
            zone = ("upper", "middle")[rng.integers(2)]
            p["thickness"] = {"mild": 0.010, "moderate": 0.016}[size]
            finding.update(side=side, zone=zone)
        findings.append(finding)
    return findings


def _bronchogram(rng, center, radius):
    """A short branching dark airway inside a consolidation: polyline points (3, 2)."""
    angle = rng.uniform(0, 2 * math.pi)
    start = np.array(center) - 0.4 * radius * np.array([math.cos(angle), math.sin(angle)])
    mid = start + 0.45 * radius * np.array([math.cos(angle), math.sin(angle)])
    end = mid + 0.35 * radius * np.array([math.cos(angle + 0.5), math.sin(angle + 0.5)])
    return np.stack([start, mid, end])
