"""What a routing policy reads of a request (RoutingRequest), from the raw JSON body.

The prompt's token ids are computed as corral serve computes them (corral/serve/chat.py,
corral/engine/input_processor.py): a completion's text prompt encoded with special tokens, or
its token ids as given; a chat's messages rendered with the model's chat template (generation
prompt, tools) and encoded without. Only policies that look at prompts (prefix-aware) need
them, and only they pay for a tokenizer. A body the router cannot read gets no tokens: the
request is routed by load and the replica answers the 400.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Collection
from typing import Any

from corral.cluster.routing import RoutingRequest
from corral.engine.tokenizer import Tokenizer

logger = logging.getLogger(__name__)

# Policies that read prompt_token_ids; the others get an empty prompt (and no tokenizer).
PROMPT_POLICIES = frozenset(("prefix-aware",))
# Prompts longer than this (characters) are tokenized off the event loop, as corral serve does.
_THREAD_TOKENIZE_CHARS = 4096


class PromptReader:
    """Builds RoutingRequests. tokenizer None: no prompt tokens (load-only policies).
    base_model_names: the replicas' served model names; any other `model` is a LoRA adapter
    and becomes the RoutingRequest's adapter_id (its blocks hash apart from the base's)."""

    def __init__(self, tokenizer: Tokenizer | None, base_model_names: Collection[str] = ()) -> None:
        self.tokenizer = tokenizer
        self.base_model_names = set(base_model_names)

    async def read(self, route: str, payload: Any) -> RoutingRequest:
        if not isinstance(payload, dict):
            return RoutingRequest(())
        model, salt = payload.get("model"), payload.get("cache_salt")
        # Until the served names are known, every request counts as the base model's.
        is_adapter = isinstance(model, str) and self.base_model_names
        adapter_id = model if is_adapter and model not in self.base_model_names else None
        salt = salt if isinstance(salt, str) else None
        token_ids: list[int] = []
        if self.tokenizer is not None:
            try:
                token_ids = await self._token_ids(route, payload)
            except Exception as error:  # the replica validates and answers; route by load
                logger.debug("no prompt tokens for routing: %s", error)
        return RoutingRequest(token_ids, adapter_id=adapter_id, cache_salt=salt)

    async def _token_ids(self, route: str, payload: dict[str, Any]) -> list[int]:
        tokenizer = self.tokenizer
        assert tokenizer is not None
        if route == "/v1/chat/completions":
            messages = _message_dicts(payload["messages"])
            kwargs: dict[str, Any] = {
                "add_generation_prompt": payload.get("add_generation_prompt", True)
            }
            if payload.get("continue_final_message"):
                kwargs["continue_final_message"] = True
            tools = payload.get("tools")
            if tools and payload.get("tool_choice") != "none":
                kwargs["tools"] = tools
            size = sum(len(m["content"]) for m in messages)
            return await _maybe_in_thread(size, tokenizer.encode_chat, messages, **kwargs)
        prompt = payload["prompt"]
        if isinstance(prompt, list) and prompt and not isinstance(prompt[0], int):
            prompt = prompt[0]  # several prompts: the first one decides
        if isinstance(prompt, str):
            return await _maybe_in_thread(len(prompt), tokenizer.encode, prompt)
        if isinstance(prompt, list) and all(isinstance(t, int) for t in prompt):
            return prompt
        raise ValueError("prompt is neither text nor token ids")


async def _maybe_in_thread(size: int, fn: Any, *args: Any, **kwargs: Any) -> list[int]:
    if size > _THREAD_TOKENIZE_CHARS:
        return await asyncio.to_thread(fn, *args, **kwargs)
    return fn(*args, **kwargs)


def _message_dicts(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """As corral.serve.chat.message_dicts, on the raw JSON messages."""
    result = []
    for message in messages:
        content = message.get("content")
        if isinstance(content, list):
            texts = []
            for part in content:
                if part.get("type") != "text" or part.get("text") is None:
                    raise ValueError(f"content part type {part.get('type')!r}")
                texts.append(part["text"])
            content = "\n".join(texts)
        entry: dict[str, Any] = {"role": message["role"], "content": content or ""}
        for key in ("name", "tool_calls", "tool_call_id"):
            if message.get(key) is not None:
                entry[key] = message[key]
        result.append(entry)
    return result
