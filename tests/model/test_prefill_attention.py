"""The CPU kernel for short fresh prompts' causal attention (all spans of a step in one call)
against float64, on the strided q/k/v views a fused qkv projection gives."""

import pytest
import torch

from corral.model.kernels import cpu_kernels

_KERNELS = cpu_kernels()
pytestmark = pytest.mark.skipif(_KERNELS is None, reason="the CPU kernels are not built")


def _reference(query, key, value, start, end, scale):
    q = query[start:end].double()
    k = key[start:end].double().repeat_interleave(query.shape[1] // key.shape[1], dim=1)
    v = value[start:end].double().repeat_interleave(query.shape[1] // key.shape[1], dim=1)
    scores = torch.einsum("ihd,jhd->hij", q, k) * scale
    n = end - start
    causal = torch.ones(n, n, dtype=torch.bool).tril()
    scores = scores.masked_fill(~causal, float("-inf"))
    return torch.einsum("hij,jhd->ihd", scores.softmax(-1), v)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("num_heads, num_kv_heads, head_dim", [(4, 4, 32), (9, 3, 64), (8, 2, 16)])
def test_every_span_matches_float64_and_other_rows_are_untouched(
    dtype, num_heads, num_kv_heads, head_dim
):
    generator = torch.Generator().manual_seed(num_heads * 7 + head_dim)
    spans = [(0, 1), (1, 6), (6, 70), (75, 203)]  # rows 70-74 belong to no span
    num_tokens = 203
    width = (num_heads + 2 * num_kv_heads) * head_dim
    qkv = (torch.randn(num_tokens, width, generator=generator) * 2).to(dtype)
    q_size, kv_size = num_heads * head_dim, num_kv_heads * head_dim
    query = qkv[:, :q_size].contiguous().view(num_tokens, num_heads, head_dim)
    key = qkv[:, q_size : q_size + kv_size].view(num_tokens, num_kv_heads, head_dim)
    value = qkv[:, q_size + kv_size :].view(num_tokens, num_kv_heads, head_dim)
    out = torch.full_like(query, 7.0)
    scale = head_dim**-0.5
    rows = torch.tensor(spans, dtype=torch.int64)
    _KERNELS.prefill_attention(out, query, key, value, rows, scale)
    # bf16: the output's rounding (2^-9 relative) and the probabilities' (rounded to bf16
    # before the values are summed, as the torch path rounds them).
    atol, rtol = (1e-5, 0) if dtype == torch.float32 else (2e-2, 1e-2)
    for start, end in spans:
        expected = _reference(query, key, value, start, end, scale)
        torch.testing.assert_close(out[start:end].double(), expected, atol=atol, rtol=rtol)
    assert (out[70:75] == 7.0).all()


def test_bad_spans_and_shapes_are_refused():
    query = torch.zeros(8, 4, 16)
    key = value = torch.zeros(8, 2, 16)
    out = torch.empty_like(query)
    with pytest.raises(RuntimeError, match="outside the rows"):
        _KERNELS.prefill_attention(out, query, key, value, torch.tensor([[2, 9]]), 0.25)
    with pytest.raises(RuntimeError, match="shapes disagree"):
        _KERNELS.prefill_attention(out, query, key[:4], value[:4], torch.tensor([[0, 4]]), 0.25)
