"""Shared pieces of the benchmark scripts (the reference model and workload now live in
corral.bench.reference, so `corral bench` and these scripts measure the same thing)."""

from __future__ import annotations

import os
from pathlib import Path

from corral.bench.reference import azure_conv_options, smollm_shaped_model

__all__ = ["REPO", "azure_conv_lengths", "data_dir", "smollm_shaped_model"]

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
