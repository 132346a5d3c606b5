"""Rotary position embeddings: plain, linear, Llama 3, YaRN and dynamic-NTK frequency scaling.

Static rules (default, linear, llama3, yarn) fix one inverse-frequency vector, so cos/sin are
tabulated once for every position. YaRN also multiplies cos and sin by its attention factor
(mscale), which scales every query-key score by its square.

Dynamic NTK changes the rotary base with the sequence length once it exceeds the model's
max_position_embeddings, the way transformers does: a forward pass whose longest sequence is s >
max_position_embeddings rotates all its tokens with the frequencies of base' = theta * (factor * s
/ max_position_embeddings - (factor - 1)) ** (d / (d - 2)); keys already in the cache keep the
rotation they were computed with. corral applies that rule per request: all of a request's tokens
in a step (a prefill chunk, a decode token, a speculative verification chunk) rotate with the
length the request reaches at the step's last one, and steps where no request exceeds
max_position_embeddings use the plain table. One unchunked prefill followed by decodes therefore
reproduces transformers' generate exactly; chunked prefill, speculative verification,
recomputation after preemption and prefix-cache hits rotate their keys as transformers does when
fed the same chunks, so their tokens can differ from a plain run's.
"""

from __future__ import annotations

import math
from typing import Any

import torch

# Distinct dynamic-NTK lengths whose frequencies are kept (one entry per request length seen).
_DYNAMIC_CACHE_SIZE = 4096


def rope_inverse_frequencies(
    head_dim: int,
    theta: float,
    scaling: dict[str, Any] | None,
    max_position_embeddings: int | None = None,
) -> torch.Tensor:
    """inv_freq[i] = theta^(-2i/head_dim), adjusted by a static scaling rule (float32,
    [head_dim/2]); dynamic NTK gives the unscaled frequencies it uses up to
    max_position_embeddings."""
    return rope_parameters(head_dim, theta, scaling, max_position_embeddings)[0]


def rope_parameters(
    head_dim: int,
    theta: float,
    scaling: dict[str, Any] | None,
    max_position_embeddings: int | None = None,
) -> tuple[torch.Tensor, float]:
    """(inverse frequencies, factor applied to cos and sin) of a rope_scaling dict."""
    exponents = torch.arange(0, head_dim, 2, dtype=torch.int64).float() / head_dim
    rope_type = (scaling or {}).get("rope_type", "default")
    if rope_type == "linear":
        return 1.0 / (theta**exponents) / float(scaling["factor"]), 1.0
    if rope_type == "llama3":
        return _llama3_frequencies(1.0 / (theta**exponents), scaling), 1.0
    if rope_type == "yarn":
        return _yarn_parameters(exponents, head_dim, theta, scaling, max_position_embeddings)
    if rope_type == "dynamic":
        trained = _required(max_position_embeddings, "dynamic")
        factor = float(scaling["factor"])
        # transformers' initial frequencies: the NTK formula at length max_position_embeddings
        ratio = factor * trained / trained - (factor - 1)
        return 1.0 / ((theta * ratio ** (head_dim / (head_dim - 2))) ** exponents), 1.0
    return 1.0 / (theta**exponents), 1.0


def _required(value: int | None, rope_type: str) -> int:
    if value is None:
        raise ValueError(f"{rope_type} rope scaling needs the model's max_position_embeddings")
    return value


def _llama3_frequencies(inv_freq: torch.Tensor, scaling: dict[str, Any]) -> torch.Tensor:
    """Llama 3.1: divide low frequencies by `factor`, keep high ones, blend in between."""
    factor = float(scaling["factor"])
    low_freq_factor = float(scaling["low_freq_factor"])
    high_freq_factor = float(scaling["high_freq_factor"])
    old_context_len = float(scaling["original_max_position_embeddings"])
    low_freq_wavelen = old_context_len / low_freq_factor
    high_freq_wavelen = old_context_len / high_freq_factor
    wavelen = 2 * math.pi / inv_freq
    scaled = torch.where(wavelen > low_freq_wavelen, inv_freq / factor, inv_freq)
    smooth = (old_context_len / wavelen - low_freq_factor) / (high_freq_factor - low_freq_factor)
    blended = (1 - smooth) * scaled / factor + smooth * scaled
    is_medium = (wavelen >= high_freq_wavelen) & (wavelen <= low_freq_wavelen)
    return torch.where(is_medium, blended, scaled)


def yarn_mscale(factor: float, coefficient: float = 1.0) -> float:
    """YaRN's magnitude correction 1 + 0.1 * coefficient * ln(factor) (1 when not stretched)."""
    return 1.0 if factor <= 1 else 0.1 * coefficient * math.log(factor) + 1.0


def _yarn_parameters(
    exponents: torch.Tensor,
    head_dim: int,
    theta: float,
    scaling: dict[str, Any],
    max_position_embeddings: int | None,
) -> tuple[torch.Tensor, float]:
    """YaRN (Peng et al. 2023): dimensions that rotate more than beta_fast times over the
    original context keep their frequency (extrapolation), those that rotate fewer than beta_slow
    times are divided by `factor` (interpolation), with a linear ramp between; cos and sin are
    multiplied by the attention factor."""
    original = float(scaling["original_max_position_embeddings"])
    factor = scaling.get("factor")
    if factor is None:  # DeepSeek-style configs: the ratio of the two context lengths
        factor = _required(max_position_embeddings, "yarn") / original
    factor = float(factor)
    attention_factor = scaling.get("attention_factor")
    if attention_factor is None:
        mscale, mscale_all_dim = scaling.get("mscale"), scaling.get("mscale_all_dim")
        if mscale and mscale_all_dim:
            attention_factor = yarn_mscale(factor, mscale) / yarn_mscale(factor, mscale_all_dim)
        else:
            attention_factor = yarn_mscale(factor)
    fast = scaling.get("beta_fast") or 32
    slow = scaling.get("beta_slow") or 1

    def dimension_of(rotations: float) -> float:
        """The (fractional) dimension index that turns `rotations` times over `original`."""
        return head_dim * math.log(original / (rotations * 2 * math.pi)) / (2 * math.log(theta))

    low, high = dimension_of(fast), dimension_of(slow)
    if scaling.get("truncate", True):
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, head_dim - 1)
    if low == high:
        high += 0.001  # keep the ramp finite
    ramp = ((torch.arange(head_dim // 2, dtype=torch.float32) - low) / (high - low)).clamp(0, 1)
    keep = 1 - ramp  # weight of the unscaled frequency per dimension
    wavelengths = theta**exponents
    extrapolated = 1.0 / wavelengths
    interpolated = 1.0 / (factor * wavelengths)
    return interpolated * (1 - keep) + extrapolated * keep, float(attention_factor)


def _tables(
    positions: torch.Tensor, inv_freq: torch.Tensor, attention_factor: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """float32 cos and sin [len(positions), head_dim] of the angles position * inv_freq (inv_freq
    [head_dim/2] or one row per position)."""
    freqs = positions.float().unsqueeze(-1) * inv_freq
    emb = torch.cat((freqs, freqs), dim=-1)
    return emb.cos() * attention_factor, emb.sin() * attention_factor


class RotaryEmbedding:
    """cos/sin tables for positions [0, max_positions), applied in the model dtype.

    Use step_tables() once per forward pass: it hands back the tables and the row of each token
    (its position, or, for dynamic NTK steps past max_position_embeddings, its index in tables
    built for the step)."""

    def __init__(
        self,
        head_dim: int,
        max_positions: int,
        theta: float,
        scaling: dict[str, Any] | None,
        dtype: torch.dtype,
        device: torch.device,
        max_position_embeddings: int | None = None,
    ) -> None:
        inv_freq, self.attention_factor = rope_parameters(
            head_dim, theta, scaling, max_position_embeddings
        )
        positions = torch.arange(max_positions, dtype=torch.int64)
        cos, sin = _tables(positions, inv_freq, self.attention_factor)
        self.cos = cos.to(dtype=dtype, device=device)
        self.sin = sin.to(dtype=dtype, device=device)
        self.half = head_dim // 2
        self.head_dim = head_dim
        self.theta = theta
        self.dtype = dtype
        self.device = device
        self.inv_freq = inv_freq
        is_dynamic = (scaling or {}).get("rope_type") == "dynamic"
        # Dynamic NTK: (trained length, factor); frequencies per sequence length, cached.
        self.dynamic: tuple[int, float] | None = None
        if is_dynamic:
            self.dynamic = (_required(max_position_embeddings, "dynamic"), float(scaling["factor"]))
        self._dynamic_cache: dict[int, torch.Tensor] = {}

    def dynamic_frequencies(self, seq_len: int) -> torch.Tensor:
        """Dynamic NTK's inverse frequencies for a sequence of seq_len tokens (float32)."""
        trained, factor = self.dynamic
        if seq_len <= trained:
            return self.inv_freq
        cached = self._dynamic_cache.get(seq_len)
        if cached is None:
            # In float32 tensors, as transformers evaluates it when it rescales in a forward.
            length = torch.tensor(seq_len, dtype=torch.int64)
            stretch = factor * length / trained - (factor - 1)
            base = self.theta * stretch ** (self.head_dim / (self.head_dim - 2))
            exponents = torch.arange(0, self.head_dim, 2, dtype=torch.int64).float() / self.head_dim
            cached = 1.0 / (base**exponents)
            if len(self._dynamic_cache) >= _DYNAMIC_CACHE_SIZE:
                self._dynamic_cache.clear()
            self._dynamic_cache[seq_len] = cached
        return cached

    def step_tables(
        self, positions: torch.Tensor, row_ranges: list[tuple[int, int]] | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(cos, sin, rows): token t rotates by cos[rows[t]], sin[rows[t]].

        row_ranges, read by dynamic NTK only: the rows [row_start, row_end) of each request,
        whose tokens all rotate with the length it reaches at its last one (transformers' rule
        for one forward pass); a token outside every range uses its own position + 1."""
        if self.dynamic is None:
            return self.cos, self.sin, positions
        trained = self.dynamic[0]
        lengths = positions.cpu() + 1
        for start, end in row_ranges or ():
            lengths[start:end] = lengths[end - 1].item()
        if int(lengths.max()) <= trained:
            return self.cos, self.sin, positions
        distinct = sorted(set(lengths.tolist()))
        frequencies = torch.stack([self.dynamic_frequencies(s) for s in distinct])
        which = torch.searchsorted(torch.tensor(distinct), lengths)
        cos, sin = _tables(positions.cpu(), frequencies[which], self.attention_factor)
        rows = torch.arange(len(positions), dtype=torch.int64, device=positions.device)
        device = self.device
        return cos.to(self.dtype).to(device), sin.to(self.dtype).to(device), rows

    def apply(self, x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """Rotate x [num_tokens, num_heads, head_dim] by each token's position (static tables)."""
        return self.rotate(x, self.cos[positions].unsqueeze(1), self.sin[positions].unsqueeze(1))

    def rotate(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        return apply_rotation(x, cos, sin)


def apply_rotation(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x * cos + rotate_half(x) * sin, with cos/sin rows [num_tokens, 1, head_dim]."""
    half = x.shape[-1] // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return x * cos + rotated * sin
