"""Device, dtype and memory: the only place that knows where the model runs."""

from __future__ import annotations

import torch

_DTYPES = {
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
    "float32": torch.float32,
    "fp32": torch.float32,
}


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} was asked for, but CUDA is not available")
    return device


def resolve_dtype(name: str, checkpoint_dtype: str | None, device: torch.device) -> torch.dtype:
    """'auto' keeps a half-precision checkpoint's dtype and runs float32 checkpoints in bfloat16;
    on CPU, float16 becomes bfloat16 too (CPU float16 matmuls are slow)."""
    if name != "auto":
        return _DTYPES[name]
    dtype = _DTYPES.get(checkpoint_dtype or "", torch.bfloat16)
    if dtype == torch.float32:
        dtype = torch.bfloat16
    if device.type == "cpu" and dtype == torch.float16:
        dtype = torch.bfloat16
    return dtype


def free_memory_bytes(device: torch.device) -> int:
    """Memory the process could still take on the device (CPU: MemAvailable)."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free)
    with open("/proc/meminfo") as meminfo:
        for line in meminfo:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("cannot read MemAvailable from /proc/meminfo")


def dtype_bytes(dtype: torch.dtype) -> int:
    return torch.empty((), dtype=dtype).element_size()
