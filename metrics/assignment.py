"""Minimum-cost rectangular assignment (what RoDeO's Hungarian matching needs), numpy only.

scipy is not a runtime package here, so this is the shortest-augmenting-path method (Jonker-Volgenant
family, as described by Crouse, "On implementing 2D rectangular assignment algorithms", IEEE TAES 2016),
the method behind `scipy.optimize.linear_sum_assignment`. Same tie rules as that description: the
cheapest remaining column wins, among equal reduced costs an unassigned column is preferred, columns are
scanned from the highest index down. tests/test_metrics_detection.py checks the optimal cost AND the
returned pairs against scipy on random matrices with heavy ties (scipy is a test-only package).

Shapes: R rows, C columns, cost (R, C) finite. Returns (rows, cols), both (min(R, C),), rows ascending.
"""
import numpy as np


def _augmenting_path(cost, u, v, path, row4col, current_row):
    """One Dijkstra-like search from `current_row` to a free column -> (sink, min_value, SR, SC, costs)."""
    num_rows, num_cols = cost.shape
    remaining = list(range(num_cols - 1, -1, -1))                 # scan order: last column first
    visited_rows = np.zeros(num_rows, dtype=bool)                 # SR
    visited_cols = np.zeros(num_cols, dtype=bool)                 # SC
    shortest = np.full(num_cols, np.inf)                          # shortest path cost to each column
    min_value, sink, row = 0.0, -1, current_row
    while sink == -1:
        visited_rows[row] = True
        best_index, lowest = -1, np.inf
        for index, col in enumerate(remaining):
            reduced = min_value + cost[row, col] - u[row] - v[col]
            if reduced < shortest[col]:
                path[col] = row
                shortest[col] = reduced
            if shortest[col] < lowest or (shortest[col] == lowest and row4col[col] == -1):
                lowest, best_index = shortest[col], index
        min_value = lowest
        if not np.isfinite(min_value):
            raise ValueError("linear_sum_assignment: cost matrix is infeasible")
        col = remaining[best_index]
        if row4col[col] == -1:
            sink = col
        else:
            row = row4col[col]
        visited_cols[col] = True
        remaining[best_index] = remaining[-1]                     # swap-remove, as in the description
        remaining.pop()
    return sink, min_value, visited_rows, visited_cols, shortest


def linear_sum_assignment(cost):
    """cost (R, C) -> (rows, cols) minimising cost[rows, cols].sum(); min(R, C) pairs."""
    cost = np.asarray(cost, dtype=np.float64)
    if cost.ndim != 2:
        raise ValueError(f"linear_sum_assignment: expected a 2-D cost matrix, got shape {cost.shape}")
    if not np.isfinite(cost).all():
        raise ValueError("linear_sum_assignment: cost matrix holds NaN or inf")
    if cost.size == 0:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    transposed = cost.shape[1] < cost.shape[0]
    if transposed:
        cost = cost.T                                             # now R <= C
    num_rows, num_cols = cost.shape
    u, v = np.zeros(num_rows), np.zeros(num_cols)                 # dual variables
    path = np.full(num_cols, -1)
    col4row, row4col = np.full(num_rows, -1), np.full(num_cols, -1)
    for current_row in range(num_rows):
        sink, min_value, visited_rows, visited_cols, shortest = _augmenting_path(cost, u, v, path, row4col,
                                                                                  current_row)
        u[current_row] += min_value
        for i in np.flatnonzero(visited_rows):
            if i != current_row:
                u[i] += min_value - shortest[col4row[i]]
        v[visited_cols] -= min_value - shortest[visited_cols]
        col = sink
        while True:                                               # flip the augmenting path
            row = path[col]
            row4col[col] = row
            col4row[row], col = col, col4row[row]
            if row == current_row:
                break
    rows, cols = np.arange(num_rows), col4row.copy()
    if transposed:
        order = np.argsort(cols)
        rows, cols = cols[order], rows[order]
    return rows.astype(np.int64), cols.astype(np.int64)
