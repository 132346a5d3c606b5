"""int8 / fp8 KV cache: nearly the same next-token choices as a float32 KV, at about twice the
tokens of a bfloat16 KV (four times float32) in the same memory."""

from __future__ import annotations

import pytest

from benchmarks.kv_quant_quality import capacity, quality


# fp8 e4m3 keeps 3 mantissa bits (about 6% relative error per value), int8 about 0.4%.
@pytest.mark.parametrize("kv_dtype, min_agreement", [("int8", 0.95), ("fp8", 0.85)])
def test_quantized_kv_agrees_with_float32_kv(tiny_model, kv_dtype, min_agreement):
    result = quality(str(tiny_model), kv_dtype, num_sequences=4)
    print(f"{kv_dtype}: {result}")
    assert result["positions"] > 150
    assert result["top1_agreement"] >= min_agreement
    assert 0 <= result["mean_kl"] < 0.05


def test_int8_kv_holds_about_twice_the_tokens_of_bf16(tiny_model):
    """Per token and head: 2 * head_dim bytes in bf16, head_dim + 2 (the float16 scale) in int8:
    1.78x at this model's head_dim 16, 1.94x at head_dim 64, 1.97x at 128."""
    tokens = capacity(str(tiny_model), budget="4MiB")
    head_dim = 16
    expected_ratio = 2 * head_dim / (head_dim + 2)
    bf16 = tokens["bfloat16 model, bfloat16 KV"]
    for kv in ("int8", "fp8"):
        ratio = tokens[f"bfloat16 model, {kv} KV"] / bf16
        assert expected_ratio * 0.99 <= ratio <= expected_ratio * 1.01
    assert abs(tokens["float32 model, float32 KV"] * 2 - bf16) <= 16
