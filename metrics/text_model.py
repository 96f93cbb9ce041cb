"""Text metrics that need something outside numpy: METEOR (Java jar or WordNet data) and BERTScore (a model).

- meteor_scores: "meteor" = METEOR 1.5 from pycocoevalcap's jar (`java -jar meteor-1.5.jar - - -stdio -l en
  -norm`), the corpus-level score its EVAL line returns, the number papers report. Needs `java` on PATH and
  the pycocoevalcap package (requirements-dev.txt; 104 MB, so optional at run time). "meteor_nltk" =
  nltk.translate.meteor_score (mean over items, whitespace tokens) when nltk's WordNet data is installed;
  a different implementation with different numbers, hence its own key. Each one that cannot run is
  reported as "<key>: unavailable (<reason>)" in notes, never replaced.
- bertscore: the bert-score package (Zhang et al. 2020; `bert_score.score`, the field's reference
  implementation), so the numbers ARE the package's: lang="en", idf=False, greedy cosine matching of the
  hidden states of layer `num_layers`, P / R / F per item, several references -> the package's max over
  them (P, R and F each maximised on its own), then the mean over items. Keys "bertscore/precision",
  "bertscore/recall", "bertscore/f1", plus "bertscore/num_layers" (the layer used) and
  "bertscore/rescaled" (1.0 / 0.0).
  Model: a hub id is taken from the local Hugging Face cache only (never downloaded: no network call,
  whatever HF_HUB_OFFLINE says; put it there with `hf download <id>` on a machine with internet), a local
  directory as it is, a tiny-hub name through hub.pretrained.resolve_pretrained. The package gets the
  local folder; the id only picks the defaults.
  Layer: num_layers=None is the package's tuned layer for ids it knows (bert_score.utils.model2layers:
  microsoft/deberta-xlarge-mnli -> 40 of its 48, roberta-large -> 17); for a local directory or a
  tiny-hub model, which the package has no entry for, the model's last layer (config num_hidden_layers).
  Rescaling: rescale_with_baseline=True uses the package's baseline file rescale_baseline/en/<id>.tsv
  (row num_layers; one exists for microsoft/deberta-xlarge-mnli), so it needs a hub id; without a file
  BERTScore is reported unavailable rather than returned unrescaled. The seed (001 §8.2) names
  microsoft/deberta-xlarge-mnli and no rescaling: default rescale off, state both beside the number.
  A model that cannot be loaded gives the note "bertscore: unavailable (<model> not loadable, looked in
  <where>: <reason>)" and no keys, never 0. Gotcha of the package kept as is: a model path containing
  "t5" is loaded as a T5 encoder.
"""
import os
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


def _bertscore_model(model_name):
    """-> (local folder, hub id or None), without any network call (module docstring)."""
    from hub.pretrained import resolve_pretrained
    path = os.path.expanduser(resolve_pretrained(model_name))          # tiny-hub/... -> its built folder
    if os.path.isdir(path):
        return path, None
    from huggingface_hub import constants, try_to_load_from_cache
    try:
        config = try_to_load_from_cache(path, "config.json", cache_dir=constants.HF_HUB_CACHE)
    except ValueError as error:                            # HFValidationError: not a hub id (a missing path)
        raise FileNotFoundError(f"no such directory, and not a hub id ({error})") from None
    if not isinstance(config, str):
        raise FileNotFoundError(f"not in the local cache; bertscore never downloads: `hf download {path}` "
                                f"on a machine with internet")
    return os.path.dirname(config), path


def _looked_in(model_name):
    from hub import tiny_hub
    from hub.pretrained import hf_cache_description
    if tiny_hub.is_hub_name(model_name):
        return "the tiny hub (hub.pretrained.resolve_pretrained)"
    path = os.path.expanduser(model_name)
    if os.path.isdir(path) or path.startswith(("/", ".", "~")):
        return f"the local directory {path}"
    return hf_cache_description()


def bertscore(hypotheses, references, model_name, notes, num_layers=None, rescale_with_baseline=False,
              batch_size=64, device=None):
    """hypotheses: list of str; references: list of list of str -> {"bertscore/precision", "bertscore/recall",
    "bertscore/f1", "bertscore/num_layers", "bertscore/rescaled"} from bert_score.score, or {} and a note.
    device None: the package's choice (cuda if available)."""
    try:
        import bert_score
        from bert_score.utils import model2layers
        folder, hub_id = _bertscore_model(model_name)
        if num_layers is None:
            if hub_id in model2layers:
                num_layers = model2layers[hub_id]
            else:
                from transformers import AutoConfig
                num_layers = AutoConfig.from_pretrained(folder).num_hidden_layers
        baseline = None
        if rescale_with_baseline:
            baseline = os.path.join(os.path.dirname(bert_score.__file__), "rescale_baseline", "en", f"{hub_id}.tsv")
            if hub_id is None or not os.path.isfile(baseline):
                notes.append(f"bertscore: unavailable ({model_name!r}: rescale_with_baseline needs the bert-score "
                             f"package's baseline file, looked for {baseline if hub_id else 'a hub id'}: none)")
                return {}
        precision, recall, f1 = bert_score.score(
            list(hypotheses), [list(refs) for refs in references], model_type=folder, num_layers=num_layers,
            lang="en", idf=False, batch_size=batch_size, device=device,
            rescale_with_baseline=rescale_with_baseline, baseline_path=baseline)
    except Exception as error:  # noqa: BLE001 -- any load failure (files, cache, name, layer) is a note, not a crash
        reason = str(error).strip().splitlines()[0] if str(error).strip() else ""
        notes.append(f"bertscore: unavailable ({model_name!r} not loadable, looked in {_looked_in(model_name)}: "
                     f"{type(error).__name__}: {reason})")
        return {}
    return {"bertscore/precision": float(precision.mean()), "bertscore/recall": float(recall.mean()),
            "bertscore/f1": float(f1.mean()), "bertscore/num_layers": float(num_layers),
            "bertscore/rescaled": 1.0 if rescale_with_baseline else 0.0}
