"""LoRA adapters on disk (PEFT format), checked against the base model without loading tensors.

A PEFT directory holds adapter_config.json and adapter_model.safetensors, whose tensors are
named base_model.model.model.layers.{i}.{self_attn|mlp}.{module}.lora_{A|B}.weight with A
[rank, in_features] and B [out_features, rank]. Everything here is torch-free: the frontend,
the scheduler and the simulator read adapters' identity and size from it.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import struct
from dataclasses import dataclass
from pathlib import Path

from corral.model.arch import ModelArch

CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
# The linear modules an adapter may target, and the decoder block holding each.
TARGET_MODULES = {
    "q_proj": "self_attn",
    "k_proj": "self_attn",
    "v_proj": "self_attn",
    "o_proj": "self_attn",
    "gate_proj": "mlp",
    "up_proj": "mlp",
    "down_proj": "mlp",
}
_TENSOR_NAME = re.compile(
    r"base_model\.model\.model\.layers\.(\d+)\.(self_attn|mlp)\.(\w+)\.lora_([AB])\.weight"
)
_DTYPE_BYTES = {"F32": 4, "F16": 2, "BF16": 2}
_MAX_HEADER_BYTES = 100 * 2**20


class AdapterError(ValueError):
    """An adapter the engine cannot serve; the message names the value and the limit."""


@dataclass(frozen=True, slots=True)
class LoRARequest:
    """Generate with the adapter in the PEFT directory `path`, known to the engine as `name`."""

    name: str
    path: str


@dataclass(frozen=True, slots=True)
class AdapterRef:
    """A checked adapter: where it is, what it is (a content hash), its size."""

    name: str
    path: str
    content_sha256: str
    rank: int  # the largest rank of any of its modules
    num_params: int
    num_bytes: int  # of its tensors as stored on disk

    @property
    def key(self) -> str:
        """Its identity in the KV prefix cache and the adapter caches: a reloaded adapter with
        new weights gets a new key, so it never reuses KV or weights of the old one."""
        return f"{self.name}@{self.content_sha256[:16]}"


def module_shapes(arch: ModelArch) -> dict[str, tuple[int, int]]:
    """(in_features, out_features) of each target module of the base model."""
    hidden, intermediate = arch.hidden_size, arch.intermediate_size
    return {
        "q_proj": (hidden, arch.q_size),
        "k_proj": (hidden, arch.kv_size),
        "v_proj": (hidden, arch.kv_size),
        "o_proj": (arch.q_size, hidden),
        "gate_proj": (hidden, intermediate),
        "up_proj": (hidden, intermediate),
        "down_proj": (intermediate, hidden),
    }


def read_adapter_config(path: str | Path) -> dict:
    directory = Path(path)
    config_path = directory / CONFIG_FILE
    if not directory.is_dir():
        raise AdapterError(f"LoRA adapter path {str(path)!r} is not a directory")
    if not config_path.is_file():
        raise AdapterError(f"LoRA adapter {str(path)!r} has no {CONFIG_FILE}")
    try:
        config = json.loads(config_path.read_text())
    except (OSError, ValueError) as error:
        raise AdapterError(
            f"LoRA adapter {str(path)!r}: unreadable {CONFIG_FILE}: {error}"
        ) from None
    if not isinstance(config, dict):
        raise AdapterError(f"LoRA adapter {str(path)!r}: {CONFIG_FILE} is not a JSON object")
    return config


def read_safetensors_header(path: Path) -> dict[str, dict]:
    """The tensor table of a .safetensors file: name -> {dtype, shape, data_offsets}."""
    try:
        with open(path, "rb") as handle:
            (length,) = struct.unpack("<Q", handle.read(8))
            if length > _MAX_HEADER_BYTES:
                raise AdapterError(f"{path}: safetensors header of {length} bytes")
            header = json.loads(handle.read(length))
    except (OSError, struct.error, ValueError) as error:
        if isinstance(error, AdapterError):
            raise
        raise AdapterError(f"{path}: not a readable safetensors file ({error})") from None
    header.pop("__metadata__", None)
    return header


def module_scaling(config: dict, module_name: str, rank: int) -> float:
    """The factor on B @ A: lora_alpha / rank, or lora_alpha / sqrt(rank) with rsLoRA; an
    alpha_pattern entry whose key ends the module's name overrides lora_alpha."""
    alpha = config.get("lora_alpha", 8)
    for pattern, value in (config.get("alpha_pattern") or {}).items():
        if re.fullmatch(rf"(.*\.)?{pattern}", module_name):
            alpha = value
            break
    return alpha / (math.sqrt(rank) if config.get("use_rslora") else rank)


def inspect_adapter(name: str, path: str | Path, arch: ModelArch, max_lora_rank: int) -> AdapterRef:
    """Check that the adapter at path fits the base model `arch` and the rank limit; raise
    AdapterError naming what does not. Reads the config and the tensor table, hashes the files."""
    directory = Path(path)
    config = read_adapter_config(directory)
    where = f"LoRA adapter {name!r} ({directory})"
    peft_type = config.get("peft_type", "LORA")
    if peft_type != "LORA":
        raise AdapterError(f"{where}: peft_type {peft_type!r} is not supported (only LORA)")
    for option, allowed in (("bias", "none"), ("use_dora", False), ("fan_in_fan_out", False)):
        value = config.get(option, allowed)
        if value not in (allowed, None):
            raise AdapterError(f"{where}: {option}={value!r} is not supported (only {allowed!r})")
    if config.get("modules_to_save"):
        raise AdapterError(
            f"{where}: modules_to_save {config['modules_to_save']!r} is not supported (an "
            "adapter may only add low-rank deltas to q/k/v/o/gate/up/down projections)"
        )
    weights = directory / WEIGHTS_FILE
    if not weights.is_file():
        raise AdapterError(f"{where}: no {WEIGHTS_FILE} (other weight formats are not supported)")
    header = read_safetensors_header(weights)
    shapes = module_shapes(arch)
    ranks: dict[tuple[int, str], dict[str, int]] = {}
    num_params = num_bytes = 0
    for tensor_name, entry in header.items():
        match = _TENSOR_NAME.fullmatch(tensor_name)
        if match is None or TARGET_MODULES.get(match.group(3)) != match.group(2):
            raise AdapterError(
                f"{where}: tensor {tensor_name!r} is not a LoRA A/B weight of a supported module "
                f"(supported: {', '.join(TARGET_MODULES)})"
            )
        layer, module, half = int(match.group(1)), match.group(3), match.group(4)
        if layer >= arch.num_layers:
            raise AdapterError(
                f"{where}: tensor {tensor_name!r} is for layer {layer}; the base model has "
                f"{arch.num_layers} layers"
            )
        if arch.is_moe_layer(layer) and match.group(2) == "mlp":
            raise AdapterError(
                f"{where}: tensor {tensor_name!r} adapts the MLP of layer {layer}, which is a "
                "mixture of experts in the base model (adapters of experts are not supported)"
            )
        dtype, shape = entry.get("dtype"), entry.get("shape")
        if dtype not in _DTYPE_BYTES:
            raise AdapterError(f"{where}: tensor {tensor_name!r} has dtype {dtype}")
        in_features, out_features = shapes[module]
        if not (isinstance(shape, list) and len(shape) == 2):
            raise AdapterError(f"{where}: tensor {tensor_name!r} has shape {shape}")
        rank, expected = (shape[0], in_features) if half == "A" else (shape[1], out_features)
        actual = shape[1] if half == "A" else shape[0]
        if actual != expected:
            side = "in_features" if half == "A" else "out_features"
            raise AdapterError(
                f"{where}: tensor {tensor_name!r} has shape {shape}, but the base model's "
                f"{module} has {side} {expected}: the adapter was trained for another base model"
            )
        if not 1 <= rank <= max_lora_rank:
            raise AdapterError(
                f"{where}: {module} of layer {layer} has rank {rank}, above max_lora_rank "
                f"{max_lora_rank} (raise --max-lora-rank to serve it)"
            )
        ranks.setdefault((layer, module), {})[half] = rank
        num_params += shape[0] * shape[1]
        num_bytes += shape[0] * shape[1] * _DTYPE_BYTES[dtype]
    if not ranks:
        raise AdapterError(f"{where}: {WEIGHTS_FILE} holds no LoRA weights")
    for (layer, module), halves in ranks.items():
        if set(halves) != {"A", "B"} or halves["A"] != halves["B"]:
            raise AdapterError(
                f"{where}: {module} of layer {layer} needs lora_A and lora_B of one rank "
                f"(found {halves})"
            )
    digest = hashlib.sha256()
    for file in (directory / CONFIG_FILE, weights):
        with open(file, "rb") as handle:
            digest.update(hashlib.file_digest(handle, "sha256").digest())
    max_rank = max(halves["A"] for halves in ranks.values())
    return AdapterRef(name, str(directory), digest.hexdigest(), max_rank, num_params, num_bytes)
