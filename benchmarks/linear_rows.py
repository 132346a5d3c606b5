"""bfloat16 linear on CPU: corral's few-row kernel against torch's F.linear, by number of rows,
at the demo model's shapes. Decides corral.model.layers.linear._MAX_KERNEL_ROWS per CPU.

    .venv/bin/python benchmarks/linear_rows.py
"""

from __future__ import annotations

import platform
import time

import torch
import torch.nn.functional as F

from corral.model.cpu_features import cpu_flags, has_native_bf16_matmul
from corral.model.kernels import cpu_kernels

SHAPES = [(1536, 256), (256, 768), (4096, 256)]  # gate_up, down, lm_head of corral-demo
ROWS = [1, 2, 4, 5, 8, 16, 32, 64, 256]


def time_us(fn, repeats: int = 300) -> float:
    fn()
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - start) / repeats * 1e6


def main() -> None:
    kernels = cpu_kernels()
    if kernels is None:
        raise SystemExit("the CPU kernels did not build here")
    print(
        f"CPU: {platform.processor() or 'unknown'}, threads {torch.get_num_threads()}, "
        f"native bf16 matmul: {has_native_bf16_matmul()} "
        f"({', '.join(sorted(f for f in cpu_flags() if 'bf16' in f or 'amx' in f)) or 'none'})"
    )
    print("| weight | rows | kernel us | F.linear us | F.linear / kernel |")
    print("|---|---|---|---|---|")
    for shape in SHAPES:
        weight = torch.randn(shape, dtype=torch.bfloat16)
        for rows in ROWS:
            x = torch.randn(rows, shape[1], dtype=torch.bfloat16)
            kernel = time_us(lambda x=x, w=weight: kernels.few_row_linear(x, w, None))
            reference = time_us(lambda x=x, w=weight: F.linear(x, w))
            print(
                f"| {shape[0]}x{shape[1]} | {rows} | {kernel:.1f} | {reference:.1f} | "
                f"{reference / kernel:.2f} |"
            )


if __name__ == "__main__":
    main()
