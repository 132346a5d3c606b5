"""POST /v1/load_lora_adapter and /v1/unload_lora_adapter (vLLM's shapes): LoRA adapters added
to and removed from the engine's AdapterRegistry while the server runs, only with
--allow-runtime-lora-updating (else both answer 404 naming the flag).

Unloading removes the name at once: new requests naming it get 404 model_not_found. Requests
already admitted finish on the weights they started with: the engine keys an adapter's weights
and its prefix-cache blocks by name and content hash, so an adapter loaded again under the same
name with new weights never reuses the old one's weights or KV.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from fastapi import FastAPI, Request
from fastapi.responses import Response
from pydantic import BaseModel

from corral.lora.adapter import AdapterError
from corral.lora.registry import AdapterRegistry
from corral.serve.errors import APIError
from corral.serve.lora_protocol import (
    LoadLoRAAdapterRequest,
    LoRAAdapterStatus,
    UnloadLoRAAdapterRequest,
)
from corral.serve.openapi import post_json
from corral.serve.state import ServerState
from corral.serve.streaming import json_response
from corral.serve.validation import parse_body

logger = logging.getLogger(__name__)

LOAD_PATH = "/v1/load_lora_adapter"
UNLOAD_PATH = "/v1/unload_lora_adapter"
_FLAG = "--allow-runtime-lora-updating"
_LOAD_ERRORS = {
    400: "bad input, LoRA off (--enable-lora), a name already loaded, or an adapter the engine "
    "cannot serve (the message names the problem)",
    404: f"runtime adapter updates are off ({_FLAG})",
}
_UNLOAD_ERRORS = {404: f"no adapter of that name is loaded, or updates are off ({_FLAG})"}


class AdapterAdmin:
    """Loads and unloads the server's LoRA adapters, one change at a time."""

    def __init__(self, state: ServerState) -> None:
        self.state = state
        self._lock = asyncio.Lock()

    def _registry(self) -> AdapterRegistry:
        registry = self.state.engine.input_processor.adapters
        if registry is None:
            raise APIError(
                400,
                "LoRA is off on this server: start it with --enable-lora (or --lora-modules) "
                "to load adapters",
                code="lora_disabled",
            )
        return registry

    async def load(self, req: LoadLoRAAdapterRequest) -> LoRAAdapterStatus:
        """Check the adapter at req.lora_path against the base model and serve it as
        req.lora_name. Raises APIError 400: LoRA off, the name taken (without load_inplace)
        or the served model's, or an adapter the engine cannot serve (param lora_path)."""
        registry = self._registry()
        name = req.lora_name
        if name == self.state.model_name:
            raise APIError(400, f"lora_name {name!r} is the served model's name", param="lora_name")
        async with self._lock:
            if registry.get(name) is not None and not req.load_inplace:
                raise APIError(
                    400,
                    f"a LoRA adapter named {name!r} is already loaded (unload it first, or "
                    "send load_inplace: true to replace it)",
                    param="lora_name",
                    code="lora_adapter_exists",
                )
            try:
                # Reads the adapter's config and tensor table and hashes its files.
                ref = await asyncio.to_thread(
                    registry.add, name, req.lora_path, replace=req.load_inplace
                )
            except AdapterError as error:
                raise APIError(
                    400, str(error), param="lora_path", code="invalid_lora_adapter"
                ) from None
        logger.info(
            "LoRA adapter %s loaded from %s (rank %d, sha256 %s)",
            name,
            ref.path,
            ref.rank,
            ref.content_sha256[:16],
        )
        return LoRAAdapterStatus(lora_name=name, status="loaded")

    async def unload(self, req: UnloadLoRAAdapterRequest) -> LoRAAdapterStatus:
        """Stop serving req.lora_name: new requests naming it get 404, requests already
        admitted finish on its weights. Raises APIError 400 (LoRA off) or 404 (not loaded)."""
        registry = self._registry()
        async with self._lock:
            try:
                registry.remove(req.lora_name)
            except KeyError:
                raise APIError(
                    404,
                    f"no LoRA adapter named {req.lora_name!r} is loaded",
                    param="lora_name",
                    code="lora_adapter_not_found",
                ) from None
        logger.info("LoRA adapter %s unloaded", req.lora_name)
        return LoRAAdapterStatus(lora_name=req.lora_name, status="unloaded")


def install_lora_routes(
    app: FastAPI, state: ServerState, read_body: Callable[[Request], Awaitable[object]]
) -> list[type[BaseModel]]:
    """Add the load and unload routes (read_body: the server's body reader, with its size limit
    and drain check); returns the request models to document in /openapi.json. Without
    --allow-runtime-lora-updating the routes answer 404 and stay out of the schema."""
    if not state.config.allow_runtime_lora_updating:
        for path in (LOAD_PATH, UNLOAD_PATH):
            app.post(path, include_in_schema=False)(_not_enabled(path))
        return []
    if state.engine.input_processor.adapters is None:
        logger.warning("%s is set but LoRA is off (--enable-lora): loads will get 400", _FLAG)
    admin = AdapterAdmin(state)

    @app.post(
        LOAD_PATH,
        **post_json(LoadLoRAAdapterRequest, LoRAAdapterStatus, error_descriptions=_LOAD_ERRORS),
    )
    async def load_lora_adapter(request: Request) -> Response:
        req = parse_body(LoadLoRAAdapterRequest, await read_body(request))
        return json_response(await admin.load(req))

    @app.post(
        UNLOAD_PATH,
        **post_json(UnloadLoRAAdapterRequest, LoRAAdapterStatus, error_descriptions=_UNLOAD_ERRORS),
    )
    async def unload_lora_adapter(request: Request) -> Response:
        req = parse_body(UnloadLoRAAdapterRequest, await read_body(request))
        return json_response(await admin.unload(req))

    return [LoadLoRAAdapterRequest, UnloadLoRAAdapterRequest]


def _not_enabled(path: str) -> Callable[[], Awaitable[Response]]:
    async def not_enabled() -> Response:
        raise APIError(
            404,
            f"{path} is not enabled: start the server with {_FLAG} (or the environment "
            "variable CORRAL_ALLOW_RUNTIME_LORA_UPDATING=1)",
            code="not_enabled",
        )

    return not_enabled
