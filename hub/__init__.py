"""Pretrained weights: the one loading entry point (pretrained.py) and the tiny model hub that builds offline stand-ins (tiny_hub*.py)."""
