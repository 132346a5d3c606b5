"""The small solve behind the speculative controller's live cost fits (torch-free): normal
equations whose coefficients stay at least zero (corral/spec/step_cost.py,
corral/spec/propose_cost.py)."""

from __future__ import annotations

# A fit is solved again after this many new observations (with the fits' decays a few steps
# move it little, and a solve costs about 20 us, 1-2% of a single-request step on the demo
# models); until NUM_EARLY_OBSERVATIONS, at every one (the first steps move a fit most).
REFIT_INTERVAL = 4
NUM_EARLY_OBSERVATIONS = 8


def refit_due(num_observations: int, fitted_at: int) -> bool:
    """Whether a fit last solved at fitted_at observations is solved again at num_observations."""
    return (
        num_observations - fitted_at >= REFIT_INTERVAL or num_observations < NUM_EARLY_OBSERVATIONS
    )


def nonnegative_solve(
    a: list[list[float]], b: list[float], free: list[int] | None = None
) -> list[float]:
    """x with a x = b over the coefficients still free (all, or those given; the others 0),
    each at least zero: while one comes out negative, the most negative is fixed at zero and
    the rest solved again (features that move together otherwise trade a large positive
    coefficient for a large negative one). a: small, symmetric, positive semi-definite."""
    n = len(b)
    free = list(range(n)) if free is None else list(free)
    while free:
        sub = solve([[a[i][j] for j in free] for i in free], [b[i] for i in free])
        worst = min(range(len(free)), key=sub.__getitem__)
        if sub[worst] >= 0:
            x = [0.0] * n
            for index, value in zip(free, sub):
                x[index] = value
            return x
        del free[worst]
    return [0.0] * n


def solve(a: list[list[float]], b: list[float]) -> list[float]:
    """a x = b by Gaussian elimination with partial pivoting (n <= 4 here); zeros where a is
    singular."""
    n = len(b)
    matrix = [list(row) + [value] for row, value in zip(a, b)]
    for col in range(n):
        pivot = max(range(col, n), key=lambda row: abs(matrix[row][col]))
        matrix[col], matrix[pivot] = matrix[pivot], matrix[col]
        if matrix[col][col] == 0:
            return [0.0] * n
        for row in range(n):
            if row != col:
                factor = matrix[row][col] / matrix[col][col]
                for k in range(col, n + 1):
                    matrix[row][k] -= factor * matrix[col][k]
    return [matrix[i][n] / matrix[i][i] for i in range(n)]
