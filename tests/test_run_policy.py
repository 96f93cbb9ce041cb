"""Nothing lost, nothing silently wrong (issue 26): exact duplicate box rows (NIH BBox_List_2017.csv, VinDr
annotations_*.csv) are one error naming both lines, or one skipped and counted row.

Run: python -m pytest -q tests/test_run_policy.py
"""
import re

import numpy as np
import pytest

from data.sample import DataError


@pytest.fixture(scope="module")
def phantoms():
    from data.phantom import ChestPhantomDataset
    dataset = ChestPhantomDataset(10, image_size=64, seed=3)
    return [dataset[i] for i in range(len(dataset))]


# ----------------------------------------------------------------------------------------------------------
# exact duplicate box rows

def repeat_line(path, keep):
    """Append a copy of the first line for which keep(line) holds -> (its line number, the copy's)."""
    lines = path.read_text().splitlines(keepends=True)
    line = next(n for n, text in enumerate(lines, start=1) if n > 1 and keep(text))
    path.write_text("".join(lines) + lines[line - 1])
    return line, len(lines) + 1


def test_nih_repeated_box_row(tmp_path, phantoms):
    from data.nih import NihDataset, write_nih
    write_nih(tmp_path, phantoms)
    reference = NihDataset(tmp_path, split="all")
    line, copy = repeat_line(tmp_path / "BBox_List_2017.csv", lambda text: True)
    image = (tmp_path / "BBox_List_2017.csv").read_text().splitlines()[line - 1].split(",")[0]
    with pytest.raises(DataError, match=rf"BBox_List_2017.csv: box {re.escape(image)} \w+ \[.*\] on lines {line} "
                                        rf"and {copy}; expected each box once"):
        NihDataset(tmp_path, split="all")
    skipping = NihDataset(tmp_path, split="all", on_error="skip")
    assert len(skipping.policy.skipped) == 1
    for kept, clean in zip(skipping.records, reference.records):
        np.testing.assert_array_equal(kept["boxes"], clean["boxes"])


def test_vindr_repeated_box_row_of_one_reader(tmp_path, phantoms):
    from data.labels import VINDR_CONCEPTS
    from data.vindr import VinDrDataset, write_vindr
    write_vindr(tmp_path, phantoms)
    reference = VinDrDataset(tmp_path, split="train")
    path = tmp_path / "annotations_train.csv"
    line, copy = repeat_line(path, lambda text: any(f",{name}," in text for name in VINDR_CONCEPTS))
    image, reader = path.read_text().splitlines()[line - 1].split(",")[:2]
    with pytest.raises(DataError, match=rf"annotations_train.csv: box of image_id {image} rad_id {reader} .* on "
                                        rf"lines {line} and {copy}; expected each box once"):
        VinDrDataset(tmp_path, split="train")
    skipping = VinDrDataset(tmp_path, split="train", on_error="skip")
    assert len(skipping.policy.skipped) == 1
    for kept, clean in zip(skipping.records, reference.records):
        np.testing.assert_array_equal(kept["boxes"], clean["boxes"])
    # the same box from another reader is no repeat
    lines = path.read_text().splitlines(keepends=True)
    lines[-1] = lines[-1].replace(f",{reader},", ",R9,", 1)
    path.write_text("".join(lines))
    assert not VinDrDataset(tmp_path, split="train", on_error="skip").policy.skipped
