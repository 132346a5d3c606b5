"""Grammar masks over a step's logits rows (data plane, torch).

The executor asks for one bitmask per step covering the rows it samples from; only the rows of
constrained requests are filled and masked, all at once (numpy unpack, one masked copy). With
speculative drafts, a request's k + 1 rows are filled by walking its constraint through the
drafts (row i: the tokens allowed after draft i), then rolled back; verification then accepts
drafts only where the grammar allows them, and the tokens that stand are accepted for real.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field

import numpy as np
import torch

from corral.structured.bitmask import allows, new_bitmask, set_bit
from corral.structured.constraint import OutputConstraint

NO_TOKEN_ALLOWED = "the output's grammar allows no token of this model's vocabulary here"


# Unpacking the int32 words as bytes reads bit t % 32 of word t // 32 as bit t % 8 of byte t // 8
# only on little-endian machines; elsewhere the bits are shifted out in torch.
_LITTLE_ENDIAN = sys.byteorder == "little"
_BIT_SHIFTS = torch.arange(32, dtype=torch.int32)


@dataclass(slots=True)
class TokenMask:
    """A step's bitmask [num_rows, words] (corral/structured/bitmask.py); rows in row_indices
    are constrained."""

    bitmask: torch.Tensor
    row_indices: list[int] = field(default_factory=list)
    _allowed: np.ndarray | None = None  # bool [len(row_indices), vocab], unpacked once

    def allowed(self, vocab_size: int) -> np.ndarray:
        """The constrained rows' allowed tokens as booleans [len(row_indices), vocab_size]."""
        if self._allowed is None or self._allowed.shape[1] != vocab_size:
            words = self.bitmask.cpu().numpy()[self.row_indices]
            if _LITTLE_ENDIAN:
                bits = np.unpackbits(
                    words.view(np.uint8), axis=1, bitorder="little", count=vocab_size
                )
            else:
                shifted = (torch.from_numpy(words).unsqueeze(-1) >> _BIT_SHIFTS) & 1
                bits = shifted.view(len(words), -1)[:, :vocab_size].to(torch.uint8).numpy()
            self._allowed = bits.view(np.bool_)
        return self._allowed

    def apply(self, logits: torch.Tensor) -> None:
        """Set the logits of disallowed tokens to -inf in the constrained rows (in place)."""
        if not self.row_indices:
            return
        disallowed = ~self.allowed(logits.shape[1])
        every_row = len(self.row_indices) == logits.shape[0]
        if logits.device.type == "cpu" and logits.is_contiguous():
            values = logits.numpy()  # shares memory: numpy's masked copy is the fastest here
            if every_row:
                np.copyto(values, -np.inf, where=disallowed)
            else:
                rows = values[self.row_indices]
                np.copyto(rows, -np.inf, where=disallowed)
                values[self.row_indices] = rows
            return
        mask = torch.from_numpy(disallowed).to(logits.device)
        if every_row:
            logits.masked_fill_(mask, float("-inf"))
            return
        rows = torch.tensor(self.row_indices, device=logits.device)
        logits.index_copy_(0, rows, logits.index_select(0, rows).masked_fill_(mask, float("-inf")))

    def take_empty_rows(self, vocab_size: int) -> set[int]:
        """Constrained rows that allow no token at all, removed from the mask (their requests
        fail; their samples are discarded)."""
        if not self.row_indices:
            return set()
        allowed = self.allowed(vocab_size)
        empty = np.flatnonzero(~allowed.any(axis=1)).tolist()
        if not empty:
            return set()
        found = {self.row_indices[i] for i in empty}
        keep = [i for i, row in enumerate(self.row_indices) if row not in found]
        self.row_indices = [self.row_indices[i] for i in keep]
        self._allowed = allowed[keep]
        return found


def sample_mask(constraints: list[OutputConstraint | None], vocab_size: int) -> TokenMask | None:
    """One row per request (None: unconstrained); None when no row is constrained."""
    if not any(c is not None for c in constraints):
        return None
    mask = TokenMask(new_bitmask(len(constraints), vocab_size))
    for row, constraint in enumerate(constraints):
        if constraint is not None and constraint.fill(mask.bitmask, row):
            mask.row_indices.append(row)
    return mask


def verify_mask(
    groups: list[tuple[OutputConstraint | None, list[int]]], vocab_size: int
) -> tuple[TokenMask | None, list[int]]:
    """Rows for (constraint, drafts) groups of len(drafts) + 1 rows each, back to back. Returns
    the mask and, per group, how many drafts were walked into its constraint (roll them back
    after verification). A draft the grammar forbids is masked out at its row, so it is
    rejected there."""
    if not any(c is not None for c, _ in groups):
        return None, [0] * len(groups)
    num_rows = sum(len(drafts) + 1 for _, drafts in groups)
    mask = TokenMask(new_bitmask(num_rows, vocab_size))
    walked = []
    start = 0
    for constraint, drafts in groups:
        num_walked = 0
        if constraint is not None:
            row = start
            constrained = _fill(mask, constraint, row)
            for draft in drafts:
                forbidden = constrained and not allows(mask.bitmask, row, draft)
                if forbidden or not constraint.accept(draft):
                    break
                num_walked += 1
                row += 1
                constrained = _fill(mask, constraint, row)
                if constrained and not bool(mask.bitmask[row].any()):
                    # A dead end after this draft: forbid the draft instead.
                    constraint.rollback(1)
                    num_walked -= 1
                    mask.row_indices.pop()
                    set_bit(mask.bitmask, row - 1, draft, allowed=False)
                    break
        walked.append(num_walked)
        start += len(drafts) + 1
    return mask, walked


def _fill(mask: TokenMask, constraint: OutputConstraint, row: int) -> bool:
    """Fill one row from the constraint; whether the row is constrained."""
    if constraint.fill(mask.bitmask, row):
        mask.row_indices.append(row)
        return True
    return False
