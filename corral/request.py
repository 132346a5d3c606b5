"""Request: the control plane's record of one sequence being generated (torch-free)."""

from __future__ import annotations

import enum
import time
from typing import TYPE_CHECKING

from corral.core.request_times import PREEMPTION, RequestInterval
from corral.sampling_params import SamplingParams

if TYPE_CHECKING:
    from corral.lora.adapter import AdapterRef


class RequestStatus(enum.IntEnum):
    WAITING = 0
    RUNNING = 1
    PREEMPTED = 2
    # Everything from here on is finished.
    FINISHED_STOPPED = 10
    FINISHED_LENGTH = 11
    FINISHED_ABORTED = 12
    # It cannot go on (its grammar allows no token); stop_reason says why.
    FINISHED_ERROR = 13
    # It moved to another engine (live migration, corral/core/migration.py): not an end for the
    # client, whose router continues it there.
    FINISHED_MIGRATED = 14

    @property
    def is_finished(self) -> bool:
        return self >= RequestStatus.FINISHED_STOPPED

    @property
    def finish_reason(self) -> str | None:
        return _FINISH_REASONS.get(self)


_FINISH_REASONS = {
    RequestStatus.FINISHED_STOPPED: "stop",
    RequestStatus.FINISHED_LENGTH: "length",
    RequestStatus.FINISHED_ABORTED: "abort",
    RequestStatus.FINISHED_ERROR: "error",
    RequestStatus.FINISHED_MIGRATED: "migrated",
}


class Request:
    """One sequence: its tokens, how far the KV cache has computed them, and its state.

    Invariant: 0 <= num_computed_tokens <= num_tokens == len(all_token_ids). Each step the
    scheduler gives the request some of the num_tokens - num_computed_tokens tokens it still needs;
    prefix-cache hits advance num_computed_tokens for free, preemption by recompute resets it to 0.
    """

    __slots__ = (
        "request_id",
        "prompt_token_ids",
        "sampling_params",
        "eos_token_ids",
        "arrival_time",
        "priority",
        "client_id",
        "cache_salt",
        "adapter_id",
        "max_tokens",
        "all_token_ids",
        "num_prompt_tokens",
        "num_computed_tokens",
        "num_cached_tokens",
        "status",
        "stop_reason",
        "num_preemptions",
        "stop_token_id_set",
        "first_scheduled_time",
        "deadline_s",
        "predicted_num_output_tokens",
        "block_hashes",
        "spec_token_ids",
        "grammar",
        "lora",
        "lora_slot",
        "kv_transfer",
        "migratable",
        "sibling_group",
        "intervals",
        "session_id",
        "session_pause_s",
        "rag_chunk_spans",
        "rag_num_exact_tokens",
    )

    def __init__(
        self,
        request_id: str,
        prompt_token_ids: list[int],
        sampling_params: SamplingParams,
        *,
        eos_token_ids: frozenset[int] = frozenset(),
        max_model_len: int,
        arrival_time: float | None = None,
        priority: int = 0,
        client_id: str | None = None,
        cache_salt: str | None = None,
        adapter_id: str | None = None,
        deadline_s: float | None = None,
        lora: AdapterRef | None = None,
        kv_transfer: object | None = None,
        migratable: bool = False,
        sibling_group: str | None = None,
        session_id: str | None = None,
        session_pause_s: float | None = None,
        rag_chunk_spans: tuple[tuple[int, int], ...] | None = None,
    ) -> None:
        if not prompt_token_ids:
            raise ValueError(f"request {request_id!r}: the prompt is empty (0 tokens)")
        num_prompt_tokens = len(prompt_token_ids)
        room = max_model_len - num_prompt_tokens
        requested = sampling_params.max_tokens
        if room < 1 or (requested is not None and requested > room):
            raise ValueError(
                f"request {request_id!r}: {num_prompt_tokens} prompt tokens + "
                f"{requested if requested is not None else 'at least 1'} requested completion "
                f"tokens exceed the context length of {max_model_len} tokens"
            )
        self.request_id = request_id
        self.prompt_token_ids = list(prompt_token_ids)
        self.sampling_params = sampling_params
        self.eos_token_ids = eos_token_ids
        self.arrival_time = time.monotonic() if arrival_time is None else arrival_time
        self.priority = priority
        self.client_id = client_id
        self.cache_salt = cache_salt
        # The LoRA adapter it generates with (None: the base model); its key is the adapter
        # identity in prefix-cache block hashes.
        self.lora = lora
        self.adapter_id = lora.key if lora is not None else adapter_id
        self.lora_slot: int | None = None  # its adapter's compute slot while it runs
        # KV transfer between engines (corral.kv_transfer.params: RemoteDecode, RemotePrefill).
        self.kv_transfer = kv_transfer
        # Its client's router can continue it on another engine (live migration).
        self.migratable = migratable
        # The parent request id shared by the samples of one n > 1 request (same prompt); the
        # scheduler lets one of them compute the prompt's blocks for all (sibling_admission.py).
        self.sibling_group = sibling_group
        # The conversation it is a turn of: its KV stays pinned for the next turn for up to
        # --session-kv-ttl-s after it ends (corral/core/session_pins.py).
        self.session_id = session_id
        # The pause its client expects before the session's next turn (a tool's typical
        # latency); None: the pins' learnt average.
        self.session_pause_s = session_pause_s
        # Retrieved chunks as (first prompt position, num_tokens) spans, whose KV may be reused
        # from the chunk store (--rag-chunk-reuse, corral/core/chunk_reuse.py); None: none.
        self.rag_chunk_spans = rag_chunk_spans
        # Set when it was blended: its first tokens whose KV is exact (the rest of its blocks
        # stay out of the prefix cache).
        self.rag_num_exact_tokens: int | None = None
        self.deadline_s = deadline_s
        self.max_tokens = room if requested is None else requested
        self.all_token_ids = list(prompt_token_ids)
        self.num_prompt_tokens = num_prompt_tokens
        self.num_computed_tokens = 0
        self.num_cached_tokens = -1  # prefix-cache hit length at first scheduling; -1: not yet
        self.status = RequestStatus.WAITING
        self.stop_reason: int | str | None = None
        self.num_preemptions = 0
        self.first_scheduled_time: float | None = None
        self.predicted_num_output_tokens: int | None = None
        # Chained hashes of the request's full blocks, filled in by the KV cache manager.
        self.block_hashes: list[bytes | int] = []
        # Draft tokens proposed after the last step, not yet verified (not in all_token_ids).
        self.spec_token_ids: list[int] = []
        # The compiled structured-output grammar (opaque; set by the engine before scheduling).
        self.grammar: object | None = None
        # Its preemptions and waits for KV, for request tracing (None: it had none).
        self.intervals: list[RequestInterval] | None = None
        stop_ids = set(sampling_params.stop_token_ids)
        if not sampling_params.ignore_eos:
            stop_ids |= eos_token_ids
        self.stop_token_id_set = frozenset(stop_ids)

    @property
    def num_tokens(self) -> int:
        return len(self.all_token_ids)

    @property
    def num_output_tokens(self) -> int:
        return len(self.all_token_ids) - self.num_prompt_tokens

    @property
    def output_token_ids(self) -> list[int]:
        return self.all_token_ids[self.num_prompt_tokens :]

    @property
    def is_finished(self) -> bool:
        return self.status.is_finished

    def append_output_token(self, token_id: int) -> None:
        self.all_token_ids.append(token_id)

    def open_interval(self, kind: str, now_s: float, detail: str = "", num_tokens: int = 0) -> None:
        """Mark the start of a preemption or a wait for KV at now_s (request tracing); a wait
        already open (of this kind, the latest) goes on."""
        intervals = self.intervals
        if intervals is None:
            self.intervals = intervals = []
        elif intervals[-1].end_s is None and intervals[-1].kind == kind:
            return
        intervals.append(RequestInterval(kind, now_s, None, detail, num_tokens))

    def end_intervals(self, now_s: float) -> None:
        """End the open intervals at now_s: it is scheduled again (a preemption counts the
        tokens it held and holds no more as recomputed), or its KV arrived."""
        for interval in reversed(self.intervals or ()):
            if interval.end_s is not None:
                break
            interval.end_s = now_s
            if interval.kind == PREEMPTION:
                lost = interval.num_tokens - self.num_computed_tokens
                interval.num_recomputed_tokens = max(lost, 0)

    @property
    def last_preemption(self) -> RequestInterval | None:
        for interval in reversed(self.intervals or ()):
            if interval.kind == PREEMPTION:
                return interval
        return None

    def __repr__(self) -> str:
        return (
            f"Request({self.request_id!r}, status={self.status.name}, "
            f"computed={self.num_computed_tokens}/{self.num_tokens})"
        )
