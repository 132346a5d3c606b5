"""SimInstance: one engine instance on the virtual clock (real scheduler + KV manager)."""

from __future__ import annotations

from collections.abc import Callable

from corral.core.messages import ModelOutput, RequestUpdate, SchedulerOutput
from corral.core.scheduler import Scheduler
from corral.request import Request, RequestStatus
from corral.sim.config import InstanceSpec
from corral.sim.dashboard_frames import InstanceFrames
from corral.sim.executor import SimExecutor
from corral.sim.grammar_step import GrammarMaskPricer, SimStructuredStats
from corral.sim.kv import SimKVCacheManager
from corral.sim.samples import SampleGroups
from corral.sim.structured import GrammarCompiles, StructuredSimConfig
from corral.sim.voting import Ballots, SimVoting


class SimInstance:
    """A step is begin_step (schedule + cost) at time t and end_step (update) at t + step time.

    Requests added while a step runs wait for the next one, as in a real engine loop. With
    constrained decoding, a request with a grammar is first submitted to the instance's compiles
    (submit_constrained) and added once its grammar is ready (add_request(is_constrained=True)).
    """

    def __init__(
        self,
        index: int,
        spec: InstanceSpec,
        clock: Callable[[], float],
        kv_sample_interval_s: float = 1.0,
        seed: int = 0,
        dashboard_interval_s: float | None = None,
        voting: SimVoting | None = None,
        structured: StructuredSimConfig | None = None,
    ) -> None:
        self.index = index
        self.spec = spec
        self.kv = SimKVCacheManager(
            spec.num_blocks,
            spec.block_size,
            enable_prefix_caching=spec.enable_prefix_caching,
            prefix_hash=spec.prefix_hash,
        )
        speculation = spec.speculation
        # Constrained decoding (None: off): the grammar compile thread and cache, the masks.
        self.compiles: GrammarCompiles | None = None
        grammar_mask = None
        if structured is not None:
            self.compiles = GrammarCompiles(structured)
            grammar_mask = GrammarMaskPricer(structured.mask_s_per_row, structured.mask_s_per_step)
        self.num_compiling = 0  # submitted, grammar not ready yet (not in the scheduler)
        self.scheduler = Scheduler(
            spec.scheduler,
            self.kv,
            spec.max_model_len,
            clock=clock,
            speculative=speculation.config if speculation is not None else None,
            lora=spec.lora.config if spec.lora is not None else None,
            kv_window=spec.kv_window,
        )
        # Each instance draws its acceptances from its own stream (seed, index).
        self.executor = SimExecutor(
            spec.cost_model,
            speculation,
            seed=seed * 1_000_003 + index,
            lora=spec.lora.pricer() if spec.lora is not None else None,
            max_attended_tokens=spec.kv_window.span_tokens if spec.kv_window else None,
            grammar_mask=grammar_mask,
        )
        # Requests with n > 1 run as their samples (the engine's fan-out), reported as one.
        self.samples = SampleGroups(
            Ballots(voting, seed * 1_000_003 + index) if voting is not None else None,
            lambda ids: self.scheduler.finish_requests(ids, RequestStatus.FINISHED_STOPPED),
        )
        self.is_busy = False
        self.is_wake_pending = False
        self.is_prefill = spec.role == "prefill"
        # Tokens of queued (not yet admitted) requests, for KV-load routing.
        self.num_waiting_tokens = 0
        self.num_assigned = 0
        self.num_steps = 0
        self.num_batched_tokens = 0
        self.busy_time_s = 0.0
        self.kv_usage_time_s = 0.0  # integral of KV usage over busy time
        self.max_kv_usage = 0.0
        self.kv_samples: list[tuple[float, float]] = []
        # (time, waiting, running requests), sampled with kv_samples.
        self.queue_samples: list[tuple[float, int, int]] = []
        self._sample_interval_s = kv_sample_interval_s
        self._next_sample_s = 0.0
        # The dashboard's frames (corral simulate run --dashboard-frames; None: off).
        self.dashboard: InstanceFrames | None = None
        if dashboard_interval_s is not None:
            self.dashboard = InstanceFrames(index, dashboard_interval_s)

    @property
    def num_blocks(self) -> int:
        return self.spec.num_blocks

    @property
    def block_size(self) -> int:
        return self.spec.block_size

    @property
    def num_outstanding_requests(self) -> int:
        return len(self.scheduler.requests) + self.num_compiling

    @property
    def kv_load(self) -> float:
        """(Blocks in use + blocks the queued prompts need) / pool size."""
        pool = self.kv.pool
        used = pool.num_blocks - pool.num_free_blocks
        return (used + self.num_waiting_tokens / self.spec.block_size) / pool.num_blocks

    def submit_constrained(self, grammar: int, now: float) -> float:
        """A request with this grammar arrives at `now`: when it is ready for add_request."""
        assert self.compiles is not None, "constrained decoding is off on this instance"
        self.num_compiling += 1
        return self.compiles.submit(grammar, now)

    def add_request(self, request: Request, is_constrained: bool = False) -> None:
        """Queue a request (one with n > 1: its samples, as the engine does); is_constrained:
        its grammar is ready (after submit_constrained) and its sampled rows are masked."""
        grammar_mask = self.executor.grammar_mask if is_constrained else None
        if is_constrained:
            self.num_compiling -= 1
        for sample in self.samples.fan_out(request):
            if grammar_mask is not None:
                grammar_mask.constrain(sample.request_id)
            self.scheduler.add_request(sample)
            self.num_waiting_tokens += sample.num_tokens
        self.num_assigned += 1
        if self.dashboard is not None:
            self.dashboard.on_request(request.num_prompt_tokens)

    def begin_step(self, now: float) -> tuple[SchedulerOutput, ModelOutput] | None:
        """Schedule and cost one step at `now`; None when there was nothing to run. A step that
        computes nothing but hears of KV transfers (ModelOutput.connector_events) takes no
        time: the scheduler applies them at once."""
        scheduler = self.scheduler
        scheduler_output = scheduler.schedule()
        model_output = self.executor.execute(scheduler_output)
        if scheduler_output.total_num_scheduled_tokens == 0:
            if model_output.connector_events:
                self.is_busy = True
                return scheduler_output, model_output
            if scheduler.has_unfinished_requests() and not self.is_waiting_for_transfers:
                raise RuntimeError(
                    f"instance {self.index} holds {self.num_outstanding_requests} requests but "
                    "scheduled nothing; the KV pool or the token budget is too small"
                )
            return None
        for new in scheduler_output.new_requests:
            self.num_waiting_tokens -= len(new.token_ids)
        if scheduler_output.preempted_request_ids:
            requests = scheduler.requests
            for request_id in scheduler_output.preempted_request_ids:
                self.num_waiting_tokens += requests[request_id].num_tokens
        step_s = model_output.step_time_s
        usage = self.kv.usage
        self.is_busy = True
        self.num_steps += 1
        self.num_batched_tokens += scheduler_output.total_num_scheduled_tokens
        self.busy_time_s += step_s
        self.kv_usage_time_s += usage * step_s
        if usage > self.max_kv_usage:
            self.max_kv_usage = usage
        if now >= self._next_sample_s:
            self.kv_samples.append((now, usage))
            self.queue_samples.append((now, scheduler.num_waiting, scheduler.num_running))
            self._next_sample_s = now + self._sample_interval_s
        if self.dashboard is not None:
            self.dashboard.on_step(scheduler_output, now, now + step_s)
            self.dashboard.maybe_frame(scheduler, now)
        return scheduler_output, model_output

    @property
    def structured_stats(self) -> SimStructuredStats | None:
        grammar_mask = self.executor.grammar_mask
        if self.compiles is None or grammar_mask is None:
            return None
        return SimStructuredStats.of(self.compiles, grammar_mask)

    @property
    def is_waiting_for_transfers(self) -> bool:
        """Leases open or fetches running (disaggregation): the instance waits to be woken."""
        connector = self.scheduler.connector
        return connector is not None and connector.has_pending()

    def end_step(
        self, scheduler_output: SchedulerOutput, model_output: ModelOutput
    ) -> list[RequestUpdate]:
        self.is_busy = False
        updates = self.samples.merge(self.scheduler.update(scheduler_output, model_output))
        if self.dashboard is not None:
            self.dashboard.on_updates(updates)
        return updates
