"""Captions for the WSRPN-VL text branch, and the detection view of a dataset (seed 000, "Generate RDF medical
text"; research/wsrpn_rodeo.md §5).

    caption_from_findings(findings, class_names) -> "moderate left basal pleural effusion. mild cardiomegaly."
    caption_from_labels(labels (C,), class_names) -> "atelectasis and effusion."       (NIH: labels only)
    caption_from_report(report, max_sentences=3) -> the impression's (else the findings') first sentences (MIMIC)
    caption_from_report_statements(report) -> "right basal pleural effusion. possible left lower zone atelectasis."
        (report_statements: one structured statement per positive or uncertain finding, from the rule labeler's
        mentions and the location vocabulary of data/labeler_phrases.py; seed 000's "RDF" captions)
    DetectionCaptionDataset(base, class_names, source, caption, ...) -> samples for train_wsrpn_vl.py

Design choices:
- Which caption a dataset can have: phantoms know every finding's side, zone and size, so their captions
  say where ("left basal"); NIH ChestX-ray14 has image labels only (its captions name the classes, no
  location); MIMIC-CXR has real reports. Caption "statements" renders a report's findings as structured
  statements (finding, laterality, zone, certainty; negated findings give none, uncertain ones say "possible"),
  naming every finding the report states; caption "report" keeps sentences of the impression (else of the
  findings). Captions "findings" and "labels" only name the detection classes (class_names). A caption with
  nothing to name says NO_FINDING_CAPTION.
- Labels in the detection space: (C,) over class_names + ["No Finding"] (no finding last, as WSRPN needs).
  source "phantom": from the phantom's findings (box_labels index PHANTOM_FINDINGS), no finding = no finding
  drawn except support devices; source "nih": NIH_LABELS by name, no finding = no NIH label;
  source "chexpert": CheXpert labels mapped by CHEXPERT_TO_NIH_BOX (uncertain -1 counts as negative),
  no finding = CheXpert "No Finding". Images with none of the C labels are left out, as the reference does
  (an NIH image labelled only "Emphysema" is dropped).
- Boxes are kept only for the detection classes, with box_labels re-indexed into class_names.
- cache=True keeps each sample in memory as uint8 grey (H, W) + labels + boxes + caption (phantoms: one
  generation, ~16 KB per 128-px image); the base dataset must then return identical channels.

Shape letters: C detection classes incl. no finding, N boxes.
"""
import re
from dataclasses import dataclass, replace

import numpy as np
import torch
from tqdm import tqdm

from data import labeler_phrases as P
from data.labels import CHEXPERT_LABELS, NIH_LABELS, PHANTOM_FINDINGS

NO_FINDING = "No Finding"
NO_FINDING_CAPTION = "no acute cardiopulmonary abnormality."
# CheXpert labels that stand for an NIH box class (for MIMIC training evaluated on the NIH boxes). Approximate:
# NIH "Infiltration" has no CheXpert label (Lung Opacity is the nearest), and Mass and Nodule are both
# CheXpert "Lung Lesion", so the two NIH classes get the same training label.
CHEXPERT_TO_NIH_BOX = {"Atelectasis": ["Atelectasis"], "Cardiomegaly": ["Cardiomegaly"],
                       "Effusion": ["Pleural Effusion"], "Infiltration": ["Lung Opacity"], "Mass": ["Lung Lesion"],
                       "Nodule": ["Lung Lesion"], "Pneumonia": ["Pneumonia"], "Pneumothorax": ["Pneumothorax"]}
SOURCES = ("phantom", "nih", "chexpert")
CAPTIONS = ("findings", "labels", "report", "statements")


def _join(phrases):
    if not phrases:
        return NO_FINDING_CAPTION
    return ". ".join(phrases) + "."


def caption_from_findings(findings, class_names):
    """Phantom finding dicts (name, side, zone, size) -> one phrase per finding of a detection class."""
    phrases = []
    for finding in sorted(findings, key=lambda f: (class_names.index(f["name"]) if f["name"] in class_names else -1)):
        if finding["name"] not in class_names:
            continue
        words = [finding["size"]] if finding["size"] not in ("", "n/a") else []
        if finding["side"] not in ("midline", ""):
            words.append(finding["side"])
        if finding["zone"] not in ("cardiac", "mediastinal", ""):
            words.append(finding["zone"])
        words.append(finding["name"])
        phrases.append(" ".join(words))
    return _join(phrases)


def caption_from_labels(labels, class_names):
    """labels: (C,) over class_names + [No Finding] -> 'atelectasis and effusion.' (no location)."""
    names = [name.lower() for name, value in zip(class_names, labels[:len(class_names)]) if value > 0.5]
    if not names:
        return NO_FINDING_CAPTION
    return (", ".join(names[:-1]) + " and " + names[-1] if len(names) > 1 else names[0]) + "."


def caption_from_report(report, max_sentences=3):
    """'Findings: ... | Impression: ...' -> the first sentences of the impression (else of the findings)."""
    from data.reports import split_sections, split_sentences
    try:
        findings, impression = split_sections(report)
    except ValueError:
        findings, impression = report, ""
    sentences = split_sentences(impression or findings)
    return " ".join(sentences[:max_sentences]) or NO_FINDING_CAPTION


# --- report-derived statements (seed 000 "RDF" captions) -----------------------------------------------------
@dataclass(frozen=True)
class Statement:
    """One structured finding statement read from a report (seed 000: "RDF" captions)."""
    observation: str   # CheXpert observation (data.labels.CHEXPERT_LABELS)
    finding: str       # the word the caption uses ("pleural effusion", "nodule", "mass", "opacity")
    laterality: str    # right | left | bilateral | "" (none written, or midline findings)
    zone: str          # canonical zone (labeler_phrases.ZONE_WORDS / DEFAULT_ZONE) or ""
    certainty: str     # positive | uncertain


def _finding_word(observation, phrase):
    if observation == "Lung Lesion":
        return "mass" if "mass" in phrase else "nodule" if "nodul" in phrase else "lung lesion"
    if observation == "Pleural Other":
        return phrase.strip()
    return "opacity" if observation == "Lung Opacity" else observation.lower()


def _nearest(regexes, text, start, end):
    """-> (value, match) of the vocabulary word nearest to text[start:end] (words before win ties), or None."""
    best = None
    for pattern, value in regexes.items():
        for match in re.finditer(rf"(?<![\w-])(?:{pattern})(?![\w])", text):
            if start <= match.start() < end:
                continue   # inside the mention itself
            distance = start - match.end() if match.end() <= start else match.start() - end + 0.5
            if best is None or distance < best[0]:
                best = (distance, value, match)
    return best and best[1:]


def _locate(sentence, mention):
    """-> (laterality, zone) from the mention's clause (data/labeler.py): the nearest side word and the nearest
    zone word; "right and left" is bilateral; a zone word may fix the side (lingula, retrocardiac)."""
    from data.labeler import _clause
    left, right = _clause(sentence, mention.start)
    clause, start, end = sentence[left:right], mention.start - left, mention.end - left
    side = _nearest(P.LATERALITY_WORDS, clause, start, end)
    zone = _nearest(P.ZONE_WORDS, clause, start, end)
    laterality = side[0] if side else ""
    if re.search(r"\b(?:right and left|left and right)\b", clause):
        laterality = "bilateral"
    if not laterality and zone:
        laterality = next((value for pattern, value in P.ZONE_IMPLIES_SIDE.items()
                           if re.fullmatch(pattern, zone[1].group(0))), "")
    zone_name = zone[0] if zone else P.DEFAULT_ZONE.get(mention.observation, "")
    if mention.observation in ("Cardiomegaly", "Enlarged Cardiomediastinum"):
        laterality, zone_name = "", P.DEFAULT_ZONE[mention.observation]   # midline by definition
    return laterality, zone_name


def report_statements(report):
    """Report text -> [Statement], one per positive or uncertain finding, in reading order.

    Rules: mentions and their certainty come from the rule labeler (data/labeler.py). A negated mention gives
    no statement; an uncertain one gives a statement with certainty "uncertain" (rendered "possible ...").
    Support devices, the "no finding" list of other abnormalities, and a neutral anatomy word the labeler calls
    uncertain ("stable cardiomediastinal silhouette") give none. An opacity word in a sentence
    that names a more specific finding (OPACITY_CHILDREN) gives none. Laterality and zone come from the mention's
    clause (_locate). Repeats (findings and impression) merge: a statement whose laterality and zone are
    each equal to another's (zones by ZONE_REGION) or empty is dropped in favour of that one (the earlier one
    when both say the same), and positive wins over uncertain."""
    from data.labeler import POSITIVE, UNCERTAIN, classified_mentions
    candidates = []
    mentions = classified_mentions(report)
    for sentence, mention, value in mentions:
        if (value not in (POSITIVE, UNCERTAIN) or mention.observation in ("Support Devices", P.NO_FINDING_KEY)
                or (value == UNCERTAIN and mention.phrase in P.ANATOMY_PHRASES)):
            continue
        if mention.observation == "Lung Opacity" and any(
                s == sentence and m.observation in P.OPACITY_CHILDREN and v in (POSITIVE, UNCERTAIN)
                for s, m, v in mentions):
            continue
        laterality, zone = _locate(sentence, mention)
        candidates.append(Statement(mention.observation, _finding_word(mention.observation, mention.phrase),
                                    laterality, zone, "positive" if value == POSITIVE else "uncertain"))

    def covers(a, b):   # a says everything b says about the same observation
        same_zone = b.zone in ("", a.zone) or P.ZONE_REGION.get(b.zone, b.zone) == P.ZONE_REGION.get(a.zone)
        return (a.observation == b.observation and b.laterality in ("", a.laterality) and same_zone
                and b.finding in (a.finding, "opacity", "lung lesion"))

    kept = []
    for index, statement in enumerate(candidates):
        better = [other for j, other in enumerate(candidates) if j != index and covers(other, statement)
                  and (not covers(statement, other) or j < index)]
        if not better:
            certain = any(covers(other, statement) and covers(statement, other) and other.certainty == "positive"
                          for other in candidates)
            kept.append(replace(statement, certainty="positive") if certain else statement)
    return kept


def render_statement(statement):
    """Statement -> 'possible left lower zone atelectasis' (the heart's and mediastinum's zone is implied)."""
    zone = statement.zone if statement.zone not in ("cardiac", "mediastinal") else ""
    zone = f"{zone} zone" if zone in ("upper", "middle", "lower") else zone
    words = ["possible" if statement.certainty == "uncertain" else "", statement.laterality, zone, statement.finding]
    return " ".join(word for word in words if word)


def caption_from_report_statements(report):
    """Report text -> one rendered statement per finding: 'right basal pleural effusion. possible left lower zone
    atelectasis.' (NO_FINDING_CAPTION when the report states no finding)."""
    return _join([render_statement(statement) for statement in report_statements(report)])


def detection_labels(sample, class_names, source):
    """-> (C,) float32 over class_names + [No Finding], from a base sample (or record) of `source`."""
    C = len(class_names) + 1
    labels = np.zeros(C, np.float32)
    if source == "phantom":
        present = {PHANTOM_FINDINGS[int(i)] for i in sample["box_labels"]}
        for c, name in enumerate(class_names):
            labels[c] = float(name in present)
        labels[-1] = float(not (present - {"support device"}))
    elif source == "nih":
        values = np.asarray(sample["labels"])
        for c, name in enumerate(class_names):
            labels[c] = float(values[NIH_LABELS.index(name)] > 0.5)
        labels[-1] = float(not (values > 0.5).any())
    elif source == "chexpert":
        values = np.asarray(sample["labels"])
        for c, name in enumerate(class_names):
            labels[c] = float(any(values[CHEXPERT_LABELS.index(n)] == 1 for n in CHEXPERT_TO_NIH_BOX[name]))
        labels[-1] = float(values[CHEXPERT_LABELS.index(NO_FINDING)] == 1)
    else:
        raise ValueError(f"data.source must be one of {SOURCES}, got {source!r}")
    return labels


class DetectionCaptionDataset(torch.utils.data.Dataset):
    """A base dataset seen through the detection classes. Sample keys: image (3, H, W), labels (C,),
    boxes (N, 4) xyxy px, box_labels (N,) into class_names, caption str, id str."""

    def __init__(self, base, class_names, source, caption="findings", drop_unlabelled=True, boxes_only=False,
                 cache=False, max_report_sentences=3, progress=None):
        if caption not in CAPTIONS:
            raise ValueError(f"data.caption must be one of {CAPTIONS}, got {caption!r}")
        known = {"phantom": PHANTOM_FINDINGS, "nih": NIH_LABELS, "chexpert": list(CHEXPERT_TO_NIH_BOX)}[source] \
            if source in SOURCES else None
        unknown = [name for name in class_names if known is None or name not in known]
        if unknown:
            raise ValueError(f"data.classes {unknown} are not {source} classes; expected names from {known}")
        self.base, self.class_names, self.source, self.caption = base, list(class_names), source, caption
        self.max_report_sentences = max_report_sentences
        self.box_classes = self.class_names
        self.cache = {} if cache else None
        records = getattr(base, "records", None)
        self.indices = []
        items = range(len(base))
        for i in (tqdm(items, desc=progress, leave=False, disable=None) if progress else items):
            item = records[i] if (records is not None and self.cache is None) else self._load(i)
            labels = detection_labels(item, self.class_names, source)
            has_boxes = len(self._boxes(item)[0]) > 0
            if (drop_unlabelled and labels.sum() == 0) or (boxes_only and not has_boxes):
                self.cache is not None and self.cache.pop(i, None)
                continue
            self.indices.append(i)

    def _load(self, i):
        if self.cache is not None and i in self.cache:
            return self.cache[i]
        sample = self.base[i]
        if self.cache is not None and sample is not None:
            grey = sample["image"][0]
            if not torch.equal(sample["image"], grey.expand_as(sample["image"])):
                raise ValueError("DetectionCaptionDataset(cache=True) needs grey images (identical channels)")
            sample = dict(sample, image=(grey * 255).round().to(torch.uint8))  # (H, W)
            self.cache[i] = sample
        return sample

    def _boxes(self, sample):
        """-> boxes (N, 4), box_labels (N,) restricted to the detection classes, re-indexed."""
        names = {"phantom": PHANTOM_FINDINGS}.get(self.source, getattr(self.base, "box_classes", []))
        boxes = torch.as_tensor(sample.get("boxes", torch.zeros(0, 4)), dtype=torch.float32).reshape(-1, 4)
        box_labels = torch.as_tensor(sample.get("box_labels", torch.zeros(0)), dtype=torch.long).reshape(-1)
        keep = [k for k, label in enumerate(box_labels.tolist()) if names[label] in self.class_names]
        new_labels = torch.tensor([self.class_names.index(names[box_labels[k]]) for k in keep], dtype=torch.long)
        return boxes[keep], new_labels

    def caption_of(self, sample, labels):
        if self.caption == "findings":
            return caption_from_findings(sample["findings"], self.class_names)
        if self.caption == "report":
            return caption_from_report(sample["report"], self.max_report_sentences)
        if self.caption == "statements":
            return caption_from_report_statements(sample["report"])
        return caption_from_labels(labels, self.class_names)

    def __len__(self):
        return len(self.indices)

    def skip_summary(self):
        """The base dataset's line on records that failed to load (data/io.py RecordDataset; "" when none)."""
        summary = getattr(self.base, "skip_summary", None)
        return summary() if summary is not None else ""

    def __getitem__(self, index):
        sample = self._load(self.indices[index])
        if sample is None:   # the base left this record out (data.on_error=skip): collate drops it from its batch
            return None
        image = sample["image"]
        if image.dtype == torch.uint8:
            image = (image.float() / 255).expand(3, -1, -1)  # (3, H, W)
        labels = detection_labels(sample, self.class_names, self.source)
        boxes, box_labels = self._boxes(sample)
        return {"image": image, "labels": torch.from_numpy(labels), "boxes": boxes, "box_labels": box_labels,
                "caption": self.caption_of(sample, labels), "id": sample["id"]}
