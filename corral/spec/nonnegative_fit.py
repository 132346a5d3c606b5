"""The small solve behind the speculative controller's live cost fits (torch-free): normal
equations whose coefficients stay at least zero (corral/spec/step_cost.py,
corral/spec/propose_cost.py)."""

from __future__ import annotations

from collections.abc import Callable

# A fit is solved again after this many new observations (with the fits' decays a few steps
# move it little, and a solve costs about 20 us, 1-2% of a single-request step on the demo
# models); until NUM_EARLY_OBSERVATIONS, at every one (the first steps move a fit most).
REFIT_INTERVAL = 4
NUM_EARLY_OBSERVATIONS = 8
# Observations a fit holds unfolded at most (PendingObservations; the speculative controller
# folds them before a step that plans, or at this many).
MAX_PENDING_OBSERVATIONS = 16


def refit_due(num_observations: int, fitted_at: int) -> bool:
    """Whether a fit last solved at fitted_at observations is solved again at num_observations."""
    return (
        num_observations - fitted_at >= REFIT_INTERVAL or num_observations < NUM_EARLY_OBSERVATIONS
    )


class PendingObservations:
    """A fit's observations kept as they come and folded in, in order, when the fit is next
    read or its owner says: the engine observes every step, right after the model's pass has
    streamed its weights through the caches, where each fold ran cold (20-30 us a
    single-request step on the demo models, against 6 us in a warm loop); folded several at a
    time they run warm. The fit's state after a drain is what folding each at once would have
    left."""

    __slots__ = ("_fold", "_items")

    def __init__(self, fold: Callable[..., None]) -> None:
        self._fold = fold
        self._items: list[tuple] = []

    def __len__(self) -> int:
        return len(self._items)

    def append(self, observation: tuple) -> None:
        self._items.append(observation)

    def drain(self) -> None:
        if self._items:
            items, self._items = self._items, []
            for observation in items:
                self._fold(*observation)


class DeferredFit:
    """An online fit solved lazily, whose observations wait in PendingObservations until it is
    read or fold_pending is called. A subclass folds one observation in _observe_now (ending
    with _counted) and solves in _fit; _coefficients folds, then solves when refit_due said."""

    def __init__(self) -> None:
        self._num_observations = 0
        self._cached: tuple[float, ...] | None = None
        self._last_fit: tuple[float, ...] | None = None  # kept when _cached is dropped
        self._fitted_at = 0  # _num_observations at the last solve
        self._pending = PendingObservations(self._observe_now)

    def _observe_now(self, *observation) -> None:
        raise NotImplementedError

    def _fit(self) -> tuple[float, ...]:
        raise NotImplementedError

    def _counted(self) -> None:
        """One observation folded: solve again at the next read if refit_due says."""
        self._num_observations += 1
        if refit_due(self._num_observations, self._fitted_at):
            self._cached = None

    @property
    def num_observations(self) -> int:
        self._pending.drain()
        return self._num_observations

    @property
    def num_pending(self) -> int:
        """Observations not yet folded into the fit."""
        return len(self._pending)

    def fold_pending(self) -> None:
        """Fold the observations not yet folded (every read does so first)."""
        self._pending.drain()

    def _coefficients(self) -> tuple[float, ...]:
        self._pending.drain()
        if self._cached is None:
            self._cached = self._last_fit = self._fit()
            self._fitted_at = self._num_observations
        return self._cached


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
