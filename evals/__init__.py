"""Evaluation, one module per system in one pattern: `evals/<system>.py` takes a BUILT model and dataset and
returns a flat dict of floats (plus PNGs and predictions for user images). The training script builds them
(its `evaluate_checkpoint(checkpoint, args)`, which evaluate.py calls, and the run's final test evaluation);
evals/ never imports a script. `evals/tables.py` writes every comparison table (--compare / --ablation / --table)."""
