"""AsyncLLM: the asynchronous engine of the server. Tokenization, n > 1 fan-out, detokenization
and stop strings run here (InputProcessor, OutputProcessor, as in LLMEngine); the EngineCore runs
behind an EngineCoreClient, usually in its own process.

    engine = await AsyncLLM.create(config)
    async for output in engine.generate("Hello", SamplingParams(max_tokens=8), "req-1"):
        ...

A request is validated and admitted by add_request (ValueError for bad input,
EngineOverloadedError past the queue bounds, EngineDeadError when the core is gone), so a server
can answer 4xx/503 before it starts a response. Leaving the iteration early aborts the request.
On the event loop, admit with add_request_async: it runs the length predictor (if any) in a
worker thread first, so that a slow prediction never stalls the loop.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from corral.config import EngineConfig
from corral.core.messages import SchedulerStats
from corral.core.slo import SLOStats
from corral.engine.core_client import EngineCoreClient, EngineDeadError, InProcessCoreClient
from corral.engine.core_messages import EngineCoreOutputs
from corral.engine.input_processor import InputProcessor, PromptType
from corral.engine.output_processor import OutputProcessor
from corral.engine.queue_bounds import EngineOverloadedError, check_queue_bounds
from corral.engine.request_stats import IterationStats, RequestStatsTracker
from corral.engine.request_stream import RequestStream
from corral.outputs import RequestOutput
from corral.request import RequestStatus
from corral.sampling_params import SamplingParams

logger = logging.getLogger(__name__)

__all__ = [
    "AsyncLLM",
    "EngineDeadError",
    "EngineOverloadedError",
    "IterationStats",
    "RequestStream",
]


StatLogger = Callable[[IterationStats], None]


class AsyncLLM:
    """One model instance behind an async API: admit, stream, abort, health, stats."""

    def __init__(
        self,
        config: EngineConfig,
        *,
        client: EngineCoreClient | None = None,
        multiprocess: bool = True,
        heartbeat_timeout_s: float = 30.0,
        step_timeout_s: float | None = None,
        max_queued_requests: int | None = None,
        max_queued_tokens: int | None = None,
    ) -> None:
        for name, value in (
            ("max_queued_requests", max_queued_requests),
            ("max_queued_tokens", max_queued_tokens),
        ):
            if value is not None and value < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
        self.config = config
        launched = None
        if client is None and multiprocess:
            # The engine process loads the model while this one loads the tokenizer.
            from corral.engine.core_process import MultiProcessCoreClient

            client = launched = MultiProcessCoreClient(
                config, heartbeat_timeout_s=heartbeat_timeout_s, step_timeout_s=step_timeout_s
            )
            launched.launch()
        try:
            self.input_processor = InputProcessor(config)
        except BaseException:
            if launched is not None:
                launched.process.kill()
            raise
        self.tokenizer = self.input_processor.tokenizer
        self.model_dir = self.input_processor.model_dir
        self.max_model_len = self.input_processor.max_model_len
        self.output_processor = OutputProcessor(self.tokenizer)
        self.client = client or InProcessCoreClient(config)
        self.max_queued_requests = max_queued_requests
        self.max_queued_tokens = max_queued_tokens
        self.stat_loggers: list[StatLogger] = []
        self.last_stats: SchedulerStats | None = None
        self._streams: dict[str, RequestStream] = {}
        self._tracker = RequestStatsTracker()
        # child id -> prompt tokens, for children not yet scheduled (the waiting queue).
        self._queued: dict[str, int] = {}
        self.num_queued_tokens = 0
        self._output_task: asyncio.Task[None] | None = None
        # One thread: predictions run one at a time, as they did on the loop (predictors need
        # not be thread-safe). Created on the first prediction.
        self._predict_pool: ThreadPoolExecutor | None = None

    @classmethod
    async def create(cls, config: EngineConfig, **kwargs: Any) -> AsyncLLM:
        """Build the frontend and start the core (waits until the model is loaded)."""
        engine = cls(config, **kwargs)
        await engine.start()
        return engine

    async def start(self) -> None:
        """Start the core and wait until it has loaded the model."""
        info = await self.client.start()
        self.input_processor.set_kv_pool(info.num_blocks, info.block_size, info.max_live_tokens)
        if info.max_model_len != self.max_model_len:
            await self.client.shutdown()
            raise RuntimeError(
                f"the engine core's max_model_len ({info.max_model_len}) differs from the "
                f"frontend's ({self.max_model_len})"
            )
        self._output_task = asyncio.create_task(self._output_loop(), name="corral-outputs")

    # ----- requests --------------------------------------------------------------------------

    def add_request(
        self,
        request_id: str,
        prompt: PromptType,
        params: SamplingParams,
        *,
        trace_headers: Mapping[str, str] | None = None,
        **request_fields: Any,
    ) -> RequestStream:
        """Validate and admit a request; returns the stream of its outputs. request_fields:
        those of InputProcessor.make_requests (priority, client_id, cache_salt, arrival_time,
        deadline_s, session_id, session_pause_s, predicted_num_output_tokens, lora_request,
        kv_transfer_params, migratable). Without predicted_num_output_tokens the length predictor
        (if any) runs here, on the caller's thread: from the event loop, use add_request_async.
        trace_headers: the caller's W3C trace context (traceparent, tracestate), for request
        tracing's spans.

        Raises ValueError (bad input: the message names the value and the limit),
        EngineOverloadedError (queue full: retry later) or EngineDeadError.
        """
        self.check_health()
        if request_id in self._streams:
            raise ValueError(f"request id {request_id!r} is already in use")
        text, token_ids = self.input_processor.tokenize_prompt(prompt, params.rag_chunks)
        children = self.input_processor.make_requests(
            request_id, token_ids, params, **request_fields
        )
        child_ids = [child.request_id for child in children]
        for child_id in child_ids:  # n > 1 children are "{i}_{id}": ids must not collide
            if self.output_processor.parent_of(child_id) is not None:
                raise ValueError(f"request id {child_id!r} is already in use")
        self._admit(len(children), len(token_ids))
        arrival = children[0].arrival_time
        resumed = children[0].output_token_ids  # a migrated request's output so far
        self.output_processor.add_request(
            request_id, child_ids, text, token_ids, params, arrival, resumed
        )
        stream = RequestStream(request_id, params.output_kind)
        self._streams[request_id] = stream
        for child_id in child_ids:
            self._tracker.add(child_id, arrival, len(token_ids), trace_headers)
            self._queued[child_id] = len(token_ids)
        self.num_queued_tokens += len(token_ids) * len(child_ids)
        self.client.add_requests(children)
        return stream

    async def add_request_async(
        self, request_id: str, prompt: PromptType, params: SamplingParams, **request_fields: Any
    ) -> RequestStream:
        """add_request, with the length prediction (if any) made in a worker thread so that the
        event loop keeps serving meanwhile. Same errors as add_request."""
        constrained = params.structured_output is not None
        if self.input_processor.length_predictor is None and not constrained:
            return self.add_request(request_id, prompt, params, **request_fields)
        self.check_health()
        if request_fields.get("arrival_time") is None:
            request_fields["arrival_time"] = time.monotonic()
        text, token_ids = self.input_processor.tokenize_prompt(prompt, params.rag_chunks)
        if self._predict_pool is None:
            self._predict_pool = ThreadPoolExecutor(1, thread_name_prefix="corral-predict")
        loop = asyncio.get_running_loop()
        if constrained:
            await loop.run_in_executor(
                self._predict_pool, self.input_processor.check_output_constraint, params
            )
        predicted = await loop.run_in_executor(
            self._predict_pool, self.input_processor.predict_num_output_tokens, token_ids
        )
        tokenized = {"prompt": text, "prompt_token_ids": token_ids}
        return self.add_request(
            request_id, tokenized, params, predicted_num_output_tokens=predicted, **request_fields
        )

    def _admit(self, num_children: int, num_prompt_tokens: int) -> None:
        """Refuse what could never fit the queue (ValueError) or does not fit it now."""
        check_queue_bounds(
            num_children,
            num_prompt_tokens,
            max_queued_requests=self.max_queued_requests,
            max_queued_tokens=self.max_queued_tokens,
            num_queued_requests=len(self._queued),
            num_queued_tokens=self.num_queued_tokens,
        )

    async def generate(
        self,
        prompt: PromptType,
        params: SamplingParams,
        request_id: str,
        **request_fields: Any,
    ) -> AsyncIterator[RequestOutput]:
        """Admit a request and yield its outputs (per params.output_kind) until it finishes.
        Stopping the iteration early (or cancelling the task) aborts the request."""
        stream = await self.add_request_async(request_id, prompt, params, **request_fields)
        async for output in self.iterate(stream):
            yield output

    async def iterate(self, stream: RequestStream) -> AsyncIterator[RequestOutput]:
        """Yield a stream's outputs; abort its request if the consumer stops early."""
        try:
            async for output in stream:
                yield output
        finally:
            if not stream.finished:
                self.abort(stream.request_id)

    def abort(self, request_id: str) -> None:
        """Abort a request now: the core drops it and its KV blocks return to the pool."""
        child_ids = self.output_processor.child_ids(request_id)
        if not child_ids:
            return
        self.client.finish_requests(child_ids, RequestStatus.FINISHED_ABORTED)
        output = self.output_processor.abort(request_id)
        stats = IterationStats(self.last_stats)
        for child_id in child_ids:
            self._dequeue(child_id)
            self._tracker.finish(child_id, "abort", time.monotonic(), stats)
        self._log_stats(stats)
        stream = self._streams.pop(request_id, None)
        if stream is not None and output is not None:
            stream.put(output)

    # ----- health and stats ------------------------------------------------------------------

    @property
    def dead_reason(self) -> str | None:
        return self.client.dead_reason

    @property
    def is_healthy(self) -> bool:
        return self.client.dead_reason is None

    async def slo_stats(self) -> SLOStats:
        """The scheduler's queue waits and per-class SLO attainment so far (a utility call:
        nothing is added to the step path)."""
        return await self.client.call_utility("slo_stats")

    async def migrate_out(
        self,
        max_num_requests: int = 1,
        request_ids: list[str] | None = None,
        max_num_tokens: int | None = None,
        *,
        precopy: bool = False,
    ) -> list[Any]:
        """Live migration: move running migratable requests out of the engine (the named
        ones, else up to max_num_requests holding the most KV, each of at most
        max_num_tokens); their streams end with finish reason "migrated" and a Resume in
        kv_transfer_params. Returns the ids moved. precopy: only lend their blocks while they
        keep running (the pre-copy stage); returns {request_id, kv_transfer_params,
        block_hashes} per request."""
        self.check_health()
        ids = list(request_ids or ())
        method = "precopy" if precopy else "migrate_out"
        return await self.client.call_utility(method, max_num_requests, ids, max_num_tokens)

    async def prefetch(self, kv_transfer_params: dict, block_hashes: list[str]) -> bool:
        """Fetch a pre-copy lease into the prefix cache and wait for it; True when it arrived."""
        self.check_health()
        fetch_id = await self.client.call_utility("prefetch", kv_transfer_params, block_hashes)
        if fetch_id is None:
            return False
        while True:
            done = await self.client.call_utility("prefetch_result", fetch_id)
            if done is not None:
                return bool(done)
            await asyncio.sleep(0.002)

    def check_health(self) -> None:
        """Raise EngineDeadError if the core has died or stalled."""
        if self.client.dead_reason is not None:
            raise EngineDeadError(self.client.dead_reason)

    @property
    def num_unfinished_requests(self) -> int:
        return len(self._streams)

    async def shutdown(self) -> None:
        """Stop the core; requests still in flight fail with EngineDeadError."""
        await self.client.shutdown()
        if self._predict_pool is not None:
            self._predict_pool.shutdown(wait=False, cancel_futures=True)
        if self._output_task is not None:
            self._output_task.cancel()
            await asyncio.gather(self._output_task, return_exceptions=True)
        self._fail_all(EngineDeadError(self.client.dead_reason or "engine shut down"))

    # ----- the output loop -------------------------------------------------------------------

    async def _output_loop(self) -> None:
        try:
            while True:
                self._process(await self.client.get_outputs())
        except EngineDeadError as error:
            self._fail_all(error)
        except Exception as error:  # a bug here must not leave requests hanging
            logger.exception("the output loop failed")
            self.client._mark_dead(f"the frontend's output loop failed: {error!r}")
            self._fail_all(EngineDeadError(str(error)))

    def _process(self, core_outputs: EngineCoreOutputs) -> None:
        now = time.monotonic()
        self.last_stats = core_outputs.stats
        stats = IterationStats(core_outputs.stats)
        for started in core_outputs.started:
            self._tracker.started(started.request_id, started.first_scheduled_time)
            self._dequeue(started.request_id)
        for request_id, message in core_outputs.rejected:
            self._reject(request_id, message)
        outputs, stopped = self.output_processor.process(core_outputs.updates)
        if stopped:
            self.client.finish_requests(stopped, RequestStatus.FINISHED_STOPPED)
        for update in core_outputs.updates:
            if update.finish_reason is not None:
                self._dequeue(update.request_id)
            self._tracker.update(update, now, stats)
        for child_id in stopped:  # a stop string, or samples that agreed (maybe still queued)
            self._dequeue(child_id)
            self._tracker.finish(child_id, "stop", now, stats)
        for output in outputs:
            stream = self._streams.get(output.request_id)
            if stream is None:
                continue
            stream.put(output)
            if output.finished:
                del self._streams[output.request_id]
        self._log_stats(stats)

    def _dequeue(self, child_id: str) -> None:
        num_tokens = self._queued.pop(child_id, None)
        if num_tokens is not None:
            self.num_queued_tokens -= num_tokens

    def _reject(self, child_id: str, message: str) -> None:
        parent = self.output_processor.parent_of(child_id)
        if parent is None:
            return
        stream = self._streams.pop(parent, None)  # so the abort's output does not reach it
        self.abort(parent)
        if stream is not None:
            stream.fail(ValueError(message))

    def _fail_all(self, error: Exception) -> None:
        for request_id, stream in list(self._streams.items()):
            self.output_processor.abort(request_id)
            stream.fail(error)
        self._streams.clear()
        self._tracker.clear()
        self._queued.clear()
        self.num_queued_tokens = 0

    def _log_stats(self, stats: IterationStats) -> None:
        for stat_logger in self.stat_loggers:
            try:
                stat_logger(stats)
            except Exception:
                logger.exception("a stat logger failed")
