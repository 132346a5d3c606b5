"""HardwareSpec: one device's peak compute, memory, interconnect, power and price.

Shipped specs live in corral/sim/hardware/*.json; each cites where its numbers come from and
marks which are assumptions (efficiency factors, idle power, price). A spec may be given by
name (h100) or as a path to a JSON file of the same fields.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

HARDWARE_DIR = Path(__file__).resolve().parents[1] / "hardware"
# LoRA adapter loads, where a spec names no rates (see the fields' comments).
DEFAULT_HOST_TO_DEVICE_BANDWIDTH_BYTES_PER_S = 32e9
DEFAULT_DISK_READ_BANDWIDTH_BYTES_PER_S = 2e9


@dataclass(frozen=True, slots=True)
class HardwareSpec:
    name: str
    # Dense peak FLOP/s per dtype name (bfloat16, float16, float32).
    peak_flops: dict[str, float]
    memory_bytes: float
    memory_bandwidth_bytes_per_s: float
    # Per device and direction, as a tensor-parallel ring sees it; 0 for none.
    interconnect_bandwidth_bytes_per_s: float = 0.0
    interconnect_latency_s: float = 0.0
    # Achievable fractions of the peaks (assumptions, stated in each file).
    flops_efficiency: float = 0.6
    bandwidth_efficiency: float = 0.8
    # Fixed CPU time per engine step (scheduling, launches, sampling), an assumption.
    step_overhead_s: float = 0.0
    # LoRA adapter loads (corral/sim/cost/adapter_loads.py). Host to device: the device's host
    # link, one direction (PCIe 4.0 x16 nominally moves 32 GB/s, PCIe 5.0 x16 64 GB/s; pinned
    # copies reach most of it, pageable ones less). The default is PCIe 4.0's nominal rate; for
    # a CPU "device" the copy is a host memory copy (a measured CPU spec sets half its read
    # bandwidth: a copy reads and writes). Disk: sequential reads of an adapter's file. The
    # default, 2 GB/s, is an assumption: below the 3.5-7 GB/s that PCIe 4.0 NVMe data sheets
    # quote, since reading a small file also opens it and parses its header; a network volume
    # is slower. Neither rate was measured here.
    host_to_device_bandwidth_bytes_per_s: float = DEFAULT_HOST_TO_DEVICE_BANDWIDTH_BYTES_PER_S
    disk_read_bandwidth_bytes_per_s: float = DEFAULT_DISK_READ_BANDWIDTH_BYTES_PER_S
    max_power_w: float | None = None
    idle_power_w: float | None = None
    price_per_hour: float | None = None  # per device
    max_devices_per_instance: int = 8
    sources: tuple[str, ...] = field(default_factory=tuple)
    notes: str = ""

    def __post_init__(self) -> None:
        if not self.peak_flops or any(value <= 0 for value in self.peak_flops.values()):
            raise ValueError(f"hardware {self.name!r}: peak_flops must be positive per dtype")
        positive = (
            "memory_bytes",
            "memory_bandwidth_bytes_per_s",
            "host_to_device_bandwidth_bytes_per_s",
            "disk_read_bandwidth_bytes_per_s",
        )
        for name in positive:
            if not getattr(self, name) > 0:
                raise ValueError(f"hardware {self.name!r}: {name} must be > 0")
        for name in ("flops_efficiency", "bandwidth_efficiency"):
            if not 0 < getattr(self, name) <= 1:
                raise ValueError(f"hardware {self.name!r}: {name} must be in (0, 1]")

    def flops_for(self, dtype: str) -> float:
        """Peak FLOP/s for a dtype name; ValueError naming the ones the spec knows."""
        key = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}.get(dtype, dtype)
        if key not in self.peak_flops:
            raise ValueError(
                f"hardware {self.name!r} has no peak for {dtype!r}; "
                f"it has {sorted(self.peak_flops)}"
            )
        return self.peak_flops[key]

    def with_overrides(self, **changes: Any) -> HardwareSpec:
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        values.update({k: v for k, v in changes.items() if v is not None})
        return HardwareSpec(**values)

    @classmethod
    def from_dict(cls, document: dict[str, Any]) -> HardwareSpec:
        known = {f.name for f in fields(cls)}
        unknown = set(document) - known
        if unknown:
            raise ValueError(f"hardware spec has unknown fields {sorted(unknown)}")
        values = dict(document)
        values["sources"] = tuple(values.get("sources", ()))
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        values["sources"] = list(self.sources)
        return values


def list_hardware() -> list[str]:
    return sorted(path.stem for path in HARDWARE_DIR.glob("*.json"))


def load_hardware(name_or_path: str) -> HardwareSpec:
    """A shipped spec by name (case-insensitive), or a JSON file."""
    path = Path(name_or_path)
    if not path.is_file():
        path = HARDWARE_DIR / f"{name_or_path.lower()}.json"
    if not path.is_file():
        raise ValueError(
            f"unknown hardware {name_or_path!r}; shipped: {', '.join(list_hardware())} "
            "(or give a JSON file)"
        )
    return HardwareSpec.from_dict(json.loads(path.read_text()))
