"""Tensor parallelism (`--tensor-parallel-size N`): the sharding rules and the helpers that
rank 0 (corral/model/tp_group.py) and the workers (corral/model/tp_worker.py) share.

Megatron-style: rank r of N holds query heads [r*H/N, (r+1)*H/N) and the matching KV heads (their
rows of the fused qkv weight and bias), columns [r*I/N, (r+1)*I/N) of the gate and up
projections, and the matching input columns of o and down, whose partial outputs are summed by an
all-reduce (two per layer; o's and down's biases count once: rank 0 keeps them, the others hold
zeros). Embeddings, norms and the LM head are replicated; logits are computed and sampled on rank
0 only. Each rank reads the checkpoint and keeps its slice. Its KV pool holds only its KV heads,
so a block costs 1/N of the bytes on each rank, and the block count (rank 0 decides it) is the
same everywhere.

Threads: each rank runs on (num_threads or torch's default) // N torch threads (at least 1), so
N ranks on one machine do not oversubscribe its cores.
"""

from __future__ import annotations

import dataclasses
import os
import pickle
import struct
from pathlib import Path
from typing import IO, Any

import torch

from corral.model.arch import ModelArch
from corral.model.loader import iter_safetensors, safetensors_files
from corral.model.models.llama import LlamaFamilyModel

TIMEOUT_S = float(os.environ.get("CORRAL_TP_TIMEOUT_S", "120"))

# Hugging Face names (within a decoder layer) of the column-parallel linears, whose output rows
# (and biases) are split, and of the row-parallel ones, whose input columns are split.
_COLUMN_PARALLEL = {
    "self_attn.q_proj",
    "self_attn.k_proj",
    "self_attn.v_proj",
    "mlp.gate_proj",
    "mlp.up_proj",
}
_ROW_PARALLEL = {"self_attn.o_proj", "mlp.down_proj"}
_HEADER = struct.Struct("<Q")


# ----- sharding ------------------------------------------------------------------------------


def check_shardable(arch: ModelArch, size: int) -> None:
    """Raise ValueError unless the model splits evenly over size ranks."""
    if arch.num_experts:
        raise ValueError(
            f"--tensor-parallel-size {size}: mixture-of-experts models ({arch.architecture}, "
            f"{arch.num_experts} experts) are not supported with tensor parallelism yet; use "
            "--tensor-parallel-size 1"
        )
    uneven = [
        f"{label} {value}"
        for label, value in (
            ("num_attention_heads", arch.num_heads),
            ("num_key_value_heads", arch.num_kv_heads),
            ("intermediate_size", arch.intermediate_size),
        )
        if value % size
    ]
    if uneven:
        raise ValueError(
            f"--tensor-parallel-size {size} must divide the model's attention heads, KV heads "
            f"and MLP width, and {', '.join(uneven)} (config.json) "
            f"{'is' if len(uneven) == 1 else 'are'} not a multiple of {size}"
        )


def local_arch(arch: ModelArch, size: int) -> ModelArch:
    """The shapes one rank computes with (its heads and its slice of the MLP)."""
    return dataclasses.replace(
        arch,
        num_heads=arch.num_heads // size,
        num_kv_heads=arch.num_kv_heads // size,
        intermediate_size=arch.intermediate_size // size,
    )


class ShardRule:
    """Called with each checkpoint tensor at load: returns this rank's slice (a copy, so the
    full tensor is freed), or the tensor itself where it is replicated."""

    def __init__(self, rank: int, size: int) -> None:
        self.rank = rank
        self.size = size

    def __call__(self, name: str, tensor: torch.Tensor) -> torch.Tensor:
        if not name.startswith("model.layers."):
            return tensor
        part, _, kind = name.split(".", 3)[3].rpartition(".")
        if part in _COLUMN_PARALLEL:
            return self._slice(tensor, 0)
        if part in _ROW_PARALLEL:
            if kind == "bias":  # added once, after the all-reduce
                return tensor if self.rank == 0 else torch.zeros_like(tensor)
            return self._slice(tensor, 1)
        return tensor

    def _slice(self, tensor: torch.Tensor, dim: int) -> torch.Tensor:
        width = tensor.shape[dim] // self.size
        part = tensor.narrow(dim, self.rank * width, width)
        return part.clone(memory_format=torch.contiguous_format)


def load_shard(
    model_dir: str | Path,
    arch: ModelArch,
    dtype: torch.dtype,
    device: torch.device,
    max_len: int,
    rank: int,
    size: int,
) -> LlamaFamilyModel:
    """This rank's slice of the model (its all_reduce is set by the caller)."""
    model = LlamaFamilyModel(local_arch(arch, size), dtype, device, max_len)
    model.shard = ShardRule(rank, size)
    try:
        model.load_weights(iter_safetensors(safetensors_files(model_dir)))
    except ValueError as error:
        raise ValueError(f"{model_dir}: {error}") from error
    return model


# ----- devices, threads, messages ------------------------------------------------------------


def backend_for(device: torch.device) -> str:
    return "nccl" if device.type == "cuda" else "gloo"


def rank_device(device: torch.device, rank: int) -> torch.device:
    """Rank r runs on cuda:r (rank 0 on the engine's device); every CPU rank on the CPU."""
    return torch.device("cuda", rank) if device.type == "cuda" else device


def threads_per_rank(num_threads: int, size: int) -> int:
    return max(1, (num_threads or torch.get_num_threads()) // size)


def to_device(value: Any, device: torch.device) -> Any:
    """value (tensors, lists, tuples, dataclasses of them) with every tensor on device."""
    if isinstance(value, torch.Tensor):
        return value if value.device == device else value.to(device)
    if isinstance(value, list):
        return [to_device(item, device) for item in value]
    if isinstance(value, tuple):
        return tuple(to_device(item, device) for item in value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        names = [f.name for f in dataclasses.fields(value)]
        return type(value)(**{n: to_device(getattr(value, n), device) for n in names})
    return value


def encode(message: Any) -> bytes:
    data = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    return _HEADER.pack(len(data)) + data


def read_message(stream: IO[bytes]) -> Any:
    """The next message on stream, or None at EOF (the other side has gone)."""
    header = stream.read(_HEADER.size)
    if len(header) < _HEADER.size:
        return None
    (length,) = _HEADER.unpack(header)
    data = stream.read(length)
    if len(data) < length:
        return None
    return pickle.loads(data)
