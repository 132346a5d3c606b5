"""The executor's half of adapter memory: a host cache and the compute slots, as planned.

The scheduler's AdapterResidency (corral/core/adapter_residency.py) decides every load and
eviction; this copy follows its AdapterPlan step by step, so both always agree on which adapters
are where. Load latencies are kept for the metrics and the benchmark.
"""

from __future__ import annotations

import logging
import time

import torch

from corral.core.adapter_residency import AdapterPlan
from corral.lora.batch import LoRABatch
from corral.lora.slots import LoRASlots
from corral.lora.weights import AdapterWeights, load_adapter_weights
from corral.model.arch import ModelArch

logger = logging.getLogger(__name__)


class AdapterMemory:
    """Host cache (adapter key -> weights on the CPU) and compute slots (on the device)."""

    def __init__(
        self,
        arch: ModelArch,
        max_loras: int,
        max_rank: int,
        dtype: torch.dtype,
        device: torch.device,
    ) -> None:
        self.dtype = dtype
        self.device = device
        self.slots = LoRASlots(arch, max_loras, max_rank, dtype, device)
        self.host: dict[str, AdapterWeights] = {}
        # (seconds, from disk) of every load into a slot, oldest first (bounded).
        self.load_times_s: list[tuple[float, bool]] = []
        logger.info(
            "LoRA: %d slots of rank %d (%.1f MiB on %s)",
            max_loras,
            max_rank,
            self.slots.num_bytes() / 2**20,
            device,
        )

    def apply(self, plan: AdapterPlan) -> None:
        """Run a step's loads (reading from disk where the plan says), then its evictions."""
        for load in plan.loads:
            start = time.perf_counter()
            key = load.adapter.key
            weights = self.host.get(key)
            if weights is None:
                weights = load_adapter_weights(load.adapter, self.dtype)
                self.host[key] = weights
            self.slots.write(load.slot, weights)
            if len(self.load_times_s) >= 4096:
                del self.load_times_s[:2048]
            self.load_times_s.append((time.perf_counter() - start, load.from_disk))
        for key in plan.host_evictions:
            self.host.pop(key, None)

    def batch(self, row_slots: list[int]) -> LoRABatch | None:
        """This step's segments (row_slots[i]: batch row i's slot, -1 for the base model)."""
        return LoRABatch.from_row_slots(row_slots, self.slots.slot_ranks, self.device)
