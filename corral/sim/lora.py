"""Multi-LoRA in the simulator: options, what an instance needs, and the report's counters.

The control plane runs unchanged: each simulated instance's Scheduler gets the engine's
LoRAConfig, so adapter slots, the host LRU cache and adapter-aware admission (with its fairness
bound) are the engine's own code. What the simulator adds: adapters for the workload's requests
(corral/sim/lora_workload.py), and their price in each step (corral/sim/lora_step.py): loads
into slots (corral/sim/cost/adapter_loads.py) and compute (corral/sim/cost/lora.py).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field, fields

from corral.config import LoRAConfig
from corral.core.adapter_residency import AdapterStats
from corral.lora.adapter import AdapterRef, inspect_adapter
from corral.sim.cost.adapter_loads import AdapterLoadCost
from corral.sim.cost.base import CostModel
from corral.sim.cost.lora import DEFAULT_SEGMENT_OVERHEAD_S, LoRACost
from corral.sim.lora_step import LoRAStepPricer
from corral.sim.lora_workload import AdapterAssignment, parse_distribution, synthetic_adapters


@dataclass(frozen=True, slots=True)
class LoRASimOptions:
    """Multi-LoRA in a simulated deployment: the engine's LoRAConfig (slots, host cache,
    admission bound; its lora_modules, PEFT directories, join the pool with their real sizes),
    num_adapters synthetic adapters of one rank, how requests pick them, and overrides of the
    cost's assumptions (None: the hardware spec's rates)."""

    config: LoRAConfig = field(default_factory=lambda: LoRAConfig(enable_lora=True))
    num_adapters: int = 0
    rank: int = 16
    distribution: str = "uniform"  # uniform | zipf:S
    base_fraction: float = 0.0  # share of requests (conversations) on the base model
    seed: int = 0
    segment_overhead_s: float = DEFAULT_SEGMENT_OVERHEAD_S
    disk_read_bandwidth_bytes_per_s: float | None = None
    host_to_device_bandwidth_bytes_per_s: float | None = None

    def __post_init__(self) -> None:
        if not self.config.is_enabled:
            raise ValueError("LoRASimOptions needs a LoRAConfig with enable_lora")
        if self.num_adapters < 0:
            raise ValueError(f"num_adapters must be >= 0, got {self.num_adapters}")
        if not 1 <= self.rank <= self.config.max_lora_rank:
            raise ValueError(
                f"adapter rank {self.rank} must be in [1, max_lora_rank "
                f"{self.config.max_lora_rank}] (raise --max-lora-rank)"
            )
        parse_distribution(self.distribution)
        if not 0.0 <= self.base_fraction <= 1.0:
            raise ValueError(f"base_fraction must be in [0, 1], got {self.base_fraction}")


@dataclass(frozen=True, slots=True)
class InstanceLoRA:
    """What one simulated instance runs LoRA with: the scheduler's config and the prices."""

    config: LoRAConfig
    compute: LoRACost
    loads: AdapterLoadCost

    def pricer(self) -> LoRAStepPricer:
        return LoRAStepPricer(self.compute, self.loads)


def build_lora(
    options: LoRASimOptions, cost_model: CostModel, default_loads: AdapterLoadCost
) -> tuple[InstanceLoRA, AdapterAssignment]:
    """The instances' LoRA and the workload's adapter assignment, for one cost model."""
    compute = cost_model.lora_cost(options.segment_overhead_s)
    config = options.config
    adapters: tuple[AdapterRef, ...] = tuple(
        inspect_adapter(name, path, compute.arch, config.max_lora_rank)
        for name, path in config.lora_modules
    ) + synthetic_adapters(options.num_adapters, options.rank, compute)
    disk = options.disk_read_bandwidth_bytes_per_s
    host_to_device = options.host_to_device_bandwidth_bytes_per_s
    loads = AdapterLoadCost(
        disk if disk is not None else default_loads.disk_read_bandwidth_bytes_per_s,
        host_to_device
        if host_to_device is not None
        else default_loads.host_to_device_bandwidth_bytes_per_s,
        default_loads.tensor_parallel_size,
    )
    assignment = AdapterAssignment(
        adapters, options.distribution, options.base_fraction, options.seed
    )
    return InstanceLoRA(config, compute, loads), assignment


@dataclass(frozen=True, slots=True)
class SimLoRAStats:
    """One instance's (or the cluster's) adapter counters: the scheduler's, plus the time the
    simulated executor charged for loads and adapter compute."""

    num_loads: int = 0  # into a compute slot
    num_disk_loads: int = 0  # of those, not in the host cache
    num_slot_evictions: int = 0
    num_host_evictions: int = 0
    num_bypasses: int = 0  # admissions that overtook a request waiting for a slot
    load_bytes: int = 0
    load_time_s: float = 0.0
    compute_time_s: float = 0.0
    num_lora_tokens: int = 0  # tokens computed through an adapter

    @classmethod
    def of(cls, adapters: AdapterStats, pricer: LoRAStepPricer) -> SimLoRAStats:
        return cls(
            num_loads=adapters.num_loads,
            num_disk_loads=adapters.num_disk_loads,
            num_slot_evictions=adapters.num_slot_evictions,
            num_host_evictions=adapters.num_host_evictions,
            num_bypasses=adapters.num_bypasses,
            load_bytes=adapters.load_bytes,
            load_time_s=pricer.load_time_s,
            compute_time_s=pricer.compute_time_s,
            num_lora_tokens=pricer.num_lora_tokens,
        )


def merge_lora_stats(stats: Iterable[SimLoRAStats | None]) -> SimLoRAStats | None:
    """The sum over instances (None when no instance runs LoRA)."""
    present = [s for s in stats if s is not None]
    if not present:
        return None
    return SimLoRAStats(
        **{f.name: sum(getattr(s, f.name) for s in present) for f in fields(SimLoRAStats)}
    )


def format_lora_stats(stats: SimLoRAStats, busy_time_s: float) -> str:
    share = (stats.load_time_s + stats.compute_time_s) / busy_time_s if busy_time_s else 0.0
    return (
        f"multi-LoRA: {stats.num_loads} adapter loads ({stats.num_disk_loads} from disk, "
        f"{stats.load_bytes / 1e9:.2f} GB), {stats.num_slot_evictions} slot evictions, "
        f"{stats.num_host_evictions} host-cache evictions, {stats.num_bypasses} bypasses; "
        f"{stats.num_lora_tokens} adapter tokens; load time {stats.load_time_s:.3f} s, "
        f"adapter compute {stats.compute_time_s:.3f} s ({share:.1%} of busy time)"
    )
