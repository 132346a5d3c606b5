"""Weight offloading in the simulator: a step of an engine whose offloaded decoder layers stream
in as they run (corral/model/weight_offload.py).

The engine brings each offloaded layer in while the layers before it compute, and the first
one while the previous step ends, so the transfers overlap the step: a step takes the longer of
its compute (the wrapped cost model's step) and moving every offloaded byte at the link's rate,

    max(compute + offloaded bytes / cpu rate, offloaded bytes / bandwidth).

The bandwidth is the host-to-device link for offloading to host memory (a DMA engine moves the
bytes: no CPU rate), the disk, or the page cache when it holds the file, for offloading to
disk. On a CPU device the cores themselves map the pages in, which takes time from the step's
compute: the CPU rate is how fast they do it (the page-in rate from the page cache).
benchmarks/weight_offload.py measures both rates on the engine and compares the prediction.

Device memory: streamed offloading keeps the resident layers plus two layers' buffers on the
device (one layer less than that when only one is offloaded); the roofline deployment gives the
freed memory to the KV pool (corral/sim/deployment.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from corral.core.batch_shape import BatchShape
from corral.model.arch import ModelArch
from corral.model.offload_plan import plan_offloaded_layers
from corral.sim.cost.base import CostModel, CostModelOptions
from corral.sim.cost.lora import LoRACost


def offloaded_step_time_s(
    compute_s: float,
    offloaded_bytes: float,
    bandwidth: float,
    cpu_bytes_per_s: float | None = None,
) -> float:
    """One step's seconds when offloaded_bytes stream in at bandwidth bytes/s during it, taking
    compute time at cpu_bytes_per_s (None: a DMA engine's copy, none)."""
    cpu_s = 0.0 if cpu_bytes_per_s is None else offloaded_bytes / cpu_bytes_per_s
    return max(compute_s + cpu_s, offloaded_bytes / bandwidth)


@dataclass(frozen=True, slots=True)
class OffloadPlan:
    """The offloaded layers of a model shape and what they move and free per device."""

    layer_ids: tuple[int, ...]
    offloaded_bytes: int  # streamed in every step
    device_bytes_freed: int  # offloaded bytes less the two streaming buffers

    @classmethod
    def for_arch(
        cls,
        arch: ModelArch,
        dtype_bytes: int,
        num_layers: int = 0,
        num_gib: float = 0.0,
        tensor_parallel_size: int = 1,
    ) -> OffloadPlan:
        """The engine's choice of layers (offload_plan.plan_offloaded_layers) for this shape."""
        if tensor_parallel_size > 1 and (num_layers or num_gib):
            raise ValueError("weight offloading is not supported with tensor parallelism")
        layer_ids = plan_offloaded_layers(arch, dtype_bytes, num_layers, num_gib)
        sizes = [arch.layer_num_params(index) * dtype_bytes for index in layer_ids]
        buffers = sum(sorted(sizes, reverse=True)[:2])
        return cls(tuple(layer_ids), sum(sizes), max(0, sum(sizes) - buffers))


class OffloadedWeightsCost(CostModel):
    """Another cost model's step with the offloaded layers streamed in during it."""

    def __init__(
        self,
        inner: CostModel,
        offloaded_bytes: int,
        bandwidth: float,
        cpu_bytes_per_s: float | None = None,
    ) -> None:
        if not bandwidth > 0:
            raise ValueError(f"offload bandwidth must be > 0 bytes/s, got {bandwidth}")
        if cpu_bytes_per_s is not None and not cpu_bytes_per_s > 0:
            raise ValueError(f"offload CPU rate must be > 0 bytes/s, got {cpu_bytes_per_s}")
        self.inner, self.offloaded_bytes, self.bandwidth = inner, offloaded_bytes, bandwidth
        self.cpu_bytes_per_s = cpu_bytes_per_s

    @classmethod
    def from_options(cls, options: CostModelOptions) -> CostModel:
        raise ValueError("OffloadedWeightsCost wraps a built cost model (see deployment.py)")

    def step_time_s(self, batch: BatchShape) -> float:
        return offloaded_step_time_s(
            self.inner.step_time_s(batch),
            self.offloaded_bytes,
            self.bandwidth,
            self.cpu_bytes_per_s,
        )

    def lora_cost(self, segment_overhead_s: float) -> LoRACost:
        return self.inner.lora_cost(segment_overhead_s)

    def describe(self) -> dict[str, Any]:
        return {
            **self.inner.describe(),
            "offloaded_bytes": self.offloaded_bytes,
            "offload_bandwidth_bytes_per_s": self.bandwidth,
            "offload_cpu_bytes_per_s": self.cpu_bytes_per_s,
        }
