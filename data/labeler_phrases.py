"""Vocabulary of the rule-based CheXpert-style labeler (data/labeler.py): mention phrases, unmention
phrases and the cue patterns, kept apart from the rules so each list can be read on its own.

Mention and unmention phrases are the CheXpert labeler's lists (stanfordmlgroup/chexpert-labeler,
phrases/*, as restated in research/report_generation.md §5), written as lowercase substrings; the
labeler's "_" for a space is written as a real space (" mediastinum", " line ", "drain ").

Our additions, each marked "# ours" below, are few and deliberate:
- Support Devices unmentions "tubercul" and "plate-like"/"platelike"/"plate like": the substring
  phrases "tube" and "plate" would otherwise turn "tuberculosis" and "plate-like atelectasis" into
  devices.
- "unlikely" is uncertain ("pneumonia is unlikely" -> -1), like the labeler's "less likely".
- Negation synonyms of the labeler's "rule out": "evaluate for", "evaluation of", "assess for",
  "assessment of" ("limited for evaluation of fractures" is not a fracture).

ANATOMY_PHRASES are the neutral anatomy words (CheXpert's design: "the heart" is not a finding; the
cue decides: "heart size normal" 0, "stable cardiac silhouette" -1, "the heart is enlarged" 1).
"""
from data.labels import CHEXPERT_LABELS

MENTIONS = {
    "Atelectasis": ["atelecta", "collapse"],
    "Cardiomegaly": ["cardiomegaly", "the heart", "heart size", "cardiac enlargement", "cardiac size",
                     "cardiac shadow", "cardiac contour", "cardiac silhouette", "enlarged heart"],
    "Consolidation": ["consolidat"],
    "Edema": ["edema", "heart failure", "chf", "vascular congestion", "pulmonary congestion",
              "indistinctness", "vascular prominence"],
    "Enlarged Cardiomediastinum": [" mediastinum", "cardiomediastinum", "contour", "mediastinal configuration",
                                   "mediastinal silhouette", "pericardial silhouette",
                                   "cardiac silhouette and vascularity"],
    "Fracture": ["fracture"],
    "Lung Lesion": ["mass", "nodular density", "nodular densities", "nodular opacity", "nodular opacities",
                    "nodular opacification", "nodule", "lump", "cavitary lesion", "carcinoma", "neoplasm",
                    "tumor"],
    "Lung Opacity": ["opaci", "decreased translucency", "increased density", "airspace disease",
                     "air-space disease", "air space disease", "infiltrate", "infiltration",
                     "interstitial marking", "interstitial pattern", "interstitial lung", "reticular pattern",
                     "reticular marking", "reticulation", "parenchymal scarring", "peribronchial thickening",
                     "wall thickening", "scar"],
    "Pleural Effusion": ["pleural fluid", "effusion"],
    "Pleural Other": ["pleural thickening", "fibrosis", "fibrothorax", "pleural scar", "pleural parenchymal scar",
                      "pleuro-parenchymal scar", "pleuro-pericardial scar"],
    "Pneumonia": ["pneumonia", "infection", "infectious process", "infectious"],
    "Pneumothorax": ["pneumothorax", "pneumothoraces"],
    "Support Devices": ["pacer", " line ", "lines", "picc", "tube", "valve", "catheter", "pacemaker", "hardware",
                        "arthroplast", "marker", "icd", "defib", "device", "drain ", "plate", "screw", "cannula",
                        "apparatus", "coil", "support", "equipment", "mediport"],
}

# other abnormalities: a positive or uncertain mention blanks No Finding but sets no label
NO_FINDING_OTHERS = [
    "emphysema", "blunt", "density", "elevation", "eventration", "scoliosis", "degenera", "calcifi",
    "hyperinflation", "bronchospasm", "asthma", "hernia", "copd", "interstitial markings", "plaque",
    "osteophytosis", "aortic disease", "bronchiolitis", "airways disease", "thickening", "cephalization",
    "aspiration", "bullae", "hyperinflat", "contusion", "atherosclero", "osteopenia", "metastasis", "granuloma",
    "pneumomediastinum", "pneumoperitoneum", "osteodystrophy", "cuffing", "irregular lucency", "inflam",
    "fissure", "hypertension", "prominen", "kyphosis", "defib", "hyperexpansion", "bullet", "reticula",
    "thoracentesis", "bronchitis", "volume loss", "deformity", "hemorrhage", "hematoma", "radiopaque",
    "aerophagia", "arthropathy", "tracheostomy",
]
NO_FINDING_KEY = "No Finding (others)"   # internal key of the list above in the mention tables

_POSITIONAL_PREFIXES = [f"{verb} {side}".replace("  ", " ") for verb in ("over the", "overly the", "in the")
                        for side in ("", "superior", "left", "right")]


def _positional_unmentions(phrases, keep_whole=()):
    """CheXpert's generated unmentions: {over the, overly the, in the} x {"", superior, left, right} +
    phrase without a leading "the " ("over the heart", "in the left cardiac silhouette")."""
    out = []
    for phrase in phrases:
        if phrase in keep_whole:
            continue
        body = phrase.strip()
        body = body[4:] if body.startswith("the ") else body
        out += [f"{prefix.strip()} {body}" for prefix in _POSITIONAL_PREFIXES]
    return out


UNMENTIONS = {
    "Lung Lesion": ["calcified nodul", "massive", "massengale"],
    "Lung Opacity": ["pleural scar"],
    "Pleural Effusion": ["pericardial effusion"],
    "Cardiomegaly": _positional_unmentions(MENTIONS["Cardiomegaly"], keep_whole=("cardiomegaly",
                                                                                   "cardiac enlargement")),
    "Enlarged Cardiomediastinum": _positional_unmentions(MENTIONS["Enlarged Cardiomediastinum"]),
    "Support Devices": ["tubercul", "plate-like", "platelike", "plate like"],   # ours
}

ANATOMY_PHRASES = {
    "the heart", "heart size", "cardiac size", "cardiac shadow", "cardiac contour", "cardiac silhouette",
    " mediastinum", "cardiomediastinum", "contour", "mediastinal configuration", "mediastinal silhouette",
    "pericardial silhouette", "cardiac silhouette and vascularity",
}

# --- cue patterns (regex fragments, applied to the cleaned lowercase text) ----------------------------
# pre-negation uncertainty written BEFORE the mention ("cannot exclude pneumonia", "no new opacity")
PRE_NEGATION_UNCERTAIN_BEFORE = [
    r"(?:cannot|can not|can't|could not|not) (?:be )?(?:entirely |completely |definitely )?(?:exclude|rule out)",
    r"no evidence to rule out", r"no new(?: area of| areas of)?",
]
# ... and AFTER the mention ("pneumonia is not excluded", "effusion cannot be ruled out")
PRE_NEGATION_UNCERTAIN_AFTER = [
    r"(?:(?:is|are|was|were) )?(?:not|cannot be|can not be|could not be|can't be) (?:entirely |completely "
    r"|definitely )?(?:excluded|ruled out)",
]
# negation cues BEFORE the mention; scope runs forward to the mention (window and breakers in labeler.py)
NEGATION_BEFORE = [
    r"no", r"not", r"without", r"negative for", r"free of", r"clear of", r"clearing of", r"resolution of",
    r"resolved", r"removal of", r"disappearance of", r"drainage of", r"history of", r"absence of", r"absent",
    r"rather than", r"rule out", r"ruled out", r"r/o",
    r"evaluate for", r"evaluation of", r"assess for", r"assessment of",   # ours: synonyms of "rule out"
]
# negation predicates AFTER the mention ("the heart is not enlarged", "effusion has resolved")
NEGATION_AFTER = [
    r"(?:(?:is|are|was|were|appears?|remains?|seems?|looks?) )?(?:again |otherwise |now |still |overall "
    r"|grossly |essentially |stably |entirely |completely |largely |relatively |also |top |upper )*"
    r"(?:normal|unremarkable|within (?:the )?(?:upper )?(?:normal limits|limits of normal)|within normal"
    r"|of normal (?:size|caliber|contour|configuration)|negative)",
    r"(?:(?:is|are|was|were) )?not (?:\w+ly )?(?:enlarged|widened|dilated|seen|identified|visualized|visible|present"
    r"|demonstrated|evident|detected|noted|apparent)",
    r"(?:(?:is|are|was|were) )?no longer (?:\w+ly )?(?:seen|present|visualized|visible|identified|evident"
    r"|demonstrated|appreciated|noted)",
    r"(?:(?:has|have) )?(?:been |since |now )*(?:resolved|removed|cleared|withdrawn)",
    r"(?:(?:is|are|was|were) )?(?:now )?absent",
    r"(?:(?:is|are|was|were) )?(?:previously )?(?:demonstrated|visualized) (?:previously|before|on the prior)",
    r"(?:(?:is|are|was|were) )?(?:at )?(?:the )?(?:upper|top)[ -](?:limits? of |range of )?normal",
]
# "normal heart size", "unremarkable mediastinal silhouette": adjectives just before the mention
NORMAL_BEFORE = [r"normal", r"unremarkable", r"normal-sized", r"normal sized", r"within normal limits"]
# post-negation uncertainty BEFORE the mention ("possible pneumonia", "may reflect atelectasis")
UNCERTAIN_BEFORE = [
    r"possible", r"possibly", r"presumably", r"presumed", r"probable", r"probably", r"questionable",
    r"question of", r"suspect", r"suspected", r"suspicious", r"suspicion", r"suggestion of", r"suggestive of",
    r"suggests?", r"suggesting", r"favor", r"favored", r"favoring", r"consider", r"considered",
    r"concern for", r"concerning for", r"worrisome", r"maybe", r"likely", r"less likely", r"more likely",
    r"differential diagnosis", r"differential", r"correlate clinically", r"clinical correlation",
    r"versus", r"vs", r"borderline", r"equivocal", r"obscuring", r"obscured", r"unlikely",   # unlikely: ours
    r"(?:may|might|could|would|can)(?: also| well)? (?:be|represent|reflect|indicate|include|appear|have"
    r"|signify|relate|correspond|account)",
]
# post-negation uncertainty AFTER the mention ("pneumonia may be present", "atelectasis is likely")
UNCERTAIN_AFTER = [
    r"(?:(?:is|are|was|were) )?(?:may|might|could|would|can)(?: also| well)? (?:be|have|appear)",
    r"(?:(?:is|are|was|were) )?(?:also |more |less |most |very )?(?:possible|possibly|probable|probably|likely"
    r"|questionable|suspected|suspicious|favored|considered|presumed|a consideration|equivocal|borderline)",
    r"(?:(?:is|are|was|were) )?(?:not well|poorly|incompletely|not clearly|not adequately) (?:seen|visualized"
    r"|evaluated|assessed|demonstrated)",
    r"(?:(?:is|are|was|were) )?not appreciated",
    r"(?:(?:is|are|was|were) )?(?:very |less )?unlikely",                                  # ours
    r"(?:(?:is|are|was|were) )?(?:partially |partly )?obscured",
]
# stability of a neutral anatomy word is uncertain ("stable cardiac silhouette", "contours are unchanged")
STABLE_WORDS = r"(?:stable|unchanged|not changed|similar|grossly stable|essentially unchanged|stably)"
# always uncertain unless negated (Edema mentions that are signs, not the finding itself)
ALWAYS_UNCERTAIN = ["vascular congestion", "pulmonary congestion", "indistinctness", "vascular prominence"]
# mentions that also add an uncertain Cardiomegaly when positive or uncertain
HEART_FAILURE_PHRASES = ["chf", "heart failure"]

assert set(MENTIONS) == set(CHEXPERT_LABELS) - {"No Finding"}, "MENTIONS must cover the 13 observations"

# --- location vocabulary (ours; read by data/captions.py report_statements, not by the labeler) -----------
# laterality words, patient frame as radiologists write them; "bibasilar" also gives a zone (ZONE_WORDS)
LATERALITY_WORDS = {r"right": "right", r"left": "left", r"bilateral(?:ly)?": "bilateral", r"both": "bilateral",
                    r"bibasi(?:lar|lal|al)": "bilateral", r"biapical": "bilateral"}
# zone or anatomical location words -> canonical zone; lobes count as the zone they mostly fill on a frontal film
ZONE_WORDS = {
    r"apic\w*|apex|apices": "apical",
    r"upper(?: lobes?| lungs?| zones?)?": "upper",
    r"mid(?:dle)?(?: lobes?| lungs?| zones?)|mid-lung|midlung|middle|lingula\w*": "middle",
    r"lower(?: lobes?| lungs?| zones?)?": "lower",
    r"bases?|basal|basilar|bibasi(?:lar|lal|al)|subpulmonic": "basal",
    r"costophrenic(?: angles?| sulcus| sulci)?": "costophrenic",
    r"retrocardiac": "retrocardiac",
    r"perihilar|parahilar": "perihilar",
    r"hilar|hila|hilum": "hilar",
}
# a zone word that fixes the side when the clause has no side word ("lingula" and "retrocardiac" are left)
ZONE_IMPLIES_SIDE = {r"lingula\w*": "left", r"retrocardiac": "left", r"middle lobe": "right"}
# canonical zone -> coarse region (what a phantom's zone is compared with)
ZONE_REGION = {"apical": "upper", "upper": "upper", "middle": "middle", "lower": "lower", "basal": "lower",
               "costophrenic": "lower", "retrocardiac": "lower", "perihilar": "central", "hilar": "central",
               "cardiac": "cardiac", "mediastinal": "mediastinal"}
# where a finding lies when its sentence names no zone: the heart and mediastinum by definition; on an upright
# frontal film free pleural fluid layers at the base and free air rises to the apex
DEFAULT_ZONE = {"Cardiomegaly": "cardiac", "Enlarged Cardiomediastinum": "mediastinal",
                "Pleural Effusion": "basal", "Pneumothorax": "apical"}
# Lung Opacity is the parent of these (CheXpert hierarchy): an opacity word in a sentence that names one of
# them describes that finding and gives no statement of its own
OPACITY_CHILDREN = ("Atelectasis", "Consolidation", "Edema", "Lung Lesion", "Pneumonia")
