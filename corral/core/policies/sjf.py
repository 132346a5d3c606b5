"""Shortest (predicted) job first, after the learned-length schedulers of the survey (e.g.
"Efficient LLM Scheduling by Learning to Rank", Fu et al. 2024; S3, Jin et al. 2023): admit the
waiting request with the fewest predicted output tokens. Non-preemptive: a running request keeps
its place. Aging keeps long jobs moving, and the shared max_wait_s bound guarantees that nothing
waits longer than that before it is admitted."""

from __future__ import annotations

from typing import Any

from corral.core.policies.base import SCHEDULING_POLICIES
from corral.core.policies.keyed_policy import KeyedPolicy
from corral.core.policies.lengths import predicted_output_tokens, predicted_remaining_tokens
from corral.request import Request


@SCHEDULING_POLICIES.register("sjf")
class SJFPolicy(KeyedPolicy):
    """Order by predicted output tokens (Request.predicted_num_output_tokens; max_tokens when
    there is no prediction).

    Options: aging_tokens_per_s (default 0): each second of waiting counts as this many tokens
    off the predicted length; since the discount grows equally for every waiting request, the
    key predicted + rate * arrival_time orders them the same at any time, so it stays in a heap.
    prompt_weight (default 0): prompt tokens add prompt_weight each to the job size (prefill
    work). max_wait_s (default 60): the starvation bound shared by the keyed policies.
    """

    def __init__(
        self,
        aging_tokens_per_s: float = 0.0,
        prompt_weight: float = 0.0,
        max_wait_s: float | None = 60.0,
    ) -> None:
        super().__init__(max_wait_s)
        if aging_tokens_per_s < 0 or prompt_weight < 0:
            raise ValueError(
                f"aging_tokens_per_s ({aging_tokens_per_s}) and prompt_weight ({prompt_weight}) "
                "must be >= 0"
            )
        self.aging_tokens_per_s = float(aging_tokens_per_s)
        self.prompt_weight = float(prompt_weight)

    def job_size(self, request: Request) -> float:
        """Predicted output tokens plus weighted prompt tokens."""
        return predicted_output_tokens(request) + self.prompt_weight * request.num_prompt_tokens

    def waiting_key(self, request: Request) -> Any:
        size = self.job_size(request)
        return (size + self.aging_tokens_per_s * request.arrival_time, request.arrival_time)

    def select_victim(self, running: list[Request]) -> Request:
        """The request expected to run longest (it loses the least relative progress)."""
        return self.pick_victim(running, lambda r: (predicted_remaining_tokens(r), r.arrival_time))
