"""The state the server's handlers share: engine, configuration, limits, model name, metrics."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any

from corral.engine.async_llm import AsyncLLM, RequestStream
from corral.sampling_params import SamplingParams
from corral.serve.config import ServerConfig
from corral.serve.errors import APIError, error_for_exception
from corral.serve.logprobs import TokenTexts
from corral.serve.metrics import ServerMetrics
from corral.serve.validation import ModelLimits

logger = logging.getLogger(__name__)

# Prompts longer than this (characters) are tokenized off the event loop.
_THREAD_TOKENIZE_CHARS = 4096


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

    def check_model(self, name: str | None) -> None:
        """404 unless the request names the served model (or no model)."""
        if name is not None and name != self.model_name:
            raise APIError(
                404,
                f"the model {name!r} does not exist; this server serves {self.model_name!r}",
                param="model",
                code="model_not_found",
            )

    async def admit(
        self,
        base_id: str,
        prompts: list[Any],
        params: SamplingParams,
        **request_fields: Any,
    ) -> list[RequestStream]:
        """Admit one engine request per prompt, all or none. Raises APIError (400 bad input,
        503 overloaded or engine dead)."""
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
            if api_error is None:
                raise
            self.metrics.count_rejected(api_error)
            raise api_error from None
        return streams

    def log_output(self, request_id: str, texts: list[str]) -> None:
        if self.config.log_requests:
            logger.info("request %s: output %r", request_id, texts)
