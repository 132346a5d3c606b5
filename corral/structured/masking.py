"""Grammar masks over a step's logits rows (data plane, torch).

The executor asks for one bitmask per step covering the rows it samples from; only the rows of
constrained requests are filled and masked, all in one call to the backend's kernel. With
speculative drafts, a request's k + 1 rows are filled by walking its constraint through the
drafts (row i: the tokens allowed after draft i), then rolled back; verification then accepts
drafts only where the grammar allows them, and the tokens that stand are accepted for real.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from corral.structured.constraint import OutputConstraint

NO_TOKEN_ALLOWED = "the output's grammar allows no token of this model's vocabulary here"


@dataclass(slots=True)
class TokenMask:
    """A step's bitmask [num_rows, words]; rows in row_indices are constrained."""

    backend: Any
    bitmask: torch.Tensor
    row_indices: list[int] = field(default_factory=list)

    def apply(self, logits: torch.Tensor) -> None:
        """Set the logits of disallowed tokens to -inf in the constrained rows (in place)."""
        if self.row_indices:
            self.backend.apply_bitmask(logits, self.bitmask, self.row_indices)

    def take_empty_rows(self) -> set[int]:
        """Constrained rows that allow no token at all, removed from the mask (their requests
        fail; their samples are discarded)."""
        if not self.row_indices:
            return set()
        rows = torch.tensor(self.row_indices)
        empty = (self.bitmask[rows] == 0).all(dim=1)
        found = {self.row_indices[i] for i in empty.nonzero().flatten().tolist()}
        if found:
            self.row_indices = [row for row in self.row_indices if row not in found]
        return found


def sample_mask(
    backend: Any, constraints: list[OutputConstraint | None], vocab_size: int
) -> TokenMask | None:
    """One row per request (None: unconstrained); None when no row is constrained."""
    if not any(c is not None for c in constraints):
        return None
    mask = TokenMask(backend, backend.bitmask(len(constraints), vocab_size))
    for row, constraint in enumerate(constraints):
        if constraint is not None and constraint.fill(mask.bitmask, row):
            mask.row_indices.append(row)
    return mask


def verify_mask(
    backend: Any,
    groups: list[tuple[OutputConstraint | None, list[int]]],
    vocab_size: int,
) -> tuple[TokenMask | None, list[int]]:
    """Rows for (constraint, drafts) groups of len(drafts) + 1 rows each, back to back. Returns
    the mask and, per group, how many drafts were walked into its constraint (roll them back
    after verification). A draft the grammar forbids is masked out at its row, so it is
    rejected there."""
    if not any(c is not None for c, _ in groups):
        return None, [0] * len(groups)
    num_rows = sum(len(drafts) + 1 for _, drafts in groups)
    mask = TokenMask(backend, backend.bitmask(num_rows, vocab_size))
    walked = []
    start = 0
    for constraint, drafts in groups:
        num_walked = 0
        if constraint is not None:
            row = start
            if constraint.fill(mask.bitmask, row):
                mask.row_indices.append(row)
            for draft in drafts:
                if not _row_allows(mask, row, draft) or not constraint.accept(draft):
                    break
                num_walked += 1
                row += 1
                if constraint.fill(mask.bitmask, row):
                    if (mask.bitmask[row] == 0).all():
                        # A dead end after this draft: forbid the draft instead.
                        constraint.rollback(1)
                        num_walked -= 1
                        mask.bitmask[row].fill_(-1)
                        _clear_bit(mask.bitmask, row - 1, draft)
                        break
                    mask.row_indices.append(row)
        walked.append(num_walked)
        start += len(drafts) + 1
    return mask, walked


def _row_allows(mask: TokenMask, row: int, token_id: int) -> bool:
    if row not in mask.row_indices[-1:]:
        return True  # unconstrained row
    word = int(mask.bitmask[row, token_id // 32])
    return bool((word >> (token_id % 32)) & 1)


def _clear_bit(bitmask: torch.Tensor, row: int, token_id: int) -> None:
    word = int(bitmask[row, token_id // 32]) & 0xFFFFFFFF
    word &= ~(1 << (token_id % 32)) & 0xFFFFFFFF
    bitmask[row, token_id // 32] = word - (1 << 32) if word >= 1 << 31 else word
