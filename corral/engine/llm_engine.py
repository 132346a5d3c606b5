"""LLMEngine: one instance's synchronous engine, frontend and core in one process."""

from __future__ import annotations

import logging
from typing import Any

from corral.config import EngineConfig
from corral.engine.engine_core import EngineCore
from corral.engine.input_processor import InputProcessor, PromptType
from corral.engine.output_processor import OutputProcessor
from corral.outputs import RequestOutput
from corral.request import RequestStatus
from corral.sampling_params import SamplingParams

logger = logging.getLogger(__name__)

__all__ = ["LLMEngine", "PromptType"]


class LLMEngine:
    """Tokenizes, schedules, executes and detokenizes requests for one model instance."""

    def __init__(self, config: EngineConfig) -> None:
        self.config = config
        self.input_processor = InputProcessor(config)
        self.tokenizer = self.input_processor.tokenizer
        self.arch = self.input_processor.arch
        self.model_dir = self.input_processor.model_dir
        self.max_model_len = self.input_processor.max_model_len
        self.vocab_size = self.input_processor.vocab_size
        self.core = EngineCore(config, self.model_dir, self.arch, self.max_model_len)
        kv = self.core.kv_manager
        self.input_processor.set_kv_pool(
            kv.num_blocks, kv.block_size, self.core.scheduler.max_live_tokens
        )
        self.output_processor = OutputProcessor(self.tokenizer)

    @property
    def scheduler(self):  # -> corral.core.scheduler.Scheduler
        return self.core.scheduler

    @property
    def kv_manager(self):  # -> corral.core.kv_cache.KVCacheManager
        return self.core.kv_manager

    @property
    def executor(self):  # -> corral.model.executor.ModelExecutor
        return self.core.executor

    def add_request(
        self,
        request_id: str,
        prompt: PromptType,
        params: SamplingParams | None = None,
        **request_fields: Any,
    ) -> None:
        """Queue a request; n > 1 fans out into n scheduler requests sharing the prompt.

        request_fields: arrival_time, priority, client_id, cache_salt, deadline_s, session_id
        (corral.engine.input_processor.InputProcessor.make_requests). Raises
        ValueError (naming the value and the limit) for an empty or oversized prompt, a token id
        outside the vocabulary, or a duplicate id.
        """
        params = params or SamplingParams()
        if self.output_processor.has_request(request_id):
            raise ValueError(f"request id {request_id!r} is already in use")
        text, token_ids = self.input_processor.tokenize_prompt(prompt, params.rag_chunks)
        children = self.input_processor.make_requests(
            request_id, token_ids, params, **request_fields
        )
        self.output_processor.add_request(
            request_id,
            [c.request_id for c in children],
            text,
            token_ids,
            params,
            children[0].arrival_time,
            children[0].output_token_ids,  # a migrated request's output so far
        )
        for child in children:
            self.core.add_request(child)

    def abort_request(self, request_ids: str | list[str]) -> list[RequestOutput]:
        """Abort requests now; their KV blocks return at once. Returns their final outputs."""
        if isinstance(request_ids, str):
            request_ids = [request_ids]
        outputs = []
        for request_id in request_ids:
            self.core.finish_requests(self.output_processor.child_ids(request_id))
            output = self.output_processor.abort(request_id)
            if output is not None:
                outputs.append(output)
        return outputs

    def has_unfinished_requests(self) -> bool:
        return self.core.has_unfinished_requests()

    def dashboard_frame(self, since_step: int = 0) -> dict:
        """The core's part of a /dashboard frame: requests in policy order, the KV block map,
        the kept steps after since_step, SLO stats (see EngineCore.dashboard_frame)."""
        return self.core.dashboard_frame(since_step)

    def migrate_out(
        self, max_num_requests: int = 1, request_ids: list[str] | None = None
    ) -> list[RequestOutput]:
        """Live migration: move running requests out (the named ones that may move, else up
        to max_num_requests holding the most KV). Returns their final outputs: finish reason
        "migrated", kv_transfer_params for add_request on the engine they move to (which needs
        --kv-role decode or both to fetch the lent blocks; this one lends with prefill/both)."""
        updates = self.core.migrate_out(max_num_requests, request_ids or ())
        outputs, _ = self.output_processor.process(updates)
        return outputs

    def step(self) -> list[RequestOutput]:
        """One engine step: schedule, run the model, advance the books, emit outputs."""
        outputs, stopped = self.output_processor.process(self.core.step())
        if stopped:
            self.core.finish_requests(stopped, RequestStatus.FINISHED_STOPPED)
        return outputs
