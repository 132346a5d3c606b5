"""ModelExecutor: runs a SchedulerOutput through the model on the paged KV cache and samples."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import torch

from corral.config import (
    CacheConfig,
    LoRAConfig,
    ModelConfig,
    SpeculativeConfig,
    parse_memory_budget,
)
from corral.core.kv_window import resolve_kv_window
from corral.core.messages import ModelOutput, SchedulerOutput, TokenLogprobs
from corral.kv_transfer.worker_half import KVConnectorWorker
from corral.lora.memory import AdapterMemory
from corral.lora.step import lora_step
from corral.model.arch import ModelArch
from corral.model.chunk_blend import ChunkBlender
from corral.model.cpu_features import apply_cpu_isa
from corral.model.device import free_memory_bytes, resolve_device, resolve_dtype
from corral.model.huge_pages import move_weights_to_huge_pages
from corral.model.kv_disk import DiskKVStore
from corral.model.kv_identity import kv_config_hash
from corral.model.kv_storage import KVSpec, KVStorage, kv_storage_dtype, num_blocks_from_budget
from corral.model.layers.linear import pack_weights_for_kernel, tune_linear_dispatch
from corral.model.loader import load_model
from corral.model.models.llama import LlamaFamilyModel
from corral.model.quantization import apply_quantization
from corral.model.sampler import Sampler, gather_logprobs
from corral.model.sampling_step import sample, verify_drafts
from corral.model.step_inputs import RequestState, batch_order, build_step_inputs
from corral.model.tp_group import start_tensor_parallel
from corral.model.weight_offload import install_weight_offload, plan_weight_offload
from corral.spec.proposer import ProposalRequest, Proposer
from corral.structured.constraint import new_constraint

logger = logging.getLogger(__name__)

# Prompt-logprob rows are scored in chunks of this many positions to bound the logits' memory.
_PROMPT_LOGPROB_CHUNK = 256


class ModelExecutor:
    """Owns the model weights, the KV cache tensors and each running request's token state."""

    def __init__(
        self,
        model: LlamaFamilyModel,
        storage: KVStorage,
        seed: int = 0,
        proposer: Proposer | None = None,
        adapters: AdapterMemory | None = None,
        kv_window_policy: str | None = None,
    ) -> None:
        self.model = model
        self.device = model.device
        self.storage = storage
        self.block_size = storage.spec.block_size
        self.num_blocks = storage.values.shape[2]
        self.num_host_slots = 0 if storage.host_values is None else storage.host_values.shape[0]
        self.kv_caches = storage.layer_caches
        self.sampler = Sampler(seed, self.device)
        self.states: dict[str, RequestState] = {}
        # Prompt positions [0, n) already scored per request that asked for prompt logprobs.
        # Unlike states, it survives preemption: a recomputed prompt is never scored twice.
        self.num_prompt_logprobs_scored: dict[str, int] = {}
        # Speculative decoding's proposer (None: off); it runs after each step's sampling.
        self.proposer = proposer
        # Structured output's grammar backend (corral/structured/), set by the engine core.
        self.grammar_backend: Any = None
        # Multi-LoRA's host cache and compute slots (None: off).
        self.adapters = adapters
        # KV transfer between engines (corral.kv_transfer.worker_half; set by the EngineCore).
        self.connector: KVConnectorWorker | None = None
        self.kv_window = resolve_kv_window(model.arch.uniform_sliding_window, kv_window_policy)
        self.blender: ChunkBlender | None = None  # RAG chunk reuse (set by the EngineCore)

    @classmethod
    def create(
        cls,
        model_dir: str | Path,
        arch: ModelArch,
        model_config: ModelConfig,
        cache_config: CacheConfig,
        max_model_len: int,
        max_num_seqs: int,
        speculative: SpeculativeConfig | None = None,
        lora: LoRAConfig | None = None,
    ) -> ModelExecutor:
        """Load the weights, then size the KV pool from the memory budget (or num_blocks)."""
        apply_cpu_isa(model_config.cpu_isa)  # None: CORRAL_CPU_ISA's cap, else native
        device = resolve_device(model_config.device)
        dtype = resolve_dtype(model_config.dtype, arch.dtype, device)
        if model_config.num_threads:
            torch.set_num_threads(model_config.num_threads)
        torch.manual_seed(model_config.seed)
        tp = start_tensor_parallel(model_dir, arch, model_config, dtype, device, max_model_len)
        offloaded, offload_to = plan_weight_offload(model_config, arch, dtype, device)
        host_layer_ids = offloaded if offload_to == "host" else ()
        model = (
            tp.load_model()
            if tp
            else load_model(model_dir, arch, dtype, device, max_model_len, host_layer_ids)
        )
        apply_quantization(model, model_config.quantization)
        tune_linear_dispatch(model)
        if offload_to is not None:
            install_weight_offload(model, offloaded, offload_to, model_config.offload_dir)
        pack_weights_for_kernel(model)
        if model_config.huge_pages:
            move_weights_to_huge_pages(model)
        spec = KVSpec(
            arch.num_layers,
            cache_config.block_size,
            tp.num_kv_heads if tp else arch.num_kv_heads,  # rank 0's share with TP
            arch.head_dim,
            kv_storage_dtype(cache_config.kv_cache_dtype, dtype),
            dtype,
        )
        bytes_per_block = spec.bytes_per_block()
        num_blocks = cache_config.num_blocks
        if num_blocks is None:
            num_blocks = num_blocks_from_budget(
                cache_config.kv_cache_memory, device, bytes_per_block
            )
            # More blocks than max_num_seqs full-length requests can hold would never be used.
            useful = max_num_seqs * -(-max_model_len // spec.block_size)
            if num_blocks > useful:
                num_blocks = useful
        if num_blocks < -(-max_model_len // spec.block_size) and cache_config.num_blocks is None:
            logger.warning(
                "the KV pool (%d blocks) cannot hold one request of max_model_len %d tokens",
                num_blocks,
                max_model_len,
            )
        logger.info(
            "KV cache: %d blocks x %d tokens = %d tokens, %.1f MiB of %s on %s",
            num_blocks,
            spec.block_size,
            num_blocks * spec.block_size,
            num_blocks * bytes_per_block / 2**20,
            str(spec.dtype).removeprefix("torch."),
            device,
        )
        num_host_slots = 0
        if cache_config.host_cache_memory is not None:
            budget = parse_memory_budget(cache_config.host_cache_memory)
            host_bytes = budget * free_memory_bytes(torch.device("cpu")) if budget <= 1 else budget
            num_host_slots = int(host_bytes // bytes_per_block)
            if num_host_slots < 1:
                raise ValueError(
                    f"host cache memory {cache_config.host_cache_memory!r} ({int(host_bytes)} "
                    f"bytes) is less than one KV block ({bytes_per_block} bytes)"
                )
            logger.info(
                "KV host tier: %d blocks (%.1f MiB)",
                num_host_slots,
                num_host_slots * bytes_per_block / 2**20,
            )
        disk = None
        if cache_config.disk_cache_dir is not None:
            disk = DiskKVStore(
                cache_config.disk_cache_dir, kv_config_hash(model_dir, spec), bytes_per_block
            )
            logger.info(
                "KV disk tier: %s (%d blocks found)", disk.directory, len(disk.existing_hashes())
            )
        storage = KVStorage(
            spec, num_blocks, device, num_host_slots, disk, huge_pages=model_config.huge_pages
        )
        if tp is not None:
            tp.attach(storage)  # the workers make pools alike and mirror its tier copies
        proposer = None
        if speculative is not None and speculative.is_enabled:
            from corral.spec.factory import make_proposer

            proposer = make_proposer(
                speculative,
                vocab_size=arch.vocab_size,
                dtype=dtype,
                device=device,
                num_blocks=num_blocks,
                block_size=spec.block_size,
                max_model_len=max_model_len,
            )
        adapters = None
        if lora is not None and lora.is_enabled:
            adapters = AdapterMemory(arch, lora.max_loras, lora.max_lora_rank, dtype, device)
        policy = cache_config.kv_window_policy
        return cls(model, storage, model_config.seed, proposer, adapters, policy)

    def shutdown(self) -> None:
        """Stop the tensor-parallel workers, if any (the executor cannot run afterwards)."""
        getattr(self.model, "shutdown", lambda: None)()
        if getattr(self.model, "offload", None) is not None:
            self.model.offload.close()

    @torch.inference_mode()
    def execute(self, scheduler_output: SchedulerOutput) -> ModelOutput:
        """Run one step: update request states, compute the scheduled tokens (draft tokens
        after the real ones), sample or verify for the requests whose tokens are now all
        computed, score prompt logprobs where asked, propose the next drafts."""
        self._update_states(scheduler_output)
        self.storage.apply(scheduler_output.kv_transfers)
        if scheduler_output.adapter_plan is not None:
            assert self.adapters is not None, "an adapter plan for an executor without LoRA"
            self.adapters.apply(scheduler_output.adapter_plan)
        finished_disk_reads = self.storage.finished_disk_reads()
        connector_events = None
        if self.connector is not None:
            self.connector.apply(scheduler_output.connector_plan)
            connector_events = self.connector.poll()
        drafts = scheduler_output.spec_token_ids
        scheduled = [
            (self.states[request_id], num_tokens)
            for request_id, num_tokens in scheduler_output.num_scheduled_tokens.items()
        ]
        if self.blender is not None and scheduler_output.chunk_reuse is not None:
            scheduled = self.blender.run(scheduler_output.chunk_reuse, scheduled)
        if not scheduled:
            return ModelOutput(
                {}, finished_disk_reads=finished_disk_reads, connector_events=connector_events
            )
        # Drafts ride at the end of their request's tokens for this step only.
        num_verified = {}
        for request_id, draft_ids in drafts.items():
            state = self.states[request_id]
            num_verified[request_id] = len(state.token_ids)
            state.token_ids.extend(draft_ids)
        # Short chunks (decodes, verifications) take the batched decode path; they go first.
        scheduled = batch_order(scheduled)
        inputs = build_step_inputs(scheduled, self.block_size, self.kv_window, self.device)
        hidden = self.model.forward(
            inputs.input_ids,
            inputs.positions,
            self.kv_caches,
            inputs.metadata,
            lora_step(
                self.adapters, [state.lora_slot for state, _ in scheduled], inputs.row_ranges
            ),
        )
        sample_rows: list[int] = []
        sample_states: list[RequestState] = []
        first_rows: dict[str, int] = {}  # request id -> its first sampled row of hidden
        prompt_logprobs: dict[str, list[TokenLogprobs]] = {}
        for (state, num_tokens), (row_start, row_end) in zip(scheduled, inputs.row_ranges):
            start = state.num_computed_tokens
            if state.params.prompt_logprobs is not None:
                scored = self.num_prompt_logprobs_scored.get(state.request_id, 0)
                first = max(start, scored)
                if first < min(start + num_tokens, state.num_prompt_tokens - 1):
                    entries = self._prompt_logprobs(
                        state, hidden[row_start + first - start : row_end], first
                    )
                    prompt_logprobs[state.request_id] = entries
                    self.num_prompt_logprobs_scored[state.request_id] = first + len(entries)
            if start + num_tokens == len(state.token_ids):
                num_drafts = len(drafts.get(state.request_id, ()))
                first_rows[state.request_id] = row_end - 1 - num_drafts
                sample_rows.extend(range(row_end - 1 - num_drafts, row_end))
                sample_states.append(state)
        for request_id, length in num_verified.items():
            del self.states[request_id].token_ids[length:]
        sampled_token_ids: dict[str, list[int]] = {}
        logprobs: dict[str, list[TokenLogprobs]] = {}
        failed: dict[str, str] = {}
        if sample_rows:
            every_row = len(sample_rows) == hidden.shape[0]  # in order: decode and verify rows
            logits = self.model.compute_logits(hidden if every_row else hidden[sample_rows])
            if drafts:
                samples = verify_drafts(self.sampler, logits, sample_states, drafts)
            else:
                samples = sample(self.sampler, logits, sample_states)
            sampled_token_ids, logprobs, failed = samples
        for state, num_tokens in scheduled:
            num_drafts = len(drafts.get(state.request_id, ()))
            num_accepted = len(sampled_token_ids.get(state.request_id, ())) - 1
            state.num_computed_tokens += num_tokens - num_drafts + max(num_accepted, 0)
        spec_token_ids: dict[str, list[int]] = {}
        propose_time_s = 0.0
        catchup_time_s = None
        if self.proposer is not None and scheduler_output.num_spec_tokens_to_propose:
            propose_start = time.perf_counter()
            hidden_states = None
            if self.proposer.needs_hidden_states:
                hidden_states = {
                    request_id: hidden[first : first + len(sampled_token_ids[request_id])]
                    for request_id, first in first_rows.items()
                }
            spec_token_ids = self._propose(
                scheduler_output.num_spec_tokens_to_propose, hidden_states
            )
            propose_time_s = time.perf_counter() - propose_start
            catchup_time_s = self.proposer.catchup_time_s
        return ModelOutput(
            sampled_token_ids,
            logprobs,
            prompt_logprobs,
            finished_disk_reads=finished_disk_reads,
            spec_token_ids=spec_token_ids,
            propose_time_s=propose_time_s,
            catchup_time_s=catchup_time_s,
            failed=failed,
            connector_events=connector_events,
        )

    def _propose(
        self,
        num_to_propose: dict[str, int],
        hidden_states: dict[str, torch.Tensor] | None = None,
    ) -> dict[str, list[int]]:
        """The next drafts of each request that sampled this step (its verified tokens, and the
        target's hidden states there for proposers that need them)."""
        assert self.proposer is not None
        requests = []
        for request_id, max_num_tokens in num_to_propose.items():
            state = self.states.get(request_id)
            if state is None or max_num_tokens <= 0:
                continue
            state.draft_probs = None
            if state.token_ids[-1] in state.stop_token_ids:
                continue  # it stops here (unless min_tokens says otherwise; no loss either way)
            requests.append(
                ProposalRequest(
                    request_id,
                    state.token_ids,
                    state.num_prompt_tokens,
                    max_num_tokens,
                    state.params,
                    hidden_states.get(request_id) if hidden_states is not None else None,
                )
            )
        proposals = self.proposer.propose(requests) if requests else {}
        spec_token_ids = {}
        for request_id, proposal in proposals.items():
            if proposal.token_ids:
                spec_token_ids[request_id] = list(proposal.token_ids)
                self.states[request_id].draft_probs = proposal.probs
        return spec_token_ids

    def _update_states(self, scheduler_output: SchedulerOutput) -> None:
        for request_id in scheduler_output.finished_request_ids:
            self.states.pop(request_id, None)
            self.num_prompt_logprobs_scored.pop(request_id, None)
        for request_id in scheduler_output.preempted_request_ids:
            self.states.pop(request_id, None)
        if self.proposer is not None:
            self.proposer.forget(scheduler_output.finished_request_ids, finished=True)
            self.proposer.forget(scheduler_output.preempted_request_ids, finished=False)
        for new in scheduler_output.new_requests:
            stop_ids = set(new.sampling_params.stop_token_ids) | set(new.eos_token_ids)
            state = RequestState(
                request_id=new.request_id,
                token_ids=list(new.token_ids),
                num_prompt_tokens=new.num_prompt_tokens,
                params=new.sampling_params,
                block_ids=list(new.block_ids),
                num_computed_tokens=new.num_computed_tokens,
                stop_token_ids=frozenset(stop_ids),
                lora_slot=new.lora_slot,
            )
            params = new.sampling_params
            if params.structured_output is not None or params.reasoning is not None:
                state.constraint = new_constraint(
                    self.grammar_backend, new.grammar, params.reasoning, sorted(stop_ids)
                )
                for token_id in state.output_token_ids:  # resumed after preemption
                    state.constraint.accept(token_id)
            self.states[new.request_id] = state
        for cached in scheduler_output.cached_requests:
            state = self.states[cached.request_id]
            if cached.num_kept_blocks is not None:
                del state.block_ids[cached.num_kept_blocks :]
            state.block_ids.extend(cached.new_block_ids)
            state.num_computed_tokens = cached.num_computed_tokens

    def _prompt_logprobs(
        self, state: RequestState, hidden: torch.Tensor, start: int
    ) -> list[TokenLogprobs]:
        """Position p scores prompt token p + 1, for p in [start, min(end, num_prompt - 1))."""
        num_positions = min(hidden.shape[0], state.num_prompt_tokens - 1 - start)
        num_top = state.params.prompt_logprobs or 0
        results = []
        for offset in range(0, num_positions, _PROMPT_LOGPROB_CHUNK):
            count = min(_PROMPT_LOGPROB_CHUNK, num_positions - offset)
            logprobs = torch.log_softmax(
                self.model.compute_logits(hidden[offset : offset + count]), dim=-1
            )
            for index in range(count):
                target = state.token_ids[start + offset + index + 1]
                results.append(gather_logprobs(logprobs[index], target, num_top))
        return results
