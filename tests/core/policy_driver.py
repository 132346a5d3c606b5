"""Scripted arrivals on a virtual clock for policy tests: one step = step_time_s seconds."""

from __future__ import annotations

from dataclasses import dataclass, field

from corral.config import SchedulerConfig
from corral.core.kv_cache import KVCacheManager
from corral.core.policies import SchedulingPolicy, make_policy
from corral.core.scheduler import Scheduler
from corral.request import Request
from tests.core.fake_executor import FakeExecutor
from tests.core.helpers import make_request


class VirtualClock:
    def __init__(self, now_s: float = 0.0) -> None:
        self.now_s = now_s

    def __call__(self) -> float:
        return self.now_s


def make_policy_scheduler(
    policy: str | SchedulingPolicy,
    clock: VirtualClock,
    *,
    num_blocks: int = 256,
    block_size: int = 4,
    max_model_len: int = 4096,
    **config: object,
) -> Scheduler:
    policy_obj = make_policy(policy) if isinstance(policy, str) else policy
    return Scheduler(
        SchedulerConfig(**config),  # type: ignore[arg-type]
        KVCacheManager(num_blocks, block_size),
        max_model_len,
        policy=policy_obj,
        clock=clock,
    )


def job(
    arrival_s: float,
    num_output_tokens: int,
    *,
    num_prompt_tokens: int = 1,
    predicted: int | None = None,
    request_id: str | None = None,
    priority: int = 0,
    client_id: str | None = None,
    deadline_s: float | None = None,
) -> Request:
    """A request that arrives at arrival_s and generates exactly num_output_tokens."""
    request = make_request(
        num_prompt_tokens, num_output_tokens, request_id=request_id, arrival_time=arrival_s
    )
    request.predicted_num_output_tokens = predicted
    request.priority = priority
    request.client_id = client_id
    request.deadline_s = deadline_s
    return request


@dataclass
class Run:
    """What a driven run observed: finish and first-token times, per-step sampled requests."""

    finish_s: dict[str, float] = field(default_factory=dict)
    first_token_s: dict[str, float] = field(default_factory=dict)
    sampled_per_step: list[list[str]] = field(default_factory=list)


class Driver:
    """Adds each request when the virtual clock reaches its arrival_time, then steps: schedule at
    t, execute, t += step_time_s, update (tokens and finishes are stamped with the new t)."""

    def __init__(self, scheduler: Scheduler, clock: VirtualClock, step_time_s: float = 1.0):
        self.scheduler = scheduler
        self.clock = clock
        self.step_time_s = step_time_s
        self.fake = FakeExecutor(scheduler)
        self.pending: list[Request] = []
        self.run_info = Run()

    def submit(self, *requests: Request) -> None:
        self.pending.extend(requests)
        self.pending.sort(key=lambda r: r.arrival_time)

    def _admit_arrivals(self) -> None:
        while self.pending and self.pending[0].arrival_time <= self.clock.now_s:
            self.scheduler.add_request(self.pending.pop(0))

    def step(self) -> None:
        self._admit_arrivals()
        if not self.scheduler.has_unfinished_requests() and self.pending:
            self.clock.now_s = self.pending[0].arrival_time
            self._admit_arrivals()
        output = self.scheduler.schedule()
        model_output = self.fake.execute(output)
        self.clock.now_s += self.step_time_s
        updates = self.scheduler.update(output, model_output)
        self.scheduler.kv.check_integrity()
        sampled = []
        for update in updates:
            if update.new_token_ids:
                sampled.append(update.request_id)
                self.run_info.first_token_s.setdefault(update.request_id, self.clock.now_s)
            if update.finish_reason is not None:
                self.run_info.finish_s[update.request_id] = self.clock.now_s
        self.run_info.sampled_per_step.append(sampled)

    def run(self, max_steps: int = 100_000) -> Run:
        for _ in range(max_steps):
            if not self.pending and not self.scheduler.has_unfinished_requests():
                return self.run_info
            self.step()
        raise AssertionError("the run did not finish within max_steps")
