"""The plain messages of the control plane: between the scheduler and an executor (model or
simulated), and from the scheduler to the engine (a step's RequestUpdates, SchedulerStats)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple

from corral.core.adapter_residency import AdapterPlan, AdapterStats
from corral.core.chunk_reuse_plan import ChunkReusePlan, ChunkReuseStats
from corral.core.kv_transfer import DiskReadResult, KVTransferPlan
from corral.core.request_times import RequestInterval
from corral.core.session_pins import SessionPinStats
from corral.kv_transfer.messages import ConnectorEvents, ConnectorPlan, KVTransferStats
from corral.kv_transfer.params import RemotePrefill, Resume
from corral.sampling_params import SamplingParams
from corral.spec.stats import SpecDecodeStats


@dataclass(frozen=True, slots=True)
class NewRequestData:
    """A request the executor has no state for: first scheduled, or resumed after preemption."""

    request_id: str
    token_ids: list[int]  # prompt + output so far; the executor keeps its own copy from here on
    num_prompt_tokens: int
    sampling_params: SamplingParams
    block_ids: list[int]
    num_computed_tokens: int
    eos_token_ids: frozenset[int] = frozenset()
    adapter_id: str | None = None
    # The compiled structured-output grammar (opaque to the control plane), if any.
    grammar: object | None = None
    # The compute slot of its LoRA adapter (None: the base model).
    lora_slot: int | None = None


@dataclass(frozen=True, slots=True)
class CachedRequestData:
    """A request the executor already holds: only what changed since its last step."""

    request_id: str
    new_block_ids: list[int]
    num_computed_tokens: int
    # Set when blocks at the end of the table were freed since the request's last step (they
    # held only rejected draft tokens): keep this many, then append new_block_ids.
    num_kept_blocks: int | None = None


@dataclass(frozen=True, slots=True)
class SchedulerOutput:
    """One step's plan. Requests run in the order new_requests then cached_requests.

    num_scheduled_tokens[r] tokens of request r are computed this step, starting at its
    num_computed_tokens; a request whose chunk reaches the end of its tokens gets a token sampled.
    """

    new_requests: list[NewRequestData]
    cached_requests: list[CachedRequestData]
    num_scheduled_tokens: dict[str, int]
    total_num_scheduled_tokens: int
    # Requests the executor must forget before this step (finished, aborted, preempted).
    finished_request_ids: set[str] = field(default_factory=set)
    preempted_request_ids: set[str] = field(default_factory=set)
    # Block copies between KV tiers, run before the forward pass (None: no lower tiers).
    kv_transfers: KVTransferPlan | None = None
    # Speculative decoding: draft tokens scheduled for verification, per request. They are the
    # last len(spec_token_ids[r]) of num_scheduled_tokens[r], after the request's real tokens.
    spec_token_ids: dict[str, list[int]] = field(default_factory=dict)
    # How many tokens to propose, after this step's verification, for each request that samples.
    num_spec_tokens_to_propose: dict[str, int] = field(default_factory=dict)
    # LoRA adapters to copy into compute slots (and host-cache entries to drop) before the step.
    adapter_plan: AdapterPlan | None = None
    # KV transfer between engines (disaggregation): leases to open or expire, fetches to run.
    connector_plan: ConnectorPlan | None = None
    # Each preempted request's preemption (how, the tokens it held; None where the request
    # keeps no intervals), for the step log; None when the step preempted none.
    preemptions: dict[str, RequestInterval | None] | None = None
    # RAG chunk reuse (corral/core/chunk_reuse_plan.py): chunks computed alone, then blends,
    # before the forward pass (None: none this step).
    chunk_reuse: ChunkReusePlan | None = None

    @property
    def is_empty(self) -> bool:
        return self.total_num_scheduled_tokens == 0


class TokenLogprobs(NamedTuple):
    """Logprobs at one position: the chosen token first, then the top N (ids, logprobs, ranks)."""

    token_ids: list[int]
    logprobs: list[float]
    ranks: list[int]


@dataclass(frozen=True, slots=True)
class ModelOutput:
    """What an executor returns for one SchedulerOutput."""

    # Sampled token ids per request that reached the end of its tokens this step: one, or with
    # draft tokens scheduled, the accepted drafts then one token of the target's (1 to k + 1).
    sampled_token_ids: dict[str, list[int]]
    # Per sampled token, when the request asked for logprobs.
    logprobs: dict[str, list[TokenLogprobs]] = field(default_factory=dict)
    # Per prompt position computed this step (position p scores prompt token p+1), when asked.
    prompt_logprobs: dict[str, list[TokenLogprobs]] = field(default_factory=dict)
    # Time the step took on the executor's clock (virtual in the simulator).
    step_time_s: float = 0.0
    # Disk -> host reads that finished since the last step.
    finished_disk_reads: list[DiskReadResult] = field(default_factory=list)
    # Speculative decoding: next draft tokens per request (num_spec_tokens_to_propose at most),
    # and the part of step_time_s spent proposing them.
    spec_token_ids: dict[str, list[int]] = field(default_factory=dict)
    propose_time_s: float = 0.0
    # Of propose_time_s, the proposer's catch-up where it times it (Proposer.catchup_time_s).
    catchup_time_s: float | None = None
    # Requests that cannot go on (their grammar allows no token), with the reason.
    failed: dict[str, str] = field(default_factory=dict)
    # KV transfer between engines: fetches finished, leases released.
    connector_events: ConnectorEvents | None = None


EMPTY_MODEL_OUTPUT = ModelOutput(sampled_token_ids={})


@dataclass(slots=True)
class RequestUpdate:
    """What one step changed for one request, for the engine's output processing."""

    request_id: str
    new_token_ids: list[int]
    finish_reason: str | None = None
    stop_reason: int | str | None = None
    logprobs: list[TokenLogprobs] | None = None
    prompt_logprobs: list[TokenLogprobs] | None = None
    # Prompt tokens served from the prefix cache (any tier) at first scheduling; -1: unknown.
    num_cached_tokens: int = -1
    # A finished prefill's lease, for the decode engine (disaggregation), or a migrated
    # request's output and lease, for the engine it moves to (None otherwise).
    kv_transfer_params: RemotePrefill | Resume | None = None
    # Times the request was preempted so far (request tracing).
    num_preemptions: int = 0
    # On its last update: its preemptions and waits for KV (request tracing; None: none).
    intervals: list[RequestInterval] | None = None


@dataclass(frozen=True, slots=True)
class SchedulerStats:
    num_running: int
    num_waiting: int
    kv_cache_usage: float
    num_preemptions: int
    prefix_query_tokens: int
    prefix_hit_tokens: int
    prefix_cache_evictions: int = 0
    # Lower KV tiers (zero without them): blocks loaded back from host, read from disk,
    # spilled to host and to disk, requests swapped out.
    kv_host_loads: int = 0
    kv_disk_reads: int = 0
    kv_host_saves: int = 0
    kv_disk_writes: int = 0
    kv_swap_outs: int = 0
    # Speculative decoding counters (None: off).
    spec_decode: SpecDecodeStats | None = None
    # Multi-LoRA counters (None: off).
    lora: AdapterStats | None = None
    # KV transfer between engines (None: off).
    kv_transfer: KVTransferStats | None = None
    # Mixture of experts (None: a dense model): tokens routed to each expert so far, per MoE
    # layer index (read from the model every few steps, so a little behind).
    expert_tokens: dict[int, list[int]] | None = None
    # Session KV pins (None: --session-kv-ttl-s off).
    session_pins: SessionPinStats | None = None
    # RAG chunk reuse counters (None: off).
    rag_chunks: ChunkReuseStats | None = None

    @property
    def prefix_hit_rate(self) -> float:
        return (
            self.prefix_hit_tokens / self.prefix_query_tokens if self.prefix_query_tokens else 0.0
        )
