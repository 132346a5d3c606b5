"""The cost-model plug-in interface: a step's duration from its BatchShape."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from corral.core.batch_shape import BatchShape
from corral.registry import Registry

if TYPE_CHECKING:
    from corral.model.arch import ModelArch
    from corral.sim.cost.hardware import HardwareSpec
    from corral.sim.cost.lora import LoRACost


@dataclass(frozen=True, slots=True)
class CostModelOptions:
    """What the registered cost models may need; each reads its own fields."""

    profile_path: str | None = None  # profiled
    arch: ModelArch | None = None  # roofline
    hardware: HardwareSpec | None = None  # roofline
    tensor_parallel_size: int = 1
    dtype_bytes: int = 2
    step_overhead_s: float | None = None  # roofline: fixed CPU time per step (None: hardware's)


class CostModel(ABC):
    """Predicts how long one engine step takes, in seconds of (virtual) wall time."""

    @classmethod
    @abstractmethod
    def from_options(cls, options: CostModelOptions) -> CostModel:
        """Build the model from the options its kind reads; ValueError when one is missing."""

    @abstractmethod
    def step_time_s(self, batch: BatchShape) -> float:
        """Seconds for one engine step computing this batch (schedule + forward + sample)."""

    def lora_cost(self, segment_overhead_s: float) -> LoRACost:
        """The LoRA compute term for this model (corral/sim/cost/lora.py): the adapters' FLOPs
        and bytes at this model's rates; ValueError when it cannot tell them."""
        raise ValueError(f"the {type(self).__name__} cost model cannot price LoRA compute")

    def describe(self) -> dict[str, Any]:
        """A JSON-friendly summary for reports."""
        return {"kind": type(self).__name__}


COST_MODELS: Registry[CostModel] = Registry("cost model")


def make_cost_model(name: str, options: CostModelOptions) -> CostModel:
    return COST_MODELS.get(name).from_options(options)
