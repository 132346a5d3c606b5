"""Shared pieces of the benchmark scripts (the reference model and workload now live in
corral.bench.reference, so `corral bench` and these scripts measure the same thing)."""

from __future__ import annotations

import os
import platform
from pathlib import Path
from typing import Any

from corral.bench.reference import azure_conv_options, smollm_shaped_model

__all__ = ["REPO", "azure_conv_lengths", "cpu_name", "data_dir", "machine", "smollm_shaped_model"]

REPO = Path(__file__).resolve().parents[1]


def data_dir() -> Path:
    return Path(os.environ.get("CORRAL_DATA_DIR", REPO.parent / "shared" / "data"))


def azure_conv_lengths(
    num_requests: int, length_scale: float, max_model_len: int
) -> list[tuple[int, int]]:
    """(prompt, output) lengths of the first requests of the Azure conversation trace, each
    multiplied by length_scale (at least 1) and the prompt cut so prompt + output fits."""
    from corral.workloads import build_workload

    workload = build_workload(azure_conv_options(num_requests, length_scale, max_model_len))
    return [(spec.num_prompt_tokens, spec.num_output_tokens) for spec in workload]


def cpu_name() -> str:
    """The CPU's model name from /proc/cpuinfo (else the architecture)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.machine()


def machine(**extra: Any) -> dict[str, Any]:
    """The machine a figure was measured on (CPU, cores, load now, Python), plus extra."""
    return dict(
        cpu=cpu_name(),
        num_cores=os.cpu_count(),
        load_average_1m=round(os.getloadavg()[0], 2),
        python=platform.python_version(),
        platform=platform.platform(),
        **extra,
    )
