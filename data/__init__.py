"""Datasets (real adapters and phantoms), transforms, report cleaning and the rule labeler.

The sample dict every dataset returns is documented in data/sample.py; label vocabularies in data/labels.py.
"""
