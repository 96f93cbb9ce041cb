"""Paired image / box / mask transforms: every geometric step moves the boxes and masks with the image.

A transform built here is called as

    image, boxes, masks = transform(image_pil, boxes, masks)

    image_pil  PIL image, any mode (converted to 8-bit grayscale first)
    boxes      (N, 4) float32 numpy, x1, y1, x2, y2 in pixels of image_pil (or None: no boxes)
    masks      (R, H, W) bool numpy with H, W of image_pil (or None)
    returns    image (C, H', W') float32 tensor, boxes (N, 4) float32 tensor, masks (R, H', W') bool tensor or None

Design choices:
- Pixel coordinates are continuous, pixel i covering [i, i + 1) (PIL's convention), so a box maps through
  the same affine matrix as the image with no half-pixel corrections.
- Resizing uses PIL's antialiased `resize` (BILINEAR for the image, NEAREST for masks); `ResizePad` keeps the
  aspect ratio and pads with black to a square. `ResizePad.geometry` gives the scale and offset so a caller can
  map predicted boxes back to the original image (`ResizePad.boxes_to_original`). `decode_size` gives the
  image reader the size of the first resize step, so a large JPEG is decoded at a reduced DCT scale that is
  still at least that size (data/io.py load_image); the boxes follow the size actually decoded.
- The train augmentation of seed 001 §5.3 is RandomRotation(5) + RandomAffine(translate=0.03,
  scale=(0.97, 1.03)) + ColorJitter(brightness=0.05, contrast=0.05). Rotation and isotropic scaling about the
  image centre commute, so `RandomAffine(degrees=5, translate=0.03, scale=(0.97, 1.03))` draws the same family
  of maps in ONE resample (less blur than two). `RandomRotation` is kept as a named step for other uses.
- Boxes follow a geometric step by mapping their 4 corners, taking the enclosing box and clipping it to the
  output image. The number of boxes never changes, so `box_labels` stay aligned (a box pushed fully outside
  would become zero-sized; with ±3% translation this does not happen for boxes inside the image).
- Masks use nearest-neighbour sampling with the same matrix; areas moved in from outside are False,
  image areas moved in from outside are black (0).
- Random parameters come from torch's global RNG (`torch.rand`), so `torch.manual_seed` (and DataLoader
  worker seeding) makes a transform reproducible.
- NO horizontal flip anywhere: laterality is part of the label (the heart is on the patient's left).
- ColorJitter applies brightness then contrast (a fixed order), each factor uniform in [1 - x, 1 + x], as
  PIL's ImageEnhance does (contrast blends with the mean grey level).
"""
import math

import numpy as np
import torch
from PIL import Image, ImageEnhance


# ----------------------------------------------------------------------------------------------------------
# geometry helpers

def _affine_boxes(boxes, matrix, width, height):
    """boxes (N, 4) xyxy, matrix (2, 3) forward map -> (N, 4) enclosing boxes of the mapped corners, clipped."""
    if len(boxes) == 0:
        return boxes.astype(np.float32).reshape(0, 4)
    x1, y1, x2, y2 = boxes[:, 0], boxes[:, 1], boxes[:, 2], boxes[:, 3]
    corners_x = np.stack([x1, x2, x2, x1], axis=1)  # (N, 4)
    corners_y = np.stack([y1, y1, y2, y2], axis=1)  # (N, 4)
    mapped_x = matrix[0, 0] * corners_x + matrix[0, 1] * corners_y + matrix[0, 2]  # (N, 4)
    mapped_y = matrix[1, 0] * corners_x + matrix[1, 1] * corners_y + matrix[1, 2]  # (N, 4)
    out = np.stack([mapped_x.min(1), mapped_y.min(1), mapped_x.max(1), mapped_y.max(1)], axis=1)  # (N, 4)
    out[:, [0, 2]] = out[:, [0, 2]].clip(0, width)
    out[:, [1, 3]] = out[:, [1, 3]].clip(0, height)
    return out.astype(np.float32)


def _mask_to_pil(mask):
    return Image.fromarray(mask.astype(np.uint8) * 255)


def _pil_to_mask(image):
    return np.asarray(image) > 127


def _as_boxes(boxes):
    if boxes is None:
        return np.zeros((0, 4), np.float32)
    return np.asarray(boxes, np.float32).reshape(-1, 4)


# ----------------------------------------------------------------------------------------------------------
# geometric steps: (PIL image, boxes numpy, masks numpy or None) -> same types

class Resize:
    """Stretch to (size, size) (or (height, width) when size is a pair); ignores the aspect ratio."""

    def __init__(self, size):
        self.height, self.width = (size, size) if isinstance(size, int) else tuple(size)

    def __call__(self, image, boxes, masks):
        scale_x, scale_y = self.width / image.width, self.height / image.height
        image = image.resize((self.width, self.height), Image.BILINEAR)
        boxes = boxes * np.array([scale_x, scale_y, scale_x, scale_y], np.float32)
        if masks is not None:
            masks = np.stack([_pil_to_mask(_mask_to_pil(m).resize((self.width, self.height), Image.NEAREST))
                              for m in masks]) if len(masks) else np.zeros((0, self.height, self.width), bool)
        return image, boxes, masks


class ResizePad:
    """Resize the long side to `size` keeping the aspect ratio, then pad with black to (size, size), centred."""

    def __init__(self, size):
        self.size = size

    def geometry(self, width, height):
        """-> (scale_x, scale_y, offset_x, offset_y, new_width, new_height): output = input * scale + offset.

        scale_x and scale_y differ from size / max(width, height) only by the rounding of the new size.
        """
        scale = self.size / max(width, height)
        new_width, new_height = max(1, round(width * scale)), max(1, round(height * scale))
        offset_x, offset_y = (self.size - new_width) // 2, (self.size - new_height) // 2
        return new_width / width, new_height / height, offset_x, offset_y, new_width, new_height

    def boxes_to_original(self, boxes, width, height):
        """Boxes (N, 4) in the padded output -> boxes in the original (width, height) image."""
        scale_x, scale_y, offset_x, offset_y, _, _ = self.geometry(width, height)
        offset = np.array([offset_x, offset_y, offset_x, offset_y], np.float32)
        return (np.asarray(boxes, np.float32) - offset) / np.array([scale_x, scale_y, scale_x, scale_y], np.float32)

    def __call__(self, image, boxes, masks):
        scale_x, scale_y, offset_x, offset_y, new_width, new_height = self.geometry(image.width, image.height)
        canvas = Image.new(image.mode, (self.size, self.size), 0)
        canvas.paste(image.resize((new_width, new_height), Image.BILINEAR), (offset_x, offset_y))
        boxes = boxes * np.array([scale_x, scale_y, scale_x, scale_y], np.float32) \
            + np.array([offset_x, offset_y, offset_x, offset_y], np.float32)
        if masks is not None:
            padded = np.zeros((len(masks), self.size, self.size), bool)  # (R, size, size)
            for r, mask in enumerate(masks):
                resized = _pil_to_mask(_mask_to_pil(mask).resize((new_width, new_height), Image.NEAREST))
                padded[r, offset_y:offset_y + new_height, offset_x:offset_x + new_width] = resized
            masks = padded
        return canvas, boxes, masks


class RandomAffine:
    """Rotation by U(-degrees, degrees), isotropic scale U(scale), shift U(-t, t) * size, about the centre.

    Positive angles turn the picture counter-clockwise on screen. One resample for the image (BILINEAR)
    and each mask (NEAREST) with the same forward matrix that maps the box corners.
    """

    def __init__(self, degrees=0.0, translate=0.0, scale=(1.0, 1.0)):
        self.degrees, self.translate, self.scale = float(degrees), float(translate), tuple(scale)

    def sample_matrix(self, width, height):
        """-> (2, 3) forward matrix from input pixels to output pixels, from torch's RNG."""
        uniform = torch.rand(4).tolist()
        angle = math.radians((2 * uniform[0] - 1) * self.degrees)
        scale = self.scale[0] + (self.scale[1] - self.scale[0]) * uniform[1]
        shift_x = round((2 * uniform[2] - 1) * self.translate * width)
        shift_y = round((2 * uniform[3] - 1) * self.translate * height)
        centre_x, centre_y = width / 2, height / 2
        cos, sin = scale * math.cos(angle), scale * math.sin(angle)
        # p' = S R (p - c) + c + t, with y pointing down (so +angle is counter-clockwise on screen)
        return np.array([[cos, sin, centre_x + shift_x - cos * centre_x - sin * centre_y],
                         [-sin, cos, centre_y + shift_y + sin * centre_x - cos * centre_y]], np.float64)

    def __call__(self, image, boxes, masks):
        width, height = image.size
        forward = self.sample_matrix(width, height)
        square = np.vstack([forward, [0, 0, 1]])
        inverse = np.linalg.inv(square)[:2].reshape(-1).tolist()  # PIL maps output -> input
        image = image.transform((width, height), Image.AFFINE, inverse, resample=Image.BILINEAR, fillcolor=0)
        boxes = _affine_boxes(boxes, forward, width, height)
        if masks is not None and len(masks):
            masks = np.stack([_pil_to_mask(_mask_to_pil(m).transform((width, height), Image.AFFINE, inverse,
                                                                    resample=Image.NEAREST, fillcolor=0))
                              for m in masks])
        return image, boxes, masks


class RandomRotation(RandomAffine):
    """Rotation only, by U(-degrees, degrees) about the centre."""

    def __init__(self, degrees):
        super().__init__(degrees=degrees)


# ----------------------------------------------------------------------------------------------------------
# photometric and conversion steps

class ColorJitter:
    """Brightness then contrast, each factor U(1 - x, 1 + x); boxes and masks pass through."""

    def __init__(self, brightness=0.0, contrast=0.0):
        self.brightness, self.contrast = float(brightness), float(contrast)

    def __call__(self, image, boxes, masks):
        uniform = torch.rand(2).tolist()
        if self.brightness > 0:
            image = ImageEnhance.Brightness(image).enhance(1 + (2 * uniform[0] - 1) * self.brightness)
        if self.contrast > 0:
            image = ImageEnhance.Contrast(image).enhance(1 + (2 * uniform[1] - 1) * self.contrast)
        return image, boxes, masks


class Grayscale:
    """Any PIL mode -> 8-bit 'L' (16-bit images should be scaled by data/io.load_image before this)."""

    def __call__(self, image, boxes, masks):
        return (image if image.mode == "L" else image.convert("L")), boxes, masks


class ToTensor:
    """'L' image -> (channels, H, W) float32 in [0, 1] (grey copied to every channel); boxes, masks -> tensors."""

    def __init__(self, channels=3):
        self.channels = channels

    def __call__(self, image, boxes, masks):
        pixels = torch.from_numpy(np.asarray(image, np.uint8).copy()).float().div_(255)  # (H, W)
        image = pixels.unsqueeze(0).repeat(self.channels, 1, 1)  # (C, H, W)
        boxes = torch.as_tensor(np.asarray(boxes, np.float32)).reshape(-1, 4)  # (N, 4)
        masks = None if masks is None else torch.as_tensor(np.asarray(masks, bool))  # (R, H, W)
        return image, boxes, masks


class Normalize:
    """(image - mean) / std per channel, on the tensor from ToTensor."""

    def __init__(self, mean, std):
        self.mean = torch.tensor(mean, dtype=torch.float32).view(-1, 1, 1)  # (C, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(-1, 1, 1)  # (C, 1, 1)
        if (self.std <= 0).any():
            raise ValueError(f"Normalize: std must be positive, got {list(std)}")

    def __call__(self, image, boxes, masks):
        return (image - self.mean) / self.std, boxes, masks


class Compose:
    """Run paired steps in order; accepts boxes=None / masks=None at the entry."""

    def __init__(self, steps):
        self.steps = list(steps)

    def __call__(self, image, boxes=None, masks=None):
        boxes = _as_boxes(boxes)
        if masks is not None:
            masks = np.asarray(masks, bool)
            if masks.shape[1:] != (image.height, image.width):
                raise ValueError(f"masks have shape {masks.shape}, expected (R, {image.height}, {image.width})")
        for step in self.steps:
            image, boxes, masks = step(image, boxes, masks)
        return image, boxes, masks

    def __repr__(self):
        return "Compose(" + ", ".join(type(s).__name__ for s in self.steps) + ")"


def decode_size(transform):
    """(width, height) that an image may be decoded down to before `transform` (data/io.py load_image hands it to
    Pillow's JPEG `draft`): the output of its first resize step when only Grayscale comes before it (square
    `size` for ResizePad, so both sides stay >= size), else None (decode at full size)."""
    for step in getattr(transform, "steps", []):
        if isinstance(step, Resize):
            return step.width, step.height
        if isinstance(step, ResizePad):
            return step.size, step.size
        if not isinstance(step, Grayscale):
            return None
    return None


def to_tensor_transform(channels=3):
    """The default transform of the adapters: grayscale -> (channels, H, W) in [0, 1], no resize."""
    return Compose([Grayscale(), ToTensor(channels)])


def build_transform(train, size, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), resize="pad", channels=3):
    """The paired transform of seed 001 §5.3: resize (+ train augmentation) -> 3-channel tensor -> normalize.

    train: add RandomAffine(degrees=5, translate=0.03, scale=(0.97, 1.03)) and ColorJitter(0.05, 0.05).
    resize: "pad" keeps the aspect ratio (ResizePad), "stretch" resizes to size x size (Resize).
    """
    if resize not in ("pad", "stretch"):
        raise ValueError(f"resize must be 'pad' or 'stretch', got {resize!r}")
    steps = [Grayscale(), ResizePad(size) if resize == "pad" else Resize(size)]
    if train:
        # seed 001 §5.3: RandomRotation(5) + RandomAffine(translate=0.03, scale=(0.97, 1.03)), one resample
        steps += [RandomAffine(degrees=5, translate=0.03, scale=(0.97, 1.03)),
                  ColorJitter(brightness=0.05, contrast=0.05)]
    steps += [ToTensor(channels), Normalize(mean, std)]
    return Compose(steps)
