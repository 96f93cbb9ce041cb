"""metrics/summary.py: the mean ± sample-std cell every comparison table prints."""
import math

from metrics.summary import mean_std


def test_sample_std_by_hand():
    # mean 0.41; deviations -0.02, 0, 0.02 -> sum of squares 8e-4 / (3 - 1) = 4e-4 -> std 0.02 (population: 0.0163)
    assert mean_std([0.39, 0.41, 0.43]) == "0.410 ± 0.020"


def test_single_missing_and_empty():
    assert mean_std([0.5]) == "0.500"
    assert mean_std([1.0, None, 3.0, math.nan]) == "2.000 ± 1.414 (n=2)"
    assert mean_std([]) == "n/a"
    assert mean_std([None], missing="—") == "—"
