"""Full-batch Adam for the small linear models here (numpy only, deterministic)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

# loss_and_grad(weights) -> (loss, gradient with the weights' shape)
LossFn = Callable[[np.ndarray], tuple[float, np.ndarray]]


def adam(
    loss_and_grad: LossFn,
    weights: np.ndarray,
    *,
    num_steps: int = 300,
    learning_rate: float = 0.05,
    beta1: float = 0.9,
    beta2: float = 0.999,
    eps: float = 1e-8,
) -> tuple[np.ndarray, list[float]]:
    """Minimize loss_and_grad from weights; returns the weights and the loss per step."""
    weights = weights.astype(np.float64).copy()
    first = np.zeros_like(weights)
    second = np.zeros_like(weights)
    losses = []
    for step in range(1, num_steps + 1):
        loss, grad = loss_and_grad(weights)
        losses.append(loss)
        first = beta1 * first + (1 - beta1) * grad
        second = beta2 * second + (1 - beta2) * grad * grad
        first_hat = first / (1 - beta1**step)
        second_hat = second / (1 - beta2**step)
        weights -= learning_rate * first_hat / (np.sqrt(second_hat) + eps)
    return weights, losses
