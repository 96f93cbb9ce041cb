"""CheXbert labels of a dataset's reports, as the labels CSV that data.labels_csv reads; and the labeler
the CheXQuery evaluation uses for "CheXbert F1".

    python train_chexquery.py --config configs/chexquery.yaml --chexbert-labels labels.csv [data.root=...]
    label_dataset(cfg.data, out, checkpoint, tokenizer=None, split="all", device="auto", batch_size=32)

    labeler = build_labeler(checkpoint, tokenizer=None, device="cpu")   # reports -> (N, 14) long classes
    reason = chexbert_unavailable(checkpoint, tokenizer=None)           # None, or where it looked and why not

Config keys (the eval section of configs/chexquery.yaml; null = not set):
    eval.chexbert_checkpoint   the published chexbert.pth (a file, or a folder holding it), or tiny-hub/chexbert
    eval.chexbert_tokenizer    name or folder; null = default_tokenizer(checkpoint): the hub folder for
                               tiny-hub/chexbert, else bert-base-uncased (CheXbert's own)
    eval.chexbert_uncertain    positive | negative, for metrics.clinical.chexbert_metrics (not used here)

The CSV: one row per study (the key column is `uid` for data.source=iu_xray, `id` for iu_xray_r2gen, as
data/iu_xray.py looks rows up), the 14 columns in CheXbert's head order (data.labels.CHEXBERT_CONDITIONS),
coded as CheXbert's label.py writes them: positive 1.0, negative 0.0, uncertain -1.0, blank empty; then
the labelled text under "Report Impression" (CheXbert's column name). Written to a temp file, then
os.replace. The report text is the cleaned report the dataset gives (data.reports.clean_report), i.e. the
reference the CheXQuery evaluation scores against; each study is labelled once.

Design choices:
- The datasets are built as train_chexquery.build_dataset builds them, without transforms, image checks
  or the frontal-only filter (every study with a report gets a row).
- Errors a user can fix (no checkpoint, a file not in CheXbert's layout, no tokenizer, a bad data root)
  are one DataError / PretrainedLoadError; the command prints it as one line and exits with status 2.
"""
import csv
import os
from pathlib import Path

import torch

from data.labels import CHEXBERT_CONDITIONS, CHEXPERT_LABELS
from data.sample import DataError
from hub import tiny_hub
from hub.pretrained import PretrainedLoadError
from models import chexbert

DEFAULT_TOKENIZER = "bert-base-uncased"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt")
# CheXbert's label.py writes its classes as: positive 1.0, negative 0.0, uncertain -1.0, blank empty (NaN)
CSV_VALUES = {chexbert.POSITIVE: "1.0", chexbert.NEGATIVE: "0.0", chexbert.UNCERTAIN: "-1.0", chexbert.BLANK: ""}
KEY_COLUMN = {"iu_xray": "uid", "iu_xray_r2gen": "id"}
REPORT_COLUMN = "Report Impression"


# --------------------------------------------------------------------------------------------------
# the labeler

def resolve_device(device="auto"):
    return ("cuda" if torch.cuda.is_available() else "cpu") if device in (None, "auto") else device


def default_tokenizer(checkpoint):
    """tiny-hub/chexbert -> its hub folder (the tokenizer is saved beside chexbert.pth); a folder holding
    tokenizer files -> that folder; otherwise CheXbert's own bert-base-uncased."""
    if tiny_hub.is_hub_name(checkpoint):
        return checkpoint
    if checkpoint and os.path.isdir(checkpoint) and any(
            os.path.exists(os.path.join(checkpoint, name)) for name in TOKENIZER_FILES):
        return str(checkpoint)
    return DEFAULT_TOKENIZER


def chexbert_unavailable(checkpoint, tokenizer=None):
    """None when `checkpoint` (+ tokenizer) can be loaded; else one line saying where it looked, for the
    caller's f"{reason}; rule labeler used instead". tiny-hub/chexbert is always available (built on first
    use, not here). Otherwise loads the tokenizer (cheap), not the weights."""
    if not checkpoint:
        return "no CheXbert checkpoint configured (eval.chexbert_checkpoint is null)"
    if tiny_hub.is_hub_name(checkpoint):
        try:
            tiny_hub.hub_entry(checkpoint)
        except KeyError as error:
            return str(error.args[0])
        if tokenizer is None or tiny_hub.is_hub_name(tokenizer):
            return None                                         # the hub builds weights and tokenizer together
    else:
        path = chexbert.checkpoint_file(checkpoint)
        if not os.path.isfile(path):
            return (f"CheXbert weights missing at {path} (expected the published CheXbert checkpoint, "
                    f"f1chexbert's chexbert.pth)")
    name = tokenizer or default_tokenizer(checkpoint)
    try:
        chexbert.load_chexbert_tokenizer(name)
    except PretrainedLoadError as error:
        return f"CheXbert tokenizer {name!r} not available: {error}"
    return None


def build_labeler(checkpoint, tokenizer=None, device="cpu", batch_size=32):
    """-> labeler(reports) -> (N, 14) LongTensor in CHEXPERT_LABELS order (0 blank, 1 positive, 2 negative,
    3 uncertain). Raises ChexbertLoadError / PretrainedLoadError (one message) when it cannot be loaded."""
    device = resolve_device(device)
    model = chexbert.load_chexbert(checkpoint, device=device)      # the weights first: a missing file is named first
    tokenizer = chexbert.load_chexbert_tokenizer(tokenizer or default_tokenizer(checkpoint))
    chexbert.check_tokenizer(model, tokenizer, checkpoint)

    def labeler(reports, desc="CheXbert"):
        return model.label(list(reports), tokenizer, batch_size=batch_size, device=device, desc=desc)
    labeler.model, labeler.tokenizer, labeler.checkpoint = model, tokenizer, checkpoint
    return labeler


# --------------------------------------------------------------------------------------------------
# data

def dataset_reports(data, split="all"):  # data: the config's data section (a dict or training.Config)
    """The config's data section -> (key column, {key: report}) over `split`, one entry per study."""
    source = data.get("source")
    on_error = data.get("on_error", "stop")
    if source == "iu_xray":
        from data.iu_xray import IUXrayDataset
        if not data.get("root"):
            raise DataError("data.source=iu_xray needs data.root (the folder with indiana_reports.csv)")
        dataset = IUXrayDataset(data["root"], split, None, frontal_only=False, split_file=data.get("split_file") or None,
                                on_error=on_error, check_images=False)
    elif source == "iu_xray_r2gen":
        from data.iu_xray import IUXrayR2GenDataset
        if not data.get("annotation") or not data.get("root"):
            raise DataError("data.source=iu_xray_r2gen needs data.annotation (annotation.json) and data.root "
                            "(its image root)")
        dataset = IUXrayR2GenDataset(data["annotation"], data["root"], split, None,
                                     official_split=data.get("r2gen_official_split", True),
                                     split_file=data.get("split_file") or None, on_error=on_error,
                                     check_images=False)
    else:
        raise DataError(f"data.source={source!r}: a labels CSV is read for iu_xray and iu_xray_r2gen only "
                        f"(phantoms carry their own label vectors)")
    reports = {}
    for record in dataset.records:
        reports.setdefault(str(record["patient_id"]), record["report"])
    return KEY_COLUMN[source], reports


def write_labels_csv(path, key_column, keys, reports, classes):
    """classes (N, 14) in CHEXPERT_LABELS order -> CSV (key, CheXbert's 14 columns, report), atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    column_of = [CHEXPERT_LABELS.index(name) for name in CHEXBERT_CONDITIONS]
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow([key_column] + CHEXBERT_CONDITIONS + [REPORT_COLUMN])
            for key, report, row in zip(keys, reports, classes.tolist()):
                writer.writerow([key] + [CSV_VALUES[row[j]] for j in column_of] + [report])
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def label_dataset(data, out, checkpoint, tokenizer=None, split="all", device="auto", batch_size=32):
    """Label every study's report of the config's data section with CheXbert and write the labels CSV.
    Raises DataError / PretrainedLoadError (one message) before any work when something is missing."""
    if not checkpoint:
        raise DataError("no CheXbert checkpoint: set eval.chexbert_checkpoint to the published chexbert.pth (a "
                        "dict with model_state_dict) or to tiny-hub/chexbert")
    if not tiny_hub.is_hub_name(checkpoint):
        chexbert.existing_checkpoint_file(checkpoint)         # a missing file is named before the data is read
    key_column, reports = dataset_reports(data, split)
    labeler = build_labeler(checkpoint, tokenizer, device, batch_size)
    keys = list(reports)
    classes = labeler([reports[k] for k in keys], desc=f"CheXbert {split}")
    write_labels_csv(out, key_column, keys, [reports[k] for k in keys], classes)
    positives = (classes == chexbert.POSITIVE).sum(0).tolist()
    counts = ", ".join(f"{name} {n}" for name, n in zip(CHEXPERT_LABELS, positives))
    print(f"[chexbert_labels] {len(keys)} studies labelled with {checkpoint} on {resolve_device(device)} -> "
          f"{out} (positives: {counts}); use it with data.labels_csv={out}")
    return out
