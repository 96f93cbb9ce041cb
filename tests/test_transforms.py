"""Tests of data/transforms.py: boxes and masks follow the image, no flip, determinism, normalization.

Run: /work/venv/bin/pytest -q tests/test_transforms.py
"""
import numpy as np
import pytest
import torch
from PIL import Image

from data.transforms import (Compose, RandomAffine, Resize, ResizePad, ToTensor, Normalize, Grayscale,
                             build_transform)


def rectangle_image(width, height, box):
    """Black 'L' image with a white filled rectangle covering the pixels of box (x1, y1, x2, y2)."""
    pixels = np.zeros((height, width), np.uint8)
    x1, y1, x2, y2 = box
    pixels[y1:y2, x1:x2] = 255
    mask = pixels > 0
    return Image.fromarray(pixels), np.array([box], np.float32), mask[None]


def white_extent(image, threshold=0.5):
    """(C, H, W) tensor -> enclosing box (x1, y1, x2, y2) of pixels brighter than threshold (channel 0)."""
    ys, xs = torch.nonzero(image[0] > threshold, as_tuple=True)
    return np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], np.float32)


def mask_extent(mask):
    ys, xs = torch.nonzero(mask, as_tuple=True)
    return np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], np.float32)


@pytest.mark.parametrize("resize", ["pad", "stretch"])
@pytest.mark.parametrize("train", [False, True])
def test_box_and_mask_follow_the_image(resize, train):
    transform = build_transform(train, 96, mean=(0, 0, 0), std=(1, 1, 1), resize=resize)
    image, boxes, masks = rectangle_image(160, 120, (40, 30, 100, 70))
    for seed in range(8):
        torch.manual_seed(seed)
        out_image, out_boxes, out_masks = transform(image, boxes, masks)
        assert out_image.shape == (3, 96, 96) and out_boxes.shape == (1, 4) and out_masks.shape == (1, 96, 96)
        assert out_masks.dtype == torch.bool
        # the white pixels are enclosed by the box within 2 px on each side
        np.testing.assert_allclose(white_extent(out_image), out_boxes[0].numpy(), atol=2.0)
        np.testing.assert_allclose(mask_extent(out_masks[0]), out_boxes[0].numpy(), atol=2.0)
        # the mask covers the white pixels (same random parameters for both)
        white = out_image[0] > 0.5
        overlap = (white & out_masks[0]).sum() / (white | out_masks[0]).sum()
        assert overlap > 0.9


def test_resize_pad_numbers_and_inverse():
    transform = ResizePad(64)
    assert transform.geometry(200, 100) == (0.32, 0.32, 0, 16, 64, 32)
    image = Image.new("L", (200, 100), 255)
    boxes = np.array([[50, 25, 150, 75]], np.float32)
    out_image, out_boxes, _ = transform(image, boxes, None)
    np.testing.assert_allclose(out_boxes, [[16, 24, 48, 40]], atol=1e-5)
    pixels = np.asarray(out_image)
    assert pixels[:16].max() == 0 and pixels[48:].max() == 0 and pixels[16:48].min() == 255  # padding is black
    np.testing.assert_allclose(transform.boxes_to_original(out_boxes, 200, 100), boxes, atol=1e-4)


def test_plain_resize_scales_each_axis():
    image = Image.new("L", (200, 100))
    _, boxes, masks = Resize(50)(image, np.array([[20, 10, 120, 90]], np.float32), np.ones((2, 100, 200), bool))
    np.testing.assert_allclose(boxes, [[5, 5, 30, 45]])
    assert masks.shape == (2, 50, 50) and masks.all()


def test_no_horizontal_flip_ever():
    pixels = np.zeros((64, 64), np.uint8)
    pixels[20:44, 4:16] = 255  # a mark on the left
    image = Image.fromarray(pixels)
    transform = build_transform(True, 64, mean=(0, 0, 0), std=(1, 1, 1))
    assert not any("flip" in type(step).__name__.lower() for step in transform.steps)
    torch.manual_seed(0)
    for _ in range(100):
        out, _, _ = transform(image, None, None)
        ys, xs = torch.nonzero(out[0] > 0.5, as_tuple=True)
        assert abs(xs.float().mean().item() - 10) < 5  # the mark's centre stays near x = 10 (left edge)


def test_determinism_under_manual_seed():
    image, boxes, masks = rectangle_image(80, 80, (10, 20, 50, 60))
    transform = build_transform(True, 64)
    torch.manual_seed(123)
    first = transform(image, boxes, masks)
    torch.manual_seed(123)
    second = transform(image, boxes, masks)
    torch.manual_seed(124)
    third = transform(image, boxes, masks)
    assert torch.equal(first[0], second[0]) and torch.equal(first[1], second[1]) and torch.equal(first[2], second[2])
    assert not torch.equal(first[0], third[0])


def test_augmentation_parameters_stay_in_range():
    augment = RandomAffine(degrees=5, translate=0.03, scale=(0.97, 1.03))
    torch.manual_seed(0)
    for _ in range(200):
        matrix = augment.sample_matrix(100, 100)
        scale = np.sqrt(np.linalg.det(matrix[:, :2]))
        angle = np.degrees(np.arctan2(matrix[0, 1], matrix[0, 0]))
        centre = matrix[:, :2] @ np.array([50, 50]) + matrix[:, 2]  # where the centre goes: the shift
        assert 0.97 - 1e-9 <= scale <= 1.03 + 1e-9 and abs(angle) <= 5 + 1e-9
        assert np.all(np.abs(centre - 50) <= 3 + 1e-9)


def test_normalization_numbers_and_three_channels():
    image = Image.new("RGB", (4, 3), (128, 128, 128))
    out, boxes, masks = Compose([Grayscale(), ToTensor(3), Normalize((0.5, 0.4, 0.3), (0.25, 0.5, 1.0))])(image)
    assert out.shape == (3, 3, 4) and out.dtype == torch.float32
    value = 128 / 255
    for channel, (mean, std) in enumerate([(0.5, 0.25), (0.4, 0.5), (0.3, 1.0)]):
        assert torch.allclose(out[channel], torch.full((3, 4), (value - mean) / std), atol=1e-6)
    assert boxes.shape == (0, 4) and masks is None


def test_mask_shape_mismatch_is_an_error():
    with pytest.raises(ValueError, match="expected"):
        build_transform(False, 32)(Image.new("L", (40, 30)), None, np.zeros((1, 40, 30), bool))
