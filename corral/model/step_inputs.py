"""Turn one step's scheduled requests into tensors: tokens, positions, slots, attention metadata."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from corral.model.layers.attention import AttentionMetadata, DecodeBatch, PrefillSpan
from corral.sampling_params import SamplingParams


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


def build_step_inputs(
    scheduled: list[tuple[RequestState, int]],
    num_decodes: int,
    block_size: int,
    sliding_window: int | None,
    device: torch.device,
) -> StepInputs:
    """scheduled: (state, num_tokens) in batch order, the first num_decodes with one token each.

    Token t of a request sits at position num_computed_tokens + t and is written to slot
    block_ids[position // block_size] * block_size + position % block_size.
    """
    token_ids: list[int] = []
    positions: list[torch.Tensor] = []
    slots: list[torch.Tensor] = []
    row_ranges: list[tuple[int, int]] = []
    decode = None
    if num_decodes:
        decode_states = [state for state, _ in scheduled[:num_decodes]]
        decode_positions = [state.num_computed_tokens for state in decode_states]
        token_ids.extend(state.token_ids[p] for state, p in zip(decode_states, decode_positions))
        decode_table = [
            state.block_ids[: p // block_size + 1]
            for state, p in zip(decode_states, decode_positions)
        ]
        positions_tensor = torch.tensor(decode_positions, dtype=torch.int64)
        positions.append(positions_tensor)
        slots.append(
            torch.tensor(
                [
                    table[-1] * block_size + p % block_size
                    for table, p in zip(decode_table, decode_positions)
                ],
                dtype=torch.int64,
            )
        )
        max_num_blocks = max(len(table) for table in decode_table)
        padded = [table + [0] * (max_num_blocks - len(table)) for table in decode_table]
        key_positions = torch.arange(max_num_blocks * block_size)
        mask = key_positions.unsqueeze(0) <= positions_tensor.unsqueeze(1)
        if sliding_window is not None:
            mask &= key_positions.unsqueeze(0) > (positions_tensor - sliding_window).unsqueeze(1)
        decode = DecodeBatch(
            num_decodes=num_decodes,
            block_table=torch.tensor(padded, dtype=torch.int64, device=device),
            seq_lens=(positions_tensor + 1).to(device),
            mask=mask.view(num_decodes, 1, 1, -1).to(device),
        )
        row_ranges.extend((row, row + 1) for row in range(num_decodes))
    prefills = []
    row = num_decodes
    for state, num_tokens in scheduled[num_decodes:]:
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
        mask = None
        if start > 0 or sliding_window is not None:
            key_positions = torch.arange(end)
            mask = key_positions.unsqueeze(0) <= request_positions.unsqueeze(1)
            if sliding_window is not None:
                mask &= key_positions.unsqueeze(0) > (request_positions - sliding_window).unsqueeze(
                    1
                )
            mask = mask.to(device)
        prefills.append(PrefillSpan(row, row + num_tokens, start, block_ids.to(device), mask))
        row_ranges.append((row, row + num_tokens))
        row += num_tokens
    metadata = AttentionMetadata(
        slot_mapping=torch.cat(slots).to(device),
        decode=decode,
        prefills=prefills,
        sliding_window=sliding_window,
    )
    return StepInputs(
        input_ids=torch.tensor(token_ids, dtype=torch.int64, device=device),
        positions=torch.cat(positions).to(device),
        metadata=metadata,
        row_ranges=row_ranges,
    )
