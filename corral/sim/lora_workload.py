"""Which LoRA adapter each simulated request uses, and the synthetic adapters themselves.

A synthetic adapter "adapter-i" (path "sim://adapter-i") targets all 7 modules of every layer at
one rank; its size follows from the model's shape (corral/sim/cost/lora.py adapter_width) and the
dtype; its content hash is a fixed fake (the SHA-256 of its path and rank), so its key is stable.

The assignment is seeded and drawn once per conversation (every turn of a multi-turn
conversation uses its first turn's adapter), in the workload's order: with probability
base_fraction the base model, else an adapter drawn uniformly or by Zipf's law (adapter i with
weight 1 / (i + 1)^s: adapter-0 the most popular).
"""

from __future__ import annotations

import bisect
import hashlib
import itertools
import random
from collections.abc import Iterable
from dataclasses import dataclass

from corral.lora.adapter import AdapterRef
from corral.sim.cost.lora import LoRACost
from corral.workloads.spec import RequestSpec


def parse_distribution(text: str) -> float:
    """'uniform' -> 0.0, 'zipf:S' -> S (> 0): the exponent of the adapters' popularity."""
    if text == "uniform":
        return 0.0
    kind, _, value = text.partition(":")
    try:
        exponent = float(value)
    except ValueError:
        exponent = -1.0
    if kind != "zipf" or not exponent > 0:
        raise ValueError(f"adapter distribution {text!r} is not uniform or zipf:S with S > 0")
    return exponent


def synthetic_adapter(index: int, rank: int, cost: LoRACost) -> AdapterRef:
    path = f"sim://adapter-{index}"
    num_params = cost.adapter_num_params(rank)
    fake_sha256 = hashlib.sha256(f"{path}:rank{rank}".encode()).hexdigest()
    return AdapterRef(
        f"adapter-{index}", path, fake_sha256, rank, num_params, num_params * cost.dtype_bytes
    )


def synthetic_adapters(num_adapters: int, rank: int, cost: LoRACost) -> tuple[AdapterRef, ...]:
    return tuple(synthetic_adapter(i, rank, cost) for i in range(num_adapters))


@dataclass(frozen=True, slots=True)
class AdapterAssignment:
    adapters: tuple[AdapterRef, ...]
    distribution: str = "uniform"  # uniform | zipf:S
    base_fraction: float = 0.0  # share of conversations on the base model
    seed: int = 0

    def __post_init__(self) -> None:
        parse_distribution(self.distribution)
        if not 0.0 <= self.base_fraction <= 1.0:
            raise ValueError(f"base_fraction must be in [0, 1], got {self.base_fraction}")

    def assign(self, specs: Iterable[RequestSpec]) -> dict[str, AdapterRef | None]:
        """request id -> its adapter (None: the base model)."""
        rng = random.Random(self.seed)
        adapters = self.adapters
        exponent = parse_distribution(self.distribution)
        weights = [1.0 / (i + 1) ** exponent for i in range(len(adapters))]
        cumulative = list(itertools.accumulate(weights))
        total = cumulative[-1] if cumulative else 0.0
        by_conversation: dict[str, AdapterRef | None] = {}
        assignment: dict[str, AdapterRef | None] = {}
        for spec in specs:
            key = spec.conversation_id or spec.request_id
            if key not in by_conversation:
                adapter = None
                if adapters and rng.random() >= self.base_fraction:
                    index = bisect.bisect_right(cumulative, rng.random() * total)
                    adapter = adapters[min(index, len(adapters) - 1)]
                by_conversation[key] = adapter
            assignment[spec.request_id] = by_conversation[key]
        return assignment
