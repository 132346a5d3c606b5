"""The state the server's handlers share: engine, configuration, limits, model name, metrics;
which model (base or LoRA adapter) a request selects."""

from __future__ import annotations

import asyncio
import logging
import os
import time
from dataclasses import dataclass
from typing import Any

from corral.engine.async_llm import AsyncLLM, RequestStream
from corral.lora.adapter import AdapterError
from corral.sampling_params import SamplingParams
from corral.serve.config import ServerConfig
from corral.serve.errors import APIError, error_for_exception
from corral.serve.logprobs import TokenTexts
from corral.serve.metrics import ServerMetrics
from corral.serve.responses import ModelCard
from corral.serve.validation import ModelLimits

logger = logging.getLogger(__name__)

# Prompts longer than this (characters) are tokenized off the event loop.
_THREAD_TOKENIZE_CHARS = 4096


def created_s(path: object) -> int:
    """A model card's `created`: when the model's (or adapter's) directory was last written, in
    Unix seconds, so that every replica serving it and every restart reports the same time;
    the current time when the path cannot be read."""
    try:
        return int(os.path.getmtime(str(path)))
    except (OSError, TypeError):
        return int(time.time())


def model_not_found(name: str) -> APIError:
    return APIError(
        404,
        f"the model {name!r} does not exist (GET /v1/models lists the served model and its "
        "LoRA adapters)",
        param="model",
        code="model_not_found",
    )


@dataclass(slots=True)
class ServerState:
    engine: AsyncLLM
    config: ServerConfig
    model_name: str
    limits: ModelLimits
    metrics: ServerMetrics
    token_texts: TokenTexts
    draining: bool = False
    # --tool-call-parser and --reasoning-parser (instances; None: off).
    tool_parser: Any = None
    reasoning_parser: Any = None

    def select_model(self, name: str | None) -> str | None:
        """The LoRA adapter a request's `model` selects: None for the served model (or no
        model), the adapter's name for a loaded adapter; 404 for any other name."""
        if name is None or name == self.model_name:
            return None
        adapters = self.engine.input_processor.adapters
        if adapters is not None and adapters.get(name) is not None:
            return name
        raise model_not_found(name)

    def model_cards(self) -> list[ModelCard]:
        """The served model, then each loaded LoRA adapter (its parent: the served model)."""
        engine = self.engine
        cards = [
            ModelCard(
                id=self.model_name,
                created=created_s(engine.model_dir),
                root=str(engine.model_dir),
                max_model_len=engine.max_model_len,
            )
        ]
        adapters = engine.input_processor.adapters
        for adapter in adapters.adapters() if adapters is not None else []:
            cards.append(
                ModelCard(
                    id=adapter.name,
                    created=created_s(adapter.path),
                    root=adapter.path,
                    parent=self.model_name,
                    max_model_len=engine.max_model_len,
                )
            )
        return cards

    async def admit(
        self,
        base_id: str,
        prompts: list[Any],
        params: SamplingParams,
        **request_fields: Any,
    ) -> list[RequestStream]:
        """Admit one engine request per prompt, all or none. Raises APIError (400 bad input,
        404 the LoRA adapter named by lora_request was unloaded since select_model, 503
        overloaded or engine dead)."""
        streams: list[RequestStream] = []
        try:
            for index, prompt in enumerate(prompts):
                if isinstance(prompt, str) and len(prompt) > _THREAD_TOKENIZE_CHARS:
                    token_ids = await asyncio.to_thread(self.engine.tokenizer.encode, prompt)
                    prompt = {"prompt": prompt, "prompt_token_ids": token_ids}
                request_id = base_id if len(prompts) == 1 else f"{base_id}-{index}"
                streams.append(
                    await self.engine.add_request_async(
                        request_id, prompt, params, **request_fields
                    )
                )
                if self.config.log_requests:
                    logger.info("request %s: prompt %r, %s", request_id, prompt, params)
        except BaseException as error:
            for stream in streams:
                self.engine.abort(stream.request_id)
            api_error = error_for_exception(error) if isinstance(error, Exception) else None
            adapter = request_fields.get("lora_request")
            if isinstance(error, AdapterError) and isinstance(adapter, str):
                api_error = model_not_found(adapter)  # unloaded since select_model
            if api_error is None:
                raise
            self.metrics.count_rejected(api_error)
            raise api_error from None
        return streams

    def log_output(self, request_id: str, texts: list[str]) -> None:
        if self.config.log_requests:
            logger.info("request %s: output %r", request_id, texts)
