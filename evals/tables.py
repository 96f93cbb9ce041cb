"""Comparison tables of all five systems (--compare, --ablation, --table): rows x seeds of runs, mean ± std.

    runs, seconds = collect_runs(rows, seeds, run_dir_of, train)     # train what is missing, reuse the rest
    lines = markdown(["variant", "seeds", *keys], [[row, len(runs[row]), *mean_std_cells(runs[row], keys)] ...])
    write_table(path_md, lines, path_json, data)

Design choices:
- A run is one folder. It is reused when it holds every file named in `done` (default metrics.json), so an
  interrupted table continues where it stopped and a second call retrains nothing.
- The scripts keep what differs: which rows exist and which overrides make each (the seed's ablation
  switches), how one run trains (one phase, phases 1 + 2, three stages), which metrics are columns.
- Cells are metrics/summary.mean_std over seeds (sample std, n - 1); missing values are left out and counted.
"""
import json
import math
import time
from pathlib import Path

import numpy as np

from metrics.summary import mean_std


def read_metrics(run_dir):
    return json.loads((Path(run_dir) / "metrics.json").read_text())


def collect_runs(rows, seeds, run_dir_of, train, done=("metrics.json",), read=read_metrics):
    """rows: names in table order; run_dir_of(row, seed) -> folder; train(row, seed, run_dir) makes a missing run;
    read(run_dir) -> its metrics dict. -> ({row: [metrics of each seed]}, [wall seconds of each new run])."""
    results, seconds = {}, []
    for row in rows:
        for seed in seeds:
            run_dir = Path(run_dir_of(row, seed))
            if not all((run_dir / name).is_file() for name in done):
                start = time.time()
                train(row, seed, run_dir)
                seconds.append(time.time() - start)
            results.setdefault(row, []).append(read(run_dir))
    return results, seconds


def values_of(runs, key):
    """[metrics dict per seed] -> the values of `key` (NaN where a run lacks it or holds null, metrics.json's NaN)."""
    return [math.nan if r.get(key) is None else float(r[key]) for r in runs]


def mean_std_cells(runs, keys, missing="n/a"):
    """[metrics dict per seed] -> one "mean ± std" cell per key."""
    return [mean_std(values_of(runs, key), missing=missing) for key in keys]


def column_means(runs, keys, prefix=""):
    """[metrics dict per seed] -> {key: mean of prefix + key over the seeds that have it (NaN when none)}."""
    means = {}
    for key in keys:
        values = [v for v in values_of(runs, prefix + key) if not math.isnan(v)]
        means[key] = float(np.mean(values)) if values else math.nan
    return means


def markdown(header, rows):
    """header: cells; rows: lists of cells -> the lines of a markdown table."""
    lines = ["| " + " | ".join(map(str, header)) + " |", "|" + " --- |" * len(header)]
    return lines + ["| " + " | ".join(map(str, row)) + " |" for row in rows]


def write_table(path, lines, json_path=None, data=None):
    """Write the table (and its numbers as strict JSON: NaN as null), print it, return the text."""
    text = "\n".join(lines) + "\n"
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(text)
    if json_path is not None:
        from metrics.summary import strict_json
        Path(json_path).write_text(json.dumps(strict_json(data), indent=1, allow_nan=False))
    print(text, end="")
    return text
