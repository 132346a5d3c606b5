"""What a pre-quantized checkpoint's quantization_config says (torch-free: ModelArch checks it;
the conversion is corral/model/prequantized.py)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

PREQUANTIZED_METHODS = ("gptq", "awq")


@dataclass(frozen=True, slots=True)
class PrequantizedFormat:
    """What a checkpoint's quantization_config says about its packed weights."""

    method: str  # gptq | awq
    group_size: int  # -1: one group per output row
    zero_offset: int  # added to a stored zero point (GPTQ's original format stores z - 1)

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> PrequantizedFormat | None:
        """None for a checkpoint without quantization_config; ValueError naming the field for
        one corral cannot load exactly."""
        spec = config.get("quantization_config")
        if not spec:
            return None
        method = str(spec.get("quant_method", "unknown")).lower()
        if method not in PREQUANTIZED_METHODS:
            raise ValueError(
                f"quantization_config.quant_method {method!r} is not supported (supported: "
                f"{', '.join(PREQUANTIZED_METHODS)}, 4-bit)"
            )
        bits = spec.get("bits", spec.get("w_bit"))
        if bits != 4:
            raise ValueError(f"quantization_config.bits {bits!r}: only 4-bit {method} is supported")
        group_size = int(spec.get("group_size", spec.get("q_group_size", 128)))
        if method == "gptq":
            checkpoint_format = spec.get("checkpoint_format", "gptq")
            if checkpoint_format not in ("gptq", "gptq_v2"):
                raise ValueError(
                    f"quantization_config.checkpoint_format {checkpoint_format!r} is not "
                    "supported (gptq, gptq_v2)"
                )
            return cls(method, group_size, 1 if checkpoint_format == "gptq" else 0)
        version = str(spec.get("version", "gemm")).lower()
        if version != "gemm":
            raise ValueError(
                f"quantization_config.version {version!r}: only AWQ's gemm packing is supported"
            )
        if spec.get("zero_point", True) is not True:
            raise ValueError("quantization_config.zero_point false: AWQ without zero points")
        return cls(method, group_size, 0)

    @classmethod
    def from_dir(cls, model_dir: str | Path) -> PrequantizedFormat | None:
        return cls.from_config(json.loads((Path(model_dir) / "config.json").read_text()))
