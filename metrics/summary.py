"""Mean ± sample standard deviation over seeds, as every comparison table in the repository prints it, and
strict JSON values for the files that hold metrics.

`mean_std([0.41, 0.39, 0.43])` -> "0.410 ± 0.020". The std is the sample one (n - 1 in the denominator),
the usual choice for a handful of seeds; one value prints alone; missing values (None or NaN) are left
out and then counted, "(n=2)"; no values at all print `missing`.
"""
import math

import numpy as np


def mean_std(values, missing="n/a", digits=3):
    """values: iterable of numbers (None / NaN allowed) -> "m ± s", "m", "m ± s (n=k)" or `missing`."""
    values = list(values)
    kept = np.array([float(x) for x in values if x is not None and not math.isnan(float(x))], dtype=np.float64)
    if len(kept) == 0:
        return missing
    text = f"{kept.mean():.{digits}f}" + (f" ± {kept.std(ddof=1):.{digits}f}" if len(kept) > 1 else "")
    return text + (f" (n={len(kept)})" if len(kept) < len(values) else "")


def strict_json(value):
    """NaN / inf -> None (strict JSON readers reject bare NaN); tensors and numpy values -> numbers, recursively
    through lists, tuples and dicts."""
    if hasattr(value, "detach"):                                      # a torch tensor (torch is not imported here)
        value = value.detach().cpu()
        value = value.item() if value.numel() == 1 else value.tolist()
    value = value.tolist() if isinstance(value, (np.ndarray, np.generic)) else value
    if isinstance(value, (list, tuple)):
        return [strict_json(v) for v in value]
    if isinstance(value, dict):
        return {k: strict_json(v) for k, v in value.items()}
    return None if isinstance(value, float) and not math.isfinite(value) else value
