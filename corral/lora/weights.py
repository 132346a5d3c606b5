"""Read a checked adapter's tensors into host memory, scaled and cast for the compute slots."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors import safe_open

from corral.lora.adapter import (
    WEIGHTS_FILE,
    AdapterError,
    AdapterRef,
    module_scaling,
    read_adapter_config,
)

_PREFIX = "base_model.model."


class AdapterWeights:
    """modules[(layer, module name)] = (a [rank, in], b [out, rank] times the scaling)."""

    __slots__ = ("ref", "modules", "num_bytes")

    def __init__(self, ref: AdapterRef, modules: dict[tuple[int, str], tuple[torch.Tensor, ...]]):
        self.ref = ref
        self.modules = modules
        self.num_bytes = sum(t.numel() * t.element_size() for ab in modules.values() for t in ab)


def load_adapter_weights(ref: AdapterRef, dtype: torch.dtype) -> AdapterWeights:
    """The adapter's A and scaled B per (layer, module), in dtype on the CPU. Raises
    AdapterError when the files changed since the adapter was checked (other content)."""
    config = read_adapter_config(ref.path)
    halves: dict[tuple[int, str], dict[str, torch.Tensor]] = {}
    with safe_open(str(Path(ref.path) / WEIGHTS_FILE), framework="pt") as handle:
        for name in handle.keys():  # noqa: SIM118 (safe_open is not a mapping)
            # base_model.model.model.layers.{i}.{block}.{module}.lora_{A|B}.weight
            parts = name.removeprefix(_PREFIX).split(".")
            layer, module, half = int(parts[2]), parts[4], parts[5][-1]
            halves.setdefault((layer, module), {})[half] = handle.get_tensor(name)
    modules = {}
    for (layer, module), pair in halves.items():
        a, b = pair["A"].float(), pair["B"].float()
        if a.shape[0] > ref.rank or b.shape[1] != a.shape[0]:
            raise AdapterError(f"LoRA adapter {ref.name!r} changed on disk since it was loaded")
        module_name = f"model.layers.{layer}.{_block(module)}.{module}"
        scaling = module_scaling(config, module_name, a.shape[0])
        modules[(layer, module)] = (a.to(dtype), (b * scaling).to(dtype))
    return AdapterWeights(ref, modules)


def _block(module: str) -> str:
    return "self_attn" if module in ("q_proj", "k_proj", "v_proj", "o_proj") else "mlp"
