"""Every attention path (CPU kernel, gathered SDPA, chunked matmul, SDPA prefill) against a naive
reference, with and without cached context and sliding windows."""

from __future__ import annotations

import pytest
import torch

from corral.model.kernels import cpu_kernels
from corral.model.layers import attention as attn
from corral.model.layers.attention import (
    AttentionMetadata,
    DecodeBatch,
    LayerKVCache,
    PrefillSpan,
)
from corral.model.layers.kv_quant import dequantize_kv, quantize_kv

NUM_HEADS, NUM_KV_HEADS, HEAD_DIM, BLOCK_SIZE, NUM_BLOCKS = 6, 2, 16, 4, 64


def reference(query, keys, values, positions, window):
    """query [H, D] at `position` over keys/values [S, Hkv, D], plain softmax in float64."""
    group = NUM_HEADS // NUM_KV_HEADS
    outputs = []
    for q, position in zip(query, positions):
        lo = max(0, position + 1 - window) if window else 0
        k = keys[lo : position + 1].double().repeat_interleave(group, dim=1)
        v = values[lo : position + 1].double().repeat_interleave(group, dim=1)
        weights = torch.softmax(torch.einsum("hd,shd->hs", q.double(), k) * HEAD_DIM**-0.5, -1)
        outputs.append(torch.einsum("hs,shd->hd", weights, v))
    return torch.stack(outputs)


def make_cache(dtype, kv_dtype=None) -> LayerKVCache:
    """Random caches in the engine's layout (keys transposed within blocks); kv_dtype int8/fp8
    stores them quantized with per-token-head scales."""
    generator = torch.Generator().manual_seed(0)
    shape = (NUM_BLOCKS, BLOCK_SIZE, NUM_KV_HEADS, HEAD_DIM)
    key = torch.randn(shape, generator=generator).to(dtype)
    value = torch.randn(shape, generator=generator).to(dtype)
    key_scale = value_scale = None
    if kv_dtype is not None:
        (key, key_scale), (value, value_scale) = (
            quantize_kv(t.view(-1, NUM_KV_HEADS, HEAD_DIM), kv_dtype) for t in (key, value)
        )
        key, value = key.view(shape), value.view(shape)
        key_scale, value_scale = key_scale.view(shape[:-1]), value_scale.view(shape[:-1])
    key_t = key.view(torch.uint8) if kv_dtype == torch.float8_e4m3fn else key
    key_t = key_t.permute(0, 2, 3, 1).contiguous().view(key.dtype)
    return LayerKVCache(key_t, value, key_scale, value_scale)


def cache_contents(cache: LayerKVCache, dtype=torch.float64):
    """Keys and values [num_blocks, block_size, heads, dim], dequantized, in token order."""
    key = cache.key.view(torch.uint8) if cache.key.dtype == torch.float8_e4m3fn else cache.key
    key = key.permute(0, 3, 1, 2).contiguous().view(cache.key.dtype)
    if not cache.quantized:
        return key.to(dtype), cache.value.to(dtype)
    return (
        dequantize_kv(key, cache.key_scale, torch.float32).to(dtype),
        dequantize_kv(cache.value, cache.value_scale, torch.float32).to(dtype),
    )


def sequence_kv(values, block_ids, length):
    return values[torch.tensor(block_ids)].reshape(-1, NUM_KV_HEADS, HEAD_DIM)[:length]


@pytest.mark.parametrize(
    "dtype, kv_dtype, tolerance",
    [
        (torch.float32, None, 1e-5),
        (torch.bfloat16, None, 3e-2),
        (torch.float32, torch.int8, 1e-5),
        (torch.bfloat16, torch.int8, 3e-2),
        (torch.float32, torch.float8_e4m3fn, 1e-5),
    ],
    ids=["fp32", "bf16", "fp32-int8kv", "bf16-int8kv", "fp32-fp8kv"],
)
@pytest.mark.parametrize("window", [None, 5, "layer-5"])
@pytest.mark.parametrize("use_kernel", [True, False])
def test_decode_paths(dtype, kv_dtype, tolerance, window, use_kernel, monkeypatch):
    # "layer-5": the layer's own window over plain causal metadata (hybrid models).
    layer_window = 5 if window == "layer-5" else None
    window = layer_window or window
    if use_kernel and cpu_kernels() is None:
        pytest.skip("CPU kernels unavailable")
    if not use_kernel:
        monkeypatch.setattr(attn, "cpu_kernels", lambda: None)
    cache = make_cache(dtype, kv_dtype)
    seq_lens = [1, 7, 13, 22]
    tables = [[3], [9, 4], [10, 11, 12, 40], [20, 21, 22, 23, 24, 25]]
    width = max(map(len, tables))
    table = torch.tensor([t + [0] * (width - len(t)) for t in tables])
    lens = torch.tensor(seq_lens)
    mask = torch.arange(width * BLOCK_SIZE)[None, :] < lens[:, None]
    if window and not layer_window:
        mask &= torch.arange(width * BLOCK_SIZE)[None, :] >= (lens - window)[:, None]
    step_window = window if window and not layer_window else None
    decode = DecodeBatch(len(seq_lens), table, lens, BLOCK_SIZE, step_window)
    assert torch.equal(decode.mask, mask.view(len(seq_lens), 1, 1, -1))  # built on demand
    query = torch.randn(len(seq_lens), NUM_HEADS, HEAD_DIM).to(dtype)
    # The new tokens' K/V: write them through the same path the model uses.
    slots = torch.tensor(
        [
            t[(n - 1) // BLOCK_SIZE] * BLOCK_SIZE + (n - 1) % BLOCK_SIZE
            for t, n in zip(tables, seq_lens)
        ]
    )
    key = torch.randn(len(seq_lens), NUM_KV_HEADS, HEAD_DIM).to(dtype)
    value = torch.randn(len(seq_lens), NUM_KV_HEADS, HEAD_DIM).to(dtype)
    metadata = AttentionMetadata(slots, decode, [], None if layer_window else window)
    output = attn.paged_attention(query, key, value, cache, metadata, HEAD_DIM**-0.5, layer_window)
    keys, values = cache_contents(cache)  # after the write: includes the new tokens
    for row, (blocks, length) in enumerate(zip(tables, seq_lens)):
        expected = reference(
            query[row : row + 1],
            sequence_kv(keys, blocks, length),
            sequence_kv(values, blocks, length),
            [length - 1],
            window,
        )
        torch.testing.assert_close(
            output[row].double(), expected[0], atol=tolerance, rtol=tolerance
        )


@pytest.mark.parametrize("window", [None, 7, "layer-7"])
@pytest.mark.parametrize("context_len", [0, 9])
@pytest.mark.parametrize("path", ["kernel", "matmul", "matmul-key-chunks", "sdpa"])
@pytest.mark.parametrize("kv_dtype", [None, torch.int8])
def test_prefill_paths(window, context_len, path, kv_dtype, monkeypatch):
    layer_window = 7 if window == "layer-7" else None
    window = layer_window or window
    if path != "kernel":  # fresh prompts without a window take the CPU kernel unless told not to
        monkeypatch.setattr(attn, "_prefill_short_prompts", lambda *args: args[5])
    if path == "sdpa":  # the CUDA path, checked here on CPU
        monkeypatch.setattr(attn, "_prefill_matmul", attn._prefill_sdpa)
    if path == "matmul-key-chunks":  # online softmax over keys, 3 at a time (long contexts)
        monkeypatch.setattr(attn, "_KEY_CHUNK", 3)
    monkeypatch.setattr(attn, "_QUERY_CHUNK", 4)  # several chunks even for short prompts
    cache = make_cache(torch.float32, kv_dtype)
    num_query = 11
    blocks = [5, 6, 7, 8, 30]
    end = context_len + num_query
    positions = torch.arange(context_len, end)
    mask = None  # plain causal, with or without context, as build_step_inputs sends it
    if window and not layer_window:
        mask = torch.arange(end)[None, :] <= positions[:, None]
        if window:
            mask &= torch.arange(end)[None, :] > (positions - window)[:, None]
    span = PrefillSpan(0, num_query, context_len, torch.tensor(blocks), mask)
    slots = torch.tensor(
        [blocks[p // BLOCK_SIZE] * BLOCK_SIZE + p % BLOCK_SIZE for p in positions.tolist()]
    )
    query = torch.randn(num_query, NUM_HEADS, HEAD_DIM)
    key = torch.randn(num_query, NUM_KV_HEADS, HEAD_DIM)
    value = torch.randn(num_query, NUM_KV_HEADS, HEAD_DIM)
    metadata = AttentionMetadata(slots, None, [span], None if layer_window else window)
    output = attn.paged_attention(query, key, value, cache, metadata, HEAD_DIM**-0.5, layer_window)
    keys, values = cache_contents(cache)
    if not context_len:  # a fresh prompt attends to its own unquantized K/V
        keys, values = keys.clone(), values.clone()
        keys.view(-1, NUM_KV_HEADS, HEAD_DIM)[slots] = key.double()
        values.view(-1, NUM_KV_HEADS, HEAD_DIM)[slots] = value.double()
    expected = reference(
        query,
        sequence_kv(keys, blocks, end),
        sequence_kv(values, blocks, end),
        positions.tolist(),
        window,
    )
    torch.testing.assert_close(output.double(), expected, atol=1e-5, rtol=1e-5)


def test_few_row_linear_kernel_matches_float_reference():
    kernels = cpu_kernels()
    if kernels is None:
        pytest.skip("CPU kernels unavailable")
    generator = torch.Generator().manual_seed(1)
    for rows, size_in, size_out in [(1, 64, 37), (2, 576, 960), (1, 100, 8)]:
        weight = torch.randn(size_out, size_in, generator=generator).bfloat16()
        x = torch.randn(rows, size_in, generator=generator).bfloat16()
        bias = torch.randn(size_out, generator=generator).bfloat16()
        expected = x.double() @ weight.double().T + bias.double()
        got = kernels.few_row_linear(x, weight, bias).double()
        torch.testing.assert_close(got, expected, atol=0.05, rtol=0.01)


def test_quantization_round_trip_error_is_bounded():
    x = torch.randn(50, NUM_KV_HEADS, HEAD_DIM) * 3
    for dtype, relative in ((torch.int8, 1 / 127), (torch.float8_e4m3fn, 1 / 8)):
        values, scale = quantize_kv(x, dtype)
        assert values.dtype == dtype and scale.dtype == torch.float16
        error = (dequantize_kv(values, scale, torch.float32) - x).abs()
        bound = x.abs().amax(-1, keepdim=True) * relative
        assert (error <= bound + 1e-6).all()
