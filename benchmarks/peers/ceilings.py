"""The machine's own ceilings, measured in the same run as the servers: read bandwidth (a torch
float32 sum over a buffer the size of the model's weights, best of 5) and torch bf16 F.linear
GFLOP/s on the model's layer shapes at M=1 (as weight streaming GB/s too), M=32 (a 32-request
decode step) and a prefill M; plus what lscpu says (model name, avx512 / amx flags)."""

from __future__ import annotations

import os
import subprocess
from typing import Any

from corral.model.cpu_features import cpu_isa
from corral.sim.cost.measure import best_time_s

# SmolLM-135M's linears per layer, (in, out): fused q+k+v, o, fused gate+up, down.
LAYER_SHAPES = ((576, 960), (576, 576), (576, 3072), (1536, 576))
WEIGHT_BYTES = 269_060_552  # the bf16 safetensors file of the model


def cpu_facts() -> dict[str, Any]:
    text = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    fields = {}
    for line in text.splitlines():
        key, _, value = line.partition(":")
        fields[key.strip()] = value.strip()
    flags = fields.get("Flags", "").split()
    interesting = [f for f in flags if f.startswith(("avx", "amx", "fma")) or "vnni" in f]
    return {
        "model_name": fields.get("Model name", "?"),
        "cpus": os.cpu_count(),
        "threads_per_core": fields.get("Thread(s) per core"),
        "flags_of_note": interesting,
        "avx512": any(f.startswith("avx512") for f in flags),
        "avx512_bf16": "avx512_bf16" in flags,
        "amx": any(f.startswith("amx") for f in flags),
        "cpu_isa_cap": cpu_isa(),
        "onednn_max_cpu_isa": os.environ.get("ONEDNN_MAX_CPU_ISA"),
    }


def read_bandwidth_gbs(num_bytes: int = WEIGHT_BYTES, repeats: int = 5) -> float:
    import torch

    buffer = torch.ones(num_bytes // 4, dtype=torch.float32)
    buffer.sum()
    seconds = best_time_s(lambda: buffer.sum(), repeats)
    return buffer.numel() * 4 / seconds / 1e9


def linear_gflops(
    m: int, repeats: int = 5, layers: int = 4, dtype: str = "bfloat16"
) -> dict[str, Any]:
    """F.linear over `layers` layers' worth of the model's shapes at M rows (best of repeats)."""
    import torch
    import torch.nn.functional as F

    torch_dtype = getattr(torch, dtype)
    weights = [
        (torch.randn(n_out, n_in) * 0.02).to(torch_dtype)
        for _ in range(layers)
        for n_in, n_out in LAYER_SHAPES
    ]
    inputs = {k: torch.randn(m, k).to(torch_dtype) for k in {s[0] for s in LAYER_SHAPES}}

    def step() -> None:
        for weight in weights:
            F.linear(inputs[weight.shape[1]], weight)

    step()
    seconds = best_time_s(step, repeats)
    flops = sum(2 * m * w.shape[0] * w.shape[1] for w in weights)
    weight_bytes = sum(w.numel() * w.element_size() for w in weights)
    return {
        "m": m,
        "dtype": dtype,
        "layers": layers,
        "gflops": flops / seconds / 1e9,
        "weight_gbs": weight_bytes / seconds / 1e9,
        "ms_per_layer": seconds / layers * 1e3,
    }


def measure(prefill_m: int = 256) -> dict[str, Any]:
    import torch

    return {
        "cpu": cpu_facts(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "read_bandwidth_gbs": read_bandwidth_gbs(),
        "read_buffer_bytes": WEIGHT_BYTES,
        # M=1 over all 30 layers (188 MB of weights, more than the caches); larger M over 4.
        "linear_bf16": [linear_gflops(1, layers=30)]
        + [linear_gflops(m, repeats=3) for m in (32, prefill_m)],
        "linear_fp32": [linear_gflops(m, repeats=3, dtype="float32") for m in (1, 32, prefill_m)],
        "load_average": os.getloadavg(),
    }


if __name__ == "__main__":
    import json

    print(json.dumps(measure(), indent=2))
