"""BatchShape: what a cost model sees of one step (counts only, no token ids), and the counter
that reads it off the scheduler's outputs (the simulator's executor and the engine's step log
count steps with the same code)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import NamedTuple

from corral.core.messages import SchedulerOutput

# corral.model.step_inputs.MAX_DECODE_ROW_TOKENS (that module needs torch; a test checks that
# the two agree): chunks of at most this many tokens run as decode rows.
MAX_DECODE_ROW_TOKENS = 16


class BatchShape(NamedTuple):
    """One step's work. A chunk of exactly one token is a decode (as in the model executor);
    a verification chunk of speculative decoding (the request's real tokens then its k draft
    tokens) of at most MAX_DECODE_ROW_TOKENS tokens is that many decodes, one per position; any
    other chunk is a prefill chunk. (The executor runs every chunk of at most
    MAX_DECODE_ROW_TOKENS tokens as decode rows; short chunks without drafts, rare, are still
    counted as prefill chunks here, as the profiles on record were fitted.)

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
    # Positions sampled: one per request whose chunk reached its last token, plus one per draft
    # token verified (its logits are computed too).
    num_sampled: int = 0

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
                p_pairs += attended_pairs(num_tokens, context)
        return cls(p_tokens, p_requests, p_context, p_pairs, d_requests, d_context, d_max, sampled)


def attended_pairs(num_tokens: int, context: int, span: int | None = None) -> int:
    """(query, key) pairs of num_tokens queries after context cached tokens: query i (from 1)
    attends context + i keys, at most span of them."""
    total = num_tokens * context + num_tokens * (num_tokens + 1) // 2
    if span is None or context + num_tokens <= span:
        return total
    # Queries i > span - context attend span keys each instead of context + i.
    first_capped = max(1, span - context + 1)
    num_capped = num_tokens - first_capped + 1
    uncapped_end = context + num_tokens
    excess = num_capped * (context + first_capped + uncapped_end) // 2 - num_capped * span
    return total - excess


class BatchShapeCounter:
    """Follows the requests of a stream of SchedulerOutputs, as an executor does, keeping per
    request [num_tokens, num_computed_tokens], and counts each step's BatchShape.

    Speculative decoding: a request's chunk is its real tokens then its draft tokens
    (SchedulerOutput.spec_token_ids); it samples when its real tokens reach the end, at k + 1
    positions. As in the model executor, a verification chunk of at most MAX_DECODE_ROW_TOKENS
    tokens runs as that many decode rows (row i attends context + i + 1 keys); a longer one is
    a prefill chunk.
    How many drafts were accepted is the executor's decision: settle() applies it (num_tokens
    grows by accepted + 1, num_computed by the real tokens + accepted). A caller that never
    settles (the step log) is put right from the next SchedulerOutput's num_computed_tokens.
    """

    def __init__(self, max_attended_tokens: int | None = None) -> None:
        # A bounded attention window's span (corral/core/kv_window.py): no query attends to
        # more keys than this, however long its request (None: full attention).
        self.max_attended_tokens = max_attended_tokens
        self._states: dict[str, list[int]] = {}
        # Requests that verified drafts in the last counted step and were not settled yet.
        self._unsettled: set[str] = set()

    @property
    def num_requests(self) -> int:
        return len(self._states)

    def num_tokens_of(self, request_id: str) -> int:
        """A followed request's tokens (prompt + output) as counted so far."""
        return self._states[request_id][0]

    def count(self, scheduler_output: SchedulerOutput) -> tuple[BatchShape | None, list[str]]:
        """The step's shape (None when nothing was scheduled) and the ids of the requests whose
        chunk reaches their last token (each gets one token sampled, counted here, and with
        drafts as many more as settle() is told)."""
        states = self._states
        if self._unsettled:
            self._resync(scheduler_output)
        for request_id in scheduler_output.finished_request_ids:
            states.pop(request_id, None)
        for request_id in scheduler_output.preempted_request_ids:
            states.pop(request_id, None)
        for new in scheduler_output.new_requests:
            states[new.request_id] = [len(new.token_ids), new.num_computed_tokens]
        sampled_ids: list[str] = []
        p_tokens = p_requests = p_context = p_pairs = 0
        d_requests = d_context = d_max = 0
        num_drafts = 0
        span = self.max_attended_tokens
        for request_id, num_tokens in scheduler_output.num_scheduled_tokens.items():
            state = states[request_id]
            context = state[1]
            if num_tokens == 1:
                keys = context + 1 if span is None else min(context + 1, span)
                d_requests += 1
                d_context += keys
                if keys > d_max:
                    d_max = keys
            elif num_tokens <= MAX_DECODE_ROW_TOKENS and context + num_tokens > state[0]:
                # A verification chunk: one decode row per token, row i at context + i.
                d_requests += num_tokens
                d_context += attended_pairs(num_tokens, context, span)
                last_keys = context + num_tokens
                if span is not None and last_keys > span:
                    last_keys = span
                if last_keys > d_max:
                    d_max = last_keys
            else:
                p_tokens += num_tokens
                p_requests += 1
                p_context += context if span is None else min(context, span)
                p_pairs += attended_pairs(num_tokens, context, span)
            context += num_tokens
            state[1] = context
            if context == state[0]:
                sampled_ids.append(request_id)
                state[0] += 1
            elif context > state[0]:
                # The chunk carries context - end drafts after the request's last real token.
                end = state[0]
                num_drafts += context - end
                self._unsettled.add(request_id)
                sampled_ids.append(request_id)
                state[1] = end
                state[0] = end + 1
        if not scheduler_output.num_scheduled_tokens:
            return None, sampled_ids
        shape = BatchShape(
            p_tokens,
            p_requests,
            p_context,
            p_pairs,
            d_requests,
            d_context,
            d_max,
            len(sampled_ids) + num_drafts,
        )
        return shape, sampled_ids

    def settle(self, num_accepted: Mapping[str, int]) -> None:
        """After the last counted step: num_accepted[r] of request r's drafts were accepted
        (r absent: none). Call once per step that carried drafts, before the next count()."""
        states = self._states
        for request_id in self._unsettled:
            accepted = num_accepted.get(request_id, 0)
            state = states.get(request_id)
            if accepted and state is not None:
                state[0] += accepted
                state[1] += accepted
        self._unsettled.clear()

    def _resync(self, scheduler_output: SchedulerOutput) -> None:
        """Unsettled requests take the computed count the scheduler reports; after a step that
        sampled, a request's tokens are its computed tokens plus the one sampled last."""
        unsettled = self._unsettled
        states = self._states
        for cached in scheduler_output.cached_requests:
            if cached.request_id in unsettled:
                unsettled.discard(cached.request_id)
                state = states.get(cached.request_id)
                if state is not None:
                    state[1] = cached.num_computed_tokens
                    state[0] = cached.num_computed_tokens + 1
        for request_id in scheduler_output.finished_request_ids:
            unsettled.discard(request_id)
        for request_id in scheduler_output.preempted_request_ids:
            unsettled.discard(request_id)
