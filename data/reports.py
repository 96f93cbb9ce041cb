"""Report text: cleaning into the "Findings: ... | Impression: ..." form, R2Gen normalization, MIMIC sections.

Three jobs, each a pure function of strings:

- `clean_report(findings, impression)` (seed 001 §5.4) makes the text every dataset puts in
  `sample["report"]`. Per section: strip; Unicode NFKC; collapse every run of whitespace (newlines
  included) to one space; fix sentence spacing (".." -> ".", "word.Next" -> "word. Next", " ." -> ".");
  split into sentences; drop every sentence that holds a de-identification marker (IU "XXXX", MIMIC
  "___"), whole sentence gone, never replaced, so a model cannot learn to write placeholders.
  Output: "Findings: <f> | Impression: <i>". Design choice for empty sections: both headers are ALWAYS
  written and an empty section leaves its header bare ("Findings: | Impression: No acute disease.").
  One fixed template keeps `split_sections` an exact inverse and tells the decoder which part is
  missing. Whether a study with an empty section is usable is the adapter's decision, not ours.
- `r2gen_normalize(text)` is the R2Gen / R2GenCMN IU cleaning (research/report_generation.md §3.1),
  quirks included, so BLEU etc. can be computed on the same strings as the published numbers:
  "..": three replace passes (nine dots leave ".."); the string "1. " is deleted anywhere (so "11. "
  becomes "1"); ". 2. " ... ". 5. " and " 2. " ... " 5. " become ". "; strip, lowercase, split on ". ";
  per sentence delete  " / \\ '  and the regex class [.,?;*!%^&_+():-\\[\\]{}] whose ":-\\[" is a RANGE
  (":" to "["), so ; < = > ? @ vanish but "-" and digits stay (2.5 -> 25); empty sentences are kept
  (R2Gen's emptiness test compares a str with [] and is always true); join with " . " and append " .".
  The returned string is R2Gen's string exactly (double spaces included); tokens are its .split().
  `dataset="mimic_cxr"` is R2Gen's MIMIC cleaning: first newlines -> spaces, "__" -> "_" (seven passes),
  "  " -> " " (six passes), ".." -> "." (eight passes), then the same numbering and sentence rules.
  (R2Gen's vocabulary, <unk> and truncation live in metrics/text.R2GenVocabulary.)
- `mimic_sections(text)` cuts a MIMIC-CXR free-text report at its uppercase "HEADER:" lines.
  findings = the FINDINGS section, impression = IMPRESSION (or CONCLUSION / SUMMARY); several
  occurrences of one header are joined in order. Fallback when neither FINDINGS nor IMPRESSION exists:
  impression = the last paragraph that is not a bare header line, findings = "" and `source` says
  "last_paragraph". Addenda ("ADDENDUM:") and every other header (INDICATION, COMPARISON, ...) are
  returned under `sections` but never mixed into findings/impression; the "FINAL REPORT" title line is
  dropped. PHI "___" is left in place; run
  the sections through `clean_report`, which drops sentences holding it.

The sentence splitter (`split_sentences`) splits after . ! ? followed by whitespace, and after a blank
line, but not after a list number ("1.", "2)") or a short abbreviation ("dr.", "vs.", "e.g."); decimals
("2.5 cm") never split because no whitespace follows their period.
"""
import re
import unicodedata

PHI_MARKERS = ("XXXX", "___")
_ABBREVIATIONS = {"dr", "mr", "mrs", "ms", "vs", "e.g", "i.e", "approx", "fig"}
_SENTENCE_END = re.compile(r"([.!?])\s+|\n\s*\n")


def normalize_text(text):
    """NFKC, whitespace runs -> one space, and sentence spacing fixes; no sentence is removed."""
    text = unicodedata.normalize("NFKC", text)
    text = re.sub(r"\s+", " ", text).strip()
    text = re.sub(r"\.(\s*\.)+", ".", text)                  # ".." / ". ." -> "."
    text = re.sub(r"\s+([.,;:!?])", r"\1", text)             # "word ." -> "word."
    text = re.sub(r"([A-Za-z)\]])([.!?])([A-Z])", r"\1\2 \3", text)  # "word.Next" -> "word. Next"
    text = re.sub(r"([,;])(?=[A-Za-z])", r"\1 ", text)        # "a,b" -> "a, b"
    return text


def split_sentences(text):
    """text -> list of sentences (stripped, non-empty); see the module docstring for the rules."""
    sentences, start = [], 0
    for match in _SENTENCE_END.finditer(text):
        end = match.start() + (1 if match.group(1) else 0)
        if match.group(1) == ".":
            last_word = re.split(r"\s", text[start:end].strip())[-1].lower().rstrip(".")
            if re.fullmatch(r"\(?\d{1,2}\)?", last_word) or last_word in _ABBREVIATIONS:
                continue                      # "1. Left effusion": a list number, not a sentence end
        piece = text[start:end].strip()
        if piece:
            sentences.append(piece)
        start = match.end()
    tail = text[start:].strip()
    if tail:
        sentences.append(tail)
    return sentences


def clean_section(text, phi_markers=PHI_MARKERS):
    """One report section -> cleaned text without the sentences that hold a PHI marker."""
    if text is None:
        return ""
    if not isinstance(text, str):
        raise TypeError(f"clean_section: expected a str (or None), got {type(text).__name__}: {text!r}")
    kept = [s for s in split_sentences(normalize_text(text)) if not any(m in s for m in phi_markers)]
    return " ".join(kept)


def clean_report(findings, impression, phi_markers=PHI_MARKERS):
    """findings, impression (str or None) -> "Findings: <f> | Impression: <i>" (seed 001 §5.4)."""
    findings = clean_section(findings, phi_markers)
    impression = clean_section(impression, phi_markers)
    return ("Findings:" + (" " + findings if findings else "") + " | Impression:"
            + (" " + impression if impression else ""))


_REPORT_FORM = re.compile(r"Findings:(.*?) \| Impression:(.*)", re.DOTALL)


def split_sections(report):
    """Inverse of `clean_report`: "Findings: f | Impression: i" -> (f, i)."""
    match = _REPORT_FORM.fullmatch(report)
    if match is None:
        raise ValueError(f"split_sections: expected 'Findings: ... | Impression: ...', got {report[:80]!r}")
    return match.group(1).strip(), match.group(2).strip()


# --- R2Gen / R2GenCMN normalization, IU X-ray and MIMIC-CXR (§3.1) ----------------------------------
# The class is written exactly as R2Gen writes it; ":-\[" is a character range from ":" to "[".
_R2GEN_DELETE = re.compile(r"[.,?;*!%^&_+():-\[\]{}]")


def _r2gen_sentence(sentence):
    for char in ('"', "/", "\\", "'"):
        sentence = sentence.replace(char, "")
    return _R2GEN_DELETE.sub("", sentence.strip().lower())


def r2gen_normalize(text, dataset="iu_xray"):
    """Raw report text -> R2Gen's cleaned string (modules/tokenizers.py clean_report_iu_xray, or
    clean_report_mimic_cxr for dataset="mimic_cxr"), e.g. "Heart normal. No effusion." ->
    "heart normal . no effusion ." (see the module docstring for every quirk)."""
    if dataset == "mimic_cxr":
        text = text.replace("\n", " ")
        for old, new, passes in (("__", "_", 7), ("  ", " ", 6), ("..", ".", 5)):
            for _ in range(passes):
                text = text.replace(old, new)
    elif dataset != "iu_xray":
        raise ValueError(f"r2gen_normalize: dataset {dataset!r}, expected 'iu_xray' or 'mimic_cxr'")
    for _ in range(3):                                       # MIMIC: 5 + these 3 = R2Gen's eight passes
        text = text.replace("..", ".")
    text = text.replace("1. ", "")
    for number in "2345":
        text = text.replace(f". {number}. ", ". ")
    for number in "2345":
        text = text.replace(f" {number}. ", ". ")
    sentences = text.strip().lower().split(". ")
    return " . ".join(_r2gen_sentence(s) for s in sentences) + " ."


# --- MIMIC-CXR free-text reports ---------------------------------------------------------------------
_MIMIC_HEADER = re.compile(r"^[ \t]*([A-Z][A-Z /&()-]{1,40}?)[ \t]*:", re.MULTILINE)
_IMPRESSION_NAMES = {"IMPRESSION", "IMPRESSIONS", "CONCLUSION", "CONCLUSIONS", "SUMMARY"}
_FINDINGS_NAMES = {"FINDINGS", "FINDING"}


def _squash(text):
    return re.sub(r"\s+", " ", text).strip()


def mimic_sections(text):
    """MIMIC-CXR report text -> {"findings", "impression", "source", "sections"}.

    source is "sections" when a FINDINGS or IMPRESSION header was found, else "last_paragraph";
    sections maps each upper-case header (e.g. "INDICATION", "ADDENDUM") to its text.
    """
    if not isinstance(text, str):
        raise TypeError(f"mimic_sections: expected a str, got {type(text).__name__}")
    text = re.sub(r"(?m)^[ \t]*FINAL REPORT[ \t]*$", "", text)   # a title line, not a section
    sections = {}
    headers = list(_MIMIC_HEADER.finditer(text))
    for i, header in enumerate(headers):
        name = _squash(header.group(1))
        end = headers[i + 1].start() if i + 1 < len(headers) else len(text)
        body = _squash(text[header.end():end])
        sections[name] = (sections[name] + " " + body).strip() if name in sections else body
    findings = " ".join(sections[n] for n in sections if n in _FINDINGS_NAMES).strip()
    impression = " ".join(sections[n] for n in sections if n in _IMPRESSION_NAMES).strip()
    if findings or impression or any(n in _FINDINGS_NAMES | _IMPRESSION_NAMES for n in sections):
        return {"findings": findings, "impression": impression, "source": "sections", "sections": sections}
    paragraphs = [_squash(p) for p in re.split(r"\n\s*\n", text)]
    # a paragraph that is only a header line ("FINAL REPORT", "WET READ:") is not report text
    paragraphs = [p for p in paragraphs if p and not re.fullmatch(r"[A-Z][A-Z /&()-]*:?", p)]
    last = paragraphs[-1] if paragraphs else ""
    last = _MIMIC_HEADER.sub("", last, count=1).strip() if _MIMIC_HEADER.match(last) else last
    return {"findings": "", "impression": last, "source": "last_paragraph", "sections": sections}
