"""Bounded attention spans and the KV blocks they let go (torch-free, shared by the engine and
the simulator).

A KVWindow says which earlier tokens a query at position t attends to: the keys at positions
(t - window_tokens, t], plus the first num_sink_tokens positions when sinks are kept
(StreamingLLM). Two sources:

- the model's own sliding window (Mistral: every layer attends to its last sliding_window
  tokens): exact, nothing changes in the outputs;
- `--kv-window-policy sink:N,window:W` for full-attention models: the first N tokens and the
  last W stay in the KV cache, so that generation continues past the context the model was
  trained on (max_model_len may then exceed max_position_embeddings, as long as N + W fits).
  Approximate by design: StreamingLLM's rule, positions inside the cache (see
  corral/model/layers/sink_attention.py).

The scheduler drops, before each step, the blocks every later query of a request will skip: a
block is dead once all its positions are below the window of the request's next query and it
holds no sink token. The KV manager puts its null block in their place in the block table, so
positions keep their block indices (corral/core/kv_cache.py drop_blocks).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from corral.core.kv_cache import KVCacheManager
    from corral.request import Request


@dataclass(frozen=True, slots=True)
class KVWindow:
    """A query at position t attends to keys at positions < num_sink_tokens or in
    (t - window_tokens, t]."""

    window_tokens: int
    num_sink_tokens: int = 0

    def __post_init__(self) -> None:
        if self.window_tokens < 1:
            raise ValueError(f"a KV window needs window_tokens >= 1, got {self.window_tokens}")
        if self.num_sink_tokens < 0:
            raise ValueError(f"num_sink_tokens must be >= 0, got {self.num_sink_tokens}")

    @property
    def span_tokens(self) -> int:
        """The most keys one query attends to."""
        return self.num_sink_tokens + self.window_tokens

    def first_live_position(self, num_computed_tokens: int) -> int:
        """The lowest non-sink position that the request's next query (at num_computed_tokens)
        and every later one may still attend to."""
        return max(0, num_computed_tokens - self.window_tokens + 1)

    def num_sink_blocks(self, block_size: int) -> int:
        return -(-self.num_sink_tokens // block_size)

    def max_live_tokens(self, max_chunk_tokens: int, block_size: int) -> int:
        """An upper bound on the KV slots a request holds at once: its sink blocks, the blocks
        of its window, those of the chunk it computes, and one partly dead block."""
        sink_slots = self.num_sink_blocks(block_size) * block_size
        return sink_slots + self.window_tokens + max_chunk_tokens + block_size

    def drop_behind(self, kv: KVCacheManager, request: Request) -> int:
        """Release the request's blocks that no later query of it attends to."""
        return kv.drop_blocks(
            request,
            self.first_live_position(request.num_computed_tokens),
            self.num_sink_blocks(kv.block_size),
        )


def parse_kv_window_policy(spec: str | None) -> KVWindow | None:
    """`sink:N,window:W` (or `window:W`) -> KVWindow; None or "" or "none" -> None.

    Raises ValueError naming the bad part."""
    if spec is None or spec.strip().lower() in ("", "none"):
        return None
    fields: dict[str, int] = {}
    for part in spec.split(","):
        name, sep, value = part.strip().partition(":")
        if not sep or name not in ("sink", "window") or name in fields:
            raise ValueError(
                f"--kv-window-policy {spec!r}: expected 'sink:N,window:W' (sink optional), "
                f"got the part {part!r}"
            )
        try:
            fields[name] = int(value)
        except ValueError:
            raise ValueError(
                f"--kv-window-policy {spec!r}: {name} must be an integer, got {value!r}"
            ) from None
    if "window" not in fields:
        raise ValueError(f"--kv-window-policy {spec!r}: window:W is required")
    return KVWindow(window_tokens=fields["window"], num_sink_tokens=fields.get("sink", 0))


def resolve_kv_window(sliding_window: int | None, policy: str | None) -> KVWindow | None:
    """The window a model runs with: its own sliding window (every layer's), or the
    --kv-window-policy for a full-attention model; both at once are refused."""
    window = parse_kv_window_policy(policy)
    if window is not None and sliding_window is not None:
        raise ValueError(
            f"--kv-window-policy {policy!r} is for full-attention models; this model already "
            f"attends to a sliding window of {sliding_window} tokens"
        )
    if window is not None:
        return window
    return KVWindow(sliding_window) if sliding_window is not None else None
