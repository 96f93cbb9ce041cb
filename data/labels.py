"""Label vocabularies shared by every dataset, model and metric.

One list per label space, in a fixed order; code indexes by name (`CHEXPERT_LABELS.index("Edema")`),
never by a hard-coded number. Mapping tables connect the phantom findings to the other spaces.

- CHEXPERT_LABELS: the 14 CheXpert observations in the order of seed 001 §4.2 (No Finding first).
  The CheXpert labeler's CSV, MIMIC's chexpert CSV and CheXbert's heads (CHEXBERT_CONDITIONS, No Finding
  last) use other orders; read them by name.
- VINDR_CONCEPTS / VINDR_DISEASES: VinDr-CXR's 22 local labels and 6 global labels
  (research/concept_cam_datasets.md §1; the test CSV spells "Other disease", renamed on load).
- NIH_LABELS / NIH_BOX_CLASSES: ChestX-ray14's 14 labels and the 8 box classes (the box CSV spells
  "Infiltrate"; we use "Infiltration" everywhere).
- ANATOMY_REGIONS: the 6 anatomical regions of seed 001 §4.3 (region masks of the phantoms).
- PHANTOM_FINDINGS: what the chest phantom can draw; each phantom box carries an index into this list.
"""

CHEXPERT_LABELS = [
    "No Finding", "Enlarged Cardiomediastinum", "Cardiomegaly", "Lung Opacity", "Lung Lesion", "Edema",
    "Consolidation", "Pneumonia", "Atelectasis", "Pneumothorax", "Pleural Effusion", "Pleural Other",
    "Fracture", "Support Devices",
]
# the 5 CheXpert competition labels (used by the clinical-efficacy "micro over 5" metric)
CHEXPERT_COMPETITION = ["Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Pleural Effusion"]

# CheXbert's 14 heads, in the published order (stanfordmlgroup/CheXbert src/constants.py CONDITIONS; f1chexbert's
# target_names): heads 0-12 have 4 classes, head 13 "No Finding" has 2. Map to CHEXPERT_LABELS by name.
CHEXBERT_CONDITIONS = [
    "Enlarged Cardiomediastinum", "Cardiomegaly", "Lung Opacity", "Lung Lesion", "Edema", "Consolidation",
    "Pneumonia", "Atelectasis", "Pneumothorax", "Pleural Effusion", "Pleural Other", "Fracture", "Support Devices",
    "No Finding",
]
# CheXbert's class coding (src/constants.py CLASS_MAPPING); "No Finding" uses only 0 and 1
CHEXBERT_CLASSES = ["blank", "positive", "negative", "uncertain"]

# VinDr-CXR's 22 local labels in the order of its label CSVs (indices used everywhere in Concept CAM). Seed 002's
# examples number them differently: its 4 = Cardiomegaly and 10 = Lung Opacity are 3 and 11 here.
VINDR_CONCEPTS = [
    "Aortic enlargement", "Atelectasis", "Calcification", "Cardiomegaly", "Clavicle fracture", "Consolidation",
    "Edema", "Emphysema", "Enlarged PA", "ILD", "Infiltration", "Lung Opacity", "Lung cavity", "Lung cyst",
    "Mediastinal shift", "Nodule/Mass", "Pleural effusion", "Pleural thickening", "Pneumothorax",
    "Pulmonary fibrosis", "Rib fracture", "Other lesion",
]
VINDR_DISEASES = ["COPD", "Lung tumor", "Pneumonia", "Tuberculosis", "Other diseases", "No finding"]

NIH_LABELS = [
    "Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Effusion", "Emphysema", "Fibrosis", "Hernia",
    "Infiltration", "Mass", "Nodule", "Pleural_Thickening", "Pneumonia", "Pneumothorax",
]
NIH_BOX_CLASSES = ["Atelectasis", "Cardiomegaly", "Effusion", "Infiltration", "Mass", "Nodule", "Pneumonia",
                   "Pneumothorax"]

ANATOMY_REGIONS = ["Cardiac", "Left Lung", "Right Lung", "Mediastinum", "Diaphragm", "Spine"]

PHANTOM_FINDINGS = [
    "cardiomegaly", "enlarged cardiomediastinum", "pleural effusion", "pneumothorax", "consolidation",
    "atelectasis", "edema", "nodule", "fracture", "support device", "emphysema", "pleural thickening",
]
