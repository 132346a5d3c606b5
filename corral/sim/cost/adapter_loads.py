"""The price of copying LoRA adapters into compute slots (the scheduler's AdapterPlan).

A load from disk reads the adapter's file, then copies it to the device; a load from the host
cache only copies. The executor applies a step's loads one after another before the forward
pass (corral/core/adapter_residency.py), so their times add to the step's. With tensor
parallelism each device receives its 1/tp shard over its own link, in parallel; the file is
read once. Dropping a host-cache entry costs nothing.
"""

from __future__ import annotations

from dataclasses import dataclass

from corral.core.adapter_residency import AdapterPlan
from corral.sim.cost.hardware import HardwareSpec


@dataclass(frozen=True, slots=True)
class AdapterLoadCost:
    disk_read_bandwidth_bytes_per_s: float
    host_to_device_bandwidth_bytes_per_s: float  # per device (its own link)
    tensor_parallel_size: int = 1

    def __post_init__(self) -> None:
        for name in ("disk_read_bandwidth_bytes_per_s", "host_to_device_bandwidth_bytes_per_s"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        if self.tensor_parallel_size < 1:
            raise ValueError(f"tensor_parallel_size must be >= 1, got {self.tensor_parallel_size}")

    @classmethod
    def from_hardware(
        cls, hardware: HardwareSpec, tensor_parallel_size: int = 1
    ) -> AdapterLoadCost:
        return cls(
            hardware.disk_read_bandwidth_bytes_per_s,
            hardware.host_to_device_bandwidth_bytes_per_s,
            tensor_parallel_size,
        )

    def load_time_s(self, num_bytes: int, from_disk: bool) -> float:
        copy_s = num_bytes / (self.tensor_parallel_size * self.host_to_device_bandwidth_bytes_per_s)
        if from_disk:
            return num_bytes / self.disk_read_bandwidth_bytes_per_s + copy_s
        return copy_s

    def time_s(self, plan: AdapterPlan) -> float:
        """Seconds the plan's loads take, in order."""
        return sum(self.load_time_s(load.adapter.num_bytes, load.from_disk) for load in plan.loads)
