"""A fake executor for speculative scheduling tests (no torch): the 'target model' continues
any sequence with target_token(previous token, position); verification accepts drafts while
they match it; the 'proposer' guesses the right continuation with probability accuracy."""

from __future__ import annotations

import random

from corral.core.messages import ModelOutput, RequestUpdate, SchedulerOutput
from corral.core.scheduler import Scheduler


def target_token(previous: int, position: int) -> int:
    """Deterministic next token in [1, 60) (0, the EOS of make_request, never comes)."""
    return (previous * 31 + position * 17) % 59 + 1


def target_continuation(token_ids: list[int], num_tokens: int) -> list[int]:
    tokens = list(token_ids)
    for _ in range(num_tokens):
        tokens.append(target_token(tokens[-1], len(tokens)))
    return tokens[len(token_ids) :]


class FakeSpecExecutor:
    def __init__(self, scheduler: Scheduler, accuracy: float = 0.7, seed: int = 0) -> None:
        self.scheduler = scheduler
        self.accuracy = accuracy
        self.rng = random.Random(seed)
        self.num_verified_drafts = 0
        # The executor's copy of each request's block table, kept as a real executor does.
        self.block_tables: dict[str, list[int]] = {}

    def execute(self, output: SchedulerOutput) -> ModelOutput:
        for request_id in output.finished_request_ids | output.preempted_request_ids:
            self.block_tables.pop(request_id, None)
        for new in output.new_requests:
            self.block_tables[new.request_id] = list(new.block_ids)
        for cached in output.cached_requests:
            table = self.block_tables[cached.request_id]
            if cached.num_kept_blocks is not None:
                del table[cached.num_kept_blocks :]
            table.extend(cached.new_block_ids)
        for request_id in output.num_scheduled_tokens:
            assert self.block_tables[request_id] == self.scheduler.kv.block_ids(request_id)
        sampled: dict[str, list[int]] = {}
        for request_id, num_tokens in output.num_scheduled_tokens.items():
            request = self.scheduler.requests[request_id]
            drafts = output.spec_token_ids.get(request_id, [])
            assert drafts == request.spec_token_ids[: len(drafts)]
            num_real = num_tokens - len(drafts)
            if request.num_computed_tokens + num_real != request.num_tokens:
                assert not drafts, "drafts scheduled behind a prefill chunk"
                continue
            tokens = list(request.all_token_ids)
            accepted: list[int] = []
            for draft in drafts:
                expected = target_token(tokens[-1], len(tokens))
                if draft != expected:
                    break
                accepted.append(draft)
                tokens.append(draft)
            self.num_verified_drafts += len(drafts)
            sampled[request_id] = accepted + [target_token(tokens[-1], len(tokens))]
        proposals = {}
        for request_id, k in output.num_spec_tokens_to_propose.items():
            if request_id not in sampled or k == 0:
                continue
            tokens = list(self.scheduler.requests[request_id].all_token_ids) + sampled[request_id]
            guesses = []
            for _ in range(k):
                right = target_token(tokens[-1], len(tokens))
                guess = right if self.rng.random() < self.accuracy else (right % 59) + 1
                guesses.append(guess)
                tokens.append(guess)
            proposals[request_id] = guesses
        # A made-up step time growing with the tokens, so the adaptive rule has costs to learn.
        step_time_s = 0.001 + 0.0001 * output.total_num_scheduled_tokens
        return ModelOutput(sampled, step_time_s=step_time_s, spec_token_ids=proposals)

    def step(self) -> list[RequestUpdate]:
        output = self.scheduler.schedule()
        updates = self.scheduler.update(output, self.execute(output))
        self.scheduler.kv.check_integrity()
        return updates
