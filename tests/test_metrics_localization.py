"""metrics/localization.py on constructed maps with hand-computed answers.
Run: python -m pytest -q tests/test_metrics_localization.py"""
import math

import numpy as np
import pytest
import torch

from metrics.localization import (THRESHOLDS_WANG, box_masks, energy_in_boxes, iobb_accuracy, iou_accuracy,
                                  map_entropy, map_to_boxes, pointing_game, roi_map_statistics)


def peak_map(row, col, size=64):
    heatmap = np.zeros((size, size))
    heatmap[row, col] = 1.0
    return heatmap


def test_pointing_game_tolerance():
    maps = np.stack([peak_map(10, 10), peak_map(40, 40), peak_map(30, 5)])
    box = np.array([[20.0, 20.0, 30.0, 30.0]])
    # map 0: centre (10.5, 10.5) is 9.5*sqrt(2) = 13.4 px from the corner (20, 20); map 1: 10.5*sqrt2 = 14.8
    # map 2: centre (5.5, 30.5): 14.5 px left of the box
    assert pointing_game(maps, [box, box, box], tolerance=0) == 0.0
    assert pointing_game(maps, [box, box, box], tolerance=14) == pytest.approx(1 / 3)
    assert pointing_game(maps, [box, box, box], tolerance=15) == pytest.approx(1.0)
    # images without boxes are skipped; torch input
    assert pointing_game(torch.tensor(maps), [box, np.zeros((0, 4)), box], tolerance=0) == 0.0
    assert math.isnan(pointing_game(maps[:1], [np.zeros((0, 4))]))
    inside = peak_map(25, 25)
    assert pointing_game(inside, [box], tolerance=0) == 1.0


def test_map_to_boxes_components_and_thresholds():
    heatmap = np.zeros((20, 30))
    heatmap[2:5, 3:8] = 1.0             # a 3 x 5 blob
    heatmap[10:16, 20:22] = 0.5         # a weaker 6 x 2 blob
    heatmap[16, 22] = 0.5               # diagonal neighbour: same 8-connected component
    boxes = map_to_boxes(heatmap, THRESHOLDS_WANG[0])
    assert boxes.tolist() == [[3, 2, 8, 5], [20, 10, 23, 17]]   # larger (15 px) first, then 13 px
    assert map_to_boxes(heatmap, THRESHOLDS_WANG[1]).tolist() == [[3, 2, 8, 5]]  # 0.5 < 180/255
    assert map_to_boxes(heatmap, 0.5, mode="max").tolist() == [[3, 2, 8, 5], [20, 10, 23, 17]]
    assert map_to_boxes(np.ones((5, 5)), 0.2).shape == (0, 4)
    ring = np.zeros((7, 7))
    ring[1, 1:6] = ring[5, 1:6] = ring[1:6, 1] = ring[1:6, 5] = 1
    assert map_to_boxes(ring, 0.5).tolist() == [[1, 1, 6, 6]]        # one component, not four runs
    with pytest.raises(ValueError, match="mode"):
        map_to_boxes(ring, 0.5, mode="otsu")


def test_iou_and_iobb_accuracy():
    heatmap = np.zeros((1, 40, 40))
    heatmap[0, 0:20, 0:20] = 1.0                                      # CAM box (0, 0, 20, 20), area 400
    small = [np.array([[0.0, 0.0, 10.0, 10.0]])]                        # GT area 100: IoU .25, IoBB .25
    assert iou_accuracy(heatmap, small, iou_threshold=0.2) == 1.0
    assert iou_accuracy(heatmap, small, iou_threshold=0.25) == 0.0     # strict >
    assert iobb_accuracy(heatmap, small, iobb_threshold=0.1) == 1.0
    large = [np.array([[0.0, 0.0, 40.0, 40.0]])]                        # GT covers the CAM box: IoBB 1, IoU .25
    assert iobb_accuracy(heatmap, large, iobb_threshold=0.9) == 1.0
    assert iou_accuracy(heatmap, large, iou_threshold=0.5) == 0.0
    flat = np.zeros((1, 40, 40))
    assert iou_accuracy(flat, small, iou_threshold=0.1) == 0.0           # no CAM box = wrong


def test_energy_in_boxes_and_masks():
    heatmap = np.zeros((2, 10, 10))
    heatmap[0, :5, :] = 1.0              # top half
    heatmap[1] = -1.0                    # relu -> all zero: not counted
    boxes = [np.array([[0.0, 0.0, 10.0, 2.0]]), np.array([[0.0, 0.0, 5.0, 5.0]])]
    masks = box_masks(boxes, 10, 10)
    assert masks[0].sum() == 20 and masks[0][:2].all()    # rows 0, 1 (pixel centres 0.5, 1.5 <= 2.0)
    assert energy_in_boxes(heatmap, boxes) == pytest.approx(20 / 50)   # image 1 (all zero after relu) skipped
    assert energy_in_boxes(torch.tensor(heatmap[:1]), boxes[:1]) == pytest.approx(0.4)


def test_entropy_and_roi_statistics():
    uniform = np.ones((1, 4, 4))
    peak = peak_map(1, 1, size=4)[None]
    entropy = map_entropy(np.concatenate([uniform, peak, np.zeros((1, 4, 4))]))
    assert entropy[0] == pytest.approx(math.log(16)) and entropy[1] == pytest.approx(0.0) and np.isnan(entropy[2])
    stats = roi_map_statistics(np.concatenate([uniform, peak]), sigma=torch.tensor([[0.2, 0.4], [0.1, 0.1]]))
    assert stats["gaussian/entropy"] == pytest.approx(math.log(16) / 2)
    assert stats["gaussian/entropy_normalized"] == pytest.approx(0.5)
    assert stats["gaussian/scale"] == pytest.approx(0.2) and stats["gaussian/area"] == pytest.approx((0.08 + 0.01) / 2)
