"""The bodies of POST /v1/load_lora_adapter and /v1/unload_lora_adapter (pydantic, vLLM's
shapes): they validate the requests and make their schemas in /openapi.json."""

from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

from corral.serve.constraints import Rule, max_chars, not_empty

MAX_ADAPTER_NAME_CHARS = 256
# What the engine's AdapterRegistry accepts: no '@' (it separates name and content hash in an
# adapter's key), no surrounding whitespace.
ADAPTER_NAME_PATTERN = r"^[^@\s]([^@]*[^@\s])?$"

AdapterName = Annotated[
    str,
    max_chars(MAX_ADAPTER_NAME_CHARS),
    Rule(
        lambda value: re.fullmatch(ADAPTER_NAME_PATTERN, value) is not None,
        lambda value: f"must hold no '@' and no surrounding whitespace, got {value!r}",
        {"pattern": ADAPTER_NAME_PATTERN},
    ),
]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, strict=True)


class LoadLoRAAdapterRequest(_Strict):
    lora_name: AdapterName = Field(description="the adapter's id: requests select it by `model`")
    lora_path: Annotated[str, not_empty(text=True)] = Field(
        description="a PEFT directory (adapter_config.json, adapter_model.safetensors) on the "
        "server's machine; checked against the base model and --max-lora-rank"
    )
    load_inplace: bool = Field(
        False,
        description="replace a loaded adapter of that name (requests already admitted finish "
        "on the old weights); without it, a loaded name gets 400",
    )


class UnloadLoRAAdapterRequest(_Strict):
    lora_name: str = Field(
        description="a loaded adapter (else 404); requests already admitted finish on its weights"
    )


class LoRAAdapterStatus(BaseModel):
    """The answer to a load or an unload that succeeded."""

    model_config = ConfigDict(extra="forbid")

    lora_name: str
    status: Literal["loaded", "unloaded"]
