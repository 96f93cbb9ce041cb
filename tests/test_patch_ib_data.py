"""Seed-004 master JSONL builder on a phantom MIMIC-CXR-JPG layout.  Run: python -m pytest -q tests/test_patch_ib_data.py"""
import csv
import gzip
import json

import numpy as np
import pytest

from data.labels import CHEXPERT_LABELS
from data.mimic_cxr import MimicMasterDataset, write_mimic_cxr
from data.mimic_master import build_master_jsonl
from data.phantom import phantom_split
from data.sample import DataError


def test_builder_on_phantom_mimic_layout(tmp_path, capsys):
    samples = [phantom_split("train", 10, 64)[i] for i in range(10)]
    written = write_mimic_cxr(tmp_path, samples, studies_per_subject=2)
    short = tmp_path / "files/p10/p10000000/s50000001.txt"            # one report below 30 characters
    short.write_text(" FINDINGS:\n Normal.\n\n IMPRESSION:\n ok\n")
    result = build_master_jsonl(tmp_path)
    rows = [json.loads(line) for line in result["path"].read_text().splitlines()]
    assert result["dropped_short"] == 1 and len(rows) == 9             # laterals never appear
    assert all(r["view"] in ("PA", "AP") and "lateral" not in r["dicom_id"] for r in rows)
    official = dict(zip(written["dicom_ids"], written["splits"]))
    assert all(r["split"] == official[r["dicom_id"]] for r in rows)
    by_id = {r["dicom_id"]: r for r in rows}
    for dicom, sample in zip(written["dicom_ids"], samples):
        if dicom in by_id:
            expected = {n: int(v == 1) for n, v in zip(CHEXPERT_LABELS, sample["labels"].tolist())}
            assert by_id[dicom]["labels"] == expected
            assert "Findings" not in by_id[dicom]["report"] and len(by_id[dicom]["report"]) >= 30
    table = capsys.readouterr().out
    assert "| **Total Samples** |" in table and "| Pleural Effusion |" in table
    # the reader takes it back
    data = MimicMasterDataset(result["path"], tmp_path, split="all")
    assert len(data) == 9 and np.asarray(data[0]["image"]).shape[0] == 3


def test_train_script_reads_master_jsonl_and_paper_config_names_open_clip(tmp_path):
    import pytest
    import training
    import train_patch_ib
    from data.mimic_cxr import write_master_jsonl
    written = write_master_jsonl(tmp_path, [phantom_split("train", 5, 64)[i] for i in range(5)])
    cfg = training.load_config("configs/tiny/patch_ib.yaml", ["data.source=mimic_master",
                                                              f"data.master_jsonl={written['path']}",
                                                              f"data.image_root={tmp_path}"])
    data = train_patch_ib.build_dataset(cfg, "train")
    assert len(data) == 5 and data[0]["image"].shape == (3, 96, 96) and 0 <= float(data[0]["image"].min())
    paper = training.load_config("configs/patch_ib.yaml")
    assert paper.model.embed_dim == 512 and paper.train.batch_size == 64
    try:
        import open_clip  # noqa: F401
    except ImportError:
        with pytest.raises(ImportError, match="open_clip_torch"):
            train_patch_ib.build_model(paper)


def rewrite_chexpert(root, edit):
    """edit(header, rows) changes the official label CSV of a phantom layout in place"""
    path = root / "mimic-cxr-2.0.0-chexpert.csv.gz"
    with gzip.open(path, "rt", newline="") as handle:
        header, *rows = list(csv.reader(handle))
    edit(header, rows)
    with gzip.open(path, "wt", newline="") as handle:
        csv.writer(handle).writerows([header] + rows)


def test_builder_positive_only_labels_split_table_and_integrity(tmp_path, capsys):
    samples = [phantom_split("train", 10, 64)[i] for i in range(10)]
    write_mimic_cxr(tmp_path, samples, studies_per_subject=2)

    def uncertain_and_negative(header, rows):       # study 0: Edema uncertain (-1), Fracture negative (0)
        rows[0][header.index("Edema")], rows[0][header.index("Fracture")] = "-1.0", "0.0"
        rows[0][header.index("Pneumothorax")] = "1.0"
    rewrite_chexpert(tmp_path, uncertain_and_negative)
    result = build_master_jsonl(tmp_path)
    rows = [json.loads(line) for line in result["path"].read_text().splitlines()]
    first = next(r for r in rows if r["study_id"] == "50000000")
    assert first["labels"]["Edema"] == 0 and first["labels"]["Fracture"] == 0 and first["labels"]["Pneumothorax"] == 1
    assert result["rows"] == {"train": 6, "val": 2, "test": 2}              # subjects 0-2 train, 3 validate, 4 test
    assert {r["split"] for r in rows} == {"train", "validate", "test"}
    table = capsys.readouterr().out
    assert "| **Total Samples** | **6** | **2** | **2** |" in table
    pneumothorax = sum(r["labels"]["Pneumothorax"] for r in rows if r["split"] == "train")
    assert f"| Pneumothorax | {pneumothorax} |" in table
    missing = tmp_path / f"{rows[-1]['image_path']}"
    missing.unlink()                                                        # integrity: a frontal image is gone
    with pytest.raises(DataError, match=rows[-1]["dicom_id"]):
        build_master_jsonl(tmp_path)


def test_builder_keeps_one_frontal_image_per_study_unless_per_image(tmp_path, capsys):
    samples = [phantom_split("train", 6, 64)[i] for i in range(6)]
    written = write_mimic_cxr(tmp_path, samples, studies_per_subject=2)     # studies 0 and 3 also have a lateral
    path = tmp_path / "mimic-cxr-2.0.0-metadata.csv.gz"
    with gzip.open(path, "rt", newline="") as handle:
        header, *rows = list(csv.reader(handle))
    view = header.index("ViewPosition")
    for row in rows:                                # study 0 (PA): its second image becomes AP;
        if row[0].endswith("-lateral"):             # study 3 (AP): its second image becomes PA
            row[view] = "AP" if row[0].startswith(written["dicom_ids"][0]) else "PA"
    with gzip.open(path, "wt", newline="") as handle:
        csv.writer(handle).writerows([header] + rows)
    per_study = build_master_jsonl(tmp_path)
    rows_study = [json.loads(line) for line in per_study["path"].read_text().splitlines()]
    assert len(rows_study) == 6 and len({r["study_id"] for r in rows_study}) == 6
    chosen = {r["study_id"]: r["dicom_id"] for r in rows_study}
    assert chosen["50000000"] == written["dicom_ids"][0]                    # PA before AP
    assert chosen["50000003"] == written["dicom_ids"][3] + "-lateral"      # the PA one, although listed second
    assert "rows per split (one frontal image per study" in capsys.readouterr().out
    per_image = build_master_jsonl(tmp_path, tmp_path / "per_image.jsonl", per_study=False)
    assert len(per_image["path"].read_text().splitlines()) == 8 and sum(per_image["rows"].values()) == 8
    assert "rows per split (every frontal image): train" in capsys.readouterr().out


def test_reader_takes_the_seed_authors_label_list(tmp_path):
    from data.mimic_cxr import write_master_jsonl
    samples = [phantom_split("train", 3, 64)[i] for i in range(3)]
    path = write_master_jsonl(tmp_path, samples)["path"]
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    as_dicts = MimicMasterDataset(path, tmp_path, split="all")
    for row in rows:                                # 14 values in CheXpert order
        row["labels"] = [row["labels"][n] for n in CHEXPERT_LABELS]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    as_lists = MimicMasterDataset(path, tmp_path, split="all")
    assert as_lists.schema == "list" and as_dicts.schema == "dict" and len(as_lists) == 3
    for i in range(3):
        assert np.array_equal(as_lists[i]["labels"], as_dicts[i]["labels"])
    rows[1]["labels"] = rows[1]["labels"][:13]      # a later line in another form: an error naming it
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    with pytest.raises(DataError, match="line 2: 'labels' must be a list of 14"):
        MimicMasterDataset(path, tmp_path, split="all")
