"""What the CPU can do natively, read once from /proc/cpuinfo (Linux; elsewhere: nothing known)."""

from __future__ import annotations

import functools
from pathlib import Path


@functools.cache
def cpu_flags() -> frozenset[str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return frozenset()
    for line in text.splitlines():
        if line.startswith("flags"):
            return frozenset(line.split(":", 1)[1].split())
    return frozenset()


def has_native_bf16_matmul() -> bool:
    """AMX or AVX512-BF16: oneDNN's bfloat16 GEMMs run in hardware, and beat a row-streaming
    kernel beyond a couple of rows. Without them, PyTorch converts and is slower at every row
    count measured, 1 to 256 (benchmarks/linear_rows.py)."""
    flags = cpu_flags()
    return "amx_bf16" in flags or "avx512_bf16" in flags
