"""Scheduler: token-budget continuous batching over the KV cache manager (torch-free).

There is no prefill phase and no decode phase. Each request has num_computed_tokens and
num_tokens; each step hands out at most max_num_batched_tokens so that computed catches up with
total. Chunked prefill, mixed batches, prefix hits and preemption all follow from that rule.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import replace

from corral.config import LoRAConfig, SchedulerConfig, SpeculativeConfig
from corral.core.adapter_admission import AdapterAdmission
from corral.core.chunk_reuse import ChunkReuse
from corral.core.kv_cache import KVCacheManager
from corral.core.kv_capacity import check_fits_kv_pool, kv_pool_capacity_tokens
from corral.core.kv_window import KVWindow
from corral.core.messages import ModelOutput, RequestUpdate, SchedulerOutput, SchedulerStats
from corral.core.policies import SchedulingPolicy, make_policy
from corral.core.policies.base import WaitingQueue
from corral.core.preemption import PREEMPTION_MODES
from corral.core.request_times import KV_TRANSFER, PREEMPTION
from corral.core.reservation import AdmissionGate, make_reservation
from corral.core.scheduler_output import build_scheduler_output
from corral.core.scheduler_stats import scheduler_stats
from corral.core.scheduler_update import apply_model_output
from corral.core.session_pins import SessionPins
from corral.core.sibling_admission import SiblingAdmission
from corral.core.slo import SLOStats, SLOTracker
from corral.core.slo_target import parse_slo_classes
from corral.core.spec_decode import SpecDecodeScheduling
from corral.core.step_plan import StepPlan
from corral.kv_transfer.scheduler_half import KVConnectorScheduler
from corral.request import Request, RequestStatus

# The stop_reason of a request finished because its next tokens would not fit the whole KV pool.
KV_POOL_FULL = "kv_pool_full"


class Scheduler:
    """Decides, each step, which requests compute how many tokens, within the token budget,
    max_num_seqs, and the KV blocks available; preempts by recompute when blocks run out."""

    def __init__(
        self,
        config: SchedulerConfig,
        kv_manager: KVCacheManager,
        max_model_len: int,
        *,
        policy: SchedulingPolicy | None = None,
        clock: Callable[[], float] = time.monotonic,
        speculative: SpeculativeConfig | None = None,
        lora: LoRAConfig | None = None,
        kv_window: KVWindow | None = None,
    ) -> None:
        if not config.enable_chunked_prefill and config.max_num_batched_tokens < max_model_len:
            raise ValueError(
                f"without chunked prefill, max_num_batched_tokens "
                f"({config.max_num_batched_tokens}) must be >= max_model_len ({max_model_len})"
            )
        self.config = config
        self.kv = kv_manager
        self.max_model_len = max_model_len
        self.policy = policy if policy is not None else make_policy(config.policy)
        self.preemption = PREEMPTION_MODES.get(config.preemption_mode)()
        self.clock = clock
        # Policy and accounting read self.clock: assigning another clock moves them too.
        self.policy.bind(lambda: self.clock())
        self.reservation = make_reservation(config.kv_reservation)
        # Waits, starvation and SLO attainment, whatever the policy (slo_stats()).
        default_target, class_targets = parse_slo_classes(config.slo, config.slo_classes)
        self.slo = SLOTracker(lambda: self.clock(), class_targets, default_target)
        self.requests: dict[str, Request] = {}
        self.running: list[Request] = []
        self.num_preemptions = 0
        # Finished/aborted since the last schedule(); the executor drops their state.
        self._finished_ids: set[str] = set()
        # Requests that outgrew the KV pool in schedule(); update() reports them.
        self._outgrown: list[Request] = []
        # A bounded attention span (None: full attention): blocks behind it are dropped.
        self.kv_window = kv_window
        if kv_window is not None:
            kv_manager.reserve_null_block()  # before the capacity: it takes one block
        self.capacity_tokens = kv_pool_capacity_tokens(kv_manager.num_blocks, kv_manager.block_size)
        self.max_live_tokens = (
            kv_window.max_live_tokens(config.max_num_batched_tokens, kv_manager.block_size)
            if kv_window is not None
            else None
        )
        # Speculative decoding (None: off): draft tokens in the plan, rollback after the step.
        self.spec: SpecDecodeScheduling | None = None
        if speculative is not None and speculative.is_enabled:
            self.spec = SpecDecodeScheduling(
                speculative, kv_manager, max_model_len, self.capacity_tokens
            )
        # Multi-LoRA (None: off): adapter slots, host cache, adapter-aware admission.
        self.adapters = AdapterAdmission(lora) if lora is not None and lora.is_enabled else None
        # KV transfer between engines (None: off; set by the engine, which knows its endpoint).
        self.connector: KVConnectorScheduler | None = None
        # n > 1 samples compute their shared prompt once (None: off, or no prefix caching).
        self.siblings: SiblingAdmission | None = None
        if config.share_sibling_prompts and kv_manager.enable_prefix_caching:
            self.siblings = SiblingAdmission(self.policy, kv_manager.block_size)
        # The waiting queue that admission reads: the policy's, through the siblings' deferral.
        self._waiting: WaitingQueue = self.siblings or self.policy
        # A paused conversation's KV kept for its next turn (None: off).
        self.pins: SessionPins | None = None
        if config.session_kv_ttl_s > 0:
            self.pins = SessionPins(kv_manager, config.session_kv_ttl_s, lambda: self.clock())
        # Retrieved chunks' KV reused at any position (None: off; corral/core/chunk_reuse.py).
        self.rag: ChunkReuse | None = None
        if config.rag_chunk_reuse:
            self.rag = ChunkReuse(kv_manager, config.rag_recompute_ratio)

    # ----- requests in and out -------------------------------------------------------------

    def add_request(self, request: Request) -> None:
        """Queue a request. Its prompt must fit the context (Request validates that)."""
        if request.request_id in self.requests:
            raise ValueError(f"request id {request.request_id!r} is already in use")
        if request.lora is not None and self.adapters is None:
            raise ValueError(f"request {request.request_id!r} names a LoRA adapter; LoRA is off")
        check_fits_kv_pool(
            request.num_prompt_tokens,
            request.max_tokens,
            self.kv.num_blocks,
            self.kv.block_size,
            self.config.kv_reservation,
            self.max_live_tokens,
        )
        self.requests[request.request_id] = request
        self.slo.on_arrival(request)
        if self.pins is not None:
            self.pins.on_arrival(request)
        # KV lent by another engine is fetched at once, not when the request reaches the head
        # of the queue: a lease waits for no queue (two engines' queues could hold each
        # other's pools); the request queues when its KV has arrived (or failed to).
        if self.connector is None or not self.connector.try_park(request):
            self.policy.add_waiting(request)
        else:  # parked: its wait for the KV is a span of its trace
            request.open_interval(KV_TRANSFER, self.clock(), "remote")

    def finish_requests(
        self, request_ids: Iterable[str], status: RequestStatus = RequestStatus.FINISHED_ABORTED
    ) -> list[Request]:
        """Finish requests now (abort, or a stop string found by the output processor), returning
        their blocks at once. Unknown or already finished ids are ignored."""
        finished = []
        for request_id in request_ids:
            request = self.requests.get(request_id)
            if request is None:
                continue
            if request.status == RequestStatus.RUNNING:
                self.running.remove(request)
            elif not self._waiting.remove_waiting(request) and self.adapters is not None:
                self.adapters.remove_waiting(request)
            request.status = status
            if self.connector is not None:
                self.connector.on_aborted(request)
            self.slo.on_finished(request, aborted=status != RequestStatus.FINISHED_STOPPED)
            if self.pins is not None and status == RequestStatus.FINISHED_STOPPED:
                self.pins.on_finished(request)  # a stop string ended the turn
            self._release(request)
            finished.append(request)
        return finished

    def has_unfinished_requests(self) -> bool:  # or KV transfers to hear of
        return bool(self.requests) or (self.connector is not None and self.connector.has_pending())

    @property
    def num_running(self) -> int:
        return len(self.running)

    @property
    def num_waiting(self) -> int:
        blocked = self.adapters.num_blocked if self.adapters is not None else 0
        deferred = self.siblings.num_deferred if self.siblings is not None else 0
        return self.policy.num_waiting() + blocked + deferred

    def stats(self) -> SchedulerStats:
        """Queue sizes, KV usage and the KV manager's counters now."""
        return scheduler_stats(self)

    def slo_stats(self) -> SLOStats:
        """Queue waits, starvation and per-class SLO attainment so far (see corral/core/slo.py)."""
        return self.slo.snapshot()

    # ----- one step ------------------------------------------------------------------------

    def schedule(self) -> SchedulerOutput:
        """Plan one step: running requests first (in policy order), then admit waiting ones
        while budget, max_num_seqs, the reservation gate and the KV blocks allow."""
        step = StepPlan(self.config.max_num_batched_tokens)
        if self.pins is not None:
            self.pins.expire()
        self._schedule_running(step)
        # No admission after running out of blocks; victims_for frees room in this very step.
        if not step.preempted:
            self._admit_waiting(step)
        self.policy.on_step(step.num_scheduled, self.requests)
        to_propose = self.spec.add_drafts(step, self.requests) if self.spec is not None else {}
        output = build_scheduler_output(self, step, to_propose)
        if self.rag is not None:
            output = replace(output, chunk_reuse=self.rag.take_plan())
        if step.preempted:  # how each victim lost its KV, for the step log
            preempted = {r.request_id: r.last_preemption for r in step.preempted}
            output = replace(output, preemptions=preempted)
        return output

    def _schedule_running(self, step: StepPlan) -> None:
        """Give each running request its next chunk; preempt the policy's victims while the
        KV blocks run out (a request may be its own victim)."""
        for request in list(self.policy.order_running(self.running, self.clock())):
            if step.budget == 0:
                break
            if request.status != RequestStatus.RUNNING:
                continue  # preempted earlier in this loop
            num_new = self._num_tokens_to_schedule(request, step.budget)
            if num_new == 0:
                continue
            num_needed = request.num_computed_tokens + num_new
            if self.kv_window is not None:  # first let go of the blocks behind its window
                self.kv_window.drop_behind(self.kv, request)
                num_needed = self.kv.num_live_slots_after(request, num_new)
            if num_needed > self.capacity_tokens:
                self._finish_outgrown(request)
                continue
            while True:
                block_ids = self.kv.allocate_slots(request, num_new)
                if block_ids is not None:
                    step.schedule_running(request, num_new, block_ids)
                    break
                if self.pins is not None and self.pins.reclaim():
                    continue  # a paused conversation's KV gives way before anyone is preempted
                victim = self.policy.select_victim(self.running)
                self._preempt(victim)
                step.unschedule(victim)
                if victim is request:
                    break

    def _admit_waiting(self, step: StepPlan) -> None:
        """Admit waiting requests in policy order (swapped-out ones resume from host memory,
        the others start after their prefix-cache hit; an n > 1 sample waits for a sibling's
        prompt blocks, see sibling_admission.py)."""
        gate: AdmissionGate | None = None
        adapters, waiting = self.adapters, self._waiting
        while step.budget > 0:
            request = adapters.peek(waiting) if adapters else waiting.peek_waiting()
            if request is None:
                break
            gate = gate or self.reservation.gate(self.running, self.kv)
            if len(self.running) >= self.config.max_num_seqs or not gate.try_admit(request):
                if self._preempt_for(request, step):
                    gate = None  # the victims' blocks are free again
                    continue
                seats = len(self.running) < self.config.max_num_seqs
                if seats and self.pins is not None and self.pins.reclaim():
                    gate = None
                    continue
                break
            blend = None
            if self.kv.is_swapped(request):
                num_computed = request.num_computed_tokens
                num_new = request.num_tokens - num_computed
                if not self.config.enable_chunked_prefill and num_new > step.budget:
                    break
                num_new = self._cap(num_new, step.budget)
                block_ids = self.kv.swap_in(request, num_new)
            else:
                prefix = self.kv.match_prefix(request)
                if prefix.waiting:  # its prefix is being read from disk: admit it once in memory
                    request.open_interval(KV_TRANSFER, self.clock(), "disk")
                    break
                num_computed = prefix.num_tokens
                num_new = request.num_tokens - num_computed
                blend = self.rag.draft(request, prefix) if self.rag is not None else None
                if blend is not None and blend.cost_tokens <= self.config.max_num_batched_tokens:
                    if blend.cost_tokens > step.budget:
                        break
                    block_ids = self.rag.admit(request, prefix, blend)  # type: ignore[union-attr]
                else:
                    blend = None
                    if not self.config.enable_chunked_prefill and num_new > step.budget:
                        break
                    num_new = self._cap(num_new, step.budget)
                    block_ids = self.kv.allocate_slots(request, num_new, prefix)
            if block_ids is None:
                if self.pins is not None and self.pins.reclaim():
                    continue
                if self._preempt_for(request, step):
                    continue
                if self.connector is not None and self.connector.release_fetched():
                    continue  # fetched KV held for waiting requests is evictable now
                break
            self._pop_waiting(request)
            self._admit(request, num_computed)
            step.schedule_admitted(request, num_new)
            if blend is not None:  # all its tokens run, but only the recomputed ones count
                step.budget += num_new - blend.cost_tokens

    def update(
        self, scheduler_output: SchedulerOutput, model_output: ModelOutput
    ) -> list[RequestUpdate]:
        """Advance the books after the executor ran scheduler_output: computed counts, sampled
        tokens, stop checks, prefix-cache registration. Returns what changed per request."""
        return apply_model_output(self, scheduler_output, model_output)

    # ----- internals -----------------------------------------------------------------------

    def _cap(self, num_tokens: int, budget: int) -> int:
        threshold = self.config.long_prefill_token_threshold
        if threshold:
            num_tokens = min(num_tokens, threshold)
        return min(num_tokens, budget)

    def _num_tokens_to_schedule(self, request: Request, budget: int) -> int:
        return self._cap(request.num_tokens - request.num_computed_tokens, budget)

    def _pop_waiting(self, request: Request) -> None:
        """Take the request peek_waiting gave out of the waiting queue."""
        if self.adapters is not None:
            self.adapters.pop(self._waiting, request)
        else:
            self._waiting.pop_waiting()

    def _admit(self, request: Request, num_computed_tokens: int) -> None:
        """Start running a request whose first num_computed_tokens are in its blocks (prefix
        hits, or everything it had computed when it was swapped out)."""
        request.num_computed_tokens = num_computed_tokens
        if request.intervals:  # resumed after a preemption, or after a wait for KV
            request.end_intervals(self.clock())
        if request.num_cached_tokens < 0:
            request.num_cached_tokens = num_computed_tokens
            self.kv.stats.prefix_query_tokens += request.num_tokens
            self.kv.stats.prefix_hit_tokens += num_computed_tokens
        if request.first_scheduled_time is None:
            request.first_scheduled_time = self.clock()
        request.status = RequestStatus.RUNNING
        if self.adapters is not None:
            self.adapters.start(request)
        if self.connector is not None:
            self.connector.on_admitted(request)
        if self.siblings is not None:
            self.siblings.on_admitted(request)
        if self.pins is not None:
            self.pins.on_admitted(request)
        self.running.append(request)
        self.slo.on_admitted(request)

    def _preempt(self, request: Request) -> None:
        """Take the request's blocks (the preemption mode decides: recompute or swap), keep its
        tokens, queue it again."""
        self.running.remove(request)
        if self.spec is not None:
            self.spec.forget(request)
        if self.adapters is not None:
            self.adapters.stop(request)
        if self.rag is not None:
            self.rag.unschedule(request.request_id)
        held = request.num_computed_tokens
        mode = self.preemption.preempt(self.kv, request)
        request.open_interval(PREEMPTION, self.clock(), mode, held)
        request.status = RequestStatus.PREEMPTED
        request.num_preemptions += 1
        self.num_preemptions += 1
        self.policy.requeue_preempted(request)
        self.slo.on_preempted(request)

    def _finish_outgrown(self, request: Request) -> None:
        """A running request whose next tokens would exceed the whole KV pool can never run
        again: finish it as "length" (as at the context length), reported by update()."""
        self.running.remove(request)
        request.status = RequestStatus.FINISHED_LENGTH
        request.stop_reason = KV_POOL_FULL
        self.slo.on_finished(request, aborted=False)
        self._release(request)
        self._outgrown.append(request)

    def _preempt_for(self, candidate: Request, step: StepPlan) -> bool:
        """Let the policy preempt running requests in favour of a waiting candidate."""
        victims = self.policy.victims_for(candidate, self.running)
        for victim in victims:
            self._preempt(victim)
            step.unschedule(victim)
        return bool(victims)

    def _release(self, request: Request) -> None:
        self.policy.on_request_finished(request)
        if self.spec is not None:
            self.spec.forget(request)
        if self.adapters is not None:
            self.adapters.stop(request)
        if self.connector is not None:
            self.connector.forget(request)
        self.kv.free(request)
        del self.requests[request.request_id]
        self._finished_ids.add(request.request_id)
