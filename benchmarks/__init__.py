"""Benchmarks that run the training scripts themselves (they sit above the scripts, like evaluate.py): `python -m benchmarks.loading`."""
