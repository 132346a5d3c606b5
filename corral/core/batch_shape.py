"""BatchShape: what a cost model sees of one step (counts only, no token ids), and the counter
that reads it off the scheduler's outputs (the simulator's executor and the engine's step log
count steps with the same code)."""

from __future__ import annotations

from typing import NamedTuple

from corral.core.messages import SchedulerOutput


class BatchShape(NamedTuple):
    """One step's work. A chunk of exactly one token is a decode (as in the model executor);
    any longer chunk is a prefill chunk.

    Attention work counts (query, key) pairs: a prefill chunk of q tokens after c cached tokens
    attends q * c + q * (q + 1) / 2 pairs; a decode at context c attends c + 1 keys.
    """

    num_prefill_tokens: int = 0
    num_prefill_requests: int = 0
    prefill_context_tokens: int = 0  # sum of c over prefill chunks
    prefill_attention_pairs: int = 0  # sum of q * c + q * (q + 1) // 2
    num_decode_requests: int = 0
    decode_context_tokens: int = 0  # sum of c + 1 over decodes
    max_decode_context: int = 0  # max of c + 1 over decodes
    num_sampled: int = 0  # requests whose chunk reached their last token

    @property
    def num_tokens(self) -> int:
        return self.num_prefill_tokens + self.num_decode_requests

    @classmethod
    def of_chunks(cls, chunks: list[tuple[int, int, bool]]) -> BatchShape:
        """From (num_tokens, context, is_sampled) per scheduled request (tests, the profiler)."""
        p_tokens = p_requests = p_context = p_pairs = 0
        d_requests = d_context = d_max = sampled = 0
        for num_tokens, context, is_sampled in chunks:
            sampled += is_sampled
            if num_tokens == 1:
                d_requests += 1
                d_context += context + 1
                d_max = max(d_max, context + 1)
            else:
                p_tokens += num_tokens
                p_requests += 1
                p_context += context
                p_pairs += num_tokens * context + num_tokens * (num_tokens + 1) // 2
        return cls(p_tokens, p_requests, p_context, p_pairs, d_requests, d_context, d_max, sampled)


class BatchShapeCounter:
    """Follows the requests of a stream of SchedulerOutputs, as an executor does, keeping per
    request [num_tokens, num_computed_tokens], and counts each step's BatchShape."""

    def __init__(self) -> None:
        self._states: dict[str, list[int]] = {}

    @property
    def num_requests(self) -> int:
        return len(self._states)

    def count(self, scheduler_output: SchedulerOutput) -> tuple[BatchShape | None, list[str]]:
        """The step's shape (None when nothing was scheduled) and the ids of the requests whose
        chunk reaches their last token (each gets one token sampled, counted here)."""
        states = self._states
        for request_id in scheduler_output.finished_request_ids:
            states.pop(request_id, None)
        for request_id in scheduler_output.preempted_request_ids:
            states.pop(request_id, None)
        for new in scheduler_output.new_requests:
            states[new.request_id] = [len(new.token_ids), new.num_computed_tokens]
        sampled_ids: list[str] = []
        p_tokens = p_requests = p_context = p_pairs = 0
        d_requests = d_context = d_max = 0
        for request_id, num_tokens in scheduler_output.num_scheduled_tokens.items():
            state = states[request_id]
            context = state[1]
            if num_tokens == 1:
                d_requests += 1
                d_context += context + 1
                if context >= d_max:
                    d_max = context + 1
            else:
                p_tokens += num_tokens
                p_requests += 1
                p_context += context
                p_pairs += num_tokens * context + num_tokens * (num_tokens + 1) // 2
            context += num_tokens
            state[1] = context
            if context == state[0]:
                sampled_ids.append(request_id)
                state[0] += 1
        if not scheduler_output.num_scheduled_tokens:
            return None, sampled_ids
        shape = BatchShape(
            p_tokens, p_requests, p_context, p_pairs, d_requests, d_context, d_max, len(sampled_ids)
        )
        return shape, sampled_ids
