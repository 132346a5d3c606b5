"""The control plane, the simulator, the length predictors, the adapter checks and the routing
policies never import torch: every module of those packages, and the listed modules, is imported
in a fresh interpreter, and torch must not be loaded after."""

from __future__ import annotations

import pkgutil
import subprocess
import sys
from pathlib import Path

import corral

TORCH_FREE_PACKAGES = ("corral.core", "corral.sim", "corral.predict", "corral.workloads")
# Torch-free modules of packages that also hold torch code: the frontend's adapter checks, and
# the routing policies the router and the simulator share.
TORCH_FREE_MODULES = (
    "corral.lora.adapter",
    "corral.lora.registry",
    "corral.cluster.routing",
    "corral.cluster.prefix_index",
)


def _modules(package: str) -> list[str]:
    root = Path(corral.__file__).parent.joinpath(*package.split(".")[1:])
    names = [package]
    for info in pkgutil.walk_packages([str(root)], prefix=package + "."):
        names.append(info.name)
    return names


def test_every_module_is_found() -> None:
    modules = _modules("corral.core")
    assert "corral.core.scheduler" in modules
    assert "corral.core.policies.fcfs" in modules
    assert len(_modules("corral.sim")) > 10


def _import_in_fresh_interpreter(modules: list[str]) -> subprocess.CompletedProcess[str]:
    """Imports modules in order; exits 1 naming the first after which torch is loaded."""
    script = (
        "import importlib, sys\n"
        f"for name in {modules!r}:\n"
        "    importlib.import_module(name)\n"
        "    if 'torch' in sys.modules:\n"
        "        print('torch imported by', name); sys.exit(1)\n"
        "print('ok', len(sys.modules))\n"
    )
    return subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=300
    )


def test_control_plane_and_simulator_import_no_torch() -> None:
    modules = [name for package in TORCH_FREE_PACKAGES for name in _modules(package)]
    modules += TORCH_FREE_MODULES
    result = _import_in_fresh_interpreter(modules)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.startswith("ok")


def test_the_check_catches_a_module_that_imports_torch() -> None:
    result = _import_in_fresh_interpreter(["corral.core.scheduler", "corral.model.executor"])
    assert result.returncode == 1
    assert "torch imported by corral.model.executor" in result.stdout
