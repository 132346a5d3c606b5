"""Tensor parallelism (`--tensor-parallel-size N`): the sharding rules and the helpers that
rank 0 (corral/model/tp_group.py) and the workers (corral/model/tp_worker.py) share.

Megatron-style: rank r of N holds a share of the KV heads (K/N each when N divides K; else the
first K % N ranks take one more, e.g. SmolLM-135M's 3 KV heads over 2 ranks as 2 + 1) with the
query heads that attend to them, as rows of the fused qkv weight and bias; a share of the MLP's
intermediate columns (gate and up rows); and the matching input columns of o and down, whose
partial outputs are summed by an all-reduce (two per layer; o's and down's biases count once:
rank 0 keeps them, the others hold zeros). Embeddings, norms and the LM head are replicated;
logits are computed and sampled on rank 0 only. Each rank reads the checkpoint and keeps its
slice. Its KV pool holds only its KV heads, so a block costs about 1/N of the bytes on each rank,
and the block count (rank 0, which holds the most heads, decides it) is the same everywhere.

Mixture-of-experts blocks split either by whole experts (`--enable-expert-parallel`) or by each
expert's intermediate columns, with one all-reduce per block either way: expert_parallel.py.

Threads: each rank runs on (num_threads or torch's default) // N torch threads (at least 1), so
N ranks on one machine do not oversubscribe its cores.
"""

from __future__ import annotations

import dataclasses
import io
import os
import pickle
import struct
from pathlib import Path
from typing import IO, Any

import torch

from corral.model.arch import ModelArch
from corral.model.expert_parallel import MoEShardRule, check_moe_shardable, prepare_moe_shard
from corral.model.loader import iter_safetensors, safetensors_files
from corral.model.models.llama import LlamaFamilyModel
from corral.model.rank_split import split

__all__ = ["ShardRule", "check_shardable", "load_shard", "local_arch", "split"]

TIMEOUT_S = float(os.environ.get("CORRAL_TP_TIMEOUT_S", "120"))

_HEADER = struct.Struct("<Q")


# ----- sharding ------------------------------------------------------------------------------


def check_shardable(arch: ModelArch, size: int, expert_parallel: bool = False) -> None:
    """Raise ValueError unless the model splits over size ranks: every rank needs a KV head
    (query heads follow their KV head; uneven splits are allowed, e.g. 3 KV heads as 2 + 1),
    and its MoE blocks need an expert (expert_parallel) or intermediate columns per rank."""
    check_moe_shardable(arch, size, expert_parallel)
    if arch.num_kv_heads < size or arch.num_heads % arch.num_kv_heads:
        raise ValueError(
            f"--tensor-parallel-size {size} splits the model by KV heads (each with its group "
            f"of query heads), and num_key_value_heads {arch.num_kv_heads} with "
            f"num_attention_heads {arch.num_heads} (config.json) cannot give each of {size} "
            "ranks a KV head (replicating KV heads is not supported yet): use a size of at "
            f"most {arch.num_kv_heads}"
        )


def local_arch(arch: ModelArch, rank: int, size: int) -> ModelArch:
    """The shapes rank computes with (its heads and its slice of the MLP)."""
    num_kv_heads = split(arch.num_kv_heads, size, rank)[1]
    return dataclasses.replace(
        arch,
        num_heads=num_kv_heads * (arch.num_heads // arch.num_kv_heads),
        num_kv_heads=num_kv_heads,
        intermediate_size=split(arch.intermediate_size, size, rank)[1],
        shared_expert_intermediate_size=split(arch.shared_expert_intermediate_size, size, rank)[1],
    )


class ShardRule:
    """Called with each checkpoint tensor at load: returns this rank's slice (a copy, so the
    full tensor is freed), or the tensor itself where it is replicated. MoE blocks' tensors go
    to MoEShardRule (expert_parallel.py)."""

    def __init__(
        self, arch: ModelArch, rank: int, size: int, expert_parallel: bool = False
    ) -> None:
        self.rank = rank
        self.moe = MoEShardRule(arch, rank, size, expert_parallel) if arch.is_moe else None
        kv_first, kv_count = split(arch.num_kv_heads, size, rank)
        group, dim = arch.num_heads // arch.num_kv_heads, arch.head_dim
        q_rows = (kv_first * group * dim, kv_count * group * dim)
        kv_rows = (kv_first * dim, kv_count * dim)
        mlp = split(arch.intermediate_size, size, rank)
        # part -> (dimension to slice, (first, count)) of the weight
        self.slices = {
            "self_attn.q_proj": (0, q_rows),
            "self_attn.k_proj": (0, kv_rows),
            "self_attn.v_proj": (0, kv_rows),
            "self_attn.o_proj": (1, q_rows),
            "mlp.gate_proj": (0, mlp),
            "mlp.up_proj": (0, mlp),
            "mlp.down_proj": (1, mlp),
        }

    def __call__(self, name: str, tensor: torch.Tensor) -> torch.Tensor:
        if not name.startswith("model.layers."):
            return tensor
        rest = name.split(".", 3)[3]
        part, _, kind = rest.rpartition(".")
        if part not in self.slices:
            moe_part = _moe_part(rest) if self.moe is not None else None
            return tensor if moe_part is None else self.moe(moe_part, tensor)
        dim, (first, count) = self.slices[part]
        if dim == 1 and kind == "bias":  # a row-parallel bias: added once, after the all-reduce
            return tensor if self.rank == 0 else torch.zeros_like(tensor)
        part_tensor = tensor.narrow(dim, first, count)
        return part_tensor.clone(memory_format=torch.contiguous_format)


def _moe_part(rest: str) -> str | None:
    """A layer's tensor name relative to its MoE block ("experts.3.w1.weight"), or None. The
    dense layers of MoE models ("mlp.gate_proj") never reach here: ShardRule slices them."""
    for prefix in ("block_sparse_moe.", "mlp."):
        if rest.startswith(prefix):
            return rest.removeprefix(prefix)
    return None


def load_shard(
    model_dir: str | Path,
    arch: ModelArch,
    dtype: torch.dtype,
    device: torch.device,
    max_len: int,
    rank: int,
    size: int,
    expert_parallel: bool = False,
) -> LlamaFamilyModel:
    """This rank's slice of the model (its all-reduce is set by the caller, with
    expert_parallel.attach_all_reduce)."""
    model = LlamaFamilyModel(local_arch(arch, rank, size), dtype, device, max_len)
    model.shard = ShardRule(arch, rank, size, expert_parallel)
    prepare_moe_shard(model, arch, rank, size, expert_parallel)
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


class _Pickler(pickle.Pickler):
    """Pickles CPU tensors as numpy arrays (torch's own reducer costs milliseconds a step)."""

    def reducer_override(self, obj: Any) -> Any:
        if type(obj) is torch.Tensor and obj.device.type == "cpu" and obj.dtype != torch.bfloat16:
            return torch.from_numpy, (obj.numpy(),)
        return NotImplemented


def encode(message: Any) -> bytes:
    """message as one length-prefixed pickle (read back by read_message)."""
    buffer = io.BytesIO()
    buffer.write(bytes(_HEADER.size))
    _Pickler(buffer, protocol=pickle.HIGHEST_PROTOCOL).dump(message)
    data = buffer.getbuffer()
    _HEADER.pack_into(data, 0, len(data) - _HEADER.size)
    return bytes(data)


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
