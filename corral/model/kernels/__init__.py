"""Optional C++ kernels for the CPU decode path, compiled once per machine at first use.

CORRAL_CPU_KERNELS=0 disables them; without a C++ toolchain corral falls back to PyTorch ops
(slower, same results up to floating-point rounding).

Locking rule (a process killed at any moment must not block later starts):
- a built library whose stamp matches its signature (sources, flags, torch, Python) is imported
  directly, without any lock; the stamp is written only after a complete build;
- building happens under an flock on <build dir>/corral-build.lock, which the operating system
  releases when its holder dies. Only that holder runs torch's load(), so a torch `lock` file it
  finds was left by a killed process and is removed;
- a waiter logs the lock and the pid holding it, and gives up after BUILD_LOCK_TIMEOUT_S with a
  RuntimeError (corral then uses PyTorch ops).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import importlib.util
import logging
import os
import platform
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

logger = logging.getLogger(__name__)

_SOURCES = [
    Path(__file__).with_name(name)
    for name in (
        "cpu_kernels.cpp",
        "cpu_linear.cpp",
        "cpu_panel_linear.cpp",
        "cpu_fused.cpp",
        "cpu_kv_write.cpp",
        "cpu_lora.cpp",
        "cpu_int8.cpp",
        "cpu_int8_panel.cpp",
        "cpu_amx_linear.cpp",
        "cpu_dot_tiles.cpp",
        "cpu_argmax.cpp",
        "cpu_layer_loop.cpp",
        "cpu_prefill_attention.cpp",
    )
]
# Included by the sources: copied beside them into the build directory, part of the signature.
_HEADERS = [
    Path(__file__).with_name(name)
    for name in ("cpu_common.h", "cpu_ops.h", "cpu_attention_blocks.h")
]
# -fopenmp makes at::parallel_for parallel (without it ATen's header falls back to a serial loop);
# the extension then links libgomp.so.1, the runtime torch has already loaded, so
# torch.set_num_threads governs the kernels' threads too.
_CFLAGS = ["-O3", "-march=native", "-fopenmp"]
_LDFLAGS = ["-fopenmp"]
BUILD_LOCK_TIMEOUT_S = 600.0
MIN_PARALLEL_WORK_PASSIVE = 1 << 19
MIN_PARALLEL_WORK_SPINNING = 1 << 18
_LOCK_POLL_S = 0.2
_BUILD_LOCK_NAME = "corral-build.lock"
_TORCH_LOCK_NAME = "lock"  # torch's FileBaton: a killed holder never removes it
_STAMP_NAME = "corral-built.signature"
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
    text = platform.machine() + flags + " ".join(_cflags() + _LDFLAGS)
    text += "".join(source.read_text() for source in _SOURCES + _HEADERS)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def _cflags() -> list[str]:
    """The build's flags: -march=native less what the instruction-set cap removes
    (cpu_features.ISA_CAPS)."""
    from corral.model.cpu_features import kernel_compiler_flags

    return _CFLAGS + kernel_compiler_flags()


def kernels_loaded() -> bool:
    """Whether this process has built or imported the kernels (or given up on them)."""
    with _lock:
        return "module" in _state


def cpu_kernels() -> ModuleType | None:
    """The compiled kernel module, or None when disabled or unavailable (logged once)."""
    with _lock:
        if "module" in _state:
            return _state["module"]
        module = None
        if os.environ.get("CORRAL_CPU_KERNELS", "1") != "0":
            module = _build()
        if module is not None:
            module.set_min_parallel_work(min_parallel_work())
        _state["module"] = module
        return module


def min_parallel_work() -> int:
    """The least multiply-adds worth a second thread (cpu_common.h): 512K where OpenMP threads
    sleep between calls (OMP_WAIT_POLICY=passive, read by libgomp at start), else 256K, since
    threads kept spinning by libgomp's default policy (or active) wake at once."""
    passive = os.environ.get("OMP_WAIT_POLICY", "").strip().lower() == "passive"
    return MIN_PARALLEL_WORK_PASSIVE if passive else MIN_PARALLEL_WORK_SPINNING


def _build() -> ModuleType | None:
    from corral.paths import cache_dir

    try:
        signature = _cpu_signature()
        return load_extension(
            f"corral_cpu_kernels_{signature}",
            _SOURCES,
            cache_dir() / "kernels" / signature,
            cflags=_cflags(),
            ldflags=_LDFLAGS,
            headers=_HEADERS,
        )
    except Exception as error:  # no compiler, no ninja, unsupported flags, lock timeout...
        logger.warning("corral CPU kernels unavailable, using PyTorch ops instead: %s", error)
        return None


def load_extension(
    name: str,
    sources: list[Path],
    build_dir: Path,
    *,
    cflags: list[str],
    ldflags: list[str],
    headers: list[Path] | None = None,
    lock_timeout_s: float = BUILD_LOCK_TIMEOUT_S,
) -> ModuleType:
    """Import the C++ extension `name` from build_dir, building it from sources first if needed."""
    import torch  # the library links libtorch: torch's libraries must be loaded first

    build_dir.mkdir(parents=True, exist_ok=True)
    library = build_dir / f"{name}.so"
    stamp = build_dir / _STAMP_NAME
    text = name + " ".join(cflags + ldflags) + torch.__version__ + sys.version + platform.machine()
    text += "".join(source.read_text() for source in [*(headers or []), *sources])
    signature = hashlib.sha256(text.encode()).hexdigest()
    if _is_built(library, stamp, signature):
        return _import_library(name, library)
    with build_lock(build_dir / _BUILD_LOCK_NAME, lock_timeout_s):
        if _is_built(library, stamp, signature):  # built by the holder this process waited for
            return _import_library(name, library)
        stamp.unlink(missing_ok=True)
        stale = build_dir / _TORCH_LOCK_NAME
        if stale.exists():
            logger.warning("removing %s, left behind by a process killed while building", stale)
            stale.unlink(missing_ok=True)
        module = _build_locked(name, sources, build_dir, cflags, ldflags, headers or [])
        partial = stamp.with_suffix(".partial")
        partial.write_text(signature)
        partial.replace(stamp)
        return module


def _is_built(library: Path, stamp: Path, signature: str) -> bool:
    try:
        return library.is_file() and stamp.read_text() == signature
    except OSError:
        return False


def _import_library(name: str, library: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, library)
    if spec is None or spec.loader is None:
        raise ImportError(f"{library} is not an importable extension module")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _build_locked(
    name: str,
    sources: list[Path],
    build_dir: Path,
    cflags: list[str],
    ldflags: list[str],
    headers: list[Path],
) -> ModuleType:
    from torch.utils.cpp_extension import load

    # ninja is installed next to the interpreter, which need not be on PATH (.venv/bin/python).
    bin_dir = str(Path(sys.executable).parent)
    if bin_dir not in os.environ.get("PATH", "").split(os.pathsep):
        os.environ["PATH"] = bin_dir + os.pathsep + os.environ.get("PATH", "")
    # Compile copies kept in the (content-keyed) build directory: ninja records source paths,
    # so checkouts sharing a cache would otherwise rebuild each other's kernels.
    copies = []
    for source in [*(headers or []), *sources]:
        copy = build_dir / source.name
        if not copy.is_file() or copy.read_text() != source.read_text():
            copy.write_text(source.read_text())
        if source.suffix == ".cpp":
            copies.append(str(copy))
    logger.info("building %s in %s (a minute the first time)", name, build_dir)
    return load(
        name=name,
        sources=copies,
        extra_cflags=cflags,
        extra_ldflags=ldflags,
        build_directory=str(build_dir),
        verbose=False,
    )


@contextlib.contextmanager
def build_lock(path: Path, timeout_s: float = BUILD_LOCK_TIMEOUT_S) -> Iterator[None]:
    """Hold an exclusive flock on path (released by the OS if this process dies).

    Raises RuntimeError, naming the lock and its holder's pid, when not acquired in timeout_s.
    """
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        _acquire(fd, path, timeout_s)
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        yield
    finally:
        os.close(fd)  # releases the flock


def _acquire(fd: int, path: Path, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    logged = False
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            pass
        holder = _holder(path)
        if not logged:
            logger.warning("waiting up to %.0f s for %s, held by %s", timeout_s, path, holder)
            logged = True
        if time.monotonic() >= deadline:
            raise RuntimeError(
                f"gave up after {timeout_s:g} s waiting for the kernel build lock {path}, held "
                f"by {holder}; a dead holder would have released it, so that process is alive "
                "(still building, or stuck: end it and start again)"
            )
        time.sleep(_LOCK_POLL_S)


def _holder(path: Path) -> str:
    try:
        pid = path.read_text().strip()
    except OSError:
        pid = ""
    return f"pid {pid}" if pid.isdigit() else "an unknown process"
