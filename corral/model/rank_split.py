"""How a count of items (KV heads, intermediate columns, experts) divides over the ranks of
tensor parallelism: contiguous ranges, the first total % size ranks taking one more."""

from __future__ import annotations


def split(total: int, size: int, rank: int) -> tuple[int, int]:
    """Rank's share of total items over size ranks: (first, count), the first total % size
    ranks taking one more."""
    base, extra = divmod(total, size)
    return rank * base + min(rank, extra), base + (rank < extra)
