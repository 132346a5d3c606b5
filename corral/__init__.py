"""corral: an LLM inference serving system.

The offline API (`from corral import LLM, SamplingParams`) is loaded on first use, so importing a
torch-free part of corral (the control plane in corral.core, the simulator in corral.sim) never
pulls in the engine or torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# Public name -> the module that defines it.
_EXPORTS = {
    "LLM": "corral.llm",
    "SamplingParams": "corral.sampling_params",
    "RequestOutput": "corral.outputs",
    "CompletionOutput": "corral.outputs",
    "Logprob": "corral.outputs",
    "LoRARequest": "corral.lora.adapter",
}
__all__ = list(_EXPORTS)

if TYPE_CHECKING:
    from corral.llm import LLM  # noqa: F401
    from corral.lora.adapter import LoRARequest  # noqa: F401
    from corral.outputs import CompletionOutput, Logprob, RequestOutput  # noqa: F401
    from corral.sampling_params import SamplingParams  # noqa: F401


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'corral' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
