"""Measure this machine's CPU as a HardwareSpec: matmul FLOP/s and memory read bandwidth."""

from __future__ import annotations

import os
import platform
import time

from corral.sim.cost.hardware import HardwareSpec


def best_time_s(fn, repeats: int, clock=time.perf_counter) -> float:
    """The shortest of `repeats` timed calls of fn, after one untimed warm-up call."""
    fn()
    best = float("inf")
    for _ in range(repeats):
        start = clock()
        fn()
        best = min(best, clock() - start)
    return best


def measure_cpu(num_threads: int = 0, size: int = 2048, repeats: int = 5) -> HardwareSpec:
    """Best-of-`repeats` square matmul FLOP/s per dtype and the read bandwidth of summing a
    buffer far larger than the caches. num_threads 0 keeps torch's default."""
    import torch

    if num_threads:
        torch.set_num_threads(num_threads)
    load_before = os.getloadavg()[0]
    peaks = {}
    for name in ("float32", "bfloat16"):
        dtype = getattr(torch, name)
        a = torch.randn(size, size).to(dtype)
        b = torch.randn(size, size).to(dtype)
        peaks[name] = 2 * size**3 / best_time_s(lambda a=a, b=b: a @ b, repeats)
    num_bytes = 1 << 30
    buffer = torch.ones(num_bytes // 4, dtype=torch.float32)
    bandwidth = num_bytes / best_time_s(buffer.sum, repeats)
    memory = float(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    load = max(load_before, os.getloadavg()[0])
    return HardwareSpec(
        name=f"cpu-{platform.machine()}-{torch.get_num_threads()}threads",
        peak_flops=peaks,
        memory_bytes=memory,
        memory_bandwidth_bytes_per_s=bandwidth,
        # The "device" is host memory: an adapter load is a memory copy (read + write).
        host_to_device_bandwidth_bytes_per_s=bandwidth / 2,
        flops_efficiency=1.0,
        bandwidth_efficiency=1.0,
        max_devices_per_instance=1,
        sources=(
            f"measured by `corral simulate hardware --measure-cpu` with torch "
            f"{torch.__version__}, {torch.get_num_threads()} threads: best of {repeats} "
            f"{size}x{size} matmuls per dtype, and summing a 1 GiB float32 buffer; "
            f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
            f"1-minute load average {load:.1f} while measuring",
        ),
        notes="Measured peaks are already achievable values, so both efficiencies are 1. "
        "Adapter loads host to device are host memory copies at half the read bandwidth "
        "(an estimate, not measured); disk reads at the default 2 GB/s (an assumption). "
        "No power or price: energy and cost are not reported for this device.",
    )
