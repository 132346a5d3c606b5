"""OutputProcessor: scheduler updates -> RequestOutputs (text, logprobs, finish reasons, n > 1)."""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from typing import Any

from corral.core.messages import RequestUpdate, TokenLogprobs
from corral.engine.consensus import AGREED, compile_answer_pattern, extract_answer, vote
from corral.engine.detokenizer import IncrementalDetokenizer
from corral.engine.tokenizer import Tokenizer
from corral.outputs import CompletionOutput, Logprob, PositionLogprobs, RequestOutput
from corral.request import RequestStatus
from corral.sampling_params import OutputKind, SamplingParams


@dataclass(slots=True)
class _Sample:
    """One of a request's n samples (a child request in the scheduler)."""

    index: int
    detokenizer: IncrementalDetokenizer | None
    token_ids: list[int] = field(default_factory=list)
    logprobs: list[PositionLogprobs] | None = None
    cumulative_logprob: float | None = None
    finish_reason: str | None = None
    stop_reason: int | str | None = None
    # How much was already sent, for delta outputs.
    num_sent_tokens: int = 0
    num_sent_chars: int = 0
    # Its finish was sent (delta outputs): a finished sample is sent exactly once.
    is_finish_sent: bool = False


@dataclass(slots=True)
class _Tracked:
    request_id: str
    prompt: str | None
    prompt_token_ids: list[int]
    params: SamplingParams
    samples: list[_Sample]
    arrival_time: float
    prompt_logprobs: list[PositionLogprobs | None] | None = None
    first_token_time: float | None = None
    num_cached_tokens: int = 0
    child_ids: list[str] = field(default_factory=list)
    kv_transfer_params: dict[str, Any] | None = None
    # Self-consistency (stop_when_agreed or answer_pattern): the compiled answer pattern.
    answer_pattern: re.Pattern[str] | None = None
    agreed_early: bool = False


MIGRATED = RequestStatus.FINISHED_MIGRATED.finish_reason  # "migrated"


def _resume(sample: _Sample, token_ids: list[int]) -> None:
    """Start a migrated sample where its first engine left it: the same detokenizer state
    (so text held back there for a possible stop string is held back here), all of it sent."""
    sample.token_ids = list(token_ids)
    sample.num_sent_tokens = len(token_ids)
    if sample.detokenizer is not None:
        sample.detokenizer.add_tokens(sample.token_ids)
        sample.num_sent_chars = len(sample.detokenizer.streamable_text(False))


class OutputProcessor:
    """Turns per-step scheduler updates into user-facing outputs; detects stop strings."""

    def __init__(self, tokenizer: Tokenizer | None) -> None:
        self.tokenizer = tokenizer
        self._tracked: dict[str, _Tracked] = {}
        # child request id -> (parent request id, sample index)
        self._children: dict[str, tuple[str, int]] = {}

    def add_request(
        self,
        request_id: str,
        child_ids: list[str],
        prompt: str | None,
        prompt_token_ids: list[int],
        params: SamplingParams,
        arrival_time: float,
        resumed_token_ids: list[int] | None = None,
    ) -> None:
        """Track a request's samples. resumed_token_ids: a migrated request's output from the
        engine it left (n == 1): already sent to the client, part of the final text."""
        samples = []
        for index, child_id in enumerate(child_ids):
            detokenizer = None
            if self.tokenizer is not None and params.detokenize:
                detokenizer = IncrementalDetokenizer(
                    self.tokenizer,
                    prompt_token_ids,
                    skip_special_tokens=params.skip_special_tokens,
                    stop=params.stop,
                    include_stop_str_in_output=params.include_stop_str_in_output,
                    min_tokens=params.min_tokens,
                )
            sample = _Sample(index, detokenizer)
            if resumed_token_ids:
                _resume(sample, resumed_token_ids)
            if params.logprobs is not None:
                sample.logprobs = []
                sample.cumulative_logprob = 0.0
            samples.append(sample)
            self._children[child_id] = (request_id, index)
        tracked = _Tracked(request_id, prompt, prompt_token_ids, params, samples, arrival_time)
        tracked.child_ids = list(child_ids)
        if params.stop_when_agreed is not None or params.answer_pattern is not None:
            tracked.answer_pattern = compile_answer_pattern(params.answer_pattern)
        if params.prompt_logprobs is not None:
            tracked.prompt_logprobs = [None]
        self._tracked[request_id] = tracked

    def has_request(self, request_id: str) -> bool:
        return request_id in self._tracked

    def child_ids(self, request_id: str) -> list[str]:
        tracked = self._tracked.get(request_id)
        return list(tracked.child_ids) if tracked else []

    def parent_of(self, child_id: str) -> str | None:
        parent = self._children.get(child_id)
        return parent[0] if parent else None

    def process(self, updates: list[RequestUpdate]) -> tuple[list[RequestOutput], list[str]]:
        """Apply one step's updates. Returns the outputs to emit and the child ids that a stop
        string finished (the engine must finish them in the scheduler)."""
        now = time.monotonic()
        touched: dict[str, _Tracked] = {}
        stopped_children: list[str] = []
        for update in updates:
            parent = self._children.get(update.request_id)
            if parent is None:
                continue
            tracked = self._tracked[parent[0]]
            sample = tracked.samples[parent[1]]
            prompt_logprobs = update.prompt_logprobs if parent[1] == 0 else None
            if prompt_logprobs is not None and tracked.prompt_logprobs is not None:
                self._extend_prompt_logprobs(tracked, prompt_logprobs)
            if update.new_token_ids and tracked.first_token_time is None:
                tracked.first_token_time = now
            if parent[1] == 0 and update.num_cached_tokens > tracked.num_cached_tokens:
                tracked.num_cached_tokens = update.num_cached_tokens
            if update.kv_transfer_params is not None:
                tracked.kv_transfer_params = update.kv_transfer_params.to_json()
            if sample.finish_reason is not None:
                continue  # a stop string ended it; tokens from the same step are dropped
            self._apply_tokens(sample, update)
            stop = None
            if sample.detokenizer is not None:
                stop = sample.detokenizer.add_tokens(update.new_token_ids)
            if stop is not None:
                sample.finish_reason, sample.stop_reason = "stop", stop
                if update.finish_reason is None:
                    stopped_children.append(update.request_id)
            elif update.finish_reason is not None:
                sample.finish_reason, sample.stop_reason = update.finish_reason, update.stop_reason
                # A migrated sample's held-back text goes on where it moves (see _resume).
                if sample.detokenizer is not None and update.finish_reason != MIGRATED:
                    sample.detokenizer.flush()
            touched[tracked.request_id] = tracked
        for tracked in touched.values():
            if tracked.params.stop_when_agreed is not None and not tracked.agreed_early:
                stopped_children += self._stop_if_agreed(tracked)
        outputs = [o for t in touched.values() if (o := self._make_output(t)) is not None]
        return outputs, stopped_children

    def _answers(self, tracked: _Tracked) -> list[str | None]:
        """The answers of the samples that finished by themselves, in sample order."""
        assert tracked.answer_pattern is not None
        answers = []
        for sample in tracked.samples:
            if sample.finish_reason in ("stop", "length") and sample.stop_reason != AGREED:
                text = sample.detokenizer.streamable_text(True) if sample.detokenizer else ""
                answers.append(extract_answer(text, tracked.answer_pattern))
        return answers

    def _stop_if_agreed(self, tracked: _Tracked) -> list[str]:
        """Once stop_when_agreed finished samples agree, stop the others; their child ids."""
        consensus = vote(self._answers(tracked))
        if consensus.num_votes < (tracked.params.stop_when_agreed or 0):
            return []
        tracked.agreed_early = True
        stopped = []
        for sample, child_id in zip(tracked.samples, tracked.child_ids):
            if sample.finish_reason is None:
                sample.finish_reason, sample.stop_reason = "stop", AGREED
                stopped.append(child_id)
        return stopped

    def abort(self, request_id: str) -> RequestOutput | None:
        """Finish every unfinished sample of a request with reason 'abort'."""
        tracked = self._tracked.get(request_id)
        if tracked is None:
            return None
        for sample in tracked.samples:
            if sample.finish_reason is None:
                sample.finish_reason = "abort"
        return self._make_output(tracked)

    def _apply_tokens(self, sample: _Sample, update: RequestUpdate) -> None:
        sample.token_ids.extend(update.new_token_ids)
        if sample.logprobs is not None and update.logprobs:
            for position in self._position_logprobs(update.logprobs):
                sample.logprobs.append(position)
                chosen = next(iter(position.values()))
                sample.cumulative_logprob = (sample.cumulative_logprob or 0.0) + chosen.logprob

    def _extend_prompt_logprobs(self, tracked: _Tracked, entries: list[TokenLogprobs]) -> None:
        """Invariant: prompt_logprobs[p] scores prompt token p, once per position (entry 0 is
        None); the executor reports each position once, even across preemptions."""
        positions = tracked.prompt_logprobs
        assert positions is not None
        prompt = tracked.prompt_token_ids
        if len(positions) + len(entries) > len(prompt):
            raise RuntimeError(
                f"request {tracked.request_id!r}: {len(positions) + len(entries)} prompt logprob "
                f"positions for a prompt of {len(prompt)} tokens (positions reported twice)"
            )
        for entry in entries:
            position = len(positions)
            if entry.token_ids[0] != prompt[position]:
                raise RuntimeError(
                    f"request {tracked.request_id!r}: prompt logprobs at position {position} "
                    f"score token {entry.token_ids[0]}, not the prompt's {prompt[position]}"
                )
            positions.extend(self._position_logprobs([entry]))

    def _position_logprobs(self, entries: list[TokenLogprobs]) -> list[PositionLogprobs]:
        result = []
        for entry in entries:
            position: PositionLogprobs = {}
            for token_id, logprob, rank in zip(entry.token_ids, entry.logprobs, entry.ranks):
                if token_id not in position:
                    text = self._token_text(token_id)
                    position[token_id] = Logprob(logprob, rank, text)
            result.append(position)
        return result

    def _token_text(self, token_id: int) -> str | None:
        return self.tokenizer.token_text(token_id) if self.tokenizer is not None else None

    def _make_output(self, tracked: _Tracked) -> RequestOutput | None:
        finished = all(sample.finish_reason is not None for sample in tracked.samples)
        kind = tracked.params.output_kind
        if kind == OutputKind.FINAL_ONLY and not finished:
            return None
        completions = []
        for sample in tracked.samples:
            done = sample.finish_reason is not None
            ended = done and sample.finish_reason != MIGRATED
            text = sample.detokenizer.streamable_text(ended) if sample.detokenizer else ""
            token_ids, logprobs = sample.token_ids, sample.logprobs
            if kind == OutputKind.DELTA:
                if sample.num_sent_tokens == len(token_ids) and (
                    sample.num_sent_chars == len(text) and (not done or sample.is_finish_sent)
                ):
                    continue
                sample.is_finish_sent = done
                text = text[sample.num_sent_chars :]
                token_ids = token_ids[sample.num_sent_tokens :]
                if logprobs is not None:
                    logprobs = logprobs[sample.num_sent_tokens :]
                sample.num_sent_chars += len(text)
                sample.num_sent_tokens = len(sample.token_ids)
            completions.append(
                CompletionOutput(
                    index=sample.index,
                    text=text,
                    token_ids=list(token_ids),
                    cumulative_logprob=sample.cumulative_logprob,
                    logprobs=list(logprobs) if logprobs is not None else None,
                    finish_reason=sample.finish_reason,
                    stop_reason=sample.stop_reason,
                )
            )
        prompt_logprobs = tracked.prompt_logprobs
        output = RequestOutput(
            request_id=tracked.request_id,
            prompt=tracked.prompt,
            prompt_token_ids=tracked.prompt_token_ids,
            outputs=completions,
            finished=finished,
            prompt_logprobs=list(prompt_logprobs) if prompt_logprobs is not None else None,
            num_cached_tokens=tracked.num_cached_tokens,
            kv_transfer_params=tracked.kv_transfer_params,
        )
        if finished and tracked.answer_pattern is not None:
            output.consensus = vote(self._answers(tracked), tracked.agreed_early)
        output.metrics["arrival_time"] = tracked.arrival_time
        if tracked.first_token_time is not None:
            output.metrics["first_token_time"] = tracked.first_token_time
        if finished:
            self._forget(tracked)
        return output

    def _forget(self, tracked: _Tracked) -> None:
        del self._tracked[tracked.request_id]
        for child_id in tracked.child_ids:
            self._children.pop(child_id, None)
