"""Which matmul serves a bfloat16 CPU linear of M rows: corral's few-row kernel or torch's
F.linear (oneDNN), decided by timing both on the model's own shapes at start-up.

The kernel streams each weight row once for all M rows and wins where the CPU has no fast bf16
GEMM (AVX2: 3-6x at every M, benchmarks/decode_gemm.py); where it has one (AVX-512 bf16, AMX),
oneDNN overtakes it at a few rows. The crossover depends on the CPU, the shapes and the thread
count, so it is measured rather than guessed from feature flags (the guess stays the fallback).
CPUs without native bf16 matrix instructions skip the measurement (the kernel wins everywhere
there). CORRAL_MAX_KERNEL_ROWS=<n> sets the limit without measuring; =measure measures on any CPU.
"""

from __future__ import annotations

import logging
import os
import time

import torch
import torch.nn.functional as F

from corral.model.cpu_features import has_native_bf16_matmul

logger = logging.getLogger(__name__)

# The row counts timed (the crossover is reported as one of them), each side as the best of
# _TRIALS calls after a warm-up call, kernel and F.linear calls alternating so that a burst of
# other work (sibling servers starting, on a shared machine) lands on both: about a second at
# start-up on a 2-core AVX2 CPU, where F.linear's bf16 is slowest. With two trials taken one side
# after the other, a corral server started beside three others on a 2-core AMX Xeon measured
# its kernel at 0.72x F.linear at one row (3.3-3.7x at rest) and sent single-stream decode
# through F.linear, 2.2x slower (docs/performance.md).
CANDIDATE_ROWS = (1, 2, 4, 8, 16, 32, 64, 128)
_TRIALS = 5
# Measurements of a row count that the kernel loses, each side keeping its best, before the
# loss is believed.
_LOSS_MEASUREMENTS = 3
UNLIMITED = 1 << 30


def guessed_max_kernel_rows() -> int:
    """The flag-based default: a couple of rows where the CPU multiplies bf16 natively."""
    return 2 if has_native_bf16_matmul() else UNLIMITED


def _call_s(fn, x: torch.Tensor, weight: torch.Tensor) -> float:
    start = time.perf_counter()
    fn(x, weight)
    return time.perf_counter() - start


def _timed_pair(kernel_linear, inputs: list[torch.Tensor], weights: list[torch.Tensor]):
    """Summed over the shapes: the kernel's best time and F.linear's, calls alternating."""
    kernel_s = reference_s = 0.0
    for x, weight in zip(inputs, weights, strict=True):
        kernel_linear(x, weight)
        F.linear(x, weight)
        best_kernel = best_reference = float("inf")
        for _ in range(_TRIALS):
            best_kernel = min(best_kernel, _call_s(kernel_linear, x, weight))
            best_reference = min(best_reference, _call_s(F.linear, x, weight))
        kernel_s += best_kernel
        reference_s += best_reference
    return kernel_s, reference_s


def measure_max_kernel_rows(
    shapes: list[tuple[int, int]], kernel_linear, candidate_rows: tuple[int, ...] = CANDIDATE_ROWS
) -> tuple[int, dict[int, float]]:
    """The largest M up to which the kernel is at least as fast as F.linear at every timed M,
    over the summed time of `shapes` ([out, in] weights), and F.linear's time over the kernel's
    at each M. Beyond the largest candidate the answer extends without limit when the kernel
    still wins there."""
    generator = torch.Generator().manual_seed(0)
    weights = [torch.randn(shape, generator=generator).to(torch.bfloat16) for shape in shapes]
    ratios: dict[int, float] = {}
    best = 0
    for rows in candidate_rows:
        inputs = [
            torch.randn(rows, weight.shape[1], generator=generator).to(torch.bfloat16)
            for weight in weights
        ]
        kernel_s, reference_s = _timed_pair(kernel_linear, inputs, weights)
        for _ in range(_LOSS_MEASUREMENTS - 1):
            if kernel_s <= reference_s:
                break
            # A loss is measured again (each side keeps its better time): a burst of other work
            # on a shared machine must not send every batch to the slower matmul for the life
            # of the server.
            again = _timed_pair(kernel_linear, inputs, weights)
            kernel_s, reference_s = min(kernel_s, again[0]), min(reference_s, again[1])
        ratios[rows] = reference_s / kernel_s
        if kernel_s > reference_s:
            break
        best = rows
    if best == candidate_rows[-1]:
        best = UNLIMITED
    return best, ratios


def model_linear_shapes(model) -> list[tuple[int, int]]:
    """[out, in] of one dense decoder layer's fused linears (its first such layer)."""
    for layer in model.layers:
        weights = [getattr(layer, name, None) for name in ("qkv", "o", "gate_up", "down")]
        if all(isinstance(w, torch.Tensor) for w in weights):
            return [tuple(w.shape) for w in weights]  # type: ignore[misc]
    return []


def choose_max_kernel_rows(model, kernel_linear) -> int:
    """The row limit of the kernel for this model on this machine (logged with its evidence)."""
    override = os.environ.get("CORRAL_MAX_KERNEL_ROWS", "")
    if not override and not has_native_bf16_matmul():
        # No native bf16 GEMM for oneDNN to use: F.linear converts and runs 3-6x slower than the
        # kernel at every row count (benchmarks/decode_gemm.py), and a start-up measurement on a
        # busy machine could only get that wrong.
        return UNLIMITED
    if override and override != "measure":
        try:
            value = int(override)
        except ValueError:
            raise ValueError(
                f"CORRAL_MAX_KERNEL_ROWS={override!r} is not a whole number of rows"
            ) from None
        if value < 0:
            raise ValueError(f"CORRAL_MAX_KERNEL_ROWS={value} must be 0 or more")
        return value
    shapes = model_linear_shapes(model)
    if not shapes:
        return guessed_max_kernel_rows()
    start = time.perf_counter()
    limit, ratios = measure_max_kernel_rows(shapes, kernel_linear)
    logger.info(
        "bf16 linear dispatch: corral's kernel up to %s rows, F.linear beyond (F.linear time / "
        "kernel time by rows: %s; measured in %.2f s)",
        "any number of" if limit == UNLIMITED else limit,
        ", ".join(f"{rows}: {ratio:.2f}" for rows, ratio in ratios.items()),
        time.perf_counter() - start,
    )
    return limit
