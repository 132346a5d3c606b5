"""Least squares with sign constraints, for fitting step-time regressors (numpy only)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def nnls(a: np.ndarray, b: np.ndarray, max_iter: int | None = None) -> np.ndarray:
    """Solve min ||a x - b|| subject to x >= 0 (Lawson and Hanson's active-set method)."""
    num_cols = a.shape[1]
    x = np.zeros(num_cols)
    passive = np.zeros(num_cols, dtype=bool)
    max_iter = max_iter or 3 * num_cols + 30
    for _ in range(max_iter):
        gradient = a.T @ (b - a @ x)
        candidates = np.where(~passive & (gradient > 1e-12 * max(1.0, np.abs(gradient).max())))[0]
        if candidates.size == 0:
            break
        passive[candidates[np.argmax(gradient[candidates])]] = True
        while True:
            z = np.zeros(num_cols)
            z[passive] = np.linalg.lstsq(a[:, passive], b, rcond=None)[0]
            if np.all(z[passive] > 0):
                x = z
                break
            blocking = passive & (z <= 0)
            alpha = np.min(x[blocking] / (x[blocking] - z[blocking]))
            x = x + alpha * (z - x)
            passive &= x > 1e-15
    return x


def fit_signed(
    rows: Sequence[Sequence[float]],
    targets: Sequence[float],
    signed: Sequence[bool],
    weights: Sequence[float] | None = None,
) -> np.ndarray:
    """Weighted least squares where coefficient j must be >= 0 unless signed[j].

    A signed column is split into a positive and a negated copy, both constrained >= 0.
    """
    a = np.asarray(rows, dtype=np.float64)
    b = np.asarray(targets, dtype=np.float64)
    if weights is not None:
        w = np.asarray(weights, dtype=np.float64)
        a, b = a * w[:, None], b * w
    signed_idx = [j for j, is_signed in enumerate(signed) if is_signed]
    expanded = np.concatenate([a, -a[:, signed_idx]], axis=1) if signed_idx else a
    scale = np.abs(expanded).max(axis=0)
    scale[scale == 0] = 1.0
    solution = nnls(expanded / scale, b) / scale
    coefficients = solution[: a.shape[1]].copy()
    for offset, j in enumerate(signed_idx):
        coefficients[j] -= solution[a.shape[1] + offset]
    return coefficients
