"""LoRA compute in a step: the adapters' FLOPs, their weight reads, a per-segment overhead.

Every target module (q, k, v, o, gate, up, down) of every layer adds, for each token of a
request with an adapter of rank r, a shrink x A^T (A: r x in) and an expand (.) B^T (B: out x r):
2 r (in + out) FLOPs. The rows of one adapter form a segment (the Punica / S-LoRA grouping the
engine uses, corral/lora/apply.py); a step reads each segment's A and B once: r (in + out)
dtype bytes per module per layer. Priced as one more operator group of the roofline, after the
base model's (the shrink and expand are kernels of their own):

    lora_s = max(FLOPs / achievable FLOP/s, bytes / achievable bandwidth)
             + segments x segment_overhead_s

with tensor parallelism splitting FLOPs and bytes tp ways. The activations' reads and writes
are not counted (the base roofline does not count them either). segment_overhead_s stands for
each segment's own launches and ragged tail; its default is an assumption, see
DEFAULT_SEGMENT_OVERHEAD_S.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

from corral.lora.adapter import module_shapes
from corral.model.arch import ModelArch

# Per segment per step. Not measured: grouped shrink/expand kernels (Punica SGMV, S-LoRA) run one
# launch per module and layer whatever the number of segments, so a segment costs only a little
# scheduling and a ragged tail; a loop of PyTorch ops per segment (corral's fallback off the
# CPU, corral/lora/apply.py add_lora_reference) costs tens of launches per segment per layer,
# milliseconds per segment on a large model. Measure the engine and pass
# --lora-segment-overhead-us.
DEFAULT_SEGMENT_OVERHEAD_S = 20e-6


class LoRAShape(NamedTuple):
    """One step's adapter work (all zero: no request of the step uses an adapter)."""

    num_tokens: int = 0  # tokens computed through an adapter
    num_segments: int = 0  # distinct adapters among them
    rank_tokens: int = 0  # sum over those tokens of their adapter's rank
    rank_sum: int = 0  # sum over the segments of their adapter's rank


def adapter_width(arch: ModelArch) -> int:
    """Sum of (in + out) over the 7 target modules and the layers: an adapter of rank r that
    targets all of them has r x this many parameters."""
    per_layer = sum(in_features + out for in_features, out in module_shapes(arch).values())
    return arch.num_layers * per_layer


@dataclass(frozen=True, slots=True)
class LoRACost:
    """The LoRA term of one instance's cost model (built by CostModel.lora_cost)."""

    arch: ModelArch
    dtype_bytes: int  # of the adapters' weights
    flops_per_rank_token: float  # per device: 2 x adapter_width / tp
    bytes_per_rank: float  # per device: adapter_width x dtype_bytes / tp
    flops_per_s: float  # achievable, per device
    bytes_per_s: float  # achievable memory read bandwidth, per device
    segment_overhead_s: float = DEFAULT_SEGMENT_OVERHEAD_S

    @classmethod
    def for_arch(
        cls,
        arch: ModelArch,
        *,
        dtype_bytes: int,
        flops_per_s: float,
        bytes_per_s: float,
        segment_overhead_s: float = DEFAULT_SEGMENT_OVERHEAD_S,
        tensor_parallel_size: int = 1,
    ) -> LoRACost:
        if not flops_per_s > 0 or not bytes_per_s > 0:
            raise ValueError("LoRA compute needs positive FLOP/s and bandwidth")
        if segment_overhead_s < 0:
            raise ValueError(f"segment_overhead_s must be >= 0, got {segment_overhead_s}")
        width = adapter_width(arch)
        tp = tensor_parallel_size
        return cls(
            arch=arch,
            dtype_bytes=dtype_bytes,
            flops_per_rank_token=2 * width / tp,
            bytes_per_rank=width * dtype_bytes / tp,
            flops_per_s=flops_per_s,
            bytes_per_s=bytes_per_s,
            segment_overhead_s=segment_overhead_s,
        )

    def adapter_num_params(self, rank: int) -> int:
        """Parameters of an adapter of this rank on all 7 target modules of every layer."""
        return rank * adapter_width(self.arch)

    def flops(self, lora: LoRAShape) -> float:
        return lora.rank_tokens * self.flops_per_rank_token

    def bytes(self, lora: LoRAShape) -> float:
        return lora.rank_sum * self.bytes_per_rank

    def time_s(self, lora: LoRAShape) -> float:
        """Seconds the adapters add to a step (0 when no token uses one)."""
        if not lora.num_tokens:
            return 0.0
        compute_s = self.flops(lora) / self.flops_per_s
        memory_s = self.bytes(lora) / self.bytes_per_s
        return max(compute_s, memory_s) + lora.num_segments * self.segment_overhead_s
