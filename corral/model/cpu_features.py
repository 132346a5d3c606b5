"""What the CPU can do natively, read once from /proc/cpuinfo (Linux; elsewhere: nothing known),
under an optional cap on the instruction sets corral, PyTorch and oneDNN may use.

The cap (`--cpu-isa`, or CORRAL_CPU_ISA in the environment) makes a CPU behave like an older or
smaller one: "avx512_bf16" takes AMX away (the matrix engine of Sapphire Rapids and later),
leaving AVX-512 with bf16 dot products as on AMD Zen 4; "avx2" takes AVX-512 away as well, as on
Zen 2/3 EPYCs. It is how one machine measures the paths another runs: the kernels are compiled
without the removed instructions, the dispatch sees the reduced flags, and oneDNN's and ATen's
own ceilings are lowered to match. It never adds what the CPU lacks.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from pathlib import Path

CPU_ISA_ENV = "CORRAL_CPU_ISA"


@dataclass(frozen=True)
class IsaCap:
    """What a cap removes: /proc/cpuinfo flags (by prefix), the compiler's instruction sets,
    and the ceilings of oneDNN (ONEDNN_MAX_CPU_ISA) and ATen (ATEN_CPU_CAPABILITY)."""

    removed_flag_prefixes: tuple[str, ...] = ()
    compiler_flags: tuple[str, ...] = ()
    onednn_max_isa: str | None = None
    aten_capability: str | None = None


# What each cap of corral.config.CPU_ISA_CAPS (the control plane's list of names) removes.
_NO_AMX = ("-mno-amx-tile", "-mno-amx-bf16", "-mno-amx-int8")
ISA_CAPS: dict[str, IsaCap] = {
    "native": IsaCap(),
    "avx512_bf16": IsaCap(
        removed_flag_prefixes=("amx", "avx512_fp16", "avx_vnni"),
        compiler_flags=(*_NO_AMX, "-mno-avx512fp16", "-mno-avxvnni"),
        onednn_max_isa="AVX512_CORE_BF16",
    ),
    "avx2": IsaCap(
        removed_flag_prefixes=("amx", "avx512", "avx_vnni"),
        compiler_flags=(*_NO_AMX, "-mno-avx512f", "-mno-avxvnni"),
        onednn_max_isa="AVX2",
        aten_capability="avx2",
    ),
}


def _known_cap(name: str, source: str) -> str:
    name = name.strip().lower() or "native"
    if name not in ISA_CAPS:
        raise ValueError(
            f"{source}={name!r} is not a known instruction-set cap; "
            f"choose one of {', '.join(ISA_CAPS)}"
        )
    return name


def cpu_isa() -> str:
    """The cap in force (CORRAL_CPU_ISA; "native" when unset)."""
    return _known_cap(os.environ.get(CPU_ISA_ENV, ""), CPU_ISA_ENV)


def apply_cpu_isa(name: str | None = None) -> None:
    """Put the cap `name` (None: the one CORRAL_CPU_ISA names) in force for this process and the
    processes it starts, before any kernel is built or any matmul runs (oneDNN and ATen read
    their ceilings once, at first use). A ceiling the environment already sets for oneDNN or
    ATen is left as it is."""
    current = cpu_isa()
    name = current if name is None else _known_cap(name, "cpu_isa")
    if name != current:
        from corral.model.kernels import kernels_loaded

        if kernels_loaded():
            raise RuntimeError(
                f"cpu_isa={name!r} asked after the CPU kernels were built for {current!r} in "
                f"this process; set it when the process starts (corral serve --cpu-isa, or "
                f"{CPU_ISA_ENV})"
            )
    os.environ[CPU_ISA_ENV] = name
    cap = ISA_CAPS[name]
    if cap.onednn_max_isa:
        os.environ.setdefault("ONEDNN_MAX_CPU_ISA", cap.onednn_max_isa)
    if cap.aten_capability:
        os.environ.setdefault("ATEN_CPU_CAPABILITY", cap.aten_capability)


def kernel_compiler_flags() -> list[str]:
    """The compiler flags that keep the cap's removed instructions out of the kernels."""
    return list(ISA_CAPS[cpu_isa()].compiler_flags)


@functools.cache
def native_cpu_flags() -> frozenset[str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return frozenset()
    for line in text.splitlines():
        if line.startswith("flags"):
            return frozenset(line.split(":", 1)[1].split())
    return frozenset()


def cpu_flags() -> frozenset[str]:
    """The CPU's flags less those the cap in force removes (attention asks on every prefill
    chunk: a cached lookup)."""
    return _capped_flags(cpu_isa(), native_cpu_flags())


@functools.cache
def _capped_flags(cap: str, native: frozenset[str]) -> frozenset[str]:
    removed = ISA_CAPS[cap].removed_flag_prefixes
    return frozenset(flag for flag in native if not flag.startswith(removed))


def has_native_bf16_matmul() -> bool:
    """AMX or AVX512-BF16: oneDNN's bfloat16 GEMMs run in hardware, and beat a row-streaming
    kernel beyond a couple of rows. Without them, PyTorch converts and is slower at every row
    count measured, 1 to 256 (benchmarks/linear_rows.py)."""
    flags = cpu_flags()
    return "amx_bf16" in flags or "avx512_bf16" in flags
