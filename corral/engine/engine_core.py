"""EngineCore: one instance's scheduler and executor. Token ids in, token ids out.

It knows nothing of text: the frontend (InputProcessor, OutputProcessor) tokenizes, fans out
n > 1, detokenizes and finds stop strings, so the core can run in its own process.
"""

from __future__ import annotations

import dataclasses
import gc
import logging
import time
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

from corral.config import EngineConfig
from corral.core.batch_shape import MAX_DECODE_ROW_TOKENS
from corral.core.kv_cache import KVCacheManager
from corral.core.kv_tiers import DiskTier
from corral.core.messages import RequestUpdate, SchedulerStats
from corral.core.scheduler import Scheduler
from corral.core.step_timeline import StepTimeline
from corral.memory_budget import parse_memory_budget
from corral.model.arch import ModelArch
from corral.request import Request, RequestStatus
from corral.structured.manager import StructuredOutputManager

if TYPE_CHECKING:
    from corral.serve.kv_events_publisher import KVEventsPublisher

logger = logging.getLogger(__name__)

EXPERT_LOAD_EVERY_STEPS = 32


class EngineCore:
    """Owns the KV cache manager, the scheduler and the model executor of one instance."""

    def __init__(
        self, config: EngineConfig, model_dir: str | Path, arch: ModelArch, max_model_len: int
    ) -> None:
        from corral.model.executor import ModelExecutor

        self.config = config
        self.executor = ModelExecutor.create(
            model_dir,
            arch,
            config.model,
            config.cache,
            max_model_len,
            config.scheduler.max_num_seqs,
            config.speculative,
            config.lora,
        )
        storage = self.executor.storage
        disk_tier = None
        if storage.disk is not None:
            disk_tier = DiskTier(
                int(parse_memory_budget(config.cache.disk_cache_max_bytes)),
                storage.spec.bytes_per_block(),
                storage.disk.existing_hashes(),
                storage.disk.has_block if config.cache.disk_cache_shared else None,
            )
        self.kv_manager = KVCacheManager(
            self.executor.num_blocks,
            config.cache.block_size,
            enable_prefix_caching=config.cache.enable_prefix_caching,
            prefix_hash=config.cache.prefix_hash,
            num_host_slots=self.executor.num_host_slots,
            disk_tier=disk_tier,
            enable_kv_events=config.kv_events.is_enabled,
        )
        # KV events for routers (--kv-events-config): sockets and a thread, only when enabled.
        self.kv_events_publisher: KVEventsPublisher | None = None
        if config.kv_events.is_enabled:
            from corral.serve.kv_events_publisher import KVEventsPublisher

            self.kv_events_publisher = KVEventsPublisher(config.kv_events)
        self.scheduler = Scheduler(
            config.scheduler,
            self.kv_manager,
            max_model_len,
            speculative=config.speculative,
            lora=config.lora,
            # Lent or migrated KV must be whole: with KV transfer, windows drop no blocks.
            kv_window=None if config.kv_transfer.is_enabled else self.executor.kv_window,
        )
        if config.kv_transfer.is_enabled:
            self._start_kv_transfer(model_dir)
        if config.scheduler.rag_chunk_reuse:
            from corral.model.chunk_blend import start_chunk_blending

            start_chunk_blending(self.executor, config)
        tokenizer_path = config.model.tokenizer or str(model_dir)
        self.structured = StructuredOutputManager(
            lambda: _hf_tokenizer(tokenizer_path),
            arch.vocab_size,
            sorted(arch.eos_token_ids),
            config.structured_output_backend,
        )
        # Tokens computed by the last step (0: nothing could run, e.g. a disk read pending).
        self.last_step_num_tokens = 0
        # Updates made between steps (migrated requests), sent with the next step's.
        self._pending_updates: list[RequestUpdate] = []
        # Expert load of a mixture-of-experts model, read every EXPERT_LOAD_EVERY_STEPS steps.
        model = getattr(self.executor, "model", None)
        self._expert_load = getattr(model, "expert_load", None) if arch.num_experts else None
        self._expert_tokens: dict[int, list[int]] | None = None
        self._num_steps = self._expert_read_step = 0
        # When the last step ended with work left (monotonic seconds), else None: the gap to the
        # next step is the loop's own work (outputs, detokenizing), which a step costs too.
        self._last_busy_step_end: float | None = None
        # The recent steps, for the dashboard (one append per non-empty step).
        self.timeline = StepTimeline()
        self.step_log = None
        if config.step_log_path:
            from corral.engine.step_log import StepLog, describe_engine

            engine = describe_engine(config, model_dir, arch, self.executor, max_model_len)
            self.step_log = StepLog(config.step_log_path, engine, arch)
        # Everything built so far (weights' Python wrappers, tokenizer tables, imported modules)
        # lives as long as the engine: keep it out of the cyclic collector, whose full passes
        # over it otherwise cost several percent of every decode step.
        gc.collect()
        gc.freeze()

    def _start_kv_transfer(self, model_dir: str | Path) -> None:
        """Disaggregation (--kv-role): the connector's worker half in the executor (with its
        transfer server when this engine lends), its scheduler half in the scheduler."""
        from corral.kv_transfer.scheduler_half import KVConnectorScheduler
        from corral.kv_transfer.worker_half import KVConnectorWorker
        from corral.model.kv_identity import kv_config_hash

        storage = self.executor.storage
        identity = kv_config_hash(model_dir, storage.spec)
        worker = KVConnectorWorker(storage, self.config.kv_transfer, identity)
        self.executor.connector = worker
        self.scheduler.connector = KVConnectorScheduler(
            self.config.kv_transfer,
            self.kv_manager,
            lambda: self.scheduler.clock(),
            endpoint=worker.endpoint,
            kv_identity=identity,
        )
        if worker.endpoint:
            logger.info("KV transfer: lending on %s", worker.endpoint)

    def add_request(self, request: Request) -> None:
        """Queue a validated request (see InputProcessor); one with an output constraint waits
        for its grammar's compile (off this thread) before the scheduler sees it."""
        if self.structured.needs_constraint(request):
            self.executor.grammar_backend = self.structured.backend
            self.structured.submit(request)
        else:
            self.scheduler.add_request(request)
        if self.step_log is not None:
            self.step_log.request_added(
                request.request_id, request.arrival_time, request.num_prompt_tokens
            )

    def finish_requests(
        self, request_ids: Iterable[str], status: RequestStatus = RequestStatus.FINISHED_ABORTED
    ) -> None:
        """Abort (or stop) requests now; their KV blocks return at once."""
        request_ids = list(request_ids)
        if self.step_log is not None:
            self.step_log.requests_finished(request_ids)
        if self.structured.num_pending:
            self.structured.discard(request_ids)
        self.scheduler.finish_requests(request_ids, status)

    def migrate_out(
        self,
        max_num_requests: int,
        request_ids: Iterable[str] = (),
        max_num_tokens: int | None = None,
    ) -> list[RequestUpdate]:
        """Move running requests out (live migration, corral/core/migration.py): the named ones
        that may move, else up to max_num_requests of them. Returns their last updates (a
        Resume each, finish reason "migrated")."""
        from corral.core.migration import migrate_out

        updates = migrate_out(self.scheduler, max_num_requests, request_ids, max_num_tokens)
        if updates and self.step_log is not None:
            self.step_log.requests_finished([update.request_id for update in updates])
        return updates

    def precopy(
        self,
        max_num_requests: int,
        request_ids: Iterable[str] = (),
        max_num_tokens: int | None = None,
    ) -> list[dict]:
        """Live migration's pre-copy (corral/core/migration.py): lend running requests' blocks
        while they keep running; per request its id, kv_transfer_params and block hashes."""
        from corral.core.migration import precopy
        from corral.kv_transfer.wire import encode_hash

        return [
            {"request_id": request_id, "kv_transfer_params": remote.to_json(),
             "block_hashes": [encode_hash(h) for h in hashes]}
            for request_id, remote, hashes in precopy(
                self.scheduler, max_num_requests, request_ids, max_num_tokens
            )
        ]  # fmt: skip

    def prefetch(self, kv_transfer_params: dict, block_hashes: list[str]) -> str | None:
        """Fetch a pre-copy lease into the prefix cache; the fetch id (None: it cannot run)."""
        from corral.kv_transfer.params import RemotePrefill, parse_kv_transfer_params
        from corral.kv_transfer.wire import decode_hash

        connector = self.scheduler.connector
        params = parse_kv_transfer_params(kv_transfer_params)
        if connector is None or not isinstance(params, RemotePrefill):
            return None
        return connector.prefetch(params, [decode_hash(h) for h in block_hashes])

    def prefetch_result(self, fetch_id: str) -> bool | None:
        connector = self.scheduler.connector
        return connector.prefetch_result(fetch_id) if connector is not None else False

    def defer_updates(self, updates: list[RequestUpdate]) -> None:
        """Send updates made between steps with the next step's."""
        self._pending_updates.extend(updates)

    def step(self) -> list[RequestUpdate]:
        """One step: schedule, run the model, advance the books."""
        start = time.monotonic()
        self._num_steps += 1
        refused = self._admit_compiled() if self.structured.num_pending else []
        if self._pending_updates:
            refused, self._pending_updates = self._pending_updates + refused, []
        scheduler_output = self.scheduler.schedule()
        self.last_step_num_tokens = scheduler_output.total_num_scheduled_tokens
        # Called even when nothing is scheduled: the executor must still drop finished requests.
        model_output = self.executor.execute(scheduler_output)
        if self.scheduler.spec is not None:
            # The speculative controller prices whole steps (scheduling included), less its own
            # choosing: a full plan (60-170 us at 32 requests) runs in the steps that verify a
            # probe's drafts and in few others, and was fitted as the drafts' cost (a row token
            # 126 us at 32 n-gram requests, against 20 us seen at a fixed K).
            # The gap since the last busy step is the loop's work on its outputs (200 us a step
            # at 32 demo-model requests, 15% of a step; 25-45 us alone): fewer steps save it,
            # and left out it made drafts look dearer than they were.
            now = time.monotonic()
            step_time_s = now - start - self.scheduler.spec.plan_time_s
            if self._last_busy_step_end is not None:
                step_time_s += min(start - self._last_busy_step_end, now - start)
            model_output = dataclasses.replace(model_output, step_time_s=step_time_s)
        updates = self.scheduler.update(scheduler_output, model_output)
        if refused:
            updates = refused + updates
        if self.config.debug_check_integrity:
            self.kv_manager.check_integrity()
        if self.kv_events_publisher is not None:
            self.publish_kv_events()
        if not scheduler_output.is_empty:
            self.timeline.record(scheduler_output, start, time.monotonic())
        if self.step_log is not None:
            self.step_log.step(
                scheduler_output,
                start,
                time.monotonic(),
                # Work to schedule, not KV transfers to hear of: the gap before the next step
                # is then the loop's overhead, which the simulator's profile fit charges to
                # this step (an engine waiting only on leases or fetches is idle).
                self.scheduler.num_running + self.scheduler.num_waiting > 0,
                (update.request_id for update in updates if update.new_token_ids),
            )
        if self.scheduler.spec is not None:
            # Not after a step that prefilled: the loop then takes new requests' first outputs,
            # a cost of each new request that the fit has no feature for (at 32 it priced a
            # request at 100-138 us in a fresh engine's first steps, against 30-40 later).
            busy = self.scheduler.num_running + self.scheduler.num_waiting > 0
            decodes = max(scheduler_output.num_scheduled_tokens.values(), default=0) <= (
                MAX_DECODE_ROW_TOKENS
            )
            self._last_busy_step_end = time.monotonic() if busy and decodes else None
        return updates

    def _admit_compiled(self) -> list[RequestUpdate]:
        """Requests whose grammar compiled go to the scheduler; a failed compile finishes its
        request with finish reason "error" and the library's reason."""
        refused = []
        for outcome in self.structured.collect():
            if outcome.error is None:
                self.scheduler.add_request(outcome.request)
                continue
            request = outcome.request
            request.status = RequestStatus.FINISHED_ERROR
            request.stop_reason = outcome.error
            refused.append(
                RequestUpdate(request.request_id, [], "error", f"grammar: {outcome.error}")
            )
        return refused

    def has_unfinished_requests(self) -> bool:
        scheduler, structured = self.scheduler, self.structured
        return (
            scheduler.has_unfinished_requests()
            or structured.num_pending > 0
            or bool(self._pending_updates)
        )

    def stats(self) -> SchedulerStats:
        """The scheduler's counters now. The core loop asks after every step and periodically
        while idle, so KV events recorded between steps (reset_prefix_cache) go out here."""
        if self.kv_events_publisher is not None:
            self.publish_kv_events()
        stats = self.scheduler.stats()
        if self._expert_load is not None:
            # A device read: every EXPERT_LOAD_EVERY_STEPS steps while busy, at once when idle.
            due = self._num_steps - self._expert_read_step >= EXPERT_LOAD_EVERY_STEPS
            if self._expert_tokens is None or due or not stats.num_running:
                self._expert_tokens = self._expert_load()
                self._expert_read_step = self._num_steps
            stats = dataclasses.replace(stats, expert_tokens=self._expert_tokens)
        return stats

    def dashboard_frame(self, since_step: int = 0) -> dict:
        """The dashboard's view of this core (corral/core/dashboard_snapshot.py): requests and
        KV map now, the kept steps after since_step, the SLOStats, and now_s (time.monotonic())."""
        from corral.core.dashboard_snapshot import scheduler_snapshot

        frame = scheduler_snapshot(self.scheduler)
        frame["steps"] = self.timeline.since(since_step)
        frame["slo"] = self.scheduler.slo_stats()
        frame["now_s"] = time.monotonic()
        return frame

    def publish_kv_events(self) -> None:
        """Hand the KV events recorded since the last call to the publisher (its thread sends
        them; this only queues)."""
        assert self.kv_events_publisher is not None
        events = self.kv_manager.take_kv_events()
        if events:
            self.kv_events_publisher.publish(time.time(), events)

    def flush(self) -> None:
        """Wait for background KV writes (the disk tier) to reach their files; send the last KV
        events and close their sockets; close the step log."""
        self.executor.storage.flush()
        self.structured.shutdown()
        if self.kv_events_publisher is not None:
            self.publish_kv_events()
            self.kv_events_publisher.shutdown()
            self.kv_events_publisher = None
        if self.step_log is not None:
            self.step_log.close()
            self.step_log = None


def _hf_tokenizer(path: str):  # -> transformers.PreTrainedTokenizerBase
    from corral.engine.tokenizer import Tokenizer

    return Tokenizer(path).hf
