"""Multi-adapter LoRA on CPU: add_lora (the C++ segmented shrink + expand kernel) against
add_lora_reference (PyTorch ops per segment), at a SmolLM-135M layer's shapes, rank 16, bf16;
the base F.linear of each shape is timed alongside for scale.

    .venv/bin/python benchmarks/lora_kernel.py
"""

from __future__ import annotations

import platform
import statistics
import time

import torch
import torch.nn.functional as F

from corral.lora.apply import LoRATarget, add_lora, add_lora_reference
from corral.lora.batch import LoRABatch
from corral.model.kernels import cpu_kernels

HIDDEN, INTERMEDIATE = 576, 1536
# Fused linear -> (in_features, output widths of its parts).
TARGETS = {
    "qkv": (HIDDEN, [576, 192, 192]),
    "o": (HIDDEN, [HIDDEN]),
    "gate_up": (HIDDEN, [INTERMEDIATE, INTERMEDIATE]),
    "down": (INTERMEDIATE, [HIDDEN]),
}
RANK = 16
NUM_SLOTS = 16
DTYPE = torch.bfloat16
# (label, rows, adapters the rows are spread over)
CASES = [("decode", 32, 1), ("decode", 32, 4), ("decode", 32, 16), ("prefill", 512, 1)]


def time_us(fn, repeats: int = 30, inner: int = 10) -> float:
    """Median over repeats of the mean of `inner` calls, in microseconds."""
    fn()
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(inner):
            fn()
        samples.append((time.perf_counter() - start) / inner * 1e6)
    return statistics.median(samples)


def make_target(in_features: int, widths: list[int]) -> LoRATarget:
    offsets = [0]
    for width in widths:
        offsets.append(offsets[-1] + width)
    a = torch.randn(NUM_SLOTS, len(widths) * RANK, in_features, dtype=DTYPE) / in_features**0.5
    b = torch.randn(NUM_SLOTS, offsets[-1], RANK, dtype=DTYPE) / RANK**0.5
    return LoRATarget.create(a, b, offsets)


def measure(
    target: LoRATarget, weight: torch.Tensor, rows: int, adapters: int
) -> tuple[float, float, float]:
    """(add_lora, add_lora_reference, F.linear) microseconds for rows spread over adapters."""
    row_slots = [row % adapters for row in range(rows)]
    batch = LoRABatch.from_row_slots(row_slots, [RANK] * NUM_SLOTS, torch.device("cpu"))
    assert batch is not None
    x = torch.randn(rows, weight.shape[1], dtype=DTYPE)
    out = torch.zeros(rows, weight.shape[0], dtype=DTYPE)
    offsets = list(target.part_offsets)
    return (
        time_us(lambda: add_lora(out, x, target, batch)),
        time_us(lambda: add_lora_reference(out, x, target.a, target.b, offsets, batch)),
        time_us(lambda: F.linear(x, weight)),
    )


def main() -> None:
    if cpu_kernels() is None:
        raise SystemExit("the CPU kernels did not build here")
    torch.manual_seed(0)
    print(f"CPU: {platform.processor() or 'unknown'}, threads {torch.get_num_threads()}")
    print(f"rank {RANK}, {DTYPE}, {NUM_SLOTS} slots; times in microseconds per call (median)")
    print("| target | case | rows | adapters | add_lora | reference | ref / kernel | F.linear |")
    print("|---|---|---|---|---|---|---|---|")
    for name, (in_features, widths) in TARGETS.items():
        target = make_target(in_features, widths)
        weight = torch.randn(sum(widths), in_features, dtype=DTYPE)
        for label, rows, adapters in CASES:
            kernel, reference, base = measure(target, weight, rows, adapters)
            print(
                f"| {name} | {label} | {rows} | {adapters} | {kernel:.1f} | {reference:.1f} | "
                f"{reference / kernel:.1f} | {base:.1f} |"
            )


if __name__ == "__main__":
    main()
