"""Token bitmasks: int32 [rows, ceil(vocab / 32)], bit t % 32 of word t // 32 allows token t (the
layout xgrammar and llguidance share)."""

from __future__ import annotations

import torch


def new_bitmask(num_rows: int, vocab_size: int) -> torch.Tensor:
    """Every token allowed in every row."""
    return torch.full((num_rows, (vocab_size + 31) // 32), -1, dtype=torch.int32)


def allows(bitmask: torch.Tensor, row: int, token_id: int) -> bool:
    return bool((int(bitmask[row, token_id // 32]) >> (token_id % 32)) & 1)


def set_bit(bitmask: torch.Tensor, row: int, token_id: int, allowed: bool = True) -> None:
    """Allow (or forbid) token_id in one row."""
    word = int(bitmask[row, token_id // 32]) & 0xFFFFFFFF
    bit = 1 << (token_id % 32)
    word = word | bit if allowed else word & ~bit & 0xFFFFFFFF
    bitmask[row, token_id // 32] = word - (1 << 32) if word >= 1 << 31 else word
