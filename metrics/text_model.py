"""Text metrics that need something outside numpy: METEOR (Java jar or WordNet data) and BERTScore (a model).

- meteor_scores: "meteor" = METEOR 1.5 from pycocoevalcap's jar (`java -jar meteor-1.5.jar - - -stdio -l en
  -norm`), the corpus-level score its EVAL line returns, the number papers report. Needs `java` on PATH and
  the pycocoevalcap package (requirements-dev.txt; 104 MB, so optional at run time). "meteor_nltk" =
  nltk.translate.meteor_score (mean over items, whitespace tokens) when nltk's WordNet data is installed;
  a different implementation with different numbers, hence its own key. Each one that cannot run is
  reported as "<key>: unavailable (<reason>)" in notes, never replaced.
- bertscore: greedy-matching BERTScore (Zhang et al. 2020) with a transformers model given by path or
  name (loaded through hub.pretrained.load_hf, so offline names resolve the project's way): token
  embeddings of `layer` (default: the last hidden layer), special tokens dropped, cosine similarity,
  precision = mean over hypothesis tokens of the best reference match, recall the reverse, F1; no IDF
  weighting and no baseline rescaling (the bert-score package's defaults differ: state the model and
  layer beside the number). Keys "bertscore/precision", "bertscore/recall", "bertscore/f1".
"""
import shutil


def meteor_scores(hypotheses, references, notes):
    """hypotheses: list of str; references: list of list of str -> {"meteor"?, "meteor_nltk"?}."""
    out = {}
    if shutil.which("java") is None:
        notes.append("meteor: unavailable (no `java` on PATH; METEOR 1.5 is a Java jar)")
    else:
        try:
            from pycocoevalcap.meteor.meteor import Meteor
        except ImportError:
            notes.append("meteor: unavailable (pycocoevalcap is not installed: pip install pycocoevalcap)")
        else:
            scorer = Meteor()
            try:
                gts = {i: list(refs) for i, refs in enumerate(references)}
                res = {i: [h] for i, h in enumerate(hypotheses)}
                out["meteor"] = float(scorer.compute_score(gts, res)[0])
            finally:
                scorer.meteor_p.stdin.close()
                scorer.meteor_p.kill()
                scorer.meteor_p.wait()
    try:
        import nltk
        nltk.data.find("corpora/wordnet")
    except LookupError:
        notes.append("meteor_nltk: unavailable (nltk WordNet data not installed; "
                     "python -m nltk.downloader wordnet needs the internet)")
    else:
        from nltk.translate.meteor_score import meteor_score
        values = [meteor_score([r.split() for r in refs], h.split()) for h, refs in zip(hypotheses, references)]
        out["meteor_nltk"] = float(sum(values) / len(values))
    return out


def bertscore(hypotheses, references, model_name, notes, layer=None, batch_size=32, device="cpu"):
    """-> {"bertscore/precision", "bertscore/recall", "bertscore/f1"} or {} with a note when not loadable."""
    import torch
    try:
        from transformers import AutoModel, AutoTokenizer
        from hub.pretrained import load_hf
        tokenizer = load_hf(AutoTokenizer, model_name)
        model = load_hf(AutoModel, model_name).to(device).eval()
    except Exception as error:                                  # missing weights, no network, bad name
        notes.append(f"bertscore: unavailable ({model_name!r} not loadable: {type(error).__name__}: {error})")
        return {}

    @torch.no_grad()
    def embed(texts):
        out = []
        for start in range(0, len(texts), batch_size):
            batch = tokenizer(texts[start:start + batch_size], padding=True, truncation=True, return_tensors="pt",
                              return_special_tokens_mask=True)
            special = batch.pop("special_tokens_mask").bool()
            hidden = model(**{k: v.to(device) for k, v in batch.items()}, output_hidden_states=True).hidden_states
            states = torch.nn.functional.normalize(hidden[-1 if layer is None else layer].float(), dim=-1).cpu()
            keep = batch["attention_mask"].bool() & ~special                      # (B, L)
            out += [s[k] for s, k in zip(states, keep)]                            # list of (L_i, D)
        return out
    hyp_states = embed(list(hypotheses))
    first_refs = [refs[0] for refs in references]                              # one reference per item
    ref_states = embed(first_refs)
    precision, recall = [], []
    for h, r in zip(hyp_states, ref_states):
        if len(h) == 0 or len(r) == 0:
            precision.append(0.0), recall.append(0.0)
            continue
        similarity = h @ r.T                                                   # (L_h, L_r) cosine
        precision.append(float(similarity.max(1).values.mean()))
        recall.append(float(similarity.max(0).values.mean()))
    f1 = [2 * p * r / (p + r) if p + r > 0 else 0.0 for p, r in zip(precision, recall)]
    count = len(f1)
    return {"bertscore/precision": sum(precision) / count, "bertscore/recall": sum(recall) / count,
            "bertscore/f1": sum(f1) / count}
