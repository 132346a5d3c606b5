"""A fake executor for scheduler tests: it 'computes' whatever is scheduled and samples a
scripted token (default 7) for each request whose chunk reaches the end of its tokens."""

from __future__ import annotations

from collections.abc import Callable

from corral.core.messages import ModelOutput, RequestUpdate, SchedulerOutput
from corral.core.scheduler import Scheduler


class FakeExecutor:
    def __init__(self, scheduler: Scheduler, next_token: Callable[[str, int], int] | None = None):
        self.scheduler = scheduler
        self.next_token = next_token or (lambda request_id, position: 7)
        self.known: set[str] = set()
        self.steps: list[SchedulerOutput] = []

    def execute(self, output: SchedulerOutput) -> ModelOutput:
        self.known -= output.finished_request_ids | output.preempted_request_ids
        for new in output.new_requests:
            assert new.request_id not in self.known, "a known request was sent as new"
            self.known.add(new.request_id)
        for cached in output.cached_requests:
            assert cached.request_id in self.known, "a cached request the executor never saw"
        sampled = {}
        for request_id, num_tokens in output.num_scheduled_tokens.items():
            request = self.scheduler.requests[request_id]
            if request.num_computed_tokens + num_tokens == request.num_tokens:
                sampled[request_id] = [self.next_token(request_id, request.num_tokens)]
        self.steps.append(output)
        return ModelOutput(sampled_token_ids=sampled)

    def step(self) -> list[RequestUpdate]:
        output = self.scheduler.schedule()
        updates = self.scheduler.update(output, self.execute(output))
        self.scheduler.kv.check_integrity()
        return updates

    def run(self, max_steps: int = 10_000) -> dict[str, list[int]]:
        """Step until idle; returns each finished request's output tokens."""
        outputs: dict[str, list[int]] = {}
        for _ in range(max_steps):
            if not self.scheduler.has_unfinished_requests():
                return outputs
            for update in self.step():
                outputs.setdefault(update.request_id, []).extend(update.new_token_ids)
        raise AssertionError("the scheduler did not finish within max_steps")
