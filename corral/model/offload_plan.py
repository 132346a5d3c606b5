"""Which decoder layers weight offloading moves off the compute device (torch-free: the
engine's executor and the simulator's cost model plan with the same function)."""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence

from corral.model.arch import ModelArch

logger = logging.getLogger(__name__)


def check_offload_settings(
    offload_layers: int, cpu_offload_gb: float, offload_to: str, tensor_parallel_size: int
) -> None:
    """ModelConfig's offloading fields: ValueError naming the value and the rule it breaks."""
    if offload_layers < 0:
        raise ValueError(f"offload_layers must be >= 0, got {offload_layers}")
    if not 0 <= cpu_offload_gb < float("inf"):
        raise ValueError(f"cpu_offload_gb must be >= 0 and finite, got {cpu_offload_gb}")
    if offload_layers and cpu_offload_gb:
        raise ValueError(
            f"give offload_layers ({offload_layers}) or cpu_offload_gb ({cpu_offload_gb}), not both"
        )
    if offload_to not in ("auto", "host", "disk"):
        raise ValueError(f"offload_to {offload_to!r} is not one of auto, host, disk")
    if (offload_layers or cpu_offload_gb) and tensor_parallel_size > 1:
        raise ValueError(
            "weight offloading with tensor_parallel_size "
            f"{tensor_parallel_size} is not supported: each rank holds a slice of "
            "every layer; offload with one rank, or split over more ranks instead"
        )


def choose_offloaded_layers(
    layer_nbytes: Sequence[int], num_layers: int = 0, num_bytes: float = 0.0
) -> list[int]:
    """The decoder layers to offload: num_layers of them, or the fewest whose bytes reach
    num_bytes (all of them when the model is smaller), evenly spaced through the stack."""
    total = len(layer_nbytes)
    if num_layers < 0 or num_bytes < 0:
        raise ValueError(f"cannot offload a negative amount: {num_layers} layers, {num_bytes} B")
    if num_layers > total:
        raise ValueError(f"offload_layers {num_layers} is more than the model's {total} layers")
    if num_layers:
        return _evenly_spaced(total, num_layers)
    if num_bytes <= 0:
        return []
    for count in range(1, total + 1):
        chosen = _evenly_spaced(total, count)
        if sum(layer_nbytes[index] for index in chosen) >= num_bytes:
            return chosen
    return list(range(total))


def _evenly_spaced(total: int, count: int) -> list[int]:
    # Layer i * total / count for i < count, rounded to the middle of each share of the stack.
    return [min(total - 1, int((index + 0.5) * total / count)) for index in range(count)]


def plan_offloaded_layers(
    arch: ModelArch, dtype_bytes: int, num_layers: int, num_gib: float
) -> list[int]:
    """The layers to offload for offload_layers / cpu_offload_gb, sized from the model's shape
    at its dtype (before loading, so a CUDA model can load those layers into host memory)."""
    if not num_gib >= 0 or not math.isfinite(num_gib):
        raise ValueError(f"cpu_offload_gb must be >= 0 and finite, got {num_gib}")
    layer_nbytes = [arch.layer_num_params(index) * dtype_bytes for index in range(arch.num_layers)]
    if num_gib * 2**30 > sum(layer_nbytes):
        logger.warning(
            "cpu_offload_gb %.2f is more than the decoder layers' %.2f GiB: all are offloaded",
            num_gib,
            sum(layer_nbytes) / 2**30,
        )
    return choose_offloaded_layers(layer_nbytes, num_layers, num_gib * 2**30)
