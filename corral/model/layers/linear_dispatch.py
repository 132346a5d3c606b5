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


def _call_s(fn, x: torch.Tensor, weight: torch.Tensor, clock=time.perf_counter) -> float:
    start = clock()
    fn(x, weight)
    return clock() - start


def _timed_pair(
    first, second, inputs: list[torch.Tensor], weights: list[torch.Tensor], clock=time.perf_counter
):
    """Summed over the shapes: first's best time and second's, calls alternating."""
    first_s = second_s = 0.0
    for x, weight in zip(inputs, weights, strict=True):
        first(x, weight)
        second(x, weight)
        best_first = best_second = float("inf")
        for _ in range(_TRIALS):
            best_first = min(best_first, _call_s(first, x, weight, clock))
            best_second = min(best_second, _call_s(second, x, weight, clock))
        first_s += best_first
        second_s += best_second
    return first_s, second_s


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
        kernel_s, reference_s = _timed_pair(kernel_linear, F.linear, inputs, weights)
        for _ in range(_LOSS_MEASUREMENTS - 1):
            if kernel_s <= reference_s:
                break
            # A loss is measured again (each side keeps its better time): a burst of other work
            # on a shared machine must not send every batch to the slower matmul for the life
            # of the server.
            again = _timed_pair(kernel_linear, F.linear, inputs, weights)
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


# The row counts the two forms of the dot-product tile kernel are timed at (summed): a decode
# batch's, where the forms differ (one row streams the weights and reads the same in both).
TILE_FORM_ROWS = (8, 32, 128)
TILE_FORMS = {"dot": 0, "fma": 1}


def choose_tile_form(model, kernels) -> str:
    """The form of the dot-product tile kernel (cpu_dot_tiles.cpp) this process runs: vdpbf16ps
    or float32 FMAs on widened weights, whichever is faster on the model's shapes here (timed
    alternating on one thread by its CPU time, best of _TRIALS; CORRAL_TILE_FORM=dot|fma sets
    it). Set in the kernels, logged, and returned. One form for the life of the process: a row's
    bits never depend on its batch."""
    override = os.environ.get("CORRAL_TILE_FORM", "").strip().lower()
    if override and override not in TILE_FORMS:
        raise ValueError(f"CORRAL_TILE_FORM={override!r} is not one of {', '.join(TILE_FORMS)}")
    from corral.model.packed_weight import PackedWeight

    shapes = model_linear_shapes(model)
    head = getattr(model, "lm_head", None)
    if not shapes and isinstance(head, torch.Tensor) and head.dim() == 2:
        # Only the LM head packs (int8 layers): its width, 4,096 of its outputs.
        shapes = [(min(head.shape[0], 4096), head.shape[1])]
    shapes = [
        shape
        for shape in shapes
        if PackedWeight.can_pack(torch.empty(shape, device="meta"), "tiles")
    ]
    times_s = {}
    if not override and shapes:
        generator = torch.Generator().manual_seed(0)
        tiles = [
            PackedWeight.pack(torch.randn(shape, generator=generator).bfloat16(), "tiles").data
            for shape in shapes
        ]
        forms = {
            name: lambda x, w, form=form: (
                kernels.set_dot_tiles_form(form),
                kernels.dot_tiles_linear(x, w, None),
            )
            for name, form in TILE_FORMS.items()
        }
        times_s = dict.fromkeys(TILE_FORMS, 0.0)
        # On one thread, by its CPU time: what sets the forms apart is a core's instruction
        # rates, and time descheduled does not count. Timed by wall clock on two threads, two
        # servers starting at once on the 2-vCPU Xeon both chose the dot form (dot 25.6 / 38.0
        # ms against fma 28.5 / 54.2; alone, 30.7 against 21.1), and ran 32 requests at 0.78x.
        num_threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            for rows in TILE_FORM_ROWS:
                inputs = [
                    torch.randn(rows, shape[1], generator=generator).bfloat16() for shape in shapes
                ]
                dot_s, fma_s = _timed_pair(
                    forms["dot"], forms["fma"], inputs, tiles, clock=time.thread_time
                )
                times_s["dot"] += dot_s
                times_s["fma"] += fma_s
        finally:
            torch.set_num_threads(num_threads)
    chosen = override or (min(times_s, key=times_s.get) if times_s else "dot")
    kernels.set_dot_tiles_form(TILE_FORMS[chosen])
    if override:
        evidence = "CORRAL_TILE_FORM"
    elif times_s:
        summed = ", ".join(f"{name} {1e3 * s:.2f} ms" for name, s in times_s.items())
        evidence = f"summed time at {TILE_FORM_ROWS} rows: {summed}"
    else:
        evidence = "no tile shapes to time"
    logger.info("bf16 tiles without AMX: %s form (%s)", chosen, evidence)
    return chosen
