"""Named features of a BatchShape for regression cost models.

A name is one of BASE_FEATURES, or `tokens_over_N`: max(0, total tokens - N), a hinge that lets
a linear fit bend where the step turns from weight-bound to compute-bound.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from corral.core.batch_shape import BatchShape

FeatureFn = Callable[[BatchShape], float]

BASE_FEATURES: dict[str, FeatureFn] = {
    "intercept": lambda b: 1.0,
    "tokens": lambda b: b.num_prefill_tokens + b.num_decode_requests,
    "prefill_tokens": lambda b: b.num_prefill_tokens,
    "prefill_requests": lambda b: b.num_prefill_requests,
    "prefill_context_tokens": lambda b: b.prefill_context_tokens,
    "prefill_attention_pairs": lambda b: b.prefill_attention_pairs,
    "decode_requests": lambda b: b.num_decode_requests,
    "decode_context_tokens": lambda b: b.decode_context_tokens,
    "decode_padded_context_tokens": lambda b: b.num_decode_requests * b.max_decode_context,
    "sampled_requests": lambda b: b.num_sampled,
}

_HINGE = "tokens_over_"


def feature_fn(name: str) -> FeatureFn:
    """The function computing feature `name`; ValueError for an unknown name."""
    if name in BASE_FEATURES:
        return BASE_FEATURES[name]
    if name.startswith(_HINGE) and name[len(_HINGE) :].isdigit():
        knot = int(name[len(_HINGE) :])
        return lambda b: max(0, b.num_prefill_tokens + b.num_decode_requests - knot)
    known = ", ".join(BASE_FEATURES)
    raise ValueError(f"unknown cost feature {name!r}; known: {known}, {_HINGE}N")


def is_signed(name: str) -> bool:
    """Hinge coefficients may be negative (a concave bend); all others are >= 0."""
    return name.startswith(_HINGE)


def feature_rows(names: Sequence[str], batches: Sequence[BatchShape]) -> list[list[float]]:
    fns = [feature_fn(name) for name in names]
    return [[float(fn(batch)) for fn in fns] for batch in batches]
