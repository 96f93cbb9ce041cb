"""Metrics of the five systems, each under the name the field uses (see docs/metrics.md).

classification (AUROC, AP, F1, accuracy), retrieval (R@K with group ids, alignment statistics),
detection (RoDeO, AP@IoU, localization accuracy, bootstrap), localization (pointing game, CAM boxes,
IoU/IoBB accuracy, energy in boxes, map entropy), text (BLEU, ROUGE-L, CIDEr-D, METEOR, BERTScore),
clinical (rule-labeler CE P/R/F1), visualize (PNG overlays). Runtime dependencies: numpy, pillow, nltk,
rouge-score and torch (optional input type) only; scikit-learn / pycocoevalcap are used by the tests.
"""
