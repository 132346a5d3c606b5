"""LLMEngine: one instance's synchronous engine. A step is schedule -> execute -> update."""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from corral.config import EngineConfig
from corral.core.kv_cache import KVCacheManager
from corral.core.scheduler import Scheduler
from corral.engine.output_processor import OutputProcessor
from corral.engine.tokenizer import Tokenizer
from corral.model.arch import ModelArch
from corral.outputs import RequestOutput
from corral.request import Request, RequestStatus
from corral.sampling_params import SamplingParams

logger = logging.getLogger(__name__)

# A prompt: text, token ids, or a dict with "prompt" or "prompt_token_ids".
PromptType = str | list[int] | Mapping[str, Any]


class LLMEngine:
    """Tokenizes, schedules, executes and detokenizes requests for one model instance."""

    def __init__(self, config: EngineConfig) -> None:
        from corral.demo import resolve_model_dir
        from corral.model.executor import ModelExecutor

        self.config = config
        self.model_dir = Path(resolve_model_dir(config.model.model))
        self.arch = ModelArch.from_dir(self.model_dir)
        self.tokenizer = Tokenizer(config.model.tokenizer or self.model_dir)
        self.max_model_len = self._resolve_max_model_len()
        self.eos_token_ids = frozenset(self.arch.eos_token_ids) or (
            frozenset([self.tokenizer.eos_token_id])
            if self.tokenizer.eos_token_id is not None
            else frozenset()
        )
        self.executor = ModelExecutor.create(
            self.model_dir,
            self.arch,
            config.model,
            config.cache,
            self.max_model_len,
            config.scheduler.max_num_seqs,
        )
        self.kv_manager = KVCacheManager(
            self.executor.num_blocks,
            config.cache.block_size,
            enable_prefix_caching=config.cache.enable_prefix_caching,
            prefix_hash=config.cache.prefix_hash,
        )
        self.scheduler = Scheduler(config.scheduler, self.kv_manager, self.max_model_len)
        self.output_processor = OutputProcessor(self.tokenizer)
        self.vocab_size = self.arch.vocab_size

    def _resolve_max_model_len(self) -> int:
        limit = self.arch.max_position_embeddings
        asked = self.config.model.max_model_len
        if asked is None:
            return limit
        if asked > limit:
            raise ValueError(
                f"max_model_len {asked} exceeds the model's max_position_embeddings ({limit})"
            )
        return asked

    # ----- requests ------------------------------------------------------------------------

    def tokenize_prompt(self, prompt: PromptType) -> tuple[str | None, list[int]]:
        """Normalize a prompt to (text or None, token ids), validating the ids."""
        if isinstance(prompt, str):
            return prompt, self.tokenizer.encode(prompt)
        if isinstance(prompt, Mapping):
            if "prompt_token_ids" in prompt:
                return prompt.get("prompt"), self._check_token_ids(prompt["prompt_token_ids"])
            if "prompt" in prompt:
                return prompt["prompt"], self.tokenizer.encode(prompt["prompt"])
            raise ValueError("a prompt dict needs 'prompt' or 'prompt_token_ids'")
        return None, self._check_token_ids(prompt)

    def _check_token_ids(self, token_ids: Any) -> list[int]:
        token_ids = list(token_ids)
        for token_id in token_ids:
            if not isinstance(token_id, int) or isinstance(token_id, bool):
                raise ValueError(f"prompt token id {token_id!r} is not an integer")
            if not 0 <= token_id < self.vocab_size:
                raise ValueError(
                    f"prompt token id {token_id} is out of range [0, {self.vocab_size})"
                )
        return token_ids

    def add_request(
        self,
        request_id: str,
        prompt: PromptType,
        params: SamplingParams | None = None,
        *,
        arrival_time: float | None = None,
        priority: int = 0,
        client_id: str | None = None,
        cache_salt: str | None = None,
        deadline_s: float | None = None,
    ) -> None:
        """Queue a request; n > 1 fans out into n scheduler requests sharing the prompt.

        Raises ValueError (naming the value and the limit) for an empty or oversized prompt, a
        token id outside the vocabulary, or a duplicate id.
        """
        params = params or SamplingParams()
        if self.output_processor.has_request(request_id):
            raise ValueError(f"request id {request_id!r} is already in use")
        text, token_ids = self.tokenize_prompt(prompt)
        arrival = time.monotonic() if arrival_time is None else arrival_time
        children = []
        for index in range(params.n):
            child_id = request_id if params.n == 1 else f"{index}_{request_id}"
            child_params = params
            if params.n > 1:
                seed = None if params.seed is None else params.seed + index
                child_params = params.clone(n=1, seed=seed)
            children.append(
                Request(
                    child_id,
                    token_ids,
                    child_params,
                    eos_token_ids=self.eos_token_ids,
                    max_model_len=self.max_model_len,
                    arrival_time=arrival,
                    priority=priority,
                    client_id=client_id,
                    cache_salt=cache_salt,
                    deadline_s=deadline_s,
                )
            )
        self.output_processor.add_request(
            request_id, [c.request_id for c in children], text, token_ids, params, arrival
        )
        for child in children:
            self.scheduler.add_request(child)

    def abort_request(self, request_ids: str | list[str]) -> list[RequestOutput]:
        """Abort requests now; their KV blocks return at once. Returns their final outputs."""
        if isinstance(request_ids, str):
            request_ids = [request_ids]
        outputs = []
        for request_id in request_ids:
            self.scheduler.finish_requests(self.output_processor.child_ids(request_id))
            output = self.output_processor.abort(request_id)
            if output is not None:
                outputs.append(output)
        return outputs

    def has_unfinished_requests(self) -> bool:
        return self.scheduler.has_unfinished_requests()

    # ----- the loop --------------------------------------------------------------------------

    def step(self) -> list[RequestOutput]:
        """One engine step: schedule, run the model, advance the books, emit outputs."""
        scheduler_output = self.scheduler.schedule()
        # Called even when nothing is scheduled: the executor must still drop finished requests.
        model_output = self.executor.execute(scheduler_output)
        updates = self.scheduler.update(scheduler_output, model_output)
        outputs, stopped = self.output_processor.process(updates)
        if stopped:
            self.scheduler.finish_requests(stopped, RequestStatus.FINISHED_STOPPED)
        if self.config.debug_check_integrity:
            self.kv_manager.check_integrity()
        return outputs
