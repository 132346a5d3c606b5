"""What a KV pool of a given size can ever serve (torch-free, shared by the engine, the server
and the simulator).

A request computes KV for every token but its last: to produce max_tokens outputs it needs at
most num_prompt_tokens + max_tokens - 1 slots. It can never start when its prompt alone exceeds
the pool; with `max` reservation it is only admitted once its whole worst case is reserved, so
that must fit too. A running request that outgrows the pool (reservation none or predicted) is
finished with finish_reason "length" (Scheduler), like one that reaches the context length.

With a bounded attention window (corral/core/kv_window.py) a request holds at most
max_live_tokens slots at once, however long it grows: that bound, not its length, must fit.
"""

from __future__ import annotations

# The flags that size the pool, for the error messages.
POOL_SIZE_FLAGS = "--kv-cache-memory or --num-kv-blocks"


def kv_pool_capacity_tokens(num_blocks: int, block_size: int) -> int:
    return num_blocks * block_size


def kv_pool_refusal(
    num_prompt_tokens: int,
    max_tokens: int,
    num_blocks: int,
    block_size: int,
    kv_reservation: str = "none",
    max_live_tokens: int | None = None,
) -> str | None:
    """Why a request can never run in this pool, or None when it can."""
    capacity = kv_pool_capacity_tokens(num_blocks, block_size)
    if max_live_tokens is not None:
        if min(num_prompt_tokens, max_live_tokens) > capacity:
            return (
                f"the prompt's {num_prompt_tokens} tokens need up to {max_live_tokens} KV slots "
                f"at once within the attention window, more than the KV pool's capacity of "
                f"{capacity} tokens ({num_blocks} blocks x {block_size}); raise {POOL_SIZE_FLAGS}"
            )
        return None
    if num_prompt_tokens > capacity:
        return (
            f"the prompt's {num_prompt_tokens} tokens exceed the KV pool's capacity of "
            f"{capacity} tokens ({num_blocks} blocks x {block_size}); raise {POOL_SIZE_FLAGS}"
        )
    needed = num_prompt_tokens + max_tokens - 1
    if kv_reservation.split(":", 1)[0] == "max" and needed > capacity:
        return (
            f"with --kv-reservation max, the prompt's {num_prompt_tokens} tokens plus max_tokens "
            f"{max_tokens} need {needed} KV slots, more than the KV pool's capacity of "
            f"{capacity} tokens ({num_blocks} blocks x {block_size}); lower max_tokens or "
            f"raise {POOL_SIZE_FLAGS}"
        )
    return None


def check_fits_kv_pool(
    num_prompt_tokens: int,
    max_tokens: int,
    num_blocks: int,
    block_size: int,
    kv_reservation: str = "none",
    max_live_tokens: int | None = None,
) -> None:
    """ValueError (naming the prompt tokens, max_tokens, the capacity and the flags that size
    the pool) when the request can never run."""
    refusal = kv_pool_refusal(
        num_prompt_tokens, max_tokens, num_blocks, block_size, kv_reservation, max_live_tokens
    )
    if refusal is not None:
        raise ValueError(refusal)
