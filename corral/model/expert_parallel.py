"""How mixture-of-experts blocks split over the ranks of `--tensor-parallel-size N`.

Two ways, chosen by `--enable-expert-parallel` (ModelConfig.enable_expert_parallel):

- expert parallelism: rank r holds the experts split(num_experts, N, r) gives it, whole (a
  contiguous range; 5 experts over 2 ranks as 0-2 and 3-4), and runs only the rows of the step
  routed to them;
- plain tensor parallelism (the default): every rank holds every expert, each with its share of
  the intermediate columns (gate and up rows, down columns), like the dense MLP.

Either way the router is replicated (every rank routes every token identically, so rank 0's
per-expert token counts are the totals /metrics reports), a Qwen2-MoE shared expert is split by
intermediate columns like the dense MLP (its sigmoid gate replicated: gate * sum of partial outputs
is the sum of gate * partial outputs), so its work is spread evenly rather than piled onto one
rank, and each rank's partial block output (its experts' weighted rows plus its part of the shared
expert) is summed by one all-reduce per MoE block, inside SparseMoE.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from corral.model.arch import ModelArch
from corral.model.rank_split import split

if TYPE_CHECKING:
    from collections.abc import Callable

    from corral.model.models.llama import LlamaFamilyModel

# Per-expert checkpoint parts -> the dimension that holds the intermediate columns.
_EXPERT_PART_DIMS = {"gate_proj": 0, "up_proj": 0, "w1": 0, "w3": 0, "down_proj": 1, "w2": 1}


def check_moe_shardable(arch: ModelArch, size: int, expert_parallel: bool) -> None:
    """Raise ValueError unless the MoE blocks split over size ranks the chosen way (and refuse
    expert parallelism for a dense model)."""
    if not arch.is_moe:
        if expert_parallel:
            raise ValueError(
                f"--enable-expert-parallel: {arch.architecture} is a dense model (no experts); "
                "leave the flag off"
            )
        return
    flag = f"--tensor-parallel-size {size}"
    if expert_parallel and arch.num_experts < size:
        raise ValueError(
            f"{flag} --enable-expert-parallel gives each rank whole experts, and the model has "
            f"{arch.num_experts} (config.json): use a size of at most {arch.num_experts}"
        )
    if not expert_parallel and arch.moe_intermediate_size < size:
        raise ValueError(
            f"{flag} splits every expert's {arch.moe_intermediate_size} intermediate columns "
            f"over {size} ranks: use a size of at most {arch.moe_intermediate_size}, or "
            "--enable-expert-parallel"
        )
    shared = arch.shared_expert_intermediate_size
    if 0 < shared < size:
        raise ValueError(
            f"{flag} splits the shared expert's {shared} intermediate columns over {size} "
            f"ranks: use a size of at most {shared}"
        )


def local_expert_range(arch: ModelArch, rank: int, size: int, expert_parallel: bool):
    """(first expert, number of experts) that rank holds."""
    if not expert_parallel:
        return 0, arch.num_experts
    return split(arch.num_experts, size, rank)


class MoEShardRule:
    """The intermediate-column slice of one MoE checkpoint tensor (named relative to its block,
    e.g. "experts.3.w1.weight" or "shared_expert.down_proj.weight") for one rank; whole experts
    are chosen by SparseMoE itself (SparseMoE.set_local_experts)."""

    def __init__(self, arch: ModelArch, rank: int, size: int, expert_parallel: bool) -> None:
        self.expert_parallel = expert_parallel
        self.expert_columns = split(arch.moe_intermediate_size, size, rank)
        shared = arch.shared_expert_intermediate_size
        self.shared_columns = split(shared, size, rank) if shared else (0, 0)

    def __call__(self, name: str, tensor: torch.Tensor) -> torch.Tensor:
        parts = name.split(".")
        if parts[0] == "shared_expert" and len(parts) == 3:
            return _narrow(tensor, _EXPERT_PART_DIMS.get(parts[1]), self.shared_columns)
        if self.expert_parallel or parts[0] != "experts":
            return tensor
        if name == "experts.gate_up_proj":  # [E, 2I, H]: gate rows, then up rows
            gate, up = tensor.chunk(2, dim=1)
            columns = self.expert_columns
            return torch.cat([gate.narrow(1, *columns), up.narrow(1, *columns)], dim=1)
        if name == "experts.down_proj":  # [E, H, I]
            return _narrow(tensor, 2, self.expert_columns)
        if len(parts) == 4:
            return _narrow(tensor, _EXPERT_PART_DIMS.get(parts[2]), self.expert_columns)
        return tensor


def _narrow(tensor: torch.Tensor, dim: int | None, columns: tuple[int, int]) -> torch.Tensor:
    if dim is None:
        return tensor
    return tensor.narrow(dim, *columns).clone(memory_format=torch.contiguous_format)


def prepare_moe_shard(model: LlamaFamilyModel, arch: ModelArch, rank: int, size: int, ep: bool):
    """Give each MoE layer of model (before loading) its experts: a range of them with expert
    parallelism (ep), all of them otherwise."""
    first, count = local_expert_range(arch, rank, size, ep)
    for layer in model.layers:
        if layer.moe is not None:
            layer.moe.set_local_experts(first, count)


def attach_all_reduce(model: LlamaFamilyModel, all_reduce: Callable[[torch.Tensor], None]):
    """Set the in-place sum over ranks on the model (attention o and dense down) and on each
    MoE block (its output)."""
    model.all_reduce = all_reduce
    for layer in model.layers:
        if layer.moe is not None:
            layer.moe.all_reduce = all_reduce
