"""Optional C++ kernels for the CPU decode path, compiled once per machine at first use.

CORRAL_CPU_KERNELS=0 disables them; without a C++ toolchain corral falls back to PyTorch ops
(slower, same results up to floating-point rounding).
"""

from __future__ import annotations

import hashlib
import logging
import os
import platform
import sys
import threading
from pathlib import Path
from types import ModuleType

logger = logging.getLogger(__name__)

_SOURCES = [
    Path(__file__).with_name(name)
    for name in ("cpu_kernels.cpp", "cpu_fused.cpp", "cpu_kv_write.cpp")
]
# -fopenmp makes at::parallel_for parallel (without it ATen's header falls back to a serial loop);
# the extension then links libgomp.so.1, the runtime torch has already loaded, so
# torch.set_num_threads governs the kernels' threads too.
_CFLAGS = ["-O3", "-march=native", "-fopenmp"]
_LDFLAGS = ["-fopenmp"]
_lock = threading.Lock()
_state: dict[str, ModuleType | None] = {}


def _cpu_signature() -> str:
    """Kernels are built with -march=native: key the build by the CPU's feature flags."""
    flags = ""
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            flags = next((line for line in cpuinfo if line.startswith("flags")), "")
    except OSError:
        pass
    text = platform.machine() + flags + " ".join(_CFLAGS + _LDFLAGS)
    text += "".join(source.read_text() for source in _SOURCES)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def cpu_kernels() -> ModuleType | None:
    """The compiled kernel module, or None when disabled or unavailable (logged once)."""
    with _lock:
        if "module" in _state:
            return _state["module"]
        module = None
        if os.environ.get("CORRAL_CPU_KERNELS", "1") != "0":
            module = _build()
        _state["module"] = module
        return module


def _build() -> ModuleType | None:
    from corral.paths import cache_dir

    # ninja is installed next to the interpreter, which need not be on PATH (.venv/bin/python).
    bin_dir = str(Path(sys.executable).parent)
    if bin_dir not in os.environ.get("PATH", "").split(os.pathsep):
        os.environ["PATH"] = bin_dir + os.pathsep + os.environ.get("PATH", "")
    try:
        from torch.utils.cpp_extension import load

        build_dir = cache_dir() / "kernels" / _cpu_signature()
        build_dir.mkdir(parents=True, exist_ok=True)
        # Compile copies kept in the (content-keyed) build directory: ninja records source paths,
        # so checkouts sharing a cache would otherwise rebuild each other's kernels.
        sources = []
        for source in _SOURCES:
            copy = build_dir / source.name
            if not copy.is_file() or copy.read_text() != source.read_text():
                copy.write_text(source.read_text())
            sources.append(str(copy))
        logger.info("loading corral CPU kernels (compiled on first use) from %s", build_dir)
        return load(
            name=f"corral_cpu_kernels_{_cpu_signature()}",
            sources=sources,
            extra_cflags=_CFLAGS,
            extra_ldflags=_LDFLAGS,
            build_directory=str(build_dir),
            verbose=False,
        )
    except Exception as error:  # no compiler, no ninja, unsupported flags...
        logger.warning("corral CPU kernels unavailable, using PyTorch ops instead: %s", error)
        return None
