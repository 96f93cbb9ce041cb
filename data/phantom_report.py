"""Report text of the chest phantom (data/phantom.py): "Findings: ... | Impression: ...".

`write_report(findings, rng)` turns the phantom's finding list into a radiology-style report whose words agree
with the picture: each present finding is named with its side, zone and size words, some absent findings are
negated, and the heart is always described (enlarged or normal).

Design choices (so that a CheXpert-style rule labeler, research/report_generation.md §5, reads it right):
- One finding per sentence, and a negated finding never shares a sentence with a positive one, so a cue
  ("no", "without") never reaches across into another finding's scope.
- Each finding has at least 3 templates, picked by the rng; normal studies have their own phrasings.
- Every template of consolidation, atelectasis, edema and nodule/mass contains an "opaci..." word, so the
  labeler sets Lung Opacity exactly when the phantom's CheXpert hierarchy does (phantom.py).
- Pleural effusion, pneumothorax, pleural thickening and the heart never use "opaci..." words.
- No uncertainty cues (may, possible, likely, versus, suggest, "or" between findings except after "No").
- Avoided because they are mention phrases of another observation: "line"/"lines" (Support Devices) outside
  devices, "plate" (Support Devices), "collapse" (Atelectasis) in pneumothorax text, "blunting" (uncertainty
  cue), "density", "prominent", "fissure", "scar", "consistent with", decimal numbers (the labeler's
  cleaning puts a space after every period and would split "1.5 cm" into two sentences).
- Side words are in the PATIENT's frame ("left" = image right), as radiologists write them.
"""

SIZE_ADVERB = {"mild": "mildly", "moderate": "moderately", "severe": "markedly"}

# ------------------------------------------------------------------------------------------------------------
# positive sentences, one list of templates per finding (fields: size, adverb, side, zone, extra)

FINDING_TEMPLATES = {
    "cardiomegaly": [
        "The heart is {adverb} enlarged.",
        "{size} cardiomegaly.",
        "There is {size} cardiomegaly.",
        "{size} enlargement of the cardiac silhouette.",
    ],
    "enlarged cardiomediastinum": [
        "The mediastinum is {adverb} widened.",
        "{adverb} widened mediastinal contour.",
        "The cardiomediastinal silhouette is {adverb} enlarged.",
    ],
    "pleural effusion": [
        "{size} {side} pleural effusion.",
        "There is a {size} {side} pleural effusion with a meniscus at the {side} base.",
        "A {size} pleural effusion is present at the {side} lung base.",
        "{size} {side} basal pleural effusion.",
    ],
    "bilateral pleural effusion": [
        "Bilateral pleural effusions, {size} on the right and {extra} on the left.",
        "There are bilateral pleural effusions, {size} on the right and {extra} on the left.",
        "Bilateral basal pleural effusions, the right {size} and the left {extra}.",
    ],
    "pneumothorax": [
        "{size} {side} {zone} pneumothorax.",
        "There is a {size} {side} {zone} pneumothorax with a visible visceral pleural edge.",
        "A {size} {side} {zone} pneumothorax is present.",
    ],
    "consolidation/noninfectious": [
        "There is a {size} consolidative opacity in the {side} {zone} zone.",
        "{size} area of consolidation in the {side} {zone} zone, seen as a dense opacity.",
        "{side} {zone} zone consolidation, a {size} homogeneous opacity.",
    ],
    "consolidation/infectious": [
        "{size} consolidative opacity in the {side} {zone} zone, in keeping with pneumonia.",
        "There is a {size} patchy opacity with consolidation in the {side} {zone} zone from pneumonia.",
        "{side} {zone} zone pneumonia with a {size} area of consolidation and opacity.",
    ],
    "consolidation/cavitary": [
        "{size} cavitary consolidative opacity in the {side} {zone} zone, in keeping with infection.",
        "There is a {size} cavitating consolidation in the {side} {zone} zone with surrounding opacity, "
        "in keeping with infection.",
        "{side} {zone} zone cavitary pneumonia, a {size} consolidative opacity with a central lucency.",
    ],
    "atelectasis/linear": [
        "{size} linear atelectatic opacity in the {side} {zone} zone.",
        "There is {size} linear atelectasis in the {side} {zone} zone, a thin band of opacity.",
        "{side} {zone} zone subsegmental atelectasis, a {size} linear opacity.",
    ],
    "atelectasis/segmental": [
        "{size} segmental atelectasis in the {side} {zone} zone with volume loss and opacity.",
        "There is a {size} atelectatic opacity at the {side} lung base with volume loss.",
        "{side} {zone} zone opacity from {size} segmental atelectasis.",
    ],
    "edema": [
        "{size} pulmonary edema with bilateral perihilar hazy opacities.",
        "Bilateral perihilar opacities in keeping with {size} pulmonary edema.",
        "There is {size} bilateral interstitial and alveolar edema, seen as perihilar opacity.",
    ],
    "nodule/nodule": [
        "{size} {extra} mm nodular opacity in the {side} {zone} zone.",
        "There is a {size} rounded opacity in the {side} {zone} zone, in keeping with a pulmonary nodule.",
        "A {size} pulmonary nodule is seen in the {side} {zone} zone as a well-defined opacity.",
    ],
    "nodule/mass": [
        "{size} {extra} mm mass opacity in the {side} {zone} zone.",
        "There is a {size} rounded mass in the {side} {zone} zone, a dense opacity.",
        "A {size} lung mass is seen in the {side} {zone} zone as a rounded opacity.",
    ],
    "fracture/rib": [
        "{size} fracture of the {side} {extra} posterior rib.",
        "There is a {size} {side} {extra} rib fracture.",
        "{size} {side} {zone} zone rib fracture, involving the {extra} posterior rib.",
    ],
    "fracture/clavicle": [
        "{size} fracture of the {side} clavicle.",
        "There is a {size} {side} clavicular fracture.",
        "{side} clavicle fracture, {size}.",
    ],
    "support device/endotracheal tube": [
        "Endotracheal tube in place with the tip above the carina.",
        "An endotracheal tube terminates above the carina.",
        "The endotracheal tube tip is {extra} mm above the carina.",
    ],
    "support device/central venous catheter": [
        "{side} internal jugular central venous catheter with the tip in the superior vena cava.",
        "A {side} central venous catheter terminates in the superior vena cava.",
        "{side} jugular venous catheter, tip in the lower superior vena cava.",
    ],
    "support device/pacemaker": [
        "{side} chest wall pacemaker with leads in the right atrium and right ventricle.",
        "A {side} dual-chamber pacemaker is in place.",
        "Pacemaker generator over the {side} chest wall with two leads.",
    ],
    "support device/nasogastric tube": [
        "Nasogastric tube courses below the diaphragm with the tip in the stomach.",
        "An enteric tube is in place, tip in the stomach below the left hemidiaphragm.",
        "Nasogastric tube with the tip in the stomach.",
    ],
    "emphysema": [
        "The lungs are hyperinflated with flattened hemidiaphragms, in keeping with {size} emphysema.",
        "{size} emphysema with hyperinflated lungs.",
        "Hyperinflated lucent lungs and flattened hemidiaphragms from {size} emphysema.",
    ],
    "pleural thickening": [
        "{size} {side} pleural thickening along the {zone} zone chest wall.",
        "There is {size} pleural thickening in the {side} {zone} zone.",
        "{side} {zone} zone pleural thickening, {size}.",
    ],
}

IMPRESSION_TEMPLATES = {
    "cardiomegaly": "{size} cardiomegaly.",
    "enlarged cardiomediastinum": "{adverb} widened mediastinum.",
    "pleural effusion": "{size} {side} pleural effusion.",
    "bilateral pleural effusion": "Bilateral pleural effusions.",
    "pneumothorax": "{size} {side} pneumothorax.",
    "consolidation/noninfectious": "{side} {zone} zone consolidation.",
    "consolidation/infectious": "{side} {zone} zone pneumonia.",
    "consolidation/cavitary": "{side} {zone} zone cavitary pneumonia.",
    "atelectasis/linear": "{side} {zone} zone linear atelectasis.",
    "atelectasis/segmental": "{side} {zone} zone segmental atelectasis.",
    "edema": "{size} pulmonary edema.",
    "nodule/nodule": "{side} {zone} zone pulmonary nodule.",
    "nodule/mass": "{side} {zone} zone lung mass.",
    "fracture/rib": "{side} rib fracture.",
    "fracture/clavicle": "{side} clavicle fracture.",
    "emphysema": "{size} emphysema.",
    "pleural thickening": "{side} pleural thickening.",
}

# ------------------------------------------------------------------------------------------------------------
# negated and normal sentences

NEGATIONS = {
    "pneumothorax+pleural effusion": ["No pneumothorax or pleural effusion.",
                                      "There is no pleural effusion or pneumothorax.",
                                      "No pleural effusion or pneumothorax is seen."],
    "pneumothorax": ["No pneumothorax.", "There is no pneumothorax.", "No evidence of pneumothorax."],
    "pleural effusion": ["No pleural effusion.", "There is no pleural effusion.", "No evidence of pleural effusion."],
    "consolidation": ["No focal consolidation.", "There is no consolidation.", "No focal airspace consolidation."],
    "edema": ["No pulmonary edema.", "There is no pulmonary edema.", "No edema."],
    "nodule": ["No pulmonary nodule or mass.", "No nodule or mass is seen.", "There is no pulmonary nodule."],
    "fracture": ["No acute fracture.", "No displaced fracture is seen.", "There is no fracture."],
}
HEART_NORMAL = ["Heart size is normal.", "The heart is normal in size.", "Normal heart size.",
                "The cardiac silhouette is within normal limits."]
MEDIASTINUM_NORMAL = ["The mediastinal contour is normal.", "Normal mediastinal contours.",
                      "The mediastinum is not widened."]
LUNGS_CLEAR = ["The lungs are clear.", "Lungs are clear.", "The lungs are well expanded and clear."]
NORMAL_IMPRESSION = ["No acute cardiopulmonary abnormality.", "Normal chest radiograph.",
                     "No acute cardiopulmonary disease."]
PARENCHYMAL = ("consolidation", "atelectasis", "edema", "nodule", "emphysema")


def _capitalize(sentence):
    return sentence[0].upper() + sentence[1:]


def _template_key(finding):
    """The FINDING_TEMPLATES key of one finding: its name, or name/detail where the wording depends on it."""
    name, detail = finding["name"], finding.get("detail", "")
    return f"{name}/{detail}" if name in ("consolidation", "atelectasis", "nodule", "fracture",
                                          "support device") else name


def _fields(finding):
    size = finding["size"]
    return {"size": size, "adverb": SIZE_ADVERB.get(size, size), "side": finding["side"],
            "zone": finding["zone"], "extra": finding.get("extra", "")}


def _group_findings(findings):
    """Merge a right and a left pleural effusion into one 'bilateral pleural effusion' item."""
    effusions = [f for f in findings if f["name"] == "pleural effusion"]
    others = [f for f in findings if f["name"] != "pleural effusion"]
    if len(effusions) == 2:
        by_side = {f["side"]: f for f in effusions}
        merged = {"name": "bilateral pleural effusion", "side": "bilateral", "zone": "basal",
                  "size": by_side["right"]["size"], "extra": by_side["left"]["size"]}
        return [merged] + others
    return effusions + others


def write_report(findings, rng):
    """findings: list of dicts {name, side, zone, size, detail, extra}; rng: np.random.Generator -> report str."""
    items = _group_findings(findings)
    keys = [item["name"] if item["name"] == "bilateral pleural effusion" else _template_key(item) for item in items]
    present = {f["name"] for f in findings}

    devices = [(k, it) for k, it in zip(keys, items) if it["name"] == "support device"]
    heart = [(k, it) for k, it in zip(keys, items) if it["name"] in ("cardiomegaly", "enlarged cardiomediastinum")]
    others = [(k, it) for k, it in zip(keys, items) if (k, it) not in devices and (k, it) not in heart]
    others = [others[i] for i in rng.permutation(len(others))]

    sentences = []
    for key, item in devices + others:
        template = FINDING_TEMPLATES[key][rng.integers(len(FINDING_TEMPLATES[key]))]
        sentences.append(_capitalize(template.format(**_fields(item))))
    if not present & set(PARENCHYMAL):
        sentences.append(LUNGS_CLEAR[rng.integers(len(LUNGS_CLEAR))])
    for key, item in heart:
        template = FINDING_TEMPLATES[key][rng.integers(len(FINDING_TEMPLATES[key]))]
        sentences.append(_capitalize(template.format(**_fields(item))))
    if "cardiomegaly" not in present:
        sentences.append(HEART_NORMAL[rng.integers(len(HEART_NORMAL))])
    if "enlarged cardiomediastinum" not in present and rng.random() < 0.6:
        sentences.append(MEDIASTINUM_NORMAL[rng.integers(len(MEDIASTINUM_NORMAL))])

    # negations: a random subset (1-3 groups) of the absent findings
    groups = []
    if "pneumothorax" not in present and "pleural effusion" not in present and rng.random() < 0.7:
        groups.append("pneumothorax+pleural effusion")
    else:
        groups += [name for name in ("pneumothorax", "pleural effusion") if name not in present]
    groups += [name for name in ("consolidation", "edema", "nodule", "fracture") if name not in present]
    chosen = sorted(rng.choice(len(groups), size=min(len(groups), int(rng.integers(1, 4))), replace=False))
    for index in chosen:
        options = NEGATIONS[groups[index]]
        sentences.append(options[rng.integers(len(options))])

    impression = []
    for key, item in zip(keys, items):
        if key in IMPRESSION_TEMPLATES:
            impression.append(_capitalize(IMPRESSION_TEMPLATES[key].format(**_fields(item))))
    if not impression:
        impression = [NORMAL_IMPRESSION[rng.integers(len(NORMAL_IMPRESSION))]]
    return "Findings: " + " ".join(sentences) + " | Impression: " + " ".join(impression)
