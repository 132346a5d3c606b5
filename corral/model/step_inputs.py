"""Turn one step's scheduled requests into tensors: tokens, positions, slots, attention metadata."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from corral.core.kv_window import KVWindow
from corral.model.layers.attention import AttentionMetadata, DecodeBatch, PrefillSpan
from corral.model.layers.sink_attention import SinkMetadata, SinkSpan, sink_delta
from corral.sampling_params import SamplingParams
from corral.structured.constraint import OutputConstraint


@dataclass(slots=True)
class RequestState:
    """The executor's copy of a running request (kept between steps)."""

    request_id: str
    token_ids: list[int]
    num_prompt_tokens: int
    params: SamplingParams
    block_ids: list[int]
    num_computed_tokens: int
    stop_token_ids: frozenset[int]
    # The distribution the pending drafts were drawn from ([k, vocab]; None: point masses).
    draft_probs: torch.Tensor | None = None
    # The grammar / reasoning budget on its next token (corral/structured/constraint.py).
    constraint: OutputConstraint | None = None
    # The compute slot of its LoRA adapter (None: the base model).
    lora_slot: int | None = None

    @property
    def output_token_ids(self) -> list[int]:
        return self.token_ids[self.num_prompt_tokens :]


@dataclass(slots=True)
class StepInputs:
    input_ids: torch.Tensor  # int64 [num_tokens]
    positions: torch.Tensor  # int64 [num_tokens]
    metadata: AttentionMetadata
    # Rows [row_start, row_end) of the flattened batch for each scheduled request, in batch order.
    row_ranges: list[tuple[int, int]]


# Chunks of at most this many tokens run as decode rows (one row per token, each attending to
# its request's cached keys up to its own position): verification chunks of speculative
# decoding and short catch-ups take the paged decode kernel instead of gathered matmuls.
MAX_DECODE_ROW_TOKENS = 16


def runs_as_decode_rows(num_tokens: int) -> bool:
    return num_tokens <= MAX_DECODE_ROW_TOKENS


def batch_order(scheduled: list[tuple[RequestState, int]]) -> list[tuple[RequestState, int]]:
    """The order build_step_inputs wants: decode-row chunks first (stable otherwise)."""
    return sorted(scheduled, key=lambda item: not runs_as_decode_rows(item[1]))


def build_step_inputs(
    scheduled: list[tuple[RequestState, int]],
    block_size: int,
    kv_window: KVWindow | None,
    device: torch.device,
) -> StepInputs:
    """scheduled: (state, num_tokens) in batch_order(): chunks that run as decode rows first.

    Token t of a request sits at position num_computed_tokens + t and is written to slot
    block_ids[position // block_size] * block_size + position % block_size. With a window
    (corral/core/kv_window.py), keys behind it are masked and prefill chunks read only the
    blocks from the window's start: the scheduler may have given the others away. With sinks,
    queries past the first num_sink_tokens + window_tokens positions go to SinkSpans.
    """
    num_sinks = kv_window.num_sink_tokens if kv_window is not None else 0
    window = kv_window.window_tokens if kv_window is not None else None
    token_ids: list[int] = []
    positions: list[torch.Tensor] = []
    slots: list[torch.Tensor] = []
    row_ranges: list[tuple[int, int]] = []
    sink_spans: list[SinkSpan] = []
    decode_sink_spans: list[SinkSpan] = []
    decode = None
    num_decode_chunks = 0
    while num_decode_chunks < len(scheduled) and runs_as_decode_rows(
        scheduled[num_decode_chunks][1]
    ):
        num_decode_chunks += 1
    if num_decode_chunks:
        # One row per token; its block-table row is the request's table (the kernel reads no
        # further than the row's length, and padding is block 0).
        decode_positions: list[int] = []
        decode_slots: list[int] = []
        tables: list[list[int]] = []
        for state, num_tokens in scheduled[:num_decode_chunks]:
            start = state.num_computed_tokens
            row = len(decode_positions)
            row_ranges.append((row, row + num_tokens))
            token_ids.extend(state.token_ids[start : start + num_tokens])
            block_ids = state.block_ids[: (start + num_tokens - 1) // block_size + 1]
            for p in range(start, start + num_tokens):
                decode_positions.append(p)
                decode_slots.append(block_ids[p // block_size] * block_size + p % block_size)
                tables.append(block_ids)
            if num_sinks and sink_delta(start + num_tokens - 1, num_sinks, window):
                decode_sink_spans.append(_sink_span(state, row, num_tokens, block_size, device))
        num_decodes = len(decode_positions)
        max_num_blocks = max(len(table) for table in tables)
        flat = token_ids + decode_positions + decode_slots
        for table in tables:
            flat += table
            flat += [0] * (max_num_blocks - len(table))
        # One tensor for the tokens, positions, slots and block table, then views of it.
        packed = torch.tensor(flat, dtype=torch.int64)
        decode_input_ids = packed[:num_decodes]
        positions_tensor = packed[num_decodes : 2 * num_decodes]
        positions.append(positions_tensor)
        slots.append(packed[2 * num_decodes : 3 * num_decodes])
        block_table = packed[3 * num_decodes :].view(num_decodes, max_num_blocks)
        decode = DecodeBatch(
            num_decodes=num_decodes,
            block_table=block_table.to(device),
            seq_lens=(positions_tensor + 1).to(device),
            block_size=block_size,
            window=window,
            num_sinks=num_sinks,
        )
    prefills = []
    row = row_ranges[-1][1] if row_ranges else 0
    for state, num_tokens in scheduled[num_decode_chunks:]:
        start = state.num_computed_tokens
        end = start + num_tokens
        token_ids.extend(state.token_ids[start:end])
        request_positions = torch.arange(start, end, dtype=torch.int64)
        positions.append(request_positions)
        num_blocks = -(-end // block_size)
        block_ids = torch.tensor(state.block_ids[:num_blocks], dtype=torch.int64)
        slots.append(
            block_ids[request_positions // block_size] * block_size + request_positions % block_size
        )
        row_ranges.append((row, row + num_tokens))
        if num_sinks and sink_delta(end - 1, num_sinks, window):
            sink_spans.append(_sink_span(state, row, num_tokens, block_size, device))
            prefills.append(PrefillSpan(row, row + num_tokens, start, block_ids, None, sink=True))
            row += num_tokens
            continue
        # Keys from kv_start (a block boundary) on: the window's, or all.
        kv_start = 0
        if window is not None and not num_sinks:
            kv_start = max(0, start - window + 1) // block_size * block_size
        mask = None  # plain causal: attention builds it chunk by chunk
        if window is not None and not num_sinks:
            key_positions = torch.arange(kv_start, end).unsqueeze(0)
            mask = key_positions <= request_positions.unsqueeze(1)
            mask &= key_positions > (request_positions - window).unsqueeze(1)
            mask = mask.to(device)
        span_blocks = block_ids[kv_start // block_size :].to(device)
        prefills.append(PrefillSpan(row, row + num_tokens, start - kv_start, span_blocks, mask))
        row += num_tokens
    sinks = None
    if num_sinks:
        all_positions = torch.cat(positions)
        deltas = (all_positions - (num_sinks + window - 1)).clamp_(min=0)
        has_gap = bool(sink_spans or decode_sink_spans)
        sinks = SinkMetadata(
            num_sinks, window, sink_spans, deltas.to(device), decode_sink_spans, has_gap
        )
    metadata = AttentionMetadata(
        slot_mapping=(slots[0] if len(slots) == 1 else torch.cat(slots)).to(device),
        decode=decode,
        prefills=prefills,
        sliding_window=window,
        row_ranges=row_ranges,
        sinks=sinks,
    )
    if num_decode_chunks and num_decode_chunks == len(scheduled):
        input_ids = decode_input_ids.to(device)
    else:
        input_ids = torch.tensor(token_ids, dtype=torch.int64, device=device)
    return StepInputs(
        input_ids=input_ids,
        positions=(positions[0] if len(positions) == 1 else torch.cat(positions)).to(device),
        metadata=metadata,
        row_ranges=row_ranges,
    )


def _sink_span(
    state: RequestState, row: int, num_tokens: int, block_size: int, device: torch.device
) -> SinkSpan:
    end = state.num_computed_tokens + num_tokens
    block_ids = torch.tensor(state.block_ids[: -(-end // block_size)], dtype=torch.int64)
    return SinkSpan(row, row + num_tokens, state.num_computed_tokens, block_ids.to(device))
