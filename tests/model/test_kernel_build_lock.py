"""A start killed while building or loading the C++ kernels must not block later starts.

The build tests use a one-function extension (seconds to compile), not corral's kernels.
"""

from __future__ import annotations

import logging
import os
import re
import select
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from corral.model import kernels
from corral.model.kernels import build_lock, cpu_kernels

REPO_ROOT = Path(__file__).resolve().parents[2]
# Hang guards only: a start blocked on a lock would otherwise hang the suite forever.
START_GUARD_S = 300
PAUSED_GUARD_S = 120

# A start of the one-function extension. With "pause", torch's load() stops inside the window in
# which it holds its own `lock` file, where a killed process leaves that file behind.
START_SCRIPT = """
import sys, time
from pathlib import Path
import torch.utils.cpp_extension as cpp_extension
from corral.model.kernels import load_extension

build_dir, source, mode = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
if mode == "pause":
    assert hasattr(cpp_extension, "_write_ninja_file_and_build_library")

    def pause(**kwargs):
        print("building", flush=True)
        time.sleep(3600)

    cpp_extension._write_ninja_file_and_build_library = pause
module = load_extension("corral_test_answer", [source], build_dir, cflags=[], ldflags=[])
print("answer", module.answer(), flush=True)
"""

ANSWER_SOURCE = """#include <pybind11/pybind11.h>
int answer() { return 42; }
PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) { m.def("answer", &answer); }
"""


def _can_compile() -> bool:
    return shutil.which("c++") is not None and (
        shutil.which("ninja") is not None or (Path(sys.executable).parent / "ninja").exists()
    )


needs_compiler = pytest.mark.skipif(not _can_compile(), reason="no C++ compiler or ninja")


def answer_source(tmp_path: Path) -> Path:
    source = tmp_path / "answer.cpp"
    source.write_text(ANSWER_SOURCE)
    return source


def start(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(
            [sys.executable, "-c", *args],
            cwd=REPO_ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=START_GUARD_S,
        )
    except subprocess.TimeoutExpired:
        pytest.fail(f"a start still waited after {START_GUARD_S} s (blocked on a lock?)")


@needs_compiler
def test_a_start_killed_inside_the_build_does_not_block_the_next(tmp_path):
    source = answer_source(tmp_path)
    build_dir = tmp_path / "build"
    killed = subprocess.Popen(
        [sys.executable, "-c", START_SCRIPT, str(build_dir), str(source), "pause"],
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        ready, _, _ = select.select([killed.stdout], [], [], PAUSED_GUARD_S)
        assert ready and killed.stdout.readline().strip() == "building"
    finally:
        killed.send_signal(signal.SIGKILL)
        killed.wait()
    assert (build_dir / "lock").exists()  # torch's lock file, as a killed start leaves it
    assert (build_dir / "corral-build.lock").read_text().strip() == str(killed.pid)

    result = start(START_SCRIPT, str(build_dir), str(source), "build")
    assert result.returncode == 0, result.stderr
    assert "answer 42" in result.stdout
    assert not (build_dir / "lock").exists()


@needs_compiler
def test_a_stale_torch_lock_does_not_block_a_build_and_a_built_extension_loads_without_it(
    tmp_path,
):
    """One build (the slow part) serves both: built despite a stale torch lock; then, built,
    it loads while another process holds the build lock, the stale torch lock back."""
    source = answer_source(tmp_path)
    build_dir = tmp_path / "build"
    build_dir.mkdir()
    (build_dir / "lock").touch()
    first = start(START_SCRIPT, str(build_dir), str(source), "build")
    assert first.returncode == 0, first.stderr
    assert "answer 42" in first.stdout
    (build_dir / "lock").touch()
    with build_lock(build_dir / "corral-build.lock"):
        second = start(START_SCRIPT, str(build_dir), str(source), "build")
    assert second.returncode == 0, second.stderr
    assert "answer 42" in second.stdout


def test_prebuilt_kernels_load_despite_a_stale_torch_lock(tmp_path):
    if cpu_kernels() is None:
        pytest.skip("the CPU kernels are unavailable here (no C++ toolchain?)")
    from corral.paths import cache_dir

    built = cache_dir() / "kernels" / kernels._cpu_signature()
    cache = tmp_path / "cache"
    copy = cache / "kernels" / built.name
    shutil.copytree(built, copy)
    (copy / "lock").touch()  # left by a start killed inside torch's load()
    env = {**os.environ, "CORRAL_CACHE_DIR": str(cache)}
    script = "import sys\nfrom corral.model.kernels import cpu_kernels\n"
    script += "sys.exit(0 if cpu_kernels() is not None else 3)"
    # A start that needed the build lock would wait BUILD_LOCK_TIMEOUT_S, past the guard.
    with build_lock(copy / "corral-build.lock"):
        result = start(script, env=env)
    assert result.returncode == 0, result.stderr


def test_a_lock_wait_that_does_not_end_says_why_and_gives_up(tmp_path, caplog):
    path = tmp_path / "corral-build.lock"
    caplog.set_level(logging.WARNING, logger="corral.model.kernels")
    reason = f"gave up .* {re.escape(str(path))}, held by pid {os.getpid()}"
    held = build_lock(path)
    with held, pytest.raises(RuntimeError, match=reason), build_lock(path, timeout_s=0.5):
        pass
    assert any(str(path) in record.getMessage() for record in caplog.records)
    with build_lock(path, timeout_s=0.5):  # released by its holder: free again
        pass
