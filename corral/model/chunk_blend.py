"""RAG chunk reuse, the data plane: chunk prefills, re-rotated KV copies, selective recompute.

The executor hands each step's ChunkReusePlan (corral/core/chunk_reuse_plan.py) to
ChunkBlender.run before its forward pass:

1. ChunkPrefill: a chunk seen for the first time is computed alone (positions 0..L-1) into
   its chunk-store blocks, as an ordinary prefill.
2. ChunkCopy: the stored K/V of chunk positions [s, s + n) go to the request's positions
   [p, p + n) in every layer but the first; keys are rotated by p - s. RoPE turns a key at
   position q by angles q * inv_freq in independent planes, so turning it again by (p - s) *
   inv_freq gives the key at q + p - s exactly (up to rounding); a YaRN attention factor
   folded into the stored key is kept, as the extra turn is a pure rotation. Values are copied.
3. Blend (CacheBlend's selective recompute): the first layer runs on every row of [start, end)
   with the true context (its K/V depend on the token and position only, so this also writes
   the copied tokens' exact first-layer K/V). The second layer's K/V of every copied token are
   then projected from that layer's input and compared with the copied ones; the num_recompute
   tokens of each copy that deviate most (squared L2 of K and V) are recomputed, with every
   token outside the copies, through the remaining layers (a forward over a subset of rows at
   their positions), their K/V overwriting the copies.

The request's last prompt token is left to the ordinary forward pass (it gives the logits):
run() returns the step's schedule with each blended request reduced to that one token.
"""

from __future__ import annotations

import torch

from corral.config import EngineConfig
from corral.core.chunk_reuse_plan import BlendPlan, ChunkCopy, ChunkPrefill, ChunkReusePlan
from corral.core.kv_window import parse_kv_window_policy
from corral.model.layers.attention import LayerKVCache, write_kv
from corral.model.layers.rotary import rope_parameters
from corral.model.models.llama import LlamaFamilyModel
from corral.model.step_inputs import RequestState, batch_order, build_step_inputs
from corral.model.subset_forward import layer_qkv, run_layer, span_metadata
from corral.sampling_params import SamplingParams

# Layers whose K/V every blended row computes before the selection (CacheBlend picks after 1).
SELECTION_LAYER = 1


def check_blend_supported(model: LlamaFamilyModel, kv_caches: list[LayerKVCache]) -> None:
    """Refuse models and caches chunk blending cannot serve (ValueError naming the reason)."""
    arch = model.arch
    if model.rotary.dynamic is not None:
        raise ValueError("rag_chunk_reuse cannot re-rotate keys under dynamic NTK rope scaling")
    if model.all_reduce is not None:
        raise ValueError("rag_chunk_reuse does not run with tensor parallelism")
    if kv_caches[0].quantized:
        raise ValueError("rag_chunk_reuse needs an unquantized KV cache (kv_cache_dtype auto)")
    if arch.num_layers <= SELECTION_LAYER:
        raise ValueError(f"rag_chunk_reuse needs more than {SELECTION_LAYER} layer(s)")
    if arch.sliding_window is not None:
        # Its subset forward attends causally; windows would need the per-layer masks.
        raise ValueError("rag_chunk_reuse does not run on sliding-window models yet")


class ChunkBlender:
    """Carries out ChunkReusePlans on the executor's model and paged KV cache."""

    def __init__(
        self, model: LlamaFamilyModel, kv_caches: list[LayerKVCache], block_size: int
    ) -> None:
        check_blend_supported(model, kv_caches)
        self.model = model
        self.kv_caches = kv_caches
        self.block_size = block_size
        arch = model.arch
        self.inv_freq, _ = rope_parameters(
            arch.head_dim, arch.rope_theta, arch.rope_scaling, arch.max_position_embeddings
        )

    def run(
        self, plan: ChunkReusePlan, scheduled: list[tuple[RequestState, int]]
    ) -> list[tuple[RequestState, int]]:
        """Run the plan's chunk prefills and blends; the schedule left for the forward pass
        (each blended request with its last token only)."""
        if plan.prefills:
            self.prefill_chunks(plan.prefills)
        remaining = []
        for state, num_tokens in scheduled:
            blend = plan.blends.get(state.request_id)
            if blend is not None:
                if (
                    state.num_computed_tokens != blend.start
                    or num_tokens != blend.end + 1 - blend.start
                ):
                    raise RuntimeError(
                        f"blend plan of {state.request_id!r} does not match its schedule"
                    )
                self.blend(state.token_ids, state.block_ids, blend)
                state.num_computed_tokens = blend.end
                num_tokens = 1
            remaining.append((state, num_tokens))
        return remaining

    def prefill_chunks(self, prefills: list[ChunkPrefill]) -> None:
        """Compute each chunk alone into its store blocks."""
        params = SamplingParams()
        scheduled = [
            (
                RequestState(f"chunk-{index}", prefill.token_ids, len(prefill.token_ids), params,
                             prefill.block_ids, prefill.num_cached_tokens, frozenset()),
                prefill.num_computed_tokens,
            )
            for index, prefill in enumerate(prefills)
            if prefill.num_computed_tokens > 0
        ]  # fmt: skip
        if not scheduled:
            return
        model = self.model
        inputs = build_step_inputs(batch_order(scheduled), self.block_size, None, model.device)
        model.forward(inputs.input_ids, inputs.positions, self.kv_caches, inputs.metadata)

    def copy_chunks(
        self, block_ids: list[int], copies: list[ChunkCopy], first_layer: int = SELECTION_LAYER
    ) -> None:
        """Copy the chunks' stored K/V into the request's blocks (block_ids), keys re-rotated,
        in layers [first_layer, num_layers)."""
        device = self.model.device
        bs = self.block_size
        sources, targets, shifts = [], [], []
        for copy in copies:
            source = torch.arange(copy.source_start, copy.source_start + copy.num_tokens)
            target = torch.arange(copy.position, copy.position + copy.num_tokens)
            source_blocks = torch.tensor(copy.source_block_ids, dtype=torch.int64)
            sources.append(source_blocks[source // bs] * bs + source % bs)
            targets.append(_slots(block_ids, target, bs))
            shifts.append(torch.full((copy.num_tokens,), copy.position - copy.source_start))
        source_slots = torch.cat(sources).to(device)
        target_slots = torch.cat(targets).to(device)
        cos, sin = self._turn(torch.cat(shifts))
        for cache in self.kv_caches[first_layer:]:
            keys, values = read_kv(cache, source_slots)
            turned = self.model.rotary.rotate(keys.float(), cos, sin).to(keys.dtype)
            write_kv(turned, values, cache, target_slots)

    def blend(self, token_ids: list[int], block_ids: list[int], plan: BlendPlan) -> None:
        """Write the request's K/V of positions [plan.start, plan.end) in every layer."""
        model, device, bs = self.model, self.model.device, self.block_size
        self.copy_chunks(block_ids, plan.copies)
        positions = torch.arange(plan.start, plan.end, device=device)
        table = torch.tensor(block_ids, dtype=torch.int64, device=device)
        window = model.arch.sliding_window
        hidden = model.embed_tokens[torch.tensor(token_ids[plan.start : plan.end], device=device)]
        metadata = span_metadata(positions, table, bs, window)
        for index in range(SELECTION_LAYER):
            hidden = run_layer(model, index, hidden, positions, self.kv_caches[index], metadata)
        rows = self._select_rows(hidden, positions, metadata.slot_mapping, plan)
        if rows.numel() == 0:
            return
        hidden, positions = hidden[rows], positions[rows]
        metadata = span_metadata(positions, table, bs, window)
        for index in range(SELECTION_LAYER, model.arch.num_layers):
            hidden = run_layer(model, index, hidden, positions, self.kv_caches[index], metadata)

    def _select_rows(
        self, hidden: torch.Tensor, positions: torch.Tensor, slots: torch.Tensor, plan: BlendPlan
    ) -> torch.Tensor:
        """Row indices (ascending) of [start, end) that run the later layers: every row outside
        the copies, and each copy's num_recompute rows of largest K/V deviation."""
        is_copied = torch.zeros(plan.end - plan.start, dtype=torch.bool, device=hidden.device)
        for copy in plan.copies:
            is_copied[copy.position - plan.start : copy.position - plan.start + copy.num_tokens] = (
                True
            )
        chosen = [torch.nonzero(~is_copied).flatten()]
        if any(copy.num_recompute for copy in plan.copies):
            _, key, value = layer_qkv(self.model, SELECTION_LAYER, hidden, positions)
            cached_key, cached_value = read_kv(self.kv_caches[SELECTION_LAYER], slots)
            deviation = (key.float() - cached_key.float()).square().sum(dim=(1, 2))
            deviation += (value.float() - cached_value.float()).square().sum(dim=(1, 2))
            for copy in plan.copies:
                if copy.num_recompute:
                    first = copy.position - plan.start
                    run = deviation[first : first + copy.num_tokens]
                    chosen.append(first + torch.topk(run, copy.num_recompute).indices)
        return torch.sort(torch.cat(chosen)).values

    def _turn(self, shifts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """float32 cos/sin [n, 1, head_dim] of a pure rotation by each shift (no attention
        factor: the stored keys carry it already)."""
        angles = shifts.double().unsqueeze(-1) * self.inv_freq.double()
        angles = torch.cat((angles, angles), dim=-1)
        device = self.model.device
        return (
            angles.cos().float().unsqueeze(1).to(device),
            angles.sin().float().unsqueeze(1).to(device),
        )


def read_kv(cache: LayerKVCache, slots: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The K and V [len(slots), num_kv_heads, head_dim] at the slots of an unquantized cache."""
    block_size = cache.block_size
    num_kv_heads, head_dim = cache.value.shape[2], cache.value.shape[3]
    keys = cache.key[slots // block_size, :, :, slots % block_size]
    values = cache.value.view(-1, num_kv_heads, head_dim)[slots]
    return keys, values


def _slots(block_ids: list[int], positions: torch.Tensor, block_size: int) -> torch.Tensor:
    table = torch.tensor(block_ids, dtype=torch.int64)
    return table[positions // block_size] * block_size + positions % block_size


def start_chunk_blending(executor: object, config: EngineConfig) -> None:
    """Give a model executor its ChunkBlender (--rag-chunk-reuse); refuses LoRA and the
    models and caches check_blend_supported refuses. Other executors (the simulator's) need
    none."""
    if config.lora.is_enabled:
        raise ValueError("rag_chunk_reuse does not run with LoRA adapters")
    if parse_kv_window_policy(config.cache.kv_window_policy) is not None:
        raise ValueError("rag_chunk_reuse does not run with --kv-window-policy (attention sinks)")
    from corral.model.executor import ModelExecutor

    if isinstance(executor, ModelExecutor):
        executor.blender = ChunkBlender(executor.model, executor.kv_caches, executor.block_size)
